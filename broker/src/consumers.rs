//! Durable consumers in memory: their acked state (mirrored in sled) and, while one is
//! attached, what its connection has in flight.
//!
//! The in-memory state is changed only from two places: the commit sink, when an `Acked` or
//! `ConsumerCreated` record is durable, and the delivery task, when it hands an event out.
//! That keeps "acked" meaning "acked on disk".

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::task::AbortHandle;
use wharf_protocol::Pattern;

use crate::delivery::Outbound;
use crate::state::ConsumerState;

/// Which connection holds a consumer, and what it has been given and not yet acked.
pub struct Attachment {
    pub session: u64,
    pub sub: Arc<str>,
    pub outbound: Outbound,
    generation: u64,
    task: Option<AbortHandle>,
    /// Delivered to this attachment, not acked yet.
    pending: BTreeSet<u64>,
    /// Every seq at or below this has been looked at by this attachment's delivery task.
    read_upto: u64,
}

struct Inner {
    state: ConsumerState,
    deliveries: BTreeMap<u64, u32>,
    attachment: Option<Attachment>,
    next_generation: u64,
}

pub struct Consumer {
    pub name: String,
    pub pattern: Pattern,
    inner: Mutex<Inner>,
    /// Woken when acks make room under `max_in_flight`.
    pub room: Notify,
}

/// What the delivery task should do with one event.
pub enum Step {
    /// Not for this consumer (other topic, or already acked).
    Skip,
    /// Deliver it; this is its delivery number.
    Deliver(u32),
    /// The attachment this task served is gone.
    Detached,
}

impl Consumer {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock would be a bug in this file; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn floor(&self) -> u64 {
        self.lock().state.floor
    }

    pub fn state(&self) -> ConsumerState {
        self.lock().state.clone()
    }

    /// Attaches a connection, returning the one it replaces (takeover).
    pub fn attach(
        &self,
        session: u64,
        sub: Arc<str>,
        outbound: Outbound,
    ) -> (u64, Option<Attachment>) {
        let mut inner = self.lock();
        inner.next_generation += 1;
        let generation = inner.next_generation;
        let floor = inner.state.floor;
        let old = inner.attachment.replace(Attachment {
            session,
            sub,
            outbound,
            generation,
            task: None,
            pending: BTreeSet::new(),
            read_upto: floor,
        });
        if let Some(old) = &old {
            if let Some(task) = &old.task {
                task.abort();
            }
        }
        self.room.notify_waiters();
        (generation, old)
    }

    pub fn set_task(&self, generation: u64, task: AbortHandle) {
        let mut inner = self.lock();
        match &mut inner.attachment {
            Some(a) if a.generation == generation => a.task = Some(task),
            _ => task.abort(),
        }
    }

    /// Detaches if `(session, sub)` still holds the consumer. Unacked events stay unacked and
    /// are delivered again at the next attach.
    pub fn detach(&self, session: u64, sub: &str) -> bool {
        let mut inner = self.lock();
        let ours = matches!(&inner.attachment, Some(a) if a.session == session && &*a.sub == sub);
        if ours {
            if let Some(a) = inner.attachment.take() {
                if let Some(task) = a.task {
                    task.abort();
                }
            }
        }
        ours
    }

    pub fn in_flight(&self, generation: u64) -> Option<usize> {
        match &self.lock().attachment {
            Some(a) if a.generation == generation => Some(a.pending.len()),
            _ => None,
        }
    }

    /// Decides about one event read at `seq` by the delivery task of `generation`.
    pub fn step(&self, generation: u64, seq: u64, topic: &str) -> Step {
        let mut inner = self.lock();
        let inner = &mut *inner;
        let Some(a) = inner
            .attachment
            .as_mut()
            .filter(|a| a.generation == generation)
        else {
            return Step::Detached;
        };
        a.read_upto = a.read_upto.max(seq);
        if inner.state.is_acked(seq) || !self.pattern.matches(topic) {
            return Step::Skip;
        }
        a.pending.insert(seq);
        let count = inner.deliveries.entry(seq).or_insert(0);
        *count = count.saturating_add(1);
        Step::Deliver(*count)
    }

    /// The floor an ack of `seqs` may carry: every matching event at or below it is acked
    /// once these are (or was never for this consumer).
    pub fn floor_for_ack(&self, seqs: &[u64]) -> u64 {
        let inner = self.lock();
        let Some(a) = &inner.attachment else {
            return inner.state.floor;
        };
        let first_open = a.pending.iter().find(|s| !seqs.contains(s)).copied();
        let covered = match first_open {
            Some(s) => s - 1,
            None => a.read_upto,
        };
        covered.max(inner.state.floor)
    }

    /// Applies a durable `Acked` record; returns the seqs whose delivery counts are settled.
    pub fn apply_ack(&self, seqs: &[u64], floor: u64) -> Vec<u64> {
        let settled = self.settle(seqs, floor);
        self.room.notify_waiters();
        settled
    }

    fn settle(&self, seqs: &[u64], floor: u64) -> Vec<u64> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.state.apply_ack(seqs, floor);
        let state = &inner.state;
        if let Some(a) = &mut inner.attachment {
            a.pending.retain(|&s| !state.is_acked(s));
        }
        let settled: Vec<u64> = inner
            .deliveries
            .keys()
            .copied()
            .filter(|&s| state.is_acked(s))
            .collect();
        for s in &settled {
            inner.deliveries.remove(s);
        }
        settled
    }
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

    /// Adds a consumer unless one of that name exists (the first creation wins).
    /// Returns whether it was added.
    pub fn insert(&self, name: &str, state: ConsumerState, deliveries: BTreeMap<u64, u32>) -> bool {
        let Ok(pattern) = Pattern::parse(&state.pattern) else {
            tracing::error!(
                consumer = name,
                pattern = state.pattern,
                "stored pattern is invalid; consumer skipped"
            );
            return false;
        };
        let mut map = self.lock();
        if map.contains_key(name) {
            return false;
        }
        map.insert(
            name.to_owned(),
            Arc::new(Consumer {
                name: name.to_owned(),
                pattern,
                inner: Mutex::new(Inner {
                    state,
                    deliveries,
                    attachment: None,
                    next_generation: 0,
                }),
                room: Notify::new(),
            }),
        );
        true
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
