//! Getting durable events to subscribers.
//!
//! * [`Committer`] is the log's [`CommitSink`]: once a batch is synced it applies acks and new
//!   consumers to memory and sled, then publishes the events to the [`Feed`].
//! * The [`Feed`] holds the newest events in memory and the committed head seq; an
//!   [`EventSource`] reads from any seq, from that cache when it can and from the segments
//!   when it must, so live delivery and replay of a long backlog are one code path.
//! * One delivery task per subscription walks its source in seq order. For a durable
//!   consumer it skips what is acked or not matching, counts deliveries, and stops at
//!   `max_in_flight` unacked events until acks make room. Only synced events ever reach it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Notify};
use tokio_tungstenite::tungstenite::Message;
use wharf_protocol::{
    format_time_ms, now_ms, DeadLetter, EventBody, EventFrame, Pattern, PatternIndex, Reply,
};

use crate::consumers::{dead_letter_topic, Changes, Consumer, Consumers, Step, DEAD_LETTER_PREFIX};
use crate::log::{
    AppendLog, CommitSink, Entry, Event, EventCursor, LogError, NewEvent, Position, Record, Settle,
};
use crate::metrics;
use crate::outbound::{Delivered, Outbound, Unsent};
use crate::state::{ConsumerState, StateView, ViewSender, ViewUpdate};

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
            + crate::codec::encode(&state).map_or(CHECKPOINT_RECORD_BYTES, |body| body.len());
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

/// Events read per batch by a delivery task.
const BATCH: usize = 256;

/// Matching events queued to one subscription that is caught up.
const TAP_DEPTH: usize = 1024;

/// A caught-up subscription's live queue.
struct Tap {
    tx: mpsc::Sender<Arc<Event>>,
    /// Set when an event could not be queued: the subscription must read the log to fill
    /// the hole.
    overflowed: Arc<AtomicBool>,
}

#[derive(Default)]
struct Taps {
    index: PatternIndex<u64>,
    taps: HashMap<u64, Tap>,
    next_id: u64,
}

/// The committed head, a cache of the newest events, and live dispatch: each committed event
/// is matched once against an index of every subscription's patterns and queued only to the
/// subscriptions it matches (no scan of all subscriptions per event).
pub struct Feed {
    cache: RwLock<Cache>,
    capacity: usize,
    /// The most the cache may hold, in [`cache_cost`] bytes.
    byte_budget: usize,
    head: watch::Sender<u64>,
    /// The oldest seq the log still holds (retention moves it).
    first: AtomicU64,
    taps: Mutex<Taps>,
    topics: Mutex<Topics>,
}

/// Every topic's stats and seq samples, built by the start-up replay and kept by the feed.
#[derive(Debug, Default)]
pub struct Topics(BTreeMap<String, TopicEntry>);

impl Topics {
    pub fn add(&mut self, ev: &Event) {
        match self.0.get_mut(&ev.topic) {
            Some(entry) => entry.add(ev),
            None => {
                let mut entry = TopicEntry::default();
                entry.add(ev);
                self.0.insert(ev.topic.clone(), entry);
            }
        }
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// What the feed knows of one topic: its stats, and every [`SAMPLE_EVERY`]th seq, so that
/// how many of its events lie above a consumer's floor is known without reading the log.
#[derive(Debug, Default)]
struct TopicEntry {
    stat: TopicStat,
    /// The seq of its 1st, (SAMPLE_EVERY+1)th, ... event still stored.
    samples: VecDeque<u64>,
    /// Samples dropped with retention, from the front.
    dropped: u64,
    /// Every seq of the newest block (from the last sample on): counts above a floor in it,
    /// where a consumer that is nearly caught up has its floor, are exact.
    tail: Vec<u64>,
}

/// One seq kept per this many events of a topic (8 bytes per 32 events).
const SAMPLE_EVERY: u64 = 32;

impl TopicEntry {
    fn add(&mut self, ev: &Event) {
        if self.stat.events.is_multiple_of(SAMPLE_EVERY) {
            self.samples.push_back(ev.seq);
            self.tail.clear();
        }
        self.tail.push(ev.seq);
        self.stat.add(ev);
    }

    /// How many of this topic's events have a seq above `floor`: exact when the floor is
    /// below the topic's first event or in its newest [`SAMPLE_EVERY`] events, otherwise at
    /// most `SAMPLE_EVERY - 1` too many.
    fn events_above(&self, floor: u64) -> u64 {
        if floor >= self.stat.last_seq {
            return 0;
        }
        if self.samples.back().is_some_and(|&newest| newest <= floor) {
            return self.tail.iter().filter(|&&seq| seq > floor).count() as u64;
        }
        let below = self.samples.partition_point(|&s| s <= floor) as u64;
        if below == 0 && self.dropped == 0 {
            return self.stat.events;
        }
        // The events at or below the floor include at least the sampled ones' blocks but
        // the last, and that last block's first event.
        let at_or_below = (self.dropped + below).saturating_sub(1) * SAMPLE_EVERY + 1;
        self.stat.events.saturating_sub(at_or_below)
    }
}

/// The newest events, contiguous by seq, and what they cost.
#[derive(Default)]
struct Cache {
    events: VecDeque<Arc<Event>>,
    bytes: usize,
}

impl Cache {
    fn pop_front(&mut self) {
        if let Some(ev) = self.events.pop_front() {
            self.bytes -= cache_cost(&ev);
        }
    }
}

/// What a cached event holds in memory: its topic and payload twice (the stored text, and
/// the frame body encoded on first delivery), its msg_id, and a fixed overhead.
fn cache_cost(ev: &Event) -> usize {
    2 * (ev.topic.len() + ev.payload.len()) + ev.msg_id.as_ref().map_or(0, String::len) + 128
}

/// What `topics` reports about one topic.
#[derive(Debug, Clone, Copy, Default)]
pub struct TopicStat {
    pub events: u64,
    pub bytes: u64,
    pub last_seq: u64,
}

impl TopicStat {
    pub fn add(&mut self, ev: &Event) {
        self.events += 1;
        self.bytes += ev.payload.len() as u64;
        self.last_seq = ev.seq;
    }
}

impl Feed {
    /// `capacity` events at most, and no more than `byte_budget` bytes of them; `first` is
    /// the oldest seq the log holds (retention may have removed older ones).
    pub fn new(head: u64, first: u64, capacity: usize, byte_budget: usize, topics: Topics) -> Feed {
        Feed {
            cache: RwLock::new(Cache {
                events: VecDeque::with_capacity(capacity.min(1 << 16)),
                bytes: 0,
            }),
            capacity,
            byte_budget,
            head: watch::Sender::new(head),
            first: AtomicU64::new(first),
            taps: Mutex::new(Taps::default()),
            topics: Mutex::new(topics),
        }
    }

    /// Every topic with events, by name.
    pub fn topics(&self) -> Vec<(String, TopicStat)> {
        let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        topics.0.iter().map(|(t, e)| (t.clone(), e.stat)).collect()
    }

    /// A consumer's lag: the events matching `patterns` above its `floor` that are not among
    /// the `acked` ones above it: exact when the floor is within a topic's newest 32 events or
    /// past them, otherwise at most 31 too many per topic.
    pub fn lag(&self, patterns: &[Pattern], floor: u64, acked: u64) -> u64 {
        self.events_above(patterns, floor).saturating_sub(acked)
    }

    /// How many events matching `patterns` lie above `floor`.
    fn events_above(&self, patterns: &[Pattern], floor: u64) -> u64 {
        let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        topics
            .0
            .iter()
            .filter(|(topic, _)| patterns.iter().any(|p| p.matches(topic)))
            .map(|(_, entry)| entry.events_above(floor))
            .sum()
    }

    /// The seq of the newest durable event (0 when there is none).
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// The oldest seq still stored (or the next one, when the log holds no event).
    pub fn first_seq(&self) -> u64 {
        self.first.load(Ordering::Acquire)
    }

    /// Retention removed everything below `first`: forget it here too.
    fn trim_below(&self, first: u64) {
        self.first.store(first, Ordering::Release);
        {
            // Samples of removed events: a block is dropped once the next one starts below
            // `first` too, so the block `first` falls in keeps its first seq.
            let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
            for entry in topics.0.values_mut() {
                while entry.samples.get(1).is_some_and(|&next| next <= first) {
                    entry.samples.pop_front();
                    entry.dropped += 1;
                }
            }
        }
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        while cache.events.front().is_some_and(|ev| ev.seq < first) {
            cache.pop_front();
        }
    }

    fn lock_taps(&self) -> std::sync::MutexGuard<'_, Taps> {
        self.taps.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, events: Vec<Arc<Event>>) {
        let Some(last) = events.last().map(|e| e.seq) else {
            return;
        };
        {
            let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
            for ev in &events {
                topics.add(ev);
            }
        }
        if self.capacity > 0 && self.byte_budget > 0 {
            let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
            for ev in &events {
                let cost = cache_cost(ev);
                if cost > self.byte_budget {
                    // Too large to cache at all; the cache stays contiguous by starting over.
                    *cache = Cache::default();
                    continue;
                }
                while cache.events.len() >= self.capacity || cache.bytes + cost > self.byte_budget {
                    cache.pop_front();
                }
                cache.bytes += cost;
                cache.events.push_back(ev.clone());
            }
        }
        // The head moves before any subscriber can see the events, so that an ack of a
        // delivered event is never refused as "not published yet". A source that reads the
        // new head walks to it; one that went live on the old head gets them queued below.
        self.head.send_replace(last);
        let taps = self.lock_taps();
        if taps.taps.is_empty() {
            return;
        }
        let mut keys = Vec::new();
        for ev in &events {
            keys.clear();
            taps.index.matches(&ev.topic, &mut keys);
            keys.sort_unstable();
            keys.dedup();
            for key in &keys {
                if let Some(tap) = taps.taps.get(key) {
                    if tap.tx.try_send(ev.clone()).is_err() {
                        tap.overflowed.store(true, Ordering::Release);
                    }
                }
            }
        }
    }

    /// Up to `max` cached events from `seq` through `head`, or `None` if `seq` is older than
    /// the cache.
    fn cached(&self, seq: u64, head: u64, max: usize) -> Option<Vec<Arc<Event>>> {
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        let first = cache.events.front()?.seq;
        if seq < first {
            return None;
        }
        let start = usize::try_from(seq - first).ok()?;
        let want = usize::try_from(head.saturating_sub(seq) + 1).unwrap_or(usize::MAX);
        Some(
            cache
                .events
                .iter()
                .skip(start)
                .take(max.min(want))
                .cloned()
                .collect(),
        )
    }

    fn register(&self, patterns: &[Pattern]) -> (u64, mpsc::Receiver<Arc<Event>>, Arc<AtomicBool>) {
        let (tx, rx) = mpsc::channel(TAP_DEPTH);
        let overflowed = Arc::new(AtomicBool::new(false));
        let mut taps = self.lock_taps();
        taps.next_id += 1;
        let id = taps.next_id;
        for p in patterns {
            taps.index.insert(p, id);
        }
        taps.taps.insert(
            id,
            Tap {
                tx,
                overflowed: overflowed.clone(),
            },
        );
        (id, rx, overflowed)
    }

    fn unregister(&self, id: u64, patterns: &[Pattern]) {
        let mut taps = self.lock_taps();
        for p in patterns {
            taps.index.remove(p, &id);
        }
        taps.taps.remove(&id);
    }

    pub fn subscribe_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Wakes every waiting source so it can notice it should stop.
    pub fn close(&self) {
        self.lock_taps().taps.clear();
        self.head.send_modify(|_| {});
    }
}

/// Reads the events matching some patterns, in seq order, from any point. Behind, it walks
/// the cache or the segments; caught up, it takes the events the feed queues to it, and
/// walks again if that queue ever overflowed.
pub struct EventSource {
    feed: Arc<Feed>,
    log: AppendLog,
    patterns: Vec<Pattern>,
    next: u64,
    disk: Option<EventCursor>,
    /// A second cursor for random access (redeliveries), so the walk keeps its place.
    refetch: Option<EventCursor>,
    head: watch::Receiver<u64>,
    tap_id: u64,
    tap: mpsc::Receiver<Arc<Event>>,
    overflowed: Arc<AtomicBool>,
    live: bool,
}

impl Drop for EventSource {
    fn drop(&mut self) {
        self.feed.unregister(self.tap_id, &self.patterns);
    }
}

impl EventSource {
    pub fn new(feed: Arc<Feed>, log: AppendLog, from: u64, patterns: Vec<Pattern>) -> EventSource {
        let head = feed.subscribe_head();
        let (tap_id, tap, overflowed) = feed.register(&patterns);
        EventSource {
            feed,
            log,
            patterns,
            next: from.max(1),
            disk: None,
            refetch: None,
            head,
            tap_id,
            tap,
            overflowed,
            live: false,
        }
    }

    fn matches(&self, ev: &Event) -> bool {
        self.patterns.iter().any(|p| p.matches(&ev.topic))
    }

    /// Skips everything stored; returns the last seq skipped.
    pub fn skip_to_head(&mut self) -> u64 {
        let head = self.feed.head();
        self.reset(head + 1);
        head
    }

    /// Moves the walk to `from`.
    pub fn reset(&mut self, from: u64) {
        self.next = from.max(1);
        self.disk = None;
        self.live = false;
    }

    /// The event at `seq`, if it is stored.
    pub async fn fetch(&mut self, seq: u64) -> Result<Option<Arc<Event>>, LogError> {
        let head = self.feed.head();
        if seq > head {
            return Ok(None);
        }
        if let Some(mut hit) = self.feed.cached(seq, seq, 1) {
            return Ok(hit.pop().filter(|ev| ev.seq == seq));
        }
        let mut cursor = self.refetch.take().unwrap_or_else(|| self.log.cursor(seq));
        cursor.seek(seq);
        let joined = tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(1);
            let result = cursor.read(seq, 1, &mut out);
            (cursor, result.map(|()| out))
        })
        .await;
        let (cursor, result) =
            joined.map_err(|e| LogError::Stopped(format!("log reader task failed: {e}")))?;
        self.refetch = Some(cursor);
        Ok(result?.into_iter().find(|ev| ev.seq == seq))
    }

    /// The next matching events; waits while there are none. `Ok(None)` when the broker
    /// stops. Cancel-safe: nothing is consumed unless it is returned.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<Arc<Event>>>, LogError> {
        loop {
            if self.live {
                let Some(first) = self.tap.recv().await else {
                    return Ok(None);
                };
                if self.overflowed.swap(false, Ordering::AcqRel) {
                    // Something after what is queued was dropped: walk from here instead.
                    self.live = false;
                    while self.tap.try_recv().is_ok() {}
                    continue;
                }
                let mut batch = Vec::with_capacity(BATCH);
                for ev in
                    std::iter::once(first).chain(std::iter::from_fn(|| self.tap.try_recv().ok()))
                {
                    if ev.seq >= self.next {
                        self.next = ev.seq + 1;
                        batch.push(ev);
                    }
                    if batch.len() >= BATCH {
                        break;
                    }
                }
                if !batch.is_empty() {
                    return Ok(Some(batch));
                }
                continue;
            }
            let head = *self.head.borrow_and_update();
            if self.next > head {
                // Caught up: from now on the feed queues what matches.
                self.live = true;
                continue;
            }
            // Behind: what the tap holds is covered by the walk.
            while self.tap.try_recv().is_ok() {}
            self.overflowed.store(false, Ordering::Release);
            let batch = match self.feed.cached(self.next, head, BATCH) {
                Some(batch) => batch,
                None => self.read_disk(head).await?,
            };
            match batch.last() {
                Some(last) => {
                    self.next = last.seq + 1;
                    let matching: Vec<Arc<Event>> =
                        batch.into_iter().filter(|ev| self.matches(ev)).collect();
                    if !matching.is_empty() {
                        return Ok(Some(matching));
                    }
                }
                // Nothing stored below the head from here: nothing to wait for either.
                None => self.next = head + 1,
            }
        }
    }

    async fn read_disk(&mut self, head: u64) -> Result<Vec<Arc<Event>>, LogError> {
        let mut cursor = self
            .disk
            .take()
            .unwrap_or_else(|| self.log.cursor(self.next));
        cursor.seek(self.next);
        let joined = tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(BATCH);
            let result = cursor.read(head, BATCH, &mut out);
            (cursor, result.map(|()| out))
        })
        .await;
        let (cursor, result) =
            joined.map_err(|e| LogError::Stopped(format!("log reader task failed: {e}")))?;
        self.disk = Some(cursor);
        result
    }
}

fn event_frame(sub: &str, consumer: Option<&str>, ev: &Event, delivery: u32) -> Message {
    let body = ev
        .frame_body
        .get_or_init(|| EventBody::new(ev.seq, &ev.topic, &ev.payload, ev.time_ms));
    let frame = EventFrame {
        sub,
        consumer,
        body,
        delivery,
    };
    Message::text(frame.to_json())
}

/// What a durable delivery task needs.
pub struct DurableDelivery {
    pub consumer: Arc<Consumer>,
    pub generation: u64,
    pub epoch: u64,
    pub kick: Arc<Notify>,
    pub sub: Arc<str>,
    pub outbound: Outbound,
    pub source: EventSource,
    pub state: StateView,
    pub log: AppendLog,
    /// The end of the last gap this subscription told its subscriber of.
    pub gap_told: u64,
}

enum Flow {
    Continue,
    Stop,
    Restart,
}

impl DurableDelivery {
    /// Walks the log from the floor delivering what is unsettled, keeps up with new events,
    /// and redelivers what comes due (ack wait, nack, a shared peer that left).
    pub async fn run(mut self) {
        let mut backlog: VecDeque<Arc<Event>> = VecDeque::new();
        let mut check_gap = true;
        loop {
            if std::mem::take(&mut check_gap) {
                if let Flow::Stop = self.tell_gap().await {
                    return;
                }
            }
            let now = Instant::now();
            if self.consumer.start().0 != self.epoch {
                backlog.clear();
                self.restart();
                check_gap = true;
                continue;
            }
            if let Some(seq) = self.consumer.next_due(self.generation, now) {
                let flow = match self.source.fetch(seq).await {
                    Ok(Some(ev)) => {
                        let step = self
                            .consumer
                            .redeliver(self.generation, self.epoch, seq, now);
                        self.act(step, &ev).await
                    }
                    Ok(None) => {
                        self.consumer.drop_lease(seq);
                        Flow::Continue
                    }
                    Err(e) => {
                        tracing::error!(consumer = self.consumer.name, error = %e, "cannot read an event to redeliver");
                        Flow::Stop
                    }
                };
                match flow {
                    Flow::Continue => continue,
                    Flow::Stop => return,
                    Flow::Restart => {
                        backlog.clear();
                        self.restart();
                        check_gap = true;
                        continue;
                    }
                }
            }
            if let Some(ev) = backlog.front().cloned() {
                let step = self
                    .consumer
                    .step(self.generation, self.epoch, ev.seq, &ev.topic, now);
                if step == Step::NoRoom {
                    self.wait().await;
                    continue;
                }
                if !matches!(step, Step::Restart | Step::Detached) {
                    backlog.pop_front();
                }
                match self.act(step, &ev).await {
                    Flow::Continue => {}
                    Flow::Stop => return,
                    Flow::Restart => {
                        backlog.clear();
                        self.restart();
                        check_gap = true;
                    }
                }
                continue;
            }
            let deadline = self.consumer.next_deadline(self.generation);
            tokio::select! {
                batch = self.source.next_batch() => match batch {
                    Ok(Some(batch)) => backlog.extend(batch),
                    Ok(None) => return,
                    Err(e) => {
                        tracing::error!(consumer = self.consumer.name, error = %e, "cannot read the log for delivery");
                        return;
                    }
                },
                _ = sleep_until_opt(deadline) => {}
                _ = self.kick.notified() => {}
            }
        }
    }

    fn restart(&mut self) {
        let (epoch, from) = self.consumer.start();
        self.epoch = epoch;
        self.source.reset(from);
    }

    /// Waits for room (an ack), a due redelivery, or a seek.
    async fn wait(&self) {
        let deadline = self.consumer.next_deadline(self.generation);
        tokio::select! {
            _ = sleep_until_opt(deadline) => {}
            _ = self.kick.notified() => {}
        }
    }

    async fn act(&mut self, step: Step, ev: &Event) -> Flow {
        match step {
            Step::Skip | Step::NoRoom => Flow::Continue,
            Step::Detached => Flow::Stop,
            Step::Restart => Flow::Restart,
            Step::Deliver(count) => {
                metrics::delivered().increment(1);
                if count > 1 {
                    metrics::redelivered().increment(1);
                }
                let name = &self.consumer.name;
                let frame = event_frame(&self.sub, Some(name), ev, count);
                match self.outbound.deliver(frame).await {
                    Delivered::Sent => {
                        self.consumer.handed_over(ev.seq, count);
                        if count > 1 {
                            // A sled insert is blocking I/O: off the runtime's workers.
                            let (state, name, seq) = (self.state.clone(), name.clone(), ev.seq);
                            tokio::task::spawn_blocking(move || {
                                if let Err(e) = state.set_delivery(&name, seq, count) {
                                    tracing::warn!(consumer = name, error = %e, "delivery count not saved");
                                }
                            });
                        }
                        Flow::Continue
                    }
                    Delivered::Closed => Flow::Stop,
                    Delivered::TooSlow => {
                        // Nothing is lost: the consumer resumes from its settled state.
                        self.outbound.evict(format!(
                            "slow consumer: nothing read for {:?}; reconnect to resume",
                            self.outbound.slow_limit()
                        ));
                        Flow::Stop
                    }
                }
            }
            Step::DeadLetter(deliveries) => {
                self.dead_letter(ev, deliveries).await;
                Flow::Continue
            }
        }
    }

    /// Moves an event that was delivered `max_deliver` times to `dead.<consumer>` and settles
    /// it, as one record. A failed append (a full disk) is tried again a second later.
    async fn dead_letter(&self, ev: &Event, deliveries: u32) {
        let name = &self.consumer.name;
        if ev.topic.starts_with(DEAD_LETTER_PREFIX) {
            // A dead letter that cannot be processed is settled, never nested in another.
            let (floor, seeks) = self.consumer.floor_for_settle(&[ev.seq]);
            let entry = Entry::Acked {
                consumer: name.clone(),
                seqs: vec![ev.seq],
                floor,
                kind: Settle::DeadLetter,
                seeks,
            };
            let stored = self.log.append(vec![entry]).await.is_ok();
            tracing::warn!(
                consumer = name,
                seq = ev.seq,
                topic = ev.topic,
                stored,
                "a dead letter reached max_deliver; settled without another dead letter"
            );
            self.consumer
                .dead_letter_done(ev.seq, stored, DEAD_LETTER_RETRY, Instant::now());
            return;
        }
        let payload = DeadLetter {
            consumer: name,
            topic: &ev.topic,
            seq: ev.seq,
            deliveries,
            published_at: &format_time_ms(ev.time_ms),
            payload: &ev.payload,
        }
        .to_json();
        let entry = Entry::DeadLetter {
            consumer: name.clone(),
            seq: ev.seq,
            event: NewEvent {
                topic: dead_letter_topic(name),
                payload,
                time_ms: now_ms(),
                msg_id: None,
            },
        };
        let stored = match self.log.append(vec![entry]).await {
            Ok(_) => {
                tracing::info!(consumer = name, seq = ev.seq, deliveries, "dead-lettered");
                true
            }
            Err(e) => {
                tracing::error!(consumer = name, seq = ev.seq, error = %e, "dead-lettering failed; trying again shortly");
                false
            }
        };
        self.consumer
            .dead_letter_done(ev.seq, stored, DEAD_LETTER_RETRY, Instant::now());
    }

    /// Tells the subscriber of a gap retention made that no subscriber was told of yet,
    /// waiting for room in its queue like an event, and records that it was told.
    async fn tell_gap(&mut self) -> Flow {
        let Some((from, to)) = self.consumer.untold_gap() else {
            return Flow::Continue;
        };
        if to <= self.gap_told {
            return Flow::Continue;
        }
        let notice = Reply::Gap {
            consumer: self.consumer.name.clone(),
            from,
            to,
        };
        match self.outbound.deliver(Message::text(notice.to_json())).await {
            Delivered::Sent => {}
            Delivered::Closed => return Flow::Stop,
            Delivered::TooSlow => {
                self.outbound.evict(format!(
                    "slow consumer: nothing read for {:?}; reconnect to resume",
                    self.outbound.slow_limit()
                ));
                return Flow::Stop;
            }
        }
        self.gap_told = to;
        let entry = Entry::GapReported {
            name: self.consumer.name.clone(),
            to,
        };
        if let Err(e) = self.log.append(vec![entry]).await {
            // Told, but not recorded: the next subscriber may be told once more.
            tracing::warn!(consumer = self.consumer.name, error = %e, "gap notice not recorded");
        }
        Flow::Continue
    }
}

/// How soon a dead letter whose append failed is tried again.
const DEAD_LETTER_RETRY: Duration = Duration::from_secs(1);

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Live delivery to a subscription without a consumer: at-most-once, nothing stored. A
/// subscriber too slow to take what is due skips ahead to the newest event and is told which
/// seqs it missed (`lost`), so it can replay them with `start` if it wants them.
pub async fn run_ephemeral(sub: Arc<str>, outbound: Outbound, mut source: EventSource) {
    loop {
        let batch = match source.next_batch().await {
            Ok(Some(batch)) => batch,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(sub = &*sub, error = %e, "cannot read the log for delivery");
                return;
            }
        };
        for ev in &batch {
            match outbound.deliver(event_frame(&sub, None, ev, 1)).await {
                Delivered::Sent => metrics::delivered().increment(1),
                Delivered::Closed => return,
                Delivered::TooSlow => {
                    let from = ev.seq;
                    loop {
                        let to = source.skip_to_head();
                        let notice = Reply::Lost {
                            sub: sub.to_string(),
                            from,
                            to,
                        };
                        let deadline = tokio::time::Instant::now() + outbound.slow_limit();
                        match outbound
                            .send_by(Message::text(notice.to_json()), deadline)
                            .await
                        {
                            Ok(()) => break,
                            Err(Unsent::Closed) => return,
                            // Still no room: what came meanwhile is skipped too, and one
                            // notice tells it all.
                            Err(Unsent::TimedOut) => continue,
                        }
                    }
                    break;
                }
            }
        }
    }
}

/// Applies each durable batch to memory and sled, then wakes the deliverers.
pub struct Committer {
    consumers: Arc<Consumers>,
    view: ViewSender,
    feed: Arc<Feed>,
    /// When the view last recorded its log position.
    saved_at: Instant,
}

/// How stale the view's log position may get while only events are committed. Events change
/// nothing in sled; the position only bounds how much of the log a restart replays into
/// consumers (which it scans anyway), so it need not move on every commit: per-commit sled
/// batches showed as sled's I/O threads waking thousands of times a second under publish.
const POSITION_EVERY: Duration = Duration::from_millis(200);

impl Committer {
    pub fn new(consumers: Arc<Consumers>, view: ViewSender, feed: Arc<Feed>) -> Committer {
        Committer {
            consumers,
            view,
            feed,
            saved_at: Instant::now(),
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
            let notice = Reply::Unsubscribed {
                sub: gone.sub.to_string(),
                reason: "deleted".into(),
            };
            let _best_effort = gone.outbound.try_send(Message::text(notice.to_json()));
        }
        let only_events =
            changes.saved.is_empty() && changes.settled.is_empty() && changes.deleted.is_empty();
        if only_events && self.saved_at.elapsed() < POSITION_EVERY {
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
            applied: end,
        });
        metrics::published().increment(events.len() as u64);
        self.feed.push(events);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, topic: &str) -> Event {
        Event {
            seq,
            time_ms: 0,
            topic: topic.into(),
            payload: "1".into(),
            msg_id: None,
            frame_body: Default::default(),
        }
    }

    #[test]
    fn events_above_a_floor_are_exact_when_caught_up_and_close_otherwise() {
        let mut entry = TopicEntry::default();
        // The topic's events are every third seq: 3, 6, ..., 300.
        for i in 1..=100 {
            entry.add(&event(i * 3, "a"));
        }
        assert_eq!(entry.events_above(0), 100);
        assert_eq!(entry.events_above(300), 0);
        assert_eq!(entry.events_above(1000), 0);
        // In the newest block (seqs 291..300 hold events 97..100): exact.
        assert_eq!(entry.events_above(291), 3);
        assert_eq!(entry.events_above(299), 1);
        for floor in [3, 50, 96, 97, 150, 299] {
            let exact = (1..=100).filter(|i| i * 3 > floor).count() as u64;
            let counted = entry.events_above(floor);
            assert!(
                counted >= exact && counted < exact + SAMPLE_EVERY,
                "floor {floor}: {counted} for {exact}"
            );
        }
    }
}
