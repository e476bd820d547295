//! Admin replies: consumer_info and stats.

use super::*;

impl Session {
    pub(super) async fn consumer_info(&mut self, id: Option<Id>, name: String) -> Result<(), ()> {
        let Some(consumer) = self.consumer(&id, &name).await? else {
            return Ok(());
        };
        let info = self.info_of(id, &consumer);
        self.send(Reply::ConsumerInfo(info)).await
    }

    pub(super) fn stats(&self, id: Option<Id>) -> Stats {
        let store = &self.ctx.store;
        let (segments, log_bytes) = store.log.size();
        Stats {
            id,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_ms: self.ctx.started.elapsed().as_millis() as u64,
            head_seq: store.feed.head(),
            first_seq: store.feed.first_seq(),
            log_bytes,
            segments: segments as u64,
            state_bytes: store.state.size_on_disk(),
            topics: store.feed.topics().len() as u64,
            consumers: store.consumers.len() as u64,
            connections: self
                .ctx
                .connections
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    pub(super) fn info_of(&self, id: Option<Id>, consumer: &Consumer) -> ConsumerInfo {
        let info = consumer.info();
        ConsumerInfo {
            id,
            consumer: consumer.name.clone(),
            topics: info.patterns,
            mode: mode_name(info.mode).to_owned(),
            ack_floor: info.ack_floor,
            acked_above_floor: info.acked_above_floor,
            ack_pending: info.ack_pending as u64,
            // Events still to settle (above the floor and not acked), not the distance from
            // the floor: one poison event must not make a caught-up consumer look behind.
            lag: self.ctx.store.feed.lag(
                &consumer.patterns,
                info.ack_floor,
                info.acked_above_floor,
            ),
            redelivered: info.redelivered as u64,
            terminated: info.terminated,
            dead_lettered: info.dead_lettered,
            gapped: info.gapped,
            attached: info.attached as u64,
        }
    }
}
