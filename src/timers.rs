//! Connection deadlines as data: a min-heap the loop consults for its poll
//! timeout and drains each turn (no thread per timer, no scan of all
//! connections).
//!
//! Each connection has at most one entry: moving its deadline re-arms that
//! entry in place (an indexed heap: `pos` maps a slab key to its entry), so
//! the heap never holds more entries than there are connections, however
//! often deadlines move — 300k pipelined keep-alive requests on one
//! connection used to leave 300k stale entries behind. A connection's entry
//! is cancelled when it is removed, so an entry always belongs to the
//! connection now at its slab key. Cost:
//! O(log n) per set, cancel and pop; memory 20 bytes per connection
//! (deadlines are kept as [`Millis`], rounded up to the millisecond: poll
//! waits in whole milliseconds anyway, and a timer never fires early).

use std::time::Instant;

use crate::compact::Millis;

/// A due entry: the slab key of its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub key: usize,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    at: Millis,
    /// A slab key (the table holds at most MAX_CONNECTIONS ≤ 10M).
    key: u32,
}

/// Bytes of one heap entry plus one `pos` slot: one of each per connection.
pub const ENTRY_BYTES: usize = std::mem::size_of::<Entry>() + std::mem::size_of::<u32>();

/// No entry for this key.
const NONE: u32 = u32::MAX;

#[derive(Debug, Default)]
pub struct Timers {
    /// A binary min-heap on `at`.
    heap: Vec<Entry>,
    /// `heap` index of each slab key's entry, or [`NONE`].
    pos: Vec<u32>,
}

impl Timers {
    pub fn new() -> Timers {
        Timers::default()
    }

    /// Wakes connection `key` at `at`, replacing its earlier deadline if it
    /// had one.
    pub fn set(&mut self, at: Instant, key: usize) {
        if key >= self.pos.len() {
            self.pos.resize(key + 1, NONE);
        }
        let (at, key32) = (Millis::ceil(at), u32::try_from(key).expect("slab keys fit in u32"));
        let i = self.pos[key];
        if i == NONE {
            self.heap.push(Entry { at, key: key32 });
            self.pos[key] = (self.heap.len() - 1) as u32;
            self.sift_up(self.heap.len() - 1);
            return;
        }
        let i = i as usize;
        let old = self.heap[i].at;
        self.heap[i] = Entry { at, key: key32 };
        if at < old {
            self.sift_up(i);
        } else {
            self.sift_down(i);
        }
    }

    /// Forgets `key`'s deadline (the connection is gone).
    pub fn cancel(&mut self, key: usize) {
        if let Some(&i) = self.pos.get(key)
            && i != NONE
        {
            self.remove_at(i as usize);
        }
    }

    /// The earliest deadline (rounded up to the millisecond).
    pub fn next(&self) -> Option<Instant> {
        self.heap.first().map(|e| e.at.instant())
    }

    /// Removes and returns one entry due at `now`, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<Due> {
        match self.heap.first() {
            Some(e) if e.at <= now => {
                let e = self.remove_at(0);
                Some(Due { key: e.key as usize })
            }
            _ => None,
        }
    }

    /// Entries held: at most one per connection.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    fn remove_at(&mut self, i: usize) -> Entry {
        let last = self.heap.len() - 1;
        self.swap(i, last);
        let e = self.heap.pop().expect("non-empty");
        self.pos[e.key as usize] = NONE;
        if i < self.heap.len() {
            self.sift_down(i);
            self.sift_up(i);
        }
        e
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.pos[self.heap[a].key as usize] = a as u32;
        self.pos[self.heap[b].key as usize] = b as u32;
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[i].at >= self.heap[parent].at {
                return;
            }
            self.swap(i, parent);
            i = parent;
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut least = i;
            if l < self.heap.len() && self.heap[l].at < self.heap[least].at {
                least = l;
            }
            if r < self.heap.len() && self.heap[r].at < self.heap[least].at {
                least = r;
            }
            if least == i {
                return;
            }
            self.swap(i, least);
            i = least;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// What `next` reports for a deadline `t`.
    fn ms(t: Instant) -> Instant {
        Millis::ceil(t).instant()
    }

    #[test]
    fn pops_in_deadline_order_only_when_due() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        t.set(t0 + Duration::from_secs(3), 3);
        t.set(t0 + Duration::from_secs(1), 1);
        t.set(t0 + Duration::from_secs(2), 2);
        assert_eq!(t.next(), Some(ms(t0 + Duration::from_secs(1))));
        assert_eq!(t.pop_due(t0), None);
        assert_eq!(t.pop_due(t0 + Duration::from_secs(1) - Duration::from_nanos(1)), None, "never early");
        let now = ms(t0 + Duration::from_secs(2));
        assert_eq!(t.pop_due(now), Some(Due { key: 1 }));
        assert_eq!(t.pop_due(now), Some(Due { key: 2 }));
        assert_eq!(t.pop_due(now), None);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn moving_a_deadline_keeps_one_entry() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        for i in 0..10_000u64 {
            t.set(t0 + Duration::from_millis(i % 97), 5);
            t.set(t0 + Duration::from_millis(50), 6);
        }
        assert_eq!(t.len(), 2);
        t.set(t0 + Duration::from_secs(9), 5);
        assert_eq!(t.pop_due(t0 + Duration::from_secs(1)), Some(Due { key: 6 }));
        t.cancel(5);
        assert!(t.is_empty());
        t.cancel(5); // twice, or never set: nothing happens
        t.cancel(999);
    }

    #[test]
    fn agrees_with_a_sorted_list_under_random_updates() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        let mut want: std::collections::HashMap<usize, Instant> = Default::default();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = (x % 64) as usize;
            match x % 5 {
                0 => {
                    t.cancel(key);
                    want.remove(&key);
                }
                1 => {
                    let now = t0 + Duration::from_millis(x % 1000);
                    while let Some(Due { key }) = t.pop_due(now) {
                        assert!(want.remove(&key).expect("popped a live key") <= now);
                    }
                    assert!(want.values().all(|at| ms(*at) > now));
                }
                _ => {
                    let at = t0 + Duration::from_millis((x >> 8) % 1000);
                    t.set(at, key);
                    want.insert(key, at);
                }
            }
            assert_eq!(t.len(), want.len());
            assert_eq!(t.next(), want.values().min().copied().map(ms));
        }
    }
}
