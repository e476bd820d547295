//! Every error code a client can get, each from a real frame, and the connection stays
//! usable after each one.

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use wharf_tests::{data_dir, Broker, Client};

async fn expect_error(c: &mut Client, frame: Message, code: &str, id: Value) {
    c.send_raw(frame).await;
    let reply = c.recv().await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["code"], code, "{reply}");
    assert_eq!(reply["id"], id, "{reply}");
    assert!(!reply["message"].as_str().unwrap().is_empty());
}

fn text(s: &str) -> Message {
    Message::text(s.to_owned())
}

#[tokio::test]
async fn each_bad_frame_gets_its_error_and_the_connection_survives() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, "max_frame_bytes = 4096");
    let mut c = broker.client().await;
    c.subscribe("orders.*", Some("c1")).await;

    expect_error(&mut c, text("{not json"), "bad_json", Value::Null).await;
    expect_error(&mut c, text("[1,2]"), "bad_json", Value::Null).await;
    expect_error(
        &mut c,
        text(r#"{"op":"publish","id":1,"topic":"a"}"#),
        "bad_request",
        json!(1),
    )
    .await;
    expect_error(&mut c, text(r#"{"id":"x"}"#), "bad_request", json!("x")).await;
    expect_error(
        &mut c,
        text(r#"{"op":"ack","id":2,"consumer":"c1"}"#),
        "bad_request",
        json!(2),
    )
    .await;
    expect_error(
        &mut c,
        text(r#"{"op":"ack","id":3,"consumer":"c1","seq":99}"#),
        "bad_request",
        json!(3),
    )
    .await;
    expect_error(
        &mut c,
        text(r#"{"op":"launch","id":4}"#),
        "unknown_op",
        json!(4),
    )
    .await;
    expect_error(
        &mut c,
        text(r#"{"op":"publish","id":5,"topic":"a..b","payload":1}"#),
        "invalid_topic",
        json!(5),
    )
    .await;
    expect_error(
        &mut c,
        text(&format!(
            r#"{{"op":"publish","id":6,"topic":"{}","payload":1}}"#,
            "a".repeat(256)
        )),
        "invalid_topic",
        json!(6),
    )
    .await;
    expect_error(
        &mut c,
        text(r#"{"op":"subscribe","id":7,"topic":"a.>.b"}"#),
        "invalid_pattern",
        json!(7),
    )
    .await;
    let big = format!(
        r#"{{"op":"publish","id":8,"topic":"a","payload":"{}"}}"#,
        "x".repeat(5000)
    );
    // Not parsed, but its id is still echoed (a pipelining client can tell which one).
    expect_error(&mut c, text(&big), "too_large", json!(8)).await;
    expect_error(
        &mut c,
        text(r#"{"op":"unsubscribe","id":9,"sub":"nope"}"#),
        "not_found",
        json!(9),
    )
    .await;
    expect_error(
        &mut c,
        text(r#"{"op":"ack","id":10,"consumer":"ghost","seq":1}"#),
        "not_found",
        json!(10),
    )
    .await;
    expect_error(
        &mut c,
        text(r#"{"op":"subscribe","id":11,"topic":"billing.*","consumer":"c1"}"#),
        "consumer_conflict",
        json!(11),
    )
    .await;
    expect_error(
        &mut c,
        Message::binary(vec![1u8, 2, 3]),
        "unsupported",
        Value::Null,
    )
    .await;

    // Still usable, and nothing stored was touched: the consumer gets exactly one event.
    c.send(json!({"op":"publish","id":"last","topic":"orders.created","payload":{"ok":true}}))
        .await;
    let mut frames = vec![c.recv().await, c.recv().await];
    frames.sort_by_key(|f| f["type"].as_str().unwrap_or_default().to_owned());
    assert_eq!(frames[0]["type"], "event", "{frames:?}");
    assert_eq!(frames[0]["seq"], 1);
    assert_eq!(frames[1], json!({"type":"published","id":"last","seq":1}));
}

#[tokio::test]
async fn a_frame_far_over_the_limit_closes_with_1009() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, "max_frame_bytes = 4096");
    let mut c = broker.client().await;
    c.send_raw(text(&"x".repeat(20_000))).await;
    let close = c.closed().await;
    assert_eq!(close.map(|(code, _)| code), Some(1009));
    // The broker itself is fine.
    let mut c = broker.client().await;
    assert_eq!(c.publish("a", json!(1)).await, 1);
}

#[tokio::test]
async fn a_log_that_cannot_be_written_gives_internal_and_keeps_what_was_confirmed() {
    let (_tmp, data) = data_dir();
    // Tiny segments: every commit starts a new segment file.
    let mut broker = Broker::start(&data, "segment_bytes = 1");
    let mut c = broker.client().await;
    assert_eq!(c.publish("a", json!(1)).await, 1);
    // Take the log directory away: the next segment cannot be created.
    let moved = data.with_file_name("log-moved");
    std::fs::rename(data.join("log"), &moved).unwrap();
    expect_error(
        &mut c,
        text(r#"{"op":"publish","id":"x","topic":"a","payload":2}"#),
        "internal",
        json!("x"),
    )
    .await;
    broker.kill9();
    std::fs::rename(&moved, data.join("log")).unwrap();
    let broker = Broker::start(&data, "");
    let mut c = broker.client().await;
    let reply = c
        .request(json!({"op":"subscribe","id":1,"topic":"a","start":"all"}))
        .await;
    assert_eq!(reply["type"], "subscribed");
    let got = c.events(1).await;
    assert_eq!(got[0]["payload"], 1);
}

#[tokio::test]
async fn only_the_ws_path_is_served() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, "");
    let wrong = broker.url.replace("/ws", "/other");
    let err = tokio_tungstenite::connect_async(wrong).await.unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
}
