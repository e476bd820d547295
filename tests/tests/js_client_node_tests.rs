//! Runs the browser client's own tests (`clients/js/test/`, Node's test runner) against the
//! real broker binary: once on the embedded backend, once on a two-node cluster (two `wharf
//! serve` nodes on one NATS stream per test, clients given both nodes' URLs, publishers and
//! subscribers on different nodes; one test SIGKILLs a node under a client's durable
//! subscription). Without Node the test says so and passes, unless `WHARF_REQUIRE_NODE=1` (CI
//! sets it).

use std::path::Path;
use std::process::Command;

use wharf_tests::{nats, wharf_bin, Backend};

#[test]
fn the_js_client_passes_its_tests_against_a_real_broker() {
    run_js_tests(&[]);
}

/// The same tests against two wharf nodes on the cluster backend (a 3-node NATS cluster):
/// with `WHARF_TEST_NATS_URLS` set, `clients/js/test/broker.mjs` starts every test's broker
/// as two nodes on one stream, and the tests that need two nodes run too.
#[test]
fn the_js_client_passes_its_tests_against_a_two_node_cluster() {
    if !Backend::Nats.runnable() {
        return;
    }
    let urls = nats::shared().lock().unwrap().urls().join(",");
    let report = run_js_tests(&[("WHARF_TEST_NATS_URLS", &urls)]);
    if let Some(report) = report {
        // Nothing skipped: the two-node tests ran.
        assert!(report.contains("# skipped 0"), "{report}");
    }
}

/// Runs `node --test` on the JS client's tests; returns its TAP report, or None when Node is
/// not installed (and not required).
fn run_js_tests(env: &[(&str, &str)]) -> Option<String> {
    let node = Command::new("node").arg("--version").output();
    let Ok(version) = node else {
        assert!(
            std::env::var("WHARF_REQUIRE_NODE").is_err(),
            "WHARF_REQUIRE_NODE is set but node is not installed"
        );
        eprintln!("skipped: node is not installed");
        return None;
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
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "node --test failed:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("# fail 0"), "{report}");
    assert!(!report.contains("# pass 0"), "no JS test ran:\n{report}");
    Some(report)
}
