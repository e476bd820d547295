//! A subscriber that stops reading never makes the broker buffer without bound: a durable one
//! is disconnected (1013) and resumes from its settled state; an ephemeral one skips ahead and
//! is told which seqs it missed.

use std::time::Duration;

use serde_json::{json, Value};
use wharf_tests::{data_dir, Backend, Broker, Client};

const SLOW: &str = "outbound_queue = 8\nslow_consumer_timeout = \"200ms\"";

/// Publishes enough to fill the socket buffers of a reader that does not read.
async fn flood(broker: &Broker, n: usize) {
    let mut p = broker.client().await;
    let pad = "x".repeat(16 * 1024);
    for i in 0..n {
        p.send(json!({"op":"publish","topic":"flood","payload":{"i":i,"pad":pad}}))
            .await;
    }
    // Replies come in request order: the last one means all were stored.
    for i in 1..=n {
        let reply = p.recv().await;
        assert_eq!(reply["seq"].as_u64(), Some(i as u64), "{reply}");
    }
}

/// Reads frames until the connection ends; returns them and the close frame.
async fn read_all(c: &mut Client) -> (Vec<Value>, Option<(u16, String)>) {
    let mut frames = Vec::new();
    loop {
        match c.next_frame().await {
            Ok(frame) => frames.push(frame),
            Err(close) => return (frames, close),
        }
    }
}

async fn a_durable_subscriber_that_stops_reading_is_disconnected_and_resumes(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, SLOW);
    let mut c = broker.client().await;
    c.subscribe_with("sloth", json!({"topic":"flood","max_in_flight":100000}))
        .await;
    flood(&broker, 1500).await;

    let (frames, close) = read_all(&mut c).await;
    let (code, reason) = close.expect("a close frame");
    assert_eq!(code, 1013, "{reason}");
    assert!(reason.contains("slow consumer"), "{reason}");
    let got = frames.iter().filter(|f| f["type"] == "event").count();
    assert!(
        got < 1501,
        "everything was buffered for a reader that did not read"
    );
    assert!(broker.log().contains("closing a slow consumer"));

    // Back again: it resumes from its settled state (nothing was acked: from seq 1).
    let mut c = broker.client().await;
    c.subscribe_with("sloth", json!({"topic":"flood","max_in_flight":10}))
        .await;
    let again = c.events(1).await;
    assert_eq!(again[0]["seq"], 1);
    assert_eq!(again[0]["delivery"], 2);
}

async fn an_ephemeral_subscriber_that_falls_behind_is_told_what_it_lost(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, SLOW);
    let mut c = broker.client().await;
    let reply = c
        .reply(json!({"op":"subscribe","id":1,"topic":"flood"}))
        .await;
    assert_eq!(reply["type"], "subscribed");
    flood(&broker, 1500).await;

    let mut seen = Vec::new();
    let lost = loop {
        let frame = c.recv().await;
        match frame["type"].as_str() {
            Some("event") => seen.push(frame["seq"].as_u64().unwrap()),
            Some("lost") => break frame,
            _ => panic!("unexpected {frame}"),
        }
    };
    let from = lost["from"].as_u64().unwrap();
    let to = lost["to"].as_u64().unwrap();
    assert!(from <= to && to <= 1500, "{lost}");
    assert_eq!(seen.last().copied().unwrap_or(0) + 1, from, "{lost}");
    // Still subscribed: what comes next is delivered.
    let mut p = broker.client().await;
    let seq = p.publish("flood", json!("after")).await;
    loop {
        let frame = c.recv().await;
        if frame["seq"] == seq {
            break;
        }
        assert!(frame["seq"].as_u64().unwrap() > to, "{frame}");
    }
    assert_eq!(c.recv_within(Duration::from_millis(100)).await, None);
}

wharf_tests::conformance!(
    a_durable_subscriber_that_stops_reading_is_disconnected_and_resumes,
    an_ephemeral_subscriber_that_falls_behind_is_told_what_it_lost
);
