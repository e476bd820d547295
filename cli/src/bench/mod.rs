//! `wharf bench`: load scenarios against a broker at `--url`, or against a `wharf serve` it
//! starts on a temporary data dir. Prints a table (or `--json`): events/s, MB/s, latency
//! percentiles, the broker's RSS. Figures compare within one run on one machine; they are
//! never asserted. `bench/` in the workspace runs the same scenarios against NATS and Redis.

mod histogram;
mod history;
mod scenarios;
mod target;

use std::time::Instant;

use serde_json::{json, Value};

use target::Target;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Durable publishes, confirmed, from several pipelined connections.
    Publish,
    /// A backlog read by a reconnecting durable consumer that acks in batches.
    Replay,
    /// Publish→subscriber latency at a fixed rate, durable, with acks.
    Latency,
    /// One publisher, many live WebSocket subscribers of the same topic.
    Fanout,
    /// Many idle WebSocket connections: what each costs the broker.
    Connections,
    /// `history` of one topic among many on a big log: latency per request.
    History,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Publish => "publish",
            Scenario::Replay => "replay",
            Scenario::Latency => "latency",
            Scenario::Fanout => "fanout",
            Scenario::Connections => "connections",
            Scenario::History => "history",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    scenario: Scenario,
    /// The process id of the broker at --url, to report its RSS (without --url, `wharf
    /// serve` is started on a temporary data dir).
    #[arg(long, requires = "url")]
    pid: Option<u32>,
    /// Events to publish [default: publish and replay 200000, latency 20000, fanout 2000,
    /// history 1000000].
    #[arg(long)]
    events: Option<u64>,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Connections: publishing ones for publish and replay, idle ones for connections
    /// [default: 4, connections 10000].
    #[arg(long)]
    connections: Option<u64>,
    /// Publishes in flight per connection.
    #[arg(long, default_value_t = 256)]
    in_flight: u64,
    /// Events per second for the latency scenario.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    /// Subscribers for the fanout scenario.
    #[arg(long, default_value_t = 1000)]
    subscribers: u64,
    /// Acks per ack frame in the replay scenario.
    #[arg(long, default_value_t = 500)]
    ack_batch: usize,
    /// Events per frame the replay and fanout subscribers ask for (`batch`; 1: one event
    /// frame each).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    batch: u32,
    /// Topics the history scenario spreads its events over.
    #[arg(long, default_value_t = 1000)]
    topics: u64,
    /// Events each history request asks for.
    #[arg(long, default_value_t = 50)]
    limit: u64,
    /// History requests to time.
    #[arg(long, default_value_t = 2000)]
    queries: u64,
    /// Events per publish while the history scenario loads its log (1: plain publishes,
    /// one log record each; more: publish_batch, one record per batch).
    #[arg(long, default_value_t = 1)]
    load_batch: u64,
    /// History pages before a random seq of the log, not the newest.
    #[arg(long)]
    anywhere: bool,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also draw the run's latencies as an SVG histogram into FILE.
    #[arg(long, value_name = "FILE")]
    svg: Option<std::path::PathBuf>,
}

/// What one scenario run measured.
#[derive(Default)]
pub struct Outcome {
    /// Events published (or, for replay, read; for connections, opened).
    pub count: u64,
    pub seconds: f64,
    /// Per-event latencies in ms, when the scenario measures them.
    pub latencies: Vec<f64>,
    /// Scenario-specific figures, merged into the report.
    pub extra: serde_json::Map<String, Value>,
}

impl BenchArgs {
    fn events(&self) -> u64 {
        self.events.unwrap_or(match self.scenario {
            Scenario::Publish | Scenario::Replay => 200_000,
            Scenario::Latency => 20_000,
            Scenario::Fanout => 2_000,
            Scenario::Connections => 0,
            Scenario::History => 1_000_000,
        })
    }

    fn connections(&self) -> u64 {
        self.connections
            .unwrap_or(match self.scenario {
                Scenario::Connections => 10_000,
                _ => 4,
            })
            .max(1)
    }
}

/// `url`: the broker to load (the global `--url`); without it one is started.
pub async fn run(args: BenchArgs, url: Option<String>) -> anyhow::Result<()> {
    let target = match &url {
        Some(url) => Target::external(url.clone(), args.pid),
        None => {
            let room = args.connections() + args.subscribers + 100;
            Target::spawn(&format!("max_connections = {room}"))?
        }
    };
    let topic = format!("bench.{}", wharf_protocol::now_ms());
    let rss_before = target.rss();
    let watch = target.watch_rss();
    let mut outcome = match args.scenario {
        Scenario::Publish => scenarios::publish(&target, &topic, &args).await?,
        Scenario::Replay => scenarios::replay(&target, &topic, &args).await?,
        Scenario::Latency => scenarios::latency(&target, &topic, &args).await?,
        Scenario::Fanout => scenarios::fanout(&target, &topic, &args).await?,
        Scenario::Connections => scenarios::connections(&target, &args).await?,
        Scenario::History => history::history(&target, &topic, &args).await?,
    };
    let peak = watch.peak().max(target.rss().unwrap_or(0));
    drop(watch);
    if let (Some(before), true) = (rss_before, peak > 0) {
        outcome
            .extra
            .insert("broker_rss_before_mb".into(), json!(mb(before)));
    }
    report(&args, outcome, (peak > 0).then_some(peak))
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A progress bar on stderr while a run is long, hidden for `--json` (and by indicatif when
/// stderr is not a terminal).
fn progress(args: &BenchArgs, len: u64, what: &str) -> indicatif::ProgressBar {
    if args.json || len < 10_000 {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg:>10} {wide_bar} {pos}/{len} {per_sec}")
    {
        bar.set_style(style);
    }
    bar.set_message(what.to_owned());
    bar
}

fn report(args: &BenchArgs, mut outcome: Outcome, broker_rss: Option<u64>) -> anyhow::Result<()> {
    let latencies = &mut outcome.latencies;
    latencies.sort_by(|a, b| a.total_cmp(b));
    let (count, seconds) = (outcome.count, outcome.seconds);
    let rate = count as f64 / seconds.max(1e-9);
    let mbps = rate * args.size as f64 / 1e6;
    let p = |q: f64| percentile(latencies, q);
    let max = latencies.last().copied().unwrap_or(0.0);
    let mut result = json!({
        "scenario": args.scenario.name(),
        "events": count,
        "seconds": seconds,
        "events_per_s": rate,
        "mb_per_s": mbps,
        "payload_bytes": args.size,
        "latency_ms": {"p50": p(0.5), "p90": p(0.9), "p99": p(0.99), "p999": p(0.999), "max": max},
        "broker_rss_peak_mb": broker_rss.map(mb),
    });
    if let Some(map) = result.as_object_mut() {
        map.extend(std::mem::take(&mut outcome.extra));
    }
    if let Some(path) = &args.svg {
        let title = format!(
            "wharf bench {}: {count} events, latency per event",
            args.scenario.name()
        );
        std::fs::write(path, histogram::latency_svg(latencies, &title))
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    if args.json {
        println!("{result}");
        return Ok(());
    }
    let rss = broker_rss.map_or("-".to_owned(), |b| format!("{:.1}", mb(b)));
    println!(
        "{:<11} {:>9} {:>8} {:>10} {:>7} {:>7} {:>7} {:>7} {:>8} {:>7} {:>8}",
        "scenario",
        "events",
        "seconds",
        "events/s",
        "MB/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "RSS MB"
    );
    println!(
        "{:<11} {count:>9} {seconds:>8.2} {rate:>10.0} {mbps:>7.1} {:>7.2} {:>7.2} {:>7.2} {:>8.2} {max:>7.2} {rss:>8}",
        args.scenario.name(),
        p(0.5),
        p(0.9),
        p(0.99),
        p(0.999),
    );
    let extra: Vec<String> = result
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| {
                    ![
                        "scenario",
                        "events",
                        "seconds",
                        "events_per_s",
                        "mb_per_s",
                        "payload_bytes",
                        "latency_ms",
                        "broker_rss_peak_mb",
                    ]
                    .contains(&k.as_str())
                })
                .map(|(k, v)| format!("{k}={v}"))
                .collect()
        })
        .unwrap_or_default();
    if !extra.is_empty() {
        println!("{}", extra.join("  "));
    }
    Ok(())
}

/// Milliseconds since `at`, as a float.
fn ms_since(at: Instant) -> f64 {
    at.elapsed().as_secs_f64() * 1000.0
}
