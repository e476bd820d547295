//! `wharf bench` runs each scenario end to end on a few hundred events or connections (against
//! a broker it starts itself, and against one at --url) and reports sane JSON. No timing is asserted.

use std::process::Command;

use serde_json::Value;
use wharf_tests::{data_dir, wharf_bin, Broker};

fn bench(args: &[&str]) -> Value {
    let out = Command::new(wharf_bin())
        .arg("bench")
        .args(args)
        .args(["--json", "--events", "300", "--rate", "3000"])
        .env_remove("WHARF_URL")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("one JSON report")
}

#[test]
fn every_scenario_runs_and_reports() {
    for scenario in ["publish", "replay", "latency", "fanout"] {
        let r = bench(&[scenario, "--subscribers", "20"]);
        assert_eq!(r["scenario"], scenario);
        assert_eq!(r["events"], 300, "{r}");
        if scenario == "fanout" {
            assert_eq!(r["deliveries"], 300 * 20, "{r}");
        }
        assert!(r["events_per_s"].as_f64().unwrap() > 0.0, "{r}");
        let l = &r["latency_ms"];
        assert!(
            l["p50"].as_f64().unwrap() <= l["p99"].as_f64().unwrap(),
            "{r}"
        );
        assert!(
            l["p99"].as_f64().unwrap() <= l["max"].as_f64().unwrap(),
            "{r}"
        );
    }
    let r = bench(&["publish"]);
    assert!(r["log_bytes_per_event"].as_f64().unwrap() > 100.0, "{r}");
    assert!(r["broker_rss_peak_mb"].as_f64().unwrap() > 1.0, "{r}");
    let r = bench(&["connections", "--connections", "200"]);
    assert_eq!(r["connections"], 200, "{r}");
    assert!(r["rss_per_connection_kib"].as_f64().is_some(), "{r}");
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, "");
    let r = bench(&["publish", "--url", &broker.url]);
    assert_eq!(r["events"], 300);
}
