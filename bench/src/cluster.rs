//! The cluster systems' servers: a 3-node NATS JetStream cluster on loopback (routes between
//! the nodes, JetStream stores in a temporary directory, one sync setting for every node) and
//! the wharf nodes (`wharf serve`, `backend = "nats"`) over it. Everything is a child process,
//! killed when dropped; the CPU time each one spends is read from /proc, so that the runner
//! can tell what one event costs the wharf nodes and the NATS servers.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use crate::peer::free_port;

/// When the NATS servers fsync what they store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Sync {
    /// `sync_interval: always`: each server fsyncs before it acknowledges (the promise of
    /// wharf's embedded log; what the test cluster runs).
    Always,
    /// JetStream's default: fsync every 2 minutes (a majority in page cache).
    Default,
}

impl Sync {
    pub fn describe(self) -> &'static str {
        match self {
            Sync::Always => "sync_interval: always",
            Sync::Default => "default sync (fsync every 2 min)",
        }
    }
}

/// A running 3-node cluster.
pub struct NatsCluster {
    nodes: Vec<Child>,
    urls: Vec<String>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts three nodes and waits until JetStream is healthy on each. Ports picked free can
    /// be taken before a node binds them: a cluster that does not get healthy is tried again
    /// on fresh ports, twice.
    pub fn start(program: &str, sync: Sync) -> anyhow::Result<NatsCluster> {
        let mut why = anyhow!("no try");
        for _ in 0..3 {
            match NatsCluster::try_start(program, sync) {
                Ok(cluster) => return Ok(cluster),
                Err(e) => why = e,
            }
        }
        Err(why.context("no healthy 3-node NATS cluster in three tries"))
    }

    fn try_start(program: &str, sync: Sync) -> anyhow::Result<NatsCluster> {
        let dir = tempfile::tempdir().context("a temporary directory for the NATS cluster")?;
        let ports = |_| free_port();
        let client: Vec<u16> = (0..3).map(ports).collect::<anyhow::Result<_>>()?;
        let route: Vec<u16> = (0..3).map(ports).collect::<anyhow::Result<_>>()?;
        let monitor: Vec<u16> = (0..3).map(ports).collect::<anyhow::Result<_>>()?;
        let routes: Vec<String> = route
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect();
        let sync_line = match sync {
            Sync::Always => "sync_interval: always",
            Sync::Default => "",
        };
        let mut cluster = NatsCluster {
            nodes: Vec::new(),
            urls: client
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect(),
            _dir: dir,
        };
        for i in 0..3 {
            let base = cluster._dir.path();
            let store = base.join(format!("n{i}"));
            let config = base.join(format!("n{i}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\n\
                     jetstream {{\n  store_dir: {:?}\n  {sync_line}\n}}\n\
                     cluster {{\n  name: wharf-bench\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                    client[i],
                    monitor[i],
                    store.display().to_string(),
                    route[i],
                    routes.join(", ")
                ),
            )
            .context("cannot write a NATS config")?;
            let log = base.join(format!("n{i}.log"));
            let child = Command::new(program)
                .arg("-c")
                .arg(&config)
                .arg("-l")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| {
                    format!("cannot start {program} (run bench/run.sh to install it)")
                })?;
            cluster.nodes.push(child);
        }
        for (i, port) in monitor.iter().enumerate() {
            if let Err(e) = healthy_within(*port, Duration::from_secs(20)) {
                let log = std::fs::read_to_string(cluster._dir.path().join(format!("n{i}.log")))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(6).collect();
                bail!(
                    "{e}; its log ends:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        Ok(cluster)
    }

    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().map(Child::id).collect()
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for child in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until the node's monitoring endpoint says JetStream is healthy.
fn healthy_within(port: u16, limit: Duration) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("the NATS node with monitoring port {port} was not healthy within {limit:?}")
}

/// A `wharf serve` over the cluster.
pub struct WharfNode {
    pub url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

/// The stream and subject prefix every bench system uses on the cluster.
pub const STREAM: &str = "BENCH";
pub const PREFIX: &str = "bench";

impl WharfNode {
    /// Starts `wharf serve` with `backend = "nats"` on `urls` and waits for its "listening"
    /// line (which comes once the stream is set up, or after the backend's first look at it
    /// timed out: the bench then waits for `/readyz`).
    pub fn start(wharf: &Path, urls: &[String], max_connections: u64) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("a temporary data dir for wharf")?;
        let config = dir.path().join("config.toml");
        let quoted: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nlog_level = \"info\"\n\
                 max_connections = {max_connections}\nbackend = \"nats\"\n\
                 [nats]\nurls = [{}]\nstream = \"{STREAM}\"\nsubject_prefix = \"{PREFIX}\"\n\
                 replicas = 3\npublish_timeout = \"30s\"\n",
                dir.path().join("data").display().to_string(),
                quoted.join(", ")
            ),
        )
        .context("cannot write the wharf node's config")?;
        let mut child = Command::new(wharf)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .env_remove("WHARF_BACKEND")
            .env_remove("WHARF_NATS_URLS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot run {} (build it with cargo build --release)",
                    wharf.display()
                )
            })?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| anyhow!("no stderr from wharf serve"))?;
        let url = match listening_url(stderr) {
            Ok(url) => url,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        let node = WharfNode {
            url,
            child,
            _dir: dir,
        };
        node.wait_ready()?;
        Ok(node)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `/readyz` answers 200 (the stream is set up).
    fn wait_ready(&self) -> anyhow::Result<()> {
        use std::io::{Read, Write};
        let addr = self
            .url
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(
                    b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                );
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                if out.starts_with("HTTP/1.1 200") {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("the wharf node at {} was not ready within 30 s", self.url)
    }
}

impl Drop for WharfNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `wharf serve`'s log until its "listening" line; later lines are read and dropped so
/// that the broker never blocks on a full pipe.
fn listening_url(stderr: std::process::ChildStderr) -> anyhow::Result<String> {
    let (tx, rx) = std::sync::mpsc::channel::<Result<String, String>>();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent && line.contains("listening") {
                if let Some(url) = line.split_whitespace().find_map(|w| w.strip_prefix("url=")) {
                    let _receiver_waits = tx.send(Ok(url.to_owned()));
                    sent = true;
                }
            }
            if !sent {
                seen.push(line);
            }
        }
        if !sent {
            let _receiver_waits = tx.send(Err(seen.join("\n")));
        }
    });
    match rx.recv_timeout(Duration::from_secs(40)) {
        Ok(Ok(url)) => Ok(url),
        Ok(Err(log)) => bail!("wharf serve (backend nats) did not start:\n{log}"),
        Err(_) => bail!("wharf serve (backend nats) did not report listening within 40 s"),
    }
}

/// CPU time (user + system) a process has used, in seconds, from /proc (Linux only).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: the fields after it start past the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the state.
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks())
}

/// The kernel's clock ticks per second (USER_HZ): 100 on every Linux this runs on.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds used by a set of processes between two points.
pub struct CpuMeter {
    pids: Vec<u32>,
    at_start: Vec<f64>,
}

impl CpuMeter {
    pub fn start(pids: Vec<u32>) -> CpuMeter {
        let at_start = pids
            .iter()
            .map(|&p| cpu_seconds(p).unwrap_or(0.0))
            .collect();
        CpuMeter { pids, at_start }
    }

    /// CPU seconds of each process since `start`.
    pub fn used(&self) -> Vec<f64> {
        self.pids
            .iter()
            .zip(&self.at_start)
            .map(|(&p, &s)| (cpu_seconds(p).unwrap_or(s) - s).max(0.0))
            .collect()
    }
}

/// The CPU a cluster scenario costs, from the moment it calls [`Probe::begin`] (after its
/// set-up: the replay's backlog is not counted) until the runner reads it.
pub struct Probe {
    wharf: Vec<u32>,
    nats: Vec<u32>,
    /// The wharf nodes', the NATS servers' and this process's (the clients').
    started: std::sync::Mutex<Option<(CpuMeter, CpuMeter, CpuMeter)>>,
}

/// CPU seconds per measured unit (event, or delivery for fan-out), in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuCost {
    // (For a `Probe::single`, `wharf_us` is the server's: see `server_us`.)
    /// The wharf nodes together.
    pub wharf_us: f64,
    /// The three NATS servers together.
    pub nats_us: f64,
    /// The NATS server that spent most (the stream's leader, as a rule).
    pub nats_max_us: f64,
    /// The load generator (this process: the WebSocket or async-nats clients).
    pub client_us: f64,
}

impl CpuCost {
    /// The server's cost, for a [`Probe::single`].
    pub fn server_us(&self) -> f64 {
        self.wharf_us
    }
}

impl Probe {
    /// A probe of one server process (a single-node system) and this process: the server's
    /// cost is [`CpuCost::server_us`].
    pub fn single(server: u32) -> Probe {
        Probe::new(vec![server], Vec::new())
    }

    pub fn new(wharf: Vec<u32>, nats: Vec<u32>) -> Probe {
        Probe {
            wharf,
            nats,
            started: std::sync::Mutex::new(None),
        }
    }

    pub fn begin(&self) {
        let meters = (
            CpuMeter::start(self.wharf.clone()),
            CpuMeter::start(self.nats.clone()),
            CpuMeter::start(vec![std::process::id()]),
        );
        *self.started.lock().unwrap_or_else(|p| p.into_inner()) = Some(meters);
    }

    /// What `units` cost since `begin` (None if it was never called).
    pub fn cost(&self, units: u64) -> Option<CpuCost> {
        let guard = self.started.lock().unwrap_or_else(|p| p.into_inner());
        let (wharf, nats, client) = guard.as_ref()?;
        let per = |s: f64| s * 1e6 / units.max(1) as f64;
        let nats = nats.used();
        Some(CpuCost {
            wharf_us: per(wharf.used().iter().sum()),
            nats_us: per(nats.iter().sum()),
            nats_max_us: per(nats.iter().copied().fold(0.0, f64::max)),
            client_us: per(client.used().iter().sum()),
        })
    }
}
