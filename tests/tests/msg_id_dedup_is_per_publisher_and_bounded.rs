//! msg_id deduplication is scoped by the publishing principal (one token's ids never answer
//! for another's), and the table is capped by `dedup_max_entries`: past it a publish with a
//! new msg_id is refused with `limit_exceeded` instead of an id being forgotten inside the
//! window, and what is remembered still deduplicates, across a restart too.

use std::process::Command;

use serde_json::{json, Value};
use wharf_tests::{data_dir, wharf_bin, Backend, Broker, Client};

fn hash(token: &str) -> String {
    let out = Command::new(wharf_bin())
        .args(["token", "hash", token])
        .output()
        .expect("run wharf token hash");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

const BILLING: &str = "billing-token-0123456789";
const SHOP: &str = "shop-token-0123456789";

async fn as_token(broker: &Broker, token: &str) -> Client {
    let mut c = broker.client().await;
    let reply = c.reply(json!({"op":"auth","id":"a","token":token})).await;
    assert_eq!(reply["type"], "ok", "{reply}");
    c
}

async fn publish_with_id(c: &mut Client, topic: &str, msg_id: &str) -> Value {
    c.reply(json!({"op":"publish","id":msg_id,"topic":topic,"payload":1,"msg_id":msg_id}))
        .await
}

async fn one_publishers_msg_ids_never_answer_for_anothers(backend: Backend) {
    let (_tmp, data) = data_dir();
    let config = format!(
        "[auth]\nenabled = true\n\
         [[auth.tokens]]\nname = \"billing\"\nsha256 = \"{}\"\npublish = [\">\"]\n\
         [[auth.tokens]]\nname = \"shop\"\nsha256 = \"{}\"\npublish = [\">\"]\n",
        hash(BILLING),
        hash(SHOP)
    );
    let mut broker = backend.start(&data, &config);
    let mut billing = as_token(&broker, BILLING).await;
    let mut shop = as_token(&broker, SHOP).await;
    let first = publish_with_id(&mut billing, "invoices", "invoice-42").await;
    assert_eq!(
        (first["seq"].clone(), first.get("duplicate")),
        (json!(1), None)
    );
    let other = publish_with_id(&mut shop, "orders", "invoice-42").await;
    assert_eq!(
        (other["seq"].clone(), other.get("duplicate")),
        (json!(2), None),
        "{other}"
    );
    let again = publish_with_id(&mut billing, "invoices", "invoice-42").await;
    assert_eq!(
        (again["seq"].clone(), again["duplicate"].clone()),
        (json!(1), json!(true))
    );

    // The scope survives a restart.
    broker.terminate();
    let broker = backend.start(&data, &config);
    let mut shop = as_token(&broker, SHOP).await;
    let again = publish_with_id(&mut shop, "orders", "invoice-42").await;
    assert_eq!(
        (again["seq"].clone(), again["duplicate"].clone()),
        (json!(2), json!(true))
    );
}

async fn a_full_dedup_table_refuses_new_msg_ids(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "dedup_max_entries = 3");
    let mut c = broker.client().await;
    for id in ["a", "b", "c"] {
        assert_eq!(publish_with_id(&mut c, "t", id).await["type"], "published");
    }
    let refused = publish_with_id(&mut c, "t", "d").await;
    assert_eq!(refused["code"], "limit_exceeded", "{refused}");
    assert!(refused["message"]
        .as_str()
        .unwrap_or_default()
        .contains("dedup_max_entries"));
    // Without a msg_id, or repeating a remembered one, publishing still works.
    assert_eq!(c.publish("t", json!(2)).await, 4);
    let again = publish_with_id(&mut c, "t", "b").await;
    assert_eq!(
        (again["seq"].clone(), again["duplicate"].clone()),
        (json!(2), json!(true))
    );
}

wharf_tests::conformance!(one_publishers_msg_ids_never_answer_for_anothers);

// Embedded-only: `dedup_max_entries` bounds the embedded log's table of remembered msg_ids.
// JetStream bounds its own by the stream's duplicate window, with no count to refuse at.
mod log_only {
    #[tokio::test]
    async fn a_full_dedup_table_refuses_new_msg_ids() {
        super::a_full_dedup_table_refuses_new_msg_ids(wharf_tests::Backend::Log).await
    }
}
