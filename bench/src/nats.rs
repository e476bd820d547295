//! NATS JetStream (file store) scenarios, with the official async-nats client.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;

use crate::cluster::Probe;
use crate::figure::{across_connections, ms_since, now_ms, payload, sent_ms, timed_payload};
use crate::Load;

const STALL: Duration = Duration::from_secs(60);

async fn context(addr: &str) -> anyhow::Result<jetstream::Context> {
    let client = async_nats::connect(addr).await?;
    Ok(jetstream::new(client))
}

async fn make_stream(js: &jetstream::Context, name: &str) -> anyhow::Result<stream::Stream> {
    js.get_or_create_stream(stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{name}.>")],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow!("cannot create stream {name}: {e}"))
}

/// `events` JetStream publishes over `load.connections` clients, `load.in_flight` acks
/// outstanding each; returns the publish→ack latencies.
pub async fn publish_all(
    addr: &str,
    subject: &str,
    load: &Load,
    events: u64,
) -> anyhow::Result<Vec<f64>> {
    across_connections(load, events, |per| {
        let (addr, subject, size, window) = (
            addr.to_owned(),
            subject.to_owned(),
            load.size,
            load.in_flight,
        );
        async move {
            let js = context(&addr).await?;
            let mut pending = VecDeque::with_capacity(window);
            let mut latencies = Vec::with_capacity(per as usize);
            for i in 0..per {
                if pending.len() >= window {
                    let (at, ack): (Instant, jetstream::context::PublishAckFuture) =
                        pending.pop_front().ok_or_else(|| anyhow!("empty window"))?;
                    ack.await?;
                    latencies.push(ms_since(at));
                }
                let ack = js.publish(subject.clone(), payload(size, i).into()).await?;
                pending.push_back((Instant::now(), ack));
            }
            for (at, ack) in pending {
                ack.await?;
                latencies.push(ms_since(at));
            }
            Ok(latencies)
        }
    })
    .await
}

pub async fn publish(addr: &str, load: &Load) -> anyhow::Result<(f64, Vec<f64>)> {
    make_stream(&context(addr).await?, "pub").await?;
    let started = Instant::now();
    let latencies = publish_all(addr, "pub.x", load, load.events).await?;
    Ok((
        latencies.len() as f64 / started.elapsed().as_secs_f64(),
        latencies,
    ))
}

/// A durable pull consumer (AckPolicy::All) made before the backlog, then reading it all and
/// acking every `ack_batch`-th message (which acks everything before it).
pub async fn replay(addr: &str, load: &Load, probe: &Probe) -> anyhow::Result<f64> {
    let js = context(addr).await?;
    let stream = make_stream(&js, "rep").await?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("replay".into()),
            ack_policy: consumer::AckPolicy::All,
            max_ack_pending: 100_000,
            ..Default::default()
        })
        .await?;
    publish_all(addr, "rep.x", load, load.backlog).await?;
    probe.begin();
    let started = Instant::now();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(1000)
        .messages()
        .await?;
    let mut got = 0u64;
    while got < load.backlog {
        let msg = match tokio::time::timeout(STALL, messages.next()).await {
            Ok(Some(m)) => m.map_err(|e| anyhow!("{e}"))?,
            _ => bail!("NATS replay stalled after {got} events"),
        };
        got += 1;
        if got.is_multiple_of(load.ack_batch as u64) || got == load.backlog {
            msg.ack().await.map_err(|e| anyhow!("{e}"))?;
        }
    }
    Ok(got as f64 / started.elapsed().as_secs_f64())
}

/// Publishes at `load.rate` while a durable pull consumer acks each message; latency is
/// publish call → message read.
pub async fn latency(addr: &str, load: &Load) -> anyhow::Result<Vec<f64>> {
    let js = context(addr).await?;
    let stream = make_stream(&js, "lat").await?;
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("lat".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await?;
    let events = load.latency_events;
    let receiver = receive_latencies(consumer, events);
    let (acks, confirmer) = confirm_acks();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / load.rate as f64));
    for _ in 0..events {
        tick.tick().await;
        let ack = js.publish("lat.x", timed_payload(load.size).into()).await?;
        let _confirmer_gone_means_error_below = acks.send(ack);
    }
    drop(acks);
    let latencies = receiver.await??;
    confirmer.await??;
    Ok(latencies)
}

/// The receiving end of a latency run: each of `events` messages' age when it arrives (its
/// payload carries the send time), acked.
pub fn receive_latencies(
    consumer: consumer::PullConsumer,
    events: u64,
) -> tokio::task::JoinHandle<anyhow::Result<Vec<f64>>> {
    tokio::spawn(async move {
        let mut messages = consumer.messages().await?;
        let mut latencies = Vec::with_capacity(events as usize);
        while (latencies.len() as u64) < events {
            let msg = match tokio::time::timeout(STALL, messages.next()).await {
                Ok(Some(m)) => m.map_err(|e| anyhow!("{e}"))?,
                _ => bail!("the JetStream subscriber stalled"),
            };
            latencies.push(now_ms() - sent_ms(&msg.payload));
            msg.ack().await.map_err(|e| anyhow!("{e}"))?;
        }
        Ok(latencies)
    })
}

/// A task that awaits the publish acks sent to it, in order; its error is the first failed.
pub fn confirm_acks() -> (
    tokio::sync::mpsc::UnboundedSender<jetstream::context::PublishAckFuture>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let (acks, mut ack_rx) =
        tokio::sync::mpsc::unbounded_channel::<jetstream::context::PublishAckFuture>();
    let confirmer = tokio::spawn(async move {
        while let Some(ack) = ack_rx.recv().await {
            ack.await?;
        }
        Ok(())
    });
    (acks, confirmer)
}

/// Core NATS (not durable): `load.subscribers` clients subscribe, one publishes.
pub async fn fanout(addr: &str, load: &Load, probe: &Probe) -> anyhow::Result<f64> {
    let events = load.fanout_events;
    let mut subs = Vec::new();
    for _ in 0..load.subscribers {
        let client = async_nats::connect(addr).await?;
        let sub = client.subscribe("fan").await?;
        client.flush().await?;
        subs.push((client, sub));
    }
    let mut tasks = Vec::new();
    for (client, mut sub) in subs {
        tasks.push(tokio::spawn(async move {
            let _keep = client;
            let mut got = 0;
            while got < events {
                match tokio::time::timeout(STALL, sub.next()).await {
                    Ok(Some(_)) => got += 1,
                    _ => bail!("a NATS subscriber stalled after {got} events"),
                }
            }
            Ok::<_, anyhow::Error>(Instant::now())
        }));
    }
    let publisher = async_nats::connect(addr).await?;
    // The subscribers are set up: what follows is measured (as wharf bench does).
    probe.begin();
    let started = Instant::now();
    for i in 0..events {
        publisher
            .publish("fan", payload(load.size, i).into())
            .await?;
        if (i + 1).is_multiple_of(load.in_flight as u64) {
            publisher.flush().await?;
        }
    }
    publisher.flush().await?;
    let mut last = started;
    for t in tasks {
        last = last.max(t.await??);
    }
    Ok((events * load.subscribers) as f64 / (last - started).as_secs_f64())
}
