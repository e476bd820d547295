//! Broker → client frames.

use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{ErrorCode, Id};

/// Every frame the broker sends, tagged by `type`. Clients deserialize it; the broker
/// serializes it (except events on the hot path, see [`EventFrame`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// `seq` for a publish, `seqs` for a publish_batch. `duplicate` is true when the publish
    /// (or, for a batch, any of its events) repeated a msg_id already stored: the seq is then
    /// the original's and nothing new was stored.
    Published {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seqs: Option<Vec<u64>>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        duplicate: bool,
    },
    ConsumerInfo(ConsumerInfo),
    /// Boxed: the largest reply by far, and rare.
    Stats(Box<Stats>),
    /// One page of topics; `next_cursor`, when present, asks for the next one.
    Topics {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        topics: Vec<TopicInfo>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next_cursor: Option<String>,
    },
    /// One page of consumers; `next_cursor`, when present, asks for the next one.
    Consumers {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        consumers: Vec<ConsumerInfo>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next_cursor: Option<String>,
    },
    Subscribed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        sub: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        consumer: Option<String>,
        /// The first seq this subscription can deliver; a client that resumes an ephemeral
        /// subscription from here misses nothing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start_seq: Option<u64>,
    },
    Ok {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
    },
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
    },
    Unsubscribed {
        sub: String,
        reason: String,
    },
    /// Retention removed events `from..=to` of a durable consumer before it settled them.
    Gap {
        consumer: String,
        from: u64,
        to: u64,
    },
    /// An ephemeral subscriber was too slow: events with seqs `from..=to` matching its
    /// patterns were skipped.
    Lost {
        sub: String,
        from: u64,
        to: u64,
    },
    /// The connection's token (a JWT) expires at `exp` (seconds since the Unix epoch): send a
    /// fresh one with `auth` before then, or the connection is closed with 4001.
    TokenExpiring {
        exp: u64,
    },
    /// An event as a client reads it; the broker writes events with [`EventFrame`].
    Event(ReceivedEvent),
    /// Several events of one subscription that asked for `batch`, in seq order as single
    /// frames would have come; the broker writes it with [`EventBatch`].
    Events {
        sub: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        consumer: Option<String>,
        events: Vec<BatchedEvent>,
    },
    /// Stored events matching a pattern, oldest first; the broker writes it with
    /// [`EventsReply`]. `more`: more match beyond the page; `first_seq`: the oldest seq stored.
    History {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        events: Vec<StoredEvent>,
        more: bool,
        first_seq: u64,
    },
    /// The newest event of each topic matching a pattern, by topic; written with
    /// [`EventsReply`].
    Last {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        events: Vec<StoredEvent>,
        more: bool,
        first_seq: u64,
    },
    /// Who is present in a topic, each client once.
    Presence {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Id>,
        topic: String,
        clients: Vec<PresentClient>,
        count: usize,
    },
    /// A client's first connection became present in a topic.
    Join(PresenceChange),
    /// A client's last present connection left a topic.
    Leave(PresenceChange),
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
    const ALL: [ErrorCode; 14] = [
        ErrorCode::BadJson,
        ErrorCode::BadRequest,
        ErrorCode::UnknownOp,
        ErrorCode::InvalidTopic,
        ErrorCode::InvalidPattern,
        ErrorCode::TooLarge,
        ErrorCode::NotFound,
        ErrorCode::ConsumerConflict,
        ErrorCode::Unsupported,
        ErrorCode::LimitExceeded,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
    ];
    ALL.into_iter()
        .find(|c| c.as_str() == s)
        .ok_or_else(|| serde::de::Error::custom(format!("unknown error code {s:?}")))
}

/// The part of an event frame that is the same for every subscriber (seq, topic, payload,
/// publish time), encoded once per event and shared: fanning an event out to a thousand
/// subscriptions copies these bytes, it does not serialize the event again. The payload is
/// the publisher's JSON text, validated at publish and copied in verbatim.
#[derive(Debug, Clone, PartialEq)]
pub struct EventBody(String);

impl EventBody {
    /// `time_ms` is the publish time, ms since the Unix epoch (`published_at` in RFC 3339).
    pub fn new(seq: u64, topic: &str, payload: &str, time_ms: u64) -> EventBody {
        let mut out = String::with_capacity(80 + payload.len() + topic.len());
        out.push_str(r#","seq":"#);
        out.push_str(itoa::Buffer::new().format(seq));
        out.push_str(r#","topic":"#);
        push_quoted(&mut out, topic);
        out.push_str(r#","payload":"#);
        out.push_str(payload);
        out.push_str(r#","published_at":""#);
        push_time(&mut out, time_ms);
        out.push('"');
        EventBody(out)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One event delivered to one subscription, as the broker writes it: the per-subscription
/// parts around a shared [`EventBody`].
#[derive(Debug)]
pub struct EventFrame<'a> {
    pub sub: &'a str,
    pub consumer: Option<&'a str>,
    pub body: &'a EventBody,
    pub delivery: u32,
}

impl EventFrame<'_> {
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(64 + self.body.len() + self.sub.len());
        out.push_str(r#"{"type":"event","sub":"#);
        push_quoted(&mut out, self.sub);
        if let Some(consumer) = self.consumer {
            out.push_str(r#","consumer":"#);
            push_quoted(&mut out, consumer);
        }
        out.push_str(&self.body.0);
        out.push_str(r#","delivery":"#);
        out.push_str(itoa::Buffer::new().format(self.delivery));
        out.push('}');
        out
    }

    /// The same event as an `events` frame of one, for a subscription that asked for
    /// `batch` when no other event is ready to share its frame.
    pub fn to_json_batched(&self) -> String {
        let mut batch = EventBatch::new(self.sub, self.consumer);
        batch.push(self.body, self.delivery);
        batch.finish()
    }
}

/// Several events delivered to one subscription in one frame, for a subscription that asked
/// for `batch`: `{"type":"events","sub":…,"consumer":…,"events":[{seq, topic, payload,
/// published_at, delivery}, …]}`, each element an event frame without its `type`, `sub` and
/// `consumer`. Built from the same shared [`EventBody`]s as single event frames.
#[derive(Debug)]
pub struct EventBatch {
    out: String,
    count: usize,
}

impl EventBatch {
    pub fn new(sub: &str, consumer: Option<&str>) -> EventBatch {
        let mut out = String::with_capacity(4096);
        out.push_str(r#"{"type":"events","sub":"#);
        push_quoted(&mut out, sub);
        if let Some(consumer) = consumer {
            out.push_str(r#","consumer":"#);
            push_quoted(&mut out, consumer);
        }
        out.push_str(r#","events":["#);
        EventBatch { out, count: 0 }
    }

    pub fn push(&mut self, body: &EventBody, delivery: u32) {
        if self.count > 0 {
            self.out.push(',');
        }
        self.out.push('{');
        // The body starts with the comma that follows `sub` in a single event frame.
        self.out
            .push_str(body.0.strip_prefix(',').unwrap_or(&body.0));
        self.out.push_str(r#","delivery":"#);
        self.out.push_str(itoa::Buffer::new().format(delivery));
        self.out.push('}');
        self.count += 1;
    }

    /// Events pushed so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The frame's length so far, in bytes.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn finish(mut self) -> String {
        self.out.push_str("]}");
        self.out
    }
}

/// A stored event as `history` and `last` list it, read by clients.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredEvent {
    pub seq: u64,
    pub topic: String,
    pub payload: serde_json::Value,
    pub published_at: String,
}

/// One client in a `presence` reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PresentClient {
    pub client: String,
    pub info: serde_json::Value,
    /// Its present connections (across wharf nodes in a cluster).
    pub connections: u32,
    /// When its earliest present connection joined, RFC 3339.
    pub since: String,
}

/// A `join` or `leave` push.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PresenceChange {
    pub sub: String,
    pub topic: String,
    pub client: String,
    pub info: serde_json::Value,
}

/// Which reply an [`EventsReply`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventsKind {
    History,
    Last,
}

/// A `history` or `last` reply as the broker writes it: each event's stored payload is copied
/// in verbatim (from its [`EventBody`]), never parsed again.
pub struct EventsReply<'a> {
    pub kind: EventsKind,
    pub id: Option<&'a Id>,
    pub events: &'a [EventBody],
    pub more: bool,
    pub first_seq: u64,
}

impl EventsReply<'_> {
    pub fn to_json(&self) -> String {
        let bytes: usize = self.events.iter().map(|e| e.len() + 2).sum();
        let mut out = String::with_capacity(96 + bytes);
        out.push_str(match self.kind {
            EventsKind::History => r#"{"type":"history""#,
            EventsKind::Last => r#"{"type":"last""#,
        });
        if let Some(id) = self.id {
            out.push_str(r#","id":"#);
            out.push_str(&serde_json::to_string(id).unwrap_or_default());
        }
        out.push_str(r#","events":["#);
        for (i, body) in self.events.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push('{');
            // The body starts with the comma that follows `"sub"` in an event frame.
            out.push_str(body.0.strip_prefix(',').unwrap_or(&body.0));
            out.push('}');
        }
        out.push_str(r#"],"more":"#);
        out.push_str(if self.more { "true" } else { "false" });
        out.push_str(r#","first_seq":"#);
        out.push_str(itoa::Buffer::new().format(self.first_seq));
        out.push('}');
        out
    }
}

/// Appends `s` as a JSON string, without an allocation when it needs no escaping.
fn push_quoted(out: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(s).unwrap_or_default());
    }
}

/// The answer to `consumer_info`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConsumerInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Id>,
    pub consumer: String,
    pub topics: Vec<String>,
    /// `exclusive` or `shared`.
    pub mode: String,
    /// Every matching event at or below this seq is settled.
    pub ack_floor: u64,
    /// Settled events above the floor.
    pub acked_above_floor: u64,
    /// Delivered, not yet settled.
    pub ack_pending: u64,
    /// Events stored after the floor, matching or not: an upper bound of what is left to do.
    pub lag: u64,
    /// Events with more than one delivery that are not settled yet.
    pub redelivered: u64,
    pub terminated: u64,
    pub dead_lettered: u64,
    /// Seqs removed by retention before the consumer settled them (matching or not).
    pub gapped: u64,
    /// Connections attached now.
    pub attached: u64,
    /// Events handed to its subscribers (redeliveries included): since the broker started
    /// on the embedded backend; on the cluster since its last seek (which makes the
    /// JetStream consumer again).
    #[serde(default)]
    pub delivered: u64,
    /// Since when nobody has been attached (RFC 3339); absent while someone is. On the
    /// cluster backend: its last delivery, when no connection of this node holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inactive_since: Option<String>,
}

/// The answer to `stats`: the broker at a glance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Id>,
    pub version: String,
    pub uptime_ms: u64,
    /// The newest seq.
    pub head_seq: u64,
    /// The oldest seq still stored.
    pub first_seq: u64,
    pub log_bytes: u64,
    pub segments: u64,
    pub state_bytes: u64,
    pub topics: u64,
    pub consumers: u64,
    pub connections: u64,
    /// Totals since this broker (node) started: events stored, event frames sent, events
    /// acked and dead-lettered. Two `stats` a second apart give the rates.
    #[serde(default)]
    pub published_total: u64,
    #[serde(default)]
    pub delivered_total: u64,
    #[serde(default)]
    pub acked_total: u64,
    #[serde(default)]
    pub dead_lettered_total: u64,
    /// `log` (the embedded log) or `nats` (the cluster backend).
    #[serde(default)]
    pub backend: String,
    /// The cluster backend's NATS state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterInfo>,
}

/// What a wharf node on the cluster backend knows of its NATS cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ClusterInfo {
    /// The NATS server this node is connected to, if any.
    pub server: Option<String>,
    pub stream: String,
    pub replicas: usize,
    /// The stream's Raft leader.
    pub leader: Option<String>,
    /// Every replica of the stream: the leader and its followers.
    pub peers: Vec<PeerInfo>,
}

/// One replica of the cluster's stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerInfo {
    pub name: String,
    pub leader: bool,
    /// Whether it is caught up with the leader.
    pub current: bool,
    /// Operations it is behind.
    pub lag: u64,
}

/// One topic in the answer to `topics`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TopicInfo {
    pub topic: String,
    /// Events stored on the topic (counted from the segments present at start, plus those
    /// published since).
    pub events: u64,
    /// Payload bytes of those events.
    pub bytes: u64,
    pub last_seq: u64,
}

/// The payload of an event moved to `dead.<consumer>`.
#[derive(Debug)]
pub struct DeadLetter<'a> {
    pub consumer: &'a str,
    pub topic: &'a str,
    pub seq: u64,
    pub deliveries: u32,
    pub published_at: &'a str,
    /// The original payload, verbatim JSON text.
    pub payload: &'a str,
}

impl DeadLetter<'_> {
    pub fn to_json(&self) -> String {
        let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
        format!(
            r#"{{"consumer":{},"topic":{},"seq":{},"deliveries":{},"published_at":{},"payload":{}}}"#,
            quote(self.consumer),
            quote(self.topic),
            self.seq,
            self.deliveries,
            quote(self.published_at),
            self.payload
        )
    }
}

/// One event of an `events` frame: an event frame without `type`, `sub` and `consumer`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BatchedEvent {
    pub seq: u64,
    pub topic: String,
    pub payload: serde_json::Value,
    pub published_at: String,
    pub delivery: u32,
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

/// Appends `time_ms` in RFC 3339 with milliseconds. Events published together share their
/// millisecond (a replay at 800k events/s reads hundreds per ms), so each thread keeps the
/// last one formatted: the formatting was about a quarter of building an event's body.
fn push_time(out: &mut String, time_ms: u64) {
    use std::cell::RefCell;
    use std::fmt::Write;
    thread_local! {
        static LAST: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != time_ms {
            last.1.clear();
            let at = UNIX_EPOCH + Duration::from_millis(time_ms);
            // Writing to a String cannot fail.
            let _infallible = write!(last.1, "{}", humantime::format_rfc3339_millis(at));
            last.0 = time_ms;
        }
        out.push_str(&last.1);
    });
}

/// Formats ms since the Unix epoch as RFC 3339 UTC with milliseconds, as `published_at` is sent.
pub fn format_time_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_replies_read_back_as_replies() {
        let bodies = [
            EventBody::new(3, "room.a", r#"{"text":"hi"}"#, 0),
            EventBody::new(9, "room.a", "null", 1000),
        ];
        let id = Id::Int(4);
        let json = EventsReply {
            kind: EventsKind::History,
            id: Some(&id),
            events: &bodies,
            more: true,
            first_seq: 2,
        }
        .to_json();
        let back: Reply = serde_json::from_str(&json).unwrap();
        let Reply::History {
            id,
            events,
            more,
            first_seq,
        } = back
        else {
            panic!("not a history reply: {json}");
        };
        assert_eq!(id, Some(Id::Int(4)));
        assert!(more);
        assert_eq!(first_seq, 2);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].seq, 3);
        assert_eq!(events[0].payload, serde_json::json!({"text":"hi"}));
        assert_eq!(events[1].published_at, "1970-01-01T00:00:01.000Z");
    }

    #[test]
    fn every_error_code_reads_back() {
        let json = Reply::error(None, ErrorCode::Unavailable, "x").to_json();
        let back: Reply = serde_json::from_str(&json).unwrap();
        assert!(matches!(
            back,
            Reply::Error {
                code: ErrorCode::Unavailable,
                ..
            }
        ));
    }

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
            seq: Some(42),
            seqs: None,
            duplicate: false,
        }
        .to_json();
        assert_eq!(json, r#"{"type":"published","id":1,"seq":42}"#);
        let dl = DeadLetter {
            consumer: "c",
            topic: "a.b",
            seq: 3,
            deliveries: 5,
            published_at: "t",
            payload: "[1]",
        }
        .to_json();
        let v: serde_json::Value = serde_json::from_str(&dl).unwrap();
        assert_eq!(v["payload"], serde_json::json!([1]));
        assert_eq!(v["deliveries"], 5);
        assert_eq!(format_time_ms(1500), "1970-01-01T00:00:01.500Z");
    }

    #[test]
    fn event_frames_read_back_as_events() {
        let body = EventBody::new(9, "a.b", r#"{"k":[1,"x"]}"#, 1500);
        let json = EventFrame {
            sub: "s\"1",
            consumer: Some("c"),
            body: &body,
            delivery: 2,
        }
        .to_json();
        let back: Reply = serde_json::from_str(&json).unwrap();
        match back {
            Reply::Event(ev) => {
                assert_eq!((ev.sub.as_str(), ev.seq, ev.delivery), ("s\"1", 9, 2));
                assert_eq!(ev.payload, serde_json::json!({"k":[1,"x"]}));
                assert_eq!(ev.consumer.as_deref(), Some("c"));
                assert_eq!(ev.published_at, "1970-01-01T00:00:01.500Z");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_event_batch_reads_back_as_its_events_in_order() {
        let a = EventBody::new(9, "a.b", r#"{"k":[1,"x"]}"#, 1500);
        let b = EventBody::new(10, "a.\"c", "7", 1501);
        let mut batch = EventBatch::new("s1", Some("c"));
        batch.push(&a, 1);
        batch.push(&b, 3);
        assert_eq!(batch.count(), 2);
        let back: Reply = serde_json::from_str(&batch.finish()).unwrap();
        let Reply::Events {
            sub,
            consumer,
            events,
        } = back
        else {
            panic!("not an events frame");
        };
        assert_eq!((sub.as_str(), consumer.as_deref()), ("s1", Some("c")));
        let seen: Vec<(u64, &str, u32)> = events
            .iter()
            .map(|e| (e.seq, e.topic.as_str(), e.delivery))
            .collect();
        assert_eq!(seen, [(9, "a.b", 1), (10, "a.\"c", 3)]);
        assert_eq!(events[0].payload, serde_json::json!({"k":[1,"x"]}));
        assert_eq!(events[1].published_at, "1970-01-01T00:00:01.501Z");
        let empty = EventBatch::new("s", None).finish();
        assert!(
            matches!(serde_json::from_str(&empty), Ok(Reply::Events { events, consumer: None, .. }) if events.is_empty())
        );
    }

    #[test]
    fn each_body_has_its_own_time_whatever_came_before() {
        let at = |ms: u64| {
            let body = EventBody::new(1, "t", "1", ms);
            let v: serde_json::Value =
                serde_json::from_str(&format!("{{{}}}", &body.0[1..])).unwrap();
            v["published_at"].as_str().unwrap().to_owned()
        };
        for (ms, want) in [
            (1500, "1970-01-01T00:00:01.500Z"),
            (1500, "1970-01-01T00:00:01.500Z"),
            (2501, "1970-01-01T00:00:02.501Z"),
            (1500, "1970-01-01T00:00:01.500Z"),
            (0, "1970-01-01T00:00:00.000Z"),
        ] {
            assert_eq!(at(ms), want);
        }
    }
}
