//! The HTTP side speaks HTTP/1.1 as curl, webhooks and load balancers expect: keep-alive,
//! chunked request bodies, `HEAD`, `Expect: 100-continue`, `405` with `Allow`; a retried
//! webhook with the same `Idempotency-Key` is stored once; `POST /v1/publish` with a JSON
//! array is one atomic batch.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use serde_json::{json, Value};
use wharf_tests::{data_dir, Broker, WAIT};

fn addr_of(broker: &Broker) -> String {
    broker
        .url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_owned()
}

/// Reads one response (status, headers, body by content-length) from a kept-alive stream.
fn read_response(reader: &mut BufReader<TcpStream>, head_only: bool) -> (u16, Vec<String>, String) {
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut headers = Vec::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end().to_owned();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        headers.push(line);
    }
    let mut body = vec![0u8; if head_only { 0 } else { length }];
    reader.read_exact(&mut body).unwrap();
    (status, headers, String::from_utf8(body).unwrap())
}

fn connect(addr: &str) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

#[tokio::test]
async fn keep_alive_chunked_head_continue_idempotency_and_batches() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, "");
    let addr = addr_of(&broker);
    let (mut s, mut r) = connect(&addr);

    // Two requests on one connection, the first a HEAD: headers, no body.
    write!(s, "HEAD /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let (status, headers, body) = read_response(&mut r, true);
    assert_eq!(status, 200);
    assert!(body.is_empty());
    assert!(
        headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case("content-length: 3")),
        "{headers:?}"
    );
    write!(s, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut r, false).0, 200);

    // A chunked body, on the same connection.
    write!(
        s,
        "POST /v1/publish/h.chunked HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{{\"a\"\r\n3\r\n:1}}\r\n0\r\n\r\n"
    )
    .unwrap();
    let (status, _, body) = read_response(&mut r, false);
    assert_eq!(status, 200, "{body}");
    let first: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(first, json!({"seq": 1, "duplicate": false}));

    // Expect: 100-continue: the server says go on before the body is sent.
    let payload = r#"{"hook":1}"#;
    write!(
        s,
        "POST /v1/publish/h.hook HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nIdempotency-Key: delivery-77\r\n\r\n",
        payload.len()
    )
    .unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 100"), "{line}");
    r.read_line(&mut line).unwrap();
    s.write_all(payload.as_bytes()).unwrap();
    let (status, _, body) = read_response(&mut r, false);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"seq": 2, "duplicate": false})
    );

    // The webhook retried with the same key: stored once, the same seq.
    write!(
        s,
        "POST /v1/publish/h.hook HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nIdempotency-Key: delivery-77\r\n\r\n{payload}",
        payload.len()
    )
    .unwrap();
    let (_, _, body) = read_response(&mut r, false);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"seq": 2, "duplicate": true})
    );

    // A batch, all or none.
    let batch = json!([
        {"topic":"h.a","payload":{"n":1}},
        {"topic":"h.b","payload":[2],"msg_id":"b-2"}
    ])
    .to_string();
    write!(
        s,
        "POST /v1/publish HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{batch}",
        batch.len()
    )
    .unwrap();
    let (status, _, body) = read_response(&mut r, false);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"events":[{"seq":3,"duplicate":false},{"seq":4,"duplicate":false}]})
    );
    let bad = json!([{"topic":"h.ok","payload":1},{"topic":"bad topic","payload":2}]).to_string();
    write!(
        s,
        "POST /v1/publish HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{bad}",
        bad.len()
    )
    .unwrap();
    let (status, _, body) = read_response(&mut r, false);
    assert_eq!(status, 400, "{body}");

    // Wrong method: 405 with what is allowed.
    write!(s, "DELETE /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let (status, headers, _) = read_response(&mut r, false);
    assert_eq!(status, 405);
    assert!(
        headers
            .iter()
            .any(|h| h.to_ascii_lowercase().starts_with("allow: get")),
        "{headers:?}"
    );

    // Nothing of the refused batch was stored.
    let mut c = broker.client().await;
    let stats = c.reply(json!({"op":"stats","id":1})).await;
    assert_eq!(stats["head_seq"], 4, "{stats}");
}
