//! One WebSocket connection: reads frames, turns each into a call to the backend, and sends
//! replies in request order.
//!
//! Requests are pipelined: the session hands a publish to the backend and reads the next
//! frame without waiting for it to be durable; replies go out in the order requests came
//! in, each only once what it confirms is durable. Everything sent to the client goes through one
//! bounded outbound queue drained by a writer task that batches frames into one flush.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesOrdered, SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use wharf_protocol::{
    json_nesting_exceeds, now_ms, parse_request, ConsumerInfo, ErrorCode, Id, Mode,
    NewEvent as WireEvent, Page, Pattern, Reply, Request, Start, Stats, SubscribeOptions,
};

use crate::auth::{dedup_key, Principal};
use crate::backend::{
    BackendError, Confirming, ConsumerSpec, DeliveryOptions, NewEvent, Quota, Settlement, Stored,
    Subscriber, Subscription,
};
use crate::context::Context;
use crate::metrics;
use crate::outbound::{Frame, Outbound, Queued, Unsent};
use crate::shutdown::Shutdown;
use crate::tls::Rewound;

mod admin;
mod authorize;
mod dispatch;
mod publish;
mod read_gate;
mod reply;
mod rooms;
mod settle;
mod subscribe;
mod writer;

use publish::new_event;
use read_gate::ReadGate;
use reply::{after_commit, error_reply, Completion};
use rooms::Rooms;
use writer::{close_frame, sleep_until_opt, write_frames};

type Ws = WebSocketStream<Rewound>;

/// How long a closing connection may take to flush its last frames.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames taken from the socket in one go when they are already there.
const MAX_BURST: usize = 256;
/// Requests a connection may have waiting for their answer (publishes waiting to be
/// durable, mostly). Past it the session stops reading the socket until answers go out: a
/// client that pipelines without end is slowed by TCP, and the memory (and, on the cluster
/// backend, the publishes awaiting JetStream's ack) one connection holds stays bounded.
const MAX_UNANSWERED: usize = 4096;
/// `history` and `last` reads one connection may have running at once (the rest wait their
/// turn): a page may hold `history_max_limit` events.
const MAX_READS: usize = 4;
/// Refused `auth` ops a connection may make before it is closed: guessing tokens takes a
/// new connection every few tries.
const MAX_FAILED_AUTHS: u32 = 3;

/// The connection is gone (or must not be written to any more): the session ends.
#[derive(Debug)]
pub(crate) struct Closed;

/// A subscription this connection holds, with what re-authentication checks it against.
struct Held {
    subscription: Subscription,
    patterns: Vec<Pattern>,
    /// The durable consumer's name; `None` for an ephemeral subscription.
    consumer: Option<String>,
    /// Its presence and join/leave notices; dropping it leaves.
    _rooms: Rooms,
}

pub struct Session {
    id: u64,
    ctx: Arc<Context>,
    outbound: Outbound,
    /// Close requests from this connection's delivery tasks (slow consumer).
    evict: mpsc::Receiver<String>,
    /// Subscriptions the backend ended (taken over, deleted): let go of what they hold.
    ended: mpsc::UnboundedReceiver<Arc<str>>,
    subs: HashMap<Arc<str>, Held>,
    /// Subscribes accepted whose subscription has not started yet (its turn in reply order
    /// has not come): they count against the limit, so pipelining cannot exceed it.
    accepted_subs: usize,
    next_sub: u64,
    pending: FuturesOrdered<BoxFuture<'static, Completion>>,
    /// Publishes read but not yet handed to the backend: a burst of pipelined publishes goes
    /// as one call (one queue send, one wake-up, one completion) instead of one each.
    queued: Vec<(Option<Id>, NewEvent)>,
    /// Publishes handed to the backend in bursts and not answered yet (a burst is one entry
    /// of `pending`), counted toward [`MAX_UNANSWERED`].
    unanswered_publishes: usize,
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
    /// The client id a `hello` gave, and its info (presence).
    client: Option<String>,
    info: serde_json::Value,
    /// Subscriptions holding presence, accepted or started (see `rooms::Counted`).
    present_subs: Arc<std::sync::atomic::AtomicUsize>,
    /// `history` and `last` reads this connection may have running at once.
    reads: Arc<tokio::sync::Semaphore>,
}

impl Session {
    pub async fn run(
        ctx: Arc<Context>,
        id: u64,
        ws: Ws,
        principal: Option<Arc<Principal>>,
        mut shutdown: Shutdown,
    ) {
        let (sink, stream) = ws.split();
        let mut stream = ReadGate::new(stream);
        let (tx, rx) = mpsc::channel(ctx.config.outbound_queue);
        let (evict_tx, evict_rx) = mpsc::channel(1);
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        let (close_tx, close_rx) = oneshot::channel();
        let writer = tokio::spawn(write_frames(sink, rx, close_rx));
        let outbound = Outbound::new(
            tx,
            ctx.config.outbound_queue_bytes,
            evict_tx,
            ended_tx,
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
            ended: ended_rx,
            subs: HashMap::new(),
            accepted_subs: 0,
            next_sub: 0,
            pending: FuturesOrdered::new(),
            queued: Vec::new(),
            unanswered_publishes: 0,
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
            client: None,
            info: serde_json::Value::Object(Default::default()),
            present_subs: Arc::default(),
            reads: Arc::new(tokio::sync::Semaphore::new(MAX_READS)),
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
        stream: &mut ReadGate<SplitStream<Ws>>,
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
                Some(sub) = self.ended.recv() => {
                    if let Some(held) = self.subs.remove(&sub) {
                        self.end(held);
                    }
                }
                Some(done) = self.pending.next(), if !self.pending.is_empty() => {
                    if Box::pin(self.complete(done)).await.is_err() {
                        return None;
                    }
                }
                msg = stream.next(), if self.pending.len() + self.unanswered_publishes < MAX_UNANSWERED => {
                    // Take what the socket already holds too, so that pipelined publishes
                    // reach the backend together, then hand them over. Publishes read before
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
                        self.outbound.try_send(Frame::Ping)
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
        outcome.map_err(|Closed| self.closing.take())
    }

    async fn unsubscribe(&mut self, id: Option<Id>, sub: &str) -> Result<(), Closed> {
        match self.subs.remove(sub) {
            None => {
                let message = format!("no subscription {sub:?} on this connection");
                self.send(Reply::error(id, ErrorCode::NotFound, message))
                    .await
            }
            Some(held) => {
                self.end(held);
                self.send(Reply::Ok { id }).await
            }
        }
    }

    fn end(&self, held: Held) {
        ::metrics::gauge!(metrics::SUBSCRIPTIONS).decrement(1);
        held.subscription.end();
    }

    fn detach_all(&mut self) {
        for (_, held) in std::mem::take(&mut self.subs) {
            self.end(held);
        }
    }
}
