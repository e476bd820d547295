//! What the broker queues for one connection is bounded in bytes (`outbound_queue_bytes`),
//! not only in frames: a subscriber that stops reading large events is treated as too slow
//! once that many bytes wait for it, long before its frame count is reached.

use serde_json::json;
use wharf_tests::{data_dir, Backend};

async fn large_events_for_a_reader_that_does_not_read_fill_the_byte_budget(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(
        &data,
        "outbound_queue = 1024\noutbound_queue_bytes = 1048576\nslow_consumer_timeout = \"200ms\"",
    );
    let mut sloth = broker.client().await;
    sloth
        .subscribe_with("sloth", json!({"topic":"big","max_in_flight":100000}))
        .await;

    // 40 MiB for a reader that reads nothing: more than the socket buffers take, far fewer
    // frames than outbound_queue.
    let mut p = broker.client().await;
    let pad = "x".repeat(512 * 1024);
    for i in 0..80 {
        p.send(json!({"op":"publish","topic":"big","payload":{"i":i,"pad":pad}}))
            .await;
    }
    for i in 1..=80u64 {
        assert_eq!(p.recv().await["seq"].as_u64(), Some(i));
    }
    broker.wait_for_log("closing a slow consumer");
    let (code, reason) = loop {
        match sloth.next_frame().await {
            Ok(_) => continue,
            Err(close) => break close.expect("a close frame"),
        }
    };
    assert_eq!(code, 1013, "{reason}");
}

wharf_tests::conformance!(large_events_for_a_reader_that_does_not_read_fill_the_byte_budget);
