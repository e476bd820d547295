//! The chat page (`/chat`) in a real browser (Debian's headless Chromium, driven over the
//! DevTools protocol), as two users in one room: each sees the room's history and then the
//! other's messages, and both are in each other's list of who is online. One page loses the
//! network (DevTools' offline emulation: its socket stays open but carries nothing, as on a
//! dead Wi-Fi, until the client's heartbeat gives up on it) and writes two messages while the
//! other posts three; back online, both pages show every message once, in seq order, after the
//! history they already had, and the same as the broker's `history`. Closing a page takes its
//! user off the other's list. A screenshot is saved next to the test binaries
//! (`target/<profile>/chat-page.png`).
//!
//! On the cluster backend the two pages come from two wharf nodes over one NATS stream, so
//! history, presence and join/leave cross nodes.
//!
//! Without Chromium installed the test says so and passes, unless `WHARF_REQUIRE_BROWSER=1`
//! (CI sets it, after installing Chromium).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use wharf_tests::{data_dir, wharf_bin, Backend, Broker, WAIT};

/// How long a page may take to notice a dead network and to come back after it returns: the
/// page's heartbeat (a ping after 4 s of silence, 4 s for its answer) and its longest
/// reconnect delay (4 s), with room for a loaded machine.
const RECONNECT_WAIT: Duration = Duration::from_secs(25);

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
    target: Value,
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
            target: Value::Null,
            session: String::new(),
            next_id: 0,
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
        page.call("Network.enable", json!({}), true).await;
        page.call("Page.navigate", json!({"url": url}), true).await;
        page.event("Page.loadEventFired").await;
        page
    }

    async fn call(&mut self, method: &str, params: Value, session: bool) -> Value {
        self.call_within(method, params, session, WAIT).await
    }

    async fn call_within(
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
        self.eval_within(expr, WAIT).await
    }

    async fn eval_within(&mut self, expr: &str, within: Duration) -> Value {
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

    /// Waits until the page's `condition` (a JS expression) holds, re-checked on every change
    /// of the page; fails with what the page shows if it does not within `within`.
    async fn wait_for(&mut self, condition: &str, within: Duration) {
        let ms = within.as_millis();
        let held = self
            .eval_within(
                &format!("window.wharfChat.until(() => ({condition}), {ms})"),
                within + WAIT,
            )
            .await;
        if held != json!(true) {
            let shows = self.eval(SHOWS).await;
            panic!("not within {within:?}: {condition}\nthe page shows: {shows:#}");
        }
    }

    /// The messages shown: (seq, from, text), top to bottom.
    async fn messages(&mut self) -> Vec<(u64, String, String)> {
        let shown = self.eval("window.wharfChat.messages()").await;
        shown
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["seq"].as_u64().unwrap(),
                    m["from"].as_str().unwrap().to_owned(),
                    m["text"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    async fn online(&mut self) -> Value {
        self.eval("window.wharfChat.online()").await
    }

    /// Types `text` into the message box and submits the form, as a user would.
    async fn type_message(&mut self, text: &str) {
        let expr = format!(
            "document.getElementById('text').value = {}; \
             document.getElementById('send-form').requestSubmit(); \
             document.getElementById('text').value === ''",
            json!(text)
        );
        assert_eq!(self.eval(&expr).await, json!(true), "{text} was not sent");
    }

    async fn network(&mut self, offline: bool) {
        self.call(
            "Network.emulateNetworkConditions",
            json!({"offline": offline, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}),
            true,
        )
        .await;
    }
}

/// Everything the page shows, for a failure message.
const SHOWS: &str = "({state: window.wharfChat.state(), messages: window.wharfChat.messages(), \
     outbox: window.wharfChat.outbox(), online: window.wharfChat.online(), \
     error: document.getElementById('join-error').textContent})";

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

/// What the broker stores in `topic` (its `history`, the newest 50): (seq, from, text).
async fn stored(url: &str, topic: &str) -> Vec<(u64, String, String)> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let request = json!({"op": "history", "id": 1, "topic": topic, "limit": 50});
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
    reply["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["payload"]["from"].as_str().unwrap().to_owned(),
                e["payload"]["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
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

fn start_browser(chromium: PathBuf, profile: &Path) -> (Browser, String) {
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
            // The page behind the other keeps running at full speed (its timers drive the
            // heartbeat and the reconnects).
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
    (browser, devtools)
}

fn texts(messages: &[(u64, String, String)]) -> Vec<&str> {
    messages.iter().map(|(_, _, t)| t.as_str()).collect()
}

async fn two_users_chat_and_one_comes_back_from_offline_to_every_message_once_in_order(
    backend: Backend,
) {
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
    // Ana's page comes from the first node, Ben's from the last (on the cluster, the other).
    let (first, last) = (&nodes[0], &nodes[nodes.len() - 1]);

    // The broker serves the page, which takes the client from the broker too.
    let page = http_get(&first.http_addr(), "/chat");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("text/html") && page.contains("<title>wharf: chat</title>"));
    assert!(page.contains("from '/wharf.js'"));

    // The room's history before anyone joins, and a message in another room.
    cli_publish(
        &first.url,
        "chat.lobby",
        r#"{"text":"welcome","from":"bot"}"#,
    );
    cli_publish(
        &last.url,
        "chat.other",
        r#"{"text":"elsewhere","from":"bot"}"#,
    );
    cli_publish(
        &first.url,
        "chat.lobby",
        r#"{"text":"be kind","from":"bot"}"#,
    );

    let (_browser, devtools) = start_browser(chromium, &tmp.path().join("chromium-profile"));
    let mut ana = Page::open(
        &devtools,
        &format!("http://{}/chat?name=ana&room=lobby", first.http_addr()),
    )
    .await;
    assert_eq!(
        ana.eval("window.wharfChat.ready.then(() => true)").await,
        json!(true)
    );
    let history = ana.messages().await;
    assert_eq!(
        history,
        [
            (1, "bot".to_owned(), "welcome".to_owned()),
            (3, "bot".to_owned(), "be kind".to_owned()),
        ]
    );
    let mut ben = Page::open(
        &devtools,
        &format!("http://{}/chat?name=ben&room=lobby", last.http_addr()),
    )
    .await;
    assert_eq!(
        ben.eval("window.wharfChat.ready.then(() => true)").await,
        json!(true)
    );
    assert_eq!(ben.messages().await, history);

    // Each sees both online: Ben from the presence list he read, Ana from Ben's join.
    let both = "window.wharfChat.online().join() === 'ana,ben'";
    ana.wait_for(both, WAIT).await;
    ben.wait_for(both, WAIT).await;

    // Ana writes; both show it after the history.
    ana.type_message("hi ben").await;
    let three =
        "window.wharfChat.messages().map(m => m.text).join('|') === 'welcome|be kind|hi ben'";
    ana.wait_for(three, WAIT).await;
    ben.wait_for(three, WAIT).await;
    let before_offline = ana.messages().await;
    assert_eq!(before_offline[2].1, "ana");
    assert_eq!(ben.messages().await, before_offline);

    // Ana's network goes: her socket stays open but nothing passes. What she writes at once
    // goes into that socket; her client sends it again (same msg_id) once it has reconnected.
    ana.network(true).await;
    assert_eq!(ana.eval("navigator.onLine").await, json!(false));
    ana.type_message("sent into the dead socket").await;
    // Her heartbeat finds the socket dead; what she writes now waits in the client's queue.
    ana.wait_for("window.wharfChat.state() !== 'connected'", RECONNECT_WAIT)
        .await;
    ana.type_message("typed while offline").await;
    assert_eq!(
        ana.eval("window.wharfChat.outbox().length").await,
        json!(2),
        "both wait to be sent"
    );

    // Meanwhile Ben posts three.
    for text in ["one", "two", "three"] {
        ben.type_message(text).await;
    }
    ben.wait_for(
        "window.wharfChat.messages().slice(3).map(m => m.text).join('|') === 'one|two|three'",
        WAIT,
    )
    .await;
    assert_eq!(
        ana.messages().await,
        before_offline,
        "nothing reaches Ana while she is offline"
    );

    // Back online: Ana reconnects, says hello, resubscribes after the last seq she showed and
    // sends what waited. Every message shows once, in seq order, on both pages.
    ana.network(false).await;
    ana.wait_for(
        "window.wharfChat.messages().length >= 8 && window.wharfChat.outbox().length === 0",
        RECONNECT_WAIT,
    )
    .await;
    let expected = stored(&last.url, "chat.lobby").await;
    let mut sorted = texts(&expected);
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        [
            "be kind",
            "hi ben",
            "one",
            "sent into the dead socket",
            "three",
            "two",
            "typed while offline",
            "welcome"
        ],
        "the broker stores each message once: {expected:?}"
    );
    assert!(expected.windows(2).all(|w| w[0].0 < w[1].0), "{expected:?}");
    // What Ana had, then Ben's three (stored while she was away), then hers.
    assert_eq!(expected[..3], before_offline[..]);
    assert_eq!(texts(&expected[3..6]), ["one", "two", "three"]);
    assert_eq!(
        texts(&expected[6..]),
        ["sent into the dead socket", "typed while offline"]
    );
    assert_eq!(ana.messages().await, expected);
    ben.wait_for("window.wharfChat.messages().length >= 8", WAIT)
        .await;
    assert_eq!(ben.messages().await, expected);

    // Back, Ana sees Ben online again (who came and went meanwhile is read again), and Ben
    // sees Ana.
    ana.wait_for(both, WAIT).await;
    ben.wait_for(both, WAIT).await;

    // While Ana's tab is the one in front (a tab behind another is not painted).
    ana.call("Page.bringToFront", json!({}), true).await;
    let shot = ana
        .call("Page.captureScreenshot", json!({"format": "png"}), true)
        .await;
    let png = base64_decode(shot["data"].as_str().unwrap());
    let out = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|p| p.parent())
        .unwrap()
        .join("chat-page.png");
    std::fs::write(&out, png).unwrap();
    eprintln!("screenshot: {}", out.display());

    // Ben closes his tab: he leaves Ana's list.
    let target = ben.target.clone();
    ben.call("Target.closeTarget", json!({"targetId": target}), false)
        .await;
    ana.wait_for("window.wharfChat.online().join() === 'ana'", WAIT)
        .await;
    assert_eq!(ana.online().await, json!(["ana"]));
    assert_eq!(
        ana.eval("document.getElementById('count').textContent")
            .await,
        json!("1")
    );
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

wharf_tests::conformance!(
    two_users_chat_and_one_comes_back_from_offline_to_every_message_once_in_order
);
