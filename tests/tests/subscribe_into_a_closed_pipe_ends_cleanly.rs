//! `wharf subscribe | head`: when the reader of stdout goes away, the subscriber ends with
//! rc 0 and no error, acks what it printed, and does not ack what it could not print.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;
use wharf_tests::{data_dir, wait_child, wharf_bin, Broker, WAIT};

#[tokio::test]
async fn a_closed_stdout_is_a_normal_end_and_unprinted_events_stay_unacked() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, "");
    let mut client = broker.client().await;
    for n in 1..=3 {
        client.publish("orders.created", serde_json::json!(n)).await;
    }

    let mut child = Command::new(wharf_bin())
        .args([
            "subscribe",
            "--url",
            &broker.url,
            "orders.>",
            "--consumer",
            "reader",
        ])
        .env_remove("WHARF_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wharf subscribe");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    for n in 1..=3u64 {
        let line = lines.next().expect("a line").expect("read stdout");
        let event: Value = serde_json::from_str(&line).expect("JSON event");
        assert_eq!(event["seq"], n);
    }
    // The reader goes away, like `head -n 3`; then more events come.
    drop(lines);
    for n in 4..=5 {
        client.publish("orders.created", serde_json::json!(n)).await;
    }

    let status = wait_child(&mut child, WAIT).expect("wharf subscribe ends after stdout closes");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(status.success(), "rc {status}: {stderr}");
    assert!(!stderr.contains("error"), "{stderr}");

    // What reached the reader was acked; what came after was not, so it comes again.
    let info = client.info("reader").await;
    assert_eq!(info["ack_floor"], 3, "{info}");
    let mut again = broker.client().await;
    again.subscribe("orders.>", Some("reader")).await;
    let events = again.events(2).await;
    assert_eq!(wharf_tests::seqs(&events), vec![4, 5]);
}
