//! Opening the data directory: recover the log, bring the sled view up to it (or rebuild the
//! view from the log), and wire the writer to memory, sled and the feed.

use std::collections::HashMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::log::append::{
    self, AppendLog, LogError, LogOptions, Position, Recovery, Retention,
};
use crate::backend::log::consumers::{Changes, Consumers};
use crate::backend::log::delivery::{Committer, Feed, Topics};
use crate::backend::log::state::{ConsumerState, IndexBatch, StateError, StateView, ViewUpdate};
use crate::config::{Config, Durability};
use crate::error::BrokerError;

impl From<LogError> for BrokerError {
    fn from(e: LogError) -> BrokerError {
        BrokerError::Storage(Box::new(e))
    }
}

impl From<StateError> for BrokerError {
    fn from(e: StateError) -> BrokerError {
        BrokerError::Storage(Box::new(e))
    }
}

/// Everything durable, opened and consistent.
pub struct Store {
    pub log: AppendLog,
    pub state: StateView,
    pub consumers: Arc<Consumers>,
    pub feed: Arc<Feed>,
    /// The thread that applies commits to the view; joined at close.
    view_writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Held for the broker's life so that a second broker cannot open the same data dir.
    _lock: File,
}

/// The per-topic index entries a start-up replay makes: of the events after the view's
/// position, or (`whole`: a view without an index) of every event, saved in parts as the
/// scan goes.
struct IndexBuild<'a> {
    view: &'a StateView,
    whole: bool,
    entries: Vec<(String, u64)>,
    failed: Option<StateError>,
}

/// Entries kept in memory before a part is saved.
const INDEX_PART: usize = 65_536;

impl IndexBuild<'_> {
    fn add(&mut self, events: &[append::Event], after_view: bool) {
        if !(after_view || self.whole) || self.failed.is_some() {
            return;
        }
        self.entries
            .extend(events.iter().map(|ev| (ev.topic.clone(), ev.seq)));
        if self.whole && self.entries.len() >= INDEX_PART {
            if let Err(e) = self.view.save_index_part(&self.entries) {
                self.failed = Some(e);
            }
            self.entries.clear();
        }
    }
}

/// Replays the log into `consumers` from `applied` on, collecting what changed. Returns the
/// recovery and whether `applied` was found in the log: at a record's end, or at the start
/// of a segment (a view saved while the newest segment was still empty).
fn replay(
    log_dir: &Path,
    dedup_since_ms: u64,
    applied: Option<Position>,
    consumers: &Consumers,
    changes: &mut Changes,
    topics: &mut Topics,
    index: &mut IndexBuild,
) -> Result<(Recovery, bool), LogError> {
    let mut found = applied.is_none();
    topics.clear();
    let checkpoint_of = |consumers: &Consumers| {
        crate::backend::log::delivery::checkpoint_records(consumers.snapshot())
    };
    // Whether `consumers` hold exactly the state at the current point of the scan, as a
    // segment that lacks its checkpoint needs: only once the view's position is behind us.
    let exact_at = std::cell::Cell::new(applied.is_none());
    let recovery = append::recover(
        log_dir,
        dedup_since_ms,
        |rec, pos| {
            for ev in rec.events() {
                topics.add(ev);
            }
            match applied {
                Some(a) if pos <= a => {
                    found |= pos == a;
                    exact_at.set(pos == a);
                    index.add(rec.events(), false);
                }
                _ => {
                    exact_at.set(true);
                    consumers.apply(rec, changes);
                    index.add(rec.events(), true);
                }
            }
            Ok(())
        },
        |base| {
            let at_start = Position {
                segment: base,
                offset: 0,
            };
            let ready = exact_at.get() || applied.is_some_and(|a| a == at_start);
            ready.then(|| checkpoint_of(consumers))
        },
    )?;
    if let Some(a) = applied {
        found |= a.offset == 0 && recovery.segments.iter().any(|m| m.base == a.segment);
    }
    Ok((recovery, found))
}

/// Loads the consumers the view holds, with their delivery counts.
fn load(view: &StateView) -> Result<(Option<Position>, Consumers), StateError> {
    let applied = view.applied()?;
    let mut deliveries = view.deliveries().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "delivery counts unreadable; they restart from zero");
        HashMap::new()
    });
    let marks = view.delivered_marks().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "delivered-through marks unreadable; first deliveries count from zero");
        HashMap::new()
    });
    let registry = Consumers::default();
    for (name, state) in view.consumers()? {
        let mut counts = deliveries.remove(&name).unwrap_or_default();
        counts.retain(|&seq, _| !state.is_acked(seq));
        registry.insert(&name, state, counts);
        if let (Some(c), Some(&(seeks, mark))) = (registry.get(&name), marks.get(&name)) {
            c.set_loaded_through(seeks, mark);
        }
    }
    Ok((applied, registry))
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

/// What recovery brought up to date: the view, the consumers in memory, and the log.
struct Recovered {
    view: StateView,
    consumers: Consumers,
    changes: Changes,
    topics: Topics,
    /// Events the view's per-topic index lacks.
    index: Vec<(String, u64)>,
    recovery: Recovery,
}

/// With `--repair`, rewrites damaged segments without their bad byte ranges, reporting each.
fn repair_if_asked(config: &Config, log_dir: &Path) -> Result<(), BrokerError> {
    if !config.repair {
        return Ok(());
    }
    let removed = append::repair(log_dir)?;
    for (path, from, to) in &removed {
        tracing::error!(
            segment = %path.display(),
            from,
            to,
            "repair: removed damaged bytes; the events they held are lost"
        );
    }
    if removed.is_empty() {
        tracing::info!("repair: the log has no damage");
    }
    Ok(())
}

/// Opens the sled view and replays the log into it from the view's position; a view that
/// cannot be opened or read, or that claims a position the log lacks, is set aside and
/// rebuilt from the whole log.
fn recover_view(
    config: &Config,
    log_dir: &Path,
    state_dir: &Path,
) -> Result<Recovered, BrokerError> {
    let mut view = match open_view(state_dir, config) {
        Ok(view) => view,
        Err(e) => rebuild_view(state_dir, config, &e.to_string())?,
    };
    let (applied, consumers) = match load(&view) {
        Ok(loaded) => loaded,
        Err(e) => {
            drop(view);
            view = rebuild_view(state_dir, config, &e.to_string())?;
            (None, Consumers::default())
        }
    };
    let window_ms = u64::try_from(config.dedup_window.as_millis()).unwrap_or(u64::MAX);
    let dedup_since_ms = wharf_protocol::now_ms().saturating_sub(window_ms);
    let mut changes = Changes::default();
    let mut topics = Topics::default();
    // A view made before there was an index gets one built from the whole log, in place:
    // its consumers and delivery counts stay.
    let whole = match applied {
        None => true,
        Some(_) => !view.has_index()?,
    };
    if whole {
        view.clear_index()?;
    }
    let mut index = IndexBuild {
        view: &view,
        whole,
        entries: Vec::new(),
        failed: None,
    };
    let (recovery, found) = replay(
        log_dir,
        dedup_since_ms,
        applied,
        &consumers,
        &mut changes,
        &mut topics,
        &mut index,
    )?;
    let (index, index_failed) = (index.entries, index.failed);
    let stale = if !found {
        Some(format!(
            "it reflects log position {applied:?}, which the log does not have"
        ))
    } else {
        recovery
            .unanchored
            .as_ref()
            .filter(|_| applied.is_some())
            .map(|path| {
                format!(
                    "{} lacks its checkpoint; a replay from the oldest segment writes it",
                    path.display()
                )
            })
            .or_else(|| index_failed.map(|e| format!("its per-topic index cannot be saved: {e}")))
    };
    let Some(why) = stale else {
        return Ok(Recovered {
            view,
            consumers,
            changes,
            topics,
            index,
            recovery,
        });
    };
    drop(view);
    let view = rebuild_view(state_dir, config, &why)?;
    let consumers = Consumers::default();
    let mut changes = Changes::default();
    let mut build = IndexBuild {
        view: &view,
        whole: true,
        entries: Vec::new(),
        failed: None,
    };
    let (recovery, _) = replay(
        log_dir,
        dedup_since_ms,
        None,
        &consumers,
        &mut changes,
        &mut topics,
        &mut build,
    )?;
    if let Some(e) = build.failed {
        return Err(e.into());
    }
    let index = build.entries;
    Ok(Recovered {
        view,
        consumers,
        changes,
        topics,
        index,
        recovery,
    })
}

/// The oldest segment left must start with a checkpoint: without it, the consumers' state
/// before it went with the segments retention removed. `--repair` starts without it.
fn refuse_unanchored(config: &Config, recovery: &Recovery) -> Result<(), BrokerError> {
    let Some(path) = &recovery.unanchored else {
        return Ok(());
    };
    if !config.repair {
        return Err(BrokerError::from(LogError::Corrupt {
            path: path.clone(),
            offset: 0,
            reason: "the oldest segment does not start with a checkpoint, so consumers' state cannot be rebuilt (wharf serve --repair starts without what it lacks)".into(),
        }));
    }
    tracing::error!(segment = %path.display(), "repair: the oldest segment lacks its checkpoint; consumers created before it are lost");
    Ok(())
}

/// Saves what the replay changed, at the log's end, before anything new is written.
fn save_view(recovered: &mut Recovered) -> Result<(), BrokerError> {
    let consumers = &recovered.consumers;
    let states: Vec<(String, ConsumerState)> = consumers
        .names()
        .into_iter()
        .filter_map(|name| consumers.get(&name).map(|c| (name, c.state())))
        .collect();
    let changes = std::mem::take(&mut recovered.changes);
    recovered.view.save(&[ViewUpdate {
        states,
        settled: changes.settled,
        deleted: changes.deleted,
        index: IndexBatch::Seqs(std::mem::take(&mut recovered.index)),
        indexed_through: recovered.recovery.next_seq.saturating_sub(1),
        applied: recovered.recovery.end,
    }])?;
    recovered.view.flush()?;
    Ok(())
}

fn log_options(config: &Config) -> LogOptions {
    LogOptions {
        segment_bytes: config.segment_bytes,
        dedup_window_ms: u64::try_from(config.dedup_window.as_millis()).unwrap_or(u64::MAX),
        dedup_max_entries: config.dedup_max_entries,
        relaxed_sync: match config.durability {
            Durability::Sync => None,
            Durability::Relaxed => Some(config.relaxed_sync_interval),
        },
        retention: Retention {
            max_age_ms: u64::try_from(config.max_age.as_millis()).unwrap_or(u64::MAX),
            max_events: config.max_events,
            max_bytes: config.max_bytes,
        },
        queue_depth: 4096,
    }
}

impl Store {
    /// Locks the data dir, recovers the log and the view, and starts the writers.
    pub fn open(config: &Config) -> Result<Store, BrokerError> {
        let data_dir = &config.data_dir;
        fs::create_dir_all(data_dir).map_err(|source| BrokerError::Io {
            what: format!("cannot create data dir {}", data_dir.display()),
            source,
        })?;
        let lock = lock_data_dir(data_dir)?;
        let log_dir = data_dir.join("log");
        let started = std::time::Instant::now();
        repair_if_asked(config, &log_dir)?;
        let mut recovered = recover_view(config, &log_dir, &data_dir.join("state"))?;
        refuse_unanchored(config, &recovered.recovery)?;
        save_view(&mut recovered)?;
        let Recovered {
            view,
            consumers,
            topics,
            recovery,
            ..
        } = recovered;
        let consumers = Arc::new(consumers);
        let head = recovery.next_seq - 1;
        tracing::info!(
            events = head,
            segments = recovery.segments.len(),
            consumers = consumers.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "recovered the log"
        );
        // Until the writer's first retention pass, the log starts where the recovery found it.
        let first = recovery
            .segments
            .first()
            .map_or(recovery.next_seq, |m| m.base);
        let feed = Arc::new(Feed::new(
            head,
            first,
            config.cache_events,
            config.cache_bytes,
            topics,
        ));
        let (view_tx, view_writer) = view.start_writer()?;
        let sink = Committer::new(consumers.clone(), view_tx, feed.clone());
        let log = AppendLog::start(&log_dir, recovery, log_options(config), Box::new(sink))?;
        Ok(Store {
            log,
            state: view,
            consumers,
            feed,
            view_writer: std::sync::Mutex::new(Some(view_writer)),
            _lock: lock,
        })
    }

    /// Saves the consumers' delivered-through marks that moved.
    pub fn save_marks(&self) {
        if let Err(e) = self.state.save_marks(&self.consumers.take_marks()) {
            tracing::warn!(error = %e, "delivered-through marks not saved");
        }
    }

    /// Lets queued writes commit, then flushes the view.
    pub async fn close(&self) {
        self.log.close().await;
        self.feed.close();
        // The writer's sink (the only sender) is gone once the log is closed: the view's
        // writer drains what is queued and ends.
        let writer = self
            .view_writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(writer) = writer {
            match tokio::task::spawn_blocking(move || writer.join()).await {
                Ok(Ok(())) => {}
                _ => tracing::warn!("the state view writer did not finish cleanly; the view is rebuilt from the log at next start"),
            }
        }
        self.save_marks();
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
