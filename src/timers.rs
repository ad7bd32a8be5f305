//! Connection deadlines as data: a min-heap the loop consults for its poll
//! timeout and drains each turn (no thread per timer, no scan of all
//! connections).
//!
//! Each connection has one current deadline. Moving it pushes a new entry;
//! the old one stays in the heap and is recognised as stale when it pops
//! (the caller compares it with the connection's current deadline and id).
//! Entries carry the connection's lifetime-unique id because slab keys are
//! reused. Cost: O(log n) per schedule and per pop; one heartbeat round over
//! n clients is n pops + n pushes.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// A due entry: slab key and the id of the connection it was set for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub key: usize,
    pub id: u64,
}

#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize, u64)>>,
}

impl Timers {
    pub fn new() -> Timers {
        Timers::default()
    }

    /// Wakes connection (`key`, `id`) at `at`.
    pub fn schedule(&mut self, at: Instant, key: usize, id: u64) {
        self.heap.push(Reverse((at, key, id)));
    }

    /// The earliest deadline, stale or not (a stale one only wakes the loop
    /// early once).
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Removes and returns one entry due at `now`, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<Due> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => {
                let Reverse((_, key, id)) = self.heap.pop()?;
                Some(Due { key, id })
            }
            _ => None,
        }
    }

    /// Entries held, stale ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_order_only_when_due() {
        let t0 = Instant::now();
        let mut t = Timers::new();
        t.schedule(t0 + Duration::from_secs(3), 3, 30);
        t.schedule(t0 + Duration::from_secs(1), 1, 10);
        t.schedule(t0 + Duration::from_secs(2), 2, 20);
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(t.pop_due(t0), None);
        let now = t0 + Duration::from_secs(2);
        assert_eq!(t.pop_due(now), Some(Due { key: 1, id: 10 }));
        assert_eq!(t.pop_due(now), Some(Due { key: 2, id: 20 }));
        assert_eq!(t.pop_due(now), None);
        assert_eq!(t.len(), 1);
    }
}
