//! `/metrics` as Prometheus and alerting rules read it: every metric has help text and
//! passes `promtool check metrics` on a scrape taken under load; a deleted consumer's series
//! are gone; a consumer that has settled everything on its own topics has lag 0, however
//! many events other topics hold.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use serde_json::json;
use wharf_tests::{data_dir, Broker, WAIT};

/// GET `path` from the broker; the body of the answer.
fn scrape(broker: &Broker, path: &str) -> String {
    let addr = broker
        .url
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .to_owned();
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    raw.split_once("\r\n\r\n").unwrap().1.to_owned()
}

fn series<'a>(text: &'a str, metric: &str, consumer: &str) -> Option<&'a str> {
    let prefix = format!("{metric}{{consumer=\"{consumer}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(prefix.as_str()))
}

#[tokio::test]
async fn metrics_are_described_current_and_exact_when_caught_up() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, "");
    let mut p = broker.client().await;
    let batch: Vec<_> = (0..2000)
        .map(|i| json!({"topic":"other.x","payload":i}))
        .collect();
    let reply = p
        .reply(json!({"op":"publish_batch","id":1,"events":batch}))
        .await;
    assert_eq!(reply["type"], "published", "{reply}");

    let mut c = broker.client().await;
    c.subscribe("mine.>", Some("caught")).await;
    for i in 0..40 {
        p.publish("mine.a", json!(i)).await;
    }
    let events = c.events(40).await;
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    c.ack("caught", &seqs).await;

    let mut gone = broker.client().await;
    gone.subscribe("other.>", Some("gone")).await;
    let text = scrape(&broker, "/metrics");
    assert!(
        series(&text, "wharf_consumer_lag_events", "gone").is_some(),
        "{text}"
    );
    gone.close().await;
    let mut admin = broker.client().await;
    let reply = admin
        .reply(json!({"op":"delete_consumer","id":1,"consumer":"gone"}))
        .await;
    assert_eq!(reply["type"], "ok", "{reply}");

    let text = scrape(&broker, "/metrics");
    assert_eq!(
        series(&text, "wharf_consumer_lag_events", "caught"),
        Some("0"),
        "{text}"
    );
    assert_eq!(
        series(&text, "wharf_consumer_lag_events", "gone"),
        None,
        "{text}"
    );
    assert_eq!(
        series(&text, "wharf_consumer_ack_pending_events", "gone"),
        None
    );
    assert_eq!(c.info("caught").await["lag"], 0);

    // A scrape under load passes promtool.
    let Ok(promtool) = Command::new("promtool").arg("--version").output() else {
        assert!(
            std::env::var_os("WHARF_REQUIRE_PROMTOOL").is_none(),
            "promtool is required here (Debian's prometheus package)"
        );
        eprintln!("promtool not installed (Debian's prometheus package): its check skipped");
        return;
    };
    assert!(promtool.status.success());
    let url = broker.url.clone();
    let load = tokio::spawn(async move {
        let mut p = wharf_tests::Client::connect(&url).await;
        for i in 0..500 {
            p.publish("mine.b", json!(i)).await;
        }
    });
    let text = scrape(&broker, "/metrics");
    load.await.unwrap();
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{text}"
    );
}
