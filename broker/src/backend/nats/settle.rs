//! Settling on the cluster backend. JetStream acks a message through the reply subject it
//! came with, so a seq is settled through the message this node has in flight for it: acks
//! go to the node that delivered the event (the connection that received it).

use async_nats::jetstream::AckKind;
use wharf_protocol::Start;

use super::local::lock;
use super::local::InFlight;
use super::{durable, unavailable, NatsBackend};
use crate::backend::contract::{BackendError, Confirming, Settlement};
use crate::metrics;

/// Sends an ack (or term) and waits for JetStream to say it stored it. A request, not
/// async-nats's double ack, which counts any reply as success, a 503 "no responders" (a
/// consumer leader election, a deleted consumer) included. Sent again when the answer is
/// lost (an ack is safe to repeat).
async fn stored_ack(
    backend: &NatsBackend,
    message: &async_nats::jetstream::Message,
    kind: AckKind,
) -> Result<(), BackendError> {
    let Some(reply) = message.reply.clone() else {
        return Err(BackendError::failed(
            "a delivered message without a reply subject",
        ));
    };
    let payload: bytes::Bytes = kind.into();
    let what = "JetStream did not store the ack";
    let client = &backend.inner.client;
    // Each try may wait as long as the whole (the client's own request timeout is 10 s).
    let request = || {
        let request = async_nats::Request::new()
            .payload(payload.clone())
            .timeout(Some(backend.settings().publish_timeout));
        client.send_request(reply.clone(), request)
    };
    match backend.asked(what, request).await? {
        Ok(answer) if answer.status.is_none_or(|s| s.is_success()) => Ok(()),
        Ok(answer) => Err(unavailable(what, answer.status.map_or(0, |s| s.as_u16()))),
        Err(e) => Err(unavailable(what, e)),
    }
}

impl NatsBackend {
    /// Takes the in-flight messages of `seqs`, or says which one is not in flight here.
    fn take_in_flight(&self, name: &str, seqs: &[u64]) -> Result<Vec<InFlight>, BackendError> {
        let not_in_flight = |seq: u64| {
            BackendError::NotFound(format!(
                "seq {seq} is not in flight for consumer {name:?} on this node"
            ))
        };
        let Some(local) = self.local_of(name) else {
            return Err(seqs.first().map_or_else(
                || BackendError::NotFound(format!("no consumer named {name:?} on this node")),
                |&s| not_in_flight(s),
            ));
        };
        let mut in_flight = lock(&local.in_flight);
        if let Some(&missing) = seqs.iter().find(|s| !in_flight.contains_key(s)) {
            return Err(not_in_flight(missing));
        }
        let taken = seqs.iter().filter_map(|s| in_flight.remove(s)).collect();
        drop(in_flight);
        local.kick.notify_waiters();
        Ok(taken)
    }

    /// Acks (or terms) seqs this node delivered; confirmed once JetStream has stored the
    /// ack (a double ack).
    pub async fn settle(
        &self,
        name: &str,
        seqs: Vec<u64>,
        how: Settlement,
    ) -> Result<Confirming<()>, BackendError> {
        self.check_ready()?;
        let taken = self.take_in_flight(name, &seqs)?;
        let local = self.local_of(name);
        let backend = self.clone();
        Ok(Box::pin(async move {
            let kind = match how {
                Settlement::Ack => AckKind::Ack,
                Settlement::Term => AckKind::Term,
            };
            // Sent together, then every answer awaited: one round trip for a frame's acks.
            let answers = futures_util::future::join_all(
                taken.iter().map(|f| stored_ack(&backend, &f.message, kind)),
            )
            .await;
            let mut settled = 0u64;
            let mut failed = Vec::new();
            let mut why = None;
            for (f, answer) in taken.into_iter().zip(answers) {
                match answer {
                    Ok(()) => settled += 1,
                    Err(e) => {
                        why.get_or_insert(e);
                        failed.push(f);
                    }
                }
            }
            if let Some(why) = why {
                // Not settled: still in flight here, for the client's retry.
                if let Some(local) = &local {
                    local.restore(failed);
                }
                return Err(why);
            }
            let counter = match how {
                Settlement::Ack => metrics::acked(),
                Settlement::Term => metrics::terminated(),
            };
            counter.increment(settled);
            if let Some(local) = &local {
                let mut unsent = lock(&local.unsent);
                for seq in &seqs {
                    unsent.remove(seq);
                }
                drop(unsent);
                if how == Settlement::Term {
                    local
                        .terminated
                        .fetch_add(settled, std::sync::atomic::Ordering::Relaxed);
                }
            }
            Ok(())
        }))
    }

    /// nack (`delay` given) or progress (`delay` None: the subscriber's ack wait starts over).
    pub async fn touch(
        &self,
        name: &str,
        seqs: &[u64],
        delay: Option<std::time::Duration>,
    ) -> Result<(), BackendError> {
        self.check_ready()?;
        if let Some(delay) = delay {
            ::metrics::counter!(metrics::NACKED).increment(seqs.len() as u64);
            let delay = (!delay.is_zero()).then_some(delay);
            let mut taken = self.take_in_flight(name, seqs)?.into_iter();
            while let Some(f) = taken.next() {
                if let Err(e) = f.message.ack_with(AckKind::Nak(delay)).await {
                    if let Some(local) = self.local_of(name) {
                        local.restore(std::iter::once(f).chain(taken));
                    }
                    return Err(unavailable("cannot nak", e));
                }
            }
            return Ok(());
        }
        let local = self.local_of(name).ok_or_else(|| {
            BackendError::NotFound(format!("no consumer named {name:?} on this node"))
        })?;
        let extend = {
            let mut in_flight = lock(&local.in_flight);
            if let Some(&missing) = seqs.iter().find(|s| !in_flight.contains_key(s)) {
                return Err(BackendError::NotFound(format!(
                    "seq {missing} is not in flight for consumer {name:?} on this node"
                )));
            }
            let now = tokio::time::Instant::now();
            let mut extend = Vec::with_capacity(seqs.len());
            for s in seqs {
                if let Some(f) = in_flight.get_mut(s) {
                    // The subscriber's ack wait starts over.
                    f.due = now + f.ack_wait;
                    f.extended = now;
                    extend.push(f.message.clone());
                }
            }
            extend
        };
        for m in extend {
            m.ack_with(AckKind::Progress)
                .await
                .map_err(|e| unavailable("cannot extend the ack wait", e))?;
        }
        Ok(())
    }

    /// Moves the consumer: JetStream consumers cannot be moved, so it is made again from
    /// `start` with the same name and topics; this node's subscribers start over from there.
    pub async fn seek(&self, name: &str, start: Start) -> Result<Confirming<()>, BackendError> {
        let Some(patterns) = self.consumer_patterns(name).await? else {
            return Err(BackendError::NotFound(format!(
                "no consumer named {name:?}"
            )));
        };
        // Resolved before the consumer goes: a failure here leaves it as it was.
        let first = self.resolve_start(start).await?;
        let stream = self.stream().await?;
        stream
            .delete_consumer(&durable(name))
            .await
            .map_err(|e| unavailable("cannot move the consumer", e))?;
        if let Some(local) = self.local_of(name) {
            lock(&local.in_flight).clear();
            local.kick.notify_waiters();
        }
        // The deletion reaches every replica of the consumer in its own time: making it
        // again may first find the old one still there, so it is tried a few times.
        let mut tries = 0;
        loop {
            match self.make_consumer(name, &patterns, first).await {
                Ok(()) if self.consumer_floor(name).await == Some(first - 1) => break,
                Ok(()) | Err(_) if tries < 10 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Ok(()) => break,
                Err(e) => {
                    tracing::error!(consumer = name, error = %e, "a seek deleted the consumer and could not make it again");
                    return Err(e);
                }
            }
        }
        Ok(crate::backend::contract::confirmed())
    }

    pub async fn delete_consumer(&self, name: &str) -> Result<Confirming<()>, BackendError> {
        if self.consumer_patterns(name).await?.is_none() {
            return Err(BackendError::NotFound(format!(
                "no consumer named {name:?}"
            )));
        }
        let stream = self.stream().await?;
        stream
            .delete_consumer(&durable(name))
            .await
            .map_err(|e| unavailable("cannot delete the consumer", e))?;
        if let Some(local) = lock(&self.inner.local).remove(name) {
            local.detach_all_with(Some("deleted"));
        }
        Ok(crate::backend::contract::confirmed())
    }
}
