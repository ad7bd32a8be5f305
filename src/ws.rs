//! The WebSocket side of a connection: the 101 handshake answer, the state
//! kept per client, and what client messages mean. The close codes we send
//! are in [`crate::close`].
//!
//! tungstenite's [`WebSocketContext`] runs the protocol (frame parsing,
//! masking, fragments, automatic pongs, the close handshake). It never
//! touches the socket for writing: [`Wire`] hands it the socket for reads
//! and the connection's [`OutQueue`] for writes, so the frames it makes
//! (pongs, close replies) queue up in order behind the shared broadcast
//! frames, and one writer (`OutQueue::write_to`) owns the byte stream.

use std::borrow::Cow;
use std::io::{self, Read, Write};
use std::time::Instant;

use serde::Deserialize;
use tungstenite::protocol::{WebSocketConfig, WebSocketContext};

use crate::channels::{self, Refusal};
pub use crate::close::Reason;
use crate::config::Config;
use crate::frame_meter::FrameMeter;
use crate::hub::Since;
use crate::outqueue::OutQueue;
pub use crate::subscription::Subscription;

/// tungstenite's read buffer per connection. Its default (128 KiB) would
/// cost 1.3 GB at 10k clients; client messages here are ≤ 512 B (tokens up
/// to MAX_AUTH_MESSAGE_BYTES grow it on demand), so 512 B covers a read.
pub const READ_BUFFER_BYTES: usize = 512;

/// tungstenite settings for one server connection.
pub fn config(cfg: &Config) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        // Write straight through to the OutQueue; tungstenite keeps nothing.
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
        // A frame larger than the largest message is refused from its header.
        .max_frame_size(Some(cfg.max_auth_message_bytes))
        .max_message_size(Some(cfg.max_auth_message_bytes))
}

/// The `101 Switching Protocols` answer (RFC 6455 §4.2.2).
pub fn handshake_response(key: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        tungstenite::handshake::derive_accept_key(key.as_bytes())
    )
    .into_bytes()
}

/// The socket as tungstenite sees it: reads from the socket, writes into
/// the connection's queue (flushed by the event loop).
pub struct Wire<'a, S> {
    pub sock: &'a mut S,
    pub out: &'a mut OutQueue,
    /// When reading a client's frames: counts each one before tungstenite
    /// parses it and ends the read at the turn's budget (see [`FrameMeter`]).
    /// `None` when the Wire only carries our writes.
    pub meter: Option<&'a mut FrameMeter>,
}

impl<S: Read> Read for Wire<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.meter.as_deref_mut() {
            Some(meter) => meter.read(buf, |b| self.sock.read(b)),
            None => self.sock.read(buf),
        }
    }
}

impl<S> Write for Wire<'_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.push_owned(buf.to_vec());
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Per-client WebSocket state.
pub struct WsConn {
    /// The protocol state machine (read buffer, close handshake).
    pub ctx: WebSocketContext,
    /// The token's subject, for logs and for checking in-band refreshes.
    pub sub: String,
    /// The client's address (for MAX_CONNECTIONS_PER_IP).
    pub ip: std::net::IpAddr,
    /// When the token stops being valid (exp + leeway); the client is closed
    /// with 4001 unless it sends a fresh token first.
    pub expires_at: Instant,
    /// Last time any frame arrived; silence past PONG_WAIT drops the client.
    pub last_seen: Instant,
    /// When the next protocol Ping is due.
    pub next_ping: Instant,
    /// Set once we sent a close frame: the peer must answer by then.
    pub close_deadline: Option<Instant>,
    /// Every inbound frame counted: rate limit, fragments, per-turn budget.
    pub meter: FrameMeter,
    /// What the connection token's channels claim grants.
    pub grants: Box<[Box<str>]>,
    /// The channels this connection is in or joining (at most
    /// MAX_SUBSCRIPTIONS), each with its position: see
    /// [`crate::subscription`]. The hub's index lists this connection in
    /// exactly these channels.
    pub subs: Vec<Subscription>,
    /// The connection token's `iat` (updated by an in-band refresh): a
    /// revocation or denial compares it with its cut-off (see
    /// [`crate::control`]); `None` counts as older than any cut-off.
    pub iat: Option<u64>,
    /// When the connection was opened (unix seconds): a disconnect this
    /// instance missed while cut off from Redis closes the connections
    /// opened by then.
    pub opened_at: u64,
    /// Upgraded with `?auth=message` and its first message (the token) has
    /// not come yet: no user, no channels, no broadcasts; `expires_at` is the
    /// deadline for that message (close 4008).
    pub awaiting_auth: bool,
}

impl WsConn {
    /// A `subscribe` this client sent is waiting for Redis: its later
    /// requests wait too, so answers leave in request order.
    pub fn awaiting_answer(&self) -> bool {
        self.subs.iter().any(|s| matches!(&s.state, crate::subscription::State::Joining(j) if !j.silent))
    }

    /// Closing: a close frame was sent or received; it takes no more
    /// requests and joins nothing.
    pub fn closing(&self) -> bool {
        self.close_deadline.is_some() || !self.ctx.can_write()
    }
}

/// What a client text message asks of the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// Send this JSON text back.
    Reply(String),
    /// Nothing to do (well-formed but not ours).
    Ignore,
    /// In-band token refresh.
    Auth(String),
    /// Join a channel (maybe with a subscription token, maybe recovering
    /// from a position). The name is not validated yet.
    Subscribe { channel: String, token: Option<String>, since: Option<Since> },
    /// Leave a channel.
    Unsubscribe { channel: String },
    /// A channel message that cannot be acted on: answer with this error.
    Refuse(String),
    /// Close the connection.
    Close(Reason),
}

#[derive(Deserialize)]
struct ClientMessage<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    token: Option<Cow<'a, str>>,
    #[serde(default)]
    channel: Option<serde_json::Value>,
    #[serde(default)]
    since: Option<serde_json::Value>,
}

/// `{"type":"error","payload":{"message": ...}}`.
pub fn error_message(message: &str) -> String {
    let message = serde_json::Value::from(message);
    format!(r#"{{"type":"error","payload":{{"message":{message}}}}}"#)
}

/// Interprets one text message. Ordinary messages are bounded by
/// `max_bytes`; only `auth` messages may use the larger frame limit.
pub fn on_text(text: &str, max_bytes: usize) -> Inbound {
    let msg: ClientMessage = match serde_json::from_str(text) {
        Ok(m) => m,
        Err(_) if text.len() > max_bytes => return Inbound::Close(Reason::TooBig),
        Err(e) if e.is_data() => return Inbound::Ignore,
        Err(e) => return Inbound::Reply(error_message(&format!("invalid JSON: {e}"))),
    };
    let kind = msg.kind.as_deref().unwrap_or("");
    if kind == "auth" {
        return match msg.token {
            Some(t) => Inbound::Auth(t.into_owned()),
            None => Inbound::Reply(error_message("auth message needs a \"token\"")),
        };
    }
    // A subscribe may carry a subscription token: it gets the auth limit.
    if text.len() > max_bytes && !(kind == "subscribe" && msg.token.is_some()) {
        return Inbound::Close(Reason::TooBig);
    }
    match kind {
        "ping" => Inbound::Reply(r#"{"type":"pong"}"#.to_string()),
        "subscribe" | "unsubscribe" => {
            let Some(serde_json::Value::String(channel)) = msg.channel else {
                return Inbound::Refuse(channels::error(
                    Refusal::InvalidChannel,
                    &format!("{kind} needs a \"channel\": {}", channels::NAME_RULE),
                    None,
                ));
            };
            if kind == "unsubscribe" {
                return Inbound::Unsubscribe { channel };
            }
            let since = match msg.since {
                None | Some(serde_json::Value::Null) => None,
                Some(v) => match parse_since(&v) {
                    Some(s) => Some(s),
                    None => {
                        return Inbound::Refuse(channels::error(
                            Refusal::BadRequest,
                            "\"since\" must be {\"epoch\": string, \"offset\": whole number}",
                            Some(&channel),
                        ));
                    }
                },
            };
            Inbound::Subscribe { channel, token: msg.token.map(Cow::into_owned), since }
        }
        _ => Inbound::Ignore,
    }
}

/// `{"epoch": "...", "offset": N}` (an epoch of at most 64 bytes).
fn parse_since(v: &serde_json::Value) -> Option<Since> {
    let epoch = v.get("epoch")?.as_str().filter(|e| e.len() <= 64)?;
    let offset = v.get("offset")?.as_u64()?;
    Some(Since { epoch: epoch.to_string(), offset })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages() {
        let cases: &[(&str, Inbound)] = &[
            (r#"{"type":"ping"}"#, Inbound::Reply(r#"{"type":"pong"}"#.into())),
            (r#"{"type":"hello","x":1}"#, Inbound::Ignore),
            (r#"[1,2,3]"#, Inbound::Ignore),
            (r#""str""#, Inbound::Ignore),
            (r#"{"type":"auth","token":"a.b.c"}"#, Inbound::Auth("a.b.c".into())),
        ];
        for (text, want) in cases {
            assert_eq!(on_text(text, 512), *want, "{text}");
        }
        match on_text("{not json", 512) {
            Inbound::Reply(r) => assert!(r.starts_with(r#"{"type":"error","payload":{"message":"invalid JSON"#), "{r}"),
            other => panic!("{other:?}"),
        }
        let big_ping = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(600));
        assert_eq!(on_text(&big_ping, 512), Inbound::Close(Reason::TooBig));
        let big_auth = format!(r#"{{"type":"auth","token":"{}"}}"#, "x".repeat(1000));
        assert_eq!(on_text(&big_auth, 512), Inbound::Auth("x".repeat(1000)));
        assert_eq!(on_text(&"x".repeat(600), 512), Inbound::Close(Reason::TooBig));
    }

    #[test]
    fn channel_messages() {
        let sub = on_text(r#"{"type":"subscribe","channel":"project:1","since":{"epoch":"e1","offset":4}}"#, 512);
        assert_eq!(
            sub,
            Inbound::Subscribe {
                channel: "project:1".into(),
                token: None,
                since: Some(Since { epoch: "e1".into(), offset: 4 })
            }
        );
        assert_eq!(
            on_text(r#"{"type":"unsubscribe","channel":"x:1"}"#, 512),
            Inbound::Unsubscribe { channel: "x:1".into() }
        );
        for bad in [
            r#"{"type":"subscribe"}"#,
            r#"{"type":"subscribe","channel":7}"#,
            r#"{"type":"subscribe","channel":"p:1","since":{"epoch":"e","offset":-1}}"#,
            r#"{"type":"subscribe","channel":"p:1","since":"yesterday"}"#,
        ] {
            assert!(matches!(on_text(bad, 512), Inbound::Refuse(_)), "{bad}");
        }
        // A subscription token may take a subscribe past the ordinary limit.
        let big = format!(r#"{{"type":"subscribe","channel":"p:1","token":"{}"}}"#, "x".repeat(900));
        assert!(matches!(on_text(&big, 512), Inbound::Subscribe { token: Some(_), .. }));
        let big = format!(r#"{{"type":"subscribe","channel":"p:{}"}}"#, "x".repeat(900));
        assert_eq!(on_text(&big, 512), Inbound::Close(Reason::TooBig));
    }

    #[test]
    fn handshake_accept_key() {
        // RFC 6455 §1.3 example.
        let r = String::from_utf8(handshake_response("dGhlIHNhbXBsZSBub25jZQ==")).unwrap();
        assert!(r.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{r}");
    }
}
