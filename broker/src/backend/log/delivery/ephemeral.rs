//! Live delivery to a subscription without a consumer.

use std::sync::Arc;

use crate::outbound::Frame;
use wharf_protocol::{EventBatch, Reply};

use crate::metrics;
use crate::outbound::{Delivered, Outbound, Unsent};

use super::{batch_full, body_of, event_frame, EventSource};

/// Live delivery to a subscription without a consumer: at-most-once, nothing stored. A
/// subscriber too slow to take what is due skips ahead to the newest event and is told which
/// seqs it missed (`lost`), so it can replay them with `start` if it wants them.
/// With `batch` above 1, what is ready goes out up to `batch` events per frame.
pub async fn run_ephemeral(
    sub: Arc<str>,
    outbound: Outbound,
    mut source: EventSource,
    batch: usize,
) {
    loop {
        let ready = match source.next_batch().await {
            Ok(Some(ready)) => ready,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(sub = &*sub, error = %e, "cannot read the log for delivery");
                return;
            }
        };
        let mut rest = &ready[..];
        while let Some(first) = rest.first() {
            let (frame, count) = if batch > 1 {
                let mut frame = EventBatch::new(&sub, None);
                for ev in rest {
                    frame.push(body_of(ev), 1);
                    if batch_full(&frame, batch) {
                        break;
                    }
                }
                let count = frame.count();
                (Frame::Json(frame.finish()), count)
            } else {
                (event_frame(&sub, None, first, 1), 1)
            };
            rest = &rest[count..];
            match outbound.deliver(frame).await {
                Delivered::Sent => metrics::delivered().increment(count as u64),
                Delivered::Closed => return,
                Delivered::TooSlow => {
                    let from = first.seq;
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
