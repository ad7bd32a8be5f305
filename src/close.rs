//! Why taskcast closes a WebSocket: the one place that maps each reason to
//! its close code and text (RFC 6455 §7.4.1 for 1xxx; 4xxx are taskcast's
//! own). Used by the frame meter and the connection code alike, so it
//! depends on neither.

use tungstenite::protocol::frame::coding::CloseCode;

/// Why we close a WebSocket: the one place that maps reasons to close codes
/// (RFC 6455 §7.4.1 for 1xxx; 4xxx are taskcast's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// 1001: the server is shutting down.
    Shutdown,
    /// 1002: the client broke the protocol (bad framing, unmasked frame, ...).
    Protocol,
    /// 1003: binary frames are not part of taskcast's protocol.
    Binary,
    /// 1007: a text frame that is not UTF-8.
    BadUtf8,
    /// 1008: the client sent messages faster than allowed.
    RateLimited,
    /// 1009: a message over MAX_MESSAGE_BYTES (MAX_AUTH_MESSAGE_BYTES for auth).
    TooBig,
    /// 1012 ("service restart", IANA WebSocket close code registry): the
    /// server is draining before a restart or deploy; the client should
    /// reconnect after a random delay (and so reach another instance).
    Restart,
    /// 1009: a message in more than `limits::MAX_MESSAGE_FRAGMENTS` frames.
    TooFragmented,
    /// 1013 ("try again later"): the client read too slowly and SEND_QUEUE_LIMIT
    /// messages piled up; it should reconnect and refetch its state.
    SlowConsumer,
    /// 4001: the token expired and was not refreshed in time.
    TokenExpired,
    /// 4003: an in-band `auth` token was invalid (bad signature, expired, ...).
    AuthInvalid,
    /// 4003: an in-band `auth` token was valid but for another user.
    AuthOtherUser,
}

impl Reason {
    pub fn code(self) -> u16 {
        match self {
            Reason::Shutdown => 1001,
            Reason::Protocol => 1002,
            Reason::Binary => 1003,
            Reason::BadUtf8 => 1007,
            Reason::RateLimited => 1008,
            Reason::TooBig | Reason::TooFragmented => 1009,
            Reason::Restart => 1012,
            Reason::SlowConsumer => 1013,
            Reason::TokenExpired => 4001,
            Reason::AuthInvalid | Reason::AuthOtherUser => 4003,
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            Reason::Shutdown => "server shutting down",
            Reason::Protocol => "protocol error",
            Reason::Binary => "binary messages are not supported",
            Reason::BadUtf8 => "text message is not valid UTF-8",
            Reason::RateLimited => "too many messages",
            Reason::TooBig => "message too big",
            Reason::Restart => "server restarting: reconnect",
            Reason::TooFragmented => "message in too many fragments",
            Reason::SlowConsumer => "client too slow: reconnect",
            Reason::TokenExpired => "token expired",
            Reason::AuthInvalid => "invalid token",
            Reason::AuthOtherUser => "token is for another user",
        }
    }

    pub fn close_frame(self) -> tungstenite::protocol::CloseFrame {
        tungstenite::protocol::CloseFrame { code: CloseCode::from(self.code()), reason: self.text().into() }
    }
}
