//! Cluster: JetStream carries out a request but its answer is lost on the way (as a busy
//! cluster sometimes does, nats-server#8350). Nothing waits for a lost answer for all of
//! `nats.publish_timeout` (30 s here): a durable consumer's creation, or its exclusive
//! claim, is asked again and the subscribe answered; a node whose presence write went
//! unanswered still follows the other nodes' presence.

use serde_json::json;
use wharf_tests::nats_proxy::AnswerDroppingProxy;
use wharf_tests::{data_dir, nats, Backend, Broker, Client};

fn node0_port() -> u16 {
    nats::shared()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .nodes[0]
        .client_port
}

/// A ready wharf node on the stream `T<id>`, reaching NATS at `url`, that would wait 30 s
/// for a publish's answer.
fn node(url: &str, id: &str) -> (tempfile::TempDir, Broker) {
    let (tmp, data) = data_dir();
    let config = nats::node_config(&[url.to_owned()], id);
    let broker = Broker::start(&data, &format!("{config}nats.publish_timeout = \"30s\"\n"));
    broker.wait_ready();
    (tmp, broker)
}

/// A durable subscribe on a node whose first server message carrying `needle` is lost is
/// answered, and its consumer delivers.
async fn a_durable_subscribe_outlives_a_lost(needle: &str, id: &str) {
    let proxy = AnswerDroppingProxy::start(node0_port(), needle);
    let (_tmp, broker) = node(&proxy.url, id);

    // `subscribe` fails the test if no answer comes within the harness's 10 s wait.
    let mut c = broker.client().await;
    c.subscribe("orders.>", Some("billing")).await;
    assert_eq!(proxy.dropped(), 1, "the proxy did not lose the answer");

    let mut publisher = broker.client().await;
    let seq = publisher.publish("orders.1", json!({"total": 5})).await;
    let event = c.events(1).await.remove(0);
    assert_eq!(event["seq"], seq, "{event}");
    assert_eq!(event["payload"]["total"], 5, "{event}");
}

#[tokio::test]
async fn a_lost_answer_to_making_a_consumer_is_asked_again() {
    if Backend::Nats.runnable() {
        // The answer to making a consumer on the events stream (`T<id>`), not a bucket's.
        let needle = r#"consumer_create_response","stream_name":"Tlost-create""#;
        a_durable_subscribe_outlives_a_lost(needle, "lost-create").await;
    }
}

#[tokio::test]
async fn a_lost_answer_to_claiming_a_consumer_is_asked_again() {
    if Backend::Nats.runnable() {
        // The publish ack of the exclusive holder's claim (a put in the holders bucket).
        let needle = r#"{"stream":"KV_Tlost-claim_HOLDERS""#;
        a_durable_subscribe_outlives_a_lost(needle, "lost-claim").await;
    }
}

/// Says hello as `client` and enters `room` present, told of joins and leaves.
async fn enter(c: &mut Client, client: &str, room: &str) {
    let reply = c
        .reply(json!({"op":"hello","id":"h","client":client}))
        .await;
    assert_eq!(reply["type"], "ok", "{reply}");
    let reply = c
        .reply(json!({"op":"subscribe","id":"s","topic":room,"presence":true,"join_leave":true}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
}

#[tokio::test]
async fn a_node_whose_presence_write_went_unanswered_still_follows_the_others() {
    if !Backend::Nats.runnable() {
        return;
    }
    let id = "lost-presence";
    // The answer (a publish ack) to node a's first write to the presence bucket.
    let proxy =
        AnswerDroppingProxy::start(node0_port(), r#"{"stream":"KV_Tlost-presence_PRESENCE""#);
    let (_a_tmp, a) = node(&proxy.url, id);
    let direct = nats::shared()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .nodes[0]
        .url();
    let (_b_tmp, b) = node(&direct, id);

    let mut ana = a.client().await;
    enter(&mut ana, "ana", "room.x").await;
    let mut ben = b.client().await;
    enter(&mut ben, "ben", "room.x").await;
    // Within the harness's 10 s wait, ana (on node a) is told ben (on node b) joined.
    loop {
        let frame = ana.recv().await;
        if frame["type"] == "join" && frame["client"] == "ben" {
            break;
        }
    }
    assert_eq!(
        proxy.dropped(),
        1,
        "the proxy did not lose the write's answer"
    );
}
