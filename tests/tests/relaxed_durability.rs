//! The documented relaxed mode: confirm once written, sync at most `relaxed_sync_interval`
//! later. Fewer syncs than commits; a killed process still loses nothing (the page cache
//! survives it; only a power loss can take the last interval). The default syncs every commit.

use std::io::{Read, Write};
use std::net::TcpStream;

use serde_json::json;
use wharf_tests::{data_dir, seqs, Broker};

fn metric(broker: &Broker, name: &str) -> f64 {
    let addr = broker
        .url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws");
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn publish_one_by_one(broker: &Broker, n: u64) {
    let mut p = broker.client().await;
    for i in 1..=n {
        assert_eq!(p.publish("r", json!(i)).await, i);
    }
}

#[tokio::test]
async fn relaxed_mode_syncs_less_and_survives_a_killed_process() {
    let (_tmp, data) = data_dir();
    let relaxed = "durability = \"relaxed\"\nrelaxed_sync_interval = \"1s\"";
    let mut broker = Broker::start(&data, relaxed);
    publish_one_by_one(&broker, 40).await;
    let commits = metric(&broker, "wharf_group_commit_records_count");
    let syncs = metric(&broker, "wharf_fsync_duration_seconds_count");
    assert!(commits >= 40.0, "{commits}");
    assert!(syncs < commits / 2.0, "{syncs} syncs for {commits} commits");
    broker.kill9();

    let broker = Broker::start(&data, relaxed);
    let mut c = broker.client().await;
    let reply = c
        .reply(json!({"op":"subscribe","id":1,"topic":"r","start":"all"}))
        .await;
    assert_eq!(reply["type"], "subscribed");
    assert_eq!(seqs(&c.events(40).await), (1..=40).collect::<Vec<_>>());
}

#[tokio::test]
async fn the_default_syncs_before_every_confirmation() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, "");
    publish_one_by_one(&broker, 20).await;
    let commits = metric(&broker, "wharf_group_commit_records_count");
    let syncs = metric(&broker, "wharf_fsync_duration_seconds_count");
    assert!(commits >= 20.0);
    assert_eq!(syncs, commits);
}
