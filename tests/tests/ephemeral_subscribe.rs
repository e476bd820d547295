//! Without a consumer name a subscription is live and at-most-once: it sees what is
//! published while it is open, nothing is stored for it, and unsubscribe stops it.

use std::time::Duration;

use serde_json::json;
use wharf_tests::{data_dir, seqs, Backend};

async fn ephemeral_subscription_gets_live_events_only(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "");
    let mut p = broker.client().await;
    p.publish("news.old", json!("before")).await;

    let mut e = broker.client().await;
    let reply = e
        .request(json!({"op":"subscribe","id":1,"topic":"news.*"}))
        .await;
    assert_eq!(reply["type"], "subscribed");
    assert!(reply.get("consumer").is_none(), "{reply}");
    let sub = reply["sub"].as_str().unwrap().to_owned();

    p.publish("news.today", json!("live")).await;
    p.publish("sport.today", json!("other")).await;
    let got = e.events(1).await;
    assert_eq!(seqs(&got), vec![2]);
    assert_eq!(got[0]["payload"], "live");
    assert_eq!(got[0]["sub"], sub.as_str());
    assert_eq!(got[0]["delivery"], 1);
    assert!(got[0].get("consumer").is_none());

    let reply = e
        .request(json!({"op":"unsubscribe","id":2,"sub":sub}))
        .await;
    assert_eq!(reply, json!({"type":"ok","id":2}));
    p.publish("news.today", json!("after")).await;
    assert_eq!(e.recv_within(Duration::from_millis(300)).await, None);

    // A client that remembers the last seq it saw can resume from there.
    let reply = e
        .request(json!({"op":"subscribe","id":3,"topic":"news.*","start":2}))
        .await;
    assert_eq!(reply["type"], "subscribed");
    assert_eq!(seqs(&e.events(2).await), vec![2, 4]);
}

async fn a_disconnected_ephemeral_subscriber_leaves_nothing_behind(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "");
    let mut e = broker.client().await;
    e.subscribe("x", None).await;
    e.close().await;
    let mut p = broker.client().await;
    p.publish("x", json!(1)).await;
    let mut e = broker.client().await;
    e.subscribe("x", None).await;
    assert_eq!(e.recv_within(Duration::from_millis(300)).await, None);
}

wharf_tests::conformance!(
    ephemeral_subscription_gets_live_events_only,
    a_disconnected_ephemeral_subscriber_leaves_nothing_behind
);
