//! Opening the data directory: recover the log, bring the sled view up to it (or rebuild the
//! view from the log), and wire the writer to memory, sled and the feed.

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Config;
use crate::consumers::Consumers;
use crate::delivery::{Committer, Feed};
use crate::log::{self, AppendLog, LogError, LogOptions, Position, Record, Recovery};
use crate::state::{ConsumerState, StateError, StateView};
use crate::BrokerError;

/// Everything durable, opened and consistent.
pub struct Store {
    pub log: AppendLog,
    pub state: StateView,
    pub consumers: Arc<Consumers>,
    pub feed: Arc<Feed>,
    /// Held for the broker's life so that a second broker cannot open the same data dir.
    _lock: File,
}

/// Applies one record to consumer states, as the commit sink does at run time.
fn apply(consumers: &mut HashMap<String, ConsumerState>, rec: &Record) {
    match rec {
        Record::Event(_) => {}
        Record::ConsumerCreated {
            name,
            pattern,
            floor,
        } => {
            consumers
                .entry(name.clone())
                .or_insert_with(|| ConsumerState::new(pattern.clone(), *floor));
        }
        Record::Acked {
            consumer,
            seqs,
            floor,
        } => {
            if let Some(state) = consumers.get_mut(consumer) {
                state.apply_ack(seqs, *floor);
            }
        }
    }
}

/// Replays the log into `consumers` from `applied` on. Returns the recovery and whether
/// `applied` was found on a record boundary of the log (a view ahead of the log is stale).
fn replay(
    log_dir: &Path,
    applied: Option<Position>,
    consumers: &mut HashMap<String, ConsumerState>,
) -> Result<(Recovery, bool), LogError> {
    let mut found = applied.is_none();
    let recovery = log::recover(log_dir, |rec, pos| {
        match applied {
            Some(a) if pos <= a => found |= pos == a,
            _ => apply(consumers, rec),
        }
        Ok(())
    })?;
    Ok((recovery, found))
}

fn open_view(path: &Path, config: &Config) -> Result<StateView, StateError> {
    StateView::open(path, config.state_flush_interval)
}

fn rebuild_view(path: &Path, config: &Config, why: &str) -> Result<StateView, StateError> {
    let aside = StateView::set_aside(path)?;
    tracing::warn!(
        reason = why,
        set_aside = ?aside,
        "state view is not usable; rebuilding it from the log"
    );
    open_view(path, config)
}

impl Store {
    pub fn open(config: &Config) -> Result<Store, BrokerError> {
        let data_dir = &config.data_dir;
        fs::create_dir_all(data_dir).map_err(|source| BrokerError::Io {
            what: format!("cannot create data dir {}", data_dir.display()),
            source,
        })?;
        let lock = lock_data_dir(data_dir)?;
        let log_dir = data_dir.join("log");
        let state_dir = data_dir.join("state");

        let started = std::time::Instant::now();
        let mut view = match open_view(&state_dir, config) {
            Ok(view) => view,
            Err(e) => rebuild_view(&state_dir, config, &e.to_string())?,
        };
        let loaded = view.applied().and_then(|a| Ok((a, view.consumers()?)));
        let (applied, mut consumers) = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                drop(view);
                view = rebuild_view(&state_dir, config, &e.to_string())?;
                (None, HashMap::new())
            }
        };
        let (mut recovery, found) = replay(&log_dir, applied, &mut consumers)?;
        if !found {
            drop(view);
            view = rebuild_view(
                &state_dir,
                config,
                &format!("it reflects log position {applied:?}, which the log does not have"),
            )?;
            consumers.clear();
            recovery = replay(&log_dir, None, &mut consumers)?.0;
        }
        view.save(
            consumers.iter().map(|(n, s)| (n.as_str(), s)),
            std::iter::empty(),
            recovery.end,
        )?;
        view.flush()?;

        let mut deliveries = view.deliveries().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "delivery counts unreadable; they restart from zero");
            HashMap::new()
        });
        let registry = Arc::new(Consumers::default());
        for (name, state) in consumers {
            let mut counts = deliveries.remove(&name).unwrap_or_default();
            counts.retain(|&seq, _| !state.is_acked(seq));
            registry.insert(&name, state, counts);
        }
        let head = recovery.next_seq - 1;
        tracing::info!(
            events = head,
            segments = recovery.segments.len(),
            consumers = registry.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "recovered the log"
        );
        let feed = Arc::new(Feed::new(head, config.cache_events));
        let sink = Committer {
            consumers: registry.clone(),
            state: view.clone(),
            feed: feed.clone(),
        };
        let options = LogOptions {
            segment_bytes: config.segment_bytes,
            queue_depth: 4096,
        };
        let log = AppendLog::start(&log_dir, recovery, options, Box::new(sink))?;
        Ok(Store {
            log,
            state: view,
            consumers: registry,
            feed,
            _lock: lock,
        })
    }

    /// Lets queued writes commit, then flushes the view.
    pub async fn close(&self) {
        self.log.close().await;
        self.feed.close();
        if let Err(e) = self.state.flush() {
            tracing::warn!(error = %e, "final state flush failed; the view is rebuilt at next start");
        }
    }
}

fn lock_data_dir(dir: &Path) -> Result<File, BrokerError> {
    let path: PathBuf = dir.join("LOCK");
    let file = File::create(&path).map_err(|source| BrokerError::Io {
        what: format!("cannot create {}", path.display()),
        source,
    })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(_) => Err(BrokerError::Locked(dir.to_owned())),
    }
}
