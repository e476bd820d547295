//! After a clean stop every byte of the log was confirmed: damage at its end is not a torn
//! write to cut quietly but lost data, and the broker refuses to start until told to repair.

use serde_json::json;
use wharf_tests::{data_dir, Broker};

#[tokio::test]
async fn a_damaged_last_record_after_a_clean_stop_stops_the_broker() {
    let (_tmp, data) = data_dir();
    let mut broker = Broker::start(&data, "");
    let mut p = broker.client().await;
    for i in 0..5 {
        p.publish("d.a", json!(i)).await;
    }
    broker.terminate();
    let seg = data.join("log").join(format!("{:020}.seg", 1));
    let len = seg.metadata().unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    file.set_len(len - 4).unwrap();
    drop(file);

    let (status, log) = match Broker::try_start(&data, "") {
        Ok(_) => panic!("a log cut short after a clean stop was accepted"),
        Err(failed) => failed,
    };
    assert!(!status.success());
    assert!(log.contains("clean stop"), "{log}");

    // --repair accepts the loss, says so, and serves what is left.
    let broker = Broker::try_start_with(&data, "", &["--repair"]).unwrap_or_else(|(_, log)| {
        panic!("--repair did not start:\n{log}");
    });
    let mut c = broker.client().await;
    let reply = c.reply(json!({"op":"stats","id":1})).await;
    assert_eq!(reply["head_seq"], 4, "{reply}");
}
