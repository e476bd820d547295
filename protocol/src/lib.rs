//! The wharf wire contract, and nothing else.
//!
//! A client talks to the broker over one WebSocket with JSON text frames. This crate owns
//! the shape of those frames so that neither the broker nor the CLI ever spells JSON by hand:
//!
//! * [`request`]: what a client sends (`op` frames), parsed into a typed [`Request`] with a
//!   precise [`ErrorCode`] when it is malformed.
//! * [`reply`]: what the broker sends (`type` frames): replies, pushed events, errors.
//! * [`topic`]: the topic-name and pattern grammar, validation and matching.
//! * [`error`]: the error codes a client can see.
//!
//! It does no I/O, so it is cheap to unit-test and to fuzz.

pub mod error;
pub mod reply;
pub mod request;
pub mod topic;

pub use error::ErrorCode;
pub use reply::{
    format_time_ms, BatchedEvent, ClusterInfo, ConsumerInfo, DeadLetter, EventBatch, EventBody,
    EventFrame, EventsKind, EventsReply, PeerInfo, PresenceChange, PresentClient, ReceivedEvent,
    Reply, Stats, StoredEvent, TopicInfo,
};
pub use request::{
    frame_id, json_nesting_exceeds, now_ms, parse_request, valid_client_id, Id, Mode, NewEvent,
    Page, Request, RequestError, Start, SubscribeOptions, MAX_BATCH, MAX_CLIENT_ID_BYTES,
    MAX_MSG_ID_BYTES,
};
pub use topic::{validate_consumer, Pattern, PatternIndex, Topic, TopicError};

/// The path of the WebSocket endpoint.
pub const WS_PATH: &str = "/ws";
