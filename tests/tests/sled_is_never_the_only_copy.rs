//! The sled state view can be damaged, or the broker killed while it replays the log, again
//! and again: the broker still starts, rebuilds what it must from the log, and loses nothing.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use wharf_tests::{data_dir, seqs, wharf_bin, Broker};

/// Publishes `n` events in batches and acks the first half for consumer `c`.
async fn fill(broker: &Broker, n: u64) {
    let mut c = broker.client().await;
    c.subscribe("f.>", Some("c")).await;
    let mut p = broker.client().await;
    let events: Vec<Value> = (0..100)
        .map(|i| json!({"topic":"f.x","payload":{"i":i}}))
        .collect();
    for _ in 0..n / 100 {
        let reply = p
            .reply(json!({"op":"publish_batch","id":1,"events":events}))
            .await;
        assert_eq!(reply["type"], "published");
    }
    let half: Vec<u64> = (1..=n / 2).collect();
    for chunk in half.chunks(500) {
        c.ack("c", chunk).await;
    }
}

/// The consumer owes exactly seqs `from..=to`.
async fn owes(broker: &Broker, from: u64, to: u64) {
    let mut c = broker.client().await;
    c.subscribe_with("c", json!({"topic":"f.>","max_in_flight":100000}))
        .await;
    let got = c.events((to - from + 1) as usize).await;
    assert_eq!(seqs(&got), (from..=to).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_corrupted_state_view_is_set_aside_and_rebuilt() {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, "");
    fill(&broker, 2000).await;
    broker.kill9();
    // Scribble over every sled file.
    for entry in std::fs::read_dir(data.join("state")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::write(&path, vec![0x5a; 4096]).unwrap();
        }
    }
    let broker = Broker::start(&data, "");
    assert!(
        broker.log().contains("rebuilding it from the log"),
        "{}",
        broker.log()
    );
    owes(&broker, 1001, 2000).await;
}

#[tokio::test]
async fn killing_the_broker_during_replay_again_and_again_loses_nothing() {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, "");
    fill(&broker, 20000).await;
    broker.kill9();
    // Kill it while it replays, ten times over.
    for _ in 0..10 {
        let mut child = Command::new(wharf_bin())
            .args(["serve", "--config"])
            .arg(&broker.config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap())
            .lines()
            .map_while(Result::ok);
        assert!(lines.any(|l| l.contains("recovering the log")));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let broker = Broker::start(&data, "");
    owes(&broker, 10001, 20000).await;
}
