//! A client that sends publishes and closes at once, without waiting for the replies, still
//! gets them stored: the broker takes pipelined publishes in bursts and hands each burst to
//! the log as one append, and a burst that ends with the connection is handed over too.

use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use wharf_tests::{data_dir, seqs, Backend};

async fn publishes_sent_right_before_close_are_stored(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "");
    let (mut ws, _) = tokio_tungstenite::connect_async(&broker.url).await.unwrap();
    for i in 1..=5 {
        let frame = json!({"op":"publish","id":i,"topic":"fire.forget","payload":i});
        ws.feed(Message::text(frame.to_string())).await.unwrap();
    }
    // The five publishes and the close leave in one write.
    ws.feed(Message::Close(None)).await.unwrap();
    ws.flush().await.unwrap();
    drop(ws);

    let mut c = broker.client().await;
    c.subscribe_with("reader", json!({"topic":"fire.forget","start":"all"}))
        .await;
    assert_eq!(seqs(&c.events(5).await), vec![1, 2, 3, 4, 5]);
}

wharf_tests::conformance!(publishes_sent_right_before_close_are_stored);
