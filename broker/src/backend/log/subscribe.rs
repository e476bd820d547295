//! Subscribing: creating a durable consumer, attaching a connection to it (takeover, shared
//! members) and following the log without a consumer.

use std::collections::HashMap;
use std::sync::{Arc, MutexGuard};

use wharf_protocol::{Mode, Pattern};

use super::append::Record;
use super::consumers::{Attached, Consumer, ModeConflict};
use super::delivery::{run_ephemeral, DurableDelivery, EventSource};
use super::{mode_name, Creating, LogBackend};
use crate::backend::contract::{
    confirmed, BackendError, Confirming, ConsumerSpec, DeliveryOptions, Quota, Subscriber,
};

/// One consumer creation in flight, in `LogBackend::creating` until dropped.
struct CreatingConsumer {
    creating: Creating,
    name: String,
}

impl Drop for CreatingConsumer {
    fn drop(&mut self) {
        let mut creating = lock(&self.creating);
        if let Some(count) = creating.get_mut(&self.name) {
            *count -= 1;
            if *count == 0 {
                creating.remove(&self.name);
            }
        }
    }
}

/// A panic while holding this lock would be a bug in this file; the map stays usable.
fn lock(creating: &Creating) -> MutexGuard<'_, HashMap<String, usize>> {
    creating.lock().unwrap_or_else(|p| p.into_inner())
}

fn conflict(consumer: &Consumer, asked: &[Pattern]) -> BackendError {
    let asked: Vec<&str> = asked.iter().map(Pattern::as_str).collect();
    let existing: Vec<&str> = consumer.patterns.iter().map(Pattern::as_str).collect();
    BackendError::Conflict(format!(
        "consumer {:?} exists with topics {existing:?}, not {asked:?}",
        consumer.name
    ))
}

/// A connection attached to a consumer whose delivery has not started yet: the
/// `subscribed` reply goes out first, so that no event overtakes it. Dropped unstarted, it
/// detaches.
pub struct Attaching {
    backend: LogBackend,
    consumer: Arc<Consumer>,
    attached: Option<Attached>,
    to: Subscriber,
    from: u64,
}

/// A running subscription; dropping it ends it (detaches from the consumer, or stops the
/// ephemeral delivery task).
pub enum Subscription {
    Durable {
        consumer: Arc<Consumer>,
        session: u64,
        sub: Arc<str>,
    },
    Ephemeral(tokio::task::AbortHandle),
}

impl Drop for Subscription {
    fn drop(&mut self) {
        match self {
            Subscription::Durable {
                consumer,
                session,
                sub,
            } => {
                consumer.detach(*session, sub);
            }
            Subscription::Ephemeral(task) => task.abort(),
        }
    }
}

impl Attaching {
    /// The first seq the subscription's walk looks at.
    pub fn start_seq(&self) -> u64 {
        self.from
    }

    pub fn start(mut self) -> Subscription {
        if let Some(attached) = self.attached.take() {
            self.spawn(attached);
        }
        Subscription::Durable {
            consumer: self.consumer.clone(),
            session: self.to.session,
            sub: self.to.sub.clone(),
        }
    }

    fn spawn(&self, attached: Attached) {
        let store = &self.backend.store;
        let delivery = DurableDelivery {
            consumer: self.consumer.clone(),
            generation: attached.generation,
            epoch: attached.epoch,
            kick: attached.kick,
            sub: self.to.sub.clone(),
            outbound: self.to.outbound.clone(),
            batch: self.to.batch,
            source: EventSource::new(
                store.feed.clone(),
                store.log.clone(),
                self.from,
                self.consumer.patterns.clone(),
            ),
            state: store.state.clone(),
            log: store.log.clone(),
            gap_told: 0,
        };
        let task = tokio::spawn(delivery.run());
        self.consumer
            .set_task(attached.generation, task.abort_handle());
    }
}

impl Drop for Attaching {
    fn drop(&mut self) {
        if self.attached.is_some() {
            self.consumer.detach(self.to.session, &self.to.sub);
        }
    }
}

impl LogBackend {
    /// Counts a creation of consumer `name` in flight, unless it would pass a limit:
    /// `max_consumers`, or the token's quota over the consumers its names cover. The check
    /// and the count are one step under the lock, so concurrent creations cannot both pass.
    /// Creations in flight count until their consumer exists (counting them after would
    /// refuse a pipelined creation wrongly).
    fn reserve_creation(
        &self,
        name: &str,
        quota: Option<&Quota<'_>>,
    ) -> Result<CreatingConsumer, BackendError> {
        let consumers = &self.store.consumers;
        let mut creating = lock(&self.creating);
        let in_flight: Vec<&String> = creating
            .keys()
            .filter(|n| consumers.get(n).is_none())
            .collect();
        let limit = self.config.max_consumers;
        if consumers.len() + in_flight.len() >= limit {
            return Err(BackendError::LimitExceeded(format!(
                "the broker holds {limit} consumers (max_consumers); cannot create {name:?}"
            )));
        }
        if let Some(quota) = quota {
            let names = consumers.names();
            let covered = names
                .iter()
                .chain(in_flight)
                .filter(|n| (quota.covers)(n))
                .count();
            if covered >= quota.max {
                return Err(BackendError::LimitExceeded(format!(
                    "token {:?} may hold {} consumers (its max_consumers); cannot create {name:?}",
                    quota.owner, quota.max
                )));
            }
        }
        *creating.entry(name.to_owned()).or_default() += 1;
        Ok(CreatingConsumer {
            creating: self.creating.clone(),
            name: name.to_owned(),
        })
    }

    /// Creates the consumer unless it exists with the same topics (then there is nothing to
    /// wait for); other topics are a conflict.
    pub async fn create_consumer(
        &self,
        spec: ConsumerSpec,
        quota: Option<Quota<'_>>,
    ) -> Result<Confirming<()>, BackendError> {
        if let Some(consumer) = self.store.consumers.get(&spec.name) {
            return match consumer.same_patterns(&spec.patterns) {
                true => Ok(confirmed()),
                false => Err(conflict(&consumer, &spec.patterns)),
            };
        }
        let floor = self.floor_for(spec.start).await?;
        let creating = self.reserve_creation(&spec.name, quota.as_ref())?;
        let patterns = spec
            .patterns
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect();
        let record = Record::consumer_created(spec.name, patterns, floor);
        let written = self.write(vec![record]).await?;
        Ok(Box::pin(async move {
            let done = written.await.map(drop);
            drop(creating);
            done
        }))
    }

    /// Attaches a connection to an existing consumer. In exclusive mode it takes the
    /// consumer over: the previous holder is told (`unsubscribed`, `taken_over`) and
    /// everything unsettled goes to the new one.
    pub fn attach(
        &self,
        name: &str,
        patterns: &[Pattern],
        mode: Mode,
        options: DeliveryOptions,
        to: Subscriber,
    ) -> Result<Attaching, BackendError> {
        let Some(consumer) = self.store.consumers.get(name) else {
            return Err(BackendError::NotFound(format!(
                "consumer {name:?} was deleted"
            )));
        };
        if !consumer.same_patterns(patterns) {
            return Err(conflict(&consumer, patterns));
        }
        let mut attached = consumer
            .attach(
                to.session,
                to.sub.clone(),
                to.outbound.clone(),
                mode,
                options,
            )
            .map_err(|ModeConflict(held)| {
                BackendError::Conflict(format!(
                    "consumer {:?} is attached in {} mode; subscribe with the same mode",
                    consumer.name,
                    mode_name(held)
                ))
            })?;
        for old in std::mem::take(&mut attached.replaced) {
            tracing::info!(
                consumer = consumer.name,
                from = old.session,
                to = to.session,
                "consumer taken over"
            );
            old.outbound.unsubscribed(&old.sub, "taken_over");
        }
        let (_, from) = consumer.start();
        Ok(Attaching {
            backend: self.clone(),
            consumer,
            attached: Some(attached),
            to,
            from,
        })
    }

    /// Delivers every matching event from seq `from` on, live, without a consumer.
    pub fn follow(&self, patterns: Vec<Pattern>, from: u64, to: Subscriber) -> Subscription {
        let store = &self.store;
        let source = EventSource::new(store.feed.clone(), store.log.clone(), from, patterns);
        let task = tokio::spawn(run_ephemeral(to.sub, to.outbound, source, to.batch));
        Subscription::Ephemeral(task.abort_handle())
    }
}
