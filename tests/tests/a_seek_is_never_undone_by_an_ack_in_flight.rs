//! A seek and an ack sent back to back: the ack was computed before the seek, so it may
//! settle its own seq but must not lift the floor back over what the seek made new again.

use serde_json::json;
use wharf_tests::{data_dir, seqs, Backend};

async fn an_ack_sent_right_after_a_seek_does_not_undo_it(backend: Backend) {
    let (_tmp, data) = data_dir();
    let mut broker = backend.start(&data, "");
    let mut p = broker.client().await;
    for i in 1..=10 {
        p.publish("s.a", json!(i)).await;
    }
    let mut c = broker.client().await;
    c.subscribe("s.>", Some("seeker")).await;
    assert_eq!(seqs(&c.events(10).await), (1..=10).collect::<Vec<_>>());
    c.ack("seeker", &[1, 2, 3, 4, 5, 6, 7, 8, 9]).await;

    // Pipelined behind a large publish, so the writer is still busy with it when the ack's
    // floor is computed: the seek is queued but not yet stored.
    let big: Vec<_> = (0..50)
        .map(|i| json!({"topic":"other","payload":{"i": i, "pad": "b".repeat(16_000)}}))
        .collect();
    c.send(json!({"op":"publish_batch","id":"b","events":big}))
        .await;
    c.send(json!({"op":"seek","id":"k","consumer":"seeker","seq":1}))
        .await;
    c.send(json!({"op":"ack","id":"a","consumer":"seeker","seqs":[10]}))
        .await;
    let mut replies = 0;
    let mut redelivered = std::collections::BTreeSet::new();
    while replies < 3 {
        let frame = c.recv().await;
        if frame["type"] == "event" {
            redelivered.insert(frame["seq"].as_u64().unwrap());
        } else {
            assert!(
                frame["type"] == "ok" || frame["type"] == "published",
                "{frame}"
            );
            replies += 1;
        }
    }
    let info = c.info("seeker").await;
    assert_eq!(info["ack_floor"], 0, "the ack undid the seek: {info}");
    assert_eq!(info["acked_above_floor"], 1, "{info}");
    while redelivered.range(1..=9).count() < 9 {
        let frame = c.recv().await;
        assert_eq!(frame["type"], "event", "{frame}");
        assert_eq!(
            frame["delivery"], 1,
            "counts start over after a seek: {frame}"
        );
        redelivered.insert(frame["seq"].as_u64().unwrap());
    }
    // 10 may come again too: it was in flight when the seek made it new.

    // The same after a restart: the log replays to the same state.
    broker.kill9();
    let broker = backend.start(&data, "");
    let mut c = broker.client().await;
    let info = c.info("seeker").await;
    assert_eq!(info["ack_floor"], 0, "{info}");
    c.subscribe("s.>", Some("seeker")).await;
    assert_eq!(seqs(&c.events(9).await), (1..=9).collect::<Vec<_>>());
}

// Embedded-only, by design: the ack's floor racing the seek's record through one group
// commit is the embedded log's mechanism. On the cluster backend a seek makes the JetStream
// consumer again, so an ack sent across it finds nothing in flight (`not_found`) and cannot
// undo the seek either.
#[tokio::test]
async fn on_the_log_backend() {
    an_ack_sent_right_after_a_seek_does_not_undo_it(Backend::Log).await
}
