//! The application's handle on one session — the same type whatever transport the client
//! used — and the stream of new sessions.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use browserver_core::{CloseReason, State, Unread};
use http::HeaderMap;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::SendError;
use crate::message::Message;

/// Which transport (and mode) a session's client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transport {
    /// BrowserChannel (protocol version 8). Messages are JSON; acknowledged end to end.
    BrowserChannel,
    /// A plain WebSocket client: one frame per message; a send counts as acknowledged once
    /// written to the socket; no resumption.
    WebSocket,
    /// WebSocket in browserver's session mode: sequenced, acknowledged end to end, resumable.
    WebSocketSession,
}

impl Transport {
    /// `browserchannel`, `websocket` or `websocket-session`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::BrowserChannel => "browserchannel",
            Transport::WebSocket => "websocket",
            Transport::WebSocketSession => "websocket-session",
        }
    }

    /// Whether an acknowledgement means the peer's application received the message (not
    /// only that it was written).
    pub fn acknowledges_end_to_end(self) -> bool {
        self != Transport::WebSocket
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What is known about a session when it is created.
#[derive(Debug, Clone)]
pub struct Info {
    /// The session id: a secret that authorises every request acting on the session.
    pub id: String,
    /// The public name admission granted, if any.
    pub name: Option<String>,
    /// The transport.
    pub transport: Transport,
    /// The client's address, when the server knows it.
    pub address: Option<SocketAddr>,
    /// The query of the request that created the session, in order.
    pub query: Vec<(String, String)>,
    /// The headers of the request that created the session (owned copies: see
    /// `http::owned_headers`).
    pub headers: HeaderMap,
    /// The client application's version (BrowserChannel `CVER`), if sent.
    pub app_version: Option<String>,
}

/// The session's state and, once closed, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// `init`, `ok` or `closed`.
    pub state: State,
    /// Set once the state is `closed`.
    pub close_reason: Option<CloseReason>,
}

/// A request from the application to its session's driver.
pub(crate) enum Command {
    Send {
        message: Message,
        /// Bytes counted in [`Shared::queued`] for it.
        counted: usize,
        ack: oneshot::Sender<Result<(), SendError>>,
    },
    Stop(oneshot::Sender<()>),
    Close(CloseReason),
}

/// Per-message overhead counted against the mailbox bound, so that empty messages count.
pub(crate) const MESSAGE_OVERHEAD: usize = 64;

pub(crate) struct Shared {
    pub(crate) info: Info,
    pub(crate) tx: mpsc::UnboundedSender<Command>,
    pub(crate) status: watch::Receiver<Status>,
    pub(crate) messages: tokio::sync::Mutex<mpsc::UnboundedReceiver<Message>>,
    pub(crate) unread: Unread,
    /// Bytes of sends in the mailbox, not yet taken by the driver.
    pub(crate) queued: AtomicUsize,
    /// Their bound (the session's unacknowledged-bytes limit).
    pub(crate) max_queued: usize,
    pub(crate) closing: AtomicBool,
}

/// One client's session. Cheap to clone; every clone is the same session.
///
/// Messages from the client arrive in order through [`recv`](Self::recv); none arrive after
/// the session closed. [`send`](Self::send) returns an [`Ack`] that resolves exactly once:
/// `Ok` when the client acknowledged the message (a plain WebSocket client: when it was
/// written to the socket), or an error when it never will be.
#[derive(Clone)]
pub struct Session {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("name", &self.shared.info.name)
            .field("transport", &self.shared.info.transport)
            .field("address", &self.shared.info.address)
            .field("status", &*self.shared.status.borrow())
            .finish()
    }
}

impl Session {
    /// The session id: 128 random bits that only this client knows, and that authorise every
    /// request acting on the session. Never show it to anyone else, never use it as a public
    /// name, never log it where others read logs.
    pub fn id(&self) -> &str {
        &self.shared.info.id
    }

    /// The name admission granted this client, if any. An identity, not a secret.
    pub fn name(&self) -> Option<&str> {
        self.shared.info.name.as_deref()
    }

    /// The transport the client speaks.
    pub fn transport(&self) -> Transport {
        self.shared.info.transport
    }

    /// The client's address, when the server knows it.
    pub fn address(&self) -> Option<SocketAddr> {
        self.shared.info.address
    }

    /// The full query of the request that created the session, in order.
    pub fn query(&self) -> &[(String, String)] {
        &self.shared.info.query
    }

    /// The first value of one query parameter of the creating request.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.shared
            .info
            .query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The headers of the request that created the session.
    pub fn headers(&self) -> &HeaderMap {
        &self.shared.info.headers
    }

    /// The client application's version (BrowserChannel `CVER`), if it sent one.
    pub fn app_version(&self) -> Option<&str> {
        self.shared.info.app_version.as_deref()
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.shared.status.borrow().state
    }

    /// Why the session closed, once it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.status.borrow().close_reason.clone()
    }

    /// A receiver that sees every state change.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.shared.status.clone()
    }

    /// Waits until the session is closed and returns why.
    pub async fn closed(&self) -> CloseReason {
        let mut rx = self.shared.status.clone();
        loop {
            if let Some(reason) = rx.borrow_and_update().close_reason.clone() {
                return reason;
            }
            if rx.changed().await.is_err() {
                return rx
                    .borrow()
                    .close_reason
                    .clone()
                    .unwrap_or(CloseReason::Closed(None));
            }
        }
    }

    /// Sends a message. It is queued at once (before this returns), or refused at once
    /// (`BufferFull`, `Unsupported`, `Invalid`, `Closed`) through the [`Ack`]; the `Ack` may
    /// be awaited or dropped.
    pub fn send(&self, message: impl Into<Message>) -> Ack {
        let message = message.into();
        let counted = message.len().saturating_add(MESSAGE_OVERHEAD);
        let shared = &self.shared;
        let admitted = shared
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                n.checked_add(counted).filter(|t| *t <= shared.max_queued)
            });
        if let Err(buffered) = admitted {
            return Ack::ready(Err(SendError::BufferFull {
                buffered,
                limit: shared.max_queued,
            }));
        }
        let (ack, rx) = oneshot::channel();
        let command = Command::Send {
            message,
            counted,
            ack,
        };
        if shared.tx.send(command).is_err() {
            shared.queued.fetch_sub(counted, Ordering::AcqRel);
            return Ack::ready(Err(self.closed_error()));
        }
        Ack {
            inner: AckInner::Pending(rx, Some(self.closed_error())),
        }
    }

    /// Sends `value` as JSON text — what every transport carries. A value serde cannot
    /// serialise resolves the [`Ack`] at once with [`SendError::Invalid`].
    pub fn send_json<T: Serialize + ?Sized>(&self, value: &T) -> Ack {
        match Message::from_json(value) {
            Ok(message) => self.send(message),
            Err(e) => Ack::ready(Err(SendError::Invalid(e.to_string()))),
        }
    }

    /// Sends a text message (on BrowserChannel it must be JSON text).
    pub fn send_text(&self, text: impl Into<String>) -> Ack {
        self.send(Message::Text(text.into()))
    }

    /// Sends a binary message. WebSocket carries it as a binary frame; BrowserChannel carries
    /// JSON only, so there the [`Ack`] resolves at once with [`SendError::Unsupported`] (no
    /// silent conversion: encode the bytes in your JSON, base64 say, if you must).
    pub fn send_binary(&self, data: impl Into<bytes::Bytes>) -> Ack {
        self.send(Message::Binary(data.into()))
    }

    /// Tells the client to give up and not reconnect; the session closes with reason
    /// `Stopped` once the stop has been written. Resolves when it was written (or the session
    /// closed first).
    pub fn stop(&self) -> impl Future<Output = ()> + Send + 'static {
        let (written, rx) = oneshot::channel();
        let _ = self.shared.tx.send(Command::Stop(written));
        async move {
            let _ = rx.await;
        }
    }

    /// Closes the session (reason `closed`; the client may reconnect). Unacknowledged sends
    /// fail with that reason.
    pub fn close(&self) {
        self.close_for(CloseReason::Closed(None));
    }

    /// Closes the session with a reason that unacknowledged sends fail with (a WebSocket
    /// close frame carries up to 120 bytes of it).
    pub fn close_with(&self, reason: impl Into<String>) {
        self.close_for(CloseReason::Closed(Some(reason.into())));
    }

    /// Closes the session because a newer session of the same client took its place (reason
    /// `Replaced`); resolves once it is closed.
    pub fn replace(&self) -> impl Future<Output = ()> + Send + 'static {
        self.close_for(CloseReason::Replaced);
        let session = self.clone();
        async move {
            session.closed().await;
        }
    }

    fn close_for(&self, reason: CloseReason) {
        // One close is enough; an application calling it in a loop queues nothing more.
        if !self.shared.closing.swap(true, Ordering::AcqRel) {
            let _ = self.shared.tx.send(Command::Close(reason));
        }
    }

    /// The next message from the client, in order; `None` once the session is closed and
    /// every message delivered before the close has been received.
    pub async fn recv(&self) -> Option<Message> {
        let message = self.shared.messages.lock().await.recv().await?;
        self.shared.unread.take(message.len());
        Some(message)
    }

    /// The next message parsed as JSON into `T`: `Some(Err(..))` for a message that is not
    /// such JSON (the session stays open).
    pub async fn recv_json<T: DeserializeOwned>(&self) -> Option<Result<T, serde_json::Error>> {
        Some(self.recv().await?.json())
    }

    fn closed_error(&self) -> SendError {
        SendError::Closed(self.close_reason().unwrap_or(CloseReason::Closed(None)))
    }
}

/// Resolves once: `Ok(())` when the peer acknowledged the message, or the reason it never
/// will be.
#[must_use = "an Ack does nothing unless awaited; dropping it is fine if the outcome does not matter"]
pub struct Ack {
    inner: AckInner,
}

enum AckInner {
    Ready(Option<Result<(), SendError>>),
    Pending(oneshot::Receiver<Result<(), SendError>>, Option<SendError>),
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ack")
    }
}

impl Ack {
    /// An `Ack` that is already resolved.
    pub fn ready(result: Result<(), SendError>) -> Ack {
        Ack {
            inner: AckInner::Ready(Some(result)),
        }
    }

    /// An `Ack` resolved through a channel; if the sender is dropped unresolved, it resolves
    /// with `fallback` (or `Closed(closed)`).
    pub fn pending(
        rx: oneshot::Receiver<Result<(), SendError>>,
        fallback: Option<SendError>,
    ) -> Ack {
        Ack {
            inner: AckInner::Pending(rx, fallback),
        }
    }
}

impl Future for Ack {
    type Output = Result<(), SendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let closed = || Err(SendError::Closed(CloseReason::Closed(None)));
        match &mut self.inner {
            AckInner::Ready(result) => Poll::Ready(result.take().unwrap_or_else(closed)),
            AckInner::Pending(rx, fallback) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or_else(|_| fallback.take().map_or_else(closed, Err))),
        }
    }
}

/// New sessions, in the order they were created.
#[derive(Debug)]
pub struct Sessions {
    rx: mpsc::UnboundedReceiver<Session>,
}

impl Sessions {
    /// A stream of new sessions and the sender a transport announces them on. (Its length is
    /// bounded by the transport's session limit: a session is announced once.)
    pub fn new() -> (Announce, Sessions) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Announce(tx), Sessions { rx })
    }

    /// The next new session; `None` once the endpoint and all its clones are gone.
    pub async fn accept(&mut self) -> Option<Session> {
        self.rx.recv().await
    }
}

/// Where a transport announces its new sessions (the sending half of [`Sessions`]).
#[derive(Debug, Clone)]
pub struct Announce(mpsc::UnboundedSender<Session>);

impl Announce {
    /// Hands `session` to the application.
    pub fn announce(&self, session: Session) {
        let _ = self.0.send(session);
    }
}
