//! A connection's outbound queue: the frames waiting for the session's writer, bounded in
//! frames and in bytes, and the way a delivery task has a connection closed when its
//! subscriber stays too slow to drain it. The delivery tasks and the session both hold it; it
//! depends on neither.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use wharf_protocol::Reply;

/// What a connection sends: wharf's own frames. Only the session's writer turns them into
/// WebSocket messages, so nothing below the session knows the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A reply, push or event, as JSON text.
    Json(String),
    /// A heartbeat.
    Ping,
}

impl Frame {
    pub fn reply(reply: &Reply) -> Frame {
        Frame::Json(reply.to_json())
    }

    /// The bytes it takes on the wire (before framing).
    pub fn len(&self) -> usize {
        match self {
            Frame::Json(text) => text.len(),
            Frame::Ping => 0,
        }
    }
}

/// A frame in a connection's outbound queue, holding its share of the queue's byte budget
/// until the writer takes it.
pub struct Queued {
    pub frame: Frame,
    _bytes: OwnedSemaphorePermit,
}

/// A connection's outbound queue, bounded in frames and in bytes, and the way to have the
/// connection closed when a subscriber stays too slow to drain it.
#[derive(Clone)]
pub struct Outbound {
    frames: mpsc::Sender<Queued>,
    /// Permits are bytes: a frame waits until the queue's frames add up to no more than
    /// `byte_budget` with it.
    bytes: Arc<Semaphore>,
    byte_budget: u32,
    evict: mpsc::Sender<String>,
    /// Subscriptions the backend ended, for the session to let go of (their presence).
    ended: mpsc::UnboundedSender<Arc<str>>,
    slow_limit: Duration,
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsent {
    /// The connection is gone.
    Closed,
    /// The queue had no room before the deadline.
    TimedOut,
}

/// How a delivery went.
pub enum Delivered {
    Sent,
    /// The connection is gone.
    Closed,
    /// The queue stayed full for the slow-consumer limit.
    TooSlow,
}

impl Outbound {
    /// `byte_budget` is capped at `u32::MAX` (the most permits one frame can take).
    pub fn new(
        frames: mpsc::Sender<Queued>,
        byte_budget: usize,
        evict: mpsc::Sender<String>,
        ended: mpsc::UnboundedSender<Arc<str>>,
        slow_limit: Duration,
    ) -> Outbound {
        let byte_budget = u32::try_from(byte_budget).unwrap_or(u32::MAX).max(1);
        Outbound {
            frames,
            bytes: Arc::new(Semaphore::new(byte_budget as usize)),
            byte_budget,
            evict,
            ended,
            slow_limit,
        }
    }

    /// The backend ended subscription `sub` (taken over, deleted): the subscriber is told
    /// (`unsubscribed` with `reason`; never waited on: the old connection of a takeover is
    /// often half dead), and so is the session, which lets go of what the subscription
    /// held (its presence and join/leave notices).
    pub fn unsubscribed(&self, sub: &str, reason: &str) {
        let notice = Reply::Unsubscribed {
            sub: sub.to_owned(),
            reason: reason.to_owned(),
        };
        let _best_effort = self.try_send(Frame::reply(&notice));
        let _session_gone = self.ended.send(Arc::from(sub));
    }

    /// The bytes a frame takes from the budget; a frame larger than the whole budget takes
    /// all of it (it waits for an empty queue rather than forever).
    fn cost(&self, msg: &Frame) -> u32 {
        u32::try_from(msg.len())
            .unwrap_or(u32::MAX)
            .clamp(1, self.byte_budget)
    }

    /// Waits for room for `msg` (bytes, then a frame slot) and queues it.
    async fn queue(&self, msg: Frame) -> Result<(), Unsent> {
        let permit = self
            .bytes
            .clone()
            .acquire_many_owned(self.cost(&msg))
            .await
            .map_err(|_| Unsent::Closed)?;
        let queued = Queued {
            frame: msg,
            _bytes: permit,
        };
        self.frames.send(queued).await.map_err(|_| Unsent::Closed)
    }

    /// Queues a frame, waiting for room until `deadline` at the latest: a peer that does not
    /// read must not hold its connection (and the task that serves it) forever.
    pub async fn send_by(&self, msg: Frame, deadline: tokio::time::Instant) -> Result<(), Unsent> {
        match tokio::time::timeout_at(deadline, self.queue(msg)).await {
            Ok(queued) => queued,
            Err(_) => Err(Unsent::TimedOut),
        }
    }

    /// Queues a frame if there is room now.
    pub fn try_send(&self, msg: Frame) -> Result<(), mpsc::error::TrySendError<Frame>> {
        let Ok(permit) = self.bytes.clone().try_acquire_many_owned(self.cost(&msg)) else {
            return Err(mpsc::error::TrySendError::Full(msg));
        };
        let queued = Queued {
            frame: msg,
            _bytes: permit,
        };
        self.frames.try_send(queued).map_err(|e| match e {
            mpsc::error::TrySendError::Full(q) => mpsc::error::TrySendError::Full(q.frame),
            mpsc::error::TrySendError::Closed(q) => mpsc::error::TrySendError::Closed(q.frame),
        })
    }

    /// Queues a pushed frame, waiting at most the slow-consumer limit for room.
    pub async fn deliver(&self, msg: Frame) -> Delivered {
        // Room now is the common case; a timer is set only when the queue is full.
        let msg = match self.try_send(msg) {
            Ok(()) => return Delivered::Sent,
            Err(mpsc::error::TrySendError::Closed(_)) => return Delivered::Closed,
            Err(mpsc::error::TrySendError::Full(msg)) => msg,
        };
        match tokio::time::timeout(self.slow_limit, self.queue(msg)).await {
            Ok(Ok(())) => Delivered::Sent,
            Ok(Err(_)) => Delivered::Closed,
            Err(_) => Delivered::TooSlow,
        }
    }

    /// Asks the connection to close because its subscriber stayed too slow to drain it.
    pub fn evict_slow(&self) {
        self.evict(format!(
            "slow consumer: nothing read for {:?}; reconnect to resume",
            self.slow_limit
        ));
    }

    /// Asks the connection to close with `reason`.
    pub fn evict(&self, reason: String) {
        let _already_asked = self.evict.try_send(reason);
    }

    pub fn slow_limit(&self) -> Duration {
        self.slow_limit
    }
}
