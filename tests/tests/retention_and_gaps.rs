//! Retention removes old segments and reclaims their space; consumers that had not settled
//! removed events get a `gap` notice and move on; the state still rebuilds from the log that
//! is left (every segment starts with a checkpoint of the consumers).

use std::path::Path;

use serde_json::json;
use wharf_tests::{data_dir, seqs, Broker};

fn segment_count(data: &Path) -> usize {
    std::fs::read_dir(data.join("log"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count()
}

fn log_bytes(data: &Path) -> u64 {
    std::fs::read_dir(data.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .map(|p| p.metadata().unwrap().len())
        .sum()
}

const SMALL: &str = "segment_bytes = 4096\nmax_events = 50";

#[tokio::test]
async fn old_segments_go_and_lagging_consumers_get_a_gap() {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, SMALL);
    let mut away = broker.client().await;
    away.subscribe("r.>", Some("away")).await;
    away.close().await;
    // Attached but never acking (one in flight): it falls behind while connected.
    let mut lagging = broker.client().await;
    lagging
        .subscribe_with("lagging", json!({"topic":"r.>","max_in_flight":1}))
        .await;
    let mut p = broker.client().await;
    let pad = "y".repeat(100);
    for i in 0..300 {
        p.publish("r.x", json!({"i": i, "pad": pad})).await;
    }
    // The lagging subscriber is told, live, and skips to what is left.
    let first = lagging.recv().await;
    assert_eq!(first["seq"], 1, "{first}");
    let gap = loop {
        let frame = lagging.recv().await;
        if frame["type"] == "gap" {
            break frame;
        }
    };
    assert_eq!(gap["consumer"], "lagging");
    assert_eq!(gap["from"], 1, "{gap}");
    let to = gap["to"].as_u64().unwrap();
    assert!(to > 1, "{gap}");

    // Space is reclaimed: far fewer than 300 events' worth of segments remain.
    assert!(
        segment_count(&data) < 20,
        "{} segments",
        segment_count(&data)
    );
    assert!(
        log_bytes(&data) < 150 * 300 / 2,
        "{} bytes",
        log_bytes(&data)
    );

    // What is left starts after the removed seqs and holds at least max_events.
    let mut e = broker.client().await;
    e.subscribe_with("reader", json!({"topic":"r.>","max_in_flight":1000}))
        .await;
    let first_left = e.recv().await;
    let first_seq = first_left["seq"].as_u64().unwrap();
    assert!(first_seq > 1 && 300 - first_seq + 1 >= 50, "{first_left}");

    // The consumer that was away hears about its gap when it comes back.
    let mut away = broker.client().await;
    away.subscribe("r.>", Some("away")).await;
    let gap = away.recv().await;
    assert_eq!(gap["type"], "gap", "{gap}");
    assert_eq!(gap["from"], 1);
    let next = away.recv().await;
    assert_eq!(next["type"], "event");
    assert!(next["seq"].as_u64().unwrap() > gap["to"].as_u64().unwrap());
    let info = away.info("away").await;
    assert!(
        info["gapped"].as_u64().unwrap() >= gap["to"].as_u64().unwrap(),
        "{info}"
    );
    assert_eq!(info["ack_floor"], gap["to"], "{info}");

    // With the state view gone, consumers rebuild from the checkpoint at the start of the
    // oldest segment left.
    let floor_before = away.info("away").await["ack_floor"].as_u64().unwrap();
    broker.kill9();
    std::fs::remove_dir_all(data.join("state")).unwrap();
    let broker = Broker::start(&data, SMALL);
    let mut admin = broker.client().await;
    for name in ["away", "lagging", "reader"] {
        let info = admin.info(name).await;
        assert_eq!(info["topics"], json!(["r.>"]), "{info}");
    }
    let info = admin.info("away").await;
    assert!(
        info["ack_floor"].as_u64().unwrap() >= floor_before,
        "{info}"
    );
    let mut p = broker.client().await;
    let seq = p.publish("r.x", json!("after")).await;
    assert_eq!(seq, 301);
}

#[tokio::test]
async fn max_age_removes_segments_even_when_idle() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, "segment_bytes = 2048\nmax_age = \"300ms\"");
    let mut p = broker.client().await;
    for i in 0..100 {
        p.publish("aged", json!({"i": i, "pad": "z".repeat(64)}))
            .await;
    }
    assert!(segment_count(&data) > 1);
    // The periodic check removes them once they are old enough (maybe already while
    // publishing): the oldest stored seq moves up.
    broker.wait_for_log("retention removed old segments");
    let stats = p.reply(json!({"op":"stats","id":1})).await;
    assert!(stats["first_seq"].as_u64().unwrap() > 1, "{stats}");
    // The newest events are still there.
    let mut c = broker.client().await;
    let reply = c
        .reply(json!({"op":"subscribe","id":1,"topic":"aged","start":100}))
        .await;
    assert_eq!(reply["type"], "subscribed");
    assert_eq!(seqs(&c.events(1).await), vec![100]);
}
