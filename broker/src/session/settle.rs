//! Operations on a durable consumer: ack, nack, term, progress, seek, delete, unsubscribe.

use super::*;

impl Session {
    /// The named consumer, or a `not_found` error sent back.
    pub(super) async fn consumer(
        &mut self,
        id: &Option<Id>,
        name: &str,
    ) -> Result<Option<Arc<Consumer>>, ()> {
        match self.ctx.store.consumers.get(name) {
            Some(c) => Ok(Some(c)),
            None => {
                let message = format!("no consumer named {name:?}");
                self.send(Reply::error(id.clone(), ErrorCode::NotFound, message))
                    .await?;
                Ok(None)
            }
        }
    }

    pub(super) async fn settle(
        &mut self,
        id: Option<Id>,
        name: String,
        seqs: Vec<u64>,
        kind: Settle,
    ) -> Result<(), ()> {
        let Some(consumer) = self.consumer(&id, &name).await? else {
            return Ok(());
        };
        let head = self.ctx.store.feed.head();
        if let Some(&beyond) = seqs.iter().find(|&&s| s > head) {
            let message = format!("seq {beyond} has not been published (the newest is {head})");
            return self
                .send(Reply::error(id, ErrorCode::BadRequest, message))
                .await;
        }
        let (floor, seeks) = consumer.floor_for_settle(&seqs);
        let entry = Record::Acked {
            consumer: name,
            seqs,
            floor,
            kind,
            seeks,
        };
        self.submit(vec![entry], id, |id, _| match id {
            Some(id) => Completion::Reply(Reply::Ok { id: Some(id) }),
            None => Completion::Silent,
        })
        .await
    }

    /// nack (`delay` given) and progress (`delay` None: the ack wait starts over).
    pub(super) async fn touch(
        &mut self,
        id: Option<Id>,
        name: String,
        seqs: Vec<u64>,
        delay: Option<Duration>,
    ) -> Result<(), ()> {
        let Some(consumer) = self.consumer(&id, &name).await? else {
            return Ok(());
        };
        if delay.is_some() {
            ::metrics::counter!(metrics::NACKED).increment(seqs.len() as u64);
        }
        match consumer.touch(&seqs, delay, Instant::now()) {
            Ok(()) if id.is_some() => self.send(Reply::Ok { id }).await,
            Ok(()) => Ok(()),
            Err(seq) => {
                let message = format!("seq {seq} is not in flight for consumer {name:?}");
                self.send(Reply::error(id, ErrorCode::NotFound, message))
                    .await
            }
        }
    }

    pub(super) async fn seek(
        &mut self,
        id: Option<Id>,
        name: String,
        start: Start,
    ) -> Result<(), ()> {
        if self.consumer(&id, &name).await?.is_none() {
            return Ok(());
        }
        let floor = match self.floor_for(start).await {
            Ok(Floor::At(floor)) => floor,
            Ok(Floor::Head) => self.ctx.store.feed.head(),
            Err(e) => return self.send(internal(id, e)).await,
        };
        let entry = Record::ConsumerSeek { name, floor };
        self.submit(vec![entry], id, |id, _| Completion::Reply(Reply::Ok { id }))
            .await
    }

    pub(super) async fn delete_consumer(&mut self, id: Option<Id>, name: String) -> Result<(), ()> {
        if self.consumer(&id, &name).await?.is_none() {
            return Ok(());
        }
        let entry = Record::ConsumerDeleted { name };
        self.submit(vec![entry], id, |id, _| Completion::Reply(Reply::Ok { id }))
            .await
    }
}
