//! `wharf serve` reads its config, lets flags win, and refuses bad settings by name.

use std::process::Command;

use wharf_tests::{data_dir, wharf_bin, Broker};

fn serve_with(config: &str) -> (bool, String) {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(wharf_bin())
        .args(["serve", "--config"])
        .arg(&path)
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_keys_and_bad_values_are_refused_by_name() {
    for (config, key) in [
        ("listne = \"127.0.0.1:0\"", "listne"),
        ("listen = \"not an address\"", "listen"),
        ("heartbeat_interval = \"often\"", "heartbeat_interval"),
        ("max_in_flight = 0", "max_in_flight"),
        ("max_frame_bytes = \"big\"", "max_frame_bytes"),
    ] {
        let (ok, err) = serve_with(config);
        assert!(!ok, "{config} was accepted");
        assert!(err.contains(key), "{config}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let (ok, err) = serve_with("log_level = \"info\"\nlisten = \"127.0.0.1:0\"\n[extra]\nx = 1");
    assert!(!ok && err.contains("extra"), "{err}");
}

#[test]
fn a_missing_config_file_is_named() {
    let out = Command::new(wharf_bin())
        .args(["serve", "--config", "/nonexistent/wharf.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/wharf.toml"));
}

#[test]
fn flags_override_the_config_and_port_zero_is_logged() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, "");
    assert!(broker.url.starts_with("ws://127.0.0.1:"), "{}", broker.url);
    assert!(!broker.url.ends_with(":0/ws"), "{}", broker.url);
    // A second broker on the same data dir is refused with a clear message.
    let out = Command::new(wharf_bin())
        .args(["serve", "--config"])
        .arg(&broker.config_path)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another wharf process"), "{err}");
}
