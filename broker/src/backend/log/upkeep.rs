//! The embedded backend's timers: retention by age, relaxed syncs, delivered-through marks
//! and the removal of inactive consumers.

use std::time::Duration;

use tokio::task::JoinHandle;

use super::append::Record;
use super::LogBackend;
use crate::config::Durability;
use crate::shutdown::Shutdown;

impl LogBackend {
    /// Starts the timers; each ends at `shutdown`.
    pub fn spawn_upkeep(&self, shutdown: &Shutdown) -> Vec<(&'static str, JoinHandle<()>)> {
        vec![
            (
                "inactive-consumer",
                tokio::spawn(reap_inactive(self.clone(), shutdown.clone())),
            ),
            (
                "retention",
                tokio::spawn(age_out(self.clone(), shutdown.clone())),
            ),
            (
                "sync timer",
                tokio::spawn(relaxed_sync(self.clone(), shutdown.clone())),
            ),
            (
                "mark saving",
                tokio::spawn(save_marks(self.clone(), shutdown.clone())),
            ),
            (
                "index pruning",
                tokio::spawn(prune_index(self.clone(), shutdown.clone())),
            ),
        ]
    }
}

/// With `max_age` set, has the log apply retention regularly even when no segment rolls.
async fn age_out(backend: LogBackend, mut shutdown: Shutdown) {
    let age = backend.config.max_age;
    if age.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(
        (age / 10).clamp(Duration::from_millis(100), Duration::from_secs(60)),
    );
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => backend.store.log.maintain(),
        }
    }
}

/// In relaxed durability, syncs the log at least every `relaxed_sync_interval`, even when no
/// further writes come to trigger it.
async fn relaxed_sync(backend: LogBackend, mut shutdown: Shutdown) {
    if backend.config.durability != Durability::Relaxed {
        return;
    }
    let mut tick = tokio::time::interval(backend.config.relaxed_sync_interval);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => backend.store.log.sync_soon(),
        }
    }
}

/// Saves delivered-through marks every `state_flush_interval`, so delivery counts trail a
/// crash by about that much, like the rest of the view.
async fn save_marks(backend: LogBackend, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(backend.config.state_flush_interval);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {
                // sled may stall; not on a runtime worker.
                let store = backend.store.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || store.save_marks()).await {
                    tracing::warn!(error = %e, "saving delivered-through marks failed");
                }
            }
        }
    }
}

/// Deletes durable consumers nobody has attached to for `inactive_ttl`.
async fn reap_inactive(backend: LogBackend, mut shutdown: Shutdown) {
    let ttl = backend.config.inactive_ttl;
    if ttl.is_zero() {
        return;
    }
    let period = (ttl / 4).clamp(Duration::from_millis(10), Duration::from_secs(60));
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        let idle = backend
            .store
            .consumers
            .idle_longer_than(ttl, std::time::Instant::now());
        for name in idle {
            let record = Record::ConsumerDeleted { name: name.clone() };
            match backend.store.log.append(vec![record]).await {
                Ok(_) => tracing::info!(consumer = name, ?ttl, "deleted an inactive consumer"),
                Err(e) => {
                    tracing::warn!(consumer = name, error = %e, "could not delete an inactive consumer")
                }
            }
        }
    }
}

/// Removes from the per-topic index what retention removed from the log, once the oldest
/// seq moved.
async fn prune_index(backend: LogBackend, mut shutdown: Shutdown) {
    let mut pruned_below = backend.store.feed.first_seq();
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => return,
        }
        let first = backend.store.feed.first_seq();
        if first <= pruned_below {
            continue;
        }
        let store = backend.store.clone();
        let pruned = tokio::task::spawn_blocking(move || {
            super::history::prune_index(&store.feed, &store.state, first)
        })
        .await;
        if pruned.is_ok() {
            pruned_below = first;
        }
    }
}
