//! Channel state: who is subscribed where, each channel's position (epoch
//! and offset), and its bounded history for replay after a reconnect.
//!
//! Model (Centrifugo's): a channel is a stream of messages numbered 1, 2,
//! 3, ... (the offset), within an epoch — a random name for this stream,
//! new whenever the stream starts again (a server start, or the channel
//! forgotten after its history expired). A channel's first stream in this
//! process has the process's epoch, so a channel forgotten before it had
//! any message (its last tab left) starts again as the same, empty stream
//! and a returning client still recovers; once a channel that had messages
//! is forgotten, its name is remembered (8 bytes) and every later stream
//! of it gets an epoch of its own. A client that saw up to
//! `(epoch, offset)` gets exactly the messages after it — or, when any of
//! them is gone (trimmed, expired, another epoch), none at all and
//! `recovered: false`. Never a partial replay.
//!
//! Costs: subscribe/unsubscribe O(1); publish O(1) plus the fan-out to the
//! channel's own subscribers; expiry amortised O(1) per history entry (one
//! global FIFO in publish order serves both HISTORY_TTL_SECS and
//! HISTORY_MAX_BYTES). A channel with no subscribers and no live history is
//! forgotten, so it costs nothing.

use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::broadcast;
use crate::name_index::NameIndex;

/// A channel's slot in the hub (valid while it has subscribers, history or
/// a hold). 4 bytes: the hub holds far fewer than 2^32 channels (one per
/// connection and per named channel at most), and every subscription and
/// history log entry keeps one.
pub type ChannelId = u32;

/// History limits (HISTORY_SIZE, HISTORY_TTL_SECS, HISTORY_MAX_BYTES).
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    pub size: usize,
    pub ttl: Duration,
    pub max_bytes: usize,
}

/// The last position a client saw in a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Since {
    pub epoch: String,
    pub offset: u64,
}

struct Entry {
    offset: u64,
    frame: Rc<[u8]>,
}

pub struct Channel {
    /// Shared with the name index (one allocation per channel).
    pub name: Rc<str>,
    /// Names this stream of offsets; a replay never crosses epochs. Every
    /// channel on its first stream shares the process's epoch string, and
    /// every subscription's position in this channel shares it too.
    pub epoch: Epoch,
    /// The latest offset (0: no message yet).
    pub offset: u64,
    /// Connection keys (slab keys of the server's table).
    subscribers: Subscribers,
    /// The last messages (`None` while there are none: most channels —
    /// every connection's own `user:` channel — never have any).
    history: Option<Box<History>>,
}

/// A channel's epoch (see the module doc): a string, read through
/// `Deref<Target = str>`, behind one thin pointer (8 bytes, where an
/// `Rc<str>` takes 16) shared by every channel of the same stream era and
/// every subscription positioned in it.
#[derive(Clone, PartialEq, Eq)]
pub struct Epoch(Rc<Box<str>>);

impl Epoch {
    fn new(name: String) -> Epoch {
        Epoch(Rc::new(name.into_boxed_str()))
    }

    /// The same stream? One pointer compare when both share the string
    /// (the common case), the text otherwise.
    pub fn same(&self, other: &Epoch) -> bool {
        Rc::ptr_eq(&self.0, &other.0) || **self == **other
    }
}

impl From<String> for Epoch {
    /// An epoch from outside the hub (cluster mode: Redis names it).
    fn from(name: String) -> Epoch {
        Epoch::new(name)
    }
}

impl From<&str> for Epoch {
    fn from(name: &str) -> Epoch {
        Epoch::new(name.to_string())
    }
}

impl std::ops::Deref for Epoch {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

impl std::fmt::Debug for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// A channel's retained messages.
struct History {
    /// Oldest first, contiguous offsets.
    entries: VecDeque<Entry>,
    /// Tells this history from a later one in the same channel slot (log
    /// entries outlive a forgotten channel or an emptied history).
    generation: u64,
}

/// The connections in a channel. Most channels (every connection's own
/// `user:` channel) have one subscriber: it is held inline, and a set is
/// allocated only from the second one on.
enum Subscribers {
    None,
    One(usize),
    // Boxed: 8 bytes inline instead of a HashSet's 48, in every channel.
    #[allow(clippy::box_collection)]
    Many(Box<HashSet<usize>>),
}

impl Subscribers {
    fn insert(&mut self, key: usize) {
        match self {
            Subscribers::None => *self = Subscribers::One(key),
            Subscribers::One(k) if *k == key => {}
            Subscribers::One(k) => *self = Subscribers::Many(Box::new(HashSet::from([*k, key]))),
            Subscribers::Many(set) => {
                set.insert(key);
            }
        }
    }

    fn remove(&mut self, key: usize) {
        match self {
            Subscribers::One(k) if *k == key => *self = Subscribers::None,
            Subscribers::Many(set) => {
                set.remove(&key);
                match set.len() {
                    0 => *self = Subscribers::None,
                    1 => *self = Subscribers::One(*set.iter().next().expect("one left")),
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Subscribers::None)
    }

    fn len(&self) -> usize {
        match self {
            Subscribers::None => 0,
            Subscribers::One(_) => 1,
            Subscribers::Many(set) => set.len(),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &usize> {
        let (one, many) = match self {
            Subscribers::None => (None, None),
            Subscribers::One(k) => (Some(k), None),
            Subscribers::Many(set) => (None, Some(set.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

impl Channel {
    /// The oldest retained offset of history `generation`, if it is held.
    fn front_of(&self, generation: u64) -> Option<u64> {
        let h = self.history.as_ref().filter(|h| h.generation == generation)?;
        h.entries.front().map(|e| e.offset)
    }
}

/// One history entry in publish order, for TTL and byte-cap expiry.
struct LogEntry {
    channel: ChannelId,
    generation: u64,
    offset: u64,
    bytes: usize,
    at: Instant,
}

pub struct Hub {
    channels: Slab<Channel>,
    /// Name → id (8 bytes per channel; the names stay in `channels`).
    by_name: NameIndex,
    log: VecDeque<LogEntry>,
    /// Live history entries and their frame bytes (all channels).
    entries: usize,
    bytes: usize,
    limits: HistoryLimits,
    /// Random per process (and per era): epochs differ between server
    /// lifetimes.
    epoch_seed: u64,
    /// The epoch of every channel's first stream in this era (shared).
    first_epoch: Epoch,
    /// Channels and histories created so far: epochs differ between a
    /// channel's lives, log entries tell histories apart.
    generations: u64,
    /// Hashes of names forgotten after they had messages: their next stream
    /// must not reuse the first-stream epoch.
    retired: HashSet<u64>,
    /// Keyed per process, so names cannot be chosen to collide.
    hasher: std::collections::hash_map::RandomState,
    /// Channels kept by reads of their position, and how many such reads
    /// (see [`Hub::hold`]); rare and short, so kept here rather than in
    /// every channel.
    holds: HashMap<ChannelId, u32>,
}

/// Past this many retired names a new era starts (a new process epoch, the
/// set cleared): every client then recovers `false` once, but memory stays
/// bounded (8 MiB).
const MAX_RETIRED: usize = 1 << 20;

/// What a publish did.
pub struct Published {
    pub offset: u64,
    pub frame: Rc<[u8]>,
}

impl Hub {
    pub fn new(limits: HistoryLimits) -> Hub {
        let epoch_seed = random_u64();
        Hub {
            channels: Slab::new(),
            by_name: NameIndex::new(),
            log: VecDeque::new(),
            entries: 0,
            bytes: 0,
            limits,
            epoch_seed,
            first_epoch: first_epoch(epoch_seed),
            generations: 0,
            retired: HashSet::new(),
            hasher: Default::default(),
            holds: HashMap::new(),
        }
    }

    fn name_hash(&self, name: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(name)
    }

    fn get_or_create(&mut self, name: &str) -> ChannelId {
        if let Some(id) = self.find(name) {
            return id;
        }
        self.generations += 1;
        // 64 random bits per process; a counter for a name's later lives:
        // short, unguessable across restarts, never reused within one.
        let epoch = if self.retired.contains(&self.name_hash(name)) {
            Epoch::new(format!("{:016x}-{:x}", self.epoch_seed, self.generations))
        } else {
            self.first_epoch.clone()
        };
        let slot = self.channels.insert(Channel {
            name: name.into(),
            epoch,
            offset: 0,
            subscribers: Subscribers::None,
            history: None,
        });
        let id = ChannelId::try_from(slot).expect("fewer than 2^32 channels");
        let channels = &self.channels;
        self.by_name.insert(name, id, |i| &channels[i as usize].name);
        id
    }

    pub fn channel(&self, id: ChannelId) -> &Channel {
        &self.channels[id as usize]
    }

    /// The connections subscribed to `name` (none if it is not held).
    pub fn subscribers(&self, name: &str) -> impl Iterator<Item = &usize> {
        self.find(name).into_iter().flat_map(|id| self.channels[id as usize].subscribers.iter())
    }

    /// The connections subscribed to channel `id`.
    pub fn subscriber_keys(&self, id: ChannelId) -> impl Iterator<Item = usize> + '_ {
        self.channels[id as usize].subscribers.iter().copied()
    }

    /// How many connections are subscribed to channel `id`.
    pub fn subscriber_count(&self, id: ChannelId) -> usize {
        self.channels[id as usize].subscribers.len()
    }

    pub fn find(&self, name: &str) -> Option<ChannelId> {
        self.by_name.get(name, |i| &self.channels[i as usize].name)
    }

    /// Adds `key` to the channel (created if new); returns its id.
    pub fn subscribe(&mut self, name: &str, key: usize) -> ChannelId {
        let id = self.get_or_create(name);
        self.channels[id as usize].subscribers.insert(key);
        id
    }

    /// Keeps `name` (created if new) until [`Hub::release`], even with no
    /// subscriber and no history: a page that read its position (the
    /// server API) must find the same stream — the same epoch — when its
    /// browser subscribes.
    pub fn hold(&mut self, name: &str) -> ChannelId {
        let id = self.get_or_create(name);
        *self.holds.entry(id).or_insert(0) += 1;
        id
    }

    /// Ends one [`Hub::hold`]; forgets the channel if nothing else keeps it.
    pub fn release(&mut self, id: ChannelId) {
        if let Some(n) = self.holds.get_mut(&id) {
            *n -= 1;
            if *n == 0 {
                self.holds.remove(&id);
            }
        }
        if self.channels.contains(id as usize) {
            self.forget_if_idle(id);
        }
    }

    /// Removes `key`; forgets the channel if nothing is left in it.
    pub fn unsubscribe(&mut self, id: ChannelId, key: usize) {
        if let Some(c) = self.channels.get_mut(id as usize) {
            c.subscribers.remove(key);
            self.forget_if_idle(id);
        }
    }

    fn forget_if_idle(&mut self, id: ChannelId) {
        let c = &self.channels[id as usize];
        if c.subscribers.is_empty() && c.history.is_none() && !self.holds.contains_key(&id) {
            if c.offset > 0 {
                if self.retired.len() >= MAX_RETIRED {
                    self.retired.clear();
                    self.epoch_seed = random_u64();
                    self.first_epoch = first_epoch(self.epoch_seed);
                }
                self.retired.insert(self.name_hash(&c.name));
            }
            let name = c.name.clone();
            let channels = &self.channels;
            self.by_name.remove(&name, |i| &channels[i as usize].name);
            self.channels.remove(id as usize);
        }
    }

    /// Appends a message to `name`'s stream: the next offset, framed once,
    /// kept in history. The caller queues `frame` to the channel's subscribers.
    pub fn publish(&mut self, name: &str, kind: &str, payload: &str, now: Instant) -> Published {
        self.expire(now);
        let id = self.get_or_create(name);
        let c = &mut self.channels[id as usize];
        c.offset += 1;
        let frame = broadcast::frame(&broadcast::channel_envelope(kind, payload, &c.name, c.offset));
        let offset = c.offset;
        if self.limits.size > 0 {
            let generations = &mut self.generations;
            let h = c.history.get_or_insert_with(|| {
                *generations += 1;
                Box::new(History { entries: VecDeque::new(), generation: *generations })
            });
            if h.entries.len() == self.limits.size
                && let Some(old) = h.entries.pop_front()
            {
                self.entries -= 1;
                self.bytes -= old.frame.len();
            }
            h.entries.push_back(Entry { offset, frame: frame.clone() });
            let generation = h.generation;
            self.entries += 1;
            self.bytes += frame.len();
            self.log.push_back(LogEntry { channel: id, generation, offset, bytes: frame.len(), at: now });
            self.compact_log();
            // The byte cap: oldest entries (of any channel) go first.
            while self.bytes > self.limits.max_bytes && self.pop_oldest() {}
        }
        self.forget_if_idle(id);
        Published { offset, frame }
    }

    /// The messages after `since` in channel `id`, if all of them are still
    /// held in this epoch; `None` means "cannot recover".
    pub fn replay(&mut self, id: ChannelId, since: &Since, now: Instant) -> Option<Vec<Rc<[u8]>>> {
        self.expire(now);
        let c = self.channels.get(id as usize)?;
        if *c.epoch != *since.epoch || since.offset > c.offset {
            return None;
        }
        if since.offset == c.offset {
            return Some(Vec::new());
        }
        // History offsets are contiguous and end at c.offset.
        let entries = &c.history.as_ref()?.entries;
        let first = entries.front()?.offset;
        if first > since.offset + 1 {
            return None;
        }
        let skip = (since.offset + 1 - first) as usize;
        Some(entries.iter().skip(skip).map(|e| e.frame.clone()).collect())
    }

    /// Drops history older than the TTL; forgets channels left idle.
    pub fn expire(&mut self, now: Instant) {
        while let Some(front) = self.log.front()
            && now.saturating_duration_since(front.at) >= self.limits.ttl
        {
            self.pop_oldest();
        }
    }

    /// When the oldest history entry expires (for the loop's poll timeout).
    pub fn next_expiry(&self) -> Option<Instant> {
        self.log.front().map(|e| e.at + self.limits.ttl)
    }

    /// Removes the oldest log entry and, if still held, its history entry.
    fn pop_oldest(&mut self) -> bool {
        let Some(e) = self.log.pop_front() else {
            return false;
        };
        if let Some(c) = self.channels.get_mut(e.channel as usize)
            && c.front_of(e.generation) == Some(e.offset)
            && let Some(h) = c.history.as_mut()
        {
            h.entries.pop_front();
            if h.entries.is_empty() {
                c.history = None;
            }
            self.entries -= 1;
            self.bytes -= e.bytes;
            self.forget_if_idle(e.channel);
        }
        true
    }

    /// Log entries whose history entry was trimmed by HISTORY_SIZE stay
    /// until they reach the front; past twice the live count, drop them in
    /// one pass (amortised O(1) per publish).
    fn compact_log(&mut self) {
        if self.log.len() <= 2 * self.entries + 1024 {
            return;
        }
        let channels = &self.channels;
        self.log.retain(|e| {
            channels
                .get(e.channel as usize)
                .and_then(|c| c.front_of(e.generation))
                .is_some_and(|front| front <= e.offset)
        });
    }

    /// Channels held (with subscribers or history).
    pub fn channels(&self) -> usize {
        self.channels.len()
    }

    /// Live history entries and their bytes.
    pub fn history(&self) -> (usize, usize) {
        (self.entries, self.bytes)
    }
}

/// The epoch of a channel's first stream: the process's random seed.
fn first_epoch(seed: u64) -> Epoch {
    Epoch::new(format!("{seed:016x}"))
}

fn random_u64() -> u64 {
    let mut seed = [0u8; 8];
    crate::sys::fill_random(&mut seed);
    u64::from_le_bytes(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(size: usize, ttl_secs: u64, max_bytes: usize) -> Hub {
        Hub::new(HistoryLimits { size, ttl: Duration::from_secs(ttl_secs), max_bytes })
    }

    fn offsets(frames: &[Rc<[u8]>]) -> Vec<u64> {
        frames
            .iter()
            .map(|f| {
                let v: serde_json::Value = serde_json::from_slice(&f[2..]).unwrap();
                v["offset"].as_u64().unwrap()
            })
            .collect()
    }

    #[test]
    fn replay_exactly_the_gap_or_nothing() {
        let t = Instant::now();
        let mut h = hub(3, 60, 1 << 20);
        let id = h.subscribe("p:1", 7);
        let epoch = h.channel(id).epoch.to_string();
        for _ in 0..2 {
            h.publish("p:1", "t", "1", t);
        }
        let since = |o| Since { epoch: epoch.clone(), offset: o };
        assert_eq!(offsets(&h.replay(id, &since(0), t).unwrap()), [1, 2]);
        assert_eq!(offsets(&h.replay(id, &since(1), t).unwrap()), [2]);
        assert!(h.replay(id, &since(2), t).unwrap().is_empty());
        assert!(h.replay(id, &since(3), t).is_none(), "a future offset is not recoverable");
        assert!(h.replay(id, &Since { epoch: "other".into(), offset: 1 }, t).is_none());
        for _ in 0..3 {
            h.publish("p:1", "t", "1", t);
        }
        // History holds 3..=5 now: from 2 on works, from 1 would be partial.
        assert_eq!(offsets(&h.replay(id, &since(2), t).unwrap()), [3, 4, 5]);
        assert!(h.replay(id, &since(1), t).is_none());
        assert_eq!(h.history().0, 3);
    }

    #[test]
    fn ttl_and_byte_cap_expire_and_idle_channels_are_forgotten() {
        let t = Instant::now();
        let mut h = hub(100, 10, 1 << 20);
        h.publish("p:gone", "t", "1", t);
        assert_eq!(h.channels(), 1, "history keeps a channel without subscribers");
        h.expire(t + Duration::from_secs(11));
        assert_eq!((h.channels(), h.history()), (0, (0, 0)));

        let one = h.publish("p:a", "t", "1", t).frame.len();
        let mut h = hub(100, 10, one * 3);
        for i in 0..5 {
            h.publish(if i % 2 == 0 { "p:a" } else { "p:b" }, "t", "1", t);
        }
        assert_eq!(h.history().0, 3, "byte cap keeps the newest 3");
        let a = h.find("p:a").unwrap();
        let epoch = h.channel(a).epoch.to_string();
        assert!(h.replay(a, &Since { epoch, offset: 1 }, t).is_some(), "p:a holds 2..=3 (offsets 2,3)");
    }

    #[test]
    fn epochs_change_only_when_a_stream_with_messages_starts_again() {
        let t = Instant::now();
        let mut h = hub(0, 10, 1 << 20);
        let id = h.subscribe("p:1", 1);
        let e1 = h.channel(id).epoch.clone();
        h.unsubscribe(id, 1);
        // Forgotten while empty: the same (empty) stream, the same epoch.
        let id = h.subscribe("p:1", 1);
        assert_eq!(h.channel(id).epoch, e1);
        assert_eq!(h.publish("p:1", "t", "1", t).offset, 1);
        assert_eq!(h.publish("p:1", "t", "1", t).offset, 2);
        h.unsubscribe(id, 1);
        // Forgotten after messages: a new stream, a new epoch, offsets anew.
        let id = h.subscribe("p:1", 1);
        assert_ne!(h.channel(id).epoch, e1);
        assert_eq!(h.channel(id).offset, 0);
        let e2 = h.channel(id).epoch.clone();
        h.publish("p:1", "t", "1", t);
        h.unsubscribe(id, 1);
        let id = h.subscribe("p:1", 1);
        assert_ne!(h.channel(id).epoch, e2);
    }

    #[test]
    fn subscribers_one_inline_then_a_set_and_back() {
        let mut h = hub(0, 10, 1 << 20);
        let keys = |h: &Hub| {
            let mut k: Vec<usize> = h.subscribers("p:1").copied().collect();
            k.sort();
            k
        };
        let id = h.subscribe("p:1", 4);
        h.subscribe("p:1", 4);
        assert_eq!(keys(&h), [4], "a key joins once");
        h.subscribe("p:1", 9);
        h.subscribe("p:1", 2);
        assert_eq!(keys(&h), [2, 4, 9]);
        h.unsubscribe(id, 4);
        h.unsubscribe(id, 77); // not in it: nothing happens
        assert_eq!(keys(&h), [2, 9]);
        h.unsubscribe(id, 9);
        assert_eq!(keys(&h), [2]);
        assert!(matches!(h.channel(id).subscribers, Subscribers::One(2)), "back to inline");
        h.unsubscribe(id, 2);
        assert_eq!(h.channels(), 0, "the last one out forgets the channel");
        assert!(keys(&h).is_empty());
    }

    #[test]
    fn a_history_emptied_by_expiry_starts_again_without_old_log_entries_touching_it() {
        let t = Instant::now();
        let mut h = hub(2, 10, usize::MAX);
        let id = h.subscribe("p:1", 1);
        for _ in 0..5 {
            h.publish("p:1", "t", "1", t); // trims: log entries of offsets 1..=3 are stale
        }
        h.expire(t + Duration::from_secs(11));
        assert_eq!(h.history(), (0, 0));
        assert!(h.channel(id).history.is_none(), "an empty history holds no allocation");
        let t2 = t + Duration::from_secs(12);
        h.publish("p:1", "t", "1", t2);
        h.publish("p:1", "t", "1", t2);
        h.expire(t2 + Duration::from_secs(5));
        let since = Since { epoch: h.channel(id).epoch.to_string(), offset: 5 };
        assert_eq!(offsets(&h.replay(id, &since, t2).unwrap()), [6, 7]);
        assert_eq!(h.history().0, 2);
    }

    #[test]
    fn a_held_channel_keeps_its_stream_until_released() {
        let t = Instant::now();
        let mut h = hub(10, 1, 1 << 20);
        h.publish("p:1", "t", "1", t);
        h.expire(t + Duration::from_secs(2));
        assert_eq!(h.channels(), 0, "forgotten once its history expired");
        let id = h.hold("p:1");
        let epoch = h.channel(id).epoch.clone();
        let sub = h.subscribe("p:1", 7);
        h.unsubscribe(sub, 7);
        assert_eq!(h.find("p:1"), Some(id), "held: not forgotten when its last subscriber leaves");
        assert_eq!(h.channel(id).epoch, epoch);
        h.release(id);
        assert_eq!(h.channels(), 0);
    }

    #[test]
    fn log_stays_bounded_when_history_size_trims() {
        let t = Instant::now();
        let mut h = hub(2, 3600, usize::MAX);
        h.subscribe("p:1", 1);
        for _ in 0..10_000 {
            h.publish("p:1", "t", "1", t);
        }
        assert!(h.log.len() <= 2 * 2 + 1024 + 1, "log {}", h.log.len());
    }
}
