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

/// A channel's slot in the hub (valid while it has subscribers or history).
pub type ChannelId = usize;

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
    pub name: Box<str>,
    /// Names this stream of offsets; a replay never crosses epochs. Shared
    /// with every subscription's position in this channel.
    pub epoch: Rc<str>,
    /// The latest offset (0: no message yet).
    pub offset: u64,
    /// Connection keys (slab keys of the server's table).
    pub subscribers: HashSet<usize>,
    /// Reads of the channel's position that keep it (see [`Hub::hold`]).
    holds: u32,
    /// The last messages, oldest first, contiguous offsets.
    history: VecDeque<Entry>,
    /// Tells this channel from a later one in the same slot (log entries
    /// outlive a forgotten channel).
    generation: u64,
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
    by_name: HashMap<Box<str>, ChannelId>,
    log: VecDeque<LogEntry>,
    /// Live history entries and their frame bytes (all channels).
    entries: usize,
    bytes: usize,
    limits: HistoryLimits,
    /// Random per process (and per era): epochs differ between server
    /// lifetimes.
    epoch_seed: u64,
    /// Channels created so far: epochs differ between a channel's lives.
    generations: u64,
    /// Hashes of names forgotten after they had messages: their next stream
    /// must not reuse the first-stream epoch.
    retired: HashSet<u64>,
    /// Keyed per process, so names cannot be chosen to collide.
    hasher: std::collections::hash_map::RandomState,
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
        Hub {
            channels: Slab::new(),
            by_name: HashMap::new(),
            log: VecDeque::new(),
            entries: 0,
            bytes: 0,
            limits,
            epoch_seed: random_u64(),
            generations: 0,
            retired: HashSet::new(),
            hasher: Default::default(),
        }
    }

    fn name_hash(&self, name: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(name)
    }

    fn get_or_create(&mut self, name: &str) -> ChannelId {
        if let Some(&id) = self.by_name.get(name) {
            return id;
        }
        self.generations += 1;
        // 64 random bits per process; a counter for a name's later lives:
        // short, unguessable across restarts, never reused within one.
        let epoch = if self.retired.contains(&self.name_hash(name)) {
            format!("{:016x}-{:x}", self.epoch_seed, self.generations)
        } else {
            format!("{:016x}", self.epoch_seed)
        };
        let id = self.channels.insert(Channel {
            name: name.into(),
            epoch: epoch.into(),
            offset: 0,
            subscribers: HashSet::new(),
            holds: 0,
            history: VecDeque::new(),
            generation: self.generations,
        });
        self.by_name.insert(name.into(), id);
        id
    }

    pub fn channel(&self, id: ChannelId) -> &Channel {
        &self.channels[id]
    }

    /// The connections subscribed to `name` (none if it is not held).
    pub fn subscribers(&self, name: &str) -> impl Iterator<Item = &usize> {
        self.find(name).into_iter().flat_map(|id| self.channels[id].subscribers.iter())
    }

    pub fn find(&self, name: &str) -> Option<ChannelId> {
        self.by_name.get(name).copied()
    }

    /// Adds `key` to the channel (created if new); returns its id.
    pub fn subscribe(&mut self, name: &str, key: usize) -> ChannelId {
        let id = self.get_or_create(name);
        self.channels[id].subscribers.insert(key);
        id
    }

    /// Keeps `name` (created if new) until [`Hub::release`], even with no
    /// subscriber and no history: a page that read its position (the
    /// server API) must find the same stream — the same epoch — when its
    /// browser subscribes.
    pub fn hold(&mut self, name: &str) -> ChannelId {
        let id = self.get_or_create(name);
        self.channels[id].holds += 1;
        id
    }

    /// Ends one [`Hub::hold`]; forgets the channel if nothing else keeps it.
    pub fn release(&mut self, id: ChannelId) {
        if let Some(c) = self.channels.get_mut(id) {
            c.holds = c.holds.saturating_sub(1);
            self.forget_if_idle(id);
        }
    }

    /// Removes `key`; forgets the channel if nothing is left in it.
    pub fn unsubscribe(&mut self, id: ChannelId, key: usize) {
        if let Some(c) = self.channels.get_mut(id) {
            c.subscribers.remove(&key);
            self.forget_if_idle(id);
        }
    }

    fn forget_if_idle(&mut self, id: ChannelId) {
        let c = &self.channels[id];
        if c.subscribers.is_empty() && c.history.is_empty() && c.holds == 0 {
            if c.offset > 0 {
                if self.retired.len() >= MAX_RETIRED {
                    self.retired.clear();
                    self.epoch_seed = random_u64();
                }
                self.retired.insert(self.name_hash(&c.name));
            }
            let c = self.channels.remove(id);
            self.by_name.remove(&c.name);
        }
    }

    /// Appends a message to `name`'s stream: the next offset, framed once,
    /// kept in history. The caller queues `frame` to the channel's subscribers.
    pub fn publish(&mut self, name: &str, kind: &str, payload: &str, now: Instant) -> Published {
        self.expire(now);
        let id = self.get_or_create(name);
        let c = &mut self.channels[id];
        c.offset += 1;
        let frame = broadcast::frame(&broadcast::channel_envelope(kind, payload, &c.name, c.offset));
        let offset = c.offset;
        if self.limits.size > 0 {
            if c.history.len() == self.limits.size
                && let Some(old) = c.history.pop_front()
            {
                self.entries -= 1;
                self.bytes -= old.frame.len();
            }
            c.history.push_back(Entry { offset, frame: frame.clone() });
            self.entries += 1;
            self.bytes += frame.len();
            self.log.push_back(LogEntry { channel: id, generation: c.generation, offset, bytes: frame.len(), at: now });
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
        let c = self.channels.get(id)?;
        if *c.epoch != *since.epoch || since.offset > c.offset {
            return None;
        }
        if since.offset == c.offset {
            return Some(Vec::new());
        }
        // History offsets are contiguous and end at c.offset.
        let first = c.history.front()?.offset;
        if first > since.offset + 1 {
            return None;
        }
        let skip = (since.offset + 1 - first) as usize;
        Some(c.history.iter().skip(skip).map(|e| e.frame.clone()).collect())
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
        if let Some(c) = self.channels.get_mut(e.channel)
            && c.generation == e.generation
            && c.history.front().is_some_and(|h| h.offset == e.offset)
        {
            c.history.pop_front();
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
            channels.get(e.channel).is_some_and(|c| {
                c.generation == e.generation && c.history.front().is_some_and(|h| h.offset <= e.offset)
            })
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
