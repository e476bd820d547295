//! Tokens cannot be guessed at leisure: a connection that sends three invalid tokens is
//! closed (1008) and the broker logs a warning; `wharf token hash` refuses tokens too short
//! to resist guessing.

use std::process::Command;

use serde_json::json;
use wharf_tests::{data_dir, wharf_bin, Backend};

async fn three_invalid_tokens_close_the_connection(backend: Backend) {
    let (_tmp, data) = data_dir();
    let out = Command::new(wharf_bin())
        .args(["token", "hash", "good-token-0123456789"])
        .output()
        .expect("run wharf token hash");
    assert!(out.status.success(), "{out:?}");
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let config = format!(
        "[auth]\nenabled = true\n[[auth.tokens]]\nname = \"app\"\nsha256 = \"{hash}\"\npublish = [\">\"]\n"
    );
    let broker = backend.start(&data, &config);
    let mut c = broker.client().await;
    for guess in ["guess-1", "guess-2"] {
        let reply = c.reply(json!({"op":"auth","id":guess,"token":guess})).await;
        assert_eq!(reply["code"], "unauthorized", "{reply}");
    }
    let reply = c.reply(json!({"op":"auth","id":3,"token":"guess-3"})).await;
    assert_eq!(reply["code"], "unauthorized", "{reply}");
    assert_eq!(
        c.closed().await,
        Some((1008, "too many failed authentications".to_owned()))
    );
    broker.wait_for_log("closing a connection after repeated invalid tokens");

    // A new connection starts over, and the right token still works.
    let mut c = broker.client().await;
    let reply = c
        .reply(json!({"op":"auth","id":1,"token":"good-token-0123456789"}))
        .await;
    assert_eq!(reply["type"], "ok", "{reply}");
}

#[test]
fn token_hash_refuses_short_tokens() {
    let out = Command::new(wharf_bin())
        .args(["token", "hash", "short-token"])
        .output()
        .expect("run wharf token hash");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at least 16 bytes"),
        "{out:?}"
    );
}

wharf_tests::conformance!(three_invalid_tokens_close_the_connection);
