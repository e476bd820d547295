//! Replies in request order: what a pipelined request completes with, and sending it when its
//! turn comes.

use super::*;

/// What a pipelined request turns into once its log write is durable.
pub(super) enum Completion {
    Reply(Reply),
    /// A reply written as JSON already (history, last).
    Json(String),
    /// The reply to a subscribe that the log refused: no subscription comes of it.
    NotSubscribed(Reply),
    /// The replies to publishes that went to the log together, in request order.
    Replies(Vec<Reply>),
    Silent,
    /// Start an ephemeral subscription (its turn in reply order has come).
    Ephemeral {
        id: Option<Id>,
        sub: Arc<str>,
        patterns: Vec<Pattern>,
        from: u64,
        batch: usize,
        rooms: Rooms,
    },
    /// The consumer exists (now): attach this connection to it.
    Attach {
        id: Option<Id>,
        sub: Arc<str>,
        name: String,
        patterns: Vec<Pattern>,
        mode: Mode,
        options: DeliveryOptions,
        rooms: Rooms,
    },
}

pub(super) fn error_reply(id: Option<Id>, e: BackendError) -> Reply {
    Reply::error(id, e.code(), e.to_string())
}

/// Waits for a confirmation and turns it into a completion; a failure is an error reply.
pub(super) fn after_commit<T: Send + 'static>(
    confirming: Confirming<T>,
    id: Option<Id>,
    done: impl FnOnce(Option<Id>, T) -> Completion + Send + 'static,
) -> BoxFuture<'static, Completion> {
    async move {
        match confirming.await {
            Ok(confirmed) => done(id, confirmed),
            Err(e) => Completion::Reply(error_reply(id, e)),
        }
    }
    .boxed()
}

impl Session {
    /// Sends a reply now (to a request whose turn it is). The wait for room in the queue is
    /// bounded by the slow-consumer limit and by the authentication deadline: a peer that
    /// does not read its replies is disconnected, not waited for.
    pub(super) async fn send_now(&mut self, reply: Reply) -> Result<(), Closed> {
        self.send_frame_now(Frame::reply(&reply)).await
    }

    async fn send_frame_now(&mut self, frame: Frame) -> Result<(), Closed> {
        let slow_limit = tokio::time::Instant::now() + self.outbound.slow_limit();
        let deadline = match self.auth_deadline {
            Some(auth) => auth.min(slow_limit),
            None => slow_limit,
        };
        match self.outbound.send_by(frame, deadline).await {
            Ok(()) => Ok(()),
            Err(Unsent::Closed) => Err(Closed),
            Err(Unsent::TimedOut) => {
                let unauthenticated = self.auth_deadline.is_some();
                tracing::info!(
                    session = self.id,
                    unauthenticated,
                    "the peer does not read its replies; dropping the connection"
                );
                self.stopped_reading = true;
                Err(Closed)
            }
        }
    }

    /// Replies to the current request, after the replies of earlier requests that are still
    /// waiting for the log: replies always come back in request order.
    pub(super) async fn send(&mut self, reply: Reply) -> Result<(), Closed> {
        if self.pending.is_empty() {
            self.send_now(reply).await
        } else {
            self.pending
                .push_back(async move { Completion::Reply(reply) }.boxed());
            Ok(())
        }
    }

    /// Queues the reply to a write once the backend confirms it: `ok`, or nothing when the
    /// request had no id and `silent` is asked (acks).
    pub(super) async fn confirm(
        &mut self,
        id: Option<Id>,
        written: Result<Confirming<()>, BackendError>,
        silent: bool,
    ) -> Result<(), Closed> {
        match written {
            Ok(confirming) => {
                let done = after_commit(confirming, id, move |id, ()| match id {
                    None if silent => Completion::Silent,
                    id => Completion::Reply(Reply::Ok { id }),
                });
                self.pending.push_back(done);
                Ok(())
            }
            Err(e) => self.send(error_reply(id, e)).await,
        }
    }

    pub(super) async fn complete(&mut self, done: Completion) -> Result<(), Closed> {
        if matches!(
            done,
            Completion::NotSubscribed(_) | Completion::Ephemeral { .. } | Completion::Attach { .. }
        ) {
            self.accepted_subs = self.accepted_subs.saturating_sub(1);
        }
        match done {
            Completion::Reply(reply) | Completion::NotSubscribed(reply) => {
                self.send_now(reply).await
            }
            Completion::Replies(replies) => {
                self.unanswered_publishes = self.unanswered_publishes.saturating_sub(replies.len());
                for reply in replies {
                    self.send_now(reply).await?;
                }
                Ok(())
            }
            Completion::Json(text) => self.send_frame_now(Frame::Json(text)).await,
            Completion::Silent => Ok(()),
            // The connection re-authenticated since the subscribe was accepted.
            Completion::Ephemeral { id, patterns, .. } if !self.may_hold(&patterns, None) => {
                self.send_now(no_longer_allowed(id)).await
            }
            Completion::Attach {
                id, name, patterns, ..
            } if !self.may_hold(&patterns, Some(&name)) => {
                self.send_now(no_longer_allowed(id)).await
            }
            Completion::Ephemeral {
                id,
                sub,
                patterns,
                from,
                batch,
                rooms,
            } => {
                self.start_ephemeral(id, sub, patterns, from, batch, rooms)
                    .await
            }
            Completion::Attach {
                id,
                sub,
                name,
                patterns,
                mode,
                options,
                rooms,
            } => {
                self.attach(id, sub, name, patterns, mode, options, rooms)
                    .await
            }
        }
    }
}

fn no_longer_allowed(id: Option<Id>) -> Reply {
    Reply::error(
        id,
        ErrorCode::Forbidden,
        "the connection re-authenticated with a token that may not hold this subscription",
    )
}
