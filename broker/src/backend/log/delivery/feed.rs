//! The committed head, a cache of the newest events (bounded in count and bytes), live
//! dispatch to caught-up subscriptions, and per-topic stats with seq samples for `lag`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::{mpsc, watch};
use wharf_protocol::{Pattern, PatternIndex};

use crate::backend::log::append::Event;

/// Matching events queued to one subscription that is caught up.
const TAP_DEPTH: usize = 1024;

/// A caught-up subscription's live queue.
struct Tap {
    tx: mpsc::Sender<Arc<Event>>,
    /// Set when an event could not be queued: the subscription must read the log to fill
    /// the hole.
    overflowed: Arc<AtomicBool>,
}

#[derive(Default)]
struct Taps {
    index: PatternIndex<u64>,
    taps: HashMap<u64, Tap>,
    next_id: u64,
}

/// The committed head, a cache of the newest events, and live dispatch: each committed event
/// is matched once against an index of every subscription's patterns and queued only to the
/// subscriptions it matches (no scan of all subscriptions per event).
pub struct Feed {
    cache: RwLock<Cache>,
    capacity: usize,
    /// The most the cache may hold, in [`cache_cost`] bytes.
    byte_budget: usize,
    head: watch::Sender<u64>,
    /// The oldest seq the log still holds (retention moves it).
    first: AtomicU64,
    taps: Mutex<Taps>,
    topics: Mutex<Topics>,
}

/// Every topic's stats and seq samples, built by the start-up replay and kept by the feed.
#[derive(Debug, Default)]
pub struct Topics(BTreeMap<String, TopicEntry>);

impl Topics {
    pub fn add(&mut self, ev: &Event) {
        match self.0.get_mut(&ev.topic) {
            Some(entry) => entry.add(ev),
            None => {
                let mut entry = TopicEntry::default();
                entry.add(ev);
                self.0.insert(ev.topic.clone(), entry);
            }
        }
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// What the feed knows of one topic: its stats, and every [`SAMPLE_EVERY`]th seq, so that
/// how many of its events lie above a consumer's floor is known without reading the log.
#[derive(Debug, Default)]
struct TopicEntry {
    stat: TopicStat,
    /// The seq of its 1st, (SAMPLE_EVERY+1)th, ... event still stored.
    samples: VecDeque<u64>,
    /// Samples dropped with retention, from the front.
    dropped: u64,
    /// Every seq of the newest block (from the last sample on): counts above a floor in it,
    /// where a consumer that is nearly caught up has its floor, are exact.
    tail: Vec<u64>,
}

/// One seq kept per this many events of a topic (8 bytes per 32 events).
const SAMPLE_EVERY: u64 = 32;

impl TopicEntry {
    fn add(&mut self, ev: &Event) {
        if self.stat.events.is_multiple_of(SAMPLE_EVERY) {
            self.samples.push_back(ev.seq);
            self.tail.clear();
        }
        self.tail.push(ev.seq);
        self.stat.add(ev);
    }

    /// How many of this topic's events have a seq above `floor`: exact when the floor is
    /// below the topic's first event or in its newest [`SAMPLE_EVERY`] events, otherwise at
    /// most `SAMPLE_EVERY - 1` too many.
    fn events_above(&self, floor: u64) -> u64 {
        if floor >= self.stat.last_seq {
            return 0;
        }
        if self.samples.back().is_some_and(|&newest| newest <= floor) {
            return self.tail.iter().filter(|&&seq| seq > floor).count() as u64;
        }
        let below = self.samples.partition_point(|&s| s <= floor) as u64;
        if below == 0 && self.dropped == 0 {
            return self.stat.events;
        }
        // The events at or below the floor include at least the sampled ones' blocks but
        // the last, and that last block's first event.
        let at_or_below = (self.dropped + below).saturating_sub(1) * SAMPLE_EVERY + 1;
        self.stat.events.saturating_sub(at_or_below)
    }
}

/// The newest events, contiguous by seq, and what they cost.
#[derive(Default)]
struct Cache {
    events: VecDeque<Arc<Event>>,
    bytes: usize,
}

impl Cache {
    fn pop_front(&mut self) {
        if let Some(ev) = self.events.pop_front() {
            self.bytes -= cache_cost(&ev);
        }
    }
}

/// What a cached event holds in memory: its topic and payload twice (the stored text, and
/// the frame body encoded on first delivery), its msg_id, and a fixed overhead.
fn cache_cost(ev: &Event) -> usize {
    2 * (ev.topic.len() + ev.payload.len()) + ev.msg_id.as_ref().map_or(0, String::len) + 128
}

/// What `topics` reports about one topic.
#[derive(Debug, Clone, Copy, Default)]
pub struct TopicStat {
    pub events: u64,
    pub bytes: u64,
    pub last_seq: u64,
}

impl TopicStat {
    pub fn add(&mut self, ev: &Event) {
        self.events += 1;
        self.bytes += ev.payload.len() as u64;
        self.last_seq = ev.seq;
    }
}

impl Feed {
    /// `capacity` events at most, and no more than `byte_budget` bytes of them; `first` is
    /// the oldest seq the log holds (retention may have removed older ones).
    pub fn new(head: u64, first: u64, capacity: usize, byte_budget: usize, topics: Topics) -> Feed {
        Feed {
            cache: RwLock::new(Cache {
                events: VecDeque::with_capacity(capacity.min(1 << 16)),
                bytes: 0,
            }),
            capacity,
            byte_budget,
            head: watch::Sender::new(head),
            first: AtomicU64::new(first),
            taps: Mutex::new(Taps::default()),
            topics: Mutex::new(topics),
        }
    }

    /// Every topic with events, by name.
    pub fn topics(&self) -> Vec<(String, TopicStat)> {
        let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        topics.0.iter().map(|(t, e)| (t.clone(), e.stat)).collect()
    }

    /// The newest seq of `topic`, if it has events.
    pub fn topic_last_seq(&self, topic: &str) -> Option<u64> {
        let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        topics.0.get(topic).map(|e| e.stat.last_seq)
    }

    /// The topics matching `pattern`, by name, with their newest seqs.
    pub fn matching_topics(&self, pattern: &Pattern) -> Vec<(String, u64)> {
        let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        topics
            .0
            .iter()
            .filter(|(t, _)| pattern.matches(t))
            .map(|(t, e)| (t.clone(), e.stat.last_seq))
            .collect()
    }

    /// A consumer's lag: the events matching `patterns` above its `floor` that are not among
    /// the `acked` ones above it: exact when the floor is within a topic's newest 32 events or
    /// past them, otherwise at most 31 too many per topic.
    pub fn lag(&self, patterns: &[Pattern], floor: u64, acked: u64) -> u64 {
        self.events_above(patterns, floor).saturating_sub(acked)
    }

    /// How many events matching `patterns` lie above `floor`.
    fn events_above(&self, patterns: &[Pattern], floor: u64) -> u64 {
        let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        topics
            .0
            .iter()
            .filter(|(topic, _)| patterns.iter().any(|p| p.matches(topic)))
            .map(|(_, entry)| entry.events_above(floor))
            .sum()
    }

    /// The seq of the newest durable event (0 when there is none).
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// The oldest seq still stored (or the next one, when the log holds no event).
    pub fn first_seq(&self) -> u64 {
        self.first.load(Ordering::Acquire)
    }

    /// Retention removed everything below `first`: forget it here too.
    pub(super) fn trim_below(&self, first: u64) {
        self.first.store(first, Ordering::Release);
        {
            // Samples of removed events: a block is dropped once the next one starts below
            // `first` too, so the block `first` falls in keeps its first seq.
            let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
            for entry in topics.0.values_mut() {
                while entry.samples.get(1).is_some_and(|&next| next <= first) {
                    entry.samples.pop_front();
                    entry.dropped += 1;
                }
            }
        }
        let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
        while cache.events.front().is_some_and(|ev| ev.seq < first) {
            cache.pop_front();
        }
    }

    fn lock_taps(&self) -> std::sync::MutexGuard<'_, Taps> {
        self.taps.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn push(&self, events: Vec<Arc<Event>>) {
        let Some(last) = events.last().map(|e| e.seq) else {
            return;
        };
        {
            let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
            for ev in &events {
                topics.add(ev);
            }
        }
        if self.capacity > 0 && self.byte_budget > 0 {
            let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
            for ev in &events {
                let cost = cache_cost(ev);
                if cost > self.byte_budget {
                    // Too large to cache at all; the cache stays contiguous by starting over.
                    *cache = Cache::default();
                    continue;
                }
                while cache.events.len() >= self.capacity || cache.bytes + cost > self.byte_budget {
                    cache.pop_front();
                }
                cache.bytes += cost;
                cache.events.push_back(ev.clone());
            }
        }
        // The head moves before any subscriber can see the events, so that an ack of a
        // delivered event is never refused as "not published yet". A source that reads the
        // new head walks to it; one that went live on the old head gets them queued below.
        self.head.send_replace(last);
        let taps = self.lock_taps();
        if taps.taps.is_empty() {
            return;
        }
        let mut keys = Vec::new();
        for ev in &events {
            keys.clear();
            taps.index.matches(&ev.topic, &mut keys);
            keys.sort_unstable();
            keys.dedup();
            for key in &keys {
                if let Some(tap) = taps.taps.get(key) {
                    if tap.tx.try_send(ev.clone()).is_err() {
                        tap.overflowed.store(true, Ordering::Release);
                    }
                }
            }
        }
    }

    /// Up to `max` cached events from `seq` through `head`, or `None` if `seq` is older than
    /// the cache.
    pub fn cached(&self, seq: u64, head: u64, max: usize) -> Option<Vec<Arc<Event>>> {
        let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
        let first = cache.events.front()?.seq;
        if seq < first {
            return None;
        }
        let start = usize::try_from(seq - first).ok()?;
        let want = usize::try_from(head.saturating_sub(seq) + 1).unwrap_or(usize::MAX);
        Some(
            cache
                .events
                .iter()
                .skip(start)
                .take(max.min(want))
                .cloned()
                .collect(),
        )
    }

    pub(super) fn register(
        &self,
        patterns: &[Pattern],
    ) -> (u64, mpsc::Receiver<Arc<Event>>, Arc<AtomicBool>) {
        let (tx, rx) = mpsc::channel(TAP_DEPTH);
        let overflowed = Arc::new(AtomicBool::new(false));
        let mut taps = self.lock_taps();
        taps.next_id += 1;
        let id = taps.next_id;
        for p in patterns {
            taps.index.insert(p, id);
        }
        taps.taps.insert(
            id,
            Tap {
                tx,
                overflowed: overflowed.clone(),
            },
        );
        (id, rx, overflowed)
    }

    pub(super) fn unregister(&self, id: u64, patterns: &[Pattern]) {
        let mut taps = self.lock_taps();
        for p in patterns {
            taps.index.remove(p, &id);
        }
        taps.taps.remove(&id);
    }

    pub fn subscribe_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Wakes every waiting source so it can notice it should stop.
    pub fn close(&self) {
        self.lock_taps().taps.clear();
        self.head.send_modify(|_| {});
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, topic: &str) -> Event {
        Event {
            seq,
            time_ms: 0,
            topic: topic.into(),
            payload: "1".into(),
            msg_id: None,
            frame_body: Default::default(),
        }
    }

    #[test]
    fn events_above_a_floor_are_exact_when_caught_up_and_close_otherwise() {
        let mut entry = TopicEntry::default();
        // The topic's events are every third seq: 3, 6, ..., 300.
        for i in 1..=100 {
            entry.add(&event(i * 3, "a"));
        }
        assert_eq!(entry.events_above(0), 100);
        assert_eq!(entry.events_above(300), 0);
        assert_eq!(entry.events_above(1000), 0);
        // In the newest block (seqs 291..300 hold events 97..100): exact.
        assert_eq!(entry.events_above(291), 3);
        assert_eq!(entry.events_above(299), 1);
        for floor in [3, 50, 96, 97, 150, 299] {
            let exact = (1..=100).filter(|i| i * 3 > floor).count() as u64;
            let counted = entry.events_above(floor);
            assert!(
                counted >= exact && counted < exact + SAMPLE_EVERY,
                "floor {floor}: {counted} for {exact}"
            );
        }
    }
}
