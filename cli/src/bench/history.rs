//! `wharf bench history`: how fast `history` answers on a big log. Loads `--events` events
//! spread round-robin over `--topics` topics (pipelined publishes of one event each, or
//! `--load-batch N` a publish_batch), then asks for the
//! newest `--limit` events of a random topic, one request at a time, and reports the latency
//! of each answer (with `--anywhere`, the page before a random seq: old events, read from
//! disk rather than a cache). A topic's events are then 1 in `--topics` of the log: the
//! broker must find them without scanning it.

use std::time::Instant;

use serde_json::{json, Value};

use super::scenarios::{connect, next_text, parse, request, stats};
use super::target::Target;
use super::{ms_since, progress, BenchArgs, Outcome};

/// Publish frames in flight per loading connection.
const FRAMES_IN_FLIGHT: usize = 256;

pub async fn history(target: &Target, prefix: &str, args: &BenchArgs) -> anyhow::Result<Outcome> {
    let events = args.events();
    let topics = args.topics.max(1);
    let head = |stats: Value| stats["head_seq"].as_u64().unwrap_or(0);
    let before_load = head(stats(&target.url).await?);
    let loaded_at = Instant::now();
    load(&target.url, prefix, events, topics, args).await?;
    let load_seconds = loaded_at.elapsed().as_secs_f64();
    // The seqs this run stored (the broker may hold earlier runs' too).
    let (low, high) = (
        before_load + 1,
        head(stats(&target.url).await?).max(before_load + 1),
    );

    let (mut sink, mut stream) = connect(&target.url).await?;
    let queries = args.queries.max(1);
    let bar = progress(args, queries, "history");
    let mut latencies = Vec::with_capacity(queries as usize);
    let mut returned = 0u64;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ wharf_protocol::now_ms();
    let started = Instant::now();
    for id in 0..queries {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let topic = format!("{prefix}.{}", rng % topics);
        let mut ask = json!({"op":"history","id":id,"topic":topic,"limit":args.limit});
        if args.anywhere {
            ask["before"] = json!(low + (rng >> 20) % (high - low + 1));
        }
        let at = Instant::now();
        let text = request(&mut sink, &mut stream, ask, "history").await?;
        latencies.push(ms_since(at));
        let page: Value = serde_json::from_str(&text)?;
        returned += page["events"].as_array().map_or(0, |e| e.len() as u64);
        bar.inc(1);
    }
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let mut extra = serde_json::Map::new();
    extra.insert("log_events".into(), json!(events));
    extra.insert("topics".into(), json!(topics));
    extra.insert("limit".into(), json!(args.limit));
    extra.insert(
        "pages".into(),
        json!(if args.anywhere { "anywhere" } else { "newest" }),
    );
    extra.insert(
        "events_per_reply".into(),
        json!(returned as f64 / queries as f64),
    );
    extra.insert("load_seconds".into(), json!(load_seconds));
    extra.insert("events_per_publish".into(), json!(args.load_batch.max(1)));
    Ok(Outcome {
        count: queries,
        seconds,
        latencies,
        extra,
    })
}

/// Publishes `events` round-robin over `topics` topics under `prefix`.
async fn load(
    url: &str,
    prefix: &str,
    events: u64,
    topics: u64,
    args: &BenchArgs,
) -> anyhow::Result<()> {
    let bar = progress(args, events, "loading");
    let connections = args.connections();
    // One event a publish (one log record each, as chat messages come), or batches.
    let per_frame = args.load_batch.max(1);
    let batches = events.div_ceil(per_frame);
    let pad = "x".repeat(args.size.saturating_sub(24));
    let mut tasks = Vec::new();
    for c in 0..connections {
        let mine: Vec<u64> = (0..batches).filter(|b| b % connections == c).collect();
        let (url, prefix, pad, bar) = (url.to_owned(), prefix.to_owned(), pad.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let (mut sink, mut stream) = connect(&url).await?;
            let (mut sent, mut done) = (0usize, 0usize);
            while done < mine.len() {
                while sent < mine.len() && sent - done < FRAMES_IN_FLIGHT {
                    let first = mine[sent] * per_frame;
                    let event = |i: u64| {
                        json!({"topic": format!("{prefix}.{}", i % topics),
                               "payload": {"i": i, "pad": pad}})
                    };
                    let frame = if per_frame == 1 {
                        let mut frame = event(first);
                        frame["op"] = json!("publish");
                        frame
                    } else {
                        let batch: Vec<Value> = (first..(first + per_frame).min(events))
                            .map(event)
                            .collect();
                        json!({"op":"publish_batch","events":batch})
                    };
                    sink.feed(frame.to_string()).await?;
                    sent += 1;
                }
                sink.flush().await?;
                let text = next_text(&mut stream).await?;
                if parse(&text)?.kind != "published" {
                    anyhow::bail!("publish refused: {text}");
                }
                done += 1;
                bar.inc(per_frame);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    bar.finish_and_clear();
    Ok(())
}
