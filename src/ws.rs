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
use std::rc::Rc;
use std::time::Instant;

use serde::Deserialize;
use tungstenite::protocol::{Message, Role, WebSocketConfig, WebSocketContext};

use crate::channels::{self, Refusal};
pub use crate::close::Reason;
use crate::compact::{Millis, PackedIp};
use crate::config::Config;
use crate::frame_meter::FrameMeter;
use crate::hub::Since;
use crate::limits::TokenBucket;
use crate::outqueue::OutQueue;
pub use crate::subscription::Subscription;

/// tungstenite's read buffer per [`Reading`]. Its default (128 KiB) would
/// cost 1.3 GB at 10k clients; client messages here are ≤ 512 B (tokens up
/// to MAX_AUTH_MESSAGE_BYTES grow it on demand), so 512 B covers a read.
/// An idle client holds none (see [`Protocol`]).
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
        self.out.push_copy(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Per-client WebSocket state: what an idle client costs (see
/// `benches/conn_memory.rs`), so what is needed only while reading or
/// closing lives in [`Reading`], held only then.
pub struct WsConn {
    /// tungstenite's protocol state and the frame meter, while a frame or
    /// message is partly read or the close handshake is under way; `None`
    /// for an open, idle connection (see [`Protocol`]).
    pub reading: Option<Box<Reading>>,
    /// The token's subject, for logs and for checking in-band refreshes.
    pub sub: Subject,
    /// The client's address (for MAX_CONNECTIONS_PER_IP).
    pub ip: PackedIp,
    /// When the token stops being valid (exp + leeway); the client is closed
    /// with 4001 unless it sends a fresh token first. (Moments here are
    /// [`Millis`]: 8 bytes each, not an Instant's 16.)
    pub expires_at: Millis,
    /// Last time any frame arrived; silence past PONG_WAIT drops the client.
    pub last_seen: Millis,
    /// When the next protocol Ping is due.
    pub next_ping: Millis,
    /// Set once we sent a close frame: the peer must answer by then.
    pub close_deadline: Option<Millis>,
    /// CLIENT_MESSAGES_PER_SEC's bucket while no [`Reading`] holds it (it
    /// must outlive one: a client pausing between frames gets no refill
    /// it has not earned).
    pub bucket: TokenBucket,
    /// What the connection token's channels claim grants.
    pub grants: Box<[Box<str>]>,
    /// The channels this connection is in or joining (at most
    /// MAX_SUBSCRIPTIONS), each with its position: see
    /// [`crate::subscription`]. The hub's index lists this connection in
    /// exactly these channels.
    pub subs: Vec<Subscription>,
    /// The connection token's `iat` (updated by an in-band refresh): a
    /// revocation or denial compares it with its cut-off (see
    /// [`crate::control`]); none counts as older than any cut-off.
    pub iat: IssuedAt,
    /// When the connection was opened (unix seconds): a disconnect this
    /// instance missed while cut off from Redis closes the connections
    /// opened by then.
    pub opened_at: u64,
    /// Upgraded with `?auth=message` and its first message (the token) has
    /// not come yet: no user, no channels, no broadcasts; `expires_at` is the
    /// deadline for that message (close 4008).
    pub awaiting_auth: bool,
    /// Output held back, 101 included, until the user channel's position is
    /// known (cluster mode): a client that sees the upgrade then gets every
    /// message of its user channel published after it. (Here rather than in
    /// the connection's head, which is full: see `Conn`.)
    pub corked: bool,
}

impl WsConn {
    /// May frames still be sent (not closing)?
    pub fn can_write(&self) -> bool {
        self.reading.as_ref().is_none_or(|r| r.ctx.can_write())
    }

    /// A `subscribe` this client sent is waiting for Redis: its later
    /// requests wait too, so answers leave in request order.
    pub fn awaiting_answer(&self) -> bool {
        self.subs.iter().any(|s| matches!(&s.state, crate::subscription::State::Joining(j) if !j.silent))
    }

    /// Closing: a close frame was sent or received; it takes no more
    /// requests and joins nothing.
    pub fn closing(&self) -> bool {
        self.close_deadline.is_some() || !self.can_write()
    }
}

/// A token's `iat` in 8 bytes where an `Option<u64>` takes 16 (every
/// connection keeps one): seconds since the epoch, plus one; 0 for none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IssuedAt(u64);

impl IssuedAt {
    pub fn get(self) -> Option<u64> {
        self.0.checked_sub(1)
    }
}

impl From<Option<u64>> for IssuedAt {
    /// An `iat` of u64::MAX (not a time) is kept as none: older than any cut-off.
    fn from(iat: Option<u64>) -> IssuedAt {
        IssuedAt(iat.and_then(|s| s.checked_add(1)).unwrap_or(0))
    }
}

/// What reading a client's frames needs between the first byte of a frame
/// and the end of its message, and during the close handshake: ~800 bytes
/// (tungstenite's context and its read buffer, the meter) that an idle
/// client does not hold.
pub struct Reading {
    /// The protocol state machine (read buffer, fragments, close handshake).
    pub ctx: WebSocketContext,
    /// Every inbound frame counted: rate limit, fragments, per-turn budget.
    pub meter: FrameMeter,
}

/// Lends connections a [`Reading`] when they need one and takes it back
/// when they are idle again, and writes our frames for connections that
/// hold none.
///
/// A Reading is taken back only when its meter is [at
/// rest](FrameMeter::at_rest) after a read that would block and the
/// connection is open: every byte read belonged to a whole frame and every
/// frame to a whole message, so tungstenite's buffer is empty, no message
/// is in progress, and the pong or close reply it owed was written before
/// it read again (our `Wire` never blocks a write). Such a context is
/// indistinguishable from a new one.
pub struct Protocol {
    config: WebSocketConfig,
    /// CLIENT_MESSAGES_PER_SEC / _BURST, MAX_MESSAGE_BYTES and
    /// MAX_AUTH_MESSAGE_BYTES, for the meters.
    rate: u32,
    burst: u32,
    max_message: usize,
    max_auth_message: usize,
    /// One Reading taken back, for the next connection that needs one: a
    /// pong per client every PING_INTERVAL would otherwise allocate one.
    spare: Option<Box<Reading>>,
    /// Writes text and pings for open connections with no Reading: with no
    /// write buffer and a sink that never blocks, tungstenite keeps nothing
    /// of a frame it wrote in the open state, so one context serves all.
    writer: WebSocketContext,
}

impl Protocol {
    pub fn new(cfg: &Config) -> Protocol {
        let config = config(cfg);
        Protocol {
            config,
            rate: cfg.client_msg_rate,
            burst: cfg.client_msg_burst,
            max_message: cfg.max_message_bytes,
            max_auth_message: cfg.max_auth_message_bytes,
            spare: None,
            writer: WebSocketContext::new(Role::Server, Some(config)),
        }
    }

    /// The state of a connection just upgraded: no Reading unless bytes
    /// came with the request (they go through a meter first, like every
    /// other frame byte).
    pub fn open(&mut self, leftover: Vec<u8>, now: Instant) -> (Option<Box<Reading>>, TokenBucket) {
        let bucket = TokenBucket::new(self.burst, now);
        if leftover.is_empty() {
            return (None, bucket);
        }
        (Some(self.make(bucket, leftover, now)), TokenBucket::new(0, now))
    }

    fn make(&mut self, bucket: TokenBucket, leftover: Vec<u8>, now: Instant) -> Box<Reading> {
        let meter =
            FrameMeter::resume(self.rate, self.burst, self.max_message, self.max_auth_message, bucket, leftover, now);
        match self.spare.take() {
            Some(mut r) => {
                r.meter = meter;
                r
            }
            None => Box::new(Reading { ctx: WebSocketContext::new(Role::Server, Some(self.config)), meter }),
        }
    }

    /// The connection's Reading, lent now if it holds none.
    pub fn reading<'a>(&mut self, ws: &'a mut WsConn, now: Instant) -> &'a mut Reading {
        if ws.reading.is_none() {
            ws.reading = Some(self.make(ws.bucket, Vec::new(), now));
        }
        ws.reading.as_deref_mut().expect("just set")
    }

    /// Takes the connection's Reading back if it is idle (see [`Protocol`]);
    /// call after a read that would block.
    pub fn release(&mut self, ws: &mut WsConn) {
        if ws.reading.as_ref().is_some_and(|r| r.meter.at_rest() && r.ctx.can_write())
            && let Some(r) = ws.reading.take()
        {
            ws.bucket = r.meter.bucket();
            if self.spare.is_none() {
                self.spare = Some(r);
            }
        }
    }

    /// Writes a message to an open connection (its own context if it holds
    /// one: a pong it owes goes first).
    pub fn write<S: Read>(&mut self, ws: &mut WsConn, wire: &mut Wire<'_, S>, msg: Message) -> tungstenite::Result<()> {
        match ws.reading.as_deref_mut() {
            Some(r) => r.ctx.write(wire, msg),
            None => self.writer.write(wire, msg),
        }
    }
}

/// The token's subject (`sub`). Held as the name of the user's own channel,
/// `user:<sub>`, so that one allocation serves the hub's channel, its name
/// index and every tab the user has open.
#[derive(Clone)]
pub struct Subject(Rc<str>);

impl Subject {
    /// From the name of the user's channel (shared with the hub).
    pub fn shared(user_channel: Rc<str>) -> Subject {
        debug_assert!(user_channel.starts_with(channels::USER_PREFIX));
        Subject(user_channel)
    }

    /// A subject that names no valid channel (empty, or with characters a
    /// channel name may not hold): its own allocation.
    pub fn new(sub: &str) -> Subject {
        Subject(format!("{}{sub}", channels::USER_PREFIX).into())
    }

    pub fn as_str(&self) -> &str {
        &self.0[channels::USER_PREFIX.len()..]
    }
}

impl std::ops::Deref for Subject {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

impl PartialEq<str> for Subject {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<Subject> for &str {
    fn eq(&self, other: &Subject) -> bool {
        *self == other.as_str()
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
    fn issued_at_keeps_every_iat_but_the_impossible_one() {
        for iat in [None, Some(0), Some(1), Some(1_700_000_000), Some(u64::MAX - 1)] {
            assert_eq!(IssuedAt::from(iat).get(), iat);
        }
        assert_eq!(IssuedAt::from(Some(u64::MAX)).get(), None, "not a time: older than any cut-off");
        assert_eq!(std::mem::size_of::<IssuedAt>(), 8);
    }

    #[test]
    fn handshake_accept_key() {
        // RFC 6455 §1.3 example.
        let r = String::from_utf8(handshake_response("dGhlIHNhbXBsZSBub25jZQ==")).unwrap();
        assert!(r.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{r}");
    }
}
