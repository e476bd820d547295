//! A full disk: publishes that cannot be stored get an `internal` error and are not stored;
//! everything confirmed stays readable and acks still work (the log keeps a reserve for them);
//! when space comes back, publishing goes on by itself, with seqs that continue where the
//! confirmed ones stopped.
//!
//! Needs a small filesystem: the test mounts a size-limited tmpfs (root on Linux). Where
//! mounting is not allowed it says so and passes, unless `WHARF_REQUIRE_MOUNT=1`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use wharf_tests::{seqs, Broker};

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(at: &Path, size: &str) -> Option<Mount> {
    std::fs::create_dir_all(at).ok()?;
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok.then(|| Mount(at.to_owned()))
}

#[tokio::test]
async fn a_full_disk_refuses_new_events_keeps_old_ones_and_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let point = tmp.path().join("small");
    let Some(_mount) = mount_tmpfs(&point, "24m") else {
        assert!(
            std::env::var("WHARF_REQUIRE_MOUNT").is_err(),
            "WHARF_REQUIRE_MOUNT is set but tmpfs cannot be mounted"
        );
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    };
    // Ballast to free later, standing for space that comes back.
    let ballast = point.join("ballast");
    std::fs::write(&ballast, vec![0u8; 6 << 20]).unwrap();
    let data = point.join("data");
    let mut broker = Broker::start(&data, "");
    let mut c = broker.client().await;
    c.subscribe("big", Some("reader")).await;
    let mut p = broker.client().await;

    let pad = "d".repeat(60 * 1024);
    let mut confirmed = Vec::new();
    let full = loop {
        assert!(confirmed.len() < 400, "the disk never filled");
        let reply = p
            .reply(json!({"op":"publish","id":1,"topic":"big","payload":{"pad":pad}}))
            .await;
        match reply["type"].as_str() {
            Some("published") => confirmed.push(reply["seq"].as_u64().unwrap()),
            _ => break reply,
        }
    };
    eprintln!(
        "filled after {} at {:?}",
        confirmed.len(),
        std::time::Instant::now()
    );
    assert_eq!(full["code"], "internal", "{full}");
    assert!(
        full["message"]
            .as_str()
            .unwrap()
            .contains("nothing was stored"),
        "{full}"
    );
    assert!(!confirmed.is_empty());

    // Acks still go through while publishes are refused.
    c.events(2).await;
    c.ack("reader", &[confirmed[0]]).await;
    let refused = p
        .reply(json!({"op":"publish","id":2,"topic":"big","payload":"x"}))
        .await;
    assert_eq!(refused["code"], "internal", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("disk is full"),
        "{refused}"
    );

    // Reads go on: everything confirmed is there.
    let mut r = broker.client().await;
    let reply = r
        .reply(json!({"op":"subscribe","id":1,"topic":"big","start":"all"}))
        .await;
    assert_eq!(reply["type"], "subscribed");
    assert_eq!(seqs(&r.events(confirmed.len()).await), confirmed);

    // Space comes back: the next publish is stored, right after the last confirmed seq.
    std::fs::remove_file(&ballast).unwrap();
    let next = p.publish("big", json!("small again")).await;
    assert_eq!(next, confirmed.last().unwrap() + 1);
    assert_eq!(seqs(&r.events(1).await), vec![next]);

    eprintln!("recovered at {:?}", std::time::Instant::now());
    // And a restart finds exactly the confirmed events.
    broker.kill9();
    let broker = Broker::start(&data, "");
    let mut r = broker.client().await;
    let reply = r
        .reply(json!({"op":"subscribe","id":1,"topic":"big","start":"all"}))
        .await;
    assert_eq!(reply["type"], "subscribed");
    let mut all = confirmed.clone();
    all.push(next);
    assert_eq!(seqs(&r.events(all.len()).await), all);
    drop(broker);
}
