//! The delivery task of a durable subscription: walk from the floor, redeliver what comes
//! due, dead-letter, tell untold gaps.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::outbound::Frame;
use tokio::sync::Notify;
use wharf_protocol::{format_time_ms, now_ms, DeadLetter, EventBatch, Reply};

use crate::backend::log::append::{AppendLog, Event, Record, Settle};
use crate::backend::log::consumers::{dead_letter_topic, Consumer, Step, DEAD_LETTER_PREFIX};
use crate::backend::log::state::StateView;
use crate::metrics;
use crate::outbound::{Delivered, Outbound};

use super::{batch_full, body_of, event_frame, sleep_until_opt, EventSource};

/// What a durable delivery task needs.
pub struct DurableDelivery {
    pub consumer: Arc<Consumer>,
    pub generation: u64,
    pub epoch: u64,
    pub kick: Arc<Notify>,
    pub sub: Arc<str>,
    pub outbound: Outbound,
    /// Events per frame at most (1: plain `event` frames).
    pub batch: usize,
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
                let flow = match step {
                    Step::Deliver(count) if self.batch > 1 => {
                        self.deliver_ready(&ev, count, &mut backlog, now).await
                    }
                    step => self.act(step, &ev).await,
                };
                match flow {
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
                let frame = if self.batch > 1 {
                    // A redelivery, or an event with nothing ready behind it: a subscription
                    // that asked for batch gets `events` frames only.
                    let mut one = EventBatch::new(&self.sub, Some(&self.consumer.name));
                    one.push(body_of(ev), count);
                    Frame::Json(one.finish())
                } else {
                    event_frame(&self.sub, Some(&self.consumer.name), ev, count)
                };
                match self.outbound.deliver(frame).await {
                    Delivered::Sent => {
                        self.handed_over(ev.seq, count);
                        Flow::Continue
                    }
                    Delivered::Closed => Flow::Stop,
                    Delivered::TooSlow => {
                        // Nothing is lost: the consumer resumes from its settled state.
                        self.outbound.evict_slow();
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

    /// Delivers `first` (leased as delivery `count`) together with what else of the backlog
    /// is ready to go, up to `batch` events in one `events` frame. It stops at the first event
    /// that cannot go now: no room (the walk asks again), a dead letter (moved before the
    /// frame goes), a seek or the end of the attachment (the frame is dropped: what it held
    /// is no longer this walk's to deliver).
    async fn deliver_ready(
        &mut self,
        first: &Event,
        count: u32,
        backlog: &mut VecDeque<Arc<Event>>,
        now: Instant,
    ) -> Flow {
        let mut frame = EventBatch::new(&self.sub, Some(&self.consumer.name));
        frame.push(body_of(first), count);
        let mut sent = vec![(first.seq, count)];
        while !batch_full(&frame, self.batch) {
            let Some(ev) = backlog.front().cloned() else {
                break;
            };
            let step = self
                .consumer
                .step(self.generation, self.epoch, ev.seq, &ev.topic, now);
            match step {
                Step::Skip => {}
                Step::Deliver(count) => {
                    frame.push(body_of(&ev), count);
                    sent.push((ev.seq, count));
                }
                Step::DeadLetter(deliveries) => {
                    backlog.pop_front();
                    // Marked as being dead-lettered by `step`: moved now, whatever becomes
                    // of the frame, so that the mark is always cleared.
                    self.dead_letter(&ev, deliveries).await;
                    break;
                }
                // Asked about again by the walk, after this frame.
                Step::NoRoom => break,
                Step::Restart => return Flow::Restart,
                Step::Detached => return Flow::Stop,
            }
            backlog.pop_front();
        }
        match self.outbound.deliver(Frame::Json(frame.finish())).await {
            Delivered::Sent => {}
            Delivered::Closed => return Flow::Stop,
            Delivered::TooSlow => {
                self.outbound.evict_slow();
                return Flow::Stop;
            }
        }
        metrics::delivered().increment(sent.len() as u64);
        self.consumer.handed_over_all(&sent, self.epoch);
        for (seq, count) in sent {
            if count > 1 {
                self.redelivered(seq, count);
            }
        }
        Flow::Continue
    }

    /// Delivery `count` of `seq` reached the connection's queue: count it, and save the
    /// count of a redelivery (first deliveries are covered by the delivered-through mark).
    fn handed_over(&self, seq: u64, count: u32) {
        metrics::delivered().increment(1);
        self.consumer.handed_over(seq, count, self.epoch);
        if count > 1 {
            self.redelivered(seq, count);
        }
    }

    /// A redelivery reached the connection: counted, and its count saved.
    fn redelivered(&self, seq: u64, count: u32) {
        metrics::redelivered().increment(1);
        // A sled insert is blocking I/O: off the runtime's workers.
        let (state, name) = (self.state.clone(), self.consumer.name.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = state.set_delivery(&name, seq, count) {
                tracing::warn!(consumer = name, error = %e, "delivery count not saved");
            }
        });
    }

    /// Moves an event that was delivered `max_deliver` times to `dead.<consumer>` and settles
    /// it, as one record. A failed append (a full disk) is tried again a second later.
    async fn dead_letter(&self, ev: &Event, deliveries: u32) {
        let name = &self.consumer.name;
        if ev.topic.starts_with(DEAD_LETTER_PREFIX) {
            // A dead letter that cannot be processed is settled, never nested in another.
            let (floor, seeks) = self.consumer.floor_for_settle(&[ev.seq]);
            let entry = Record::Acked {
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
        let entry = Record::DeadLetter {
            consumer: name.clone(),
            seq: ev.seq,
            event: Event::new(dead_letter_topic(name), payload, now_ms(), None),
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
        match self.outbound.deliver(Frame::reply(&notice)).await {
            Delivered::Sent => {}
            Delivered::Closed => return Flow::Stop,
            Delivered::TooSlow => {
                self.outbound.evict_slow();
                return Flow::Stop;
            }
        }
        self.gap_told = to;
        let entry = Record::GapReported {
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
