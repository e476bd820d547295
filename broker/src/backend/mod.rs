//! The backend boundary: the one API through which the WebSocket session and the HTTP front
//! door store events and keep consumers. Nothing above it knows which backend serves it.
//!
//! [`Backend`] is an enum over the backends rather than a trait object: the set is closed
//! (the embedded log; a cluster backend joins it), its methods are `async` without boxing
//! the call, and a method a new backend lacks is a compile error at the one `match` here.
//!
//! # What every backend promises
//! * **Durable before confirmed.** A [`Confirming`] future resolves `Ok` only once what it
//!   confirms is on stable storage (the embedded log: fdatasync'ed; a cluster: stored by a
//!   quorum). The session sends `published` or `ok` only then, never earlier.
//! * **Atomic batches.** Each batch handed to [`Backend::publish`] is stored whole or not at
//!   all; batches handed over together are stored in order, each getting the next seqs.
//! * **Dedup.** An event whose `msg_id` was stored inside the dedup window is not stored
//!   again: its [`Published`] carries the original seq and `duplicate: true`.
//! * **Order per consumer.** A subscription's first deliveries come in seq order. Events are
//!   delivered again (delivery count + 1) after the ack wait, a nack's delay, a takeover or
//!   the holder's departure, until acked, terminated, dead-lettered once at `max_deliver`
//!   (to `dead.<consumer>`), or removed by retention, which is told as a `gap` notice that
//!   survives restarts.
//! * **Settles are durable and never undo a seek.** `ok` to an ack means the ack is stored;
//!   an ack sent before a seek settles its seqs but never moves the floor the seek set.
//! * **Takeover.** Attaching in exclusive mode detaches the holder (it is told `unsubscribed`
//!   with `taken_over`) and hands everything unsettled to the new one.
//! * **Limits.** Every resource a client can make the backend hold is bounded: consumers
//!   ([`BackendError::LimitExceeded`]), remembered msg_ids (a batch comes back
//!   [`Stored::Refused`]), queued writes (the call waits for room: back-pressure).
//!
//! The shared conformance suite (`tests/`, run with each backend) checks these on the wire.

pub mod contract;
pub mod log;
pub mod nats;
pub mod presence;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use wharf_protocol::{ConsumerInfo, Mode, Pattern, Start, TopicInfo};

use crate::config::{BackendKind, Config};
use crate::error::BrokerError;
use crate::metrics::ConsumerRow;
use crate::shutdown::Shutdown;
pub use contract::{
    BackendError, Confirming, ConsumerSpec, DeliveryOptions, EventsPage, HistoryFrom, NewEvent,
    Published, Quota, Settlement, StoreStats, Stored, Subscriber,
};
pub use presence::{Member, Presence, Present, Watching};

/// Where events are stored and consumers kept.
#[derive(Clone)]
pub enum Backend {
    /// The embedded segment log on this machine's disk.
    Log(log::LogBackend),
    /// A NATS JetStream cluster.
    Nats(nats::NatsBackend),
}

/// A connection attached to a durable consumer, before its delivery starts: send the
/// `subscribed` reply, then [`Attaching::start`]. Dropped unstarted, it detaches.
pub enum Attaching {
    Log(log::subscribe::Attaching),
    Nats(Box<nats::subscribe::Attaching>),
}

impl Attaching {
    /// The first seq the subscription looks at.
    pub fn start_seq(&self) -> u64 {
        match self {
            Attaching::Log(a) => a.start_seq(),
            Attaching::Nats(a) => a.start_seq(),
        }
    }

    pub fn start(self) -> Subscription {
        match self {
            Attaching::Log(a) => Subscription {
                held: Held::Log(a.start()),
            },
            Attaching::Nats(a) => Subscription {
                held: Held::Nats(a.start()),
            },
        }
    }
}

/// A running subscription. Ending it (or dropping it) detaches a durable one from its
/// consumer (what it held goes to the other members or waits for the next attach) and stops
/// an ephemeral one.
pub struct Subscription {
    held: Held,
}

impl Subscription {
    pub fn end(self) {
        match self.held {
            Held::Log(subscription) => drop(subscription),
            Held::Nats(subscription) => drop(subscription),
        }
    }
}

enum Held {
    Log(log::subscribe::Subscription),
    Nats(nats::subscribe::Subscription),
}

impl Backend {
    /// Opens the backend the config names. The embedded log recovers on a blocking thread;
    /// the cluster backend connects (a cluster that is down does not stop it: it is not
    /// ready until the cluster answers).
    pub async fn open(config: &Config) -> Result<Backend, BrokerError> {
        match config.backend {
            BackendKind::Log => {
                let config = config.clone();
                let opened = tokio::task::spawn_blocking(move || log::LogBackend::open(&config))
                    .await
                    .map_err(|e| BrokerError::Io {
                        what: "recovery task failed".into(),
                        source: std::io::Error::other(e.to_string()),
                    })??;
                Ok(Backend::Log(opened))
            }
            BackendKind::Nats => Ok(Backend::Nats(nats::NatsBackend::open(config).await?)),
        }
    }

    /// Its name in `stats`: `log` or `nats`.
    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Log(_) => "log",
            Backend::Nats(_) => "nats",
        }
    }

    /// `Ok` when requests can be served; otherwise why not (for `/readyz`).
    pub fn ready(&self) -> Result<(), String> {
        match self {
            Backend::Log(_) => Ok(()),
            Backend::Nats(b) => b.ready(),
        }
    }

    // The cluster backend's futures are boxed: they are large, and unboxed they would make
    // every caller's future (the session boxes one per request) as large on the embedded
    // backend too.

    /// Stores each batch atomically, in order. Returns once the batches are accepted (in
    /// the order calls were made); the [`Confirming`] says what each became once durable.
    pub async fn publish(
        &self,
        batches: Vec<Vec<NewEvent>>,
    ) -> Result<Confirming<Vec<Stored>>, BackendError> {
        match self {
            Backend::Log(b) => b.publish(batches).await,
            Backend::Nats(b) => Box::pin(b.publish(batches)).await,
        }
    }

    /// Creates durable consumer `spec.name` unless it exists with the same patterns (then
    /// the confirmation is immediate); other patterns are [`BackendError::Conflict`].
    pub async fn create_consumer(
        &self,
        spec: ConsumerSpec,
        quota: Option<Quota<'_>>,
    ) -> Result<Confirming<()>, BackendError> {
        match self {
            Backend::Log(b) => b.create_consumer(spec, quota).await,
            Backend::Nats(b) => Box::pin(b.create_consumer(spec, quota)).await,
        }
    }

    /// Attaches a connection to durable consumer `name` (exclusive: takes it over; shared:
    /// joins its members).
    pub async fn attach(
        &self,
        name: &str,
        patterns: &[Pattern],
        mode: Mode,
        options: DeliveryOptions,
        to: Subscriber,
    ) -> Result<Attaching, BackendError> {
        match self {
            Backend::Log(b) => b
                .attach(name, patterns, mode, options, to)
                .map(Attaching::Log),
            Backend::Nats(b) => Box::pin(b.attach(name, patterns, mode, options, to))
                .await
                .map(|a| Attaching::Nats(Box::new(a))),
        }
    }

    /// The seq an ephemeral subscription starting at `start` begins with.
    pub async fn resolve_start(&self, start: Start) -> Result<u64, BackendError> {
        match self {
            Backend::Log(b) => b.resolve_start(start).await,
            Backend::Nats(b) => Box::pin(b.resolve_start(start)).await,
        }
    }

    /// Delivers every event matching `patterns` from seq `from` on, at most once, without a
    /// consumer. A subscriber too slow to keep up skips ahead and is told what it missed
    /// (`lost`).
    pub async fn follow(
        &self,
        patterns: Vec<Pattern>,
        from: u64,
        to: Subscriber,
    ) -> Result<Subscription, BackendError> {
        match self {
            Backend::Log(b) => Ok(Subscription {
                held: Held::Log(b.follow(patterns, from, to)),
            }),
            Backend::Nats(b) => Ok(Subscription {
                held: Held::Nats(Box::pin(b.follow(patterns, from, to)).await?),
            }),
        }
    }

    /// Acks or terminates delivered seqs of consumer `name`, durably.
    pub async fn settle(
        &self,
        name: &str,
        seqs: Vec<u64>,
        how: Settlement,
    ) -> Result<Confirming<()>, BackendError> {
        match self {
            Backend::Log(b) => b.settle(name, seqs, how).await,
            Backend::Nats(b) => Box::pin(b.settle(name, seqs, how)).await,
        }
    }

    /// nack (`delay` given: delivered again after it) or progress (`delay` None: the ack
    /// wait starts over) of seqs in flight.
    pub async fn touch(
        &self,
        name: &str,
        seqs: &[u64],
        delay: Option<Duration>,
    ) -> Result<(), BackendError> {
        match self {
            Backend::Log(b) => b.touch(name, seqs, delay),
            Backend::Nats(b) => Box::pin(b.touch(name, seqs, delay)).await,
        }
    }

    /// Moves consumer `name` to `start`: what lies before it counts as settled, what lies
    /// after as not yet delivered.
    pub async fn seek(&self, name: &str, start: Start) -> Result<Confirming<()>, BackendError> {
        match self {
            Backend::Log(b) => b.seek(name, start).await,
            Backend::Nats(b) => Box::pin(b.seek(name, start)).await,
        }
    }

    /// Deletes consumer `name`; its subscribers are told (`unsubscribed`, `deleted`).
    pub async fn delete_consumer(&self, name: &str) -> Result<Confirming<()>, BackendError> {
        match self {
            Backend::Log(b) => b.delete_consumer(name).await,
            Backend::Nats(b) => Box::pin(b.delete_consumer(name)).await,
        }
    }

    pub async fn consumer_info(&self, name: &str) -> Result<Option<ConsumerInfo>, BackendError> {
        match self {
            Backend::Log(b) => Ok(b.consumer_info(name)),
            Backend::Nats(b) => Box::pin(b.consumer_info(name)).await,
        }
    }

    /// The topics consumer `name` reads, for authorization.
    pub async fn consumer_patterns(
        &self,
        name: &str,
    ) -> Result<Option<Vec<Pattern>>, BackendError> {
        match self {
            Backend::Log(b) => Ok(b.consumer_patterns(name)),
            Backend::Nats(b) => Box::pin(b.consumer_patterns(name)).await,
        }
    }

    /// Every consumer's name, sorted.
    pub async fn consumer_names(&self) -> Result<Vec<String>, BackendError> {
        match self {
            Backend::Log(b) => Ok(b.consumer_names()),
            Backend::Nats(b) => Box::pin(b.consumer_names()).await,
        }
    }

    /// Every topic, sorted by name.
    pub async fn topics(&self) -> Result<Vec<TopicInfo>, BackendError> {
        match self {
            Backend::Log(b) => Ok(b.topics()),
            Backend::Nats(b) => Box::pin(b.topics()).await,
        }
    }

    pub async fn stats(&self) -> Result<StoreStats, BackendError> {
        match self {
            Backend::Log(b) => Ok(b.stats()),
            Backend::Nats(b) => Box::pin(b.stats()).await,
        }
    }

    /// Stored events matching `pattern`: `limit` of them from `from`, oldest first. Reads
    /// an index, not the log: the newest events of one topic among millions are quick.
    pub async fn history(
        &self,
        pattern: &Pattern,
        limit: usize,
        from: HistoryFrom,
    ) -> Result<EventsPage, BackendError> {
        match self {
            Backend::Log(b) => b.history(pattern, limit, from).await,
            Backend::Nats(b) => Box::pin(b.history(pattern, limit, from)).await,
        }
    }

    /// The newest event of each topic matching `pattern`, by topic, at most `limit` topics.
    pub async fn last(&self, pattern: &Pattern, limit: usize) -> Result<EventsPage, BackendError> {
        match self {
            Backend::Log(b) => b.last(pattern, limit).await,
            Backend::Nats(b) => Box::pin(b.last(pattern, limit)).await,
        }
    }

    /// Who is present where: on this broker, or across the cluster's wharf nodes.
    pub fn presence(&self) -> &Arc<Presence> {
        match self {
            Backend::Log(b) => &b.presence,
            Backend::Nats(b) => b.presence(),
        }
    }

    /// Sets the storage gauges; returns per-consumer series for the first `limit` consumers.
    pub async fn metrics(&self, limit: usize) -> Vec<ConsumerRow> {
        match self {
            Backend::Log(b) => b.metrics(limit),
            Backend::Nats(b) => Box::pin(b.metrics(limit)).await,
        }
    }

    /// Starts the backend's timers (retention, syncs…); each ends at `shutdown`.
    pub fn spawn_upkeep(&self, shutdown: &Shutdown) -> Vec<(&'static str, JoinHandle<()>)> {
        match self {
            Backend::Log(b) => b.spawn_upkeep(shutdown),
            Backend::Nats(b) => vec![(
                "presence sharing",
                tokio::spawn(b.clone().run_presence(shutdown.clone())),
            )],
        }
    }

    /// Lets accepted writes finish and closes the storage.
    pub async fn close(&self) {
        match self {
            Backend::Log(b) => b.close().await,
            Backend::Nats(b) => Box::pin(b.close()).await,
        }
    }
}
