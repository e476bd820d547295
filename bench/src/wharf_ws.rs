//! The cluster scenarios through wharf nodes: the same frames `wharf bench` sends (its
//! publish frame, acks of `ack_batch` seqs in one frame, `max_in_flight` 10,000 for the
//! replay), over one or more wharf nodes, with the load split across them. Frames are read
//! with a borrowed, partial parse, as `wharf bench` does, so that the client costs the
//! shared machine little. Connections are `wharf_client`'s low-level [`Connection`], as in
//! `wharf bench`: the repository has one WebSocket client.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use serde::Deserialize;
use serde_json::{json, value::RawValue, Value};
use wharf_client::{Connection, Options};

use crate::cluster::Probe;
use crate::figure::{ms_since, now_ms};
use crate::{Load, Measured};

type Sink = wharf_client::Sender;
type Stream = wharf_client::Receiver;

/// How long a run waits for a node before calling it stalled.
const STALL: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default, borrow)]
    payload: Option<&'a RawValue>,
}

fn parse(text: &str) -> anyhow::Result<Frame<'_>> {
    serde_json::from_str(text).map_err(|e| anyhow!("unreadable frame {text:?}: {e}"))
}

async fn connect(url: &str) -> anyhow::Result<(Sink, Stream)> {
    let options = Options::new(url).read_buffer(64 * 1024);
    let connection = Connection::open(&options)
        .await
        .map_err(|e| anyhow!("cannot connect to {url}: {e}"))?;
    Ok(connection.split())
}

async fn next_text(stream: &mut Stream) -> anyhow::Result<String> {
    match tokio::time::timeout(STALL, stream.next()).await {
        Ok(Ok(text)) => Ok(text.as_str().to_owned()),
        Ok(Err(e)) => bail!("the connection to the wharf node failed: {e}"),
        Err(_) => bail!("no frame from the wharf node for {} s", STALL.as_secs()),
    }
}

/// Sends `frame` and waits for the reply of type `want`.
async fn request(
    sink: &mut Sink,
    stream: &mut Stream,
    frame: Value,
    want: &str,
) -> anyhow::Result<()> {
    sink.send(frame.to_string()).await?;
    loop {
        let text = next_text(stream).await?;
        let kind = parse(&text)?.kind;
        if kind == want {
            return Ok(());
        }
        if kind == "error" {
            bail!("the wharf node refused {frame}: {text}");
        }
    }
}

fn pad(size: usize) -> String {
    "x".repeat(size.saturating_sub(24))
}

/// `wharf bench`'s publish frame: a payload of about `size` bytes.
fn publish_frame(topic: &str, id: u64, pad: &str) -> String {
    format!(
        r#"{{"op":"publish","id":{id},"topic":"{topic}","payload":{{"i":{id},"pad":"{pad}"}}}}"#
    )
}

/// Publishes `events` to `topic` over `connections` pipelined connections spread over
/// `urls` in turn, `in_flight` unconfirmed on each; returns the publish→`published`
/// latencies (ms).
async fn publish_all(
    urls: &[String],
    topic: &str,
    load: &Load,
    connections: u64,
    events: u64,
) -> anyhow::Result<Vec<f64>> {
    if urls.is_empty() {
        bail!("no wharf node");
    }
    let mut tasks = Vec::new();
    for c in 0..connections {
        let per = events / connections + u64::from(c < events % connections);
        let url = urls[c as usize % urls.len()].clone();
        let (topic, in_flight, pad) = (topic.to_owned(), load.in_flight as u64, pad(load.size));
        tasks.push(tokio::spawn(async move {
            let (mut sink, mut stream) = connect(&url).await?;
            let mut sent_at = VecDeque::with_capacity(in_flight as usize);
            let mut latencies = Vec::with_capacity(per as usize);
            let (mut sent, mut done) = (0u64, 0u64);
            while done < per {
                while sent < per && sent - done < in_flight {
                    sink.feed(publish_frame(&topic, sent, &pad)).await?;
                    sent_at.push_back(Instant::now());
                    sent += 1;
                }
                sink.flush().await?;
                let text = next_text(&mut stream).await?;
                if parse(&text)?.kind != "published" {
                    bail!("publish refused: {text}");
                }
                if let Some(at) = sent_at.pop_front() {
                    latencies.push(ms_since(at));
                }
                done += 1;
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut all = Vec::with_capacity(events as usize);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

/// `load.events` publishes from `load.connections` connections, spread over the nodes.
pub async fn publish(urls: &[String], load: &Load, probe: &Probe) -> anyhow::Result<Measured> {
    probe.begin();
    let started = Instant::now();
    let latencies = publish_all(urls, "pub.x", load, load.connections, load.events).await?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Measured {
        rate: latencies.len() as f64 / seconds,
        units: latencies.len() as u64,
        latencies,
    })
}

/// One durable consumer per node, each on a topic of its own, made before the backlog;
/// `load.backlog` events are published (split over the topics, each through its node),
/// then every consumer comes back on its node and reads its share, acking `ack_batch` seqs
/// in one frame. The rate is all the events read over the time until the last consumer has
/// been told `ok` for its last ack.
pub async fn replay(urls: &[String], load: &Load, probe: &Probe) -> anyhow::Result<Measured> {
    let stamp = now_ms() as u64;
    let n = urls.len() as u64;
    let mut shares = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        let topic = format!("rep.{i}");
        let consumer = format!("replay-{stamp}-{i}");
        let (mut sink, mut stream) = connect(url).await?;
        let sub = json!({"op":"subscribe","id":0,"topic":topic,"consumer":consumer,"start":"new"});
        request(&mut sink, &mut stream, sub, "subscribed").await?;
        let share = load.backlog / n + u64::from((i as u64) < load.backlog % n);
        shares.push((url.clone(), topic, consumer, share));
    }
    for (url, topic, _, share) in &shares {
        let conns = (load.connections / n).max(1);
        publish_all(std::slice::from_ref(url), topic, load, conns, *share).await?;
    }
    probe.begin();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (url, topic, consumer, share) in shares {
        let ack_batch = load.ack_batch;
        tasks.push(tokio::spawn(async move {
            let (mut sink, mut stream) = connect(&url).await?;
            let sub = json!({"op":"subscribe","id":0,"topic":topic,"consumer":consumer,"max_in_flight":10000});
            sink.send(sub.to_string()).await?;
            let mut got = 0u64;
            let mut batch = Vec::with_capacity(ack_batch);
            while got < share {
                let text = next_text(&mut stream).await?;
                let frame = parse(&text)?;
                match frame.kind {
                    "event" => {
                        got += 1;
                        batch.push(frame.seq.unwrap_or(0));
                        if got == share {
                            // The last ack is waited for, as raw JetStream's last double ack
                            // is: replies come in request order, so its `ok` comes once
                            // JetStream has stored every ack before it too.
                            let ack = json!({"op":"ack","id":1,"consumer":consumer,"seqs":&batch});
                            request(&mut sink, &mut stream, ack, "ok").await?;
                        } else if batch.len() >= ack_batch {
                            let ack = json!({"op":"ack","consumer":consumer,"seqs":&batch});
                            batch.clear();
                            sink.send(ack.to_string()).await?;
                        }
                    }
                    "error" => bail!("replay refused: {text}"),
                    _ => {}
                }
            }
            Ok::<_, anyhow::Error>(got)
        }));
    }
    let mut got = 0;
    for t in tasks {
        got += t.await??;
    }
    Ok(Measured {
        rate: got as f64 / started.elapsed().as_secs_f64(),
        units: got,
        latencies: Vec::new(),
    })
}

/// Publishes at `load.rate` through the first node (each publish confirmed) while a durable
/// subscriber on the last node (the same one when there is one) acks each event; the latency
/// is publish call → event read.
pub async fn latency(urls: &[String], load: &Load, probe: &Probe) -> anyhow::Result<Measured> {
    let events = load.latency_events;
    let (first, last) = match (urls.first(), urls.last()) {
        (Some(f), Some(l)) => (f.clone(), l.clone()),
        _ => bail!("no wharf node"),
    };
    let (mut sub_sink, mut sub_stream) = connect(&last).await?;
    let consumer = format!("lat-{}", now_ms() as u64);
    let sub = json!({"op":"subscribe","id":0,"topic":"lat.x","consumer":consumer,"start":"new"});
    request(&mut sub_sink, &mut sub_stream, sub, "subscribed").await?;
    let receiver = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(events as usize);
        while (latencies.len() as u64) < events {
            let text = next_text(&mut sub_stream).await?;
            let frame = parse(&text)?;
            if frame.kind != "event" {
                continue;
            }
            let sent = frame
                .payload
                .and_then(|p| serde_json::from_str::<Value>(p.get()).ok())
                .and_then(|p| p["t"].as_f64())
                .unwrap_or(0.0);
            latencies.push(now_ms() - sent);
            let seq = frame.seq.unwrap_or(0);
            let ack = format!(r#"{{"op":"ack","consumer":"{consumer}","seq":{seq}}}"#);
            sub_sink.send(ack).await?;
        }
        Ok::<_, anyhow::Error>(latencies)
    });
    let (mut sink, mut stream) = connect(&first).await?;
    let confirms = tokio::spawn(async move {
        for _ in 0..events {
            let text = next_text(&mut stream).await?;
            if parse(&text)?.kind != "published" {
                bail!("publish refused: {text}");
            }
        }
        Ok::<_, anyhow::Error>(())
    });
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / load.rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let pad = "x".repeat(load.size.saturating_sub(40));
    probe.begin();
    for i in 0..events {
        tick.tick().await;
        let frame = format!(
            r#"{{"op":"publish","id":{i},"topic":"lat.x","payload":{{"t":{:.3},"pad":"{pad}"}}}}"#,
            now_ms()
        );
        sink.send(frame).await?;
    }
    let latencies = receiver.await??;
    confirms.await??;
    Ok(Measured {
        rate: load.rate as f64,
        units: latencies.len() as u64,
        latencies,
    })
}

/// `load.subscribers` live (ephemeral) subscriptions on their own connections, spread over
/// the nodes; one publisher on the first node publishes `fanout_events` with `in_flight`
/// unconfirmed. Counts deliveries until every subscriber has every event.
pub async fn fanout(urls: &[String], load: &Load, probe: &Probe) -> anyhow::Result<Measured> {
    let events = load.fanout_events;
    let n = load.subscribers;
    if urls.is_empty() {
        bail!("no wharf node");
    }
    let ready = Arc::new(tokio::sync::Barrier::new(n as usize + 1));
    let mut subs = Vec::with_capacity(n as usize);
    for s in 0..n {
        let (url, ready) = (urls[s as usize % urls.len()].clone(), ready.clone());
        subs.push(tokio::spawn(async move {
            let subscribed = async {
                let (mut sink, mut stream) = connect(&url).await?;
                let sub = json!({"op":"subscribe","id":0,"topic":"fan.x","start":"new"});
                request(&mut sink, &mut stream, sub, "subscribed").await?;
                Ok::<_, anyhow::Error>((sink, stream))
            }
            .await;
            ready.wait().await;
            let (_sink, mut stream) = subscribed?;
            let mut got = 0u64;
            while got < events {
                let text = next_text(&mut stream).await?;
                if text.starts_with(r#"{"type":"event""#) {
                    got += 1;
                } else if text.starts_with(r#"{"type":"lost""#) {
                    bail!("a subscriber fell behind and lost events: {text}");
                } else if text.starts_with(r#"{"type":"error""#)
                    || text.starts_with(r#"{"type":"unsubscribed""#)
                {
                    // Its subscription is over: waiting on would only see heartbeats.
                    bail!("a subscriber's subscription failed: {text}");
                }
            }
            Ok::<_, anyhow::Error>(Instant::now())
        }));
    }
    ready.wait().await;
    let first = urls.first().ok_or_else(|| anyhow!("no wharf node"))?;
    let (mut sink, mut stream) = connect(first).await?;
    let pad = pad(load.size);
    probe.begin();
    let started = Instant::now();
    let (mut sent, mut done) = (0u64, 0u64);
    while done < events {
        while sent < events && sent - done < load.in_flight as u64 {
            sink.feed(publish_frame("fan.x", sent, &pad)).await?;
            sent += 1;
        }
        sink.flush().await?;
        let text = next_text(&mut stream).await?;
        if parse(&text)?.kind != "published" {
            bail!("publish refused: {text}");
        }
        done += 1;
    }
    let mut last = started;
    for s in subs {
        last = last.max(s.await??);
    }
    let deliveries = events * n;
    Ok(Measured {
        rate: deliveries as f64 / (last - started).as_secs_f64().max(1e-9),
        units: deliveries,
        latencies: Vec::new(),
    })
}
