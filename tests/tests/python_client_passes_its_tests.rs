//! Runs the Python client's own tests (`clients/python/tests/`, pytest) against the real broker
//! binary: once on the embedded backend, once on a two-node cluster (two `wharf serve` nodes on
//! one NATS stream per test, clients given both nodes' URLs; one test SIGKILLs a node under a
//! client's durable subscription). The tests start, SIGKILL and restart their own brokers from
//! `WHARF_BIN` on temporary data dirs, as the JS client's do. Without python3, `websockets` or
//! `pytest` the test says so and passes, unless `WHARF_REQUIRE_PYTHON=1` (CI sets it).

use std::path::Path;
use std::process::Command;

use wharf_tests::{nats, wharf_bin, Backend};

#[test]
fn the_python_client_passes_its_tests_against_a_real_broker() {
    run_pytest(&[]);
}

/// The same tests against two wharf nodes on the cluster backend (a 3-node NATS cluster): with
/// `WHARF_TEST_NATS_URLS` set, `clients/python/tests/broker.py` starts every test's broker as
/// two nodes on one stream, and the test that needs two nodes runs too.
#[test]
fn the_python_client_passes_its_tests_against_a_two_node_cluster() {
    if !Backend::Nats.runnable() {
        return;
    }
    let urls = nats::shared().lock().unwrap().urls().join(",");
    if let Some(report) = run_pytest(&[("WHARF_TEST_NATS_URLS", &urls)]) {
        // Nothing skipped: the two-node test ran.
        assert!(!report.contains("skipped"), "{report}");
    }
}

/// What is missing to run the tests: python3, or one of its modules.
fn missing_python() -> Option<String> {
    let probe = Command::new("python3")
        .args(["-c", "import websockets.asyncio.client, pytest"])
        .output();
    match probe {
        Err(_) => Some("python3 is not installed".into()),
        Ok(out) if !out.status.success() => Some(format!(
            "python3 lacks websockets (13+) or pytest ({}); `python3 -m pip install websockets pytest`",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => None,
    }
}

/// Runs pytest on the Python client's tests; returns its report, or None when Python or its
/// modules are missing (and not required).
fn run_pytest(env: &[(&str, &str)]) -> Option<String> {
    if let Some(missing) = missing_python() {
        assert!(
            std::env::var_os("WHARF_REQUIRE_PYTHON").is_none(),
            "WHARF_REQUIRE_PYTHON is set but {missing}"
        );
        eprintln!("skipped: {missing}");
        return None;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/python");
    let out = Command::new("python3")
        .args([
            "-m",
            "pytest",
            "tests",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
        ])
        .current_dir(&dir)
        .env("WHARF_BIN", wharf_bin())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("WHARF_TEST_NATS_URLS")
        .envs(env.iter().copied())
        .output()
        .expect("run python3 -m pytest");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "pytest failed:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains(" passed"), "no Python test ran:\n{report}");
    assert!(!report.contains(" failed"), "{report}");
    Some(report)
}
