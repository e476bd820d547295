//! The operator's commands, as run from a shell: stats, topics, consumers, consumer info and
//! delete (tables, and `--json` for scripts), tail, completions, and `serve --check-config`.

use std::process::{Command, Output};

use serde_json::{json, Value};
use wharf_tests::{data_dir, wharf_bin, Broker};

fn wharf(args: &[&str]) -> Output {
    Command::new(wharf_bin())
        .args(args)
        .env_remove("WHARF_URL")
        .output()
        .expect("run wharf")
}

fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

#[tokio::test]
async fn admin_commands_report_the_broker() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, "");
    let url = broker.url.clone();
    let mut c = broker.client().await;
    c.subscribe("orders.*", Some("billing")).await;
    let mut p = broker.client().await;
    p.publish("orders.created", json!({"id": 1})).await;
    p.publish("orders.created", json!({"id": 2})).await;
    p.publish("audit.login", json!("x")).await;
    c.events(2).await;
    c.ack("billing", &[1]).await;

    let stats = json_of(&wharf(&["stats", "--url", &url, "--json"]));
    assert_eq!(stats["type"], "stats");
    assert_eq!(stats["head_seq"], 3);
    assert_eq!(stats["topics"], 2);
    assert_eq!(stats["consumers"], 1);
    assert!(stats["connections"].as_u64().unwrap() >= 2);
    assert!(stats["log_bytes"].as_u64().unwrap() > 0);

    let topics = json_of(&wharf(&["topics", "--url", &url, "--json"]));
    assert_eq!(
        topics["topics"],
        json!([
            {"topic":"audit.login","events":1,"bytes":3,"last_seq":3},
            {"topic":"orders.created","events":2,"bytes":16,"last_seq":2}
        ])
    );

    let consumers = json_of(&wharf(&["consumers", "--url", &url, "--json"]));
    let billing = &consumers["consumers"][0];
    assert_eq!(billing["consumer"], "billing");
    assert_eq!(billing["ack_floor"], 1);
    assert_eq!(billing["ack_pending"], 1);

    let info = json_of(&wharf(&[
        "consumer", "info", "billing", "--url", &url, "--json",
    ]));
    assert_eq!(info["type"], "consumer_info");
    assert_eq!(
        info["lag"], 1,
        "seq 2 is the one matching event left to settle"
    );

    // Tables for people.
    let out = wharf(&["topics", "--url", &url]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().next().unwrap().starts_with("topic"), "{text}");
    assert!(text.contains("orders.created  2"), "{text}");
    let out = wharf(&["consumers", "--url", &url]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("billing"));
    let out = wharf(&["stats", "--url", &url]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("head seq"));

    // tail follows live from "new" by default; --start all replays.
    let out = wharf(&[
        "tail", "--url", &url, "orders.*", "--start", "all", "--count", "2",
    ]);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2]
    );

    let out = wharf(&["consumer", "delete", "billing", "--url", &url]);
    assert!(out.status.success(), "{out:?}");
    let out = wharf(&["consumer", "info", "billing", "--url", &url, "--json"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_found"));
}

#[test]
fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = wharf(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("subscribe"),
            "{shell}"
        );
    }
}

#[test]
fn check_config_prints_the_effective_config_or_names_the_bad_key() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.toml");
    std::fs::write(&good, "max_in_flight = 5\nack_wait = \"2s\"\n").unwrap();
    let out = Command::new(wharf_bin())
        .args(["serve", "--check-config", "--config"])
        .arg(&good)
        .env("WHARF_MAX_DELIVER", "3")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("max_in_flight = 5"), "{text}");
    assert!(text.contains("ack_wait = \"2s\""), "{text}");
    assert!(text.contains("max_deliver = 3"), "{text}");
    // Defaults are filled in.
    assert!(text.contains("listen = \"127.0.0.1:7700\""), "{text}");
    assert!(text.contains("segment_bytes = 67108864"), "{text}");

    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "ack_wait = \"soon\"\n").unwrap();
    let out = Command::new(wharf_bin())
        .args(["serve", "--check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ack_wait"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
