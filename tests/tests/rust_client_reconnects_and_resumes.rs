//! The Rust client (`wharf-client`) against the real broker: publish, subscribe, settle,
//! read (history, last, presence) and refusals with their wire codes; and across a broker
//! SIGKILLed and restarted on the same port mid-stream: every confirmed publish delivered,
//! none skipped, nothing whose ack was confirmed delivered again, publishes made while the
//! broker was down stored once after it is back. (A repeat is a redelivery: `delivery > 1`,
//! except that across a crash the count may trail by `state_flush_interval`, as
//! PROTOCOL.md says; the event's ack had not been confirmed then.)

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use wharf_client::{Client, ErrorCode, Incoming, Options, Paging, State, Subscribe};
use wharf_tests::{data_dir, Backend, Broker};

async fn next_event(sub: &mut wharf_client::Subscription) -> wharf_client::Delivery {
    loop {
        let item = tokio::time::timeout(wharf_tests::WAIT, sub.next())
            .await
            .expect("an event in time")
            .expect("the subscription goes on");
        if let Incoming::Event(delivery) = item {
            return delivery;
        }
    }
}

async fn the_client_does_what_the_protocol_offers(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "");
    let client = Client::connect(Options::new(broker.url.clone()))
        .await
        .expect("connect");

    let first = client
        .publish("orders.created", &json!({"id": 1}))
        .await
        .expect("publish");
    let batch = client
        .publish_batch(&[("orders.paid", json!({"id": 1})), ("orders.sent", json!(1))])
        .await
        .expect("publish_batch");
    assert_eq!(
        batch.iter().map(|p| p.seq).collect::<Vec<_>>(),
        [first.seq + 1, first.seq + 2]
    );

    let mut billing = client
        .subscribe(Subscribe::durable("billing", ["orders.>"]).start(wharf_protocol::Start::All))
        .await
        .expect("subscribe");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let d = next_event(&mut billing).await;
        assert_eq!(d.consumer.as_deref(), Some("billing"));
        seen.push(d.seq);
        if d.topic == "orders.paid" {
            d.nack(Duration::from_millis(10)).await.expect("nack");
        } else {
            d.ack().await.expect("ack");
        }
    }
    assert_eq!(seen, [first.seq, first.seq + 1, first.seq + 2]);
    let again = next_event(&mut billing).await;
    assert_eq!(
        (again.seq, again.delivery),
        (first.seq + 1, 2),
        "nacked: again"
    );
    again.term().await.expect("term");

    // Reads.
    let page = client
        .history("orders.>", Some(2), Paging::Newest)
        .await
        .expect("history");
    assert_eq!(
        page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [first.seq + 1, first.seq + 2]
    );
    assert!(page.more);
    let older = client
        .history("orders.>", None, Paging::Before(page.events[0].seq))
        .await
        .expect("older");
    // The payload as it was published, byte for byte.
    assert_eq!(older.events[0].payload.get(), r#"{"id":1}"#);
    let last = client.last("orders.*", None).await.expect("last");
    assert_eq!(last.events.len(), 3);

    // Presence.
    client
        .hello("ana", json!({"name": "Ana"}))
        .await
        .expect("hello");
    let _here = client
        .subscribe(Subscribe::ephemeral(["room.a"]).presence())
        .await
        .expect("present");
    let present = client.presence("room.a").await.expect("presence");
    assert_eq!(present.len(), 1);
    assert_eq!(present[0].client, "ana");

    // Refusals carry the wire's code; bad input is caught before it is sent.
    let conflict = client
        .subscribe(Subscribe::durable("billing", ["other.>"]))
        .await
        .err()
        .expect("another pattern for billing");
    assert_eq!(
        conflict.code(),
        Some(ErrorCode::ConsumerConflict),
        "{conflict}"
    );
    let bad = client
        .publish("no..topic", &1)
        .await
        .expect_err("bad topic");
    assert!(matches!(bad, wharf_client::Error::Invalid(_)), "{bad}");
}

wharf_tests::conformance!(the_client_does_what_the_protocol_offers);

/// Publishes 0..n one at a time from their own task, and consumes durably, acking each;
/// the broker is SIGKILLed once half is consumed, the rest is published while it is down
/// (queued by the client), and it is restarted on the same port.
#[tokio::test]
async fn a_broker_sigkill_loses_and_skips_nothing() {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, "");
    let url = broker.url.clone();
    let port = url
        .trim_start_matches("ws://127.0.0.1:")
        .trim_end_matches("/ws")
        .to_owned();
    let options = || Options::new(url.clone()).max_backoff(Duration::from_millis(300));
    let publisher = Client::connect(options()).await.expect("publisher");
    let consumer = Client::connect(options()).await.expect("consumer");
    let mut sub = consumer
        .subscribe(Subscribe::durable("audit", ["jobs.>"]))
        .await
        .expect("subscribe");
    // Said again, and made again, after the restart: present under the same name.
    consumer.hello("auditor", json!({})).await.expect("hello");
    let _present = consumer
        .subscribe(Subscribe::ephemeral(["room.audit"]).presence())
        .await
        .expect("presence");

    const N: u64 = 200;
    // The second half is published after the kill: while the broker is down, then back.
    let (killed_tx, mut killed_rx) = tokio::sync::watch::channel(false);
    let published = tokio::spawn(async move {
        let mut confirmed = BTreeMap::new();
        for i in 0..N {
            if i == N / 2 {
                killed_rx
                    .wait_for(|k| *k)
                    .await
                    .expect("the kill is signalled");
            }
            let p = publisher
                .publish("jobs.x", &json!({"i": i}))
                .await
                .unwrap_or_else(|e| panic!("publish {i}: {e}"));
            confirmed.insert(p.seq, i);
        }
        confirmed
    });

    // The client tells when it lost the connection (and why), and when it is back.
    let mut state = consumer.state();
    assert!(matches!(&*state.borrow(), State::Connected { url: u } if *u == url));
    let saw_loss = tokio::spawn(async move {
        let lost = state
            .wait_for(|s| matches!(s, State::Reconnecting { .. }))
            .await
            .map(|s| s.clone());
        let back = state
            .wait_for(|s| matches!(s, State::Connected { .. }))
            .await
            .map(|s| s.clone());
        (lost.ok(), back.ok())
    });
    let mut received: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    let mut acked = std::collections::BTreeSet::new();
    let mut killed = false;
    let mut restarted = None;
    while received.len() < N as usize {
        let d = next_event(&mut sub).await;
        assert!(
            !acked.contains(&d.seq),
            "seq {} came again after its ack was confirmed",
            d.seq
        );
        received.entry(d.seq).or_default().push(d.delivery);
        // An ack the crash swallowed: the event comes again.
        if d.ack().await.is_ok() {
            acked.insert(d.seq);
        }
        if !killed && received.len() == (N / 2) as usize {
            broker.kill9();
            killed = true;
            killed_tx.send(true).expect("the publisher waits");
            let data = data.clone();
            let listen = format!("127.0.0.1:{port}");
            restarted = Some(tokio::task::spawn_blocking(move || {
                Broker::try_start_with(&data, "", &["--listen", &listen])
                    .unwrap_or_else(|(status, log)| panic!("restart: {status}\n{log}"))
            }));
        }
    }
    let confirmed = published.await.expect("publisher task");
    let (lost, back) = saw_loss.await.expect("state watcher");
    assert!(
        matches!(&lost, Some(State::Reconnecting { reason }) if !reason.is_empty()),
        "{lost:?}"
    );
    assert_eq!(back, Some(State::Connected { url: url.clone() }));
    let here = consumer.presence("room.audit").await.expect("presence");
    assert_eq!(
        here.iter().map(|c| c.client.as_str()).collect::<Vec<_>>(),
        ["auditor"],
        "the hello and the presence subscription came back with the connection"
    );
    let _back = restarted.expect("restarted").await.expect("restart task");
    assert_eq!(
        confirmed.len(),
        N as usize,
        "every publish confirmed, each once"
    );
    let delivered: Vec<u64> = received.keys().copied().collect();
    let stored: Vec<u64> = confirmed.keys().copied().collect();
    assert_eq!(
        delivered, stored,
        "every confirmed event delivered, nothing else"
    );
}
