//! Stamping: seqs and times for new events, msg_id dedup inside the window, floors the log
//! can honour. Only the writer thread does this, so it is race-free.

use std::collections::{HashMap, VecDeque};

use super::super::read_table;
use super::super::record::{Event, Record};
use super::super::Receipt;
use super::Writer;

/// msg_ids seen inside the dedup window, with the seq each was stored under.
pub(super) struct Dedup {
    window_ms: u64,
    max_entries: usize,
    seqs: HashMap<String, u64>,
    /// `(time_ms, msg_id, seq)`, oldest first, for expiry.
    order: VecDeque<(u64, String, u64)>,
}

impl Dedup {
    pub(super) fn new(window_ms: u64, max_entries: usize) -> Dedup {
        Dedup {
            window_ms,
            max_entries,
            seqs: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub(super) fn remember(&mut self, time_ms: u64, msg_id: String, seq: u64) {
        self.seqs.insert(msg_id.clone(), seq);
        self.order.push_back((time_ms, msg_id, seq));
    }

    pub(super) fn expire(&mut self, now_ms: u64) {
        let horizon = now_ms.saturating_sub(self.window_ms);
        while let Some((time, _, _)) = self.order.front() {
            if *time >= horizon {
                break;
            }
            if let Some((_, id, seq)) = self.order.pop_front() {
                if self.seqs.get(&id) == Some(&seq) {
                    self.seqs.remove(&id);
                }
            }
        }
    }
}

impl Writer {
    /// Why these events cannot be stored: their new msg_ids would take the dedup table past
    /// `dedup_max_entries`. Refusing keeps the promise that an id is remembered for the
    /// whole window, which forgetting early would break.
    pub(super) fn dedup_full(&mut self, events: &[Event]) -> Option<String> {
        let unknown = |dedup: &Dedup, batch: &HashMap<String, u64>| {
            events
                .iter()
                .filter_map(|ev| ev.msg_id.as_ref())
                .filter(|id| !dedup.seqs.contains_key(*id) && !batch.contains_key(*id))
                .count()
        };
        let fits = |dedup: &Dedup, batch: &HashMap<String, u64>| {
            dedup.seqs.len() + batch.len() + unknown(dedup, batch) <= dedup.max_entries
        };
        if fits(&self.dedup, &self.batch_ids) {
            return None;
        }
        self.dedup.expire(wharf_protocol::now_ms());
        (!fits(&self.dedup, &self.batch_ids)).then(|| {
            format!(
                "{} msg_ids are remembered for the dedup window (dedup_max_entries); publish \
                 without msg_id or retry later",
                self.dedup.max_entries
            )
        })
    }

    /// Fills in what only the writer knows before `rec` is framed (its events' seqs and
    /// times, a consumer's floor) and says what the submitter is told. No record when
    /// nothing of it is to be written: every event a duplicate, or refused.
    pub(super) fn assign(&mut self, mut rec: Record) -> (Option<Record>, Receipt) {
        let receipt = match &mut rec {
            Record::Events(events) => {
                if let Some(refusal) = self.dedup_full(events) {
                    return (None, Receipt::Refused(refusal));
                }
                let seqs = self.stamp_unless_duplicate(events);
                if events.is_empty() {
                    return (None, Receipt::Seqs(seqs));
                }
                Receipt::Seqs(seqs)
            }
            Record::DeadLetter { event, .. } => {
                self.stamp(event);
                Receipt::Seqs(vec![(event.seq, false)])
            }
            // A consumer starting at the head comes with the highest floor there is (see
            // `Record::consumer_created`): clamping makes it the last seq written.
            Record::ConsumerCreated { floor, .. } | Record::ConsumerSeek { floor, .. } => {
                *floor = self.clamp_floor(*floor);
                Receipt::Floor(*floor)
            }
            _ => Receipt::Done,
        };
        (Some(rec), receipt)
    }

    /// Stamps each event whose msg_id was not stored before (in the window or earlier in this
    /// batch) and drops the others. Per event: its seq (the original's for a duplicate), and
    /// whether it was a duplicate.
    pub(super) fn stamp_unless_duplicate(&mut self, events: &mut Vec<Event>) -> Vec<(u64, bool)> {
        let mut seqs = Vec::with_capacity(events.len());
        events.retain_mut(|ev| {
            if let Some(id) = &ev.msg_id {
                let earlier = self.dedup.seqs.get(id).or_else(|| self.batch_ids.get(id));
                if let Some(&seq) = earlier {
                    seqs.push((seq, true));
                    return false;
                }
            }
            self.stamp(ev);
            if let Some(id) = &ev.msg_id {
                self.batch_ids.insert(id.clone(), ev.seq);
            }
            seqs.push((ev.seq, false));
            true
        });
        seqs
    }

    /// A floor the log can honour: not past the newest event, and not below the oldest one
    /// stored. Retention may have run after the floor was computed (a seek to a seq that
    /// was removed meanwhile); a floor below it would owe events that are gone, with no gap
    /// recorded for them.
    pub(super) fn clamp_floor(&self, floor: u64) -> u64 {
        let first = read_table(&self.table)
            .first()
            .map_or(self.next_seq, |m| m.base);
        floor.max(first.saturating_sub(1)).min(self.next_seq - 1)
    }

    /// Gives a new event its seq and a time no earlier than the last event's.
    pub(super) fn stamp(&mut self, ev: &mut Event) {
        ev.seq = self.next_seq;
        self.next_seq += 1;
        self.last_time_ms = self.last_time_ms.max(ev.time_ms);
        ev.time_ms = self.last_time_ms;
    }
}
