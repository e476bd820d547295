//! Cluster: a durable subscriber on wharf node A; its consumer is deleted through node B.
//! A's subscriber is told `unsubscribed` (`deleted`), as it would be on one broker, rather
//! than waiting for events that never come.

use serde_json::json;
use wharf_tests::{nats, seqs, Backend};

#[tokio::test]
async fn a_consumer_deleted_through_another_node_ends_its_subscriptions() {
    if !Backend::Nats.runnable() {
        return;
    }
    let nats::TwoNodes { a, b, .. } = &nats::two_nodes("deleted", "");

    let mut sub = a.client().await;
    let id = sub.subscribe_with("audit", json!({"topic":"log.>"})).await;
    sub.publish("log.x", json!(1)).await;
    assert_eq!(seqs(&sub.events(1).await), vec![1]);

    let mut admin = b.client().await;
    let deleted = admin
        .reply(json!({"op":"delete_consumer","id":1,"consumer":"audit"}))
        .await;
    assert_eq!(deleted["type"], "ok", "{deleted}");

    let notice = sub.recv().await;
    assert_eq!(notice["type"], "unsubscribed", "{notice}");
    assert_eq!(notice["sub"], id.as_str());
    assert_eq!(notice["reason"], "deleted");
}
