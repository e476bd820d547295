//! Redis Streams (AOF, appendfsync always) and Redis pub/sub scenarios, with the redis crate.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Value};

use crate::cluster::Probe;
use crate::figure::{across_connections, ms_since, now_ms, payload, sent_ms, timed_payload};
use crate::Load;

async fn connection(url: &str) -> anyhow::Result<MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    // The default 500 ms response timeout would fail deep pipelines behind fsyncs.
    let config = AsyncConnectionConfig::new().set_response_timeout(None);
    Ok(client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

/// `events` XADDs over `load.connections` connections, `load.in_flight` outstanding each.
pub async fn publish_all(
    url: &str,
    key: &str,
    load: &Load,
    events: u64,
) -> anyhow::Result<Vec<f64>> {
    across_connections(load, events, |per| {
        let (url, key, size, window) = (url.to_owned(), key.to_owned(), load.size, load.in_flight);
        async move {
            let conn = connection(&url).await?;
            let mut pending = FuturesOrdered::new();
            let mut latencies = Vec::with_capacity(per as usize);
            for i in 0..per {
                if pending.len() >= window {
                    if let Some(r) = pending.next().await {
                        latencies.push(r?);
                    }
                }
                let (mut conn, key) = (conn.clone(), key.clone());
                pending.push_back(async move {
                    let at = Instant::now();
                    redis::cmd("XADD")
                        .arg(&key)
                        .arg("*")
                        .arg("p")
                        .arg(payload(size, i))
                        .query_async::<String>(&mut conn)
                        .await?;
                    Ok::<_, anyhow::Error>(ms_since(at))
                });
            }
            while let Some(r) = pending.next().await {
                latencies.push(r?);
            }
            Ok(latencies)
        }
    })
    .await
}

pub async fn publish(url: &str, load: &Load) -> anyhow::Result<(f64, Vec<f64>)> {
    let started = Instant::now();
    let latencies = publish_all(url, "pub", load, load.events).await?;
    Ok((
        latencies.len() as f64 / started.elapsed().as_secs_f64(),
        latencies,
    ))
}

/// The (id, payload) entries of an XREADGROUP reply.
fn entries(reply: Value) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let Value::Array(streams) = reply else {
        return Ok(out);
    };
    for s in streams {
        let Value::Array(mut parts) = s else {
            bail!("odd XREADGROUP reply")
        };
        let Some(Value::Array(items)) = parts.pop() else {
            bail!("odd XREADGROUP reply")
        };
        for item in items {
            let Value::Array(mut pair) = item else {
                bail!("odd stream entry")
            };
            let fields = pair.pop();
            let id = pair.pop();
            let (Some(Value::BulkString(id)), Some(Value::Array(mut fields))) = (id, fields) else {
                bail!("odd stream entry")
            };
            let body = match fields.pop() {
                Some(Value::BulkString(b)) => b,
                _ => Vec::new(),
            };
            out.push((String::from_utf8_lossy(&id).into_owned(), body));
        }
    }
    Ok(out)
}

async fn read_group(
    conn: &mut MultiplexedConnection,
    key: &str,
    count: usize,
    block_ms: Option<u64>,
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP").arg("g").arg("c").arg("COUNT").arg(count);
    if let Some(ms) = block_ms {
        cmd.arg("BLOCK").arg(ms);
    }
    cmd.arg("STREAMS").arg(key).arg(">");
    entries(cmd.query_async(conn).await?)
}

async fn ack(conn: &mut MultiplexedConnection, key: &str, ids: &[String]) -> anyhow::Result<()> {
    redis::cmd("XACK")
        .arg(key)
        .arg("g")
        .arg(ids)
        .query_async::<u64>(conn)
        .await?;
    Ok(())
}

async fn make_group(conn: &mut MultiplexedConnection, key: &str) -> anyhow::Result<()> {
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg("g")
        .arg("$")
        .arg("MKSTREAM")
        .query_async::<()>(conn)
        .await?;
    Ok(())
}

/// A consumer group made before the backlog; XREADGROUP 1000 at a time, XACK in batches.
pub async fn replay(url: &str, load: &Load, probe: &Probe) -> anyhow::Result<f64> {
    let mut conn = connection(url).await?;
    make_group(&mut conn, "rep").await?;
    publish_all(url, "rep", load, load.backlog).await?;
    probe.begin();
    let started = Instant::now();
    let (mut got, mut batch) = (0u64, Vec::with_capacity(load.ack_batch));
    while got < load.backlog {
        let read = read_group(&mut conn, "rep", 1000, None).await?;
        if read.is_empty() {
            bail!("Redis replay ran dry after {got} events");
        }
        for (id, _) in read {
            got += 1;
            batch.push(id);
            if batch.len() >= load.ack_batch || got == load.backlog {
                ack(&mut conn, "rep", &batch).await?;
                batch.clear();
            }
        }
    }
    Ok(got as f64 / started.elapsed().as_secs_f64())
}

/// XADD at `load.rate` while a group consumer (its own connection, blocking reads) acks
/// what it reads; latency is XADD call → entry read.
pub async fn latency(url: &str, load: &Load) -> anyhow::Result<Vec<f64>> {
    let mut reader = connection(url).await?;
    make_group(&mut reader, "lat").await?;
    let events = load.latency_events;
    let receiver = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(events as usize);
        while (latencies.len() as u64) < events {
            let read = read_group(&mut reader, "lat", 100, Some(10_000)).await?;
            if read.is_empty() {
                bail!("the Redis reader stalled");
            }
            let ids: Vec<String> = read
                .iter()
                .map(|(id, body)| {
                    latencies.push(now_ms() - sent_ms(body));
                    id.clone()
                })
                .collect();
            ack(&mut reader, "lat", &ids).await?;
        }
        Ok::<_, anyhow::Error>(latencies)
    });
    let writer = connection(url).await?;
    let mut confirms = Vec::with_capacity(events as usize);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / load.rate as f64));
    for _ in 0..events {
        tick.tick().await;
        let mut conn = writer.clone();
        let body = timed_payload(load.size);
        confirms.push(tokio::spawn(async move {
            redis::cmd("XADD")
                .arg("lat")
                .arg("*")
                .arg("p")
                .arg(body)
                .query_async::<String>(&mut conn)
                .await
        }));
    }
    for c in confirms {
        c.await??;
    }
    receiver.await?
}

/// Redis pub/sub (not durable): `load.subscribers` connections SUBSCRIBE, one PUBLISHes.
pub async fn fanout(url: &str, load: &Load, probe: &Probe) -> anyhow::Result<f64> {
    let events = load.fanout_events;
    let client = redis::Client::open(url)?;
    let mut tasks = Vec::new();
    for _ in 0..load.subscribers {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe("fan").await?;
        tasks.push(tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            let mut got = 0;
            while got < events {
                match tokio::time::timeout(Duration::from_secs(60), messages.next()).await {
                    Ok(Some(_)) => got += 1,
                    _ => bail!("a Redis subscriber stalled after {got} events"),
                }
            }
            Ok::<_, anyhow::Error>(Instant::now())
        }));
    }
    let conn = connection(url).await?;
    let mut pending = FuturesOrdered::new();
    // The subscribers are set up: what follows is measured (as wharf bench does).
    probe.begin();
    let started = Instant::now();
    for i in 0..events {
        if pending.len() >= load.in_flight {
            if let Some(r) = pending.next().await {
                let receivers: u64 = r?;
                if receivers != load.subscribers {
                    return Err(anyhow!("PUBLISH reached {receivers} subscribers"));
                }
            }
        }
        let mut conn = conn.clone();
        let body = payload(load.size, i);
        pending.push_back(async move {
            redis::cmd("PUBLISH")
                .arg("fan")
                .arg(body)
                .query_async::<u64>(&mut conn)
                .await
        });
    }
    while let Some(r) = pending.next().await {
        r?;
    }
    let mut last = started;
    for t in tasks {
        last = last.max(t.await??);
    }
    Ok((events * load.subscribers) as f64 / (last - started).as_secs_f64())
}
