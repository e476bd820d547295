//! An async client for the wharf broker, on tokio.
//!
//! Getting reconnection, resumption and acking right is where events get lost, so this
//! crate does it once, the way `clients/js/wharf.js` does:
//!
//! * [`Client`] (this file) is the handle an application holds: publish, subscribe, read
//!   (`history`, `last`, `presence`), name itself (`hello`), or send any [`Request`].
//! * `link` is what passes between the handles and the driver (commands, the checked
//!   subscribe, what a subscription receives); `driver` owns the WebSocket. It reconnects with backoff and jitter across the URLs it
//!   was given, and after each reconnect says `hello` again, resubscribes (a durable
//!   consumer by name: the broker redelivers what was not acked; an ephemeral subscription
//!   from the seq after the last one it delivered), then sends again every publish not
//!   confirmed yet, in order, with its `msg_id` (stored once however often it is sent).
//! * [`Subscription`] is a [`Stream`](futures_util::Stream) of [`Incoming`] items: events
//!   (each a [`Delivery`] with `ack`, `nack`, `term`, `progress`) and notices (gaps, lost
//!   events, the end of the subscription, presence joins and leaves).
//! * [`Error`] carries the wire's [`ErrorCode`] when the broker refused something.
//! * [`Connection`] (`connection`) is the layer below, for code that measures the broker
//!   (`wharf bench`): one socket with the same URL and token handling, frames in and out as
//!   text, nothing done for the caller.
//!
//! ```no_run
//! # async fn demo() -> Result<(), wharf_client::Error> {
//! use futures_util::StreamExt;
//! use wharf_client::{Client, Incoming, Options, Subscribe};
//!
//! let client = Client::connect(Options::new("ws://127.0.0.1:7700/ws")).await?;
//! let published = client.publish("orders.created", &serde_json::json!({"id": 7})).await?;
//! println!("stored as seq {}", published.seq);
//!
//! let mut orders = client.subscribe(Subscribe::durable("billing", ["orders.>"])).await?;
//! while let Some(item) = orders.next().await {
//!     if let Incoming::Event(delivery) = item {
//!         println!("{} {}", delivery.seq, delivery.payload.get());
//!         delivery.ack().await?;
//!     }
//! }
//! # Ok(())
//! # }
//! ```

mod connection;
mod driver;
mod error;
mod link;
mod options;
mod outbox;
mod subscription;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use wharf_protocol::{Id, NewEvent, Pattern, PresentClient, Reply, Request, Topic};

pub use connection::{Connection, Receiver, Sender, Text};
pub use error::Error;
pub use link::{Delivery, Incoming};
pub use options::{Options, Token, TokenSource};
pub use subscription::{Subscribe, Subscription};
pub use wharf_protocol::ErrorCode;

use link::Command;

/// Where a published event was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    pub seq: u64,
    /// The `msg_id` was stored before (inside the broker's dedup window): `seq` is the
    /// original's, and nothing new was stored.
    pub duplicate: bool,
}

/// A page of stored events (`history`, `last`), oldest first.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Page {
    pub events: Vec<Stored>,
    /// More events (or, for `last`, topics) match beyond this page.
    pub more: bool,
    /// The oldest seq the broker still holds.
    pub first_seq: u64,
}

/// A stored event as `history` and `last` return it.
///
/// ```
/// let e: wharf_client::Stored = serde_json::from_str(
///     r#"{"seq":3,"topic":"room.a","payload":{"b":1,"a":2},"published_at":"2026-11-29T08:00:00.000Z"}"#,
/// )
/// .unwrap();
/// assert_eq!(e.payload.get(), r#"{"b":1,"a":2}"#);
/// ```
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Stored {
    pub seq: u64,
    pub topic: String,
    /// The publisher's JSON, byte for byte (parse it with `serde_json::from_str(payload.get())`).
    pub payload: Box<RawValue>,
    /// RFC 3339, milliseconds.
    pub published_at: String,
}

impl PartialEq for Stored {
    fn eq(&self, other: &Stored) -> bool {
        self.seq == other.seq
            && self.topic == other.topic
            && self.payload.get() == other.payload.get()
            && self.published_at == other.published_at
    }
}

/// Which end of the matching events a `history` page is taken from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Paging {
    /// The newest.
    #[default]
    Newest,
    /// The newest below this seq (page backwards: give the first seq of the page you have).
    Before(u64),
    /// The oldest above this seq (page forwards).
    After(u64),
}

/// Where a client's connection stands (see [`Client::state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Connected to this URL.
    Connected { url: String },
    /// The connection was lost, for this reason; the client is reconnecting (publishes
    /// queue meanwhile).
    Reconnecting { reason: String },
    /// The client was closed.
    Closed,
    /// The connection was lost and `Options::reconnect` is off: the client is closed for
    /// good, for this reason.
    Disconnected { reason: String },
}

/// A connection to a wharf broker that survives the broker's restarts; cheap to clone.
/// Dropping the last clone closes it.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    commands: mpsc::UnboundedSender<Command>,
    state: tokio::sync::watch::Receiver<State>,
    /// Prefix of the msg_ids this client gives publishes: random per client.
    msg_prefix: String,
    next_msg: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ended = self.commands.send(Command::Close);
    }
}

impl Client {
    /// Connects to the first of `options.urls` that answers (trying them in turn, with
    /// backoff, for `options.connect_timeout`), then stays connected: see the crate docs.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), wharf_client::Error> {
    /// use wharf_client::{Client, Options};
    /// let client = Client::connect(
    ///     Options::new("ws://10.0.0.1:7700/ws").url("ws://10.0.0.2:7700/ws").token("s3cret"),
    /// )
    /// .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(options: Options) -> Result<Client, Error> {
        let (commands, state) = driver::start(options).await?;
        Ok(Client {
            inner: Arc::new(Inner {
                commands,
                state,
                msg_prefix: random_prefix(),
                next_msg: AtomicU64::new(0),
            }),
        })
    }

    /// Where the connection stands, now and as it changes (a UI shows "reconnecting…").
    ///
    /// ```no_run
    /// # async fn demo(client: wharf_client::Client) {
    /// use wharf_client::State;
    /// let mut state = client.state();
    /// while state.changed().await.is_ok() {
    ///     if let State::Reconnecting { reason } = &*state.borrow() {
    ///         eprintln!("reconnecting: {reason}");
    ///     }
    /// }
    /// # }
    /// ```
    pub fn state(&self) -> tokio::sync::watch::Receiver<State> {
        self.inner.state.clone()
    }

    fn send(&self, command: Command) -> Result<(), Error> {
        self.inner.commands.send(command).map_err(|_| Error::Closed)
    }

    /// Sends `request` (its `id` is set here) and waits for its reply. A reply of type
    /// `error` is [`Error::Refused`]. Reads are sent again after a reconnect; a request
    /// that changes something (other than a publish) fails with [`Error::Closed`] when the
    /// connection drops before its reply.
    ///
    /// The request is handed to the connection when this is called, not when the future is
    /// first polled: requests made one after another go out in that order (and the broker
    /// answers in it) however their futures are awaited, so many can be in flight at once.
    ///
    /// ```no_run
    /// # async fn demo(client: wharf_client::Client) -> Result<(), wharf_client::Error> {
    /// use wharf_protocol::{Reply, Request};
    /// if let Reply::Stats(stats) = client.request(Request::Stats { id: None }).await? {
    ///     println!("head seq {}", stats.head_seq);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn request(
        &self,
        request: Request,
    ) -> impl Future<Output = Result<Reply, Error>> + Send + 'static {
        let answer = self.request_text(request);
        async move {
            let text = answer.await?;
            serde_json::from_str(&text).map_err(|e| Error::Protocol(format!("{e}: {text}")))
        }
    }

    /// [`Client::request`], returning the reply's JSON text as the broker sent it. Sent
    /// now; the future waits for the reply.
    fn request_text(
        &self,
        request: Request,
    ) -> impl Future<Output = Result<String, Error>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let sent = self.send(Command::Request { request, reply });
        async move {
            sent?;
            answer.await.map_err(|_| Error::Closed)?
        }
    }

    /// The msg_id of this client's `n`th publish.
    fn next_msg_id(&self) -> String {
        let n = self.inner.next_msg.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.inner.msg_prefix)
    }

    /// Publishes `payload` (any serializable value) to `topic`; returns once the broker has
    /// it on stable storage. Each publish carries a `msg_id`, so one sent again after a
    /// reconnect is stored once. While the connection is down, publishes wait (in order)
    /// in a queue of at most `Options::max_queued`; past it, [`Error::QueueFull`]. Handed to
    /// the connection when called (see [`Client::request`]).
    ///
    /// ```no_run
    /// # async fn demo(client: wharf_client::Client) -> Result<(), wharf_client::Error> {
    /// let stored = client.publish("chat.lobby", &serde_json::json!({"text": "hi"})).await?;
    /// assert!(stored.seq > 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        payload: &T,
    ) -> impl Future<Output = Result<Published, Error>> + Send + 'static {
        let sent = serde_json::value::to_raw_value(payload)
            .map_err(|e| Error::Invalid(format!("the payload is not JSON: {e}")))
            .map(|payload| self.publish_raw(topic, payload, None));
        async move { sent?.await }
    }

    /// Publishes a payload that is JSON text already, with the given `msg_id` (or one of
    /// this client's). Handed to the connection when called (see [`Client::request`]), so
    /// publishes made in a loop and awaited together are stored in the order they were made.
    ///
    /// ```no_run
    /// # async fn demo(client: wharf_client::Client) -> Result<(), wharf_client::Error> {
    /// let payload = serde_json::value::RawValue::from_string(r#"{"id":7}"#.into()).unwrap();
    /// client.publish_raw("orders.created", payload, Some("order-7".into())).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn publish_raw(
        &self,
        topic: &str,
        payload: Box<RawValue>,
        msg_id: Option<String>,
    ) -> impl Future<Output = Result<Published, Error>> + Send + 'static {
        let sent = self
            .new_event(topic, payload, msg_id)
            .map(|event| self.request(Request::Publish { id: None, event }));
        async move {
            match sent?.await? {
                Reply::Published {
                    seq: Some(seq),
                    duplicate,
                    ..
                } => Ok(Published { seq, duplicate }),
                other => Err(unexpected(&other)),
            }
        }
    }

    fn new_event(
        &self,
        topic: &str,
        payload: Box<RawValue>,
        msg_id: Option<String>,
    ) -> Result<NewEvent, Error> {
        let topic = Topic::parse(topic).map_err(|e| Error::Invalid(e.0))?;
        Ok(NewEvent {
            topic,
            payload,
            msg_id: Some(msg_id.unwrap_or_else(|| self.next_msg_id())),
        })
    }

    /// Publishes events atomically: all stored, in order, or none. Handed to the connection
    /// when called (see [`Client::request`]).
    ///
    /// ```no_run
    /// # async fn demo(client: wharf_client::Client) -> Result<(), wharf_client::Error> {
    /// use serde_json::json;
    /// let stored = client
    ///     .publish_batch(&[("orders.created", json!({"id": 1})), ("orders.paid", json!({"id": 1}))])
    ///     .await?;
    /// assert_eq!(stored.len(), 2);
    /// # Ok(())
    /// # }
    /// ```
    pub fn publish_batch<T: Serialize>(
        &self,
        events: &[(&str, T)],
    ) -> impl Future<Output = Result<Vec<Published>, Error>> + Send + 'static {
        let sent = events
            .iter()
            .map(|(topic, payload)| {
                let payload = serde_json::value::to_raw_value(payload)
                    .map_err(|e| Error::Invalid(format!("the payload is not JSON: {e}")))?;
                self.new_event(topic, payload, None)
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|events| self.request(Request::PublishBatch { id: None, events }));
        async move {
            match sent?.await? {
                Reply::Published {
                    seqs: Some(seqs),
                    duplicate,
                    ..
                } => Ok(seqs
                    .into_iter()
                    .map(|seq| Published { seq, duplicate })
                    .collect()),
                other => Err(unexpected(&other)),
            }
        }
    }

    /// Subscribes; the [`Subscription`] yields its events and notices, across reconnects.
    ///
    /// ```no_run
    /// # async fn demo(client: wharf_client::Client) -> Result<(), wharf_client::Error> {
    /// use wharf_client::Subscribe;
    /// let live = client.subscribe(Subscribe::ephemeral(["prices.*"])).await?;
    /// let work = client
    ///     .subscribe(Subscribe::durable("workers", ["jobs.>"]).shared().max_in_flight(10))
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn subscribe(&self, subscribe: Subscribe) -> Result<Subscription, Error> {
        let spec = subscribe.into_spec()?;
        let auto_ack = spec.auto_ack;
        let (events, incoming) = mpsc::unbounded_channel();
        let (reply, answer) = oneshot::channel();
        self.send(Command::Subscribe {
            spec,
            events,
            reply,
        })?;
        let (local, start_seq) = answer.await.map_err(|_| Error::Closed)??;
        Ok(Subscription::new(
            self.clone(),
            local,
            start_seq,
            incoming,
            auto_ack,
        ))
    }

    /// The stored events matching `pattern` (a topic or a pattern): `limit` of them (the
    /// broker's default when `None`) from `from`, oldest first. Consumes nothing.
    ///
    /// ```no_run
    /// # async fn demo(client: wharf_client::Client) -> Result<(), wharf_client::Error> {
    /// use wharf_client::Paging;
    /// let newest = client.history("chat.lobby", Some(50), Paging::Newest).await?;
    /// if newest.more {
    ///     let older = client
    ///         .history("chat.lobby", Some(50), Paging::Before(newest.events[0].seq))
    ///         .await?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn history(
        &self,
        pattern: &str,
        limit: Option<u32>,
        from: Paging,
    ) -> Result<Page, Error> {
        let pattern = Pattern::parse(pattern).map_err(|e| Error::Invalid(e.0))?;
        let (before, after) = match from {
            Paging::Newest => (None, None),
            Paging::Before(seq) => (Some(seq), None),
            Paging::After(seq) => (None, Some(seq)),
        };
        page(
            &self
                .request_text(Request::History {
                    id: None,
                    pattern,
                    limit,
                    before,
                    after,
                })
                .await?,
        )
    }

    /// The newest event of each topic matching `pattern`, by topic name.
    ///
    /// ```no_run
    /// # async fn demo(client: wharf_client::Client) -> Result<(), wharf_client::Error> {
    /// for event in client.last("prices.*", None).await?.events {
    ///     println!("{} = {}", event.topic, event.payload);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn last(&self, pattern: &str, limit: Option<u32>) -> Result<Page, Error> {
        let pattern = Pattern::parse(pattern).map_err(|e| Error::Invalid(e.0))?;
        page(
            &self
                .request_text(Request::Last {
                    id: None,
                    pattern,
                    limit,
                })
                .await?,
        )
    }

    /// Names this connection's client in presence (said again after every reconnect).
    ///
    /// ```no_run
    /// # async fn demo(client: wharf_client::Client) -> Result<(), wharf_client::Error> {
    /// client.hello("ana", serde_json::json!({"name": "Ana"})).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn hello(&self, client: &str, info: serde_json::Value) -> Result<(), Error> {
        let request = Request::Hello {
            id: None,
            client: Some(client.to_owned()),
            info: Some(info),
        };
        let (reply, answer) = oneshot::channel();
        self.send(Command::Hello { request, reply })?;
        answer.await.map_err(|_| Error::Closed)?
    }

    /// Who is present in `topic`, each client once.
    ///
    /// ```no_run
    /// # async fn demo(client: wharf_client::Client) -> Result<(), wharf_client::Error> {
    /// let here = client.presence("chat.lobby").await?;
    /// println!("{} online", here.len());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn presence(&self, topic: &str) -> Result<Vec<PresentClient>, Error> {
        let topic = Topic::parse(topic).map_err(|e| Error::Invalid(e.0))?;
        match self.request(Request::Presence { id: None, topic }).await? {
            Reply::Presence { clients, .. } => Ok(clients),
            other => Err(unexpected(&other)),
        }
    }

    /// Stops: pending requests fail with [`Error::Closed`], the socket is closed.
    ///
    /// ```no_run
    /// # async fn demo(client: wharf_client::Client) {
    /// client.close();
    /// # }
    /// ```
    pub fn close(&self) {
        let _ended = self.inner.commands.send(Command::Close);
    }

    /// Settles delivered events of a durable consumer (see [`Delivery::ack`]).
    pub(crate) async fn settle(&self, request: Request) -> Result<(), Error> {
        match self.request(request).await? {
            Reply::Ok { .. } => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Ends a subscription on the broker; `reply` learns when it has.
    pub(crate) fn unsubscribe(
        &self,
        local: u64,
        reply: Option<oneshot::Sender<Result<String, Error>>>,
    ) {
        let _gone = self
            .inner
            .commands
            .send(Command::Unsubscribe { local, reply });
    }
}

/// A `history` or `last` reply, read from its text: the payloads stay as they were stored
/// (a [`Reply`] would parse them into values).
fn page(text: &str) -> Result<Page, Error> {
    #[derive(serde::Deserialize)]
    struct Head<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
    }
    match serde_json::from_str::<Head>(text) {
        Ok(Head {
            kind: "history" | "last",
        }) => serde_json::from_str(text).map_err(|e| Error::Protocol(format!("{e}: {text}"))),
        _ => Err(Error::Protocol(format!("unexpected reply: {text}"))),
    }
}

fn unexpected(reply: &Reply) -> Error {
    Error::Protocol(format!("unexpected reply: {}", reply.to_json()))
}

/// 16 hex digits from the OS's randomness (the time, if it has none).
fn random_prefix() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        bytes = wharf_protocol::now_ms().to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The request id a driver gives a request.
pub(crate) fn id_of(n: u64) -> Id {
    Id::Uint(n)
}
