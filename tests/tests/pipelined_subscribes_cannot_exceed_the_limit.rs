//! `max_subscriptions_per_connection` counts a subscription when its request is accepted, not
//! when it starts: subscribes pipelined without waiting for replies get `limit_exceeded` past
//! the limit like any others, and a refused or ended subscription frees its place.

use serde_json::json;
use wharf_tests::{data_dir, Backend};

async fn pipelined_subscribes_stop_at_the_limit(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "max_subscriptions_per_connection = 3");
    let mut c = broker.client().await;
    for i in 0..200 {
        let frame = match i % 2 {
            0 => json!({"op":"subscribe","id":i,"topic":format!("t.{i}")}),
            _ => {
                json!({"op":"subscribe","id":i,"topic":format!("t.{i}"),"consumer":format!("c{i}")})
            }
        };
        c.send(frame).await;
    }
    let mut subscribed = Vec::new();
    for i in 0..200 {
        let reply = c.recv().await;
        assert_eq!(reply["id"], i, "{reply}");
        match reply["type"].as_str() {
            Some("subscribed") => subscribed.push(reply["sub"].as_str().expect("sub").to_owned()),
            _ => assert_eq!(reply["code"], "limit_exceeded", "{reply}"),
        }
    }
    assert_eq!(subscribed.len(), 3, "{subscribed:?}");

    // Ending one makes room for exactly one more.
    let reply = c
        .reply(json!({"op":"unsubscribe","id":"u","sub":subscribed[0]}))
        .await;
    assert_eq!(reply["type"], "ok", "{reply}");
    c.send(json!({"op":"subscribe","id":"a","topic":"x"})).await;
    c.send(json!({"op":"subscribe","id":"b","topic":"y"})).await;
    assert_eq!(c.recv().await["type"], "subscribed");
    assert_eq!(c.recv().await["code"], "limit_exceeded");
}

wharf_tests::conformance!(pipelined_subscribes_stop_at_the_limit);
