//! What a chat or a dashboard asks on opening a page: `history` and `last` (reads that
//! consume nothing), `hello` (who this connection is), `presence`, and the presence a
//! subscription holds (`presence`, `join_leave`).

use serde_json::Value;
use wharf_protocol::{EventsKind, EventsReply, Topic};

use super::*;
use crate::backend::{EventsPage, HistoryFrom, Member, Present, Watching};

/// What a subscription holds in presence: its connection present in its topics (taken when
/// the subscribe is accepted, so that a full topic refuses it), and the join and leave
/// notices it gets (from when it starts). Dropped with the subscription: the client leaves.
#[derive(Default)]
pub(super) struct Rooms {
    present: Vec<Present>,
    join_leave: bool,
    watching: Vec<Watching>,
    /// Counts this subscription among the connection's present ones while it lives.
    _counted: Option<Counted>,
}

/// One of a connection's subscriptions that hold presence (accepted or started): a `hello`
/// may not rename the client while any does.
pub(super) struct Counted(Arc<std::sync::atomic::AtomicUsize>);

impl Counted {
    fn new(count: &Arc<std::sync::atomic::AtomicUsize>) -> Counted {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Counted(count.clone())
    }
}

impl Rooms {
    /// Its `subscribed` reply is queued: joins and leaves are passed on from now on.
    pub(super) fn open(&self) {
        for watching in &self.watching {
            watching.open();
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Session {
    /// Who this connection is in presence: its JWT's subject (which nothing overrides), or
    /// its `hello`, or its connection number.
    fn member(&self) -> Member {
        let client = self
            .principal
            .as_ref()
            .and_then(|p| p.subject.clone())
            .or_else(|| self.client.clone())
            .unwrap_or_else(|| format!("conn-{}", self.id));
        Member {
            client,
            info: self.info.clone(),
            connection: self.id,
        }
    }

    /// Makes the connection present in `topics` when asked (refused past
    /// `max_presence_per_topic`).
    pub(super) fn join_rooms(
        &self,
        topics: &[Pattern],
        presence: bool,
        join_leave: bool,
    ) -> Result<Rooms, BackendError> {
        let mut rooms = Rooms {
            join_leave,
            ..Rooms::default()
        };
        if presence {
            rooms._counted = Some(Counted::new(&self.present_subs));
            let member = self.member();
            for topic in topics {
                let present = self.ctx.backend.presence().join(topic.as_str(), &member)?;
                rooms.present.push(present);
            }
        }
        Ok(rooms)
    }

    /// The subscription is starting: it hears of joins and leaves from now on, passed on
    /// once [`Rooms::open`] says its `subscribed` reply is queued.
    pub(super) fn watch_rooms(&self, rooms: &mut Rooms, sub: &Arc<str>, topics: &[Pattern]) {
        if !rooms.join_leave {
            return;
        }
        for topic in topics {
            let subscriber = Subscriber {
                session: self.id,
                sub: sub.clone(),
                outbound: self.outbound.clone(),
                batch: 1,
            };
            let watching = self
                .ctx
                .backend
                .presence()
                .watch(topic.as_str(), subscriber);
            rooms.watching.push(watching);
        }
    }

    pub(super) async fn hello(
        &mut self,
        id: Option<Id>,
        client: Option<String>,
        info: Option<Value>,
    ) -> Result<(), Closed> {
        // Subscribes with presence that are accepted and not started yet count too.
        if self.present_subs.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            let message = "say hello before subscribing with presence";
            return self
                .send(Reply::error(id, ErrorCode::BadRequest, message))
                .await;
        }
        let info = info.unwrap_or_else(|| Value::Object(Default::default()));
        let size = serde_json::to_string(&info).map_or(usize::MAX, |text| text.len());
        let max = self.ctx.config.max_presence_info_bytes;
        if size > max {
            let message = format!("`info` is {size} bytes of JSON, the limit is {max}");
            return self
                .send(Reply::error(id, ErrorCode::TooLarge, message))
                .await;
        }
        if client.is_some() {
            self.client = client;
        }
        self.info = info;
        self.send(Reply::Ok { id }).await
    }

    /// The `limit` asked, or the default; over the maximum is a `bad_request`.
    fn page_size(&self, asked: Option<u32>) -> Result<usize, String> {
        let config = &self.ctx.config;
        match asked {
            None => Ok(config.history_default_limit),
            Some(n) if (n as usize) <= config.history_max_limit => Ok(n as usize),
            Some(n) => Err(format!(
                "limit {n} is over the maximum, {} (history_max_limit)",
                config.history_max_limit
            )),
        }
    }

    /// `history` and `last` read without holding up the connection; the reply takes its
    /// turn in request order.
    pub(super) async fn read_events(
        &mut self,
        id: Option<Id>,
        kind: EventsKind,
        pattern: Pattern,
        limit: Option<u32>,
        from: HistoryFrom,
    ) -> Result<(), Closed> {
        let limit = match self.page_size(limit) {
            Ok(limit) => limit,
            Err(message) => {
                return self
                    .send(Reply::error(id, ErrorCode::BadRequest, message))
                    .await
            }
        };
        let backend = self.ctx.backend.clone();
        let reads = self.reads.clone();
        self.pending.push_back(
            async move {
                // A few at a time per connection: each may hold a page of events.
                let _turn = reads.acquire_owned().await;
                let page = match kind {
                    EventsKind::History => backend.history(&pattern, limit, from).await,
                    EventsKind::Last => backend.last(&pattern, limit).await,
                };
                match page {
                    Ok(page) => Completion::Json(events_reply(kind, id.as_ref(), &page)),
                    Err(e) => Completion::Reply(error_reply(id, e)),
                }
            }
            .boxed(),
        );
        Ok(())
    }

    pub(super) async fn presence(&mut self, id: Option<Id>, topic: Topic) -> Result<(), Closed> {
        let clients = self.ctx.backend.presence().list(topic.as_str());
        let reply = Reply::Presence {
            id,
            topic: topic.into_string(),
            count: clients.len(),
            clients,
        };
        self.send(reply).await
    }
}

fn events_reply(kind: EventsKind, id: Option<&Id>, page: &EventsPage) -> String {
    EventsReply {
        kind,
        id,
        events: &page.events,
        more: page.more,
        first_seq: page.first_seq,
    }
    .to_json()
}
