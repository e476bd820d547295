//! What one wharf node holds of a durable consumer: the connections attached here, the
//! messages in flight here, and how an attachment ends (detach, takeover, deletion): what it
//! held is naked so that JetStream delivers it again at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use wharf_protocol::{Mode, Reply};

use crate::backend::contract::{BackendError, Subscriber};
use crate::outbound::Frame;

/// A poisoned lock here only guards maps that every change leaves whole.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A message delivered on this node and not settled yet.
pub struct InFlight {
    pub message: jetstream::Message,
    /// The attachment it went to.
    pub holder: u64,
    /// When the subscriber's ack wait runs out (then it is delivered again).
    pub due: Instant,
    /// When JetStream's ack wait was last extended.
    pub extended: Instant,
    /// The subscriber's ack wait (progress starts it over).
    pub ack_wait: Duration,
}

pub(super) struct Attachment {
    pub(super) generation: u64,
    pub(super) session: u64,
    pub(super) sub: Arc<str>,
    pub(super) outbound: crate::outbound::Outbound,
    pub(super) task: Option<JoinHandle<()>>,
    /// Watches the holder key of an exclusive attachment: another node's takeover ends it.
    pub(super) watcher: Option<tokio::task::AbortHandle>,
}

impl Attachment {
    /// Stops its tasks; returns the delivery task, for [`LocalConsumer::release`] to wait
    /// for (aborting takes effect at the task's next poll, not at once).
    pub(super) fn stop(&mut self) -> Option<JoinHandle<()>> {
        if let Some(watcher) = &self.watcher {
            watcher.abort();
        }
        let task = self.task.take()?;
        task.abort();
        Some(task)
    }
}

/// What this node holds of one durable consumer.
pub struct LocalConsumer {
    pub name: String,
    pub(super) mode: Mutex<Mode>,
    pub(super) attachments: Mutex<Vec<Attachment>>,
    pub in_flight: Mutex<HashMap<u64, InFlight>>,
    /// How often each seq was pulled here but never reached a connection (it closed or was
    /// too slow): JetStream counted those deliveries, a subscriber never saw them, so they
    /// are taken off the delivery count it is told.
    pub unsent: Mutex<HashMap<u64, u32>>,
    /// Wakes the delivery tasks (room made, a seek).
    pub kick: Notify,
    /// Terminated through this node since it started (JetStream does not count them; the
    /// cluster-wide figure is the sum over nodes).
    pub terminated: std::sync::atomic::AtomicU64,
    /// Naks of what departed attachments held, still on their way: a new attachment waits
    /// for them, so that it gets those events again first, in seq order.
    pub(super) releasing: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    pub(super) next_generation: std::sync::atomic::AtomicU64,
    /// The highest seq this node told a `gap` up to, and how many seqs its gaps covered
    /// (since it started).
    pub(super) gap_told: std::sync::atomic::AtomicU64,
    pub(super) gapped: std::sync::atomic::AtomicU64,
    /// Held from an exclusive attach's local takeover to its claim in the holders bucket.
    pub(super) claiming: tokio::sync::Mutex<()>,
}

impl LocalConsumer {
    /// Adds an attachment of `to` in `mode` and returns its generation. Exclusive mode
    /// takes the consumer over from the other attachments on this node: they are told
    /// `taken_over` and what they held is delivered again at once.
    pub(super) fn add(
        self: &Arc<Self>,
        name: &str,
        mode: Mode,
        to: &Subscriber,
    ) -> Result<u64, BackendError> {
        let generation = self
            .next_generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let replaced = {
            let mut held = lock(&self.mode);
            let mut attachments = lock(&self.attachments);
            let replaced: Vec<Attachment> = match (mode, *held, attachments.is_empty()) {
                (Mode::Shared, Mode::Exclusive, false) | (Mode::Exclusive, Mode::Shared, false) => {
                    let held = match *held {
                        Mode::Exclusive => "exclusive",
                        Mode::Shared => "shared",
                    };
                    return Err(BackendError::Conflict(format!(
                        "consumer {name:?} is attached in {held} mode; subscribe with the same mode"
                    )));
                }
                (Mode::Shared, _, _) => Vec::new(),
                (Mode::Exclusive, _, _) => attachments.drain(..).collect(),
            };
            *held = mode;
            attachments.push(Attachment {
                generation,
                session: to.session,
                sub: to.sub.clone(),
                outbound: to.outbound.clone(),
                task: None,
                watcher: None,
            });
            replaced
        };
        for mut old in replaced {
            tracing::info!(
                consumer = name,
                from = old.session,
                to = to.session,
                "consumer taken over"
            );
            let stopped = old.stop();
            self.release(Some(old.generation), stopped);
            old.outbound.unsubscribed(&old.sub, "taken_over");
        }
        Ok(generation)
    }

    /// Naks everything `holder` (or, with `None`, anyone) holds: delivered again now. The
    /// naks wait for the `stopped` delivery tasks to end: a task's pull still open at the
    /// server would take a naked event straight back (a delivery nobody sees, redelivered
    /// only after the ack wait); a task that ended has unsubscribed its pull first.
    pub(super) fn release(
        self: &Arc<Self>,
        holder: Option<u64>,
        stopped: impl IntoIterator<Item = JoinHandle<()>>,
    ) {
        let stopped: Vec<JoinHandle<()>> = stopped.into_iter().collect();
        let released = self.take_held(holder);
        if released.is_empty() && stopped.is_empty() {
            return;
        }
        // After the naks of earlier releases: two departures' naks interleaved would hand
        // their events back out of seq order.
        let mut releasing = lock(&self.releasing);
        let earlier: Vec<JoinHandle<()>> =
            releasing.drain(..).filter(|h| !h.is_finished()).collect();
        let local = self.clone();
        let naks = tokio::spawn(async move {
            let swept_again = !stopped.is_empty();
            for handle in earlier.into_iter().chain(stopped) {
                let _done_or_aborted = handle.await;
            }
            // What a stopped task put in flight after the first look: aborting takes
            // effect at its next await, not at once.
            let late = match swept_again {
                true => local.take_held(holder),
                false => Vec::new(),
            };
            for f in released.into_iter().chain(late) {
                if let Err(e) = f.message.double_ack_with(AckKind::Nak(None)).await {
                    tracing::debug!(error = %e, "nak at detach failed; JetStream's ack wait redelivers it");
                }
            }
        });
        releasing.push(naks);
    }

    /// Takes what `holder` (or, with `None`, anyone) holds, in seq order: JetStream delivers
    /// naked messages again in the order it got the naks, and a consumer's redeliveries
    /// come in seq order.
    fn take_held(&self, holder: Option<u64>) -> Vec<InFlight> {
        let mut in_flight = lock(&self.in_flight);
        let mut seqs: Vec<u64> = in_flight
            .iter()
            .filter(|(_, f)| holder.is_none_or(|h| f.holder == h))
            .map(|(&s, _)| s)
            .collect();
        seqs.sort_unstable();
        seqs.into_iter()
            .filter_map(|s| in_flight.remove(&s))
            .collect()
    }

    /// Waits for the naks of departed attachments (bounded: a nak that never returns is
    /// redelivered by JetStream's ack wait anyway).
    pub(super) async fn released(&self) {
        let pending: Vec<_> = lock(&self.releasing).drain(..).collect();
        for naks in pending {
            let _in_time = tokio::time::timeout(Duration::from_secs(2), naks).await;
        }
    }

    /// Puts back what a failed settle took: still in flight here, so a retried settle
    /// finds it (and the lease keeps it until then).
    pub(super) fn restore(&self, failed: impl IntoIterator<Item = InFlight>) {
        let mut in_flight = lock(&self.in_flight);
        for f in failed {
            if let Ok(info) = f.message.info() {
                let seq = info.stream_sequence;
                in_flight.entry(seq).or_insert(f);
            }
        }
    }

    pub(super) fn detach(self: &Arc<Self>, generation: u64) {
        let gone = {
            let mut attachments = lock(&self.attachments);
            let i = attachments.iter().position(|a| a.generation == generation);
            i.map(|i| attachments.remove(i))
        };
        if let Some(mut gone) = gone {
            let stopped = gone.stop();
            self.release(Some(generation), stopped);
        }
    }

    /// Another node took the consumer over: this attachment ends, its subscriber is told,
    /// and what it held is delivered again (to the new holder).
    pub(super) fn taken_over(self: &Arc<Self>, generation: u64) {
        let gone = {
            let mut attachments = lock(&self.attachments);
            let i = attachments.iter().position(|a| a.generation == generation);
            i.map(|i| attachments.remove(i))
        };
        let Some(mut gone) = gone else { return };
        tracing::info!(
            consumer = self.name,
            session = gone.session,
            "consumer taken over by another node"
        );
        let stopped = gone.stop();
        self.release(Some(generation), stopped);
        gone.outbound.unsubscribed(&gone.sub, "taken_over");
    }

    /// Ends every attachment on this node (the consumer is deleted, or the node stops);
    /// `reason`, when given, is told to each subscriber.
    pub(super) fn detach_all_with(self: &Arc<Self>, reason: Option<&str>) {
        let gone: Vec<Attachment> = lock(&self.attachments).drain(..).collect();
        let mut stopped = Vec::new();
        for mut a in gone {
            stopped.extend(a.stop());
            if let Some(reason) = reason {
                a.outbound.unsubscribed(&a.sub, reason);
            }
        }
        self.release(None, stopped);
    }

    pub(super) fn detach_all(self: &Arc<Self>) {
        self.detach_all_with(None);
    }

    /// Tells every subscriber here that `from..=to` were removed by retention unsettled.
    pub(super) fn tell_gap(&self, from: u64, to: u64) {
        use std::sync::atomic::Ordering;
        let told = self.gap_told.fetch_max(to, Ordering::Relaxed);
        if told >= to {
            return;
        }
        let from = from.max(told + 1);
        self.gapped.fetch_add(to - from + 1, Ordering::Relaxed);
        tracing::info!(
            consumer = self.name,
            from,
            to,
            "retention removed unsettled events"
        );
        let notice = Frame::reply(&Reply::Gap {
            consumer: self.name.clone(),
            from,
            to,
        });
        for a in lock(&self.attachments).iter() {
            let _best_effort = a.outbound.try_send(notice.clone());
        }
    }

    /// Connections holding the consumer here: attached, or gone and their events not all
    /// handed back yet (their naks still on the way to JetStream), so that one who sees 0
    /// knows that what they held is due to the next subscriber, on any node.
    pub(super) fn attached(&self) -> usize {
        let releasing = lock(&self.releasing)
            .iter()
            .filter(|naks| !naks.is_finished())
            .count();
        lock(&self.attachments).len() + releasing
    }
}
