//! Configured limits hold and say so: connections beyond `max_connections` get HTTP 503,
//! subscriptions beyond `max_subscriptions_per_connection` get `limit_exceeded`, and the
//! connection stays usable.

use serde_json::json;
use wharf_tests::{data_dir, Backend, Broker};

async fn connections_and_subscriptions_are_bounded(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(
        &data,
        "max_connections = 2\nmax_subscriptions_per_connection = 2",
    );
    let mut a = broker.client().await;
    let _b = broker.client().await;
    let err = tokio_tungstenite::connect_async(&broker.url)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    broker.wait_for_log("at max_connections");

    a.subscribe("x", None).await;
    a.subscribe("y", Some("c")).await;
    let reply = a.reply(json!({"op":"subscribe","id":3,"topic":"z"})).await;
    assert_eq!(reply["code"], "limit_exceeded", "{reply}");
    assert_eq!(reply["id"], 3);
    assert_eq!(a.publish("x", json!(1)).await, 1);
}

async fn an_idle_connection_without_subscriptions_is_closed(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(
        &data,
        "idle_timeout = \"200ms\"\nheartbeat_interval = \"50ms\"",
    );
    let mut idle = broker.client().await;
    let mut busy = broker.client().await;
    busy.subscribe("x", None).await;
    let close = idle.closed().await;
    assert_eq!(close, Some((1000, "idle timeout".to_owned())));
    // The subscribed one is still served.
    assert_eq!(busy.publish("x", json!(1)).await, 1);
}

#[test]
fn a_handshake_that_never_finishes_is_cut_off() {
    use std::io::{Read, Write};
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, "handshake_timeout = \"200ms\"");
    let addr = broker
        .url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_owned();
    let mut sock = std::net::TcpStream::connect(&addr).unwrap();
    sock.set_read_timeout(Some(wharf_tests::WAIT)).unwrap();
    // Half a request head, then nothing: the broker closes the socket.
    sock.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").unwrap();
    let mut buf = [0u8; 64];
    let n = sock
        .read(&mut buf)
        .expect("closed, not timed out on our side");
    assert_eq!(n, 0);
}

wharf_tests::conformance!(
    connections_and_subscriptions_are_bounded,
    an_idle_connection_without_subscriptions_is_closed
);
