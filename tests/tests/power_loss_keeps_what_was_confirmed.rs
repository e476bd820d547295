//! Power loss, simulated: while the broker runs under publish load, copy its data dir as it
//! stands, then cut the copied log at a random byte anywhere after the last record that held a
//! confirmed event (a confirmed event was synced; everything after it may or may not have
//! reached the disk, so the disk holds some prefix of what was written). Start a broker on the
//! copy: every confirmed event must be there, with its seq, and nothing else may appear.
//!
//! This checks recovery from any unsynced suffix, including a torn record and a sled view that
//! is ahead of the log. That the broker really fdatasyncs before confirming is checked by the
//! code path (`log::writer`), and by the fsync count in `relaxed_durability.rs`.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use wharf_broker::inspect::{self as log, Position};
use wharf_tests::{data_dir, seed_from_clock, Broker, WAIT};

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != "LOCK" {
            // A file may be written while it is copied: that is the point.
            let _ = fs::copy(entry.path(), &target);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_of_the_log_that_holds_every_confirmed_event_recovers_them_all() {
    let seed = std::env::var("WHARF_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(seed_from_clock);
    println!("seed={seed}");
    let mut rng = seed | 1;
    let mut next = move |below: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % below.max(1)
    };
    let (tmp, data) = data_dir();
    let broker = Broker::start(&data, "segment_bytes = 16384");

    // Publisher: pipelined, records the seq of each confirmed payload id.
    let confirmed: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    let (ws, _) = tokio_tungstenite::connect_async(&broker.url).await.unwrap();
    let (mut sink, mut stream) = ws.split();
    // Paused while a restored copy is read back, so that each round reads what it copied,
    // not a backlog that grew for as long as the last round took (131k events once, read by
    // a subscriber slow enough in a debug build to be skipped ahead with `lost`).
    let (pause, mut paused) = tokio::sync::watch::channel(false);
    let publisher = {
        let confirmed = confirmed.clone();
        tokio::spawn(async move {
            let mut id = 0u64;
            loop {
                if paused.wait_for(|p| !*p).await.is_err() {
                    return;
                }
                for _ in 0..32 {
                    id += 1;
                    let frame = json!({"op":"publish","id":id,"topic":"p","payload":{"id":id}});
                    if sink.send(Message::text(frame.to_string())).await.is_err() {
                        return;
                    }
                }
                for _ in 0..32 {
                    match stream.next().await {
                        Some(Ok(Message::Text(t))) => {
                            let v: Value = serde_json::from_str(t.as_str()).unwrap();
                            let (id, seq) = (v["id"].as_u64().unwrap(), v["seq"].as_u64().unwrap());
                            confirmed.lock().unwrap().insert(id, seq);
                        }
                        _ => return,
                    }
                }
            }
        })
    };

    for round in 0..5 {
        // Let some publishes be confirmed, then snapshot what is confirmed and copy the disk.
        let target = 200 * (round + 1) + next(200) as usize;
        let deadline = std::time::Instant::now() + WAIT;
        while confirmed.lock().unwrap().len() < target {
            assert!(std::time::Instant::now() < deadline, "publishing stalled");
            tokio::task::yield_now().await;
        }
        let promised = confirmed.lock().unwrap().clone();
        let copy = tmp.path().join(format!("copy-{round}"));
        copy_dir(&data, &copy);

        // Find the end of the record holding the newest confirmed seq.
        let newest = promised.values().copied().max().unwrap();
        let mut synced_to: Option<Position> = None;
        let mut ends: Vec<Position> = Vec::new();
        log::recover(
            &copy.join("log"),
            0,
            |rec, pos| {
                if rec.events().iter().any(|e| e.seq == newest) {
                    synced_to = Some(pos);
                }
                ends.push(pos);
                Ok(())
            },
            |_| None,
        )
        .unwrap();
        let synced_to = synced_to.expect("the newest confirmed event is in the copy");

        // Power loss: keep a random prefix that includes everything up to `synced_to`.
        let segments = log::segment::list(&copy.join("log")).unwrap();
        let total_after: Vec<(u64, u64)> = segments
            .iter()
            .map(|(base, path)| (*base, fs::metadata(path).unwrap().len()))
            .filter(|&(base, _)| base >= synced_to.segment)
            .collect();
        let (cut_segment, cut_len) = {
            let i = next(total_after.len() as u64) as usize;
            let (base, len) = total_after[i];
            let low = if base == synced_to.segment {
                synced_to.offset
            } else {
                0
            };
            (base, low + next(len.saturating_sub(low) + 1))
        };
        for (base, path) in &segments {
            if *base > cut_segment {
                fs::remove_file(path).unwrap();
            } else if *base == cut_segment {
                OpenOptions::new()
                    .write(true)
                    .open(path)
                    .unwrap()
                    .set_len(cut_len)
                    .unwrap();
            }
        }
        println!(
            "round {round}: {} confirmed, cut segment {cut_segment} at {cut_len}",
            promised.len()
        );

        // Recover from the copy.
        pause.send_replace(true);
        let restored = Broker::start(&copy, "");
        let mut c = restored.client().await;
        let reply = c
            .reply(json!({"op":"subscribe","id":1,"topic":"p","start":"all"}))
            .await;
        assert_eq!(reply["type"], "subscribed");
        let mut seen: HashMap<u64, u64> = HashMap::new();
        while seen.values().copied().max().unwrap_or(0) < newest {
            let ev = c.recv().await;
            let id = ev["payload"]["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("round {round}: not an event of the publisher: {ev}"));
            assert!(seen.insert(ev["seq"].as_u64().unwrap(), id).is_none());
        }
        for (id, seq) in &promised {
            assert_eq!(
                seen.get(seq),
                Some(id),
                "round {round}: confirmed seq {seq} lost"
            );
        }
        drop(restored);
        pause.send_replace(false);
    }
    publisher.abort();
}
