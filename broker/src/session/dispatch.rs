//! One text frame: parse, authorize, and hand the request to its operation.

use wharf_protocol::EventsKind;

use super::*;
use crate::backend::HistoryFrom;

impl Session {
    pub(super) async fn handle_text(&mut self, text: &str) -> Result<(), Closed> {
        let limit = self.ctx.config.max_frame_bytes;
        let request = (text.len() <= limit).then(|| parse_request(text));
        // A publish that is allowed joins the queue (a refused one is answered below).
        let queue = match &request {
            Some(Ok(r @ Request::Publish { .. })) => self.rejection(r).await.is_none(),
            _ => false,
        };
        if queue {
            if let Some(Ok(Request::Publish { id, event })) = request {
                let event = new_event(event, now_ms(), self.publisher());
                self.queued.push((id, event));
            }
            return Ok(());
        }
        // Anything else answers after the queued publishes: replies keep request order.
        self.flush_queued().await?;
        if text.len() > limit {
            let message = format!("frame is {} bytes, the limit is {limit}", text.len());
            let id = wharf_protocol::frame_id(text);
            return self
                .send(Reply::error(id, ErrorCode::TooLarge, message))
                .await;
        }
        let request = match request {
            Some(Ok(r)) => r,
            Some(Err(e)) => return self.send(Reply::error(e.id, e.code, e.message)).await,
            None => return Err(Closed),
        };
        if let Request::Auth { id, token } = request {
            return self.authenticate(id, &token).await;
        }
        match self.rejection(&request).await {
            Some(refusal) => self.send(refusal).await,
            None => self.dispatch(request).await,
        }
    }

    /// Hands an allowed request to its operation.
    async fn dispatch(&mut self, request: Request) -> Result<(), Closed> {
        match request {
            Request::Publish { id, event } => self.publish(id, vec![event], false).await,
            Request::PublishBatch { id, events } => self.publish(id, events, true).await,
            Request::Subscribe {
                id,
                topics,
                consumer,
                start,
                options,
                presence,
                join_leave,
            } => {
                let rooms = (presence, join_leave);
                self.subscribe(id, topics, consumer, start, options, rooms)
                    .await
            }
            Request::Ack { id, consumer, seqs } => {
                self.settle(id, consumer, seqs, Settlement::Ack).await
            }
            Request::Term { id, consumer, seqs } => {
                self.settle(id, consumer, seqs, Settlement::Term).await
            }
            Request::Nack {
                id,
                consumer,
                seqs,
                delay_ms,
            } => {
                let delay = Some(Duration::from_millis(delay_ms));
                self.touch(id, consumer, seqs, delay).await
            }
            Request::Progress { id, consumer, seqs } => self.touch(id, consumer, seqs, None).await,
            Request::Seek {
                id,
                consumer,
                start,
            } => self.seek(id, consumer, start).await,
            Request::ConsumerInfo { id, consumer } => self.consumer_info(id, consumer).await,
            Request::DeleteConsumer { id, consumer } => self.delete_consumer(id, consumer).await,
            Request::Unsubscribe { id, sub } => self.unsubscribe(id, &sub).await,
            Request::Ping { id } => self.send(Reply::Pong { id }).await,
            Request::Auth { .. } => Ok(()),
            Request::Stats { id } => self.stats(id).await,
            Request::Topics { id, page } => self.topics(id, page).await,
            Request::Consumers { id, page } => self.consumers(id, page).await,
            Request::History {
                id,
                pattern,
                limit,
                before,
                after,
            } => {
                let from = match (before, after) {
                    (Some(before), _) => HistoryFrom::Before(before),
                    (_, Some(after)) => HistoryFrom::After(after),
                    _ => HistoryFrom::Newest,
                };
                self.read_events(id, EventsKind::History, pattern, limit, from)
                    .await
            }
            Request::Last { id, pattern, limit } => {
                let from = HistoryFrom::Newest;
                self.read_events(id, EventsKind::Last, pattern, limit, from)
                    .await
            }
            Request::Hello { id, client, info } => self.hello(id, client, info).await,
            Request::Presence { id, topic } => self.presence(id, topic).await,
        }
    }
}
