//! Segment files: naming, listing, and the start-up scan that verifies every record.
//!
//! A segment is named by the first seq it may hold (`00000000000000000001.seg`). The scan is
//! where damage is told apart: a record cut short at the very end of the last segment is a
//! torn write that was never confirmed, so it is cut off; anything else that fails its
//! checksum is damage to confirmed data, and the broker refuses to start rather than drop it.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use super::record::{self, Header, Record, HEADER_LEN};
use super::LogError;

const SUFFIX: &str = ".seg";

/// Every how many events the in-memory sparse index gets an entry: 16 bytes per 64 events
/// (250 KB for a million). A read by seq (history) scans at most this many events from its
/// entry: at 256, a page of 50 scattered events read ~6,400 records (p50 2.4 ms on a log of
/// a million single-event records, `wharf bench history --anywhere`).
pub const INDEX_EVERY: u64 = 64;

/// What readers need to know of one segment.
#[derive(Debug, Clone)]
pub struct SegmentMeta {
    pub base: u64,
    pub path: PathBuf,
    /// Sparse `(seq, byte offset)` pairs, ascending.
    pub index: Vec<(u64, u64)>,
    /// Publish time of the first event in it, if it holds any.
    pub first_time_ms: Option<u64>,
    /// The newest publish time in it (times from before the clock stepped back may be out
    /// of order).
    pub newest_time_ms: Option<u64>,
    pub last_seq: Option<u64>,
    /// Bytes known to be synced; readers never look past them.
    pub synced_len: u64,
}

impl SegmentMeta {
    pub fn new(base: u64, path: PathBuf) -> SegmentMeta {
        SegmentMeta {
            base,
            path,
            index: Vec::new(),
            first_time_ms: None,
            newest_time_ms: None,
            last_seq: None,
            synced_len: 0,
        }
    }

    /// Brings this copy (the readers' table entry) up to `newer` (the writer's), copying only
    /// the index entries it lacks: a whole clone per group commit copied the segment's index
    /// again and again, growing with the segment.
    pub fn catch_up(&mut self, newer: &SegmentMeta) {
        if self.base != newer.base || self.index.len() > newer.index.len() {
            *self = newer.clone();
            return;
        }
        self.index
            .extend_from_slice(&newer.index[self.index.len()..]);
        self.first_time_ms = newer.first_time_ms;
        self.newest_time_ms = newer.newest_time_ms;
        self.last_seq = newer.last_seq;
        self.synced_len = newer.synced_len;
    }

    /// Records an event at `offset`, keeping the index sparse.
    pub fn note_event(&mut self, seq: u64, time_ms: u64, offset: u64) {
        if self.first_time_ms.is_none() {
            self.first_time_ms = Some(time_ms);
        }
        self.newest_time_ms = Some(self.newest_time_ms.map_or(time_ms, |t| t.max(time_ms)));
        let due = match self.index.last() {
            None => true,
            Some(&(last, _)) => seq >= last + INDEX_EVERY,
        };
        if due {
            self.index.push((seq, offset));
        }
        self.last_seq = Some(seq);
    }

    /// The byte offset from which to scan for `seq`.
    pub fn offset_for(&self, seq: u64) -> u64 {
        match self.index.partition_point(|&(s, _)| s <= seq) {
            0 => 0,
            i => self.index[i - 1].1,
        }
    }
}

pub fn file_name(base: u64) -> String {
    format!("{base:020}{SUFFIX}")
}

/// The segment files in `dir`, ascending by base seq.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, LogError> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| LogError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| LogError::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(SUFFIX) else {
            continue;
        };
        let base = stem.parse::<u64>().map_err(|_| LogError::Corrupt {
            path: entry.path(),
            offset: 0,
            reason: "segment file name is not a seq".to_owned(),
        })?;
        out.push((base, entry.path()));
    }
    out.sort();
    Ok(out)
}

/// What a segment starts with.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstRecord {
    /// Nothing, or nothing whole (the scan decides whether that is a torn tail).
    None,
    Checkpoint,
    Other,
}

/// Reads only the first record of a segment.
pub fn first_record(path: &Path) -> Result<FirstRecord, LogError> {
    let mut file = File::open(path).map_err(|e| LogError::io(path, e))?;
    let mut hb = [0u8; HEADER_LEN];
    if file.read_exact(&mut hb).is_err() {
        return Ok(FirstRecord::None);
    }
    let header = Header::from_bytes(&hb);
    if !header.is_valid() {
        return Ok(FirstRecord::None);
    }
    let mut body = vec![0u8; header.len as usize];
    if file.read_exact(&mut body).is_err() {
        return Ok(FirstRecord::None);
    }
    Ok(match record::decode_body(&header, &body) {
        Ok(rec) if rec.is_checkpoint() => FirstRecord::Checkpoint,
        Ok(_) => FirstRecord::Other,
        Err(_) => FirstRecord::None,
    })
}

/// Writes a new segment file holding `records` and nothing else, all or nothing: the bytes
/// go to a temporary name, are synced, and only then take the segment's name (and the
/// directory is synced), so no crash can leave a segment without its first records.
/// Returns the file, open for appending, and its length.
pub fn create_with(dir: &Path, base: u64, records: &[Record]) -> Result<(File, u64), LogError> {
    let path = dir.join(file_name(base));
    let mut bytes = Vec::new();
    for rec in records {
        record::frame_into(rec, &mut bytes)?;
    }
    replace_atomically(&path, &bytes)?;
    let file = OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(|e| LogError::io(&path, e))?;
    Ok((file, bytes.len() as u64))
}

/// Rewrites `path` with `records` in front of what it holds, atomically.
pub fn prepend(path: &Path, records: &[Record]) -> Result<(), LogError> {
    let mut bytes = Vec::new();
    for rec in records {
        record::frame_into(rec, &mut bytes)?;
    }
    bytes.extend(fs::read(path).map_err(|e| LogError::io(path, e))?);
    replace_atomically(path, &bytes)
}

/// Puts `bytes` at `path` through a synced temporary file and a rename. A failed attempt
/// leaves no temporary file behind.
fn replace_atomically(path: &Path, bytes: &[u8]) -> Result<(), LogError> {
    let tmp = path.with_extension("new");
    let written = (|| {
        let mut file = File::create(&tmp)?;
        std::io::Write::write_all(&mut file, bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _best_effort = fs::remove_file(&tmp);
        return Err(LogError::write_failed(path, e));
    }
    match path.parent() {
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// How a scanned segment ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ScanEnd {
    Clean,
    /// Bytes from `offset` on are a torn write; `reason` says what was found.
    TornTail {
        offset: u64,
        reason: String,
    },
}

/// Reads every record of one segment in order, calling `visit(record, start, end)`.
/// Returns the length of the valid prefix and how the file ended.
///
/// A bad record in the last segment with no valid record anywhere after it is a torn tail:
/// the unsynced end of the last write. A bad record followed by a valid one is damage to
/// confirmed data, and so is any bad record in an older segment: both are errors.
pub fn scan(
    path: &Path,
    is_last: bool,
    mut visit: impl FnMut(Record, u64, u64) -> Result<(), LogError>,
) -> Result<(u64, ScanEnd), LogError> {
    let file = File::open(path).map_err(|e| LogError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| LogError::io(path, e))?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut offset = 0u64;
    let mut body = Vec::new();
    loop {
        let remaining = file_len - offset;
        if remaining == 0 {
            return Ok((offset, ScanEnd::Clean));
        }
        let bad = |reason: String| -> Result<(u64, ScanEnd), LogError> {
            let corrupt = |reason: String| LogError::Corrupt {
                path: path.to_owned(),
                offset,
                reason,
            };
            if !is_last {
                return Err(corrupt(format!(
                    "{reason} (in a segment that is not the last)"
                )));
            }
            match next_valid_record(path, offset + 1)? {
                Some(at) => Err(corrupt(format!(
                    "{reason}, and valid records follow at byte {at}"
                ))),
                None => Ok((offset, ScanEnd::TornTail { offset, reason })),
            }
        };
        if remaining < HEADER_LEN as u64 {
            return bad(format!("{remaining} bytes, too short for a record header"));
        }
        let mut hb = [0u8; HEADER_LEN];
        reader
            .read_exact(&mut hb)
            .map_err(|e| LogError::io(path, e))?;
        let header = Header::from_bytes(&hb);
        if !header.is_valid() {
            return bad("record header checksum mismatch".to_owned());
        }
        let end = offset + HEADER_LEN as u64 + header.len as u64;
        if end > file_len {
            return bad(format!(
                "record of {} bytes runs past the end of the file",
                header.len
            ));
        }
        body.resize(header.len as usize, 0);
        reader
            .read_exact(&mut body)
            .map_err(|e| LogError::io(path, e))?;
        match record::decode_body(&header, &body) {
            Ok(rec) => visit(rec, offset, end)?,
            Err(e) => return bad(e.to_string()),
        }
        offset = end;
    }
}

/// The offset of the first whole, valid record starting at or after `from`, if any.
/// Only called on damage, so reading the rest of one segment is acceptable.
fn next_valid_record(path: &Path, from: u64) -> Result<Option<u64>, LogError> {
    let bytes = fs::read(path).map_err(|e| LogError::io(path, e))?;
    let start = usize::try_from(from).unwrap_or(usize::MAX);
    Ok(next_valid_in(&bytes, start).map(|at| at as u64))
}

/// Where the whole, valid record at `at` ends, if there is one.
fn record_end(bytes: &[u8], at: usize) -> Option<usize> {
    let hb = <[u8; HEADER_LEN]>::try_from(bytes.get(at..at + HEADER_LEN)?).ok()?;
    let header = Header::from_bytes(&hb);
    if !header.is_valid() || all_zero(&hb) {
        return None;
    }
    let end = at + HEADER_LEN + header.len as usize;
    let body = bytes.get(at + HEADER_LEN..end)?;
    record::decode_body(&header, body).ok().map(|_| end)
}

fn next_valid_in(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len()).find(|&at| record_end(bytes, at).is_some())
}

/// Rewrites a segment without its damaged byte ranges (for `wharf serve --repair`) and
/// returns those ranges. The rewrite goes to a new file that replaces the old one only once
/// it is synced.
pub fn repair(path: &Path) -> Result<Vec<(u64, u64)>, LogError> {
    let bytes = fs::read(path).map_err(|e| LogError::io(path, e))?;
    let mut damaged = Vec::new();
    let mut kept = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        match record_end(&bytes, at) {
            Some(end) => {
                kept.extend_from_slice(&bytes[at..end]);
                at = end;
            }
            None => {
                let next = next_valid_in(&bytes, at + 1).unwrap_or(bytes.len());
                damaged.push((at as u64, next as u64));
                at = next;
            }
        }
    }
    if damaged.is_empty() {
        return Ok(damaged);
    }
    let tmp = path.with_extension("repairing");
    let mut file = File::create(&tmp).map_err(|e| LogError::io(&tmp, e))?;
    std::io::Write::write_all(&mut file, &kept).map_err(|e| LogError::io(&tmp, e))?;
    file.sync_all().map_err(|e| LogError::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| LogError::io(path, e))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(damaged)
}

fn all_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// Cuts a torn tail off and makes the cut durable.
pub fn truncate(path: &Path, len: u64) -> Result<(), LogError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| LogError::io(path, e))?;
    file.set_len(len).map_err(|e| LogError::io(path, e))?;
    file.sync_all().map_err(|e| LogError::io(path, e))
}

/// fsyncs a directory so that files created or removed in it survive power loss.
pub fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io(dir, e))
}
