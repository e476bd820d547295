//! Cluster: the stream keeps at most `max_events` events. A durable consumer that was away
//! while retention removed events it had not settled is told `gap` when it comes back, and
//! one attached but behind is told when retention overtakes it; `consumer_info` counts the
//! seqs and its floor is past them.

use serde_json::json;
use wharf_tests::{data_dir, nats, seqs, Backend, Broker};

#[tokio::test]
async fn retention_on_the_cluster_tells_gaps() {
    if !Backend::Nats.runnable() {
        return;
    }
    let urls = nats::shared().lock().unwrap().urls();
    let (_tmp, data) = data_dir();
    let config = format!("{}max_events = 5\n", nats::node_config(&urls, "gaps"));
    let broker = Broker::start(&data, &config);
    broker.wait_ready();
    let mut p = broker.client().await;

    // Away: acks seq 1, leaves; 10 more are published, the stream keeps 7..=11.
    let mut away = broker.client().await;
    away.subscribe_with("away", json!({"topic":"t.>"})).await;
    // Behind: holds one event at a time and does not ack it yet.
    let mut behind = broker.client().await;
    behind
        .subscribe_with("behind", json!({"topic":"t.>","max_in_flight":1}))
        .await;
    p.publish("t.x", json!(1)).await;
    assert_eq!(seqs(&away.events(1).await), vec![1]);
    away.ack("away", &[1]).await;
    away.close().await;
    assert_eq!(seqs(&behind.events(1).await), vec![1]);
    for i in 2..=11 {
        p.publish("t.x", json!(i)).await;
    }

    let mut back = broker.client().await;
    back.send(json!({"op":"subscribe","id":"s","consumer":"away","topic":"t.>"}))
        .await;
    let subscribed = back.recv().await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    let gap = back.recv().await;
    assert_eq!(gap, json!({"type":"gap","consumer":"away","from":2,"to":6}));
    assert_eq!(seqs(&back.events(5).await), vec![7, 8, 9, 10, 11]);

    behind.ack("behind", &[1]).await;
    let gap = behind.recv().await;
    assert_eq!(
        gap,
        json!({"type":"gap","consumer":"behind","from":2,"to":6})
    );
    assert_eq!(seqs(&behind.events(1).await), vec![7]);

    let info = back.info("away").await;
    assert_eq!(info["gapped"], 5, "{info}");
    let info = behind.info("behind").await;
    assert!(info["ack_floor"].as_u64() >= Some(6), "{info}");
}
