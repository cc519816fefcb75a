//! Broadcast and rooms: send one message to a room, to everyone, or to everyone but the
//! sender, over any mix of transports.
//!
//! A [`Hub`] holds sessions ([`add`](Hub::add), [`join`](Hub::join)) and forgets each one
//! when it closes. Sending never waits for a member: each recipient's message is queued on
//! its session at once or refused at once, so a slow member never stalls the others. A
//! member whose session already holds its limit of unacknowledged bytes does not get the
//! message (it is dropped for that member alone) and the sender is told, member by member,
//! in the [`Report`] its [`Delivery`] resolves to — the same per-recipient outcome a
//! [`Session::send`] gives, combined.
//!
//! ```
//! use browserver_runtime::{Hub, Session};
//!
//! async fn chat(hub: Hub, session: Session) {
//!     hub.join(&session, "lobby").expect("room");
//!     while let Some(message) = session.recv().await {
//!         // To everyone else in the lobby; the report says who got it.
//!         let report = hub.to("lobby").except(&session).send(message).await;
//!         for (member, error) in report.failed {
//!             tracing::debug!(?member, %error, "not delivered");
//!         }
//!     }
//! }
//! # let _ = chat;
//! ```
//!
//! **Several nodes.** A hub delivers to the sessions of its own process. To spread rooms over
//! several nodes, give it a [`Relay`]: every message sent through the hub is also handed to
//! the relay (room and message), which carries it to the other nodes (over Redis pub/sub,
//! say), where it is handed to their hubs' [`deliver_local`](Hub::deliver_local). Membership
//! stays local: a member lives on the node that holds its session, so "everyone but the
//! sender" needs no coordination.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde::Serialize;

use crate::error::SendError;
use crate::message::Message;
use crate::session::{Ack, Session};

/// A hub's bounds (every one with a default; see [`Default`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HubOptions {
    /// Sessions a hub holds at once (default 100 000). Past it `add` and `join` fail with
    /// [`HubError::Full`].
    pub max_members: usize,
    /// Rooms one session may be in at once (default 64).
    pub max_rooms_per_member: usize,
    /// Bytes of a room name (default 256).
    pub max_room_name_bytes: usize,
}

impl Default for HubOptions {
    fn default() -> Self {
        HubOptions {
            max_members: 100_000,
            max_rooms_per_member: 64,
            max_room_name_bytes: 256,
        }
    }
}

impl HubOptions {
    /// These options with `max_members` changed.
    pub fn max_members(mut self, n: usize) -> Self {
        self.max_members = n;
        self
    }

    /// These options with `max_rooms_per_member` changed.
    pub fn max_rooms_per_member(mut self, n: usize) -> Self {
        self.max_rooms_per_member = n;
        self
    }

    /// These options with `max_room_name_bytes` changed.
    pub fn max_room_name_bytes(mut self, n: usize) -> Self {
        self.max_room_name_bytes = n;
        self
    }
}

/// Why a session could not be added to a hub or a room.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// The hub holds its limit of sessions.
    #[error("the hub is full ({limit} sessions)")]
    Full {
        /// [`HubOptions::max_members`].
        limit: usize,
    },
    /// The session is in its limit of rooms.
    #[error("too many rooms for one session (limit {limit})")]
    TooManyRooms {
        /// [`HubOptions::max_rooms_per_member`].
        limit: usize,
    },
    /// The room name is longer than the limit.
    #[error("room name longer than {limit} bytes")]
    RoomName {
        /// [`HubOptions::max_room_name_bytes`].
        limit: usize,
    },
    /// The session is closed.
    #[error("the session is closed")]
    Closed,
}

/// Carries a hub's sends to the hubs of other nodes (see the module docs).
pub trait Relay: Send + Sync + 'static {
    /// A message this node's hub sent to `room` (`None`: to everyone). Called after local
    /// delivery was queued; must not block (queue it and return).
    fn publish(&self, room: Option<&str>, message: &Message);
}

/// A set of sessions and their rooms. Cheap to clone; clones are the same hub.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    options: HubOptions,
    rooms: Mutex<Rooms>,
    relay: Option<Arc<dyn Relay>>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rooms = self.lock();
        f.debug_struct("Hub")
            .field("members", &rooms.members.len())
            .field("rooms", &rooms.rooms.len())
            .finish()
    }
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new(HubOptions::default())
    }
}

/// A member's key: its session's shared state, which every clone of the session points to.
type Key = usize;

fn key(session: &Session) -> Key {
    Arc::as_ptr(&session.shared) as usize
}

impl Hub {
    /// An empty hub.
    pub fn new(options: HubOptions) -> Hub {
        Hub::build(options, None)
    }

    /// An empty hub whose sends also go to `relay` (for hubs on several nodes).
    pub fn with_relay(options: HubOptions, relay: Arc<dyn Relay>) -> Hub {
        Hub::build(options, Some(relay))
    }

    fn build(options: HubOptions, relay: Option<Arc<dyn Relay>>) -> Hub {
        Hub {
            inner: Arc::new(Inner {
                rooms: Mutex::new(Rooms::new(options.clone())),
                options,
                relay,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Rooms> {
        // A panic while holding the lock cannot leave the tables half-changed (every change
        // is one insert or remove), so a poisoned lock is still good.
        self.inner
            .rooms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds `session` to the hub (in no room yet): it gets what is sent to everyone. It
    /// leaves the hub, and every room, when it closes. Adding a member again changes nothing.
    /// Must be called within a tokio runtime (a task waits for the session to close).
    pub fn add(&self, session: &Session) -> Result<(), HubError> {
        if session.state() == crate::State::Closed {
            return Err(HubError::Closed);
        }
        let added = self.lock().add(key(session), session)?;
        if added {
            let hub = Arc::downgrade(&self.inner);
            let session = session.clone();
            tokio::spawn(async move {
                session.closed().await;
                forget(&hub, &session);
            });
        }
        Ok(())
    }

    /// Puts `session` in `room` (adding it to the hub first if needed).
    pub fn join(&self, session: &Session, room: &str) -> Result<(), HubError> {
        if room.len() > self.inner.options.max_room_name_bytes {
            return Err(HubError::RoomName {
                limit: self.inner.options.max_room_name_bytes,
            });
        }
        self.add(session)?;
        self.lock().join(key(session), room)
    }

    /// Takes `session` out of `room`; false if it was not in it.
    pub fn leave(&self, session: &Session, room: &str) -> bool {
        self.lock().leave(key(session), room)
    }

    /// Takes `session` out of the hub and every room; false if it was not in the hub.
    pub fn remove(&self, session: &Session) -> bool {
        self.lock().remove(key(session))
    }

    /// The rooms `session` is in, sorted.
    pub fn rooms_of(&self, session: &Session) -> Vec<String> {
        self.lock().rooms_of(key(session))
    }

    /// The members of `room`.
    pub fn members(&self, room: &str) -> Vec<Session> {
        self.lock().sessions(Some(room), None)
    }

    /// How many sessions the hub holds.
    pub fn len(&self) -> usize {
        self.lock().members.len()
    }

    /// Whether the hub holds no session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The members of `room`, to send to.
    pub fn to(&self, room: impl Into<String>) -> Recipients<'_> {
        Recipients {
            hub: self,
            room: Some(room.into()),
            except: None,
        }
    }

    /// Every member, to send to.
    pub fn everyone(&self) -> Recipients<'_> {
        Recipients {
            hub: self,
            room: None,
            except: None,
        }
    }

    /// Sends `message` to every member (`everyone().send(message)`).
    pub fn broadcast(&self, message: impl Into<Message>) -> Delivery {
        self.everyone().send(message)
    }

    /// Delivers a message that another node's hub sent (see [`Relay`]) to this node's
    /// members of `room` (`None`: every member). It is not relayed again.
    pub fn deliver_local(&self, room: Option<&str>, message: Message) -> Delivery {
        let members = self.lock().sessions(room, None);
        Delivery::new(members, &message)
    }

    fn send(&self, room: Option<&str>, except: Option<Key>, message: Message) -> Delivery {
        let members = self.lock().sessions(room, except);
        let delivery = Delivery::new(members, &message);
        if let Some(relay) = &self.inner.relay {
            relay.publish(room, &message);
        }
        delivery
    }
}

fn forget(hub: &Weak<Inner>, session: &Session) {
    if let Some(inner) = hub.upgrade() {
        Hub { inner }.remove(session);
    }
}

/// Who a message goes to: a room or everyone, optionally but one session.
#[derive(Debug)]
#[must_use = "recipients do nothing until a send"]
pub struct Recipients<'a> {
    hub: &'a Hub,
    room: Option<String>,
    except: Option<Key>,
}

impl Recipients<'_> {
    /// Everyone chosen but `session` (the sender, typically).
    pub fn except(mut self, session: &Session) -> Self {
        self.except = Some(key(session));
        self
    }

    /// Sends `message` to each recipient (each gets its own copy, queued at once or refused).
    pub fn send(self, message: impl Into<Message>) -> Delivery {
        self.hub
            .send(self.room.as_deref(), self.except, message.into())
    }

    /// Sends `value` as JSON text to each recipient. A value that cannot be serialised is
    /// sent to no one (the report's `error` says why).
    pub fn send_json<T: Serialize + ?Sized>(self, value: &T) -> Delivery {
        match Message::from_json(value) {
            Ok(message) => self.send(message),
            Err(e) => Delivery::refused(SendError::Invalid(e.to_string())),
        }
    }

    /// Sends a text message (on BrowserChannel it must be JSON text).
    pub fn send_text(self, text: impl Into<String>) -> Delivery {
        self.send(Message::Text(text.into()))
    }

    /// Sends a binary message. BrowserChannel members cannot take it: each is reported with
    /// [`SendError::Unsupported`].
    pub fn send_binary(self, data: impl Into<bytes::Bytes>) -> Delivery {
        self.send(Message::Binary(data.into()))
    }
}

/// The outcome of one hub send, member by member.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Report {
    /// How many members the message was sent to.
    pub recipients: usize,
    /// How many acknowledged it (a plain WebSocket member: had it written).
    pub acknowledged: usize,
    /// The members that did not get it, and why: [`SendError::BufferFull`] for a member that
    /// does not keep up (the message was dropped for it alone), [`SendError::Closed`] for one
    /// that went away, [`SendError::Unsupported`] for binary to a BrowserChannel member.
    pub failed: Vec<(Session, SendError)>,
    /// The members that had not answered when [`Delivery::within`] gave up waiting (empty
    /// when the delivery was awaited to the end).
    pub pending: Vec<Session>,
    /// Set when the message was sent to no one (it could not be serialised).
    pub error: Option<SendError>,
}

impl Report {
    /// Whether every recipient acknowledged the message.
    pub fn all_acknowledged(&self) -> bool {
        self.error.is_none() && self.failed.is_empty() && self.pending.is_empty()
    }
}

type Outcome = Pin<Box<dyn Future<Output = (usize, Result<(), SendError>)> + Send>>;

/// Every recipient's acknowledgement, combined: resolves to a [`Report`] once each has
/// resolved. The messages are queued whether it is awaited or dropped.
///
/// Awaiting it waits for the slowest member (one that never acknowledges holds it until its
/// session closes); [`within`](Self::within) bounds the wait and reports who had not
/// answered.
#[must_use = "a Delivery only reports; dropping it is fine if the outcome does not matter"]
pub struct Delivery {
    members: Vec<Session>,
    resolved: Vec<bool>,
    outcomes: FuturesUnordered<Outcome>,
    acknowledged: usize,
    failed: Vec<(usize, SendError)>,
    error: Option<SendError>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("recipients", &self.members.len())
            .field("unresolved", &self.outcomes.len())
            .finish()
    }
}

impl Delivery {
    fn new(members: Vec<Session>, message: &Message) -> Delivery {
        let outcomes = members
            .iter()
            .enumerate()
            .map(|(i, member)| {
                let ack: Ack = member.send(message.clone());
                let outcome: Outcome = Box::pin(async move { (i, ack.await) });
                outcome
            })
            .collect();
        Delivery {
            resolved: vec![false; members.len()],
            members,
            outcomes,
            acknowledged: 0,
            failed: Vec::new(),
            error: None,
        }
    }

    fn refused(error: SendError) -> Delivery {
        Delivery {
            members: Vec::new(),
            resolved: Vec::new(),
            outcomes: FuturesUnordered::new(),
            acknowledged: 0,
            failed: Vec::new(),
            error: Some(error),
        }
    }

    /// How many members the message was sent to.
    pub fn recipients(&self) -> usize {
        self.members.len()
    }

    /// Waits at most `limit` for the recipients' acknowledgements; those that had not
    /// resolved by then are in [`Report::pending`].
    pub async fn within(mut self, limit: std::time::Duration) -> Report {
        let progress = std::future::poll_fn(|cx| self.poll_progress(cx));
        let _ = tokio::time::timeout(limit, progress).await;
        self.report()
    }

    fn poll_progress(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while let Poll::Ready(next) = self.outcomes.poll_next_unpin(cx) {
            let Some((i, result)) = next else {
                return Poll::Ready(());
            };
            if let Some(done) = self.resolved.get_mut(i) {
                *done = true;
            }
            match result {
                Ok(()) => self.acknowledged += 1,
                Err(e) => self.failed.push((i, e)),
            }
        }
        Poll::Pending
    }

    fn report(&mut self) -> Report {
        let members = &self.members;
        Report {
            recipients: members.len(),
            acknowledged: self.acknowledged,
            failed: std::mem::take(&mut self.failed)
                .into_iter()
                .filter_map(|(i, e)| Some((members.get(i)?.clone(), e)))
                .collect(),
            pending: self
                .resolved
                .iter()
                .zip(members)
                .filter(|(done, _)| !**done)
                .map(|(_, m)| m.clone())
                .collect(),
            error: self.error.take(),
        }
    }
}

impl Future for Delivery {
    type Output = Report;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Report> {
        let this = &mut *self;
        this.poll_progress(cx).map(|()| this.report())
    }
}

/// Who is in which room: the hub's tables, with their bounds. No I/O.
struct Rooms {
    options: HubOptions,
    members: HashMap<Key, Member>,
    rooms: HashMap<String, HashSet<Key>>,
}

struct Member {
    session: Session,
    rooms: BTreeSet<String>,
}

impl Rooms {
    fn new(options: HubOptions) -> Rooms {
        Rooms {
            options,
            members: HashMap::new(),
            rooms: HashMap::new(),
        }
    }

    /// True if `key` is new.
    fn add(&mut self, key: Key, session: &Session) -> Result<bool, HubError> {
        if self.members.contains_key(&key) {
            return Ok(false);
        }
        if self.members.len() >= self.options.max_members {
            return Err(HubError::Full {
                limit: self.options.max_members,
            });
        }
        self.members.insert(
            key,
            Member {
                session: session.clone(),
                rooms: BTreeSet::new(),
            },
        );
        Ok(true)
    }

    fn join(&mut self, key: Key, room: &str) -> Result<(), HubError> {
        // Removed between `add` and here: it closed.
        let member = self.members.get_mut(&key).ok_or(HubError::Closed)?;
        if member.rooms.contains(room) {
            return Ok(());
        }
        if member.rooms.len() >= self.options.max_rooms_per_member {
            return Err(HubError::TooManyRooms {
                limit: self.options.max_rooms_per_member,
            });
        }
        member.rooms.insert(room.to_string());
        self.rooms.entry(room.to_string()).or_default().insert(key);
        Ok(())
    }

    fn leave(&mut self, key: Key, room: &str) -> bool {
        let Some(member) = self.members.get_mut(&key) else {
            return false;
        };
        if !member.rooms.remove(room) {
            return false;
        }
        self.drop_from_room(key, room);
        true
    }

    fn drop_from_room(&mut self, key: Key, room: &str) {
        if let Some(keys) = self.rooms.get_mut(room) {
            keys.remove(&key);
            // An empty room is forgotten: the table holds only rooms with members.
            if keys.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    fn remove(&mut self, key: Key) -> bool {
        let Some(member) = self.members.remove(&key) else {
            return false;
        };
        for room in &member.rooms {
            self.drop_from_room(key, room);
        }
        true
    }

    fn rooms_of(&self, key: Key) -> Vec<String> {
        self.members
            .get(&key)
            .map(|m| m.rooms.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The sessions of `room` (`None`: every member), but `except`.
    fn sessions(&self, room: Option<&str>, except: Option<Key>) -> Vec<Session> {
        let wanted = |k: &Key| Some(*k) != except;
        match room {
            None => self
                .members
                .iter()
                .filter(|(k, _)| wanted(k))
                .map(|(_, m)| m.session.clone())
                .collect(),
            Some(room) => self
                .rooms
                .get(room)
                .into_iter()
                .flatten()
                .filter(|k| wanted(k))
                .filter_map(|k| self.members.get(k))
                .map(|m| m.session.clone())
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::{Limits, Parts, session};
    use crate::session::{Command, Info, Transport};

    /// A session with no driver: what is sent to it waits in its mailbox.
    fn member(max_queued_bytes: usize) -> (Session, Parts<()>) {
        let info = Info {
            id: "secret".into(),
            name: None,
            transport: Transport::WebSocketSession,
            address: None,
            query: Vec::new(),
            headers: http::HeaderMap::new(),
            app_version: None,
        };
        let limits = Limits {
            max_queued_bytes,
            max_unread_bytes: 1 << 20,
        };
        let (link, parts) = session::<()>(info, limits);
        (link.session, parts)
    }

    /// The texts waiting in a driverless session's mailbox.
    fn mailbox(parts: &mut Parts<()>) -> Vec<String> {
        let mut texts = Vec::new();
        while let Ok(command) = parts.app.try_recv() {
            if let Command::Send {
                message: Message::Text(t),
                ..
            } = command
            {
                texts.push(t);
            }
        }
        texts
    }

    #[tokio::test]
    async fn members_get_what_is_sent_to_their_rooms_and_to_everyone() {
        let hub = Hub::default();
        let (a, mut pa) = member(1 << 20);
        let (b, mut pb) = member(1 << 20);
        hub.join(&a, "red").expect("join");
        hub.join(&b, "blue").expect("join");
        assert_eq!(hub.to("red").send("r").recipients(), 1);
        assert_eq!(hub.broadcast("all").recipients(), 2);
        assert_eq!(hub.to("nobody").send("x").recipients(), 0);
        assert_eq!(mailbox(&mut pa), ["r", "all"]);
        assert_eq!(mailbox(&mut pb), ["all"]);
    }

    /// Acknowledges every send waiting in a driverless session's mailbox, as its client
    /// would.
    fn acknowledge_all(parts: &mut Parts<()>) -> usize {
        let mut n = 0;
        while let Ok(command) = parts.app.try_recv() {
            if let Command::Send { ack, .. } = command {
                let _ = ack.send(Ok(()));
                n += 1;
            }
        }
        n
    }

    #[tokio::test]
    async fn a_message_every_member_acknowledged_reports_so() {
        let hub = Hub::default();
        let (a, mut pa) = member(1 << 20);
        let (b, mut pb) = member(1 << 20);
        hub.join(&a, "room").expect("join");
        hub.join(&b, "room").expect("join");
        let mut in_room: Vec<_> = hub.members("room").iter().map(key).collect();
        in_room.sort_unstable();
        let mut expected = vec![key(&a), key(&b)];
        expected.sort_unstable();
        assert_eq!(in_room, expected);
        let delivery = hub.to("room").send("hi");
        assert_eq!(
            format!("{delivery:?}"),
            "Delivery { recipients: 2, unresolved: 2 }"
        );
        assert_eq!((acknowledge_all(&mut pa), acknowledge_all(&mut pb)), (1, 1));
        let report = delivery.await;
        assert_eq!((report.recipients, report.acknowledged), (2, 2));
        assert!(report.pending.is_empty() && report.failed.is_empty());
        assert!(report.all_acknowledged());
    }

    #[tokio::test]
    async fn except_leaves_out_the_sender_only() {
        let hub = Hub::default();
        let (a, mut pa) = member(1 << 20);
        let (b, mut pb) = member(1 << 20);
        hub.join(&a, "room").expect("join");
        hub.join(&b, "room").expect("join");
        drop(hub.to("room").except(&a).send("to b"));
        drop(hub.everyone().except(&b).send("to a"));
        assert_eq!(mailbox(&mut pa), ["to a"]);
        assert_eq!(mailbox(&mut pb), ["to b"]);
    }

    #[tokio::test]
    async fn a_member_that_holds_its_limit_is_reported_and_the_others_still_get_the_message() {
        let hub = Hub::default();
        // Room for one 100-byte message (plus its overhead) and no more.
        let (slow, mut ps) = member(200);
        let (fast, mut pf) = member(1 << 20);
        hub.add(&slow).expect("add");
        hub.add(&fast).expect("add");
        let text = "x".repeat(100);
        drop(hub.broadcast(text.as_str()));
        let delivery = hub.broadcast(text.as_str());
        assert_eq!(mailbox(&mut ps).len(), 1, "the second was dropped for it");
        assert_eq!(mailbox(&mut pf).len(), 2, "the other got both");
        // No driver acknowledges here: ending the fast member's session resolves its ack.
        drop(pf);
        let report = delivery.await;
        assert_eq!(report.recipients, 2);
        assert_eq!(report.acknowledged, 0);
        let slow_error = report.failed.iter().find(|(m, _)| key(m) == key(&slow));
        assert!(matches!(
            slow_error,
            Some((_, SendError::BufferFull { .. }))
        ));
        let fast_error = report.failed.iter().find(|(m, _)| key(m) == key(&fast));
        assert!(matches!(fast_error, Some((_, SendError::Closed(_)))));
    }

    #[tokio::test]
    async fn a_closed_session_leaves_the_hub_and_every_room() {
        let hub = Hub::default();
        let (a, parts) = member(1 << 20);
        hub.join(&a, "one").expect("join");
        hub.join(&a, "two").expect("join");
        assert_eq!(hub.rooms_of(&a), ["one", "two"]);
        // Dropping the driver's parts is the session closing.
        drop(parts);
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while !hub.is_empty() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("forgotten");
        assert!(hub.members("one").is_empty());
        assert!(hub.lock().rooms.is_empty(), "empty rooms are forgotten");
    }

    #[tokio::test]
    async fn leaving_the_last_member_forgets_the_room() {
        let hub = Hub::default();
        let (a, _pa) = member(1 << 20);
        hub.join(&a, "r").expect("join");
        assert!(hub.leave(&a, "r"));
        assert!(!hub.leave(&a, "r"));
        assert!(hub.lock().rooms.is_empty());
        assert_eq!(hub.len(), 1, "still in the hub");
        assert!(hub.remove(&a));
        assert!(!hub.remove(&a));
        assert!(hub.is_empty());
    }

    #[tokio::test]
    async fn every_bound_refuses_with_its_limit() {
        let hub = Hub::new(
            HubOptions::default()
                .max_members(1)
                .max_rooms_per_member(2)
                .max_room_name_bytes(4),
        );
        let (a, _pa) = member(1 << 20);
        let (b, _pb) = member(1 << 20);
        hub.join(&a, "r1").expect("join");
        hub.join(&a, "r2").expect("join");
        hub.join(&a, "r2").expect("joining again changes nothing");
        assert_eq!(hub.join(&a, "r3"), Err(HubError::TooManyRooms { limit: 2 }));
        assert_eq!(hub.join(&a, "12345"), Err(HubError::RoomName { limit: 4 }));
        hub.leave(&a, "r1");
        hub.join(&a, "1234").expect("a name of exactly the limit");
        assert_eq!(format!("{hub:?}"), "Hub { members: 1, rooms: 2 }");
        assert_eq!(hub.add(&b), Err(HubError::Full { limit: 1 }));
        assert!(hub.remove(&a));
        hub.add(&b).expect("room again");
    }

    #[tokio::test]
    async fn json_that_cannot_be_serialised_goes_to_no_one() {
        let hub = Hub::default();
        let (a, mut pa) = member(1 << 20);
        hub.add(&a).expect("add");
        let bad: HashMap<(u8, u8), u8> = [((1, 2), 3)].into();
        let report = hub.everyone().send_json(&bad).await;
        assert!(matches!(report.error, Some(SendError::Invalid(_))));
        assert!(!report.all_acknowledged());
        assert!(mailbox(&mut pa).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn within_reports_the_members_that_had_not_answered() {
        let hub = Hub::default();
        let (silent, _ps) = member(1 << 20);
        let (gone, pg) = member(1 << 20);
        hub.add(&silent).expect("add");
        hub.add(&gone).expect("add");
        let delivery = hub.broadcast("hello");
        drop(pg);
        let report = delivery.within(std::time::Duration::from_secs(1)).await;
        assert_eq!(report.recipients, 2);
        assert_eq!(report.pending.len(), 1);
        assert_eq!(key(&report.pending[0]), key(&silent));
        assert_eq!(report.failed.len(), 1);
        assert_eq!(key(&report.failed[0].0), key(&gone));
        assert!(!report.all_acknowledged());
    }

    struct Recorder(Mutex<Vec<(Option<String>, Message)>>);

    impl Relay for Recorder {
        fn publish(&self, room: Option<&str>, message: &Message) {
            let mut sent = self.0.lock().expect("lock");
            sent.push((room.map(str::to_string), message.clone()));
        }
    }

    #[tokio::test]
    async fn sends_are_relayed_and_relayed_messages_are_delivered_locally_only() {
        let relay = Arc::new(Recorder(Mutex::new(Vec::new())));
        let hub = Hub::with_relay(HubOptions::default(), relay.clone());
        let (a, mut pa) = member(1 << 20);
        hub.join(&a, "r").expect("join");
        drop(hub.to("r").except(&a).send("mine"));
        drop(hub.deliver_local(Some("r"), Message::from("theirs")));
        drop(hub.deliver_local(None, Message::from("everyone's")));
        assert_eq!(mailbox(&mut pa), ["theirs", "everyone's"]);
        let sent = relay.0.lock().expect("lock");
        assert_eq!(*sent, [(Some("r".to_string()), Message::from("mine"))]);
    }
}
