//! With auth off (the default on loopback), a page the local browser opens cannot drive the
//! broker: a WebSocket or POST from a non-loopback Origin gets 403, a Host that does not name
//! the broker (DNS rebinding) gets 403, and `POST /v1/publish` without
//! `content-type: application/json` (a cross-site form) gets 415. Non-browser clients (no
//! Origin) and local pages still work. The container image never serves without tokens.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wharf_tests::{data_dir, wharf_bin, Broker, Client};

/// Sends one raw HTTP request and returns the status code.
fn status_of(addr: &str, request: &str) -> u16 {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(request.as_bytes()).expect("send request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read response");
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"))
}

fn post(addr: &str, host: &str, extra_headers: &str, body: &str) -> u16 {
    status_of(
        addr,
        &format!(
            "POST /v1/publish/orders.new HTTP/1.1\r\nHost: {host}\r\n{extra_headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

async fn upgrade(url: &str, headers: &[(&'static str, &str)]) -> Result<Client, String> {
    let mut request = url.into_client_request().expect("a WebSocket URL");
    for (name, value) in headers {
        request
            .headers_mut()
            .insert(*name, value.parse().expect("a header value"));
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(Client::from_stream(ws)),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test]
async fn cross_site_pages_and_rebound_names_are_refused() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, "");
    let addr = broker
        .url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_owned();
    let port = addr.rsplit(':').next().expect("a port");
    let json = "Content-Type: application/json\r\n";

    // A page on another site: its WebSocket and its POST are refused.
    let err = upgrade(&broker.url, &[("origin", "https://evil.example")])
        .await
        .err()
        .expect("a cross-site WebSocket is refused");
    assert!(err.contains("403"), "{err}");
    let evil_origin = format!("Origin: https://evil.example\r\n{json}");
    assert_eq!(post(&addr, &addr, &evil_origin, "1"), 403);
    let sandboxed = format!("Origin: null\r\n{json}");
    assert_eq!(post(&addr, &addr, &sandboxed, "1"), 403);

    // DNS rebinding: the page's own name pointed at 127.0.0.1, so the origin looks like the
    // broker's, but the Host names the page's domain.
    let rebound = format!("evil.example:{port}");
    let err = upgrade(&broker.url, &[("host", rebound.as_str())])
        .await
        .err()
        .expect("a rebound Host is refused");
    assert!(err.contains("403"), "{err}");
    assert_eq!(post(&addr, &rebound, json, "1"), 403);
    let metrics = format!("GET /metrics HTTP/1.1\r\nHost: {rebound}\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&addr, &metrics), 403);

    // A cross-site form can only post text/plain (or form encodings) without a preflight.
    assert_eq!(post(&addr, &addr, "Content-Type: text/plain\r\n", "1"), 415);
    assert_eq!(post(&addr, &addr, "", "1"), 415);

    // Local pages, localhost and non-browser clients are served.
    let local = format!("http://localhost:{port}");
    let mut page = upgrade(&broker.url, &[("origin", local.as_str())])
        .await
        .expect("a loopback origin connects");
    assert_eq!(page.publish("orders.new", json!(1)).await, 1);
    let localhost = format!("localhost:{port}");
    let mut named = upgrade(&broker.url, &[("host", localhost.as_str())])
        .await
        .expect("Host: localhost connects");
    assert_eq!(named.publish("orders.new", json!(2)).await, 2);
    assert_eq!(post(&addr, &addr, json, "3"), 200);
    let local_origin = format!("Origin: http://127.0.0.1:3000\r\n{json}");
    assert_eq!(post(&addr, "localhost", &local_origin, "4"), 200);
}

#[test]
fn the_container_image_never_serves_without_tokens() {
    let dockerfile = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../Dockerfile"),
    )
    .expect("read the Dockerfile");
    assert!(
        !dockerfile.to_uppercase().contains("ALLOW_INSECURE_REMOTE"),
        "the image must not waive auth"
    );
    // The image's environment: every `NAME=value` of its ENV instruction.
    let env_block = dockerfile
        .split("\nENV ")
        .nth(1)
        .expect("an ENV instruction")
        .split("\nEXPOSE")
        .next()
        .unwrap_or_default();
    let env: Vec<(String, String)> = env_block
        .split_whitespace()
        .filter_map(|word| word.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert!(env.iter().any(|(k, _)| k == "WHARF_LISTEN"), "{env:?}");
    let (_tmp, data) = data_dir();
    let check = |config: &std::path::Path| {
        Command::new(wharf_bin())
            .args(["serve", "--check-config", "--config"])
            .arg(config)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("run wharf serve --check-config")
    };
    // Without a config that lists tokens it refuses to start, and says why.
    let empty = data.with_extension("empty.toml");
    std::fs::write(&empty, "").expect("write config");
    let out = check(&empty);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("auth.tokens"),
        "{out:?}"
    );
    // With the documented config it starts.
    let with_token = data.with_extension("tokens.toml");
    let config = format!(
        "[auth]\nenabled = true\n[[auth.tokens]]\nname = \"backend\"\nsha256 = \"{}\"\npublish = [\">\"]\n",
        "0".repeat(64)
    );
    std::fs::write(&with_token, config).expect("write config");
    let out = check(&with_token);
    assert!(out.status.success(), "{out:?}");
    let effective = String::from_utf8_lossy(&out.stdout);
    assert!(effective.contains("0.0.0.0:7700"), "{effective}");
}
