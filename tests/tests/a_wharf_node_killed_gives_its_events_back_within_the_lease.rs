//! Cluster: a wharf node SIGKILLed while its subscriber holds unacked events and a publisher
//! pipelines through it. Every publish it confirmed is delivered through the other node, and
//! the events in flight on the dead node come back within `nats.lease`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;
use wharf_tests::{nats, Backend};

#[tokio::test]
async fn a_wharf_node_killed_gives_its_events_back_within_the_lease() {
    if !Backend::Nats.runnable() {
        return;
    }
    let nats::TwoNodes { a, b, .. } = &mut nats::two_nodes("killed", "nats.lease = \"2s\"\n");

    let mut holder = a.client().await;
    holder
        .subscribe_with("held", json!({"topic":"work.>","ack_wait_ms":600000}))
        .await;
    let mut p = a.client().await;
    let mut confirmed = BTreeSet::new();
    for i in 1..=3 {
        confirmed.insert(p.publish("work.x", json!(i)).await);
    }
    let held = holder.events(3).await;
    assert_eq!(held.len(), 3);
    // Pipelined publishes, then the node dies without a chance to nak anything.
    for i in 4..=20 {
        p.send(json!({"op":"publish","id":i,"topic":"work.x","payload":i}))
            .await;
    }
    for _ in 4..=20 {
        let reply = p.recv().await;
        if reply["type"] == "published" {
            confirmed.insert(reply["seq"].as_u64().unwrap());
        }
    }
    a.kill9();

    let mut taker = b.client().await;
    let started = Instant::now();
    taker
        .subscribe_with("held", json!({"topic":"work.>","ack_wait_ms":600000}))
        .await;
    let mut got = BTreeSet::new();
    while !confirmed.is_subset(&got) {
        let event = taker.recv().await;
        assert_eq!(event["type"], "event", "{event}");
        got.insert(event["seq"].as_u64().unwrap());
    }
    // The three held on the dead node came back once its lease ran out, not much later.
    assert!(
        started.elapsed() < Duration::from_secs(2) + Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
