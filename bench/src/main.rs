//! `wharf-compare`: the same scenarios against wharf, NATS JetStream and Redis Streams on this
//! machine, in one run, and one table with the ratios.
//!
//! wharf's figures come from `wharf bench --json` (which starts its own `wharf serve`); the
//! peers run as child processes on loopback ports and temporary directories, each with the
//! durability setting written next to its figures. Nothing here is a dependency of `wharf`.
//! `bench/run.sh` installs the peers when missing and runs this in release mode.

mod figure;
mod nats;
mod peer;
mod redis;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use serde_json::Value;

use figure::{percentiles, Figure};
use peer::{Peer, RssWatch};

#[derive(Parser, Debug)]
#[command(about = "wharf against NATS JetStream and Redis Streams, side by side")]
struct Args {
    /// Systems to run, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "wharf,nats,nats-always,redis"
    )]
    systems: Vec<String>,
    /// Scenarios to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "publish,replay,latency,fanout"
    )]
    scenarios: Vec<String>,
    /// Events for the publish scenario.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Backlog for the replay scenario (the target is stated for 1,000,000).
    #[arg(long, default_value_t = 1_000_000)]
    backlog: u64,
    /// Events for the latency scenario.
    #[arg(long, default_value_t = 20_000)]
    latency_events: u64,
    /// Events for the fanout scenario.
    #[arg(long, default_value_t = 2_000)]
    fanout_events: u64,
    /// Publishing connections.
    #[arg(long, default_value_t = 4)]
    connections: u64,
    /// Publishes in flight per connection.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Events per second in the latency scenario.
    #[arg(long, default_value_t = 5000)]
    rate: u64,
    #[arg(long, default_value_t = 1000)]
    subscribers: u64,
    #[arg(long, default_value_t = 500)]
    ack_batch: usize,
    /// Events for NATS with sync_interval: always, which fsyncs each message and is slow.
    #[arg(long, default_value_t = 20_000)]
    always_events: u64,
    /// A few hundred events per scenario and 20 subscribers: checks that everything runs.
    #[arg(long)]
    quick: bool,
    /// The wharf executable [default: `wharf` beside this one].
    #[arg(long)]
    wharf: Option<PathBuf>,
    #[arg(long, default_value = "nats-server")]
    nats_server: String,
    #[arg(long, default_value = "redis-server")]
    redis_server: String,
    /// Runs of each system; each figure is the median of the runs (this machine is shared
    /// and noisy). --quick makes it 1.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Print the figures as JSON lines instead of tables.
    #[arg(long)]
    json: bool,
}

/// The sizes of one system's run.
#[derive(Debug, Clone)]
pub struct Load {
    pub events: u64,
    pub backlog: u64,
    pub latency_events: u64,
    pub fanout_events: u64,
    pub connections: u64,
    pub in_flight: usize,
    pub size: usize,
    pub rate: u64,
    pub subscribers: u64,
    pub ack_batch: usize,
}

impl Args {
    fn load(&self) -> Load {
        let mut load = Load {
            events: self.events,
            backlog: self.backlog,
            latency_events: self.latency_events,
            fanout_events: self.fanout_events,
            connections: self.connections.max(1),
            in_flight: self.in_flight.max(1),
            size: self.size,
            rate: self.rate.max(1),
            subscribers: self.subscribers.max(1),
            ack_batch: self.ack_batch.max(1),
        };
        if self.quick {
            load.events = 300;
            load.backlog = 300;
            load.latency_events = 300;
            load.fanout_events = 300;
            load.subscribers = load.subscribers.min(20);
        }
        load
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => {}
        Err(e) => {
            eprintln!("wharf-compare: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let load = args.load();
    let mut figures = Vec::new();
    let runs = if args.quick { 1 } else { args.runs.max(1) };
    for system in &args.systems {
        let mut all = Vec::new();
        for _ in 0..runs {
            all.extend(run_system(&args, &load, system).await?);
        }
        let found = figure::medians(all);
        for f in &found {
            if args.json {
                println!("{}", f.to_json());
            } else {
                eprintln!(
                    "{:<12} {:<8} {:>12.0}/s  p50 {:>8}  p99 {:>8}  RSS {:>7} MB",
                    f.system,
                    f.scenario,
                    f.rate,
                    fmt_ms(f.p50_ms),
                    fmt_ms(f.p99_ms),
                    f.rss_peak_mb.map_or("-".into(), |m| format!("{m:.1}"))
                );
            }
        }
        figures.extend(found);
    }
    if !args.json {
        print_tables(&args, &figures);
    }
    Ok(())
}

async fn run_system(args: &Args, load: &Load, system: &str) -> anyhow::Result<Vec<Figure>> {
    match system {
        "wharf" => run_wharf(args, load),
        "nats" => run_nats(args, load, false).await,
        "nats-always" => {
            let mut slow = load.clone();
            let cap = if args.quick { 300 } else { args.always_events };
            slow.events = slow.events.min(cap);
            slow.backlog = slow.backlog.min(cap);
            run_nats(args, &slow, true).await
        }
        "redis" => run_redis(args, load).await,
        other => bail!("unknown system {other:?}; known: wharf, nats, nats-always, redis"),
    }
}

fn fmt_ms(ms: Option<f64>) -> String {
    ms.map_or("-".into(), |m| format!("{m:.2} ms"))
}

fn wanted(args: &Args, scenario: &str) -> bool {
    args.scenarios.iter().any(|s| s == scenario)
}

fn run_wharf(args: &Args, load: &Load) -> anyhow::Result<Vec<Figure>> {
    let wharf = match &args.wharf {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("no directory for wharf-compare"))?
            .join("wharf"),
    };
    let durability = "fdatasync before every confirm (group commit)";
    let mut out = Vec::new();
    for scenario in ["publish", "replay", "latency", "fanout"] {
        if !wanted(args, scenario) {
            continue;
        }
        let events = match scenario {
            "publish" => load.events,
            "replay" => load.backlog,
            "latency" => load.latency_events,
            _ => load.fanout_events,
        };
        let output = Command::new(&wharf)
            .args(["bench", scenario, "--json"])
            .args(["--events", &events.to_string()])
            .args(["--size", &load.size.to_string()])
            .args(["--connections", &load.connections.to_string()])
            .args(["--in-flight", &load.in_flight.to_string()])
            .args(["--rate", &load.rate.to_string()])
            .args(["--subscribers", &load.subscribers.to_string()])
            .args(["--ack-batch", &load.ack_batch.to_string()])
            .env_remove("WHARF_URL")
            .output()
            .with_context(|| {
                format!(
                    "cannot run {} (build it with cargo build --release)",
                    wharf.display()
                )
            })?;
        if !output.status.success() {
            bail!(
                "wharf bench {scenario} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let r: Value = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("wharf bench {scenario} printed no JSON"))?;
        let rate = if scenario == "fanout" {
            r["deliveries_per_s"].as_f64()
        } else {
            r["events_per_s"].as_f64()
        }
        .unwrap_or(0.0);
        let lat = &r["latency_ms"];
        let timed = matches!(scenario, "publish" | "latency");
        let rss = if scenario == "replay" {
            r["replay_rss_peak_mb"].as_f64()
        } else {
            r["broker_rss_peak_mb"].as_f64()
        };
        out.push(Figure {
            system: "wharf".into(),
            durability: if scenario == "fanout" {
                format!("{durability}; live WebSocket subscribers")
            } else {
                durability.into()
            },
            scenario: scenario.into(),
            rate,
            p50_ms: if timed { lat["p50"].as_f64() } else { None },
            p99_ms: if timed { lat["p99"].as_f64() } else { None },
            rss_peak_mb: rss,
        });
    }
    Ok(out)
}

/// A peer's client, per scenario.
#[derive(Clone, Copy)]
enum Client {
    Nats,
    Redis,
}

impl Client {
    /// The scenario's rate and latencies (none where it measures none).
    async fn measure(
        self,
        addr: &str,
        scenario: &str,
        load: &Load,
    ) -> anyhow::Result<(f64, Vec<f64>)> {
        let rate = load.rate as f64;
        Ok(match (self, scenario) {
            (Client::Nats, "publish") => nats::publish(addr, load).await?,
            (Client::Nats, "replay") => (nats::replay(addr, load).await?, Vec::new()),
            (Client::Nats, "latency") => (rate, nats::latency(addr, load).await?),
            (Client::Nats, _) => (nats::fanout(addr, load).await?, Vec::new()),
            (Client::Redis, "publish") => redis::publish(addr, load).await?,
            (Client::Redis, "replay") => (redis::replay(addr, load).await?, Vec::new()),
            (Client::Redis, "latency") => (rate, redis::latency(addr, load).await?),
            (Client::Redis, _) => (redis::fanout(addr, load).await?, Vec::new()),
        })
    }
}

/// How to run one peer: its name, durability promises, and a fresh server per scenario.
struct PeerRun<'a> {
    system: &'a str,
    durability: &'a str,
    /// Fan-out goes through the peer's non-durable pub/sub.
    fanout_durability: &'a str,
    client: Client,
    start: &'a dyn Fn() -> anyhow::Result<(Peer, String, Option<tempfile::TempDir>)>,
}

async fn run_peer(args: &Args, load: &Load, run: PeerRun<'_>) -> anyhow::Result<Vec<Figure>> {
    let mut out = Vec::new();
    for scenario in ["publish", "replay", "latency", "fanout"] {
        if !wanted(args, scenario) || (scenario == "fanout" && run.fanout_durability.is_empty()) {
            continue;
        }
        // A fresh server per scenario, as for wharf.
        let (server, addr, _config) = (run.start)()?;
        let watch = RssWatch::new(server.pid());
        let (rate, latencies) = run.client.measure(&addr, scenario, load).await?;
        let (p50_ms, p99_ms) = percentiles(latencies);
        out.push(Figure {
            system: run.system.into(),
            durability: if scenario == "fanout" {
                run.fanout_durability
            } else {
                run.durability
            }
            .into(),
            scenario: scenario.into(),
            rate,
            p50_ms,
            p99_ms,
            rss_peak_mb: Some(watch.peak_mb()),
        });
    }
    Ok(out)
}

async fn run_nats(args: &Args, load: &Load, always: bool) -> anyhow::Result<Vec<Figure>> {
    let start = || {
        let config = tempfile::tempdir()?;
        let config_file = config.path().join("nats.conf");
        let store = config.path().join("store");
        let sync = if always { "sync_interval: always" } else { "" };
        std::fs::write(
            &config_file,
            format!(
                "jetstream {{\n  store_dir: {:?}\n  {sync}\n}}\n",
                store.display().to_string()
            ),
        )?;
        let config_arg = config_file.display().to_string();
        let server = Peer::start(
            &args.nats_server,
            &["-a", "127.0.0.1", "-p", "{port}", "-c", &config_arg],
        )?;
        let addr = format!("nats://127.0.0.1:{}", server.port);
        Ok((server, addr, Some(config)))
    };
    let run = if always {
        PeerRun {
            system: "nats-always",
            durability: "JetStream file store, sync_interval: always (fsync per message)",
            // Core NATS has no sync setting: measured once, under "nats".
            fanout_durability: "",
            client: Client::Nats,
            start: &start,
        }
    } else {
        PeerRun {
            system: "nats",
            durability: "JetStream file store, default sync (fsync every 2 min)",
            fanout_durability: "core NATS (not stored)",
            client: Client::Nats,
            start: &start,
        }
    };
    run_peer(args, load, run).await
}

async fn run_redis(args: &Args, load: &Load) -> anyhow::Result<Vec<Figure>> {
    let start = || {
        let server = Peer::start(
            &args.redis_server,
            &[
                "--bind",
                "127.0.0.1",
                "--port",
                "{port}",
                "--dir",
                "{dir}",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--maxclients",
                "20000",
            ],
        )?;
        let url = format!("redis://127.0.0.1:{}/", server.port);
        Ok((server, url, None))
    };
    let run = PeerRun {
        system: "redis",
        durability: "Streams, AOF appendfsync always",
        fanout_durability: "pub/sub (not stored)",
        client: Client::Redis,
        start: &start,
    };
    run_peer(args, load, run).await
}

/// One Markdown table: each scenario's figure per system and wharf's ratio to each peer
/// (throughput: wharf ÷ peer, higher is better for wharf; latency: peer p99 ÷ wharf p99).
fn print_tables(args: &Args, figures: &[Figure]) {
    let systems: Vec<&str> = args.systems.iter().map(String::as_str).collect();
    let find = |system: &str, scenario: &str| {
        figures
            .iter()
            .find(|f| f.system == system && f.scenario == scenario)
    };
    let mut header = String::from("| scenario |");
    let mut rule = String::from("|---|");
    for s in &systems {
        header.push_str(&format!(" {s} |"));
        rule.push_str("---|");
    }
    for s in systems.iter().filter(|s| **s != "wharf") {
        header.push_str(&format!(" wharf ÷ {s} |"));
        rule.push_str("---|");
    }
    let runs = if args.quick { 1 } else { args.runs.max(1) };
    println!(
        "Each figure is the median of {runs} run(s); payloads {} bytes; publish {} events from {} connections x {} in flight; replay {} events; latency {} events at {}/s; fan-out {} events to {} subscribers.",
        args.size, args.events, args.connections, args.in_flight, args.backlog, args.latency_events, args.rate, args.fanout_events, args.subscribers
    );
    if systems.contains(&"nats-always") {
        println!(
            "nats-always publishes and replays {} events only: it fsyncs each message.",
            args.always_events.min(args.events)
        );
    }
    println!();
    println!("{header}\n{rule}");
    for scenario in &args.scenarios {
        let mut row = format!("| {scenario} |");
        for s in &systems {
            let cell = match find(s, scenario) {
                None => "—".to_owned(),
                Some(f) if scenario == "latency" => {
                    format!("p50 {} / p99 {}", fmt_ms(f.p50_ms), fmt_ms(f.p99_ms))
                }
                Some(f) if scenario == "publish" => {
                    format!("{:.0}/s (p99 {})", f.rate, fmt_ms(f.p99_ms))
                }
                Some(f) => format!("{:.0}/s", f.rate),
            };
            row.push_str(&format!(" {cell} |"));
        }
        let ours = find("wharf", scenario);
        for s in systems.iter().filter(|s| **s != "wharf") {
            let cell = match (ours, find(s, scenario)) {
                (Some(w), Some(p)) if scenario == "latency" => match (w.p99_ms, p.p99_ms) {
                    (Some(w), Some(p)) if w > 0.0 => format!("p99 {:.2}×", p / w),
                    _ => "—".into(),
                },
                (Some(w), Some(p)) if p.rate > 0.0 => format!("{:.2}×", w.rate / p.rate),
                _ => "—".into(),
            };
            row.push_str(&format!(" {cell} |"));
        }
        println!("{row}");
    }
    println!();
    println!("| system | durability of its figures |\n|---|---|");
    let mut seen = Vec::new();
    for f in figures {
        let key = (f.system.clone(), f.durability.clone());
        if !seen.contains(&key) {
            println!("| {} ({}) | {} |", f.system, f.scenario, f.durability);
            seen.push(key);
        }
    }
    println!();
    println!("| system | scenario | broker RSS peak |\n|---|---|---|");
    for f in figures {
        if let Some(mb) = f.rss_peak_mb {
            println!("| {} | {} | {mb:.1} MB |", f.system, f.scenario);
        }
    }
}
