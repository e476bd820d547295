//! The harness of the browser tests: Debian's headless Chromium, driven over the DevTools
//! protocol. Finding it (or skipping without it), starting it in its own process group (killed
//! whole when the test ends, however it ends), a tab per [`Page`] on its own DevTools
//! connection, JS evaluated in it, a condition waited for with a deadline, network offline
//! emulation and screenshots next to the test binaries.
//!
//! Without Chromium installed a test says so and passes ([`chromium_or_skip`] gives `None`),
//! unless `WHARF_REQUIRE_BROWSER=1` (CI sets it, after installing Chromium).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::{wharf_bin, Backend, Broker, WAIT};

/// Where Chromium is installed, if it is.
pub fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Chromium, or `None` (said on stderr) when it is not installed: the scenario is skipped.
/// Under `WHARF_REQUIRE_BROWSER` a missing Chromium fails the test instead.
pub fn chromium_or_skip() -> Option<PathBuf> {
    let found = chromium();
    if found.is_none() {
        assert!(
            std::env::var("WHARF_REQUIRE_BROWSER").is_err(),
            "WHARF_REQUIRE_BROWSER is set but Chromium is not installed"
        );
        eprintln!("skipped: Chromium is not installed (apt-get install chromium)");
    }
    found
}

/// The browser, killed when the scenario ends, however it ends: its whole process group
/// (it is started as a group leader), since Chromium's renderer and helper processes outlive
/// a killed main process and keep what they inherited (sockets, file locks) open.
pub struct Browser {
    child: Child,
    /// The browser's DevTools WebSocket address, for [`Page::open`].
    pub devtools: String,
}

impl Browser {
    /// Starts `chromium` headless on the profile directory `profile`, with a window of
    /// `width`×`height`; returns once it has printed its DevTools address. Browsers start
    /// one at a time, and one that does not come up is started again once: several
    /// Chromiums starting together on a loaded 2-core machine can take longer than a
    /// scenario's wait.
    pub fn start(chromium: &Path, profile: &Path, size: (u32, u32)) -> Browser {
        static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = STARTING.lock().unwrap_or_else(|p| p.into_inner());
        let mut why = String::new();
        for _ in 0..2 {
            match Browser::try_start(chromium, profile, size) {
                Ok(browser) => return browser,
                Err(e) => why = e,
            }
        }
        panic!("chromium did not print its DevTools address, twice: {why}");
    }

    fn try_start(
        chromium: &Path,
        profile: &Path,
        (width, height): (u32, u32),
    ) -> Result<Browser, String> {
        let mut child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                // A page behind another keeps running at full speed (its timers drive
                // heartbeats and reconnects).
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--window-size={width},{height}"))
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", chromium.display()))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        // Owned from here on: dropped (the group killed) if the address never comes.
        let mut browser = Browser {
            child,
            devtools: String::new(),
        };
        let printed = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let printed = printed.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(ws) = line.split_whitespace().find(|w| w.starts_with("ws://")) {
                        let _ = tx.send(ws.to_owned());
                    }
                    printed.lock().unwrap_or_else(|p| p.into_inner()).push(line);
                }
            });
        }
        match rx.recv_timeout(crate::START_WAIT) {
            Ok(devtools) => {
                browser.devtools = devtools;
                Ok(browser)
            }
            Err(e) => {
                let printed = printed.lock().unwrap_or_else(|p| p.into_inner());
                let tail = printed[printed.len().saturating_sub(20)..].join("\n");
                Err(format!(
                    "{e} (waited at most {:?}); its stderr ends:\n{tail}",
                    crate::START_WAIT
                ))
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A DevTools session on one page.
pub struct Page {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    /// The tab's DevTools target id (for `Target.closeTarget`).
    pub target: Value,
    session: String,
    next_id: u64,
    network_enabled: bool,
    /// The page's own `until(check, ms)` (e.g. `window.wharfChat.until`), re-checking on
    /// every change of the page, and what it shows for a failure message; see [`Page::probe`].
    until: Option<(String, String)>,
}

impl Page {
    /// A new tab, on its own DevTools connection to the browser at `devtools`, showing `url`
    /// (loaded: its module scripts have run).
    pub async fn open(devtools: &str, url: &str) -> Page {
        Page::open_with(devtools, url, false).await
    }

    /// [`Page::open`], with DevTools' Network domain on from the start, so that
    /// [`Page::network`] reaches every socket the page opens (one opened before the domain
    /// was enabled is not taken offline).
    pub async fn open_with_network(devtools: &str, url: &str) -> Page {
        Page::open_with(devtools, url, true).await
    }

    async fn open_with(devtools: &str, url: &str, network: bool) -> Page {
        let (ws, _) = tokio_tungstenite::connect_async(devtools).await.unwrap();
        let mut page = Page {
            ws,
            target: Value::Null,
            session: String::new(),
            next_id: 0,
            network_enabled: false,
            until: None,
        };
        let target = page
            .call("Target.createTarget", json!({"url": "about:blank"}), false)
            .await;
        page.target = target["targetId"].clone();
        let attached = page
            .call(
                "Target.attachToTarget",
                json!({"targetId": page.target, "flatten": true}),
                false,
            )
            .await;
        page.session = attached["sessionId"].as_str().unwrap().to_owned();
        page.call("Page.enable", json!({}), true).await;
        if network {
            page.call("Network.enable", json!({}), true).await;
            page.network_enabled = true;
        }
        page.navigate(url).await;
        page
    }

    /// [`Page::wait_for`] uses the page's own `until` (a JS function taking a check and a
    /// time in ms, resolving to whether the check held in time), and shows the value of the
    /// JS expression `shows` when the wait fails.
    pub fn probe(mut self, until: &str, shows: &str) -> Page {
        self.until = Some((until.to_owned(), shows.to_owned()));
        self
    }

    /// Loads `url` in this tab (a reload, if it is the one shown) and waits for its load event.
    pub async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}), true).await;
        self.event("Page.loadEventFired").await;
    }

    /// Reloads the tab and waits for its load event.
    pub async fn reload(&mut self) {
        self.call("Page.reload", json!({}), true).await;
        self.event("Page.loadEventFired").await;
    }

    /// A DevTools command, on this tab's session if `session`; its result.
    pub async fn call(&mut self, method: &str, params: Value, session: bool) -> Value {
        self.call_within(method, params, session, WAIT).await
    }

    pub async fn call_within(
        &mut self,
        method: &str,
        params: Value,
        session: bool,
        within: Duration,
    ) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if session {
            msg["sessionId"] = json!(self.session);
        }
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} within {within:?}"))
                .expect("devtools connection open")
                .expect("devtools frame");
            let Message::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Waits for the DevTools event `method` on this page.
    pub async fn event(&mut self, method: &str) -> Value {
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no {method} event"))
                .expect("devtools connection open")
                .expect("devtools frame");
            let Message::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            if v["method"] == method && v["sessionId"] == json!(self.session) {
                return v["params"].clone();
            }
        }
    }

    /// Evaluates `expr` in the page, awaiting it if it is a promise.
    pub async fn eval(&mut self, expr: &str) -> Value {
        self.eval_within(expr, WAIT).await
    }

    pub async fn eval_within(&mut self, expr: &str, within: Duration) -> Value {
        let r = self
            .call_within(
                "Runtime.evaluate",
                json!({"expression": expr, "awaitPromise": true, "returnByValue": true}),
                true,
                within,
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }

    /// Waits until the page's `condition` (a JS expression) holds; fails, with what the page
    /// shows, if it does not within `within`. With a [`Page::probe`] the page's own `until`
    /// checks it; without, it is checked in the page every 50 ms.
    pub async fn wait_for(&mut self, condition: &str, within: Duration) {
        let ms = within.as_millis();
        let (until, shows) = self.until.clone().unwrap_or_else(|| {
            (
                "((check, ms) => new Promise((done) => { const end = Date.now() + ms; \
                   const again = () => { let held = false; try { held = !!check(); } catch {} \
                     if (held) done(true); else if (Date.now() > end) done(false); \
                     else setTimeout(again, 50); }; again(); }))"
                    .to_owned(),
                "document.body?.innerText".to_owned(),
            )
        });
        let held = self
            .eval_within(
                &format!("{until}(() => ({condition}), {ms})"),
                within + WAIT,
            )
            .await;
        if held != json!(true) {
            let shown = self.eval(&shows).await;
            panic!("not within {within:?}: {condition}\nthe page shows: {shown:#}");
        }
    }

    /// Takes the page off the network (DevTools' offline emulation: open sockets stay open
    /// but carry nothing, new ones fail) or puts it back. The page must have been opened with
    /// [`Page::open_with_network`].
    pub async fn network(&mut self, offline: bool) {
        assert!(
            self.network_enabled,
            "network emulation needs a page opened with Page::open_with_network"
        );
        self.call(
            "Network.emulateNetworkConditions",
            json!({"offline": offline, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}),
            true,
        )
        .await;
    }

    /// A screenshot of what the tab shows (brought to the front first: a tab behind another
    /// is not painted), saved next to the test binaries as `name`.
    pub async fn screenshot(&mut self, name: &str) {
        self.call("Page.bringToFront", json!({}), true).await;
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}), true)
            .await;
        save_png(shot, name);
    }

    /// A screenshot of the whole page, beyond the window, saved as `name`.
    pub async fn screenshot_full_page(&mut self, name: &str) {
        self.call("Page.bringToFront", json!({}), true).await;
        let metrics = self.call("Page.getLayoutMetrics", json!({}), true).await;
        let size = &metrics["cssContentSize"];
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true, "clip": {
                    "x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}}),
                true,
            )
            .await;
        save_png(shot, name);
    }
}

/// The PNG of a `Page.captureScreenshot` result, written to `target/<profile>/<name>`.
fn save_png(shot: Value, name: &str) {
    let png = base64_decode(shot["data"].as_str().unwrap());
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let out = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|p| p.parent())
        .unwrap()
        .join(name);
    std::fs::write(&out, png).unwrap();
    eprintln!("screenshot: {}", out.display());
}

/// Standard base64 (the screenshot), without pulling in a crate for one call.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter_map(value) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// `GET path` from the broker's HTTP listener: the whole response, status line and headers
/// included.
pub fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// `wharf publish --url URL TOPIC PAYLOAD`, which must succeed.
pub fn cli_publish(url: &str, topic: &str, payload: &str) {
    let out = Command::new(wharf_bin())
        .args(["publish", "--url", url, topic, payload])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// What the broker stores in `topic`: its `history`, the newest `limit` events, oldest first.
pub async fn stored(url: &str, topic: &str, limit: u64) -> Vec<Value> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let request = json!({"op": "history", "id": 1, "topic": topic, "limit": limit});
    ws.send(Message::text(request.to_string())).await.unwrap();
    let reply = loop {
        let frame = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a history reply")
            .expect("connection open")
            .expect("frame");
        let Message::Text(text) = frame else { continue };
        let v: Value = serde_json::from_str(text.as_str()).unwrap();
        if v["id"] == 1 {
            break v;
        }
    };
    assert_eq!(reply["type"], "history", "{reply}");
    reply["events"].as_array().unwrap().clone()
}

/// The wharf nodes of a page scenario: the one broker on the embedded backend; on the
/// cluster backend two nodes (each on its own data dir under `tmp`) serving one stream.
pub fn start_nodes(backend: Backend, tmp: &Path) -> Vec<Broker> {
    match backend {
        Backend::Log => vec![backend.start(&tmp.join("data"), "")],
        Backend::Nats => {
            let (a_data, b_data) = (tmp.join("a"), tmp.join("b"));
            // Both on the stream named after A's data dir.
            let config = crate::nats::broker_config(&a_data);
            // One after the other: A makes the stream, B finds it.
            [a_data, b_data]
                .iter()
                .map(|data| {
                    let node = Broker::start(data, &config);
                    node.wait_ready();
                    node
                })
                .collect()
        }
    }
}
