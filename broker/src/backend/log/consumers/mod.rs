//! Durable consumers in memory: acked state (mirrored in sled), who is attached, and what is
//! in flight.
//!
//! Every delivered-but-unsettled event is held under a *lease*: which attachment holds it and
//! when its ack wait runs out. An attachment's delivery task walks the log from the floor and
//! asks [`Consumer::step`] about each event; redeliveries (ack wait expired, nack) come from
//! [`Consumer::next_due`]. In shared mode several attachments walk the log at once and the
//! leases decide who gets what: the first with room claims an event, the others skip it.
//! When a shared attachment leaves, its leases become *orphans* that the others take at once.
//!
//! The state is changed only through [`Consumers::apply`] (a durable log record: create, ack,
//! seek, delete) and by the delivery tasks (leases). That keeps "acked" meaning "acked on disk".

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use wharf_protocol::Pattern;

use crate::backend::log::append::Record;
use crate::backend::log::settled::{ConsumerState, Settle};

pub use crate::backend::contract::{dead_letter_topic, DEAD_LETTER_PREFIX};

mod consumer;
mod leases;
mod seq_map;
mod settling;

pub use consumer::{Attached, Attachment, Consumer, ModeConflict};
pub use leases::Step;

/// What applying one record changed, for the sled view.
#[derive(Default)]
pub struct Changes {
    /// Consumers whose state must be saved.
    pub saved: Vec<String>,
    /// Consumers to remove from sled.
    pub deleted: Vec<String>,
    /// Delivery counts that no longer matter.
    pub settled: Vec<(String, u64)>,
    /// Attachments of deleted consumers, to be told.
    pub evicted: Vec<Attachment>,
}

/// All durable consumers by name.
#[derive(Default)]
pub struct Consumers {
    map: Mutex<HashMap<String, Arc<Consumer>>>,
}

impl Consumers {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Consumer>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, name: &str) -> Option<Arc<Consumer>> {
        self.lock().get(name).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Every consumer's state, for a checkpoint.
    pub fn snapshot(&self) -> Vec<(String, ConsumerState)> {
        let mut all: Vec<(String, ConsumerState)> = self
            .lock()
            .values()
            .map(|c| (c.name.clone(), c.state()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Delivered-through marks `(name, seeks, through)` that moved since they were last
    /// taken, to save.
    pub fn take_marks(&self) -> Vec<(String, u64, u64)> {
        let all: Vec<Arc<Consumer>> = self.lock().values().cloned().collect();
        all.iter()
            .filter_map(|c| c.take_mark().map(|(seeks, m)| (c.name.clone(), seeks, m)))
            .collect()
    }

    /// Consumers nobody has been attached to for at least `ttl`.
    pub fn idle_longer_than(&self, ttl: Duration, now: Instant) -> Vec<String> {
        self.lock()
            .values()
            .filter(|c| c.idle_for(now).is_some_and(|idle| idle >= ttl))
            .map(|c| c.name.clone())
            .collect()
    }

    /// Adds a consumer loaded from the view, unless one of that name exists.
    pub fn insert(&self, name: &str, state: ConsumerState, deliveries: BTreeMap<u64, u32>) -> bool {
        let patterns: Result<Vec<Pattern>, _> =
            state.patterns.iter().map(|p| Pattern::parse(p)).collect();
        let Ok(patterns) = patterns else {
            tracing::error!(consumer = name, patterns = ?state.patterns, "stored pattern is invalid; consumer skipped");
            return false;
        };
        let mut map = self.lock();
        if map.contains_key(name) {
            return false;
        }
        map.insert(
            name.to_owned(),
            Arc::new(Consumer::new(name, patterns, state, deliveries)),
        );
        true
    }

    /// Applies one durable record. The same code runs at start-up replay and after each
    /// commit, so memory, sled and the log cannot drift apart.
    pub fn apply(&self, record: &Record, changes: &mut Changes) {
        match record {
            Record::Events(_) => {}
            Record::ConsumerCreated {
                name,
                patterns,
                floor,
            } => {
                let state = ConsumerState::new(patterns.clone(), *floor);
                if self.insert(name, state, BTreeMap::new()) {
                    changes.saved.push(name.clone());
                }
            }
            Record::AckedV1 {
                consumer,
                seqs,
                floor,
                kind,
            } => self.settle(consumer, seqs, *floor, *kind, None, changes),
            Record::Acked {
                consumer,
                seqs,
                floor,
                kind,
                seeks,
            } => self.settle(consumer, seqs, *floor, *kind, Some(*seeks), changes),
            Record::DeadLetter { consumer, seq, .. } => {
                if let Some(c) = self.get(consumer) {
                    let floor = c.lock().state.floor;
                    for seq in c.apply_settle(&[*seq], floor, Settle::DeadLetter, None) {
                        changes.settled.push((consumer.clone(), seq));
                    }
                    changes.saved.push(consumer.clone());
                }
            }
            Record::GapReported { name, to } => {
                if let Some(c) = self.get(name) {
                    c.lock().state.gap_reported(*to);
                    changes.saved.push(name.clone());
                }
            }
            Record::ConsumerSeek { name, floor } => {
                if let Some(c) = self.get(name) {
                    for seq in c.apply_seek(*floor) {
                        changes.settled.push((name.clone(), seq));
                    }
                    changes.saved.push(name.clone());
                }
            }
            Record::ConsumerGap { name, from, to } => {
                if let Some(c) = self.get(name) {
                    for seq in c.apply_gap(*from, *to) {
                        changes.settled.push((name.clone(), seq));
                    }
                    changes.saved.push(name.clone());
                }
            }
            // Replay may start here (older segments removed): add what is not known yet.
            // Otherwise every consumer is known and already in exactly this state.
            Record::Checkpoint { consumers } => {
                for (name, state) in consumers {
                    if self.insert(name, state.clone(), BTreeMap::new()) {
                        changes.saved.push(name.clone());
                    }
                }
            }
            Record::CheckpointV1 { consumers } => {
                for (name, state) in consumers {
                    if self.insert(name, state.clone().into(), BTreeMap::new()) {
                        changes.saved.push(name.clone());
                    }
                }
            }
            Record::ConsumerDeleted { name } => {
                if let Some(c) = self.lock().remove(name) {
                    changes.evicted.extend(c.detach_everyone());
                    changes.deleted.push(name.clone());
                }
            }
        }
    }

    fn settle(
        &self,
        consumer: &str,
        seqs: &[u64],
        floor: u64,
        kind: Settle,
        seeks: Option<u64>,
        changes: &mut Changes,
    ) {
        if let Some(c) = self.get(consumer) {
            for seq in c.apply_settle(seqs, floor, kind, seeks) {
                changes.settled.push((consumer.to_owned(), seq));
            }
            changes.saved.push(consumer.to_owned());
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }
}
