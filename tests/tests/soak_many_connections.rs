//! Load held: many idle connections, fast publishers, subscribers that keep up and some that
//! stop reading, all at once. Nothing confirmed is lost to the subscribers that keep up, the
//! ones that stop reading are cut off instead of making the broker buffer, and the broker's
//! memory stays bounded. Figures are printed, not asserted (beyond a generous memory ceiling).
//!
//! Longer: `WHARF_SOAK_CONNECTIONS=10000 WHARF_SOAK_EVENTS=50000 cargo test -p wharf-tests
//! --test soak_many_connections -- --nocapture`

use std::collections::HashSet;
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use wharf_tests::{data_dir, Broker, WAIT};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_fast_publishers_slow_readers() {
    let idle_count = env_or("WHARF_SOAK_CONNECTIONS", 1500);
    let events = env_or("WHARF_SOAK_EVENTS", 4000) as u64;
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, "outbound_queue = 64\nslow_consumer_timeout = \"1s\"");
    let base_rss = rss_kib(broker.pid());

    let mut idle = Vec::with_capacity(idle_count);
    for _ in 0..idle_count {
        let (ws, _) = tokio_tungstenite::connect_async(&broker.url).await.unwrap();
        idle.push(ws);
    }
    let idle_rss = rss_kib(broker.pid());

    // Subscribers that keep up: read, ack in batches, collect seqs.
    let mut keepers = Vec::new();
    for i in 0..8 {
        let (ws, _) = tokio_tungstenite::connect_async(&broker.url).await.unwrap();
        let (mut sink, mut stream) = ws.split();
        let name = format!("keeper-{i}");
        let sub =
            json!({"op":"subscribe","id":0,"topic":"soak.>","consumer":name,"max_in_flight":500});
        sink.send(Message::text(sub.to_string())).await.unwrap();
        keepers.push(tokio::spawn(async move {
            let mut seen = HashSet::new();
            let mut batch = Vec::new();
            let mut worst_ms = 0i64;
            while (seen.len() as u64) < events {
                let msg = tokio::time::timeout(WAIT, stream.next())
                    .await
                    .expect("a keeper stalled");
                let Some(Ok(Message::Text(t))) = msg else {
                    continue;
                };
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] != "event" {
                    continue;
                }
                let seq = v["seq"].as_u64().unwrap();
                let sent = v["payload"]["t"].as_i64().unwrap_or(0);
                worst_ms = worst_ms.max(wharf_protocol_now_ms() - sent);
                seen.insert(seq);
                batch.push(seq);
                if batch.len() >= 50 {
                    let ack = json!({"op":"ack","consumer":name,"seqs":std::mem::take(&mut batch)});
                    sink.send(Message::text(ack.to_string())).await.unwrap();
                }
            }
            (seen, worst_ms)
        }));
    }
    // Subscribers that never read.
    let mut sloths = Vec::new();
    for i in 0..2 {
        let (mut ws, _) = tokio_tungstenite::connect_async(&broker.url).await.unwrap();
        let sub = json!({"op":"subscribe","id":0,"topic":"soak.>","consumer":format!("sloth-{i}"),"max_in_flight":100000});
        ws.send(Message::text(sub.to_string())).await.unwrap();
        sloths.push(ws);
    }

    // Fast publishers.
    let started = Instant::now();
    let per = events / 4;
    let pad = "s".repeat(8000);
    let mut publishers = Vec::new();
    for _ in 0..4 {
        let url = broker.url.clone();
        let pad = pad.clone();
        publishers.push(tokio::spawn(async move {
            let (ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
            let (mut sink, mut stream) = ws.split();
            let mut confirmed = 0u64;
            let mut sent = 0u64;
            while confirmed < per {
                while sent < per && sent - confirmed < 128 {
                    let frame = json!({"op":"publish","id":sent,"topic":"soak.x","payload":{"t":wharf_protocol_now_ms(),"pad":pad}});
                    sink.send(Message::text(frame.to_string())).await.unwrap();
                    sent += 1;
                }
                match tokio::time::timeout(WAIT, stream.next()).await.expect("publisher stalled") {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap();
                        assert_eq!(v["type"], "published", "{v}");
                        confirmed += 1;
                    }
                    Some(Ok(_)) => {}
                    other => panic!("publisher connection ended: {other:?}"),
                }
            }
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    let publish_s = started.elapsed().as_secs_f64();
    let mut worst = 0;
    for k in keepers {
        let (seen, worst_ms) = k.await.unwrap();
        assert_eq!(seen.len() as u64, events, "a keeper missed events");
        worst = worst.max(worst_ms);
    }
    let peak_rss = rss_kib(broker.pid());
    assert!(
        broker.log().contains("closing a slow consumer"),
        "the readers that stopped were never cut off"
    );
    println!(
        "{idle_count} idle connections: broker RSS {base_rss} KiB -> {idle_rss} KiB ({:.1} KiB per connection); \
         {events} events x 8 keepers in {publish_s:.1}s, worst publish-to-delivery {worst} ms; RSS after {peak_rss} KiB",
        (idle_rss.saturating_sub(base_rss)) as f64 / idle_count as f64
    );
    assert!(peak_rss < 512 * 1024, "broker RSS {peak_rss} KiB");
    drop(idle);
    drop(sloths);
}

fn wharf_protocol_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
