//! What the `wharf` command asks of the Rust client (`wharf-client`), against the real
//! broker: publishes made in a loop and awaited together are stored in the order they were
//! made (more of them than the driver writes per flush); a delivery prints as the broker's
//! event frame, payload byte for byte; history keeps payloads as published; an unsubscribe
//! can be waited for; the low-level `Connection` speaks the protocol as text; and, when
//! asked, the client fails at once on a broker that is not there and, once connected, ends
//! (instead of reconnecting) when the broker goes, failing what waited with `Disconnected`.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::value::RawValue;
use wharf_client::{Client, Connection, Error, Incoming, Options, Paging, State, Subscribe};
use wharf_protocol::Start;
use wharf_tests::{data_dir, Backend, Broker};

async fn pipelined_calls_keep_their_order_and_payloads_their_bytes(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "");
    let client = Client::connect(Options::new(broker.url.clone()))
        .await
        .expect("connect");

    // Made one after another, awaited together: stored in the order they were made.
    let calls: Vec<_> = (0..1000)
        .map(|i| {
            let payload =
                RawValue::from_string(format!(r#"{{"i":{i}, "z":0,"a":1}}"#)).expect("JSON");
            client.publish_raw("pipe.x", payload, None)
        })
        .collect();
    let seqs: Vec<u64> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(|p| p.expect("stored").seq)
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    // A delivery as the broker's event frame; history with the payload as published.
    let mut sub = client
        .subscribe(Subscribe::ephemeral(["pipe.x"]).start(Start::Seq(seqs[7])))
        .await
        .expect("subscribe");
    let event = loop {
        match tokio::time::timeout(wharf_tests::WAIT, sub.next()).await {
            Ok(Some(Incoming::Event(event))) => break event,
            Ok(Some(Incoming::Notice(_))) => {}
            other => panic!("no event: {other:?}"),
        }
    };
    let frame = event.to_json();
    assert!(frame.starts_with(r#"{"type":"event","sub":""#), "{frame}");
    assert!(
        frame.ends_with(&format!(
            r#","seq":{},"topic":"pipe.x","payload":{{"i":7, "z":0,"a":1}},"published_at":"{}","delivery":1}}"#,
            seqs[7], event.published_at
        )),
        "{frame}"
    );
    sub.unsubscribe().await.expect("unsubscribe");
    let page = client
        .history("pipe.x", Some(1), Paging::Before(seqs[3]))
        .await
        .expect("history");
    assert_eq!(page.events[0].seq, seqs[2]);
    assert_eq!(page.events[0].payload.get(), r#"{"i":2, "z":0,"a":1}"#);

    // The layer below: text frames in and out, pipelined.
    let mut raw = Connection::open(&Options::new(broker.url.clone()))
        .await
        .expect("open");
    for id in 1..=3 {
        raw.feed(format!(r#"{{"op":"ping","id":{id}}}"#))
            .await
            .expect("feed");
    }
    raw.flush().await.expect("flush");
    for id in 1..=3 {
        assert_eq!(
            raw.next().await.expect("pong").as_str(),
            format!(r#"{{"type":"pong","id":{id}}}"#)
        );
    }
    raw.close().await;
}

wharf_tests::conformance!(pipelined_calls_keep_their_order_and_payloads_their_bytes);

#[tokio::test]
async fn without_retries_a_missing_broker_fails_at_once_and_a_lost_one_ends_the_client() {
    // Nobody listens on port 1.
    let began = Instant::now();
    let refused = Client::connect(Options::new("ws://127.0.0.1:1/ws").retry_connect(false))
        .await
        .err()
        .expect("nobody there");
    assert!(matches!(refused, Error::Connect(_)), "{refused}");
    assert!(
        refused
            .to_string()
            .starts_with("cannot connect to ws://127.0.0.1:1/ws"),
        "{refused}"
    );
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );

    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, "");
    let client = Client::connect(
        Options::new(broker.url.clone())
            .retry_connect(false)
            .reconnect(false),
    )
    .await
    .expect("connect");
    let mut sub = client
        .subscribe(Subscribe::ephemeral(["gone.>"]))
        .await
        .expect("subscribe");
    let mut state = client.state();
    broker.kill9();
    let ended = tokio::time::timeout(
        wharf_tests::WAIT,
        state.wait_for(|s| matches!(s, State::Disconnected { .. })),
    )
    .await
    .expect("told in time")
    .map(|s| s.clone());
    assert!(
        matches!(&ended, Ok(State::Disconnected { reason }) if !reason.is_empty()),
        "{ended:?}"
    );
    // The subscription ends; later calls fail instead of waiting for a reconnect.
    let last = tokio::time::timeout(wharf_tests::WAIT, sub.next())
        .await
        .expect("ended in time");
    assert!(last.is_none(), "{last:?}");
    let after = client.publish("gone.x", &1).await.expect_err("no broker");
    assert!(
        matches!(after, Error::Closed | Error::Disconnected(_)),
        "{after}"
    );
}
