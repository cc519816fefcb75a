//! One task per session: it owns the core [`Session`](browserver_core::Session) machine and
//! the session's current WebSocket connection(s); connection tasks and the application talk
//! to it through its command channel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant as StdInstant;

use browserver_core::{
    CloseReason, Event, PathId, PathMode, Payload, Session as Core, State, Transmit,
};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::codec::{self, CLOSE_CLOSED, CLOSE_STOPPED, Frame};
use crate::endpoint::Inner;
use crate::session::{Message, Mode, SendError, Status, tag};

/// What a connection's writer task is given: frames, and (plain mode) markers saying which
/// message the frames before it end with, so that it reports what reached the socket.
pub(crate) enum Out {
    Frame(WsMessage),
    Written(u64),
}

/// A connection's outbound queue (drained by its writer task). Its bytes are bounded by the
/// session's unacknowledged-bytes limit: a plain client's message counts as delivered only
/// once its writer flushed it.
pub(crate) type ConnTx = mpsc::UnboundedSender<Out>;

fn send_frame(tx: &ConnTx, frame: WsMessage) {
    let _ = tx.send(Out::Frame(frame));
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
    /// A newer session of the same client took this one's place.
    Replace,
    /// Plain mode: connection `conn` flushed every message up to `upto` to its socket.
    Written {
        conn: u64,
        upto: u64,
    },
    /// A new connection for this session (the first, or a resumption with the client's ack).
    Attach {
        conn: u64,
        tx: ConnTx,
        ack: Option<u64>,
    },
    /// A frame read from connection `conn`. Its permit (its bytes' share of the
    /// connection's read allowance) is given back once the frame is handled, so a reader
    /// never runs more than that far ahead of this task.
    Frame {
        conn: u64,
        message: WsMessage,
        permit: tokio::sync::OwnedSemaphorePermit,
    },
    /// Connection `conn` ended without a close frame.
    Gone {
        conn: u64,
    },
}

struct Conn {
    tx: ConnTx,
    path: PathId,
    last_heard: StdInstant,
}

pub(crate) struct ActorParts {
    pub(crate) id: String,
    pub(crate) resume_token: String,
    pub(crate) unread: browserver_core::Unread,
    pub(crate) mode: Mode,
    pub(crate) rx: mpsc::UnboundedReceiver<Command>,
    pub(crate) messages: mpsc::UnboundedSender<Message>,
    pub(crate) status: watch::Sender<Status>,
}

pub(crate) struct Actor {
    core: Core,
    id: String,
    resume_token: String,
    unread: browserver_core::Unread,
    mode: Mode,
    rx: mpsc::UnboundedReceiver<Command>,
    conns: HashMap<u64, Conn>,
    acks: HashMap<u64, oneshot::Sender<Result<(), SendError>>>,
    stop_waiters: Vec<oneshot::Sender<()>>,
    messages: Option<mpsc::UnboundedSender<Message>>,
    status: watch::Sender<Status>,
    inbound_next: u64,
    inner: Arc<Inner>,
}

fn now() -> StdInstant {
    Instant::now().into_std()
}

fn close_frame(code: u16, reason: &str) -> WsMessage {
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    WsMessage::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason[..end].into(),
    }))
}

impl Actor {
    pub(crate) fn new(inner: Arc<Inner>, parts: ActorParts) -> Actor {
        let o = &inner.options;
        let config = browserver_core::Config {
            keepalive_interval: o.keep_alive_interval,
            session_timeout: o.session_timeout,
            attach_timeout: o.session_timeout,
            keepalive: browserver_core::KeepaliveMode::Ping,
            max_buffered_bytes: o.max_buffered_bytes,
            reorder_window: o.reorder_window,
            // Plain clients get no acknowledgements: no timer for them.
            ack_delay: if parts.mode == Mode::Session {
                o.ack_delay
            } else {
                std::time::Duration::ZERO
            },
            ..browserver_core::Config::default()
        };
        Actor {
            core: Core::new(browserver_core::Role::Server, config, now()),
            id: parts.id,
            resume_token: parts.resume_token,
            unread: parts.unread,
            mode: parts.mode,
            rx: parts.rx,
            conns: HashMap::new(),
            acks: HashMap::new(),
            stop_waiters: Vec::new(),
            messages: Some(parts.messages),
            status: parts.status,
            inbound_next: 0,
            inner,
        }
    }

    pub(crate) async fn run(mut self) {
        loop {
            self.flush();
            if self.core.is_closed() {
                break;
            }
            let deadline = self.core.poll_timeout();
            tokio::select! {
                command = self.rx.recv() => match command {
                    Some(c) => {
                        self.handle(c);
                        // Take whatever else is queued before flushing (coalesces acks).
                        for _ in 0..64 {
                            match self.rx.try_recv() {
                                Ok(c) => self.handle(c),
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                _ = sleep_until(deadline) => self.core.handle_timeout(now()),
            }
        }
        if !self.core.is_closed() {
            let _ = self.core.close(now(), CloseReason::Closed(None));
            self.flush();
        }
        self.rx.close();
        while let Ok(c) = self.rx.try_recv() {
            match c {
                Command::Send { ack, .. } => {
                    let reason = self
                        .core
                        .close_reason()
                        .cloned()
                        .unwrap_or(CloseReason::Closed(None));
                    let _ = ack.send(Err(SendError::Closed(reason)));
                }
                Command::Attach { tx, .. } => {
                    send_frame(&tx, close_frame(CLOSE_CLOSED, "closed"));
                }
                _ => {}
            }
        }
    }

    fn handle(&mut self, command: Command) {
        let now = now();
        match command {
            Command::Send { data, ack } => match self.core.send(now, data) {
                // An application that dropped its `Ack` is not told.
                Ok(_) if ack.is_closed() => {}
                Ok(seq) => {
                    self.acks.insert(seq, ack);
                }
                Err(browserver_core::Error::BufferFull {
                    buffered, limit, ..
                }) => {
                    let _ = ack.send(Err(SendError::BufferFull { buffered, limit }));
                }
                Err(_) => {
                    let reason = self
                        .core
                        .close_reason()
                        .cloned()
                        .unwrap_or(CloseReason::Closed(None));
                    let _ = ack.send(Err(SendError::Closed(reason)));
                }
            },
            Command::Stop { written } => {
                if self.core.stop(now).is_ok() {
                    self.stop_waiters.push(written);
                }
            }
            Command::Close(reason) => {
                let _ = self.core.close(now, CloseReason::Closed(reason));
            }
            Command::Replace => {
                let _ = self.core.close(now, CloseReason::Replaced);
            }
            Command::Written { conn, upto } => {
                if self.mode == Mode::Plain && self.conns.contains_key(&conn) {
                    let _ = self.core.handle_ack(now, upto);
                }
            }
            Command::Attach { conn, tx, ack } => {
                if let Some(ack) = ack {
                    let _ = self.core.handle_ack(now, ack);
                }
                let resumed = self.core.state() != State::Init;
                match self.core.attach(now, PathMode::default()) {
                    Ok(path) => {
                        if self.mode == Mode::Session {
                            let hello = Frame::Hello {
                                sid: self.id.clone(),
                                ack: self.core.ack_position(),
                                resumed,
                                token: Some(self.resume_token.clone()),
                            };
                            send_frame(&tx, WsMessage::Binary(codec::encode(&hello)));
                            // The hello carries the acknowledgement.
                            let _ = self.core.poll_ack(true);
                        }
                        self.conns.insert(
                            conn,
                            Conn {
                                tx,
                                path,
                                last_heard: now,
                            },
                        );
                    }
                    Err(_) => {
                        send_frame(&tx, close_frame(CLOSE_CLOSED, "closed"));
                    }
                }
            }
            Command::Frame {
                conn,
                message,
                permit,
            } => {
                self.frame(now, conn, message);
                drop(permit);
            }
            Command::Gone { conn } => {
                if let Some(c) = self.conns.remove(&conn)
                    && self.core.detach(now, c.path)
                    && self.mode == Mode::Plain
                {
                    let _ = self.core.handle_peer_close(now);
                }
            }
        }
    }

    fn frame(&mut self, now: StdInstant, conn: u64, message: WsMessage) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.last_heard = now;
        match (self.mode, message) {
            (_, WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_)) => {}
            // A close frame is the client's decision (a browser tab going away included); only
            // a connection lost without one can be resumed.
            (_, WsMessage::Close(_)) => {
                self.conns.remove(&conn);
                let _ = self.core.handle_peer_close(now);
            }
            (Mode::Plain, WsMessage::Text(text)) => {
                self.incoming(now, tag(b'T', text.as_bytes()));
            }
            (Mode::Plain, WsMessage::Binary(data)) => {
                self.incoming(now, tag(b'B', &data));
            }
            (Mode::Session, WsMessage::Binary(data)) => match codec::decode(&data) {
                Ok(Frame::Text { seq, text }) => {
                    let mut tagged = Vec::with_capacity(text.len() + 1);
                    tagged.push(b'T');
                    tagged.extend_from_slice(&text);
                    let _ =
                        self.core
                            .handle_incoming(now, seq, Payload::Message(Bytes::from(tagged)));
                }
                Ok(Frame::Binary { seq, data }) => {
                    let mut tagged = Vec::with_capacity(data.len() + 1);
                    tagged.push(b'B');
                    tagged.extend_from_slice(&data);
                    let _ =
                        self.core
                            .handle_incoming(now, seq, Payload::Message(Bytes::from(tagged)));
                }
                Ok(Frame::Ack { upto }) => {
                    let _ = self.core.handle_ack(now, upto);
                }
                Ok(other) => {
                    self.protocol_error(now, &format!("unexpected frame from client: {other:?}"))
                }
                Err(e) => self.protocol_error(now, &e.to_string()),
            },
            (Mode::Session, WsMessage::Text(_)) => {
                self.protocol_error(now, "text frame in session mode")
            }
        }
    }

    fn incoming(&mut self, now: StdInstant, tagged: Bytes) {
        let seq = self.inbound_next;
        self.inbound_next = self.inbound_next.saturating_add(1);
        let _ = self
            .core
            .handle_incoming(now, seq, Payload::Message(tagged));
    }

    fn protocol_error(&mut self, now: StdInstant, what: &str) {
        tracing::debug!(session = %self.id, what, "protocol error");
        let _ = self
            .core
            .close(now, CloseReason::Protocol(what.to_string()));
    }

    fn conn_for(&self, path: PathId) -> Option<(u64, &Conn)> {
        self.conns
            .iter()
            .find(|(_, c)| c.path == path)
            .map(|(k, c)| (*k, c))
    }

    fn flush(&mut self) {
        let mut wrote = false;
        loop {
            let transmit = self.core.poll_transmit();
            let event = self.core.poll_event();
            if transmit.is_none() && event.is_none() {
                break;
            }
            if let Some(t) = transmit {
                wrote |= matches!(t, Transmit::Batch { .. });
                self.write(t);
            }
            if let Some(e) = event {
                self.event(e);
            }
        }
        // Session mode: acknowledge what the application has been given, when the core says
        // it is due (at once if frames were just written: they leave in the same write).
        if self.mode == Mode::Session
            && let Some(conn) = self.conns.values().next()
            && let Some(upto) = self.core.poll_ack(wrote)
        {
            send_frame(
                &conn.tx,
                WsMessage::Binary(codec::encode(&Frame::Ack { upto })),
            );
        }
    }

    fn write(&mut self, transmit: Transmit) {
        let now = now();
        match transmit {
            Transmit::Batch { path, items, end } => {
                let Some((conn_id, conn)) = self.conn_for(path) else {
                    return;
                };
                let tx = conn.tx.clone();
                let mut stopped = false;
                let mut last = None;
                for item in &items {
                    last = Some(item.seq);
                    let message = match (&item.payload, self.mode) {
                        // The body is sliced out of the payload, not copied (text was
                        // valid UTF-8 when the application gave it).
                        (Payload::Message(data), Mode::Plain) => match data.first() {
                            Some(b'T') => Utf8Bytes::try_from(data.slice(1..))
                                .ok()
                                .map(WsMessage::Text),
                            Some(b'B') => Some(WsMessage::Binary(data.slice(1..))),
                            _ => None,
                        },
                        (Payload::Message(data), Mode::Session) => {
                            let frame = match data.first() {
                                Some(b'T') => Frame::Text {
                                    seq: item.seq,
                                    text: data.slice(1..),
                                },
                                _ => Frame::Binary {
                                    seq: item.seq,
                                    data: data.slice(1..),
                                },
                            };
                            Some(WsMessage::Binary(codec::encode(&frame)))
                        }
                        (Payload::Open, Mode::Session) => {
                            Some(WsMessage::Binary(codec::encode(&Frame::Open {
                                seq: item.seq,
                            })))
                        }
                        (Payload::Stop, mode) => {
                            stopped = true;
                            (mode == Mode::Session).then(|| {
                                WsMessage::Binary(codec::encode(&Frame::Stop { seq: item.seq }))
                            })
                        }
                        _ => None,
                    };
                    if let Some(m) = message {
                        send_frame(&tx, m);
                    }
                }
                if stopped {
                    send_frame(&tx, close_frame(CLOSE_STOPPED, "stop"));
                    for w in self.stop_waiters.drain(..) {
                        let _ = w.send(());
                    }
                }
                if self.mode == Mode::Plain
                    && let Some(last) = last
                {
                    // A plain client cannot acknowledge: what its writer flushed counts as
                    // delivered (`Command::Written`), so a client that does not read holds
                    // at most the session's buffer limit.
                    let _ = tx.send(Out::Written(last));
                }
                if end {
                    self.conns.remove(&conn_id);
                }
            }
            Transmit::Ping { path } => {
                let idle = self.inner.options.idle_timeout;
                if let Some((conn_id, conn)) = self.conn_for(path) {
                    if now.duration_since(conn.last_heard) > idle {
                        tracing::debug!(session = %self.id, "connection idle, dropping it");
                        send_frame(&conn.tx, close_frame(1001, "idle"));
                        self.conns.remove(&conn_id);
                        self.core.detach(now, path);
                        if self.mode == Mode::Plain {
                            let _ = self.core.handle_peer_close(now);
                        }
                    } else {
                        send_frame(&conn.tx, WsMessage::Ping(Bytes::new()));
                    }
                }
            }
            Transmit::End { path } => {
                if let Some((conn_id, conn)) = self.conn_for(path) {
                    let frame = match self.core.close_reason() {
                        Some(reason) => close_frame(CLOSE_CLOSED, &reason.to_string()),
                        None => close_frame(1000, "replaced"),
                    };
                    send_frame(&conn.tx, frame);
                    self.conns.remove(&conn_id);
                }
            }
        }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::StateChanged { new, .. } => self.status.send_modify(|s| s.state = new),
            Event::Closed(reason) => {
                tracing::debug!(session = %self.id, %reason, "session closed");
                self.inner.forget(&self.id);
                self.messages = None;
                self.stop_waiters.clear();
                self.status.send_modify(|s| {
                    s.state = State::Closed;
                    s.close_reason = Some(reason);
                });
            }
            Event::Message { data, .. } => {
                let Some(m) = Message::from_tagged(&data) else {
                    return;
                };
                if !self
                    .unread
                    .deliver(m.len(), self.inner.options.max_unread_bytes)
                {
                    // The application does not keep up: hold no more for it.
                    self.messages = None;
                    let _ = self.core.close(
                        now(),
                        CloseReason::Protocol("the application is not reading".into()),
                    );
                    return;
                }
                if let Some(tx) = &self.messages {
                    let _ = tx.send(m);
                }
            }
            Event::Acked { seq } => {
                if let Some(ack) = self.acks.remove(&seq) {
                    let _ = ack.send(Ok(()));
                }
            }
            Event::SendFailed { seq, reason } => {
                if let Some(ack) = self.acks.remove(&seq) {
                    let _ = ack.send(Err(SendError::Closed(reason)));
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<StdInstant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
