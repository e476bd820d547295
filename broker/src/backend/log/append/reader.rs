//! Streams events out of the segments with bounded memory: a consumer with a million-event
//! backlog is read a batch at a time, never loaded whole. Reads are blocking file I/O; callers
//! on the async runtime run them with `spawn_blocking`.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;

use super::record::{self, Header, HEADER_LEN};
use super::{read_table, Event, LogError, SegmentTable};

struct OpenSegment {
    base: u64,
    path: PathBuf,
    file: BufReader<File>,
    /// Offset of the next record; the file position is kept equal to it.
    offset: u64,
}

/// A read position in the log.
pub struct EventCursor {
    table: SegmentTable,
    next_seq: u64,
    open: Option<OpenSegment>,
    /// Bytes read ahead: large for walks, small for reads here and there.
    read_ahead: usize,
}

/// Read-ahead of a cursor that walks the log.
const WALK_READ_AHEAD: usize = 256 << 10;
/// Read-ahead of a cursor that reads events here and there (history): a seek costs about
/// this much reading, not a walk's 256 KiB.
const POINT_READ_AHEAD: usize = 16 << 10;

impl EventCursor {
    pub(super) fn new(table: SegmentTable, seq: u64) -> EventCursor {
        EventCursor {
            table,
            next_seq: seq.max(1),
            open: None,
            read_ahead: WALK_READ_AHEAD,
        }
    }

    /// A cursor for reading single events by seq.
    pub(super) fn for_points(table: SegmentTable, seq: u64) -> EventCursor {
        EventCursor {
            read_ahead: POINT_READ_AHEAD,
            ..EventCursor::new(table, seq)
        }
    }

    /// The seq the next read starts at.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Moves the cursor; the next read starts at `seq`.
    pub fn seek(&mut self, seq: u64) {
        if seq != self.next_seq {
            self.next_seq = seq.max(1);
            self.open = None;
        }
    }

    /// Appends to `out` up to `max` events with seqs from the cursor through `head`.
    pub fn read(
        &mut self,
        head: u64,
        max: usize,
        out: &mut Vec<Arc<Event>>,
    ) -> Result<(), LogError> {
        let mut taken = 0;
        while taken < max && self.next_seq <= head {
            if self.open.is_none() && !self.open_for_next_seq()? {
                return Ok(());
            }
            let (synced_len, has_next) = self.bounds();
            let Some(seg) = self.open.as_mut() else {
                return Ok(());
            };
            if seg.offset + HEADER_LEN as u64 > synced_len {
                if has_next {
                    let next_base = self.next_segment_base();
                    self.open = None;
                    if let Some(base) = next_base {
                        self.open_segment(base, None)?;
                    }
                    continue;
                }
                return Ok(());
            }
            let mut hb = [0u8; HEADER_LEN];
            seg.file
                .read_exact(&mut hb)
                .map_err(|e| LogError::io(&seg.path, e))?;
            let header = Header::from_bytes(&hb);
            let corrupt = |reason: String| LogError::Corrupt {
                path: seg.path.clone(),
                offset: seg.offset,
                reason,
            };
            if !header.is_valid() {
                return Err(corrupt("record header checksum mismatch".into()));
            }
            let end = seg.offset + HEADER_LEN as u64 + header.len as u64;
            if end > synced_len {
                return Err(corrupt("record runs past the synced end".into()));
            }
            let mut body = vec![0u8; header.len as usize];
            seg.file
                .read_exact(&mut body)
                .map_err(|e| LogError::io(&seg.path, e))?;
            let rec = record::decode_body(&header, &body).map_err(|e| corrupt(e.to_string()))?;
            let events = rec.into_events();
            if !events.is_empty() {
                // A record is committed whole, so its events are all at or below the head,
                // or all above it.
                if events.first().is_some_and(|ev| ev.seq > head) {
                    // Synced but not yet announced: leave it for the next read.
                    seg.file
                        .seek(SeekFrom::Start(seg.offset))
                        .map_err(|e| LogError::io(&seg.path, e))?;
                    return Ok(());
                }
                for ev in events {
                    if ev.seq >= self.next_seq {
                        self.next_seq = ev.seq + 1;
                        out.push(Arc::new(ev));
                        taken += 1;
                    }
                }
            }
            seg.offset = end;
        }
        Ok(())
    }

    /// The first seq published at or after `time_ms`, or `None` when every stored event
    /// (through `head`) is older.
    pub fn first_at_or_after(&mut self, time_ms: u64, head: u64) -> Result<Option<u64>, LogError> {
        let start = {
            let table = read_table(&self.table);
            let i = table
                .iter()
                .rposition(|m| m.first_time_ms.is_some_and(|t| t < time_ms))
                .unwrap_or(0);
            table.get(i).map(|m| m.base).unwrap_or(1)
        };
        self.seek(start);
        let mut batch = Vec::new();
        loop {
            batch.clear();
            self.read(head, 1024, &mut batch)?;
            if batch.is_empty() {
                return Ok(None);
            }
            if let Some(ev) = batch.iter().find(|ev| ev.time_ms >= time_ms) {
                return Ok(Some(ev.seq));
            }
        }
    }

    /// How far the open segment may be read, and whether a segment follows it.
    fn bounds(&self) -> (u64, bool) {
        let Some(seg) = &self.open else {
            return (0, false);
        };
        let table = read_table(&self.table);
        match table.iter().position(|m| m.base == seg.base) {
            Some(i) => (table[i].synced_len, i + 1 < table.len()),
            None => (0, !table.is_empty()),
        }
    }

    fn has_segment(&self, base: u64) -> bool {
        read_table(&self.table).iter().any(|m| m.base == base)
    }

    fn next_segment_base(&self) -> Option<u64> {
        let current = self.open.as_ref().map(|s| s.base).unwrap_or(0);
        let table = read_table(&self.table);
        table.iter().find(|m| m.base > current).map(|m| m.base)
    }

    /// Opens the segment that holds `next_seq` (or the oldest one, if retention removed
    /// it); false when there is none yet.
    fn open_for_next_seq(&mut self) -> Result<bool, LogError> {
        loop {
            let base = {
                let table = read_table(&self.table);
                let i = table.partition_point(|m| m.base <= self.next_seq);
                match (i, table.first()) {
                    (0, Some(first)) => first.base,
                    (0, None) => return Ok(false),
                    (i, _) => table[i - 1].base,
                }
            };
            self.open_segment(base, Some(self.next_seq))?;
            if self.open.is_some() {
                return Ok(true);
            }
        }
    }

    fn open_segment(&mut self, base: u64, seq: Option<u64>) -> Result<(), LogError> {
        let (path, offset) = {
            let table = read_table(&self.table);
            let Some(meta) = table.iter().find(|m| m.base == base) else {
                return Ok(());
            };
            (
                meta.path.clone(),
                seq.map(|s| meta.offset_for(s)).unwrap_or(0),
            )
        };
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !self.has_segment(base) => {
                // Retention removed it just now; the caller looks again.
                self.open = None;
                return Ok(());
            }
            Err(e) => return Err(LogError::io(&path, e)),
        };
        let mut file = BufReader::with_capacity(self.read_ahead, file);
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| LogError::io(&path, e))?;
        self.open = Some(OpenSegment {
            base,
            path,
            file,
            offset,
        });
        Ok(())
    }
}
