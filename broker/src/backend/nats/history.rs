//! `history` and `last` on JetStream, from its own per-subject index through batched direct
//! gets (`$JS.API.DIRECT.GET`, nats-server 2.11+; any replica answers): `next_by_subj` walks
//! forward from a seq, `multi_last` gives the newest message of each subject. JetStream has
//! no backward walk, so the newest events below a seq are found in windows that grow
//! backwards until they hold enough.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use wharf_protocol::{EventBody, Pattern};

use async_nats::jetstream;

use super::{payload_json, unavailable, NatsBackend};
use crate::backend::contract::{BackendError, EventsPage, HistoryFrom};

/// How long one batched get may take in all.
const GET_TIMEOUT: Duration = Duration::from_secs(5);
/// Each backward window is this many times the last.
const WINDOW_GROWTH: u64 = 4;

/// One stored message, as a direct get returns it.
struct Got {
    seq: u64,
    topic: String,
    body: EventBody,
}

impl NatsBackend {
    /// Up to `batch` messages: `request` is a batched direct get's JSON.
    async fn direct_batch(&self, request: serde_json::Value) -> Result<Vec<Got>, BackendError> {
        self.check_ready()?;
        let client = &self.inner.client;
        let inbox = client.new_inbox();
        let mut replies = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| unavailable("cannot read the stream", e))?;
        let subject = format!("$JS.API.DIRECT.GET.{}", self.settings().stream);
        client
            .publish_with_reply(subject, inbox, request.to_string().into())
            .await
            .map_err(|e| unavailable("cannot read the stream", e))?;
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + GET_TIMEOUT;
        loop {
            let message = match tokio::time::timeout_at(deadline, replies.next()).await {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(_) => {
                    return Err(BackendError::Unavailable(
                        "the stream did not answer in time".into(),
                    ))
                }
            };
            if let Some(status) = message.status {
                match status.as_u16() {
                    // 204: the end of the batch; 404: nothing matched.
                    204 | 404 => break,
                    code => {
                        let why = message.description.unwrap_or_default();
                        return Err(BackendError::Unavailable(format!(
                            "reading the stream failed ({code} {why}); nats-server 2.11 or newer answers batched reads"
                        )));
                    }
                }
            }
            let header = |name: &str| {
                message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_owned())
            };
            let (Some(seq), Some(subject)) = (
                header("Nats-Sequence").and_then(|s| s.parse::<u64>().ok()),
                header("Nats-Subject"),
            ) else {
                continue;
            };
            let time_ms = header("Nats-Time-Stamp")
                .and_then(|t| {
                    time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .and_then(|t| u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok())
                .unwrap_or(0);
            let topic = self.topic_of(&subject).to_owned();
            let body = EventBody::new(seq, &topic, &payload_json(&message.payload), time_ms);
            out.push(Got { seq, topic, body });
        }
        Ok(out)
    }

    /// The first `batch` messages matching `filter` at or after `seq`.
    async fn forward(
        &self,
        filter: &str,
        seq: u64,
        batch: usize,
    ) -> Result<Vec<Got>, BackendError> {
        self.direct_batch(json!({"seq": seq.max(1), "next_by_subj": filter, "batch": batch}))
            .await
    }

    /// The stream's state and its subjects matching `filter` with their message counts,
    /// sorted by subject (one request: the stream's info with per-subject counts).
    async fn subject_counts(
        &self,
        filter: &str,
    ) -> Result<(jetstream::stream::State, Vec<(String, u64)>), BackendError> {
        use futures_util::TryStreamExt;
        self.check_ready()?;
        let stream = self
            .js()
            .get_stream_no_info(&self.settings().stream)
            .await
            .map_err(|e| unavailable("cannot reach the stream", e))?;
        let mut listed = stream
            .info_with_subjects(filter)
            .await
            .map_err(|e| unavailable("cannot read the stream", e))?;
        let state = listed.info.state.clone();
        let mut subjects = Vec::new();
        while let Some((subject, count)) = listed
            .try_next()
            .await
            .map_err(|e| unavailable("cannot read the stream", e))?
        {
            subjects.push((subject, count as u64));
        }
        subjects.sort_unstable();
        Ok((state, subjects))
    }

    /// The stream's state and how many stored messages match `filter`.
    async fn state_and_matches(
        &self,
        filter: &str,
    ) -> Result<(jetstream::stream::State, u64), BackendError> {
        let (state, subjects) = self.subject_counts(filter).await?;
        Ok((state, subjects.iter().map(|(_, n)| n).sum()))
    }

    /// The stream's state and its subjects matching `filter`, by name.
    async fn subjects(
        &self,
        filter: &str,
    ) -> Result<(jetstream::stream::State, Vec<String>), BackendError> {
        let (state, subjects) = self.subject_counts(filter).await?;
        Ok((state, subjects.into_iter().map(|(s, _)| s).collect()))
    }

    pub async fn history(
        &self,
        pattern: &Pattern,
        limit: usize,
        from: HistoryFrom,
    ) -> Result<EventsPage, BackendError> {
        let filter = self.filter(pattern);
        let (state, matching) = self.state_and_matches(&filter).await?;
        let first = state.first_sequence.max(1);
        let want = limit + 1;
        let mut got = if matching == 0 {
            Vec::new()
        } else {
            match from {
                HistoryFrom::After(after) if after >= state.last_sequence => Vec::new(),
                HistoryFrom::After(after) => self.forward(&filter, after + 1, want).await?,
                HistoryFrom::Newest | HistoryFrom::Before(_) => {
                    let below = match from {
                        HistoryFrom::Before(b) => b.min(state.last_sequence + 1),
                        _ => state.last_sequence + 1,
                    };
                    // The first window, from how dense the matching messages are: most
                    // pages take one.
                    let span = (state.last_sequence + 1).saturating_sub(first).max(1);
                    let per_match = span / matching.max(1);
                    let window = (want as u64).saturating_mul(per_match).saturating_mul(5) / 4 + 64;
                    self.newest_below(&filter, below, first, want, window)
                        .await?
                }
            }
        };
        let more = got.len() > limit;
        match from {
            HistoryFrom::After(_) => got.truncate(limit),
            _ => {
                let extra = got.len().saturating_sub(limit);
                got.drain(..extra);
            }
        }
        Ok(EventsPage {
            events: got.into_iter().map(|g| g.body).collect(),
            more,
            first_seq: first,
        })
    }

    /// The newest `want` messages matching `filter` with seqs in `first..below`, oldest
    /// first: windows below `below`, the first `window` seqs wide and each next
    /// `WINDOW_GROWTH` times the last, until they hold `want` or reach `first`.
    async fn newest_below(
        &self,
        filter: &str,
        below: u64,
        first: u64,
        want: usize,
        mut window: u64,
    ) -> Result<Vec<Got>, BackendError> {
        let mut found: Vec<Got> = Vec::new();
        let mut hi = below;
        while hi > first && found.len() < want {
            let lo = hi.saturating_sub(window).max(first);
            // The newest of what matches in lo..hi, in batches: at most the `want` still
            // missing are kept, however dense the window.
            let room = want - found.len();
            let mut in_window = std::collections::VecDeque::with_capacity(room.min(1024));
            let mut next = lo;
            loop {
                let batch = self.forward(filter, next, 1000).await?;
                let full = batch.len() == 1000;
                let mut past = false;
                for g in batch {
                    if g.seq >= hi {
                        past = true;
                        break;
                    }
                    next = g.seq + 1;
                    in_window.push_back(g);
                    if in_window.len() > room {
                        in_window.pop_front();
                    }
                }
                if past || !full {
                    break;
                }
            }
            let mut older: Vec<Got> = in_window.into();
            older.append(&mut found);
            found = older;
            hi = lo;
            window = window.saturating_mul(WINDOW_GROWTH);
        }
        let extra = found.len().saturating_sub(want);
        found.drain(..extra);
        Ok(found)
    }

    pub async fn last(&self, pattern: &Pattern, limit: usize) -> Result<EventsPage, BackendError> {
        // The matching subjects by name (the stream's per-subject counts), the first
        // `limit` of them, then the newest message of just those: no more payloads than
        // the page holds.
        let filter = self.filter(pattern);
        let (state, subjects) = self.subjects(&filter).await?;
        let more = subjects.len() > limit;
        let wanted: Vec<String> = subjects.into_iter().take(limit).collect();
        let mut got = if wanted.is_empty() {
            Vec::new()
        } else {
            let batch = wanted.len();
            self.direct_batch(json!({"multi_last": wanted, "batch": batch}))
                .await?
        };
        got.sort_by(|a, b| a.topic.cmp(&b.topic));
        Ok(EventsPage {
            events: got.into_iter().map(|g| g.body).collect(),
            more,
            first_seq: state.first_sequence.max(1),
        })
    }
}
