//! `history` and `last` on the embedded log: which seqs from the view's per-topic index
//! (and, for what the index does not cover yet, the feed's newest events), then those
//! events from the cache or the segments. Nothing is scanned in proportion to the log.

use std::sync::Arc;

use wharf_protocol::{EventBody, Pattern};

use super::append::{AppendLog, Event, INDEX_EVERY};
use super::delivery::Feed;
use super::state::StateView;
use super::LogBackend;
use crate::backend::contract::{BackendError, EventsPage, HistoryFrom};

/// Events read at a time past what the index covers (it lags the log by a few thousand
/// events at most, unless the view's writer is far behind).
const TAIL_BATCH: usize = 4096;

impl LogBackend {
    pub async fn history(
        &self,
        pattern: &Pattern,
        limit: usize,
        from: HistoryFrom,
    ) -> Result<EventsPage, BackendError> {
        let pattern = pattern.clone();
        self.read(move |reader| reader.history(&pattern, limit, from))
            .await
    }

    pub async fn last(&self, pattern: &Pattern, limit: usize) -> Result<EventsPage, BackendError> {
        let pattern = pattern.clone();
        self.read(move |reader| reader.last(&pattern, limit)).await
    }

    /// Runs `read` on a blocking thread (sled and the segment files block).
    async fn read(
        &self,
        read: impl FnOnce(&Reader) -> Result<EventsPage, BackendError> + Send + 'static,
    ) -> Result<EventsPage, BackendError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            read(&Reader {
                feed: &store.feed,
                view: &store.state,
                log: &store.log,
            })
        })
        .await
        .map_err(|e| BackendError::failed(format!("history reader task: {e}")))?
    }
}

/// Which matching seqs `tail` keeps.
#[derive(Clone, Copy)]
enum Keep {
    Newest(usize),
    Oldest(usize),
}

/// The newest `want` seqs offered, in a min-heap.
struct Newest {
    want: usize,
    heap: std::collections::BinaryHeap<std::cmp::Reverse<u64>>,
}

impl Newest {
    fn new(want: usize) -> Newest {
        Newest {
            want,
            heap: std::collections::BinaryHeap::with_capacity(want + 1),
        }
    }

    fn offer(&mut self, seq: u64) {
        self.heap.push(std::cmp::Reverse(seq));
        if self.heap.len() > self.want {
            self.heap.pop();
        }
    }

    /// Whether the heap is full of seqs newer than `seq` (so `seq` and older ones cannot
    /// get in).
    fn beats_all(&self, seq: u64) -> bool {
        self.heap.len() >= self.want && self.heap.peek().is_some_and(|m| m.0 > seq)
    }

    /// Newest first, without repeats.
    fn descending(self) -> Vec<u64> {
        let mut seqs: Vec<u64> = self.heap.into_iter().map(|r| r.0).collect();
        seqs.sort_unstable_by(|a, b| b.cmp(a));
        seqs.dedup();
        seqs
    }
}

struct Reader<'a> {
    feed: &'a Feed,
    view: &'a StateView,
    log: &'a AppendLog,
}

fn body(ev: &Event) -> EventBody {
    ev.frame_body
        .get_or_init(|| EventBody::new(ev.seq, &ev.topic, &ev.payload, ev.time_ms))
        .clone()
}

impl Reader<'_> {
    fn topics(&self, pattern: &Pattern) -> Vec<(String, u64)> {
        if pattern.is_exact() {
            return self
                .feed
                .topic_last_seq(pattern.as_str())
                .map(|last| vec![(pattern.as_str().to_owned(), last)])
                .unwrap_or_default();
        }
        self.feed.matching_topics(pattern)
    }

    fn history(
        &self,
        pattern: &Pattern,
        limit: usize,
        from: HistoryFrom,
    ) -> Result<EventsPage, BackendError> {
        let head = self.feed.head();
        let first = self.feed.first_seq();
        // Read before the index: sled may hold more than this, never less.
        let indexed = self.view.indexed_through().min(head);
        let topics = self.topics(pattern);
        let want = limit + 1;
        let mut seqs = match from {
            HistoryFrom::Newest | HistoryFrom::Before(_) => {
                let below = match from {
                    HistoryFrom::Before(b) => b.min(head + 1),
                    _ => head + 1,
                };
                // The newest `want` seqs, in a min-heap: never more than that in memory,
                // however many topics match.
                let mut newest = Newest::new(want);
                for seq in self.tail(pattern, indexed, below, first, Keep::Newest(want))? {
                    newest.offer(seq);
                }
                let mut topics = topics;
                topics.sort_unstable_by_key(|t| std::cmp::Reverse(t.1));
                for (topic, last) in &topics {
                    // Topics by their newest seq: once one cannot beat the heap, none can.
                    if newest.beats_all(*last.min(&below.saturating_sub(1))) {
                        break;
                    }
                    let found = self
                        .view
                        .seqs_before(topic, below.min(indexed + 1), want)
                        .map_err(BackendError::failed)?;
                    for seq in found.into_iter().filter(|&s| s >= first) {
                        newest.offer(seq);
                    }
                }
                newest.descending()
            }
            // Past the head nothing can come (and `after + 1` must not wrap).
            HistoryFrom::After(after) if after >= head => Vec::new(),
            HistoryFrom::After(after) => {
                let mut seqs = Vec::new();
                if after < indexed {
                    for (topic, _) in &topics {
                        let more = self
                            .view
                            .seqs_after(topic, after.max(first.saturating_sub(1)), want)
                            .map_err(BackendError::failed)?;
                        seqs.extend(more.into_iter().filter(|&s| s <= indexed && s >= first));
                        // The oldest `want` so far: never more than twice that in memory.
                        seqs.sort_unstable();
                        seqs.truncate(want);
                    }
                }
                if seqs.len() < want {
                    let keep = Keep::Oldest(want - seqs.len());
                    let tail = self.tail(pattern, indexed.max(after), head + 1, first, keep)?;
                    seqs.extend(tail);
                }
                seqs
            }
        };
        let more = seqs.len() > limit;
        seqs.truncate(limit);
        seqs.sort_unstable();
        Ok(EventsPage {
            events: self
                .events(&seqs, head)?
                .into_iter()
                .map(|(_, e)| e)
                .collect(),
            more,
            first_seq: first,
        })
    }

    fn last(&self, pattern: &Pattern, limit: usize) -> Result<EventsPage, BackendError> {
        let head = self.feed.head();
        let first = self.feed.first_seq();
        let mut topics: Vec<(String, u64)> = self
            .topics(pattern)
            .into_iter()
            .filter(|&(_, last)| last >= first && last > 0)
            .collect();
        let more = topics.len() > limit;
        topics.truncate(limit);
        let mut seqs: Vec<u64> = topics.iter().map(|&(_, seq)| seq).collect();
        seqs.sort_unstable();
        let mut found: std::collections::HashMap<u64, EventBody> =
            self.events(&seqs, head)?.into_iter().collect();
        // By topic name, as `topics` lists them.
        Ok(EventsPage {
            events: topics
                .iter()
                .filter_map(|(_, seq)| found.remove(seq))
                .collect(),
            more,
            first_seq: first,
        })
    }

    /// Seqs of the events matching `pattern` above `indexed` and below `below` (which the
    /// index may not hold yet), oldest first; only the newest or oldest `keep` of them.
    /// Read a batch at a time: however far the view lags, memory stays small.
    fn tail(
        &self,
        pattern: &Pattern,
        indexed: u64,
        below: u64,
        first: u64,
        keep: Keep,
    ) -> Result<Vec<u64>, BackendError> {
        let mut next = (indexed + 1).max(first);
        let mut out = std::collections::VecDeque::new();
        let mut cursor = None;
        let mut batch = Vec::new();
        while next < below {
            let want = usize::try_from(below - next)
                .unwrap_or(TAIL_BATCH)
                .min(TAIL_BATCH);
            let last = below - 1;
            batch.clear();
            match self.feed.cached(next, last, want) {
                Some(events) if events.first().is_some_and(|ev| ev.seq == next) => {
                    batch = events;
                }
                _ => {
                    let cursor = cursor.get_or_insert_with(|| self.log.cursor(next));
                    cursor.seek(next);
                    cursor
                        .read(last, want, &mut batch)
                        .map_err(BackendError::failed)?;
                }
            }
            let Some(newest) = batch.last().map(|ev| ev.seq) else {
                break;
            };
            for ev in &batch {
                if ev.seq < below && pattern.matches(&ev.topic) {
                    out.push_back(ev.seq);
                    match keep {
                        Keep::Newest(n) if out.len() > n => {
                            out.pop_front();
                        }
                        Keep::Oldest(n) if out.len() >= n => return Ok(out.into()),
                        _ => {}
                    }
                }
            }
            next = newest + 1;
        }
        Ok(out.into())
    }

    /// The events with these seqs (ascending), from the cache or the segments; one that
    /// retention removed meanwhile is left out.
    fn events(&self, seqs: &[u64], head: u64) -> Result<Vec<(u64, EventBody)>, BackendError> {
        let mut out = Vec::with_capacity(seqs.len());
        let mut cursor = None;
        let mut read = Vec::new();
        for &seq in seqs {
            if let Some(ev) = self
                .feed
                .cached(seq, head, 1)
                .and_then(|mut hit| hit.pop())
                .filter(|ev| ev.seq == seq)
            {
                out.push((seq, body(&ev)));
                continue;
            }
            let cursor = cursor.get_or_insert_with(|| self.log.point_cursor(seq));
            let next = cursor.next_seq();
            // Close ahead: read on rather than open the segment again.
            let ahead = seq >= next && seq - next < INDEX_EVERY;
            if !ahead {
                cursor.seek(seq);
            }
            read.clear();
            let n = usize::try_from(seq + 1 - cursor.next_seq()).unwrap_or(1);
            cursor
                .read(seq, n, &mut read)
                .map_err(BackendError::failed)?;
            if let Some(ev) = read.iter().find(|ev| ev.seq == seq) {
                out.push((seq, body(ev)));
            }
        }
        Ok(out)
    }
}

/// The feed's share of pruning: which topics the index holds seqs of.
pub(super) fn prune_index(feed: &Arc<Feed>, view: &StateView, first: u64) {
    for (topic, _) in feed.topics() {
        if let Err(e) = view.prune_index(&topic, first) {
            tracing::warn!(error = %e, topic, "cannot prune the per-topic index");
            return;
        }
    }
}
