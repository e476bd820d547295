//! The core promise: a durable subscriber that goes away gets, when it returns, exactly the
//! events it did not ack — the unacked ones again (delivery ≥ 2) and the ones published while
//! it was gone (delivery 1), in seq order.

use std::time::Duration;

use serde_json::json;
use wharf_tests::{data_dir, deliveries, seqs, Backend};

async fn offline_subscriber_gets_exactly_the_unacked_events(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "");
    let mut publisher = broker.client().await;

    let mut sub = broker.client().await;
    sub.subscribe("orders.>", Some("vendor-1")).await;
    for i in 1..=5 {
        publisher.publish("orders.created", json!({"n": i})).await;
    }
    // Not for this consumer: must never show up.
    publisher.publish("billing.paid", json!("x")).await;

    let first = sub.events(5).await;
    assert_eq!(seqs(&first), vec![1, 2, 3, 4, 5]);
    assert_eq!(deliveries(&first), vec![1; 5]);
    assert_eq!(first[0]["consumer"], "vendor-1");
    assert_eq!(first[0]["topic"], "orders.created");
    assert_eq!(first[0]["payload"], json!({"n": 1}));
    assert!(first[0]["published_at"].as_str().unwrap().ends_with('Z'));
    sub.ack("vendor-1", &[1, 2]).await;
    sub.close().await;
    // Offline means the broker has seen the subscriber go: until then an event published
    // now may still reach the closing connection (and count as a delivery), on either
    // backend. Nothing announces it, so ask, within a bound.
    let until = std::time::Instant::now() + wharf_tests::WAIT;
    while publisher.info("vendor-1").await["attached"] != 0 {
        assert!(
            std::time::Instant::now() < until,
            "the subscriber never detached"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let s7 = publisher.publish("orders.shipped", json!({"n": 7})).await;
    let s8 = publisher.publish("orders.created", json!({"n": 8})).await;
    assert_eq!((s7, s8), (7, 8));

    let mut back = broker.client().await;
    back.subscribe("orders.>", Some("vendor-1")).await;
    let again = back.events(5).await;
    assert_eq!(seqs(&again), vec![3, 4, 5, 7, 8]);
    assert_eq!(deliveries(&again), vec![2, 2, 2, 1, 1]);
    assert_eq!(again[3]["payload"], json!({"n": 7}));
    // Nothing else is owed.
    assert_eq!(back.recv_within(Duration::from_millis(300)).await, None);

    // Acking everything leaves nothing to redeliver on the next return.
    back.ack("vendor-1", &[3, 4, 5, 7, 8]).await;
    back.close().await;
    let mut third = broker.client().await;
    third.subscribe("orders.>", Some("vendor-1")).await;
    assert_eq!(third.recv_within(Duration::from_millis(300)).await, None);
    let s9 = publisher.publish("orders.created", json!(9)).await;
    let live = third.events(1).await;
    assert_eq!(seqs(&live), vec![s9]);
}

async fn a_new_consumer_can_start_at_new_or_at_a_seq(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "");
    let mut publisher = broker.client().await;
    for i in 1..=3 {
        publisher.publish("t.a", json!(i)).await;
    }
    let mut fresh = broker.client().await;
    let reply = fresh
        .request(json!({"op":"subscribe","id":1,"topic":"t.*","consumer":"late","start":"new"}))
        .await;
    assert_eq!(reply["type"], "subscribed");
    let mut from2 = broker.client().await;
    let reply = from2
        .request(json!({"op":"subscribe","id":2,"topic":"t.*","consumer":"from2","start":2}))
        .await;
    assert_eq!(reply["type"], "subscribed");
    assert_eq!(seqs(&from2.events(2).await), vec![2, 3]);
    publisher.publish("t.b", json!(4)).await;
    assert_eq!(seqs(&fresh.events(1).await), vec![4]);
    assert_eq!(seqs(&from2.events(1).await), vec![4]);
}

wharf_tests::conformance!(
    offline_subscriber_gets_exactly_the_unacked_events,
    a_new_consumer_can_start_at_new_or_at_a_seq
);
