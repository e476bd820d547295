//! Broker → client frames.

use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{ErrorCode, Id};

/// Every frame the broker sends, tagged by `type`. Clients deserialize it; the broker
/// serializes it (except events on the hot path, see [`EventFrame`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Published {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        seq: u64,
    },
    Subscribed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        sub: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        consumer: Option<String>,
    },
    Ok {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
    },
    Unsubscribed {
        sub: String,
        reason: String,
    },
    /// An event as a client reads it; the broker writes events with [`EventFrame`].
    Event(ReceivedEvent),
    Error {
        /// Always present, `null` when the request had no id or none could be read.
        id: Option<Id>,
        #[serde(deserialize_with = "code_from_str")]
        code: ErrorCode,
        message: String,
    },
}

impl Reply {
    pub fn error(id: Option<Id>, code: ErrorCode, message: impl Into<String>) -> Reply {
        Reply::Error {
            id,
            code,
            message: message.into(),
        }
    }

    pub fn to_json(&self) -> String {
        // Cannot fail: every field is a string, number or raw JSON.
        serde_json::to_string(self).unwrap_or_default()
    }
}

fn code_from_str<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ErrorCode, D::Error> {
    let s = String::deserialize(d)?;
    const ALL: [ErrorCode; 10] = [
        ErrorCode::BadJson,
        ErrorCode::BadRequest,
        ErrorCode::UnknownOp,
        ErrorCode::InvalidTopic,
        ErrorCode::InvalidPattern,
        ErrorCode::TooLarge,
        ErrorCode::NotFound,
        ErrorCode::ConsumerConflict,
        ErrorCode::Unsupported,
        ErrorCode::Internal,
    ];
    ALL.into_iter()
        .find(|c| c.as_str() == s)
        .ok_or_else(|| serde::de::Error::custom(format!("unknown error code {s:?}")))
}

/// One event delivered to one subscription, as the broker writes it: the payload is the
/// publisher's JSON text, copied verbatim.
#[derive(Debug, Serialize)]
pub struct EventFrame<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer: Option<&'a str>,
    pub seq: u64,
    pub topic: &'a str,
    pub payload: &'a RawValue,
    pub published_at: &'a str,
    pub delivery: u32,
}

impl EventFrame<'_> {
    pub const KIND: &'static str = "event";

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// One event as a client reads it. (Raw JSON cannot pass through serde's internally tagged
/// enums, so clients get the payload as a parsed value.)
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReceivedEvent {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    pub seq: u64,
    pub topic: String,
    pub payload: serde_json::Value,
    pub published_at: String,
    pub delivery: u32,
}

/// Formats ms since the Unix epoch as RFC 3339 UTC with milliseconds, as `published_at` is sent.
pub fn format_time_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_frames_always_carry_id() {
        let json = Reply::error(None, ErrorCode::BadJson, "x").to_json();
        assert_eq!(
            json,
            r#"{"type":"error","id":null,"code":"bad_json","message":"x"}"#
        );
        let back: Reply = serde_json::from_str(&json).unwrap();
        assert!(matches!(
            back,
            Reply::Error {
                code: ErrorCode::BadJson,
                ..
            }
        ));
    }

    #[test]
    fn replies_have_the_documented_shape() {
        let json = Reply::Published {
            id: Some(Id::Int(1)),
            seq: 42,
        }
        .to_json();
        assert_eq!(json, r#"{"type":"published","id":1,"seq":42}"#);
        assert_eq!(format_time_ms(1500), "1970-01-01T00:00:01.500Z");
    }
}
