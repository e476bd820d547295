//! A clean restart keeps the sled view (a position at the start of an empty segment is a
//! valid one), and views that are set aside are capped at the newest two.

use std::path::Path;

use serde_json::json;
use wharf_tests::{data_dir, Broker};

fn set_asides(data: &Path) -> usize {
    std::fs::read_dir(data)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("state.set-aside-")
        })
        .count()
}

#[tokio::test]
async fn three_clean_starts_rebuild_nothing() {
    let (_tmp, data) = data_dir();
    for round in 0..3 {
        let mut broker = Broker::start(&data, "");
        if round == 1 {
            let mut c = broker.client().await;
            c.subscribe("v.>", Some("viewer")).await;
        }
        broker.terminate();
        assert!(
            !broker.log().contains("rebuilding"),
            "start {round} rebuilt the view:\n{}",
            broker.log()
        );
    }
    assert_eq!(set_asides(&data), 0);
}

#[tokio::test]
async fn at_most_two_set_aside_views_are_kept() {
    let (_tmp, data) = data_dir();
    for round in 0..4 {
        let mut broker = Broker::start(&data, "");
        let mut p = broker.client().await;
        p.publish("v.a", json!(round)).await;
        broker.terminate();
        // A view sled cannot open: set aside and rebuilt at the next start.
        std::fs::remove_dir_all(data.join("state")).unwrap();
        std::fs::write(data.join("state"), b"not a sled directory").unwrap();
    }
    let broker = Broker::start(&data, "");
    assert!(broker.log().contains("rebuilding"), "{}", broker.log());
    assert_eq!(set_asides(&data), 2, "{}", broker.log());
}
