//! The delivery task of one durable attachment: pull at most `max_in_flight`, hand each
//! message to the connection, keep the leases (extend JetStream's ack wait while the
//! subscriber's own runs, nak what ran out of it), dead-letter past `max_deliver`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, pull};
use async_nats::jetstream::{self, AckKind};
use futures_util::{FutureExt, StreamExt};
use tokio::time::Instant;
use wharf_protocol::{format_time_ms, DeadLetter, EventBody, EventFrame};

use super::local::lock;
use super::local::{InFlight, LocalConsumer};
use super::{durable, payload_json, unavailable, NatsBackend};
use crate::backend::contract::{dead_letter_topic, BackendError, DeliveryOptions};
use crate::metrics;
use crate::outbound::{Delivered, Frame};

/// How long a consumer must stay missing before its subscribers here are told `deleted`
/// (a seek on another node deletes it and makes it again within about a second).
const DELETED_AFTER: Duration = Duration::from_secs(5);

/// The delivery task of one attachment.
pub(super) struct Delivery {
    pub(super) backend: NatsBackend,
    pub(super) local: Arc<LocalConsumer>,
    pub(super) generation: u64,
    pub(super) sub: Arc<str>,
    pub(super) outbound: crate::outbound::Outbound,
    pub(super) options: DeliveryOptions,
}

impl Delivery {
    pub(super) fn held(&self) -> usize {
        lock(&self.local.in_flight)
            .values()
            .filter(|f| f.holder == self.generation)
            .count()
    }

    pub(super) async fn run(self) {
        self.local.released().await;
        // Retention may have removed events while nobody was attached.
        let retention = self.backend.has_retention();
        if retention {
            self.check_gap().await;
        }
        let mut last_pulled = 0u64;
        let lease = self.backend.settings().lease;
        // Leases are kept on their own clock, not between pulls: a delivery waiting for room
        // in a slow connection's queue must not let JetStream's ack wait run out on what this
        // attachment already holds.
        let keeper = tokio::spawn(
            Leases {
                backend: self.backend.clone(),
                local: self.local.clone(),
                generation: self.generation,
            }
            .keep(),
        );
        let _keeper = AbortOnDrop(keeper.abort_handle());
        // Since when the consumer has been missing: gone for good (deleted through another
        // node) once it stays missing longer than a seek elsewhere takes to make it again.
        let mut missing_since: Option<Instant> = None;
        // The consumer's handle, looked up again after a failed pull and every few seconds
        // (not before each pull: that would be a JetStream API request per batch).
        let mut cached: Option<(consumer::Consumer<pull::Config>, Instant)> = None;
        loop {
            let room = self.options.max_in_flight.saturating_sub(self.held());
            if room == 0 {
                tokio::select! {
                    _ = self.local.kick.notified() => {}
                    _ = tokio::time::sleep(lease / 4) => {}
                }
                continue;
            }
            let fresh = cached
                .as_ref()
                .is_some_and(|(_, at)| at.elapsed() < CONSUMER_REFRESH);
            if !fresh {
                cached = None;
            }
            let consumer = match cached.take() {
                Some((c, at)) => (c, at),
                None => match self.consumer().await {
                    Ok(c) => {
                        missing_since = None;
                        (c, Instant::now())
                    }
                    Err(e) => {
                        if let Ok(None) = self.backend.consumer_config(&self.local.name).await {
                            let since = *missing_since.get_or_insert_with(Instant::now);
                            if since.elapsed() >= DELETED_AFTER {
                                self.backend.deleted_elsewhere(&self.local.name);
                                return;
                            }
                        }
                        tracing::debug!(consumer = self.local.name, error = %e, "cannot pull; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                },
            };
            // Declared before the pull, so dropped after it when the task is aborted: what it
            // holds is naked once the pull is unsubscribed, and the pull cannot take it back.
            let mut pulled = Pulled {
                local: self.local.clone(),
                generation: self.generation,
                messages: Default::default(),
            };
            // A pull the server holds open until `room` messages came or PULL_WAIT passed,
            // each handed over as it arrives (a `fetch` answers at once, empty or not, and
            // an idle subscriber would pull again and again).
            let batch = consumer
                .0
                .batch()
                .max_messages(room)
                .expires(PULL_WAIT)
                .messages()
                .await;
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!(consumer = self.local.name, error = %e, "pull failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let mut failed = false;
            let mut ended = false;
            while !ended {
                // The next message, and whatever else has arrived with it.
                let mut arrived = Vec::new();
                let mut next = Some(batch.next().await);
                loop {
                    match next.take() {
                        Some(Some(Ok(message))) => arrived.push(message),
                        Some(Some(Err(e))) => {
                            tracing::debug!(consumer = self.local.name, error = %e, "pull ended early");
                            failed = true;
                            ended = true;
                            break;
                        }
                        Some(None) => {
                            ended = true;
                            break;
                        }
                        // Nothing more has arrived yet.
                        None => break,
                    }
                    next = batch.next().now_or_never();
                }
                // Redeliveries can come back out of order; within what arrived together,
                // seq order is restored.
                arrived.sort_by_key(|m| m.info().map_or(0, |i| i.stream_sequence));
                let Some(first) = arrived.first().and_then(|m| m.info().ok()) else {
                    continue;
                };
                let newest = arrived
                    .last()
                    .and_then(|m| m.info().ok())
                    .map_or(first.stream_sequence, |i| i.stream_sequence);
                let first = first.stream_sequence;
                // Held by `pulled` before anything is awaited: a task aborted meanwhile
                // naks them rather than leaving them to the ack wait.
                pulled.messages.extend(arrived);
                // A jump over seqs may be retention overtaking the consumer (or only events
                // of other topics): asked before these are delivered, since their acks would
                // move JetStream's floor past a gap.
                if retention && first > last_pulled + 1 {
                    self.check_gap().await;
                }
                last_pulled = newest;
                while let Some(message) = pulled.messages.pop_front() {
                    if !self.deliver(message).await {
                        // What already arrived goes back with the rest, naked once the pull
                        // is unsubscribed (dropped).
                        while let Some(Some(Ok(message))) = batch.next().now_or_never() {
                            pulled.messages.push_back(message);
                        }
                        drop(batch);
                        drop(pulled);
                        return;
                    }
                }
            }
            drop(batch);
            if failed {
                // A pull the server ended at once (a leader change, too many waiting pulls):
                // not again at once.
                tokio::time::sleep(Duration::from_millis(200)).await;
            } else {
                cached = Some(consumer);
            }
        }
    }

    pub(super) async fn consumer(&self) -> Result<consumer::Consumer<pull::Config>, BackendError> {
        let stream = self.backend.stream().await?;
        let (what, durable) = ("cannot reach the consumer", durable(&self.local.name));
        self.backend
            .asked(what, || stream.get_consumer(&durable))
            .await?
            .map_err(|e| unavailable(what, e))
    }

    /// Tells the subscribers a gap when the stream's oldest event is above the consumer's
    /// floor + 1: what lies between was removed by the stream's limits before it was settled
    /// (matching the consumer's topics or not: an upper bound, as on the embedded log).
    async fn check_gap(&self) {
        let Ok(state) = self.backend.stream_state().await else {
            return;
        };
        let Some(floor) = self.backend.acked_floor(&self.local.name).await else {
            return;
        };
        if state.first_sequence > floor + 1 {
            self.local.tell_gap(floor + 1, state.first_sequence - 1);
        }
    }

    /// Hands one message to the connection; false when the connection is gone.
    pub(super) async fn deliver(&self, message: jetstream::Message) -> bool {
        let Ok(info) = message.info() else {
            return true;
        };
        let seq = info.stream_sequence;
        let unsent = lock(&self.local.unsent).get(&seq).copied().unwrap_or(0);
        let delivery = u32::try_from(info.delivered)
            .unwrap_or(u32::MAX)
            .saturating_sub(unsent)
            .max(1);
        let time_ms = u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
        let max = self.options.max_deliver;
        if max > 0 && delivery > max {
            self.dead_letter(message, seq).await;
            lock(&self.local.unsent).remove(&seq);
            return true;
        }
        let topic = self.backend.topic_of(message.subject.as_str()).to_owned();
        // A consumer never receives its own dead letters (one on `>` would otherwise
        // dead-letter them again, forever).
        if topic == dead_letter_topic(&self.local.name) {
            let _settled_or_redelivered = message.ack().await;
            return true;
        }
        let body = EventBody::new(seq, &topic, &payload_json(&message.payload), time_ms);
        let frame = EventFrame {
            sub: &self.sub,
            consumer: Some(&self.local.name),
            body: &body,
            delivery,
        };
        let now = Instant::now();
        lock(&self.local.in_flight).insert(
            seq,
            InFlight {
                message,
                holder: self.generation,
                due: now + self.options.ack_wait,
                ack_wait: self.options.ack_wait,
                extended: now,
            },
        );
        // Messages come one at a time from the pull: a batch is always of one here.
        let json = if self.options.batch > 1 {
            frame.to_json_batched()
        } else {
            frame.to_json()
        };
        match self.outbound.deliver(Frame::Json(json)).await {
            Delivered::Sent => {
                metrics::delivered().increment(1);
                true
            }
            // Never reached the connection: not a delivery; it stays held until the
            // attachment ends, which naks everything it holds in seq order.
            Delivered::Closed => {
                *lock(&self.local.unsent).entry(seq).or_default() += 1;
                false
            }
            Delivered::TooSlow => {
                *lock(&self.local.unsent).entry(seq).or_default() += 1;
                self.outbound.evict_slow();
                false
            }
        }
    }

    /// Moves an event delivered `max_deliver` times to `dead.<consumer>`, once: the dead
    /// letter's msg id is made from the consumer and seq, so a retry (here or on another
    /// node) is a duplicate. Then the event is terminated.
    pub(super) async fn dead_letter(&self, message: jetstream::Message, seq: u64) {
        let topic = dead_letter_topic(&self.local.name);
        let published_at = message
            .info()
            .map(|i| i.published.unix_timestamp_nanos() / 1_000_000)
            .ok()
            .and_then(|ms| u64::try_from(ms).ok())
            .unwrap_or(0);
        let body = DeadLetter {
            consumer: &self.local.name,
            topic: self.backend.topic_of(message.subject.as_str()),
            seq,
            deliveries: self.options.max_deliver,
            published_at: &format_time_ms(published_at),
            payload: &payload_json(&message.payload),
        }
        .to_json();
        let mut headers = async_nats::HeaderMap::new();
        let id = format!("wharf-dead-{}-{seq}", durable(&self.local.name));
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
        let stored = match self
            .backend
            .js()
            .publish_with_headers(self.backend.subject(&topic), headers, body.into())
            .await
        {
            Ok(ack) => ack.await.is_ok(),
            Err(_) => false,
        };
        if stored {
            metrics::dead_lettered().increment(1);
            if let Err(e) = message.ack_with(AckKind::Term).await {
                tracing::warn!(error = %e, "term after dead-lettering failed; the dead letter is a duplicate next time");
            }
        }
    }
}

/// Messages pulled for an attachment and not handed to its connection yet. If the delivery
/// ends first (the connection closed, the task was aborted), they join what the attachment
/// holds and all of it is naked at once, in seq order (so the next subscriber gets them again
/// first, in order), rather than left to JetStream's ack wait; the pull is not counted as a
/// delivery.
struct Pulled {
    local: Arc<LocalConsumer>,
    generation: u64,
    messages: std::collections::VecDeque<jetstream::Message>,
}

impl Drop for Pulled {
    fn drop(&mut self) {
        if self.messages.is_empty() {
            return;
        }
        let now = Instant::now();
        {
            let mut in_flight = lock(&self.local.in_flight);
            let mut unsent = lock(&self.local.unsent);
            for message in self.messages.drain(..) {
                let Ok(info) = message.info() else { continue };
                let seq = info.stream_sequence;
                *unsent.entry(seq).or_default() += 1;
                in_flight.entry(seq).or_insert(InFlight {
                    message,
                    holder: self.generation,
                    due: now,
                    extended: now,
                    ack_wait: Duration::ZERO,
                });
            }
        }
        // Its own task, not stopped: nothing to wait for.
        self.local.release(Some(self.generation), None);
    }
}

/// How long a pull waits at the server for messages.
const PULL_WAIT: Duration = Duration::from_secs(1);

/// How often a delivery task looks its consumer up again.
const CONSUMER_REFRESH: Duration = Duration::from_secs(2);

/// Aborts a task when dropped (the delivery task's lease keeper ends with it).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The leases of one attachment's messages.
struct Leases {
    backend: NatsBackend,
    local: Arc<LocalConsumer>,
    generation: u64,
}

impl Leases {
    async fn keep(self) {
        let mut tick = tokio::time::interval(self.backend.settings().lease / 4);
        loop {
            tick.tick().await;
            self.keep_leases().await;
        }
    }

    /// Extends JetStream's ack wait for what is held and still inside the subscriber's ack
    /// wait; naks what ran out of it (delivered again now, and the delivery task pulls).
    async fn keep_leases(&self) {
        let lease = self.backend.settings().lease;
        let now = Instant::now();
        let (expired, extend): (Vec<InFlight>, Vec<jetstream::Message>) = {
            let mut in_flight = lock(&self.local.in_flight);
            let due: Vec<u64> = in_flight
                .iter()
                .filter(|(_, f)| f.holder == self.generation && f.due <= now)
                .map(|(&s, _)| s)
                .collect();
            let expired = due.iter().filter_map(|s| in_flight.remove(s)).collect();
            let mut extend = Vec::new();
            for f in in_flight.values_mut() {
                if f.holder == self.generation && now.duration_since(f.extended) >= lease / 2 {
                    f.extended = now;
                    extend.push(f.message.clone());
                }
            }
            (expired, extend)
        };
        let room_made = !expired.is_empty();
        for f in expired {
            let _redelivered_later = f.message.ack_with(AckKind::Nak(None)).await;
        }
        if room_made {
            self.local.kick.notify_waiters();
        }
        for m in extend {
            let _redelivered_later = m.ack_with(AckKind::Progress).await;
        }
    }
}
