//! Why taskcast closes a WebSocket: the one place that maps each reason to
//! its close code and text (RFC 6455 §7.4.1 for 1xxx; 4xxx are taskcast's
//! own). Used by the frame meter and the connection code alike, so it
//! depends on neither.

use tungstenite::protocol::frame::coding::CloseCode;

use crate::auth::AuthError;

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
    /// 4003: an in-band `auth` token was valid but is revoked (issued
    /// before `POST /api/revoke`), or lives longer than JWT_MAX_LIFETIME_SECS.
    AuthRevoked,
    /// 4009: the app ended this user's sessions (`POST /api/disconnect`
    /// with `reconnect: false`: sign-out, ban). The client must not reconnect.
    Disconnected,
    /// 4011: the app wants this client back with a fresh token (`POST
    /// /api/disconnect` with `reconnect: true`, or `POST /api/revoke`): get
    /// a new token, then reconnect.
    Reauthenticate,
    /// In-band authentication (`?auth=message`) refused the first message's
    /// token: 4001 when it expired (the client fetches a fresh one), 1013
    /// ("try again later") when its key is not in the key set yet (a JWKS
    /// refresh was asked for), else 4003. The reason is the token error.
    AuthRefused(AuthError),
    /// 4003: in-band authentication from an origin ALLOWED_ORIGINS does not list.
    OriginRefused,
    /// 4003: in-band authentication, and the first message was not `auth`.
    AuthExpected,
    /// 4008: in-band authentication, and no message within REQUEST_TIMEOUT_SECS.
    AuthTimeout,
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
            Reason::TokenExpired | Reason::AuthRefused(AuthError::Expired) => 4001,
            Reason::AuthRefused(AuthError::UnknownKey) => 1013,
            Reason::AuthInvalid | Reason::AuthOtherUser | Reason::AuthRevoked | Reason::AuthRefused(_) => 4003,
            Reason::OriginRefused | Reason::AuthExpected => 4003,
            Reason::AuthTimeout => 4008,
            Reason::Disconnected => 4009,
            Reason::Reauthenticate => 4011,
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
            Reason::AuthRevoked => "token revoked: get a fresh token",
            Reason::Disconnected => "disconnected by the server: do not reconnect",
            Reason::Reauthenticate => "reconnect with a fresh token",
            // At most 123 bytes (RFC 6455 §5.5: a control frame's payload is
            // at most 125 bytes, two of them the code); every message is.
            Reason::AuthRefused(AuthError::Missing) => r#"missing token: send {"type":"auth","token":"<jwt>"}"#,
            Reason::AuthRefused(e) => e.message(),
            Reason::OriginRefused => "origin not allowed",
            Reason::AuthExpected => r#"the first message must be {"type":"auth","token":"<jwt>"}"#,
            Reason::AuthTimeout => "no auth message in time",
        }
    }

    pub fn close_frame(self) -> tungstenite::protocol::CloseFrame {
        tungstenite::protocol::CloseFrame { code: CloseCode::from(self.code()), reason: self.text().into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_fit_a_close_frame() {
        use AuthError::*;
        let auth = [
            Missing,
            Expired,
            NotYetValid,
            BadSignature,
            WrongAlgorithm,
            WrongIssuer,
            WrongAudience,
            Malformed,
            UnknownKey,
            MissingKeyId,
            SecretNotSet,
        ];
        let mut reasons = vec![Reason::OriginRefused, Reason::AuthExpected, Reason::AuthTimeout, Reason::AuthInvalid];
        reasons.extend(auth.map(Reason::AuthRefused));
        for r in reasons {
            // RFC 6455 §5.5: control frame payloads are at most 125 bytes, 2 of them the code.
            assert!(r.text().len() <= 123, "{r:?}: {} bytes", r.text().len());
        }
        // Refusals a client should not retry are 4003; an expired token
        // (fetch another) 4001; an unknown key (JWKS refresh) 1013.
        assert_eq!(Reason::AuthRefused(WrongIssuer).code(), 4003);
        assert_eq!(Reason::AuthRefused(Expired).code(), 4001);
        assert_eq!(Reason::AuthRefused(UnknownKey).code(), 1013);
        assert_eq!(Reason::AuthTimeout.code(), 4008);
    }
}
