//! Error codes carried in `{"type":"error","code":…}` frames.

use serde::Serialize;

/// Every error a client can receive. The string form is part of the wire contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not valid JSON, or not a JSON object.
    BadJson,
    /// A field is missing or has the wrong type or value.
    BadRequest,
    /// `op` names no operation the broker knows.
    UnknownOp,
    /// A topic name breaks the grammar.
    InvalidTopic,
    /// A subscription pattern breaks the grammar.
    InvalidPattern,
    /// The frame or the payload is over the configured limit.
    TooLarge,
    /// The subscription or consumer named does not exist.
    NotFound,
    /// A durable consumer exists with a different pattern.
    ConsumerConflict,
    /// The frame kind is not supported (binary frames).
    Unsupported,
    /// A configured limit was reached (subscriptions per connection).
    LimitExceeded,
    /// Authentication is required, or the token is not valid.
    Unauthorized,
    /// The token does not allow this topic, pattern or consumer.
    Forbidden,
    /// The broker failed; the request had no effect unless stated otherwise.
    Internal,
    /// The storage cannot answer now (the cluster backend's NATS servers are down or have no
    /// quorum); retrying later may work, with the same `msg_id` for a publish.
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::InvalidTopic => "invalid_topic",
            ErrorCode::InvalidPattern => "invalid_pattern",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::NotFound => "not_found",
            ErrorCode::ConsumerConflict => "consumer_conflict",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
