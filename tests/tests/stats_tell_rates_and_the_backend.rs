//! `stats` carries running totals (published, delivered, acked, dead-lettered: two replies a
//! second apart give the rates a console draws) and which backend serves, with the NATS
//! cluster's state on the cluster backend; `consumer_info` tells how many events a consumer
//! was handed and since when nobody holds it.

use std::time::{Duration, Instant};

use serde_json::json;
use wharf_tests::{data_dir, Backend};

async fn stats_count_what_went_through(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "");
    let mut c = broker.client().await;
    let before = c.reply(json!({"op":"stats","id":0})).await;
    for total in [
        "published_total",
        "delivered_total",
        "acked_total",
        "dead_lettered_total",
    ] {
        assert_eq!(before[total], 0, "{total} of a fresh broker: {before}");
    }
    let mut worker = broker.client().await;
    worker.subscribe("jobs.>", Some("workers")).await;
    for i in 0..3 {
        c.publish("jobs.a", json!(i)).await;
    }
    let got = worker.events(3).await;
    let seqs = wharf_tests::seqs(&got);
    worker.ack("workers", &seqs).await;

    let info = c
        .reply(json!({"op":"consumer_info","id":1,"consumer":"workers"}))
        .await;
    assert_eq!(info["delivered"], 3, "{info}");
    assert!(info.get("inactive_since").is_none(), "held now: {info}");

    let after = c.reply(json!({"op":"stats","id":2})).await;
    assert_eq!(after["published_total"], 3, "{after}");
    assert_eq!(after["delivered_total"], 3, "{after}");
    assert_eq!(after["acked_total"], 3, "{after}");
    match backend {
        Backend::Log => {
            assert_eq!(after["backend"], "log");
            assert!(after.get("cluster").is_none(), "{after}");
        }
        Backend::Nats => {
            assert_eq!(after["backend"], "nats");
            let cluster = &after["cluster"];
            assert!(cluster["server"].as_str().is_some(), "{after}");
            let peers = cluster["peers"].as_array().expect("peers");
            assert_eq!(
                peers.len() as u64,
                cluster["replicas"].as_u64().unwrap(),
                "{after}"
            );
            assert_eq!(
                peers.iter().filter(|p| p["leader"] == true).count(),
                1,
                "{after}"
            );
            assert_eq!(
                cluster["leader"],
                peers.iter().find(|p| p["leader"] == true).unwrap()["name"]
            );
        }
    }

    // Once nobody holds it, consumer_info says since when.
    worker.close().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = c
            .reply(json!({"op":"consumer_info","id":3,"consumer":"workers"}))
            .await;
        if info["attached"] == 0 {
            let since = info["inactive_since"]
                .as_str()
                .unwrap_or_else(|| panic!("{info}"));
            assert!(since.ends_with('Z'), "{info}");
            break;
        }
        assert!(Instant::now() < deadline, "still attached: {info}");
        tokio::task::yield_now().await;
    }
}

wharf_tests::conformance!(stats_count_what_went_through);
