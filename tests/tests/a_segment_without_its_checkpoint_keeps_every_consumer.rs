//! A crash between starting a segment and writing its checkpoint must not lose consumers:
//! the segment a crash left empty is given its checkpoint at the next start, so when
//! retention by age makes it the oldest (and only) segment, a rebuild of the state view
//! still finds every consumer in it.

use serde_json::json;
use wharf_tests::{data_dir, segment_bases, Broker};

const AGED: &str = "max_age = \"1s\"";

#[tokio::test]
async fn consumers_survive_a_segment_born_without_its_checkpoint() {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, AGED);
    let mut c = broker.client().await;
    c.subscribe("keep.>", Some("keeper")).await;
    c.close().await;
    let mut p = broker.client().await;
    let mut head = 0;
    for i in 0..5 {
        head = p.publish("keep.a", json!({ "i": i })).await;
    }
    broker.kill9();

    // What a crash right after creating the next segment file left behind.
    let empty = data.join("log").join(format!("{:020}.seg", head + 1));
    std::fs::File::create(&empty).unwrap();

    let mut broker = Broker::start(&data, AGED);
    let mut p = broker.client().await;
    p.publish("keep.a", json!("after the crash")).await;
    // Everything older than the segment the crash left ages out.
    broker.wait_for_log("retention removed old segments");
    assert_eq!(segment_bases(&data), vec![head + 1]);
    broker.terminate();

    std::fs::remove_dir_all(data.join("state")).unwrap();
    let broker = Broker::start(&data, AGED);
    let mut admin = broker.client().await;
    let reply = admin
        .reply(json!({"op":"consumer_info","id":1,"consumer":"keeper"}))
        .await;
    assert_eq!(
        reply["type"], "consumer_info",
        "the consumer is gone: {reply}"
    );
    assert_eq!(reply["topics"], json!(["keep.>"]));
}
