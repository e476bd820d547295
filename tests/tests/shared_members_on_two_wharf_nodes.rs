//! Cluster: one shared consumer with a member on wharf node A and one on node B. Together
//! they get every event exactly once; when A's member leaves holding events, B gets them at
//! once (A's node naks them as its connection closes).

use std::collections::HashSet;

use serde_json::json;
use wharf_tests::{nats, seqs, Backend};

#[tokio::test]
async fn shared_members_on_two_wharf_nodes() {
    if !Backend::Nats.runnable() {
        return;
    }
    let nats::TwoNodes { a, b, .. } = &nats::two_nodes("shared2", "");

    // A long ack wait: only A's departure can explain B getting A's events quickly.
    let opts = json!({"topic":"work.>","mode":"shared","ack_wait_ms":600000,"max_in_flight":5});
    let mut on_a = a.client().await;
    on_a.subscribe_with("pool", opts.clone()).await;
    let mut on_b = b.client().await;
    on_b.subscribe_with("pool", opts).await;

    let mut p = a.client().await;
    for i in 1..=10 {
        p.publish("work.item", json!(i)).await;
    }
    // Each holds at most 5 unacked, so together they hold all 10, each exactly once.
    let got_a = seqs(&on_a.events(5).await);
    let got_b = seqs(&on_b.events(5).await);
    let all: HashSet<u64> = got_a.iter().chain(&got_b).copied().collect();
    assert_eq!(all, (1..=10).collect(), "a {got_a:?} b {got_b:?}");

    on_a.close().await;
    on_b.ack("pool", &got_b).await;
    let mut inherited = seqs(&on_b.events(5).await);
    inherited.sort_unstable();
    let mut expected = got_a.clone();
    expected.sort_unstable();
    assert_eq!(inherited, expected);
}
