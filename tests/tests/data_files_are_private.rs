//! What the broker writes to its data directory (the log, the state view, the lock file) is
//! readable by its own user only: files 0600, directories 0700.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::json;
use wharf_tests::{data_dir, Broker};

fn modes_open_to_others(dir: &Path, found: &mut Vec<String>) {
    let mode = dir.metadata().expect("metadata").permissions().mode();
    if mode & 0o077 != 0 {
        found.push(format!("{} {:o}", dir.display(), mode & 0o777));
    }
    if dir.is_dir() {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            modes_open_to_others(&entry.expect("entry").path(), found);
        }
    }
}

#[tokio::test]
async fn the_data_directory_is_private() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, "");
    let mut c = broker.client().await;
    c.publish("t", json!(1)).await;
    c.subscribe("t", Some("private")).await;
    c.ack("private", &[1]).await;
    let mut found = Vec::new();
    modes_open_to_others(&data, &mut found);
    assert!(found.is_empty(), "readable by others: {found:#?}");
}
