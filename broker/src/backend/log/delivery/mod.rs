//! Getting durable events to subscribers.
//!
//! * [`Committer`] is the log's [`CommitSink`](crate::backend::log::append::CommitSink): once a batch is synced it applies acks and new
//!   consumers to memory and sled, then publishes the events to the [`Feed`].
//! * The [`Feed`] holds the newest events in memory and the committed head seq; an
//!   [`EventSource`] reads from any seq, from that cache when it can and from the segments
//!   when it must, so live delivery and replay of a long backlog are one code path.
//! * One delivery task per subscription walks its source in seq order. For a durable
//!   consumer it skips what is acked or not matching, counts deliveries, and stops at
//!   `max_in_flight` unacked events until acks make room. Only synced events ever reach it.

mod committer;
mod durable;
mod ephemeral;
mod feed;
mod source;

use std::time::Instant;

use crate::outbound::Frame;
use wharf_protocol::{EventBatch, EventBody, EventFrame};

use crate::backend::log::append::Event;

pub use committer::{checkpoint_records, Committer};
pub use durable::DurableDelivery;
pub use ephemeral::run_ephemeral;
pub use feed::{Feed, Topics};
pub use source::EventSource;

/// An `events` frame stops growing at this size, whatever `batch` allows: a frame is
/// written whole, and a client's frame limit is usually a few MiB.
const BATCH_BYTES: usize = 64 * 1024;

/// The event's frame body, encoded once and shared by every subscription it goes to.
fn body_of(ev: &Event) -> &EventBody {
    ev.frame_body
        .get_or_init(|| EventBody::new(ev.seq, &ev.topic, &ev.payload, ev.time_ms))
}

/// Whether an `events` frame being filled for a subscription that asked for `batch` is full.
fn batch_full(frame: &EventBatch, batch: usize) -> bool {
    frame.count() >= batch || frame.len() >= BATCH_BYTES
}

fn event_frame(sub: &str, consumer: Option<&str>, ev: &Event, delivery: u32) -> Frame {
    let body = body_of(ev);
    let frame = EventFrame {
        sub,
        consumer,
        body,
        delivery,
    };
    Frame::Json(frame.to_json())
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
