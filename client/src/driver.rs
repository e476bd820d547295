//! The task that owns the WebSocket: sends requests and matches their replies by id, routes
//! events and notices to subscriptions, and reconnects.
//!
//! After a reconnect it says `hello` again, resubscribes every subscription (durable by
//! name; ephemeral from the seq after the last one delivered), then sends again, in id
//! order, every request that was not answered and may be: publishes with a `msg_id` (the
//! broker stores each once) and reads. Settles, other writes, and publishes without a
//! `msg_id` still unanswered fail with [`Error::Closed`] (an unsettled event is delivered
//! again; such a publish may or may not have been stored).
//!
//! With `Options::reconnect` off it serves one connection: when that drops, everything still
//! waiting fails with [`Error::Disconnected`] and the driver ends.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use wharf_protocol::{ErrorCode, Id, Reply, Request};

use crate::connection::{closed_by_broker, open, Ws};
use crate::link::{Command, Delivery, Incoming, Spec, Subscribed};
use crate::options::{Options, Token};
use crate::outbox::{key_of, Outbox};
use crate::{id_of, Error, State};

/// Requests written to the socket before one flush, when callers send them faster than
/// the socket takes them (pipelined publishes leave in few writes).
const FEED_BATCH: usize = 256;

/// A request sent (or waiting for the connection), by what is to be done with its reply.
enum Waiting {
    /// Sent again after a reconnect until answered.
    Publish(oneshot::Sender<Result<String, Error>>),
    Read(oneshot::Sender<Result<String, Error>>),
    /// Fails with `Closed` if the connection drops first.
    Write(oneshot::Sender<Result<String, Error>>),
    Hello(Option<oneshot::Sender<Result<(), Error>>>),
    Subscribe(u64),
    /// Nobody waits for it (an unsubscribe, a fresh token).
    Internal,
    /// A publish a previous client left in the outbox: sent again after a reconnect until
    /// answered; nobody waits for it.
    Replayed,
}

struct Pending {
    request: Request,
    waiting: Waiting,
    /// Its key in the outbox, for a publish kept there.
    kept: Option<String>,
}

struct Sub {
    spec: Spec,
    events: mpsc::UnboundedSender<Incoming>,
    /// The broker's id for it on the current connection (shared with its deliveries).
    server: Option<Arc<str>>,
    /// Ephemeral: where to resubscribe from.
    resume: Option<u64>,
    /// Waiting for its first `subscribed`.
    first: Option<Subscribed>,
}

/// The head of every broker frame.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default)]
    id: Option<Id>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    consumer: Option<String>,
}

#[derive(Deserialize)]
struct EventIn<'a> {
    #[serde(borrow)]
    sub: std::borrow::Cow<'a, str>,
    #[serde(default)]
    consumer: Option<String>,
    // Not `#[serde(flatten)]` with an `ItemIn`: flattening buffers the fields, and a
    // borrowed `RawValue` cannot come through that buffer.
    seq: u64,
    topic: String,
    #[serde(borrow)]
    payload: &'a RawValue,
    published_at: String,
    delivery: u32,
}

/// A subscription's `events` frame (it asked for `batch`).
#[derive(Deserialize)]
struct EventsIn<'a> {
    #[serde(borrow)]
    sub: std::borrow::Cow<'a, str>,
    #[serde(default)]
    consumer: Option<String>,
    #[serde(borrow)]
    events: Vec<ItemIn<'a>>,
}

/// One event, alone in its frame or in an `events` frame.
#[derive(Deserialize)]
struct ItemIn<'a> {
    seq: u64,
    topic: String,
    #[serde(borrow)]
    payload: &'a RawValue,
    published_at: String,
    delivery: u32,
}

struct Driver {
    /// Where the connection stands, for [`crate::Client::state`].
    state: watch::Sender<State>,
    options: Options,
    commands: mpsc::UnboundedReceiver<Command>,
    /// For deliveries to settle through, without keeping the client alive.
    link: mpsc::WeakUnboundedSender<Command>,
    next_id: u64,
    pending: BTreeMap<u64, Pending>,
    subs: BTreeMap<u64, Sub>,
    by_server: HashMap<Arc<str>, u64>,
    hello: Option<Request>,
    publishes: usize,
    next_url: usize,
    /// `Options::outbox`: publishes kept in a file until answered.
    outbox: Option<Outbox>,
}

/// Connects (within `options.connect_timeout`) and starts the driver.
pub(crate) async fn start(
    options: Options,
) -> Result<(mpsc::UnboundedSender<Command>, watch::Receiver<State>), Error> {
    if options.urls.is_empty() {
        return Err(Error::Invalid("no broker URL given".into()));
    }
    // Opened (and locked) before connecting: a client that cannot keep its publishes
    // should not take any.
    let outbox = match &options.outbox {
        Some(path) => Some(Outbox::open(path)?),
        None => None,
    };
    let replay = match &outbox {
        Some(outbox) => outbox.entries(),
        None => Vec::new(),
    };
    let mut next_url = 0;
    let deadline = tokio::time::Instant::now() + options.connect_timeout;
    let mut backoff = options.min_backoff;
    let (ws, url) = loop {
        let url = &options.urls[next_url % options.urls.len()];
        next_url += 1;
        let opening = open(url, &options.token, options.read_buffer);
        let why = match tokio::time::timeout_at(deadline, opening).await {
            Ok(Ok(ws)) => break (ws, url.clone()),
            Ok(Err(why)) => why,
            Err(_) => format!("{url}: no answer in time"),
        };
        if !options.retry_connect {
            // Each URL once, without waiting.
            if next_url >= options.urls.len() {
                return Err(Error::Connect(why));
            }
            continue;
        }
        if tokio::time::Instant::now() + backoff >= deadline {
            return Err(Error::Connect(why));
        }
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(options.max_backoff);
    };
    let (commands, receiver) = mpsc::unbounded_channel();
    let (state, watching) = watch::channel(State::Connected { url });
    let mut driver = Driver {
        state,
        options,
        commands: receiver,
        link: commands.downgrade(),
        next_id: 0,
        pending: BTreeMap::new(),
        subs: BTreeMap::new(),
        by_server: HashMap::new(),
        hello: None,
        publishes: 0,
        next_url,
        outbox,
    };
    // What a previous client left goes first (the lowest ids), in the order it was made.
    for (key, request) in replay {
        let id = driver.register(request, Waiting::Replayed);
        if let Some(p) = driver.pending.get_mut(&id) {
            p.kept = Some(key);
        }
    }
    tokio::spawn(driver.run(ws));
    Ok((commands, watching))
}

/// `wait` give or take half, so that clients a broker restart dropped together do not
/// come back together.
fn jitter(wait: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let r = match getrandom::fill(&mut byte) {
        Ok(()) => f64::from(byte[0]) / 255.0,
        Err(_) => 0.5,
    };
    wait.mul_f64(0.5 + r)
}

/// Why the connection's service ended.
enum Ended {
    /// The connection failed, for this reason.
    Lost(String),
    Closed,
}

impl Driver {
    async fn run(mut self, ws: Ws) {
        let mut ws = Some(ws);
        loop {
            let conn = match ws.take() {
                Some(conn) => conn,
                None => match self.reconnect().await {
                    Some((conn, url)) => {
                        self.state.send_replace(State::Connected { url });
                        conn
                    }
                    None => break,
                },
            };
            let (mut sink, mut stream) = conn.split();
            let ended = match self.resume(&mut sink).await {
                Ok(()) => self.serve(&mut sink, &mut stream).await,
                Err(e) => Ended::Lost(format!("the connection failed as it was resumed: {e}")),
            };
            match ended {
                Ended::Lost(why) if self.options.reconnect => self.lost(&why),
                Ended::Lost(why) => {
                    // Unlocked before anyone is told the client ended.
                    self.outbox = None;
                    self.state.send_replace(State::Disconnected {
                        reason: why.clone(),
                    });
                    self.fail_all(|| Error::Disconnected(why.clone()));
                    return;
                }
                Ended::Closed => {
                    let _closing = sink.close().await;
                    break;
                }
            }
        }
        // Unlocked (what it holds kept for the next client) before anyone is told.
        self.outbox = None;
        self.state.send_replace(State::Closed);
        self.fail_all(|| Error::Closed);
    }

    /// Tries the URLs in turn with backoff, serving commands meanwhile (publishes queue);
    /// `None` once the client is closed.
    async fn reconnect(&mut self) -> Option<(Ws, String)> {
        let mut backoff = self.options.min_backoff;
        loop {
            let url = self.options.urls[self.next_url % self.options.urls.len()].clone();
            self.next_url += 1;
            let token = self.options.token.clone();
            let read_buffer = self.options.read_buffer;
            let wait = jitter(backoff);
            let attempt = async move {
                tokio::time::sleep(wait).await;
                open(&url, &token, read_buffer).await.map(|ws| (ws, url))
            };
            tokio::pin!(attempt);
            loop {
                tokio::select! {
                    opened = &mut attempt => match opened {
                        Ok(ws) => return Some(ws),
                        Err(_) => break,
                    },
                    command = self.commands.recv() => match command {
                        None | Some(Command::Close) => return None,
                        Some(command) => {
                            // Sent once connected (or refused now: a full queue).
                            let _later = self.accept(command);
                        }
                    },
                }
            }
            backoff = (backoff * 2).min(self.options.max_backoff);
        }
    }

    /// Takes a command: registers what it waits for (to be sent when connected).
    /// Returns the id to send now, if any.
    fn accept(&mut self, command: Command) -> Option<u64> {
        let (request, waiting) = match command {
            Command::Close => return None,
            Command::Request { request, reply } => {
                let waiting = match request {
                    Request::Publish { .. } | Request::PublishBatch { .. } => {
                        if self.publishes >= self.options.max_queued {
                            let _told = reply.send(Err(Error::QueueFull(self.publishes)));
                            return None;
                        }
                        let kept = match (&mut self.outbox, key_of(&request)) {
                            (Some(outbox), Some(key)) => match outbox.add(&key, &request) {
                                Ok(()) => Some(key),
                                Err(e) => {
                                    // Not kept, so not sent: the caller learns it now.
                                    let _told = reply.send(Err(e));
                                    return None;
                                }
                            },
                            _ => None,
                        };
                        self.publishes += 1;
                        let id = self.register(request, Waiting::Publish(reply));
                        if let Some(p) = self.pending.get_mut(&id) {
                            p.kept = kept;
                        }
                        return Some(id);
                    }
                    Request::History { .. }
                    | Request::Last { .. }
                    | Request::Presence { .. }
                    | Request::Stats { .. }
                    | Request::Topics { .. }
                    | Request::Consumers { .. }
                    | Request::ConsumerInfo { .. }
                    | Request::Ping { .. } => Waiting::Read(reply),
                    Request::Subscribe { .. } | Request::Hello { .. } | Request::Auth { .. } => {
                        let _told = reply.send(Err(Error::Invalid(
                            "use Client::subscribe, Client::hello, or Options' token".into(),
                        )));
                        return None;
                    }
                    _ => Waiting::Write(reply),
                };
                (request, waiting)
            }
            Command::Hello { request, reply } => (request, Waiting::Hello(Some(reply))),
            Command::Subscribe {
                spec,
                events,
                reply,
            } => {
                self.next_id += 1;
                let local = self.next_id;
                let request = spec.request(None);
                self.subs.insert(
                    local,
                    Sub {
                        spec,
                        events,
                        server: None,
                        resume: None,
                        first: Some(reply),
                    },
                );
                (request, Waiting::Subscribe(local))
            }
            Command::Auth(request) => (request, Waiting::Internal),
            Command::Unsubscribe { local, reply } => {
                let server = self.subs.remove(&local).and_then(|sub| sub.server);
                let Some(server) = server else {
                    // Not subscribed on this connection: nothing to undo on the broker.
                    if let Some(reply) = reply {
                        let _told = reply.send(Ok(String::new()));
                    }
                    return None;
                };
                self.by_server.remove(&server);
                let waiting = match reply {
                    Some(reply) => Waiting::Write(reply),
                    None => Waiting::Internal,
                };
                (
                    Request::Unsubscribe {
                        id: None,
                        sub: server.to_string(),
                    },
                    waiting,
                )
            }
        };
        Some(self.register(request, waiting))
    }

    fn register(&mut self, mut request: Request, waiting: Waiting) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        request.set_id(Some(id_of(id)));
        self.pending.insert(
            id,
            Pending {
                request,
                waiting,
                kept: None,
            },
        );
        id
    }

    async fn send(
        &mut self,
        sink: &mut SplitSink<Ws, Message>,
        id: u64,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.feed(sink, id).await?;
        sink.flush().await
    }

    /// Writes a request without flushing.
    async fn feed(
        &mut self,
        sink: &mut SplitSink<Ws, Message>,
        id: u64,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        match self.pending.get(&id) {
            Some(p) => sink.feed(Message::text(p.request.to_json())).await,
            None => Ok(()),
        }
    }

    /// A command, and those already queued behind it (at most [`FEED_BATCH`]), written
    /// with one flush. `false` once the client is closed.
    async fn commands(
        &mut self,
        first: Command,
        sink: &mut SplitSink<Ws, Message>,
    ) -> Result<bool, tokio_tungstenite::tungstenite::Error> {
        let mut command = first;
        let mut open = true;
        let mut fed = 0;
        loop {
            if matches!(command, Command::Close) {
                open = false;
                break;
            }
            if let Some(id) = self.accept(command) {
                self.feed(sink, id).await?;
            }
            fed += 1;
            if fed >= FEED_BATCH {
                break;
            }
            match self.commands.try_recv() {
                Ok(next) => command = next,
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        sink.flush().await?;
        Ok(open)
    }

    /// On a new connection: hello, every subscription again, then what was not answered.
    async fn resume(
        &mut self,
        sink: &mut SplitSink<Ws, Message>,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        // A hello goes before the subscriptions (the broker refuses one after presence):
        // a new one still waiting for its reply, or else the last one accepted.
        let waiting_hello: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| matches!(p.waiting, Waiting::Hello(_)))
            .map(|(id, _)| *id)
            .collect();
        for id in &waiting_hello {
            self.feed(sink, *id).await?;
        }
        if waiting_hello.is_empty() {
            if let Some(hello) = self.hello.clone() {
                let id = self.register(hello, Waiting::Hello(None));
                self.feed(sink, id).await?;
            }
        }
        let unanswered: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| !matches!(p.waiting, Waiting::Hello(_)))
            .map(|(id, _)| *id)
            .collect();
        let locals: Vec<u64> = self
            .subs
            .iter()
            .filter(|(local, _)| {
                !self
                    .pending
                    .values()
                    .any(|p| matches!(p.waiting, Waiting::Subscribe(l) if l == **local))
            })
            .map(|(local, _)| *local)
            .collect();
        for local in locals {
            let Some(sub) = self.subs.get(&local) else {
                continue;
            };
            let request = sub.spec.request(sub.resume);
            let id = self.register(request, Waiting::Subscribe(local));
            self.feed(sink, id).await?;
        }
        for id in unanswered {
            self.feed(sink, id).await?;
        }
        sink.flush().await
    }

    async fn serve(
        &mut self,
        sink: &mut SplitSink<Ws, Message>,
        stream: &mut SplitStream<Ws>,
    ) -> Ended {
        loop {
            tokio::select! {
                command = self.commands.recv() => match command {
                    None => return Ended::Closed,
                    Some(command) => match self.commands(command, sink).await {
                        Ok(true) => {}
                        Ok(false) => return Ended::Closed,
                        Err(e) => return Ended::Lost(e.to_string()),
                    },
                },
                frame = stream.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(id) = self.frame(text.as_str()) {
                            if let Err(e) = self.send(sink, id).await {
                                return Ended::Lost(e.to_string());
                            }
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        return Ended::Lost(closed_by_broker(frame.as_ref().map(|f| f.reason.as_str())));
                    }
                    Some(Err(e)) => return Ended::Lost(e.to_string()),
                    None => return Ended::Lost("the connection ended".into()),
                    Some(Ok(_)) => {}
                },
            }
        }
    }

    /// One broker frame. Returns a request to send because of it (a fresh token).
    fn frame(&mut self, text: &str) -> Option<u64> {
        let Ok(head) = serde_json::from_str::<Head>(text) else {
            return None;
        };
        match head.kind {
            "event" => {
                if let Ok(ev) = serde_json::from_str::<EventIn>(text) {
                    let item = ItemIn {
                        seq: ev.seq,
                        topic: ev.topic,
                        payload: ev.payload,
                        published_at: ev.published_at,
                        delivery: ev.delivery,
                    };
                    self.event(&ev.sub, ev.consumer, item);
                }
                None
            }
            "events" => {
                if let Ok(frame) = serde_json::from_str::<EventsIn>(text) {
                    for item in frame.events {
                        self.event(&frame.sub, frame.consumer.clone(), item);
                    }
                }
                None
            }
            "gap" => {
                // For every subscription of that consumer.
                let reply: Option<Reply> = serde_json::from_str(text).ok();
                if let (Some(reply), Some(consumer)) = (reply, head.consumer) {
                    for sub in self.subs.values() {
                        if sub.spec.consumer.as_deref() == Some(&consumer) {
                            let _gone = sub.events.send(Incoming::Notice(reply.clone()));
                        }
                    }
                }
                None
            }
            "lost" | "join" | "leave" | "unsubscribed" => {
                let local = head
                    .sub
                    .and_then(|s| self.by_server.get(s.as_str()).copied())?;
                let reply: Reply = serde_json::from_str(text).ok()?;
                if head.kind == "unsubscribed" {
                    // The broker ended it: it is not made again.
                    if let Some(sub) = self.subs.remove(&local) {
                        let _gone = sub.events.send(Incoming::Notice(reply));
                    }
                } else if let Some(sub) = self.subs.get(&local) {
                    let _gone = sub.events.send(Incoming::Notice(reply));
                }
                None
            }
            "token_expiring" => self.fresh_token(),
            _ => {
                let id = head.id.as_ref().and_then(Id::as_u64)?;
                let pending = self.pending.remove(&id)?;
                self.answered(pending, head.kind, text)
            }
        }
    }

    fn event(&mut self, server_sub: &str, consumer: Option<String>, ev: ItemIn) {
        let Some(&local) = self.by_server.get(server_sub) else {
            return;
        };
        let Some(sub) = self.subs.get_mut(&local) else {
            return;
        };
        if sub.spec.consumer.is_none() {
            sub.resume = Some(ev.seq + 1);
        }
        let Some(server) = sub.server.clone() else {
            return;
        };
        let delivery = Delivery {
            sub: server,
            seq: ev.seq,
            topic: ev.topic,
            payload: ev.payload.to_owned(),
            published_at: ev.published_at,
            delivery: ev.delivery,
            consumer,
            link: self.link.clone(),
        };
        let _gone = sub.events.send(Incoming::Event(delivery));
    }

    /// A token is about to expire: with a token source, a fresh one goes in an `auth`.
    fn fresh_token(&mut self) -> Option<u64> {
        let Some(Token::Fresh(source)) = self.options.token.clone() else {
            return None;
        };
        let link = self.link.clone();
        tokio::spawn(async move {
            if let (Ok(token), Some(commands)) = (source().await, link.upgrade()) {
                let _sent = commands.send(Command::Auth(Request::Auth { id: None, token }));
            }
        });
        None
    }

    /// Resolves what waited for a reply; returns a request to send because of it.
    fn answered(&mut self, pending: Pending, kind: &str, text: &str) -> Option<u64> {
        let refused = || -> Error {
            match serde_json::from_str::<Reply>(text) {
                Ok(Reply::Error { code, message, .. }) => Error::Refused { code, message },
                _ => Error::Protocol(format!("unreadable error frame: {text}")),
            }
        };
        let result = if kind == "error" {
            Err(refused())
        } else {
            Ok(text.to_owned())
        };
        if let (Some(outbox), Some(key)) = (&mut self.outbox, &pending.kept) {
            // Answered: out of the outbox, as the caller is told (a caller told of a
            // refusal may publish again, under a new msg_id: a kept entry would then be
            // stored twice). An entry a previous client left has nobody to tell: a
            // refusal that says nothing was stored for now (`unavailable`: no quorum;
            // `internal`: a full disk; `limit_exceeded`: the dedup table; `unauthorized`)
            // leaves it for the next client.
            let again = matches!(pending.waiting, Waiting::Replayed)
                && matches!(
                    &result,
                    Err(Error::Refused {
                        code: ErrorCode::Unavailable
                            | ErrorCode::Internal
                            | ErrorCode::LimitExceeded
                            | ErrorCode::Unauthorized,
                        ..
                    })
                );
            if !again {
                // A `done` that could not be written sends the entry once more next time:
                // its msg_ids keep it stored once.
                let _resent_if_lost = outbox.done(key);
            }
        }
        match pending.waiting {
            Waiting::Publish(reply) => {
                self.publishes = self.publishes.saturating_sub(1);
                let _told = reply.send(result);
            }
            Waiting::Read(reply) | Waiting::Write(reply) => {
                let _told = reply.send(result);
            }
            Waiting::Hello(reply) => {
                // The hello said again after a reconnect is the last accepted one; a new
                // one the broker refused does not replace it.
                if result.is_ok() {
                    self.hello = Some(pending.request);
                }
                if let Some(reply) = reply {
                    let _told = reply.send(result.map(drop));
                }
            }
            Waiting::Subscribe(local) => return self.subscribed(local, result),
            Waiting::Internal | Waiting::Replayed => {}
        }
        None
    }

    /// A subscribe's reply. A subscription nobody holds any more (dropped while it was being
    /// made again, or its first subscribe was given up) is unsubscribed at once: the
    /// broker would otherwise keep it (and its presence, and a durable consumer's in-flight
    /// slots). Returns that unsubscribe, to send.
    fn subscribed(&mut self, local: u64, result: Result<String, Error>) -> Option<u64> {
        let reply = result.and_then(|text| {
            serde_json::from_str::<Reply>(&text).map_err(|e| Error::Protocol(e.to_string()))
        });
        let server = match &reply {
            Ok(Reply::Subscribed { sub, .. }) => Some(sub.clone()),
            _ => None,
        };
        let abandoned = match self.subs.get_mut(&local) {
            None => true,
            Some(sub) => sub.first.as_ref().is_some_and(|first| first.is_closed()),
        };
        if abandoned {
            self.subs.remove(&local);
            return server.map(|sub| {
                self.register(Request::Unsubscribe { id: None, sub }, Waiting::Internal)
            });
        }
        let sub = self.subs.get_mut(&local)?;
        match reply {
            Ok(Reply::Subscribed {
                sub: server,
                start_seq,
                ..
            }) => {
                if sub.spec.consumer.is_none() && sub.resume.is_none() {
                    sub.resume = start_seq;
                }
                let server: Arc<str> = server.into();
                sub.server = Some(server.clone());
                self.by_server.insert(server, local);
                if let Some(first) = sub.first.take() {
                    let _told = first.send(Ok((local, start_seq)));
                }
            }
            other => {
                let error = match other {
                    Err(e) => e,
                    Ok(reply) => Error::Protocol(format!("unexpected reply {}", reply.to_json())),
                };
                if let Some(sub) = self.subs.remove(&local) {
                    match sub.first {
                        Some(first) => {
                            let _told = first.send(Err(error));
                        }
                        None => {
                            let (code, message) = match error {
                                Error::Refused { code, message } => (code, message),
                                other => (ErrorCode::Internal, other.to_string()),
                            };
                            let notice = Reply::error(None, code, message);
                            let _gone = sub.events.send(Incoming::Notice(notice));
                        }
                    }
                }
            }
        }
        None
    }

    /// The connection dropped: writes waiting for a reply fail; everything else waits for
    /// the next connection.
    fn lost(&mut self, why: &str) {
        self.state.send_replace(State::Reconnecting {
            reason: why.to_owned(),
        });
        self.by_server.clear();
        for sub in self.subs.values_mut() {
            sub.server = None;
        }
        let ids: Vec<u64> = self.pending.keys().copied().collect();
        for id in ids {
            let resend = self.pending.get(&id).is_some_and(|p| match &p.waiting {
                // Sent again only with msg_ids: the broker then stores each once.
                Waiting::Publish(_) => has_msg_ids(&p.request),
                Waiting::Read(_) | Waiting::Hello(Some(_)) | Waiting::Replayed => true,
                _ => false,
            });
            if resend {
                continue;
            }
            if let Some(p) = self.pending.remove(&id) {
                match p.waiting {
                    Waiting::Write(reply) => {
                        let _told = reply.send(Err(Error::Closed));
                    }
                    Waiting::Publish(reply) => {
                        self.publishes = self.publishes.saturating_sub(1);
                        let _told = reply.send(Err(Error::Closed));
                    }
                    _ => {}
                }
            }
        }
    }

    /// The driver ends: everything still waiting fails with `error()`, and every
    /// subscription's stream ends.
    fn fail_all(&mut self, error: impl Fn() -> Error) {
        for (_, p) in std::mem::take(&mut self.pending) {
            match p.waiting {
                Waiting::Publish(reply) | Waiting::Read(reply) | Waiting::Write(reply) => {
                    let _told = reply.send(Err(error()));
                }
                Waiting::Hello(Some(reply)) => {
                    let _told = reply.send(Err(error()));
                }
                _ => {}
            }
        }
        for (_, sub) in std::mem::take(&mut self.subs) {
            if let Some(first) = sub.first {
                let _told = first.send(Err(error()));
            }
        }
        // Commands sent after this point find the channel closed (`Error::Closed`); those
        // already in it are answered now.
        self.commands.close();
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Request { reply, .. } => {
                    let _told = reply.send(Err(error()));
                }
                Command::Hello { reply, .. } => {
                    let _told = reply.send(Err(error()));
                }
                Command::Subscribe { reply, .. } => {
                    let _told = reply.send(Err(error()));
                }
                Command::Unsubscribe {
                    reply: Some(reply), ..
                } => {
                    let _told = reply.send(Ok(String::new()));
                }
                _ => {}
            }
        }
    }
}

/// Whether every event of a publish carries a msg_id (so sending it again is safe).
fn has_msg_ids(request: &Request) -> bool {
    match request {
        Request::Publish { event, .. } => event.msg_id.is_some(),
        Request::PublishBatch { events, .. } => events.iter().all(|e| e.msg_id.is_some()),
        _ => false,
    }
}
