//! Let no one in who does not belong: tokens (hashed in the config) with publish, subscribe and
//! consumer permissions, given at the handshake or in a first `auth` frame; origins checked;
//! unauthenticated connections closed after a timeout; the HTTP publish guarded the same way;
//! no unauthenticated listening beyond loopback unless said so.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use wharf_tests::{data_dir, wharf_bin, Backend, Client};

fn hash(token: &str) -> String {
    let out = Command::new(wharf_bin())
        .args(["token", "hash", token])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn auth_config() -> String {
    format!(
        "[auth]\nenabled = true\nauth_timeout = \"300ms\"\nallowed_origins = [\"http://good.example\"]\n\
         [[auth.tokens]]\nname = \"app\"\nsha256 = \"{}\"\npublish = [\"orders.>\"]\n\
         subscribe = [\"orders.*\"]\nconsumers = [\"billing\"]\n",
        hash("app-secret-0123456789")
    )
}

async fn connect_with(url: &str, headers: &[(&'static str, &str)]) -> Result<Client, String> {
    let mut request = url.into_client_request().unwrap();
    for (k, v) in headers {
        request.headers_mut().insert(*k, v.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(Client::from_stream(ws)),
        Err(e) => Err(e.to_string()),
    }
}

async fn tokens_gate_every_operation(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, &auth_config());

    // Without a token nothing but auth goes through.
    let mut c = broker.client().await;
    let reply = c
        .reply(json!({"op":"publish","id":1,"topic":"orders.new","payload":1}))
        .await;
    assert_eq!(reply["code"], "unauthorized", "{reply}");
    let reply = c.reply(json!({"op":"auth","id":2,"token":"nope"})).await;
    assert_eq!(reply["code"], "unauthorized");
    let reply = c
        .reply(json!({"op":"auth","id":3,"token":"app-secret-0123456789"}))
        .await;
    assert_eq!(reply, json!({"type":"ok","id":3}));

    // Inside its permissions it works; outside it is forbidden.
    assert_eq!(c.publish("orders.new", json!(1)).await, 1);
    let reply = c
        .reply(json!({"op":"publish","id":4,"topic":"billing.x","payload":1}))
        .await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    let reply = c
        .reply(json!({"op":"subscribe","id":5,"topic":"orders.>"}))
        .await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    let reply = c
        .reply(json!({"op":"subscribe","id":6,"topic":"orders.*","consumer":"other"}))
        .await;
    assert_eq!(reply["code"], "forbidden", "{reply}");
    c.subscribe("orders.*", Some("billing")).await;
    assert_eq!(c.events(1).await[0]["seq"], 1);
    let reply = c
        .reply(json!({"op":"ack","id":7,"consumer":"other","seq":1}))
        .await;
    assert_eq!(reply["code"], "forbidden");
    c.ack("billing", &[1]).await;

    // A token at the handshake; a bad one is refused there.
    let mut b = connect_with(
        &broker.url,
        &[("authorization", "Bearer app-secret-0123456789")],
    )
    .await
    .unwrap();
    assert_eq!(b.publish("orders.paid", json!(2)).await, 2);
    let err = connect_with(&broker.url, &[("authorization", "Bearer wrong")])
        .await
        .err()
        .unwrap();
    assert!(err.contains("401"), "{err}");
    let err = connect_with(&format!("{}?token=app-secret-0123456789", broker.url), &[])
        .await
        .err()
        .unwrap();
    assert!(err.contains("401"), "query tokens are off: {err}");

    // Origins.
    let err = connect_with(&broker.url, &[("origin", "http://evil.example")])
        .await
        .err()
        .unwrap();
    assert!(err.contains("403"), "{err}");
    let mut good = connect_with(&broker.url, &[("origin", "http://good.example")])
        .await
        .unwrap();
    let reply = good
        .reply(json!({"op":"auth","id":1,"token":"app-secret-0123456789"}))
        .await;
    assert_eq!(reply["type"], "ok");
}

async fn an_unauthenticated_connection_is_closed_after_the_timeout(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, &auth_config());
    let (ws, _) = tokio_tungstenite::connect_async(&broker.url).await.unwrap();
    let (_sink, mut stream) = ws.split();
    let close = loop {
        match stream.next().await {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    let frame = close.expect("a close frame with a reason");
    assert_eq!(u16::from(frame.code), 1008);
    assert!(frame.reason.contains("authentication timeout"));
}

fn post(addr: &str, path: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

async fn the_http_publish_needs_a_token_too(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, &auth_config());
    let addr = broker
        .url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_owned();
    assert_eq!(post(&addr, "/v1/publish/orders.new", None, "1").0, 401);
    assert_eq!(
        post(&addr, "/v1/publish/orders.new", Some("wrong"), "1").0,
        401
    );
    assert_eq!(
        post(
            &addr,
            "/v1/publish/billing.x",
            Some("app-secret-0123456789"),
            "1"
        )
        .0,
        403
    );
    let (status, body) = post(
        &addr,
        "/v1/publish/orders.new",
        Some("app-secret-0123456789"),
        "1",
    );
    assert_eq!((status, body), (200, json!({"seq": 1, "duplicate": false})));
    // The CLI sends WHARF_TOKEN as a bearer token.
    let out = Command::new(wharf_bin())
        .args(["publish", "--url", &broker.url, "orders.cli", "2"])
        .env("WHARF_TOKEN", "app-secret-0123456789")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
}

#[test]
fn serving_beyond_loopback_without_auth_must_be_asked_for() {
    let out = Command::new(wharf_bin())
        .args([
            "serve",
            "--check-config",
            "--listen",
            "0.0.0.0:7700",
            "--config",
            "/dev/null",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen") && err.contains("auth"), "{err}");
    let out = Command::new(wharf_bin())
        .args([
            "serve",
            "--check-config",
            "--listen",
            "0.0.0.0:7700",
            "--config",
            "/dev/null",
        ])
        .env("WHARF_AUTH_ALLOW_INSECURE_REMOTE", "true")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

wharf_tests::conformance!(
    tokens_gate_every_operation,
    an_unauthenticated_connection_is_closed_after_the_timeout,
    the_http_publish_needs_a_token_too
);
