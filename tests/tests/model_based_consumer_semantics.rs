//! Model-based test: random sequences of publish, subscribe, ack, nack, term, seek, delete,
//! disconnect, retention (small segments and `max_events`), restart (SIGKILL or SIGTERM) and
//! the loss of the sled view (a rebuild from the log) against the real broker, checked
//! against a small model of what each durable consumer must receive.
//!
//! Checked throughout: no event is delivered that was not published, or does not match the
//! consumer, or was settled (acked or termed, confirmed) before; new seqs reach one attachment
//! in increasing order; a delivery count never exceeds the deliveries the model saw (plus
//! one per attachment that ended with frames it may not have read); a consumer's floor never
//! passes an event it has not settled. Checked at the end: each consumer receives exactly the
//! matching stored events it has not settled, and every unsettled event retention removed
//! while nobody was attached is covered by a `gap` notice (across restarts and rebuilds).
//!
//! The suite runs a few cases; more are one variable away:
//! `WHARF_MODEL_CASES=200 cargo test -p wharf-tests --test model_based_consumer_semantics`

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;
use serde_json::json;
use wharf_tests::{data_dir, Broker, Client};

const TOPICS: [&str; 3] = ["m.a", "m.b", "x.c"];
const CONSUMERS: [(&str, &str); 2] = [("narrow", "m.a"), ("wide", "m.>")];

#[derive(Debug, Clone)]
enum Op {
    Publish(usize),
    Attach(usize),
    Detach(usize),
    Ack(usize, usize),
    Nack(usize, usize),
    Term(usize, usize),
    Seek(usize, usize),
    Delete(usize),
    Restart { kill: bool, lose_view: bool },
}

/// Small segments and a short retention, so random cases remove old events.
const CONFIG: &str = "segment_bytes = 1024\nmax_events = 12";

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..TOPICS.len()).prop_map(Op::Publish),
        2 => (0..CONSUMERS.len()).prop_map(Op::Attach),
        1 => (0..CONSUMERS.len()).prop_map(Op::Detach),
        3 => (0..CONSUMERS.len(), any::<usize>()).prop_map(|(c, k)| Op::Ack(c, k)),
        1 => (0..CONSUMERS.len(), any::<usize>()).prop_map(|(c, k)| Op::Nack(c, k)),
        1 => (0..CONSUMERS.len(), any::<usize>()).prop_map(|(c, k)| Op::Term(c, k)),
        1 => (0..CONSUMERS.len(), any::<usize>()).prop_map(|(c, k)| Op::Seek(c, k)),
        1 => (0..CONSUMERS.len()).prop_map(Op::Delete),
        1 => (any::<bool>(), prop::bool::weighted(0.3))
            .prop_map(|(kill, lose_view)| Op::Restart { kill, lose_view }),
    ]
}

fn matches(consumer: usize, topic: &str) -> bool {
    match CONSUMERS[consumer].1 {
        "m.>" => topic.starts_with("m."),
        exact => topic == exact,
    }
}

/// One attached subscriber and what it has seen.
struct Attached {
    client: Client,
    /// Received and not settled: what ack/nack/term pick from.
    holding: BTreeSet<u64>,
    /// Every seq this attachment has seen.
    seen: BTreeSet<u64>,
    /// A seek moved its consumer: frames queued before it may still come, so new seqs are
    /// not checked for order any more.
    seeked: bool,
}

struct Model {
    published: Vec<(u64, &'static str)>,
    settled: [BTreeSet<u64>; 2],
    created: [bool; 2],
    /// The oldest seq the log still holds.
    first_seq: u64,
    /// Deliveries the test saw, per consumer and seq, since the consumer's last seek.
    delivered: [BTreeMap<u64, u64>; 2],
    /// Attachments that ended (detach, restart) since the last seek: each may have had
    /// frames counted by the broker and never read here.
    unread_slack: [u64; 2],
    /// Unsettled matching seqs retention removed while nobody was attached, that no gap
    /// notice received so far covers.
    owed_gap: [BTreeSet<u64>; 2],
    /// Which consumers have an attachment right now.
    attached_now: [bool; 2],
}

impl Model {
    fn expected(&self, c: usize) -> BTreeSet<u64> {
        self.published
            .iter()
            .filter(|(seq, topic)| {
                matches(c, topic) && !self.settled[c].contains(seq) && *seq >= self.first_seq
            })
            .map(|(seq, _)| *seq)
            .collect()
    }

    /// The highest floor the broker may report: every matching event at or below it is
    /// settled (or removed by retention).
    fn max_floor(&self, c: usize) -> u64 {
        let head = self.published.last().map_or(0, |p| p.0);
        self.published
            .iter()
            .find(|(seq, topic)| {
                matches(c, topic) && !self.settled[c].contains(seq) && *seq >= self.first_seq
            })
            .map_or(head, |(seq, _)| seq - 1)
    }

    /// Checks one frame pushed to a subscriber against the model.
    fn check(&mut self, c: usize, att: &mut Attached, frame: &serde_json::Value) {
        if frame["type"] == "gap" {
            let (from, to) = (
                frame["from"].as_u64().unwrap(),
                frame["to"].as_u64().unwrap(),
            );
            // Retention also runs in commits the test did not make (a gap being recorded, a
            // dead letter): the notice may be the first news of it.
            self.retained_from(to + 1, self.attached_now);
            self.owed_gap[c].retain(|s| *s < from || *s > to);
            return;
        }
        assert_eq!(frame["type"], "event", "{frame}");
        let seq = frame["seq"].as_u64().unwrap();
        let topic = frame["topic"].as_str().unwrap();
        assert!(
            self.published.iter().any(|(s, t)| *s == seq && *t == topic)
                || seq > self.published.last().map_or(0, |p| p.0),
            "{c}: unknown event {frame}"
        );
        assert!(matches(c, topic), "{c}: event not matching: {frame}");
        assert!(
            !self.settled[c].contains(&seq),
            "{c}: settled event delivered again: {frame}"
        );
        if !att.seen.contains(&seq) && !att.seeked {
            if let Some(&last) = att.seen.iter().next_back() {
                assert!(seq > last, "{c}: new seq {seq} after {last}");
            }
        }
        let seen = self.delivered[c].entry(seq).or_insert(0);
        *seen += 1;
        let count = frame["delivery"].as_u64().unwrap();
        assert!(
            count >= 1 && count <= *seen + self.unread_slack[c],
            "{c}: delivery {count} of seq {seq}, seen {} times (slack {}): {frame}",
            *seen,
            self.unread_slack[c]
        );
        att.seen.insert(seq);
        att.holding.insert(seq);
    }

    /// Retention moved the log's start to `first`: what it removed is gone for everyone, and
    /// consumers nobody is attached to are owed a gap notice for their unsettled part.
    fn retained_from(&mut self, first: u64, attached: [bool; 2]) {
        if first <= self.first_seq {
            return;
        }
        for (c, &is_attached) in attached.iter().enumerate() {
            if !self.created[c] || is_attached {
                continue;
            }
            let removed = self.published.iter().filter(|(seq, topic)| {
                *seq >= self.first_seq
                    && *seq < first
                    && matches(c, topic)
                    && !self.settled[c].contains(seq)
            });
            self.owed_gap[c].extend(removed.map(|(seq, _)| *seq));
        }
        self.first_seq = first;
    }

    fn ended_attachment(&mut self, c: usize) {
        self.unread_slack[c] += 1;
    }
}

async fn drain(model: &mut Model, c: usize, att: &mut Attached, wait: Duration) {
    while let Some(frame) = att.client.recv_within(wait).await {
        model.check(c, att, &frame);
    }
}

/// The oldest seq the broker still holds.
async fn first_seq(client: &mut Client) -> u64 {
    let stats = client.reply(json!({"op":"stats","id":"st"})).await;
    stats["first_seq"].as_u64().expect("first_seq")
}

async fn run_case(ops: Vec<Op>) {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, CONFIG);
    let mut publisher = broker.client().await;
    let mut model = Model {
        published: Vec::new(),
        settled: [BTreeSet::new(), BTreeSet::new()],
        created: [false, false],
        first_seq: 1,
        delivered: [BTreeMap::new(), BTreeMap::new()],
        unread_slack: [0, 0],
        owed_gap: [BTreeSet::new(), BTreeSet::new()],
        attached_now: [false, false],
    };
    let mut attached: [Option<Attached>; 2] = [None, None];
    let pad = "p".repeat(300);

    for op in ops {
        model.attached_now = [attached[0].is_some(), attached[1].is_some()];
        for (c, att) in attached.iter_mut().enumerate() {
            if let Some(att) = att {
                drain(&mut model, c, att, Duration::ZERO).await;
            }
        }
        match op {
            Op::Publish(t) => {
                let seq = publisher
                    .publish(TOPICS[t], json!({"t": t, "pad": pad}))
                    .await;
                model.published.push((seq, TOPICS[t]));
            }
            Op::Attach(c) if attached[c].is_none() => {
                let mut client = broker.client().await;
                client
                    .subscribe_with(
                        CONSUMERS[c].0,
                        json!({"topic":CONSUMERS[c].1,"ack_wait_ms":600000}),
                    )
                    .await;
                if !model.created[c] {
                    model.created[c] = true;
                    model.settled[c] = model
                        .published
                        .iter()
                        .map(|(seq, _)| *seq)
                        .filter(|seq| *seq < model.first_seq)
                        .collect();
                }
                attached[c] = Some(Attached {
                    client,
                    holding: BTreeSet::new(),
                    seen: BTreeSet::new(),
                    seeked: false,
                });
            }
            Op::Attach(_) => {}
            Op::Detach(c) => {
                if let Some(att) = attached[c].take() {
                    att.client.close().await;
                    model.ended_attachment(c);
                }
            }
            Op::Ack(c, k) | Op::Nack(c, k) | Op::Term(c, k) => {
                let Some(att) = attached[c].as_mut() else {
                    continue;
                };
                let Some(&seq) = att.holding.iter().nth(k % att.holding.len().max(1)) else {
                    continue;
                };
                let name = CONSUMERS[c].0;
                let (verb, settles) = match op {
                    Op::Ack(..) => ("ack", true),
                    Op::Term(..) => ("term", true),
                    _ => ("nack", false),
                };
                att.client
                    .send(json!({"op":verb,"id":1,"consumer":name,"seq":seq}))
                    .await;
                // Pushes (events, gap notices) may come before the reply.
                let reply = loop {
                    let frame = att.client.recv().await;
                    if frame.get("id").is_some() {
                        break frame;
                    }
                    model.check(c, att, &frame);
                };
                att.holding.remove(&seq);
                if reply["type"] != "ok" {
                    // Removed by retention meanwhile: no longer in flight.
                    assert!(
                        seq < first_seq(&mut publisher).await,
                        "{verb} {seq}: {reply}"
                    );
                    continue;
                }
                if settles {
                    model.settled[c].insert(seq);
                }
            }
            Op::Seek(c, k) => {
                if !model.created[c] {
                    continue;
                }
                let head = model.published.last().map_or(0, |p| p.0);
                let target = (k as u64 % (head + 1)) + 1;
                let mut admin = broker.client().await;
                let reply = admin
                    .reply(json!({"op":"seek","id":1,"consumer":CONSUMERS[c].0,"seq":target}))
                    .await;
                assert_eq!(reply["type"], "ok", "seek {target}: {reply}");
                // Frames the subscriber had not read when the seek was answered may have
                // been sent before it (a seq now below the floor, delivered before the seek
                // settled it) or after it: a request on its own connection is answered behind
                // them all, and they are taken as either, checked only for being events.
                if let Some(att) = attached[c].as_mut() {
                    let barrier = att.client.reply(json!({"op":"stats","id":"b"})).await;
                    assert_eq!(barrier["type"], "stats", "{barrier}");
                    while let Some(frame) = att.client.take_stashed() {
                        if frame["type"] == "event" {
                            let seq = frame["seq"].as_u64().expect("seq");
                            att.seen.insert(seq);
                            att.holding.insert(seq);
                        } else {
                            model.check(c, att, &frame);
                        }
                    }
                }
                // The broker clamps the floor to the log's start when it stores the seek:
                // what retention removed up to then is moved past, owed to nobody.
                let first = first_seq(&mut publisher).await;
                model.retained_from(first, [true, true]);
                let floor = target.max(model.first_seq) - 1;
                model.settled[c] = model
                    .published
                    .iter()
                    .map(|(seq, _)| *seq)
                    .filter(|seq| *seq <= floor)
                    .collect();
                model.delivered[c].clear();
                model.unread_slack[c] = 0;
                if let Some(att) = attached[c].as_mut() {
                    att.holding.retain(|seq| *seq > floor);
                    att.seeked = true;
                    // Frames already queued under the old counts may still arrive.
                    model.unread_slack[c] += 1;
                }
            }
            Op::Delete(c) => {
                if !model.created[c] {
                    continue;
                }
                let mut admin = broker.client().await;
                let reply = admin
                    .reply(json!({"op":"delete_consumer","id":1,"consumer":CONSUMERS[c].0}))
                    .await;
                assert_eq!(reply["type"], "ok", "delete: {reply}");
                attached[c] = None;
                model.created[c] = false;
                model.settled[c].clear();
                model.delivered[c].clear();
                model.unread_slack[c] = 0;
                model.owed_gap[c].clear();
            }
            Op::Restart { kill, lose_view } => {
                for (c, att) in attached.iter_mut().enumerate() {
                    if att.take().is_some() {
                        model.ended_attachment(c);
                    }
                }
                if kill {
                    broker.kill9();
                } else {
                    let status = broker.terminate();
                    assert!(status.success(), "{status}\n{}", broker.log());
                }
                if lose_view {
                    std::fs::remove_dir_all(data.join("state")).expect("remove the sled view");
                }
                broker = Broker::start(&data, CONFIG);
                publisher = broker.client().await;
            }
        }
        // Retention runs at each roll and at start, in any commit (an ack, a gap being
        // recorded): a consumer that had an attachment at any time during this operation may
        // have been told of it on a connection that is gone now, so it is owed nothing.
        let first = first_seq(&mut publisher).await;
        let touched = [
            model.attached_now[0] || attached[0].is_some(),
            model.attached_now[1] || attached[1].is_some(),
        ];
        model.retained_from(first, touched);
        for (c, (name, _)) in CONSUMERS.iter().enumerate() {
            if !model.created[c] {
                continue;
            }
            let info = publisher.info(name).await;
            let floor = info["ack_floor"].as_u64().unwrap();
            assert!(
                floor <= model.max_floor(c),
                "{c}: floor {floor} passes an unsettled event (at most {}): {info}",
                model.max_floor(c)
            );
        }
    }

    // Every created consumer, attached fresh, receives exactly what it has not settled, and
    // hears of every gap nobody was told of.
    for (c, att) in attached.iter_mut().enumerate() {
        if att.take().is_some() {
            model.ended_attachment(c);
        }
    }
    for (c, (name, pattern)) in CONSUMERS.iter().enumerate() {
        if !model.created[c] {
            continue;
        }
        let mut client = broker.client().await;
        client.subscribe_with(name, json!({"topic":pattern})).await;
        model.attached_now = [c == 0, c == 1];
        let mut att = Attached {
            client,
            holding: BTreeSet::new(),
            seen: BTreeSet::new(),
            seeked: false,
        };
        drain(&mut model, c, &mut att, Duration::from_millis(300)).await;
        assert_eq!(att.holding, model.expected(c), "consumer {name}");
        assert!(
            model.owed_gap[c].is_empty(),
            "consumer {name} was never told of removed seqs {:?}",
            model.owed_gap[c]
        );
    }
}

fn cases() -> u32 {
    std::env::var("WHARF_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), max_shrink_iters: 50, ..ProptestConfig::default() })]

    #[test]
    fn consumers_receive_exactly_what_they_have_not_settled(ops in prop::collection::vec(op(), 5..60)) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(run_case(ops));
    }
}
