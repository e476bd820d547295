//! Ephemeral subscriptions on the cluster backend: an ordered consumer from the start seq;
//! a subscriber too slow to keep up is told what it lost and goes on after the newest event.

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures_util::StreamExt;
use tokio::time::Instant;
use wharf_protocol::{EventBody, EventFrame, Reply};

use super::{payload_json, unavailable, NatsBackend};
use crate::backend::contract::{BackendError, Subscriber};
use crate::metrics;
use crate::outbound::{Delivered, Frame};

/// The delivery task of an ephemeral subscription.
pub(super) struct Follower {
    pub(super) backend: NatsBackend,
    pub(super) filters: Vec<String>,
    pub(super) to: Subscriber,
}

impl Follower {
    pub(super) async fn messages_from(&self, start: u64) -> Result<pull::Ordered, BackendError> {
        let stream = self.backend.stream().await?;
        let what = "cannot follow the stream";
        // One made by a try whose answer was lost expires unused (ordered consumers are
        // ephemeral).
        let config = pull::OrderedConfig {
            filter_subjects: self.filters.clone(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start,
            },
            ..Default::default()
        };
        let consumer = self
            .backend
            .asked(what, || stream.create_consumer(config.clone()))
            .await?
            .map_err(|e| unavailable(what, e))?;
        consumer
            .messages()
            .await
            .map_err(|e| unavailable("cannot follow the stream", e))
    }

    /// Makes the first ordered consumer (retried until NATS answers: the subscriber was told
    /// `subscribed` already, and an error now would leave it waiting for events that never
    /// come), then delivers.
    pub(super) async fn start(self, from: u64) {
        let messages = self.again_from(from).await;
        self.run(messages, from).await
    }

    /// Delivers until the subscription ends (which aborts this task). An ordered consumer
    /// that reports an error makes itself again; one that ends is made again after the last
    /// event delivered, so a NATS hiccup never silently stops a subscription.
    pub(super) async fn run(self, mut messages: pull::Ordered, from: u64) {
        let mut next = from;
        loop {
            let message = match messages.next().await {
                Some(Ok(message)) => message,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "following the stream: the ordered consumer recovers");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
                None => {
                    messages = self.again_from(next).await;
                    continue;
                }
            };
            let Ok(info) = message.info() else { continue };
            let seq = info.stream_sequence;
            next = seq + 1;
            let time_ms =
                u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
            let topic = self.backend.topic_of(message.subject.as_str()).to_owned();
            let body = EventBody::new(seq, &topic, &payload_json(&message.payload), time_ms);
            let frame = EventFrame {
                sub: &self.to.sub,
                consumer: None,
                body: &body,
                delivery: 1,
            };
            // Messages come one at a time from the ordered consumer: a batch is of one here.
            let json = if self.to.batch > 1 {
                frame.to_json_batched()
            } else {
                frame.to_json()
            };
            match self.to.outbound.deliver(Frame::Json(json)).await {
                Delivered::Sent => metrics::delivered().increment(1),
                Delivered::Closed => return,
                Delivered::TooSlow => match self.skip_from(seq).await {
                    Some((after, more)) => {
                        next = after;
                        messages = more;
                    }
                    None => return,
                },
            }
        }
    }

    /// Tells the subscriber it lost `from..` up to the newest event, once there is room for
    /// the notice, and goes on after that event.
    /// The stream from `next` on, retried until NATS answers.
    async fn again_from(&self, next: u64) -> pull::Ordered {
        loop {
            match self.messages_from(next).await {
                Ok(messages) => return messages,
                Err(e) => {
                    tracing::debug!(error = %e, "following the stream again");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Returns the seq it goes on from, and the stream from there.
    pub(super) async fn skip_from(&self, from: u64) -> Option<(u64, pull::Ordered)> {
        use crate::outbound::Unsent;
        loop {
            let head = self.backend.stream_state().await.ok()?.last_sequence;
            let notice = Reply::Lost {
                sub: self.to.sub.to_string(),
                from,
                to: head,
            };
            let deadline = Instant::now() + self.to.outbound.slow_limit();
            match self
                .to
                .outbound
                .send_by(Frame::reply(&notice), deadline)
                .await
            {
                Ok(()) => return Some((head + 1, self.again_from(head + 1).await)),
                Err(Unsent::Closed) => return None,
                // Still no room: what came meanwhile is skipped too, and one notice tells it.
                Err(Unsent::TimedOut) => continue,
            }
        }
    }
}
