//! Admin replies: consumer_info, stats, and the paged topic and consumer listings.

use super::*;

impl Session {
    pub(super) async fn consumer_info(
        &mut self,
        id: Option<Id>,
        name: String,
    ) -> Result<(), Closed> {
        match self.ctx.backend.consumer_info(&name).await {
            Err(e) => self.send(error_reply(id, e)).await,
            Ok(Some(info)) => {
                self.send(Reply::ConsumerInfo(ConsumerInfo { id, ..info }))
                    .await
            }
            Ok(None) => {
                let message = format!("no consumer named {name:?}");
                self.send(Reply::error(id, ErrorCode::NotFound, message))
                    .await
            }
        }
    }

    pub(super) async fn stats(&mut self, id: Option<Id>) -> Result<(), Closed> {
        let store = match self.ctx.backend.stats().await {
            Ok(store) => store,
            Err(e) => return self.send(error_reply(id, e)).await,
        };
        let stats = Stats {
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
            published_total: metrics::published().total(),
            delivered_total: metrics::delivered().total(),
            acked_total: metrics::acked().total(),
            dead_lettered_total: metrics::dead_lettered().total(),
            backend: self.ctx.backend.kind().to_owned(),
            cluster: store.cluster,
        };
        self.send(Reply::Stats(Box::new(stats))).await
    }

    pub(super) async fn topics(&mut self, id: Option<Id>, page: Page) -> Result<(), Closed> {
        let all = match self.ctx.backend.topics().await {
            Ok(all) => all,
            Err(e) => return self.send(error_reply(id, e)).await,
        };
        let (taken, next_cursor) = page.select(&all, |t| &t.topic);
        let topics = taken.to_vec();
        self.send(Reply::Topics {
            id,
            topics,
            next_cursor,
        })
        .await
    }

    pub(super) async fn consumers(&mut self, id: Option<Id>, page: Page) -> Result<(), Closed> {
        let names = match self.ctx.backend.consumer_names().await {
            Ok(names) => names,
            Err(e) => return self.send(error_reply(id, e)).await,
        };
        let (taken, next_cursor) = page.select(&names, String::as_str);
        let mut consumers = Vec::with_capacity(taken.len());
        for name in taken {
            match self.ctx.backend.consumer_info(name).await {
                Ok(Some(info)) => consumers.push(info),
                Ok(None) => {}
                Err(e) => return self.send(error_reply(id, e)).await,
            }
        }
        self.send(Reply::Consumers {
            id,
            consumers,
            next_cursor,
        })
        .await
    }
}
