//! Runs the browser client's own tests (`clients/js/test/`, Node's test runner) against the
//! real broker binary. Without Node the test says so and passes, unless
//! `WHARF_REQUIRE_NODE=1` (CI sets it).

use std::path::Path;
use std::process::Command;

use wharf_tests::{nats, wharf_bin, Backend};

#[test]
fn the_js_client_passes_its_tests_against_a_real_broker() {
    run_js_tests(&[]);
}

/// The same tests with the broker on the cluster backend (a 3-node NATS cluster).
#[test]
fn the_js_client_passes_its_tests_against_the_cluster_backend() {
    if !Backend::Nats.runnable() {
        return;
    }
    let urls = nats::shared().lock().unwrap().urls().join(",");
    run_js_tests(&[("WHARF_TEST_NATS_URLS", &urls)]);
}

fn run_js_tests(env: &[(&str, &str)]) {
    let node = Command::new("node").arg("--version").output();
    let Ok(version) = node else {
        assert!(
            std::env::var("WHARF_REQUIRE_NODE").is_err(),
            "WHARF_REQUIRE_NODE is set but node is not installed"
        );
        eprintln!("skipped: node is not installed");
        return;
    };
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    // The global WebSocket needs Node 20 with a flag, or Node 22+.
    let flag = if version.starts_with("v20.") || version.starts_with("v21.") {
        vec!["--experimental-websocket"]
    } else {
        vec![]
    };
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/js/test");
    let out = Command::new("node")
        .args(flag)
        .arg("--test")
        .arg(&tests)
        .env("WHARF_BIN", wharf_bin())
        .envs(env.iter().copied())
        .output()
        .expect("run node --test");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node --test failed:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("# fail 0"), "{report}");
    assert!(!report.contains("# pass 0"), "no JS test ran:\n{report}");
}
