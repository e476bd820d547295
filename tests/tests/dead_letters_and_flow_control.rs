//! Poison messages go to `dead.<consumer>` after `max_deliver` deliveries; `max_in_flight`
//! caps what one subscriber holds unacked.

use std::time::Duration;

use serde_json::json;
use wharf_tests::{data_dir, deliveries, seqs, Backend};

async fn an_event_delivered_max_deliver_times_is_dead_lettered_and_survives_restart(
    backend: Backend,
) {
    let (_tmp, data) = data_dir();
    let mut broker = backend.start(&data, "");
    let mut dlq = broker.client().await;
    dlq.subscribe("dead.>", Some("dlq")).await;
    let mut c = broker.client().await;
    c.subscribe_with(
        "picky",
        json!({"topic":"jobs","ack_wait_ms":100,"max_deliver":2}),
    )
    .await;
    let mut p = broker.client().await;
    p.publish("jobs", json!({"poison": true})).await;
    p.publish("jobs", json!({"fine": true})).await;

    // Seq 2 is acked at once; seq 1 never is.
    let mut got = Vec::new();
    while got.len() < 3 {
        let ev = c.events(1).await.remove(0);
        if ev["seq"] == 2 {
            c.ack("picky", &[2]).await;
        }
        got.push(ev);
    }
    let poison: Vec<_> = got.into_iter().filter(|e| e["seq"] == 1).collect();
    assert_eq!(deliveries(&poison), vec![1, 2]);

    let dead = dlq.events(1).await.remove(0);
    assert_eq!(dead["topic"], "dead.picky");
    assert_eq!(dead["payload"]["consumer"], "picky");
    assert_eq!(dead["payload"]["topic"], "jobs");
    assert_eq!(dead["payload"]["seq"], 1);
    assert_eq!(dead["payload"]["deliveries"], 2);
    assert_eq!(dead["payload"]["payload"], json!({"poison": true}));
    // Settled for the consumer: not delivered a third time.
    assert_eq!(c.recv_within(Duration::from_millis(400)).await, None);
    let info = c.info("picky").await;
    assert_eq!(
        (info["dead_lettered"].as_u64(), info["ack_pending"].as_u64()),
        (Some(1), Some(0)),
        "{info}"
    );

    broker.kill9();
    let broker = backend.start(&data, "");
    let mut c = broker.client().await;
    let info = c.info("picky").await;
    assert_eq!(info["dead_lettered"], 1, "{info}");
    c.subscribe_with("picky", json!({"topic":"jobs"})).await;
    assert_eq!(c.recv_within(Duration::from_millis(300)).await, None);
}

async fn max_in_flight_caps_unacked_deliveries(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "");
    let mut p = broker.client().await;
    for i in 1..=10 {
        p.publish("t", json!(i)).await;
    }
    let mut c = broker.client().await;
    c.subscribe_with("capped", json!({"topic":"t","max_in_flight":3}))
        .await;
    assert_eq!(seqs(&c.events(3).await), vec![1, 2, 3]);
    assert_eq!(c.recv_within(Duration::from_millis(300)).await, None);
    c.ack("capped", &[2]).await;
    assert_eq!(seqs(&c.events(1).await), vec![4]);
    assert_eq!(c.recv_within(Duration::from_millis(200)).await, None);
    c.ack("capped", &[1, 3, 4]).await;
    assert_eq!(seqs(&c.events(3).await), vec![5, 6, 7]);
}

wharf_tests::conformance!(
    an_event_delivered_max_deliver_times_is_dead_lettered_and_survives_restart,
    max_in_flight_caps_unacked_deliveries
);
