//! Admin replies: consumer_info and stats.

use super::*;

impl Session {
    pub(super) async fn consumer_info(
        &mut self,
        id: Option<Id>,
        name: String,
    ) -> Result<(), Closed> {
        match self.ctx.backend.consumer_info(&name) {
            Some(info) => {
                self.send(Reply::ConsumerInfo(ConsumerInfo { id, ..info }))
                    .await
            }
            None => {
                let message = format!("no consumer named {name:?}");
                self.send(Reply::error(id, ErrorCode::NotFound, message))
                    .await
            }
        }
    }

    pub(super) fn stats(&self, id: Option<Id>) -> Stats {
        let store = self.ctx.backend.stats();
        Stats {
            id,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_ms: self.ctx.started.elapsed().as_millis() as u64,
            head_seq: store.head_seq,
            first_seq: store.first_seq,
            log_bytes: store.log_bytes,
            segments: store.segments,
            state_bytes: store.state_bytes,
            topics: store.topics,
            consumers: store.consumers,
            connections: self
                .ctx
                .connections
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}
