//! Retention removes events a consumer never settled while nobody is attached. The gap is
//! part of the consumer's durable state: after a restart the next subscriber is told of all
//! of it, once.

use std::time::Duration;

use serde_json::json;
use wharf_tests::{data_dir, Broker};

const SMALL: &str = "segment_bytes = 4096\nmax_events = 50";

#[tokio::test]
async fn the_next_subscriber_is_told_of_every_gap_across_restarts() {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, SMALL);
    let mut c = broker.client().await;
    c.subscribe("g.>", Some("away")).await;
    c.close().await;
    let mut p = broker.client().await;
    let pad = "g".repeat(100);
    for i in 0..200 {
        p.publish("g.a", json!({ "i": i, "pad": pad })).await;
    }
    broker.terminate();

    let mut broker = Broker::start(&data, SMALL);
    let mut p = broker.client().await;
    for i in 0..200 {
        p.publish("g.a", json!({ "i": i, "pad": pad })).await;
    }
    broker.kill9();

    let broker = Broker::start(&data, SMALL);
    let mut c = broker.client().await;
    c.subscribe("g.>", Some("away")).await;
    let gap = c.recv().await;
    assert_eq!(gap["type"], "gap", "{gap}");
    assert_eq!(gap["from"], 1, "told of everything removed: {gap}");
    let to = gap["to"].as_u64().unwrap();
    assert!(to > 300, "{gap}");
    let first = c.recv().await;
    assert_eq!(first["type"], "event", "{first}");
    assert_eq!(first["seq"].as_u64(), Some(to + 1));
    c.close().await;

    // Told once: the next subscriber hears of no gap.
    let mut c = broker.client().await;
    c.subscribe("g.>", Some("away")).await;
    let frame = c.recv_within(Duration::from_secs(2)).await.unwrap();
    assert_eq!(frame["type"], "event", "{frame}");
}
