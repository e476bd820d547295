//! Per-user tokens: JWTs verified with `[auth.jwt]` keys wherever a token is accepted (the
//! `auth` op, a Bearer header, the HTTP publish). Rights come from the `wharf` claim, or from
//! the configured defaults with `{sub}` filled in; expired, forged, foreign-audience tokens
//! are refused; a connection is warned before its token expires, closed with 4001 when it
//! does, and kept (with its subscriptions) by a fresh `auth`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wharf_broker::auth::{sign_hs256, Claims, Rights};
use wharf_tests::{wharf_bin, Backend, Broker, Client};

const SECRET: &[u8] = b"a shared secret of at least thirty-two bytes";
const ISSUER: &str = "https://id.example";
const AUDIENCE: &str = "wharf-test";

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Starts a broker that takes JWTs signed with [`SECRET`]; returns it and the secret file.
fn start(backend: Backend, dir: &Path) -> (Broker, PathBuf) {
    let secret_file = dir.join("jwt.secret");
    std::fs::write(&secret_file, SECRET).expect("write the secret");
    let config = format!(
        "[auth]\nenabled = true\n[auth.jwt]\nhs256_secret_file = {:?}\nissuer = \"{ISSUER}\"\n\
         audience = \"{AUDIENCE}\"\nleeway = \"0s\"\nexpiry_notice = \"1s\"\n\
         default_publish = [\"user.{{sub}}.>\"]\ndefault_subscribe = [\"user.{{sub}}.>\"]\n\
         default_consumers = [\"{{sub}}-*\"]\n",
        secret_file.display().to_string()
    );
    (backend.start(&dir.join("data"), &config), secret_file)
}

fn token(sub: &str, exp: u64, rights: Option<Rights>) -> String {
    signed(SECRET, sub, exp, AUDIENCE, rights)
}

fn signed(secret: &[u8], sub: &str, exp: u64, audience: &str, rights: Option<Rights>) -> String {
    let claims = Claims {
        sub: Some(sub.to_owned()),
        exp,
        iss: Some(ISSUER.to_owned()),
        aud: Some(audience.to_owned()),
        wharf: rights,
    };
    sign_hs256(secret, &claims).expect("sign")
}

async fn auth(c: &mut Client, token: &str) -> Value {
    c.reply(json!({"op":"auth","id":"auth","token":token}))
        .await
}

async fn connect_with_bearer(url: &str, token: &str) -> Result<Client, String> {
    let mut request = url.into_client_request().expect("URL");
    let value = format!("Bearer {token}").parse().expect("header");
    request.headers_mut().insert("authorization", value);
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(Client::from_stream(ws)),
        Err(e) => Err(e.to_string()),
    }
}

fn http_publish(broker: &Broker, topic: &str, token: &str) -> u16 {
    let addr = broker
        .url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws");
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "POST /v1/publish/{topic} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 1\r\nConnection: close\r\n\r\n1"
    )
    .expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status")
}

async fn a_jwt_gets_its_claimed_or_default_rights_wherever_a_token_is_taken(backend: Backend) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (broker, secret_file) = start(backend, tmp.path());

    // Minted by the CLI, without a wharf claim: the defaults, {sub} = alice.
    let out = Command::new(wharf_bin())
        .args(["token", "jwt", "--secret-file"])
        .arg(&secret_file)
        .args([
            "--sub",
            "alice",
            "--ttl",
            "1h",
            "--issuer",
            ISSUER,
            "--audience",
            AUDIENCE,
        ])
        .output()
        .expect("run wharf token jwt");
    assert!(out.status.success(), "{out:?}");
    let alice = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut c = broker.client().await;
    assert_eq!(auth(&mut c, &alice).await["type"], "ok");
    c.subscribe("user.alice.>", Some("alice-inbox")).await;
    assert_eq!(c.publish("user.alice.notes", json!(1)).await, 1);
    for frame in [
        json!({"op":"subscribe","id":1,"topic":"user.bob.>"}),
        json!({"op":"publish","id":2,"topic":"user.bob.notes","payload":1}),
        json!({"op":"subscribe","id":3,"topic":"user.alice.>","consumer":"bob-inbox"}),
        json!({"op":"stats","id":4}),
    ] {
        let reply = c.reply(frame.clone()).await;
        assert_eq!(reply["code"], "forbidden", "{frame} -> {reply}");
    }

    // A wharf claim replaces the defaults.
    let rights = Rights {
        subscribe: vec!["news.>".into()],
        ..Rights::default()
    };
    let reader = token("carol", now_s() + 3600, Some(rights));
    let mut r = connect_with_bearer(&broker.url, &reader)
        .await
        .expect("a Bearer JWT at the handshake");
    r.subscribe("news.>", None).await;
    let reply = r
        .reply(json!({"op":"subscribe","id":1,"topic":"user.carol.>"}))
        .await;
    assert_eq!(reply["code"], "forbidden", "{reply}");

    // The HTTP publish takes JWTs too.
    assert_eq!(http_publish(&broker, "user.alice.http", &alice), 200);
    assert_eq!(http_publish(&broker, "user.bob.http", &alice), 403);
    assert_eq!(http_publish(&broker, "news.x", &reader), 403);

    // A subject that would widen a pattern cannot fill {sub}.
    for sub in ["*", "a.b", ">", ""] {
        let mut c = broker.client().await;
        let reply = auth(&mut c, &token(sub, now_s() + 3600, None)).await;
        assert_eq!(reply["code"], "unauthorized", "sub {sub:?}: {reply}");
    }
}

async fn expired_forged_and_foreign_jwts_are_refused(backend: Backend) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (broker, _) = start(backend, tmp.path());
    let later = now_s() + 3600;
    let other_secret = b"another secret that is also thirty-two bytes long";
    for (what, bad) in [
        ("expired", token("alice", now_s() - 10, None)),
        (
            "wrong signature",
            signed(other_secret, "alice", later, AUDIENCE, None),
        ),
        (
            "wrong audience",
            signed(SECRET, "alice", later, "someone-else", None),
        ),
        ("not a JWT", "a.b.c".to_owned()),
    ] {
        let mut c = broker.client().await;
        let reply = auth(&mut c, &bad).await;
        assert_eq!(reply["code"], "unauthorized", "{what}: {reply}");
        let err = connect_with_bearer(&broker.url, &bad)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted at the handshake"));
        assert!(err.contains("401"), "{what}: {err}");
        assert_eq!(http_publish(&broker, "user.alice.x", &bad), 401, "{what}");
    }
}

async fn an_expiring_jwt_is_warned_then_closed_with_4001(backend: Backend) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (broker, _) = start(backend, tmp.path());
    let exp = now_s() + 2;
    let mut c = broker.client().await;
    assert_eq!(auth(&mut c, &token("alice", exp, None)).await["type"], "ok");
    let notice = c.recv().await;
    assert_eq!(notice, json!({"type":"token_expiring","exp":exp}));
    let close = match c.next_frame().await {
        Ok(frame) => panic!("expected the close, got {frame}"),
        Err(close) => close,
    };
    assert_eq!(close, Some((4001, "token expired".to_owned())));
}

async fn a_fresh_auth_keeps_the_connection_and_its_subscriptions(backend: Backend) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (broker, _) = start(backend, tmp.path());
    let exp = now_s() + 2;
    let mut c = broker.client().await;
    assert_eq!(auth(&mut c, &token("alice", exp, None)).await["type"], "ok");
    let sub = c.subscribe("user.alice.>", None).await;
    assert_eq!(c.recv().await["type"], "token_expiring");
    assert_eq!(
        auth(&mut c, &token("alice", exp + 3600, None)).await["type"],
        "ok"
    );

    // Past the old expiry nothing ends the connection, and the subscription still delivers.
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64;
    let past_old_expiry = Duration::from_millis((exp * 1000 + 500).saturating_sub(now_ms));
    assert_eq!(c.recv_within(past_old_expiry).await, None);
    let mut p = broker.client().await;
    assert_eq!(
        auth(&mut p, &token("alice", exp + 3600, None)).await["type"],
        "ok"
    );
    let seq = p.publish("user.alice.later", json!(1)).await;
    let ev = c.recv().await;
    assert_eq!(
        (ev["sub"].clone(), ev["seq"].clone()),
        (json!(sub), json!(seq))
    );
}

wharf_tests::conformance!(
    a_jwt_gets_its_claimed_or_default_rights_wherever_a_token_is_taken,
    expired_forged_and_foreign_jwts_are_refused,
    an_expiring_jwt_is_warned_then_closed_with_4001,
    a_fresh_auth_keeps_the_connection_and_its_subscriptions
);
