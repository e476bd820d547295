//! Cluster: another NATS client (not wharf) publishes straight into wharf's stream, on a
//! subject under wharf's prefix: a JSON body, text that is not JSON, and bytes that are not
//! UTF-8. A wharf subscriber gets all three, in frames that are JSON: the JSON as it is,
//! the others as JSON strings.

use serde_json::json;
use wharf_tests::{data_dir, nats, seqs, Backend, Broker};

#[tokio::test]
async fn messages_from_other_nats_clients_reach_subscribers_as_json() {
    if !Backend::Nats.runnable() {
        return;
    }
    let urls = nats::shared().lock().unwrap().urls();
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, &nats::node_config(&urls, "foreign"));
    broker.wait_ready();

    let client = async_nats::connect(urls[0].as_str())
        .await
        .expect("connect to NATS");
    let js = async_nats::jetstream::new(client);
    for body in [&b"{\"a\":1}"[..], b"plain text", b"\xff\xfe"] {
        js.publish("tforeign.raw.in", body.to_vec().into())
            .await
            .expect("publish")
            .await
            .expect("stored by JetStream");
    }

    let mut c = broker.client().await;
    c.send(json!({"op":"subscribe","id":1,"topic":"raw.>","start":"all"}))
        .await;
    let subscribed = c.recv().await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    let got = c.events(3).await;
    assert_eq!(seqs(&got), vec![1, 2, 3]);
    assert_eq!(got[0]["payload"], json!({"a": 1}));
    assert_eq!(got[1]["payload"], json!("plain text"));
    assert_eq!(got[2]["payload"], json!("\u{fffd}\u{fffd}"));
    assert!(got.iter().all(|e| e["topic"] == "raw.in"), "{got:?}");
}
