//! Subscriptions on the cluster backend. A durable consumer is a JetStream durable pull
//! consumer (its patterns as filter subjects, wharf's name and topics in its metadata); each
//! connection attached on this node runs a delivery task that pulls at most its
//! `max_in_flight` unsettled messages and keeps each in flight here until settled.
//!
//! Leases: JetStream's ack wait is `nats.lease` (short); while the subscriber's own ack wait
//! runs, this node sends progress to extend it, and when it runs out the node naks the
//! message (delivered again now). A connection that goes away naks what it held at once; a
//! node that dies stops extending, so its messages come back within `nats.lease`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::jetstream;
use async_nats::jetstream::consumer::{self, pull, AckPolicy, DeliverPolicy};
use futures_util::StreamExt;
use tokio::sync::Notify;
use wharf_protocol::{ConsumerInfo, Mode, Pattern};

use super::delivery::Delivery;
use super::follow::Follower;
use super::local::lock;
use super::local::LocalConsumer;
use super::{durable, unavailable, NatsBackend, API_TRY};
use crate::backend::contract::{
    confirmed, dead_letter_topic, BackendError, Confirming, ConsumerSpec, DeliveryOptions, Quota,
    Subscriber,
};

const NAME_KEY: &str = "wharf_name";
const TOPICS_KEY: &str = "wharf_topics";
/// The floor the consumer was created (or sought) with: JetStream reports an ack floor of 0
/// until the first ack.
const FLOOR_KEY: &str = "wharf_floor";

/// A connection attached to a consumer, before its delivery task starts.
pub struct Attaching {
    backend: NatsBackend,
    local: Arc<LocalConsumer>,
    generation: u64,
    to: Subscriber,
    options: DeliveryOptions,
    from: u64,
    started: bool,
    /// For an exclusive attachment: the holders bucket and the revision of its own claim.
    claim: Option<(jetstream::kv::Store, String, u64)>,
}

/// A running subscription; dropping it ends it.
pub enum Subscription {
    Durable {
        local: Arc<LocalConsumer>,
        generation: u64,
    },
    Ephemeral(tokio::task::AbortHandle),
}

impl Drop for Subscription {
    fn drop(&mut self) {
        match self {
            Subscription::Durable { local, generation } => local.detach(*generation),
            Subscription::Ephemeral(task) => task.abort(),
        }
    }
}

impl Attaching {
    pub fn start_seq(&self) -> u64 {
        self.from
    }

    pub fn start(mut self) -> Subscription {
        self.started = true;
        let delivery = Delivery {
            backend: self.backend.clone(),
            local: self.local.clone(),
            generation: self.generation,
            sub: self.to.sub.clone(),
            outbound: self.to.outbound.clone(),
            options: self.options.clone(),
        };
        let task = tokio::spawn(delivery.run());
        let watcher = self.claim.take().map(|(holders, key, mut revision)| {
            let local = self.local.clone();
            let generation = self.generation;
            let ours = format!("{}-{generation}", self.backend.inner.node);
            tokio::spawn(async move {
                // Any later claim is another attachment's (on this node, already handled,
                // or on another, which takes the consumer over), but for this one's own put
                // sent again when its answer was slow. A watch that fails or ends is made
                // again from the newest revision seen, so no claim goes unseen.
                loop {
                    match holders.watch_from_revision(&key, revision + 1).await {
                        Ok(mut claims) => loop {
                            match claims.next().await {
                                Some(Ok(claim)) if claim.value == ours.as_bytes() => {
                                    revision = claim.revision;
                                }
                                Some(Ok(_)) => {
                                    local.taken_over(generation);
                                    return;
                                }
                                Some(Err(e)) => {
                                    tracing::debug!(consumer = local.name, error = %e, "watching the holder key again");
                                    break;
                                }
                                None => break,
                            }
                        },
                        Err(e) => {
                            tracing::debug!(consumer = local.name, error = %e, "watching the holder key again")
                        }
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            })
            .abort_handle()
        });
        match lock(&self.local.attachments)
            .iter_mut()
            .find(|a| a.generation == self.generation)
        {
            Some(a) => {
                a.task = Some(task);
                a.watcher = watcher;
            }
            // Detached meanwhile (taken over on this node, or every attachment ended):
            // nothing would ever stop these tasks.
            None => {
                task.abort();
                if let Some(watcher) = watcher {
                    watcher.abort();
                }
            }
        }
        Subscription::Durable {
            local: self.local.clone(),
            generation: self.generation,
        }
    }
}

impl Drop for Attaching {
    fn drop(&mut self) {
        if !self.started {
            self.local.detach(self.generation);
        }
    }
}

fn conflict(name: &str, existing: &str, asked: &[Pattern]) -> BackendError {
    let asked: Vec<&str> = asked.iter().map(Pattern::as_str).collect();
    let existing: Vec<&str> = existing.split(' ').collect();
    BackendError::Conflict(format!(
        "consumer {name:?} exists with topics {existing:?}, not {asked:?}"
    ))
}

fn topics_of(patterns: &[Pattern]) -> String {
    patterns
        .iter()
        .map(Pattern::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}

fn same_topics(stored: &str, asked: &[Pattern]) -> bool {
    let mut a: Vec<&str> = stored.split(' ').collect();
    let mut b: Vec<&str> = asked.iter().map(Pattern::as_str).collect();
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

impl NatsBackend {
    pub async fn consumer_info(&self, name: &str) -> Result<Option<ConsumerInfo>, BackendError> {
        info(self, name).await
    }

    pub(super) async fn consumer_config(
        &self,
        name: &str,
    ) -> Result<Option<consumer::Config>, BackendError> {
        let stream = self.stream().await?;
        Ok(self
            .jetstream_consumer(&stream, name)
            .await?
            .map(|i| i.config))
    }

    /// What JetStream has of consumer `name` (read fresh), if it exists.
    async fn jetstream_consumer(
        &self,
        stream: &jetstream::stream::Stream,
        name: &str,
    ) -> Result<Option<consumer::Info>, BackendError> {
        let durable = durable(name);
        let what = "cannot read the consumer";
        match self
            .asked(what, || stream.get_consumer::<pull::Config>(&durable))
            .await?
        {
            // Fetching the consumer read its info: no second request.
            Ok(c) => Ok(Some(c.cached_info().clone())),
            Err(e) if e.to_string().contains("not found") => Ok(None),
            Err(e) => Err(unavailable(what, e)),
        }
    }

    /// Consumer `name`'s floor as JetStream has it (its ack floor, or the floor it was made
    /// with), if it exists.
    pub(super) async fn acked_floor(&self, name: &str) -> Option<u64> {
        let stream = self.stream().await.ok()?;
        let info = self.jetstream_consumer(&stream, name).await.ok()??;
        let created: u64 = info
            .config
            .metadata
            .get(FLOOR_KEY)
            .and_then(|f| f.parse().ok())
            .unwrap_or(0);
        Some(info.ack_floor.stream_sequence.max(created))
    }

    /// The floor consumer `name` was made with (its metadata), if it exists.
    pub(super) async fn consumer_floor(&self, name: &str) -> Option<u64> {
        let config = self.consumer_config(name).await.ok()??;
        config.metadata.get(FLOOR_KEY)?.parse().ok()
    }

    pub async fn consumer_patterns(
        &self,
        name: &str,
    ) -> Result<Option<Vec<Pattern>>, BackendError> {
        let Some(config) = self.consumer_config(name).await? else {
            return Ok(None);
        };
        let topics = config.metadata.get(TOPICS_KEY).cloned().unwrap_or_default();
        Ok(Some(
            topics
                .split(' ')
                .filter_map(|p| Pattern::parse(p).ok())
                .collect(),
        ))
    }

    pub async fn consumer_names(&self) -> Result<Vec<String>, BackendError> {
        let stream = self.stream().await?;
        let what = "cannot list the consumers";
        let list = || async {
            let mut infos = stream.consumers();
            let mut names = Vec::new();
            while let Some(info) = infos.next().await {
                if let Some(name) = info?.config.metadata.get(NAME_KEY) {
                    names.push(name.clone());
                }
            }
            Ok::<_, async_nats::jetstream::stream::ConsumersError>(names)
        };
        let mut names = self
            .asked(what, list)
            .await?
            .map_err(|e| unavailable(what, e))?;
        names.sort_unstable();
        Ok(names)
    }

    /// Makes JetStream consumer `name` owing every event from seq `first` on. Strict: two
    /// concurrent creations cannot silently change each other's topics.
    pub(super) async fn make_consumer(
        &self,
        name: &str,
        patterns: &[Pattern],
        first: u64,
    ) -> Result<(), BackendError> {
        let stream = self.stream().await?;
        let metadata = HashMap::from([
            (NAME_KEY.to_owned(), name.to_owned()),
            (TOPICS_KEY.to_owned(), topics_of(patterns)),
            (FLOOR_KEY.to_owned(), (first - 1).to_string()),
        ]);
        let config = pull::Config {
            durable_name: Some(durable(name)),
            filter_subjects: patterns.iter().map(|p| self.filter(p)).collect(),
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.settings().lease,
            max_deliver: -1,
            max_ack_pending: 100_000,
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: first,
            },
            inactive_threshold: self.inner.config.inactive_ttl,
            metadata,
            ..Default::default()
        };
        // Asked again when the answer is lost: a consumer made by a lost try makes the next
        // try fail as existing, with the same topics.
        let what = "cannot create the consumer";
        match self
            .asked(what, || stream.create_consumer_strict(config.clone()))
            .await?
        {
            Ok(_) => Ok(()),
            // Made meanwhile (by another connection or node): the same topics, or a conflict.
            Err(e) => match self.consumer_config(name).await? {
                Some(config) => {
                    let stored = config.metadata.get(TOPICS_KEY).cloned().unwrap_or_default();
                    match same_topics(&stored, patterns) {
                        true => Ok(()),
                        false => Err(conflict(name, &stored, patterns)),
                    }
                }
                None => Err(unavailable(what, e)),
            },
        }
    }

    pub async fn create_consumer(
        &self,
        spec: ConsumerSpec,
        quota: Option<Quota<'_>>,
    ) -> Result<Confirming<()>, BackendError> {
        if let Some(config) = self.consumer_config(&spec.name).await? {
            let stored = config.metadata.get(TOPICS_KEY).cloned().unwrap_or_default();
            return match same_topics(&stored, &spec.patterns) {
                true => Ok(confirmed()),
                false => Err(conflict(&spec.name, &stored, &spec.patterns)),
            };
        }
        let names = self.consumer_names().await?;
        let limit = self.inner.config.max_consumers;
        if names.len() >= limit {
            return Err(BackendError::LimitExceeded(format!(
                "the broker holds {limit} consumers (max_consumers); cannot create {:?}",
                spec.name
            )));
        }
        if let Some(quota) = quota {
            let covered = names.iter().filter(|n| (quota.covers)(n)).count();
            if covered >= quota.max {
                return Err(BackendError::LimitExceeded(format!(
                    "token {:?} may hold {} consumers (its max_consumers); cannot create {:?}",
                    quota.owner, quota.max, spec.name
                )));
            }
        }
        // Resolved now, so that the floor is known: "new" is after the newest event now.
        let first = self.resolve_start(spec.start).await?;
        self.make_consumer(&spec.name, &spec.patterns, first)
            .await?;
        Ok(confirmed())
    }

    fn local(&self, name: &str) -> Arc<LocalConsumer> {
        lock(&self.inner.local)
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(LocalConsumer {
                    name: name.to_owned(),
                    mode: Mutex::new(Mode::Exclusive),
                    attachments: Mutex::default(),
                    in_flight: Mutex::default(),
                    unsent: Mutex::default(),
                    kick: Notify::new(),
                    next_generation: Default::default(),
                    terminated: Default::default(),
                    releasing: Mutex::default(),
                    claiming: tokio::sync::Mutex::new(()),
                    gap_told: Default::default(),
                    gapped: Default::default(),
                })
            })
            .clone()
    }

    /// The bucket of exclusive holders, made on first use (file storage, the stream's
    /// replicas, one value per key).
    pub(super) async fn holders(&self) -> Result<jetstream::kv::Store, BackendError> {
        self.inner
            .holders
            .get_or_try_init(|| async {
                let bucket = format!("{}_HOLDERS", self.settings().stream);
                match self.js().get_key_value(&bucket).await {
                    Ok(store) => Ok(store),
                    Err(_) => self
                        .js()
                        .create_key_value(jetstream::kv::Config {
                            bucket,
                            history: 1,
                            storage: jetstream::stream::StorageType::File,
                            num_replicas: self.settings().replicas,
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| unavailable("cannot set up the holders bucket", e)),
                }
            })
            .await
            .cloned()
    }

    /// Consumer `name` was deleted through another node: this node's subscribers are told
    /// `deleted`.
    pub(super) fn deleted_elsewhere(&self, name: &str) {
        if let Some(local) = lock(&self.inner.local).remove(name) {
            tracing::info!(consumer = name, "consumer deleted through another node");
            local.detach_all_with(Some("deleted"));
        }
    }

    pub(super) fn local_of(&self, name: &str) -> Option<Arc<LocalConsumer>> {
        lock(&self.inner.local).get(name).cloned()
    }

    /// Attaches a connection on this node. Exclusive mode takes the consumer over from the
    /// other connections on this node (told `taken_over`; what they held is delivered
    /// again at once).
    pub async fn attach(
        &self,
        name: &str,
        patterns: &[Pattern],
        mode: Mode,
        options: DeliveryOptions,
        to: Subscriber,
    ) -> Result<Attaching, BackendError> {
        let Some(config) = self.consumer_config(name).await? else {
            return Err(BackendError::NotFound(format!(
                "consumer {name:?} was deleted"
            )));
        };
        let stored = config.metadata.get(TOPICS_KEY).cloned().unwrap_or_default();
        if !same_topics(&stored, patterns) {
            return Err(conflict(name, &stored, patterns));
        }
        let local = self.local(name);
        // Attaches on this node claim in the order they take over locally: two exclusive
        // attaches racing here cannot leave the older one's claim as the newest.
        let claiming = local.claiming.lock().await;
        let generation = local.add(name, mode, &to)?;
        let claim = match mode {
            Mode::Exclusive => match self.claim(name, generation).await {
                Ok(claim) => Some(claim),
                Err(e) => {
                    local.detach(generation);
                    return Err(e);
                }
            },
            Mode::Shared => None,
        };
        drop(claiming);
        let from = match self.consumer_info(name).await {
            Ok(Some(info)) => info.ack_floor + 1,
            Ok(None) => 1,
            Err(e) => {
                // Not attached after all: nothing may stay registered without a task.
                local.detach(generation);
                return Err(e);
            }
        };
        Ok(Attaching {
            backend: self.clone(),
            local,
            generation,
            to,
            options,
            from,
            started: false,
            claim,
        })
    }

    /// Claims consumer `name` for this node's attachment `generation`, cluster-wide: the
    /// claim's key changes hands, and the previous holder (on whichever node) watches it.
    async fn claim(
        &self,
        name: &str,
        generation: u64,
    ) -> Result<(jetstream::kv::Store, String, u64), BackendError> {
        let holders = self.holders().await?;
        let key = durable(name);
        let holder = format!("{}-{generation}", self.inner.node);
        // A bucket just made may not take writes for a moment (its replicas elect a leader):
        // tried again, within `nats.publish_timeout` in all. A put not answered in time is
        // sent again, each wait twice the last, and only the newest put's answer is taken:
        // puts on one connection land in the order sent, so no earlier one of this claim can
        // land after it (and undo another node's later claim).
        let what = "cannot claim the consumer";
        let overall = self.settings().publish_timeout;
        let deadline = tokio::time::Instant::now() + overall;
        let mut wait = API_TRY;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let put = holders.put(&key, holder.clone().into());
            let why = match tokio::time::timeout(wait.min(left), put).await {
                Ok(Ok(revision)) => return Ok((holders, key, revision)),
                Ok(Err(e)) => e.to_string(),
                Err(_) => {
                    wait *= 2;
                    format!("no answer within {overall:?} (nats.publish_timeout)")
                }
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(unavailable(what, why));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Delivers every event matching `patterns` from seq `from` on, at most once. A
    /// subscriber too slow to take what is due skips to the newest event and is told what
    /// it missed (`lost`).
    pub async fn follow(
        &self,
        patterns: Vec<Pattern>,
        from: u64,
        to: Subscriber,
    ) -> Result<Subscription, BackendError> {
        let follower = Follower {
            backend: self.clone(),
            filters: patterns.iter().map(|p| self.filter(p)).collect(),
            to,
        };
        // Made in the task: a NATS that cannot answer this moment (a fresh stream's replicas
        // electing a leader) delays the subscription's first event, it does not end it
        // (the subscriber was told `subscribed` already; the start seq was resolved before).
        let task = tokio::spawn(follower.start(from));
        Ok(Subscription::Ephemeral(task.abort_handle()))
    }
}

async fn info(backend: &NatsBackend, name: &str) -> Result<Option<ConsumerInfo>, BackendError> {
    let stream = backend.stream().await?;
    let Some(info) = backend.jetstream_consumer(&stream, name).await? else {
        return Ok(None);
    };
    let created_floor = info
        .config
        .metadata
        .get(FLOOR_KEY)
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(0);
    // What retention removed is behind the floor whether or not it was acked.
    let first = stream.cached_info().state.first_sequence;
    let floor = info
        .ack_floor
        .stream_sequence
        .max(created_floor)
        .max(first.saturating_sub(1));
    // Dead letters are events on the consumer's dead-letter topic: counted by JetStream, so
    // the figure is the cluster's and survives restarts.
    let dead_lettered = {
        use futures_util::TryStreamExt;
        let subject = backend.subject(&dead_letter_topic(name));
        match stream.info_with_subjects(&subject).await {
            Ok(subjects) => subjects
                .try_fold(0u64, |n, (_, count)| async move { Ok(n + count as u64) })
                .await
                .unwrap_or(0),
            Err(_) => 0,
        }
    };
    let local = backend.local_of(name);
    let mode = local.as_ref().map_or(Mode::Exclusive, |l| *lock(&l.mode));
    let attached = local.as_ref().map_or(0, |l| l.attached() as u64);
    Ok(Some(ConsumerInfo {
        id: None,
        consumer: name.to_owned(),
        topics: info
            .config
            .metadata
            .get(TOPICS_KEY)
            .map(|t| t.split(' ').map(str::to_owned).collect())
            .unwrap_or_default(),
        mode: match mode {
            Mode::Exclusive => "exclusive",
            Mode::Shared => "shared",
        }
        .to_owned(),
        ack_floor: floor,
        // Delivered above the floor and not pending: acked (exact for a consumer whose
        // topics match every event in that range).
        acked_above_floor: info
            .delivered
            .stream_sequence
            .saturating_sub(floor)
            .saturating_sub(info.num_ack_pending as u64),
        ack_pending: info.num_ack_pending as u64,
        lag: info.num_pending + info.num_ack_pending as u64,
        redelivered: info.num_redelivered as u64,
        terminated: local.as_ref().map_or(0, |l| {
            l.terminated.load(std::sync::atomic::Ordering::Relaxed)
        }),
        dead_lettered,
        gapped: local
            .as_ref()
            .map_or(0, |l| l.gapped.load(std::sync::atomic::Ordering::Relaxed)),
        attached,
        delivered: info.delivered.consumer_sequence,
        inactive_since: (attached == 0)
            .then_some(info.delivered.last_active)
            .flatten()
            .and_then(|at| u64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok())
            .map(wharf_protocol::format_time_ms),
    }))
}
