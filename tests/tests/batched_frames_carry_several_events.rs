//! A subscription that asks for `batch` gets `events` frames: every event once, in seq
//! order, with the fields of a single event frame, never more than `batch` to a frame; acks
//! name seqs as always, and a redelivery comes in an `events` frame too. On the embedded backend a backlog fills the frames; on the cluster
//! each frame carries one event (messages come one at a time from NATS).

use serde_json::{json, Value};
use wharf_tests::{data_dir, Backend, Client};

const EVENTS: u64 = 200;

/// Reads `events` frames of `sub` until `n` events came; returns them and the largest frame.
async fn batched(client: &mut Client, sub: &str, n: u64, batch: usize) -> (Vec<Value>, usize) {
    let mut events = Vec::new();
    let mut largest = 0;
    while (events.len() as u64) < n {
        let frame = client.recv().await;
        assert_eq!(
            frame["type"], "events",
            "expected an events frame, got {frame}"
        );
        assert_eq!(frame["sub"], sub, "{frame}");
        let list = frame["events"].as_array().expect("an events array").clone();
        assert!(
            !list.is_empty() && list.len() <= batch,
            "{} events in a frame",
            list.len()
        );
        largest = largest.max(list.len());
        for ev in &list {
            // The subscription's fields are the frame's, not each event's.
            assert!(ev.get("sub").is_none() && ev.get("type").is_none(), "{ev}");
        }
        events.extend(list);
    }
    (events, largest)
}

fn seqs(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect()
}

async fn a_backlog_comes_in_frames_of_at_most_batch(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "");
    let mut publisher = broker.client().await;
    for i in 1..=EVENTS {
        publisher.publish("t.a", json!({"i": i})).await;
    }

    let mut durable = broker.client().await;
    let sub = durable
        .subscribe_with("c", json!({"topic": "t.>", "batch": 64}))
        .await;
    let (events, largest) = batched(&mut durable, &sub, EVENTS, 64).await;
    assert_eq!(seqs(&events), (1..=EVENTS).collect::<Vec<_>>());
    assert!(events.iter().all(|e| e["delivery"] == 1));
    assert_eq!(events[6]["payload"], json!({"i": 7}));
    assert_eq!(events[6]["topic"], "t.a");
    assert!(events[6]["published_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    if backend == Backend::Log {
        assert!(
            largest > 1,
            "a backlog of {EVENTS} came one event per frame"
        );
    }
    // A redelivery comes in an events frame too.
    let nacked = durable
        .reply(json!({"op":"nack","id":"n","consumer":"c","seq":5}))
        .await;
    assert_eq!(nacked["type"], "ok", "{nacked}");
    let (again, _) = batched(&mut durable, &sub, 1, 64).await;
    assert_eq!(seqs(&again), vec![5]);
    assert_eq!(again[0]["delivery"], 2);
    let all: Vec<u64> = (1..=EVENTS).collect();
    durable.ack("c", &all).await;
    assert_eq!(durable.info("c").await["ack_pending"], 0);

    // Without a consumer too, from a seq; and a live event comes in a frame of its own.
    let mut ephemeral = broker.client().await;
    let reply = ephemeral
        .reply(json!({"op":"subscribe","id":1,"topic":"t.*","start":1,"batch":50}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let sub = reply["sub"].as_str().expect("sub").to_owned();
    let (events, _) = batched(&mut ephemeral, &sub, EVENTS, 50).await;
    assert_eq!(seqs(&events), (1..=EVENTS).collect::<Vec<_>>());
    assert!(events.iter().all(|e| e.get("consumer").is_none()));
    let live = publisher.publish("t.b", json!("live")).await;
    let (events, _) = batched(&mut ephemeral, &sub, 1, 50).await;
    assert_eq!(seqs(&events), vec![live]);
    assert_eq!(events[0]["payload"], "live");
}

async fn a_batch_out_of_range_is_refused(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "");
    let mut client = broker.client().await;
    for batch in [json!(0), json!(1001), json!("8")] {
        let reply = client
            .reply(json!({"op":"subscribe","id":1,"topic":"t.a","batch":batch}))
            .await;
        assert_eq!(reply["type"], "error", "{reply}");
        assert_eq!(reply["code"], "bad_request", "{reply}");
    }
}

wharf_tests::conformance!(
    a_backlog_comes_in_frames_of_at_most_batch,
    a_batch_out_of_range_is_refused
);
