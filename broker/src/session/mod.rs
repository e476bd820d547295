//! One WebSocket connection: reads frames, turns each into log appends or subscriptions,
//! and sends replies in request order.
//!
//! Requests are pipelined: the session queues a publish for the group commit and reads the
//! next frame without waiting for the sync; replies go out in the order requests came in,
//! each only after its record is durable. Everything sent to the client goes through one
//! bounded outbound queue drained by a writer task that batches frames into one flush.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesOrdered, SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use wharf_protocol::{
    json_nesting_exceeds, now_ms, parse_request, ConsumerInfo, ErrorCode, Id, Mode,
    NewEvent as WireEvent, Pattern, Reply, Request, Start, Stats, SubscribeOptions, TopicInfo,
};

use crate::auth::{dedup_key, Principal};
use crate::backend::log::append::{Event, Floor, LogError, Pending, Receipt, Record, Settle};
use crate::backend::log::consumers::{Consumer, ModeConflict, Options};
use crate::backend::log::delivery::{run_ephemeral, DurableDelivery, EventSource};
use crate::context::{Context, CreatingConsumer};
use crate::metrics;
use crate::net::tls::Rewound;
use crate::outbound::{Outbound, Queued, Unsent};
use crate::shutdown::Shutdown;

mod admin;
mod authorize;
mod settle;
mod subscribe;
mod writer;

use writer::{close_frame, sleep_until_opt, write_frames};

type Ws = WebSocketStream<Rewound>;

/// How long a closing connection may take to flush its last frames.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames taken from the socket in one go when they are already there.
const MAX_BURST: usize = 256;
/// Refused `auth` ops a connection may make before it is closed: guessing tokens takes a
/// new connection every few tries.
const MAX_FAILED_AUTHS: u32 = 3;

enum Subscription {
    Durable {
        consumer: Arc<Consumer>,
    },
    Ephemeral {
        task: AbortHandle,
        patterns: Vec<Pattern>,
    },
}

/// What a pipelined request turns into once its log write is durable.
enum Completion {
    Reply(Reply),
    /// The reply to a subscribe that the log refused: no subscription comes of it.
    NotSubscribed(Reply),
    /// The replies to publishes that went to the log together, in request order.
    Replies(Vec<Reply>),
    Silent,
    /// Start an ephemeral subscription (its turn in reply order has come).
    Ephemeral {
        id: Option<Id>,
        sub: Arc<str>,
        patterns: Vec<Pattern>,
        from: u64,
    },
    /// The consumer exists (now): attach this connection to it.
    Attach {
        id: Option<Id>,
        sub: Arc<str>,
        name: String,
        patterns: Vec<Pattern>,
        mode: Mode,
        options: Options,
    },
}

pub struct Session {
    id: u64,
    ctx: Arc<Context>,
    outbound: Outbound,
    /// Close requests from this connection's delivery tasks (slow consumer).
    evict: mpsc::Receiver<String>,
    subs: HashMap<Arc<str>, Subscription>,
    /// Subscribes accepted whose subscription has not started yet (its turn in reply order
    /// has not come): they count against the limit, so pipelining cannot exceed it.
    accepted_subs: usize,
    next_sub: u64,
    pending: FuturesOrdered<BoxFuture<'static, Completion>>,
    /// Publishes read but not yet handed to the log: a burst of pipelined publishes goes as
    /// one append (one queue send, one wake-up, one completion) instead of one each.
    queued: Vec<(Option<Id>, Event)>,
    last_seen: Instant,
    /// When the client last sent a request (pongs do not count).
    last_request: Instant,
    /// Whether auth was on when the connection opened (a reload does not change it for open
    /// connections).
    auth_enabled: bool,
    /// Who this connection is; `None` until it authenticates (or when auth is off).
    principal: Option<Arc<Principal>>,
    /// When an unauthenticated connection is closed.
    auth_deadline: Option<tokio::time::Instant>,
    /// When the client is told that its token expires soon, and when it does (a JWT's
    /// `exp`): the connection is then closed with 4001 unless a fresh `auth` came first.
    expiry_notice_at: Option<tokio::time::Instant>,
    expires_at: Option<tokio::time::Instant>,
    /// A reply found no room in the queue in time: the peer does not read, so nothing more
    /// (not even a close frame) is written to it.
    stopped_reading: bool,
    failed_auths: u32,
    /// The close frame for a request that ends the connection.
    closing: Option<CloseFrame>,
}

fn internal(id: Option<Id>, e: impl std::fmt::Display) -> Reply {
    Reply::error(id, ErrorCode::Internal, e.to_string())
}

/// An event as the log stores it; the parsed request's strings are moved, not copied. Its
/// msg_id is stored as a dedup key scoped by `publisher`, so that one publisher's ids never
/// answer for another's.
fn new_event(e: WireEvent, time_ms: u64, publisher: &str) -> Event {
    Event::new(
        e.topic.into_string(),
        String::from(Box::<str>::from(e.payload)),
        time_ms,
        e.msg_id.map(|id| dedup_key(publisher, &id)),
    )
}

/// The reply to a publish (`batch`: a publish_batch) once the log has its receipt.
fn published(id: Option<Id>, receipt: Receipt, batch: bool) -> Reply {
    let seqs = match receipt {
        Receipt::Seqs(seqs) => seqs,
        Receipt::Refused(why) => return Reply::error(id, ErrorCode::LimitExceeded, why),
        _ => return internal(id, "publish got no seq"),
    };
    let duplicate = seqs.iter().any(|&(_, dup)| dup);
    if duplicate {
        let dups = seqs.iter().filter(|&&(_, dup)| dup).count();
        ::metrics::counter!(metrics::DUPLICATES).increment(dups as u64);
    }
    let seqs: Vec<u64> = seqs.into_iter().map(|(seq, _)| seq).collect();
    let (seq, seqs) = match batch {
        true => (None, Some(seqs)),
        false => (seqs.first().copied(), None),
    };
    Reply::Published {
        id,
        seq,
        seqs,
        duplicate,
    }
}

/// Waits for a submitted write and turns its receipts into a completion.
fn after_commit(
    pending: Pending,
    id: Option<Id>,
    done: impl FnOnce(Option<Id>, Vec<Receipt>) -> Completion + Send + 'static,
) -> BoxFuture<'static, Completion> {
    async move {
        match pending.await {
            Ok(Ok(receipts)) => done(id, receipts),
            Ok(Err(e)) => Completion::Reply(internal(id, e)),
            Err(_) => Completion::Reply(internal(id, "the log writer stopped")),
        }
    }
    .boxed()
}

impl Session {
    pub async fn run(
        ctx: Arc<Context>,
        id: u64,
        ws: Ws,
        principal: Option<Arc<Principal>>,
        mut shutdown: Shutdown,
    ) {
        let (sink, mut stream) = ws.split();
        let (tx, rx) = mpsc::channel(ctx.config.outbound_queue);
        let (evict_tx, evict_rx) = mpsc::channel(1);
        let (close_tx, close_rx) = oneshot::channel();
        let writer = tokio::spawn(write_frames(sink, rx, close_rx));
        let outbound = Outbound::new(
            tx,
            ctx.config.outbound_queue_bytes,
            evict_tx,
            ctx.config.slow_consumer_timeout,
        );
        let auth = ctx.auth();
        let auth_enabled = auth.enabled();
        let auth_timeout = auth.settings().auth_timeout;
        let mut session = Session {
            id,
            ctx,
            outbound,
            evict: evict_rx,
            subs: HashMap::new(),
            accepted_subs: 0,
            next_sub: 0,
            pending: FuturesOrdered::new(),
            queued: Vec::new(),
            last_seen: Instant::now(),
            last_request: Instant::now(),
            auth_enabled,
            auth_deadline: (auth_enabled && principal.is_none())
                .then(|| tokio::time::Instant::now() + auth_timeout),
            principal,
            stopped_reading: false,
            expiry_notice_at: None,
            expires_at: None,
            failed_auths: 0,
            closing: None,
        };
        session.arm_expiry();
        let close = session.serve(&mut stream, &mut shutdown).await;
        if session.stopped_reading {
            session.detach_all();
            writer.abort();
            let _cancelled = writer.await;
            return;
        }
        // Replies to what was already confirmed still go out before the close frame (within
        // a bound: a client that stopped reading may never make room); a subscription that
        // completes now is not attached to a connection that is ending.
        let drain = async {
            while let Some(done) = session.pending.next().await {
                let replies = match done {
                    Completion::Reply(reply) | Completion::NotSubscribed(reply) => vec![reply],
                    Completion::Replies(replies) => replies,
                    _ => Vec::new(),
                };
                for reply in replies {
                    if session.send_now(reply).await.is_err() {
                        return;
                    }
                }
            }
        };
        let _drained = tokio::time::timeout(CLOSE_TIMEOUT, drain).await;
        session.detach_all();
        let _writer_gone = close_tx.send(close);
        drop(session);
        let _finished = writer.await;
    }

    /// The read loop; returns the close frame to send, if any.
    async fn serve(
        &mut self,
        stream: &mut SplitStream<Ws>,
        shutdown: &mut Shutdown,
    ) -> Option<CloseFrame> {
        let interval = self.ctx.config.heartbeat_interval;
        let timeout = self.ctx.config.heartbeat_timeout;
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                _ = shutdown.wait() => {
                    return Some(close_frame(CloseCode::Away, "broker shutting down"));
                }
                _ = sleep_until_opt(self.auth_deadline) => {
                    return Some(close_frame(CloseCode::Policy, "authentication timeout"));
                }
                _ = sleep_until_opt(self.expires_at) => {
                    return Some(close_frame(CloseCode::from(4001), "token expired"));
                }
                _ = sleep_until_opt(self.expiry_notice_at) => {
                    self.expiry_notice_at = None;
                    let exp = self.principal.as_ref().and_then(|p| p.expires_at).unwrap_or_default();
                    if self.send_now(Reply::TokenExpiring { exp }).await.is_err() {
                        return None;
                    }
                }
                Some(reason) = self.evict.recv() => {
                    tracing::info!(session = self.id, reason, "closing a slow consumer");
                    return Some(close_frame(CloseCode::Again, &reason));
                }
                Some(done) = self.pending.next(), if !self.pending.is_empty() => {
                    if Box::pin(self.complete(done)).await.is_err() {
                        return None;
                    }
                }
                msg = stream.next() => {
                    // Take what the socket already holds too, so that pipelined publishes
                    // reach the log together, then hand them over. Publishes read before
                    // the connection ends are still stored, as if each went on its own.
                    let mut ended = self.on_message(msg).await.err();
                    for _ in 0..MAX_BURST {
                        if ended.is_some() {
                            break;
                        }
                        let Some(msg) = stream.next().now_or_never() else {
                            break;
                        };
                        ended = self.on_message(msg).await.err();
                    }
                    let flushed = self.flush_queued().await;
                    if let Some(close) = ended {
                        return close;
                    }
                    if flushed.is_err() {
                        return None;
                    }
                }
                _ = heartbeat.tick() => {
                    let idle = self.ctx.config.idle_timeout;
                    if !idle.is_zero() && self.subs.is_empty() && self.last_request.elapsed() > idle {
                        tracing::debug!(session = self.id, "idle; closing");
                        return Some(close_frame(CloseCode::Normal, "idle timeout"));
                    }
                    if self.last_seen.elapsed() > interval + timeout {
                        tracing::info!(session = self.id, "no answer to heartbeat; dropping the connection");
                        return Some(close_frame(CloseCode::Policy, "heartbeat timeout"));
                    }
                    // A full queue means the client is not reading; the timeout above ends it.
                    if let Err(mpsc::error::TrySendError::Closed(_)) =
                        self.outbound.try_send(Message::Ping(Default::default()))
                    {
                        return None;
                    }
                }
            }
        }
    }

    /// Handles one read from the socket; `Err` ends the connection with that close frame.
    async fn on_message(
        &mut self,
        msg: Option<Result<Message, WsError>>,
    ) -> Result<(), Option<CloseFrame>> {
        let now = Instant::now();
        self.last_seen = now;
        let outcome = match msg {
            None => return Err(None),
            Some(Err(WsError::Utf8(e))) => {
                return Err(Some(close_frame(
                    CloseCode::Invalid,
                    &format!("a text frame is not valid UTF-8: {e}"),
                )));
            }
            Some(Err(WsError::Capacity(e))) => {
                return Err(Some(close_frame(
                    CloseCode::Size,
                    &format!("frame too large: {e}"),
                )));
            }
            Some(Err(e)) => {
                tracing::debug!(session = self.id, error = %e, "connection failed");
                return Err(None);
            }
            Some(Ok(Message::Text(text))) => {
                self.last_request = now;
                metrics::bytes_in().increment(text.len() as u64);
                // Boxed so that an idle connection's future stays small: request handling
                // is most of its size (issue #4, RSS per connection).
                Box::pin(self.handle_text(text.as_str())).await
            }
            Some(Ok(Message::Binary(_))) => {
                let reply = Reply::error(
                    None,
                    ErrorCode::Unsupported,
                    "binary frames are not supported; send JSON text frames",
                );
                self.send(reply).await
            }
            Some(Ok(Message::Close(_))) => return Err(None),
            Some(Ok(_)) => Ok(()),
        };
        outcome.map_err(|()| self.closing.take())
    }

    /// Hands the queued publishes to the log as one append.
    async fn flush_queued(&mut self) -> Result<(), ()> {
        if self.queued.is_empty() {
            return Ok(());
        }
        let (ids, entries): (Vec<Option<Id>>, Vec<Record>) = std::mem::take(&mut self.queued)
            .into_iter()
            .map(|(id, event)| (id, Record::Events(vec![event])))
            .unzip();
        match self.ctx.store.log.submit(entries).await {
            Ok(pending) => {
                self.pending.push_back(
                    async move {
                        let replies = match pending.await {
                            Ok(Ok(receipts)) => ids
                                .into_iter()
                                .zip(receipts)
                                .map(|(id, receipt)| published(id, receipt, false))
                                .collect(),
                            Ok(Err(e)) => ids.into_iter().map(|id| internal(id, &e)).collect(),
                            Err(_) => ids
                                .into_iter()
                                .map(|id| internal(id, "the log writer stopped"))
                                .collect(),
                        };
                        Completion::Replies(replies)
                    }
                    .boxed(),
                );
                Ok(())
            }
            Err(e) => {
                for id in ids {
                    self.send(internal(id, &e)).await?;
                }
                Ok(())
            }
        }
    }

    /// Sends a reply now (to a request whose turn it is). The wait for room in the queue is
    /// bounded by the slow-consumer limit and by the authentication deadline: a peer that
    /// does not read its replies is disconnected, not waited for.
    async fn send_now(&mut self, reply: Reply) -> Result<(), ()> {
        let slow_limit = tokio::time::Instant::now() + self.outbound.slow_limit();
        let deadline = match self.auth_deadline {
            Some(auth) => auth.min(slow_limit),
            None => slow_limit,
        };
        match self
            .outbound
            .send_by(Message::text(reply.to_json()), deadline)
            .await
        {
            Ok(()) => Ok(()),
            Err(Unsent::Closed) => Err(()),
            Err(Unsent::TimedOut) => {
                let unauthenticated = self.auth_deadline.is_some();
                tracing::info!(
                    session = self.id,
                    unauthenticated,
                    "the peer does not read its replies; dropping the connection"
                );
                self.stopped_reading = true;
                Err(())
            }
        }
    }

    /// Replies to the current request, after the replies of earlier requests that are still
    /// waiting for the log: replies always come back in request order.
    async fn send(&mut self, reply: Reply) -> Result<(), ()> {
        if self.pending.is_empty() {
            self.send_now(reply).await
        } else {
            self.pending
                .push_back(async move { Completion::Reply(reply) }.boxed());
            Ok(())
        }
    }

    async fn handle_text(&mut self, text: &str) -> Result<(), ()> {
        let limit = self.ctx.config.max_frame_bytes;
        let request = (text.len() <= limit).then(|| parse_request(text));
        // A publish that is allowed joins the queue (a refused one is answered below).
        let queue = matches!(&request, Some(Ok(r @ Request::Publish { .. })) if self.rejection(r).is_none());
        if queue {
            if let Some(Ok(Request::Publish { id, event })) = request {
                let event = new_event(event, now_ms(), self.publisher());
                self.queued.push((id, event));
            }
            return Ok(());
        }
        // Anything else answers after the queued publishes: replies keep request order.
        self.flush_queued().await?;
        if text.len() > limit {
            let message = format!("frame is {} bytes, the limit is {limit}", text.len());
            return self
                .send(Reply::error(None, ErrorCode::TooLarge, message))
                .await;
        }
        let request = match request {
            Some(Ok(r)) => r,
            Some(Err(e)) => return self.send(Reply::error(e.id, e.code, e.message)).await,
            None => return Err(()),
        };
        if let Request::Auth { id, token } = request {
            return self.authenticate(id, &token).await;
        }
        if let Some(refusal) = self.rejection(&request) {
            return self.send(refusal).await;
        }
        match request {
            Request::Publish { id, event } => self.publish(id, vec![event], false).await,
            Request::PublishBatch { id, events } => self.publish(id, events, true).await,
            Request::Subscribe { id, .. }
                if self.subs.len() + self.accepted_subs
                    >= self.ctx.config.max_subscriptions_per_connection =>
            {
                let limit = self.ctx.config.max_subscriptions_per_connection;
                let message =
                    format!("this connection already holds {limit} subscriptions, the limit");
                self.send(Reply::error(id, ErrorCode::LimitExceeded, message))
                    .await
            }
            Request::Subscribe {
                id,
                topics,
                consumer,
                start,
                options,
            } => match consumer {
                Some(name) => {
                    self.subscribe_durable(id, topics, name, start, options)
                        .await
                }
                None => self.subscribe_ephemeral(id, topics, start).await,
            },
            Request::Ack { id, consumer, seqs } => {
                self.settle(id, consumer, seqs, Settle::Ack).await
            }
            Request::Term { id, consumer, seqs } => {
                self.settle(id, consumer, seqs, Settle::Term).await
            }
            Request::Nack {
                id,
                consumer,
                seqs,
                delay_ms,
            } => {
                let delay = Some(Duration::from_millis(delay_ms));
                self.touch(id, consumer, seqs, delay).await
            }
            Request::Progress { id, consumer, seqs } => self.touch(id, consumer, seqs, None).await,
            Request::Seek {
                id,
                consumer,
                start,
            } => self.seek(id, consumer, start).await,
            Request::ConsumerInfo { id, consumer } => self.consumer_info(id, consumer).await,
            Request::DeleteConsumer { id, consumer } => self.delete_consumer(id, consumer).await,
            Request::Unsubscribe { id, sub } => self.unsubscribe(id, &sub).await,
            Request::Ping { id } => self.send(Reply::Pong { id }).await,
            Request::Auth { .. } => Ok(()),
            Request::Stats { id } => {
                let stats = self.stats(id);
                self.send(Reply::Stats(stats)).await
            }
            Request::Topics { id, page } => {
                let mut all = self.ctx.store.feed.topics();
                all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                let (taken, next_cursor) = page.select(&all, |(topic, _)| topic);
                let topics = taken
                    .iter()
                    .map(|(topic, s)| TopicInfo {
                        topic: topic.clone(),
                        events: s.events,
                        bytes: s.bytes,
                        last_seq: s.last_seq,
                    })
                    .collect();
                self.send(Reply::Topics {
                    id,
                    topics,
                    next_cursor,
                })
                .await
            }
            Request::Consumers { id, page } => {
                let mut names = self.ctx.store.consumers.names();
                names.sort_unstable();
                let (taken, next_cursor) = page.select(&names, String::as_str);
                let consumers = taken
                    .iter()
                    .filter_map(|name| {
                        self.ctx
                            .store
                            .consumers
                            .get(name)
                            .map(|c| self.info_of(None, &c))
                    })
                    .collect();
                self.send(Reply::Consumers {
                    id,
                    consumers,
                    next_cursor,
                })
                .await
            }
        }
    }

    async fn publish(
        &mut self,
        id: Option<Id>,
        events: Vec<WireEvent>,
        batch: bool,
    ) -> Result<(), ()> {
        let time_ms = now_ms();
        let events = events
            .into_iter()
            .map(|e| new_event(e, time_ms, self.publisher()))
            .collect();
        self.submit(
            vec![Record::Events(events)],
            id,
            move |id, receipts| match receipts.into_iter().next() {
                Some(receipt) => Completion::Reply(published(id, receipt, batch)),
                None => Completion::Reply(internal(id, "publish got no seq")),
            },
        )
        .await
    }

    async fn submit(
        &mut self,
        entries: Vec<Record>,
        id: Option<Id>,
        done: impl FnOnce(Option<Id>, Vec<Receipt>) -> Completion + Send + 'static,
    ) -> Result<(), ()> {
        match self.ctx.store.log.submit(entries).await {
            Ok(pending) => {
                self.pending.push_back(after_commit(pending, id, done));
                Ok(())
            }
            Err(e) => self.send(internal(id, e)).await,
        }
    }

    async fn unsubscribe(&mut self, id: Option<Id>, sub: &str) -> Result<(), ()> {
        match self.subs.remove(sub) {
            None => {
                let message = format!("no subscription {sub:?} on this connection");
                self.send(Reply::error(id, ErrorCode::NotFound, message))
                    .await
            }
            Some(subscription) => {
                self.end(sub, subscription);
                self.send(Reply::Ok { id }).await
            }
        }
    }

    fn end(&self, sub: &str, subscription: Subscription) {
        ::metrics::gauge!(metrics::SUBSCRIPTIONS).decrement(1);
        match subscription {
            Subscription::Durable { consumer } => {
                consumer.detach(self.id, sub);
            }
            Subscription::Ephemeral { task, .. } => task.abort(),
        }
    }

    fn detach_all(&mut self) {
        for (sub, subscription) in std::mem::take(&mut self.subs) {
            self.end(&sub, subscription);
        }
    }

    async fn complete(&mut self, done: Completion) -> Result<(), ()> {
        if matches!(
            done,
            Completion::NotSubscribed(_) | Completion::Ephemeral { .. } | Completion::Attach { .. }
        ) {
            self.accepted_subs = self.accepted_subs.saturating_sub(1);
        }
        match done {
            Completion::Reply(reply) | Completion::NotSubscribed(reply) => {
                self.send_now(reply).await
            }
            Completion::Replies(replies) => {
                for reply in replies {
                    self.send_now(reply).await?;
                }
                Ok(())
            }
            Completion::Silent => Ok(()),
            // The connection re-authenticated since the subscribe was accepted.
            Completion::Ephemeral { id, patterns, .. } if !self.may_hold(&patterns, None) => {
                self.send_now(no_longer_allowed(id)).await
            }
            Completion::Attach {
                id, name, patterns, ..
            } if !self.may_hold(&patterns, Some(&name)) => {
                self.send_now(no_longer_allowed(id)).await
            }
            Completion::Ephemeral {
                id,
                sub,
                patterns,
                from,
            } => self.start_ephemeral(id, sub, patterns, from).await,
            Completion::Attach {
                id,
                sub,
                name,
                patterns,
                mode,
                options,
            } => match self.ctx.store.consumers.get(&name) {
                Some(consumer) if consumer.same_patterns(&patterns) => {
                    self.attach(id, sub, consumer, mode, options).await
                }
                Some(consumer) => {
                    let reply = conflict(id, &consumer, &patterns);
                    self.send_now(reply).await
                }
                None => {
                    let message = format!("consumer {name:?} was deleted");
                    self.send_now(Reply::error(id, ErrorCode::NotFound, message))
                        .await
                }
            },
        }
    }
}

fn no_longer_allowed(id: Option<Id>) -> Reply {
    Reply::error(
        id,
        ErrorCode::Forbidden,
        "the connection re-authenticated with a token that may not hold this subscription",
    )
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Exclusive => "exclusive",
        Mode::Shared => "shared",
    }
}

fn conflict(id: Option<Id>, consumer: &Consumer, asked: &[Pattern]) -> Reply {
    let asked: Vec<&str> = asked.iter().map(Pattern::as_str).collect();
    let existing: Vec<&str> = consumer.patterns.iter().map(Pattern::as_str).collect();
    Reply::error(
        id,
        ErrorCode::ConsumerConflict,
        format!(
            "consumer {:?} exists with topics {existing:?}, not {asked:?}",
            consumer.name
        ),
    )
}
