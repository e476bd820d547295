//! An ordered map for keys that mostly arrive in increasing order and mostly leave from the
//! front: a consumer's leases, delivery counts and ack-wait timers.
//!
//! The walk leases seqs in increasing order, its timers run out in the order they were set,
//! and acks settle from the oldest. A `BTreeMap` pays a node search and often an allocation
//! for every insert and remove; callgrind put the three of them per delivered event at about
//! a quarter of a replay's instructions. Here the entries sit in a sorted `VecDeque`: an
//! insert above the last key is a push, a remove marks a hole that the ends trim, and a
//! lookup is a binary search. Holes left in the middle (acks out of order behind an old
//! unsettled seq) are swept out once they outnumber the entries, so memory stays in
//! proportion to what is live.

use std::collections::VecDeque;

pub struct SeqMap<K, V> {
    slots: VecDeque<(K, Option<V>)>,
    live: usize,
}

/// Holes kept at most, besides one per live entry, before a sweep.
const SLACK: usize = 64;

impl<K: Ord + Copy, V> Default for SeqMap<K, V> {
    fn default() -> Self {
        SeqMap {
            slots: VecDeque::new(),
            live: 0,
        }
    }
}

impl<K: Ord + Copy, V> FromIterator<(K, V)> for SeqMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut map = SeqMap::default();
        for (k, v) in iter {
            map.insert(k, v);
        }
        map
    }
}

impl<K: Ord + Copy, V> SeqMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.live
    }

    fn find(&self, key: &K) -> Result<usize, usize> {
        // The newest keys are the ones most often asked about.
        match self.slots.back() {
            Some((last, _)) if last < key => Err(self.slots.len()),
            _ => self.slots.binary_search_by(|(k, _)| k.cmp(key)),
        }
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        let i = self.find(key).ok()?;
        self.slots[i].1.as_ref()
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let i = self.find(key).ok()?;
        self.slots[i].1.as_mut()
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    /// Inserts or replaces; returns what was there.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => {
                let old = self.slots[i].1.replace(value);
                if old.is_none() {
                    self.live += 1;
                }
                old
            }
            Err(i) => {
                if i == self.slots.len() {
                    self.slots.push_back((key, Some(value)));
                } else if i == 0 {
                    self.slots.push_front((key, Some(value)));
                } else {
                    self.slots.insert(i, (key, Some(value)));
                }
                self.live += 1;
                None
            }
        }
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let i = self.find(key).ok()?;
        let old = self.slots[i].1.take()?;
        self.live -= 1;
        self.trim();
        Some(old)
    }

    /// Drops holes at both ends, and sweeps the middle when holes outnumber entries.
    fn trim(&mut self) {
        while matches!(self.slots.front(), Some((_, None))) {
            self.slots.pop_front();
        }
        while matches!(self.slots.back(), Some((_, None))) {
            self.slots.pop_back();
        }
        if self.slots.len() > 2 * self.live + SLACK {
            self.slots.retain(|(_, v)| v.is_some());
        }
    }

    pub fn clear(&mut self) {
        self.slots.clear();
        self.live = 0;
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (K, &V)> {
        self.slots
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (*k, v)))
    }

    pub fn keys(&self) -> impl Iterator<Item = K> + '_ {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }

    pub fn first(&self) -> Option<(K, &V)> {
        // The front is never a hole (`trim`).
        self.slots
            .front()
            .and_then(|(k, v)| v.as_ref().map(|v| (*k, v)))
    }

    pub fn pop_first(&mut self) -> Option<(K, V)> {
        let (k, v) = self.slots.pop_front()?;
        let v = v?;
        self.live -= 1;
        self.trim();
        Some((k, v))
    }

    pub fn retain(&mut self, mut keep: impl FnMut(K, &mut V) -> bool) {
        for (k, slot) in self.slots.iter_mut() {
            if let Some(v) = slot {
                if !keep(*k, v) {
                    *slot = None;
                    self.live -= 1;
                }
            }
        }
        self.trim();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16, u8),
        Remove(u16),
        PopFirst,
        RetainAbove(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u16..300, any::<u8>()).prop_map(|(k, v)| Op::Insert(k, v)),
            3 => (0u16..300).prop_map(Op::Remove),
            1 => Just(Op::PopFirst),
            1 => (0u16..300).prop_map(Op::RetainAbove),
        ]
    }

    proptest! {
        /// Whatever the order of operations, it answers as a `BTreeMap` does.
        #[test]
        fn behaves_as_a_btree_map(ops in proptest::collection::vec(op(), 0..400)) {
            let mut map = SeqMap::new();
            let mut model = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => prop_assert_eq!(map.insert(k, v), model.insert(k, v)),
                    Op::Remove(k) => prop_assert_eq!(map.remove(&k), model.remove(&k)),
                    Op::PopFirst => prop_assert_eq!(map.pop_first(), model.pop_first()),
                    Op::RetainAbove(floor) => {
                        map.retain(|k, _| k > floor);
                        model.retain(|&k, _| k > floor);
                    }
                }
                prop_assert_eq!(map.len(), model.len());
                let got: Vec<(u16, u8)> = map.iter().map(|(k, v)| (k, *v)).collect();
                let want: Vec<(u16, u8)> = model.iter().map(|(k, v)| (*k, *v)).collect();
                prop_assert_eq!(got, want);
                prop_assert_eq!(map.first().map(|(k, v)| (k, *v)), model.first_key_value().map(|(k, v)| (*k, *v)));
                for k in [0u16, 75, 150, 299] {
                    prop_assert_eq!(map.get(&k), model.get(&k));
                }
            }
        }
    }

    #[test]
    fn holes_behind_an_old_entry_are_swept() {
        let mut map = SeqMap::new();
        map.insert(0u64, ());
        for seq in 1..100_000u64 {
            map.insert(seq, ());
            if seq > 1 {
                map.remove(&(seq - 1));
            }
        }
        assert_eq!(map.len(), 2);
        assert!(
            map.slots.len() <= 2 + SLACK,
            "{} slots kept",
            map.slots.len()
        );
    }
}
