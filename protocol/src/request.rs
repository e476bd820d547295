//! Client → broker frames.
//!
//! Parsing is deliberately in two steps: serde reads the frame into loosely typed fields, then
//! each operation checks its own fields. That is what lets every malformed frame get the most
//! precise [`ErrorCode`] and a message naming the field, with the client's `id` echoed back.
//! The payload is never parsed into a tree: it stays the client's raw JSON text end to end.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::topic::{validate_consumer, Pattern, Topic};
use crate::ErrorCode;

/// A request id chosen by the client: a string or an integer, echoed in every reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Id {
    Int(i64),
    Uint(u64),
    Str(String),
}

impl Id {
    /// The id as an unsigned integer, when it is one.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Id::Int(n) => u64::try_from(*n).ok(),
            Id::Uint(n) => Some(*n),
            Id::Str(_) => None,
        }
    }
}

/// Where a new consumer (or an ephemeral subscription) starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Every event still in the log.
    All,
    /// Only events published after the subscription.
    New,
    /// Events from this seq on.
    Seq(u64),
    /// Events published at or after this time, in ms since the Unix epoch.
    TimeMs(u64),
}

impl Serialize for Start {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Start::All => s.serialize_str("all"),
            Start::New => s.serialize_str("new"),
            Start::Seq(n) => s.serialize_u64(*n),
            Start::TimeMs(ms) => s.serialize_str(&crate::format_time_ms(*ms)),
        }
    }
}

impl Start {
    /// Parses the text form a user types: `all`, `new`, a seq, or an RFC 3339 time.
    pub fn parse(text: &str) -> Result<Start, String> {
        match text {
            "all" => Ok(Start::All),
            "new" => Ok(Start::New),
            _ => {
                if let Ok(n) = text.parse::<u64>() {
                    return Ok(Start::Seq(n));
                }
                let time = humantime::parse_rfc3339_weak(text).map_err(|e| {
                    format!(
                        "start {text:?} is not \"all\", \"new\", a seq or an RFC 3339 time: {e}"
                    )
                })?;
                let ms = time
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or(Duration::ZERO)
                    .as_millis();
                Ok(Start::TimeMs(u64::try_from(ms).unwrap_or(u64::MAX)))
            }
        }
    }
}

/// A well-formed client request.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Publish {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        #[serde(serialize_with = "as_str")]
        topic: Topic,
        payload: Box<RawValue>,
    },
    Subscribe {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        #[serde(serialize_with = "as_str")]
        topic: Pattern,
        #[serde(skip_serializing_if = "Option::is_none")]
        consumer: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        start: Option<Start>,
    },
    Ack {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        consumer: String,
        seqs: Vec<u64>,
    },
    Unsubscribe {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        sub: String,
    },
}

fn as_str<T: std::fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl Request {
    pub fn id(&self) -> Option<&Id> {
        match self {
            Request::Publish { id, .. }
            | Request::Subscribe { id, .. }
            | Request::Ack { id, .. }
            | Request::Unsubscribe { id, .. } => id.as_ref(),
        }
    }

    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: every field is a string, number or raw JSON.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Why a frame was refused: what goes into the error frame.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestError {
    pub id: Option<Id>,
    pub code: ErrorCode,
    pub message: String,
}

impl RequestError {
    fn new(id: &Option<Id>, code: ErrorCode, message: impl Into<String>) -> Self {
        RequestError {
            id: id.clone(),
            code,
            message: message.into(),
        }
    }
}

#[derive(Deserialize)]
struct RawFrame {
    op: Option<Value>,
    id: Option<Value>,
    topic: Option<Value>,
    #[serde(default, deserialize_with = "present_raw")]
    payload: Option<Box<RawValue>>,
    consumer: Option<Value>,
    start: Option<Value>,
    seq: Option<Value>,
    seqs: Option<Value>,
    sub: Option<Value>,
}

/// Keeps `"payload": null` apart from a missing payload: null is a valid payload.
fn present_raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

/// Parses one text frame into a [`Request`], or says precisely why it is not one.
pub fn parse_request(text: &str) -> Result<Request, RequestError> {
    let raw: RawFrame = match serde_json::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let message = match serde_json::from_str::<Value>(text) {
                Ok(_) => "a frame must be a JSON object".to_owned(),
                Err(_) => format!("frame is not valid JSON: {e}"),
            };
            return Err(RequestError::new(&None, ErrorCode::BadJson, message));
        }
    };
    let id = match raw.id {
        None | Some(Value::Null) => None,
        Some(v) => match serde_json::from_value::<Id>(v) {
            Ok(id) => Some(id),
            Err(_) => {
                return Err(RequestError::new(
                    &None,
                    ErrorCode::BadRequest,
                    "field `id` must be a string or an integer",
                ))
            }
        },
    };
    let op = match raw.op {
        Some(Value::String(op)) => op,
        Some(_) => {
            return Err(RequestError::new(
                &id,
                ErrorCode::BadRequest,
                "field `op` must be a string",
            ))
        }
        None => {
            return Err(RequestError::new(
                &id,
                ErrorCode::BadRequest,
                "missing field `op`",
            ))
        }
    };
    let bad = |message: String| RequestError::new(&id, ErrorCode::BadRequest, message);
    match op.as_str() {
        "publish" => {
            let topic = string_field(&raw.topic, "topic").map_err(bad)?;
            let topic = Topic::parse(topic)
                .map_err(|e| RequestError::new(&id, ErrorCode::InvalidTopic, e.0))?;
            let payload = raw
                .payload
                .ok_or_else(|| bad("missing field `payload`".to_owned()))?;
            Ok(Request::Publish { id, topic, payload })
        }
        "subscribe" => {
            let pattern = string_field(&raw.topic, "topic").map_err(bad)?;
            let topic = Pattern::parse(pattern)
                .map_err(|e| RequestError::new(&id, ErrorCode::InvalidPattern, e.0))?;
            let consumer = match &raw.consumer {
                None | Some(Value::Null) => None,
                Some(_) => Some(consumer_field(&raw.consumer, &id)?),
            };
            let start = match &raw.start {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(Start::parse(s).map_err(bad)?),
                Some(Value::Number(n)) => Some(Start::Seq(n.as_u64().ok_or_else(|| {
                    bad("field `start` must be a non-negative integer seq".to_owned())
                })?)),
                Some(_) => {
                    return Err(bad(
                        "field `start` must be \"all\", \"new\", a seq or an RFC 3339 time"
                            .to_owned(),
                    ))
                }
            };
            Ok(Request::Subscribe {
                id,
                topic,
                consumer,
                start,
            })
        }
        "ack" => {
            let consumer = consumer_field(&raw.consumer, &id)?;
            let seqs = match (&raw.seq, &raw.seqs) {
                (Some(seq), None) => vec![seq_value(seq, "seq").map_err(bad)?],
                (None, Some(Value::Array(items))) if !items.is_empty() => items
                    .iter()
                    .map(|v| seq_value(v, "seqs"))
                    .collect::<Result<Vec<u64>, String>>()
                    .map_err(bad)?,
                (None, Some(_)) => {
                    return Err(bad(
                        "field `seqs` must be a non-empty array of seqs".to_owned()
                    ))
                }
                (Some(_), Some(_)) => return Err(bad("give `seq` or `seqs`, not both".to_owned())),
                (None, None) => return Err(bad("missing field `seq` (or `seqs`)".to_owned())),
            };
            Ok(Request::Ack { id, consumer, seqs })
        }
        "unsubscribe" => {
            let sub = string_field(&raw.sub, "sub").map_err(bad)?.to_owned();
            Ok(Request::Unsubscribe { id, sub })
        }
        other => Err(RequestError::new(
            &id,
            ErrorCode::UnknownOp,
            format!("unknown op {other:?}; known: publish, subscribe, ack, unsubscribe"),
        )),
    }
}

fn string_field<'a>(v: &'a Option<Value>, name: &str) -> Result<&'a str, String> {
    match v {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("field `{name}` must be a string")),
        None => Err(format!("missing field `{name}`")),
    }
}

fn consumer_field(v: &Option<Value>, id: &Option<Id>) -> Result<String, RequestError> {
    let name =
        string_field(v, "consumer").map_err(|m| RequestError::new(id, ErrorCode::BadRequest, m))?;
    validate_consumer(name).map_err(|e| RequestError::new(id, ErrorCode::BadRequest, e.0))?;
    Ok(name.to_owned())
}

fn seq_value(v: &Value, name: &str) -> Result<u64, String> {
    v.as_u64()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("field `{name}` must hold positive integer seqs"))
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> RequestError {
        parse_request(text).unwrap_err()
    }

    #[test]
    fn publish_keeps_payload_raw() {
        let r = parse_request(r#"{"op":"publish","id":1,"topic":"a.b","payload":{"x": [1, 2]}}"#)
            .unwrap();
        match r {
            Request::Publish { id, topic, payload } => {
                assert_eq!(id, Some(Id::Int(1)));
                assert_eq!(topic.as_str(), "a.b");
                assert_eq!(payload.get(), r#"{"x": [1, 2]}"#);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn null_payload_is_a_payload() {
        assert!(parse_request(r#"{"op":"publish","topic":"a","payload":null}"#).is_ok());
        assert_eq!(
            err(r#"{"op":"publish","topic":"a"}"#).code,
            ErrorCode::BadRequest
        );
    }

    #[test]
    fn errors_are_precise_and_echo_the_id() {
        assert_eq!(err("{nope").code, ErrorCode::BadJson);
        assert_eq!(err("[1]").code, ErrorCode::BadJson);
        let e = err(r#"{"op":"fly","id":"x"}"#);
        assert_eq!(
            (e.code, e.id),
            (ErrorCode::UnknownOp, Some(Id::Str("x".into())))
        );
        assert_eq!(
            err(r#"{"op":"publish","id":2,"topic":"a..b","payload":1}"#).code,
            ErrorCode::InvalidTopic
        );
        assert_eq!(
            err(r#"{"op":"subscribe","topic":"a.>.b"}"#).code,
            ErrorCode::InvalidPattern
        );
        assert_eq!(
            err(r#"{"op":"ack","consumer":"c","seqs":[]}"#).code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            err(r#"{"op":"ack","consumer":"c","seq":0}"#).code,
            ErrorCode::BadRequest
        );
        assert_eq!(err(r#"{"id":1.5,"op":"ack"}"#).code, ErrorCode::BadRequest);
    }

    #[test]
    fn start_forms() {
        assert_eq!(Start::parse("all"), Ok(Start::All));
        assert_eq!(Start::parse("new"), Ok(Start::New));
        assert_eq!(Start::parse("42"), Ok(Start::Seq(42)));
        assert_eq!(
            Start::parse("1970-01-01T00:00:01.500Z"),
            Ok(Start::TimeMs(1500))
        );
        assert!(Start::parse("yesterday").is_err());
    }

    #[test]
    fn requests_round_trip() {
        let r =
            parse_request(r#"{"op":"subscribe","id":"s","topic":"a.*","consumer":"c1","start":7}"#)
                .unwrap();
        let again = parse_request(&r.to_json()).unwrap();
        assert_eq!(again.to_json(), r.to_json());
    }
}
