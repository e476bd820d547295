//! Configured limits hold and say so: connections beyond `max_connections` get HTTP 503,
//! subscriptions beyond `max_subscriptions_per_connection` get `limit_exceeded`, and the
//! connection stays usable.

use serde_json::json;
use wharf_tests::{data_dir, Broker};

#[tokio::test]
async fn connections_and_subscriptions_are_bounded() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(
        &data,
        "max_connections = 2\nmax_subscriptions_per_connection = 2",
    );
    let mut a = broker.client().await;
    let _b = broker.client().await;
    let err = tokio_tungstenite::connect_async(&broker.url)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
    assert!(broker.log().contains("at max_connections"));

    a.subscribe("x", None).await;
    a.subscribe("y", Some("c")).await;
    let reply = a.reply(json!({"op":"subscribe","id":3,"topic":"z"})).await;
    assert_eq!(reply["code"], "limit_exceeded", "{reply}");
    assert_eq!(reply["id"], 3);
    assert_eq!(a.publish("x", json!(1)).await, 1);
}

#[tokio::test]
async fn an_idle_connection_without_subscriptions_is_closed() {
    let (_tmp, data) = data_dir();
    let broker = Broker::start(
        &data,
        "idle_timeout = \"200ms\"\nheartbeat_interval = \"50ms\"",
    );
    let mut idle = broker.client().await;
    let mut busy = broker.client().await;
    busy.subscribe("x", None).await;
    let close = idle.closed().await;
    assert_eq!(close, Some((1000, "idle timeout".to_owned())));
    // The subscribed one is still served.
    assert_eq!(busy.publish("x", json!(1)).await, 1);
}
