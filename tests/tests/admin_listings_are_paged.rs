//! `topics` and `consumers` answer one page at a time (a `limit` with a default and a
//! maximum, and a cursor to continue), so a small request cannot make the broker build a huge
//! reply; following `next_cursor` lists everything exactly once, in name order; the CLI does
//! that for the operator.

use std::process::Command;

use serde_json::{json, Value};
use wharf_tests::{data_dir, wharf_bin, Backend, Client};

/// Every page of `op` with `limit` (None: the default), following the cursors.
async fn all_pages(c: &mut Client, op: &str, field: &str, limit: Option<u64>) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut cursor = Value::Null;
    loop {
        let mut request = json!({"op": op, "id": pages.len()});
        if let Some(limit) = limit {
            request["limit"] = json!(limit);
        }
        if !cursor.is_null() {
            request["cursor"] = cursor.clone();
        }
        let reply = c.reply(request).await;
        let names: Vec<String> = reply[field]
            .as_array()
            .unwrap_or_else(|| panic!("no {field} in {reply}"))
            .iter()
            .map(|t| {
                let key = if field == "topics" {
                    "topic"
                } else {
                    "consumer"
                };
                t[key].as_str().expect("a name").to_owned()
            })
            .collect();
        pages.push(names);
        cursor = reply["next_cursor"].clone();
        if cursor.is_null() {
            return pages;
        }
    }
}

async fn topics_and_consumers_come_in_pages(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "");
    let mut c = broker.client().await;
    let events: Vec<Value> = (0..1234)
        .map(|i| json!({"topic": format!("t.{i:05}"), "payload": i}))
        .collect();
    let reply = c
        .reply(json!({"op":"publish_batch","id":"b","events":events}))
        .await;
    assert_eq!(reply["type"], "published", "{reply}");
    for i in 0..5 {
        c.subscribe(&format!("t.{i:05}"), Some(&format!("c{i}")))
            .await;
    }

    // The default page is 100 names; every topic comes once, in order.
    let pages = all_pages(&mut c, "topics", "topics", None).await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [100; 12].into_iter().chain([34]).collect::<Vec<_>>());
    let all: Vec<String> = pages.concat();
    let expected: Vec<String> = (0..1234).map(|i| format!("t.{i:05}")).collect();
    assert_eq!(all, expected);

    // A limit above the maximum gets the maximum (1000).
    let pages = all_pages(&mut c, "topics", "topics", Some(1_000_000)).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [1000, 234]);

    let pages = all_pages(&mut c, "consumers", "consumers", Some(2)).await;
    assert_eq!(
        pages,
        [vec!["c0", "c1"], vec!["c2", "c3"], vec!["c4"]]
            .map(|p| p.into_iter().map(String::from).collect::<Vec<_>>())
    );
    let reply = c.reply(json!({"op":"topics","id":"z","limit":0})).await;
    assert_eq!(reply["code"], "bad_request", "{reply}");
    let reply = c.reply(json!({"op":"consumers","id":"z","cursor":7})).await;
    assert_eq!(reply["code"], "bad_request", "{reply}");

    // The CLI follows the cursors.
    let out = Command::new(wharf_bin())
        .args(["topics", "--url", &broker.url, "--json"])
        .output()
        .expect("run wharf topics");
    assert!(out.status.success(), "{out:?}");
    let listed: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(listed["topics"].as_array().map(Vec::len), Some(1234));
}

wharf_tests::conformance!(topics_and_consumers_come_in_pages);
