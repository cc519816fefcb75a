//! The application's handle on one WebSocket session.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use browserver_core::{CloseReason, State};
use bytes::Bytes;
use http::HeaderMap;
use tokio::sync::{mpsc, oneshot, watch};

/// A message: one WebSocket text or binary frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Bytes),
}

impl Message {
    /// The message's length in bytes (text or binary).
    pub fn len(&self) -> usize {
        match self {
            Message::Text(t) => t.len(),
            Message::Binary(b) => b.len(),
        }
    }

    /// Whether the message is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn tagged(&self) -> Bytes {
        match self {
            Message::Text(t) => tag(b'T', t.as_bytes()),
            Message::Binary(b) => tag(b'B', b),
        }
    }

    /// Splits a core payload (tag byte + body) back into a message.
    pub(crate) fn from_tagged(data: &Bytes) -> Option<Message> {
        match data.first()? {
            b'T' => String::from_utf8(data[1..].to_vec())
                .ok()
                .map(Message::Text),
            b'B' => Some(Message::Binary(data.slice(1..))),
            _ => None,
        }
    }
}

/// A core payload: the tag byte (`T` text, `B` binary), then the body, in one copy.
pub(crate) fn tag(tag: u8, body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(tag);
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// How the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A plain WebSocket client: one frame per message, nothing else sent to it; an `Ack`
    /// resolves once the frame was written to the socket; no resumption.
    Plain,
    /// The negotiated session mode: sequence numbers, acknowledgements, resumption.
    Session,
}

/// Why a send did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The session closed before the message was acknowledged.
    #[error("session closed before the message was acknowledged: {0}")]
    Closed(CloseReason),
    /// Too many unacknowledged bytes; try again later.
    #[error("send buffer full ({buffered} bytes buffered, limit {limit})")]
    BufferFull {
        /// Bytes retained.
        buffered: usize,
        /// The limit.
        limit: usize,
    },
}

/// The session's state and, once closed, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// `init`, `ok` or `closed`.
    pub state: State,
    /// Set once closed.
    pub close_reason: Option<CloseReason>,
}

pub(crate) struct Shared {
    pub(crate) id: String,
    /// `<id>.<secret>`: what a session-mode client presents to resume (only in its hello).
    pub(crate) resume_token: String,
    pub(crate) name: Option<String>,
    pub(crate) unread: browserver_core::Unread,
    pub(crate) mode: Mode,
    pub(crate) address: Option<SocketAddr>,
    pub(crate) query: Vec<(String, String)>,
    pub(crate) headers: HeaderMap,
    pub(crate) tx: mpsc::UnboundedSender<crate::actor::Command>,
    pub(crate) status: watch::Receiver<Status>,
    pub(crate) messages: tokio::sync::Mutex<mpsc::UnboundedReceiver<Message>>,
}

/// One client's WebSocket session. Cheap to clone.
#[derive(Clone)]
pub struct Session {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("name", &self.shared.name)
            .field("mode", &self.shared.mode)
            .finish()
    }
}

impl Session {
    /// The session id: 128 random bits, a secret between the server and this client (session
    /// mode sends it in the hello). Never use it as a public name or log it where others read
    /// logs.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The name that [`Options::admission`](crate::Options::admission) granted this client
    /// (`Ok(Some(name))`), if any. It is an identity, not a secret.
    pub fn name(&self) -> Option<&str> {
        self.shared.name.as_deref()
    }

    /// Plain or session mode.
    pub fn mode(&self) -> Mode {
        self.shared.mode
    }

    /// The client's address, if known.
    pub fn address(&self) -> Option<SocketAddr> {
        self.shared.address
    }

    /// The query of the upgrade request that created the session.
    pub fn query(&self) -> &[(String, String)] {
        &self.shared.query
    }

    /// The headers of the upgrade request that created the session.
    pub fn headers(&self) -> &HeaderMap {
        &self.shared.headers
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

    /// Sends a message; it is queued at once. The [`Ack`] resolves once.
    pub fn send(&self, message: Message) -> Ack {
        let (ack, rx) = oneshot::channel();
        let closed = SendError::Closed(self.close_reason().unwrap_or(CloseReason::Closed(None)));
        let data = message.tagged();
        if self
            .shared
            .tx
            .send(crate::actor::Command::Send { data, ack })
            .is_err()
        {
            return Ack {
                rx: None,
                closed: Some(closed),
            };
        }
        Ack {
            rx: Some(rx),
            closed: Some(closed),
        }
    }

    /// Sends a text message.
    pub fn send_text(&self, text: impl Into<String>) -> Ack {
        self.send(Message::Text(text.into()))
    }

    /// Sends a binary message.
    pub fn send_binary(&self, data: impl Into<Bytes>) -> Ack {
        self.send(Message::Binary(data.into()))
    }

    /// Tells the client not to reconnect (close code 4001); the session closes once it is
    /// written. Resolves when written.
    pub fn stop(&self) -> impl Future<Output = ()> + Send + 'static {
        let (written, rx) = oneshot::channel();
        let _ = self.shared.tx.send(crate::actor::Command::Stop { written });
        async move {
            let _ = rx.await;
        }
    }

    /// Closes the session (close code 4000; the client may reconnect).
    pub fn close(&self) {
        let _ = self.shared.tx.send(crate::actor::Command::Close(None));
    }

    /// Closes the session because a newer session of the same client took its place (reason
    /// `Replaced`); resolves once it is closed.
    pub fn replace(&self) -> impl Future<Output = ()> + Send + 'static {
        let _ = self.shared.tx.send(crate::actor::Command::Replace);
        let session = self.clone();
        async move {
            session.closed().await;
        }
    }

    /// Closes with a reason (sent as the close frame's reason, truncated to 120 bytes).
    pub fn close_with(&self, reason: impl Into<String>) {
        let _ = self
            .shared
            .tx
            .send(crate::actor::Command::Close(Some(reason.into())));
    }

    /// The next message from the client, in order; `None` after close.
    pub async fn recv(&self) -> Option<Message> {
        let message = self.shared.messages.lock().await.recv().await;
        if let Some(m) = &message {
            self.shared.unread.take(m.len());
        }
        message
    }
}

/// Resolves once: `Ok(())` when acknowledged (session mode) or written (plain mode), or why
/// it never will be.
#[must_use = "an Ack does nothing unless awaited; dropping it is fine if the outcome does not matter"]
pub struct Ack {
    rx: Option<oneshot::Receiver<Result<(), SendError>>>,
    closed: Option<SendError>,
}

impl Future for Ack {
    type Output = Result<(), SendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fallback = |closed: &mut Option<SendError>| {
            Err(closed
                .take()
                .unwrap_or(SendError::Closed(CloseReason::Closed(None))))
        };
        match &mut self.rx {
            None => Poll::Ready(fallback(&mut self.closed)),
            Some(rx) => match Pin::new(rx).poll(cx) {
                Poll::Ready(Ok(result)) => Poll::Ready(result),
                Poll::Ready(Err(_)) => Poll::Ready(fallback(&mut self.closed)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}
