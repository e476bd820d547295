//! The scenarios. Each is what a real client does over the public protocol, on
//! `wharf_client`'s low-level [`Connection`]: frames written as text and read back without
//! a copy, with a borrowed, partial parse, and no driver task or channels in between, so
//! that the client costs the broker's machine as little as the peers' clients do.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use futures_util::{FutureExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, value::RawValue, Value};
use wharf_client::{Connection, Options, Text};

use super::target::Target;
use super::{ms_since, progress, BenchArgs, Outcome};

type Sink = wharf_client::Sender;
type Stream = wharf_client::Receiver;

/// How long a run waits for the broker before calling it stalled.
const STALL: Duration = Duration::from_secs(30);

/// The parts of a broker frame the scenarios look at.
#[derive(Deserialize)]
pub(super) struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    pub(super) kind: &'a str,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default, borrow)]
    payload: Option<&'a RawValue>,
}

/// An `events` frame, as far as the scenarios look at it.
#[derive(Deserialize)]
struct Events {
    events: Vec<Seq>,
}

#[derive(Deserialize)]
struct Seq {
    seq: u64,
}

/// The seqs of the events a frame carries: one for an `event` frame, the list of an
/// `events` frame (a subscription that asked for `batch`), none for anything else.
fn event_seqs(text: &str) -> anyhow::Result<Vec<u64>> {
    if text.starts_with(r#"{"type":"events""#) {
        let frame: Events =
            serde_json::from_str(text).map_err(|e| anyhow!("unreadable frame {text:?}: {e}"))?;
        return Ok(frame.events.into_iter().map(|e| e.seq).collect());
    }
    let frame = parse(text)?;
    Ok(match (frame.kind, frame.seq) {
        ("event", Some(seq)) => vec![seq],
        _ => Vec::new(),
    })
}

pub(super) fn parse(text: &str) -> anyhow::Result<Frame<'_>> {
    serde_json::from_str(text).map_err(|e| anyhow!("unreadable frame {text:?}: {e}"))
}

async fn connect_with(url: &str, read_buffer: usize) -> anyhow::Result<Connection> {
    Ok(Connection::open(&Options::new(url).read_buffer(read_buffer)).await?)
}

pub(super) async fn connect(url: &str) -> anyhow::Result<(Sink, Stream)> {
    Ok(connect_with(url, 64 * 1024).await?.split())
}

/// The next text frame, or an error if the connection ends or stays silent too long.
pub(super) async fn next_text(stream: &mut Stream) -> anyhow::Result<Text> {
    match tokio::time::timeout(STALL, stream.next()).await {
        Ok(frame) => Ok(frame?),
        Err(_) => bail!("no frame from the broker for {} s", STALL.as_secs()),
    }
}

/// Sends `frame` and returns the broker's reply of type `want`.
pub(super) async fn request(
    sink: &mut Sink,
    stream: &mut Stream,
    frame: Value,
    want: &str,
) -> anyhow::Result<Text> {
    sink.send(frame.to_string()).await?;
    loop {
        let text = next_text(stream).await?;
        let kind = parse(&text)?.kind.to_owned();
        if kind == want {
            return Ok(text);
        }
        if kind == "error" {
            bail!("the broker refused {frame}: {text}");
        }
    }
}

/// The broker's `stats` reply.
pub(super) async fn stats(url: &str) -> anyhow::Result<Value> {
    let (mut sink, mut stream) = connect(url).await?;
    let text = request(
        &mut sink,
        &mut stream,
        json!({"op":"stats","id":0}),
        "stats",
    )
    .await?;
    Ok(serde_json::from_str(&text)?)
}

/// A publish frame whose payload is about `size` bytes.
/// `{"op":"publish","id":ID,"topic":TOPIC,"payload":{"i":ID,"pad":PAD}}`, written
/// piece by piece: `format!` was a fifth of the client's instructions per publish.
fn publish_frame(topic: &str, id: u64, pad: &str) -> String {
    let mut ids = itoa::Buffer::new();
    let id = ids.format(id);
    let mut out = String::with_capacity(64 + topic.len() + 2 * id.len() + pad.len());
    out.push_str(r#"{"op":"publish","id":"#);
    out.push_str(id);
    out.push_str(r#","topic":""#);
    out.push_str(topic);
    out.push_str(r#"","payload":{"i":"#);
    out.push_str(id);
    out.push_str(r#","pad":""#);
    out.push_str(pad);
    out.push_str(r#""}}"#);
    out
}

/// Whether a reply is `published`; anything else (an error) stops the run.
fn check_published(text: &str) -> anyhow::Result<()> {
    // The broker writes `type` first: the common case needs no parse.
    if text.starts_with(r#"{"type":"published""#) || parse(text)?.kind == "published" {
        return Ok(());
    }
    bail!("publish refused: {text}")
}

fn pad(size: usize) -> String {
    "x".repeat(size.saturating_sub(24))
}

/// Publishes `events` over `connections` pipelined connections, `in_flight` each; returns
/// the confirm latencies (ms).
async fn publish_all(
    url: &str,
    topic: &str,
    args: &BenchArgs,
    events: u64,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Vec<f64>> {
    let connections = args.connections();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let per = events / connections + u64::from(c < events % connections);
        let (url, topic, bar) = (url.to_owned(), topic.to_owned(), bar.clone());
        let (in_flight, pad) = (args.in_flight.max(1), pad(args.size));
        tasks.push(tokio::spawn(async move {
            let (mut sink, mut stream) = connect(&url).await?;
            let mut sent_at = std::collections::VecDeque::with_capacity(in_flight as usize);
            let mut latencies = Vec::with_capacity(per as usize);
            let (mut sent, mut done) = (0u64, 0u64);
            while done < per {
                while sent < per && sent - done < in_flight {
                    sink.feed(publish_frame(&topic, sent, &pad)).await?;
                    sent_at.push_back(Instant::now());
                    sent += 1;
                }
                sink.flush().await?;
                // One reply waited for, then every reply already read: the window refills,
                // and goes out in one write, once per read, as a pipelining client does
                // (not one write per reply).
                let mut reply = Some(next_text(&mut stream).await?);
                while let Some(text) = reply {
                    check_published(&text)?;
                    if let Some(at) = sent_at.pop_front() {
                        latencies.push(ms_since(at));
                    }
                    done += 1;
                    bar.inc(1);
                    reply = if done < per {
                        stream.next().now_or_never().transpose()?
                    } else {
                        None
                    };
                }
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

/// Log and state bytes per stored event, from the broker's own stats.
async fn disk_figures(
    url: &str,
    topic: &str,
    size: usize,
    out: &mut Outcome,
) -> anyhow::Result<()> {
    let s = stats(url).await?;
    let stored = s["head_seq"].as_u64().unwrap_or(0).max(1) as f64;
    let log = s["log_bytes"].as_u64().unwrap_or(0) as f64;
    let state = s["state_bytes"].as_u64().unwrap_or(0) as f64;
    let encoded = format!(
        r#"{{"topic":"{topic}","payload":{{"i":0,"pad":"{}"}}}}"#,
        pad(size)
    )
    .len();
    out.extra
        .insert("log_bytes_per_event".into(), json!(log / stored));
    out.extra
        .insert("state_bytes_per_event".into(), json!(state / stored));
    out.extra.insert("event_json_bytes".into(), json!(encoded));
    Ok(())
}

pub async fn publish(target: &Target, topic: &str, args: &BenchArgs) -> anyhow::Result<Outcome> {
    let events = args.events();
    let bar = progress(args, events, "publish");
    let cpu = target.cpu_mark();
    let started = Instant::now();
    let latencies = publish_all(&target.url, topic, args, events, &bar).await?;
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let mut out = Outcome {
        count: latencies.len() as u64,
        seconds,
        latencies,
        ..Outcome::default()
    };
    target.cpu_since(cpu, out.count, &mut out.extra);
    out.extra
        .insert("connections".into(), json!(args.connections()));
    out.extra.insert("in_flight".into(), json!(args.in_flight));
    disk_figures(&target.url, topic, args.size, &mut out).await?;
    Ok(out)
}

/// A durable consumer is made, goes away, a backlog is published, and the consumer comes
/// back and reads it all, acking every `ack_batch` events in one frame.
pub async fn replay(target: &Target, topic: &str, args: &BenchArgs) -> anyhow::Result<Outcome> {
    let events = args.events();
    let consumer = format!("bench-{}", wharf_protocol::now_ms());
    {
        let (mut sink, mut stream) = connect(&target.url).await?;
        let sub = json!({"op":"subscribe","id":0,"topic":topic,"consumer":consumer,"start":"new"});
        request(&mut sink, &mut stream, sub, "subscribed").await?;
    }
    let bar = progress(args, events, "backlog");
    publish_all(&target.url, topic, args, events, &bar).await?;
    bar.finish_and_clear();
    let mut out = Outcome::default();
    disk_figures(&target.url, topic, args.size, &mut out).await?;

    let bar = progress(args, events, "replay");
    let watch = target.watch_rss();
    let cpu = target.cpu_mark();
    let started = Instant::now();
    let (mut sink, mut stream) = connect(&target.url).await?;
    let mut sub =
        json!({"op":"subscribe","id":0,"topic":topic,"consumer":consumer,"max_in_flight":10000});
    if args.batch > 1 {
        sub["batch"] = json!(args.batch);
    }
    sink.send(sub.to_string()).await?;
    let mut got = 0u64;
    let mut batch = Vec::with_capacity(args.ack_batch);
    while got < events {
        let text = next_text(&mut stream).await?;
        if text.starts_with(r#"{"type":"error""#) {
            bail!("replay refused: {text}");
        }
        for seq in event_seqs(&text)? {
            got += 1;
            bar.inc(1);
            batch.push(seq);
            if batch.len() >= args.ack_batch.max(1) || got == events {
                let ack = json!({"op":"ack","consumer":consumer,"seqs":&batch});
                batch.clear();
                sink.send(ack.to_string()).await?;
            }
        }
    }
    out.seconds = started.elapsed().as_secs_f64();
    out.count = got;
    target.cpu_since(cpu, got, &mut out.extra);
    bar.finish_and_clear();
    out.extra
        .insert("replay_rss_peak_mb".into(), json!(super::mb(watch.peak())));
    out.extra.insert("ack_batch".into(), json!(args.ack_batch));
    out.extra.insert("batch".into(), json!(args.batch));
    Ok(out)
}

fn now_ms_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// Publishes at `rate` per second (each publish confirmed durably) while a durable
/// subscriber acks each event; the latency is publish call → event read by the subscriber.
pub async fn latency(target: &Target, topic: &str, args: &BenchArgs) -> anyhow::Result<Outcome> {
    let events = args.events();
    let (mut sub_sink, mut sub_stream) = connect(&target.url).await?;
    let consumer = format!("lat-{}", wharf_protocol::now_ms());
    let sub = json!({"op":"subscribe","id":0,"topic":topic,"consumer":consumer,"start":"new"});
    request(&mut sub_sink, &mut sub_stream, sub, "subscribed").await?;
    let bar = progress(args, events, "latency");
    let counter = bar.clone();
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
            latencies.push(now_ms_f64() - sent);
            counter.inc(1);
            let seq = frame.seq.unwrap_or(0);
            let ack = format!(r#"{{"op":"ack","consumer":"{consumer}","seq":{seq}}}"#);
            sub_sink.send(ack).await?;
        }
        Ok::<_, anyhow::Error>(latencies)
    });
    let (mut sink, mut stream) = connect(&target.url).await?;
    let confirms = tokio::spawn(async move {
        for _ in 0..events {
            let text = next_text(&mut stream).await?;
            if parse(&text)?.kind != "published" {
                bail!("publish refused: {text}");
            }
        }
        Ok::<_, anyhow::Error>(())
    });
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let pad = "x".repeat(args.size.saturating_sub(40));
    let cpu = target.cpu_mark();
    let started = Instant::now();
    for i in 0..events {
        tick.tick().await;
        let frame = format!(
            r#"{{"op":"publish","id":{i},"topic":"{topic}","payload":{{"t":{:.3},"pad":"{pad}"}}}}"#,
            now_ms_f64()
        );
        sink.send(frame).await?;
    }
    let latencies = receiver.await??;
    confirms.await??;
    bar.finish_and_clear();
    let mut out = Outcome {
        count: latencies.len() as u64,
        seconds: started.elapsed().as_secs_f64(),
        latencies,
        ..Outcome::default()
    };
    target.cpu_since(cpu, out.count, &mut out.extra);
    out.extra.insert("rate".into(), json!(args.rate));
    Ok(out)
}

/// `subscribers` live (ephemeral) subscriptions on their own connections; one publisher
/// publishes `events` with `in_flight` outstanding. Counts deliveries until every subscriber
/// has every event; a `lost` push (a subscriber fell behind) fails the run.
pub async fn fanout(target: &Target, topic: &str, args: &BenchArgs) -> anyhow::Result<Outcome> {
    let events = args.events();
    let n = args.subscribers.max(1);
    let ready = Arc::new(tokio::sync::Barrier::new(n as usize + 1));
    let bar = progress(args, events * n, "fanout");
    let mut subs = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let (url, topic, ready, bar, batch) = (
            target.url.clone(),
            topic.to_owned(),
            ready.clone(),
            bar.clone(),
            args.batch,
        );
        subs.push(tokio::spawn(async move {
            let subscribed = async {
                let (mut sink, mut stream) = connect(&url).await?;
                let mut sub = json!({"op":"subscribe","id":0,"topic":topic,"start":"new"});
                if batch > 1 {
                    sub["batch"] = json!(batch);
                }
                request(&mut sink, &mut stream, sub, "subscribed").await?;
                Ok::<_, anyhow::Error>((sink, stream))
            }
            .await;
            ready.wait().await;
            let (_sink, mut stream) = subscribed?;
            let mut got = 0u64;
            while got < events {
                let text = next_text(&mut stream).await?;
                // Event frames start with their type; the rest is not parsed.
                if text.starts_with(r#"{"type":"event","#) {
                    got += 1;
                    if got.is_multiple_of(64) {
                        bar.inc(64);
                    }
                } else if text.starts_with(r#"{"type":"events""#) {
                    let n = event_seqs(&text)?.len() as u64;
                    bar.inc(n);
                    got += n;
                } else if text.starts_with(r#"{"type":"lost""#) {
                    bail!("a subscriber fell behind and lost events: {text}");
                }
            }
            Ok::<_, anyhow::Error>(Instant::now())
        }));
    }
    ready.wait().await;
    let (mut sink, mut stream) = connect(&target.url).await?;
    let pad = pad(args.size);
    let cpu = target.cpu_mark();
    let started = Instant::now();
    let (mut sent, mut done) = (0u64, 0u64);
    while done < events {
        while sent < events && sent - done < args.in_flight.max(1) {
            sink.feed(publish_frame(topic, sent, &pad)).await?;
            sent += 1;
        }
        sink.flush().await?;
        // As in `publish_all`: every reply already read before the window refills.
        let mut reply = Some(next_text(&mut stream).await?);
        while let Some(text) = reply {
            check_published(&text)?;
            done += 1;
            reply = if done < events {
                stream.next().now_or_never().transpose()?
            } else {
                None
            };
        }
    }
    let mut last = started;
    for s in subs {
        last = last.max(s.await??);
    }
    bar.finish_and_clear();
    let seconds = (last - started).as_secs_f64();
    let deliveries = events * n;
    let mut out = Outcome {
        count: events,
        seconds,
        ..Outcome::default()
    };
    // Per delivery, as the rate is.
    target.cpu_since(cpu, deliveries, &mut out.extra);
    out.extra.insert("subscribers".into(), json!(n));
    out.extra.insert("batch".into(), json!(args.batch));
    out.extra.insert("deliveries".into(), json!(deliveries));
    out.extra.insert(
        "deliveries_per_s".into(),
        json!(deliveries as f64 / seconds.max(1e-9)),
    );
    Ok(out)
}

/// Opens `connections` idle WebSocket connections and reports what each added to the
/// broker's RSS once the broker counts them all.
pub async fn connections(target: &Target, args: &BenchArgs) -> anyhow::Result<Outcome> {
    let n = args.connections();
    stats(&target.url).await?;
    let before = target.rss();
    let bar = progress(args, n, "connect");
    let started = Instant::now();
    let mut open = Vec::with_capacity(n as usize);
    let mut pending = futures_util::stream::iter(0..n)
        .map(|_| connect_with(&target.url, 4096))
        .buffer_unordered(128);
    while let Some(ws) = pending.next().await {
        open.push(ws?);
        bar.inc(1);
    }
    drop(pending);
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let counted = stats(&target.url).await?["connections"]
        .as_u64()
        .unwrap_or(0);
    if counted < n {
        bail!("the broker counts {counted} connections, {n} were opened");
    }
    let after = target.rss();
    let mut out = Outcome {
        count: n,
        seconds,
        ..Outcome::default()
    };
    out.extra.insert("connections".into(), json!(n));
    if let (Some(before), Some(after)) = (before, after) {
        let per = after.saturating_sub(before) as f64 / n as f64 / 1024.0;
        out.extra
            .insert("rss_per_connection_kib".into(), json!(per));
    }
    drop(open);
    Ok(out)
}
