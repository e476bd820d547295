//! The group-commit writer: one thread owns the active segment.
//!
//! It takes everything queued, assigns seqs, writes the batch with one `write_all`, makes it
//! durable with one `fdatasync`, tells the [`CommitSink`], and only then completes every
//! waiter. One sync serves the whole batch, so the more clients publish at once, the more
//! each sync carries. If a write or a sync fails the writer stops accepting writes: after a
//! failed fsync the kernel may have dropped the dirty pages, so nothing later could be
//! trusted to sit on top of them (see the fsyncgate reports on PostgreSQL).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

mod segments;
mod stamp;

use segments::{create_segment, ensure_reserve, RESERVE_BYTES, RESERVE_FILE};
use stamp::Dedup;

use super::record::{self, Record};
use super::segment::SegmentMeta;
use super::{
    read_table, write_table, AppendRequest, Command, CommitSink, LogError, LogOptions, Position,
    Receipt, SegmentTable, Stop,
};

/// At most this many bytes go into one write+sync.
const MAX_BATCH_BYTES: usize = 8 << 20;

pub(super) struct Writer {
    dir: PathBuf,
    table: SegmentTable,
    options: LogOptions,
    sink: Box<dyn CommitSink>,
    file: File,
    active: SegmentMeta,
    next_seq: u64,
    buf: Vec<u8>,
    /// Set once the writer accepts no more writes.
    stopped: Option<Stop>,
    dedup: Dedup,
    /// msg_ids assigned in the batch being written; remembered once it is durable.
    batch_ids: HashMap<String, u64>,
    /// Written but not yet synced (relaxed mode only, between syncs).
    unsynced: bool,
    last_sync: std::time::Instant,
    /// The disk filled up: the reserve was released, publishes are refused until it can be
    /// put back.
    full: bool,
    /// The newest event time written: an event is never stamped earlier, so that retention by
    /// age and start-by-time can rely on times that only grow when the clock steps back.
    last_time_ms: u64,
}

impl Writer {
    pub(super) fn open(
        dir: &Path,
        table: SegmentTable,
        recovery: &super::Recovery,
        options: LogOptions,
        sink: Box<dyn CommitSink>,
    ) -> Result<Writer, LogError> {
        let next_seq = recovery.next_seq;
        let last = read_table(&table).last().cloned();
        let (active, file) = match last {
            Some(meta) => {
                let file = OpenOptions::new()
                    .append(true)
                    .open(&meta.path)
                    .map_err(|e| LogError::io(&meta.path, e))?;
                (meta, file)
            }
            None => {
                let (meta, file) = create_segment(dir, next_seq)?;
                write_table(&table).push(meta.clone());
                (meta, file)
            }
        };
        let mut dedup = Dedup::new(options.dedup_window_ms, options.dedup_max_entries);
        for (time_ms, msg_id, seq) in &recovery.msg_ids {
            dedup.remember(*time_ms, msg_id.clone(), *seq);
        }
        dedup.expire(wharf_protocol::now_ms());
        let full = !ensure_reserve(dir);
        if full {
            tracing::warn!("no room for the log's reserve: publishes are refused until there is");
        }
        Ok(Writer {
            last_time_ms: recovery.last_time_ms,
            full,
            dedup,
            batch_ids: HashMap::new(),
            unsynced: false,
            last_sync: std::time::Instant::now(),
            dir: dir.to_owned(),
            table,
            options,
            sink,
            file,
            active,
            next_seq,
            buf: Vec::with_capacity(1 << 20),
            stopped: None,
        })
    }

    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        self.maintain();
        let mut batch = Vec::new();
        while let Some(cmd) = rx.blocking_recv() {
            let mut close = None;
            let mut bytes = 0usize;
            let mut next = Some(cmd);
            while let Some(cmd) = next.take() {
                match cmd {
                    Command::Append(req) => {
                        bytes += req
                            .records
                            .iter()
                            .map(|rec| match rec {
                                Record::Events(events) => events
                                    .iter()
                                    .map(|ev| ev.payload.len() + ev.topic.len() + 32)
                                    .sum(),
                                _ => 64,
                            })
                            .sum::<usize>();
                        batch.push(req);
                    }
                    Command::Close(done) => {
                        close = Some(done);
                        break;
                    }
                    Command::Maintain => self.maintain(),
                    Command::Sync => {
                        if let Err(e) = self.sync() {
                            self.stop(Stop::Failed(Box::new(e)));
                        }
                    }
                }
                if bytes < MAX_BATCH_BYTES {
                    next = rx.try_recv().ok();
                }
            }
            self.commit(&mut batch);
            if let Some(done) = close {
                match self.sync() {
                    Err(e) => tracing::error!(error = %e, "final sync failed"),
                    Ok(()) if self.stopped.is_none() => {
                        let (base, len) = (self.active.base, self.active.synced_len);
                        if let Err(e) = super::write_clean_stop(&self.dir, base, len) {
                            tracing::warn!(error = %e, "clean stop not recorded");
                        }
                    }
                    Ok(()) => {}
                }
                self.stopped = Some(Stop::ShuttingDown);
                rx.close();
                while let Ok(cmd) = rx.try_recv() {
                    if let Command::Append(req) = cmd {
                        let _gone = req.done.send(Err(LogError::Stopped(Stop::ShuttingDown)));
                    }
                }
                let _gone = done.send(());
                return;
            }
        }
    }

    /// Writes one batch and answers each of its requests: with its receipts once the batch is
    /// durable, or with why nothing of it was stored.
    fn commit(&mut self, batch: &mut Vec<AppendRequest>) {
        if let Err(e) = self.ready_to_write() {
            answer_all(batch.drain(..), &e);
            return;
        }
        self.refuse_events_while_full(batch);
        if batch.is_empty() {
            return;
        }
        let first_seq = self.next_seq;
        let base_len = self.active.synced_len;
        let framed = self.frame_batch(batch, base_len);
        if !self.buf.is_empty() {
            if let Err(e) = self.flush_buf(base_len, framed.records, framed.index_notes) {
                self.undo_failed_write(&e, first_seq);
                answer_all(batch.drain(..), &e);
                return;
            }
        }
        for (req, result) in batch.drain(..).zip(framed.answers) {
            let _gone = req.done.send(result);
        }
    }

    /// Why nothing can be written now: the writer stopped, or the next segment cannot be
    /// started (which stops it).
    fn ready_to_write(&mut self) -> Result<(), LogError> {
        if let Some(stop) = &self.stopped {
            return Err(LogError::Stopped(stop.clone()));
        }
        self.roll_if_full().inspect_err(|e| {
            self.stop(Stop::NoNewSegment(Box::new(e.clone())));
        })
    }

    /// While the disk is full, refuses the requests that store events, unless space is back:
    /// acks and consumer changes go on into the released reserve.
    fn refuse_events_while_full(&mut self, batch: &mut Vec<AppendRequest>) {
        if !self.full || self.space_is_back() {
            return;
        }
        let is_event = |r: &Record| matches!(r, Record::Events(_) | Record::DeadLetter { .. });
        let (events, rest): (Vec<_>, Vec<_>) = batch
            .drain(..)
            .partition(|req| req.records.iter().any(is_event));
        answer_all(events, &LogError::DiskFull);
        *batch = rest;
    }

    /// Puts the reserve back if the disk has room for it again, and ends the full state.
    fn space_is_back(&mut self) -> bool {
        // Room for the reserve and as much again: otherwise publishes would take the
        // reserve's space straight back.
        let room = fs2::available_space(&self.dir).unwrap_or(0) as usize;
        if room < 2 * RESERVE_BYTES || !ensure_reserve(&self.dir) {
            return false;
        }
        tracing::info!("space is back: publishes are accepted again");
        self.full = false;
        true
    }

    /// The disk is full: gives the reserve back so that acks and consumer changes can still
    /// be stored, and refuses publishes until [`Writer::space_is_back`].
    fn enter_full(&mut self, cause: &dyn std::fmt::Display) {
        if self.full {
            return;
        }
        if std::fs::remove_file(self.dir.join(RESERVE_FILE)).is_ok() {
            tracing::warn!(%cause, "the disk is full: reserve released for acks; publishes are refused until space returns");
        }
        self.full = true;
    }

    /// Fills in and frames every request of the batch into `buf`, which starts at `base_len`
    /// in the active segment. A request that cannot be framed is cut back out whole and
    /// answered with why: nothing of it is written.
    fn frame_batch(&mut self, batch: &mut [AppendRequest], base_len: u64) -> Framed {
        self.buf.clear();
        self.batch_ids.clear();
        let mut framed = Framed {
            answers: Vec::with_capacity(batch.len()),
            records: Vec::new(),
            index_notes: Vec::new(),
        };
        for req in batch.iter_mut() {
            let mark = Mark {
                buf_len: self.buf.len(),
                records: framed.records.len(),
                index_notes: framed.index_notes.len(),
                next_seq: self.next_seq,
            };
            let answer = self.frame_request(&mut req.records, base_len, &mut framed);
            if answer.is_err() {
                self.cut_back(&mark, &mut framed);
            }
            framed.answers.push(answer);
        }
        framed
    }

    /// Frames the records of one request, adding them to `framed`; their receipts.
    fn frame_request(
        &mut self,
        records: &mut Vec<Record>,
        base_len: u64,
        framed: &mut Framed,
    ) -> Result<Vec<Receipt>, LogError> {
        let mut receipts = Vec::with_capacity(records.len());
        for rec in records.drain(..) {
            let (rec, receipt) = self.assign(rec);
            receipts.push(receipt);
            let Some(rec) = rec else { continue };
            let offset = base_len + self.buf.len() as u64;
            record::frame_into(&rec, &mut self.buf)?;
            framed
                .index_notes
                .extend(rec.events().iter().map(|ev| IndexNote {
                    seq: ev.seq,
                    time_ms: ev.time_ms,
                    offset,
                }));
            framed.records.push(rec);
        }
        Ok(receipts)
    }

    /// Undoes framing back to `mark`; the seqs given out since are free again.
    fn cut_back(&mut self, mark: &Mark, framed: &mut Framed) {
        self.buf.truncate(mark.buf_len);
        framed.records.truncate(mark.records);
        framed.index_notes.truncate(mark.index_notes);
        self.batch_ids.retain(|_, seq| *seq < mark.next_seq);
        self.next_seq = mark.next_seq;
    }

    /// After a batch failed to be stored. A write that was cut back (`WriteFailed`, a full
    /// disk say) left nothing of the batch in the file: its seqs are free again, and the next
    /// batch may find room. Anything else stops the writer.
    fn undo_failed_write(&mut self, e: &LogError, first_seq: u64) {
        match e {
            LogError::WriteFailed { .. } => {
                self.next_seq = first_seq;
                self.batch_ids.clear();
                self.enter_full(e);
            }
            _ => self.stop(Stop::Failed(Box::new(e.clone()))),
        }
    }

    /// Writes and syncs what `commit` framed into the buffer, then tells the sink.
    fn flush_buf(
        &mut self,
        base_len: u64,
        records: Vec<Record>,
        index_notes: Vec<IndexNote>,
    ) -> Result<(), LogError> {
        self.write_and_sync()?;
        crate::metrics::commit_records().record(records.len() as f64);
        for note in index_notes {
            self.active.note_event(note.seq, note.time_ms, note.offset);
        }
        let now = wharf_protocol::now_ms();
        for (msg_id, seq) in self.batch_ids.drain() {
            self.dedup.remember(now, msg_id, seq);
        }
        self.dedup.expire(now);
        self.active.synced_len = base_len + self.buf.len() as u64;
        self.show_readers();
        let end = Position {
            segment: self.active.base,
            offset: self.active.synced_len,
        };
        self.sink.committed(records, end);
        Ok(())
    }

    /// Brings the readers' entry for the active segment up to what is synced of it.
    fn show_readers(&self) {
        if let Some(last) = write_table(&self.table).last_mut() {
            last.catch_up(&self.active);
        }
    }

    /// Durably appends records the writer makes itself (checkpoints, gaps).
    fn append_own(&mut self, records: Vec<Record>) -> Result<(), LogError> {
        if records.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        self.batch_ids.clear();
        for rec in &records {
            record::frame_into(rec, &mut self.buf)?;
        }
        self.flush_buf(self.active.synced_len, records, Vec::new())
    }

    /// Writes the buffer, then syncs: always, or (relaxed mode) once the interval since the
    /// last sync has passed.
    fn write_and_sync(&mut self) -> Result<(), LogError> {
        let path = &self.active.path;
        if let Err(e) = self.file.write_all(&self.buf) {
            // Cut whatever part of the batch reached the file. If that works the log is as it
            // was and the writer can go on; if it does not, nothing after could be trusted.
            self.file
                .set_len(self.active.synced_len)
                .map_err(|cut| LogError::io(path, cut))?;
            tracing::warn!(error = %e, "a log write failed; the batch was refused and cut");
            return Err(LogError::write_failed(path, e));
        }
        self.unsynced = true;
        match self.options.relaxed_sync {
            Some(interval) if self.last_sync.elapsed() < interval => Ok(()),
            _ => self.sync(),
        }
    }

    /// fdatasyncs the active segment if anything was written since the last sync.
    fn sync(&mut self) -> Result<(), LogError> {
        if !self.unsynced {
            return Ok(());
        }
        let started = std::time::Instant::now();
        self.file
            .sync_data()
            .map_err(|e| LogError::io(&self.active.path, e))?;
        crate::metrics::fsync_seconds().record(started.elapsed().as_secs_f64());
        self.unsynced = false;
        self.last_sync = started;
        Ok(())
    }

    fn stop(&mut self, why: Stop) {
        tracing::error!(reason = %why, "log writer stopped; publishes and acks now fail until restart");
        self.stopped = Some(why);
    }
}

/// A batch framed into the writer's buffer, not yet written.
struct Framed {
    /// Per request, in batch order: its receipts, or why nothing of it is stored.
    answers: Vec<Result<Vec<Receipt>, LogError>>,
    /// What the buffer holds, for the sink once it is durable.
    records: Vec<Record>,
    /// Every event in the buffer, for the segment's index once it is durable.
    index_notes: Vec<IndexNote>,
}

/// Where an event was framed.
struct IndexNote {
    seq: u64,
    time_ms: u64,
    /// Of its record in the active segment.
    offset: u64,
}

/// How far framing a batch had got before a request: what to cut back to when that request
/// cannot be framed.
struct Mark {
    buf_len: usize,
    records: usize,
    index_notes: usize,
    next_seq: u64,
}

fn answer_all(requests: impl IntoIterator<Item = AppendRequest>, answer: &LogError) {
    for req in requests {
        let _gone = req.done.send(Err(answer.clone()));
    }
}
