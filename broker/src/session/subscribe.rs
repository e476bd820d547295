//! Subscriptions: durable (create or attach a consumer, takeover) and ephemeral. The backend
//! does the work; the session keeps reply order and what it holds.

use super::*;

impl Session {
    pub(super) fn new_sub(&mut self) -> Arc<str> {
        self.next_sub += 1;
        Arc::from(format!("{}-{}", self.id, self.next_sub))
    }

    fn subscriber(&self, sub: &Arc<str>, batch: usize) -> Subscriber {
        Subscriber {
            session: self.id,
            sub: sub.clone(),
            outbound: self.outbound.clone(),
            batch,
        }
    }

    pub(super) fn options(&self, asked: &SubscribeOptions) -> DeliveryOptions {
        let config = &self.ctx.config;
        DeliveryOptions {
            batch: batch_of(asked),
            ack_wait: asked
                .ack_wait_ms
                .map(Duration::from_millis)
                .unwrap_or(config.ack_wait),
            max_in_flight: asked
                .max_in_flight
                .map(|n| n as usize)
                .unwrap_or(config.max_in_flight),
            max_deliver: asked.max_deliver.unwrap_or(config.max_deliver),
        }
    }

    /// A subscribe, within the connection's `max_subscriptions_per_connection` (counting
    /// subscribes accepted whose turn has not come).
    pub(super) async fn subscribe(
        &mut self,
        id: Option<Id>,
        patterns: Vec<Pattern>,
        consumer: Option<String>,
        start: Option<Start>,
        asked: SubscribeOptions,
        (presence, join_leave): (bool, bool),
    ) -> Result<(), Closed> {
        let limit = self.ctx.config.max_subscriptions_per_connection;
        if self.subs.len() + self.accepted_subs >= limit {
            let message = format!("this connection already holds {limit} subscriptions, the limit");
            return self
                .send(Reply::error(id, ErrorCode::LimitExceeded, message))
                .await;
        }
        let rooms = match self.join_rooms(&patterns, presence, join_leave) {
            Ok(rooms) => rooms,
            Err(e) => return self.send(error_reply(id, e)).await,
        };
        match consumer {
            Some(name) => {
                self.subscribe_durable(id, patterns, name, start, asked, rooms)
                    .await
            }
            None => {
                let batch = batch_of(&asked);
                self.subscribe_ephemeral(id, patterns, start, batch, rooms)
                    .await
            }
        }
    }

    async fn subscribe_durable(
        &mut self,
        id: Option<Id>,
        patterns: Vec<Pattern>,
        name: String,
        start: Option<Start>,
        asked: SubscribeOptions,
        rooms: Rooms,
    ) -> Result<(), Closed> {
        let sub = self.new_sub();
        let mode = asked.mode.unwrap_or(Mode::Exclusive);
        let options = self.options(&asked);
        let spec = ConsumerSpec {
            name: name.clone(),
            patterns: patterns.clone(),
            start: start.unwrap_or(Start::All),
        };
        let principal = self.principal.clone();
        let covers = |n: &str| principal.as_ref().is_some_and(|p| p.may_use_consumer(n));
        let quota = principal.as_ref().map(|p| Quota {
            owner: &p.name,
            max: p.max_consumers,
            covers: &covers,
        });
        let created = match self.ctx.backend.create_consumer(spec, quota).await {
            Ok(created) => created,
            Err(e) => return self.send(error_reply(id, e)).await,
        };
        let attach = after_commit(created, id, move |id, ()| Completion::Attach {
            id,
            sub,
            name,
            patterns,
            mode,
            options,
            rooms,
        });
        self.accepted_subs += 1;
        self.pending.push_back(
            async move {
                match attach.await {
                    Completion::Reply(refused) => Completion::NotSubscribed(refused),
                    attach => attach,
                }
            }
            .boxed(),
        );
        Ok(())
    }

    async fn subscribe_ephemeral(
        &mut self,
        id: Option<Id>,
        patterns: Vec<Pattern>,
        start: Option<Start>,
        batch: usize,
        rooms: Rooms,
    ) -> Result<(), Closed> {
        let from = match self
            .ctx
            .backend
            .resolve_start(start.unwrap_or(Start::New))
            .await
        {
            Ok(from) => from,
            Err(e) => return self.send(error_reply(id, e)).await,
        };
        let sub = self.new_sub();
        let start = Completion::Ephemeral {
            id,
            sub,
            patterns,
            from,
            batch,
            rooms,
        };
        // Its turn comes after the replies to earlier requests, so no event overtakes them.
        self.accepted_subs += 1;
        self.pending.push_back(async move { start }.boxed());
        Ok(())
    }

    pub(super) async fn start_ephemeral(
        &mut self,
        id: Option<Id>,
        sub: Arc<str>,
        patterns: Vec<Pattern>,
        from: u64,
        batch: usize,
        mut rooms: Rooms,
    ) -> Result<(), Closed> {
        // Watched before the reply and opened right behind it: a client that saw
        // `subscribed` is told of every join and leave after it, and of none before it.
        self.watch_rooms(&mut rooms, &sub, &patterns);
        self.send_now(Reply::Subscribed {
            id: id.clone(),
            sub: sub.to_string(),
            consumer: None,
            start_seq: Some(from),
        })
        .await?;
        rooms.open();
        let to = self.subscriber(&sub, batch);
        match self.ctx.backend.follow(patterns.clone(), from, to).await {
            Ok(subscription) => {
                self.hold(sub, subscription, patterns, None, rooms);
                Ok(())
            }
            Err(e) => self.send_now(error_reply(id, e)).await,
        }
    }

    /// Attaches to the consumer (its turn in reply order has come): the `subscribed` reply
    /// goes first, so that no event of this subscription overtakes it.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn attach(
        &mut self,
        id: Option<Id>,
        sub: Arc<str>,
        name: String,
        patterns: Vec<Pattern>,
        mode: Mode,
        options: DeliveryOptions,
        mut rooms: Rooms,
    ) -> Result<(), Closed> {
        let to = self.subscriber(&sub, options.batch);
        let backend = &self.ctx.backend;
        let attaching = match backend.attach(&name, &patterns, mode, options, to).await {
            Ok(attaching) => attaching,
            Err(e) => return self.send_now(error_reply(id, e)).await,
        };
        self.watch_rooms(&mut rooms, &sub, &patterns);
        self.send_now(Reply::Subscribed {
            id,
            sub: sub.to_string(),
            consumer: Some(name.clone()),
            start_seq: Some(attaching.start_seq()),
        })
        .await?;
        rooms.open();
        self.hold(sub, attaching.start(), patterns, Some(name), rooms);
        Ok(())
    }

    fn hold(
        &mut self,
        sub: Arc<str>,
        subscription: Subscription,
        patterns: Vec<Pattern>,
        consumer: Option<String>,
        rooms: Rooms,
    ) {
        ::metrics::gauge!(metrics::SUBSCRIPTIONS).increment(1);
        let held = Held {
            subscription,
            patterns,
            consumer,
            _rooms: rooms,
        };
        self.subs.insert(sub, held);
    }
}

/// Events per frame a subscribe asked for (1: plain `event` frames).
fn batch_of(asked: &SubscribeOptions) -> usize {
    asked.batch.map_or(1, |n| n as usize)
}
