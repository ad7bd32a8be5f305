//! Every frame a client sends, counted before tungstenite parses it.
//!
//! `WebSocketContext::read` loops over frames until one completes a
//! message: a Ping, a Pong, or a continuation frame that does not finish
//! its message never returns to the loop. A client sending endless empty
//! continuation frames (opcode 0, FIN=0, length 0: 6 bytes each) kept the
//! loop inside one `read` for as long as it sent, and no message-level
//! limit ever saw them. So the bytes are metered on their way in: the
//! [`crate::ws::Wire`] hands tungstenite at most [`READ_CHUNK_BYTES`] per
//! read, this scanner walks the frame headers in them (RFC 6455 §5.2), and
//! each frame — data, continuation or control — takes a token from the
//! client's bucket, counts toward this turn's budget and, if it is a
//! fragment, toward its message's fragment limit. The scanner reads the
//! headers (and the first bytes of a fragmented message); tungstenite still
//! does all the parsing and checking.
//!
//! It also closes as soon as what has arrived decides it, rather than when
//! a message completes:
//! - a binary frame gets 1003 at its header (taskcast takes only text);
//! - a fragmented text message gets 1009 at the header of the fragment
//!   that takes it past its limit. The limit is MAX_MESSAGE_BYTES, or
//!   MAX_AUTH_MESSAGE_BYTES while the message's first bytes are consistent
//!   with one of [`LARGE_MESSAGE_PREFIXES`] — the only messages that may
//!   carry a token (`auth`, and `subscribe` with a subscription token), as
//!   serializers write them. Fail closed: a fragmented message over
//!   MAX_MESSAGE_BYTES that starts any other way (another first key,
//!   whitespace) is refused. Browsers do not fragment what they send; an
//!   unfragmented message is judged whole by [`crate::ws::on_text`].

use std::time::Instant;

use crate::close::Reason;
use crate::limits::{self, TokenBucket};

/// How a fragmented message that may exceed MAX_MESSAGE_BYTES (up to
/// MAX_AUTH_MESSAGE_BYTES) must begin, byte for byte: `auth` or `subscribe`
/// as its first key (what `JSON.stringify` writes for the browser client),
/// or `token` first (what serializers that sort keys write for an `auth`).
pub const LARGE_MESSAGE_PREFIXES: [&[u8]; 3] = [br#"{"type":"auth""#, br#"{"type":"subscribe""#, br#"{"token":""#];
/// Bytes of a fragmented message's start kept to compare with those.
const PREFIX_BYTES: usize = 19;
const _: () = {
    let mut i = 0;
    while i < LARGE_MESSAGE_PREFIXES.len() {
        assert!(LARGE_MESSAGE_PREFIXES[i].len() <= PREFIX_BYTES);
        i += 1;
    }
};

/// Bytes handed to tungstenite per read call: small, so a refusal or the
/// end of a turn's budget comes within a few hundred frames of its cause.
pub const READ_CHUNK_BYTES: usize = 1024;

/// Frame headers and per-client counts for one WebSocket client.
pub struct FrameMeter {
    /// Header bytes of the frame whose header is being read (at most 14:
    /// 2 + 8 extended length + 4 mask).
    hdr: [u8; 14],
    hdr_len: usize,
    /// Payload bytes of the current frame not yet passed.
    payload_left: u64,
    /// Frames so far of the fragmented message in progress (0: none).
    fragments: u32,
    /// CLIENT_MESSAGES_PER_SEC / _BURST, taken once per frame.
    bucket: TokenBucket,
    rate: u32,
    burst: u32,
    /// This turn's time, and what passed in it (see [`FrameMeter::start_turn`]).
    now: Instant,
    turn_bytes: usize,
    turn_frames: usize,
    /// Set when this turn's budget ran out: the connection is read again
    /// next turn (the socket may hold more; no new event will say so).
    pub spent: bool,
    /// Why the client's frames were refused: the connection is failed with it.
    pub refused: Option<Reason>,
    /// Bytes that arrived with the upgrade request: passed (and counted) first.
    pending: Vec<u8>,
    /// MAX_MESSAGE_BYTES and MAX_AUTH_MESSAGE_BYTES.
    max_message: u64,
    max_auth_message: u64,
    /// A fragmented text message is in progress: the payload bytes its
    /// frame headers announced so far.
    message_bytes: Option<u64>,
    /// Its first bytes, unmasked (see [`LARGE_MESSAGE_PREFIXES`]).
    prefix: [u8; PREFIX_BYTES],
    prefix_len: usize,
    /// The current frame's payload belongs to that message (not a control
    /// frame between its fragments), with the frame's mask key and how far
    /// into its payload the scan is.
    in_message: bool,
    mask: [u8; 4],
    payload_pos: u64,
}

impl FrameMeter {
    /// A meter for one client: `rate`/`burst` per CLIENT_MESSAGES_PER_SEC /
    /// _BURST, `max_message`/`max_auth_message` per MAX_MESSAGE_BYTES /
    /// MAX_AUTH_MESSAGE_BYTES, `leftover` the bytes that came with the
    /// upgrade request.
    pub fn new(
        rate: u32,
        burst: u32,
        max_message: usize,
        max_auth_message: usize,
        leftover: Vec<u8>,
        now: Instant,
    ) -> FrameMeter {
        let bucket = TokenBucket::new(burst, now);
        FrameMeter::resume(rate, burst, max_message, max_auth_message, bucket, leftover, now)
    }

    /// A meter at a frame boundary whose client's bucket is `bucket` (kept
    /// by the connection while it holds no meter: see [`crate::ws::Reading`]).
    pub fn resume(
        rate: u32,
        burst: u32,
        max_message: usize,
        max_auth_message: usize,
        bucket: TokenBucket,
        leftover: Vec<u8>,
        now: Instant,
    ) -> FrameMeter {
        FrameMeter {
            max_message: max_message as u64,
            max_auth_message: max_auth_message.max(max_message) as u64,
            message_bytes: None,
            prefix: [0; PREFIX_BYTES],
            prefix_len: 0,
            in_message: false,
            mask: [0; 4],
            payload_pos: 0,
            hdr: [0; 14],
            hdr_len: 0,
            payload_left: 0,
            fragments: 0,
            bucket,
            rate,
            burst,
            now,
            turn_bytes: 0,
            turn_frames: 0,
            spent: false,
            refused: None,
            pending: leftover,
        }
    }

    /// A new loop turn: the per-turn budget starts again.
    pub fn start_turn(&mut self, now: Instant) {
        self.now = now;
        self.turn_bytes = 0;
        self.turn_frames = 0;
        self.spent = false;
    }

    /// The client's token bucket as it stands.
    pub fn bucket(&self) -> TokenBucket {
        self.bucket
    }

    /// Nothing partly passed: every byte handed to tungstenite belongs to a
    /// whole frame, no fragmented message is in progress, nothing waits,
    /// nothing was refused, the turn's budget was not what stopped the read.
    /// After a read that would block, tungstenite then holds nothing either.
    pub fn at_rest(&self) -> bool {
        self.hdr_len == 0
            && self.payload_left == 0
            && self.fragments == 0
            && self.message_bytes.is_none()
            && self.pending.is_empty()
            && self.refused.is_none()
            && !self.spent
    }

    /// Any bytes still waiting from the upgrade request?
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Is this turn's budget used up? (Then reads say WouldBlock.)
    pub fn turn_over(&self) -> bool {
        self.turn_bytes >= limits::READ_BUDGET_BYTES || self.turn_frames >= limits::READ_BUDGET_FRAMES
    }

    /// Fills `buf` (at most [`READ_CHUNK_BYTES`]) from the pending bytes or
    /// from `read`, and meters what it passes. Returns the bytes passed;
    /// bytes read past the end of the turn's budget wait in `pending`.
    pub fn read(
        &mut self,
        buf: &mut [u8],
        read: impl FnOnce(&mut [u8]) -> std::io::Result<usize>,
    ) -> std::io::Result<usize> {
        use std::io::{Error, ErrorKind};
        if self.refused.is_some() {
            return Err(Error::other("frames refused"));
        }
        if self.turn_over() {
            self.spent = true;
            return Err(ErrorKind::WouldBlock.into());
        }
        let max = buf.len().min(READ_CHUNK_BYTES);
        let n = if self.pending.is_empty() {
            read(&mut buf[..max])?
        } else {
            let n = max.min(self.pending.len());
            buf[..n].copy_from_slice(&self.pending[..n]);
            self.pending.drain(..n);
            n
        };
        match self.scan(&buf[..n]) {
            Ok(passed) => {
                if passed < n {
                    // The turn's frame budget ended mid-chunk: keep the rest.
                    let mut rest = buf[passed..n].to_vec();
                    rest.append(&mut self.pending);
                    self.pending = rest;
                }
                Ok(passed)
            }
            Err(reason) => {
                self.refused = Some(reason);
                Err(Error::other("frames refused"))
            }
        }
    }

    /// Walks `bytes`; returns how many may pass (all, or up to the first
    /// frame past this turn's frame budget), or why the client is refused.
    fn scan(&mut self, bytes: &[u8]) -> Result<usize, Reason> {
        let mut i = 0;
        while i < bytes.len() {
            if self.payload_left > 0 {
                let take = self.payload_left.min((bytes.len() - i) as u64);
                if self.in_message && self.prefix_len < PREFIX_BYTES {
                    self.keep_prefix(&bytes[i..i + take as usize])?;
                }
                self.payload_left -= take;
                self.payload_pos += take;
                i += take as usize;
                continue;
            }
            if self.hdr_len == 0 && self.turn_frames >= limits::READ_BUDGET_FRAMES {
                break; // the next frame waits for the next turn
            }
            self.hdr[self.hdr_len] = bytes[i];
            self.hdr_len += 1;
            i += 1;
            if self.hdr_len < 2 {
                continue;
            }
            let ext = match self.hdr[1] & 0x7f {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let mask = if self.hdr[1] & 0x80 != 0 { 4 } else { 0 };
            if self.hdr_len < 2 + ext + mask {
                continue;
            }
            self.payload_left = match ext {
                2 => u16::from_be_bytes([self.hdr[2], self.hdr[3]]) as u64,
                8 => u64::from_be_bytes(self.hdr[2..10].try_into().expect("8 bytes")),
                _ => (self.hdr[1] & 0x7f) as u64,
            };
            let (fin, opcode) = (self.hdr[0] & 0x80 != 0, self.hdr[0] & 0x0f);
            self.mask = match mask {
                4 => self.hdr[2 + ext..6 + ext].try_into().expect("4 bytes"),
                _ => [0; 4], // unmasked: tungstenite refuses it (RFC 6455 §5.1)
            };
            self.payload_pos = 0;
            self.hdr_len = 0;
            self.on_frame(fin, opcode)?;
        }
        self.turn_bytes += i;
        Ok(i)
    }

    /// One frame header seen (`payload_left` holds its payload length).
    fn on_frame(&mut self, fin: bool, opcode: u8) -> Result<(), Reason> {
        self.turn_frames += 1;
        if !self.bucket.take(self.burst, self.rate, self.now) {
            return Err(Reason::RateLimited);
        }
        self.in_message = false;
        match opcode {
            // Continuation: one more fragment of the message in progress
            // (tungstenite refuses one with no message in progress).
            0 => {
                self.fragments = self.fragments.saturating_add(1);
                if self.fragments > limits::MAX_MESSAGE_FRAGMENTS {
                    return Err(Reason::TooFragmented);
                }
                if let Some(bytes) = self.message_bytes {
                    self.message_bytes = Some(bytes.saturating_add(self.payload_left));
                    self.check_message_size()?;
                    self.in_message = !fin;
                }
                if fin {
                    self.fragments = 0;
                    self.message_bytes = None;
                }
            }
            // Binary: never part of taskcast's protocol; refused at its
            // header, not once the whole message has been read.
            2 => return Err(Reason::Binary),
            // Control frames may come between fragments (§5.4).
            8..=15 => {}
            // A new data frame: starts a fragmented message unless FIN.
            _ => {
                self.fragments = u32::from(!fin);
                self.message_bytes = None;
                if !fin && opcode == 1 {
                    self.message_bytes = Some(self.payload_left);
                    self.prefix_len = 0;
                    self.in_message = true;
                    self.check_message_size()?;
                }
            }
        }
        Ok(())
    }

    /// Keeps (unmasked) the first bytes of the fragmented message in
    /// progress, and checks its size again: a start that rules out an
    /// `auth`/`subscribe` message lowers its limit to MAX_MESSAGE_BYTES.
    fn keep_prefix(&mut self, payload: &[u8]) -> Result<(), Reason> {
        for (k, b) in payload.iter().take(PREFIX_BYTES - self.prefix_len).enumerate() {
            self.prefix[self.prefix_len] = b ^ self.mask[((self.payload_pos + k as u64) % 4) as usize];
            self.prefix_len += 1;
        }
        self.check_message_size()
    }

    /// 1009 once the fragmented message in progress is larger than it may be.
    fn check_message_size(&self) -> Result<(), Reason> {
        let Some(bytes) = self.message_bytes else { return Ok(()) };
        let seen = &self.prefix[..self.prefix_len];
        let may_carry_token = LARGE_MESSAGE_PREFIXES.iter().any(|p| p.starts_with(seen) || seen.starts_with(p));
        let limit = if may_carry_token { self.max_auth_message } else { self.max_message };
        if bytes > limit { Err(Reason::TooBig) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        match len {
            0..=125 => f.push(0x80 | len as u8),
            126..=65535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend(std::iter::repeat_n(b'x', len));
        f
    }

    fn meter(burst: u32) -> FrameMeter {
        FrameMeter::new(1, burst, 512, 8192, Vec::new(), Instant::now())
    }

    #[test]
    fn counts_frames_of_every_size_across_chunk_boundaries() {
        let bytes: Vec<u8> =
            [frame(true, 1, 5), frame(true, 9, 0), frame(true, 1, 300), frame(true, 1, 70000)].concat();
        // Byte by byte: headers split anywhere still count once each.
        let mut m = meter(100);
        for b in &bytes {
            assert_eq!(m.scan(std::slice::from_ref(b)), Ok(1));
        }
        assert_eq!(m.turn_frames, 4);
        assert_eq!((m.hdr_len, m.payload_left), (0, 0));
    }

    #[test]
    fn every_frame_takes_a_token() {
        let mut m = meter(3);
        let three: Vec<u8> = [frame(false, 1, 1), frame(false, 0, 0), frame(true, 10, 0)].concat();
        assert_eq!(m.scan(&three), Ok(three.len()));
        assert_eq!(m.scan(&frame(false, 0, 0)), Err(Reason::RateLimited));
    }

    #[test]
    fn fragments_per_message_are_bounded() {
        let mut m = meter(u32::MAX);
        m.rate = u32::MAX;
        assert_eq!(m.scan(&frame(false, 1, 1)), Ok(7));
        for _ in 1..limits::MAX_MESSAGE_FRAGMENTS {
            m.start_turn(m.now);
            assert!(m.scan(&frame(false, 0, 0)).is_ok());
        }
        // A message that ends resets the count; one more fragment refuses.
        let mut ended = meter(1000);
        ended.fragments = limits::MAX_MESSAGE_FRAGMENTS - 1;
        assert!(ended.scan(&frame(true, 0, 0)).is_ok());
        assert_eq!(ended.fragments, 0);
        assert_eq!(m.scan(&frame(false, 0, 0)), Err(Reason::TooFragmented));
    }

    /// A client frame carrying `payload`, masked with key 1 2 3 4.
    fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = frame(fin, opcode, payload.len());
        let start = f.len() - payload.len();
        for (i, b) in payload.iter().enumerate() {
            f[start + i] = b ^ [1, 2, 3, 4][i % 4];
        }
        f
    }

    /// Scans `frames` in order; the index of the first one refused, and why.
    fn first_refused(m: &mut FrameMeter, frames: &[Vec<u8>]) -> Option<(usize, Reason)> {
        frames.iter().enumerate().find_map(|(i, f)| m.scan(f).err().map(|r| (i, r)))
    }

    #[test]
    fn a_fragmented_message_is_refused_at_the_fragment_that_takes_it_over() {
        // `{"type":"ping","pad":"xxx…` in 100-byte fragments, limit 512:
        // the sixth fragment's header takes it to 600 bytes.
        let text = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(4000));
        let chunks: Vec<&[u8]> = text.as_bytes().chunks(100).collect();
        let frames: Vec<Vec<u8>> = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| masked(i == chunks.len() - 1, if i == 0 { 1 } else { 0 }, c))
            .collect();
        assert_eq!(first_refused(&mut meter(1000), &frames), Some((5, Reason::TooBig)));
        // Its header alone decides: nothing of its payload is needed.
        let mut m = meter(1000);
        for f in &frames[..5] {
            assert!(m.scan(f).is_ok());
        }
        assert_eq!(m.scan(&frames[5][..6]), Err(Reason::TooBig));
    }

    #[test]
    fn an_auth_or_subscribe_message_may_be_fragmented_up_to_the_auth_limit() {
        for start in [
            r#"{"type":"auth","token":""#,
            r#"{"type":"subscribe","channel":"p:1","token":""#,
            r#"{"token":"t.t.t","type":"auth","pad":""#,
        ] {
            let text = format!("{start}{}\"}}", "t".repeat(8000));
            let frames: Vec<Vec<u8>> = text
                .as_bytes()
                .chunks(1000)
                .enumerate()
                .map(|(i, c)| masked(c.len() < 1000, if i == 0 { 1 } else { 0 }, c))
                .collect();
            assert_eq!(first_refused(&mut meter(1000), &frames), None, "{start}");
            let over = format!("{start}{}\"}}", "t".repeat(8200));
            let frames: Vec<Vec<u8>> = over
                .as_bytes()
                .chunks(1000)
                .enumerate()
                .map(|(i, c)| masked(c.len() < 1000, if i == 0 { 1 } else { 0 }, c))
                .collect();
            assert_eq!(first_refused(&mut meter(1000), &frames), Some((8, Reason::TooBig)), "{start}");
        }
    }

    #[test]
    fn the_start_of_a_message_decides_its_limit_as_soon_as_it_arrives() {
        // `{"ty` could still be an auth message; `{"type":"ping"` cannot:
        // refused in the payload byte that shows it, not at the end.
        let mut m = meter(1000);
        assert!(m.scan(&masked(false, 1, br#"{"ty"#)).is_ok());
        let second = masked(false, 0, format!(r#"pe":"ping","pad":"{}"#, "x".repeat(600)).as_bytes());
        let mut refused_at = None;
        for (i, b) in second.iter().enumerate() {
            if m.scan(std::slice::from_ref(b)).is_err() {
                refused_at = Some(i);
                break;
            }
        }
        // 8 header bytes (2 + 2 length + 4 mask), then `pe":"` (still
        // consistent with both), then the `p` that rules both out.
        assert_eq!(refused_at, Some(8 + 5));
        // A Ping between fragments is not part of the message's start.
        let mut m = meter(1000);
        assert!(m.scan(&masked(false, 1, br#"{"type":""#)).is_ok());
        assert!(m.scan(&masked(true, 9, b"ping")).is_ok());
        assert!(m.scan(&masked(false, 0, br#"auth","token":""#)).is_ok());
        assert!(m.scan(&masked(true, 0, "t".repeat(2000).as_bytes())).is_ok());
        assert_eq!(m.message_bytes, None, "the message ended");
    }

    #[test]
    fn a_binary_frame_is_refused_at_its_header() {
        for fin in [false, true] {
            let mut m = meter(1000);
            let f = masked(fin, 2, &[0; 100]);
            assert_eq!(m.scan(&f[..6]), Err(Reason::Binary), "fin {fin}");
        }
    }

    #[test]
    fn at_rest_only_between_whole_messages() {
        let mut m = meter(100);
        assert!(m.at_rest());
        let f = frame(true, 1, 300);
        assert_eq!(m.scan(&f[..1]), Ok(1));
        assert!(!m.at_rest(), "inside a header");
        assert_eq!(m.scan(&f[1..10]), Ok(9));
        assert!(!m.at_rest(), "inside a payload");
        assert_eq!(m.scan(&f[10..]), Ok(f.len() - 10));
        assert!(m.at_rest());
        assert_eq!(m.scan(&frame(false, 1, 3)), Ok(9));
        assert!(!m.at_rest(), "a fragmented message in progress");
        assert_eq!(m.scan(&frame(true, 9, 0)), Ok(6));
        assert!(!m.at_rest(), "a ping between fragments does not end the message");
        assert_eq!(m.scan(&frame(true, 0, 2)), Ok(8));
        assert!(m.at_rest());
        let mut spent = meter(100);
        spent.spent = true;
        assert!(!spent.at_rest(), "the budget stopped the read: bytes may wait in the socket");
        assert!(!FrameMeter::new(1, 1, 512, 8192, vec![0x81], Instant::now()).at_rest(), "upgrade leftovers wait");
    }

    #[test]
    fn frame_budget_ends_the_turn_at_a_frame_boundary() {
        let mut m = meter(u32::MAX);
        m.turn_frames = limits::READ_BUDGET_FRAMES - 1;
        let two: Vec<u8> = [frame(true, 9, 0), frame(true, 9, 0)].concat();
        assert_eq!(m.scan(&two), Ok(6));
        assert!(m.turn_over());
    }
}
