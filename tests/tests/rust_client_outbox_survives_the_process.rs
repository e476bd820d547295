//! The Rust client's outbox (`Options::outbox`) against the real broker: publishes made
//! while the broker is down are written to the file before anything is sent; the client
//! ends (as its process would) before they go out; a new client on the same file, once the
//! broker is back, sends them first, in the order they were made, before its own publishes,
//! each stored once. A half-written last line (a crash mid-append) is dropped, a second
//! client on a file in use is refused, and the file is empty once everything is confirmed.

use std::io::Write;

use wharf_client::{Client, Error, Options, Paging, State};
use wharf_tests::{data_dir, Broker};

#[tokio::test(flavor = "multi_thread")]
async fn publishes_made_offline_are_sent_by_the_next_client_on_the_file_once() {
    let (tmp, data) = data_dir();
    let outbox = tmp.path().join("orders.outbox");
    let mut broker = Broker::start(&data, "");
    let url = broker.url.clone();
    let port = url
        .trim_start_matches("ws://127.0.0.1:")
        .trim_end_matches("/ws")
        .to_owned();

    let first = Client::connect(Options::new(url.clone()).outbox(&outbox))
        .await
        .expect("connect");
    let stored = first
        .publish("orders.created", &0)
        .await
        .expect("stored while up");
    assert_eq!(stored.seq, 1);
    assert_eq!(
        std::fs::metadata(&outbox).expect("outbox").len(),
        0,
        "nothing pending: the file is emptied"
    );

    // A second client on the same file is refused while the first holds it.
    let second = Client::connect(Options::new(url.clone()).outbox(&outbox))
        .await
        .err()
        .expect("the outbox is in use");
    assert!(matches!(second, Error::Outbox(_)), "{second}");

    broker.kill9();
    let mut state = first.state();
    state
        .wait_for(|s| matches!(s, State::Reconnecting { .. }))
        .await
        .expect("the client sees the broker go");
    // Made while the broker is down: kept in the file, then the client ends before any is
    // sent (their futures are dropped, as a process that exits would drop them).
    let offline: Vec<_> = (1..=5)
        .map(|i| first.publish("orders.created", &i))
        .collect();
    first.close();
    state
        .wait_for(|s| *s == State::Closed)
        .await
        .expect("closed");
    drop(offline);
    drop(first);
    let kept = std::fs::read_to_string(&outbox).expect("outbox");
    assert_eq!(kept.lines().count(), 5, "{kept}");
    // A crash in the middle of the next append leaves half a line.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&outbox)
        .and_then(|mut f| f.write_all(br#"{"add":"torn-1","frame":{"op":"pub"#))
        .expect("tear the last line");

    let _back = Broker::try_start_with(&data, "", &["--listen", &format!("127.0.0.1:{port}")])
        .unwrap_or_else(|(status, log)| panic!("restart on port {port}: {status}\n{log}"));
    let next = Client::connect(Options::new(url.clone()).outbox(&outbox))
        .await
        .expect("reconnect with the outbox");
    let after = next
        .publish("orders.created", &6)
        .await
        .expect("a publish of the new client");
    assert_eq!(
        after.seq, 7,
        "the five left in the outbox went first, each stored once"
    );
    let page = next
        .history("orders.created", None, Paging::Newest)
        .await
        .expect("history");
    let payloads: Vec<&str> = page.events.iter().map(|e| e.payload.get()).collect();
    assert_eq!(payloads, ["0", "1", "2", "3", "4", "5", "6"]);
    assert_eq!(
        std::fs::metadata(&outbox).expect("outbox").len(),
        0,
        "every entry confirmed"
    );
}
