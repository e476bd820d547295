//! The sled state view: consumers, their acked state and delivery counts, and the log
//! position the view reflects.
//!
//! sled is a view, never the only copy. Everything in it except delivery counts is derived
//! from log records, and each commit's changes go into sled as one atomic batch together with
//! the log position they bring the view up to. At start the view is replayed forward from that
//! position; if sled cannot be opened or does not agree with the log, it is set aside and
//! rebuilt from the log. Delivery counts are written straight to sled and flushed in the
//! background, so after a crash they may trail by one flush interval; they never overcount.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::backend::log::append::Position;
use crate::backend::log::codec;
pub use crate::backend::log::settled::ConsumerState;
pub use index::IndexBatch;

mod index;

const CONSUMER: u8 = b'c';
const DELIVERY: u8 = b'd';
/// Per consumer: every seq at or below was delivered at least once (see `save_marks`).
const MARK: u8 = b'h';
const APPLIED_KEY: &[u8] = b"m\0applied";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("sled at {path}: {source}")]
    Sled { path: PathBuf, source: sled::Error },
    #[error("sled at {path}: stored value under {key:?} does not decode: {source}")]
    Decode {
        path: PathBuf,
        key: String,
        source: codec::CodecError,
    },
    #[error("cannot start the state view's writer thread: {0}")]
    Thread(String),
    #[error("cannot set aside {path}: {source}")]
    SetAside {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How long the view's writer gathers commits into one sled batch.
const GATHER: Duration = Duration::from_millis(20);

/// One commit's changes to the view.
#[derive(Debug)]
pub struct ViewUpdate {
    pub states: Vec<(String, ConsumerState)>,
    /// Delivery counts that no longer matter.
    pub settled: Vec<(String, u64)>,
    pub deleted: Vec<String>,
    /// Events committed since the previous update, for the per-topic index.
    pub index: IndexBatch,
    /// Every event at or below this seq is indexed once this is applied.
    pub indexed_through: u64,
    /// The log position the view reflects once this is applied.
    pub applied: Position,
}

/// Hands [`ViewUpdate`]s to the view's writer thread. The queue is bounded: a view writer
/// that falls that far behind slows commits down instead of holding unbounded memory.
pub struct ViewSender(std::sync::mpsc::SyncSender<ViewUpdate>);

/// Commits that may wait for the view's writer.
const VIEW_QUEUE: usize = 4096;

/// Failed updates kept to retry with the next batch; past this the writer stops saving, and
/// the view keeps the last position it reached (a restart replays the log from there).
const MAX_RETRIED: usize = 65_536;

/// Set-aside views kept for inspection; older ones are removed.
const SET_ASIDE_KEPT: usize = 2;

impl ViewSender {
    pub fn send(&self, update: ViewUpdate) {
        if self.0.send(update).is_err() {
            tracing::error!(
                "the state view writer stopped; the view is rebuilt from the log at the next start"
            );
        }
    }
}

/// Updates the view's writer has not saved yet. A failed save keeps them, and they go into
/// the next batch: saving a later position over changes that never reached sled would make a
/// restart skip them (acked events would come back).
#[derive(Default)]
struct PendingUpdates {
    updates: Vec<ViewUpdate>,
    /// Saves kept failing: nothing more is saved, and the view keeps the last position it
    /// reached, from which a restart replays the log.
    gave_up: bool,
}

impl PendingUpdates {
    fn push(&mut self, update: ViewUpdate) {
        if !self.gave_up {
            self.updates.push(update);
        }
    }

    fn save_with(&mut self, save: impl FnOnce(&[ViewUpdate]) -> Result<(), StateError>) {
        if self.gave_up || self.updates.is_empty() {
            return;
        }
        match save(&self.updates) {
            Ok(()) => self.updates.clear(),
            Err(e) if self.updates.len() < MAX_RETRIED => {
                for update in &mut self.updates {
                    update.index.shed_payloads();
                }
                tracing::error!(error = %e, pending = self.updates.len(), "state view update failed; retrying with the next one");
            }
            Err(e) => {
                tracing::error!(error = %e, "state view updates keep failing; the view stays where it was and is replayed from the log at the next start");
                self.updates.clear();
                self.gave_up = true;
            }
        }
    }
}

/// A handle to the sled view; cheap to clone.
#[derive(Clone)]
pub struct StateView {
    path: PathBuf,
    db: sled::Db,
    /// What the saved index covers (see [`StateView::indexed_through`]).
    indexed: Arc<AtomicU64>,
}

impl StateView {
    /// Opens the view at `path`, creating it if absent.
    pub fn open(path: &Path, flush_every: Duration) -> Result<StateView, StateError> {
        let ms = u64::try_from(flush_every.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(Some(ms))
            .open()
            .map_err(|source| StateError::Sled {
                path: path.to_owned(),
                source,
            })?;
        Ok(StateView {
            path: path.to_owned(),
            db,
            indexed: Arc::default(),
        })
    }

    /// Moves a view that cannot be trusted out of the way, keeping it for inspection.
    pub fn set_aside(path: &Path) -> Result<Option<PathBuf>, StateError> {
        if !path.exists() {
            return Ok(None);
        }
        let stamp = wharf_protocol::now_ms();
        let aside = path.with_file_name(format!("state.set-aside-{stamp}"));
        std::fs::rename(path, &aside).map_err(|source| StateError::SetAside {
            path: path.to_owned(),
            source,
        })?;
        if let Some(dir) = path.parent() {
            remove_old_set_asides(dir);
        }
        Ok(Some(aside))
    }

    fn sled_err(&self, source: sled::Error) -> StateError {
        StateError::Sled {
            path: self.path.clone(),
            source,
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        value: &[u8],
    ) -> Result<T, StateError> {
        codec::decode(value).map_err(|source| StateError::Decode {
            path: self.path.clone(),
            key: String::from_utf8_lossy(key).into_owned(),
            source,
        })
    }

    /// The log position the view reflects; `None` for a new view.
    pub fn applied(&self) -> Result<Option<Position>, StateError> {
        match self.db.get(APPLIED_KEY).map_err(|e| self.sled_err(e))? {
            None => Ok(None),
            Some(v) => self.decode(APPLIED_KEY, &v).map(Some),
        }
    }

    pub fn consumers(&self) -> Result<HashMap<String, ConsumerState>, StateError> {
        let mut out = HashMap::new();
        for item in self.db.scan_prefix([CONSUMER, 0]) {
            let (k, v) = item.map_err(|e| self.sled_err(e))?;
            let name = String::from_utf8_lossy(&k[2..]).into_owned();
            out.insert(name, self.decode(&k, &v)?);
        }
        Ok(out)
    }

    /// Delivery counts per consumer, per seq.
    pub fn deliveries(&self) -> Result<HashMap<String, BTreeMap<u64, u32>>, StateError> {
        let mut out: HashMap<String, BTreeMap<u64, u32>> = HashMap::new();
        for item in self.db.scan_prefix([DELIVERY, 0]) {
            let (k, v) = item.map_err(|e| self.sled_err(e))?;
            let Some((name, seq)) = split_delivery_key(&k) else {
                continue;
            };
            let count: u32 = self.decode(&k, &v)?;
            out.entry(name).or_default().insert(seq, count);
        }
        Ok(out)
    }

    /// Each consumer's delivered-through mark, with the seek count it was saved under.
    pub fn delivered_marks(&self) -> Result<HashMap<String, (u64, u64)>, StateError> {
        let mut out = HashMap::new();
        for item in self.db.scan_prefix([MARK, 0]) {
            let (k, v) = item.map_err(|e| self.sled_err(e))?;
            let name = String::from_utf8_lossy(&k[2..]).into_owned();
            out.insert(name, self.decode(&k, &v)?);
        }
        Ok(out)
    }

    /// Saves delivered-through marks in one batch. First deliveries go out in seq order, so
    /// one number per consumer stands for every count of 1: only redeliveries (count ≥ 2)
    /// need a key of their own, and the replay path touches sled once per batch, not once
    /// per event.
    pub fn save_marks(&self, marks: &[(String, u64, u64)]) -> Result<(), StateError> {
        if marks.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for (name, seeks, through) in marks {
            batch.insert(mark_key(name), self.encode(&(*seeks, *through))?);
        }
        self.db.apply_batch(batch).map_err(|e| self.sled_err(e))
    }

    /// Applies commits' changes in order, in one atomic batch: consumer states, settled
    /// delivery counts dropped, deleted consumers removed, and the applied log position.
    pub fn save(&self, updates: &[ViewUpdate]) -> Result<(), StateError> {
        let mut batch = sled::Batch::default();
        for update in updates {
            // Deletions first: an update's states are the consumers that exist after it, and
            // a name deleted and created again within it (or within one replay) is one of them.
            for name in &update.deleted {
                batch.remove(consumer_key(name));
                batch.remove(mark_key(name));
                let mut prefix = vec![DELIVERY, 0];
                prefix.extend_from_slice(name.as_bytes());
                prefix.push(0);
                for item in self.db.scan_prefix(&prefix).keys() {
                    batch.remove(item.map_err(|e| self.sled_err(e))?);
                }
            }
            for (name, state) in &update.states {
                batch.insert(consumer_key(name), self.encode(state)?);
            }
            for (name, seq) in &update.settled {
                batch.remove(delivery_key(name, *seq));
            }
        }
        self.index_into(&mut batch, updates)?;
        if let Some(last) = updates.last() {
            batch.insert(APPLIED_KEY, self.encode(&last.applied)?);
        }
        self.db.apply_batch(batch).map_err(|e| self.sled_err(e))?;
        if let Some(through) = updates.iter().map(|u| u.indexed_through).max() {
            self.indexed.fetch_max(through, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Starts the thread that applies commits' changes to the view, in commit order. The log
    /// writer hands them over instead of writing sled itself: sled batches stalled the
    /// writer now and then (p99.9 publish-to-delivery latency 46 ms with, 9 ms without).
    /// Commits within `GATHER` of each other go into one batch. The
    /// thread ends once every sender is dropped and the queue is drained.
    pub fn start_writer(&self) -> Result<(ViewSender, std::thread::JoinHandle<()>), StateError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<ViewUpdate>(VIEW_QUEUE);
        let view = self.clone();
        let thread = std::thread::Builder::new()
            .name("wharf-state".into())
            .spawn(move || {
                let mut pending = PendingUpdates::default();
                while let Ok(first) = rx.recv() {
                    // Gather for a moment: each sled batch wakes sled's I/O threads, which
                    // showed at ~8% of the broker's samples during a replay with acks.
                    pending.push(first);
                    let until = std::time::Instant::now() + GATHER;
                    while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
                        match rx.recv_timeout(left) {
                            Ok(update) => pending.push(update),
                            Err(_) => break,
                        }
                    }
                    pending.save_with(|updates| view.save(updates));
                }
            })
            .map_err(|e| StateError::Thread(e.to_string()))?;
        Ok((ViewSender(tx), thread))
    }

    /// Saves a redelivery's count (first deliveries are covered by the consumer's mark).
    pub fn set_delivery(&self, consumer: &str, seq: u64, count: u32) -> Result<(), StateError> {
        self.db
            .insert(delivery_key(consumer, seq), self.encode(&count)?)
            .map_err(|e| self.sled_err(e))?;
        Ok(())
    }

    /// Bytes sled uses on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    pub fn flush(&self) -> Result<(), StateError> {
        self.db.flush().map(|_| ()).map_err(|e| self.sled_err(e))
    }

    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, StateError> {
        codec::encode(value).map_err(|source| StateError::Decode {
            path: self.path.clone(),
            key: "(encoding)".into(),
            source,
        })
    }
}

/// Keeps the newest [`SET_ASIDE_KEPT`] set-aside views in `dir` and removes the rest.
fn remove_old_set_asides(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut asides: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("state.set-aside-"))
        })
        .collect();
    // The stamp is a fixed-width ms count for centuries: names sort by age.
    asides.sort();
    let excess = asides.len().saturating_sub(SET_ASIDE_KEPT);
    for old in asides.drain(..excess) {
        let removed = if old.is_dir() {
            std::fs::remove_dir_all(&old)
        } else {
            std::fs::remove_file(&old)
        };
        match removed {
            Ok(()) => {
                tracing::info!(removed = %old.display(), kept = SET_ASIDE_KEPT, "removed an old set-aside state view")
            }
            Err(e) => {
                tracing::warn!(path = %old.display(), error = %e, "cannot remove an old set-aside state view")
            }
        }
    }
}

fn consumer_key(name: &str) -> Vec<u8> {
    let mut k = vec![CONSUMER, 0];
    k.extend_from_slice(name.as_bytes());
    k
}

fn mark_key(name: &str) -> Vec<u8> {
    let mut k = vec![MARK, 0];
    k.extend_from_slice(name.as_bytes());
    k
}

fn delivery_key(name: &str, seq: u64) -> Vec<u8> {
    let mut k = vec![DELIVERY, 0];
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn split_delivery_key(k: &[u8]) -> Option<(String, u64)> {
    let rest = k.get(2..)?;
    let split = rest.len().checked_sub(9)?;
    let name = std::str::from_utf8(&rest[..split]).ok()?;
    let seq = u64::from_be_bytes(rest[split + 1..].try_into().ok()?);
    Some((name.to_owned(), seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_save_is_retried_before_any_later_position_is_saved() {
        let at = |offset| Position { segment: 1, offset };
        let update = |name: &str, offset| ViewUpdate {
            states: vec![(name.into(), ConsumerState::new(vec!["a".into()], offset))],
            settled: vec![],
            deleted: vec![],
            index: IndexBatch::default(),
            indexed_through: 0,
            applied: at(offset),
        };
        let mut pending = PendingUpdates::default();
        pending.push(update("first", 10));
        pending.save_with(|_| Err(StateError::Thread("disk said no".into())));
        pending.push(update("second", 20));
        let mut saved = Vec::new();
        pending.save_with(|updates| {
            saved = updates
                .iter()
                .map(|u| (u.states[0].0.clone(), u.applied))
                .collect();
            Ok(())
        });
        assert_eq!(
            saved,
            vec![("first".to_owned(), at(10)), ("second".to_owned(), at(20))],
            "the failed update is saved with the next, in order"
        );
        pending.save_with(|_| panic!("nothing is left to save"));
    }

    /// Opens the view at `path` again. sled lets go of its file lock when its background
    /// threads have let go of the database, a moment after the last handle is dropped, and
    /// offers nothing to wait on: asked again until then (the broker never reopens a view
    /// in place; a set-aside view is renamed first).
    fn reopen(path: &Path) -> StateView {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match StateView::open(path, Duration::from_millis(100)) {
                Ok(view) => return view,
                Err(e) if std::time::Instant::now() < until && e.to_string().contains("lock") => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("cannot open the view again: {e}"),
            }
        }
    }

    #[test]
    fn view_round_trips_through_sled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let view = StateView::open(&path, Duration::from_millis(100)).unwrap();
        assert_eq!(view.applied().unwrap(), None);
        let mut s = ConsumerState::new(vec!["orders.>".into()], 0);
        s.apply_settle(&[4], Some(2), crate::backend::log::settled::Settle::Ack);
        view.set_delivery("c-1", 4, 2).unwrap();
        view.set_delivery("c-1", 5, 1).unwrap();
        let pos = Position {
            segment: 1,
            offset: 99,
        };
        let update = ViewUpdate {
            states: vec![("c-1".into(), s.clone())],
            settled: vec![("c-1".into(), 4)],
            deleted: vec![],
            index: IndexBatch::Seqs(vec![("t".into(), 3), ("t".into(), 9), ("u".into(), 5)]),
            indexed_through: 9,
            applied: pos,
        };
        view.save(&[update]).unwrap();
        view.flush().unwrap();
        drop(view);
        let view = reopen(&path);
        assert_eq!(view.applied().unwrap(), Some(pos));
        assert!(view.has_index().unwrap());
        assert_eq!(view.seqs_before("t", 100, 10).unwrap(), vec![9, 3]);
        assert_eq!(view.seqs_before("t", 9, 10).unwrap(), vec![3]);
        assert_eq!(view.seqs_after("t", 3, 10).unwrap(), vec![9]);
        assert_eq!(view.seqs_after("t", 0, 1).unwrap(), vec![3]);
        assert_eq!(view.seqs_after("u", 5, 10).unwrap(), Vec::<u64>::new());
        // Built again from the whole log: cleared, saved in parts, marked only with the rest.
        view.clear_index().unwrap();
        assert!(!view.has_index().unwrap());
        assert_eq!(view.seqs_before("t", 100, 10).unwrap(), Vec::<u64>::new());
        view.save_index_part(&[("t".into(), 3), ("t".into(), 9)])
            .unwrap();
        assert!(!view.has_index().unwrap(), "a part does not mark the view");
        assert_eq!(view.seqs_before("t", 100, 10).unwrap(), vec![9, 3]);
        assert_eq!(view.consumers().unwrap()["c-1"], s);
        let d = view.deliveries().unwrap();
        assert_eq!(d["c-1"].iter().collect::<Vec<_>>(), vec![(&5, &1)]);
        let (writer, thread) = view.start_writer().unwrap();
        writer.send(ViewUpdate {
            states: vec![],
            settled: vec![],
            deleted: vec!["c-1".into()],
            index: IndexBatch::default(),
            indexed_through: 0,
            applied: pos,
        });
        drop(writer);
        thread.join().unwrap();
        assert!(view.consumers().unwrap().is_empty());
        assert!(view.deliveries().unwrap().is_empty());
    }
}
