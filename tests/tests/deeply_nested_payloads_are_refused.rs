//! A payload nested deeper than `max_json_depth` (default 128) is refused with `bad_request`,
//! over WebSocket (publish and publish_batch) and HTTP, so that no subscriber whose JSON
//! parser recurses is handed an event it cannot read at every reconnect.

use std::io::{Read, Write};
use std::net::TcpStream;

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use wharf_tests::{data_dir, Backend};

fn nested(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

fn http_publish(addr: &str, body: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "POST /v1/publish/deep HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

async fn payloads_nested_too_deep_are_refused_everywhere(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "");
    let mut c = broker.client().await;

    for depth in [129, 100_000] {
        let frame = format!(
            r#"{{"op":"publish","id":{depth},"topic":"deep","payload":{}}}"#,
            nested(depth)
        );
        c.send_raw(Message::text(frame)).await;
        let reply = c.recv().await;
        assert_eq!(reply["code"], "bad_request", "{reply}");
        assert_eq!(reply["id"], depth);
        assert!(reply["message"]
            .as_str()
            .unwrap_or_default()
            .contains("max_json_depth"));
    }
    let batch = format!(
        r#"{{"op":"publish_batch","id":"b","events":[{{"topic":"deep","payload":1}},{{"topic":"deep","payload":{}}}]}}"#,
        nested(200)
    );
    c.send_raw(Message::text(batch)).await;
    assert_eq!(c.recv().await["code"], "bad_request");

    let addr = broker
        .url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_owned();
    let (status, body) = http_publish(&addr, &nested(129));
    assert_eq!((status, body["code"].clone()), (400, json!("bad_request")));

    // At the limit it is stored, and nothing refused was.
    let frame = format!(
        r#"{{"op":"publish","id":"ok","topic":"deep","payload":{}}}"#,
        nested(128)
    );
    c.send_raw(Message::text(frame)).await;
    assert_eq!(c.recv().await["seq"], 1);
    assert_eq!(
        http_publish(&addr, &nested(3)),
        (200, json!({"seq": 2, "duplicate": false}))
    );
}

wharf_tests::conformance!(payloads_nested_too_deep_are_refused_everywhere);
