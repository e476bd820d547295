//! The log's commit sink: applies each durable batch to consumers in memory and the sled
//! view, writes checkpoints, and hands the events to the feed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::log::append::{CommitSink, Event, Position, Record, Settle};
use crate::backend::log::consumers::{Changes, Consumers};
use crate::backend::log::state::{ConsumerState, IndexBatch, ViewSender, ViewUpdate};
use crate::metrics;

use super::Feed;

/// The most a checkpoint record holds before the next one starts: well under the record
/// limit readers enforce, so thousands of consumers with long pattern lists never make a
/// record no reader accepts.
const CHECKPOINT_RECORD_BYTES: usize = 16 << 20;

/// Every consumer's state as `Checkpoint` records of at most 16 MiB each (always at least
/// one, so a segment's first record is a checkpoint).
pub fn checkpoint_records(all: Vec<(String, ConsumerState)>) -> Vec<Record> {
    let mut records = Vec::new();
    let mut part = Vec::new();
    let mut bytes = 0usize;
    for (name, state) in all {
        let size = name.len()
            + crate::backend::log::codec::encode(&state)
                .map_or(CHECKPOINT_RECORD_BYTES, |body| body.len());
        if !part.is_empty() && bytes + size > CHECKPOINT_RECORD_BYTES {
            records.push(Record::Checkpoint {
                consumers: std::mem::take(&mut part),
            });
            bytes = 0;
        }
        bytes += size;
        part.push((name, state));
    }
    records.push(Record::Checkpoint { consumers: part });
    records
}

/// Applies each durable batch to memory and sled, then wakes the deliverers.
pub struct Committer {
    consumers: Arc<Consumers>,
    view: ViewSender,
    feed: Arc<Feed>,
    /// When the view last recorded its log position.
    saved_at: Instant,
    /// Events committed since, for the view's per-topic index.
    unindexed: Vec<Arc<Event>>,
    /// The newest seq committed.
    head: u64,
}

/// How stale the view may get while only events are committed: its log position bounds how
/// much of the log a restart replays into consumers (which it scans anyway), and its
/// per-topic index lags by this (`history` reads the newest events from the feed), so it
/// need not move on every commit: per-commit sled batches showed as sled's I/O threads
/// waking thousands of times a second under publish.
const POSITION_EVERY: Duration = Duration::from_millis(50);
/// ... nor by more events than this.
const UNINDEXED_MAX: usize = 8192;

impl Committer {
    pub fn new(consumers: Arc<Consumers>, view: ViewSender, feed: Arc<Feed>) -> Committer {
        Committer {
            consumers,
            view,
            feed,
            saved_at: Instant::now(),
            unindexed: Vec::new(),
            head: 0,
        }
    }
}

impl CommitSink for Committer {
    fn checkpoint(&mut self) -> Vec<Record> {
        checkpoint_records(self.consumers.snapshot())
    }

    fn gaps(&mut self, first_seq: u64) -> Vec<Record> {
        self.feed.trim_below(first_seq);
        self.consumers
            .snapshot()
            .into_iter()
            .filter(|(_, state)| state.floor + 1 < first_seq)
            .map(|(name, state)| Record::ConsumerGap {
                name,
                from: state.floor + 1,
                to: first_seq - 1,
            })
            .collect()
    }

    fn committed(&mut self, records: Vec<Record>, end: Position) {
        let mut events = Vec::new();
        let mut changes = Changes::default();
        for rec in records {
            if let Record::Acked { seqs, kind, .. } = &rec {
                let counter = match kind {
                    Settle::Ack => metrics::acked(),
                    Settle::Term => metrics::terminated(),
                    Settle::DeadLetter => metrics::dead_lettered(),
                };
                counter.increment(seqs.len() as u64);
            }
            if let Record::DeadLetter { .. } = &rec {
                metrics::dead_lettered().increment(1);
            }
            self.consumers.apply(&rec, &mut changes);
            events.extend(rec.into_events().into_iter().map(Arc::new));
        }
        for gone in changes.evicted.drain(..) {
            gone.outbound.unsubscribed(&gone.sub, "deleted");
        }
        if let Some(last) = events.last() {
            self.head = last.seq;
        }
        self.unindexed.extend(events.iter().cloned());
        let only_events =
            changes.saved.is_empty() && changes.settled.is_empty() && changes.deleted.is_empty();
        if only_events
            && self.saved_at.elapsed() < POSITION_EVERY
            && self.unindexed.len() < UNINDEXED_MAX
        {
            metrics::published().increment(events.len() as u64);
            self.feed.push(events);
            return;
        }
        self.saved_at = Instant::now();
        changes.saved.sort();
        changes.saved.dedup();
        let states: Vec<(String, ConsumerState)> = changes
            .saved
            .iter()
            .filter_map(|name| self.consumers.get(name).map(|c| (name.clone(), c.state())))
            .collect();
        self.view.send(ViewUpdate {
            states,
            settled: changes.settled,
            deleted: changes.deleted,
            index: IndexBatch::Events(std::mem::take(&mut self.unindexed)),
            indexed_through: self.head,
            applied: end,
        });
        metrics::published().increment(events.len() as u64);
        self.feed.push(events);
    }
}
