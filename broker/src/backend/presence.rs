//! Who is present in which topic: live state, never written to the log.
//!
//! A connection is present in a topic while it holds a subscription with `presence`; a
//! client (its `hello` id) is present while any of its connections is. [`Presence`] counts
//! this node's connections per client and, in a cluster, what the other nodes report (the
//! cluster backend feeds those in with [`Presence::set_remote`]), and tells the subscriptions
//! watching a topic (`join_leave`) when a client's first connection arrives and its last one
//! goes, wherever those connections are. Both backends hold one; only the cluster backend
//! shares it between nodes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;
use wharf_protocol::{format_time_ms, now_ms, PresenceChange, PresentClient, Reply};

use super::contract::{BackendError, Subscriber};
use crate::outbound::Frame;

/// Who a connection is in presence.
#[derive(Debug, Clone)]
pub struct Member {
    pub client: String,
    pub info: Value,
    /// The connection (its session id on this node).
    pub connection: u64,
}

/// What one node reports of one client in one topic (the cluster backend's shared record).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeClient {
    pub client: String,
    pub info: Value,
    pub connections: u32,
    /// When its earliest connection on that node joined, ms since the Unix epoch.
    pub since: u64,
}

/// Presence in every topic; cheap to share.
pub struct Presence {
    max_per_topic: usize,
    /// Whether changes are tracked for sharing with other nodes (the cluster backend).
    shared: bool,
    rooms: Mutex<HashMap<String, Room>>,
    /// Topics whose local part changed since the cluster backend last shared them.
    changed: Mutex<HashSet<String>>,
    changes: Notify,
    next_watcher: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Room {
    clients: BTreeMap<String, Client>,
    watchers: Vec<Watcher>,
}

/// The most joins and leaves kept for a watch not yet opened (its `subscribed` reply is on
/// its way); more closes the connection as a slow consumer, as a full queue does.
const MAX_HELD: usize = 1024;

struct Watcher {
    id: u64,
    to: Subscriber,
    /// Until [`Watching::open`]: what it is told, kept so that it follows the reply.
    held: Option<Vec<Frame>>,
}

impl Watcher {
    fn push(&mut self, frame: Frame) {
        match &mut self.held {
            Some(held) if held.len() < MAX_HELD => held.push(frame),
            Some(_) => self.to.outbound.evict_slow(),
            // A notice lost would leave the watcher's list wrong for good: a connection
            // whose queue is full is closed as a slow consumer instead (it reconnects and
            // reads `presence` again).
            None => {
                if self.to.outbound.try_send(frame).is_err() {
                    self.to.outbound.evict_slow();
                }
            }
        }
    }
}

#[derive(Default)]
struct Client {
    /// The info of the connection that joined last.
    info: Value,
    /// This node's connections: how many of each one's subscriptions hold it here, and
    /// when it joined.
    local: HashMap<u64, (u32, u64)>,
    /// Other nodes' reports.
    remote: HashMap<String, NodeClient>,
}

impl Client {
    fn connections(&self) -> u32 {
        self.local.len() as u32 + self.remote.values().map(|r| r.connections).sum::<u32>()
    }

    fn since(&self) -> u64 {
        let local = self.local.values().map(|&(_, at)| at);
        let remote = self.remote.values().map(|r| r.since);
        local.chain(remote).min().unwrap_or(0)
    }

    fn info(&self) -> Value {
        if !self.local.is_empty() || self.remote.is_empty() {
            return self.info.clone();
        }
        self.remote
            .values()
            .next()
            .map(|r| r.info.clone())
            .unwrap_or_default()
    }
}

impl Room {
    fn tell(&mut self, topic: &str, client: &str, info: &Value, joined: bool) {
        for watcher in &mut self.watchers {
            let change = PresenceChange {
                sub: watcher.to.sub.to_string(),
                topic: topic.to_owned(),
                client: client.to_owned(),
                info: info.clone(),
            };
            let reply = if joined {
                Reply::Join(change)
            } else {
                Reply::Leave(change)
            };
            watcher.push(Frame::reply(&reply));
        }
    }
}

/// Keeps a connection present in a topic; dropping it leaves.
pub struct Present {
    presence: Arc<Presence>,
    topic: String,
    client: String,
    connection: u64,
}

impl Drop for Present {
    fn drop(&mut self) {
        self.presence
            .leave(&self.topic, &self.client, self.connection);
    }
}

/// Keeps a subscription told of joins and leaves in a topic; dropping it stops that.
pub struct Watching {
    presence: Arc<Presence>,
    topic: String,
    id: u64,
}

impl Watching {
    /// Passes on what was kept, then everything as it happens.
    pub fn open(&self) {
        let mut rooms = self.presence.rooms();
        let Some(watcher) = rooms
            .get_mut(&self.topic)
            .and_then(|room| room.watchers.iter_mut().find(|w| w.id == self.id))
        else {
            return;
        };
        for frame in watcher.held.take().unwrap_or_default() {
            watcher.push(frame);
        }
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let mut rooms = self.presence.rooms();
        if let Some(room) = rooms.get_mut(&self.topic) {
            room.watchers.retain(|w| w.id != self.id);
            if room.clients.is_empty() && room.watchers.is_empty() {
                rooms.remove(&self.topic);
            }
        }
    }
}

impl Presence {
    /// `shared`: the cluster backend shares this node's part (see [`Presence::changed`]).
    pub fn new(max_per_topic: usize, shared: bool) -> Arc<Presence> {
        Arc::new(Presence {
            max_per_topic,
            shared,
            rooms: Mutex::default(),
            changed: Mutex::default(),
            changes: Notify::new(),
            next_watcher: Default::default(),
        })
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<String, Room>> {
        // Nothing panics while holding it; a poisoned lock still holds consistent rooms.
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn mark_changed(&self, topic: &str) {
        if !self.shared {
            return;
        }
        let mut changed = self.changed.lock().unwrap_or_else(|e| e.into_inner());
        changed.insert(topic.to_owned());
        self.changes.notify_one();
    }

    /// Makes `member`'s connection present in `topic`. A client new to the topic past
    /// `max_per_topic` is refused.
    pub fn join(self: &Arc<Self>, topic: &str, member: &Member) -> Result<Present, BackendError> {
        let mut rooms = self.rooms();
        let room = rooms.entry(topic.to_owned()).or_default();
        let is_new = match room.clients.get(&member.client) {
            Some(c) => c.connections() == 0,
            None => true,
        };
        if is_new && room.clients.len() >= self.max_per_topic {
            let full = room.clients.is_empty() && room.watchers.is_empty();
            if full {
                rooms.remove(topic);
            }
            return Err(BackendError::LimitExceeded(format!(
                "topic {topic} has {} clients present, the limit (max_presence_per_topic)",
                self.max_per_topic
            )));
        }
        let client = room.clients.entry(member.client.clone()).or_default();
        client.info = member.info.clone();
        let entry = client
            .local
            .entry(member.connection)
            .or_insert((0, now_ms()));
        entry.0 += 1;
        if is_new {
            room.tell(topic, &member.client, &member.info, true);
        }
        drop(rooms);
        self.mark_changed(topic);
        Ok(Present {
            presence: self.clone(),
            topic: topic.to_owned(),
            client: member.client.clone(),
            connection: member.connection,
        })
    }

    fn leave(&self, topic: &str, client_id: &str, connection: u64) {
        let mut rooms = self.rooms();
        let Some(room) = rooms.get_mut(topic) else {
            return;
        };
        let Some(client) = room.clients.get_mut(client_id) else {
            return;
        };
        if let Some(entry) = client.local.get_mut(&connection) {
            entry.0 -= 1;
            if entry.0 == 0 {
                client.local.remove(&connection);
            }
        }
        if client.connections() == 0 {
            let info = client.info.clone();
            room.clients.remove(client_id);
            room.tell(topic, client_id, &info, false);
        }
        if room.clients.is_empty() && room.watchers.is_empty() {
            rooms.remove(topic);
        }
        drop(rooms);
        self.mark_changed(topic);
    }

    /// Tells `subscriber` of joins and leaves in `topic` from now on, once
    /// [`Watching::open`] says its `subscribed` reply is queued: what happens meanwhile is
    /// kept until then, so that nothing between the reply and the watch is missed and
    /// nothing comes before the reply.
    pub fn watch(self: &Arc<Self>, topic: &str, subscriber: Subscriber) -> Watching {
        let id = self
            .next_watcher
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.rooms()
            .entry(topic.to_owned())
            .or_default()
            .watchers
            .push(Watcher {
                id,
                to: subscriber,
                held: Some(Vec::new()),
            });
        Watching {
            presence: self.clone(),
            topic: topic.to_owned(),
            id,
        }
    }

    /// The clients present in `topic`, by client id.
    pub fn list(&self, topic: &str) -> Vec<PresentClient> {
        let rooms = self.rooms();
        let Some(room) = rooms.get(topic) else {
            return Vec::new();
        };
        room.clients
            .iter()
            .filter(|(_, c)| c.connections() > 0)
            .map(|(id, c)| PresentClient {
                client: id.clone(),
                info: c.info(),
                connections: c.connections(),
                since: format_time_ms(c.since()),
            })
            .collect()
    }

    /// What this node holds in `topic`, one record per client, for the other nodes.
    pub fn local_part(&self, topic: &str) -> Vec<NodeClient> {
        let rooms = self.rooms();
        let Some(room) = rooms.get(topic) else {
            return Vec::new();
        };
        room.clients
            .iter()
            .filter(|(_, c)| !c.local.is_empty())
            .map(|(id, c)| NodeClient {
                client: id.clone(),
                info: c.info.clone(),
                connections: c.local.len() as u32,
                since: c.local.values().map(|&(_, at)| at).min().unwrap_or(0),
            })
            .collect()
    }

    /// Topics where this node holds someone present.
    pub fn local_topics(&self) -> Vec<String> {
        self.rooms()
            .iter()
            .filter(|(_, room)| room.clients.values().any(|c| !c.local.is_empty()))
            .map(|(topic, _)| topic.clone())
            .collect()
    }

    /// Waits until some topic's local part changed, and takes those topics.
    pub async fn changed(&self) -> Vec<String> {
        loop {
            let taken: Vec<String> = {
                let mut changed = self.changed.lock().unwrap_or_else(|e| e.into_inner());
                changed.drain().collect()
            };
            if !taken.is_empty() {
                return taken;
            }
            self.changes.notified().await;
        }
    }

    /// Replaces what node `node` reports of `topic` (an empty list: nobody there), telling
    /// watchers of the clients that arrive or go with it. Remote reports are not held to
    /// `max_per_topic`: each node enforces it when its own connections join.
    pub fn set_remote(&self, node: &str, topic: &str, clients: Vec<NodeClient>) {
        let mut rooms = self.rooms();
        if clients.is_empty() && !rooms.contains_key(topic) {
            return;
        }
        let room = rooms.entry(topic.to_owned()).or_default();
        let mut reported: HashMap<String, NodeClient> =
            clients.into_iter().map(|c| (c.client.clone(), c)).collect();
        let ids: Vec<String> = room.clients.keys().cloned().collect();
        for id in ids {
            let Some(client) = room.clients.get_mut(&id) else {
                continue;
            };
            match reported.remove(&id) {
                Some(report) => {
                    client.remote.insert(node.to_owned(), report);
                }
                None => {
                    if client.remote.remove(node).is_some() && client.connections() == 0 {
                        let info = client.info.clone();
                        room.clients.remove(&id);
                        room.tell(topic, &id, &info, false);
                    }
                }
            }
        }
        for (id, report) in reported {
            let info = report.info.clone();
            let client = room.clients.entry(id.clone()).or_default();
            client.info = info.clone();
            client.remote.insert(node.to_owned(), report);
            room.tell(topic, &id, &info, true);
        }
        if room.clients.is_empty() && room.watchers.is_empty() {
            rooms.remove(topic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::{Outbound, Queued};
    use std::time::Duration;

    fn member(client: &str, connection: u64) -> Member {
        Member {
            client: client.into(),
            info: Value::Null,
            connection,
        }
    }

    #[test]
    fn a_client_counts_once_however_many_connections_it_has() {
        let presence = Presence::new(10, false);
        let a1 = presence.join("room", &member("ana", 1)).unwrap();
        let a2 = presence.join("room", &member("ana", 2)).unwrap();
        let list = presence.list("room");
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].connections, 2);
        drop(a1);
        assert_eq!(presence.list("room")[0].connections, 1);
        drop(a2);
        assert!(presence.list("room").is_empty());
    }

    #[test]
    fn remote_reports_add_to_local_ones_and_go_with_their_node() {
        let presence = Presence::new(10, false);
        let _a = presence.join("room", &member("ana", 1)).unwrap();
        let report = |client: &str| NodeClient {
            client: client.into(),
            info: Value::Null,
            connections: 2,
            since: 1,
        };
        presence.set_remote("n2", "room", vec![report("ana"), report("bo")]);
        let list = presence.list("room");
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].connections, 3);
        presence.set_remote("n2", "room", Vec::new());
        let list = presence.list("room");
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].connections, 1);
    }

    #[test]
    fn a_full_topic_refuses_a_new_client_but_not_another_connection() {
        let presence = Presence::new(1, false);
        let _a = presence.join("room", &member("ana", 1)).unwrap();
        assert!(presence.join("room", &member("bo", 2)).is_err());
        assert!(presence.join("room", &member("ana", 3)).is_ok());
    }

    #[test]
    fn a_watch_tells_what_happened_before_it_opened_only_once_open() {
        let (frames, mut queue) = tokio::sync::mpsc::channel(16);
        let (evict, _evicted) = tokio::sync::mpsc::channel(1);
        let (ended, _ended) = tokio::sync::mpsc::unbounded_channel();
        let outbound = Outbound::new(frames, 1 << 20, evict, ended, Duration::from_secs(1));
        let presence = Arc::new(Presence::new(10, false));
        let subscriber = Subscriber {
            session: 1,
            sub: Arc::from("1-1"),
            outbound,
            batch: 1,
        };
        let watching = presence.watch("room", subscriber);
        // ana joins while the watcher's `subscribed` reply is on its way: kept.
        let _ana = presence.join("room", &member("ana", 2)).unwrap();
        assert!(
            queue.try_recv().is_err(),
            "a join went before the watch opened"
        );
        watching.open();
        let told = |queue: &mut tokio::sync::mpsc::Receiver<Queued>| match queue.try_recv() {
            Ok(Queued {
                frame: Frame::Json(text),
                ..
            }) => text,
            _ => panic!("nothing told"),
        };
        assert!(told(&mut queue).contains(r#""client":"ana""#));
        // Once open, as it happens.
        let _bo = presence.join("room", &member("bo", 3)).unwrap();
        assert!(told(&mut queue).contains(r#""client":"bo""#));
    }
}
