//! A consumer deleted and created again under the same name, then a rebuild of the state view
//! from the log: the replay's changes held the name both as deleted and as saved, and the
//! deletion was applied last, so the consumer vanished from sled at the next start. Found by
//! the model-based test.

use serde_json::json;
use wharf_tests::{data_dir, Broker};

#[tokio::test]
async fn deleted_then_recreated_consumers_survive_a_rebuild_and_a_restart() {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, "");
    let mut c = broker.client().await;
    c.subscribe("r.a", Some("again")).await;
    c.close().await;
    let mut admin = broker.client().await;
    let reply = admin
        .reply(json!({"op":"delete_consumer","id":1,"consumer":"again"}))
        .await;
    assert_eq!(reply["type"], "ok", "{reply}");
    let mut c = broker.client().await;
    c.subscribe("r.a", Some("again")).await;
    broker.terminate();

    std::fs::remove_dir_all(data.join("state")).unwrap();
    let mut broker = Broker::start(&data, "");
    broker.terminate();
    let broker = Broker::start(&data, "");
    let mut c = broker.client().await;
    let info = c
        .reply(json!({"op":"consumer_info","id":2,"consumer":"again"}))
        .await;
    assert_eq!(info["type"], "consumer_info", "{info}");
}
