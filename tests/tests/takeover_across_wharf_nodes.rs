//! Cluster: an exclusive subscriber on node A; the same consumer subscribed on node B takes
//! it over. A's subscriber is told (`unsubscribed`, `taken_over`), and B gets every event A
//! had not acked, at once, then what follows.

use serde_json::json;
use wharf_tests::{deliveries, nats, seqs, Backend};

#[tokio::test]
async fn takeover_across_wharf_nodes() {
    if !Backend::Nats.runnable() {
        return;
    }
    let nats::TwoNodes { a, b, .. } = &nats::two_nodes("takeover", "");

    let mut old = a.client().await;
    let old_sub = old
        .subscribe_with("phone", json!({"topic":"chat.>","ack_wait_ms":600000}))
        .await;
    let mut p = a.client().await;
    for i in 1..=3 {
        p.publish("chat.room1", json!(i)).await;
    }
    assert_eq!(seqs(&old.events(3).await), vec![1, 2, 3]);
    old.ack("phone", &[1]).await;

    let mut new = b.client().await;
    new.subscribe_with("phone", json!({"topic":"chat.>","ack_wait_ms":600000}))
        .await;
    let notice = old.recv().await;
    assert_eq!(notice["type"], "unsubscribed", "{notice}");
    assert_eq!(notice["sub"], old_sub.as_str());
    assert_eq!(notice["reason"], "taken_over");

    let got = new.events(2).await;
    assert_eq!(seqs(&got), vec![2, 3]);
    assert_eq!(deliveries(&got), vec![2, 2]);
    p.publish("chat.room1", json!(4)).await;
    assert_eq!(seqs(&new.events(1).await), vec![4]);
}
