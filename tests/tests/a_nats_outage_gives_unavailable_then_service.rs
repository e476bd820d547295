//! Cluster: the whole NATS cluster SIGKILLed. The wharf node stays up: `/healthz` still says
//! alive, publishes get `unavailable`; when the cluster is back, the node serves again
//! without a restart, and the event confirmed before the outage is still there.

use std::time::{Duration, Instant};

use serde_json::json;
use wharf_tests::{data_dir, http_request, nats, Backend, Broker, WAIT};

#[tokio::test]
async fn a_nats_outage_gives_unavailable_then_service() {
    if !Backend::Nats.runnable() {
        return;
    }
    // A cluster of its own: this scenario kills it.
    let mut cluster = nats::Cluster::start();
    let (_tmp, data) = data_dir();
    let broker = Broker::start(
        &data,
        &format!(
            "{}nats.publish_timeout = \"1s\"\n",
            nats::node_config(&cluster.urls(), "outage")
        ),
    );
    broker.wait_ready();
    let mut c = broker.client().await;
    assert_eq!(c.publish("before", json!(1)).await, 1);

    cluster.kill9_all();
    let reply = c
        .reply(json!({"op":"publish","id":"p","topic":"during","payload":2}))
        .await;
    assert_eq!(reply["code"], "unavailable", "{reply}");
    let reply = c.reply(json!({"op":"stats","id":"s"})).await;
    assert_eq!(reply["code"], "unavailable", "{reply}");
    // Over HTTP too: 503 with the same code (retry later), not a 500.
    let (status, body) = http_request(&broker.http_addr(), "POST", "/v1/publish/during", "2");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"unavailable\""), "{body}");

    cluster.restart_all();
    // The node reconnects by itself; publishes succeed again within a bound.
    let until = Instant::now() + WAIT * 3;
    let seq = loop {
        let reply = c
            .reply(json!({"op":"publish","id":"q","topic":"after","payload":3,"msg_id":"after-1"}))
            .await;
        if reply["type"] == "published" {
            break reply["seq"].as_u64().unwrap();
        }
        assert_eq!(reply["code"], "unavailable", "{reply}");
        assert!(
            Instant::now() < until,
            "no service after the outage: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(seq >= 2, "{seq}");
    // What was confirmed before the outage is still there.
    let mut r = broker.client().await;
    let subscribed = r
        .reply(json!({"op":"subscribe","id":1,"topic":"before","start":"all"}))
        .await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    let events = r.events(1).await;
    assert_eq!(events[0]["seq"], 1, "{events:?}");
}
