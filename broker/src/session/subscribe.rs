//! Subscriptions: durable (create or attach a consumer, takeover) and ephemeral.

use super::*;

impl Session {
    pub(super) fn new_sub(&mut self) -> Arc<str> {
        self.next_sub += 1;
        Arc::from(format!("{}-{}", self.id, self.next_sub))
    }

    /// The first seq `start` points at.
    pub(super) async fn resolve_start(&mut self, start: Start) -> Result<u64, LogError> {
        let head = self.ctx.store.feed.head();
        let first = self.ctx.store.feed.first_seq();
        match start {
            Start::All => Ok(first),
            Start::New => Ok(head + 1),
            Start::Seq(seq) => Ok(seq.max(first)),
            Start::TimeMs(ms) => {
                let mut cursor = self.ctx.store.log.cursor(1);
                let found = tokio::task::spawn_blocking(move || cursor.first_at_or_after(ms, head))
                    .await
                    .map_err(|e| LogError::task("time lookup", e))??;
                Ok(found.unwrap_or(head + 1))
            }
        }
    }

    /// The floor a consumer created (or sought) with `start` gets.
    pub(super) async fn floor_for(&mut self, start: Start) -> Result<Floor, LogError> {
        // The floor of "all" and of a seq is fixed now; only "new" depends on what the log
        // holds when the record is written, so the writer resolves it.
        let first = self.ctx.store.feed.first_seq();
        Ok(match start {
            Start::New => Floor::Head,
            Start::All => Floor::At(first - 1),
            Start::Seq(seq) => Floor::At(seq.max(first) - 1),
            time => match self.resolve_start(time).await? {
                first if first > self.ctx.store.feed.head() => Floor::Head,
                first => Floor::At(first - 1),
            },
        })
    }

    pub(super) fn options(&self, asked: &SubscribeOptions) -> Options {
        let config = &self.ctx.config;
        Options {
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

    /// Why creating consumer `name` would pass a limit: `max_consumers`, or the token's
    /// `max_consumers` over the consumers its names cover. Creations still in flight count
    /// (for the token's limit too: they may be its own).
    pub(super) fn consumer_limit(&self, name: &str) -> Option<String> {
        let consumers = &self.ctx.store.consumers;
        let creating = self
            .ctx
            .creating_consumers
            .load(std::sync::atomic::Ordering::Acquire);
        let limit = self.ctx.config.max_consumers;
        if consumers.len() + creating >= limit {
            return Some(format!(
                "the broker holds {limit} consumers (max_consumers); cannot create {name:?}"
            ));
        }
        let who = self.principal.as_ref()?;
        let covered = consumers
            .names()
            .iter()
            .filter(|n| who.may_use_consumer(n))
            .count();
        (covered + creating >= who.max_consumers).then(|| {
            format!(
                "token {:?} may hold {} consumers (its max_consumers); cannot create {name:?}",
                who.name, who.max_consumers
            )
        })
    }

    pub(super) async fn subscribe_durable(
        &mut self,
        id: Option<Id>,
        patterns: Vec<Pattern>,
        name: String,
        start: Option<Start>,
        asked: SubscribeOptions,
    ) -> Result<(), ()> {
        let sub = self.new_sub();
        let mode = asked.mode.unwrap_or(Mode::Exclusive);
        let options = self.options(&asked);
        if let Some(consumer) = self.ctx.store.consumers.get(&name) {
            if !consumer.same_patterns(&patterns) {
                return self.send(conflict(id, &consumer, &patterns)).await;
            }
            let attach = Completion::Attach {
                id,
                sub,
                name,
                patterns,
                mode,
                options,
            };
            self.accepted_subs += 1;
            self.pending.push_back(async move { attach }.boxed());
            return Ok(());
        }
        if let Some(refusal) = self.consumer_limit(&name) {
            let reply = Reply::error(id, ErrorCode::LimitExceeded, refusal);
            return self.send(reply).await;
        }
        let floor = match self.floor_for(start.unwrap_or(Start::All)).await {
            Ok(floor) => floor,
            Err(e) => return self.send(internal(id, e)).await,
        };
        let creating = CreatingConsumer::new(&self.ctx.creating_consumers);
        let entry = Record::consumer_created(
            name.clone(),
            patterns.iter().map(|p| p.as_str().to_owned()).collect(),
            floor,
        );
        let pending = match self.ctx.store.log.submit(vec![entry]).await {
            Ok(pending) => pending,
            Err(e) => return self.send(internal(id, e)).await,
        };
        let attach = after_commit(pending, id, move |id, _| Completion::Attach {
            id,
            sub,
            name,
            patterns,
            mode,
            options,
        });
        self.accepted_subs += 1;
        self.pending.push_back(
            async move {
                let attach = attach.await;
                drop(creating);
                match attach {
                    Completion::Reply(refused) => Completion::NotSubscribed(refused),
                    attach => attach,
                }
            }
            .boxed(),
        );
        Ok(())
    }

    pub(super) async fn subscribe_ephemeral(
        &mut self,
        id: Option<Id>,
        patterns: Vec<Pattern>,
        start: Option<Start>,
    ) -> Result<(), ()> {
        let from = match self.resolve_start(start.unwrap_or(Start::New)).await {
            Ok(from) => from,
            Err(e) => return self.send(internal(id, e)).await,
        };
        let sub = self.new_sub();
        let start = Completion::Ephemeral {
            id,
            sub,
            patterns,
            from,
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
    ) -> Result<(), ()> {
        self.send_now(Reply::Subscribed {
            id,
            sub: sub.to_string(),
            consumer: None,
            start_seq: Some(from),
        })
        .await?;
        let source = EventSource::new(
            self.ctx.store.feed.clone(),
            self.ctx.store.log.clone(),
            from,
            patterns.clone(),
        );
        let task = tokio::spawn(run_ephemeral(sub.clone(), self.outbound.clone(), source));
        ::metrics::gauge!(metrics::SUBSCRIPTIONS).increment(1);
        self.subs.insert(
            sub,
            Subscription::Ephemeral {
                task: task.abort_handle(),
                patterns,
            },
        );
        Ok(())
    }

    pub(super) async fn attach(
        &mut self,
        id: Option<Id>,
        sub: Arc<str>,
        consumer: Arc<Consumer>,
        mode: Mode,
        options: Options,
    ) -> Result<(), ()> {
        let attached =
            match consumer.attach(self.id, sub.clone(), self.outbound.clone(), mode, options) {
                Ok(attached) => attached,
                Err(ModeConflict(held)) => {
                    let message = format!(
                        "consumer {:?} is attached in {} mode; subscribe with the same mode",
                        consumer.name,
                        mode_name(held)
                    );
                    return self
                        .send(Reply::error(id, ErrorCode::ConsumerConflict, message))
                        .await;
                }
            };
        for old in attached.replaced {
            tracing::info!(
                consumer = consumer.name,
                from = old.session,
                to = self.id,
                "consumer taken over"
            );
            let notice = Reply::Unsubscribed {
                sub: old.sub.to_string(),
                reason: "taken_over".into(),
            };
            // The old connection is often half-dead; never wait on it.
            let _best_effort = old.outbound.try_send(Message::text(notice.to_json()));
        }
        // The reply goes first so that no event of this subscription overtakes it.
        let (_, from) = consumer.start();
        self.send_now(Reply::Subscribed {
            id,
            sub: sub.to_string(),
            consumer: Some(consumer.name.clone()),
            start_seq: Some(from),
        })
        .await?;
        let delivery = DurableDelivery {
            consumer: consumer.clone(),
            generation: attached.generation,
            epoch: attached.epoch,
            kick: attached.kick,
            sub: sub.clone(),
            outbound: self.outbound.clone(),
            source: EventSource::new(
                self.ctx.store.feed.clone(),
                self.ctx.store.log.clone(),
                from,
                consumer.patterns.clone(),
            ),
            state: self.ctx.store.state.clone(),
            log: self.ctx.store.log.clone(),
            gap_told: 0,
        };
        let task = tokio::spawn(delivery.run());
        ::metrics::gauge!(metrics::SUBSCRIPTIONS).increment(1);
        consumer.set_task(attached.generation, task.abort_handle());
        self.subs.insert(sub, Subscription::Durable { consumer });
        Ok(())
    }
}
