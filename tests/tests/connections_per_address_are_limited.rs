//! One remote address cannot take every connection: past `max_connections_per_ip` it gets
//! HTTP 503, while other addresses (and loopback, where a local proxy puts every client) are
//! still served.

use std::net::{IpAddr, UdpSocket};

use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wharf_tests::{data_dir, wharf_bin, Broker, Client};

/// This machine's address on its default route (no packet is sent).
fn non_loopback_address() -> IpAddr {
    let socket = UdpSocket::bind("0.0.0.0:0").expect("bind a UDP socket");
    socket
        .connect("203.0.113.1:9")
        .expect("a default route to find this machine's address");
    let ip = socket.local_addr().expect("local address").ip();
    assert!(!ip.is_loopback() && !ip.is_unspecified(), "{ip}");
    ip
}

async fn connect(url: &str) -> Result<Client, String> {
    let mut request = url.into_client_request().expect("URL");
    let value = "Bearer app-token-0123456789".parse().expect("header");
    request.headers_mut().insert("authorization", value);
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(Client::from_stream(ws)),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test]
async fn one_address_gets_at_most_its_share() {
    let out = std::process::Command::new(wharf_bin())
        .args(["token", "hash", "app-token-0123456789"])
        .output()
        .expect("run wharf token hash");
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (_tmp, data) = data_dir();
    let config = format!(
        "max_connections_per_ip = 2\n[auth]\nenabled = true\n\
         [[auth.tokens]]\nname = \"app\"\nsha256 = \"{hash}\"\npublish = [\">\"]\n"
    );
    let broker = Broker::try_start_with(&data, &config, &["--listen", "0.0.0.0:0"])
        .unwrap_or_else(|(status, log)| panic!("wharf serve exited ({status}):\n{log}"));
    let port = broker
        .url
        .trim_end_matches("/ws")
        .rsplit(':')
        .next()
        .expect("a port")
        .to_owned();
    let remote = format!("ws://{}:{port}/ws", non_loopback_address());
    let loopback = format!("ws://127.0.0.1:{port}/ws");

    let mut first = connect(&remote).await.expect("first connection");
    let _second = connect(&remote).await.expect("second connection");
    let err = connect(&remote).await.err().expect("a third is refused");
    assert!(err.contains("503"), "{err}");
    broker.wait_for_log("at max_connections_per_ip");

    // Loopback is not limited, and the first connections still work.
    let mut local: Vec<Client> = Vec::new();
    for _ in 0..3 {
        local.push(connect(&loopback).await.expect("a loopback connection"));
    }
    assert_eq!(first.publish("t", json!(1)).await, 1);
    assert_eq!(local[2].publish("t", json!(2)).await, 2);
}
