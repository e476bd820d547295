//! `WHARF_*` environment variables override the embedded defaults when there is no config
//! file at all (the container image relies on it), are typed by the key they set, and an
//! error names the variable.

use std::process::Command;

use wharf_tests::wharf_bin;

fn check_config(env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(wharf_bin())
        .args(["serve", "--check-config"])
        .current_dir(dir.path())
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn overrides_apply_with_no_file_and_errors_name_the_variable() {
    let (ok, text) = check_config(&[
        ("WHARF_MAX_IN_FLIGHT", "50"),
        ("WHARF_LISTEN", "127.0.0.1:7799"),
        ("WHARF_DATA_DIR", "2024"),
    ]);
    assert!(ok, "{text}");
    assert!(text.contains("max_in_flight = 50"), "{text}");
    assert!(text.contains("listen = \"127.0.0.1:7799\""), "{text}");
    assert!(text.contains("data_dir = \"2024\""), "{text}");

    let (ok, text) = check_config(&[("WHARF_MAX_IN_FLIGHT", "lots")]);
    assert!(!ok);
    assert!(text.contains("WHARF_MAX_IN_FLIGHT"), "{text}");
    assert!(!text.contains("config.toml"), "no file was read: {text}");
}
