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

use std::time::Duration;

use serde_json::{json, Value};
use wharf_tests::browser::{
    chromium_or_skip, cli_publish, http_get, start_nodes, stored, Browser, Page,
};
use wharf_tests::{data_dir, Backend, WAIT};

/// How long a page may take to notice a dead network and to come back after it returns: the
/// page's heartbeat (a ping after 4 s of silence, 4 s for its answer) and its longest
/// reconnect delay (4 s), with room for a loaded machine.
const RECONNECT_WAIT: Duration = Duration::from_secs(25);

/// The chat page's own helpers, on a DevTools [`Page`].
trait Chat {
    /// The messages shown: (seq, from, text), top to bottom.
    async fn messages(&mut self) -> Vec<(u64, String, String)>;
    async fn online(&mut self) -> Value;
    /// Types `text` into the message box and submits the form, as a user would.
    async fn type_message(&mut self, text: &str);
}

impl Chat for Page {
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

    async fn type_message(&mut self, text: &str) {
        let expr = format!(
            "document.getElementById('text').value = {}; \
             document.getElementById('send-form').requestSubmit(); \
             document.getElementById('text').value === ''",
            json!(text)
        );
        assert_eq!(self.eval(&expr).await, json!(true), "{text} was not sent");
    }
}

/// A tab showing the chat page at `url`; its waits re-check on every change of the page.
async fn open_chat(devtools: &str, url: &str) -> Page {
    Page::open_with_network(devtools, url)
        .await
        .probe("window.wharfChat.until", SHOWS)
}

/// Everything the page shows, for a failure message.
const SHOWS: &str = "({state: window.wharfChat.state(), messages: window.wharfChat.messages(), \
     outbox: window.wharfChat.outbox(), online: window.wharfChat.online(), \
     error: document.getElementById('join-error').textContent})";

/// What the broker stores in `topic` (its `history`, the newest 50): (seq, from, text).
async fn stored_messages(url: &str, topic: &str) -> Vec<(u64, String, String)> {
    stored(url, topic, 50)
        .await
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

fn texts(messages: &[(u64, String, String)]) -> Vec<&str> {
    messages.iter().map(|(_, _, t)| t.as_str()).collect()
}

async fn two_users_chat_and_one_comes_back_from_offline_to_every_message_once_in_order(
    backend: Backend,
) {
    let Some(chromium) = chromium_or_skip() else {
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

    let browser = Browser::start(&chromium, &tmp.path().join("chromium-profile"), (1200, 800));
    let devtools = browser.devtools.clone();
    let mut ana = open_chat(
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
    let mut ben = open_chat(
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
    let expected = stored_messages(&last.url, "chat.lobby").await;
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
    ana.screenshot("chat-page.png").await;

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

wharf_tests::conformance!(
    two_users_chat_and_one_comes_back_from_offline_to_every_message_once_in_order
);
