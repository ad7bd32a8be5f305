//! Accepted broadcasts, queued to their recipients: every client for a
//! broadcast to everyone, a channel's subscribers (from the hub's index)
//! for a channel message.
//!
//! Hot path: per recipient, one refcount bump and one queue push — no
//! encoding, no copy, no syscall (writes happen in `flush_dirty`). A
//! message is framed once (per channel: the offset is in the envelope).

use std::rc::Rc;
use std::time::Instant;

use log::{debug, warn};

use super::Server;
use super::conn::{Conn, Phase};
use crate::api;
use crate::broadcast::{Publish, Target};
use crate::http::{Head, Response};
use crate::hub::{ChannelId, Epoch};
use crate::subscription::{Position, Verdict};
use crate::ws::Reason;

/// The idempotency cache's target for a broadcast to everyone (no channel
/// name is `*`).
const BROADCAST_TARGET: &str = crate::cluster::BROADCAST;

impl Server {
    /// An authenticated, validated broadcast from connection `key`:
    /// rate-limited, then queued to its recipients — or, in cluster mode,
    /// sent to Redis (`None`: the answer comes when Redis has it).
    pub(super) fn broadcast(&mut self, key: usize, head: &Head, publish: Publish) -> Option<Response> {
        let now = Instant::now();
        if let Err(resp) = self.limits.take_broadcast(&self.config, now) {
            debug!("broadcast {} refused: over BROADCAST_RATE_PER_SEC", publish.kind);
            return Some(resp);
        }
        if self.cluster.is_some() {
            return self.cluster_publish(key, head, publish);
        }
        match head.idempotency_key.as_deref() {
            Some(key) => Some(self.publish_once(publish, key, now)),
            None => Some(self.publish_local(publish, now)),
        }
    }

    /// Single-process mode with an `Idempotency-Key`: each target that saw
    /// the key within IDEMPOTENCY_TTL_SECS gets nothing and answers with
    /// the offset of the first publish; the others are published as usual.
    fn publish_once(&mut self, publish: Publish, key: &str, now: Instant) -> Response {
        let Target::Channels(names) = &publish.target else {
            let seen = self.control.idempotency.get(BROADCAST_TARGET, key, now).is_some();
            if seen {
                debug!("broadcast {} repeated with the same Idempotency-Key: not delivered", publish.kind);
                return api::broadcast_duplicate();
            }
            self.control.idempotency.insert(BROADCAST_TARGET, key, 0, now);
            return self.publish_local(publish, now);
        };
        let mut answers = Vec::with_capacity(names.len());
        for name in names {
            if let Some(offset) = self.control.idempotency.get(name, key, now) {
                answers.push((name.as_str(), offset, 0, true));
                continue;
            }
            let (offset, n) = self.publish_channel(name, &publish.kind, &publish.payload, now);
            self.control.idempotency.insert(name, key, offset, now);
            answers.push((name.as_str(), offset, n, false));
        }
        api::published_once(&answers)
    }

    /// Single-process mode: offsets and history from the hub, delivery now.
    fn publish_local(&mut self, publish: Publish, now: Instant) -> Response {
        match publish.target {
            Target::All(frame) => {
                let started = Instant::now();
                let n = self.fan_out_all(frame);
                self.metrics.fanned_out(n, started.elapsed());
                debug!("broadcast {} to {n} clients", publish.kind);
                api::broadcast_ok(n)
            }
            Target::Channels(names) => {
                let mut answers = Vec::with_capacity(names.len());
                for name in &names {
                    let (offset, n) = self.publish_channel(name, &publish.kind, &publish.payload, now);
                    answers.push((name.as_str(), offset, n));
                }
                api::published_ok(&answers)
            }
        }
    }

    /// Single-process mode, one channel: the next offset, history, and the
    /// delivery to its subscribers; returns (offset, recipients).
    fn publish_channel(&mut self, name: &str, kind: &str, payload: &str, now: Instant) -> (u64, usize) {
        let published = self.hub.publish(name, kind, payload, now);
        let n = match self.hub.find(name) {
            Some(id) => {
                let epoch = self.hub.channel(id).epoch.clone();
                let fanned = self.fan_out_channel(id, &epoch, published.offset, &published.frame);
                // Every subscriber here is at the channel's
                // last offset: one process cannot have a gap.
                debug_assert!(fanned.gaps.is_empty(), "a gap in one process: {name}");
                for key in fanned.gaps {
                    let at = Position { epoch: epoch.clone(), offset: published.offset };
                    self.resync(key, id, at);
                }
                fanned.delivered
            }
            None => 0, // no subscriber and no history: forgotten
        };
        debug!("broadcast {kind} to {name} (offset {}): {n} clients", published.offset);
        (published.offset, n)
    }

    /// Offers one channel message to each of the channel's subscribers
    /// under the rule of [`crate::subscription`] — queued if it is exactly
    /// the subscription's next offset, held while it is joining, dropped if
    /// it already had it — and reports the subscribers that have a gap.
    pub(super) fn fan_out_channel(&mut self, id: ChannelId, epoch: &Epoch, offset: u64, frame: &Rc<[u8]>) -> Fanned {
        let started = Instant::now();
        let limit = Limit { count: self.config.send_queue_limit, bytes: self.config.max_output_bytes };
        let mut slow = Vec::new();
        let mut gaps = Vec::new();
        let mut written = 0;
        let mut n = 0;
        let coalesce = !self.config.flush_delay.is_zero();
        let list = if coalesce { &mut self.deferred } else { &mut self.dirty };
        // The hub's index is borrowed while the queues are not.
        let keys: Vec<usize> = self.hub.subscriber_keys(id).collect();
        for key in keys {
            // The connection's own list decides, not the index alone: a key
            // that is not an open connection subscribed to this channel
            // gets nothing (and in tests, fails loudly).
            let verdict = match self.conns.get_mut(key).map(|c| &mut c.phase) {
                Some(Phase::Ws(ws)) if ws.close_deadline.is_none() => {
                    match ws.subs.iter_mut().find(|s| s.channel == id) {
                        Some(sub) => sub.offer(epoch, offset, frame),
                        None => {
                            debug_assert!(false, "hub lists {key} in channel {id}; its own list does not");
                            continue;
                        }
                    }
                }
                _ => {
                    debug_assert!(false, "hub lists {key} in channel {id}: not an open WebSocket");
                    continue;
                }
            };
            match verdict {
                Verdict::Deliver => {
                    let conn = &mut self.conns[key];
                    // Channel subscribers: authenticated (they joined after auth).
                    n += queue(key, conn, list, coalesce, frame, &mut slow, limit, &mut written, false);
                }
                Verdict::Gap => gaps.push(key),
                Verdict::Stale | Verdict::Held => {}
            }
        }
        self.close_slow(slow, Instant::now());
        self.metrics.bytes_written.inc_by(written as u64);
        self.metrics.fanned_out(n, started.elapsed());
        Fanned { delivered: n, gaps }
    }

    /// Queues one frame to one connection (held messages of a join that
    /// completed, a repair's entries): the same bounds as a fan-out.
    pub(super) fn deliver_to(&mut self, key: usize, frame: &Rc<[u8]>) {
        let limit = Limit { count: self.config.send_queue_limit, bytes: self.config.max_output_bytes };
        let mut slow = Vec::new();
        let mut written = 0;
        let coalesce = !self.config.flush_delay.is_zero();
        let list = if coalesce { &mut self.deferred } else { &mut self.dirty };
        if let Some(conn) = self.conns.get_mut(key) {
            // Channel messages: only to connections in the channel, so authenticated.
            queue(key, conn, list, coalesce, frame, &mut slow, limit, &mut written, false);
        }
        self.close_slow(slow, Instant::now());
        self.metrics.bytes_written.inc_by(written as u64);
    }

    /// Queues one framed broadcast to every open client; returns how many.
    pub(super) fn fan_out_all(&mut self, frame: Rc<[u8]>) -> usize {
        let limit = Limit { count: self.config.send_queue_limit, bytes: self.config.max_output_bytes };
        let mut sent = 0;
        let mut written = 0;
        let mut slow = Vec::new();
        let coalesce = !self.config.flush_delay.is_zero();
        let list = if coalesce { &mut self.deferred } else { &mut self.dirty };
        // Not to a connection still waiting for its in-band token; checked
        // per client only while there is one (the field is one more cache
        // line per client on this hot loop).
        let check_auth = self.awaiting_auth > 0;
        for (key, conn) in self.conns.iter_mut() {
            sent += queue(key, conn, list, coalesce, &frame, &mut slow, limit, &mut written, check_auth);
        }
        self.close_slow(slow, Instant::now());
        self.metrics.bytes_written.inc_by(written as u64);
        sent
    }

    /// Closes clients that fell SEND_QUEUE_LIMIT messages behind (1013).
    fn close_slow(&mut self, slow: Vec<usize>, now: Instant) {
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
            self.metrics.slow_client_closes.inc();
            self.close_ws(key, Reason::SlowConsumer, now);
        }
    }
}

/// What a channel fan-out did.
pub(super) struct Fanned {
    /// Subscribers the message was queued to.
    pub delivered: usize,
    /// Subscribers that are missing messages before it.
    pub gaps: Vec<usize>,
}

/// How far behind a client may fall: SEND_QUEUE_LIMIT messages and
/// MAX_OUTPUT_BYTES bytes queued.
#[derive(Clone, Copy)]
struct Limit {
    count: usize,
    bytes: usize,
}

/// Queues `frame` to connection `key` if it is an open WebSocket, and lists
/// the connection for a flush (`list`: `dirty`, or `deferred` when
/// coalescing); returns 1 if queued. A client already `limit` messages behind is first given a
/// write (a burst of broadcasts in one turn may have filled the queue while
/// the socket has room); if it is still behind it goes on `slow`.
#[inline]
#[allow(clippy::too_many_arguments)] // the hot loop's state, passed apart to keep borrows disjoint
fn queue(
    key: usize,
    conn: &mut Conn,
    list: &mut Vec<usize>,
    coalesce: bool,
    frame: &Rc<[u8]>,
    slow: &mut Vec<usize>,
    limit: Limit,
    written: &mut usize,
    check_auth: bool,
) -> usize {
    let Phase::Ws(ws) = &conn.phase else { return 0 };
    if !ws.can_write() || (check_auth && ws.awaiting_auth) {
        return 0; // closing (no data after our close frame), or not authenticated yet
    }
    let over = |out: &crate::outqueue::OutQueue| out.len() >= limit.count || out.bytes() + frame.len() > limit.bytes;
    if over(&conn.out) {
        let before = conn.out.bytes();
        // A corked connection (its 101 waits for its user channel) is not
        // written here either.
        let wrote = if conn.corked() {
            Ok(crate::outqueue::Flush::Blocked)
        } else {
            conn.out.write_to(&mut crate::sys::Send(&conn.stream))
        };
        *written += before - conn.out.bytes();
        if wrote.is_err() || over(&conn.out) {
            slow.push(key);
            return 0;
        }
    }
    conn.out.push_shared(frame.clone());
    // Already listed for this turn's flush (an answer or control frame is
    // waiting): the frame goes with it.
    if !conn.dirty && !conn.deferred {
        if coalesce {
            conn.deferred = true;
        } else {
            conn.dirty = true;
        }
        list.push(key);
    }
    1
}
