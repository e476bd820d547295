//! Authorization covers everything a token can reach: admin operations (`stats`, `topics`,
//! `consumers`) need `admin`; `/metrics` needs `metrics` or `admin` (unless
//! `auth.public_metrics`); operating a durable consumer needs subscribe rights over all of its
//! topics; and a connection that authenticates again loses the subscriptions its new token
//! may not hold.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use serde_json::{json, Value};
use wharf_tests::{data_dir, wharf_bin, Backend, Broker, Client};

fn hash(token: &str) -> String {
    let out = Command::new(wharf_bin())
        .args(["token", "hash", token])
        .output()
        .expect("run wharf token hash");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

const PAYROLL: &str = "payroll-token-0123456789";
const BROWSER: &str = "browser-token-0123456789";
const OPS: &str = "ops-token-0123456789";
const SCRAPER: &str = "scraper-token-0123456789";

fn config(public_metrics: bool) -> String {
    format!(
        "[auth]\nenabled = true\npublic_metrics = {public_metrics}\n\
         [[auth.tokens]]\nname = \"payroll\"\nsha256 = \"{}\"\npublish = [\">\"]\nsubscribe = [\"secret.payroll.>\", \"board.>\"]\nconsumers = [\"*\"]\n\
         [[auth.tokens]]\nname = \"browser\"\nsha256 = \"{}\"\nsubscribe = [\"board.>\"]\nconsumers = [\"*\"]\n\
         [[auth.tokens]]\nname = \"ops\"\nsha256 = \"{}\"\nadmin = true\n\
         [[auth.tokens]]\nname = \"scraper\"\nsha256 = \"{}\"\nmetrics = true\n",
        hash(PAYROLL),
        hash(BROWSER),
        hash(OPS),
        hash(SCRAPER)
    )
}

async fn as_token(broker: &Broker, token: &str) -> Client {
    let mut c = broker.client().await;
    let reply = c.reply(json!({"op":"auth","id":"a","token":token})).await;
    assert_eq!(reply["type"], "ok", "{reply}");
    c
}

fn metrics_status(broker: &Broker, token: Option<&str>) -> u16 {
    let addr = broker
        .url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws");
    let mut s = TcpStream::connect(addr).expect("connect");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
    )
    .expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status")
}

async fn admin_operations_metrics_and_consumers_follow_the_token(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, &config(false));
    let mut payroll = as_token(&broker, PAYROLL).await;
    payroll.publish("secret.payroll.june", json!(1)).await;
    payroll
        .subscribe("secret.payroll.>", Some("salaries"))
        .await;

    // Admin operations: only with admin.
    let mut browser = as_token(&broker, BROWSER).await;
    for op in ["stats", "topics", "consumers"] {
        let reply = browser.reply(json!({"op":op,"id":op})).await;
        assert_eq!(reply["code"], "forbidden", "{reply}");
    }
    let mut ops = as_token(&broker, OPS).await;
    let reply = ops.reply(json!({"op":"consumers","id":1})).await;
    assert_eq!(reply["consumers"][0]["consumer"], "salaries", "{reply}");

    // A consumer reading topics the token may not read cannot be operated by it, even
    // though its name rules allow the name; nor is its existence given away by a conflict.
    for frame in [
        json!({"op":"ack","id":1,"consumer":"salaries","seq":1}),
        json!({"op":"nack","id":2,"consumer":"salaries","seq":1}),
        json!({"op":"seek","id":3,"consumer":"salaries","seq":1}),
        json!({"op":"consumer_info","id":4,"consumer":"salaries"}),
        json!({"op":"delete_consumer","id":5,"consumer":"salaries"}),
        json!({"op":"subscribe","id":6,"topic":"board.x","consumer":"salaries"}),
    ] {
        let reply = browser.reply(frame.clone()).await;
        assert_eq!(reply["code"], "forbidden", "{frame} -> {reply}");
        assert!(!reply.to_string().contains("secret"), "{reply}");
    }
    assert_eq!(payroll.info("salaries").await["ack_pending"], 1);

    // /metrics: a token with metrics or admin.
    assert_eq!(metrics_status(&broker, None), 401);
    assert_eq!(metrics_status(&broker, Some(BROWSER)), 403);
    assert_eq!(metrics_status(&broker, Some(SCRAPER)), 200);
    assert_eq!(metrics_status(&broker, Some(OPS)), 200);
}

async fn metrics_can_be_made_public(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, &config(true));
    assert_eq!(metrics_status(&broker, None), 200);
}

async fn authenticating_again_drops_what_the_new_token_may_not_hold(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, &config(false));
    let mut c = as_token(&broker, PAYROLL).await;
    let secret = c.subscribe("secret.payroll.>", None).await;
    let board = c.subscribe("board.>", None).await;
    let durable = c.subscribe("secret.payroll.>", Some("salaries")).await;

    let reply = c
        .reply(json!({"op":"auth","id":"again","token":BROWSER}))
        .await;
    assert_eq!(reply, json!({"type":"ok","id":"again"}));
    let mut dropped: Vec<Value> = Vec::new();
    for _ in 0..2 {
        let notice = c.recv().await;
        assert_eq!(notice["type"], "unsubscribed", "{notice}");
        assert_eq!(notice["reason"], "forbidden", "{notice}");
        dropped.push(notice["sub"].clone());
    }
    dropped.sort_by_key(|s| s.as_str().map(str::to_owned));
    let mut expected = vec![json!(secret), json!(durable)];
    expected.sort_by_key(|s| s.as_str().map(str::to_owned));
    assert_eq!(dropped, expected);

    // Nothing from the dropped ones arrives; the allowed one still delivers.
    let mut publisher = as_token(&broker, PAYROLL).await;
    publisher.publish("secret.payroll.july", json!(2)).await;
    let seq = publisher.publish("board.news", json!(3)).await;
    let ev = c.recv().await;
    assert_eq!(
        (ev["sub"].clone(), ev["seq"].clone()),
        (json!(board), json!(seq)),
        "{ev}"
    );
}

wharf_tests::conformance!(
    admin_operations_metrics_and_consumers_follow_the_token,
    metrics_can_be_made_public,
    authenticating_again_drops_what_the_new_token_may_not_hold
);
