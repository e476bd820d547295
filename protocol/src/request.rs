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

/// How connections attached to one durable consumer share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// One connection holds the consumer; a new subscribe takes it over.
    Exclusive,
    /// Every attached connection gets a share of the events.
    Shared,
}

/// Per-subscription settings; `None` means the broker's default. All but `batch` are a
/// durable consumer's and need one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SubscribeOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack_wait_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_deliver: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// Up to this many events per frame (`{"type":"events"}`), from what is ready to go:
    /// the broker never waits to fill a frame. `None` or 1: one `event` frame each.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<u32>,
}

/// The most events a subscription may ask for in one frame.
pub const MAX_BATCH: u32 = 1000;

/// One event of a publish or a publish_batch.
#[derive(Debug, Clone, Serialize)]
pub struct NewEvent {
    #[serde(serialize_with = "as_str")]
    pub topic: Topic,
    pub payload: Box<RawValue>,
    /// Publishes with the same `msg_id` inside the dedup window are stored once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msg_id: Option<String>,
}

/// The longest `msg_id`, in bytes.
pub const MAX_MSG_ID_BYTES: usize = 256;
/// The most patterns one subscribe may give.
pub const MAX_PATTERNS: usize = 64;

/// A well-formed client request.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Publish {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        #[serde(flatten)]
        event: NewEvent,
    },
    PublishBatch {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        events: Vec<NewEvent>,
    },
    Subscribe {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        #[serde(serialize_with = "all_as_str")]
        topics: Vec<Pattern>,
        #[serde(skip_serializing_if = "Option::is_none")]
        consumer: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        start: Option<Start>,
        #[serde(flatten)]
        options: SubscribeOptions,
        /// The connection's client is present in each (exact) topic while subscribed.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        presence: bool,
        /// `join` and `leave` pushes for the (exact) topics.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        join_leave: bool,
    },
    Ack {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        consumer: String,
        seqs: Vec<u64>,
    },
    Nack {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        consumer: String,
        seqs: Vec<u64>,
        delay_ms: u64,
    },
    Term {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        consumer: String,
        seqs: Vec<u64>,
    },
    Progress {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        consumer: String,
        seqs: Vec<u64>,
    },
    Seek {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        consumer: String,
        /// A seq or a time; `all` and `new` are accepted too.
        start: Start,
    },
    ConsumerInfo {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        consumer: String,
    },
    DeleteConsumer {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        consumer: String,
    },
    Unsubscribe {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        sub: String,
    },
    /// Answered with `pong`: lets clients that cannot see WebSocket pings (browsers) check
    /// that the connection is alive.
    Ping {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
    },
    /// Authenticates the connection (browsers cannot set an Authorization header).
    Auth {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        token: String,
    },
    /// The broker summary.
    Stats {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
    },
    /// Topics with events, with counts, by name: one page.
    Topics {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        #[serde(flatten)]
        page: Page,
    },
    /// Durable consumers, as `consumer_info` describes one, by name: one page.
    Consumers {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        #[serde(flatten)]
        page: Page,
    },
    /// Stored events matching a pattern, newest first or from a seq on; consumes nothing.
    History {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        #[serde(rename = "topic", serialize_with = "as_str")]
        pattern: Pattern,
        #[serde(skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
        /// Page backwards: the newest events below this seq.
        #[serde(skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
        /// Page forwards: the oldest events above this seq (never with `before`).
        #[serde(skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
    },
    /// The newest event of each topic matching a pattern.
    Last {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        #[serde(rename = "topic", serialize_with = "as_str")]
        pattern: Pattern,
        #[serde(skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Names the connection's client for presence.
    Hello {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        #[serde(skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        /// A JSON object, when given.
        #[serde(skip_serializing_if = "Option::is_none")]
        info: Option<Value>,
    },
    /// Who is present in a topic.
    Presence {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        #[serde(serialize_with = "as_str")]
        topic: Topic,
    },
}

/// The longest client id of a `hello`, in bytes.
pub const MAX_CLIENT_ID_BYTES: usize = 128;

/// Whether `id` may name a client: 1 to [`MAX_CLIENT_ID_BYTES`] bytes of `A-Z a-z 0-9 _ . - @ :`.
pub fn valid_client_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_CLIENT_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-@:".contains(&b))
}

/// Which part of a listing a `topics` or `consumers` request asks for: at most `limit` names
/// ([`Page::DEFAULT_LIMIT`] when absent, never more than [`Page::MAX_LIMIT`]), after `cursor`
/// (the previous reply's `next_cursor`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Page {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

impl Page {
    pub const DEFAULT_LIMIT: usize = 100;
    pub const MAX_LIMIT: usize = 1000;

    /// How many names this page may hold.
    pub fn max_entries(&self) -> usize {
        self.limit
            .map_or(Page::DEFAULT_LIMIT, |n| n as usize)
            .min(Page::MAX_LIMIT)
    }

    /// Takes this page out of `items` (sorted by `name`, no duplicate names): the items after
    /// the cursor, at most [`Page::max_entries`] of them, and the cursor of the next page when more
    /// remain.
    pub fn select<'a, T>(
        &self,
        items: &'a [T],
        name: impl Fn(&T) -> &str,
    ) -> (&'a [T], Option<String>) {
        let start = match &self.cursor {
            Some(cursor) => items.partition_point(|item| name(item) <= cursor.as_str()),
            None => 0,
        };
        let rest = &items[start..];
        let taken = &rest[..rest.len().min(self.max_entries())];
        let next = match taken.last() {
            Some(last) if taken.len() < rest.len() => Some(name(last).to_owned()),
            _ => None,
        };
        (taken, next)
    }
}

fn as_str<T: std::fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn all_as_str<T: std::fmt::Display, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|t| t.to_string()))
}

/// A request's `id` field, borrowed as the request is (one list of the variants for reading
/// and for setting it).
macro_rules! id_field {
    ($request:expr) => {
        match $request {
            Request::Publish { id, .. }
            | Request::PublishBatch { id, .. }
            | Request::Subscribe { id, .. }
            | Request::Ack { id, .. }
            | Request::Nack { id, .. }
            | Request::Term { id, .. }
            | Request::Progress { id, .. }
            | Request::Seek { id, .. }
            | Request::ConsumerInfo { id, .. }
            | Request::DeleteConsumer { id, .. }
            | Request::Unsubscribe { id, .. }
            | Request::Ping { id }
            | Request::Auth { id, .. }
            | Request::Stats { id }
            | Request::Topics { id, .. }
            | Request::Consumers { id, .. }
            | Request::History { id, .. }
            | Request::Last { id, .. }
            | Request::Hello { id, .. }
            | Request::Presence { id, .. } => id,
        }
    };
}

impl Request {
    pub fn id(&self) -> Option<&Id> {
        id_field!(self).as_ref()
    }

    /// Sets the id its reply will echo (a client numbering its requests).
    pub fn set_id(&mut self, id: Option<Id>) {
        *id_field!(self) = id;
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
    topics: Option<Value>,
    #[serde(default, deserialize_with = "present_raw")]
    payload: Option<Box<RawValue>>,
    msg_id: Option<Value>,
    events: Option<Vec<RawEvent>>,
    consumer: Option<Value>,
    start: Option<Value>,
    seq: Option<Value>,
    seqs: Option<Value>,
    time: Option<Value>,
    sub: Option<Value>,
    mode: Option<Value>,
    ack_wait_ms: Option<Value>,
    max_deliver: Option<Value>,
    max_in_flight: Option<Value>,
    batch: Option<Value>,
    delay_ms: Option<Value>,
    token: Option<Value>,
    limit: Option<Value>,
    cursor: Option<Value>,
    before: Option<Value>,
    after: Option<Value>,
    client: Option<Value>,
    info: Option<Value>,
    presence: Option<Value>,
    join_leave: Option<Value>,
}

#[derive(Deserialize)]
struct RawEvent {
    topic: Option<Value>,
    #[serde(default, deserialize_with = "present_raw")]
    payload: Option<Box<RawValue>>,
    msg_id: Option<Value>,
}

/// Keeps `"payload": null` apart from a missing payload: null is a valid payload.
fn present_raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

const OPS: &str = "publish, publish_batch, subscribe, ack, nack, term, progress, seek, \
                   consumer_info, delete_consumer, unsubscribe, ping, auth, stats, topics, consumers, \
                   history, last, hello, presence";

/// A plain `publish` frame, read without building a JSON tree: borrowed strings, the payload
/// only validated. Anything it does not take (another op, an unknown or repeated field, an
/// escaped string, a bad value) goes the general way, which also gives the precise errors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlainPublish<'a> {
    op: &'a str,
    #[serde(default)]
    id: Option<Id>,
    topic: &'a str,
    #[serde(borrow)]
    payload: &'a RawValue,
    #[serde(default)]
    msg_id: Option<&'a str>,
}

fn plain_publish(text: &str) -> Option<Request> {
    let p: PlainPublish = serde_json::from_str(text).ok()?;
    if p.op != "publish" {
        return None;
    }
    let topic = Topic::parse(p.topic).ok()?;
    let msg_id = match p.msg_id {
        None => None,
        Some(m) if !m.is_empty() && m.len() <= MAX_MSG_ID_BYTES => Some(m.to_owned()),
        Some(_) => return None,
    };
    let payload = RawValue::from_string(p.payload.get().to_owned()).ok()?;
    Some(Request::Publish {
        id: p.id,
        event: NewEvent {
            topic,
            payload,
            msg_id,
        },
    })
}

/// Parses one text frame into a [`Request`], or says precisely why it is not one.
pub fn parse_request(text: &str) -> Result<Request, RequestError> {
    // Publishes are most of the traffic; callgrind put JSON parsing at ~3,500 instructions
    // per publish on the general path.
    match plain_publish(text) {
        Some(request) => Ok(request),
        None => parse_general(text),
    }
}

fn parse_general(text: &str) -> Result<Request, RequestError> {
    let raw: RawFrame = match serde_json::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let (code, message) = match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(_)) => (ErrorCode::BadRequest, format!("malformed frame: {e}")),
                Ok(_) => (
                    ErrorCode::BadJson,
                    "a frame must be a JSON object".to_owned(),
                ),
                Err(_) => (ErrorCode::BadJson, format!("frame is not valid JSON: {e}")),
            };
            let id = serde_json::from_str::<Value>(text)
                .ok()
                .and_then(|v| v.get("id").cloned())
                .and_then(|v| serde_json::from_value::<Id>(v).ok());
            return Err(RequestError::new(&id, code, message));
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
    let consumer = || consumer_field(&raw.consumer, &id);
    match op.as_str() {
        "publish" => {
            let event = new_event(&raw.topic, raw.payload, &raw.msg_id, &id)?;
            Ok(Request::Publish { id, event })
        }
        "publish_batch" => {
            let Some(events) = raw.events else {
                return Err(bad(
                    "missing field `events` (an array of {topic, payload})".into()
                ));
            };
            if events.is_empty() {
                return Err(bad("field `events` must not be empty".into()));
            }
            let events = events
                .into_iter()
                .map(|e| new_event(&e.topic, e.payload, &e.msg_id, &id))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Request::PublishBatch { id, events })
        }
        "subscribe" => {
            let topics = patterns(&raw.topic, &raw.topics, &id)?;
            let consumer = match &raw.consumer {
                None | Some(Value::Null) => None,
                Some(_) => Some(consumer()?),
            };
            let start = match &raw.start {
                None | Some(Value::Null) => None,
                Some(v) => Some(start_value(v).map_err(bad)?),
            };
            let mode = match &raw.mode {
                None | Some(Value::Null) => None,
                Some(Value::String(m)) if m == "exclusive" => Some(Mode::Exclusive),
                Some(Value::String(m)) if m == "shared" => Some(Mode::Shared),
                Some(_) => {
                    return Err(bad(
                        "field `mode` must be \"exclusive\" or \"shared\"".into()
                    ))
                }
            };
            let options = SubscribeOptions {
                mode,
                ack_wait_ms: positive(&raw.ack_wait_ms, "ack_wait_ms").map_err(bad)?,
                max_deliver: count(&raw.max_deliver, "max_deliver", 0).map_err(bad)?,
                max_in_flight: count(&raw.max_in_flight, "max_in_flight", 1).map_err(bad)?,
                batch: match count(&raw.batch, "batch", 1).map_err(bad)? {
                    Some(n) if n > MAX_BATCH => {
                        return Err(bad(format!(
                            "field `batch` must be an integer from 1 to {MAX_BATCH}"
                        )))
                    }
                    n => n,
                },
            };
            let durable_only = SubscribeOptions {
                batch: None,
                ..options.clone()
            };
            if consumer.is_none() && durable_only != SubscribeOptions::default() {
                return Err(bad(
                    "mode, ack_wait_ms, max_deliver and max_in_flight need a `consumer`".into(),
                ));
            }
            let presence = flag(&raw.presence, "presence").map_err(bad)?;
            let join_leave = flag(&raw.join_leave, "join_leave").map_err(bad)?;
            if presence || join_leave {
                if let Some(p) = topics.iter().find(|p| !p.is_exact()) {
                    return Err(RequestError::new(
                        &id,
                        ErrorCode::InvalidPattern,
                        format!("presence and join_leave take exact topics; {p} has a wildcard"),
                    ));
                }
            }
            Ok(Request::Subscribe {
                id,
                topics,
                consumer,
                start,
                options,
                presence,
                join_leave,
            })
        }
        "ack" | "term" | "progress" | "nack" => {
            let consumer = consumer()?;
            let seqs = seqs_field(&raw.seq, &raw.seqs).map_err(bad)?;
            Ok(match op.as_str() {
                "ack" => Request::Ack { id, consumer, seqs },
                "term" => Request::Term { id, consumer, seqs },
                "progress" => Request::Progress { id, consumer, seqs },
                _ => {
                    let delay_ms = match &raw.delay_ms {
                        None | Some(Value::Null) => 0,
                        Some(v) => v.as_u64().ok_or_else(|| {
                            bad("field `delay_ms` must be a non-negative integer".into())
                        })?,
                    };
                    Request::Nack {
                        id,
                        consumer,
                        seqs,
                        delay_ms,
                    }
                }
            })
        }
        "seek" => {
            let consumer = consumer()?;
            let start = match (&raw.seq, &raw.time, &raw.start) {
                (Some(v), None, None) | (None, Some(v), None) | (None, None, Some(v)) => {
                    start_value(v).map_err(bad)?
                }
                (None, None, None) => return Err(bad("missing field `seq` (or `time`)".into())),
                _ => return Err(bad("give one of `seq`, `time` or `start`".into())),
            };
            Ok(Request::Seek {
                id,
                consumer,
                start,
            })
        }
        "consumer_info" => Ok(Request::ConsumerInfo {
            consumer: consumer()?,
            id,
        }),
        "delete_consumer" => Ok(Request::DeleteConsumer {
            consumer: consumer()?,
            id,
        }),
        "unsubscribe" => {
            let sub = string_field(&raw.sub, "sub").map_err(bad)?.to_owned();
            Ok(Request::Unsubscribe { id, sub })
        }
        "ping" => Ok(Request::Ping { id }),
        "auth" => {
            let token = string_field(&raw.token, "token").map_err(bad)?.to_owned();
            Ok(Request::Auth { id, token })
        }
        "stats" => Ok(Request::Stats { id }),
        "topics" | "consumers" => {
            let page = Page {
                limit: count(&raw.limit, "limit", 1).map_err(bad)?,
                cursor: match &raw.cursor {
                    None | Some(Value::Null) => None,
                    Some(_) => Some(string_field(&raw.cursor, "cursor").map_err(bad)?.to_owned()),
                },
            };
            Ok(match op.as_str() {
                "topics" => Request::Topics { id, page },
                _ => Request::Consumers { id, page },
            })
        }
        "history" | "last" => {
            let pattern = string_field(&raw.topic, "topic").map_err(bad)?;
            let pattern = Pattern::parse(pattern)
                .map_err(|e| RequestError::new(&id, ErrorCode::InvalidPattern, e.0))?;
            let limit = count(&raw.limit, "limit", 1).map_err(bad)?;
            if op == "last" {
                return Ok(Request::Last { id, pattern, limit });
            }
            let seq = |v: &Option<Value>, name| match v {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(Some)
                    .ok_or_else(|| bad(format!("field `{name}` must be a seq"))),
            };
            let (before, after) = (seq(&raw.before, "before")?, seq(&raw.after, "after")?);
            if before.is_some() && after.is_some() {
                return Err(bad("give `before` or `after`, not both".into()));
            }
            Ok(Request::History {
                id,
                pattern,
                limit,
                before,
                after,
            })
        }
        "hello" => {
            let client = match &raw.client {
                None | Some(Value::Null) => None,
                Some(Value::String(c)) if valid_client_id(c) => Some(c.clone()),
                Some(_) => {
                    return Err(bad(format!(
                        "field `client` must be 1 to {MAX_CLIENT_ID_BYTES} bytes of A-Z a-z 0-9 _ . - @ :"
                    )))
                }
            };
            let info = match raw.info {
                None | Some(Value::Null) => None,
                Some(v @ Value::Object(_)) => Some(v),
                Some(_) => return Err(bad("field `info` must be a JSON object".into())),
            };
            Ok(Request::Hello { id, client, info })
        }
        "presence" => {
            let topic = string_field(&raw.topic, "topic").map_err(bad)?;
            let topic = Topic::parse(topic)
                .map_err(|e| RequestError::new(&id, ErrorCode::InvalidTopic, e.0))?;
            Ok(Request::Presence { id, topic })
        }
        other => Err(RequestError::new(
            &id,
            ErrorCode::UnknownOp,
            format!("unknown op {other:?}; known: {OPS}"),
        )),
    }
}

fn new_event(
    topic: &Option<Value>,
    payload: Option<Box<RawValue>>,
    msg_id: &Option<Value>,
    id: &Option<Id>,
) -> Result<NewEvent, RequestError> {
    let bad = |m: String| RequestError::new(id, ErrorCode::BadRequest, m);
    let topic = string_field(topic, "topic").map_err(bad)?;
    let topic =
        Topic::parse(topic).map_err(|e| RequestError::new(id, ErrorCode::InvalidTopic, e.0))?;
    let payload = payload.ok_or_else(|| bad("missing field `payload`".to_owned()))?;
    let msg_id = match msg_id {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) if !m.is_empty() && m.len() <= MAX_MSG_ID_BYTES => Some(m.clone()),
        Some(_) => {
            return Err(bad(format!(
                "field `msg_id` must be a string of 1 to {MAX_MSG_ID_BYTES} bytes"
            )))
        }
    };
    Ok(NewEvent {
        topic,
        payload,
        msg_id,
    })
}

fn patterns(
    topic: &Option<Value>,
    topics: &Option<Value>,
    id: &Option<Id>,
) -> Result<Vec<Pattern>, RequestError> {
    let bad = |m: &str| RequestError::new(id, ErrorCode::BadRequest, m);
    let texts: Vec<&str> = match (topic, topics) {
        (Some(_), None) => vec![string_field(topic, "topic").map_err(|m| bad(&m))?],
        (None, Some(Value::Array(items))) if !items.is_empty() && items.len() <= MAX_PATTERNS => {
            items
                .iter()
                .map(|v| {
                    v.as_str()
                        .ok_or_else(|| bad("field `topics` must hold strings"))
                })
                .collect::<Result<_, _>>()?
        }
        (None, Some(_)) => {
            return Err(bad(&format!(
                "field `topics` must be an array of 1 to {MAX_PATTERNS} patterns"
            )))
        }
        (Some(_), Some(_)) => return Err(bad("give `topic` or `topics`, not both")),
        (None, None) => return Err(bad("missing field `topic` (or `topics`)")),
    };
    let mut out: Vec<Pattern> = Vec::with_capacity(texts.len());
    for text in texts {
        let p = Pattern::parse(text)
            .map_err(|e| RequestError::new(id, ErrorCode::InvalidPattern, e.0))?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

fn start_value(v: &Value) -> Result<Start, String> {
    match v {
        Value::String(s) => Start::parse(s),
        Value::Number(n) => n
            .as_u64()
            .map(Start::Seq)
            .ok_or_else(|| "a start seq must be a non-negative integer".to_owned()),
        _ => Err("`start` must be \"all\", \"new\", a seq or an RFC 3339 time".to_owned()),
    }
}

fn flag(v: &Option<Value>, name: &str) -> Result<bool, String> {
    match v {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(format!("field `{name}` must be true or false")),
    }
}

fn positive(v: &Option<Value>, name: &str) -> Result<Option<u64>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => Err(format!("field `{name}` must be a positive integer")),
        },
    }
}

fn count(v: &Option<Value>, name: &str, min: u64) -> Result<Option<u32>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v
            .as_u64()
            .filter(|&n| n >= min)
            .and_then(|n| u32::try_from(n).ok())
        {
            Some(n) => Ok(Some(n)),
            None => Err(format!(
                "field `{name}` must be an integer from {min} to {}",
                u32::MAX
            )),
        },
    }
}

fn seqs_field(seq: &Option<Value>, seqs: &Option<Value>) -> Result<Vec<u64>, String> {
    match (seq, seqs) {
        (Some(seq), None) => Ok(vec![seq_value(seq, "seq")?]),
        (None, Some(Value::Array(items))) if !items.is_empty() => {
            items.iter().map(|v| seq_value(v, "seqs")).collect()
        }
        (None, Some(_)) => Err("field `seqs` must be a non-empty array of seqs".to_owned()),
        (Some(_), Some(_)) => Err("give `seq` or `seqs`, not both".to_owned()),
        (None, None) => Err("missing field `seq` (or `seqs`)".to_owned()),
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

/// The `id` of a frame that is not read otherwise (one over the size limit): its reply
/// still echoes it, so a client can tell which request was refused.
pub fn frame_id(text: &str) -> Option<Id> {
    #[derive(Deserialize)]
    struct IdOnly {
        #[serde(default)]
        id: Option<Id>,
    }
    serde_json::from_str::<IdOnly>(text).ok()?.id
}

/// Milliseconds since the Unix epoch, now.
/// Whether JSON text nests arrays and objects more than `max` deep. One pass over the bytes,
/// no recursion and no allocation, so it is safe on any input; strings (with their escapes)
/// are skipped. Text shorter than `max` brackets cannot exceed it and is not scanned.
pub fn json_nesting_exceeds(text: &str, max: usize) -> bool {
    if text.len() <= max {
        return false;
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in text.as_bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

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

    #[test]
    fn nesting_depth() {
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        assert!(!json_nesting_exceeds(&deep(128), 128));
        assert!(json_nesting_exceeds(&deep(129), 128));
        assert!(!json_nesting_exceeds(
            r#"{"a":"[[[[[[[[[[","b":[{"c":1}]}"#,
            3
        ));
        assert!(!json_nesting_exceeds(r#"["\"[[[[[[[[[[[[[["]"#, 2));
        assert!(json_nesting_exceeds(r#"{"a":{"b":{"c":[]}}}"#, 3));
    }

    fn err(text: &str) -> RequestError {
        parse_request(text).unwrap_err()
    }

    #[test]
    fn batch_is_from_1_to_max_and_needs_no_consumer() {
        let batch = |text: &str| match parse_request(text) {
            Ok(Request::Subscribe { options, .. }) => options.batch,
            other => panic!("{other:?}"),
        };
        assert_eq!(batch(r#"{"op":"subscribe","topic":"a"}"#), None);
        assert_eq!(
            batch(r#"{"op":"subscribe","topic":"a","batch":64}"#),
            Some(64)
        );
        assert_eq!(
            batch(r#"{"op":"subscribe","topic":"a","consumer":"c","batch":1000}"#),
            Some(1000)
        );
        for bad in ["0", "1001", "-1", "\"8\"", "1.5"] {
            let e = err(&format!(
                r#"{{"op":"subscribe","topic":"a","batch":{bad}}}"#
            ));
            assert_eq!(e.code, ErrorCode::BadRequest, "{bad}");
            assert!(e.message.contains("batch"), "{}", e.message);
        }
    }

    #[test]
    fn publish_keeps_payload_raw() {
        let r = parse_request(r#"{"op":"publish","id":1,"topic":"a.b","payload":{"x": [1, 2]}}"#)
            .unwrap();
        match r {
            Request::Publish { id, event } => {
                assert_eq!(id, Some(Id::Int(1)));
                assert_eq!(event.topic.as_str(), "a.b");
                assert_eq!(event.payload.get(), r#"{"x": [1, 2]}"#);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_plain_publish_path_agrees_with_the_general_one() {
        let frames = [
            r#"{"op":"publish","id":1,"topic":"a.b","payload":{"x":[1,2]}}"#,
            r#"{"op":"publish","id":"k\"1","topic":"a","payload":null,"msg_id":"m-1"}"#,
            r#"{"op":"publish","id":null,"topic":"a","payload":"s","msg_id":null}"#,
            r#"{"payload":[1],"topic":"x.y-z_9","op":"publish","id":18446744073709551615}"#,
            r#"{"op":"publish","id":-3,"topic":"a","payload":1.5}"#,
        ];
        for f in frames {
            let plain = plain_publish(f).unwrap_or_else(|| panic!("not plain: {f}"));
            let general = parse_general(f).unwrap();
            assert_eq!(format!("{plain:?}"), format!("{general:?}"), "{f}");
        }
        // What the plain path leaves to the general one, which gives the precise errors.
        let general = [
            r#"{"op":"publish","topic":"a..b","payload":1}"#,
            r#"{"op":"publish","topic":"a","payload":1,"msg_id":""}"#,
            r#"{"op":"publish","topic":"a","payload":1,"extra":2}"#,
            r#"{"op":"publish","topic":"a","payload":1,"topic":"b"}"#,
            r#"{"op":"publish","topic":"\u0061","payload":1}"#,
            r#"{"op":"publish","id":1.5,"topic":"a","payload":1}"#,
            r#"{"op":"publish","topic":"a"}"#,
            r#"{"op":"ack","consumer":"c","seq":1}"#,
        ];
        for f in general {
            assert!(plain_publish(f).is_none(), "{f}");
        }
        assert_eq!(err(general[0]).code, ErrorCode::InvalidTopic);
        assert_eq!(err(general[6]).code, ErrorCode::BadRequest);
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
    fn extended_operations_parse() {
        let r = parse_request(
            r#"{"op":"subscribe","topics":["a.*","b.>","a.*"],"consumer":"c","mode":"shared","ack_wait_ms":50,"max_deliver":3,"max_in_flight":7}"#,
        )
        .unwrap();
        match r {
            Request::Subscribe {
                topics, options, ..
            } => {
                assert_eq!(topics.len(), 2);
                assert_eq!(options.mode, Some(Mode::Shared));
                assert_eq!(
                    (
                        options.ack_wait_ms,
                        options.max_deliver,
                        options.max_in_flight
                    ),
                    (Some(50), Some(3), Some(7))
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_request(r#"{"op":"nack","consumer":"c","seq":3,"delay_ms":10}"#),
            Ok(Request::Nack { delay_ms: 10, .. })
        ));
        assert!(matches!(
            parse_request(r#"{"op":"seek","consumer":"c","time":"1970-01-01T00:00:01Z"}"#),
            Ok(Request::Seek {
                start: Start::TimeMs(1000),
                ..
            })
        ));
        assert!(matches!(
            parse_request(
                r#"{"op":"publish_batch","events":[{"topic":"a","payload":1,"msg_id":"m"}]}"#
            ),
            Ok(Request::PublishBatch { .. })
        ));
        let e = parse_request(
            r#"{"op":"publish_batch","id":4,"events":[{"topic":"a..b","payload":1}]}"#,
        )
        .unwrap_err();
        assert_eq!((e.code, e.id), (ErrorCode::InvalidTopic, Some(Id::Int(4))));
        let e =
            parse_request(r#"{"op":"subscribe","id":5,"topic":"a","mode":"shared"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = parse_request(r#"{"op":"publish","id":6,"topic":"a","payload":1,"msg_id":7}"#)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = parse_request(r#"{"op":"publish_batch","id":7,"events":"x"}"#).unwrap_err();
        assert_eq!((e.code, e.id), (ErrorCode::BadRequest, Some(Id::Int(7))));
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
