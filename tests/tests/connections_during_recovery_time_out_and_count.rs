//! Connections accepted while the broker recovers its log are held to the same rules as any
//! other: they count against `max_connections` (one more gets 503), and one that never sends
//! a complete request is closed after `handshake_timeout`, during recovery or after it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use wharf_tests::{data_dir, wharf_bin, Broker, WAIT};

#[tokio::test]
async fn a_silent_connection_during_recovery_counts_and_times_out() {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, "max_connections = 1\nhandshake_timeout = \"500ms\"");
    // A log long enough that replaying it (into a view rebuilt from scratch) takes a while.
    let mut p = broker.client().await;
    let events: Vec<Value> = (0..1000)
        .map(|i| json!({"topic":"bulk","payload":{"i":i,"pad":"p".repeat(100)}}))
        .collect();
    for _ in 0..100 {
        let reply = p
            .reply(json!({"op":"publish_batch","id":1,"events":events}))
            .await;
        assert_eq!(reply["type"], "published");
    }
    broker.kill9();
    std::fs::remove_dir_all(data.join("state")).expect("remove the state view");

    let mut child = Command::new(wharf_bin())
        .args(["serve", "--config"])
        .arg(&broker.config_path)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start wharf serve");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr"))
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

    // One connection that sends nothing holds the only place ...
    let mut silent = TcpStream::connect(&addr).expect("connect");
    silent.set_read_timeout(Some(WAIT)).expect("read timeout");
    // ... so the next one is refused, even for /healthz.
    let mut probe = TcpStream::connect(&addr).expect("connect");
    probe
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut answer = String::new();
    probe.read_to_string(&mut answer).expect("read");
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("too many connections"),
        "{answer}"
    );
    // The silent one is closed after handshake_timeout.
    let mut buf = [0u8; 64];
    let n = silent
        .read(&mut buf)
        .expect("closed by the broker, not timed out on our side");
    assert_eq!(n, 0);

    assert!(lines.any(|l| l.contains("listening")));
    let _ = child.kill();
    let _ = child.wait();
}
