//! The I/O side of one session for the runtime's driver: it keeps each waiting request's
//! reply channel and each streamed response's sender, and turns the protocol machine's
//! transmits into HTTP responses. No protocol decision is made here.

use std::collections::HashMap;

use browserver_core::{CloseReason, PathId};
use browserver_runtime::Io;
use bytes::Bytes;
use http::{HeaderMap, Response};
use tokio::sync::{mpsc, oneshot};

use crate::body::{DropGuard, ResponseBody};
use crate::codec::ForwardBody;
use crate::protocol::{Input, RequestId, ServerMachine, Transmit};
use crate::response::{error_response, ok_response, with_status};

/// A reply channel for one HTTP request.
pub(crate) type Reply = oneshot::Sender<Response<ResponseBody>>;

/// What the HTTP side sends a session's driver.
pub(crate) enum Command {
    /// A forward-channel POST (or the session-creating one).
    Forward {
        rid: u64,
        aid: Option<u64>,
        body: ForwardBody,
        creating: bool,
        headers: HeaderMap,
        reply: Reply,
    },
    /// A back-channel GET. `html` is `Some(domain)` for the iframe transport.
    BackChannel {
        aid: Option<u64>,
        streaming: bool,
        html: Option<String>,
        headers: HeaderMap,
        reply: Reply,
    },
    /// `TYPE=terminate`.
    Terminate { rid: u64, aid: Option<u64> },
    /// A newer session of the same client replaces this one (`OSID`/`OAID`); `done` once
    /// it is closed.
    Ghost {
        oaid: Option<u64>,
        done: oneshot::Sender<()>,
    },
    /// A streamed response was dropped (its client went away).
    PathGone(PathId),
}

/// What a session's I/O side needs from its endpoint.
pub(crate) struct HttpIo {
    next_request: u64,
    replies: HashMap<RequestId, (Reply, HeaderMap)>,
    streams: HashMap<PathId, mpsc::UnboundedSender<Bytes>>,
    ghosts: Vec<oneshot::Sender<()>>,
    html_headers: HeaderMap,
    /// Where a dropped response reports itself.
    commands: mpsc::WeakUnboundedSender<Command>,
    /// Runs once when the session closes (leaves the registry, gives back the quota).
    on_close: Option<Box<dyn FnOnce() + Send>>,
}

impl HttpIo {
    pub(crate) fn new(
        html_headers: HeaderMap,
        commands: mpsc::WeakUnboundedSender<Command>,
        on_close: Box<dyn FnOnce() + Send>,
    ) -> HttpIo {
        HttpIo {
            next_request: 0,
            replies: HashMap::new(),
            streams: HashMap::new(),
            ghosts: Vec::new(),
            html_headers,
            commands,
            on_close: Some(on_close),
        }
    }

    fn request(&mut self, reply: Reply, headers: HeaderMap) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request = self.next_request.wrapping_add(1);
        self.replies.insert(id, (reply, headers));
        id
    }
}

impl Io<ServerMachine> for HttpIo {
    type Command = Command;

    fn command(&mut self, command: Command) -> Option<Input> {
        Some(match command {
            Command::Forward {
                rid,
                aid,
                body,
                creating,
                headers,
                reply,
            } => Input::Forward {
                request: self.request(reply, headers),
                rid,
                aid,
                body,
                creating,
            },
            Command::BackChannel {
                aid,
                streaming,
                html,
                headers,
                reply,
            } => Input::BackChannel {
                request: self.request(reply, headers),
                aid,
                streaming,
                html,
            },
            Command::Terminate { rid, aid } => Input::Terminate { rid, aid },
            Command::Ghost { oaid, done } => {
                self.ghosts.push(done);
                Input::Ghost { oaid }
            }
            Command::PathGone(path) => {
                self.streams.remove(&path);
                Input::PathGone(path)
            }
        })
    }

    fn transmit(&mut self, transmit: Transmit) {
        match transmit {
            Transmit::Respond {
                request,
                status,
                body,
            } => {
                if let Some((reply, headers)) = self.replies.remove(&request) {
                    let response = ok_response(&headers, ResponseBody::full(body));
                    let _ = reply.send(with_status(status, response));
                }
            }
            Transmit::Stream {
                request,
                path,
                html,
            } => {
                let Some((reply, headers)) = self.replies.remove(&request) else {
                    return;
                };
                let commands = self.commands.clone();
                let guard = DropGuard::new(move || {
                    if let Some(tx) = commands.upgrade() {
                        let _ = tx.send(Command::PathGone(path));
                    }
                });
                let (tx, body) = ResponseBody::channel(Some(guard));
                self.streams.insert(path, tx);
                let headers = if html { &self.html_headers } else { &headers };
                let _ = reply.send(ok_response(headers, body));
            }
            Transmit::Chunk { path, data } => {
                if let Some(tx) = self.streams.get(&path) {
                    let _ = tx.send(data);
                }
            }
            Transmit::End { path } => {
                self.streams.remove(&path);
            }
        }
    }

    fn refuse(&mut self, command: Command, _: &CloseReason) {
        match command {
            // The application closed the session before its creating request was answered.
            Command::Forward {
                creating: true,
                headers,
                reply,
                ..
            } => {
                let _ = reply.send(error_response(403, "Forbidden", &headers));
            }
            Command::Forward { headers, reply, .. }
            | Command::BackChannel { headers, reply, .. } => {
                let _ = reply.send(error_response(400, "Unknown SID", &headers));
            }
            Command::Ghost { done, .. } => {
                let _ = done.send(());
            }
            Command::Terminate { .. } | Command::PathGone(_) => {}
        }
    }

    fn closed(&mut self, _: &CloseReason) {
        if let Some(forget) = self.on_close.take() {
            forget();
        }
        for done in self.ghosts.drain(..) {
            let _ = done.send(());
        }
    }
}
