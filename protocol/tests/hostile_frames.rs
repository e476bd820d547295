//! Hostile input to the frame parser: arbitrary bytes and arbitrary JSON never panic, and
//! every refusal carries a code and a message. (Property tests stand in for cargo-fuzz, which
//! needs a nightly toolchain this project does not have.)

use proptest::prelude::*;
use serde_json::{json, Value};
use wharf_protocol::{parse_request, Pattern, Topic};

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("op".to_owned()),
        Just("id".to_owned()),
        Just("topic".to_owned()),
        Just("topics".to_owned()),
        Just("payload".to_owned()),
        Just("consumer".to_owned()),
        Just("seq".to_owned()),
        Just("seqs".to_owned()),
        Just("start".to_owned()),
        Just("events".to_owned()),
        Just("mode".to_owned()),
        Just("msg_id".to_owned()),
        ".{0,8}",
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let ops = [
        "publish",
        "subscribe",
        "ack",
        "nack",
        "term",
        "seek",
        "publish_batch",
        "unsubscribe",
        "ping",
        "stats",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::String),
        prop::sample::select(ops.to_vec()).prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::hash_map(key(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = parse_request(&text) {
            prop_assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn arbitrary_json_never_panics_and_refusals_explain(v in arb_json()) {
        match parse_request(&v.to_string()) {
            Ok(req) => {
                // What parses serializes back to something that parses too.
                let again = parse_request(&req.to_json());
                prop_assert!(again.is_ok(), "{} -> {}", v, req.to_json());
            }
            Err(e) => prop_assert!(!e.message.is_empty()),
        }
    }

    #[test]
    fn names_never_panic(s in ".{0,300}") {
        let _ = Topic::parse(&s);
        if let Ok(p) = Pattern::parse(&s) {
            let _ = p.matches("a.b.c");
        }
    }
}
