//! Cluster, Jepsen-style: NATS nodes and wharf nodes SIGKILLed and restarted in turn (each
//! NATS node becomes, or is, the stream's leader at some point) while a publisher keeps
//! publishing with msg_ids through whichever wharf node is up, retrying an unanswered
//! publish on the other node with the same msg_id. Afterwards the stream is read from the
//! start: every confirmed publish is there under its seq (lost 0), nothing was stored that
//! was never sent (unexpected 0), and no msg_id was stored twice (duplicates 0).
//! `WHARF_NATS_KILLS` sets how many kills (default 4: two of each; CI runs the default).

use std::collections::{BTreeMap, HashMap};

use serde_json::json;
use wharf_tests::{data_dir, nats, Backend, Broker};

#[tokio::test]
async fn cluster_nodes_killed_under_publish_load_lose_nothing() {
    if !Backend::Nats.runnable() {
        return;
    }
    let kills: usize = std::env::var("WHARF_NATS_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(4);
    let mut cluster = nats::Cluster::start();
    let config = format!(
        "{}nats.publish_timeout = \"15s\"\n",
        nats::node_config(&cluster.urls(), "jepsen")
    );
    let (_a_tmp, a_data) = data_dir();
    let (_b_tmp, b_data) = data_dir();
    let mut wharf = [
        Broker::start(&a_data, &config),
        Broker::start(&b_data, &config),
    ];
    for node in &wharf {
        node.wait_ready();
    }
    let mut up = 0;
    let mut p = wharf[up].client().await;

    let per_round = 40;
    let mut confirmed: BTreeMap<u64, u64> = BTreeMap::new(); // i -> seq
    let mut failed = 0;
    let mut i = 0u64;
    for round in 0..=kills {
        if round > 0 && round % 2 == 1 {
            // A NATS node: publishing goes on with two of three (a new leader if needed).
            let node = &mut cluster.nodes[(round / 2) % 3];
            node.kill9();
            for _ in 0..per_round / 2 {
                i += 1;
                publish(&mut p, i, &mut confirmed, &mut failed).await;
            }
            node.restart();
        } else if round > 0 {
            // The wharf node the publisher uses: it moves to the other, then the dead one
            // comes back on its data dir.
            wharf[up].kill9();
            let dead = up;
            up = 1 - up;
            p = wharf[up].client().await;
            for _ in 0..per_round / 2 {
                i += 1;
                publish(&mut p, i, &mut confirmed, &mut failed).await;
            }
            let data = if dead == 0 { &a_data } else { &b_data };
            wharf[dead] = Broker::start(data, &config);
            wharf[dead].wait_ready();
        }
        for _ in 0..per_round / 2 {
            i += 1;
            publish(&mut p, i, &mut confirmed, &mut failed).await;
        }
    }
    let broker = &wharf[up];

    // Read everything back from the start.
    let mut r = broker.client().await;
    let subscribed = r
        .reply(json!({"op":"subscribe","id":1,"topic":"load","start":"all"}))
        .await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    let stats = r.reply(json!({"op":"stats","id":2})).await;
    let head = stats["head_seq"].as_u64().unwrap();
    let mut stored: HashMap<u64, u64> = HashMap::new(); // seq -> i
    let mut duplicates = 0;
    let mut seen_i = std::collections::HashSet::new();
    while stored.len() < head as usize {
        let event = r.recv().await;
        assert_eq!(event["type"], "event", "{event}");
        let n = event["payload"]["i"].as_u64().unwrap();
        if !seen_i.insert(n) {
            duplicates += 1;
        }
        stored.insert(event["seq"].as_u64().unwrap(), n);
    }
    let lost = confirmed
        .iter()
        .filter(|(n, seq)| stored.get(seq) != Some(n))
        .count();
    let unexpected = stored.values().filter(|&&n| n == 0 || n > i).count();
    eprintln!(
        "kills {kills}, publishes {i}, confirmed {}, failed {failed}, stored {}, lost {lost}, unexpected {unexpected}, duplicates {duplicates}",
        confirmed.len(),
        stored.len()
    );
    assert_eq!((lost, unexpected, duplicates), (0, 0, 0));
}

async fn publish(
    p: &mut wharf_tests::Client,
    i: u64,
    confirmed: &mut BTreeMap<u64, u64>,
    failed: &mut usize,
) {
    let reply = p
        .reply(json!({"op":"publish","id":i,"topic":"load","payload":{"i":i},"msg_id":format!("m{i}")}))
        .await;
    match reply["type"].as_str() {
        Some("published") => {
            confirmed.insert(i, reply["seq"].as_u64().unwrap());
        }
        _ => {
            assert_eq!(reply["code"], "unavailable", "{reply}");
            *failed += 1;
        }
    }
}
