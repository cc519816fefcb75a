//! The application's handle on one BrowserChannel session.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use browserver_core::{CloseReason, State};
use bytes::Bytes;
use http::HeaderMap;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use crate::codec::{Map, to_ascii_json};

/// A message from the client, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The message: the `JSON` key parsed, the `_S` string, or an element of a JSON-body
    /// request. `None` for a map carrying neither.
    pub value: Option<Value>,
    /// The map as sent (`None` for JSON-body requests, which carry no maps).
    pub map: Option<Map>,
}

/// Why a send did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The session closed before the client acknowledged the message.
    #[error("session closed before the message was acknowledged: {0}")]
    Closed(CloseReason),
    /// The session already holds its limit of unacknowledged bytes; try again later.
    #[error("send buffer full ({buffered} bytes buffered, limit {limit})")]
    BufferFull {
        /// Bytes retained.
        buffered: usize,
        /// The limit.
        limit: usize,
    },
    /// The value could not be serialised to JSON.
    #[error("message cannot be serialised: {0}")]
    Serialize(String),
}

/// The session's state and, once closed, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// `init`, `ok` or `closed`.
    pub state: State,
    /// Set once the state is `closed`.
    pub close_reason: Option<CloseReason>,
}

pub(crate) enum Command {
    Send {
        data: Bytes,
        ack: oneshot::Sender<Result<(), SendError>>,
    },
    Stop {
        written: oneshot::Sender<()>,
    },
    Close(Option<String>),
    /// Boxed: it is the largest command, and the channel's blocks are sized by the largest.
    Http(Box<crate::actor::HttpCommand>),
    PathGone(browserver_core::PathId),
}

pub(crate) struct Shared {
    pub(crate) id: String,
    pub(crate) name: Option<String>,
    pub(crate) address: Option<SocketAddr>,
    pub(crate) query: Vec<(String, String)>,
    pub(crate) headers: HeaderMap,
    pub(crate) app_version: Option<String>,
    pub(crate) tx: mpsc::UnboundedSender<Command>,
    pub(crate) status: watch::Receiver<Status>,
    pub(crate) messages: tokio::sync::Mutex<mpsc::UnboundedReceiver<(Received, usize)>>,
    pub(crate) unread: browserver_core::Unread,
}

/// One client's session. Cheap to clone; every clone is the same session.
///
/// Messages from the client arrive in order through [`recv`](Self::recv); none arrive after
/// the session closed. [`send`](Self::send) returns an [`Ack`] that resolves exactly once:
/// `Ok` when the client acknowledged the message, or an error when the session closed first.
#[derive(Clone)]
pub struct Session {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("name", &self.shared.name)
            .field("address", &self.shared.address)
            .field("status", &*self.shared.status.borrow())
            .finish()
    }
}

impl Session {
    /// The session id (the `SID`): a secret of 128 random bits that only this client knows,
    /// and that authorises every request acting on the session. Never show it to anyone else,
    /// never use it as a public name, never log it where others read logs.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The name that [`Options::admission`](crate::Options::admission) granted this client
    /// (`Ok(Some(name))`), if any. It is an identity, not a secret.
    pub fn name(&self) -> Option<&str> {
        self.shared.name.as_deref()
    }

    /// The client's address, when the server knows it (see [`ClientAddr`](crate::ClientAddr)).
    pub fn address(&self) -> Option<SocketAddr> {
        self.shared.address
    }

    /// The full query of the request that created the session, in order (protocol keys
    /// included).
    pub fn query(&self) -> &[(String, String)] {
        &self.shared.query
    }

    /// The first value of one query parameter of the creating request.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.shared
            .query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The headers of the request that created the session.
    pub fn headers(&self) -> &HeaderMap {
        &self.shared.headers
    }

    /// The client application's version (`CVER`), if it sent one.
    pub fn app_version(&self) -> Option<&str> {
        self.shared.app_version.as_deref()
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

    /// Sends a JSON value. The message is queued at once (before this returns); the returned
    /// [`Ack`] may be awaited or dropped.
    pub fn send<T: Serialize + ?Sized>(&self, value: &T) -> Ack {
        match to_ascii_json(value) {
            Ok(json) => self.send_raw(Bytes::from(json)),
            Err(e) => Ack::ready(Err(SendError::Serialize(e.to_string()))),
        }
    }

    /// Sends already-serialised JSON. It must be valid JSON text, ideally ASCII-only (as
    /// [`to_ascii_json`] writes it); non-ASCII text would break the client's length framing.
    pub fn send_raw(&self, json: Bytes) -> Ack {
        let (ack, rx) = oneshot::channel();
        let closed = self.closed_error();
        if self
            .shared
            .tx
            .send(Command::Send { data: json, ack })
            .is_err()
        {
            return Ack::ready(Err(closed));
        }
        Ack {
            inner: AckInner::Pending(rx, Some(closed)),
        }
    }

    /// Tells the client to give up and not reconnect (`["stop"]`); the session closes with
    /// reason `Stopped` once the stop has been written. Resolves when it was written.
    pub fn stop(&self) -> impl Future<Output = ()> + Send + 'static {
        let (written, rx) = oneshot::channel();
        let _ = self.shared.tx.send(Command::Stop { written });
        async move {
            let _ = rx.await;
        }
    }

    /// Closes the session (the client may reconnect). Unacknowledged sends fail with reason
    /// `closed`.
    pub fn close(&self) {
        let _ = self.shared.tx.send(Command::Close(None));
    }

    /// Closes the session because a newer session of the same client took its place (reason
    /// `Replaced`); resolves once it is closed.
    pub fn replace(&self) -> impl Future<Output = ()> + Send + 'static {
        let (done, rx) = oneshot::channel();
        let _ = self
            .shared
            .tx
            .send(Command::Http(Box::new(crate::actor::HttpCommand::Ghost {
                oaid: None,
                done,
            })));
        async move {
            let _ = rx.await;
        }
    }

    /// Closes the session with a reason that unacknowledged sends fail with.
    pub fn close_with(&self, reason: impl Into<String>) {
        let _ = self.shared.tx.send(Command::Close(Some(reason.into())));
    }

    /// The next message from the client, in order; `None` once the session is closed and
    /// every message delivered before the close has been received.
    pub async fn recv(&self) -> Option<Received> {
        let (received, size) = self.shared.messages.lock().await.recv().await?;
        self.shared.unread.take(size);
        Some(received)
    }

    fn closed_error(&self) -> SendError {
        SendError::Closed(self.close_reason().unwrap_or(CloseReason::Closed(None)))
    }
}

/// Resolves once: `Ok(())` when the client acknowledged the message, or the reason it never
/// will be.
#[must_use = "an Ack does nothing unless awaited; dropping it is fine if the outcome does not matter"]
pub struct Ack {
    inner: AckInner,
}

enum AckInner {
    Ready(Option<Result<(), SendError>>),
    Pending(oneshot::Receiver<Result<(), SendError>>, Option<SendError>),
}

impl Ack {
    fn ready(result: Result<(), SendError>) -> Ack {
        Ack {
            inner: AckInner::Ready(Some(result)),
        }
    }
}

impl Future for Ack {
    type Output = Result<(), SendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.inner {
            AckInner::Ready(result) => Poll::Ready(
                result
                    .take()
                    .unwrap_or(Err(SendError::Closed(CloseReason::Closed(None)))),
            ),
            AckInner::Pending(rx, closed) => Pin::new(rx).poll(cx).map(|r| {
                r.unwrap_or_else(|_| {
                    Err(closed
                        .take()
                        .unwrap_or(SendError::Closed(CloseReason::Closed(None))))
                })
            }),
        }
    }
}
