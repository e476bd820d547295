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

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use wharf_protocol::{format_time_ms, EventFrame, Pattern};

use crate::consumers::{Consumer, Consumers, Step};
use crate::log::{AppendLog, CommitSink, Event, EventCursor, LogError, Position, Record};
use crate::state::StateView;

/// A connection's bounded outbound queue.
pub type Outbound = mpsc::Sender<Message>;

/// Events read per batch by a delivery task.
const BATCH: usize = 256;

/// The committed head and a cache of the newest events.
pub struct Feed {
    cache: RwLock<VecDeque<Arc<Event>>>,
    capacity: usize,
    head: watch::Sender<u64>,
}

impl Feed {
    pub fn new(head: u64, capacity: usize) -> Feed {
        Feed {
            cache: RwLock::new(VecDeque::with_capacity(capacity.min(1 << 16))),
            capacity,
            head: watch::Sender::new(head),
        }
    }

    /// The seq of the newest durable event (0 when there is none).
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    fn push(&self, events: Vec<Arc<Event>>) {
        let Some(last) = events.last().map(|e| e.seq) else {
            return;
        };
        if self.capacity > 0 {
            let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
            for ev in events {
                if cache.len() == self.capacity {
                    cache.pop_front();
                }
                cache.push_back(ev);
            }
        }
        self.head.send_replace(last);
    }

    /// Up to `max` cached events from `seq` through `head`, or `None` if `seq` is older than
    /// the cache.
    fn cached(&self, seq: u64, head: u64, max: usize) -> Option<Vec<Arc<Event>>> {
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        let first = cache.front()?.seq;
        if seq < first {
            return None;
        }
        let start = usize::try_from(seq - first).ok()?;
        let want = usize::try_from(head.saturating_sub(seq) + 1).unwrap_or(usize::MAX);
        Some(
            cache
                .iter()
                .skip(start)
                .take(max.min(want))
                .cloned()
                .collect(),
        )
    }

    pub fn subscribe_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Wakes every waiting source so it can notice it should stop.
    pub fn close(&self) {
        self.head.send_modify(|_| {});
    }
}

/// Reads events in seq order from any point: cache first, segments otherwise.
pub struct EventSource {
    feed: Arc<Feed>,
    log: AppendLog,
    next: u64,
    disk: Option<EventCursor>,
    head: watch::Receiver<u64>,
}

impl EventSource {
    pub fn new(feed: Arc<Feed>, log: AppendLog, from: u64) -> EventSource {
        let head = feed.subscribe_head();
        EventSource {
            feed,
            log,
            next: from.max(1),
            disk: None,
            head,
        }
    }

    /// The next batch; waits while there is nothing new. `Ok(None)` when the broker stops.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<Arc<Event>>>, LogError> {
        loop {
            let head = *self.head.borrow_and_update();
            if self.next <= head {
                let batch = match self.feed.cached(self.next, head, BATCH) {
                    Some(batch) => batch,
                    None => self.read_disk(head).await?,
                };
                match batch.last() {
                    Some(last) => {
                        self.next = last.seq + 1;
                        return Ok(Some(batch));
                    }
                    // Nothing stored below the head from here: nothing to wait for either.
                    None => self.next = head + 1,
                }
                continue;
            }
            if self.head.changed().await.is_err() {
                return Ok(None);
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
    let published_at = format_time_ms(ev.time_ms);
    let frame = EventFrame {
        sub,
        consumer,
        seq: ev.seq,
        topic: &ev.topic,
        payload: &ev.payload,
        published_at: &published_at,
        delivery,
    };
    Message::text(frame.to_json())
}

/// What a durable delivery task needs.
pub struct DurableDelivery {
    pub consumer: Arc<Consumer>,
    pub generation: u64,
    pub sub: Arc<str>,
    pub outbound: Outbound,
    pub source: EventSource,
    pub state: StateView,
    pub max_in_flight: usize,
}

impl DurableDelivery {
    /// Delivers every unacked matching event from the floor on, then keeps up with new ones.
    pub async fn run(mut self) {
        let name = self.consumer.name.clone();
        loop {
            let batch = match self.source.next_batch().await {
                Ok(Some(batch)) => batch,
                Ok(None) => return,
                Err(e) => {
                    tracing::error!(consumer = name, error = %e, "cannot read the log for delivery");
                    return;
                }
            };
            for ev in batch {
                if !self.wait_for_room().await {
                    return;
                }
                let count = match self.consumer.step(self.generation, ev.seq, &ev.topic) {
                    Step::Skip => continue,
                    Step::Detached => return,
                    Step::Deliver(count) => count,
                };
                if let Err(e) = self.state.set_delivery(&name, ev.seq, count) {
                    tracing::warn!(consumer = name, error = %e, "delivery count not saved");
                }
                let frame = event_frame(&self.sub, Some(&name), &ev, count);
                if self.outbound.send(frame).await.is_err() {
                    return;
                }
            }
        }
    }

    /// Waits until fewer than `max_in_flight` deliveries are unacked; false once detached.
    async fn wait_for_room(&self) -> bool {
        loop {
            let room = self.consumer.room.notified();
            match self.consumer.in_flight(self.generation) {
                None => return false,
                Some(n) if n < self.max_in_flight => return true,
                Some(_) => room.await,
            }
        }
    }
}

/// Live delivery to a subscription without a consumer: at-most-once, nothing stored.
pub async fn run_ephemeral(
    pattern: Pattern,
    sub: Arc<str>,
    outbound: Outbound,
    mut source: EventSource,
) {
    loop {
        let batch = match source.next_batch().await {
            Ok(Some(batch)) => batch,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(sub = &*sub, error = %e, "cannot read the log for delivery");
                return;
            }
        };
        for ev in batch.iter().filter(|ev| pattern.matches(&ev.topic)) {
            if outbound.send(event_frame(&sub, None, ev, 1)).await.is_err() {
                return;
            }
        }
    }
}

/// Applies each durable batch to memory and sled, then wakes the deliverers.
pub struct Committer {
    pub consumers: Arc<Consumers>,
    pub state: StateView,
    pub feed: Arc<Feed>,
}

impl CommitSink for Committer {
    fn committed(&mut self, records: Vec<Record>, end: Position) {
        let mut events = Vec::new();
        let mut changed: Vec<String> = Vec::new();
        let mut settled: Vec<(String, u64)> = Vec::new();
        for rec in records {
            match rec {
                Record::Event(ev) => events.push(Arc::new(ev)),
                Record::ConsumerCreated {
                    name,
                    pattern,
                    floor,
                } => {
                    let state = crate::state::ConsumerState::new(pattern, floor);
                    if self.consumers.insert(&name, state, Default::default()) {
                        changed.push(name);
                    }
                }
                Record::Acked {
                    consumer,
                    seqs,
                    floor,
                } => {
                    if let Some(c) = self.consumers.get(&consumer) {
                        for seq in c.apply_ack(&seqs, floor) {
                            settled.push((consumer.clone(), seq));
                        }
                        changed.push(consumer);
                    }
                }
            }
        }
        changed.sort();
        changed.dedup();
        let states: Vec<(String, crate::state::ConsumerState)> = changed
            .into_iter()
            .filter_map(|name| self.consumers.get(&name).map(|c| (name, c.state())))
            .collect();
        let saved = self.state.save(
            states.iter().map(|(n, s)| (n.as_str(), s)),
            settled.iter().map(|(n, s)| (n.as_str(), *s)),
            end,
        );
        if let Err(e) = saved {
            // The log is the truth; the view is rebuilt from it at the next start.
            tracing::error!(error = %e, "state view update failed; it will be rebuilt from the log");
        }
        self.feed.push(events);
    }
}
