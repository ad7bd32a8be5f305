//! Accepted broadcasts, queued to their recipients.

use std::rc::Rc;
use std::time::Instant;

use log::{debug, warn};

use super::Server;
use super::conn::Phase;
use crate::api;
use crate::http::Response;
use crate::ws::Reason;

impl Server {
    /// An authenticated, validated broadcast: rate-limited, then queued to
    /// every client. Returns the answer for the publisher.
    pub(super) fn broadcast(&mut self, kind: &str, frame: Rc<[u8]>) -> Response {
        if let Err(resp) = self.limits.take_broadcast(&self.config, Instant::now()) {
            debug!("broadcast {kind} refused: over BROADCAST_RATE_PER_SEC");
            return resp;
        }
        let n = self.fan_out(frame);
        debug!("broadcast {kind} to {n} clients");
        api::broadcast_ok(n)
    }

    /// Queues one framed broadcast to every open client; returns how many.
    ///
    /// Hot path: per client, one refcount bump and one queue push — no
    /// encoding, no copy, no syscall (writes happen in `flush_dirty`).
    fn fan_out(&mut self, frame: Rc<[u8]>) -> usize {
        let (limit, max_bytes) = (self.config.send_queue_limit, self.config.max_output_bytes);
        let mut sent = 0;
        let mut slow = Vec::new();
        for (key, conn) in self.conns.iter_mut() {
            let Phase::Ws(ws) = &conn.phase else { continue };
            if !ws.ctx.can_write() {
                continue; // closing: no data after our close frame
            }
            let over = |out: &crate::outqueue::OutQueue| out.len() >= limit || out.bytes() + frame.len() > max_bytes;
            if over(&conn.out) {
                // Maybe the socket has room now (a burst of broadcasts in one
                // turn); only a client that truly is not reading is slow.
                if conn.out.write_to(&mut crate::sys::Send(&conn.stream)).is_err() || over(&conn.out) {
                    slow.push(key);
                    continue;
                }
            }
            conn.out.push_shared(frame.clone());
            sent += 1;
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(key);
            }
        }
        let now = Instant::now();
        for key in slow {
            let c = &mut self.conns[key];
            let sub = c.ws().map_or("", |w| w.sub.as_str());
            warn!(
                "{} ({sub:?}) too slow: {} messages ({} B) queued; closing with 1013",
                c.peer,
                c.out.len(),
                c.out.bytes()
            );
            c.out.drop_unstarted();
            self.close_ws(key, Reason::SlowConsumer, now);
        }
        sent
    }
}
