//! A seek makes events new again, and their delivered-through mark must drop with it: a
//! SIGKILL at any moment after the seek must never load an old mark against the new state
//! (with `max_deliver = 1` that dead-lettered every event without one delivery).

use std::time::Duration;

use serde_json::json;
use wharf_tests::{data_dir, deliveries, seqs, Broker};

#[tokio::test]
async fn kills_at_several_offsets_after_a_seek_never_overcount() {
    // Offsets chosen around the state writer's 20 ms gathering and the 50 ms mark flush.
    for offset_ms in [0u64, 5, 15, 30, 45, 70, 120] {
        let (_tmp, data) = data_dir();
        let mut broker = Broker::start(&data, "");
        let mut p = broker.client().await;
        for i in 1..=5 {
            p.publish("c.a", json!(i)).await;
        }
        let mut c = broker.client().await;
        c.subscribe_with("counted", json!({"topic":"c.>","max_deliver":1}))
            .await;
        c.events(5).await;
        c.ack("counted", &[1, 2, 3, 4, 5]).await;
        // A clean stop saves the delivered-through mark (5).
        broker.terminate();

        let mut broker = Broker::start(&data, "");
        let mut admin = broker.client().await;
        let reply = admin
            .reply(json!({"op":"seek","id":1,"consumer":"counted","seq":1}))
            .await;
        assert_eq!(reply["type"], "ok", "{reply}");
        tokio::time::sleep(Duration::from_millis(offset_ms)).await;
        broker.kill9();

        let broker = Broker::start(&data, "");
        let mut c = broker.client().await;
        c.subscribe_with("counted", json!({"topic":"c.>","max_deliver":1}))
            .await;
        let got = c.events(5).await;
        assert_eq!(
            seqs(&got),
            vec![1, 2, 3, 4, 5],
            "killed {offset_ms} ms after the seek"
        );
        assert_eq!(
            deliveries(&got),
            vec![1; 5],
            "killed {offset_ms} ms after the seek"
        );
        let info = c.info("counted").await;
        assert_eq!(
            info["dead_lettered"], 0,
            "killed {offset_ms} ms after the seek: {info}"
        );
    }
}
