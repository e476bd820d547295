//! `"mode":"shared"`: connections attached to one consumer split its events, and when one
//! leaves, what it held goes to the others at once.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use wharf_tests::{data_dir, seqs, Backend};

async fn shared_attachments_split_events_and_inherit_a_leavers_work_at_once(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "");
    // A long ack wait: only the departure can explain a quick redelivery.
    let opts = json!({"topic":"work.>","mode":"shared","ack_wait_ms":600000,"max_in_flight":5});
    let mut a = broker.client().await;
    a.subscribe_with("pool", opts.clone()).await;
    let mut b = broker.client().await;
    b.subscribe_with("pool", opts.clone()).await;

    let mut p = broker.client().await;
    for i in 1..=10 {
        p.publish("work.item", json!(i)).await;
    }
    // Each holds at most 5 unacked, so together they hold all 10, each exactly once.
    let got_a = seqs(&a.events(5).await);
    let got_b = seqs(&b.events(5).await);
    let all: HashSet<u64> = got_a.iter().chain(&got_b).copied().collect();
    assert_eq!(
        all,
        (1..=10).collect::<HashSet<_>>(),
        "a {got_a:?} b {got_b:?}"
    );

    // A leaves without acking: B receives A's five now (after acking its own to make room).
    a.close().await;
    b.ack("pool", &got_b).await;
    let inherited = b.events(5).await;
    let mut inherited_seqs = seqs(&inherited);
    inherited_seqs.sort();
    assert_eq!(inherited_seqs, got_a);
    assert!(inherited.iter().all(|e| e["delivery"] == 2));

    // An exclusive subscribe while shared holders exist is refused.
    let mut c = broker.client().await;
    let reply = c
        .reply(json!({"op":"subscribe","id":1,"topic":"work.>","consumer":"pool"}))
        .await;
    assert_eq!(reply["code"], "consumer_conflict", "{reply}");
    let info = c.info("pool").await;
    assert_eq!(
        (info["mode"].as_str(), info["attached"].as_u64()),
        (Some("shared"), Some(1))
    );
    b.ack("pool", &inherited_seqs).await;
    assert_eq!(b.recv_within(Duration::from_millis(200)).await, None);
}

/// A subscribe in the other mode is refused in its turn: a request pipelined after it is
/// answered after it (the refusal used to be queued behind later replies).
async fn a_mode_conflict_is_answered_in_request_order(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "");
    let mut holder = broker.client().await;
    holder.subscribe("jobs.>", Some("pool")).await;
    let mut other = broker.client().await;
    other
        .send(json!({"op":"subscribe","id":1,"topic":"jobs.>","consumer":"pool","mode":"shared"}))
        .await;
    // Pings right behind it: some are read before the subscribe's turn comes.
    for i in 2..22 {
        other.send(json!({"op":"ping","id":i})).await;
    }
    let first = other.recv().await;
    assert_eq!(first["id"], 1, "{first}");
    assert_eq!(first["code"], "consumer_conflict", "{first}");
    for i in 2..22 {
        let pong = other.recv().await;
        assert_eq!(
            (pong["type"].as_str(), pong["id"].as_i64()),
            (Some("pong"), Some(i))
        );
    }
}

wharf_tests::conformance!(
    shared_attachments_split_events_and_inherit_a_leavers_work_at_once,
    a_mode_conflict_is_answered_in_request_order
);
