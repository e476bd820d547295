//! Live delivery to a subscription without a consumer.

use std::sync::Arc;

use crate::outbound::Frame;
use wharf_protocol::Reply;

use crate::metrics;
use crate::outbound::{Delivered, Outbound, Unsent};

use super::{event_frame, EventSource};

/// Live delivery to a subscription without a consumer: at-most-once, nothing stored. A
/// subscriber too slow to take what is due skips ahead to the newest event and is told which
/// seqs it missed (`lost`), so it can replay them with `start` if it wants them.
pub async fn run_ephemeral(sub: Arc<str>, outbound: Outbound, mut source: EventSource) {
    loop {
        let batch = match source.next_batch().await {
            Ok(Some(batch)) => batch,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(sub = &*sub, error = %e, "cannot read the log for delivery");
                return;
            }
        };
        for ev in &batch {
            match outbound.deliver(event_frame(&sub, None, ev, 1)).await {
                Delivered::Sent => metrics::delivered().increment(1),
                Delivered::Closed => return,
                Delivered::TooSlow => {
                    let from = ev.seq;
                    loop {
                        let to = source.skip_to_head();
                        let notice = Reply::Lost {
                            sub: sub.to_string(),
                            from,
                            to,
                        };
                        let deadline = tokio::time::Instant::now() + outbound.slow_limit();
                        match outbound.send_by(Frame::reply(&notice), deadline).await {
                            Ok(()) => break,
                            Err(Unsent::Closed) => return,
                            // Still no room: what came meanwhile is skipped too, and one
                            // notice tells it all.
                            Err(Unsent::TimedOut) => continue,
                        }
                    }
                    break;
                }
            }
        }
    }
}
