//! SIGKILL the real `wharf serve` and start it again on the same data dir: confirmed events,
//! consumers and acks are all there, and seqs continue where they stopped.

use std::time::Duration;

use serde_json::json;
use wharf_tests::{data_dir, deliveries, seqs, Broker};

#[tokio::test]
async fn sigkill_restart_keeps_events_consumers_and_acks() {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, "");
    let mut c = broker.client().await;
    c.subscribe("jobs.*", Some("worker")).await;
    let mut p = broker.client().await;
    for i in 1..=6 {
        p.publish("jobs.new", json!({"job": i})).await;
    }
    let got = c.events(6).await;
    assert_eq!(seqs(&got), vec![1, 2, 3, 4, 5, 6]);
    c.ack("worker", &[1, 2, 4]).await;
    broker.kill9();

    let broker = Broker::start(&data, "");
    let mut c = broker.client().await;
    c.subscribe("jobs.*", Some("worker")).await;
    let again = c.events(3).await;
    assert_eq!(seqs(&again), vec![3, 5, 6]);
    // Counts are flushed in the background, so they may trail a crash, but never go back
    // below the first delivery and never overcount.
    for d in deliveries(&again) {
        assert!((1..=2).contains(&d), "delivery {d}");
    }
    assert_eq!(c.recv_within(Duration::from_millis(300)).await, None);

    // The consumer itself survived: its pattern is remembered.
    let mut other = broker.client().await;
    let reply = other
        .request(json!({"op":"subscribe","id":9,"topic":"other.>","consumer":"worker"}))
        .await;
    assert_eq!(reply["code"], "consumer_conflict", "{reply}");

    // Seqs continue after the last confirmed one.
    let mut p = broker.client().await;
    assert_eq!(p.publish("jobs.new", json!(7)).await, 7);
    assert_eq!(seqs(&c.events(1).await), vec![7]);
}

#[tokio::test]
async fn a_deleted_state_view_is_rebuilt_from_the_log() {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, "");
    let mut c = broker.client().await;
    c.subscribe("a", Some("c1")).await;
    let mut p = broker.client().await;
    for i in 1..=4 {
        p.publish("a", json!(i)).await;
    }
    c.events(4).await;
    c.ack("c1", &[1, 3]).await;
    broker.kill9();

    std::fs::remove_dir_all(data.join("state")).expect("remove the sled dir");
    let broker = Broker::start(&data, "");
    let mut c = broker.client().await;
    c.subscribe("a", Some("c1")).await;
    assert_eq!(seqs(&c.events(2).await), vec![2, 4]);
    assert_eq!(c.recv_within(Duration::from_millis(300)).await, None);
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits_cleanly() {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, "");
    let mut c = broker.client().await;
    c.publish("a", json!(1)).await;
    let status = broker.terminate();
    assert!(status.success(), "exit status {status}");
    let close = c.closed().await;
    assert_eq!(close.map(|(code, _)| code), Some(1001));
    let broker = Broker::start(&data, "");
    let mut c = broker.client().await;
    assert_eq!(c.publish("a", json!(2)).await, 2);
}
