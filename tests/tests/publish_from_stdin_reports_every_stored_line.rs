//! `wharf publish` from stdin when a line in the middle fails: every stored event's seq is
//! printed, in input order; the exit code says a line failed; with `--msg-id-prefix` a rerun
//! of the fixed input stores only the line that failed.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use wharf_tests::{data_dir, wharf_bin, Broker};

const LINES: usize = 3000;
const BAD: usize = 1200;

fn publish(url: &str, input: &str) -> Output {
    let mut child = Command::new(wharf_bin())
        .args([
            "publish",
            "--url",
            url,
            "imports.rows",
            "--msg-id-prefix",
            "run",
        ])
        .env_remove("WHARF_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wharf publish");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_owned();
    // Written from a thread: the pipe would fill while wharf's stdout is not read yet.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("wharf publish output");
    writer.join().expect("stdin writer").expect("write stdin");
    out
}

fn seqs(out: &Output) -> Vec<u64> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.parse().expect("one seq per line"))
        .collect()
}

fn input(bad_line: Option<usize>) -> String {
    (1..=LINES)
        .map(|n| match bad_line {
            // Over max_frame_bytes: the broker refuses this publish and keeps the connection.
            Some(bad) if n == bad => format!("{}\n", "x".repeat(1500)),
            _ => format!("{{\"row\":{n}}}\n"),
        })
        .collect()
}

#[test]
fn a_failing_line_leaves_every_stored_seq_printed_and_a_rerun_stores_only_it() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, "max_frame_bytes = 1000");

    let first = publish(&broker.url, &input(Some(BAD)));
    assert!(!first.status.success(), "a failed line must fail the run");
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(stderr.contains(&format!("line {BAD} ")), "{stderr}");
    assert!(stderr.contains("too_large"), "{stderr}");
    // Every other line was stored, in input order, and its seq printed.
    let printed = seqs(&first);
    assert_eq!(printed, (1..LINES as u64).collect::<Vec<_>>(), "{stderr}");

    // The rerun of the fixed input stores the one missing line; the others are recognised
    // by their msg_id and keep their first seq.
    let second = publish(&broker.url, &input(None));
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let again = seqs(&second);
    assert_eq!(again.len(), LINES);
    assert_eq!(again[..BAD - 1], printed[..BAD - 1]);
    assert_eq!(
        again[BAD - 1],
        LINES as u64,
        "the fixed line is the one new event"
    );
    assert_eq!(again[BAD..], printed[BAD - 1..]);

    let topics = Command::new(wharf_bin())
        .args(["topics", "--url", &broker.url, "--json"])
        .output()
        .expect("wharf topics");
    let topics: serde_json::Value = serde_json::from_slice(&topics.stdout).expect("JSON");
    assert_eq!(topics["topics"][0]["events"], LINES as u64, "{topics}");
}

#[test]
fn a_line_that_is_not_utf8_fails_alone() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, "");
    let mut child = Command::new(wharf_bin())
        .args(["publish", "--url", &broker.url, "imports.bytes"])
        .env_remove("WHARF_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wharf publish");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(b"1\n2\n\xff\xfe broken\n4\r\n5")
        .expect("write stdin");
    drop(stdin);
    let out = child.wait_with_output().expect("wharf publish output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("line 3 not stored"), "{stderr}");
    assert_eq!(seqs(&out), vec![1, 2, 3, 4], "{stderr}");
}
