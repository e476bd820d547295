//! An error is one line naming each cause once: `wharf serve` on a port in use says
//! `Address already in use (os error 98)` once, not twice.

use std::net::TcpListener;
use std::process::Command;

use wharf_tests::{data_dir, wharf_bin};

#[test]
fn serve_on_a_port_in_use_names_the_os_error_once() {
    let (tmp, data) = data_dir();
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let port = taken.local_addr().expect("local addr").port();
    let out = Command::new(wharf_bin())
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(&data)
        .current_dir(tmp.path())
        .env_remove("RUST_LOG")
        .output()
        .expect("run wharf serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: cannot listen on"), "{err}");
    assert_eq!(err.matches("os error").count(), 1, "{err}");
    assert_eq!(err.matches("in use").count(), 1, "{err}");
}
