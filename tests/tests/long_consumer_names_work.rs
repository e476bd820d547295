//! A consumer name of the longest allowed size (128 bytes), made of the characters a backend
//! has to escape (`_`, `.`), is created, delivers, settles, is listed and described, and
//! is deleted like any other.

use serde_json::json;
use wharf_tests::{data_dir, seqs, Backend};

async fn long_consumer_names_work(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "");
    let name = format!("{}{}", "_".repeat(64), ".".repeat(64));
    assert_eq!(name.len(), 128);
    let mut c = broker.client().await;
    c.subscribe_with(&name, json!({"topic":"orders.>"})).await;
    c.publish("orders.created", json!({"id": 1})).await;
    let got = c.events(1).await;
    assert_eq!(seqs(&got), vec![1]);
    assert_eq!(got[0]["consumer"], name.as_str());
    c.ack(&name, &[1]).await;

    let info = c.info(&name).await;
    assert_eq!(info["consumer"], name.as_str());
    assert_eq!(info["ack_floor"], 1, "{info}");
    let listed = c.reply(json!({"op":"consumers","id":2})).await;
    assert!(listed.to_string().contains(&name), "{listed}");
    // The subscription is told it ended, then the request is answered.
    let notice = c
        .reply(json!({"op":"delete_consumer","id":3,"consumer":name}))
        .await;
    assert_eq!(notice["reason"], "deleted", "{notice}");
    let deleted = c.recv().await;
    assert_eq!(deleted["type"], "ok", "{deleted}");
    let gone = c
        .reply(json!({"op":"consumer_info","id":4,"consumer":name}))
        .await;
    assert_eq!(gone["code"], "not_found", "{gone}");
}

wharf_tests::conformance!(long_consumer_names_work);
