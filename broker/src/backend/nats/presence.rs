//! Presence across wharf nodes, through a JetStream key-value bucket, `<stream>_PRESENCE`.
//!
//! Each node writes one key per topic where it has someone present, `<topic>.<node>`,
//! holding its clients there (client, info, connection count, since), whenever that changes
//! (gathered for a moment) and again every [`REFRESH`]. Every node watches the whole bucket
//! and feeds the other nodes' keys into its [`Presence`], which tells `join_leave`
//! subscribers of clients arriving and going. A node that stops deletes its keys; one that
//! dies stops refreshing them, and the others drop what it reported once a key is older than
//! [`EXPIRES`] (the bucket's own `max_age` removes it from storage too).
//!
//! Why a key-value bucket rather than heartbeats on core NATS subjects: a node that starts
//! (or reconnects) reads every node's current state at once from the bucket, instead of
//! waiting a heartbeat period during which presence would be wrong, and the bucket is
//! replicated like the stream, so a NATS server restart loses nothing either.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::kv::Operation;
use futures_util::StreamExt;
use tokio::time::Instant;

use super::NatsBackend;
use crate::backend::presence::NodeClient;
use crate::shutdown::Shutdown;

/// How often a node writes its keys again.
const REFRESH: Duration = Duration::from_secs(3);
/// A key not written again for this long is dropped: the most a dead node's clients stay
/// present elsewhere (plus up to a second of sweeping).
pub const EXPIRES: Duration = Duration::from_secs(10);
/// The most the presence loop waits for one write (it waits for nothing else meanwhile);
/// one not answered by then is left, and written again at the next refresh.
const PRESENCE_WRITE_WAIT: Duration = Duration::from_secs(2);
/// Changes within this are written together.
const GATHER: Duration = Duration::from_millis(20);

impl NatsBackend {
    async fn presence_bucket(&self) -> Result<jetstream::kv::Store, String> {
        let bucket = format!("{}_PRESENCE", self.settings().stream);
        if let Ok(store) = self.js().get_key_value(&bucket).await {
            return Ok(store);
        }
        self.js()
            .create_key_value(jetstream::kv::Config {
                bucket,
                history: 1,
                max_age: EXPIRES,
                storage: jetstream::stream::StorageType::Memory,
                num_replicas: self.settings().replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())
    }

    fn presence_key(&self, topic: &str) -> String {
        format!("{topic}.{}", self.inner.node)
    }

    /// Writes this node's part of `topic` (deletes it when nobody is there).
    async fn share(&self, kv: &jetstream::kv::Store, topic: &str) {
        let part = self.inner.presence.local_part(topic);
        let key = self.presence_key(topic);
        let write = async {
            if part.is_empty() {
                kv.delete(&key).await.map_err(|e| e.to_string())
            } else {
                match serde_json::to_vec(&part) {
                    Ok(value) => kv
                        .put(&key, value.into())
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        // Bounded: a write whose answer was lost must not stop this node following the
        // others' presence (the loop waits for it) until `nats.publish_timeout`.
        let done = tokio::time::timeout(PRESENCE_WRITE_WAIT, write)
            .await
            .unwrap_or_else(|_| Err("no answer in time".to_owned()));
        if let Err(e) = done {
            tracing::debug!(topic, error = %e, "cannot share presence now; retried at the next refresh");
        }
    }

    /// Shares this node's presence and follows the other nodes', until `shutdown`.
    pub async fn run_presence(self, mut shutdown: Shutdown) {
        let kv = loop {
            match self.presence_bucket().await {
                Ok(kv) => break kv,
                Err(e) => tracing::debug!(error = %e, "presence bucket not reachable yet"),
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.wait() => return,
            }
        };
        let mut seen: HashMap<(String, String), Instant> = HashMap::new();
        let mut refresh = tokio::time::interval(REFRESH);
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        let mut watch = None;
        loop {
            if watch.is_none() {
                match kv.watch_with_history(">").await {
                    Ok(w) => watch = Some(w),
                    Err(e) => tracing::debug!(error = %e, "cannot watch presence; trying again"),
                }
            }
            tokio::select! {
                topics = self.inner.presence.changed() => {
                    tokio::time::sleep(GATHER).await;
                    futures_util::stream::iter(topics.iter())
                        .for_each_concurrent(64, |topic| self.share(&kv, topic))
                        .await;
                }
                _ = refresh.tick() => {
                    // Concurrently: thousands of topics one after another could take longer
                    // than the others wait before expiring this node's clients.
                    let topics = self.inner.presence.local_topics();
                    futures_util::stream::iter(topics.iter())
                        .for_each_concurrent(64, |topic| self.share(&kv, topic))
                        .await;
                }
                _ = sweep.tick() => {
                    let now = Instant::now();
                    seen.retain(|(topic, node), at| {
                        let live = now.duration_since(*at) < EXPIRES;
                        if !live {
                            self.inner.presence.set_remote(node, topic, Vec::new());
                        }
                        live
                    });
                }
                entry = next_entry(&mut watch) => match entry {
                    Some(entry) => self.follow_presence(entry, &mut seen),
                    None => {
                        watch = None;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
                _ = shutdown.wait() => break,
            }
        }
        for topic in self.inner.presence.local_topics() {
            if let Err(e) = kv.delete(self.presence_key(&topic)).await {
                tracing::debug!(topic, error = %e, "presence key left to expire");
            }
        }
    }

    /// Feeds another node's key into this node's presence.
    fn follow_presence(
        &self,
        entry: jetstream::kv::Entry,
        seen: &mut HashMap<(String, String), Instant>,
    ) {
        let Some((topic, node)) = entry.key.rsplit_once('.') else {
            return;
        };
        if node == self.inner.node {
            return;
        }
        let at = (topic.to_owned(), node.to_owned());
        let clients: Vec<NodeClient> = match entry.operation {
            Operation::Put => match serde_json::from_slice(&entry.value) {
                Ok(clients) => clients,
                Err(e) => {
                    tracing::warn!(key = entry.key, error = %e, "a presence key does not decode; ignored");
                    return;
                }
            },
            Operation::Delete | Operation::Purge => Vec::new(),
        };
        if clients.is_empty() {
            seen.remove(&at);
        } else {
            // A key read at start may have been written a while ago.
            let age = time::OffsetDateTime::now_utc() - entry.created;
            let age = Duration::try_from(age).unwrap_or_default().min(EXPIRES);
            let now = Instant::now();
            seen.insert(at, now.checked_sub(age).unwrap_or(now));
        }
        self.inner.presence.set_remote(node, topic, clients);
    }
}

async fn next_entry(watch: &mut Option<jetstream::kv::Watch>) -> Option<jetstream::kv::Entry> {
    match watch.as_mut()?.next().await? {
        Ok(entry) => Some(entry),
        Err(e) => {
            tracing::debug!(error = %e, "presence watch error");
            None
        }
    }
}
