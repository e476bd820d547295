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
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use wharf_protocol::{now_ms, parse_request, ErrorCode, Id, Pattern, Reply, Request, Start};

use crate::consumers::Consumer;
use crate::delivery::{run_ephemeral, DurableDelivery, EventSource, Outbound};
use crate::log::{Entry, Floor, LogError, Pending, Receipt};
use crate::server::Context;
use crate::shutdown::Shutdown;

type Ws = WebSocketStream<TcpStream>;

/// How long a closing connection may take to flush its last frames.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

enum Subscription {
    Durable { consumer: Arc<Consumer> },
    Ephemeral { task: AbortHandle },
}

/// What a pipelined request turns into once its log write is durable.
enum Completion {
    Reply(Reply),
    Silent,
    Attach {
        id: Option<Id>,
        sub: Arc<str>,
        consumer: Arc<Consumer>,
    },
    Created {
        id: Option<Id>,
        sub: Arc<str>,
        name: String,
        pattern: Pattern,
    },
}

pub struct Session {
    id: u64,
    ctx: Arc<Context>,
    outbound: Outbound,
    subs: HashMap<Arc<str>, Subscription>,
    next_sub: u64,
    pending: FuturesOrdered<BoxFuture<'static, Completion>>,
    last_seen: Instant,
}

fn internal(id: Option<Id>, e: impl std::fmt::Display) -> Reply {
    Reply::error(id, ErrorCode::Internal, e.to_string())
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
    pub async fn run(ctx: Arc<Context>, id: u64, ws: Ws, mut shutdown: Shutdown) {
        let (sink, mut stream) = ws.split();
        let (tx, rx) = mpsc::channel(ctx.config.outbound_queue);
        let writer = tokio::spawn(write_frames(sink, rx));
        let mut session = Session {
            id,
            ctx,
            outbound: tx,
            subs: HashMap::new(),
            next_sub: 0,
            pending: FuturesOrdered::new(),
            last_seen: Instant::now(),
        };
        let close = session.serve(&mut stream, &mut shutdown).await;
        // Replies to what was already confirmed still go out before the close frame; a
        // subscription that completes now is not attached to a connection that is ending.
        while let Some(done) = session.pending.next().await {
            if let Completion::Reply(reply) = done {
                if session.send(reply).await.is_err() {
                    break;
                }
            }
        }
        session.detach_all();
        if let Some(frame) = close {
            // A client that stopped reading has a full queue: never wait on it.
            let _best_effort = session.outbound.try_send(Message::Close(Some(frame)));
        }
        drop(session);
        let mut writer = writer;
        if tokio::time::timeout(CLOSE_TIMEOUT, &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
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
                Some(done) = self.pending.next(), if !self.pending.is_empty() => {
                    if self.complete(done).await.is_err() {
                        return None;
                    }
                }
                msg = stream.next() => {
                    self.last_seen = Instant::now();
                    let outcome = match msg {
                        None => return None,
                        Some(Err(WsError::Capacity(e))) => {
                            return Some(close_frame(CloseCode::Size, &format!("frame too large: {e}")));
                        }
                        Some(Err(e)) => {
                            tracing::debug!(session = self.id, error = %e, "connection failed");
                            return None;
                        }
                        Some(Ok(Message::Text(text))) => self.handle_text(text.as_str()).await,
                        Some(Ok(Message::Binary(_))) => {
                            self.send(Reply::error(None, ErrorCode::Unsupported,
                                "binary frames are not supported; send JSON text frames")).await
                        }
                        Some(Ok(Message::Close(_))) => return None,
                        Some(Ok(_)) => Ok(()),
                    };
                    if outcome.is_err() {
                        return None;
                    }
                }
                _ = heartbeat.tick() => {
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

    async fn send(&mut self, reply: Reply) -> Result<(), ()> {
        self.outbound
            .send(Message::text(reply.to_json()))
            .await
            .map_err(|_| ())
    }

    async fn handle_text(&mut self, text: &str) -> Result<(), ()> {
        let limit = self.ctx.config.max_frame_bytes;
        if text.len() > limit {
            let message = format!("frame is {} bytes, the limit is {limit}", text.len());
            return self
                .send(Reply::error(None, ErrorCode::TooLarge, message))
                .await;
        }
        let request = match parse_request(text) {
            Ok(r) => r,
            Err(e) => return self.send(Reply::error(e.id, e.code, e.message)).await,
        };
        match request {
            Request::Publish { id, topic, payload } => {
                let entry = Entry::Event {
                    topic: topic.as_str().to_owned(),
                    payload: payload.get().to_owned(),
                    time_ms: now_ms(),
                };
                self.submit(vec![entry], id, |id, receipts| match receipts.first() {
                    Some(Receipt::Seq(seq)) => {
                        Completion::Reply(Reply::Published { id, seq: *seq })
                    }
                    _ => Completion::Reply(internal(id, "publish got no seq")),
                })
                .await
            }
            Request::Subscribe {
                id,
                topic,
                consumer,
                start,
            } => match consumer {
                Some(name) => self.subscribe_durable(id, topic, name, start).await,
                None => self.subscribe_ephemeral(id, topic, start).await,
            },
            Request::Ack { id, consumer, seqs } => self.ack(id, consumer, seqs).await,
            Request::Unsubscribe { id, sub } => self.unsubscribe(id, &sub).await,
        }
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
        match start {
            Start::All => Ok(1),
            Start::New => Ok(head + 1),
            Start::Seq(seq) => Ok(seq.max(1)),
            Start::TimeMs(ms) => {
                let mut cursor = self.ctx.store.log.cursor(1);
                let found = tokio::task::spawn_blocking(move || cursor.first_at_or_after(ms, head))
                    .await
                    .map_err(|e| LogError::Stopped(format!("time lookup failed: {e}")))??;
                Ok(found.unwrap_or(head + 1))
            }
        }
    }

    async fn subscribe_durable(
        &mut self,
        id: Option<Id>,
        pattern: Pattern,
        name: String,
        start: Option<Start>,
    ) -> Result<(), ()> {
        let sub = self.new_sub();
        if let Some(consumer) = self.ctx.store.consumers.get(&name) {
            if consumer.pattern != pattern {
                return self
                    .send(conflict(id, &name, &consumer.pattern, &pattern))
                    .await;
            }
            self.pending
                .push_back(async move { Completion::Attach { id, sub, consumer } }.boxed());
            return Ok(());
        }
        // The floor of "all" and of a seq is fixed now; only "new" depends on what the log
        // holds when the record is written, so the writer resolves it.
        let floor = match start.unwrap_or(Start::All) {
            Start::New => Floor::Head,
            Start::All => Floor::At(0),
            Start::Seq(seq) => Floor::At(seq.saturating_sub(1)),
            time => match self.resolve_start(time).await {
                Ok(first) if first > self.ctx.store.feed.head() => Floor::Head,
                Ok(first) => Floor::At(first - 1),
                Err(e) => return self.send(internal(id, e)).await,
            },
        };
        let entry = Entry::ConsumerCreated {
            name: name.clone(),
            pattern: pattern.as_str().to_owned(),
            start: floor,
        };
        self.submit(vec![entry], id, move |id, _| Completion::Created {
            id,
            sub,
            name,
            pattern,
        })
        .await
    }

    async fn subscribe_ephemeral(
        &mut self,
        id: Option<Id>,
        pattern: Pattern,
        start: Option<Start>,
    ) -> Result<(), ()> {
        let from = match self.resolve_start(start.unwrap_or(Start::New)).await {
            Ok(from) => from,
            Err(e) => return self.send(internal(id, e)).await,
        };
        let sub = self.new_sub();
        self.send(Reply::Subscribed {
            id,
            sub: sub.to_string(),
            consumer: None,
        })
        .await?;
        let source = EventSource::new(
            self.ctx.store.feed.clone(),
            self.ctx.store.log.clone(),
            from,
        );
        let task = tokio::spawn(run_ephemeral(
            pattern,
            sub.clone(),
            self.outbound.clone(),
            source,
        ));
        self.subs.insert(
            sub,
            Subscription::Ephemeral {
                task: task.abort_handle(),
            },
        );
        Ok(())
    }

    async fn attach(
        &mut self,
        id: Option<Id>,
        sub: Arc<str>,
        consumer: Arc<Consumer>,
    ) -> Result<(), ()> {
        self.send(Reply::Subscribed {
            id,
            sub: sub.to_string(),
            consumer: Some(consumer.name.clone()),
        })
        .await?;
        let (generation, old) = consumer.attach(self.id, sub.clone(), self.outbound.clone());
        if let Some(old) = old {
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
        let delivery = DurableDelivery {
            consumer: consumer.clone(),
            generation,
            sub: sub.clone(),
            outbound: self.outbound.clone(),
            source: EventSource::new(
                self.ctx.store.feed.clone(),
                self.ctx.store.log.clone(),
                consumer.floor() + 1,
            ),
            state: self.ctx.store.state.clone(),
            max_in_flight: self.ctx.config.max_in_flight,
        };
        let task = tokio::spawn(delivery.run());
        consumer.set_task(generation, task.abort_handle());
        self.subs.insert(sub, Subscription::Durable { consumer });
        Ok(())
    }

    async fn ack(&mut self, id: Option<Id>, name: String, seqs: Vec<u64>) -> Result<(), ()> {
        let Some(consumer) = self.ctx.store.consumers.get(&name) else {
            let message = format!("no consumer named {name:?}");
            return self
                .send(Reply::error(id, ErrorCode::NotFound, message))
                .await;
        };
        let head = self.ctx.store.feed.head();
        if let Some(&beyond) = seqs.iter().find(|&&s| s > head) {
            let message = format!("seq {beyond} has not been published (the newest is {head})");
            return self
                .send(Reply::error(id, ErrorCode::BadRequest, message))
                .await;
        }
        let floor = consumer.floor_for_ack(&seqs);
        let entry = Entry::Acked {
            consumer: name,
            seqs,
            floor,
        };
        self.submit(vec![entry], id, |id, _| match id {
            Some(id) => Completion::Reply(Reply::Ok { id: Some(id) }),
            None => Completion::Silent,
        })
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
        match subscription {
            Subscription::Durable { consumer } => {
                consumer.detach(self.id, sub);
            }
            Subscription::Ephemeral { task } => task.abort(),
        }
    }

    fn detach_all(&mut self) {
        for (sub, subscription) in std::mem::take(&mut self.subs) {
            self.end(&sub, subscription);
        }
    }

    async fn complete(&mut self, done: Completion) -> Result<(), ()> {
        match done {
            Completion::Reply(reply) => self.send(reply).await,
            Completion::Silent => Ok(()),
            Completion::Attach { id, sub, consumer } => self.attach(id, sub, consumer).await,
            Completion::Created {
                id,
                sub,
                name,
                pattern,
            } => match self.ctx.store.consumers.get(&name) {
                Some(consumer) if consumer.pattern == pattern => {
                    self.attach(id, sub, consumer).await
                }
                Some(consumer) => {
                    let reply = conflict(id, &name, &consumer.pattern, &pattern);
                    self.send(reply).await
                }
                None => self.send(internal(id, "consumer was not created")).await,
            },
        }
    }
}

fn conflict(id: Option<Id>, name: &str, existing: &Pattern, asked: &Pattern) -> Reply {
    Reply::error(
        id,
        ErrorCode::ConsumerConflict,
        format!("consumer {name:?} exists with pattern {existing:?}, not {asked:?}"),
    )
}

fn close_frame(code: CloseCode, reason: &str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.to_owned().into(),
    }
}

/// Drains the outbound queue into the socket, many frames per flush.
async fn write_frames(mut sink: SplitSink<Ws, Message>, mut rx: mpsc::Receiver<Message>) {
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        let mut closing = false;
        while let Some(msg) = next.take() {
            closing = matches!(msg, Message::Close(_));
            if sink.feed(msg).await.is_err() {
                return;
            }
            if !closing {
                next = rx.try_recv().ok();
            }
        }
        if sink.flush().await.is_err() || closing {
            break;
        }
    }
    let _closed = sink.close().await;
}
