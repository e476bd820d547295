//! The operations that exist only on the wire have commands: `wharf consumer add` creates a
//! durable consumer without consuming (nothing gets a delivery counted), `wharf consumer
//! seek` moves one by seq, time, all or new, and `wharf get SEQ` prints one stored event;
//! each with `--json`.

use std::process::{Command, Output};

use serde_json::{json, Value};
use wharf_tests::{data_dir, deliveries, seqs, wharf_bin, Broker};

fn wharf(url: &str, args: &[&str]) -> Output {
    Command::new(wharf_bin())
        .args(args)
        .args(["--url", url])
        .env_remove("WHARF_URL")
        .env_remove("WHARF_TOKEN")
        .output()
        .expect("run wharf")
}

fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

fn fails_with(out: &Output, needle: &str) {
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(needle), "{err}");
}

#[tokio::test]
async fn consumer_add_seek_and_get_work_from_the_command_line() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, "");
    let url = broker.url.as_str();
    let mut client = broker.client().await;
    for n in 1..=5 {
        client.publish("orders.created", json!(n)).await;
    }
    // Through the CLI: its payload text reaches the broker as typed, keys unsorted.
    let out = wharf(url, &["publish", "billing.paid", r#"{"b":1,"a":2}"#]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "6", "{out:?}");

    // add
    let info = json_of(&wharf(
        url,
        &[
            "consumer",
            "add",
            "billing",
            "--pattern",
            "orders.>",
            "--json",
        ],
    ));
    assert_eq!(info["type"], "consumer_info");
    assert_eq!(info["topics"], json!(["orders.>"]));
    assert_eq!(
        (info["ack_floor"].as_u64(), info["ack_pending"].as_u64()),
        (Some(0), Some(0)),
        "{info}"
    );
    fails_with(
        &wharf(
            url,
            &["consumer", "add", "billing", "--pattern", "orders.>"],
        ),
        "already exists",
    );
    let info = json_of(&wharf(
        url,
        &[
            "consumer",
            "add",
            "late",
            "--pattern",
            "orders.*",
            "--pattern",
            "refunds.>",
            "--start",
            "new",
            "--json",
        ],
    ));
    assert_eq!(info["ack_floor"], 6, "{info}");
    assert_eq!(info["topics"], json!(["orders.*", "refunds.>"]));
    let info = json_of(&wharf(
        url,
        &[
            "consumer",
            "add",
            "workers",
            "--pattern",
            "jobs.>",
            "--mode",
            "shared",
            "--ack-wait",
            "5s",
            "--max-deliver",
            "3",
            "--json",
        ],
    ));
    assert_eq!(info["mode"], "shared", "{info}");
    // The broker checks the settings: a refused one creates nothing.
    fails_with(
        &wharf(
            url,
            &[
                "consumer",
                "add",
                "picky",
                "--pattern",
                "jobs.>",
                "--max-in-flight",
                "0",
            ],
        ),
        "max_in_flight",
    );
    let reply = client
        .reply(json!({"op":"consumer_info","id":1,"consumer":"picky"}))
        .await;
    assert_eq!(reply["code"], "not_found", "{reply}");

    // The created consumer starts at the beginning, and its creation delivered nothing.
    let mut reader = broker.client().await;
    reader.subscribe("orders.>", Some("billing")).await;
    let events = reader.events(5).await;
    assert_eq!(seqs(&events), vec![1, 2, 3, 4, 5]);
    assert_eq!(deliveries(&events), vec![1; 5]);
    reader.ack("billing", &[1, 2, 3, 4, 5]).await;
    reader.close().await;

    // seek
    let floor = |out: Output| json_of(&out)["ack_floor"].as_u64().expect("ack_floor");
    assert_eq!(
        floor(wharf(
            url,
            &["consumer", "seek", "billing", "--seq", "3", "--json"]
        )),
        2
    );
    assert_eq!(
        floor(wharf(
            url,
            &["consumer", "seek", "billing", "--new", "--json"]
        )),
        6
    );
    assert_eq!(
        floor(wharf(
            url,
            &["consumer", "seek", "billing", "--all", "--json"]
        )),
        0
    );
    assert_eq!(
        floor(wharf(
            url,
            &[
                "consumer",
                "seek",
                "billing",
                "--time",
                "2999-01-01T00:00:00Z",
                "--json"
            ]
        )),
        6
    );
    assert_eq!(
        floor(wharf(
            url,
            &[
                "consumer",
                "seek",
                "billing",
                "--time",
                "2000-01-01T00:00:00Z",
                "--json"
            ]
        )),
        0
    );
    let table = wharf(url, &["consumer", "seek", "billing", "--seq", "4"]);
    assert!(table.status.success(), "{table:?}");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|row| row.starts_with("billing ")),
        "{table}"
    );
    fails_with(&wharf(url, &["consumer", "seek", "billing"]), "--seq");
    fails_with(
        &wharf(url, &["consumer", "seek", "nobody", "--all"]),
        "not_found",
    );

    // get
    let event = json_of(&wharf(url, &["get", "4", "--json"]));
    assert_eq!(
        event,
        json!({"seq":4,"topic":"orders.created","published_at":event["published_at"],"payload":4})
    );
    let out = wharf(url, &["get", "6", "--json"]);
    assert!(out.status.success(), "{out:?}");
    // The payload is printed as it was published, key order included.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(r#""payload":{"b":1,"a":2}"#),
        "{out:?}"
    );
    let out = wharf(url, &["get", "6"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("billing.paid") && text.contains("seq           6"),
        "{text}"
    );
    fails_with(&wharf(url, &["get", "7"]), "no event with seq 7");
}
