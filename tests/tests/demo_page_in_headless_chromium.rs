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

use serde_json::json;
use wharf_tests::browser::{chromium_or_skip, cli_publish, http_get, start_nodes, Browser, Page};
use wharf_tests::{data_dir, Backend};

async fn the_demo_page_shows_missed_events_once_in_order_after_going_online(backend: Backend) {
    let Some(chromium) = chromium_or_skip() else {
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

    let browser = Browser::start(&chromium, &tmp.path().join("chromium-profile"), (1200, 800));
    let devtools = browser.devtools.clone();
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
    page.screenshot("demo-page.png").await;

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

wharf_tests::conformance!(the_demo_page_shows_missed_events_once_in_order_after_going_online);
