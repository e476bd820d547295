//! Fault injection in the manner of Jepsen's queue checker: the real `wharf serve` runs under
//! publish and consume load and is SIGKILLed at random points, again and again, on the same
//! data dir. Then every confirmed publish must be in the log, every durable consumer must have
//! received every confirmed event it matches, nothing may appear that was never published,
//! and an ack that was confirmed must never be undone. Duplicates are counted (at-least-once
//! allows them).
//!
//! The suite runs a short version. The long one is one variable away:
//! `WHARF_CRASH_KILLS=200 cargo test -p wharf-tests --test sigkill_under_load_loses_nothing -- --nocapture`

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use wharf_tests::{data_dir, Broker, Client, WAIT};

const CONSUMERS: [(&str, &str); 2] = [("all", "load.>"), ("only-a", "load.a")];

#[derive(Default)]
struct History {
    /// Payload ids sent, and the seq of those confirmed.
    sent: HashSet<u64>,
    confirmed: HashMap<u64, u64>,
    /// Per consumer: (seq, payload id, run) for every delivery seen.
    delivered: HashMap<&'static str, Vec<(u64, u64, u32)>>,
    /// Per consumer: seq → the run in which its ack was confirmed.
    acked: HashMap<&'static str, HashMap<u64, u32>>,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

fn topic_for(id: u64) -> &'static str {
    if id.is_multiple_of(3) {
        "load.b"
    } else {
        "load.a"
    }
}

/// Publishes with up to 64 in flight until the connection dies.
async fn publisher(
    url: String,
    first_id: u64,
    history: Arc<Mutex<History>>,
    progress: watch::Sender<u64>,
) {
    let Ok((ws, _)) = tokio_tungstenite::connect_async(&url).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let mut next_id = first_id;
    let mut in_flight = 0;
    loop {
        while in_flight < 64 {
            let frame = json!({"op":"publish","id":next_id,"topic":topic_for(next_id),"payload":{"id":next_id}});
            history.lock().unwrap().sent.insert(next_id);
            if sink.send(Message::text(frame.to_string())).await.is_err() {
                return;
            }
            next_id += 1;
            in_flight += 1;
        }
        match stream.next().await {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("JSON reply");
                assert_eq!(v["type"], "published", "{v}");
                let id = v["id"].as_u64().unwrap();
                let seq = v["seq"].as_u64().unwrap();
                let first = history.lock().unwrap().confirmed.insert(id, seq).is_none();
                assert!(first, "two replies for publish {id}");
                in_flight -= 1;
                progress.send_modify(|n| *n += 1);
            }
            Some(Ok(_)) => {}
            _ => return,
        }
    }
}

/// Receives and acks (in batches, with ids) until the connection dies.
async fn consumer(
    url: String,
    name: &'static str,
    pattern: &'static str,
    run: u32,
    history: Arc<Mutex<History>>,
) {
    let Ok((ws, _)) = tokio_tungstenite::connect_async(&url).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let mut sub =
        json!({"op":"subscribe","id":"sub","topic":pattern,"consumer":name,"start":"all"});
    // One consumer takes its events several to a frame (`batch`): both delivery paths are
    // crashed into.
    if name == "only-a" {
        sub["batch"] = json!(16);
    }
    if sink.send(Message::text(sub.to_string())).await.is_err() {
        return;
    }
    let mut batches: HashMap<u64, Vec<u64>> = HashMap::new();
    let mut batch = Vec::new();
    let mut next_batch = 0u64;
    loop {
        let msg = match tokio::time::timeout(Duration::from_millis(20), stream.next()).await {
            Ok(Some(Ok(msg))) => Some(msg),
            Ok(_) => return,
            Err(_) => None,
        };
        if let Some(Message::Text(t)) = &msg {
            let v: Value = serde_json::from_str(t.as_str()).expect("JSON frame");
            let mut record = |ev: &Value| batch.push(delivered(&history, name, ev, run));
            match v["type"].as_str() {
                Some("event") => record(&v),
                Some("events") => {
                    for ev in v["events"].as_array().expect("an events array") {
                        record(ev);
                    }
                }
                Some("ok") => {
                    let n = v["id"].as_u64().unwrap();
                    let seqs = batches.remove(&n).unwrap_or_default();
                    let mut h = history.lock().unwrap();
                    let acked = h.acked.entry(name).or_default();
                    for s in seqs {
                        acked.entry(s).or_insert(run);
                    }
                }
                Some("subscribed") => {}
                _ => panic!("unexpected frame for {name}: {v}"),
            }
        }
        if batch.len() >= 32 || (msg.is_none() && !batch.is_empty()) {
            next_batch += 1;
            let seqs = std::mem::take(&mut batch);
            let ack = json!({"op":"ack","id":next_batch,"consumer":name,"seqs":seqs});
            batches.insert(next_batch, seqs);
            if sink.send(Message::text(ack.to_string())).await.is_err() {
                return;
            }
        }
    }
}

/// Records a delivery of `ev` to consumer `name` in `run`; returns its seq.
fn delivered(history: &Mutex<History>, name: &'static str, ev: &Value, run: u32) -> u64 {
    let seq = ev["seq"].as_u64().unwrap();
    let id = ev["payload"]["id"].as_u64().unwrap_or(u64::MAX);
    history
        .lock()
        .unwrap()
        .delivered
        .entry(name)
        .or_default()
        .push((seq, id, run));
    seq
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_confirmed() {
    let kills: u32 = std::env::var("WHARF_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let seed = std::env::var("WHARF_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(wharf_tests::seed_from_clock);
    println!("kills={kills} seed={seed}");
    let mut rng = Rng(seed | 1);
    let (_tmp, data) = data_dir();
    let history = Arc::new(Mutex::new(History::default()));
    let started = Instant::now();
    let mut next_id = 1u64;

    for run in 1..=kills {
        let mut broker = Broker::start(&data, "segment_bytes = 65536");
        let (progress_tx, mut progress) = watch::channel(0u64);
        let mut tasks = Vec::new();
        for p in 0..2u64 {
            let first = next_id + p * 1_000_000;
            tasks.push(tokio::spawn(publisher(
                broker.url.clone(),
                first,
                history.clone(),
                progress_tx.clone(),
            )));
        }
        next_id += 2_000_000;
        for (name, pattern) in CONSUMERS {
            tasks.push(tokio::spawn(consumer(
                broker.url.clone(),
                name,
                pattern,
                run,
                history.clone(),
            )));
        }
        // Kill after a random number of confirmed publishes: a point in the middle of work.
        let target = 20 + rng.next(400);
        // The guard wait_for returns must not outlive this statement: publishers update it.
        let reached = tokio::time::timeout(WAIT, progress.wait_for(|n| *n >= target))
            .await
            .is_ok_and(|r| r.is_ok());
        assert!(
            reached,
            "run {run}: no progress; broker log:\n{}",
            broker.log()
        );
        broker.kill9();
        for t in tasks {
            t.await.expect("client task panicked");
        }
    }

    // Final run: read the whole log from seq 1, then drain every consumer.
    let broker = Broker::start(&data, "");
    let final_run = kills + 1;
    let mut log_events: BTreeMap<u64, Value> = BTreeMap::new();
    {
        let mut c = broker.client().await;
        let reply = c
            .request(json!({"op":"subscribe","id":0,"topic":">","start":"all"}))
            .await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        let head = history
            .lock()
            .unwrap()
            .confirmed
            .values()
            .copied()
            .max()
            .unwrap_or(0);
        while log_events.keys().next_back().copied().unwrap_or(0) < head {
            let ev = c.recv().await;
            log_events.insert(ev["seq"].as_u64().unwrap(), ev);
        }
    }
    for (name, pattern) in CONSUMERS {
        let mut c: Client = broker.client().await;
        c.subscribe(pattern, Some(name)).await;
        while let Some(ev) = c.recv_within(Duration::from_millis(500)).await {
            let seq = delivered(&history, name, &ev, final_run);
            // No id: no reply to tell apart from the events.
            c.send(json!({"op":"ack","consumer":name,"seq":seq})).await;
        }
    }

    let h = history.lock().unwrap();
    let mut lost = 0;
    let mut wrong_seq = 0;
    for (&id, &seq) in &h.confirmed {
        match log_events.get(&seq) {
            None => lost += 1,
            Some(ev) if ev["payload"]["id"] != id => wrong_seq += 1,
            Some(_) => {}
        }
    }
    let unexpected = log_events
        .values()
        .filter(|ev| {
            !ev["payload"]["id"]
                .as_u64()
                .is_some_and(|id| h.sent.contains(&id))
        })
        .count();
    let mut report = Vec::new();
    for (name, pattern) in CONSUMERS {
        let matches = |topic: &str| pattern == "load.>" || topic == pattern;
        let delivered = h.delivered.get(name).cloned().unwrap_or_default();
        let got: HashSet<u64> = delivered.iter().map(|d| d.0).collect();
        let missing_seqs: Vec<u64> = h
            .confirmed
            .iter()
            .filter(|(&id, seq)| matches(topic_for(id)) && !got.contains(seq))
            .map(|(_, &seq)| seq)
            .collect();
        let missing = missing_seqs.len();
        if missing > 0 {
            let mut around: Vec<_> = delivered
                .iter()
                .filter(|d| missing_seqs.iter().any(|m| d.0.abs_diff(*m) < 4))
                .collect();
            around.sort();
            println!("{name} missing {missing_seqs:?}; deliveries near them: {around:?}");
        }
        let foreign = delivered
            .iter()
            .filter(|d| !h.sent.contains(&d.1) || !matches(topic_for(d.1)))
            .count();
        let acked = h.acked.get(name).cloned().unwrap_or_default();
        let regressed = delivered
            .iter()
            .filter(|(seq, _, run)| acked.get(seq).is_some_and(|acked_in| run > acked_in))
            .count();
        let duplicates = delivered.len() - got.len();
        report.push(format!(
            "{name}: delivered {} distinct {} duplicates {duplicates} missing {missing} foreign {foreign} ack-regressions {regressed}",
            delivered.len(),
            got.len()
        ));
        assert_eq!(missing, 0, "{name} missed confirmed events");
        assert_eq!(foreign, 0, "{name} got events it should not");
        assert_eq!(
            regressed, 0,
            "{name} got events again after their ack was confirmed"
        );
    }
    println!(
        "kills {kills}, confirmed publishes {}, sent {}, events in log {}, lost {lost}, wrong seq {wrong_seq}, unexpected {unexpected}, {:.1}s",
        h.confirmed.len(),
        h.sent.len(),
        log_events.len(),
        started.elapsed().as_secs_f64()
    );
    for line in &report {
        println!("{line}");
    }
    assert_eq!(lost, 0, "confirmed publishes missing from the log");
    assert_eq!(wrong_seq, 0, "a confirmed seq holds another event");
    assert_eq!(unexpected, 0, "events in the log that were never published");
}
