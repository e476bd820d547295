//! Settling and moving consumers: ack, term, nack, progress, seek, delete. Everything that
//! changes what a consumer has settled goes through the log first.

use std::time::{Duration, Instant};

use wharf_protocol::Start;

use super::append::{Floor, Record, Settle};
use super::LogBackend;
use crate::backend::contract::{BackendError, Confirming, Settlement};
use crate::metrics;

impl LogBackend {
    pub async fn settle(
        &self,
        name: &str,
        seqs: Vec<u64>,
        how: Settlement,
    ) -> Result<Confirming<()>, BackendError> {
        let consumer = self.consumer(name)?;
        let head = self.store.feed.head();
        if let Some(&beyond) = seqs.iter().find(|&&s| s > head) {
            return Err(BackendError::BadRequest(format!(
                "seq {beyond} has not been published (the newest is {head})"
            )));
        }
        let (floor, seeks) = consumer.floor_for_settle(&seqs);
        let record = Record::Acked {
            consumer: name.to_owned(),
            seqs,
            floor,
            kind: match how {
                Settlement::Ack => Settle::Ack,
                Settlement::Term => Settle::Term,
            },
            seeks,
        };
        self.write_done(record).await
    }

    /// nack (`delay` given: redelivered after it) and progress (`delay` None: the ack wait
    /// starts over). Nothing is written: leases are not durable.
    pub fn touch(
        &self,
        name: &str,
        seqs: &[u64],
        delay: Option<Duration>,
    ) -> Result<(), BackendError> {
        let consumer = self.consumer(name)?;
        if delay.is_some() {
            ::metrics::counter!(metrics::NACKED).increment(seqs.len() as u64);
        }
        consumer.touch(seqs, delay, Instant::now()).map_err(|seq| {
            BackendError::NotFound(format!("seq {seq} is not in flight for consumer {name:?}"))
        })
    }

    pub async fn seek(&self, name: &str, start: Start) -> Result<Confirming<()>, BackendError> {
        self.consumer(name)?;
        let floor = match self.floor_for(start).await? {
            Floor::At(floor) => floor,
            Floor::Head => self.store.feed.head(),
        };
        let record = Record::ConsumerSeek {
            name: name.to_owned(),
            floor,
        };
        self.write_done(record).await
    }

    pub async fn delete_consumer(&self, name: &str) -> Result<Confirming<()>, BackendError> {
        self.consumer(name)?;
        let record = Record::ConsumerDeleted {
            name: name.to_owned(),
        };
        self.write_done(record).await
    }

    /// Writes one record whose receipt says nothing more than "durable".
    async fn write_done(&self, record: Record) -> Result<Confirming<()>, BackendError> {
        let written = self.write(vec![record]).await?;
        Ok(Box::pin(async move { written.await.map(drop) }))
    }
}
