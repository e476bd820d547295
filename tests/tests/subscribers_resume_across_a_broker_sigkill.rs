//! A running `wharf subscribe` (durable) and `wharf tail --raw` (ephemeral) outlive a broker
//! that is SIGKILLed and restarted on the same port and data dir: each reconnects by itself,
//! says so on stderr in one line, and resumes where it was, so that the events published
//! while it was away and after come out once each, in order, none skipped.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;

use serde_json::{json, Value};
use wharf_tests::{data_dir, wait_child, wharf_bin, Broker, WAIT};

async fn publish(broker: &Broker, range: std::ops::RangeInclusive<u64>) {
    let mut client = broker.client().await;
    for n in range {
        client.publish("orders.created", json!(n)).await;
    }
    client.close().await;
}

/// Runs `wharf ARGS --count 15` through a SIGKILL and restart; returns its stdout lines and
/// stderr.
async fn through_a_restart(args: &[&str]) -> (Vec<String>, String) {
    let (_tmp, data) = data_dir();
    let mut first = Broker::start(&data, "");
    let url = first.url.clone();
    let port = url
        .trim_start_matches("ws://127.0.0.1:")
        .trim_end_matches("/ws")
        .to_owned();
    publish(&first, 1..=5).await;

    let mut child = Command::new(wharf_bin())
        .args(args)
        .args(["--count", "15", "--url", &url])
        .env_remove("WHARF_URL")
        .env_remove("WHARF_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wharf");
    let stdout = child.stdout.take().expect("piped stdout");
    let (line_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut stderr = child.stderr.take().expect("piped stderr");
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut got: Vec<String> = Vec::new();
    let take = |n: usize, got: &mut Vec<String>| {
        while got.len() < n {
            let line = lines
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| panic!("only {} lines: {got:?}", got.len()));
            got.push(line);
        }
    };
    take(5, &mut got);

    first.kill9();
    // Published while the subscriber is away: by a broker on the same data dir that it
    // cannot reach (another port).
    {
        let mut away = Broker::start(&data, "");
        publish(&away, 6..=10).await;
        assert!(away.terminate().success());
    }
    let back = Broker::try_start_with(&data, "", &["--listen", &format!("127.0.0.1:{port}")])
        .unwrap_or_else(|(status, log)| panic!("restart on port {port}: {status}\n{log}"));
    take(10, &mut got);
    publish(&back, 11..=15).await;
    take(15, &mut got);

    let status = wait_child(&mut child, WAIT).expect("wharf exits after --count events");
    let stderr = stderr.join().expect("stderr reader");
    assert!(status.success(), "{status}: {stderr}");
    assert!(lines.try_recv().is_err(), "more than 15 lines");
    (got, stderr)
}

fn assert_one_notice_each_way(stderr: &str) {
    let lost: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("reconnecting"))
        .collect();
    assert_eq!(
        lost.len(),
        1,
        "one line when the connection is lost:\n{stderr}"
    );
    assert!(lost[0].starts_with("wharf: lost "), "{stderr}");
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.starts_with("wharf: reconnected"))
            .count(),
        1,
        "{stderr}"
    );
    assert!(!stderr.lines().any(|l| l.starts_with("error")), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_durable_subscriber_resumes_from_its_consumer() {
    let (lines, stderr) =
        through_a_restart(&["subscribe", "orders.>", "--consumer", "audit"]).await;
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, (1..=15).collect::<Vec<_>>(), "{stderr}");
    let payloads: Vec<u64> = events
        .iter()
        .map(|e| e["payload"].as_u64().expect("payload"))
        .collect();
    assert_eq!(payloads, (1..=15).collect::<Vec<_>>());
    assert_one_notice_each_way(&stderr);
    assert!(stderr.contains("consumer audit"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_raw_tail_resumes_after_the_last_seq_it_printed() {
    let (lines, stderr) = through_a_restart(&["tail", "orders.>", "--start", "all", "--raw"]).await;
    let expected: Vec<String> = (1..=15).map(|n| n.to_string()).collect();
    assert_eq!(
        lines, expected,
        "payloads only, each once, in order:\n{stderr}"
    );
    assert_one_notice_each_way(&stderr);
    assert!(stderr.contains("from seq 6"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_no_reconnect_a_lost_broker_ends_the_run_with_one_error_line() {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, "");
    publish(&broker, 1..=1).await;
    let mut child = Command::new(wharf_bin())
        .args([
            "tail",
            "orders.>",
            "--start",
            "all",
            "--no-reconnect",
            "--url",
            &broker.url,
        ])
        .env_remove("WHARF_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wharf tail");
    // Kept open to the end: a closed stdout would be a normal end of its own.
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first).expect("read the first event");
    assert!(first.contains(r#""seq":1"#), "{first}");
    broker.kill9();
    let status = wait_child(&mut child, WAIT).expect("wharf tail exits when the broker is gone");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert!(!status.success(), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("reconnecting"), "{stderr}");
    drop(stdout);
}
