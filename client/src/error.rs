//! What can go wrong, with the wire's error code when the broker refused something.

use wharf_protocol::ErrorCode;

/// Why a client call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The broker refused the request (`{"type":"error"}`); nothing was done unless the
    /// message says otherwise.
    #[error("the broker refused: {code}: {message}")]
    Refused { code: ErrorCode, message: String },
    /// The client was closed, or the connection dropped before the reply to a request that
    /// is not sent again (an ack: its events are delivered again).
    #[error("the connection is closed")]
    Closed,
    /// The connection dropped and `Options::reconnect` is off: the client is closed. A
    /// request that was waiting for its reply may or may not have been done.
    #[error("the connection to the broker was lost: {0}")]
    Disconnected(String),
    /// No broker could be reached within `Options::connect_timeout` (or, without
    /// `Options::retry_connect`, at the first try): the URL tried last and why.
    #[error("cannot connect to {0}")]
    Connect(String),
    /// Publishes waiting for the connection reached `Options::max_queued`.
    #[error("{0} publishes are waiting for the connection already (Options::max_queued)")]
    QueueFull(usize),
    /// An argument the broker would refuse anyway (a bad topic, a payload that is not JSON).
    #[error("invalid: {0}")]
    Invalid(String),
    /// The outbox file (`Options::outbox`) cannot be used: locked by another client,
    /// damaged, or a write failed (the publish was then not sent).
    #[error("outbox: {0}")]
    Outbox(String),
    /// The broker sent something this client does not understand.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl Error {
    /// The wire's error code, when the broker refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}
