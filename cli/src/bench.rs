//! `wharf bench`: load scenarios against a broker at `--url`, or against one it starts on a
//! temporary data dir. Prints a table (or `--json`): events/s, MB/s, latency percentiles.
//! Figures are for comparison within one run on one machine; they are never asserted.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Durable publishes, confirmed, from several pipelined connections.
    Publish,
    /// A backlog of events read by one durable consumer that acks in batches.
    Replay,
    /// Publish→subscriber latency at a fixed rate, with acks.
    Latency,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[arg(value_enum)]
    scenario: Scenario,
    /// Broker to load; without it, one is started on a temporary data dir.
    #[arg(long, env = "WHARF_URL")]
    url: Option<String>,
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Publishing connections.
    #[arg(long, default_value_t = 4)]
    connections: u64,
    /// Publishes in flight per connection.
    #[arg(long, default_value_t = 256)]
    in_flight: u64,
    /// Events per second for the latency scenario.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    #[arg(long)]
    json: bool,
}

/// A broker started for the run, stopped when dropped.
struct Embedded {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Embedded {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _already_stopped = stop.send(());
        }
    }
}

async fn embedded() -> anyhow::Result<Embedded> {
    let dir = tempfile::tempdir().context("cannot make a temporary data dir")?;
    let config = wharf_broker::Config {
        listen: "127.0.0.1:0".parse()?,
        data_dir: dir.path().join("data"),
        ..Default::default()
    };
    let broker = wharf_broker::Broker::open(config).await?;
    let url = format!("ws://{}/ws", broker.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(broker.run(async move {
        let _either_way = stopped.await;
    }));
    Ok(Embedded {
        url,
        stop: Some(stop),
        _dir: dir,
    })
}

fn payload(size: usize, i: u64) -> Value {
    let pad = "x".repeat(size.saturating_sub(24));
    json!({"i": i, "pad": pad})
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn connect(
    url: &str,
) -> anyhow::Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
> {
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| anyhow!("cannot connect to {url}: {e}"))?;
    Ok(ws)
}

/// Publishes `events` over `connections` pipelined connections; returns confirm latencies (ms).
async fn publish(url: &str, topic: &str, args: &BenchArgs) -> anyhow::Result<Vec<f64>> {
    let (events, size, connections, in_flight) =
        (args.events, args.size, args.connections, args.in_flight);
    let per = events / connections.max(1);
    let mut tasks = Vec::new();
    for c in 0..connections.max(1) {
        let url = url.to_owned();
        let topic = topic.to_owned();
        tasks.push(tokio::spawn(async move {
            let (mut sink, mut stream) = connect(&url).await?.split();
            let mut sent_at = std::collections::VecDeque::new();
            let mut latencies = Vec::with_capacity(per as usize);
            let (mut sent, mut done) = (0u64, 0u64);
            while done < per {
                while sent < per && sent - done < in_flight {
                    let frame = json!({"op":"publish","id":sent,"topic":topic,"payload":payload(size, c * per + sent)});
                    sink.feed(Message::text(frame.to_string())).await?;
                    sent_at.push_back(Instant::now());
                    sent += 1;
                }
                sink.flush().await?;
                match stream.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(t.as_str())?;
                        if v["type"] != "published" {
                            bail!("publish refused: {v}");
                        }
                        if let Some(at) = sent_at.pop_front() {
                            latencies.push(at.elapsed().as_secs_f64() * 1000.0);
                        }
                        done += 1;
                    }
                    Some(Ok(_)) => {}
                    _ => bail!("connection ended during the run"),
                }
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let embedded = match &args.url {
        Some(_) => None,
        None => Some(embedded().await?),
    };
    let url = args
        .url
        .clone()
        .or_else(|| embedded.as_ref().map(|e| e.url.clone()))
        .ok_or_else(|| anyhow!("no broker"))?;
    let topic = format!("bench.{}", wharf_protocol::now_ms());
    let started = Instant::now();
    let (count, mut latencies) = match args.scenario {
        Scenario::Publish => {
            let l = publish(&url, &topic, &args).await?;
            (l.len() as u64, l)
        }
        Scenario::Replay => {
            publish(&url, &topic, &args).await?;
            let begin = Instant::now();
            let n = replay(&url, &topic, args.events).await?;
            let elapsed = begin.elapsed().as_secs_f64();
            return report(&args, "replay", n, elapsed, &mut Vec::new());
        }
        Scenario::Latency => latency(&url, &topic, args.events, args.size, args.rate).await?,
    };
    let elapsed = started.elapsed().as_secs_f64();
    let name = match args.scenario {
        Scenario::Publish => "publish",
        _ => "latency",
    };
    report(&args, name, count, elapsed, &mut latencies)
}

/// One durable consumer reads `events` from the start, acking in batches of 500.
async fn replay(url: &str, topic: &str, events: u64) -> anyhow::Result<u64> {
    let (mut sink, mut stream) = connect(url).await?.split();
    let consumer = format!("bench-{}", wharf_protocol::now_ms());
    let sub = json!({"op":"subscribe","id":0,"topic":topic,"consumer":consumer,"start":"all","max_in_flight":10000});
    sink.send(Message::text(sub.to_string())).await?;
    let mut got = 0u64;
    let mut batch = Vec::with_capacity(500);
    while got < events {
        match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(t.as_str())?;
                if v["type"] == "event" {
                    got += 1;
                    batch.push(v["seq"].as_u64().unwrap_or(0));
                    if batch.len() >= 500 || got == events {
                        let ack = json!({"op":"ack","consumer":consumer,"seqs":std::mem::take(&mut batch)});
                        sink.send(Message::text(ack.to_string())).await?;
                    }
                }
            }
            Ok(Some(Ok(_))) => {}
            _ => bail!("replay stalled after {got} events"),
        }
    }
    Ok(got)
}

/// Publishes at `rate` per second while a durable subscriber acks; returns delivery latencies.
async fn latency(
    url: &str,
    topic: &str,
    events: u64,
    size: usize,
    rate: u64,
) -> anyhow::Result<(u64, Vec<f64>)> {
    let (mut sub_sink, mut sub_stream) = connect(url).await?.split();
    let consumer = format!("lat-{}", wharf_protocol::now_ms());
    let sub = json!({"op":"subscribe","id":0,"topic":topic,"consumer":consumer,"start":"new"});
    sub_sink.send(Message::text(sub.to_string())).await?;
    let _subscribed = sub_stream.next().await;
    let receiver = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(events as usize);
        while (latencies.len() as u64) < events {
            match tokio::time::timeout(Duration::from_secs(30), sub_stream.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(t.as_str())?;
                    if v["type"] == "event" {
                        let sent = v["payload"]["t"].as_f64().unwrap_or(0.0);
                        latencies.push(now_micros() as f64 / 1000.0 - sent);
                        let ack = json!({"op":"ack","consumer":consumer,"seq":v["seq"]});
                        sub_sink.send(Message::text(ack.to_string())).await?;
                    }
                }
                Ok(Some(Ok(_))) => {}
                _ => bail!("the subscriber stalled"),
            }
        }
        Ok::<_, anyhow::Error>(latencies)
    });
    let (mut sink, mut stream) = connect(url).await?.split();
    tokio::spawn(async move { while stream.next().await.is_some() {} });
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    let pad = "x".repeat(size.saturating_sub(40));
    for i in 0..events {
        tick.tick().await;
        let frame = json!({"op":"publish","id":i,"topic":topic,"payload":{"t": now_micros() as f64 / 1000.0, "pad": pad}});
        sink.send(Message::text(frame.to_string())).await?;
    }
    let latencies = receiver.await??;
    Ok((latencies.len() as u64, latencies))
}

fn now_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

fn report(
    args: &BenchArgs,
    name: &str,
    count: u64,
    seconds: f64,
    latencies: &mut [f64],
) -> anyhow::Result<()> {
    latencies.sort_by(|a, b| a.total_cmp(b));
    let rate = count as f64 / seconds.max(1e-9);
    let mb = rate * args.size as f64 / 1e6;
    let p = |q: f64| percentile(latencies, q);
    let result = json!({
        "scenario": name,
        "events": count,
        "seconds": seconds,
        "events_per_s": rate,
        "mb_per_s": mb,
        "latency_ms": {"p50": p(0.5), "p90": p(0.9), "p99": p(0.99), "p999": p(0.999), "max": latencies.last().copied().unwrap_or(0.0)},
    });
    if args.json {
        println!("{result}");
    } else {
        println!(
            "scenario  events  seconds  events/s  MB/s  p50 ms  p90 ms  p99 ms  p99.9 ms  max ms"
        );
        println!(
            "{name:<8}  {count:<6}  {seconds:<7.2}  {rate:<8.0}  {mb:<4.1}  {:<6.2}  {:<6.2}  {:<6.2}  {:<8.2}  {:.2}",
            p(0.5),
            p(0.9),
            p(0.99),
            p(0.999),
            latencies.last().copied().unwrap_or(0.0)
        );
    }
    Ok(())
}
