//! Cluster mode in the loop: publishes go to Redis first and come back as
//! messages every instance delivers in Redis's order; subscribes read their
//! position (and any replay) from Redis's history; gaps in pub/sub (which is
//! at most once) are found by offset and repaired from history. The Redis
//! side is [`crate::cluster`]; this file is what the loop does with it. It
//! never waits: every answer arrives as an event after the waker fires.
//!
//! Delivery is decided per subscription, by offset (see
//! [`crate::subscription`]): a joining subscription holds the live messages
//! that arrive while its history read is out; once its position is known
//! they are offered to it like any later message, and only the exact next
//! offset passes. So a replay hands over to live delivery with no gap and
//! no duplicate whatever order Redis's two connections' answers reach the
//! loop in, and nothing is ever handed to "every subscriber but these".
//!
//! Per channel with local subscribers, [`Remote`] holds what is shared: the
//! pub/sub SUBSCRIBE's state, and a gap repair (one history read from the
//! oldest position of the channel's subscribers here; live messages are
//! kept meanwhile and offered after it). A failed read is retried after a
//! back-off, never in a loop.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use super::Server;
use super::conn::Phase;
use crate::broadcast::{self, Publish, Target};
use crate::channels::{self, Refusal};
use crate::cluster::{BROADCAST, Command, Entry, Event, RedisLink};
use crate::http::{Head, Response};
use crate::hub::{Epoch, Since};
use crate::subscription::{Position, State, Subscription, Verdict};

/// Live messages kept for one channel while its gap repair is out; past
/// this the oldest go (the repair after it finds the hole).
const MAX_KEPT: usize = 10_000;
/// A failed history read is retried after this, doubling up to MAX_RETRY.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// The cluster side of the server: the link and what is waiting on it.
pub(super) struct Cluster {
    pub link: RedisLink,
    /// Both Redis connections up (publishes are refused with 503 while not).
    pub up: bool,
    /// Channels with local subscribers (joined or joining).
    channels: HashMap<String, Remote>,
    /// Publishes waiting for Redis, by request id.
    publishes: HashMap<u64, Parked>,
    /// History reads waiting for Redis: which channel and for whom.
    reads: HashMap<u64, Read>,
    /// Channels whose failed reads are tried again at that time.
    retries: Vec<(Instant, String)>,
    next_id: u64,
}

/// One channel's state on this instance.
#[derive(Default)]
struct Remote {
    /// SUBSCRIBE confirmed: messages for it now reach us.
    subscribed: bool,
    /// The gap repair out for this channel (its read id).
    repair: Option<u64>,
    /// A repair is owed but could not be sent (link down, back-off).
    needs_repair: bool,
    /// Live messages that arrived while a repair was owed or out, in order.
    kept: VecDeque<Kept>,
    /// `kept` is full and dropping (warned once, not per message).
    dropping: bool,
    /// The wait before the next try after a failed read.
    backoff: Duration,
    /// Waiting for a retry (reads for this channel wait until then).
    retry_pending: bool,
    /// The epoch last seen here, shared by positions and kept messages
    /// (one allocation per epoch, not per message).
    epoch: Option<Epoch>,
}

struct Kept {
    epoch: Epoch,
    offset: u64,
    frame: Rc<[u8]>,
}

enum Read {
    /// A joining subscription's position (and replay).
    Join { key: usize, conn_id: u64, channel: String },
    /// This instance missed messages of the channel (a gap in offsets, or
    /// the link was down).
    Repair { channel: String },
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
    /// Sent with an `Idempotency-Key`: the answer says which targets had
    /// seen it already (`duplicates`).
    once: bool,
    duplicates: Vec<String>,
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
            retries: Vec::new(),
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
            Event::Published { id, channel, offset, duplicate, .. } => {
                self.on_published(id, &channel, Ok((offset, duplicate)))
            }
            Event::PublishFailed { id, channel, error } => self.on_published(id, &channel, Err(error)),
            Event::Message { channel, epoch, offset, kind, payload } => {
                self.on_remote_message(&channel, epoch, offset, &kind, &payload)
            }
            Event::History { id, channel, epoch, offset, entries } => {
                self.on_history(id, &channel, Ok((epoch, offset, entries)))
            }
            Event::HistoryFailed { id, channel, error } => self.on_history(id, &channel, Err(error)),
            Event::Subscribed { channel } => self.on_subscribed(&channel),
            Event::LinkUp => {
                // The server API's records first: the load goes out before
                // the gap repairs' reads, so it is applied before they deliver.
                self.control_link_up();
                self.on_link_up()
            }
            Event::LinkDown { error } => self.on_link_down(&error),
            Event::ControlStored { .. }
            | Event::ControlLoaded { .. }
            | Event::ControlFailed { .. }
            | Event::Control { .. }
            | Event::Page { .. } => self.on_control_event(event),
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
        let once = head.idempotency_key.clone();
        let ttl_secs = self.config.idempotency_ttl.as_secs();
        for channel in &targets {
            let (channel, kind, payload) = (channel.clone(), publish.kind.clone(), payload.clone());
            let cmd = match &once {
                // The check is in Redis, in the publish's own atomic step.
                Some(key) => Command::PublishOnce { id, channel, kind, payload, key: key.clone(), ttl_secs },
                None => Command::Publish { id, channel, kind, payload },
            };
            if cluster.link.send(cmd).is_err() {
                return Some(unavailable("the Redis queue is full"));
            }
        }
        let answers = targets.into_iter().map(|c| (c, None)).collect();
        let head = Box::new(head.clone());
        let sent = std::time::Instant::now();
        let once = once.is_some();
        let p = Parked { key, conn_id, head, answers, failed: None, global, once, duplicates: Vec::new(), sent };
        cluster.publishes.insert(id, p);
        if let Phase::Http(h) = &mut self.conns[key].phase {
            h.parked = true;
        }
        None
    }

    fn on_published(&mut self, id: u64, channel: &str, result: Result<(u64, bool), String>) {
        let Some(cluster) = &mut self.cluster else { return };
        let Some(p) = cluster.publishes.get_mut(&id) else { return };
        match result {
            Ok((offset, duplicate)) => {
                if let Some(a) = p.answers.iter_mut().find(|(c, o)| c == channel && o.is_none()) {
                    a.1 = Some(offset);
                }
                if duplicate {
                    p.duplicates.push(channel.to_string());
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
            None if p.global && !p.duplicates.is_empty() => crate::api::broadcast_duplicate(),
            None if p.global => crate::api::broadcast_ok(self.limits.clients()),
            None if p.once => {
                // A duplicate channel delivered nothing now: 0 recipients.
                let counts: Vec<(String, u64, usize, bool)> = p
                    .answers
                    .iter()
                    .map(|(c, o)| {
                        let dup = p.duplicates.contains(c);
                        (c.clone(), o.unwrap_or(0), if dup { 0 } else { self.hub.subscribers(c).count() }, dup)
                    })
                    .collect();
                let view: Vec<(&str, u64, usize, bool)> =
                    counts.iter().map(|(c, o, n, d)| (c.as_str(), *o, *n, *d)).collect();
                crate::api::published_once(&view)
            }
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

    // ---- joining ----------------------------------------------------------------

    /// A granted subscribe (or the user channel at connect, `silent`): the
    /// connection is in the channel from now on, joining until Redis gives
    /// its position. While the link is down a subscribe is refused at once
    /// (`unavailable`: the client retries); the user channel waits for the
    /// link instead.
    pub(super) fn cluster_join(
        &mut self,
        key: usize,
        channel: &str,
        token_exp: Option<u64>,
        since: Option<Since>,
        silent: bool,
    ) {
        let Some(cluster) = &self.cluster else { return };
        if !cluster.up && !silent {
            let msg = channels::error(Refusal::Unavailable, "the cluster's Redis is unreachable: retry", Some(channel));
            return self.send_text(key, msg);
        }
        let id = self.hub.subscribe(channel, key);
        self.add_subscription(key, Subscription::joining(id, token_exp, since, silent));
        if self.sub_index(key, channel).is_none() {
            return; // closing: joined nothing
        }
        let Some(cluster) = &mut self.cluster else { return };
        let remote = match cluster.channels.get_mut(channel) {
            Some(r) => r,
            None => {
                // The first local subscriber: start receiving the channel. Its
                // history is read once the SUBSCRIBE is in effect, so nothing
                // published in between can be missed.
                if cluster.link.send(Command::Subscribe { channel: channel.to_string() }).is_err() {
                    cluster.channels.entry(channel.to_string()).or_default();
                    return self.fail_join(key, channel, "the Redis queue is full");
                }
                cluster.channels.entry(channel.to_string()).or_default()
            }
        };
        if remote.subscribed && !remote.retry_pending {
            self.send_join_read(key, channel);
        }
    }

    /// Sends the history read for `key`'s joining subscription to `channel`.
    fn send_join_read(&mut self, key: usize, channel: &str) {
        let Some(i) = self.sub_index(key, channel) else { return };
        let conn_id = self.conns[key].id;
        let Some(cluster) = &mut self.cluster else { return };
        let Some(Phase::Ws(ws)) = self.conns.get_mut(key).map(|c| &mut c.phase) else { return };
        let State::Joining(j) = &mut ws.subs[i].state else { return };
        let id = cluster.id();
        let since = j.since.as_ref().map(|s| (s.epoch.clone(), s.offset));
        if cluster.link.send(Command::History { id, channel: channel.to_string(), since }).is_err() {
            return self.fail_join(key, channel, "the Redis queue is full");
        }
        j.read = id;
        cluster.reads.insert(id, Read::Join { key, conn_id, channel: channel.to_string() });
    }

    /// Sends the reads of every subscription to `channel` that waits for one.
    fn resume_joins(&mut self, channel: &str) {
        let Some(id) = self.hub.find(channel) else { return };
        let keys: Vec<usize> = self.hub.subscriber_keys(id).collect();
        for key in keys {
            let waiting = self
                .conns
                .get(key)
                .and_then(|c| c.ws())
                .and_then(|ws| ws.subs.iter().find(|s| s.channel == id))
                .is_some_and(|s| s.joining_read() == Some(0));
            if waiting {
                self.send_join_read(key, channel);
            }
        }
    }

    /// A join Redis could not answer. A client's subscribe is refused
    /// (`unavailable`: retry) and leaves the channel; the user channel's
    /// silent join waits and is tried again after a back-off.
    fn fail_join(&mut self, key: usize, channel: &str, why: &str) {
        let Some(i) = self.sub_index(key, channel) else { return };
        let Some(Phase::Ws(ws)) = self.conns.get_mut(key).map(|c| &mut c.phase) else { return };
        let State::Joining(j) = &mut ws.subs[i].state else { return };
        if j.silent {
            j.read = 0;
            debug!("cluster: joining {channel} failed ({why}); retrying");
            self.uncork(key);
            return self.schedule_retry(channel);
        }
        debug!("cluster: a subscribe to {channel} failed: {why}");
        self.end_subscription(key, channel, None);
        let msg = channels::error(Refusal::Unavailable, "the cluster's Redis is unreachable: retry", Some(channel));
        self.send_text(key, msg);
    }

    fn on_subscribed(&mut self, channel: &str) {
        let Some(remote) = self.cluster.as_mut().and_then(|c| c.channels.get_mut(channel)) else { return };
        remote.subscribed = true;
        if !remote.retry_pending {
            self.resume_channel(channel);
        }
    }

    fn on_history(&mut self, id: u64, channel: &str, result: Result<(String, u64, Option<Vec<Entry>>), String>) {
        let Some(read) = self.cluster.as_mut().and_then(|c| c.reads.remove(&id)) else { return };
        match read {
            Read::Join { key, conn_id, channel } => self.finish_join(id, key, conn_id, &channel, result),
            Read::Repair { channel: c } => {
                debug_assert_eq!(c, channel);
                self.finish_repair(id, &c, result)
            }
        }
    }

    /// A joining subscription's position (and replay) arrived: answer the
    /// client, queue the replay, then offer it the live messages held
    /// meanwhile — the ones at or below the position are dropped there.
    fn finish_join(
        &mut self,
        read: u64,
        key: usize,
        conn_id: u64,
        channel: &str,
        result: Result<(String, u64, Option<Vec<Entry>>), String>,
    ) {
        // Still the same connection, open, and still waiting for this read
        // (not unsubscribed, not subscribed again since).
        if !matches!(self.conns.get(key), Some(c) if c.id == conn_id) || !self.is_open_ws(key) {
            return;
        }
        let Some(i) = self.sub_index(key, channel) else { return };
        if self.conns[key].ws().map(|ws| ws.subs[i].joining_read()) != Some(Some(read)) {
            return;
        }
        let (epoch, offset, entries) = match result {
            Ok(r) => r,
            Err(e) => return self.fail_join(key, channel, &e),
        };
        let epoch = self.intern_epoch(channel, epoch);
        let Some(Phase::Ws(ws)) = self.conns.get_mut(key).map(|c| &mut c.phase) else { return };
        let sub = &mut ws.subs[i];
        let chan_id = sub.channel;
        let State::Joining(j) =
            std::mem::replace(&mut sub.state, State::Joined(Position { epoch: epoch.clone(), offset }))
        else {
            return;
        };
        let j = *j;
        if j.silent {
            if self.conns[key].corked() {
                self.uncork(key); // the 101 leaves now: exact from here on
            } else {
                // The 101 went out before the position was known (Redis was
                // unreachable then): messages published in between may be
                // missed. Say so, like any gap history cannot fill.
                self.send_text(key, channels::subscribed(channel, &epoch, offset, false));
                if !self.is_open_ws(key) {
                    return;
                }
            }
        } else {
            // As in one process: a replay must fit MAX_OUTPUT_BYTES.
            let queued = self.conns[key].out.bytes();
            let size: usize =
                entries.iter().flatten().map(|e| e.payload.len() + e.kind.len() + channel.len() + 64).sum();
            let entries = entries.filter(|_| queued + size <= self.config.max_output_bytes);
            let recovered = j.since.is_some() && entries.is_some();
            if j.since.is_some() {
                self.metrics.recovery(recovered);
            }
            self.send_text(key, channels::subscribed(channel, &epoch, offset, recovered));
            if !self.is_open_ws(key) {
                return; // its answer closed it: it left every channel
            }
            let since = j.since.as_ref().map_or(0, |s| s.offset);
            let conn = &mut self.conns[key];
            for e in entries.into_iter().flatten().filter(|e| e.offset > since && e.offset <= offset) {
                conn.out.push_shared(broadcast::frame(&broadcast::channel_envelope(
                    &e.kind, &e.payload, channel, e.offset,
                )));
            }
            self.mark_dirty(key);
            // Its requests waited for this answer.
            self.again.push(key);
        }
        let mut gap = false;
        for h in j.held {
            gap |= self.offer_one(key, chan_id, &h.epoch, h.offset, &h.frame);
        }
        if gap {
            self.start_repair(channel);
        }
    }

    /// Lets a connection's held output (its 101 first) go.
    fn uncork(&mut self, key: usize) {
        if let Some(c) = self.conns.get_mut(key)
            && c.corked()
        {
            c.set_corked(false);
            self.mark_dirty(key);
        }
    }

    /// Offers one message to one subscriber; true if it has a gap.
    fn offer_one(
        &mut self,
        key: usize,
        id: crate::hub::ChannelId,
        epoch: &Epoch,
        offset: u64,
        frame: &Rc<[u8]>,
    ) -> bool {
        if !self.is_open_ws(key) {
            return false;
        }
        let Some(Phase::Ws(ws)) = self.conns.get_mut(key).map(|c| &mut c.phase) else { return false };
        let Some(sub) = ws.subs.iter_mut().find(|s| s.channel == id) else { return false };
        match sub.offer(epoch, offset, frame) {
            Verdict::Deliver => {
                self.deliver_to(key, frame);
                false
            }
            Verdict::Gap => true,
            Verdict::Stale | Verdict::Held => false,
        }
    }

    // ---- live messages and gaps ------------------------------------------------------

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
        if !self.cluster.as_ref().is_some_and(|c| c.channels.contains_key(channel)) {
            return; // no local subscriber (an UNSUBSCRIBE on its way)
        }
        let epoch = self.intern_epoch(channel, epoch);
        let frame = broadcast::frame(&broadcast::channel_envelope(kind, payload, channel, offset));
        self.offer_remote(channel, epoch, offset, frame);
    }

    /// One live channel message: offered to every local subscriber (each
    /// takes it only if it is its next offset), or kept while a repair is
    /// owed. A subscriber with a gap starts a repair; the message is kept
    /// and offered again after it (those that took it drop it then).
    fn offer_remote(&mut self, channel: &str, epoch: Epoch, offset: u64, frame: Rc<[u8]>) {
        let Some(remote) = self.cluster.as_mut().and_then(|c| c.channels.get_mut(channel)) else { return };
        if remote.repair.is_some() || remote.needs_repair {
            keep(channel, remote, Kept { epoch, offset, frame });
            return;
        }
        let Some(id) = self.hub.find(channel) else { return };
        let fanned = self.fan_out_channel(id, &epoch, offset, &frame);
        if !fanned.gaps.is_empty() {
            if let Some(remote) = self.cluster.as_mut().and_then(|c| c.channels.get_mut(channel)) {
                keep(channel, remote, Kept { epoch, offset, frame });
            }
            self.start_repair(channel);
        }
    }

    /// Reads what this instance's subscribers of `channel` missed: one
    /// history read from the oldest position among them. Owed (and sent
    /// later) while the link is down or a failed read waits to retry.
    fn start_repair(&mut self, channel: &str) {
        let since = self.oldest_position(channel);
        let Some(cluster) = &mut self.cluster else { return };
        let up = cluster.up;
        let Some(remote) = cluster.channels.get_mut(channel) else { return };
        if remote.repair.is_some() {
            return;
        }
        let Some(since) = since else {
            // Nobody here is joined: nothing to repair; joins read their own.
            remote.needs_repair = false;
            remote.kept.clear();
            return;
        };
        if !up || remote.retry_pending || !remote.subscribed {
            remote.needs_repair = true;
            return;
        }
        let id = cluster.id();
        let cmd = Command::History { id, channel: channel.to_string(), since: Some(since) };
        let sent = cluster.link.send(cmd).is_ok();
        let remote = cluster.channels.get_mut(channel).expect("checked above");
        if !sent {
            remote.needs_repair = true;
            return self.schedule_retry(channel);
        }
        remote.needs_repair = false;
        remote.repair = Some(id);
        cluster.reads.insert(id, Read::Repair { channel: channel.to_string() });
    }

    /// The oldest position among the channel's joined subscribers here,
    /// preferring the epoch last seen (those in another epoch are resynced
    /// by the repair anyway).
    fn oldest_position(&self, channel: &str) -> Option<(String, u64)> {
        let id = self.hub.find(channel)?;
        let current = self.cluster.as_ref()?.channels.get(channel)?.epoch.clone();
        let mut best: Option<&Position> = None;
        for key in self.hub.subscriber_keys(id) {
            let Some(at) = self
                .conns
                .get(key)
                .and_then(|c| c.ws())
                .and_then(|ws| ws.subs.iter().find(|s| s.channel == id).and_then(|s| s.position()))
            else {
                continue;
            };
            let rank = |p: &Position| (!current.as_ref().is_some_and(|c| c.same(&p.epoch)), p.offset);
            if best.is_none_or(|b| rank(at) < rank(b)) {
                best = Some(at);
            }
        }
        best.map(|p| (p.epoch.to_string(), p.offset))
    }

    /// A repair's answer: every joined subscriber here gets the entries
    /// past its own position; one whose gap history cannot fill (trimmed,
    /// expired, another epoch) is told `recovered:false` and carries on from
    /// the channel's position. Then the kept messages are offered.
    fn finish_repair(&mut self, read: u64, channel: &str, result: Result<(String, u64, Option<Vec<Entry>>), String>) {
        let Some(remote) = self.cluster.as_mut().and_then(|c| c.channels.get_mut(channel)) else { return };
        if remote.repair != Some(read) {
            return; // a read for an earlier life of this channel here
        }
        remote.repair = None;
        let (epoch, offset, entries) = match result {
            Ok(r) => r,
            Err(e) => {
                if remote.backoff.is_zero() {
                    warn!("cluster: could not repair a gap in {channel}: {e}; retrying with back-off");
                }
                remote.needs_repair = true;
                return self.schedule_retry(channel);
            }
        };
        remote.backoff = Duration::ZERO;
        let epoch = self.intern_epoch(channel, epoch);
        if entries.is_none() {
            info!("cluster: {channel} lost messages that history no longer holds: clients must refetch");
        }
        let frames: Vec<(u64, Rc<[u8]>)> = entries
            .iter()
            .flatten()
            .map(|e| (e.offset, broadcast::frame(&broadcast::channel_envelope(&e.kind, &e.payload, channel, e.offset))))
            .collect();
        let Some(id) = self.hub.find(channel) else { return };
        let keys: Vec<usize> = self.hub.subscriber_keys(id).collect();
        for key in keys {
            for (o, f) in &frames {
                if self.offer_one(key, id, &epoch, *o, f) {
                    break;
                }
            }
            let behind = self
                .conns
                .get(key)
                .and_then(|c| c.ws())
                .and_then(|ws| ws.subs.iter().find(|s| s.channel == id))
                .and_then(|s| s.position())
                .is_some_and(|at| !at.epoch.same(&epoch) || at.offset < offset);
            if behind && self.is_open_ws(key) {
                self.resync(key, id, Position { epoch: epoch.clone(), offset });
            }
        }
        // Kept messages of another epoch were published before the stream
        // this answer read (Redis was flushed): everyone here is past them
        // now. Offered again, they would look like a gap forever.
        let Some(remote) = self.cluster.as_mut().and_then(|c| c.channels.get_mut(channel)) else { return };
        remote.kept.retain(|k| k.epoch.same(&epoch));
        if remote.needs_repair {
            // Owed since this read was sent (the link went down and came
            // back meanwhile): what it read may be stale, so read again.
            self.start_repair(channel);
        }
        self.release_kept(channel);
    }

    /// Offers the messages kept while a repair was owed or out, in order
    /// (a new gap among them starts another repair and keeps the rest).
    fn release_kept(&mut self, channel: &str) {
        let Some(remote) = self.cluster.as_mut().and_then(|c| c.channels.get_mut(channel)) else { return };
        if remote.repair.is_some() || remote.needs_repair {
            return;
        }
        for k in std::mem::take(&mut remote.kept) {
            self.offer_remote(channel, k.epoch, k.offset, k.frame);
        }
    }

    /// The epoch as an [`Epoch`] shared with the channel's positions.
    fn intern_epoch(&mut self, channel: &str, epoch: String) -> Epoch {
        let Some(remote) = self.cluster.as_mut().and_then(|c| c.channels.get_mut(channel)) else {
            return Epoch::from(epoch);
        };
        match &remote.epoch {
            Some(e) if **e == *epoch => e.clone(),
            _ => {
                let e = Epoch::from(epoch);
                remote.epoch = Some(e.clone());
                e
            }
        }
    }

    // ---- faults and retries ------------------------------------------------------------

    /// A failed read: this channel's reads wait, then are tried again
    /// (FIRST_RETRY doubling to MAX_RETRY) — never in a tight loop.
    fn schedule_retry(&mut self, channel: &str) {
        let Some(cluster) = &mut self.cluster else { return };
        let Some(remote) = cluster.channels.get_mut(channel) else { return };
        if remote.retry_pending {
            return;
        }
        remote.backoff = if remote.backoff.is_zero() { FIRST_RETRY } else { (remote.backoff * 2).min(MAX_RETRY) };
        remote.retry_pending = true;
        cluster.retries.push((Instant::now() + remote.backoff, channel.to_string()));
    }

    /// When the next retry is due (for the loop's poll timeout).
    pub(super) fn next_cluster_retry(&self) -> Option<Instant> {
        self.cluster.as_ref()?.retries.iter().map(|(at, _)| *at).min()
    }

    /// Runs the retries that are due.
    pub(super) fn run_cluster_retries(&mut self, now: Instant) {
        let Some(cluster) = &mut self.cluster else { return };
        if !cluster.retries.iter().any(|(at, _)| *at <= now) {
            return;
        }
        let (due, later): (Vec<_>, Vec<_>) =
            std::mem::take(&mut cluster.retries).into_iter().partition(|(at, _)| *at <= now);
        cluster.retries = later;
        for (_, channel) in due {
            let Some(remote) = self.cluster.as_mut().and_then(|c| c.channels.get_mut(&channel)) else { continue };
            remote.retry_pending = false;
            self.resume_channel(&channel);
        }
    }

    /// Sends what `channel` owes: the reads of waiting joins, then a repair.
    fn resume_channel(&mut self, channel: &str) {
        let Some(cluster) = &mut self.cluster else { return };
        let up = cluster.up;
        let Some(remote) = cluster.channels.get(channel) else { return };
        if !remote.subscribed {
            // Not confirmed yet (or its SUBSCRIBE could not be queued):
            // asking again is harmless; its confirmation resumes the rest.
            if up {
                let _ = cluster.link.send(Command::Subscribe { channel: channel.to_string() });
            }
            return;
        }
        let owed = remote.needs_repair;
        self.resume_joins(channel);
        if owed {
            self.start_repair(channel);
            self.release_kept(channel);
        }
    }

    /// The link is down: publishes get 503, subscribes `unavailable`. A
    /// client's subscribe still joining is refused now (it retries); the
    /// user channel's silent joins wait for the link.
    fn on_link_down(&mut self, error: &str) {
        let Some(cluster) = &mut self.cluster else { return };
        warn!("cluster: Redis link down: {error}; publishes get 503 until it is back");
        cluster.up = false;
        for remote in cluster.channels.values_mut() {
            remote.subscribed = false;
        }
        let names: Vec<String> = cluster.channels.keys().cloned().collect();
        for channel in names {
            let Some(id) = self.hub.find(&channel) else { continue };
            let keys: Vec<usize> = self.hub.subscriber_keys(id).collect();
            for key in keys {
                if self
                    .conns
                    .get(key)
                    .and_then(|c| c.ws())
                    .and_then(|ws| ws.subs.iter().find(|s| s.channel == id))
                    .is_some_and(|s| s.joining_read().is_some())
                {
                    self.fail_join(key, &channel, "the Redis link is down");
                }
            }
        }
    }

    /// After an outage every channel may have missed messages (the link
    /// has SUBSCRIBEd all of them again before LinkUp): joins waiting for
    /// the link read their position, and every channel is checked against
    /// history from its subscribers' oldest position.
    fn on_link_up(&mut self) {
        let Some(cluster) = &mut self.cluster else { return };
        info!("cluster: Redis link up");
        let was_down = !cluster.up;
        cluster.up = true;
        if !was_down {
            return;
        }
        let names: Vec<String> = cluster.channels.keys().cloned().collect();
        for remote in cluster.channels.values_mut() {
            remote.subscribed = true;
            remote.needs_repair = true;
            remote.retry_pending = false;
            remote.backoff = Duration::ZERO;
        }
        cluster.retries.clear();
        for channel in names {
            self.resume_channel(&channel);
        }
    }

    /// When the last local subscriber of `channel` is gone, stop receiving
    /// it (reads still out for it are ignored when they come back).
    pub(super) fn maybe_unsubscribe_remote(&mut self, channel: &str) {
        if self.hub.find(channel).is_some_and(|id| self.hub.subscriber_count(id) > 0) {
            return;
        }
        let Some(cluster) = &mut self.cluster else { return };
        if cluster.channels.remove(channel).is_some() {
            let _ = cluster.link.send(Command::Unsubscribe { channel: channel.to_string() });
        }
    }
}

/// Keeps a live message while a repair is owed or out (bounded: the
/// oldest go, and the repair after finds the hole).
fn keep(channel: &str, remote: &mut Remote, k: Kept) {
    if remote.kept.len() >= MAX_KEPT {
        if !remote.dropping {
            warn!("cluster: {channel}: {MAX_KEPT} messages kept during a repair; dropping the oldest");
        }
        remote.dropping = true;
        remote.kept.pop_front();
    } else if remote.kept.is_empty() {
        remote.dropping = false;
    }
    remote.kept.push_back(k);
}

fn unavailable(why: &str) -> Response {
    Response::error(503, &format!("cluster unavailable: {why}")).header("Retry-After", "1")
}
