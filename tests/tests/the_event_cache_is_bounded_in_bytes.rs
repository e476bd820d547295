//! The cache of newest events is bounded in bytes (`cache_bytes`) as well as in count: large
//! publishes do not pile up in memory, and subscribers still get every event (older ones
//! from the log).

use serde_json::json;
use wharf_tests::{data_dir, Broker};

/// The broker's resident memory, in bytes.
fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

#[tokio::test]
async fn large_publishes_do_not_pile_up_in_the_cache() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, "cache_bytes = 16777216");
    let mut p = broker.client().await;
    let before = rss_of(broker.pid());

    // 300 MB of payloads: with the cache bounded by count only (65536 events by default),
    // all of it would stay in memory.
    let pad = "x".repeat(1_000_000);
    for i in 0..300 {
        p.send(json!({"op":"publish","topic":"big","payload":{"i":i,"pad":pad}}))
            .await;
    }
    for i in 1..=300u64 {
        assert_eq!(p.recv().await["seq"].as_u64(), Some(i));
    }
    let grown = rss_of(broker.pid()).saturating_sub(before);
    assert!(
        grown < 150 << 20,
        "the broker grew by {} MiB for 300 MB published with cache_bytes = 16 MiB",
        grown >> 20
    );

    // Every event is still there for a subscriber: the oldest from the log.
    let mut c = broker.client().await;
    c.send(json!({"op":"subscribe","id":1,"topic":"big","start":"all"}))
        .await;
    assert_eq!(c.recv().await["type"], "subscribed");
    for i in 0..300 {
        let ev = c.recv().await;
        assert_eq!(ev["payload"]["i"], i, "{}", ev["seq"]);
    }
}
