//! docs/PROTOCOL.md is the whole wire contract: every op the broker knows, every error code,
//! and every field of the `subscribed` reply appear in it, as a live broker reports them.

use std::path::Path;

use serde_json::json;
use wharf_protocol::ErrorCode;
use wharf_tests::{data_dir, Broker};

fn protocol_doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/PROTOCOL.md");
    std::fs::read_to_string(&path).expect("read docs/PROTOCOL.md")
}

/// Every error code; the match is exhaustive, so a new code cannot be left out of here.
fn code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::BadJson
        | ErrorCode::BadRequest
        | ErrorCode::UnknownOp
        | ErrorCode::InvalidTopic
        | ErrorCode::InvalidPattern
        | ErrorCode::TooLarge
        | ErrorCode::NotFound
        | ErrorCode::ConsumerConflict
        | ErrorCode::Unsupported
        | ErrorCode::LimitExceeded
        | ErrorCode::Unauthorized
        | ErrorCode::Forbidden
        | ErrorCode::Internal
        | ErrorCode::Unavailable => code.as_str(),
    }
}

#[test]
fn every_error_code_has_a_row_in_the_error_table() {
    let doc = protocol_doc();
    let codes = [
        ErrorCode::BadJson,
        ErrorCode::BadRequest,
        ErrorCode::UnknownOp,
        ErrorCode::InvalidTopic,
        ErrorCode::InvalidPattern,
        ErrorCode::TooLarge,
        ErrorCode::NotFound,
        ErrorCode::ConsumerConflict,
        ErrorCode::Unsupported,
        ErrorCode::LimitExceeded,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
    ];
    for code in codes {
        let row = format!("| `{}` |", code_name(code));
        assert!(
            doc.contains(&row),
            "docs/PROTOCOL.md has no error row {row}"
        );
    }
}

#[tokio::test]
async fn every_op_and_the_subscribed_fields_are_documented() {
    let doc = protocol_doc();
    let (_tmp, data) = data_dir();
    let broker = Broker::start(&data, "");
    let mut client = broker.client().await;

    let reply = client.request(json!({"op":"fly","id":1})).await;
    assert_eq!(reply["code"], "unknown_op", "{reply}");
    let message = reply["message"].as_str().expect("message");
    let known = message.split("known: ").nth(1).expect("the known ops");
    let ops: Vec<&str> = known.split(", ").collect();
    assert!(ops.contains(&"auth"), "{message}");
    for op in &ops {
        let example = format!(r#"{{"op":"{op}""#);
        assert!(
            doc.contains(&example),
            "docs/PROTOCOL.md shows no {example} frame"
        );
        assert!(
            doc.contains(&format!("### {op}")) || doc.contains(&format!("`{op}`")),
            "{op} is not described"
        );
    }
    // The hand-typed session's unknown_op line is the broker's own text.
    let quoted = json!(message).to_string();
    assert!(
        doc.contains(&quoted),
        "the session shows a stale unknown_op message:\n{quoted}"
    );

    for consumer in [Some("doc"), None] {
        let mut frame = json!({"op":"subscribe","id":2,"topic":"orders.>"});
        if let Some(name) = consumer {
            frame["consumer"] = json!(name);
        }
        let reply = client.request(frame).await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        assert!(reply.get("start_seq").is_some(), "{reply}");
        for field in reply.as_object().expect("object").keys() {
            assert!(
                doc.contains(&format!(r#""{field}":"#)),
                "the subscribed field {field} is not in docs/PROTOCOL.md"
            );
        }
    }
    assert!(doc.contains("`start_seq`"), "start_seq is not described");
}
