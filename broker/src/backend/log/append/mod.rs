//! The append log: wharf's own checksummed segment files, and the only durable copy of
//! anything a client was told is stored.
//!
//! * [`record`]: what a record holds and how it is framed.
//! * [`segment`]: segment files and the start-up scan that cuts a torn tail and refuses damage.
//! * [`writer`]: the one group-commit thread that assigns seqs, writes, fdatasyncs once per
//!   batch and only then confirms.
//! * [`reader`]: a cursor that streams events from any seq with bounded memory.
//!
//! The rest of the broker sees a small API: [`recover`] at start, [`AppendLog::submit`] to
//! append, [`AppendLog::cursor`] to read, and a [`CommitSink`] that hears about every batch
//! after it is durable.

pub mod reader;
pub mod record;
pub mod segment;
pub mod writer;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use reader::EventCursor;
pub use record::{Event, Floor, Record, Settle};
use segment::{ScanEnd, SegmentMeta};

/// Where a record ends: the log position a state view has caught up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    /// Base seq (file name) of the segment.
    pub segment: u64,
    /// Byte offset just past the record.
    pub offset: u64,
}

/// What went wrong in the log. Clone, because one failed batch answers every request in it;
/// causes that are not Clone are shared behind an `Arc`. Each message ends with its cause's
/// own text, so printing the chain shows the cause once (see the CLI's `one_line`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// Damage found in stored bytes; `reason` says what was found there.
    #[error("damaged log: {path} at byte {offset}: {reason} (wharf serve --repair cuts damaged records out, losing them)")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("the log accepts no more writes: {0}")]
    Stopped(#[source] Stop),
    #[error("record does not encode: {0}")]
    Encode(#[source] Arc<record::FrameError>),
    /// A write failed (a full disk, say) and was cut back: nothing of it is stored, and the
    /// log goes on accepting writes.
    #[error("could not write to the log, nothing was stored: {path}: {source}")]
    WriteFailed {
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// An event refused without trying: a write already failed for want of space, and there
    /// is not yet room to put the reserve back (acks and consumer changes still go in).
    #[error("could not write to the log, nothing was stored: the disk is full: publishes are refused until space returns")]
    DiskFull,
    /// A submitted record of a kind kept only to read old logs.
    #[error("a V1 record is read from old logs, never written")]
    Legacy,
    /// A blocking read of the log, run off the async runtime, did not come back (it
    /// panicked, or the runtime is shutting down).
    #[error("{what} failed: {source}")]
    Task {
        what: &'static str,
        #[source]
        source: Arc<tokio::task::JoinError>,
    },
    #[error("cannot start the log writer thread: {0}")]
    Thread(#[source] Arc<io::Error>),
}

impl LogError {
    pub fn io(path: &Path, source: io::Error) -> LogError {
        LogError::Io {
            path: path.to_owned(),
            source: Arc::new(source),
        }
    }

    /// A write of `path` that failed and was cut back (see [`LogError::WriteFailed`]).
    pub fn write_failed(path: &Path, source: io::Error) -> LogError {
        LogError::WriteFailed {
            path: path.to_owned(),
            source: Arc::new(source),
        }
    }

    /// `what`, run with `spawn_blocking`, did not come back.
    pub fn task(what: &'static str, source: tokio::task::JoinError) -> LogError {
        LogError::Task {
            what,
            source: Arc::new(source),
        }
    }
}

impl From<record::FrameError> for LogError {
    fn from(e: record::FrameError) -> LogError {
        LogError::Encode(Arc::new(e))
    }
}

/// Why the log accepts no more writes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Stop {
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// The writer thread ended without answering (it panicked).
    #[error("the log writer is gone")]
    WriterGone,
    /// A write, sync or segment roll failed in a way that was not cut back cleanly: after a
    /// failed fsync the kernel may have dropped the pages, so nothing later could be trusted
    /// to sit on top of them.
    #[error("{0}")]
    Failed(#[source] Box<LogError>),
    #[error("cannot start a new segment: {0}")]
    NoNewSegment(#[source] Box<LogError>),
    #[error("retention failed: {0}")]
    Retention(#[source] Box<LogError>),
}

/// What a submitted record became once durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Receipt {
    /// Per event: its seq, and whether it is a duplicate (by msg_id) of one stored earlier,
    /// in which case nothing was written for it and the seq is the original's.
    Seqs(Vec<(u64, bool)>),
    /// Nothing of the record was stored, for this reason (the dedup table is full).
    Refused(String),
    Floor(u64),
    Done,
}

/// Hears about each batch after it was synced and before anyone is told it is stored, and
/// supplies the records the writer adds on its own.
pub trait CommitSink: Send + 'static {
    fn committed(&mut self, records: Vec<Record>, end: Position);
    /// `Checkpoint` records holding every consumer's state, written at the start of each new
    /// segment (several when one would be over the record size limit).
    fn checkpoint(&mut self) -> Vec<Record>;
    /// `ConsumerGap` records for consumers whose floor is below `first_seq`, the oldest seq
    /// the log still holds.
    fn gaps(&mut self, first_seq: u64) -> Vec<Record>;
}

/// The segments readers can see; the writer adds to it.
pub type SegmentTable = Arc<RwLock<Vec<SegmentMeta>>>;

/// The segment table, to read.
///
/// A poisoned lock is taken over, here and in [`write_table`], never reported: each change
/// the writer makes (push a segment, remove the oldest, catch the last one up) leaves a table
/// readers can use, and never shows them bytes past what is synced, so a panic while it was
/// held loses nothing; refusing the lock instead would stop every reader and the writer.
fn read_table(table: &SegmentTable) -> RwLockReadGuard<'_, Vec<SegmentMeta>> {
    table.read().unwrap_or_else(PoisonError::into_inner)
}

/// The segment table, to change (see [`read_table`] on a poisoned lock).
fn write_table(table: &SegmentTable) -> RwLockWriteGuard<'_, Vec<SegmentMeta>> {
    table.write().unwrap_or_else(PoisonError::into_inner)
}

/// What the start-up scan found.
pub struct Recovery {
    pub segments: Vec<SegmentMeta>,
    /// The seq the next event will get.
    pub next_seq: u64,
    pub end: Position,
    /// Set when a torn tail was cut: where and why.
    pub torn_tail: Option<String>,
    /// `(time_ms, msg_id, seq)` of every stored event that carries a msg_id, oldest first;
    /// the writer keeps those inside the dedup window.
    pub msg_ids: Vec<(u64, String, u64)>,
    /// The newest event time stored: new events are never stamped earlier, so event times
    /// only grow even when the wall clock steps back.
    pub last_time_ms: u64,
    /// A segment that does not start with a checkpoint and could not be given one, so the
    /// consumers' state cannot be rebuilt from it: it needs a replay from an older segment
    /// (or, when it is the oldest left, that state is lost).
    pub unanchored: Option<PathBuf>,
}

/// Written at a clean stop: the last segment and its synced length. While it is there, any
/// damage at the end of the log is damage to confirmed data, not a torn write.
const CLEAN_STOP_FILE: &str = "CLEAN";

fn read_clean_stop(dir: &Path) -> Option<(u64, u64)> {
    let text = fs::read_to_string(dir.join(CLEAN_STOP_FILE)).ok()?;
    let (base, len) = text.trim().split_once(' ')?;
    Some((base.parse().ok()?, len.parse().ok()?))
}

/// Records a clean stop (see [`CLEAN_STOP_FILE`]).
pub(crate) fn write_clean_stop(dir: &Path, base: u64, len: u64) -> Result<(), LogError> {
    let path = dir.join(CLEAN_STOP_FILE);
    let written = (|| {
        let mut file = fs::File::create(&path)?;
        io::Write::write_all(&mut file, format!("{base} {len}\n").as_bytes())?;
        file.sync_all()
    })();
    written.map_err(|e| LogError::io(&path, e))?;
    segment::sync_dir(dir)
}

/// Scans every segment in `dir` (creating it if needed), verifies every record, cuts a torn
/// tail off the last segment and calls `visit` with each record and the position after it.
///
/// Every segment but the very first of the log (base 1) must start with a checkpoint. One
/// that does not (a crash while an older build started it) is given one: `checkpoint_for`
/// is asked for the consumers' state as of the end of the segment before, which the caller
/// knows when it replays everything before it; an empty one is removed when it cannot.
///
/// `dedup_since_ms`: msg_ids of events published before this are outside the dedup window
/// and are not kept.
pub fn recover(
    dir: &Path,
    dedup_since_ms: u64,
    mut visit: impl FnMut(&Record, Position) -> Result<(), LogError>,
    mut checkpoint_for: impl FnMut(u64) -> Option<Vec<Record>>,
) -> Result<Recovery, LogError> {
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(|e| LogError::io(dir, e))?;
        if let Some(parent) = dir.parent() {
            segment::sync_dir(parent)?;
        }
    }
    let mut scan = Scan {
        clean_stop: read_clean_stop(dir),
        dedup_since_ms,
        next_seq: 1,
        last_time_ms: 0,
        msg_ids: Vec::new(),
        torn_tail: None,
        unanchored: None,
    };
    let files = segment::list(dir)?;
    let count = files.len();
    let mut segments = Vec::with_capacity(count);
    for (i, (base, path)) in files.into_iter().enumerate() {
        let is_last = i + 1 == count;
        if base > 1 {
            // The very first segment of the log has no state before it to check-point.
            scan.anchor(&path, || (i > 0).then(|| checkpoint_for(base)).flatten())?;
        }
        let mut meta = scan.segment(base, path, is_last, &mut visit)?;
        if is_last && i > 0 && meta.synced_len == 0 {
            // Started but never given its checkpoint (a crash, or a torn checkpoint just cut):
            // give it one now, or remove it, so nothing is ever appended to it without one.
            match checkpoint_for(base) {
                Some(checkpoint) => {
                    start_with(&mut meta, &checkpoint, &mut visit)?;
                    segments.push(meta);
                }
                None => remove_unanchored_tail(dir, &meta.path)?,
            }
            continue;
        }
        if is_last {
            scan.check_clean_stop_end(&meta)?;
        }
        segments.push(meta);
    }
    if scan.clean_stop.is_some() {
        let path = dir.join(CLEAN_STOP_FILE);
        fs::remove_file(&path).map_err(|e| LogError::io(&path, e))?;
        segment::sync_dir(dir)?;
    }
    let end = segments
        .last()
        .map(|m| Position {
            segment: m.base,
            offset: m.synced_len,
        })
        .unwrap_or(Position {
            segment: scan.next_seq,
            offset: 0,
        });
    Ok(Recovery {
        segments,
        next_seq: scan.next_seq,
        end,
        torn_tail: scan.torn_tail,
        msg_ids: scan.msg_ids,
        last_time_ms: scan.last_time_ms,
        unanchored: scan.unanchored,
    })
}

/// What [`recover`] has learned so far, segment by segment.
struct Scan {
    /// `(segment, length)` recorded at the last clean stop, if the log stopped cleanly.
    clean_stop: Option<(u64, u64)>,
    dedup_since_ms: u64,
    next_seq: u64,
    last_time_ms: u64,
    msg_ids: Vec<(u64, String, u64)>,
    torn_tail: Option<String>,
    unanchored: Option<PathBuf>,
}

impl Scan {
    /// Makes sure a segment that is not the log's first starts with a checkpoint, writing
    /// one from `checkpoint` in front of it when it does not; without one, it is noted as
    /// unanchored.
    fn anchor(
        &mut self,
        path: &Path,
        checkpoint: impl FnOnce() -> Option<Vec<Record>>,
    ) -> Result<(), LogError> {
        if segment::first_record(path)? != segment::FirstRecord::Other {
            return Ok(());
        }
        match checkpoint() {
            Some(checkpoint) => {
                segment::prepend(path, &checkpoint)?;
                tracing::warn!(segment = %path.display(), "segment did not start with a checkpoint; one was written in front of it");
            }
            None => {
                tracing::warn!(segment = %path.display(), "segment does not start with a checkpoint");
                self.unanchored.get_or_insert(path.to_owned());
            }
        }
        Ok(())
    }

    /// Verifies every record of one segment, in order, passing each to `visit`, and cuts a
    /// torn tail off the last one. Its metadata, with `synced_len` the valid length.
    fn segment(
        &mut self,
        base: u64,
        path: PathBuf,
        is_last: bool,
        visit: &mut impl FnMut(&Record, Position) -> Result<(), LogError>,
    ) -> Result<SegmentMeta, LogError> {
        let mut meta = SegmentMeta::new(base, path.clone());
        let (valid_len, end) = segment::scan(&path, is_last, |rec, start, end| {
            for ev in rec.events() {
                self.note_event(&mut meta, ev, start)?;
            }
            let position = Position {
                segment: base,
                offset: end,
            };
            visit(&rec, position)
        })?;
        if let ScanEnd::TornTail { offset, reason } = end {
            if self.clean_stop.is_some() {
                return Err(LogError::Corrupt {
                    path,
                    offset,
                    reason: format!("{reason}, in data confirmed before the last clean stop"),
                });
            }
            tracing::warn!(
                segment = %path.display(),
                offset,
                reason,
                "cutting a torn write off the end of the log (it was never confirmed)"
            );
            segment::truncate(&path, valid_len)?;
            self.torn_tail = Some(format!("{} at byte {offset}: {reason}", path.display()));
        }
        meta.synced_len = valid_len;
        Ok(meta)
    }

    /// Takes in one stored event of the record at `start`; seqs must only grow.
    fn note_event(
        &mut self,
        meta: &mut SegmentMeta,
        ev: &Event,
        start: u64,
    ) -> Result<(), LogError> {
        if ev.seq < self.next_seq {
            return Err(LogError::Corrupt {
                path: meta.path.clone(),
                offset: start,
                reason: format!("event seq {} after seq {}", ev.seq, self.next_seq - 1),
            });
        }
        meta.note_event(ev.seq, ev.time_ms, start);
        self.next_seq = ev.seq + 1;
        self.last_time_ms = self.last_time_ms.max(ev.time_ms);
        match &ev.msg_id {
            Some(msg_id) if ev.time_ms >= self.dedup_since_ms => {
                self.msg_ids.push((ev.time_ms, msg_id.clone(), ev.seq));
            }
            _ => {}
        }
        Ok(())
    }

    /// After a clean stop the log must end where it ended then: shorter means confirmed data
    /// is gone.
    fn check_clean_stop_end(&self, last: &SegmentMeta) -> Result<(), LogError> {
        match self.clean_stop {
            Some((base, len)) if base != last.base || last.synced_len < len => {
                Err(LogError::Corrupt {
                    path: last.path.clone(),
                    offset: last.synced_len,
                    reason: format!(
                        "the log ends here, but it held segment {base} up to byte {len} at the last clean stop"
                    ),
                })
            }
            _ => Ok(()),
        }
    }
}

/// Writes `checkpoint` into the empty segment of `meta` and visits its records.
fn start_with(
    meta: &mut SegmentMeta,
    checkpoint: &[Record],
    visit: &mut impl FnMut(&Record, Position) -> Result<(), LogError>,
) -> Result<(), LogError> {
    segment::prepend(&meta.path, checkpoint)?;
    for rec in checkpoint {
        let mut framed = Vec::new();
        record::frame_into(rec, &mut framed)?;
        meta.synced_len += framed.len() as u64;
        let position = Position {
            segment: meta.base,
            offset: meta.synced_len,
        };
        visit(rec, position)?;
    }
    Ok(())
}

fn remove_unanchored_tail(dir: &Path, path: &Path) -> Result<(), LogError> {
    fs::remove_file(path).map_err(|e| LogError::io(path, e))?;
    segment::sync_dir(dir)?;
    tracing::warn!(segment = %path.display(), "removed an empty segment that a crash left without its checkpoint");
    Ok(())
}

/// When old segments are removed; 0 means no limit. The active segment is never removed.
#[derive(Debug, Clone, Default)]
pub struct Retention {
    pub max_age_ms: u64,
    pub max_events: u64,
    pub max_bytes: u64,
}

/// Rewrites every damaged segment in `dir` without its damaged byte ranges, and says what it
/// removed: `(segment, from, to)`. For `wharf serve --repair`; events in those ranges are lost.
pub fn repair(dir: &Path) -> Result<Vec<(PathBuf, u64, u64)>, LogError> {
    let mut removed = Vec::new();
    if !dir.exists() {
        return Ok(removed);
    }
    // Repairing accepts losing what is damaged, even after a clean stop.
    let clean = dir.join(CLEAN_STOP_FILE);
    if clean.exists() {
        fs::remove_file(&clean).map_err(|e| LogError::io(&clean, e))?;
    }
    for (_, path) in segment::list(dir)? {
        for (from, to) in segment::repair(&path)? {
            removed.push((path.clone(), from, to));
        }
    }
    Ok(removed)
}

/// Tuning of the writer.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// A new segment is started once the current one holds this many bytes.
    pub segment_bytes: u64,
    /// How long a msg_id is remembered for deduplication, in ms.
    pub dedup_window_ms: u64,
    /// The most msg_ids remembered at once; a publish that needs more is refused.
    pub dedup_max_entries: usize,
    /// `None`: sync before every confirmation (the default). `Some(interval)`: relaxed mode,
    /// confirm after the write and sync at most this long later.
    pub relaxed_sync: Option<std::time::Duration>,
    pub retention: Retention,
    /// Append requests that may wait for the writer before submitters wait too.
    pub queue_depth: usize,
}

enum Command {
    Append(AppendRequest),
    Close(oneshot::Sender<()>),
    /// Run retention now (for `max_age` while no segment rolls).
    Maintain,
    /// Sync what was written (relaxed mode's timer).
    Sync,
}

struct AppendRequest {
    records: Vec<Record>,
    done: oneshot::Sender<Result<Vec<Receipt>, LogError>>,
}

/// A handle to the log; cheap to clone.
#[derive(Clone)]
pub struct AppendLog {
    tx: mpsc::Sender<Command>,
    table: SegmentTable,
}

/// Resolves to the receipts of one submitted request once it is durable.
pub type Pending = oneshot::Receiver<Result<Vec<Receipt>, LogError>>;

impl AppendLog {
    /// Starts the writer thread after [`recover`].
    pub fn start(
        dir: &Path,
        mut recovery: Recovery,
        options: LogOptions,
        sink: Box<dyn CommitSink>,
    ) -> Result<AppendLog, LogError> {
        let (tx, rx) = mpsc::channel(options.queue_depth.max(1));
        let table: SegmentTable = Arc::new(RwLock::new(std::mem::take(&mut recovery.segments)));
        let writer = writer::Writer::open(dir, table.clone(), &recovery, options, sink)?;
        std::thread::Builder::new()
            .name("wharf-log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| LogError::Thread(Arc::new(e)))?;
        Ok(AppendLog { tx, table })
    }

    /// Queues records for the next group commit; the writer fills in what only it knows
    /// (see [`Event::new`], [`Record::consumer_created`]). Awaiting this only waits for room
    /// in the queue, so a caller can keep submission order and still pipeline many requests.
    pub async fn submit(&self, records: Vec<Record>) -> Result<Pending, LogError> {
        if records.iter().any(Record::is_legacy) {
            return Err(LogError::Legacy);
        }
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Command::Append(AppendRequest { records, done }))
            .await
            .map_err(|_| LogError::Stopped(Stop::ShuttingDown))?;
        Ok(rx)
    }

    /// Submits and waits until durable.
    pub async fn append(&self, records: Vec<Record>) -> Result<Vec<Receipt>, LogError> {
        let pending = self.submit(records).await?;
        pending
            .await
            .map_err(|_| LogError::Stopped(Stop::WriterGone))?
    }

    /// A cursor that reads events from `seq` on.
    pub fn cursor(&self, seq: u64) -> EventCursor {
        EventCursor::new(self.table.clone(), seq)
    }

    /// How many segments the log has, and their synced bytes.
    pub fn size(&self) -> (usize, u64) {
        let table = read_table(&self.table);
        (table.len(), table.iter().map(|m| m.synced_len).sum())
    }

    /// Asks the writer to sync what it wrote (relaxed mode).
    pub fn sync_soon(&self) {
        let _busy_or_closed = self.tx.try_send(Command::Sync);
    }

    /// Asks the writer to run retention (it also does at every segment roll).
    pub fn maintain(&self) {
        let _busy_or_closed = self.tx.try_send(Command::Maintain);
    }

    /// Lets everything already queued commit, then stops the writer.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Close(tx)).await.is_ok() {
            let _closed = rx.await;
        }
    }
}

#[cfg(test)]
mod tests;
