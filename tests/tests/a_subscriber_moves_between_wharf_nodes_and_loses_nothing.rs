//! Cluster: two wharf nodes serve one JetStream stream. A durable subscriber on node A takes
//! some events and acks some, then reconnects to node B: it gets exactly what it had not
//! acked, again (delivery 2), and what was published meanwhile through node B (first
//! deliveries in seq order). A redelivery may come after newer events, as PROTOCOL.md
//! allows: node A hands back what it held as its connection goes, and node B's first pull
//! can be quicker.

use serde_json::json;
use wharf_tests::{deliveries, nats, seqs, Backend};

#[tokio::test]
async fn a_subscriber_moves_between_wharf_nodes_and_loses_nothing() {
    if !Backend::Nats.runnable() {
        return;
    }
    let nats::TwoNodes { a, b, .. } = &nats::two_nodes("moves", "");

    let mut p = a.client().await;
    for i in 1..=5 {
        p.publish("orders.created", json!({"n": i})).await;
    }
    let mut on_a = a.client().await;
    on_a.subscribe("orders.>", Some("mover")).await;
    assert_eq!(seqs(&on_a.events(5).await), vec![1, 2, 3, 4, 5]);
    on_a.ack("mover", &[1, 2, 3]).await;
    on_a.close().await;
    // Node A has seen it go (until then an event published now may still reach the closing
    // connection and count as a delivery).
    let until = std::time::Instant::now() + wharf_tests::WAIT;
    while p.info("mover").await["attached"] != 0 {
        assert!(
            std::time::Instant::now() < until,
            "the subscriber never detached"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let mut pb = b.client().await;
    for i in 6..=8 {
        pb.publish("orders.created", json!({"n": i})).await;
    }
    let mut on_b = b.client().await;
    on_b.subscribe("orders.>", Some("mover")).await;
    let got = on_b.events(5).await;
    let mut by_seq: Vec<(u64, u64)> = seqs(&got).into_iter().zip(deliveries(&got)).collect();
    let firsts: Vec<u64> = by_seq
        .iter()
        .filter(|(_, d)| *d == 1)
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(
        firsts,
        vec![6, 7, 8],
        "first deliveries in order: {by_seq:?}"
    );
    by_seq.sort_unstable();
    assert_eq!(by_seq, vec![(4, 2), (5, 2), (6, 1), (7, 1), (8, 1)]);
    on_b.ack("mover", &[4, 5, 6, 7, 8]).await;

    // Node A sees the consumer as node B left it.
    let mut ask = a.client().await;
    let info = ask.info("mover").await;
    assert_eq!(info["ack_floor"], 8, "{info}");
    assert_eq!(info["ack_pending"], 0, "{info}");
}
