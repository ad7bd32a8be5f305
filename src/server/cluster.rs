//! Cluster mode in the loop: publishes go to Redis first and come back as
//! messages every instance delivers in Redis's order; subscribes read their
//! position (and any replay) from Redis's history; gaps in pub/sub (which is
//! at most once) are found by offset and repaired from history. The Redis
//! side is [`crate::cluster`]; this file is what the loop does with it. It
//! never waits: every answer arrives as an event after the waker fires.
//!
//! Per channel with local interest, [`Remote`] keeps the last position
//! delivered here and the clients whose subscribe is waiting for Redis.
//! While any such read is out, the channel's live messages are kept, then
//! handed on after the replay, minus the overlap (by offset) — so a client
//! gets the replay, then live messages, with no gap and no duplicate.

use std::collections::HashMap;
use std::rc::Rc;

use log::{debug, info, warn};

use super::Server;
use super::conn::Phase;
use crate::broadcast::{self, Publish, Target};
use crate::channels::{self, Refusal};
use crate::cluster::{BROADCAST, Command, Entry, Event, RedisLink};
use crate::http::{Head, Response};
use crate::hub::Since;
use crate::ws::Subscription;

/// Messages kept for one channel while reads of its history are out; past
/// this the waiting subscribes are refused (retry) rather than grow memory.
const MAX_KEPT: usize = 10_000;

/// The cluster side of the server: the link and what is waiting on it.
pub(super) struct Cluster {
    pub link: RedisLink,
    /// Both Redis connections up (publishes are refused with 503 while not).
    pub up: bool,
    /// Channels with local subscribers or subscribes in progress.
    channels: HashMap<String, Remote>,
    /// Publishes waiting for Redis, by request id.
    publishes: HashMap<u64, Parked>,
    /// History reads waiting for Redis: which channel and for whom.
    reads: HashMap<u64, Read>,
    next_id: u64,
}

/// One channel's state on this instance.
#[derive(Default)]
struct Remote {
    /// SUBSCRIBE confirmed: messages for it now reach us.
    subscribed: bool,
    /// The last (epoch, offset) delivered here; `None` before the first
    /// position is known.
    last: Option<(String, u64)>,
    /// Subscribes waiting for the SUBSCRIBE to take effect.
    waiting: Vec<Waiter>,
    /// History reads out for this channel (subscribes or a gap repair).
    reads_out: usize,
    /// Messages that arrived while reads were out, in order.
    kept: Vec<Kept>,
    /// A gap repair is out: live delivery waits for it.
    repairing: bool,
    /// Clients that joined while messages were kept: they got the kept
    /// messages past their own replay already, so the release skips them.
    fresh: Vec<usize>,
}

#[derive(Clone)]
struct Waiter {
    key: usize,
    conn_id: u64,
    since: Option<Since>,
    token_exp: Option<u64>,
}

struct Kept {
    epoch: String,
    offset: u64,
    frame: Rc<[u8]>,
}

enum Read {
    /// A client's subscribe.
    Subscribe { waiter: Waiter },
    /// This instance missed messages (a gap in offsets, or the link was down).
    Repair,
}

/// An HTTP publish waiting for Redis's answers (one per target channel).
pub(super) struct Parked {
    key: usize,
    conn_id: u64,
    head: Box<Head>,
    /// Per target: (channel, offset once published).
    answers: Vec<(String, Option<u64>)>,
    failed: Option<String>,
    global: bool,
    /// When it was sent to Redis (for the publish round-trip histogram).
    sent: std::time::Instant,
}

impl Cluster {
    pub fn new(link: RedisLink) -> Cluster {
        Cluster {
            link,
            up: false,
            channels: HashMap::new(),
            publishes: HashMap::new(),
            reads: HashMap::new(),
            next_id: 0,
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

impl Server {
    /// Drains the link's events (after the waker fired).
    pub(super) fn on_cluster_events(&mut self) {
        // Bounded per turn so a flood of pub/sub messages cannot starve the
        // sockets; the rest waits for the next turn.
        for _ in 0..4096 {
            let Some(event) = self.cluster.as_ref().and_then(|c| c.link.try_recv()) else {
                return;
            };
            self.on_cluster_event(event);
        }
        self.cluster_again = true;
    }

    fn on_cluster_event(&mut self, event: Event) {
        match event {
            Event::Published { id, channel, offset, .. } => self.on_published(id, &channel, Ok(offset)),
            Event::PublishFailed { id, channel, error } => self.on_published(id, &channel, Err(error)),
            Event::Message { channel, epoch, offset, kind, payload } => {
                self.on_remote_message(&channel, epoch, offset, &kind, &payload)
            }
            Event::History { id, channel, epoch, offset, entries } => {
                self.on_history(id, &channel, Ok((epoch, offset, entries)))
            }
            Event::HistoryFailed { id, channel, error } => self.on_history(id, &channel, Err(error)),
            Event::Subscribed { channel } => self.on_subscribed(&channel),
            Event::LinkUp => self.on_link_up(),
            Event::LinkDown { error } => {
                warn!("cluster: Redis link down: {error}; publishes get 503 until it is back");
                if let Some(c) = &mut self.cluster {
                    c.up = false;
                }
            }
        }
    }

    // ---- publishing ---------------------------------------------------------

    /// A publish in cluster mode: sent to Redis, the request parked until
    /// every target answers. `None`: parked (no answer yet).
    pub(super) fn cluster_publish(&mut self, key: usize, head: &Head, publish: Publish) -> Option<Response> {
        let conn_id = self.conns[key].id;
        let cluster = self.cluster.as_mut()?;
        if !cluster.up {
            return Some(unavailable("the Redis link is down"));
        }
        let (targets, global): (Vec<String>, bool) = match &publish.target {
            Target::All(_) => (vec![BROADCAST.to_string()], true),
            Target::Channels(names) => (names.clone(), false),
        };
        // The data as the raw JSON text it was sent as.
        let payload = publish.payload.to_string();
        let id = cluster.id();
        for channel in &targets {
            let cmd =
                Command::Publish { id, channel: channel.clone(), kind: publish.kind.clone(), payload: payload.clone() };
            if cluster.link.send(cmd).is_err() {
                return Some(unavailable("the Redis queue is full"));
            }
        }
        let answers = targets.into_iter().map(|c| (c, None)).collect();
        let head = Box::new(head.clone());
        let sent = std::time::Instant::now();
        cluster.publishes.insert(id, Parked { key, conn_id, head, answers, failed: None, global, sent });
        if let Phase::Http(h) = &mut self.conns[key].phase {
            h.parked = true;
        }
        None
    }

    fn on_published(&mut self, id: u64, channel: &str, result: Result<u64, String>) {
        let Some(cluster) = &mut self.cluster else { return };
        let Some(p) = cluster.publishes.get_mut(&id) else { return };
        match result {
            Ok(offset) => {
                if let Some(a) = p.answers.iter_mut().find(|(c, o)| c == channel && o.is_none()) {
                    a.1 = Some(offset);
                }
            }
            Err(e) => p.failed = Some(e),
        }
        if p.failed.is_none() && p.answers.iter().any(|(_, o)| o.is_none()) {
            return;
        }
        let p = cluster.publishes.remove(&id).expect("just found");
        if p.failed.is_none() {
            self.metrics.redis_publish.observe(p.sent.elapsed().as_secs_f64());
        }
        let resp = match &p.failed {
            // Never a 200 for a message that may not be stored.
            Some(e) => {
                warn!("cluster: publish failed: {e}");
                unavailable("Redis did not store the message")
            }
            None if p.global => crate::api::broadcast_ok(self.limits.clients()),
            None => {
                let counts: Vec<(String, u64, usize)> = p
                    .answers
                    .iter()
                    .map(|(c, o)| (c.clone(), o.unwrap_or(0), self.hub.subscribers(c).count()))
                    .collect();
                let view: Vec<(&str, u64, usize)> = counts.iter().map(|(c, o, n)| (c.as_str(), *o, *n)).collect();
                crate::api::published_ok(&view)
            }
        };
        if !matches!(self.conns.get(p.key), Some(c) if c.id == p.conn_id) {
            return; // the publisher left
        }
        if let Phase::Http(h) = &mut self.conns[p.key].phase {
            h.parked = false;
        }
        self.respond(p.key, &p.head, resp);
        self.flush_conn(p.key);
        // Pipelined requests behind it.
        self.again.push(p.key);
    }

    // ---- subscribing ------------------------------------------------------------

    /// A granted subscribe in cluster mode: the position and any replay come
    /// from Redis; the client joins the channel once they are sent.
    pub(super) fn cluster_subscribe(
        &mut self,
        key: usize,
        channel: &str,
        since: Option<Since>,
        token_exp: Option<u64>,
    ) {
        let conn_id = self.conns[key].id;
        let Some(cluster) = &mut self.cluster else { return };
        let waiter = Waiter { key, conn_id, since, token_exp };
        let remote = cluster.channels.entry(channel.to_string()).or_default();
        if !remote.subscribed {
            if remote.waiting.is_empty() && !remote.repairing {
                let _ = cluster.link.send(Command::Subscribe { channel: channel.to_string() });
            }
            remote.waiting.push(waiter);
            return;
        }
        if let Err(w) = read_for(cluster, channel, waiter) {
            self.refuse_waiter(channel, w);
        }
    }

    /// A subscribe Redis could not answer: the client is told to retry.
    fn refuse_waiter(&mut self, channel: &str, w: Waiter) {
        if matches!(self.conns.get(w.key), Some(c) if c.id == w.conn_id) {
            let msg = channels::error(Refusal::Unavailable, "the cluster's Redis is unreachable: retry", Some(channel));
            self.send_text(w.key, msg);
        }
        self.maybe_unsubscribe_remote(channel);
    }

    fn on_subscribed(&mut self, channel: &str) {
        let Some(cluster) = &mut self.cluster else { return };
        let Some(remote) = cluster.channels.get_mut(channel) else { return };
        remote.subscribed = true;
        let mut failed = Vec::new();
        for w in std::mem::take(&mut remote.waiting) {
            if let Err(w) = read_for(cluster, channel, w) {
                failed.push(w);
            }
        }
        for w in failed {
            self.refuse_waiter(channel, w);
        }
    }

    fn on_history(&mut self, id: u64, channel: &str, result: Result<(String, u64, Option<Vec<Entry>>), String>) {
        let Some(cluster) = &mut self.cluster else { return };
        let Some(read) = cluster.reads.remove(&id) else { return };
        if let (Read::Subscribe { .. }, Some(r)) = (&read, cluster.channels.get_mut(channel)) {
            r.reads_out = r.reads_out.saturating_sub(1);
        }
        match read {
            Read::Subscribe { waiter, .. } => self.finish_subscribe(channel, waiter, result),
            Read::Repair => self.finish_repair(channel, result),
        }
        self.release_kept(channel);
    }

    fn finish_subscribe(
        &mut self,
        channel: &str,
        w: Waiter,
        result: Result<(String, u64, Option<Vec<Entry>>), String>,
    ) {
        if !matches!(self.conns.get(w.key), Some(c) if c.id == w.conn_id && c.ws().is_some_and(|ws| ws.close_deadline.is_none()))
        {
            return self.maybe_unsubscribe_remote(channel);
        }
        let (epoch, offset, entries) = match result {
            Ok(r) => r,
            Err(e) => {
                debug!("cluster: history for a subscribe failed: {e}");
                return self.refuse_waiter(channel, w);
            }
        };
        // As in single-process mode: a replay must fit MAX_OUTPUT_BYTES.
        let queued = self.conns[w.key].out.bytes();
        let size: usize = entries.iter().flatten().map(|e| e.payload.len() + e.kind.len() + channel.len() + 64).sum();
        let entries = entries.filter(|_| queued + size <= self.config.max_output_bytes);
        let recovered = w.since.is_some() && entries.is_some();
        if w.since.is_some() {
            self.metrics.recovery(recovered);
        }
        self.send_text(w.key, channels::subscribed(channel, &epoch, offset, recovered));
        let mut frames: Vec<Rc<[u8]>> = Vec::new();
        for e in entries.into_iter().flatten() {
            frames.push(broadcast::frame(&broadcast::channel_envelope(&e.kind, &e.payload, channel, e.offset)));
        }
        // Live messages kept while this read was out, past what it covered.
        if let Some(remote) = self.cluster.as_ref().and_then(|c| c.channels.get(channel)) {
            for k in &remote.kept {
                if k.epoch == epoch && k.offset > offset {
                    frames.push(k.frame.clone());
                }
            }
        }
        let conn = &mut self.conns[w.key];
        for f in frames {
            conn.out.push_shared(f);
        }
        self.mark_dirty(w.key);
        // Joined: live delivery from here on.
        let id = self.hub.subscribe(channel, w.key);
        if let Some(Phase::Ws(ws)) = self.conns.get_mut(w.key).map(|c| &mut c.phase) {
            match ws.subs.iter_mut().find(|s| s.channel == id) {
                // Joined again with a fresh subscription token: a renewal
                // (keep the longer-lived grant, as in one process).
                Some(s) => s.token_exp = s.token_exp.zip(w.token_exp).map(|(a, b)| a.max(b)),
                None => ws.subs.push(Subscription { channel: id, token_exp: w.token_exp }),
            }
        }
        if w.token_exp.is_some() {
            self.reschedule_ws(w.key); // the token's expiry is now a deadline
        }
        if let Some(remote) = self.cluster.as_mut().and_then(|c| c.channels.get_mut(channel)) {
            if !remote.kept.is_empty() {
                remote.fresh.push(w.key);
            }
            // The first client here: the instance's position starts at what
            // this read saw (the kept messages after it follow on release).
            if remote.last.is_none() {
                remote.last = Some((epoch, offset));
            }
        }
    }

    /// A gap this instance had: fill it for every local subscriber, or tell
    /// them their view may be stale (`subscribed` with `recovered:false`:
    /// refetch, then carry on from the new position).
    fn finish_repair(&mut self, channel: &str, result: Result<(String, u64, Option<Vec<Entry>>), String>) {
        let Some(remote) = self.cluster.as_mut().and_then(|c| c.channels.get_mut(channel)) else { return };
        remote.repairing = false;
        let (epoch, offset, entries) = match result {
            Ok(r) => r,
            Err(e) => {
                warn!("cluster: could not repair a gap in {channel}: {e}");
                // Unknown: the next message or LinkUp triggers another try.
                return;
            }
        };
        let frames: Vec<Rc<[u8]>> = match entries {
            Some(entries) => entries
                .iter()
                .map(|e| broadcast::frame(&broadcast::channel_envelope(&e.kind, &e.payload, channel, e.offset)))
                .collect(),
            None => {
                info!("cluster: {channel} lost messages that history no longer holds: clients must refetch");
                let note = channels::subscribed(channel, &epoch, offset, false);
                let keys: Vec<usize> = self.hub.subscribers(channel).copied().collect();
                for key in keys {
                    self.send_text(key, note.clone());
                }
                Vec::new()
            }
        };
        for f in &frames {
            self.deliver_local(channel, f, &[]);
        }
        if let Some(remote) = self.cluster.as_mut().and_then(|c| c.channels.get_mut(channel)) {
            remote.last = Some((epoch, offset));
        }
    }

    /// Once no read is out, the kept messages go to the channel's
    /// subscribers (those past what they already have).
    fn release_kept(&mut self, channel: &str) {
        let Some(remote) = self.cluster.as_mut().and_then(|c| c.channels.get_mut(channel)) else { return };
        if remote.reads_out > 0 || remote.repairing {
            return;
        }
        let kept = std::mem::take(&mut remote.kept);
        let fresh = std::mem::take(&mut remote.fresh);
        for k in kept {
            self.on_remote_frame_except(channel, k.epoch, k.offset, k.frame, &fresh);
        }
    }

    // ---- delivering ---------------------------------------------------------------

    fn on_remote_message(&mut self, channel: &str, epoch: String, offset: u64, kind: &str, payload: &str) {
        if channel == BROADCAST {
            // The original broadcast to everyone: framed once, as always.
            let frame = broadcast::frame(&broadcast::envelope(kind, payload));
            let started = std::time::Instant::now();
            let n = self.fan_out_all(frame);
            self.metrics.fanned_out(n, started.elapsed());
            return;
        }
        if !channels::valid_name(channel) || !broadcast::valid_type(kind) {
            return; // not ours (another writer on our prefix)
        }
        let frame = broadcast::frame(&broadcast::channel_envelope(kind, payload, channel, offset));
        self.on_remote_frame(channel, epoch, offset, frame);
    }

    fn on_remote_frame(&mut self, channel: &str, epoch: String, offset: u64, frame: Rc<[u8]>) {
        self.on_remote_frame_except(channel, epoch, offset, frame, &[]);
    }

    /// Delivers one channel message in order, unless this instance already
    /// did, or keeps it while history reads are out, or starts a repair when
    /// messages before it are missing. `except`: clients that have it.
    fn on_remote_frame_except(&mut self, channel: &str, epoch: String, offset: u64, frame: Rc<[u8]>, except: &[usize]) {
        let Some(cluster) = &mut self.cluster else { return };
        let Some(remote) = cluster.channels.get_mut(channel) else { return }; // unsubscribed
        if remote.reads_out > 0 || remote.repairing {
            if remote.kept.len() >= MAX_KEPT {
                warn!("cluster: {channel}: {MAX_KEPT} messages kept while reading history; dropping the oldest");
                remote.kept.remove(0);
            }
            remote.kept.push(Kept { epoch, offset, frame });
            return;
        }
        match &remote.last {
            Some((e, o)) if *e == epoch && offset <= *o => {} // already delivered
            Some((e, o)) if *e == epoch && offset == *o + 1 => {
                remote.last = Some((epoch, offset));
                self.deliver_local(channel, &frame, except);
            }
            None => {
                remote.last = Some((epoch, offset));
                self.deliver_local(channel, &frame, except);
            }
            // A gap, or a new epoch (Redis flushed or evicted the channel):
            // read what was missed before delivering anything newer.
            Some(_) => {
                let since = remote.last.clone();
                remote.repairing = true;
                remote.kept.push(Kept { epoch, offset, frame });
                let id = cluster.id();
                cluster.reads.insert(id, Read::Repair);
                if cluster.link.send(Command::History { id, channel: channel.to_string(), since }).is_err() {
                    cluster.reads.remove(&id);
                    self.finish_repair(channel, Err("queue full".into()));
                    self.release_kept(channel);
                }
            }
        }
    }

    /// Queues a channel frame to this instance's subscribers.
    fn deliver_local(&mut self, channel: &str, frame: &Rc<[u8]>, except: &[usize]) {
        let keys: Vec<usize> = self.hub.subscribers(channel).copied().filter(|k| !except.contains(k)).collect();
        self.fan_out_keys(&keys, frame);
    }

    /// Makes sure this instance receives `channel` (a client joined it
    /// without asking for a position: the user channel at connect).
    pub(super) fn cluster_ensure(&mut self, channel: &str) {
        let Some(cluster) = &mut self.cluster else { return };
        if !cluster.channels.contains_key(channel) {
            cluster.channels.insert(channel.to_string(), Remote::default());
            let _ = cluster.link.send(Command::Subscribe { channel: channel.to_string() });
        }
    }

    /// After an outage every channel may have missed messages: check each
    /// against history from the last position delivered here.
    fn on_link_up(&mut self) {
        let Some(cluster) = &mut self.cluster else { return };
        info!("cluster: Redis link up");
        let was_down = !cluster.up;
        cluster.up = true;
        if !was_down {
            return;
        }
        let names: Vec<String> = cluster.channels.keys().cloned().collect();
        for channel in names {
            let remote = cluster.channels.get_mut(&channel).expect("listed");
            if !remote.subscribed || remote.repairing || remote.last.is_none() {
                continue;
            }
            remote.repairing = true;
            let since = remote.last.clone();
            let id = cluster.id();
            cluster.reads.insert(id, Read::Repair);
            if cluster.link.send(Command::History { id, channel: channel.clone(), since }).is_err() {
                cluster.reads.remove(&id);
                if let Some(r) = cluster.channels.get_mut(&channel) {
                    r.repairing = false;
                }
            }
        }
    }

    /// When the last local client of `channel` is gone (and no subscribe
    /// is waiting), stop receiving it.
    pub(super) fn maybe_unsubscribe_remote(&mut self, channel: &str) {
        if self.hub.find(channel).is_some() {
            return;
        }
        let Some(cluster) = &mut self.cluster else { return };
        let Some(remote) = cluster.channels.get(channel) else { return };
        if !remote.waiting.is_empty() || remote.reads_out > 0 {
            return;
        }
        cluster.channels.remove(channel);
        let _ = cluster.link.send(Command::Unsubscribe { channel: channel.to_string() });
    }
}

/// Sends the history read for one subscribe; the waiter back if it could
/// not be queued (no event will come for it).
fn read_for(cluster: &mut Cluster, channel: &str, w: Waiter) -> Result<(), Waiter> {
    let id = cluster.id();
    let since = w.since.as_ref().map(|s| (s.epoch.clone(), s.offset));
    let cmd = Command::History { id, channel: channel.to_string(), since };
    if cluster.link.send(cmd).is_err() {
        return Err(w);
    }
    if let Some(r) = cluster.channels.get_mut(channel) {
        r.reads_out += 1;
    }
    cluster.reads.insert(id, Read::Subscribe { waiter: w });
    Ok(())
}

fn unavailable(why: &str) -> Response {
    Response::error(503, &format!("cluster unavailable: {why}")).header("Retry-After", "1")
}
