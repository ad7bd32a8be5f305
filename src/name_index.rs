//! The hub's index from channel names to channel ids: an open-addressing
//! hash table of 8-byte slots (a 32-bit id and 32 bits of the name's
//! hash), the names themselves staying in the channels.
//!
//! Every connection has its own `user:` channel, so the index holds one
//! entry per connection. A `HashMap<Rc<str>, ChannelId>` takes 24 bytes per
//! bucket (41 per entry at 10,000 entries); this takes 8 per slot (13 per
//! entry), and a lookup compares names only on a 32-bit hash match.
//!
//! Linear probing, at most 3/4 full; removal shifts later entries of the
//! same run back (no tombstones, so lookups never slow down with churn).
//! The hash is keyed per process (`RandomState`, SipHash): names cannot be
//! chosen to collide.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

/// An empty slot.
const EMPTY: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct Slot {
    id: u32,
    /// The high 32 bits of the name's hash.
    tag: u32,
}

const VACANT: Slot = Slot { id: EMPTY, tag: 0 };

pub struct NameIndex {
    /// A power of two in length (or empty).
    slots: Box<[Slot]>,
    len: usize,
    hasher: RandomState,
}

impl NameIndex {
    pub fn new() -> NameIndex {
        NameIndex { slots: Box::new([]), len: 0, hasher: RandomState::new() }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn hash(&self, name: &str) -> u64 {
        self.hasher.hash_one(name)
    }

    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The slot holding `name`, if any; `name_of` gives an id's name.
    fn position<'a>(&self, name: &str, name_of: impl Fn(u32) -> &'a str) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let h = self.hash(name);
        let tag = (h >> 32) as u32;
        let mut i = h as usize & self.mask();
        loop {
            let s = self.slots[i];
            if s.id == EMPTY {
                return None;
            }
            if s.tag == tag && name_of(s.id) == name {
                return Some(i);
            }
            i = (i + 1) & self.mask();
        }
    }

    /// The id of `name`, if it is held.
    pub fn get<'a>(&self, name: &str, name_of: impl Fn(u32) -> &'a str) -> Option<u32> {
        self.position(name, name_of).map(|i| self.slots[i].id)
    }

    /// Adds `name` → `id`; `name` must not be held yet.
    pub fn insert<'a>(&mut self, name: &str, id: u32, name_of: impl Fn(u32) -> &'a str) {
        debug_assert!(id != EMPTY);
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow(&name_of);
        }
        let h = self.hash(name);
        self.place(Slot { id, tag: (h >> 32) as u32 }, h);
        self.len += 1;
    }

    fn place(&mut self, slot: Slot, hash: u64) {
        let mut i = hash as usize & self.mask();
        while self.slots[i].id != EMPTY {
            i = (i + 1) & self.mask();
        }
        self.slots[i] = slot;
    }

    fn grow<'a>(&mut self, name_of: &impl Fn(u32) -> &'a str) {
        let cap = (self.slots.len() * 2).max(8);
        let old = std::mem::replace(&mut self.slots, vec![VACANT; cap].into_boxed_slice());
        for s in old.iter().filter(|s| s.id != EMPTY) {
            let h = self.hash(name_of(s.id));
            self.place(*s, h);
        }
    }

    /// Removes `name`; returns its id if it was held.
    pub fn remove<'a>(&mut self, name: &str, name_of: impl Fn(u32) -> &'a str) -> Option<u32> {
        let mut hole = self.position(name, &name_of)?;
        let id = self.slots[hole].id;
        self.len -= 1;
        // Backward shift: every later entry of this run whose home slot is
        // not between the hole and itself moves into the hole, so no entry
        // ends up behind an empty slot on its probe path.
        let mask = self.mask();
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let s = self.slots[j];
            if s.id == EMPTY {
                break;
            }
            let home = self.hash(name_of(s.id)) as usize & mask;
            // Distance from home to j vs from home to the hole (cyclic).
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.slots[hole] = s;
                hole = j;
            }
        }
        self.slots[hole] = VACANT;
        // Shrink after a mass departure (a deploy's reconnect storm is over).
        if self.slots.len() > 64 && self.len * 8 < self.slots.len() {
            self.shrink(&name_of);
        }
        Some(id)
    }

    fn shrink<'a>(&mut self, name_of: &impl Fn(u32) -> &'a str) {
        let mut cap = self.slots.len();
        while cap > 8 && self.len * 4 < cap {
            cap /= 2;
        }
        let old = std::mem::replace(&mut self.slots, vec![VACANT; cap].into_boxed_slice());
        for s in old.iter().filter(|s| s.id != EMPTY) {
            let h = self.hash(name_of(s.id));
            self.place(*s, h);
        }
    }

    /// Bytes of the table.
    pub fn table_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.slots)
    }
}

impl Default for NameIndex {
    fn default() -> Self {
        NameIndex::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn agrees_with_a_hash_map_under_random_inserts_and_removes() {
        // Names live in a table indexed by id, as channels do in the hub.
        let mut names: Vec<Option<String>> = Vec::new();
        let mut free: Vec<u32> = Vec::new();
        let mut model: HashMap<String, u32> = HashMap::new();
        let mut idx = NameIndex::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for step in 0..60_000 {
            // Phases of growth and of departure, so the table grows and shrinks.
            let grow = (step / 10_000) % 2 == 0;
            let name = format!("user:{}", next(5_000));
            let add = if grow { next(4) != 0 } else { next(4) == 0 };
            if add && !model.contains_key(&name) {
                let id = free.pop().unwrap_or_else(|| {
                    names.push(None);
                    (names.len() - 1) as u32
                });
                names[id as usize] = Some(name.clone());
                idx.insert(&name, id, |i| names[i as usize].as_deref().unwrap());
                model.insert(name, id);
            } else if !add {
                let got = idx.remove(&name, |i| names[i as usize].as_deref().unwrap());
                assert_eq!(got, model.remove(&name), "{name}");
                if let Some(id) = got {
                    names[id as usize] = None;
                    free.push(id);
                }
            }
            assert_eq!(idx.len(), model.len());
            if step % 997 == 0 {
                for (n, id) in &model {
                    assert_eq!(idx.get(n, |i| names[i as usize].as_deref().unwrap()), Some(*id), "{n}");
                }
                assert_eq!(idx.get("user:absent", |i| names[i as usize].as_deref().unwrap()), None);
            }
        }
        assert!(idx.table_bytes() <= 8 * 8 * model.len().max(8), "shrank after the departures");
    }
}
