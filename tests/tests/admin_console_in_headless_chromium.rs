//! The console (`/admin`) in a real browser (Debian's headless Chromium, driven over the
//! DevTools protocol) while the real `wharf` CLI publishes and consumes: events published
//! with nobody subscribed raise the consumer's lag in the console to their number; a CLI
//! subscriber that prints and acks them brings it back to 0; the rates chart moved; a seek
//! to `all` made from the console (with the keyboard, confirmed in its dialog) makes the
//! still-running CLI subscriber print every event again. The events view pages through a
//! topic's history, and a consumer deleted from the console (after a cancelled first try) is
//! gone. Screenshots are saved next to the test binaries (`target/<profile>/admin-console.png`,
//! and `admin-console-nats.png` on the cluster backend).
//!
//! With auth on, the console asks for a token, refuses a wrong one and one without `admin`,
//! keeps the accepted one in the tab (sessionStorage, never the URL) and is back without
//! asking after a reload.
//!
//! Without Chromium installed the test says so and passes, unless `WHARF_REQUIRE_BROWSER=1`
//! (CI sets it, after installing Chromium).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use wharf_tests::{data_dir, wharf_bin, Backend, WAIT};

/// How many events the CLI publishes while nobody consumes.
const N: u64 = 30;

fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Whether the scenario can run here: Chromium is installed (required under
/// `WHARF_REQUIRE_BROWSER`).
fn browser_or_skip() -> Option<PathBuf> {
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
struct Browser(Child);

impl Drop for Browser {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A CLI process of the scenario, killed (by its PID) when the scenario ends.
struct Cli(Child);

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--remote-debugging-port=0",
            "--window-size=1280,900",
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
    let (tx, rx) = mpsc::channel();
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
        page.navigate(url).await;
        page
    }

    async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}), true).await;
        self.event("Page.loadEventFired").await;
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
    /// of the page (it refreshes every second); fails with what the page shows if it does not
    /// within `within`.
    async fn wait_for(&mut self, condition: &str, within: Duration) {
        let ms = within.as_millis();
        let held = self
            .eval_within(
                &format!("window.wharfAdmin.until(() => ({condition}), {ms})"),
                within + WAIT,
            )
            .await;
        if held != json!(true) {
            let shows = self.eval(SHOWS).await;
            panic!("not within {within:?}: {condition}\nthe page shows: {shows:#}");
        }
    }

    /// Presses Enter on whatever has the focus, as a keyboard user would.
    async fn press_enter(&mut self) {
        self.press("Enter", 13, Some("\r")).await;
    }

    async fn press(&mut self, name: &str, code: u32, text: Option<&str>) {
        for kind in ["keyDown", "keyUp"] {
            let mut key = json!({"type": kind, "key": name, "code": name,
                "windowsVirtualKeyCode": code, "nativeVirtualKeyCode": code});
            if let (Some(text), "keyDown") = (text, kind) {
                key["text"] = json!(text);
            }
            self.call("Input.dispatchKeyEvent", key, true).await;
        }
    }

    /// What Tab reaches, in order, from the top of the page until the focus leaves it: each
    /// control's accessible name (its aria-label, its label, or its text).
    async fn tab_order(&mut self) -> Vec<String> {
        self.eval("document.activeElement?.blur(); window.scrollTo(0, 0); true")
            .await;
        let mut order = Vec::new();
        for _ in 0..60 {
            self.press("Tab", 9, None).await;
            let name = self
                .eval(
                    "(() => { const el = document.activeElement;
                       if (!el || el === document.body) return null;
                       return el.getAttribute('aria-label') || el.labels?.[0]?.textContent.trim()
                         || el.textContent.trim(); })()",
                )
                .await;
            match name.as_str() {
                Some(name) => order.push(name.to_owned()),
                None => break,
            }
        }
        order
    }

    /// A screenshot of the whole page, saved next to the test binaries as `name`.
    async fn screenshot(&mut self, name: &str) {
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
}

/// What the page shows, for a failure message.
const SHOWS: &str =
    "({state: window.wharfAdmin.state(), consumers: window.wharfAdmin.consumers(), \
     topics: window.wharfAdmin.topics(), events: window.wharfAdmin.events(), \
     rates: document.getElementById('rates-now').textContent, \
     status: document.getElementById('status').textContent, \
     error: document.getElementById('error').textContent, \
     tokenError: document.getElementById('token-error').textContent, \
     tokenForm: !document.getElementById('token-form').hidden})";

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

/// Runs a `wharf` client command against `url`; returns its stdout.
fn cli(url: &str, args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(wharf_bin())
        .args(args)
        .args(["--url", url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "wharf {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// `wharf subscribe PATTERN --consumer NAME`, running; each event it prints (and acks) comes
/// out of the receiver as the JSON it printed.
fn cli_subscriber(url: &str, pattern: &str, consumer: &str) -> (Cli, mpsc::Receiver<Value>) {
    let mut child = Command::new(wharf_bin())
        .args(["subscribe", pattern, "--consumer", consumer, "--url", url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let event: Value = serde_json::from_str(&line).expect("one JSON event a line");
            if tx.send(event).is_err() {
                return;
            }
        }
    });
    (Cli(child), rx)
}

/// The next `n` events the subscriber prints, waiting at most `within` for all of them.
fn printed(rx: &mpsc::Receiver<Value>, n: usize, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let mut got = Vec::with_capacity(n);
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(event) => got.push(event),
            Err(_) => panic!(
                "the subscriber printed {} of {n} events: {got:?}",
                got.len()
            ),
        }
    }
    got
}

fn seqs(events: &[Value]) -> BTreeSet<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

async fn the_console_follows_cli_traffic_and_seeks_a_consumer(backend: Backend) {
    let Some(chromium) = browser_or_skip() else {
        return;
    };
    let (tmp, _) = data_dir();
    let broker = backend.start(&tmp.path().join("data"), "");
    let url = broker.url.clone();
    let addr = broker.http_addr();

    // The broker serves the console, which takes the client from the broker and nothing from
    // anywhere else: it works on a host without internet.
    let page = http_get(&addr, "/admin");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("text/html") && page.contains("<title>wharf: console</title>"));
    assert!(page.contains("from '/wharf.js'"));
    assert!(
        !page.contains("http://") && !page.contains("https://") && !page.contains("//cdn"),
        "the console fetches nothing from elsewhere"
    );

    // A consumer that exists before anything is published, and nobody reading it.
    cli(
        &url,
        &["consumer", "add", "watchers", "--pattern", "console.>"],
        "",
    );

    let (_browser, devtools) = start_browser(chromium, &tmp.path().join("chromium-profile"));
    let mut console = Page::open(&devtools, &format!("http://{addr}/admin")).await;
    assert_eq!(
        console.eval("window.wharfAdmin.ready").await,
        json!(true),
        "the console started without asking for a token"
    );
    // The consumer's numbers as the console's table shows them (undefined without a row).
    let watchers = "window.wharfAdmin.consumers().watchers";
    console
        .wait_for(&format!("{watchers}?.lag === 0"), WAIT)
        .await;
    assert_eq!(
        console
            .eval("document.getElementById('token-form').hidden")
            .await,
        json!(true)
    );

    // Which backend serves, and on the cluster its replicas.
    match backend {
        Backend::Log => {
            assert_eq!(
                console
                    .eval("document.getElementById('backend').textContent")
                    .await,
                json!("embedded log")
            );
            assert_eq!(
                console
                    .eval("document.getElementById('cluster').hidden")
                    .await,
                json!(true)
            );
        }
        Backend::Nats => {
            console
                .wait_for(
                    "document.getElementById('backend').textContent.includes('NATS') \
                     && document.querySelectorAll('#peers tbody tr').length === 3 \
                     && document.querySelectorAll('#peers tbody td[data-col=role]').length === 3 \
                     && [...document.querySelectorAll('#peers tbody td[data-col=role]')] \
                        .filter(td => td.textContent === 'leader').length === 1",
                    WAIT,
                )
                .await;
        }
    }

    // Keyboard and screen-reader basics: every field has a label, every header cell a
    // scope, sorting is a button in its column header with aria-sort, the status is live.
    let a11y = console
        .eval(
            "(() => {
               const unlabelled = [...document.querySelectorAll('input')]
                 .filter(el => el.labels.length === 0 && !el.getAttribute('aria-label'))
                 .map(el => el.id);
               const noScope = [...document.querySelectorAll('th')].filter(th => !th.scope).length;
               const sorts = [...document.querySelectorAll('#consumers th[aria-sort]')]
                 .filter(th => th.querySelector('button')).map(th => th.dataset.sort);
               const live = document.getElementById('status').getAttribute('role');
               const alert = document.getElementById('error').getAttribute('role');
               const chart = document.getElementById('chart');
               return { unlabelled, noScope, sorts, live, alert,
                 chart: chart.getAttribute('role') + ' ' + chart.getAttribute('aria-labelledby') };
             })()",
        )
        .await;
    assert_eq!(a11y["unlabelled"], json!([]), "{a11y}");
    assert_eq!(a11y["noScope"], json!(0), "{a11y}");
    assert!(
        a11y["sorts"].as_array().unwrap().contains(&json!("lag")),
        "{a11y}"
    );
    assert_eq!(a11y["live"], "status");
    assert_eq!(a11y["alert"], "alert");
    assert_eq!(a11y["chart"], "img rates-heading rates-now");

    // Published while nobody consumes: the lag rises to N, and the rates chart moves.
    let lines: String = (1..=N).map(|i| format!("{{\"n\":{i}}}\n")).collect();
    let published = cli(&url, &["publish", "console.orders"], &lines);
    assert_eq!(published.lines().count() as u64, N, "{published}");
    console
        .wait_for(&format!("{watchers}?.lag === {N}"), WAIT)
        .await;
    console
        .wait_for(
            "Number(document.getElementById('rates-now').dataset.peakIn) > 0",
            WAIT,
        )
        .await;
    let chart = console
        .eval(
            "new Set(document.getElementById('line-in').getAttribute('points').trim().split(' ') \
             .map(p => p.split(',')[1])).size",
        )
        .await;
    assert!(
        chart.as_u64().unwrap() >= 2,
        "the in-rate line has a rise: {chart}"
    );
    let topics = console.eval("window.wharfAdmin.topics()").await;
    assert_eq!(topics, json!(["console.orders"]));

    // Every control is reached with Tab, in the order the page shows them (disabled pagers
    // skipped).
    assert_eq!(
        console.tab_order().await,
        [
            "consumer",
            "attached",
            "in flight",
            "lag",
            "delivered",
            "dead-lettered",
            "inactive since",
            "Seek watchers",
            "Dead letters of watchers",
            "Delete watchers",
            "Recent events of console.orders",
            "Topic or pattern",
            "Page size",
            "Show the newest",
        ]
    );

    // The CLI subscriber prints and acks every one: the lag falls to 0, deliveries show.
    let (subscriber, events) = cli_subscriber(&url, "console.>", "watchers");
    let first = printed(&events, N as usize, WAIT);
    let delivered = seqs(&first);
    assert_eq!(delivered.len() as u64, N, "{first:?}");
    assert!(first.iter().all(|e| e["delivery"] == 1), "{first:?}");
    console
        .wait_for(
            &format!("{watchers}?.lag === 0 && {watchers}?.ack_pending === 0 && {watchers}?.attached === 1"),
            WAIT,
        )
        .await;
    console
        .wait_for(
            "Number(document.getElementById('rates-now').dataset.peakOut) > 0",
            WAIT,
        )
        .await;
    assert!(
        console
            .eval(&format!("{watchers}.delivered"))
            .await
            .as_u64()
            .unwrap()
            >= N
    );

    // Sorted by lag, from the header's button.
    console
        .eval("document.querySelector('#consumers th[data-sort=lag] button').click()")
        .await;
    assert_eq!(
        console
            .eval(
                "document.querySelector('#consumers th[data-sort=lag]').getAttribute('aria-sort')"
            )
            .await,
        json!("descending")
    );
    assert_eq!(
        console
            .eval("document.querySelector('#consumers th[data-sort=consumer]').getAttribute('aria-sort')")
            .await,
        json!("none")
    );

    // A seek to `all` from the console, with the keyboard: Enter on the row's Seek button
    // opens the dialog (focus inside it, `all` chosen), Continue asks for confirmation (focus
    // on Cancel, the safe choice), and only the confirm button runs it.
    console
        .eval("document.querySelector('tr[data-consumer=watchers] button[aria-label=\"Seek watchers\"]').focus()")
        .await;
    // The refreshes (every second) leave the focus where the keyboard user put it.
    let samples = console
        .eval("Number(document.getElementById('rates-now').dataset.samples)")
        .await
        .as_u64()
        .unwrap();
    console
        .wait_for(
            &format!(
                "Number(document.getElementById('rates-now').dataset.samples) >= {}",
                samples + 2
            ),
            WAIT,
        )
        .await;
    assert_eq!(
        console
            .eval("document.activeElement.getAttribute('aria-label')")
            .await,
        json!("Seek watchers")
    );
    console.press_enter().await;
    console
        .wait_for(
            "document.getElementById('seek-dialog').open \
             && document.getElementById('seek-dialog').contains(document.activeElement)",
            WAIT,
        )
        .await;
    assert_eq!(
        console
            .eval("document.getElementById('seek-all').checked")
            .await,
        json!(true)
    );
    console
        .eval("document.getElementById('seek-continue').focus()")
        .await;
    console.press_enter().await;
    console
        .wait_for(
            "document.getElementById('confirm-dialog').open \
             && document.activeElement === document.getElementById('confirm-cancel')",
            WAIT,
        )
        .await;
    assert_eq!(
        console
            .eval("document.getElementById('confirm-title').textContent")
            .await,
        json!("Seek watchers to the oldest stored event?")
    );
    assert!(
        printed_nothing(&events),
        "nothing is redelivered before the seek is confirmed"
    );
    console
        .eval("document.getElementById('confirm-ok').focus()")
        .await;
    console.press_enter().await;
    console
        .wait_for(
            "document.getElementById('status').textContent === 'Seek watchers to the oldest stored event: done.' \
             && document.activeElement?.getAttribute('aria-label') === 'Seek watchers'",
            WAIT,
        )
        .await;

    // The running CLI subscriber gets every event again, and acks them again.
    let again = printed(&events, N as usize, WAIT);
    assert_eq!(seqs(&again), delivered, "{again:?}");
    console
        .wait_for(&format!("{watchers}?.lag === 0"), WAIT)
        .await;

    // The topic's events, newest page first, then the older ones; nothing consumed.
    console
        .eval("document.querySelector('tr[data-topic=\"console.orders\"] button').click()")
        .await;
    let newest: Vec<u64> = delivered.iter().rev().take(20).rev().copied().collect();
    console
        .wait_for(
            &format!(
                "JSON.stringify(window.wharfAdmin.events()) === {:?}",
                serde_json::to_string(&newest).unwrap()
            ),
            WAIT,
        )
        .await;
    console
        .eval("document.getElementById('events-older').click()")
        .await;
    let older: Vec<u64> = delivered.iter().take(N as usize - 20).copied().collect();
    console
        .wait_for(
            &format!(
                "JSON.stringify(window.wharfAdmin.events()) === {:?} \
                 && document.getElementById('events-older').disabled \
                 && !document.getElementById('events-newer').disabled",
                serde_json::to_string(&older).unwrap()
            ),
            WAIT,
        )
        .await;
    // The consumer's dead letters: none.
    console
        .eval("document.querySelector('button[aria-label=\"Dead letters of watchers\"]').click()")
        .await;
    console
        .wait_for(
            "document.getElementById('events-pattern').value === 'dead.watchers' \
             && window.wharfAdmin.events().length === 0 \
             && document.getElementById('events-where').textContent.includes('no events')",
            WAIT,
        )
        .await;
    console
        .eval("document.querySelector('tr[data-topic=\"console.orders\"] button').click()")
        .await;
    console
        .wait_for("window.wharfAdmin.events().length === 20", WAIT)
        .await;
    console
        .screenshot(match backend {
            Backend::Log => "admin-console.png",
            Backend::Nats => "admin-console-nats.png",
        })
        .await;

    // Deleting asks first: cancelled, the consumer stays; confirmed, it is gone.
    cli(
        &url,
        &["consumer", "add", "scratch", "--pattern", "scratch.>"],
        "",
    );
    let scratch = "window.wharfAdmin.consumers().scratch";
    console
        .wait_for(&format!("{scratch} !== undefined"), WAIT)
        .await;
    let delete = "document.querySelector('button[aria-label=\"Delete scratch\"]').click()";
    console.eval(delete).await;
    console
        .wait_for(
            "document.getElementById('confirm-dialog').open \
             && document.getElementById('confirm-title').textContent === 'Delete scratch?'",
            WAIT,
        )
        .await;
    console
        .eval("document.getElementById('confirm-cancel').click()")
        .await;
    console
        .wait_for(
            "document.getElementById('status').textContent === 'Delete of scratch cancelled.'",
            WAIT,
        )
        .await;
    let listed = cli(&url, &["consumers", "--json"], "");
    assert!(listed.contains("\"scratch\""), "{listed}");
    console.eval(delete).await;
    console
        .wait_for("document.getElementById('confirm-dialog').open", WAIT)
        .await;
    console
        .eval("document.getElementById('confirm-ok').click()")
        .await;
    console
        .wait_for(
            &format!(
                "{scratch} === undefined && {watchers} !== undefined \
                 && document.getElementById('status').textContent === 'Delete scratch: done.'"
            ),
            WAIT,
        )
        .await;
    let listed = cli(&url, &["consumers", "--json"], "");
    assert!(
        !listed.contains("\"scratch\"") && listed.contains("\"watchers\""),
        "{listed}"
    );
    assert_eq!(
        console
            .eval("document.getElementById('error').textContent")
            .await,
        json!(""),
        "no error shown"
    );
    drop(subscriber);
}

/// Whether the subscriber has printed nothing more so far.
fn printed_nothing(rx: &mpsc::Receiver<Value>) -> bool {
    rx.try_recv().is_err()
}

fn hash(token: &str) -> String {
    let out = Command::new(wharf_bin())
        .args(["token", "hash", token])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

const ADMIN_TOKEN: &str = "console-admin-0123456789";
const APP_TOKEN: &str = "console-app-0123456789ab";

#[tokio::test]
async fn with_auth_on_the_console_asks_for_an_admin_token_and_keeps_it_in_the_tab() {
    let Some(chromium) = browser_or_skip() else {
        return;
    };
    let (tmp, _) = data_dir();
    let config = format!(
        "[auth]\nenabled = true\n\
         [[auth.tokens]]\nname = \"ops\"\nsha256 = \"{}\"\nadmin = true\npublish = [\">\"]\n\
         subscribe = [\">\"]\nconsumers = [\"*\"]\n\
         [[auth.tokens]]\nname = \"app\"\nsha256 = \"{}\"\npublish = [\">\"]\nsubscribe = [\">\"]\n\
         consumers = [\"*\"]\n",
        hash(ADMIN_TOKEN),
        hash(APP_TOKEN)
    );
    let broker = Backend::Log.start(&tmp.path().join("data"), &config);
    let addr = broker.http_addr();
    let admin_url = format!("http://{addr}/admin");

    let (_browser, devtools) = start_browser(chromium, &tmp.path().join("chromium-profile"));
    let mut console = Page::open(&devtools, &admin_url).await;
    assert_eq!(
        console.eval("window.wharfAdmin.ready").await,
        json!(false),
        "asked for a token"
    );
    let asking = "!document.getElementById('token-form').hidden \
                  && document.getElementById('console').hidden \
                  && document.activeElement === document.getElementById('token')";
    console.wait_for(asking, WAIT).await;

    // A wrong token, then one without the admin right: refused, and said why.
    for (token, why) in [
        ("not-a-token-at-all-000", "unauthorized"),
        (APP_TOKEN, "forbidden"),
    ] {
        console
            .eval(&format!(
                "document.getElementById('token').value = {token:?}; \
                 document.getElementById('token-form').requestSubmit()"
            ))
            .await;
        console
            .wait_for(
                &format!(
                    "document.getElementById('token-error').textContent.includes({why:?}) && {asking}"
                ),
                WAIT,
            )
            .await;
        assert_eq!(
            console
                .eval("sessionStorage.getItem('wharf-admin-token')")
                .await,
            Value::Null
        );
    }

    // The admin token: the console shows, the token is in this tab's sessionStorage only.
    console
        .eval(&format!(
            "document.getElementById('token').value = {ADMIN_TOKEN:?}; \
             document.getElementById('token-form').requestSubmit()"
        ))
        .await;
    let shown = "!document.getElementById('console').hidden \
                 && document.getElementById('token-form').hidden \
                 && document.getElementById('log-head').textContent !== '–'";
    console.wait_for(shown, WAIT).await;
    let kept = console
        .eval(
            "({session: sessionStorage.getItem('wharf-admin-token'), local: localStorage.length, \
               href: location.href, field: document.getElementById('token').value})",
        )
        .await;
    assert_eq!(kept["session"], ADMIN_TOKEN, "{kept}");
    assert_eq!(kept["local"], 0, "{kept}");
    assert_eq!(kept["href"], admin_url.as_str(), "never in the URL: {kept}");
    assert_eq!(kept["field"], "", "{kept}");

    // A reload of the tab signs in again from sessionStorage, without asking.
    console.navigate(&admin_url).await;
    assert_eq!(console.eval("window.wharfAdmin.ready").await, json!(true));
    console.wait_for(shown, WAIT).await;

    // Forgetting the token asks again.
    console
        .eval("document.getElementById('sign-out').click()")
        .await;
    console.wait_for(asking, WAIT).await;
    assert_eq!(
        console
            .eval("sessionStorage.getItem('wharf-admin-token')")
            .await,
        Value::Null
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

wharf_tests::conformance!(the_console_follows_cli_traffic_and_seeks_a_consumer);
