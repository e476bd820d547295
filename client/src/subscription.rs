//! Subscriptions: what to subscribe to ([`Subscribe`]), and what comes of it
//! ([`Subscription`], a stream of [`Incoming`] events and notices).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::{mpsc, oneshot};
use wharf_protocol::{Mode, Pattern, Request, Start, SubscribeOptions};

use crate::link::{Incoming, Spec};
use crate::{Client, Error};

/// A subscription to make: durable (a named consumer that outlives connections) or
/// ephemeral (live, from a point on).
///
/// ```
/// use wharf_client::Subscribe;
/// let durable = Subscribe::durable("billing", ["orders.>"]).max_in_flight(100).auto_ack();
/// let live = Subscribe::ephemeral(["room.lobby"]).presence().join_leave();
/// ```
#[derive(Debug, Clone)]
pub struct Subscribe {
    patterns: Vec<String>,
    consumer: Option<String>,
    start: Option<Start>,
    options: SubscribeOptions,
    presence: bool,
    join_leave: bool,
    auto_ack: bool,
}

impl Subscribe {
    /// A durable consumer `name` over `patterns` (created at the first subscribe).
    ///
    /// ```
    /// let s = wharf_client::Subscribe::durable("billing", ["orders.>", "refunds.>"]);
    /// ```
    pub fn durable<P: Into<String>>(
        name: &str,
        patterns: impl IntoIterator<Item = P>,
    ) -> Subscribe {
        Subscribe {
            consumer: Some(name.to_owned()),
            ..Subscribe::ephemeral(patterns)
        }
    }

    /// A live subscription from now (see [`Subscribe::start`]).
    ///
    /// ```
    /// let s = wharf_client::Subscribe::ephemeral(["prices.*"]);
    /// ```
    pub fn ephemeral<P: Into<String>>(patterns: impl IntoIterator<Item = P>) -> Subscribe {
        Subscribe {
            patterns: patterns.into_iter().map(Into::into).collect(),
            consumer: None,
            start: None,
            options: SubscribeOptions::default(),
            presence: false,
            join_leave: false,
            auto_ack: false,
        }
    }

    /// Where to begin: `all`, `new`, a seq or a time (a durable consumer: only when made).
    ///
    /// ```
    /// use wharf_protocol::Start;
    /// let s = wharf_client::Subscribe::ephemeral(["logs.>"]).start(Start::Seq(120));
    /// ```
    pub fn start(mut self, start: Start) -> Subscribe {
        self.start = Some(start);
        self
    }

    /// Share the consumer with other shared subscribers (each event to one of them).
    ///
    /// ```
    /// let s = wharf_client::Subscribe::durable("workers", ["jobs.>"]).shared();
    /// ```
    pub fn shared(mut self) -> Subscribe {
        self.options.mode = Some(Mode::Shared);
        self
    }

    /// At most `n` delivered and unsettled events at once.
    ///
    /// ```
    /// let s = wharf_client::Subscribe::durable("workers", ["jobs.>"]).max_in_flight(10);
    /// ```
    pub fn max_in_flight(mut self, n: u32) -> Subscribe {
        self.options.max_in_flight = Some(n);
        self
    }

    /// Redeliver what is not settled within `wait`.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let s = wharf_client::Subscribe::durable("w", ["jobs.>"]).ack_wait(Duration::from_secs(5));
    /// ```
    pub fn ack_wait(mut self, wait: Duration) -> Subscribe {
        self.options.ack_wait_ms = Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// Dead-letter an event after `n` deliveries.
    ///
    /// ```
    /// let s = wharf_client::Subscribe::durable("w", ["jobs.>"]).max_deliver(5);
    /// ```
    pub fn max_deliver(mut self, n: u32) -> Subscribe {
        self.options.max_deliver = Some(n);
        self
    }

    /// Every setting of a durable subscription at once, as the protocol has them (mode, ack
    /// wait, max deliver, max in flight): for a caller that has them as [`SubscribeOptions`]
    /// already. They replace what `mode`, `ack_wait`, `max_deliver` and `max_in_flight` set
    /// before; a [`Subscribe::batch`] given before stays unless `options.batch` names one.
    ///
    /// ```
    /// use wharf_protocol::{Mode, SubscribeOptions};
    /// let options = SubscribeOptions { mode: Some(Mode::Exclusive), ..SubscribeOptions::default() };
    /// let s = wharf_client::Subscribe::durable("w", ["jobs.>"]).options(options);
    /// ```
    pub fn options(mut self, options: SubscribeOptions) -> Subscribe {
        // A `batch` given before stays unless these options name one.
        let batch = options.batch.or(self.options.batch);
        self.options = SubscribeOptions { batch, ..options };
        self
    }

    /// Up to `n` events per frame from the broker (1 to 1000), of what is ready when it
    /// sends: a backlog comes in fewer frames, for less work on both sides. The stream
    /// still yields one [`Delivery`](crate::Delivery) at a time.
    ///
    /// ```
    /// let s = wharf_client::Subscribe::durable("billing", ["orders.>"]).batch(256);
    /// ```
    pub fn batch(mut self, n: u32) -> Subscribe {
        self.options.batch = Some(n);
        self
    }

    /// Make this connection's client present in the (exact) topics.
    ///
    /// ```
    /// let s = wharf_client::Subscribe::ephemeral(["room.lobby"]).presence();
    /// ```
    pub fn presence(mut self) -> Subscribe {
        self.presence = true;
        self
    }

    /// Receive joins and leaves in the (exact) topics.
    ///
    /// ```
    /// let s = wharf_client::Subscribe::ephemeral(["room.lobby"]).join_leave();
    /// ```
    pub fn join_leave(mut self) -> Subscribe {
        self.join_leave = true;
        self
    }

    /// Ack each event of a durable subscription when the next one is taken: at least once,
    /// without calling [`Delivery::ack`](crate::Delivery::ack) (the last event taken before the subscription is
    /// dropped is not acked, and comes again).
    ///
    /// ```
    /// let s = wharf_client::Subscribe::durable("audit", ["orders.>"]).auto_ack();
    /// ```
    pub fn auto_ack(mut self) -> Subscribe {
        self.auto_ack = true;
        self
    }

    pub(crate) fn into_spec(self) -> Result<Spec, Error> {
        if self.patterns.is_empty() {
            return Err(Error::Invalid("subscribe to at least one pattern".into()));
        }
        let patterns = self
            .patterns
            .iter()
            .map(|p| Pattern::parse(p).map_err(|e| Error::Invalid(e.0)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Spec {
            patterns,
            consumer: self.consumer,
            start: self.start,
            options: self.options,
            presence: self.presence,
            join_leave: self.join_leave,
            auto_ack: self.auto_ack,
        })
    }
}

/// Events and notices of one subscription, in the order the broker sent them; resubscribed
/// after every reconnect. Dropping it unsubscribes.
pub struct Subscription {
    client: Client,
    local: u64,
    start_seq: Option<u64>,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    auto_ack: bool,
    /// Auto-ack: the last event handed out, acked when the next is taken.
    unacked: Option<(String, u64)>,
    /// Unsubscribed already (by [`Subscription::unsubscribe`]).
    ended: bool,
}

impl Subscription {
    pub(crate) fn new(
        client: Client,
        local: u64,
        start_seq: Option<u64>,
        incoming: mpsc::UnboundedReceiver<Incoming>,
        auto_ack: bool,
    ) -> Subscription {
        Subscription {
            client,
            local,
            start_seq,
            incoming,
            auto_ack,
            unacked: None,
            ended: false,
        }
    }

    /// Ends the subscription and waits until the broker has (dropping it ends it too,
    /// without waiting). A durable consumer stays, with what it settled; what was delivered
    /// and not settled is delivered again to its next subscriber.
    ///
    /// ```no_run
    /// # async fn demo(s: wharf_client::Subscription) -> Result<(), wharf_client::Error> {
    /// s.unsubscribe().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn unsubscribe(mut self) -> Result<(), Error> {
        self.ended = true;
        let (reply, answer) = oneshot::channel();
        self.client.unsubscribe(self.local, Some(reply));
        match answer.await {
            // A connection that dropped took the subscription with it.
            Err(_) | Ok(Err(Error::Closed | Error::Disconnected(_))) | Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e),
        }
    }

    /// The first seq the subscription could deliver when it was made.
    ///
    /// ```no_run
    /// # fn demo(s: wharf_client::Subscription) {
    /// println!("from seq {:?}", s.start_seq());
    /// # }
    /// ```
    pub fn start_seq(&self) -> Option<u64> {
        self.start_seq
    }

    fn ack_taken(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if let Some((consumer, seq)) = self.unacked.take() {
            let client = self.client.clone();
            runtime.spawn(async move {
                // Not acked now means delivered again: at least once either way.
                let _redelivered_if_lost = client
                    .settle(Request::Ack {
                        id: None,
                        consumer,
                        seqs: vec![seq],
                    })
                    .await;
            });
        }
    }
}

impl Stream for Subscription {
    type Item = Incoming;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Incoming>> {
        let polled = self.incoming.poll_recv(cx);
        if let Poll::Ready(item) = &polled {
            if self.auto_ack {
                self.ack_taken();
                if let Some(Incoming::Event(d)) = item {
                    self.unacked = d.consumer.clone().map(|c| (c, d.seq));
                }
            }
        }
        polled
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // The event in hand is not acked: the loop may have ended because it failed on it.
        if !self.ended {
            self.client.unsubscribe(self.local, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_given_after_batch_keep_it_unless_they_name_one() {
        let kept = Subscribe::durable("c", ["a.>"])
            .batch(8)
            .options(SubscribeOptions::default());
        assert_eq!(kept.into_spec().ok().and_then(|s| s.options.batch), Some(8));
        let named = SubscribeOptions {
            batch: Some(2),
            ..SubscribeOptions::default()
        };
        let replaced = Subscribe::durable("c", ["a.>"]).batch(8).options(named);
        assert_eq!(
            replaced.into_spec().ok().and_then(|s| s.options.batch),
            Some(2)
        );
    }
}
