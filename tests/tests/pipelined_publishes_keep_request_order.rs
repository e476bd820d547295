//! Publishes and publish_batches pipelined on one connection are stored in request order:
//! each reply's seqs are above the previous reply's, whatever mix of single events and
//! batches (on the cluster backend a batch without msg_ids is one atomic JetStream batch,
//! which must not be overtaken by a publish sent after it).

use serde_json::json;
use wharf_tests::{data_dir, Backend};

async fn pipelined_publishes_keep_request_order(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "");
    let mut c = broker.client().await;
    let rounds = 20;
    for r in 0..rounds {
        c.send(json!({"op":"publish","id":format!("{r}a"),"topic":"t.x","payload":r}))
            .await;
        let batch: Vec<_> = (0..3)
            .map(|i| json!({"topic":"t.y","payload":{"r":r,"i":i}}))
            .collect();
        c.send(json!({"op":"publish_batch","id":format!("{r}b"),"events":batch}))
            .await;
        c.send(json!({"op":"publish","id":format!("{r}c"),"topic":"t.z","payload":r}))
            .await;
    }
    let mut last = 0;
    for r in 0..rounds {
        for part in ["a", "b", "c"] {
            let reply = c.recv().await;
            assert_eq!(reply["type"], "published", "{reply}");
            assert_eq!(reply["id"], format!("{r}{part}"), "{reply}");
            let seqs: Vec<u64> = match part {
                "b" => reply["seqs"]
                    .as_array()
                    .expect("a batch answers seqs")
                    .iter()
                    .filter_map(|s| s.as_u64())
                    .collect(),
                _ => vec![reply["seq"].as_u64().expect("seq")],
            };
            for seq in seqs {
                assert!(seq > last, "seq {seq} after {last}: {reply}");
                last = seq;
            }
        }
    }
    assert_eq!(last, rounds * 5);
}

wharf_tests::conformance!(pipelined_publishes_keep_request_order);
