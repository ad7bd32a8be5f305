//! The clients of a soak run: what each kind does wrong (if anything), how
//! the server is expected to end it, and the record the engine keeps per
//! connection.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::ws::{self, OP_BINARY, OP_TEXT};

/// What a soak client does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads everything, answers pings, leaves with a close handshake.
    Healthy,
    /// Stops reading after the handshake (keeps sending heartbeats, so it is
    /// slow rather than silent): expect close 1013 once its queue fills.
    Slow,
    /// Reads everything but never answers a ping: expect to be dropped
    /// (TCP close, no close frame) PONG_WAIT after its last frame.
    Silent,
    /// Sends a text message over MAX_MESSAGE_BYTES: expect 1009.
    Oversized,
    /// Sends a binary frame: expect 1003.
    Binary,
    /// Sends an unmasked frame (RFC 6455 §5.1: "The server MUST close the
    /// connection upon receiving a frame that is not masked"): expect 1002.
    Unmasked,
    /// Sends a frame with a reserved opcode (0x3): expect 1002.
    BadOpcode,
    /// Sends a text frame that is not UTF-8 (RFC 6455 §8.1): expect 1007.
    BadUtf8,
}

/// Every role, in report order.
pub const ROLES: [Role; 8] = [
    Role::Healthy,
    Role::Slow,
    Role::Silent,
    Role::Oversized,
    Role::Binary,
    Role::Unmasked,
    Role::BadOpcode,
    Role::BadUtf8,
];

/// The four kinds an `--invalid` slot cycles through.
pub const INVALID_KINDS: [Role; 4] = [Role::Binary, Role::Unmasked, Role::BadOpcode, Role::BadUtf8];

/// How a client of a role should end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// We close; the server answers our close frame.
    Leaves,
    /// The server sends a close frame with this code.
    Close(u16),
    /// The server drops the TCP connection without a close frame.
    Dropped,
}

impl Expect {
    pub fn label(self) -> String {
        match self {
            Expect::Leaves => "left".into(),
            Expect::Close(c) => format!("close {c}"),
            Expect::Dropped => "dropped (TCP close)".into(),
        }
    }
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Healthy => "healthy",
            Role::Slow => "slow reader",
            Role::Silent => "silent",
            Role::Oversized => "oversized",
            Role::Binary => "binary frame",
            Role::Unmasked => "unmasked frame",
            Role::BadOpcode => "bad opcode",
            Role::BadUtf8 => "invalid UTF-8",
        }
    }

    /// Index into per-role arrays (position in [`ROLES`]).
    pub fn index(self) -> usize {
        ROLES.iter().position(|&r| r == self).unwrap_or(0)
    }

    pub fn expect(self) -> Expect {
        match self {
            Role::Healthy => Expect::Leaves,
            Role::Slow => Expect::Close(1013),
            Role::Silent => Expect::Dropped,
            Role::Oversized => Expect::Close(1009),
            Role::Binary => Expect::Close(1003),
            Role::Unmasked | Role::BadOpcode => Expect::Close(1002),
            Role::BadUtf8 => Expect::Close(1007),
        }
    }

    /// The frame this client sends right after the handshake (None: it
    /// sends nothing wrong). `big` picks the oversized variant that also
    /// exceeds the server's frame limit (MAX_AUTH_MESSAGE_BYTES, 8 KiB by
    /// default) rather than only the message limit.
    pub fn bad_frame(self, max_message_bytes: usize, big: bool, mask: [u8; 4]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        match self {
            Role::Healthy | Role::Slow | Role::Silent => return None,
            Role::Oversized => {
                let len = if big { max_message_bytes + 16 * 1024 } else { max_message_bytes + 512 };
                let msg = padded_ping(len);
                ws::encode_client_frame(&mut out, OP_TEXT, msg.as_bytes(), mask);
            }
            Role::Binary => ws::encode_client_frame(&mut out, OP_BINARY, b"\x00\x01binary", mask),
            Role::Unmasked => {
                let p = br#"{"type":"ping"}"#;
                out.extend_from_slice(&[0x81, p.len() as u8]);
                out.extend_from_slice(p);
            }
            Role::BadOpcode => ws::encode_client_frame(&mut out, 0x3, br#"{"type":"ping"}"#, mask),
            // "{" then 0xC3 0x28: a two-byte sequence whose second byte is
            // not a continuation byte.
            Role::BadUtf8 => ws::encode_client_frame(&mut out, OP_TEXT, &[b'{', 0xC3, 0x28, b'}'], mask),
        }
        Some(out)
    }
}

/// `{"type":"ping","pad":"xx…"}` of exactly `len` bytes (valid JSON, so
/// only its size is wrong).
pub fn padded_ping(len: usize) -> String {
    let fixed = r#"{"type":"ping","pad":""}"#.len();
    let mut s = String::with_capacity(len.max(fixed));
    s.push_str(r#"{"type":"ping","pad":""#);
    s.extend(std::iter::repeat_n('x', len.saturating_sub(fixed)));
    s.push_str(r#""}"#);
    s
}

/// How a soak connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// We sent a close frame and the server answered it.
    Left,
    /// We sent a close frame and no answer came within the bound.
    LeaveTimeout,
    /// The server sent a close frame with this code (1005: none given).
    Closed(u16),
    /// The server closed the TCP connection without a close frame.
    Eof,
    /// Anything else (reset, handshake failure, protocol error by the
    /// server), with its cause.
    Error(String),
}

impl Outcome {
    /// Short label for counting outcomes.
    pub fn label(&self) -> String {
        match self {
            Outcome::Left => "left".into(),
            Outcome::LeaveTimeout => "close unanswered".into(),
            Outcome::Closed(c) => format!("close {c}"),
            Outcome::Eof => "dropped (TCP close)".into(),
            Outcome::Error(e) => e.clone(),
        }
    }

    pub fn matches(&self, e: Expect) -> bool {
        matches!((self, e), (Outcome::Left, Expect::Leaves) | (Outcome::Eof, Expect::Dropped))
            || matches!((self, e), (Outcome::Closed(a), Expect::Close(b)) if *a == b)
    }
}

/// Gap ranges kept per client (a broken server could produce one per
/// message; past this only the total is counted).
pub const MAX_GAPS: usize = 32;

/// The broadcast sequence numbers one client received, in O(1) memory:
/// with one publisher they must arrive in increasing order without holes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqLog {
    /// First seq received.
    pub first: Option<u64>,
    /// Highest seq received.
    pub last: u64,
    /// Messages received with a new, higher seq.
    pub count: u64,
    /// Messages whose seq was not above the previous one (duplicate or
    /// out of order).
    pub disorder: u64,
    /// Holes: `[from, to)` ranges skipped between two received seqs (the
    /// first MAX_GAPS of them).
    pub gaps: Vec<(u64, u64)>,
    /// Seqs skipped in all holes, listed or not.
    pub gap_seqs: u64,
}

impl SeqLog {
    pub fn on_seq(&mut self, seq: u64) {
        let Some(_) = self.first else {
            self.first = Some(seq);
            self.last = seq;
            self.count = 1;
            return;
        };
        if seq <= self.last {
            self.disorder += 1;
            return;
        }
        if seq > self.last + 1 {
            if self.gaps.len() < MAX_GAPS {
                self.gaps.push((self.last + 1, seq));
            }
            self.gap_seqs += seq - self.last - 1;
        }
        self.last = seq;
        self.count += 1;
    }
}

/// A slow reader's watch while it is not reading: it resumes once the
/// server has written nothing more to its socket while enough broadcasts
/// were accepted to overflow the send queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    pub since: Instant,
    /// Bytes the server has written to this connection, as last seen in
    /// /proc/net/tcp (its send queue + our receive queue; we read nothing).
    pub written: u64,
    /// Broadcasts accepted when `written` last changed.
    pub accepted_at_change: u64,
    /// Last unsolicited Pong sent (the heartbeat that keeps it from being
    /// dropped as silent).
    pub last_heartbeat: Instant,
}

/// Per-connection record of a soak client, kept by the engine while the
/// connection lives and handed back when it ends.
#[derive(Debug, Clone)]
pub struct Life {
    pub role: Role,
    /// Misbehaving-client slot to refill when this one ends.
    pub slot: Option<usize>,
    /// Churn clients: leave this long after the handshake.
    pub lifetime: Option<Duration>,
    /// Oversized clients: which variant to send.
    pub big: bool,
    /// When the upgrade request was written (completely or not).
    pub requested: Option<Instant>,
    /// When the 101 was read.
    pub opened: Option<Instant>,
    /// When we started leaving (wrote our close frame).
    pub left: Option<Instant>,
    pub ended: Option<Instant>,
    pub outcome: Option<Outcome>,
    pub seqs: SeqLog,
    /// Server pings received (a silent client counts them, unanswered).
    pub pings: u32,
    /// Our address (to find the socket in /proc/net/tcp).
    pub local: Option<SocketAddr>,
    /// Some while a slow reader is not reading.
    pub stall: Option<Stall>,
    /// When a slow reader started reading again.
    pub resumed: Option<Instant>,
    /// The stall ended at its time bound, not because the queue must have
    /// filled.
    pub stall_timed_out: bool,
    /// Cluster soak: which instance it connects to (an index into
    /// `Engine::targets`; 0 with one server).
    pub instance: usize,
}

impl Life {
    pub fn new(role: Role) -> Life {
        Life {
            role,
            slot: None,
            lifetime: None,
            big: false,
            requested: None,
            opened: None,
            left: None,
            ended: None,
            outcome: None,
            seqs: SeqLog::default(),
            pings: 0,
            local: None,
            stall: None,
            resumed: None,
            stall_timed_out: false,
            instance: 0,
        }
    }

    /// Seconds from the 101 to the end (None if it never opened).
    pub fn open_secs(&self) -> Option<f64> {
        Some(self.ended?.saturating_duration_since(self.opened?).as_secs_f64())
    }

    /// Seconds from writing the upgrade request to the end.
    pub fn request_secs(&self) -> Option<f64> {
        Some(self.ended?.saturating_duration_since(self.requested?).as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::{FrameParse, parse_frame};

    /// Unmasks a client frame (the server's view), for checking what we send.
    fn unmask(frame: &[u8]) -> (u8, bool, Vec<u8>) {
        let op = frame[0] & 0x0F;
        let masked = frame[1] & 0x80 != 0;
        let (len, mut off) = match frame[1] & 0x7F {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            127 => (u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize, 10),
            n => (n as usize, 2),
        };
        let mut payload = Vec::new();
        if masked {
            let m = &frame[off..off + 4];
            off += 4;
            payload.extend(frame[off..off + len].iter().enumerate().map(|(i, b)| b ^ m[i & 3]));
        } else {
            payload.extend_from_slice(&frame[off..off + len]);
        }
        assert_eq!(off + len, frame.len());
        (op, masked, payload)
    }

    #[test]
    fn bad_frames_are_what_they_claim() {
        let m = [9, 8, 7, 6];
        assert!(Role::Healthy.bad_frame(512, false, m).is_none());
        assert!(Role::Slow.bad_frame(512, false, m).is_none());
        assert!(Role::Silent.bad_frame(512, false, m).is_none());

        let (op, masked, p) = unmask(&Role::Oversized.bad_frame(512, false, m).unwrap());
        assert_eq!((op, masked, p.len()), (OP_TEXT, true, 1024));
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["type"], "ping");
        let (_, _, p) = unmask(&Role::Oversized.bad_frame(512, true, m).unwrap());
        assert!(p.len() > 16 * 1024);

        assert_eq!(unmask(&Role::Binary.bad_frame(512, false, m).unwrap()).0, OP_BINARY);
        let (op, masked, p) = unmask(&Role::Unmasked.bad_frame(512, false, m).unwrap());
        assert_eq!((op, masked), (OP_TEXT, false));
        assert_eq!(p, br#"{"type":"ping"}"#);
        let (op, masked, _) = unmask(&Role::BadOpcode.bad_frame(512, false, m).unwrap());
        assert_eq!((op, masked), (0x3, true));
        let (op, _, p) = unmask(&Role::BadUtf8.bad_frame(512, false, m).unwrap());
        assert_eq!(op, OP_TEXT);
        assert!(std::str::from_utf8(&p).is_err());
        // our own parser (server-to-client rules) refuses the opcode too
        assert!(matches!(parse_frame(&[0x83, 0], 100), FrameParse::Error(_)));
    }

    #[test]
    fn padded_ping_has_the_asked_size() {
        for len in [0, 10, 25, 513, 4096] {
            let s = padded_ping(len);
            assert_eq!(s.len(), len.max(24), "{len}");
            assert!(serde_json::from_str::<serde_json::Value>(&s).is_ok());
        }
    }

    #[test]
    fn expectations() {
        assert!(Outcome::Closed(1013).matches(Role::Slow.expect()));
        assert!(!Outcome::Closed(1009).matches(Role::Slow.expect()));
        assert!(!Outcome::Eof.matches(Role::Slow.expect()));
        assert!(Outcome::Eof.matches(Role::Silent.expect()));
        assert!(!Outcome::Closed(1000).matches(Role::Silent.expect()));
        assert!(Outcome::Left.matches(Role::Healthy.expect()));
        assert!(!Outcome::LeaveTimeout.matches(Role::Healthy.expect()));
        assert!(Outcome::Closed(1002).matches(Role::Unmasked.expect()));
        assert!(Outcome::Closed(1002).matches(Role::BadOpcode.expect()));
        assert!(Outcome::Closed(1007).matches(Role::BadUtf8.expect()));
        assert!(Outcome::Closed(1003).matches(Role::Binary.expect()));
        assert!(Outcome::Closed(1009).matches(Role::Oversized.expect()));
        for (i, r) in ROLES.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }

    #[test]
    fn seq_log_in_order_gaps_and_disorder() {
        let mut l = SeqLog::default();
        for s in [5, 6, 7] {
            l.on_seq(s);
        }
        assert_eq!((l.first, l.last, l.count, l.gap_seqs, l.disorder), (Some(5), 7, 3, 0, 0));
        l.on_seq(10); // 8, 9 missing
        l.on_seq(10); // duplicate
        l.on_seq(9); // late
        l.on_seq(11);
        assert_eq!(l.gaps, vec![(8, 10)]);
        assert_eq!((l.last, l.count, l.gap_seqs, l.disorder), (11, 5, 2, 2));

        let mut l = SeqLog::default();
        for s in (0..1000).step_by(2) {
            l.on_seq(s);
        }
        assert_eq!(l.gaps.len(), MAX_GAPS);
        assert_eq!(l.gap_seqs, 499);
    }
}
