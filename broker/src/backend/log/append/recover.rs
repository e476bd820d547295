//! Start-up: scanning the segments, cutting a torn tail, anchoring every segment to a
//! checkpoint, and `--repair`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::record::{self, Event, Record};
use super::segment::{self, ScanEnd, SegmentMeta};
use super::{LogError, Position};

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
pub(super) const CLEAN_STOP_FILE: &str = "CLEAN";

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
