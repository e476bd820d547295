//! A peer that sends requests and never reads the replies cannot hold its connection: every
//! send to a connection is bounded in time. An unauthenticated one is gone at `auth_timeout`
//! whatever it sends (pings included) and frees its `max_connections` slot; an authenticated
//! one is gone after `slow_consumer_timeout`.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use wharf_tests::{data_dir, wharf_bin, Broker, Client, WAIT};

fn hash(token: &str) -> String {
    let out = std::process::Command::new(wharf_bin())
        .args(["token", "hash", token])
        .output()
        .expect("run wharf token hash");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Opens a WebSocket and sends pings with large ids (so that the replies fill the socket
/// buffers quickly) without ever reading; returns how long after connecting the broker
/// dropped the connection (a send fails), or `None` if it was still open after [`WAIT`].
async fn ping_without_reading(url: &str, token: Option<&str>) -> Option<Duration> {
    let mut request = url.into_client_request().expect("a WebSocket URL");
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().expect("a header value");
        request.headers_mut().insert("authorization", value);
    }
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect to the broker");
    let connected = Instant::now();
    let (mut sink, _never_read) = ws.split();
    let ping = Message::text(json!({"op":"ping","id":"x".repeat(64 * 1024)}).to_string());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, sink.send(ping.clone())).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) => return Some(connected.elapsed()),
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn an_unauthenticated_peer_that_pings_and_never_reads_is_closed_at_auth_timeout() {
    let (_tmp, data) = data_dir();
    let config = format!(
        "max_connections = 1\noutbound_queue = 4\n[auth]\nenabled = true\nauth_timeout = \"1s\"\n\
         [[auth.tokens]]\nname = \"app\"\nsha256 = \"{}\"\npublish = [\">\"]\n",
        hash("app-secret-0123456789")
    );
    let broker = Broker::start(&data, &config);
    let dropped_after = ping_without_reading(&broker.url, None)
        .await
        .expect("the broker dropped the connection");
    assert!(
        dropped_after >= Duration::from_millis(900) && dropped_after < Duration::from_secs(5),
        "dropped after {dropped_after:?}, auth_timeout is 1s"
    );
    // The slot is free again: a real client gets in.
    let (ws, _) = tokio::time::timeout(WAIT, async {
        loop {
            let mut request = broker.url.as_str().into_client_request().expect("URL");
            let value = "Bearer app-secret-0123456789".parse().expect("header");
            request.headers_mut().insert("authorization", value);
            match tokio_tungstenite::connect_async(request).await {
                Ok(ok) => break ok,
                // The broker may still be finishing the dropped connection's task.
                Err(e) if e.to_string().contains("503") => tokio::task::yield_now().await,
                Err(e) => panic!("connect: {e}"),
            }
        }
    })
    .await
    .expect("a real client got in");
    let mut client = Client::from_stream(ws);
    assert_eq!(client.publish("orders.new", json!(1)).await, 1);
}

#[tokio::test]
async fn a_peer_that_never_reads_its_replies_is_dropped_after_slow_consumer_timeout() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(
        &data,
        "outbound_queue = 4\nslow_consumer_timeout = \"1s\"\nheartbeat_interval = \"1h\"",
    );
    let dropped_after = ping_without_reading(&broker.url, None)
        .await
        .unwrap_or_else(|| panic!("the broker kept the connection:\n{}", broker.log()));
    assert!(
        dropped_after < Duration::from_secs(8),
        "dropped after {dropped_after:?}"
    );
    broker.wait_for_log("does not read its replies");
    let mut client = broker.client().await;
    assert_eq!(client.publish("x", json!(1)).await, 1);
}
