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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::AbortHandle;
use wharf_protocol::{Mode, Pattern, Topic};

use crate::backend::contract::DeliveryOptions;
use crate::backend::log::append::Record;
use crate::backend::log::settled::{ConsumerState, Settle};
use crate::outbound::Outbound;

/// Every dead-letter topic starts with this.
pub const DEAD_LETTER_PREFIX: &str = "dead.";

/// The dead-letter topic of a consumer: `dead.<consumer>` (dots that would make an empty
/// token become underscores).
pub fn dead_letter_topic(consumer: &str) -> String {
    let topic = format!("{DEAD_LETTER_PREFIX}{consumer}");
    match Topic::parse(&topic) {
        Ok(_) => topic,
        Err(_) => format!("dead.{}", consumer.replace('.', "_")),
    }
}

/// One connection's hold on a consumer.
pub struct Attachment {
    pub generation: u64,
    pub session: u64,
    pub sub: Arc<str>,
    pub outbound: Outbound,
    pub options: DeliveryOptions,
    /// Wakes this attachment's delivery task (room, redelivery, seek).
    pub kick: Arc<Notify>,
    task: Option<AbortHandle>,
    /// Every seq at or below this has been looked at by this attachment's task.
    read_upto: u64,
    held: usize,
    timers: BTreeSet<(Instant, u64)>,
}

struct Lease {
    holder: u64,
    deadline: Instant,
}

struct Inner {
    state: ConsumerState,
    deliveries: BTreeMap<u64, u32>,
    leases: BTreeMap<u64, Lease>,
    orphans: BTreeSet<u64>,
    attachments: Vec<Attachment>,
    mode: Mode,
    /// Bumped by a seek: delivery tasks restart from the new floor.
    epoch: u64,
    next_generation: u64,
    /// Since when nobody is attached (None while someone is).
    idle_since: Option<Instant>,
    /// Seqs whose dead letter is being appended: a takeover's walk must not write another.
    dead_lettering: BTreeSet<u64>,
    /// The delivered-through mark loaded at start: unsettled seqs at or below it had been
    /// delivered once before, unless `deliveries` says more.
    loaded_through: u64,
    /// The highest seq delivered for the first time, and the value last saved.
    delivered_through: u64,
    mark_saved: u64,
}

/// The attachment of `generation` in `list`. A function of the list, not of `Inner`, so that
/// callers can hold it while they touch the other fields of `Inner`.
fn attached(list: &mut [Attachment], generation: u64) -> Option<&mut Attachment> {
    list.iter_mut().find(|a| a.generation == generation)
}

impl Inner {
    fn attachment(&mut self, generation: u64) -> Option<&mut Attachment> {
        attached(&mut self.attachments, generation)
    }

    fn release(&mut self, seq: u64) {
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
    dead_topic: String,
    inner: Mutex<Inner>,
}

/// What a delivery task should do with one event.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Not for this attachment: other topic, settled, or held by another.
    Skip,
    /// Deliver it; this is its delivery number.
    Deliver(u32),
    /// It was delivered `max_deliver` times (this many): move it to the dead-letter topic.
    DeadLetter(u32),
    /// `max_in_flight` reached: wait for a kick and ask again.
    NoRoom,
    /// The attachment is gone.
    Detached,
    /// A seek moved the consumer: start over from the floor.
    Restart,
}

/// A snapshot for `consumer_info`.
#[derive(Debug, Clone)]
pub struct Info {
    pub patterns: Vec<String>,
    pub mode: Mode,
    pub ack_floor: u64,
    pub acked_above_floor: u64,
    pub untold_gap: Option<(u64, u64)>,
    pub ack_pending: usize,
    pub redelivered: usize,
    pub terminated: u64,
    pub dead_lettered: u64,
    pub gapped: u64,
    pub attached: usize,
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
    fn new(
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
                deliveries,
                leases: BTreeMap::new(),
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
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
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
            timers: BTreeSet::new(),
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
                .map(|(&s, _)| s)
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
    fn detach_everyone(&self) -> Vec<Attachment> {
        evict_all(&mut self.lock())
    }

    /// Decides about the event at `seq`, read by the walk of attachment `generation`.
    pub fn step(&self, generation: u64, epoch: u64, seq: u64, topic: &str, now: Instant) -> Step {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if inner.epoch != epoch {
            return Step::Restart;
        }
        let Some(a) = attached(&mut inner.attachments, generation) else {
            return Step::Detached;
        };
        let settled = inner.state.is_acked(seq) || !self.matches(topic);
        // Settled, not ours, or held by a shared peer: passed over, but read.
        if settled || inner.leases.contains_key(&seq) {
            a.read_upto = a.read_upto.max(seq);
            return Step::Skip;
        }
        if a.held >= a.options.max_in_flight {
            return Step::NoRoom;
        }
        a.read_upto = a.read_upto.max(seq);
        inner.orphans.remove(&seq);
        Self::lease(inner, generation, seq, now)
    }

    /// Leases `seq` to `generation` and says which delivery it would be (or that it is dead).
    /// The delivery is counted only once the frame is handed to the connection
    /// ([`Consumer::handed_over`]): a closed or too-slow connection delivered nothing.
    fn lease(inner: &mut Inner, generation: u64, seq: u64, now: Instant) -> Step {
        let before_start = u32::from(seq <= inner.loaded_through);
        let so_far = inner.deliveries.get(&seq).copied().unwrap_or(before_start);
        let Some(a) = attached(&mut inner.attachments, generation) else {
            return Step::Detached;
        };
        let dead = a.options.max_deliver > 0 && so_far >= a.options.max_deliver;
        if dead && !inner.dead_lettering.insert(seq) {
            // Another walk (before a takeover, or a shared peer) is moving it already.
            return Step::Skip;
        }
        // A dead letter stays leased until its move is durable, so nobody delivers it again.
        let wait = if dead {
            Duration::from_secs(86_400)
        } else {
            a.options.ack_wait
        };
        let deadline = now + wait;
        let previous = inner.leases.insert(
            seq,
            Lease {
                holder: generation,
                deadline,
            },
        );
        match previous {
            Some(p) if p.holder == generation => {
                a.timers.remove(&(p.deadline, seq));
            }
            _ => a.held += 1,
        }
        a.timers.insert((deadline, seq));
        if dead {
            return Step::DeadLetter(so_far);
        }
        Step::Deliver(so_far.saturating_add(1))
    }

    /// The frame of delivery `count` of `seq` reached the connection's queue: count it.
    pub fn handed_over(&self, seq: u64, count: u32) {
        let mut inner = self.lock();
        if inner.state.is_acked(seq) {
            return;
        }
        let known = inner.deliveries.get(&seq).copied().unwrap_or(0);
        inner.deliveries.insert(seq, known.max(count));
        if count == 1 {
            inner.delivered_through = inner.delivered_through.max(seq);
        }
    }

    /// A dead letter's append is over: stored (then the record settled it), or failed, in
    /// which case the event is tried again after `retry`.
    pub fn dead_letter_done(&self, seq: u64, stored: bool, retry: Duration, now: Instant) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.dead_lettering.remove(&seq);
        if stored {
            return;
        }
        let Some(lease) = inner.leases.get_mut(&seq) else {
            return;
        };
        if let Some(a) = attached(&mut inner.attachments, lease.holder) {
            a.timers.remove(&(lease.deadline, seq));
            lease.deadline = now + retry;
            a.timers.insert((lease.deadline, seq));
            a.kick.notify_one();
        }
    }

    /// A seq this attachment should deliver again now: its ack wait ran out or it was
    /// nacked, or (shared mode) another attachment left it behind.
    pub fn next_due(&self, generation: u64, now: Instant) -> Option<u64> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let a = attached(&mut inner.attachments, generation)?;
        while let Some(&(deadline, seq)) = a.timers.first() {
            if deadline > now {
                break;
            }
            a.timers.pop_first();
            if inner
                .leases
                .get(&seq)
                .is_some_and(|l| l.holder == generation && l.deadline == deadline)
            {
                return Some(seq);
            }
        }
        if a.held < a.options.max_in_flight {
            return inner.orphans.first().copied();
        }
        None
    }

    /// Claims a due seq for delivery (see [`Consumer::next_due`]).
    pub fn redeliver(&self, generation: u64, epoch: u64, seq: u64, now: Instant) -> Step {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if inner.epoch != epoch {
            return Step::Restart;
        }
        if inner.state.is_acked(seq) {
            inner.release(seq);
            return Step::Skip;
        }
        let ours = match inner.leases.get(&seq) {
            Some(l) => l.holder == generation,
            None => inner.orphans.remove(&seq),
        };
        if !ours {
            return Step::Skip;
        }
        Self::lease(inner, generation, seq, now)
    }

    /// When the next timer of this attachment runs out.
    pub fn next_deadline(&self, generation: u64) -> Option<Instant> {
        let mut inner = self.lock();
        inner
            .attachment(generation)?
            .timers
            .first()
            .map(|&(d, _)| d)
    }

    /// The event at `seq` could not be read: give its lease up.
    pub fn drop_lease(&self, seq: u64) {
        self.lock().release(seq);
    }

    /// The floor an ack of `seqs` may carry (every matching event at or below it is settled
    /// once these are, or was never for this consumer), and the seek count it is valid under.
    pub fn floor_for_settle(&self, seqs: &[u64]) -> (u64, u64) {
        let inner = self.lock();
        let floor = inner.state.floor;
        let seeks = inner.state.seeks;
        let Some(covered) = inner.attachments.iter().map(|a| a.read_upto).max() else {
            return (floor, seeks);
        };
        // Both are ordered: the first open one of each is found within len(seqs) steps
        // (a scan of every lease against every acked seq was 7% of replay's instructions).
        let mut acking = seqs.to_vec();
        acking.sort_unstable();
        let is_open = |s: &&u64| acking.binary_search(s).is_err();
        let open = [
            inner.leases.keys().find(is_open),
            inner.orphans.iter().find(is_open),
        ]
        .into_iter()
        .flatten()
        .min()
        .copied();
        let limit = match open {
            Some(s) => covered.min(s - 1),
            None => covered,
        };
        (limit.max(floor), seeks)
    }

    /// Restarts the ack wait (`delay` None: the holder's ack wait) of leased seqs.
    /// Returns the first seq that is not in flight, if any (nothing is changed then).
    pub fn touch(&self, seqs: &[u64], delay: Option<Duration>, now: Instant) -> Result<(), u64> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if let Some(&missing) = seqs.iter().find(|s| !inner.leases.contains_key(s)) {
            return Err(missing);
        }
        for &seq in seqs {
            let Some(lease) = inner.leases.get_mut(&seq) else {
                continue;
            };
            let Some(a) = attached(&mut inner.attachments, lease.holder) else {
                continue;
            };
            a.timers.remove(&(lease.deadline, seq));
            lease.deadline = now + delay.unwrap_or(a.options.ack_wait);
            a.timers.insert((lease.deadline, seq));
            a.kick.notify_one();
        }
        Ok(())
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
            untold_gap: inner.state.untold_gap,
            ack_pending: inner.leases.len() + inner.orphans.len(),
            redelivered: inner.deliveries.values().filter(|&&c| c > 1).count(),
            terminated: inner.state.terminated,
            dead_lettered: inner.state.dead_lettered,
            gapped: inner.state.gapped,
            attached: inner.attachments.len(),
        }
    }

    /// Applies a settle; `seeks` is the seek count its floor was computed under (`None`: a
    /// first-format record, whose floor always applies).
    fn apply_settle(&self, seqs: &[u64], floor: u64, kind: Settle, seeks: Option<u64>) -> Vec<u64> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let floor = match seeks {
            Some(seeks) if seeks != inner.state.seeks => None,
            _ => Some(floor),
        };
        inner.state.apply_settle(seqs, floor, kind);
        // What this settle newly acks: everything up to the floor, and `seqs` above it (any
        // other acked seq was settled, and dropped from these maps, by an earlier record).
        let floor = inner.state.floor;
        let above = || seqs.iter().copied().filter(move |&s| s > floor);
        let acked: Vec<(u64, u32)> = inner
            .deliveries
            .range(..=floor)
            .map(|(&s, &c)| (s, c))
            .chain(above().filter_map(|s| inner.deliveries.get(&s).map(|&c| (s, c))))
            .collect();
        for (s, _) in &acked {
            inner.deliveries.remove(s);
        }
        // Only counts that may be in sled: redeliveries, and what was loaded from it.
        let loaded = inner.loaded_through;
        let settled: Vec<u64> = acked
            .into_iter()
            .filter(|&(s, c)| c >= 2 || s <= loaded)
            .map(|(s, _)| s)
            .collect();
        let leased: Vec<u64> = inner
            .leases
            .range(..=floor)
            .map(|(&s, _)| s)
            .chain(inner.orphans.range(..=floor).copied())
            .chain(above().filter(|s| inner.leases.contains_key(s) || inner.orphans.contains(s)))
            .collect();
        for s in leased {
            inner.release(s);
        }
        settled
    }

    /// Applies a `ConsumerGap`: the floor moves past what retention removed, walks restart
    /// there, and attached subscriptions are told.
    fn apply_gap(&self, from: u64, to: u64) -> Vec<u64> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if !inner.state.gap(from, to) {
            return Vec::new();
        }
        let floor = inner.state.floor;
        let gone: Vec<u64> = inner
            .leases
            .keys()
            .chain(inner.orphans.iter())
            .copied()
            .filter(|&s| s <= floor)
            .collect();
        for s in gone {
            inner.release(s);
        }
        let settled: Vec<u64> = inner
            .deliveries
            .keys()
            .copied()
            .filter(|&s| s <= floor)
            .collect();
        inner.deliveries.retain(|&s, _| s > floor);
        inner.epoch += 1;
        // The walks restart; each tells its subscriber of the gap, which stays in the
        // consumer's durable state until one did.
        for a in &mut inner.attachments {
            a.read_upto = a.read_upto.max(floor);
            a.kick.notify_one();
        }
        settled
    }

    /// Retention removed unsettled seqs that no subscriber has been told of.
    pub fn untold_gap(&self) -> Option<(u64, u64)> {
        self.lock().state.untold_gap
    }

    /// Sets the delivered-through mark loaded from the state view, if it was saved under
    /// the seek count of the loaded state: a mark from before a seek would count the seqs
    /// the seek made new again as delivered.
    pub fn set_loaded_through(&self, seeks: u64, through: u64) {
        let mut inner = self.lock();
        if seeks != inner.state.seeks {
            return;
        }
        inner.loaded_through = through;
        inner.delivered_through = inner.delivered_through.max(through);
        inner.mark_saved = inner.delivered_through;
    }

    /// The delivered-through mark with the seek count it belongs to, if it moved since it
    /// was last taken.
    fn take_mark(&self) -> Option<(u64, u64)> {
        let mut inner = self.lock();
        (inner.delivered_through != inner.mark_saved).then(|| {
            inner.mark_saved = inner.delivered_through;
            (inner.state.seeks, inner.delivered_through)
        })
    }

    fn apply_seek(&self, floor: u64) -> Vec<u64> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        inner.state.seek(floor);
        inner.leases.clear();
        inner.orphans.clear();
        let reset: Vec<u64> = inner
            .deliveries
            .keys()
            .copied()
            .filter(|&s| s > floor)
            .collect();
        inner.deliveries.retain(|&s, _| s <= floor);
        inner.loaded_through = inner.loaded_through.min(floor);
        inner.delivered_through = inner.delivered_through.min(floor);
        // Saved again under the new seek count, even if it did not move.
        inner.mark_saved = u64::MAX;
        inner.epoch += 1;
        for a in &mut inner.attachments {
            a.held = 0;
            a.timers.clear();
            a.read_upto = floor;
            a.kick.notify_one();
        }
        reset
    }
}

/// Removes every attachment, stops their delivery tasks and drops what they held.
fn evict_all(inner: &mut Inner) -> Vec<Attachment> {
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

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
