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
//! fragment, toward its message's fragment limit. The scanner only reads
//! headers; tungstenite still does all the parsing and checking.

use std::time::Instant;

use crate::close::Reason;
use crate::limits::{self, TokenBucket};

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
}

impl FrameMeter {
    pub fn new(rate: u32, burst: u32, leftover: Vec<u8>, now: Instant) -> FrameMeter {
        FrameMeter {
            hdr: [0; 14],
            hdr_len: 0,
            payload_left: 0,
            fragments: 0,
            bucket: TokenBucket::new(burst, now),
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
                self.payload_left -= take;
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
            self.hdr_len = 0;
            self.on_frame(fin, opcode)?;
        }
        self.turn_bytes += i;
        Ok(i)
    }

    /// One frame header seen.
    fn on_frame(&mut self, fin: bool, opcode: u8) -> Result<(), Reason> {
        self.turn_frames += 1;
        if !self.bucket.take(self.burst, self.rate, self.now) {
            return Err(Reason::RateLimited);
        }
        match opcode {
            // Continuation: one more fragment of the message in progress
            // (tungstenite refuses one with no message in progress).
            0 => {
                self.fragments = self.fragments.saturating_add(1);
                if self.fragments > limits::MAX_MESSAGE_FRAGMENTS {
                    return Err(Reason::TooFragmented);
                }
                if fin {
                    self.fragments = 0;
                }
            }
            // Control frames may come between fragments (§5.4).
            8..=15 => {}
            // A new data frame: starts a fragmented message unless FIN.
            _ => self.fragments = u32::from(!fin),
        }
        Ok(())
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
        FrameMeter::new(1, burst, Vec::new(), Instant::now())
    }

    #[test]
    fn counts_frames_of_every_size_across_chunk_boundaries() {
        let bytes: Vec<u8> =
            [frame(true, 1, 5), frame(true, 9, 0), frame(true, 1, 300), frame(true, 2, 70000)].concat();
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

    #[test]
    fn frame_budget_ends_the_turn_at_a_frame_boundary() {
        let mut m = meter(u32::MAX);
        m.turn_frames = limits::READ_BUDGET_FRAMES - 1;
        let two: Vec<u8> = [frame(true, 9, 0), frame(true, 9, 0)].concat();
        assert_eq!(m.scan(&two), Ok(6));
        assert!(m.turn_over());
    }
}
