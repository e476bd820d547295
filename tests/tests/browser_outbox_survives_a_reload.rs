//! The browser client's persistent outbox (IndexedDB) in a real browser (headless Chromium):
//! the parcel demo page loses the network (DevTools' offline emulation) and publishes five
//! events, which wait in its outbox; the tab is then navigated away while offline (the page,
//! its client and its sockets are gone):
//! nothing has reached the broker. Loaded again, the new page finds the five entries in its
//! outbox and sends them, in order (each `outbox-published`), and the broker stores each exactly
//! once, in the order they were published; the page's board shows them; a last reload finds
//! the outbox empty and stores nothing more.
//!
//! Without Chromium installed the test says so and passes, unless `WHARF_REQUIRE_BROWSER=1`.

use std::time::Duration;

use serde_json::{json, Value};
use wharf_tests::browser::{chromium_or_skip, start_nodes, stored, Browser, Page};
use wharf_tests::{data_dir, Backend, WAIT};

/// How many events are published offline.
const N: u64 = 5;

/// The page's publisher redials within 4 s (its `maxReconnectDelay`); room for a loaded machine.
const RECONNECT_WAIT: Duration = Duration::from_secs(25);

/// What the page's outbox holds, once it holds `n` entries (polled in the page, within
/// `within`): the `n` field of each payload, in order; `null` if it never held `n`.
async fn pending_when(page: &mut Page, n: usize, within: Duration) -> Value {
    let ms = within.as_millis();
    page.eval_within(
        &format!(
            "(async () => {{ const end = Date.now() + {ms}; \
               for (;;) {{ const p = await window.wharfDemo.pending(); \
                 if (p.length === {n}) return p.map((e) => e.payload.n); \
                 if (Date.now() > end) return {{ stuck: p }}; \
                 await new Promise((r) => setTimeout(r, 50)); }} }})()"
        ),
        within + WAIT,
    )
    .await
}

async fn events_published_offline_are_stored_once_after_a_reload(backend: Backend) {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let (tmp, _) = data_dir();
    let nodes = start_nodes(backend, tmp.path());
    let node = &nodes[0];
    let page_url = format!("http://{}/?consumer=outbox-test", node.http_addr());

    let browser = Browser::start(&chromium, &tmp.path().join("chromium-profile"), (1200, 800));
    let mut page = Page::open_with_network(&browser.devtools, &page_url).await;
    assert_eq!(
        page.eval("window.wharfDemo.ready.then(() => true)").await,
        json!(true)
    );
    assert_eq!(pending_when(&mut page, 0, WAIT).await, json!([]));

    // Offline: the page's sockets carry nothing. Five publishes wait in the outbox.
    page.network(true).await;
    for n in 1..=N {
        page.eval(&format!(
            "window.wharfDemo.publish('parcels.o{n}.pickup', {{ n: {n} }}); true"
        ))
        .await;
    }
    let waiting = pending_when(&mut page, N as usize, WAIT).await;
    assert_eq!(
        waiting,
        json!([1, 2, 3, 4, 5]),
        "stored in the outbox in order"
    );
    assert_eq!(
        stored(&node.url, "parcels.>", 100).await,
        Vec::<Value>::new(),
        "nothing reached the broker while offline"
    );

    // The page goes away while offline (its client, its in-memory queue and its sockets
    // with it); nothing reached the broker. Back online, the page is loaded again.
    page.navigate("about:blank").await;
    assert_eq!(
        stored(&node.url, "parcels.>", 100).await,
        Vec::<Value>::new()
    );
    page.network(false).await;
    page.navigate(&page_url).await;

    // The new page sends what its outbox holds, each confirmed (its `outbox-published`).
    assert_eq!(pending_when(&mut page, 0, RECONNECT_WAIT).await, json!([]));
    page.wait_for(&format!("window.wharfDemo.resent.length >= {N}"), WAIT)
        .await;
    let resent = page
        .eval("window.wharfDemo.resent.map((e) => e.payload.n)")
        .await;
    // (A frame the dead socket held may reach the broker as the network returns, before the
    // socket is gone: the page's resend is then a `duplicate`, stored once all the same.)
    assert_eq!(
        resent,
        json!([1, 2, 3, 4, 5]),
        "sent by the reloaded page from its outbox, in order"
    );
    let events = stored(&node.url, "parcels.>", 100).await;
    let shown: Vec<(String, Value)> = events
        .iter()
        .map(|e| {
            (
                e["topic"].as_str().unwrap().to_owned(),
                e["payload"].clone(),
            )
        })
        .collect();
    let expected: Vec<(String, Value)> = (1..=N)
        .map(|n| (format!("parcels.o{n}.pickup"), json!({ "n": n })))
        .collect();
    assert_eq!(shown, expected, "each stored once, in order: {events:?}");
    assert!(
        events
            .windows(2)
            .all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()),
        "{events:?}"
    );
    // The page's durable consumer shows them too, each once.
    let seen = page
        .eval(&format!("window.wharfDemo.waitForEvents({N})"))
        .await;
    assert_eq!(seen.as_array().unwrap().len() as u64, N, "{seen}");

    // Confirmed entries left the outbox: one more reload finds it empty and sends nothing.
    page.navigate(&page_url).await;
    assert_eq!(
        page.eval("window.wharfDemo.ready.then(() => true)").await,
        json!(true)
    );
    assert_eq!(pending_when(&mut page, 0, WAIT).await, json!([]));
    assert_eq!(stored(&node.url, "parcels.>", 100).await.len() as u64, N);
}

wharf_tests::conformance!(events_published_offline_are_stored_once_after_a_reload);
