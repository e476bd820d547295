//! A second subscribe with the same consumer name takes the consumer over: the old
//! connection is told, and its unacked events go to the new one.

use std::time::Duration;

use serde_json::json;
use wharf_tests::{data_dir, deliveries, seqs, Backend};

async fn second_subscribe_takes_over_and_gets_the_unacked_events(backend: Backend) {
    let (_tmp, data) = data_dir();
    let broker = backend.start(&data, "");
    let mut old = broker.client().await;
    let old_sub = old.subscribe("chat.>", Some("phone")).await;
    let mut p = broker.client().await;
    for i in 1..=3 {
        p.publish("chat.room1", json!(i)).await;
    }
    assert_eq!(seqs(&old.events(3).await), vec![1, 2, 3]);
    old.ack("phone", &[1]).await;

    // The old socket still looks alive; the client reconnected on a new one.
    let mut new = broker.client().await;
    let new_sub = new.subscribe("chat.>", Some("phone")).await;
    assert_ne!(old_sub, new_sub);
    let notice = old.recv().await;
    assert_eq!(notice["type"], "unsubscribed");
    assert_eq!(notice["sub"], old_sub.as_str());
    assert_eq!(notice["reason"], "taken_over");

    let moved = new.events(2).await;
    assert_eq!(seqs(&moved), vec![2, 3]);
    assert_eq!(deliveries(&moved), vec![2, 2]);

    // Only the new connection receives what comes next.
    p.publish("chat.room1", json!(4)).await;
    assert_eq!(seqs(&new.events(1).await), vec![4]);
    assert_eq!(old.recv_within(Duration::from_millis(300)).await, None);
    // Acks from the new holder work, and the old one can still ack by name.
    new.ack("phone", &[2, 3]).await;
    old.ack("phone", &[4]).await;
}

wharf_tests::conformance!(second_subscribe_takes_over_and_gets_the_unacked_events);
