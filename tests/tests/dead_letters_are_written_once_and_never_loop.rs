//! One dead letter per event, whatever happens while it is written: takeovers racing the
//! dead-letter append, and a SIGKILL in the middle. A consumer never receives its own dead
//! letters (one on `>` used to dead-letter them forever, each nesting the last), and a dead
//! letter that fails in another consumer is settled, never nested again.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;
use wharf_tests::{data_dir, Broker, Client};

const POISON: u64 = 40;

/// Every dead letter stored so far, by the seq it stands for.
async fn dead_letters(c: &mut Client, topic: &str) -> BTreeMap<u64, usize> {
    let reply = c
        .reply(json!({"op":"subscribe","id":"d","topic":topic,"start":"all"}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let mut counts = BTreeMap::new();
    while let Some(frame) = c.recv_within(Duration::from_millis(500)).await {
        assert_eq!(frame["type"], "event", "{frame}");
        let seq = frame["payload"]["seq"].as_u64().unwrap();
        *counts.entry(seq).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn takeovers_and_a_kill_during_dead_lettering_write_each_once() {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, "");
    let mut p = broker.client().await;
    for i in 0..POISON {
        p.publish("jobs.x", json!({ "i": i })).await;
    }
    let opts = json!({"topic":"jobs.>","ack_wait_ms":30,"max_deliver":1});
    // Each subscriber takes the consumer over from the last while ack waits run out and
    // dead letters are being appended.
    let mut holders = Vec::new();
    for _ in 0..12 {
        let mut c = broker.client().await;
        c.subscribe_with("flaky", opts.clone()).await;
        let _ = c.recv_within(Duration::from_millis(15)).await;
        holders.push(c);
    }
    broker.kill9();
    let broker = Broker::start(&data, "");
    for _ in 0..4 {
        let mut c = broker.client().await;
        c.subscribe_with("flaky", opts.clone()).await;
        let _ = c.recv_within(Duration::from_millis(40)).await;
        holders.push(c);
    }
    // Wait until every event is settled one way or the other.
    let mut c = broker.client().await;
    c.subscribe_with("flaky", opts.clone()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info = c.info("flaky").await;
        if info["dead_lettered"] == POISON {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{info}");
        let _ = c.recv_within(Duration::from_millis(50)).await;
    }
    let mut reader = broker.client().await;
    let counts = dead_letters(&mut reader, "dead.flaky").await;
    assert_eq!(counts.len() as u64, POISON, "{counts:?}");
    assert!(
        counts.values().all(|&n| n == 1),
        "a seq dead-lettered twice: {counts:?}"
    );
}

#[tokio::test]
async fn a_consumer_on_everything_never_dead_letters_its_dead_letters() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, "");
    let mut all = broker.client().await;
    all.subscribe_with("all", json!({"topic":">","ack_wait_ms":30,"max_deliver":1}))
        .await;
    let mut other = broker.client().await;
    other
        .subscribe_with(
            "other",
            json!({"topic":"dead.>","ack_wait_ms":30,"max_deliver":1}),
        )
        .await;
    let mut p = broker.client().await;
    p.publish("jobs.y", json!("poison")).await;

    // `all` gets the event, never acks: one dead letter, dead.all, which `all` never sees.
    let first = all.recv().await;
    assert_eq!(first["seq"], 1, "{first}");
    // `other` gets dead.all and fails it too: settled, not dead-lettered into dead.other.
    let dead = other.recv().await;
    assert_eq!(dead["topic"], "dead.all", "{dead}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while other.info("other").await["dead_lettered"] != 1 {
        assert!(std::time::Instant::now() < deadline);
        let _ = other.recv_within(Duration::from_millis(50)).await;
    }
    assert_eq!(all.recv_within(Duration::from_millis(300)).await, None);
    let mut c = broker.client().await;
    let stats = c.reply(json!({"op":"stats","id":1})).await;
    assert_eq!(
        stats["head_seq"], 2,
        "one event and one dead letter: {stats}"
    );
}
