//! `history` reads what a topic (or a pattern) stored without consuming anything: the newest
//! N, oldest first, paging backwards with `before` and forwards with `after`, `more` telling
//! whether the page is the last; `limit` has a default and a maximum; the rights are those of
//! a subscribe; retention simply removes events (`first_seq` says where the log starts).
//! `last` is the newest event of each matching topic. Both backends.

use std::process::Command;

use serde_json::{json, Value};
use wharf_tests::{data_dir, wharf_bin, Backend, Broker, Client};

fn seqs_of(reply: &Value) -> Vec<u64> {
    reply["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events in {reply}"))
        .iter()
        .map(|e| e["seq"].as_u64().expect("a seq"))
        .collect()
}

/// Publishes `n` events round-robin over `topics`; returns each topic's seqs in order.
async fn publish_round_robin(c: &mut Client, topics: &[&str], n: usize) -> Vec<Vec<u64>> {
    let events: Vec<Value> = (0..n)
        .map(|i| json!({"topic": topics[i % topics.len()], "payload": {"i": i}}))
        .collect();
    let reply = c
        .reply(json!({"op":"publish_batch","id":"b","events":events}))
        .await;
    assert_eq!(reply["type"], "published", "{reply}");
    let seqs: Vec<u64> = reply["seqs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_u64().unwrap())
        .collect();
    (0..topics.len())
        .map(|t| seqs.iter().skip(t).step_by(topics.len()).copied().collect())
        .collect()
}

async fn history_pages_through_a_topic(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "");
    let mut c = broker.client().await;
    let by_topic = publish_round_robin(&mut c, &["room.a", "room.b", "other.x"], 300).await;
    let room_a = &by_topic[0];

    // The newest 10 of room.a, oldest first, with more before them.
    let page = c
        .reply(json!({"op":"history","id":1,"topic":"room.a","limit":10}))
        .await;
    assert_eq!(page["type"], "history", "{page}");
    assert_eq!(page["id"], 1);
    assert_eq!(seqs_of(&page), room_a[90..].to_vec());
    assert_eq!(page["more"], true);
    assert_eq!(page["first_seq"], 1);
    let first = &page["events"][0];
    assert_eq!(first["topic"], "room.a");
    assert_eq!(first["payload"], json!({"i": (room_a[90] - 1)}));
    assert!(first["published_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));

    // Paging backwards with `before` reads every event of room.a once, newest pages first.
    let mut all = Vec::new();
    let mut before = None::<u64>;
    loop {
        let mut req = json!({"op":"history","id":"p","topic":"room.a","limit":7});
        if let Some(b) = before {
            req["before"] = json!(b);
        }
        let page = c.reply(req).await;
        let seqs = seqs_of(&page);
        all.splice(0..0, seqs.iter().copied());
        if page["more"] == false {
            break;
        }
        before = seqs.first().copied();
    }
    assert_eq!(&all, room_a);

    // Forwards with `after`, from the start.
    let mut forward: Vec<u64> = Vec::new();
    let mut after = 0;
    loop {
        let page = c
            .reply(json!({"op":"history","id":"f","topic":"room.a","limit":30,"after":after}))
            .await;
        let seqs = seqs_of(&page);
        forward.extend(&seqs);
        if page["more"] == false {
            break;
        }
        after = *seqs.last().expect("a full page");
    }
    assert_eq!(&forward, room_a);

    // A pattern interleaves its topics in seq order.
    let page = c
        .reply(json!({"op":"history","id":2,"topic":"room.*","limit":4}))
        .await;
    let mut newest: Vec<u64> = by_topic[0].iter().chain(&by_topic[1]).copied().collect();
    newest.sort_unstable();
    assert_eq!(seqs_of(&page), newest[newest.len() - 4..].to_vec());

    // The default limit is 50; the maximum is enforced; before and after do not mix.
    let page = c.reply(json!({"op":"history","id":3,"topic":">"})).await;
    assert_eq!(seqs_of(&page), (251..=300).collect::<Vec<_>>());
    let too_many = c
        .reply(json!({"op":"history","id":4,"topic":">","limit":1001}))
        .await;
    assert_eq!(too_many["code"], "bad_request", "{too_many}");
    let both = c
        .reply(json!({"op":"history","id":5,"topic":">","before":9,"after":2}))
        .await;
    assert_eq!(both["code"], "bad_request", "{both}");
    let bad = c
        .reply(json!({"op":"history","id":6,"topic":"room.>.x"}))
        .await;
    assert_eq!(bad["code"], "invalid_pattern", "{bad}");
    let none = c
        .reply(json!({"op":"history","id":7,"topic":"nobody.here"}))
        .await;
    assert_eq!(seqs_of(&none), Vec::<u64>::new());
    assert_eq!(none["more"], false);

    // What was just confirmed is there at once (the index may lag; history does not).
    let seq = c.publish("room.a", json!("fresh")).await;
    let page = c
        .reply(json!({"op":"history","id":8,"topic":"room.a","limit":1}))
        .await;
    assert_eq!(seqs_of(&page), vec![seq]);
    assert_eq!(page["events"][0]["payload"], "fresh");

    // `last`: the newest event of each matching topic, by topic name.
    let last = c.reply(json!({"op":"last","id":9,"topic":">"})).await;
    assert_eq!(last["type"], "last", "{last}");
    let topics: Vec<&str> = last["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["topic"].as_str().unwrap())
        .collect();
    assert_eq!(topics, ["other.x", "room.a", "room.b"]);
    assert_eq!(
        seqs_of(&last),
        vec![
            *by_topic[2].last().unwrap(),
            seq,
            *by_topic[1].last().unwrap()
        ]
    );
    assert_eq!(last["more"], false);
    let one = c
        .reply(json!({"op":"last","id":10,"topic":"room.*","limit":1}))
        .await;
    assert_eq!(seqs_of(&one).len(), 1);
    assert_eq!(
        one["events"][0]["topic"], "room.a",
        "the first by name: {one}"
    );
    assert_eq!(one["more"], true);

    // Nothing was consumed: a durable consumer created now still starts at seq 1.
    let sub = c
        .reply(json!({"op":"subscribe","id":"s","topic":"room.a","consumer":"reader"}))
        .await;
    assert_eq!(sub["start_seq"], 1, "{sub}");

    // The CLI prints the same page.
    let out = Command::new(wharf_bin())
        .args([
            "history",
            "room.a",
            "--limit",
            "3",
            "--json",
            "--url",
            &broker.url,
        ])
        .output()
        .expect("run wharf history");
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event a line"))
        .collect();
    let printed: Vec<u64> = lines.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let mut expected = room_a[room_a.len() - 2..].to_vec();
    expected.push(seq);
    assert_eq!(printed, expected);
    let out = Command::new(wharf_bin())
        .args(["last", "room.*", "--raw", "--url", &broker.url])
        .output()
        .expect("run wharf last");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        [
            "\"fresh\"".to_owned(),
            format!("{{\"i\":{}}}", by_topic[1].last().unwrap() - 1)
        ]
    );
}

async fn history_skips_what_retention_removed(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "segment_bytes = 4096\nmax_events = 50");
    let mut c = broker.client().await;
    for _ in 0..10 {
        publish_round_robin(&mut c, &["r.a", "r.b"], 40).await;
    }
    // Retention runs as segments roll (embedded) or as the stream's limits apply (cluster).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let stats = loop {
        let page = c
            .reply(json!({"op":"history","id":"h","topic":"r.a","limit":1000}))
            .await;
        if page["first_seq"].as_u64().unwrap_or(0) > 1 {
            break page;
        }
        assert!(std::time::Instant::now() < deadline, "no retention: {page}");
        c.publish("r.a", json!("nudge")).await;
    };
    let first = stats["first_seq"].as_u64().unwrap();
    let seqs = seqs_of(&stats);
    assert!(!seqs.is_empty());
    assert!(seqs.iter().all(|&s| s >= first), "{first} {seqs:?}");
    assert_eq!(stats["more"], false, "nothing older is left");
    // Paging back from the oldest left finds nothing more.
    let older = c
        .reply(json!({"op":"history","id":"o","topic":"r.a","before":seqs[0]}))
        .await;
    assert_eq!(seqs_of(&older), Vec::<u64>::new(), "{older}");
}

wharf_tests::conformance!(
    history_pages_through_a_topic,
    history_skips_what_retention_removed,
    history_needs_subscribe_rights
);

const READER: &str = "reader-token-0123456789";

/// `history`, `last` and `presence` need the rights of a subscribe to their pattern.
async fn history_needs_subscribe_rights(backend: Backend) {
    let (_tmp, data) = data_dir();
    let hash = Command::new(wharf_bin())
        .args(["token", "hash", READER])
        .output()
        .expect("run wharf token hash");
    let hash = String::from_utf8_lossy(&hash.stdout).trim().to_owned();
    let config = format!(
        "[auth]\nenabled = true\n[[auth.tokens]]\nname = \"reader\"\nsha256 = \"{hash}\"\npublish = [\">\"]\nsubscribe = [\"room.>\"]\n"
    );
    let broker = backend.start(&data, &config);
    let mut c = broker.client().await;
    let ok = c.reply(json!({"op":"auth","id":0,"token":READER})).await;
    assert_eq!(ok["type"], "ok", "{ok}");
    c.publish("room.a", json!(1)).await;
    c.publish("secret.b", json!(2)).await;
    for (op, topic, allowed) in [
        ("history", "room.a", true),
        ("history", "room.*", true),
        ("history", "secret.b", false),
        ("history", ">", false),
        ("last", "room.>", true),
        ("last", ">", false),
        ("presence", "room.a", true),
        ("presence", "secret.b", false),
    ] {
        let reply = c.reply(json!({"op":op,"id":"r","topic":topic})).await;
        if allowed {
            assert_eq!(reply["type"], op, "{op} {topic}: {reply}");
        } else {
            assert_eq!(reply["code"], "forbidden", "{op} {topic}: {reply}");
        }
    }
}

/// A tiny cache: events come from the segments, the newest (not yet indexed) ones too.
const TINY_CACHE: &str = "cache_events = 8";

/// The per-topic index is part of the view: after a restart, and after the view is rebuilt
/// from the log, history answers the same.
#[tokio::test]
async fn history_survives_restarts_and_a_rebuilt_view() {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, TINY_CACHE);
    let mut c = broker.client().await;
    let by_topic = publish_round_robin(&mut c, &["a", "b"], 200).await;
    let ask = json!({"op":"history","id":"h","topic":"a","limit":1000});
    let before = c.reply(ask.clone()).await;
    assert_eq!(seqs_of(&before), by_topic[0]);
    drop(c);
    broker.kill9();
    let mut broker = Broker::start(&data, TINY_CACHE);
    let mut c = broker.client().await;
    assert_eq!(seqs_of(&c.reply(ask.clone()).await), by_topic[0]);
    drop(c);
    broker.terminate();
    std::fs::remove_dir_all(data.join("state")).expect("remove the view");
    let broker = Broker::start(&data, TINY_CACHE);
    let mut c = broker.client().await;
    assert_eq!(seqs_of(&c.reply(ask).await), by_topic[0]);
}
