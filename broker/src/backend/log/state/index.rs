//! The per-topic index: each topic's seqs, so that `history` reads a topic's newest events
//! without scanning the log. Like the rest of the view it is derived from the log: each
//! [`ViewUpdate`] carries the events committed since the previous one, saved in the same
//! sled batch as the position they bring the view to, and the start-up replay indexes what
//! the view had not seen. A view that has no index (made before there was one) is rebuilt.
//!
//! Keys are `i\0<topic>\0<first seq, big-endian>` and each value one chunk of that topic's
//! seqs (the first, then the gaps between them, in bincode's varints): the events of a
//! topic that one save brings, at most [`CHUNK`] to a value.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{StateError, StateView, ViewUpdate};
use crate::backend::log::append::Event;

const INDEX: u8 = b'i';
/// Present once the view has an index (its value is the index's format, 1).
pub(super) const INDEX_KEY: &[u8] = b"m\0index";
/// Seqs in one value at most.
const CHUNK: usize = 1024;

/// Events to add to the index: the committer hands over the events it committed (no
/// copy), the start-up replay their topics and seqs.
#[derive(Debug)]
pub enum IndexBatch {
    Events(Vec<Arc<Event>>),
    Seqs(Vec<(String, u64)>),
}

impl IndexBatch {
    /// Keeps the topics and seqs only: an update retried after a failed save must not hold
    /// its events' payloads meanwhile.
    pub fn shed_payloads(&mut self) {
        if let IndexBatch::Events(events) = self {
            let seqs = events.iter().map(|ev| (ev.topic.clone(), ev.seq)).collect();
            *self = IndexBatch::Seqs(seqs);
        }
    }
}

impl Default for IndexBatch {
    fn default() -> IndexBatch {
        IndexBatch::Seqs(Vec::new())
    }
}

fn prefix(topic: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 11);
    k.extend_from_slice(&[INDEX, 0]);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k
}

fn key(topic: &str, first: u64) -> Vec<u8> {
    let mut k = prefix(topic);
    k.extend_from_slice(&first.to_be_bytes());
    k
}

impl StateView {
    /// Adds the updates' events to `batch`, one value per topic and [`CHUNK`], and marks
    /// the view as indexed.
    pub(super) fn index_into(
        &self,
        batch: &mut sled::Batch,
        updates: &[ViewUpdate],
    ) -> Result<(), StateError> {
        let mut by_topic: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for update in updates {
            match &update.index {
                IndexBatch::Events(events) => {
                    for ev in events {
                        by_topic.entry(ev.topic.as_str()).or_default().push(ev.seq);
                    }
                }
                IndexBatch::Seqs(seqs) => {
                    for (topic, seq) in seqs {
                        by_topic.entry(topic.as_str()).or_default().push(*seq);
                    }
                }
            }
        }
        self.chunks_into(batch, by_topic)?;
        batch.insert(INDEX_KEY, &[1u8][..]);
        Ok(())
    }

    fn chunks_into(
        &self,
        batch: &mut sled::Batch,
        by_topic: BTreeMap<&str, Vec<u64>>,
    ) -> Result<(), StateError> {
        for (topic, seqs) in by_topic {
            for chunk in seqs.chunks(CHUNK) {
                let mut gaps = Vec::with_capacity(chunk.len());
                let mut prev = 0;
                for &seq in chunk {
                    gaps.push(seq - prev);
                    prev = seq;
                }
                batch.insert(key(topic, chunk[0]), self.encode(&gaps)?);
            }
        }
        Ok(())
    }

    /// Saves part of an index being built from the whole log (a view that had none): in
    /// parts, so that a long log never sits in memory whole. The view is not marked as
    /// indexed until its position is saved with the rest ([`StateView::save`]).
    pub fn save_index_part(&self, entries: &[(String, u64)]) -> Result<(), StateError> {
        let mut by_topic: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for (topic, seq) in entries {
            by_topic.entry(topic.as_str()).or_default().push(*seq);
        }
        let mut batch = sled::Batch::default();
        self.chunks_into(&mut batch, by_topic)?;
        self.db.apply_batch(batch).map_err(|e| self.sled_err(e))
    }

    /// Removes every index entry (before building the index again from the whole log: a
    /// build cut short may have left entries for seqs a torn tail took away since).
    pub fn clear_index(&self) -> Result<(), StateError> {
        let mut batch = sled::Batch::default();
        for k in self.db.scan_prefix([INDEX, 0]).keys() {
            batch.remove(k.map_err(|e| self.sled_err(e))?);
        }
        batch.remove(INDEX_KEY);
        self.db.apply_batch(batch).map_err(|e| self.sled_err(e))
    }

    /// Whether the view has an index (a view made by an older wharf has not).
    pub fn has_index(&self) -> Result<bool, StateError> {
        self.db
            .contains_key(INDEX_KEY)
            .map_err(|e| self.sled_err(e))
    }

    /// Every seq at or below this is in the index (once saved: sled lags the log).
    pub fn indexed_through(&self) -> u64 {
        self.indexed.load(Ordering::Acquire)
    }

    fn chunk(&self, k: &[u8], v: &[u8]) -> Result<Vec<u64>, StateError> {
        let gaps: Vec<u64> = self.decode(k, v)?;
        let mut seq = 0;
        Ok(gaps
            .into_iter()
            .map(|gap| {
                seq += gap;
                seq
            })
            .collect())
    }

    /// Up to `max` seqs of `topic` below `before`, newest first.
    pub fn seqs_before(
        &self,
        topic: &str,
        before: u64,
        max: usize,
    ) -> Result<Vec<u64>, StateError> {
        let mut out = Vec::new();
        if before <= 1 || max == 0 {
            return Ok(out);
        }
        let range = prefix(topic)..key(topic, before);
        for item in self.db.range(range).rev() {
            let (k, v) = item.map_err(|e| self.sled_err(e))?;
            for seq in self.chunk(&k, &v)?.into_iter().rev() {
                if seq < before {
                    out.push(seq);
                    if out.len() == max {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Up to `max` seqs of `topic` above `after`, oldest first.
    pub fn seqs_after(&self, topic: &str, after: u64, max: usize) -> Result<Vec<u64>, StateError> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        let start = self
            .db
            .range(prefix(topic)..=key(topic, after))
            .next_back()
            .transpose()
            .map_err(|e| self.sled_err(e))?
            .map_or_else(|| prefix(topic), |(k, _)| k.to_vec());
        let end = {
            let mut end = prefix(topic);
            if let Some(last) = end.last_mut() {
                *last = 1;
            }
            end
        };
        for item in self.db.range(start..end) {
            let (k, v) = item.map_err(|e| self.sled_err(e))?;
            for seq in self.chunk(&k, &v)? {
                if seq > after {
                    out.push(seq);
                    if out.len() == max {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Removes `topic`'s chunks that hold only seqs below `first` (retention removed them).
    pub fn prune_index(&self, topic: &str, first: u64) -> Result<(), StateError> {
        let mut gone = sled::Batch::default();
        for item in self.db.range(prefix(topic)..key(topic, first)) {
            let (k, v) = item.map_err(|e| self.sled_err(e))?;
            if self.chunk(&k, &v)?.last().is_some_and(|&last| last < first) {
                gone.remove(k);
            }
        }
        self.db.apply_batch(gone).map_err(|e| self.sled_err(e))
    }
}
