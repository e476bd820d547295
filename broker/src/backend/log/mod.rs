//! The embedded backend: everything stored on the local disk of one broker.
//!
//! * [`append`]: the segment log, the only durable copy of anything confirmed (group commit,
//!   fdatasync, recovery, streaming reads). [`codec`] is its bincode and sled's.
//! * [`settled`]: what a consumer has settled (ranges, seek count, untold gap), pure data that
//!   the log's records and the view both use. [`state`]: the sled view of consumers,
//!   rebuilt from the log whenever it cannot be trusted.
//! * [`consumers`]: durable consumers in memory (attachments, leases, delivery counts).
//! * [`delivery`]: the log's commit sink, the feed of new events and the delivery tasks.
//! * [`store`]: opening a data directory consistently. `upkeep`: the timers (retention,
//!   relaxed syncs, marks, inactive consumers, index pruning). `subscribe` and `settle`: the
//!   Backend API's subscription and settling halves; `history`: `history` and `last`.
//!
//! Nothing outside this folder knows it exists except [`crate::backend::Backend`] (and
//! `lib.rs`'s doc-hidden `inspect`, which lets two tests read segment files).

pub mod append;
pub mod codec;
pub mod consumers;
pub mod delivery;
mod history;
mod settle;
pub mod settled;
pub mod state;
pub mod store;
pub mod subscribe;
mod upkeep;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wharf_protocol::{ConsumerInfo, Mode, Pattern, Start, TopicInfo};

use crate::backend::contract::{BackendError, Confirming, NewEvent, Published, StoreStats, Stored};
use crate::backend::presence::Presence;
use crate::config::Config;
use crate::error::BrokerError;
use crate::metrics;
use append::{Event, Floor, LogError, Pending, Receipt, Record, Stop};
use consumers::Consumer;
use store::Store;

/// Consumer names whose creation was submitted to the log and is not confirmed yet, with
/// how many creations of each are in flight.
pub type Creating = Arc<Mutex<HashMap<String, usize>>>;

/// The embedded backend, cheap to clone.
#[derive(Clone)]
pub struct LogBackend {
    store: Arc<Store>,
    config: Arc<Config>,
    /// Who is present where, on this broker.
    pub presence: Arc<Presence>,
    /// Consumer creations submitted to the log and not yet applied: they count against the
    /// consumer limits, so that concurrent creations cannot pass them.
    creating: Creating,
}

/// Waits for a submitted write to be durable.
async fn durable(pending: Pending) -> Result<Vec<Receipt>, BackendError> {
    match pending.await {
        Ok(Ok(receipts)) => Ok(receipts),
        Ok(Err(e)) => Err(BackendError::failed(e)),
        Err(_) => Err(BackendError::failed(LogError::Stopped(Stop::WriterGone))),
    }
}

fn stored(receipt: Receipt) -> Result<Stored, BackendError> {
    match receipt {
        Receipt::Seqs(seqs) => Ok(Stored::Events(
            seqs.into_iter()
                .map(|(seq, duplicate)| Published { seq, duplicate })
                .collect(),
        )),
        Receipt::Refused(why) => Ok(Stored::Refused(BackendError::LimitExceeded(why))),
        Receipt::Floor(_) | Receipt::Done => Err(BackendError::failed("publish got no seq")),
    }
}

fn to_log(e: NewEvent) -> Event {
    Event::new(e.topic, e.payload, e.time_ms, e.msg_id)
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Exclusive => "exclusive",
        Mode::Shared => "shared",
    }
}

impl LogBackend {
    /// Recovers the data dir (blocking: run it off the runtime's workers).
    pub fn open(config: &Config) -> Result<LogBackend, BrokerError> {
        Ok(LogBackend {
            store: Arc::new(Store::open(config)?),
            config: Arc::new(config.clone()),
            presence: Presence::new(config.max_presence_per_topic, false),
            creating: Arc::default(),
        })
    }

    /// Hands `records` to the group commit (waiting for room in its queue) and returns the
    /// wait for them to be durable.
    async fn write(&self, records: Vec<Record>) -> Result<Confirming<Vec<Receipt>>, BackendError> {
        let pending = self
            .store
            .log
            .submit(records)
            .await
            .map_err(BackendError::failed)?;
        Ok(Box::pin(durable(pending)))
    }

    pub async fn publish(
        &self,
        batches: Vec<Vec<NewEvent>>,
    ) -> Result<Confirming<Vec<Stored>>, BackendError> {
        let entries = batches
            .into_iter()
            .map(|batch| Record::Events(batch.into_iter().map(to_log).collect()))
            .collect();
        let written = self.write(entries).await?;
        Ok(Box::pin(async move {
            written.await?.into_iter().map(stored).collect()
        }))
    }

    /// The named consumer, or `not_found`.
    fn consumer(&self, name: &str) -> Result<Arc<Consumer>, BackendError> {
        self.store
            .consumers
            .get(name)
            .ok_or_else(|| BackendError::NotFound(format!("no consumer named {name:?}")))
    }

    /// The first seq `start` points at.
    pub async fn resolve_start(&self, start: Start) -> Result<u64, BackendError> {
        let feed = &self.store.feed;
        let (head, first) = (feed.head(), feed.first_seq());
        match start {
            Start::All => Ok(first),
            Start::New => Ok(head + 1),
            Start::Seq(seq) => Ok(seq.max(first)),
            Start::TimeMs(ms) => {
                let mut cursor = self.store.log.cursor(1);
                let found = tokio::task::spawn_blocking(move || cursor.first_at_or_after(ms, head))
                    .await
                    .map_err(|e| BackendError::failed(LogError::task("time lookup", e)))?
                    .map_err(BackendError::failed)?;
                Ok(found.unwrap_or(head + 1))
            }
        }
    }

    /// The floor a consumer created (or sought) with `start` gets.
    async fn floor_for(&self, start: Start) -> Result<Floor, BackendError> {
        // The floor of "all" and of a seq is fixed now; only "new" depends on what the log
        // holds when the record is written, so the writer resolves it.
        let first = self.store.feed.first_seq();
        Ok(match start {
            Start::New => Floor::Head,
            Start::All => Floor::At(first - 1),
            Start::Seq(seq) => Floor::At(seq.max(first) - 1),
            time => match self.resolve_start(time).await? {
                first if first > self.store.feed.head() => Floor::Head,
                first => Floor::At(first - 1),
            },
        })
    }

    pub fn consumer_patterns(&self, name: &str) -> Option<Vec<Pattern>> {
        self.store.consumers.get(name).map(|c| c.patterns.clone())
    }

    pub fn consumer_names(&self) -> Vec<String> {
        let mut names = self.store.consumers.names();
        names.sort_unstable();
        names
    }

    pub fn consumer_info(&self, name: &str) -> Option<ConsumerInfo> {
        let consumer = self.store.consumers.get(name)?;
        let info = consumer.info();
        Some(ConsumerInfo {
            id: None,
            consumer: consumer.name.clone(),
            topics: info.patterns,
            mode: mode_name(info.mode).to_owned(),
            ack_floor: info.ack_floor,
            acked_above_floor: info.acked_above_floor,
            ack_pending: info.ack_pending as u64,
            // Events still to settle (above the floor and not acked), not the distance from
            // the floor: one poison event must not make a caught-up consumer look behind.
            lag: self
                .store
                .feed
                .lag(&consumer.patterns, info.ack_floor, info.acked_above_floor),
            redelivered: info.redelivered as u64,
            terminated: info.terminated,
            dead_lettered: info.dead_lettered,
            gapped: info.gapped,
            attached: info.attached as u64,
            delivered: info.delivered,
            inactive_since: info.idle_since.map(|since| {
                let idle = u64::try_from(since.elapsed().as_millis()).unwrap_or(0);
                wharf_protocol::format_time_ms(wharf_protocol::now_ms().saturating_sub(idle))
            }),
        })
    }

    pub fn topics(&self) -> Vec<TopicInfo> {
        let mut topics: Vec<TopicInfo> = self
            .store
            .feed
            .topics()
            .into_iter()
            .map(|(topic, s)| TopicInfo {
                topic,
                events: s.events,
                bytes: s.bytes,
                last_seq: s.last_seq,
            })
            .collect();
        topics.sort_unstable_by(|a, b| a.topic.cmp(&b.topic));
        topics
    }

    pub fn stats(&self) -> StoreStats {
        let store = &self.store;
        let (segments, log_bytes) = store.log.size();
        StoreStats {
            head_seq: store.feed.head(),
            first_seq: store.feed.first_seq(),
            log_bytes,
            segments: segments as u64,
            state_bytes: store.state.size_on_disk(),
            topics: store.feed.topics().len() as u64,
            consumers: store.consumers.len() as u64,
            cluster: None,
        }
    }

    /// Sets the storage gauges and returns the per-consumer series, for the first `limit`
    /// consumers by name.
    pub fn metrics(&self, limit: usize) -> Vec<metrics::ConsumerRow> {
        let stats = self.stats();
        ::metrics::gauge!(metrics::LOG_SEGMENTS).set(stats.segments as f64);
        ::metrics::gauge!(metrics::LOG_BYTES).set(stats.log_bytes as f64);
        ::metrics::gauge!(metrics::STATE_BYTES).set(stats.state_bytes as f64);
        ::metrics::gauge!(metrics::HEAD_SEQ).set(stats.head_seq as f64);
        ::metrics::gauge!(metrics::CONSUMERS).set(stats.consumers as f64);
        let mut names = self.consumer_names();
        names.truncate(limit);
        names
            .into_iter()
            .filter_map(|name| {
                let info = self.consumer_info(&name)?;
                Some(metrics::ConsumerRow {
                    name,
                    ack_pending: info.ack_pending,
                    lag: info.lag,
                })
            })
            .collect()
    }

    /// Lets in-flight group commits finish, stops the writer and flushes the view.
    pub async fn close(&self) {
        self.store.close().await;
    }
}
