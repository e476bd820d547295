//! Durable consumers are bounded: `max_consumers` for the broker, and each token's
//! `max_consumers` over the consumers its names cover. Creating one more is `limit_exceeded`
//! (pipelined creations included); attaching to an existing consumer still works, and
//! deleting one makes room.

use std::process::Command;

use serde_json::json;
use wharf_tests::{data_dir, wharf_bin, Backend, Client};

fn hash(token: &str) -> String {
    let out = Command::new(wharf_bin())
        .args(["token", "hash", token])
        .output()
        .expect("run wharf token hash");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Pipelines `n` subscribes creating consumers `{prefix}{i}`; returns how many were created.
async fn create_many(c: &mut Client, prefix: &str, n: usize) -> usize {
    for i in 0..n {
        c.send(json!({"op":"subscribe","id":i,"topic":"t","consumer":format!("{prefix}{i}")}))
            .await;
    }
    let mut created = 0;
    for i in 0..n {
        let reply = c.recv().await;
        assert_eq!(reply["id"], i, "{reply}");
        match reply["type"].as_str() {
            Some("subscribed") => created += 1,
            _ => assert_eq!(reply["code"], "limit_exceeded", "{reply}"),
        }
    }
    created
}

async fn the_broker_holds_at_most_max_consumers(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "max_consumers = 5");
    let mut c = broker.client().await;
    assert_eq!(create_many(&mut c, "c", 30).await, 5);
    // An existing one can still be used; deleting one makes room for one.
    let mut other = broker.client().await;
    other.subscribe("t", Some("c0")).await;
    let reply = other
        .reply(json!({"op":"delete_consumer","id":"d","consumer":"c4"}))
        .await;
    assert_eq!(reply["type"], "ok", "{reply}");
    assert_eq!(create_many(&mut other, "d", 3).await, 1);
}

async fn each_token_holds_at_most_its_max_consumers(backend: Backend) {
    let (_tmp, data) = data_dir();
    let config = format!(
        "[auth]\nenabled = true\n\
         [[auth.tokens]]\nname = \"browser\"\nsha256 = \"{}\"\nsubscribe = [\">\"]\nconsumers = [\"board-*\"]\nmax_consumers = 2\n\
         [[auth.tokens]]\nname = \"backend\"\nsha256 = \"{}\"\nsubscribe = [\">\"]\nconsumers = [\"*\"]\n",
        hash("browser-token-0123456789"),
        hash("backend-token-0123456789")
    );
    let broker = backend.start(&data, &config);
    let mut browser = broker.client().await;
    let reply = browser
        .reply(json!({"op":"auth","id":"a","token":"browser-token-0123456789"}))
        .await;
    assert_eq!(reply["type"], "ok", "{reply}");
    assert_eq!(create_many(&mut browser, "board-", 10).await, 2);

    // Another token's limit is its own.
    let mut backend = broker.client().await;
    let reply = backend
        .reply(json!({"op":"auth","id":"a","token":"backend-token-0123456789"}))
        .await;
    assert_eq!(reply["type"], "ok", "{reply}");
    assert_eq!(create_many(&mut backend, "jobs-", 10).await, 10);
}

wharf_tests::conformance!(
    the_broker_holds_at_most_max_consumers,
    each_token_holds_at_most_its_max_consumers
);
