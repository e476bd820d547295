//! The `wharf` command as a user runs it: publish from arguments and stdin, tail with a
//! durable consumer, and clear one-line errors for mistakes.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use wharf_tests::{data_dir, wharf_bin, Broker};

fn wharf(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(wharf_bin())
        .args(args)
        .env_remove("WHARF_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wharf");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().expect("wharf output")
}

fn stdout_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn assert_one_line_error(out: &Output, needle: &str) {
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: ") || err.starts_with("error:"),
        "{err}"
    );
    assert!(err.contains(needle), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!err.contains("RUST_BACKTRACE"), "{err}");
}

/// `wharf subscribe` with the durable consumer `cli`, for `count` events.
fn tail(url: &str, count: &str) -> Vec<Value> {
    let out = wharf(
        &[
            "subscribe",
            "--url",
            url,
            "orders.>",
            "--consumer",
            "cli",
            "--count",
            count,
        ],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    stdout_lines(&out)
        .iter()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect()
}

#[test]
fn publish_and_subscribe_round_trip() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, "");
    let url = broker.url.as_str();

    let out = wharf(
        &["publish", "--url", url, "orders.created", r#"{"id":1}"#],
        None,
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout_lines(&out), vec!["1"]);

    let out = wharf(
        &["publish", "--url", url, "orders.updated"],
        Some("plain text\n{\"id\":2}\n\n42\n"),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout_lines(&out), vec!["2", "3", "4"]);

    let events = tail(url, "3");
    assert_eq!(events.len(), 3);
    assert_eq!(events[0]["payload"]["id"], 1);
    assert_eq!(events[1]["payload"], "plain text");
    assert_eq!(events[2]["payload"]["id"], 2);
    assert!(events.iter().all(|e| e["type"] == "event"));

    // The three printed were acked; the consumer resumes with the fourth.
    let events = tail(url, "1");
    assert_eq!(events[0]["seq"], 4);
    assert_eq!(events[0]["payload"], 42);

    // WHARF_URL is honoured.
    let out = Command::new(wharf_bin())
        .args(["publish", "orders.created", "5"])
        .env("WHARF_URL", url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout_lines(&out), vec!["5"]);
}

#[test]
fn mistakes_get_one_line_errors() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, "");
    let url = broker.url.as_str();
    assert_one_line_error(
        &wharf(&["publish", "--url", "ws://127.0.0.1:1/ws", "a", "1"], None),
        "cannot connect to ws://127.0.0.1:1/ws",
    );
    assert_one_line_error(
        &wharf(&["publish", "--url", url, "a..b", "1"], None),
        "invalid topic",
    );
    assert_one_line_error(
        &wharf(&["subscribe", "--url", url, "a.>.b"], None),
        "invalid pattern",
    );
    assert_one_line_error(
        &wharf(
            &["subscribe", "--url", url, "a", "--consumer", "bad name"],
            None,
        ),
        "bad_request",
    );
    let out = wharf(
        &["subscribe", "--url", url, "a", "--start", "yesterday"],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("yesterday"));
    let out = wharf(&["frobnicate"], None);
    assert!(!out.status.success());
}
