//! The segments the writer owns: rolling to a new one when the active one is full, retention
//! from the oldest, and the reserve file that keeps room for acks when the disk fills.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::super::segment::{self, SegmentMeta};
use super::super::{write_table, LogError, Position, Stop};
use super::Writer;

/// Space kept aside in the log directory: when the disk fills up it is given back so that
/// acks and consumer changes can still be stored while publishes are refused.
pub(super) const RESERVE_BYTES: usize = 4 << 20;
pub(super) const RESERVE_FILE: &str = "RESERVE";

impl Writer {
    /// Applies retention, and records a gap for every consumer whose floor is below the
    /// oldest stored event. Failures are logged: retention is retried at the next pass.
    pub(super) fn maintain(&mut self) {
        if self.stopped.is_some() {
            return;
        }
        if let Err(e) = self.apply_retention() {
            self.stop(Stop::Retention(Box::new(e)));
        }
    }

    pub(super) fn apply_retention(&mut self) -> Result<(), LogError> {
        let limits = self.options.retention.clone();
        let now = wharf_protocol::now_ms();
        let mut removed = Vec::new();
        let first_base = {
            let mut table = write_table(&self.table);
            // The active segment is never removed, so everything confirmed stays readable
            // until it is old, numerous or large enough to go.
            while table.len() > 1 {
                let after = &table[1];
                let events_after = self.next_seq.saturating_sub(after.base);
                let bytes_after: u64 = table[1..].iter().map(|m| m.synced_len).sum();
                let too_many = limits.max_events > 0 && events_after >= limits.max_events;
                let too_big = limits.max_bytes > 0 && bytes_after >= limits.max_bytes;
                // By the newest event the oldest segment holds, never by its neighbours' times:
                // those need not be in order after the clock stepped back.
                let newest = table[0].newest_time_ms.or(after.first_time_ms);
                let too_old = limits.max_age_ms > 0
                    && newest.is_some_and(|t| t.saturating_add(limits.max_age_ms) <= now);
                if !(too_many || too_big || too_old) {
                    break;
                }
                removed.push(table.remove(0));
            }
            table.first().map(|m| m.base).unwrap_or(self.next_seq)
        };
        for meta in &removed {
            std::fs::remove_file(&meta.path).map_err(|e| LogError::io(&meta.path, e))?;
        }
        if !removed.is_empty() {
            segment::sync_dir(&self.dir)?;
        }
        let gaps = self.sink.gaps(first_base);
        self.append_own(gaps)?;
        if !removed.is_empty() {
            tracing::info!(
                segments = removed.len(),
                first_seq = first_base,
                "retention removed old segments"
            );
        }
        Ok(())
    }

    /// Starts the next segment once the active one is full. The new segment is born with its
    /// checkpoint in it (see [`segment::create_with`]). When the disk has no room for it, the
    /// reserve is given back and the writer goes on in the full segment (acks and consumer
    /// changes still fit; publishes are refused while the disk is full).
    pub(super) fn roll_if_full(&mut self) -> Result<(), LogError> {
        if self.active.synced_len < self.options.segment_bytes || self.active.last_seq.is_none() {
            return Ok(());
        }
        // The old segment is complete: make it durable before writing elsewhere.
        self.sync()?;
        // Every segment starts with the consumers' state, so that removing older segments
        // never removes what rebuilding the state view needs.
        let checkpoint = self.sink.checkpoint();
        let base = self.next_seq;
        let (file, len) = match segment::create_with(&self.dir, base, &checkpoint) {
            Ok(created) => created,
            Err(e @ LogError::WriteFailed { .. }) => {
                self.enter_full(&format_args!("no room to start a new segment: {e}"));
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let meta = SegmentMeta::new(base, self.dir.join(segment::file_name(base)));
        write_table(&self.table).push(meta.clone());
        self.active = meta;
        self.file = file;
        self.active.synced_len = len;
        self.show_readers();
        let end = Position {
            segment: base,
            offset: len,
        };
        self.sink.committed(checkpoint, end);
        self.apply_retention()
    }
}

/// Makes sure the reserve file exists with real blocks behind it; false when there is no room.
pub(super) fn ensure_reserve(dir: &Path) -> bool {
    let reserve = dir.join(RESERVE_FILE);
    if reserve
        .metadata()
        .is_ok_and(|m| m.len() as usize >= RESERVE_BYTES)
    {
        return true;
    }
    let tmp = dir.join("RESERVE.tmp");
    let made = (|| -> std::io::Result<()> {
        let mut file = File::create(&tmp)?;
        // Written, not just sized: a sparse file would hold no space at all.
        file.write_all(&vec![0u8; RESERVE_BYTES])?;
        file.sync_all()?;
        std::fs::rename(&tmp, &reserve)
    })();
    if made.is_err() {
        let _best_effort = std::fs::remove_file(&tmp);
    }
    made.is_ok()
}

pub(super) fn create_segment(dir: &Path, base: u64) -> Result<(SegmentMeta, File), LogError> {
    let path = dir.join(segment::file_name(base));
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(|e| LogError::io(&path, e))?;
    segment::sync_dir(dir)?;
    tracing::debug!(segment = %path.display(), "started a new segment");
    Ok((SegmentMeta::new(base, path), file))
}
