//! Raw JetStream R3 through async-nats: the yardstick of the wharf nodes. The stream is the
//! one a wharf node makes (`broker/src/backend/nats/stream.rs`: file storage, 3 replicas,
//! limits retention, a 2-minute duplicate window — wharf's default `dedup_window` — atomic
//! publish allowed), every publish carries a `Nats-Msg-Id` of the form a wharf node gives
//! one without a client msg_id, and the durable consumers have a wharf consumer's settings
//! (explicit acks, a 10 s ack wait — `nats.lease` — 100,000 acks pending at most).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;

use crate::cluster::{Probe, PREFIX, STREAM};
use crate::figure::{across_connections, ms_since, now_ms, payload, timed_payload};
use crate::nats::{confirm_acks, receive_latencies};
use crate::{Load, Measured};

const STALL: Duration = Duration::from_secs(60);

async fn client(urls: &[String]) -> anyhow::Result<async_nats::Client> {
    let addrs = urls
        .iter()
        .map(|u| u.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()?;
    async_nats::ConnectOptions::new()
        .connect(addrs)
        .await
        .context("cannot connect to the NATS cluster")
}

/// A JetStream context that waits for an ack as long as a wharf node does
/// (`nats.publish_timeout`, 30 s in the bench's wharf config).
async fn context(urls: &[String]) -> anyhow::Result<jetstream::Context> {
    Ok(jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(30))
        .build(client(urls).await?))
}

/// The stream a wharf node would make.
pub async fn make_stream(js: &jetstream::Context) -> anyhow::Result<stream::Stream> {
    let stream = create_stream(js).await?;
    // A stream just made on three servers takes publishes once its replicas elected a
    // leader and the servers learnt of it; until then a publish finds "no responders". A
    // probe (on a subject no scenario reads) is stored once that is over.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let why = match js.publish(format!("{PREFIX}.probe"), "{}".into()).await {
            Ok(ack) => match ack.await {
                Ok(_) => return Ok(stream),
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        if Instant::now() >= until {
            bail!("stream {STREAM} takes no publish after 30 s: {why}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `ask`'s answer, asked again until the cluster gives one (5 s a try, 60 s in all): a
/// 3-node cluster whose nodes all say healthy may not have elected its meta leader yet, and
/// a request sent then goes unanswered (CI saw "jetstream request timed out" on a fresh
/// cluster, making the stream and finding it).
async fn answered<T, E, F>(what: &str, mut ask: impl FnMut() -> F) -> anyhow::Result<T>
where
    E: std::fmt::Display,
    F: std::future::Future<Output = Result<T, E>>,
{
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let why = match tokio::time::timeout(Duration::from_secs(5), ask()).await {
            Ok(Ok(answer)) => return Ok(answer),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "no answer in 5 s".to_owned(),
        };
        if Instant::now() >= until {
            bail!("{what} within 60 s: {why}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Makes the stream (or finds it made).
async fn create_stream(js: &jetstream::Context) -> anyhow::Result<stream::Stream> {
    let config = stream::Config {
        name: STREAM.to_owned(),
        subjects: vec![format!("{PREFIX}.>")],
        storage: stream::StorageType::File,
        num_replicas: 3,
        retention: stream::RetentionPolicy::Limits,
        duplicate_window: Duration::from_secs(120),
        allow_atomic_publish: true,
        ..Default::default()
    };
    answered(&format!("cannot create stream {STREAM}"), || {
        js.get_or_create_stream(config.clone())
    })
    .await
}

/// A durable consumer with a wharf consumer's settings.
async fn make_consumer(
    stream: &stream::Stream,
    name: &str,
    subject: &str,
) -> anyhow::Result<consumer::PullConsumer> {
    let config = consumer::pull::Config {
        durable_name: Some(name.to_owned()),
        filter_subjects: vec![subject.to_owned()],
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(10),
        max_deliver: -1,
        max_ack_pending: 100_000,
        deliver_policy: consumer::DeliverPolicy::New,
        ..Default::default()
    };
    // Asked again with the same config, a durable consumer made by a try whose answer was
    // lost is found made.
    let mut consumer = answered(&format!("cannot create consumer {name}"), || {
        stream.create_consumer(config.clone())
    })
    .await?;
    // Like a new stream, a new R3 consumer answers pulls once its replicas elected a leader.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let why = match consumer.info().await {
            Ok(info) if info.cluster.as_ref().is_some_and(|c| c.leader.is_some()) => {
                return Ok(consumer);
            }
            Ok(_) => "no leader yet".to_owned(),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= until {
            bail!("consumer {name} is not ready after 30 s: {why}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends a message again (same `Nats-Msg-Id`) until JetStream confirms it, for up to 30 s.
async fn stored_again(
    js: &jetstream::Context,
    subject: &str,
    id: &str,
    body: Vec<u8>,
    first_error: String,
) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    let mut why = first_error;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        match send(js, subject, id, body.clone()).await {
            Ok(ack) => match ack.await {
                Ok(_) => return Ok(()),
                Err(e) => why = e.to_string(),
            },
            Err(e) => why = e.to_string(),
        }
    }
    bail!("publish {id} not stored after 30 s: {why}")
}

/// What a wharf node sends: the message with its own `Nats-Msg-Id`.
async fn send(
    js: &jetstream::Context,
    subject: &str,
    id: &str,
    body: Vec<u8>,
) -> anyhow::Result<jetstream::context::PublishAckFuture> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
    js.publish_with_headers(subject.to_owned(), headers, body.into())
        .await
        .map_err(|e| anyhow!("publish failed: {e}"))
}

/// An id like a wharf node's (`wharf-<16 hex>-<n>`), unique to this publisher.
fn node_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(now_ms().to_bits().into());
    format!("{:016x}", h.finish())
}

/// `events` publishes over `load.connections` clients, `load.in_flight` acks outstanding
/// each; returns the publish→ack latencies.
async fn publish_all(
    urls: &[String],
    subject: &str,
    load: &Load,
    events: u64,
) -> anyhow::Result<Vec<f64>> {
    across_connections(load, events, |per| {
        let (urls, subject, size, window) =
            (urls.to_vec(), subject.to_owned(), load.size, load.in_flight);
        async move {
            let js = context(&urls).await?;
            let node = node_id();
            let mut pending = VecDeque::with_capacity(window);
            let mut latencies = Vec::with_capacity(per as usize);
            let confirm = |i: u64, ack: jetstream::context::PublishAckFuture| {
                let (js, subject, id) = (js.clone(), subject.clone(), format!("raw-{node}-{i}"));
                async move {
                    if let Err(e) = ack.await {
                        // A connection to a server that has not learnt of the new stream yet
                        // gets "no responders" at once: sent again with its id, it is
                        // stored once (as a wharf node does through a leader change).
                        stored_again(&js, &subject, &id, payload(size, i), e.to_string()).await?;
                    }
                    Ok::<_, anyhow::Error>(())
                }
            };
            for i in 0..per {
                if pending.len() >= window {
                    let (at, n, ack): (Instant, u64, jetstream::context::PublishAckFuture) =
                        pending.pop_front().ok_or_else(|| anyhow!("empty window"))?;
                    confirm(n, ack).await?;
                    latencies.push(ms_since(at));
                }
                let id = format!("raw-{node}-{i}");
                let ack = send(&js, &subject, &id, payload(size, i)).await?;
                pending.push_back((Instant::now(), i, ack));
            }
            for (at, n, ack) in pending {
                confirm(n, ack).await?;
                latencies.push(ms_since(at));
            }
            Ok(latencies)
        }
    })
    .await
}

pub async fn publish(urls: &[String], load: &Load, probe: &Probe) -> anyhow::Result<Measured> {
    make_stream(&context(urls).await?).await?;
    probe.begin();
    let started = Instant::now();
    let latencies = publish_all(urls, &format!("{PREFIX}.pub.x"), load, load.events).await?;
    Ok(Measured {
        rate: latencies.len() as f64 / started.elapsed().as_secs_f64(),
        units: latencies.len() as u64,
        latencies,
    })
}

/// A durable consumer made before the backlog reads it all, pulling 1,000 at a time. Each
/// message is acked (explicit acks, as a wharf node does); every `ack_batch`-th ack is a
/// double ack, waited for, as a wharf client is told `ok` once per ack frame. With
/// `acked`, every ack is a request JetStream answers once it stored the ack (what a wharf
/// node sends before its `ok`), up to `ack_batch` of them outstanding.
pub async fn replay(
    urls: &[String],
    load: &Load,
    probe: &Probe,
    acked: bool,
) -> anyhow::Result<Measured> {
    let nats = client(urls).await?;
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(30))
        .build(nats.clone());
    let stream = make_stream(&js).await?;
    let subject = format!("{PREFIX}.rep.x");
    let consumer = make_consumer(&stream, "replay", &subject).await?;
    publish_all(urls, &subject, load, load.backlog).await?;
    probe.begin();
    let started = Instant::now();
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(1000)
        .messages()
        .await?;
    let mut got = 0u64;
    let mut confirming = futures_util::stream::FuturesUnordered::new();
    while got < load.backlog {
        let msg = match tokio::time::timeout(STALL, messages.next()).await {
            Ok(Some(m)) => m.map_err(|e| anyhow!("{e}"))?,
            _ => bail!("JetStream replay stalled after {got} events"),
        };
        got += 1;
        if acked {
            if confirming.len() >= load.ack_batch {
                if let Some(done) = confirming.next().await {
                    done?;
                }
            }
            confirming.push(stored_ack(nats.clone(), msg));
        } else if got.is_multiple_of(load.ack_batch as u64) || got == load.backlog {
            msg.double_ack().await.map_err(|e| anyhow!("{e}"))?;
        } else {
            msg.ack().await.map_err(|e| anyhow!("{e}"))?;
        }
    }
    while let Some(done) = confirming.next().await {
        done?;
    }
    Ok(Measured {
        rate: got as f64 / started.elapsed().as_secs_f64(),
        units: got,
        latencies: Vec::new(),
    })
}

/// An ack JetStream confirms it stored, as a wharf node sends one (`settle.rs`): a request
/// to the message's reply subject, whose answer must not be an error status.
async fn stored_ack(nats: async_nats::Client, msg: jetstream::Message) -> anyhow::Result<()> {
    let reply = msg
        .reply
        .clone()
        .ok_or_else(|| anyhow!("a message without a reply subject"))?;
    let answer = nats
        .request(reply, "+ACK".into())
        .await
        .map_err(|e| anyhow!("ack not stored: {e}"))?;
    match answer.status {
        Some(s) if !s.is_success() => bail!("ack not stored: status {s}"),
        _ => Ok(()),
    }
}

/// Publishes at `load.rate` (each publish confirmed) while a durable consumer acks each
/// message; latency is publish call → message read.
pub async fn latency(urls: &[String], load: &Load, probe: &Probe) -> anyhow::Result<Measured> {
    let js = context(urls).await?;
    let stream = make_stream(&js).await?;
    let subject = format!("{PREFIX}.lat.x");
    let consumer = make_consumer(&stream, "lat", &subject).await?;
    let events = load.latency_events;
    let receiver = receive_latencies(consumer, events);
    let (acks, confirmer) = confirm_acks();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / load.rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let node = node_id();
    probe.begin();
    for i in 0..events {
        tick.tick().await;
        let id = format!("raw-{node}-{i}");
        let ack = send(&js, &subject, &id, timed_payload(load.size)).await?;
        let _confirmer_gone_means_error_below = acks.send(ack);
    }
    drop(acks);
    let latencies = receiver.await??;
    confirmer.await??;
    Ok(Measured {
        rate: load.rate as f64,
        units: latencies.len() as u64,
        latencies,
    })
}

/// `load.subscribers` clients, each with an ordered consumer from the next message (what a
/// wharf node makes for a live subscription), while one client publishes
/// `fanout_events` with `in_flight` acks outstanding. Deliveries per second until every
/// subscriber has every event.
pub async fn fanout(urls: &[String], load: &Load, probe: &Probe) -> anyhow::Result<Measured> {
    let events = load.fanout_events;
    let js = context(urls).await?;
    make_stream(&js).await?;
    let subject = format!("{PREFIX}.fan.x");
    let ready = std::sync::Arc::new(tokio::sync::Barrier::new(load.subscribers as usize + 1));
    let mut tasks = Vec::new();
    for _ in 0..load.subscribers {
        let (urls, subject, ready) = (urls.to_vec(), subject.clone(), ready.clone());
        tasks.push(tokio::spawn(async move {
            // Each subscriber on a connection of its own, as each of wharf's is.
            let subscribed = async {
                let own = jetstream::new(client(&urls).await?);
                let stream = answered(&format!("cannot find stream {STREAM}"), || {
                    own.get_stream(STREAM)
                })
                .await?;
                let config = consumer::pull::OrderedConfig {
                    filter_subject: subject,
                    deliver_policy: consumer::DeliverPolicy::New,
                    ..Default::default()
                };
                let consumer = answered("cannot create an ordered consumer", || {
                    stream.create_consumer(config.clone())
                })
                .await?;
                let messages = consumer.messages().await?;
                Ok::<_, anyhow::Error>((own, messages))
            }
            .await;
            ready.wait().await;
            let (_own, mut messages) = subscribed?;
            let mut got = 0;
            while got < events {
                match tokio::time::timeout(STALL, messages.next()).await {
                    Ok(Some(Ok(_))) => got += 1,
                    _ => bail!("a JetStream subscriber stalled after {got} events"),
                }
            }
            Ok::<_, anyhow::Error>(Instant::now())
        }));
    }
    ready.wait().await;
    let node = node_id();
    probe.begin();
    let started = Instant::now();
    let mut pending = VecDeque::with_capacity(load.in_flight);
    for i in 0..events {
        if pending.len() >= load.in_flight {
            if let Some(ack) = pending.pop_front() {
                let ack: jetstream::context::PublishAckFuture = ack;
                ack.await?;
            }
        }
        let id = format!("raw-{node}-{i}");
        pending.push_back(send(&js, &subject, &id, payload(load.size, i)).await?);
    }
    for ack in pending {
        ack.await?;
    }
    let mut last = started;
    for t in tasks {
        last = last.max(t.await??);
    }
    let deliveries = events * load.subscribers;
    Ok(Measured {
        rate: deliveries as f64 / (last - started).as_secs_f64().max(1e-9),
        units: deliveries,
        latencies: Vec::new(),
    })
}
