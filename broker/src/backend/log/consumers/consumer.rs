//! One durable consumer in memory: its settled state, who is attached (exclusive or shared),
//! and the lock that guards them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::AbortHandle;
use wharf_protocol::{Mode, Pattern};

use super::dead_letter_topic;
use super::seq_map::SeqMap;
use crate::backend::contract::DeliveryOptions;
use crate::backend::log::settled::ConsumerState;
use crate::outbound::Outbound;

/// One connection's hold on a consumer.
pub struct Attachment {
    pub generation: u64,
    pub session: u64,
    pub sub: Arc<str>,
    pub outbound: Outbound,
    pub options: DeliveryOptions,
    /// Wakes this attachment's delivery task (room, redelivery, seek).
    pub kick: Arc<Notify>,
    pub(super) task: Option<AbortHandle>,
    /// Every seq at or below this has been looked at by this attachment's task.
    pub(super) read_upto: u64,
    pub(super) held: usize,
    /// Deadlines of this attachment's leases, soonest first.
    pub(super) timers: SeqMap<(Instant, u64), ()>,
}

pub(super) struct Lease {
    pub(super) holder: u64,
    pub(super) deadline: Instant,
}

pub(super) struct Inner {
    pub(super) state: ConsumerState,
    pub(super) deliveries: SeqMap<u64, u32>,
    pub(super) leases: SeqMap<u64, Lease>,
    pub(super) orphans: BTreeSet<u64>,
    pub(super) attachments: Vec<Attachment>,
    pub(super) mode: Mode,
    /// Bumped by a seek: delivery tasks restart from the new floor.
    pub(super) epoch: u64,
    pub(super) next_generation: u64,
    /// Since when nobody is attached (None while someone is).
    pub(super) idle_since: Option<Instant>,
    /// Seqs whose dead letter is being appended: a takeover's walk must not write another.
    pub(super) dead_lettering: BTreeSet<u64>,
    /// The delivered-through mark loaded at start: unsettled seqs at or below it had been
    /// delivered once before, unless `deliveries` says more.
    pub(super) loaded_through: u64,
    /// The highest seq delivered for the first time, and the value last saved.
    pub(super) delivered_through: u64,
    pub(super) mark_saved: u64,
    /// Events handed to its subscribers since the broker started (redeliveries included).
    pub(super) delivered: u64,
}

/// The attachment of `generation` in `list`. A function of the list, not of `Inner`, so that
/// callers can hold it while they touch the other fields of `Inner`.
pub(super) fn attached(list: &mut [Attachment], generation: u64) -> Option<&mut Attachment> {
    list.iter_mut().find(|a| a.generation == generation)
}

impl Inner {
    pub(super) fn attachment(&mut self, generation: u64) -> Option<&mut Attachment> {
        attached(&mut self.attachments, generation)
    }

    /// The holders of these settled leases make room for them; each holder is woken once
    /// (a settle of 500 acks woke the same task 500 times).
    pub(super) fn let_go(&mut self, released: Vec<(u64, Lease)>) {
        let mut woken: Vec<u64> = Vec::new();
        for (seq, lease) in released {
            if let Some(a) = self.attachment(lease.holder) {
                a.timers.remove(&(lease.deadline, seq));
                a.held = a.held.saturating_sub(1);
                if !woken.contains(&lease.holder) {
                    woken.push(lease.holder);
                }
            }
        }
        for generation in woken {
            if let Some(a) = self.attachment(generation) {
                a.kick.notify_one();
            }
        }
    }

    pub(super) fn release(&mut self, seq: u64) {
        self.orphans.remove(&seq);
        if let Some(lease) = self.leases.remove(&seq) {
            if let Some(a) = self.attachment(lease.holder) {
                // Timers of settled leases would otherwise stay until they ran out: an ack
                // wait's worth of every delivered event (a 1M replay held ~1M of them).
                a.timers.remove(&(lease.deadline, seq));
                a.held = a.held.saturating_sub(1);
                a.kick.notify_one();
            }
        }
    }
}

pub struct Consumer {
    pub name: String,
    pub patterns: Vec<Pattern>,
    /// Its own dead-letter topic, which it never receives (a consumer on `>` would otherwise
    /// dead-letter its dead letters forever).
    pub(super) dead_topic: String,
    pub(super) inner: Mutex<Inner>,
}

/// A snapshot for `consumer_info`.
#[derive(Debug, Clone)]
pub struct Info {
    pub patterns: Vec<String>,
    pub mode: Mode,
    pub ack_floor: u64,
    pub acked_above_floor: u64,
    pub ack_pending: usize,
    pub redelivered: usize,
    pub terminated: u64,
    pub dead_lettered: u64,
    pub gapped: u64,
    pub attached: usize,
    pub delivered: u64,
    /// Since when nobody has been attached (`None`: someone is).
    pub idle_since: Option<Instant>,
}

/// Why an attach was refused.
#[derive(Debug)]
pub struct ModeConflict(pub Mode);

/// What a delivery task needs to know when it starts.
pub struct Attached {
    pub generation: u64,
    pub epoch: u64,
    pub kick: Arc<Notify>,
    /// Attachments this one took over (exclusive mode).
    pub replaced: Vec<Attachment>,
}

impl Consumer {
    pub(super) fn new(
        name: &str,
        patterns: Vec<Pattern>,
        state: ConsumerState,
        deliveries: BTreeMap<u64, u32>,
    ) -> Consumer {
        Consumer {
            name: name.to_owned(),
            patterns,
            dead_topic: dead_letter_topic(name),
            inner: Mutex::new(Inner {
                state,
                deliveries: deliveries.into_iter().collect(),
                leases: SeqMap::new(),
                orphans: BTreeSet::new(),
                attachments: Vec::new(),
                mode: Mode::Exclusive,
                epoch: 0,
                next_generation: 0,
                idle_since: Some(Instant::now()),
                loaded_through: 0,
                delivered_through: 0,
                mark_saved: 0,
                dead_lettering: BTreeSet::new(),
                delivered: 0,
            }),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock would be a bug in this file; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether an event on `topic` is for this consumer.
    pub fn matches(&self, topic: &str) -> bool {
        topic != self.dead_topic && self.patterns.iter().any(|p| p.matches(topic))
    }

    /// Whether `patterns` name the same set as this consumer's.
    pub fn same_patterns(&self, patterns: &[Pattern]) -> bool {
        patterns.len() == self.patterns.len() && patterns.iter().all(|p| self.patterns.contains(p))
    }

    pub fn state(&self) -> ConsumerState {
        self.lock().state.clone()
    }

    /// Where a delivery task of this epoch starts reading.
    pub fn start(&self) -> (u64, u64) {
        let inner = self.lock();
        (inner.epoch, inner.state.floor + 1)
    }

    pub fn attach(
        &self,
        session: u64,
        sub: Arc<str>,
        outbound: Outbound,
        mode: Mode,
        options: DeliveryOptions,
    ) -> Result<Attached, ModeConflict> {
        let mut inner = self.lock();
        let replaced = match (mode, inner.mode, inner.attachments.is_empty()) {
            (Mode::Shared, Mode::Exclusive, false) => return Err(ModeConflict(Mode::Exclusive)),
            (Mode::Exclusive, Mode::Shared, false) => return Err(ModeConflict(Mode::Shared)),
            (Mode::Shared, _, _) => Vec::new(),
            // Takeover: everything unsettled is delivered again, in seq order, by the new
            // holder's walk from the floor.
            (Mode::Exclusive, _, _) => evict_all(&mut inner),
        };
        inner.mode = mode;
        inner.idle_since = None;
        inner.next_generation += 1;
        let generation = inner.next_generation;
        let kick = Arc::new(Notify::new());
        let floor = inner.state.floor;
        inner.attachments.push(Attachment {
            generation,
            session,
            sub,
            outbound,
            options,
            kick: kick.clone(),
            task: None,
            read_upto: floor,
            held: 0,
            timers: SeqMap::new(),
        });
        Ok(Attached {
            generation,
            epoch: inner.epoch,
            kick,
            replaced,
        })
    }

    pub fn set_task(&self, generation: u64, task: AbortHandle) {
        let mut inner = self.lock();
        match inner.attachment(generation) {
            Some(a) => a.task = Some(task),
            None => task.abort(),
        }
    }

    /// Detaches `(session, sub)` if it still holds the consumer. What it held goes to the
    /// other shared attachments at once, or waits for the next attach.
    pub fn detach(&self, session: u64, sub: &str) -> bool {
        let mut inner = self.lock();
        let Some(i) = inner
            .attachments
            .iter()
            .position(|a| a.session == session && &*a.sub == sub)
        else {
            return false;
        };
        let gone = inner.attachments.remove(i);
        if let Some(task) = &gone.task {
            task.abort();
        }
        if inner.attachments.is_empty() {
            inner.leases.clear();
            inner.orphans.clear();
            inner.idle_since = Some(Instant::now());
        } else {
            let held: Vec<u64> = inner
                .leases
                .iter()
                .filter(|(_, l)| l.holder == gone.generation)
                .map(|(s, _)| s)
                .collect();
            for seq in held {
                inner.leases.remove(&seq);
                inner.orphans.insert(seq);
            }
            for a in &inner.attachments {
                a.kick.notify_one();
            }
        }
        true
    }

    /// Removes every attachment (the consumer is being deleted).
    pub(super) fn detach_everyone(&self) -> Vec<Attachment> {
        evict_all(&mut self.lock())
    }

    /// How long nobody has been attached, if nobody is.
    pub fn idle_for(&self, now: Instant) -> Option<Duration> {
        self.lock()
            .idle_since
            .map(|since| now.saturating_duration_since(since))
    }

    pub fn info(&self) -> Info {
        let inner = self.lock();
        Info {
            patterns: inner.state.patterns.clone(),
            mode: inner.mode,
            ack_floor: inner.state.floor,
            acked_above_floor: inner.state.acked.len(),
            ack_pending: inner.leases.len() + inner.orphans.len(),
            redelivered: inner.deliveries.values().filter(|&&c| c > 1).count(),
            terminated: inner.state.terminated,
            dead_lettered: inner.state.dead_lettered,
            gapped: inner.state.gapped,
            attached: inner.attachments.len(),
            delivered: inner.delivered,
            idle_since: inner.idle_since,
        }
    }
}

/// Removes every attachment, stops their delivery tasks and drops what they held.
pub(super) fn evict_all(inner: &mut Inner) -> Vec<Attachment> {
    inner.leases.clear();
    inner.orphans.clear();
    let gone: Vec<Attachment> = inner.attachments.drain(..).collect();
    for a in &gone {
        if let Some(task) = &a.task {
            task.abort();
        }
    }
    gone
}
