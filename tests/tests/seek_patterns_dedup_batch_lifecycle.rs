//! Seek, several patterns per subscription, idempotent and batch publishing, and the
//! consumer lifecycle (info, delete).

use std::time::Duration;

use serde_json::json;
use wharf_tests::{data_dir, deliveries, seqs, Backend};

async fn seek_moves_a_consumer_back_and_forth(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "");
    let mut p = broker.client().await;
    for i in 1..=5 {
        p.publish("s", json!(i)).await;
    }
    let mut c = broker.client().await;
    c.subscribe("s", Some("seeker")).await;
    assert_eq!(seqs(&c.events(5).await), vec![1, 2, 3, 4, 5]);
    c.ack("seeker", &[1, 2, 3, 4, 5]).await;

    // Back to seq 3: its acked state above 2 is reset and 3..5 come again.
    let reply = c
        .reply(json!({"op":"seek","id":1,"consumer":"seeker","seq":3}))
        .await;
    assert_eq!(reply, json!({"type":"ok","id":1}));
    let again = c.events(3).await;
    assert_eq!(seqs(&again), vec![3, 4, 5]);
    assert_eq!(deliveries(&again), vec![1, 1, 1]);

    // Forward past everything: nothing is owed, new events flow.
    let reply = c
        .reply(json!({"op":"seek","id":2,"consumer":"seeker","start":"new"}))
        .await;
    assert_eq!(reply["type"], "ok");
    assert_eq!(c.recv_within(Duration::from_millis(300)).await, None);
    p.publish("s", json!(6)).await;
    assert_eq!(seqs(&c.events(1).await), vec![6]);

    // By time: from the first event published at or after a time.
    let info = c.info("seeker").await;
    assert!(info["ack_floor"].as_u64().unwrap() >= 5, "{info}");
    let reply = c
        .reply(json!({"op":"seek","id":3,"consumer":"seeker","time":"1970-01-01T00:00:00Z"}))
        .await;
    assert_eq!(reply["type"], "ok");
    assert_eq!(seqs(&c.events(6).await), vec![1, 2, 3, 4, 5, 6]);
    let reply = c
        .reply(json!({"op":"seek","id":4,"consumer":"nobody","seq":1}))
        .await;
    assert_eq!(reply["code"], "not_found");
}

async fn one_subscription_can_follow_several_patterns(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "");
    let mut c = broker.client().await;
    c.subscribe_with("multi", json!({"topics":["orders.*","billing.>"]}))
        .await;
    let mut e = broker.client().await;
    let reply = e
        .reply(json!({"op":"subscribe","id":1,"topics":["orders.*","billing.>"]}))
        .await;
    assert_eq!(reply["type"], "subscribed");
    let mut p = broker.client().await;
    p.publish("orders.new", json!(1)).await;
    p.publish("shipping.new", json!(2)).await;
    p.publish("billing.eu.paid", json!(3)).await;
    assert_eq!(seqs(&c.events(2).await), vec![1, 3]);
    assert_eq!(seqs(&e.events(2).await), vec![1, 3]);

    // The same set in another order is the same consumer; another set is a conflict.
    c.close().await;
    let mut c = broker.client().await;
    c.subscribe_with("multi", json!({"topics":["billing.>","orders.*"]}))
        .await;
    let reply = c
        .reply(json!({"op":"subscribe","id":2,"topics":["orders.*"],"consumer":"multi"}))
        .await;
    assert_eq!(reply["code"], "consumer_conflict", "{reply}");
    let info = c.info("multi").await;
    assert_eq!(info["topics"], json!(["orders.*", "billing.>"]));
}

async fn a_repeated_msg_id_is_stored_once_even_after_a_crash(backend: Backend) {
    let (_tmp, data) = data_dir();
    let mut broker = backend.start(&data, "");
    let mut p = broker.client().await;
    let publish =
        json!({"op":"publish","id":1,"topic":"pay","payload":{"amount":5},"msg_id":"pay-77"});
    let first = p.reply(publish.clone()).await;
    assert_eq!(first, json!({"type":"published","id":1,"seq":1}));
    let again = p.reply(publish.clone()).await;
    assert_eq!(
        again,
        json!({"type":"published","id":1,"seq":1,"duplicate":true})
    );
    broker.kill9();

    let broker = backend.start(&data, "");
    let mut p = broker.client().await;
    let after = p.reply(publish).await;
    assert_eq!(after["seq"], 1);
    assert_eq!(after["duplicate"], true);
    assert_eq!(p.publish("pay", json!("other")).await, 2);
}

async fn a_batch_is_stored_all_or_nothing(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "");
    let mut p = broker.client().await;
    let reply = p
        .reply(json!({"op":"publish_batch","id":"b","events":[
            {"topic":"a","payload":1},{"topic":"b","payload":{"x":2}},{"topic":"a","payload":null}
        ]}))
        .await;
    assert_eq!(reply, json!({"type":"published","id":"b","seqs":[1,2,3]}));
    let reply = p
        .reply(json!({"op":"publish_batch","id":"c","events":[
            {"topic":"a","payload":4},{"topic":"bad..topic","payload":5}
        ]}))
        .await;
    assert_eq!(reply["code"], "invalid_topic");
    assert_eq!(p.publish("a", json!(6)).await, 4);

    let mut c = broker.client().await;
    let reply = c
        .reply(json!({"op":"subscribe","id":1,"topic":">","start":"all"}))
        .await;
    assert_eq!(reply["type"], "subscribed");
    let got = c.events(4).await;
    assert_eq!(seqs(&got), vec![1, 2, 3, 4]);
    assert_eq!(got[2]["payload"], json!(null));
}

async fn consumers_can_be_inspected_and_deleted(backend: Backend) {
    let (_tmp, data) = data_dir();
    let mut broker = backend.start(&data, "");
    let mut p = broker.client().await;
    for i in 1..=4 {
        p.publish("life", json!(i)).await;
    }
    let mut c = broker.client().await;
    c.subscribe("life", Some("mortal")).await;
    c.events(4).await;
    c.ack("mortal", &[1, 3]).await;
    let info = c.info("mortal").await;
    assert_eq!(info["consumer"], "mortal");
    assert_eq!(info["topics"], json!(["life"]));
    assert_eq!(info["mode"], "exclusive");
    assert_eq!(info["ack_floor"], 1);
    assert_eq!(info["acked_above_floor"], 1);
    assert_eq!(info["ack_pending"], 2);
    assert_eq!(info["lag"], 2, "events still to settle: 2 and 4");
    assert_eq!(info["attached"], 1);

    let mut admin = broker.client().await;
    let reply = admin
        .reply(json!({"op":"delete_consumer","id":9,"consumer":"mortal"}))
        .await;
    assert_eq!(reply, json!({"type":"ok","id":9}));
    let notice = c.recv().await;
    assert_eq!(notice["type"], "unsubscribed");
    assert_eq!(notice["reason"], "deleted");
    let reply = admin
        .reply(json!({"op":"consumer_info","id":1,"consumer":"mortal"}))
        .await;
    assert_eq!(reply["code"], "not_found");

    // Deleted for good, across a crash; the name can be used again from scratch.
    broker.kill9();
    let broker = backend.start(&data, "");
    let mut admin = broker.client().await;
    let reply = admin
        .reply(json!({"op":"consumer_info","id":1,"consumer":"mortal"}))
        .await;
    assert_eq!(reply["code"], "not_found");
    let mut c = broker.client().await;
    c.subscribe_with("mortal", json!({"topic":"life","start":3}))
        .await;
    assert_eq!(seqs(&c.events(2).await), vec![3, 4]);
}

async fn a_consumer_nobody_uses_for_inactive_ttl_is_removed(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "inactive_ttl = \"300ms\"");
    let mut c = broker.client().await;
    c.subscribe("t", Some("kept")).await;
    let mut gone = broker.client().await;
    gone.subscribe("t", Some("ephemeral-ish")).await;
    gone.close().await;
    // Nothing tells a client of the removal (the cluster backend's is JetStream's own), so
    // ask until the consumer is gone, within a bound.
    let until = std::time::Instant::now() + wharf_tests::WAIT;
    loop {
        let reply = c
            .reply(json!({"op":"consumer_info","id":1,"consumer":"ephemeral-ish"}))
            .await;
        if reply["code"] == "not_found" {
            break;
        }
        assert!(std::time::Instant::now() < until, "never removed: {reply}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An attached consumer is never reaped.
    assert_eq!(c.info("kept").await["attached"], 1);
}

async fn a_seek_survives_a_crash(backend: Backend) {
    let (_tmp, data) = data_dir();
    let mut broker = backend.start(&data, "");
    let mut p = broker.client().await;
    for i in 1..=4 {
        p.publish("s", json!(i)).await;
    }
    let mut c = broker.client().await;
    c.subscribe("s", Some("mover")).await;
    c.events(4).await;
    c.ack("mover", &[1, 2, 3, 4]).await;
    let reply = c
        .reply(json!({"op":"seek","id":1,"consumer":"mover","seq":2}))
        .await;
    assert_eq!(reply["type"], "ok");
    broker.kill9();
    let broker = backend.start(&data, "");
    let mut c = broker.client().await;
    c.subscribe("s", Some("mover")).await;
    assert_eq!(seqs(&c.events(3).await), vec![2, 3, 4]);
}

wharf_tests::conformance!(
    seek_moves_a_consumer_back_and_forth,
    one_subscription_can_follow_several_patterns,
    a_repeated_msg_id_is_stored_once_even_after_a_crash,
    a_batch_is_stored_all_or_nothing,
    consumers_can_be_inspected_and_deleted,
    a_consumer_nobody_uses_for_inactive_ttl_is_removed,
    a_seek_survives_a_crash
);
