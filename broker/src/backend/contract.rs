//! What crosses the backend boundary: the requests a backend takes and what it answers with.
//! Its own module, below the boundary and every backend, so that each backend and the
//! session import it downwards.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use wharf_protocol::{ErrorCode, EventBody, Pattern, Start, Topic};

use crate::outbound::Outbound;

/// Every dead-letter topic starts with this.
pub const DEAD_LETTER_PREFIX: &str = "dead.";

/// The dead-letter topic of a consumer: `dead.<consumer>` (dots that would make an empty
/// token become underscores).
pub fn dead_letter_topic(consumer: &str) -> String {
    let topic = format!("{DEAD_LETTER_PREFIX}{consumer}");
    match Topic::parse(&topic) {
        Ok(_) => topic,
        Err(_) => format!("dead.{}", consumer.replace('.', "_")),
    }
}

/// An event to store. Its `msg_id` is already scoped to its publisher (see
/// [`crate::auth::dedup_key`]): one publisher's ids never answer for another's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub topic: String,
    pub payload: String,
    pub time_ms: u64,
    pub msg_id: Option<String>,
}

/// Where one event was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub seq: u64,
    /// An event with this msg_id was stored earlier (inside the dedup window): nothing new
    /// was stored, and `seq` is the original's.
    pub duplicate: bool,
}

/// What became of one atomic batch of events.
#[derive(Debug)]
pub enum Stored {
    /// Every event of the batch, in order.
    Events(Vec<Published>),
    /// The batch was not stored, for this reason (a limit; on the cluster backend also a
    /// batch JetStream did not confirm in time), while other batches of the same call may
    /// have been: each publish gets its own answer.
    Refused(BackendError),
}

/// The outcome of a write the backend has accepted: resolves once it is durable (on the local
/// disk, or stored by a quorum), never before.
pub type Confirming<T> = BoxFuture<'static, Result<T, BackendError>>;

/// A confirmation that is already there (nothing had to be written).
pub fn confirmed() -> Confirming<()> {
    Box::pin(std::future::ready(Ok(())))
}

/// How a subscriber settles delivered events for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    Ack,
    /// Never redelivered (counted as terminated).
    Term,
}

/// A durable consumer to create when it does not exist yet.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub name: String,
    pub patterns: Vec<Pattern>,
    /// Where a new consumer starts; an existing one keeps its place.
    pub start: Start,
}

/// The per-token consumer limit: a token may hold `max` of the consumers it `covers`.
pub struct Quota<'a> {
    pub owner: &'a str,
    pub max: usize,
    pub covers: &'a (dyn Fn(&str) -> bool + Sync),
}

/// A subscription's settings, with the broker's defaults filled in.
#[derive(Debug, Clone)]
pub struct DeliveryOptions {
    pub ack_wait: Duration,
    /// Events per frame at most (1: plain `event` frames).
    pub batch: usize,
    pub max_in_flight: usize,
    /// 0 means unlimited.
    pub max_deliver: u32,
}

/// Where a subscription's events and notices go: one connection's queue.
#[derive(Clone)]
pub struct Subscriber {
    /// The connection, for logs and takeovers.
    pub session: u64,
    /// The subscription's id on that connection.
    pub sub: Arc<str>,
    pub outbound: Outbound,
    /// Events per frame at most, of what is ready (1: one `event` frame each). A backend may
    /// always send fewer.
    pub batch: usize,
}

/// Which matching events a `history` page holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryFrom {
    /// The newest.
    Newest,
    /// The newest with a seq below this one.
    Before(u64),
    /// The oldest with a seq above this one.
    After(u64),
}

/// Stored events for `history` or `last`, in the order they are sent.
#[derive(Debug, Default)]
pub struct EventsPage {
    pub events: Vec<EventBody>,
    /// More events (history) or topics (last) match beyond this page.
    pub more: bool,
    /// The oldest seq the storage still holds.
    pub first_seq: u64,
}

/// Figures for `stats`.
#[derive(Debug, Clone, Default)]
pub struct StoreStats {
    pub head_seq: u64,
    pub first_seq: u64,
    pub log_bytes: u64,
    pub segments: u64,
    pub state_bytes: u64,
    pub topics: u64,
    pub consumers: u64,
    /// The cluster backend's NATS state.
    pub cluster: Option<wharf_protocol::ClusterInfo>,
}

/// Why a backend refused or failed a request; each maps to one wire error code.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    /// The consumer exists with other topics, or is held in the other mode.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    LimitExceeded(String),
    /// The storage cannot answer now (a cluster without quorum); retrying later may work.
    #[error("{0}")]
    Unavailable(String),
    /// A failure of the storage itself (its message is the cause's).
    #[error(transparent)]
    Failed(Box<dyn std::error::Error + Send + Sync>),
}

impl BackendError {
    pub fn failed(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> BackendError {
        BackendError::Failed(cause.into())
    }

    /// The wire error code a client gets for it.
    pub fn code(&self) -> ErrorCode {
        match self {
            BackendError::NotFound(_) => ErrorCode::NotFound,
            BackendError::BadRequest(_) => ErrorCode::BadRequest,
            BackendError::Conflict(_) => ErrorCode::ConsumerConflict,
            BackendError::LimitExceeded(_) => ErrorCode::LimitExceeded,
            BackendError::Unavailable(_) => ErrorCode::Unavailable,
            BackendError::Failed(_) => ErrorCode::Internal,
        }
    }
}
