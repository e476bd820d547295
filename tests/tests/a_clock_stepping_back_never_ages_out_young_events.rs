//! The wall clock can step backwards (NTP, a VM restored from a snapshot). Retention by
//! `max_age` must never remove a segment that holds an event younger than `max_age`, and
//! event times never go backwards, so start-by-time still finds the first event at or after
//! a time. The clock is moved with libfaketime (Debian's `faketime`), preloaded into the
//! broker alone.

use std::path::Path;

use serde_json::json;
use wharf_tests::{data_dir, segment_bases, Broker};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const CONFIG: &str = "segment_bytes = 4096\nmax_age = \"1h\"";

/// Publishes padded events until the log has `n` segments.
async fn fill_to(broker: &Broker, data: &Path, n: usize) {
    let mut p = broker.client().await;
    let pad = "c".repeat(200);
    let mut i = 0;
    while segment_bases(data).len() < n {
        p.publish("clock.a", json!({ "i": i, "pad": pad })).await;
        i += 1;
        assert!(i < 1000, "the log never rolled");
    }
}

#[tokio::test]
async fn young_events_stay_when_the_clock_steps_back_and_forward() {
    if !Path::new(LIBFAKETIME).exists() {
        assert!(
            std::env::var_os("WHARF_REQUIRE_FAKETIME").is_none(),
            "libfaketime is required here (apt-get install faketime)"
        );
        eprintln!("skipped: libfaketime is not installed (apt-get install faketime)");
        return;
    }
    let (_tmp, data) = data_dir();
    // Now: the first segment fills with events stamped with the real time, up to the size
    // at which the next publish starts a new segment.
    let mut broker = Broker::start(&data, CONFIG);
    let first = data.join("log").join(format!("{:020}.seg", 1));
    let mut p = broker.client().await;
    let mut i = 0;
    while first.metadata().map_or(0, |m| m.len()) < 4096 {
        p.publish("clock.a", json!({ "i": i, "pad": "c".repeat(200) }))
            .await;
        i += 1;
    }
    assert_eq!(segment_bases(&data), vec![1]);
    broker.terminate();

    // The clock steps back two hours: more segments, stamped (by a naive broker) 2 h ago.
    let back = [
        ("LD_PRELOAD", LIBFAKETIME),
        ("FAKETIME", "-2h"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let mut broker = Broker::start_env(&data, CONFIG, &back);
    fill_to(&broker, &data, 4).await;
    broker.terminate();

    // The clock is right again. A roll runs retention: the first segment's events are
    // minutes old, whatever the times of the segments after it say.
    let broker = Broker::start(&data, CONFIG);
    fill_to(&broker, &data, 5).await;
    assert_eq!(
        segment_bases(&data)[0],
        1,
        "a segment of young events was removed: {:?}",
        segment_bases(&data)
    );
    let mut c = broker.client().await;
    let stats = c.reply(json!({"op":"stats","id":1})).await;
    assert_eq!(stats["first_seq"], 1, "{stats}");

    // Start by time: an hour ago is before every event, so the first one comes first.
    let an_hour_ago = wharf_protocol::format_time_ms(wharf_protocol::now_ms() - 3_600_000);
    let reply = c
        .reply(json!({"op":"subscribe","id":2,"topic":"clock.>","start":an_hour_ago}))
        .await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    assert_eq!(reply["start_seq"], 1, "{reply}");
}
