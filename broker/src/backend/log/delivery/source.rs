//! Reading the events that match some patterns, in seq order, from any point: the cache,
//! the segments, or the feed's live queue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use wharf_protocol::Pattern;

use crate::backend::log::append::{AppendLog, Event, EventCursor, LogError};

use super::Feed;

/// Events read per batch by a delivery task.
const BATCH: usize = 256;

/// Reads the events matching some patterns, in seq order, from any point. Behind, it walks
/// the cache or the segments; caught up, it takes the events the feed queues to it, and
/// walks again if that queue ever overflowed.
pub struct EventSource {
    feed: Arc<Feed>,
    log: AppendLog,
    patterns: Vec<Pattern>,
    next: u64,
    disk: Option<EventCursor>,
    /// A second cursor for random access (redeliveries), so the walk keeps its place.
    refetch: Option<EventCursor>,
    head: watch::Receiver<u64>,
    tap_id: u64,
    tap: mpsc::Receiver<Arc<Event>>,
    overflowed: Arc<AtomicBool>,
    live: bool,
}

impl Drop for EventSource {
    fn drop(&mut self) {
        self.feed.unregister(self.tap_id, &self.patterns);
    }
}

impl EventSource {
    pub fn new(feed: Arc<Feed>, log: AppendLog, from: u64, patterns: Vec<Pattern>) -> EventSource {
        let head = feed.subscribe_head();
        let (tap_id, tap, overflowed) = feed.register(&patterns);
        EventSource {
            feed,
            log,
            patterns,
            next: from.max(1),
            disk: None,
            refetch: None,
            head,
            tap_id,
            tap,
            overflowed,
            live: false,
        }
    }

    fn matches(&self, ev: &Event) -> bool {
        self.patterns.iter().any(|p| p.matches(&ev.topic))
    }

    /// Skips everything stored; returns the last seq skipped.
    pub fn skip_to_head(&mut self) -> u64 {
        let head = self.feed.head();
        self.reset(head + 1);
        head
    }

    /// Moves the walk to `from`.
    pub fn reset(&mut self, from: u64) {
        self.next = from.max(1);
        self.disk = None;
        self.live = false;
    }

    /// The event at `seq`, if it is stored.
    pub async fn fetch(&mut self, seq: u64) -> Result<Option<Arc<Event>>, LogError> {
        let head = self.feed.head();
        if seq > head {
            return Ok(None);
        }
        if let Some(mut hit) = self.feed.cached(seq, seq, 1) {
            return Ok(hit.pop().filter(|ev| ev.seq == seq));
        }
        let mut cursor = self.refetch.take().unwrap_or_else(|| self.log.cursor(seq));
        cursor.seek(seq);
        let joined = tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(1);
            let result = cursor.read(seq, 1, &mut out);
            (cursor, result.map(|()| out))
        })
        .await;
        let (cursor, result) = joined.map_err(|e| LogError::task("log reader task", e))?;
        self.refetch = Some(cursor);
        Ok(result?.into_iter().find(|ev| ev.seq == seq))
    }

    /// The next matching events; waits while there are none. `Ok(None)` when the broker
    /// stops. Cancel-safe: nothing is consumed unless it is returned.
    pub async fn next_batch(&mut self) -> Result<Option<Vec<Arc<Event>>>, LogError> {
        loop {
            if self.live {
                let Some(first) = self.tap.recv().await else {
                    return Ok(None);
                };
                if self.overflowed.swap(false, Ordering::AcqRel) {
                    // Something after what is queued was dropped: walk from here instead.
                    self.live = false;
                    while self.tap.try_recv().is_ok() {}
                    continue;
                }
                let mut batch = Vec::with_capacity(BATCH);
                for ev in
                    std::iter::once(first).chain(std::iter::from_fn(|| self.tap.try_recv().ok()))
                {
                    if ev.seq >= self.next {
                        self.next = ev.seq + 1;
                        batch.push(ev);
                    }
                    if batch.len() >= BATCH {
                        break;
                    }
                }
                if !batch.is_empty() {
                    return Ok(Some(batch));
                }
                continue;
            }
            let head = *self.head.borrow_and_update();
            if self.next > head {
                // Caught up: from now on the feed queues what matches.
                self.live = true;
                continue;
            }
            // Behind: what the tap holds is covered by the walk.
            while self.tap.try_recv().is_ok() {}
            self.overflowed.store(false, Ordering::Release);
            let batch = match self.feed.cached(self.next, head, BATCH) {
                Some(batch) => batch,
                None => self.read_disk(head).await?,
            };
            match batch.last() {
                Some(last) => {
                    self.next = last.seq + 1;
                    let matching: Vec<Arc<Event>> =
                        batch.into_iter().filter(|ev| self.matches(ev)).collect();
                    if !matching.is_empty() {
                        return Ok(Some(matching));
                    }
                }
                // Nothing stored below the head from here: nothing to wait for either.
                None => self.next = head + 1,
            }
        }
    }

    async fn read_disk(&mut self, head: u64) -> Result<Vec<Arc<Event>>, LogError> {
        let mut cursor = self
            .disk
            .take()
            .unwrap_or_else(|| self.log.cursor(self.next));
        cursor.seek(self.next);
        let joined = tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(BATCH);
            let result = cursor.read(head, BATCH, &mut out);
            (cursor, result.map(|()| out))
        })
        .await;
        let (cursor, result) = joined.map_err(|e| LogError::task("log reader task", e))?;
        self.disk = Some(cursor);
        result
    }
}
