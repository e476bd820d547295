//! The cluster backend: events live in one NATS JetStream stream, replicated by JetStream's
//! Raft groups; durable consumers are JetStream durable pull consumers. A wharf node keeps
//! nothing on disk that matters, so any number of nodes can serve the same stream.
//!
//! * `stream`: connecting, and creating the stream (or refusing one whose settings conflict).
//! * `subscribe`: durable consumers (create, attach, the delivery task, takeover on this
//!   node) and ephemeral subscriptions (an ordered consumer from a start seq).
//! * `settle`: ack, term, nack, progress, seek and delete, through the messages this node
//!   has in flight.
//!
//! What maps to what: a topic `a.b` is the subject `<subject_prefix>.a.b` (wharf's `*`/`>`
//! are NATS's), wharf's seq is the stream sequence, a `published` reply waits for
//! JetStream's publish ack (stored by a majority of the replicas), and a msg_id is the
//! `Nats-Msg-Id` header (a hash of the publisher-scoped id).

mod delivery;
mod follow;
mod history;
mod local;
mod presence;
mod settle;
mod stream;
pub mod subscribe;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use wharf_protocol::{ClusterInfo, Pattern, PeerInfo, Start, TopicInfo};

use crate::backend::contract::{BackendError, Confirming, NewEvent, Published, StoreStats, Stored};
use crate::backend::presence::Presence;
use crate::config::Config;
use crate::metrics;
use local::{lock, LocalConsumer};

/// The most events JetStream takes in one atomic batch; a larger `publish_batch` is stored
/// event by event (PROTOCOL.md).
const MAX_ATOMIC_BATCH: usize = 1000;

/// Publishes of this node awaiting JetStream's ack at once: far above what the sessions'
/// own bounds let in flight (async-nats's default, 5,000, would fail a publish at once past
/// it, to be sent again out of order).
pub(super) const MAX_UNACKED_PUBLISHES: usize = 1 << 24;

/// How long a JetStream API request that is safe to repeat waits for its answer before it
/// is sent again: a cluster can lose the answer while its Raft groups are busy
/// (nats-server#8350: a consumer create times out, yet the consumer was made), and one lost
/// answer must not hold a client's request for all of `nats.publish_timeout`.
pub(super) const API_TRY: Duration = Duration::from_secs(2);

/// The cluster backend, cheap to clone.
#[derive(Clone)]
pub struct NatsBackend {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    config: Config,
    /// `<subject_prefix>.`
    prefix: String,
    /// Why the backend cannot serve now (`None`: it can). Set while the stream is not
    /// known to exist, cleared once it is.
    not_ready: Mutex<Option<String>>,
    /// This node's id, for the msg ids it gives publishes that came without one.
    node: String,
    next_id: AtomicU64,
    /// The highest seq JetStream confirmed to this node's publishes: `start: "new"` is never
    /// at or below it, even when the stream's info lags behind an ack (CI saw a subscribe
    /// with `new` right after a confirmed publish get that publish).
    confirmed_through: AtomicU64,
    /// Consumers with subscribers on this node: their messages in flight here.
    local: Mutex<HashMap<String, Arc<LocalConsumer>>>,
    /// The key-value bucket of exclusive holders (one key per consumer), made on first use.
    holders: tokio::sync::OnceCell<jetstream::kv::Store>,
    /// Who is present where: this node's connections and what the other nodes report.
    presence: Arc<Presence>,
}

/// JetStream's name for wharf consumer `name`: NATS names may not hold `.`, so `_` becomes
/// `__` and `.` becomes `_d` (no two wharf names share one). A name longer than
/// [`MAX_DURABLE_NAME`] once escaped (wharf allows 128 bytes, which can double) is `_h` and
/// the hex SHA-256 of the name instead: no escaped name starts with `_h`, and the wharf name
/// is kept in the consumer's metadata.
fn durable(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for c in name.chars() {
        match c {
            '_' => out.push_str("__"),
            '.' => out.push_str("_d"),
            c => out.push(c),
        }
    }
    if out.len() > MAX_DURABLE_NAME {
        return format!("_h{}", hex(&Sha256::digest(name.as_bytes())));
    }
    out
}

/// The longest JetStream consumer name wharf makes by escaping (JetStream names also name
/// files and subjects; this stays well inside their limits).
const MAX_DURABLE_NAME: usize = 64;

/// A payload as event-frame JSON: what wharf stored is JSON already; a message another NATS
/// client put on wharf's subjects may be anything, and goes out as a JSON string (bytes that
/// are not UTF-8 replaced) rather than breaking the frame.
fn payload_json(payload: &[u8]) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    match std::str::from_utf8(payload) {
        Ok(text) if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() => {
            Cow::Borrowed(text)
        }
        _ => {
            Cow::Owned(serde_json::to_string(&String::from_utf8_lossy(payload)).unwrap_or_default())
        }
    }
}

/// A NATS failure as the client sees it: `unavailable`, retry later.
fn unavailable(what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(format!("{what}: {e}"))
}

impl NatsBackend {
    fn js(&self) -> &jetstream::Context {
        &self.inner.js
    }

    fn settings(&self) -> &crate::config::Nats {
        &self.inner.config.nats
    }

    pub fn presence(&self) -> &Arc<Presence> {
        &self.inner.presence
    }

    /// `Ok` when the backend can serve; otherwise why not.
    pub fn ready(&self) -> Result<(), String> {
        use async_nats::connection::State;
        if self.inner.client.connection_state() != State::Connected {
            return Err("not connected to any NATS server".into());
        }
        match &*lock(&self.inner.not_ready) {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    /// Whether the stream has limits that remove events (then consumers can have gaps).
    fn has_retention(&self) -> bool {
        let c = &self.inner.config;
        !c.max_age.is_zero() || c.max_events > 0 || c.max_bytes > 0
    }

    fn check_ready(&self) -> Result<(), BackendError> {
        self.ready().map_err(BackendError::Unavailable)
    }

    fn subject(&self, topic: &str) -> String {
        format!("{}{topic}", self.inner.prefix)
    }

    fn topic_of<'a>(&self, subject: &'a str) -> &'a str {
        subject.strip_prefix(&self.inner.prefix).unwrap_or(subject)
    }

    fn filter(&self, pattern: &Pattern) -> String {
        self.subject(pattern.as_str())
    }

    /// The `Nats-Msg-Id` of a publish: a hash of its publisher-scoped msg_id (any text may
    /// be a msg_id; a header value may not), or an id of this node's own, so that retrying
    /// it through a leader change stores it once.
    fn msg_id(&self, scoped: Option<&str>) -> String {
        match scoped {
            Some(id) => hex(&Sha256::digest(id.as_bytes())),
            None => {
                let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
                format!("wharf-{}-{n}", self.inner.node)
            }
        }
    }

    /// Stores each batch's events, in order, each once JetStream acknowledged it (a majority
    /// of the replicas stored it). A batch of 2 to 1,000 events without msg_ids is one
    /// atomic JetStream batch (all or nothing); with msg_ids, or larger, it is stored event by
    /// event, each deduplicated (see PROTOCOL.md).
    pub async fn publish(
        &self,
        batches: Vec<Vec<NewEvent>>,
    ) -> Result<Confirming<Vec<Stored>>, BackendError> {
        self.check_ready()?;
        if let [batch] = batches.as_slice() {
            let atomic = (2..=MAX_ATOMIC_BATCH).contains(&batch.len());
            if atomic && batch.iter().all(|e| e.msg_id.is_none()) {
                return self
                    .publish_atomic(batches.into_iter().flatten().collect())
                    .await;
            }
        }
        // Every event is handed to the connection now, before the next publish is, so that
        // pipelined publishes are stored in request order.
        let mut sent: Vec<Vec<Pending>> = Vec::with_capacity(batches.len());
        for batch in batches {
            let mut pending = Vec::with_capacity(batch.len());
            for event in batch {
                let message = Outgoing {
                    subject: self.subject(&event.topic),
                    id: self.msg_id(event.msg_id.as_deref()),
                    payload: Bytes::from(event.payload),
                };
                let ack = message.send(self.js()).await;
                pending.push(Pending {
                    message,
                    ack,
                    own_id: event.msg_id.is_none(),
                });
            }
            sent.push(pending);
        }
        let js = self.js().clone();
        let deadline = self.settings().publish_timeout;
        let backend = self.clone();
        Ok(Box::pin(async move {
            // One deadline for the whole call: its events were sent together.
            let until = tokio::time::Instant::now() + deadline;
            let mut stored = Vec::with_capacity(sent.len());
            for batch in sent {
                let mut events = Vec::with_capacity(batch.len());
                let mut refused = None;
                for pending in batch {
                    match pending.confirm(&js, until).await {
                        Ok(published) => {
                            backend.confirmed(published.seq);
                            events.push(published);
                        }
                        Err(e) => {
                            refused.get_or_insert(e);
                        }
                    }
                }
                // Each batch answers for itself: one that failed does not fail the others.
                stored.push(match refused {
                    Some(e) => Stored::Refused(e),
                    None => {
                        let new = events.iter().filter(|p| !p.duplicate).count();
                        metrics::published().increment(new as u64);
                        Stored::Events(events)
                    }
                });
            }
            Ok(stored)
        }))
    }

    /// One atomic JetStream batch (ADR-50): every message carries the batch id and its
    /// place; the last one commits, and its ack gives the last seq (a batch is stored
    /// contiguously). The messages are handed to the connection before this returns (a
    /// publish pipelined after the batch is stored after it); the first and the last carry
    /// a reply subject: the server answers the first with an error when it refuses the batch
    /// (a stream without atomic publish), and the last with the batch's ack.
    async fn publish_atomic(
        &self,
        events: Vec<NewEvent>,
    ) -> Result<Confirming<Vec<Stored>>, BackendError> {
        let client = &self.inner.client;
        let batch_id = self.msg_id(None);
        let n = events.len();
        let not_sent = |e: &dyn std::fmt::Display| {
            BackendError::Unavailable(format!("the atomic batch was not stored: {e}"))
        };
        let inbox = client.new_inbox();
        let mut replies = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| not_sent(&e))?;
        for (i, event) in events.into_iter().enumerate() {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Batch-Id", batch_id.as_str());
            headers.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
            let commit = i + 1 == n;
            if commit {
                headers.insert("Nats-Batch-Commit", "1");
            }
            let subject = self.subject(&event.topic);
            let payload = Bytes::from(event.payload);
            let sent = match i == 0 || commit {
                true => {
                    client
                        .publish_with_reply_and_headers(subject, inbox.clone(), headers, payload)
                        .await
                }
                false => client.publish_with_headers(subject, headers, payload).await,
            };
            sent.map_err(|e| not_sent(&e))?;
        }
        let timeout = self.settings().publish_timeout;
        let backend = self.clone();
        Ok(Box::pin(async move {
            use futures_util::StreamExt;
            let refused = |why: String| {
                Ok(vec![Stored::Refused(BackendError::Unavailable(format!(
                    "the atomic batch was not stored: {why}"
                )))])
            };
            let until = tokio::time::Instant::now() + timeout;
            loop {
                let reply = match tokio::time::timeout_at(until, replies.next()).await {
                    Ok(Some(reply)) => reply,
                    Ok(None) | Err(_) => {
                        return Ok(vec![Stored::Refused(BackendError::Unavailable(
                            "JetStream did not confirm the atomic batch within \
                             nats.publish_timeout: it may or may not have been stored (events \
                             with msg_ids can be sent again without being stored twice)"
                                .into(),
                        ))])
                    }
                };
                if reply.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                    return refused("no stream takes its subjects".into());
                }
                if reply.payload.is_empty() {
                    // The first message's receipt; the commit's ack follows.
                    continue;
                }
                let answer: serde_json::Value = match serde_json::from_slice(&reply.payload) {
                    Ok(answer) => answer,
                    Err(e) => return refused(format!("an answer that is not JSON: {e}")),
                };
                if let Some(error) = answer.get("error") {
                    return refused(error.to_string());
                }
                // The commit's ack is this batch's: the id and count must match.
                let ours = answer.get("batch").and_then(|b| b.as_str()) == Some(batch_id.as_str())
                    && answer.get("count").and_then(serde_json::Value::as_u64) == Some(n as u64);
                let last = answer.get("seq").and_then(serde_json::Value::as_u64);
                let first = last.and_then(|last| (last + 1).checked_sub(n as u64));
                return match (ours, first, last) {
                    (true, Some(first), Some(last)) if first > 0 => {
                        backend.confirmed(last);
                        let events = (first..=last)
                            .map(|seq| Published {
                                seq,
                                duplicate: false,
                            })
                            .collect();
                        metrics::published().increment(n as u64);
                        Ok(vec![Stored::Events(events)])
                    }
                    _ => Err(BackendError::failed(format!(
                        "an atomic batch ack that is not this batch's {n} events: {answer}"
                    ))),
                };
            }
        }))
    }

    async fn stream(&self) -> Result<jetstream::stream::Stream, BackendError> {
        self.check_ready()?;
        let name = &self.settings().stream;
        self.asked("cannot reach the stream", || self.js().get_stream(name))
            .await?
            .map_err(|e| unavailable("cannot reach the stream", e))
    }

    /// `request`'s first answer, for requests that are safe to repeat. When none has come
    /// after [`API_TRY`], the same request is sent again beside the ones in flight (after
    /// 2, 6, 14, 30 s: each wait twice the last), so a lost answer costs seconds while a
    /// slow one is still waited for; at most `nats.publish_timeout` in all.
    pub(super) async fn asked<T, E, F>(
        &self,
        what: &str,
        mut request: impl FnMut() -> F,
    ) -> Result<Result<T, E>, BackendError>
    where
        F: std::future::Future<Output = Result<T, E>>,
    {
        use futures_util::stream::{FuturesUnordered, StreamExt};
        let overall = self.settings().publish_timeout;
        let deadline = tokio::time::Instant::now() + overall;
        let mut wait = API_TRY;
        let mut next_try = tokio::time::Instant::now() + wait;
        let mut tries = FuturesUnordered::new();
        tries.push(request());
        loop {
            tokio::select! {
                Some(answer) = tries.next() => return Ok(answer),
                _ = tokio::time::sleep_until(next_try), if next_try < deadline => {
                    tracing::debug!(what, in_flight = tries.len(), "no answer from JetStream yet; asking again");
                    tries.push(request());
                    wait *= 2;
                    next_try += wait;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(unavailable(
                        what,
                        format_args!(
                            "JetStream did not answer within {overall:?} (nats.publish_timeout)"
                        ),
                    ))
                }
            }
        }
    }

    async fn stream_state(&self) -> Result<jetstream::stream::State, BackendError> {
        // Getting the stream read its info: no second request.
        Ok(self.stream().await?.cached_info().state.clone())
    }

    fn confirmed(&self, seq: u64) {
        self.inner
            .confirmed_through
            .fetch_max(seq, Ordering::Relaxed);
    }

    /// The first seq `start` points at.
    pub async fn resolve_start(&self, start: Start) -> Result<u64, BackendError> {
        let state = self.stream_state().await?;
        let first = state.first_sequence.max(1);
        let next = state
            .last_sequence
            .max(self.inner.confirmed_through.load(Ordering::Relaxed))
            + 1;
        Ok(match start {
            Start::All => first,
            Start::New => next,
            Start::Seq(seq) => seq.max(first),
            Start::TimeMs(ms) => self.first_at_or_after(ms).await?.unwrap_or(next),
        })
    }

    /// The first seq published at or after `ms`, if any.
    async fn first_at_or_after(&self, ms: u64) -> Result<Option<u64>, BackendError> {
        use futures_util::StreamExt;
        let stream = self.stream().await?;
        let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .map_err(|e| BackendError::BadRequest(format!("start time: {e}")))?;
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::Config {
                filter_subject: format!("{}>", self.inner.prefix),
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartTime { start_time: at },
                ack_policy: jetstream::consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(5),
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("cannot look up a start time", e))?;
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .map_err(|e| unavailable("cannot look up a start time", e))?;
        let found = match batch.next().await {
            Some(Ok(message)) => Ok(message.info().ok().map(|i| i.stream_sequence)),
            Some(Err(e)) => Err(unavailable("cannot look up a start time", e)),
            None => Ok(None),
        };
        // Gone now rather than after its inactive threshold (which stays as the fallback).
        let name = consumer.cached_info().name.clone();
        if let Err(e) = stream.delete_consumer(&name).await {
            tracing::debug!(error = %e, "the start-time lookup's consumer stays until it expires");
        }
        found
    }

    pub async fn topics(&self) -> Result<Vec<TopicInfo>, BackendError> {
        use futures_util::TryStreamExt;
        let stream = self.stream().await?;
        let mut subjects = stream
            .info_with_subjects(format!("{}>", self.inner.prefix))
            .await
            .map_err(|e| unavailable("cannot list the topics", e))?;
        let mut topics = Vec::new();
        while let Some((subject, count)) = subjects
            .try_next()
            .await
            .map_err(|e| unavailable("cannot list the topics", e))?
        {
            topics.push(TopicInfo {
                topic: self.topic_of(&subject).to_owned(),
                events: count as u64,
                bytes: 0,
                last_seq: 0,
            });
        }
        topics.sort_unstable_by(|a, b| a.topic.cmp(&b.topic));
        Ok(topics)
    }

    pub async fn stats(&self) -> Result<StoreStats, BackendError> {
        let mut stream = self.stream().await?;
        let info = stream
            .info()
            .await
            .map_err(|e| unavailable("cannot read the stream", e))?;
        let state = &info.state;
        Ok(StoreStats {
            head_seq: state.last_sequence,
            first_seq: state.first_sequence.max(1),
            log_bytes: state.bytes,
            segments: 0,
            state_bytes: 0,
            topics: state.subjects_count,
            consumers: state.consumer_count as u64,
            cluster: Some(self.cluster_info(&info.cluster)),
        })
    }

    /// This node's view of the NATS cluster: its server, the stream's leader and replicas.
    fn cluster_info(&self, cluster: &Option<jetstream::stream::ClusterInfo>) -> ClusterInfo {
        let server = self.inner.client.server_info();
        let leader = cluster.as_ref().and_then(|c| c.leader.clone());
        let mut peers: Vec<PeerInfo> = Vec::new();
        if let Some(c) = cluster {
            if let Some(name) = &c.leader {
                peers.push(PeerInfo {
                    name: name.clone(),
                    leader: true,
                    current: true,
                    lag: 0,
                });
            }
            peers.extend(c.replicas.iter().map(|r| PeerInfo {
                name: r.name.clone(),
                leader: false,
                current: r.current && !r.offline,
                lag: r.lag.unwrap_or(0),
            }));
        }
        ClusterInfo {
            server: (!server.server_name.is_empty())
                .then(|| format!("{} ({}:{})", server.server_name, server.host, server.port)),
            stream: self.settings().stream.clone(),
            replicas: self.settings().replicas,
            leader,
            peers,
        }
    }

    /// The per-consumer series for `/metrics`, for the first `limit` consumers by name.
    pub async fn metrics(&self, limit: usize) -> Vec<metrics::ConsumerRow> {
        let Ok(stats) = self.stats().await else {
            return Vec::new();
        };
        ::metrics::gauge!(metrics::LOG_BYTES).set(stats.log_bytes as f64);
        ::metrics::gauge!(metrics::HEAD_SEQ).set(stats.head_seq as f64);
        ::metrics::gauge!(metrics::CONSUMERS).set(stats.consumers as f64);
        let mut names = self.consumer_names().await.unwrap_or_default();
        names.truncate(limit);
        let mut rows = Vec::with_capacity(names.len());
        for name in names {
            if let Ok(Some(info)) = self.consumer_info(&name).await {
                rows.push(metrics::ConsumerRow {
                    name,
                    ack_pending: info.ack_pending,
                    lag: info.lag,
                });
            }
        }
        rows
    }

    /// Stops delivering; JetStream keeps everything.
    pub async fn close(&self) {
        for (_, local) in lock(&self.inner.local).drain() {
            local.detach_all();
        }
        if let Err(e) = self.inner.client.flush().await {
            tracing::warn!(error = %e, "flushing the NATS connection at stop failed");
        }
    }
}

/// One event on its way to JetStream, kept until acknowledged so it can be sent again.
struct Outgoing {
    subject: String,
    id: String,
    payload: Bytes,
}

impl Outgoing {
    async fn send(
        &self,
        js: &jetstream::Context,
    ) -> Result<jetstream::context::PublishAckFuture, String> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, self.id.as_str());
        js.publish_with_headers(self.subject.clone(), headers, self.payload.clone())
            .await
            .map_err(|e| e.to_string())
    }
}

struct Pending {
    message: Outgoing,
    ack: Result<jetstream::context::PublishAckFuture, String>,
    /// The msg id is the broker's own: a duplicate can only be its own retry, and the event
    /// is reported as newly stored.
    own_id: bool,
}

impl Pending {
    /// Waits for JetStream's ack; a failure (a leader change, a lost connection) sends the
    /// same message again, with the same id, until `until`.
    async fn confirm(
        self,
        js: &jetstream::Context,
        until: tokio::time::Instant,
    ) -> Result<Published, BackendError> {
        let mut ack = self.ack;
        loop {
            let outcome = match ack {
                Ok(future) => match tokio::time::timeout_at(until, future).await {
                    Ok(acked) => acked.map_err(|e| e.to_string()),
                    Err(_) => Err("no ack in time".to_owned()),
                },
                Err(e) => Err(e),
            };
            let why = match outcome {
                Ok(ack) => {
                    return Ok(Published {
                        seq: ack.sequence,
                        duplicate: ack.duplicate && !self.own_id,
                    })
                }
                Err(why) => why,
            };
            if tokio::time::Instant::now() >= until {
                return Err(BackendError::Unavailable(format!(
                    "JetStream did not confirm the publish within nats.publish_timeout: {why}"
                )));
            }
            tracing::warn!(
                reason = why,
                "publish not confirmed; sending it again with its msg id"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            ack = self.message.send(js).await;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A node id: enough randomness that two nodes never share one.
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}
