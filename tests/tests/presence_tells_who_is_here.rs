//! Presence: a subscription with `presence` makes its connection's client (its `hello` id)
//! present in its topics; `presence` lists each client once with its connection count;
//! `join_leave` subscribers hear when a client's first connection arrives and its last one
//! goes (an unsubscribe, a closed or killed connection). Bounded: clients per topic and the
//! size of `info`. Both backends; across two wharf nodes and a node's death on the cluster.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use wharf_broker::auth::{sign_hs256, Claims};
use wharf_tests::{data_dir, Backend, Broker, Client};

async fn hello(c: &mut Client, client: &str, info: Value) {
    let reply = c
        .reply(json!({"op":"hello","id":"h","client":client,"info":info}))
        .await;
    assert_eq!(reply["type"], "ok", "{reply}");
}

/// Subscribes (ephemeral) to `topic` with the given presence options; returns the sub id.
async fn enter(c: &mut Client, topic: &str, presence: bool, join_leave: bool) -> String {
    let reply = c
        .reply(json!({"op":"subscribe","id":"s","topic":topic,"presence":presence,"join_leave":join_leave}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    reply["sub"].as_str().expect("a sub").to_owned()
}

/// The next join or leave push: `(type, client)`.
async fn next_change(c: &mut Client) -> (String, String) {
    next_change_within(c, wharf_tests::WAIT).await
}

async fn next_change_within(c: &mut Client, limit: Duration) -> (String, String) {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = c
            .recv_within(left)
            .await
            .unwrap_or_else(|| panic!("no join or leave within {limit:?}"));
        if v["type"] == "join" || v["type"] == "leave" {
            return (
                v["type"].as_str().unwrap().to_owned(),
                v["client"].as_str().unwrap().to_owned(),
            );
        }
    }
}

/// `(client, connections)` of each present client, by client id.
async fn present(c: &mut Client, topic: &str) -> Vec<(String, u64)> {
    let reply = c
        .reply(json!({"op":"presence","id":"p","topic":topic}))
        .await;
    assert_eq!(reply["type"], "presence", "{reply}");
    let clients = reply["clients"].as_array().expect("clients");
    assert_eq!(reply["count"].as_u64(), Some(clients.len() as u64));
    clients
        .iter()
        .map(|c| {
            assert!(c["since"].as_str().is_some_and(|s| s.ends_with('Z')), "{c}");
            (
                c["client"].as_str().unwrap().to_owned(),
                c["connections"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    list.iter().map(|(c, n)| (c.to_string(), *n)).collect()
}

async fn presence_counts_clients_and_tells_joins_and_leaves(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "");
    let mut watcher = broker.client().await;
    hello(&mut watcher, "watcher", json!({})).await;
    let sub = enter(&mut watcher, "room.x", false, true).await;

    let mut ana1 = broker.client().await;
    hello(&mut ana1, "ana", json!({"name":"Ana"})).await;
    enter(&mut ana1, "room.x", true, false).await;
    let join = watcher.recv().await;
    assert_eq!(
        join,
        json!({"type":"join","sub":sub,"topic":"room.x","client":"ana","info":{"name":"Ana"}})
    );

    // A second connection of ana is no new join: the next push is bo's.
    let mut ana2 = broker.client().await;
    hello(&mut ana2, "ana", json!({"name":"Ana"})).await;
    enter(&mut ana2, "room.x", true, false).await;
    let mut bo = broker.client().await;
    hello(&mut bo, "bo", json!({})).await;
    let bo_sub = enter(&mut bo, "room.x", true, false).await;
    assert_eq!(
        next_change(&mut watcher).await,
        ("join".into(), "bo".into())
    );
    assert_eq!(
        present(&mut watcher, "room.x").await,
        pairs(&[("ana", 2), ("bo", 1)])
    );

    // ana closes one connection: still present; bo unsubscribes: bo leaves (the next push).
    ana1.close().await;
    let unsub = bo
        .reply(json!({"op":"unsubscribe","id":"u","sub":bo_sub}))
        .await;
    assert_eq!(unsub["type"], "ok", "{unsub}");
    assert_eq!(
        next_change(&mut watcher).await,
        ("leave".into(), "bo".into())
    );
    assert_eq!(present(&mut watcher, "room.x").await, pairs(&[("ana", 1)]));

    // ana's last connection is killed (no close frame): ana leaves.
    drop(ana2);
    assert_eq!(
        next_change(&mut watcher).await,
        ("leave".into(), "ana".into())
    );
    assert_eq!(present(&mut watcher, "room.x").await, pairs(&[]));

    // Without hello, a connection is `conn-<n>`; presence lists it under that name.
    let mut anonymous = broker.client().await;
    enter(&mut anonymous, "room.x", true, false).await;
    let (kind, client) = next_change(&mut watcher).await;
    assert_eq!(kind, "join");
    assert!(client.starts_with("conn-"), "{client}");
}

async fn presence_is_bounded_and_checked(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(
        &data,
        "max_presence_per_topic = 2\nmax_presence_info_bytes = 64",
    );
    let mut a = broker.client().await;
    let big = json!({"bio": "x".repeat(100)});
    let reply = a
        .reply(json!({"op":"hello","id":1,"client":"ana","info":big}))
        .await;
    assert_eq!(reply["code"], "too_large", "{reply}");
    for bad in [
        json!({"client":""}),
        json!({"client":"a b"}),
        json!({"info":[1]}),
    ] {
        let mut frame = json!({"op":"hello","id":2});
        for (k, v) in bad.as_object().unwrap() {
            frame[k] = v.clone();
        }
        let reply = a.reply(frame).await;
        assert_eq!(reply["code"], "bad_request", "{reply}");
    }
    hello(&mut a, "ana", json!({"name":"Ana"})).await;
    let wildcard = a
        .reply(json!({"op":"subscribe","id":3,"topic":"room.*","presence":true}))
        .await;
    assert_eq!(wildcard["code"], "invalid_pattern", "{wildcard}");
    let wildcard = a
        .reply(json!({"op":"subscribe","id":3,"topic":"room.>","join_leave":true}))
        .await;
    assert_eq!(wildcard["code"], "invalid_pattern", "{wildcard}");
    let not_a_flag = a
        .reply(json!({"op":"subscribe","id":3,"topic":"room.x","presence":"yes"}))
        .await;
    assert_eq!(not_a_flag["code"], "bad_request", "{not_a_flag}");
    let reply = a
        .reply(json!({"op":"presence","id":4,"topic":"room.*"}))
        .await;
    assert_eq!(reply["code"], "invalid_topic", "{reply}");
    enter(&mut a, "room.x", true, false).await;
    let late = a.reply(json!({"op":"hello","id":5,"client":"other"})).await;
    assert_eq!(late["code"], "bad_request", "{late}");

    let mut b = broker.client().await;
    hello(&mut b, "bo", json!({})).await;
    enter(&mut b, "room.x", true, false).await;
    // A third client is refused; another connection of a present client is not.
    let mut c = broker.client().await;
    hello(&mut c, "cy", json!({})).await;
    let full = c
        .reply(json!({"op":"subscribe","id":6,"topic":"room.x","presence":true}))
        .await;
    assert_eq!(full["code"], "limit_exceeded", "{full}");
    let mut a2 = broker.client().await;
    hello(&mut a2, "ana", json!({})).await;
    enter(&mut a2, "room.x", true, false).await;
    assert_eq!(
        present(&mut c, "room.x").await,
        pairs(&[("ana", 2), ("bo", 1)])
    );
    // Once one leaves there is room again.
    b.close().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while present(&mut c, "room.x").await.len() != 1 {
        assert!(Instant::now() < deadline, "bo never left");
        tokio::task::yield_now().await;
    }
    enter(&mut c, "room.x", true, false).await;
}

/// A subscription the broker ends (taken over, its consumer deleted) takes its presence
/// with it, while its connection stays open.
async fn a_subscription_the_broker_ends_leaves(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "");
    let mut watcher = broker.client().await;
    enter(&mut watcher, "room.x", false, true).await;
    let mut ana = broker.client().await;
    hello(&mut ana, "ana", json!({})).await;
    let sub = ana
        .reply(
            json!({"op":"subscribe","id":"s","topic":"room.x","consumer":"desk","presence":true}),
        )
        .await;
    assert_eq!(sub["type"], "subscribed", "{sub}");
    assert_eq!(
        next_change(&mut watcher).await,
        ("join".into(), "ana".into())
    );

    // bo takes the consumer over: ana's subscription ends, and ana leaves.
    let mut bo = broker.client().await;
    hello(&mut bo, "bo", json!({})).await;
    let taken = bo
        .reply(
            json!({"op":"subscribe","id":"s","topic":"room.x","consumer":"desk","presence":true}),
        )
        .await;
    assert_eq!(taken["type"], "subscribed", "{taken}");
    let mut changes = vec![
        next_change(&mut watcher).await,
        next_change(&mut watcher).await,
    ];
    changes.sort();
    assert_eq!(
        changes,
        [("join".into(), "bo".into()), ("leave".into(), "ana".into())]
    );
    let notice = ana.recv().await;
    assert_eq!(notice["reason"], "taken_over", "{notice}");

    // The consumer is deleted: bo's subscription ends, and bo leaves.
    let deleted = watcher
        .reply(json!({"op":"delete_consumer","id":"d","consumer":"desk"}))
        .await;
    assert_eq!(deleted["type"], "ok", "{deleted}");
    assert_eq!(
        next_change(&mut watcher).await,
        ("leave".into(), "bo".into())
    );
    assert_eq!(present(&mut watcher, "room.x").await, pairs(&[]));
    let notice = bo.recv().await;
    assert_eq!(notice["reason"], "deleted", "{notice}");
    // Both connections are still open.
    for c in [&mut ana, &mut bo] {
        let pong = c.reply(json!({"op":"ping","id":"p"})).await;
        assert_eq!(pong["type"], "pong", "{pong}");
    }
}

wharf_tests::conformance!(
    a_subscription_the_broker_ends_leaves,
    presence_counts_clients_and_tells_joins_and_leaves,
    presence_is_bounded_and_checked,
    a_jwt_names_the_client
);

const SECRET: &[u8] = b"a shared secret of at least thirty-two bytes";

fn jwt(sub: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        + 3600;
    let claims = Claims {
        sub: Some(sub.to_owned()),
        exp,
        iss: None,
        aud: None,
        wharf: None,
    };
    sign_hs256(SECRET, &claims).expect("sign")
}

fn jwt_broker(backend: Backend, dir: &Path) -> Broker {
    std::fs::create_dir_all(dir).expect("make the test dir");
    let secret = dir.join("jwt.secret");
    std::fs::write(&secret, SECRET).expect("write the secret");
    let config = format!(
        "[auth]\nenabled = true\n[auth.jwt]\nhs256_secret_file = {:?}\n\
         default_subscribe = [\"room.>\"]\n",
        secret.display().to_string()
    );
    backend.start(&dir.join("data"), &config)
}

/// With a JWT the client id is the token's `sub`: a hello naming another is forbidden.
async fn a_jwt_names_the_client(backend: Backend) {
    let (_tmp, dir) = data_dir();
    let broker = jwt_broker(backend, &dir);
    let mut ana = broker.client().await;
    let ok = ana
        .reply(json!({"op":"auth","id":0,"token":jwt("ana")}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    let other = ana
        .reply(json!({"op":"hello","id":1,"client":"mallory"}))
        .await;
    assert_eq!(other["code"], "forbidden", "{other}");
    let same = ana
        .reply(json!({"op":"hello","id":2,"client":"ana","info":{"name":"Ana"}}))
        .await;
    assert_eq!(same["type"], "ok", "{same}");
    enter(&mut ana, "room.x", true, false).await;

    let mut bo = broker.client().await;
    let ok = bo
        .reply(json!({"op":"auth","id":0,"token":jwt("bo")}))
        .await;
    assert_eq!(ok["type"], "ok", "{ok}");
    // Without hello: the sub.
    enter(&mut bo, "room.x", true, false).await;
    assert_eq!(
        present(&mut bo, "room.x").await,
        pairs(&[("ana", 1), ("bo", 1)])
    );
    let forbidden = bo
        .reply(json!({"op":"presence","id":3,"topic":"secret.x"}))
        .await;
    assert_eq!(forbidden["code"], "forbidden", "{forbidden}");
}

/// On the cluster, presence is one across wharf nodes, and a node that dies takes its
/// clients out of presence within the bucket's expiry (10 s).
#[tokio::test]
async fn presence_spans_wharf_nodes_and_a_dead_node_leaves() {
    if !Backend::Nats.runnable() {
        return;
    }
    let mut nodes = wharf_tests::nats::two_nodes("presence", "");
    let mut watcher = nodes.b.client().await;
    hello(&mut watcher, "watcher", json!({})).await;
    enter(&mut watcher, "room.x", false, true).await;

    let mut ana_a = nodes.a.client().await;
    hello(&mut ana_a, "ana", json!({"name":"Ana"})).await;
    enter(&mut ana_a, "room.x", true, false).await;
    assert_eq!(
        next_change(&mut watcher).await,
        ("join".into(), "ana".into())
    );
    let mut ana_b = nodes.b.client().await;
    hello(&mut ana_b, "ana", json!({"name":"Ana"})).await;
    enter(&mut ana_b, "room.x", true, false).await;
    // Connections add up across nodes, seen from either.
    let deadline = Instant::now() + Duration::from_secs(10);
    while present(&mut ana_a, "room.x").await != pairs(&[("ana", 2)]) {
        assert!(
            Instant::now() < deadline,
            "node a never saw node b's connection"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(present(&mut watcher, "room.x").await, pairs(&[("ana", 2)]));

    // bo is only on node a, which dies: bo leaves on node b; ana stays (still on b).
    let mut bo = nodes.a.client().await;
    hello(&mut bo, "bo", json!({})).await;
    enter(&mut bo, "room.x", true, false).await;
    assert_eq!(
        next_change(&mut watcher).await,
        ("join".into(), "bo".into())
    );
    let killed = Instant::now();
    nodes.a.kill9();
    assert_eq!(
        next_change_within(&mut watcher, Duration::from_secs(20)).await,
        ("leave".into(), "bo".into())
    );
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(15), "bo left after {took:?}");
    assert_eq!(present(&mut watcher, "room.x").await, pairs(&[("ana", 1)]));
}
