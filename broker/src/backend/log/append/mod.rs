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

mod error;
pub mod reader;
pub mod record;
mod recover;
pub mod segment;
pub mod writer;

use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use error::{LogError, Stop};
pub use reader::EventCursor;
pub use record::{Event, Floor, Record, Settle};
pub(crate) use recover::write_clean_stop;
pub use recover::{recover, repair, Recovery};
use segment::SegmentMeta;
pub use segment::INDEX_EVERY;

/// Where a record ends: the log position a state view has caught up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    /// Base seq (file name) of the segment.
    pub segment: u64,
    /// Byte offset just past the record.
    pub offset: u64,
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

/// When old segments are removed; 0 means no limit. The active segment is never removed.
#[derive(Debug, Clone, Default)]
pub struct Retention {
    pub max_age_ms: u64,
    pub max_events: u64,
    pub max_bytes: u64,
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

    /// A cursor for reading single events by seq (see [`EventCursor::seek`]).
    pub fn point_cursor(&self, seq: u64) -> EventCursor {
        EventCursor::for_points(self.table.clone(), seq)
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
