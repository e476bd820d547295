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
use crate::consumers::{Consumer, ModeConflict, Options};
use crate::context::{Context, CreatingConsumer};
use crate::delivery::{run_ephemeral, DurableDelivery, EventSource};
use crate::log::{Entry, Floor, LogError, NewEvent, Pending, Receipt, Settle};
use crate::metrics;
use crate::outbound::{Outbound, Queued, Unsent};
use crate::shutdown::Shutdown;
use crate::tls::Rewound;

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
    queued: Vec<(Option<Id>, NewEvent)>,
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
fn new_event(e: WireEvent, time_ms: u64, publisher: &str) -> NewEvent {
    NewEvent {
        topic: e.topic.into_string(),
        payload: String::from(Box::<str>::from(e.payload)),
        time_ms,
        msg_id: e.msg_id.map(|id| dedup_key(publisher, &id)),
    }
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
        let (ids, entries): (Vec<Option<Id>>, Vec<Entry>) = std::mem::take(&mut self.queued)
            .into_iter()
            .map(|(id, event)| (id, Entry::Events(vec![event])))
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

    async fn authenticate(&mut self, id: Option<Id>, token: &str) -> Result<(), ()> {
        match self.ctx.auth().check(token) {
            Some(principal) => {
                tracing::debug!(session = self.id, token = principal.name, "authenticated");
                self.principal = Some(principal);
                self.auth_deadline = None;
                self.arm_expiry();
                self.send(Reply::Ok { id }).await?;
                self.drop_forbidden_subscriptions().await
            }
            None => {
                self.failed_auths += 1;
                let reply = Reply::error(id, ErrorCode::Unauthorized, "invalid token");
                self.send(reply).await?;
                if self.failed_auths < MAX_FAILED_AUTHS {
                    return Ok(());
                }
                tracing::warn!(
                    session = self.id,
                    failed = self.failed_auths,
                    "closing a connection after repeated invalid tokens"
                );
                self.closing = Some(close_frame(
                    CloseCode::Policy,
                    "too many failed authentications",
                ));
                Err(())
            }
        }
    }

    /// Why this request may not go ahead: a payload nested too deep (clients whose JSON
    /// parser recurses would fail on it at every delivery), or what auth refuses.
    fn rejection(&self, request: &Request) -> Option<Reply> {
        let max = self.ctx.config.max_json_depth;
        let too_deep = match request {
            Request::Publish { event, .. } => json_nesting_exceeds(event.payload.get(), max),
            Request::PublishBatch { events, .. } => events
                .iter()
                .any(|e| json_nesting_exceeds(e.payload.get(), max)),
            _ => false,
        };
        if too_deep {
            let message = format!(
                "the payload nests arrays and objects more than {max} deep (max_json_depth)"
            );
            return Some(Reply::error(
                request.id().cloned(),
                ErrorCode::BadRequest,
                message,
            ));
        }
        self.refusal(request)
    }

    /// Sets the expiry timers from the principal's token (none for tokens that do not expire).
    fn arm_expiry(&mut self) {
        let expires = self.principal.as_ref().and_then(|p| p.expires_at);
        let at = expires.map(|exp| {
            let left_ms = exp.saturating_mul(1000).saturating_sub(now_ms());
            tokio::time::Instant::now() + Duration::from_millis(left_ms)
        });
        let notice = self.ctx.auth().settings().jwt.expiry_notice;
        self.expires_at = at;
        self.expiry_notice_at = at.map(|at| at.checked_sub(notice).unwrap_or(at));
    }

    /// Who publishes on this connection, as far as msg_id dedup is concerned: its principal,
    /// or nobody in particular with auth off.
    fn publisher(&self) -> &str {
        self.principal.as_ref().map_or("", |who| who.dedup_scope())
    }

    /// Whether this connection's principal may hold a subscription to `patterns` (through
    /// durable consumer `consumer`, if any). Always, with auth off.
    fn may_hold(&self, patterns: &[Pattern], consumer: Option<&str>) -> bool {
        if !self.auth_enabled {
            return true;
        }
        self.principal.as_ref().is_some_and(|who| {
            let name_allowed = match consumer {
                Some(name) => who.may_use_consumer(name),
                None => true,
            };
            name_allowed && who.may_subscribe_all(patterns)
        })
    }

    /// After a re-authentication: ends the subscriptions the new principal may not hold,
    /// telling the client with `unsubscribed` (reason `forbidden`).
    async fn drop_forbidden_subscriptions(&mut self) -> Result<(), ()> {
        let forbidden: Vec<Arc<str>> = self
            .subs
            .iter()
            .filter(|(_, subscription)| match subscription {
                Subscription::Durable { consumer } => {
                    !self.may_hold(&consumer.patterns, Some(&consumer.name))
                }
                Subscription::Ephemeral { patterns, .. } => !self.may_hold(patterns, None),
            })
            .map(|(sub, _)| sub.clone())
            .collect();
        for sub in forbidden {
            if let Some(subscription) = self.subs.remove(&sub) {
                self.end(&sub, subscription);
                let notice = Reply::Unsubscribed {
                    sub: sub.to_string(),
                    reason: "forbidden".into(),
                };
                self.send(notice).await?;
            }
        }
        Ok(())
    }

    /// Why `who` may not operate existing consumer `name`: it reads topics beyond the token's
    /// subscribe rights (acking, seeking or inspecting it would act on, or reveal, events the
    /// token may not read).
    fn reads_beyond(&self, who: &Principal, name: &str) -> Option<String> {
        let consumer = self.ctx.store.consumers.get(name)?;
        (!who.may_subscribe_all(&consumer.patterns)).then(|| {
            format!(
                "token {:?} may not subscribe to every topic consumer {name:?} reads",
                who.name
            )
        })
    }

    /// Why this request may not go ahead, when auth is on.
    fn refusal(&self, request: &Request) -> Option<Reply> {
        if !self.auth_enabled {
            return None;
        }
        let id = request.id().cloned();
        let Some(who) = &self.principal else {
            return Some(Reply::error(
                id,
                ErrorCode::Unauthorized,
                "authenticate first: send {\"op\":\"auth\",\"token\":…} or an Authorization: Bearer header",
            ));
        };
        let forbidden = |what: String| Some(Reply::error(id.clone(), ErrorCode::Forbidden, what));
        let consumer_of = |name: &str| {
            (!who.may_use_consumer(name))
                .then(|| format!("token {:?} may not use consumer {name:?}", who.name))
        };
        match request {
            Request::Publish { event, .. } if !who.may_publish(event.topic.as_str()) => forbidden(
                format!("token {:?} may not publish to {}", who.name, event.topic),
            ),
            Request::PublishBatch { events, .. } => events
                .iter()
                .find(|e| !who.may_publish(e.topic.as_str()))
                .and_then(|e| {
                    forbidden(format!(
                        "token {:?} may not publish to {}",
                        who.name, e.topic
                    ))
                }),
            Request::Subscribe {
                topics, consumer, ..
            } => {
                if let Some(p) = topics.iter().find(|p| !who.may_subscribe(p)) {
                    return forbidden(format!("token {:?} may not subscribe to {p}", who.name));
                }
                consumer
                    .as_deref()
                    .and_then(|c| consumer_of(c).or_else(|| self.reads_beyond(who, c)))
                    .and_then(forbidden)
            }
            Request::Ack { consumer, .. }
            | Request::Nack { consumer, .. }
            | Request::Term { consumer, .. }
            | Request::Progress { consumer, .. }
            | Request::Seek { consumer, .. }
            | Request::ConsumerInfo { consumer, .. }
            | Request::DeleteConsumer { consumer, .. } => consumer_of(consumer)
                .or_else(|| self.reads_beyond(who, consumer))
                .and_then(forbidden),
            Request::Stats { .. } | Request::Topics { .. } | Request::Consumers { .. }
                if !who.may_administer() =>
            {
                forbidden(format!(
                    "token {:?} may not use admin operations (it needs admin = true)",
                    who.name
                ))
            }
            _ => None,
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
            vec![Entry::Events(events)],
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
        entries: Vec<Entry>,
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

    fn new_sub(&mut self) -> Arc<str> {
        self.next_sub += 1;
        Arc::from(format!("{}-{}", self.id, self.next_sub))
    }

    /// The first seq `start` points at.
    async fn resolve_start(&mut self, start: Start) -> Result<u64, LogError> {
        let head = self.ctx.store.feed.head();
        let first = self.ctx.store.feed.first_seq();
        match start {
            Start::All => Ok(first),
            Start::New => Ok(head + 1),
            Start::Seq(seq) => Ok(seq.max(first)),
            Start::TimeMs(ms) => {
                let mut cursor = self.ctx.store.log.cursor(1);
                let found = tokio::task::spawn_blocking(move || cursor.first_at_or_after(ms, head))
                    .await
                    .map_err(|e| LogError::Stopped(format!("time lookup failed: {e}")))??;
                Ok(found.unwrap_or(head + 1))
            }
        }
    }

    /// The floor a consumer created (or sought) with `start` gets.
    async fn floor_for(&mut self, start: Start) -> Result<Floor, LogError> {
        // The floor of "all" and of a seq is fixed now; only "new" depends on what the log
        // holds when the record is written, so the writer resolves it.
        let first = self.ctx.store.feed.first_seq();
        Ok(match start {
            Start::New => Floor::Head,
            Start::All => Floor::At(first - 1),
            Start::Seq(seq) => Floor::At(seq.max(first) - 1),
            time => match self.resolve_start(time).await? {
                first if first > self.ctx.store.feed.head() => Floor::Head,
                first => Floor::At(first - 1),
            },
        })
    }

    fn options(&self, asked: &SubscribeOptions) -> Options {
        let config = &self.ctx.config;
        Options {
            ack_wait: asked
                .ack_wait_ms
                .map(Duration::from_millis)
                .unwrap_or(config.ack_wait),
            max_in_flight: asked
                .max_in_flight
                .map(|n| n as usize)
                .unwrap_or(config.max_in_flight),
            max_deliver: asked.max_deliver.unwrap_or(config.max_deliver),
        }
    }

    /// Why creating consumer `name` would pass a limit: `max_consumers`, or the token's
    /// `max_consumers` over the consumers its names cover. Creations still in flight count
    /// (for the token's limit too: they may be its own).
    fn consumer_limit(&self, name: &str) -> Option<String> {
        let consumers = &self.ctx.store.consumers;
        let creating = self
            .ctx
            .creating_consumers
            .load(std::sync::atomic::Ordering::Acquire);
        let limit = self.ctx.config.max_consumers;
        if consumers.len() + creating >= limit {
            return Some(format!(
                "the broker holds {limit} consumers (max_consumers); cannot create {name:?}"
            ));
        }
        let who = self.principal.as_ref()?;
        let covered = consumers
            .names()
            .iter()
            .filter(|n| who.may_use_consumer(n))
            .count();
        (covered + creating >= who.max_consumers).then(|| {
            format!(
                "token {:?} may hold {} consumers (its max_consumers); cannot create {name:?}",
                who.name, who.max_consumers
            )
        })
    }

    async fn subscribe_durable(
        &mut self,
        id: Option<Id>,
        patterns: Vec<Pattern>,
        name: String,
        start: Option<Start>,
        asked: SubscribeOptions,
    ) -> Result<(), ()> {
        let sub = self.new_sub();
        let mode = asked.mode.unwrap_or(Mode::Exclusive);
        let options = self.options(&asked);
        if let Some(consumer) = self.ctx.store.consumers.get(&name) {
            if !consumer.same_patterns(&patterns) {
                return self.send(conflict(id, &consumer, &patterns)).await;
            }
            let attach = Completion::Attach {
                id,
                sub,
                name,
                patterns,
                mode,
                options,
            };
            self.accepted_subs += 1;
            self.pending.push_back(async move { attach }.boxed());
            return Ok(());
        }
        if let Some(refusal) = self.consumer_limit(&name) {
            let reply = Reply::error(id, ErrorCode::LimitExceeded, refusal);
            return self.send(reply).await;
        }
        let floor = match self.floor_for(start.unwrap_or(Start::All)).await {
            Ok(floor) => floor,
            Err(e) => return self.send(internal(id, e)).await,
        };
        let creating = CreatingConsumer::new(&self.ctx.creating_consumers);
        let entry = Entry::ConsumerCreated {
            name: name.clone(),
            patterns: patterns.iter().map(|p| p.as_str().to_owned()).collect(),
            start: floor,
        };
        let pending = match self.ctx.store.log.submit(vec![entry]).await {
            Ok(pending) => pending,
            Err(e) => return self.send(internal(id, e)).await,
        };
        let attach = after_commit(pending, id, move |id, _| Completion::Attach {
            id,
            sub,
            name,
            patterns,
            mode,
            options,
        });
        self.accepted_subs += 1;
        self.pending.push_back(
            async move {
                let attach = attach.await;
                drop(creating);
                match attach {
                    Completion::Reply(refused) => Completion::NotSubscribed(refused),
                    attach => attach,
                }
            }
            .boxed(),
        );
        Ok(())
    }

    async fn subscribe_ephemeral(
        &mut self,
        id: Option<Id>,
        patterns: Vec<Pattern>,
        start: Option<Start>,
    ) -> Result<(), ()> {
        let from = match self.resolve_start(start.unwrap_or(Start::New)).await {
            Ok(from) => from,
            Err(e) => return self.send(internal(id, e)).await,
        };
        let sub = self.new_sub();
        let start = Completion::Ephemeral {
            id,
            sub,
            patterns,
            from,
        };
        // Its turn comes after the replies to earlier requests, so no event overtakes them.
        self.accepted_subs += 1;
        self.pending.push_back(async move { start }.boxed());
        Ok(())
    }

    async fn start_ephemeral(
        &mut self,
        id: Option<Id>,
        sub: Arc<str>,
        patterns: Vec<Pattern>,
        from: u64,
    ) -> Result<(), ()> {
        self.send_now(Reply::Subscribed {
            id,
            sub: sub.to_string(),
            consumer: None,
            start_seq: Some(from),
        })
        .await?;
        let source = EventSource::new(
            self.ctx.store.feed.clone(),
            self.ctx.store.log.clone(),
            from,
            patterns.clone(),
        );
        let task = tokio::spawn(run_ephemeral(sub.clone(), self.outbound.clone(), source));
        ::metrics::gauge!(metrics::SUBSCRIPTIONS).increment(1);
        self.subs.insert(
            sub,
            Subscription::Ephemeral {
                task: task.abort_handle(),
                patterns,
            },
        );
        Ok(())
    }

    async fn attach(
        &mut self,
        id: Option<Id>,
        sub: Arc<str>,
        consumer: Arc<Consumer>,
        mode: Mode,
        options: Options,
    ) -> Result<(), ()> {
        let attached =
            match consumer.attach(self.id, sub.clone(), self.outbound.clone(), mode, options) {
                Ok(attached) => attached,
                Err(ModeConflict(held)) => {
                    let message = format!(
                        "consumer {:?} is attached in {} mode; subscribe with the same mode",
                        consumer.name,
                        mode_name(held)
                    );
                    return self
                        .send(Reply::error(id, ErrorCode::ConsumerConflict, message))
                        .await;
                }
            };
        for old in attached.replaced {
            tracing::info!(
                consumer = consumer.name,
                from = old.session,
                to = self.id,
                "consumer taken over"
            );
            let notice = Reply::Unsubscribed {
                sub: old.sub.to_string(),
                reason: "taken_over".into(),
            };
            // The old connection is often half-dead; never wait on it.
            let _best_effort = old.outbound.try_send(Message::text(notice.to_json()));
        }
        // The reply goes first so that no event of this subscription overtakes it.
        let (_, from) = consumer.start();
        self.send_now(Reply::Subscribed {
            id,
            sub: sub.to_string(),
            consumer: Some(consumer.name.clone()),
            start_seq: Some(from),
        })
        .await?;
        let delivery = DurableDelivery {
            consumer: consumer.clone(),
            generation: attached.generation,
            epoch: attached.epoch,
            kick: attached.kick,
            sub: sub.clone(),
            outbound: self.outbound.clone(),
            source: EventSource::new(
                self.ctx.store.feed.clone(),
                self.ctx.store.log.clone(),
                from,
                consumer.patterns.clone(),
            ),
            state: self.ctx.store.state.clone(),
            log: self.ctx.store.log.clone(),
            gap_told: 0,
        };
        let task = tokio::spawn(delivery.run());
        ::metrics::gauge!(metrics::SUBSCRIPTIONS).increment(1);
        consumer.set_task(attached.generation, task.abort_handle());
        self.subs.insert(sub, Subscription::Durable { consumer });
        Ok(())
    }

    /// The named consumer, or a `not_found` error sent back.
    async fn consumer(&mut self, id: &Option<Id>, name: &str) -> Result<Option<Arc<Consumer>>, ()> {
        match self.ctx.store.consumers.get(name) {
            Some(c) => Ok(Some(c)),
            None => {
                let message = format!("no consumer named {name:?}");
                self.send(Reply::error(id.clone(), ErrorCode::NotFound, message))
                    .await?;
                Ok(None)
            }
        }
    }

    async fn settle(
        &mut self,
        id: Option<Id>,
        name: String,
        seqs: Vec<u64>,
        kind: Settle,
    ) -> Result<(), ()> {
        let Some(consumer) = self.consumer(&id, &name).await? else {
            return Ok(());
        };
        let head = self.ctx.store.feed.head();
        if let Some(&beyond) = seqs.iter().find(|&&s| s > head) {
            let message = format!("seq {beyond} has not been published (the newest is {head})");
            return self
                .send(Reply::error(id, ErrorCode::BadRequest, message))
                .await;
        }
        let (floor, seeks) = consumer.floor_for_settle(&seqs);
        let entry = Entry::Acked {
            consumer: name,
            seqs,
            floor,
            kind,
            seeks,
        };
        self.submit(vec![entry], id, |id, _| match id {
            Some(id) => Completion::Reply(Reply::Ok { id: Some(id) }),
            None => Completion::Silent,
        })
        .await
    }

    /// nack (`delay` given) and progress (`delay` None: the ack wait starts over).
    async fn touch(
        &mut self,
        id: Option<Id>,
        name: String,
        seqs: Vec<u64>,
        delay: Option<Duration>,
    ) -> Result<(), ()> {
        let Some(consumer) = self.consumer(&id, &name).await? else {
            return Ok(());
        };
        if delay.is_some() {
            ::metrics::counter!(metrics::NACKED).increment(seqs.len() as u64);
        }
        match consumer.touch(&seqs, delay, Instant::now()) {
            Ok(()) if id.is_some() => self.send(Reply::Ok { id }).await,
            Ok(()) => Ok(()),
            Err(seq) => {
                let message = format!("seq {seq} is not in flight for consumer {name:?}");
                self.send(Reply::error(id, ErrorCode::NotFound, message))
                    .await
            }
        }
    }

    async fn seek(&mut self, id: Option<Id>, name: String, start: Start) -> Result<(), ()> {
        if self.consumer(&id, &name).await?.is_none() {
            return Ok(());
        }
        let floor = match self.floor_for(start).await {
            Ok(Floor::At(floor)) => floor,
            Ok(Floor::Head) => self.ctx.store.feed.head(),
            Err(e) => return self.send(internal(id, e)).await,
        };
        let entry = Entry::ConsumerSeek { name, floor };
        self.submit(vec![entry], id, |id, _| Completion::Reply(Reply::Ok { id }))
            .await
    }

    async fn consumer_info(&mut self, id: Option<Id>, name: String) -> Result<(), ()> {
        let Some(consumer) = self.consumer(&id, &name).await? else {
            return Ok(());
        };
        let info = self.info_of(id, &consumer);
        self.send(Reply::ConsumerInfo(info)).await
    }

    fn stats(&self, id: Option<Id>) -> Stats {
        let store = &self.ctx.store;
        let (segments, log_bytes) = store.log.size();
        Stats {
            id,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_ms: self.ctx.started.elapsed().as_millis() as u64,
            head_seq: store.feed.head(),
            first_seq: store.feed.first_seq(),
            log_bytes,
            segments: segments as u64,
            state_bytes: store.state.size_on_disk(),
            topics: store.feed.topics().len() as u64,
            consumers: store.consumers.len() as u64,
            connections: self
                .ctx
                .connections
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    fn info_of(&self, id: Option<Id>, consumer: &Consumer) -> ConsumerInfo {
        let info = consumer.info();
        ConsumerInfo {
            id,
            consumer: consumer.name.clone(),
            topics: info.patterns,
            mode: mode_name(info.mode).to_owned(),
            ack_floor: info.ack_floor,
            acked_above_floor: info.acked_above_floor,
            ack_pending: info.ack_pending as u64,
            // Events still to settle (above the floor and not acked), not the distance from
            // the floor: one poison event must not make a caught-up consumer look behind.
            lag: self.ctx.store.feed.lag(
                &consumer.patterns,
                info.ack_floor,
                info.acked_above_floor,
            ),
            redelivered: info.redelivered as u64,
            terminated: info.terminated,
            dead_lettered: info.dead_lettered,
            gapped: info.gapped,
            attached: info.attached as u64,
        }
    }

    async fn delete_consumer(&mut self, id: Option<Id>, name: String) -> Result<(), ()> {
        if self.consumer(&id, &name).await?.is_none() {
            return Ok(());
        }
        let entry = Entry::ConsumerDeleted { name };
        self.submit(vec![entry], id, |id, _| Completion::Reply(Reply::Ok { id }))
            .await
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

fn close_frame(code: CloseCode, reason: &str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.to_owned().into(),
    }
}

/// Drains the outbound queue into the socket, many frames per flush. The end of the session
/// comes through `close` (with a close frame or none) so that it is never stuck behind a full
/// queue or a socket the peer does not read: what is already queued and the close frame go
/// out within [`CLOSE_TIMEOUT`], or the socket is dropped.
async fn write_frames(
    mut sink: SplitSink<Ws, Message>,
    mut rx: mpsc::Receiver<Queued>,
    mut close: oneshot::Receiver<Option<CloseFrame>>,
) {
    let frame = loop {
        let batch = async {
            let Some(first) = rx.recv().await else {
                return false;
            };
            let mut next = Some(first);
            // A frame's bytes return to the queue's budget once the socket has taken it.
            while let Some(Queued { message: msg, .. }) = next.take() {
                if let Message::Text(text) = &msg {
                    metrics::bytes_out().increment(text.len() as u64);
                }
                if sink.feed(msg).await.is_err() {
                    return false;
                }
                next = rx.try_recv().ok();
            }
            sink.flush().await.is_ok()
        };
        tokio::select! {
            biased;
            frame = &mut close => break frame.ok().flatten(),
            more = batch => if !more {
                break None;
            },
        }
    };
    let finish = async {
        while let Ok(queued) = rx.try_recv() {
            if sink.feed(queued.message).await.is_err() {
                return;
            }
        }
        if let Some(frame) = frame {
            let _sent = sink.send(Message::Close(Some(frame))).await;
        }
        let _closed = sink.close().await;
    };
    let _in_time = tokio::time::timeout(CLOSE_TIMEOUT, finish).await;
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
