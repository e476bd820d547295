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
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wharf_tests::browser::{chromium_or_skip, http_get, Browser, Page};
use wharf_tests::{data_dir, wharf_bin, Backend, WAIT};

/// How many events the CLI publishes while nobody consumes.
const N: u64 = 30;

/// A CLI process of the scenario, killed (by its PID) when the scenario ends.
struct Cli(Child);

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A tab showing the console at `url`; its waits re-check on every change of the page (it
/// refreshes every second).
async fn open_console(devtools: &str, url: &str) -> Page {
    Page::open(devtools, url)
        .await
        .probe("window.wharfAdmin.until", SHOWS)
}

/// The keyboard, on a DevTools [`Page`].
trait Keyboard {
    /// Presses Enter on whatever has the focus, as a keyboard user would.
    async fn press_enter(&mut self);
    async fn press(&mut self, name: &str, code: u32, text: Option<&str>);
    /// What Tab reaches, in order, from the top of the page until the focus leaves it: each
    /// control's accessible name (its aria-label, its label, or its text).
    async fn tab_order(&mut self) -> Vec<String>;
}

impl Keyboard for Page {
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
    let Some(chromium) = chromium_or_skip() else {
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

    let browser = Browser::start(&chromium, &tmp.path().join("chromium-profile"), (1280, 900));
    let devtools = browser.devtools.clone();
    let mut console = open_console(&devtools, &format!("http://{addr}/admin")).await;
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
    // The topics table refreshes on its own (on the cluster, from the stream's subjects).
    console
        .wait_for(
            "JSON.stringify(window.wharfAdmin.topics()) === '[\"console.orders\"]'",
            WAIT,
        )
        .await;
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
        .screenshot_full_page(match backend {
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
    let Some(chromium) = chromium_or_skip() else {
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

    let browser = Browser::start(&chromium, &tmp.path().join("chromium-profile"), (1280, 900));
    let devtools = browser.devtools.clone();
    let mut console = open_console(&devtools, &admin_url).await;
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

wharf_tests::conformance!(the_console_follows_cli_traffic_and_seeks_a_consumer);
