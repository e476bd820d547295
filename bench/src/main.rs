//! `wharf-compare`: the same scenarios against wharf, NATS JetStream and Redis Streams on this
//! machine, in one run, and one table with the ratios.
//!
//! wharf's figures come from `wharf bench --json` (which starts its own `wharf serve`); the
//! peers run as child processes on loopback ports and temporary directories, each with the
//! durability setting written next to its figures. Nothing here is a dependency of `wharf`.
//! `bench/run.sh` installs the peers when missing and runs this in release mode.
//!
//! The cluster systems run on a 3-node NATS JetStream cluster the runner starts on loopback
//! (a fresh one per scenario): `wharf-nats` and `wharf-nats2` are one and two wharf nodes
//! (`backend = "nats"`) over it, loaded through WebSocket with the load split across the
//! nodes; `jetstream-r3` is the same stream used directly through async-nats, with the
//! same settings (`jetstream-r3-acked`: with every ack confirmed, as a wharf node does). A second table compares them, with the CPU each event costs the wharf
//! nodes and the NATS servers.

mod chart;
mod cluster;
mod figure;
mod jetstream;
mod nats;
mod peer;
mod redis;
mod wharf_ws;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use serde_json::Value;

use cluster::{NatsCluster, Probe, WharfNode};
use figure::{percentiles, Figure};
use peer::{Peer, RssWatch};

/// The systems that run on the 3-node NATS cluster.
const CLUSTER_SYSTEMS: [&str; 4] = [
    "wharf-nats",
    "wharf-nats2",
    "jetstream-r3",
    "jetstream-r3-acked",
];

#[derive(Parser, Debug)]
#[command(about = "wharf against NATS JetStream and Redis Streams, side by side")]
struct Args {
    /// Systems to run, in order: wharf, nats, nats-always, redis, and on a 3-node NATS
    /// cluster wharf-nats (one wharf node), wharf-nats2 (two), jetstream-r3 (raw
    /// JetStream, 3 replicas) and jetstream-r3-acked (the same, every replayed message's
    /// ack confirmed, the promise of a wharf `ok`).
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
    /// Events per frame wharf's replay subscriber asks for (`batch`); NATS fetches and Redis
    /// reads 1,000 at a time.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1000))]
    batch: u32,
    /// Events per frame wharf's fan-out subscribers ask for (1: one event frame each, as the
    /// peers' pub/sub pushes each message).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    fanout_batch: u32,
    /// Events for NATS with sync_interval: always, which fsyncs each message and is slow.
    #[arg(long, default_value_t = 20_000)]
    always_events: u64,
    /// The cluster systems' NATS servers: `always` fsyncs before each ack (wharf's promise,
    /// what the test cluster runs), `default` every 2 minutes. Both sides get the same.
    #[arg(long, value_enum, default_value = "always")]
    cluster_sync: cluster::Sync,
    /// The cluster systems publish (and replay) at most this many events.
    #[arg(long, default_value_t = 200_000)]
    cluster_events: u64,
    /// Events per second in the cluster systems' latency scenario.
    #[arg(long, default_value_t = 5000)]
    cluster_rate: u64,
    /// Subscribers in the cluster systems' fan-out (each a JetStream ordered consumer).
    #[arg(long, default_value_t = 100)]
    cluster_subscribers: u64,
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
    /// Also draw the tables as SVG charts into this directory (throughput, latency and RSS;
    /// `single-*.svg` for the single-machine systems, `cluster-*.svg` for the cluster ones).
    #[arg(long, value_name = "DIR")]
    svg_dir: Option<PathBuf>,
    /// Measure nothing: read the figures of an earlier run (its `--json` lines) from FILE
    /// and print its tables (and charts, with --svg-dir).
    #[arg(long, value_name = "FILE")]
    from_json: Option<PathBuf>,
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
    if let Some(file) = &args.from_json {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let figures = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(Figure::from_json)
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| format!("{} is not wharf-compare --json output", file.display()))?;
        return show(&args, &figures);
    }
    let load = args.load();
    let runs = if args.quick { 1 } else { args.runs.max(1) };
    // Runs interleaved (every system once, then again): a neighbour's burst on this shared
    // machine then falls on one run of each system rather than on all runs of one.
    let mut all = Vec::new();
    for run in 1..=runs {
        for system in &args.systems {
            let found = run_system(&args, &load, system).await?;
            if !args.json {
                for f in &found {
                    eprintln!(
                        "run {run}: {:<12} {:<8} {:>12.0}/s  p50 {:>8}  p99 {:>8}  RSS {:>7} MB{}",
                        f.system,
                        f.scenario,
                        f.rate,
                        fmt_ms(f.p50_ms),
                        fmt_ms(f.p99_ms),
                        f.rss_peak_mb.map_or("-".into(), |m| format!("{m:.1}")),
                        match (f.wharf_cpu_us, f.nats_cpu_us, f.client_cpu_us) {
                            (w, Some(n), Some(c)) => format!(
                                "  CPU/event wharf {} NATS {n:.1} client {c:.1} µs",
                                w.map_or("-".into(), |w| format!("{w:.1}"))
                            ),
                            _ => String::new(),
                        }
                    );
                }
            }
            all.extend(found);
        }
    }
    show(&args, &figure::medians(all))
}

/// Prints the figures (tables, or JSON lines) and draws the charts when asked.
fn show(args: &Args, figures: &[Figure]) -> anyhow::Result<()> {
    if args.json {
        for f in figures {
            println!("{}", f.to_json());
        }
    } else {
        print_tables(args, figures);
    }
    if let Some(dir) = &args.svg_dir {
        write_charts(args, figures, dir)?;
    }
    Ok(())
}

/// The single-machine and the cluster systems' charts, each set only when it has figures.
fn write_charts(args: &Args, figures: &[Figure], dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot make {}", dir.display()))?;
    let present = |cluster: bool| -> Vec<&str> {
        args.systems
            .iter()
            .map(String::as_str)
            .filter(|s| CLUSTER_SYSTEMS.contains(s) == cluster)
            .filter(|s| figures.iter().any(|f| f.system == *s))
            .collect()
    };
    let sets = [
        ("single-", present(false), "one machine, medians"),
        ("cluster-", present(true), "3-node NATS cluster, medians"),
    ];
    for (prefix, systems, note) in sets {
        if systems.is_empty() {
            continue;
        }
        for (name, svg) in chart::charts(figures, &systems, &args.scenarios, prefix, note) {
            let path = dir.join(&name);
            std::fs::write(&path, svg)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
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
        "wharf-nats" | "wharf-nats2" | "jetstream-r3" | "jetstream-r3-acked" => {
            run_cluster(args, &cluster_load(args, load), system).await
        }
        other => bail!(
            "unknown system {other:?}; known: wharf, nats, nats-always, redis, wharf-nats, wharf-nats2, jetstream-r3, jetstream-r3-acked"
        ),
    }
}

/// The cluster systems' sizes: capped by `--cluster-events`, at `--cluster-rate`, with at
/// most `--cluster-subscribers` (each is an ordered consumer on the stream).
fn cluster_load(args: &Args, load: &Load) -> Load {
    let mut small = load.clone();
    let cap = if args.quick { 300 } else { args.cluster_events };
    small.events = small.events.min(cap);
    small.backlog = small.backlog.min(cap);
    small.latency_events = small.latency_events.min(cap);
    small.rate = args.cluster_rate.max(1);
    small.subscribers = small.subscribers.min(args.cluster_subscribers.max(1));
    small
}

fn fmt_ms(ms: Option<f64>) -> String {
    ms.map_or("-".into(), |m| format!("{m:.2} ms"))
}

fn wanted(args: &Args, scenario: &str) -> bool {
    args.scenarios.iter().any(|s| s == scenario)
}

/// The wharf executable: `--wharf`, or `wharf` beside this one.
fn wharf_path(args: &Args) -> anyhow::Result<PathBuf> {
    Ok(match &args.wharf {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("no directory for wharf-compare"))?
            .join("wharf"),
    })
}

fn run_wharf(args: &Args, load: &Load) -> anyhow::Result<Vec<Figure>> {
    let wharf = wharf_path(args)?;
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
            .args(match (scenario, args.batch, args.fanout_batch) {
                ("replay", n, _) | ("fanout", _, n) if n > 1 => {
                    vec!["--batch".to_owned(), n.to_string()]
                }
                _ => Vec::new(),
            })
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
            server_cpu_us: r["broker_cpu_us"].as_f64(),
            client_cpu_us: r["client_cpu_us"].as_f64(),
            ..Figure::default()
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
    /// The scenario's rate and latencies (none where it measures none). `probe` is started
    /// when the measured part begins (for replay, after the backlog is stored).
    async fn measure(
        self,
        addr: &str,
        scenario: &str,
        load: &Load,
        probe: &Probe,
    ) -> anyhow::Result<(f64, Vec<f64>)> {
        let rate = load.rate as f64;
        // Replay and fan-out begin it themselves, once their set-up is done.
        if !matches!(scenario, "replay" | "fanout") {
            probe.begin();
        }
        Ok(match (self, scenario) {
            (Client::Nats, "publish") => nats::publish(addr, load).await?,
            (Client::Nats, "replay") => (nats::replay(addr, load, probe).await?, Vec::new()),
            (Client::Nats, "latency") => (rate, nats::latency(addr, load).await?),
            (Client::Nats, _) => (nats::fanout(addr, load, probe).await?, Vec::new()),
            (Client::Redis, "publish") => redis::publish(addr, load).await?,
            (Client::Redis, "replay") => (redis::replay(addr, load, probe).await?, Vec::new()),
            (Client::Redis, "latency") => (rate, redis::latency(addr, load).await?),
            (Client::Redis, _) => (redis::fanout(addr, load, probe).await?, Vec::new()),
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
        let probe = Probe::single(server.pid());
        let (rate, latencies) = run.client.measure(&addr, scenario, load, &probe).await?;
        let units = match scenario {
            "publish" => load.events,
            "replay" => load.backlog,
            "latency" => load.latency_events,
            _ => load.fanout_events * load.subscribers,
        };
        let cost = probe.cost(units);
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
            server_cpu_us: cost.map(|c| c.server_us()),
            client_cpu_us: cost.map(|c| c.client_us),
            ..Figure::default()
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

/// What a cluster scenario measured.
pub struct Measured {
    /// events/s (deliveries/s for fan-out; the rate asked for latency).
    pub rate: f64,
    pub latencies: Vec<f64>,
    /// What the CPU cost is divided by: events (deliveries for fan-out).
    pub units: u64,
}

/// A cluster system: per scenario, a fresh 3-node NATS cluster, and for the wharf systems
/// fresh wharf nodes over it.
async fn run_cluster(args: &Args, load: &Load, system: &str) -> anyhow::Result<Vec<Figure>> {
    let wharf_nodes = match system {
        "wharf-nats" => 1,
        "wharf-nats2" => 2,
        _ => 0,
    };
    let wharf = if wharf_nodes > 0 {
        Some(wharf_path(args)?)
    } else {
        None
    };
    let sync = args.cluster_sync.describe();
    let mut out = Vec::new();
    for scenario in ["publish", "replay", "latency", "fanout"] {
        if !wanted(args, scenario) {
            continue;
        }
        let cluster = NatsCluster::start(&args.nats_server, args.cluster_sync)?;
        let mut nodes = Vec::new();
        if let Some(wharf) = &wharf {
            for _ in 0..wharf_nodes {
                let room = load.connections + load.subscribers + 100;
                nodes.push(WharfNode::start(wharf, cluster.urls(), room)?);
            }
        }
        let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
        let wharf_pids: Vec<u32> = nodes.iter().map(WharfNode::pid).collect();
        // RSS: the wharf nodes' for the wharf systems, the NATS servers' for raw JetStream.
        let watched = if nodes.is_empty() {
            cluster.pids()
        } else {
            wharf_pids.clone()
        };
        let watches: Vec<RssWatch> = watched.iter().map(|&p| RssWatch::new(p)).collect();
        let probe = Probe::new(wharf_pids, cluster.pids());
        let measured = if nodes.is_empty() {
            let nats = cluster.urls();
            let acked = system == "jetstream-r3-acked";
            match scenario {
                "publish" => jetstream::publish(nats, load, &probe).await,
                "replay" => jetstream::replay(nats, load, &probe, acked).await,
                "latency" => jetstream::latency(nats, load, &probe).await,
                _ => jetstream::fanout(nats, load, &probe).await,
            }
        } else {
            match scenario {
                "publish" => wharf_ws::publish(&urls, load, &probe).await,
                "replay" => wharf_ws::replay(&urls, load, &probe).await,
                "latency" => wharf_ws::latency(&urls, load, &probe).await,
                _ => wharf_ws::fanout(&urls, load, &probe).await,
            }
        }
        .with_context(|| format!("{system} {scenario}"))?;
        let cost = probe.cost(measured.units);
        let (p50_ms, p99_ms) = percentiles(measured.latencies);
        let timed = matches!(scenario, "publish" | "latency");
        let how = match (wharf_nodes, scenario) {
            (0, "fanout") => "ordered consumers, one per subscriber".to_owned(),
            (0, "replay") if system == "jetstream-r3-acked" => {
                "async-nats, every ack confirmed (a request, as a wharf node's), 500 outstanding"
                    .to_owned()
            }
            (0, "replay") => {
                "async-nats, acks sent, every 500th a double ack (confirmed)".to_owned()
            }
            (0, _) => "async-nats, Nats-Msg-Id on each publish".to_owned(),
            (n, "fanout") => {
                format!("{n} wharf node(s); live WebSocket subscribers (ordered consumers)")
            }
            (n, _) => format!("{n} wharf node(s), load split across them"),
        };
        out.push(Figure {
            system: system.into(),
            durability: format!("JetStream R3 file store, {sync}; {how}"),
            scenario: scenario.into(),
            rate: measured.rate,
            p50_ms: if timed { p50_ms } else { None },
            p99_ms: if timed { p99_ms } else { None },
            rss_peak_mb: Some(watches.iter().map(RssWatch::peak_mb).sum()),
            wharf_cpu_us: cost.filter(|_| wharf_nodes > 0).map(|c| c.wharf_us),
            nats_cpu_us: cost.map(|c| c.nats_us),
            nats_max_cpu_us: cost.map(|c| c.nats_max_us),
            client_cpu_us: cost.map(|c| c.client_us),
            server_cpu_us: None,
        });
        drop(watches);
        drop(nodes);
        drop(cluster);
    }
    Ok(out)
}

/// The tables: the single-machine systems with wharf's ratio to each peer (throughput:
/// wharf ÷ peer, higher is better for wharf; latency: peer p99 ÷ wharf p99), then the cluster
/// systems with each wharf system's ratio to raw JetStream (throughput: wharf ÷ raw; latency:
/// wharf p99 ÷ raw p99, lower is better for wharf) and the CPU per event.
fn print_tables(args: &Args, figures: &[Figure]) {
    let runs = if args.quick { 1 } else { args.runs.max(1) };
    let load = args.load();
    println!(
        "Each figure is the median of {runs} run(s), the systems' runs interleaved; payloads {} bytes; {} connections x {} publishes in flight.",
        args.size, load.connections, load.in_flight
    );
    let single: Vec<&str> = args
        .systems
        .iter()
        .map(String::as_str)
        .filter(|s| !CLUSTER_SYSTEMS.contains(s))
        .collect();
    let clustered: Vec<&str> = args
        .systems
        .iter()
        .map(String::as_str)
        .filter(|s| CLUSTER_SYSTEMS.contains(s))
        .collect();
    if single.contains(&"nats-always") {
        println!(
            "nats-always publishes and replays {} events only: it fsyncs each message.",
            args.always_events.min(args.events)
        );
    }
    if !single.is_empty() {
        println!(
            "Publish {} events; replay {} events; latency {} events at {}/s; fan-out {} events to {} subscribers.",
            load.events, load.backlog, load.latency_events, load.rate, load.fanout_events, load.subscribers
        );
        println!();
        print_table(args, figures, &single, &["wharf"], &[], false);
        println!();
        println!("CPU time per event (per delivery for fan-out), from /proc and getrusage, while the scenario was measured (the client is `wharf bench` for wharf, wharf-compare for the peers):");
        println!();
        println!("| system | scenario | server | client |\n|---|---|---|---|");
        let us = |v: Option<f64>| v.map_or("—".to_owned(), |v| format!("{v:.2} µs"));
        for f in figures
            .iter()
            .filter(|f| single.contains(&f.system.as_str()))
        {
            println!(
                "| {} | {} | {} | {} |",
                f.system,
                f.scenario,
                us(f.server_cpu_us),
                us(f.client_cpu_us)
            );
        }
    }
    if !clustered.is_empty() {
        let small = cluster_load(args, &load);
        println!();
        println!(
            "On a 3-node NATS cluster on loopback ({}), a fresh one per scenario: publish {} events, replay {} events, latency {} events at {}/s, fan-out {} events to {} subscribers. Latency ratio: wharf p99 ÷ raw JetStream p99 (lower is better for wharf).",
            args.cluster_sync.describe(),
            small.events,
            small.backlog,
            small.latency_events,
            small.rate,
            small.fanout_events,
            small.subscribers,
        );
        println!();
        print_table(
            args,
            figures,
            &clustered,
            &["wharf-nats", "wharf-nats2"],
            &["jetstream-r3", "jetstream-r3-acked"],
            true,
        );
        println!();
        println!("CPU time per event (per delivery for fan-out), from /proc, while the scenario was measured:");
        println!();
        println!("| system | scenario | wharf nodes | NATS servers (all three) | busiest NATS server | clients (wharf-compare) |\n|---|---|---|---|---|---|");
        let us = |v: Option<f64>| v.map_or("—".to_owned(), |v| format!("{v:.1} µs"));
        for f in figures
            .iter()
            .filter(|f| CLUSTER_SYSTEMS.contains(&f.system.as_str()))
        {
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                f.system,
                f.scenario,
                us(f.wharf_cpu_us),
                us(f.nats_cpu_us),
                us(f.nats_max_cpu_us),
                us(f.client_cpu_us)
            );
        }
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
    println!("| system | scenario | RSS peak (cluster systems: the wharf nodes', or for jetstream-r3 the three NATS servers') |\n|---|---|---|");
    for f in figures {
        if let Some(mb) = f.rss_peak_mb {
            println!("| {} | {} | {mb:.1} MB |", f.system, f.scenario);
        }
    }
}

/// One table of `systems`; in the single-machine table each of `ours` is compared with every
/// other system, in the cluster table (`cluster`) each of `ours` with the `references` only.
fn print_table(
    args: &Args,
    figures: &[Figure],
    systems: &[&str],
    ours: &[&str],
    references: &[&str],
    cluster: bool,
) {
    let find = |system: &str, scenario: &str| {
        figures
            .iter()
            .find(|f| f.system == system && f.scenario == scenario)
    };
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    for o in ours.iter().filter(|o| systems.contains(o)) {
        for s in systems.iter().filter(|s| !ours.contains(s)) {
            if !cluster || references.contains(s) {
                pairs.push((o, s));
            }
        }
    }
    let mut header = String::from("| scenario |");
    let mut rule = String::from("|---|");
    for s in systems {
        header.push_str(&format!(" {s} |"));
        rule.push_str("---|");
    }
    for (o, s) in &pairs {
        header.push_str(&format!(" {o} ÷ {s} |"));
        rule.push_str("---|");
    }
    println!("{header}\n{rule}");
    for scenario in &args.scenarios {
        let mut row = format!("| {scenario} |");
        for s in systems {
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
        for (o, s) in &pairs {
            let cell = match (find(o, scenario), find(s, scenario)) {
                (Some(w), Some(p)) if scenario == "latency" => match (w.p99_ms, p.p99_ms) {
                    (Some(w), Some(p)) if cluster && p > 0.0 => format!("p99 {:.2}×", w / p),
                    (Some(w), Some(p)) if !cluster && w > 0.0 => format!("p99 {:.2}×", p / w),
                    _ => "—".into(),
                },
                (Some(w), Some(p)) if p.rate > 0.0 => format!("{:.2}×", w.rate / p.rate),
                _ => "—".into(),
            };
            row.push_str(&format!(" {cell} |"));
        }
        println!("{row}");
    }
}
