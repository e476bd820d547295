//! The demo page in a real browser (Debian's headless Chromium, driven over the DevTools
//! protocol): an event published with the CLI appears; the page goes offline; more events are
//! published; back online, every event is shown exactly once, in seq order. A screenshot is
//! saved next to the test binaries (`target/<profile>/demo-page.png`).
//!
//! On the cluster backend it runs on two wharf nodes over one NATS stream: the page is
//! loaded from node A while every event is published through node B, then a second page,
//! loaded from B for a new consumer, shows every event from the first on, and an event
//! published through A appears on both pages.
//!
//! Without Chromium installed the test says so and passes, unless `WHARF_REQUIRE_BROWSER=1`
//! (CI sets it, after installing Chromium).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use wharf_tests::{data_dir, wharf_bin, Backend, Broker, WAIT};

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// The browser, killed when the scenario ends, however it ends: its whole process group
/// (it is started as a group leader), since Chromium's renderer and helper processes outlive
/// a killed main process and keep what they inherited (sockets, file locks) open.
struct Browser(std::process::Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A DevTools session on one page.
struct Page {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    session: String,
    next_id: u64,
}

impl Page {
    /// A new tab, on its own DevTools connection to the browser at `devtools`, showing `url`
    /// (loaded: its module scripts have run).
    async fn open(devtools: &str, url: &str) -> Page {
        let (ws, _) = tokio_tungstenite::connect_async(devtools).await.unwrap();
        let mut page = Page {
            ws,
            session: String::new(),
            next_id: 0,
        };
        let target = page
            .call("Target.createTarget", json!({"url": "about:blank"}), false)
            .await;
        let attached = page
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
                false,
            )
            .await;
        page.session = attached["sessionId"].as_str().unwrap().to_owned();
        page.call("Page.enable", json!({}), true).await;
        page.call("Page.navigate", json!({"url": url}), true).await;
        page.event("Page.loadEventFired").await;
        page
    }

    async fn call(&mut self, method: &str, params: Value, session: bool) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if session {
            msg["sessionId"] = json!(self.session);
        }
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        loop {
            let frame = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
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
    async fn event(&mut self, method: &str) -> Value {
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
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "awaitPromise": true, "returnByValue": true}),
                true,
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{expr}: {r}");
        r["result"]["value"].clone()
    }
}

fn cli_publish(url: &str, topic: &str, payload: &str) {
    let out = Command::new(wharf_bin())
        .args(["publish", "--url", url, topic, payload])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

fn http_get(addr: &str, path: &str) -> String {
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

/// The wharf nodes of the scenario: the one broker on the embedded backend; on the cluster
/// backend two nodes (each on its own data dir) serving one stream.
fn start_nodes(backend: Backend, tmp: &Path) -> Vec<Broker> {
    match backend {
        Backend::Log => vec![backend.start(&tmp.join("data"), "")],
        Backend::Nats => {
            let (a_data, b_data) = (tmp.join("a"), tmp.join("b"));
            // Both on the stream named after A's data dir.
            let config = wharf_tests::nats::broker_config(&a_data);
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

async fn the_demo_page_shows_missed_events_once_in_order_after_going_online(backend: Backend) {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var("WHARF_REQUIRE_BROWSER").is_err(),
            "WHARF_REQUIRE_BROWSER is set but Chromium is not installed"
        );
        eprintln!("skipped: Chromium is not installed (apt-get install chromium)");
        return;
    };
    let (tmp, _) = data_dir();
    let nodes = start_nodes(backend, tmp.path());
    // The page comes from the first node; events are published through the last (on the
    // cluster, the other node).
    let (first, last) = (&nodes[0], &nodes[nodes.len() - 1]);
    let url = last.url.clone();
    let addr = first.http_addr();

    // The broker serves the page and the module itself.
    let page = http_get(&addr, "/");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("Parcel board"));
    let module = http_get(&addr, "/wharf.js");
    assert!(module.contains("text/javascript") && module.contains("export class WharfClient"));

    let profile = tmp.path().join("chromium-profile");
    let mut browser = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // The first page keeps running at full speed behind the second (cluster backend).
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--remote-debugging-port=0",
            "--window-size=1200,800",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map(Browser)
        .expect("start chromium");
    let stderr = BufReader::new(browser.0.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(ws) = line.split_whitespace().find(|w| w.starts_with("ws://")) {
                let _ = tx.send(ws.to_owned());
            }
        }
    });
    let devtools = rx
        .recv_timeout(WAIT)
        .expect("chromium printed its DevTools address");
    let mut page = Page::open(&devtools, &format!("http://{addr}/?consumer=browser-test")).await;

    // The module has loaded (module scripts run before the load event); wait until it is
    // connected and subscribed.
    assert_eq!(
        page.eval("window.wharfDemo.ready.then(() => true)").await,
        json!(true)
    );

    cli_publish(&url, "parcels.p1.pickup", r#"{"by":"van 7"}"#);
    let seen = page.eval("window.wharfDemo.waitForEvents(1)").await;
    assert_eq!(seen, json!([1]));

    // Offline: the socket is closed; events published now must not be lost.
    page.eval("document.getElementById('toggle').click(); window.wharfDemo.online()")
        .await;
    assert_eq!(page.eval("window.wharfDemo.online()").await, json!(false));
    cli_publish(&url, "parcels.p1.in_transit", r#"{"hub":"north"}"#);
    cli_publish(&url, "parcels.p2.pickup", r#"{"by":"bike 2"}"#);
    cli_publish(&url, "parcels.p1.delivered", r#"{"at":"door"}"#);

    // Online again: the three missed events appear, in order, each once.
    page.eval("document.getElementById('toggle').click(); true")
        .await;
    let seen = page.eval("window.wharfDemo.waitForEvents(4)").await;
    assert_eq!(seen, json!([1, 2, 3, 4]));
    let shown = page
        .eval(
            "[...document.querySelectorAll('#log li')].map(li => Number(li.dataset.seq)).reverse()",
        )
        .await;
    assert_eq!(shown, json!([1, 2, 3, 4]));
    let board = page
        .eval("[...document.querySelectorAll('#board tr')].map(r => r.cells[0].textContent + ':' + r.cells[1].textContent)")
        .await;
    assert_eq!(board, json!(["p1:delivered", "p2:pickup"]));

    // While it is the tab in front (a tab behind another is not painted).
    let shot = page
        .call("Page.captureScreenshot", json!({"format": "png"}), true)
        .await;
    let png = base64_decode(shot["data"].as_str().unwrap());
    let out = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|p| p.parent())
        .unwrap()
        .join("demo-page.png");
    std::fs::write(&out, png).unwrap();
    eprintln!("screenshot: {}", out.display());

    if nodes.len() > 1 {
        // A second page, from node B, for a consumer of its own (new: it starts at the first
        // event); an event published through node A appears on both, after all the others.
        let mut second = Page::open(
            &devtools,
            &format!("http://{}/?consumer=browser-test-b", last.http_addr()),
        )
        .await;
        assert_eq!(
            second.eval("window.wharfDemo.ready.then(() => true)").await,
            json!(true)
        );
        cli_publish(&first.url, "parcels.p3.pickup", r#"{"by":"van 9"}"#);
        let seen = second.eval("window.wharfDemo.waitForEvents(5)").await;
        assert_eq!(seen, json!([1, 2, 3, 4, 5]));
        let seen = page.eval("window.wharfDemo.waitForEvents(5)").await;
        assert_eq!(seen, json!([1, 2, 3, 4, 5]));
        let board = second
            .eval("[...document.querySelectorAll('#board tr')].map(r => r.cells[0].textContent + ':' + r.cells[1].textContent)")
            .await;
        assert_eq!(board, json!(["p1:delivered", "p2:pickup", "p3:pickup"]));
    }
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

wharf_tests::conformance!(the_demo_page_shows_missed_events_once_in_order_after_going_online);
