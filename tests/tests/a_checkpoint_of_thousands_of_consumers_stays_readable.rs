//! Thousands of consumers with long pattern lists make a checkpoint larger than the biggest
//! record a reader accepts. The writer splits it into records under the limit, so the log it
//! writes always reads back: the broker restarts and a rebuilt view has every consumer.

use futures_util::future::join_all;
use serde_json::{json, Value};
use wharf_tests::{data_dir, segment_bases, Broker};

/// 64 patterns of ~250 bytes each: about 16 KB of patterns per consumer.
fn patterns(i: usize) -> Value {
    let long = "p".repeat(240);
    Value::Array((0..64).map(|k| json!(format!("{long}.{i}.{k}"))).collect())
}

const CONSUMERS: usize = 4_250;
const PER_CONNECTION: usize = 250;

#[tokio::test]
async fn a_checkpoint_over_the_record_limit_is_split_and_reads_back() {
    let (_tmp, data) = data_dir();
    // One large segment while the consumers are made, so that only one checkpoint is written.
    let mut broker = Broker::start(&data, "segment_bytes = 1073741824");
    let made = (0..CONSUMERS / PER_CONNECTION).map(|conn| {
        let url = broker.url.clone();
        async move {
            let mut c = wharf_tests::Client::connect(&url).await;
            for k in 0..PER_CONNECTION {
                let i = conn * PER_CONNECTION + k;
                c.send(json!({"op":"subscribe","id":i,"consumer":format!("c-{i}"),"topics":patterns(i)}))
                    .await;
            }
            for _ in 0..PER_CONNECTION {
                let reply = c.recv().await;
                assert_eq!(reply["type"], "subscribed", "{reply}");
            }
            c.close().await;
        }
    });
    join_all(made).await;
    broker.terminate();

    // Small segments now: the next publish rolls, writing a checkpoint of ~69 MB of state.
    let mut broker = Broker::start(&data, "segment_bytes = 4096");
    let mut p = broker.client().await;
    p.publish("t", json!(1)).await;
    p.publish("t", json!(2)).await;
    broker.terminate();
    assert!(segment_bases(&data).len() >= 2, "the log rolled");

    // Every record reads back, and a view rebuilt from the log has every consumer.
    std::fs::remove_dir_all(data.join("state")).unwrap();
    let broker = Broker::start(&data, "segment_bytes = 4096");
    let mut c = broker.client().await;
    let stats = c.reply(json!({"op":"stats","id":1})).await;
    assert_eq!(stats["consumers"], CONSUMERS as u64, "{stats}");
    assert_eq!(stats["head_seq"], 2, "{stats}");
}
