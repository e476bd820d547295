//! Operations on a durable consumer: ack, nack, term, progress, seek, delete.

use super::*;

impl Session {
    pub(super) async fn settle(
        &mut self,
        id: Option<Id>,
        name: String,
        seqs: Vec<u64>,
        how: Settlement,
    ) -> Result<(), Closed> {
        let written = self.ctx.backend.settle(&name, seqs, how).await;
        self.confirm(id, written, true).await
    }

    /// nack (`delay` given) and progress (`delay` None: the ack wait starts over).
    pub(super) async fn touch(
        &mut self,
        id: Option<Id>,
        name: String,
        seqs: Vec<u64>,
        delay: Option<Duration>,
    ) -> Result<(), Closed> {
        match self.ctx.backend.touch(&name, &seqs, delay).await {
            Ok(()) if id.is_some() => self.send(Reply::Ok { id }).await,
            Ok(()) => Ok(()),
            Err(e) => self.send(error_reply(id, e)).await,
        }
    }

    pub(super) async fn seek(
        &mut self,
        id: Option<Id>,
        name: String,
        start: Start,
    ) -> Result<(), Closed> {
        let written = self.ctx.backend.seek(&name, start).await;
        self.confirm(id, written, false).await
    }

    pub(super) async fn delete_consumer(
        &mut self,
        id: Option<Id>,
        name: String,
    ) -> Result<(), Closed> {
        let written = self.ctx.backend.delete_consumer(&name).await;
        self.confirm(id, written, false).await
    }
}
