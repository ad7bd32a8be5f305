//! Writing: the loop's "before sleep" step. Connections with answers or
//! control frames are written once per turn (`dirty`); connections holding
//! only broadcast frames are written in rounds (`deferred`), each round at
//! most FLUSH_SLICE per turn and held between rounds for as long as the
//! last one took (at most FLUSH_DELAY_MICROS). One vectored write per
//! connection per turn, whatever number of frames it carries.

use std::net::Shutdown;
use std::time::Instant;

use log::debug;

use super::conn::Phase;
use super::{FLUSH_SLICE, Server};
use crate::outqueue::Flush;

impl Server {
    pub(super) fn mark_dirty(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key)
            && !conn.dirty
        {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }

    /// "Before sleep": one write attempt per connection with output.
    pub(super) fn flush_dirty(&mut self) {
        for key in std::mem::take(&mut self.dirty) {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.dirty = false;
                self.flush_conn(key);
            }
        }
    }

    /// Writes connections that only have broadcast frames waiting, in
    /// rounds. A round writes every listed connection once, in the order
    /// they were listed, at most FLUSH_SLICE per turn: past that the loop
    /// polls again (a publisher's request is read and answered between two
    /// slices, and the frames of broadcasts that arrive meanwhile ride along
    /// in the writes still ahead). Between rounds the frames are held for as
    /// long as the last round took, at most FLUSH_DELAY_MICROS: nothing for
    /// a handful of clients (a lone broadcast leaves at once), up to the
    /// delay when writing everyone is the loop's main cost — then each
    /// write carries more frames. HTTP answers, control and close frames
    /// never wait here (they go through `dirty`).
    pub(super) fn flush_deferred(&mut self, now: Instant) {
        if self.deferred.is_empty() {
            return;
        }
        if self.round_start.is_none() {
            let hold = self.last_round_cost.min(self.config.flush_delay);
            if let Some(end) = self.last_round_end
                && now.saturating_duration_since(end) < hold
            {
                self.fanout_flush_at = Some(end + hold);
                return;
            }
            self.fanout_flush_at = None;
            self.round_start = Some(now);
        }
        let slice_end = now + FLUSH_SLICE;
        while self.deferred_pos < self.deferred.len() {
            let key = self.deferred[self.deferred_pos];
            self.deferred_pos += 1;
            if let Some(conn) = self.conns.get_mut(key) {
                conn.deferred = false;
                self.flush_conn(key);
            }
            // The clock is read every 16 writes (a write is ~1-5 µs).
            if self.deferred_pos.is_multiple_of(16) && Instant::now() >= slice_end {
                return; // the rest next turn, after a poll
            }
        }
        let end = Instant::now();
        self.deferred.clear();
        self.deferred_pos = 0;
        self.last_round_cost = end.saturating_duration_since(self.round_start.take().unwrap_or(now));
        self.last_round_end = Some(end);
    }

    /// One write attempt for one connection; after its last byte, FIN (if
    /// closing) or resumed parsing (if paused).
    pub(super) fn flush_conn(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.corked() {
            if conn.ws().is_some_and(|ws| !ws.closing()) {
                return; // written once its user channel is joined
            }
            conn.set_corked(false); // a close goes out whatever the join does
        }
        let before = conn.out.bytes();
        let result = conn.out.write_to(&mut crate::sys::Send(&conn.stream));
        self.metrics.bytes_written.inc_by((before - conn.out.bytes()) as u64);
        match result {
            Ok(Flush::Blocked) => {}
            Ok(Flush::Done) => match &mut conn.phase {
                Phase::Closing { fin_sent, .. } if !*fin_sent => {
                    *fin_sent = true;
                    if conn.stream.shutdown(Shutdown::Write).is_err() {
                        self.remove(key);
                    }
                }
                Phase::Http(h) if h.paused => {
                    h.paused = false;
                    self.again.push(key);
                }
                _ => {}
            },
            Err(e) => {
                debug!("{} write: {e}", conn.peer);
                self.remove(key);
            }
        }
    }
}
