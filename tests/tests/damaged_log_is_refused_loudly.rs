//! Damage to confirmed data stops the broker with the file and offset; a torn write at the
//! very end (never confirmed) is cut off and the broker starts.

use std::fs::OpenOptions;
use std::io::Write;

use serde_json::json;
use wharf_tests::{data_dir, seqs, Broker};

fn only_segment(data: &std::path::Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(data.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    assert_eq!(segs.len(), 1, "{segs:?}");
    segs.pop().unwrap()
}

#[tokio::test]
async fn a_flipped_byte_in_the_log_stops_the_broker_with_its_location() {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, "");
    let mut c = broker.client().await;
    for i in 0..20 {
        c.publish("a.b", json!({"i": i, "pad": "xxxxxxxxxxxxxxxx"}))
            .await;
    }
    broker.kill9();
    let seg = only_segment(&data);
    let mut bytes = std::fs::read(&seg).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();

    let (status, log) = match Broker::try_start(&data, "") {
        Ok(_) => panic!("the broker started on a damaged log"),
        Err(failed) => failed,
    };
    assert!(!status.success());
    assert!(log.contains("damaged log"), "{log}");
    assert!(log.contains(&seg.display().to_string()), "{log}");
    assert!(log.contains("at byte"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains("--repair"), "{log}");
    // Nothing was cut or rewritten.
    assert_eq!(std::fs::read(&seg).unwrap(), bytes);

    // Asked to, the broker cuts the damaged record out, says so, and serves the rest.
    let broker = match Broker::try_start_with(&data, "", &["--repair"]) {
        Ok(b) => b,
        Err((status, log)) => panic!("--repair did not start ({status}):\n{log}"),
    };
    assert!(
        broker.log().contains("repair: removed damaged bytes"),
        "{}",
        broker.log()
    );
    let mut c = broker.client().await;
    let reply = c
        .reply(json!({"op":"subscribe","id":1,"topic":"a.b","start":"all"}))
        .await;
    assert_eq!(reply["type"], "subscribed");
    let got = seqs(&c.events(19).await);
    assert_eq!(got.len(), 19, "exactly the damaged event is gone: {got:?}");
    assert!(got.windows(2).all(|w| w[0] < w[1]));
    let missing: Vec<u64> = (1..=20).filter(|s| !got.contains(s)).collect();
    assert_eq!(missing.len(), 1, "{missing:?}");
    // New events continue after the last one.
    assert_eq!(c.publish("a.b", json!("after")).await, 21);
}

#[tokio::test]
async fn a_torn_write_at_the_end_is_cut_and_the_broker_starts() {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, "");
    let mut c = broker.client().await;
    for i in 1..=3 {
        c.publish("a", json!(i)).await;
    }
    broker.kill9();
    let seg = only_segment(&data);
    // A record header that promises 4000 bytes, and only 10 of them.
    let mut torn = Vec::new();
    torn.extend_from_slice(&4000u32.to_le_bytes());
    torn.extend_from_slice(&[7u8; 18]);
    OpenOptions::new()
        .append(true)
        .open(&seg)
        .unwrap()
        .write_all(&torn)
        .unwrap();

    let broker = Broker::start(&data, "");
    assert!(broker.log().contains("torn"), "{}", broker.log());
    let mut c = broker.client().await;
    assert_eq!(c.publish("a", json!(4)).await, 4);
    c.send(json!({"op":"subscribe","id":1,"topic":"a","start":"all"}))
        .await;
    assert_eq!(c.recv().await["type"], "subscribed");
    assert_eq!(seqs(&c.events(4).await), vec![1, 2, 3, 4]);
}
