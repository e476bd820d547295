//! What a durable consumer has settled, in the shape both the log (checkpoints) and the sled
//! view store it. A pure module: no I/O, so the record format and the view can both use it
//! without depending on each other.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How a consumer settled events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Settle {
    Ack,
    /// The consumer gave up on them: never redelivered, counted.
    Term,
    /// Delivered `max_deliver` times; moved to the dead-letter topic.
    DeadLetter,
}

/// A set of seqs kept as disjoint, non-adjacent inclusive ranges (`start -> end`).
///
/// A consumer that settles everything but one poison event holds two ranges, not one entry per
/// seq: a sparse set of 20,000 acks above a pinned floor was re-encoded on every commit and
/// copied into every checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqRanges(BTreeMap<u64, u64>);

impl SeqRanges {
    pub fn contains(&self, seq: u64) -> bool {
        self.0
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, &end)| end >= seq)
    }

    /// Adds `seq`; false when it was already in.
    pub fn insert(&mut self, seq: u64) -> bool {
        let before = self.0.range(..=seq).next_back().map(|(&s, &e)| (s, e));
        if let Some((_, end)) = before {
            if end >= seq {
                return false;
            }
        }
        let after_end = seq
            .checked_add(1)
            .and_then(|next| self.0.get(&next).copied().map(|end| (next, end)));
        let start = match before {
            Some((start, end)) if end.checked_add(1) == Some(seq) => start,
            _ => seq,
        };
        let end = match after_end {
            Some((next, end)) => {
                self.0.remove(&next);
                end
            }
            None => seq,
        };
        self.0.insert(start, end);
        true
    }

    /// The lowest range.
    pub fn first(&self) -> Option<(u64, u64)> {
        self.0.first_key_value().map(|(&s, &e)| (s, e))
    }

    /// Forgets every seq at or below `floor`.
    pub fn remove_through(&mut self, floor: u64) {
        while let Some((start, end)) = self.first() {
            if start > floor {
                break;
            }
            self.0.remove(&start);
            if end > floor {
                self.0.insert(floor + 1, end);
                break;
            }
        }
    }

    /// How many seqs of `from..=to` are in the set.
    pub fn count_in(&self, from: u64, to: u64) -> u64 {
        if from > to {
            return 0;
        }
        let mut n = 0;
        let first = self
            .0
            .range(..=from)
            .next_back()
            .map(|(&s, _)| s)
            .unwrap_or(from);
        for (&start, &end) in self.0.range(first..=to) {
            let lo = start.max(from);
            let hi = end.min(to);
            if hi >= lo {
                n += hi - lo + 1;
            }
        }
        n
    }

    /// How many seqs are in the set.
    pub fn len(&self) -> u64 {
        self.0.iter().map(|(&s, &e)| e - s + 1).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many ranges hold them (what the set costs to store).
    pub fn ranges(&self) -> usize {
        self.0.len()
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// What a durable consumer has settled: every matching event at or below `floor`, plus the
/// ranges `acked` above it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConsumerState {
    pub patterns: Vec<String>,
    pub floor: u64,
    pub acked: SeqRanges,
    /// Events settled with `term`.
    pub terminated: u64,
    /// Events moved to the dead-letter topic.
    pub dead_lettered: u64,
    /// Seqs removed by retention before they were settled (matching or not).
    pub gapped: u64,
    /// How many seeks moved this consumer. A settle computed before a seek carries the older
    /// count, and its floor is ignored: it may settle its own seqs, never undo the seek.
    pub seeks: u64,
    /// Seqs retention removed before they were settled, that no subscriber was told of yet.
    pub untold_gap: Option<(u64, u64)>,
}

impl ConsumerState {
    pub fn new(patterns: Vec<String>, floor: u64) -> ConsumerState {
        ConsumerState {
            patterns,
            floor,
            ..ConsumerState::default()
        }
    }

    /// Applies a settle of `seqs`; `floor` is `None` when it was computed before a seek.
    pub fn apply_settle(&mut self, seqs: &[u64], floor: Option<u64>, kind: Settle) {
        let mut fresh = 0u64;
        for &seq in seqs {
            if seq > self.floor && self.acked.insert(seq) {
                fresh += 1;
            }
        }
        match kind {
            Settle::Ack => {}
            Settle::Term => self.terminated += fresh,
            Settle::DeadLetter => self.dead_lettered += fresh,
        }
        if let Some(floor) = floor {
            self.floor = self.floor.max(floor);
        }
        self.compact();
    }

    /// Moves the floor over the ranges that touch it.
    fn compact(&mut self) {
        self.acked.remove_through(self.floor);
        while let Some((start, end)) = self.acked.first() {
            if start != self.floor + 1 {
                break;
            }
            self.floor = end;
            self.acked.remove_through(end);
        }
    }

    pub fn is_acked(&self, seq: u64) -> bool {
        seq <= self.floor || self.acked.contains(seq)
    }

    /// Applies a `ConsumerGap` record: `from..=to` are gone; returns whether it moved the floor.
    /// The gap stays untold until a subscriber is told of it (`GapReported`).
    pub fn gap(&mut self, from: u64, to: u64) -> bool {
        if to <= self.floor {
            return false;
        }
        let from = from.max(self.floor + 1);
        let settled = self.acked.count_in(from, to);
        self.gapped += (to - from + 1).saturating_sub(settled);
        self.floor = to;
        self.compact();
        let first = self
            .untold_gap
            .map_or(from, |(earlier, _)| earlier.min(from));
        self.untold_gap = Some((first, to));
        true
    }

    /// A subscriber was told of the gap through `to`.
    pub fn gap_reported(&mut self, to: u64) {
        if self.untold_gap.is_some_and(|(_, last)| last <= to) {
            self.untold_gap = None;
        }
    }

    /// Applies a `ConsumerSeek` record: everything above `floor` is unsettled again.
    pub fn seek(&mut self, floor: u64) {
        self.floor = floor;
        self.acked.clear();
        self.seeks += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_split_and_count() {
        let mut r = SeqRanges::default();
        for s in [5, 7, 6, 10, 1] {
            assert!(r.insert(s));
        }
        assert!(!r.insert(6));
        assert_eq!(r.ranges(), 3);
        assert_eq!(r.len(), 5);
        assert!(r.contains(7) && !r.contains(8) && r.contains(10));
        assert_eq!(r.count_in(2, 9), 3);
        assert_eq!(r.count_in(6, 6), 1);
        r.remove_through(6);
        assert_eq!(r.first(), Some((7, 7)));
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn acked_state_compacts_into_the_floor() {
        let mut s = ConsumerState::new(vec!["a".into()], 0);
        s.apply_settle(&[2, 3], Some(0), Settle::Ack);
        assert_eq!((s.floor, s.acked.len()), (0, 2));
        s.apply_settle(&[1], Some(0), Settle::Ack);
        assert_eq!((s.floor, s.acked.len()), (3, 0));
        s.apply_settle(&[9], Some(5), Settle::Term);
        s.apply_settle(&[9], Some(5), Settle::Term);
        assert_eq!((s.floor, s.terminated), (5, 1));
        assert!(s.is_acked(9) && s.is_acked(4) && !s.is_acked(6));
        s.seek(2);
        assert!(!s.is_acked(3) && !s.is_acked(9) && s.is_acked(2));
        s.apply_settle(&[4], None, Settle::Ack);
        assert_eq!(s.floor, 2, "a settle from before the seek moves no floor");
        assert!(s.is_acked(4));
    }

    #[test]
    fn one_poison_event_costs_two_ranges() {
        let mut s = ConsumerState::new(vec!["a".into()], 0);
        for seq in 2..20_002 {
            s.apply_settle(&[seq], Some(0), Settle::Ack);
        }
        assert_eq!(s.floor, 0);
        assert_eq!(s.acked.ranges(), 1);
        assert_eq!(s.acked.len(), 20_000);
        let bytes = crate::backend::log::codec::encode(&s).unwrap();
        assert!(bytes.len() < 64, "{} bytes", bytes.len());
    }

    #[test]
    fn gaps_merge_until_told() {
        let mut s = ConsumerState::new(vec!["a".into()], 0);
        assert!(s.gap(1, 57));
        assert!(s.gap(58, 76));
        assert_eq!(s.untold_gap, Some((1, 76)));
        s.gap_reported(57);
        assert_eq!(s.untold_gap, Some((1, 76)));
        s.gap_reported(76);
        assert_eq!(s.untold_gap, None);
    }
}
