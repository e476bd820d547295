//! Model-based test: random sequences of publish, subscribe, ack, nack, term, disconnect and
//! restart (SIGKILL or SIGTERM) against the real broker, checked against a small model of what
//! each durable consumer must receive.
//!
//! Checked throughout: no event is delivered that was not published, or does not match the
//! consumer, or was settled (acked or termed, confirmed) before; new seqs reach one attachment
//! in increasing order. Checked at the end: each consumer receives exactly the matching
//! published events it has not settled.
//!
//! The suite runs a few cases; more are one variable away:
//! `WHARF_MODEL_CASES=200 cargo test -p wharf-tests --test model_based_consumer_semantics`

use std::collections::BTreeSet;
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
    Restart { kill: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..TOPICS.len()).prop_map(Op::Publish),
        2 => (0..CONSUMERS.len()).prop_map(Op::Attach),
        1 => (0..CONSUMERS.len()).prop_map(Op::Detach),
        3 => (0..CONSUMERS.len(), any::<usize>()).prop_map(|(c, k)| Op::Ack(c, k)),
        1 => (0..CONSUMERS.len(), any::<usize>()).prop_map(|(c, k)| Op::Nack(c, k)),
        1 => (0..CONSUMERS.len(), any::<usize>()).prop_map(|(c, k)| Op::Term(c, k)),
        1 => any::<bool>().prop_map(|kill| Op::Restart { kill }),
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
}

struct Model {
    published: Vec<(u64, &'static str)>,
    settled: [BTreeSet<u64>; 2],
    created: [bool; 2],
}

impl Model {
    fn expected(&self, c: usize) -> BTreeSet<u64> {
        self.published
            .iter()
            .filter(|(seq, topic)| matches(c, topic) && !self.settled[c].contains(seq))
            .map(|(seq, _)| *seq)
            .collect()
    }

    /// Checks one received event frame against the model.
    fn check(&self, c: usize, att: &mut Attached, frame: &serde_json::Value) {
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
        if !att.seen.contains(&seq) {
            if let Some(&last) = att.seen.iter().next_back() {
                assert!(seq > last, "{c}: new seq {seq} after {last}");
            }
        }
        att.seen.insert(seq);
        att.holding.insert(seq);
    }
}

async fn drain(model: &Model, c: usize, att: &mut Attached, wait: Duration) {
    while let Some(frame) = att.client.recv_within(wait).await {
        model.check(c, att, &frame);
    }
}

async fn run_case(ops: Vec<Op>) {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, "");
    let mut publisher = broker.client().await;
    let mut model = Model {
        published: Vec::new(),
        settled: [BTreeSet::new(), BTreeSet::new()],
        created: [false, false],
    };
    let mut attached: [Option<Attached>; 2] = [None, None];

    for op in ops {
        for (c, att) in attached.iter_mut().enumerate() {
            if let Some(att) = att {
                drain(&model, c, att, Duration::ZERO).await;
            }
        }
        match op {
            Op::Publish(t) => {
                let seq = publisher.publish(TOPICS[t], json!(t)).await;
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
                model.created[c] = true;
                attached[c] = Some(Attached {
                    client,
                    holding: BTreeSet::new(),
                    seen: BTreeSet::new(),
                });
            }
            Op::Detach(c) => {
                if let Some(att) = attached[c].take() {
                    att.client.close().await;
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
                let reply = att
                    .client
                    .reply(json!({"op":verb,"id":1,"consumer":name,"seq":seq}))
                    .await;
                assert_eq!(reply["type"], "ok", "{verb} {seq}: {reply}");
                att.holding.remove(&seq);
                if settles {
                    model.settled[c].insert(seq);
                }
                let stashed: Vec<_> = std::iter::from_fn(|| att.client.take_stashed()).collect();
                for frame in stashed {
                    model.check(c, att, &frame);
                }
            }
            Op::Attach(_) => {}
            Op::Restart { kill } => {
                for att in attached.iter_mut() {
                    *att = None;
                }
                if kill {
                    broker.kill9();
                } else {
                    let status = broker.terminate();
                    assert!(status.success(), "{status}\n{}", broker.log());
                }
                broker = Broker::start(&data, "");
                publisher = broker.client().await;
            }
        }
    }

    // Every created consumer, attached fresh, receives exactly what it has not settled.
    for att in attached.iter_mut() {
        *att = None;
    }
    for (c, (name, pattern)) in CONSUMERS.iter().enumerate() {
        if !model.created[c] {
            continue;
        }
        let mut client = broker.client().await;
        client.subscribe_with(name, json!({"topic":pattern})).await;
        let mut att = Attached {
            client,
            holding: BTreeSet::new(),
            seen: BTreeSet::new(),
        };
        drain(&model, c, &mut att, Duration::from_millis(300)).await;
        assert_eq!(att.holding, model.expected(c), "consumer {name}");
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
    fn consumers_receive_exactly_what_they_have_not_settled(ops in prop::collection::vec(op(), 5..40)) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(run_case(ops));
    }
}
