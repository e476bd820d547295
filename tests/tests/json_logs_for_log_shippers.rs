//! `log_format = "json"`: every line the broker logs is one JSON object with a time, a
//! level, a target and the message, as Loki or Elasticsearch ingest it. Text stays the
//! default.

use serde_json::{json, Value};
use wharf_tests::{data_dir, Broker};

#[tokio::test]
async fn every_log_line_is_a_json_object() {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, "log_format = \"json\"");
    let mut c = broker.client().await;
    c.publish("j.a", json!(1)).await;
    broker.terminate();
    let log = broker.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{log}");
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["timestamp"].is_string(), "{line}");
        assert!(v["level"].is_string(), "{line}");
        assert!(v["target"].is_string(), "{line}");
        assert!(v["fields"]["message"].is_string(), "{line}");
    }
    let listening = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["fields"]["message"] == "listening")
        .expect("a listening line");
    assert!(listening["fields"]["url"].is_string(), "{listening}");
}
