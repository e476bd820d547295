//! Publishing: a burst of pipelined publishes goes to the backend together; each reply waits
//! for its batch to be durable.

use super::*;

/// An event to store; the parsed request's strings are moved, not copied. Its msg_id is
/// scoped by `publisher`, so that one publisher's ids never answer for another's.
pub(super) fn new_event(e: WireEvent, time_ms: u64, publisher: &str) -> NewEvent {
    NewEvent {
        topic: e.topic.into_string(),
        payload: String::from(Box::<str>::from(e.payload)),
        time_ms,
        msg_id: e.msg_id.map(|id| dedup_key(publisher, &id)),
    }
}

/// The reply to a publish (`batch`: a publish_batch) once its batch is stored.
fn published(id: Option<Id>, stored: Stored, batch: bool) -> Reply {
    let stored = match stored {
        Stored::Events(stored) => stored,
        Stored::Refused(e) => return Reply::error(id, e.code(), e.to_string()),
    };
    let dups = stored.iter().filter(|p| p.duplicate).count();
    if dups > 0 {
        ::metrics::counter!(metrics::DUPLICATES).increment(dups as u64);
    }
    let seqs: Vec<u64> = stored.iter().map(|p| p.seq).collect();
    let (seq, seqs) = match batch {
        true => (None, Some(seqs)),
        false => (seqs.first().copied(), None),
    };
    Reply::Published {
        id,
        seq,
        seqs,
        duplicate: dups > 0,
    }
}

impl Session {
    /// Hands the queued publishes to the backend together (each its own batch).
    pub(super) async fn flush_queued(&mut self) -> Result<(), Closed> {
        if self.queued.is_empty() {
            return Ok(());
        }
        let (ids, batches): (Vec<Option<Id>>, Vec<Vec<NewEvent>>) =
            std::mem::take(&mut self.queued)
                .into_iter()
                .map(|(id, event)| (id, vec![event]))
                .unzip();
        match self.ctx.backend.publish(batches).await {
            Ok(confirming) => {
                self.unanswered_publishes += ids.len();
                self.pending.push_back(
                    async move {
                        let replies = match confirming.await {
                            Ok(stored) => ids
                                .into_iter()
                                .zip(stored)
                                .map(|(id, stored)| published(id, stored, false))
                                .collect(),
                            Err(e) => {
                                let message = e.to_string();
                                ids.into_iter()
                                    .map(|id| Reply::error(id, e.code(), message.clone()))
                                    .collect()
                            }
                        };
                        Completion::Replies(replies)
                    }
                    .boxed(),
                );
                Ok(())
            }
            Err(e) => {
                let message = e.to_string();
                for id in ids {
                    self.send(Reply::error(id, e.code(), message.clone()))
                        .await?;
                }
                Ok(())
            }
        }
    }

    pub(super) async fn publish(
        &mut self,
        id: Option<Id>,
        events: Vec<WireEvent>,
        batch: bool,
    ) -> Result<(), Closed> {
        let time_ms = now_ms();
        let events = events
            .into_iter()
            .map(|e| new_event(e, time_ms, self.publisher()))
            .collect();
        match self.ctx.backend.publish(vec![events]).await {
            Ok(confirming) => {
                let done = after_commit(confirming, id, move |id, stored| {
                    match stored.into_iter().next() {
                        Some(stored) => Completion::Reply(published(id, stored, batch)),
                        None => Completion::Reply(Reply::error(
                            id,
                            ErrorCode::Internal,
                            "publish got no seq",
                        )),
                    }
                });
                self.pending.push_back(done);
                Ok(())
            }
            Err(e) => self.send(error_reply(id, e)).await,
        }
    }
}
