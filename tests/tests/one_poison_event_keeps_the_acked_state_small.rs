//! One event that is never acked pins a consumer's floor. Everything acked after it is kept
//! as ranges, so the consumer's stored state stays a few bytes, and `lag` counts the events
//! still to settle (one), not the distance from the floor.

use std::path::Path;

use serde_json::json;
use wharf_tests::{data_dir, Broker};

fn newest_segment_len(data: &Path) -> u64 {
    let mut segs: Vec<_> = std::fs::read_dir(data.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    segs.last().unwrap().metadata().unwrap().len()
}

#[tokio::test]
async fn twenty_thousand_acks_behind_one_poison_event_cost_two_ranges() {
    let (_tmp, data) = data_dir();
    let n: u64 = 20_000;
    let broker = Broker::start(&data, "segment_bytes = 1048576");
    let mut c = broker.client().await;
    c.subscribe("p.>", Some("patient")).await;
    let mut p = broker.client().await;
    let batch: Vec<_> = (0..n).map(|i| json!({"topic":"p.a","payload":i})).collect();
    for chunk in batch.chunks(1000) {
        let reply = p
            .reply(json!({"op":"publish_batch","id":"b","events":chunk}))
            .await;
        assert_eq!(reply["type"], "published", "{reply}");
    }
    // Everything but seq 1, acked as it arrives (max_in_flight keeps the window moving).
    let mut acked = 0;
    while acked < n - 1 {
        let ev = c.recv().await;
        assert_eq!(ev["type"], "event", "{ev}");
        let seq = ev["seq"].as_u64().unwrap();
        if seq != 1 {
            acked += 1;
            if acked < n - 1 {
                c.send(json!({"op":"ack","consumer":"patient","seqs":[seq]}))
                    .await;
            } else {
                // Replies come in request order: once this one is ok, all are stored.
                c.ack("patient", &[seq]).await;
            }
        }
    }
    let info = c.info("patient").await;
    assert_eq!(info["ack_floor"], 0, "{info}");
    assert_eq!(info["acked_above_floor"], n - 1, "{info}");
    assert_eq!(
        info["lag"], 1,
        "only the poison event is still to settle: {info}"
    );

    // A new segment's checkpoint holds the consumer in a few bytes, not 20,000 seqs.
    let mut p = broker.client().await;
    let pad = "q".repeat(4000);
    let before = newest_segment_len(&data);
    let mut rolled = false;
    for i in 0..400 {
        p.publish("other", json!({ "i": i, "pad": pad })).await;
        let len = newest_segment_len(&data);
        if len < before {
            rolled = true;
            assert!(
                len < 6000,
                "the new segment starts with a {len}-byte prefix"
            );
            break;
        }
    }
    assert!(rolled, "the log never rolled");
}
