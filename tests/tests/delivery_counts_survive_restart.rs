//! Delivery counts across a clean restart (SIGTERM): an event delivered once and never acked
//! comes back as delivery 2, one already redelivered as delivery 3, and events never
//! delivered as delivery 1. First deliveries are saved as one mark per consumer, not a key
//! per event, so this is what checks that the mark and the per-event counts agree.

use serde_json::{json, Value};
use wharf_tests::{data_dir, deliveries, seqs, Backend};

async fn counts_continue_after_a_restart(backend: Backend) {
    let (_tmp, data) = data_dir();
    let mut broker = backend.start(&data, "");
    let mut c = broker.client().await;
    c.subscribe_with("worker", json!({"topic":"jobs.*","max_in_flight":2}))
        .await;
    let mut p = broker.client().await;
    for i in 1..=4 {
        p.publish("jobs.new", json!({"job": i})).await;
    }
    let first = c.events(2).await;
    assert_eq!(seqs(&first), vec![1, 2]);
    assert_eq!(deliveries(&first), vec![1, 1]);
    // Seq 1 is nacked and comes again (delivery 2); neither is acked.
    let reply = c
        .reply(json!({"op":"nack","id":1,"consumer":"worker","seq":1}))
        .await;
    assert_eq!(reply["type"], "ok", "{reply}");
    let again: Vec<Value> = c.events(1).await;
    assert_eq!((seqs(&again), deliveries(&again)), (vec![1], vec![2]));
    c.close().await;
    assert!(broker.terminate().success());

    let broker = backend.start(&data, "");
    let mut c = broker.client().await;
    c.subscribe("jobs.*", Some("worker")).await;
    let after = c.events(4).await;
    assert_eq!(seqs(&after), vec![1, 2, 3, 4]);
    assert_eq!(deliveries(&after), vec![3, 2, 1, 1]);
}

wharf_tests::conformance!(counts_continue_after_a_restart);
