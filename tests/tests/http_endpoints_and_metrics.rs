//! The HTTP side of the listener, as an operator or a script uses it: health, readiness
//! (503 while the log is replayed), Prometheus metrics that move, and publishing with a POST.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use wharf_tests::{data_dir, http_request as http, wharf_bin, Broker};

fn addr_of(broker: &Broker) -> String {
    broker
        .url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_owned()
}

/// The value of an unlabelled series in Prometheus text.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn health_metrics_and_http_publish() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, "");
    let addr = addr_of(&broker);
    assert_eq!(http(&addr, "GET", "/healthz", "").0, 200);
    assert_eq!(http(&addr, "GET", "/readyz", "").0, 200);
    assert_eq!(http(&addr, "GET", "/nope", "").0, 404);
    assert_eq!(http(&addr, "DELETE", "/", "").0, 405);
    assert_eq!(http(&addr, "GET", "/ws", "").0, 426);

    let (status, before) = http(&addr, "GET", "/metrics", "");
    assert_eq!(status, 200);
    assert!(before.contains("wharf_log_segments"), "{before}");

    // A consumer, a publish over WebSocket, and one over HTTP.
    let mut c = broker.client().await;
    c.subscribe("orders.*", Some("billing")).await;
    let mut p = broker.client().await;
    assert_eq!(p.publish("orders.created", json!({"id": 1})).await, 1);
    let (status, body) = http(
        &addr,
        "POST",
        "/v1/publish/orders.paid",
        r#"{"id":1,"amount":5}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!({"seq": 2, "duplicate": false})
    );
    let got = c.events(2).await;
    assert_eq!(got[1]["payload"], json!({"id":1,"amount":5}));
    c.ack("billing", &[1]).await;

    let (_, after) = http(&addr, "GET", "/metrics", "");
    assert_eq!(
        metric(&after, "wharf_events_published_total"),
        2.0,
        "{after}"
    );
    assert_eq!(
        metric(&after, "wharf_events_delivered_total"),
        2.0,
        "{after}"
    );
    assert_eq!(metric(&after, "wharf_events_acked_total"), 1.0, "{after}");
    assert_eq!(metric(&after, "wharf_head_seq"), 2.0);
    assert_eq!(metric(&after, "wharf_consumers"), 1.0);
    assert!(metric(&after, "wharf_connections_open") >= 2.0, "{after}");
    assert!(metric(&after, "wharf_log_bytes") > 0.0);
    assert!(metric(&after, "wharf_received_bytes_total") > 0.0);
    assert!(
        after.contains("wharf_fsync_duration_seconds_bucket"),
        "{after}"
    );
    assert!(after.contains("wharf_group_commit_records_bucket"));
    assert!(
        after.contains(r#"wharf_consumer_ack_pending_events{consumer="billing"} 1"#),
        "{after}"
    );
    assert!(
        after.contains(r#"wharf_consumer_lag_events{consumer="billing"} 1"#),
        "{after}"
    );

    // Mistakes get a status and a JSON error.
    let (status, body) = http(&addr, "POST", "/v1/publish/bad..topic", "1");
    assert_eq!(status, 400);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["code"],
        "invalid_topic"
    );
    let (status, body) = http(&addr, "POST", "/v1/publish/ok", "{not json");
    assert_eq!(status, 400);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["code"],
        "bad_json"
    );
    let big = format!("\"{}\"", "x".repeat(2 << 20));
    assert_eq!(http(&addr, "POST", "/v1/publish/ok", &big).0, 413);
}

#[tokio::test]
async fn readiness_is_503_while_the_log_is_replayed() {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, "");
    // A log big enough that replaying it takes a moment.
    let mut p = broker.client().await;
    let events: Vec<Value> = (0..1000)
        .map(|i| json!({"topic":"bulk","payload":{"i":i,"pad":"p".repeat(100)}}))
        .collect();
    for _ in 0..60 {
        let reply = p
            .reply(json!({"op":"publish_batch","id":1,"events":events}))
            .await;
        assert_eq!(reply["type"], "published");
    }
    broker.kill9();

    let mut saw_unready = false;
    for _attempt in 0..3 {
        let mut child = Command::new(wharf_bin())
            .args(["serve", "--config"])
            .arg(&broker.config_path)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap())
            .lines()
            .map_while(Result::ok);
        let addr = lines
            .by_ref()
            .find_map(|l| {
                l.contains("recovering the log").then(|| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix("address="))
                        .map(str::to_owned)
                })?
            })
            .expect("the broker announces its address before recovering");
        let (status, _) = http(&addr, "GET", "/readyz", "");
        assert!(status == 503 || status == 200, "{status}");
        assert_eq!(http(&addr, "GET", "/healthz", "").0, 200);
        saw_unready |= status == 503;
        // Once it says it listens, it is ready.
        assert!(lines.any(|l| l.contains("listening")));
        assert_eq!(http(&addr, "GET", "/readyz", "").0, 200);
        let _ = child.kill();
        let _ = child.wait();
        if saw_unready {
            break;
        }
    }
    assert!(saw_unready, "never caught the broker replaying its log");
}
