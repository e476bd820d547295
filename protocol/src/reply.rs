//! Broker → client frames.

use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

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

/// One event delivered to one subscription, as the broker writes it. The payload is the
/// publisher's JSON text, already validated at publish, copied in verbatim: it is never
/// parsed again on the way out.
#[derive(Debug)]
pub struct EventFrame<'a> {
    pub sub: &'a str,
    pub consumer: Option<&'a str>,
    pub seq: u64,
    pub topic: &'a str,
    pub payload: &'a str,
    pub published_at: &'a str,
    pub delivery: u32,
}

impl EventFrame<'_> {
    pub fn to_json(&self) -> String {
        let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let mut out = String::with_capacity(128 + self.payload.len() + self.topic.len());
        out.push_str(r#"{"type":"event","sub":"#);
        out.push_str(&quote(self.sub));
        if let Some(consumer) = self.consumer {
            out.push_str(r#","consumer":"#);
            out.push_str(&quote(consumer));
        }
        out.push_str(&format!(r#","seq":{},"topic":"#, self.seq));
        out.push_str(&quote(self.topic));
        out.push_str(r#","payload":"#);
        out.push_str(self.payload);
        out.push_str(r#","published_at":"#);
        out.push_str(&quote(self.published_at));
        out.push_str(&format!(r#","delivery":{}}}"#, self.delivery));
        out
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

    #[test]
    fn event_frames_read_back_as_events() {
        let json = EventFrame {
            sub: "s\"1",
            consumer: Some("c"),
            seq: 9,
            topic: "a.b",
            payload: r#"{"k":[1,"x"]}"#,
            published_at: "1970-01-01T00:00:01.500Z",
            delivery: 2,
        }
        .to_json();
        let back: Reply = serde_json::from_str(&json).unwrap();
        match back {
            Reply::Event(ev) => {
                assert_eq!((ev.sub.as_str(), ev.seq, ev.delivery), ("s\"1", 9, 2));
                assert_eq!(ev.payload, serde_json::json!({"k":[1,"x"]}));
                assert_eq!(ev.consumer.as_deref(), Some("c"));
            }
            other => panic!("{other:?}"),
        }
    }
}
