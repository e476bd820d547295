//! Redelivery while the subscriber stays connected: ack wait runs out, nack (now or after a
//! delay), progress for long work, and term to give up on an event for good.

use std::time::{Duration, Instant};

use serde_json::json;
use wharf_tests::{data_dir, deliveries, seqs, Backend};

async fn an_unacked_event_comes_again_after_ack_wait(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "");
    let mut c = broker.client().await;
    c.subscribe_with("w", json!({"topic":"jobs","ack_wait_ms":200}))
        .await;
    let mut p = broker.client().await;
    p.publish("jobs", json!(1)).await;
    let first = c.events(1).await;
    let started = Instant::now();
    let again = c.events(1).await;
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    assert_eq!((seqs(&first), deliveries(&first)), (vec![1], vec![1]));
    assert_eq!((seqs(&again), deliveries(&again)), (vec![1], vec![2]));
    c.ack("w", &[1]).await;
    assert_eq!(c.recv_within(Duration::from_millis(400)).await, None);
}

async fn progress_holds_off_redelivery_for_long_work(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "");
    let mut c = broker.client().await;
    c.subscribe_with("slow", json!({"topic":"jobs","ack_wait_ms":300}))
        .await;
    let mut p = broker.client().await;
    p.publish("jobs", json!("long")).await;
    c.events(1).await;
    // "Work" for three ack waits, reporting progress every 150 ms: no redelivery.
    for _ in 0..6 {
        let reply = c
            .reply(json!({"op":"progress","id":1,"consumer":"slow","seq":1}))
            .await;
        assert_eq!(reply["type"], "ok", "{reply}");
        assert_eq!(c.recv_within(Duration::from_millis(150)).await, None);
    }
    // Progress stops: the ack wait runs out and the event comes again.
    let again = c.events(1).await;
    assert_eq!(deliveries(&again), vec![2]);
}

async fn nack_redelivers_now_or_after_its_delay_and_term_never(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "");
    let mut c = broker.client().await;
    c.subscribe_with("n", json!({"topic":"jobs.*","ack_wait_ms":60000}))
        .await;
    let mut p = broker.client().await;
    for i in 1..=3 {
        p.publish("jobs.x", json!(i)).await;
    }
    assert_eq!(seqs(&c.events(3).await), vec![1, 2, 3]);

    let reply = c
        .reply(json!({"op":"nack","id":1,"consumer":"n","seq":1}))
        .await;
    assert_eq!(reply, json!({"type":"ok","id":1}));
    let now = c.events(1).await;
    assert_eq!((seqs(&now), deliveries(&now)), (vec![1], vec![2]));

    let asked = Instant::now();
    let reply = c
        .reply(json!({"op":"nack","id":2,"consumer":"n","seq":2,"delay_ms":300}))
        .await;
    assert_eq!(reply["type"], "ok");
    let later = c.events(1).await;
    assert!(
        asked.elapsed() >= Duration::from_millis(250),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!((seqs(&later), deliveries(&later)), (vec![2], vec![2]));

    let reply = c
        .reply(json!({"op":"term","id":3,"consumer":"n","seq":3}))
        .await;
    assert_eq!(reply["type"], "ok");
    c.ack("n", &[1, 2]).await;
    let info = c.info("n").await;
    assert_eq!(info["terminated"], 1, "{info}");
    assert_eq!(info["ack_pending"], 0, "{info}");
    assert_eq!(info["ack_floor"], 3, "{info}");

    // Not in flight any more: nack and progress say so.
    let reply = c
        .reply(json!({"op":"nack","id":4,"consumer":"n","seq":3}))
        .await;
    assert_eq!(reply["code"], "not_found", "{reply}");
    let reply = c
        .reply(json!({"op":"progress","id":5,"consumer":"n","seq":2}))
        .await;
    assert_eq!(reply["code"], "not_found", "{reply}");
    // A term survives a reconnect: nothing is owed.
    c.close().await;
    let mut c = broker.client().await;
    c.subscribe_with("n", json!({"topic":"jobs.*"})).await;
    assert_eq!(c.recv_within(Duration::from_millis(300)).await, None);
}

wharf_tests::conformance!(
    an_unacked_event_comes_again_after_ack_wait,
    progress_holds_off_redelivery_for_long_work,
    nack_redelivers_now_or_after_its_delay_and_term_never
);
