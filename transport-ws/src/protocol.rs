//! One WebSocket session as a sans-IO machine: WebSocket messages in, WebSocket messages
//! out. It owns every protocol decision — the hello and resumption, session mode's sequence
//! numbers and acknowledgements, plain mode's "written counts as acknowledged", keep-alive
//! pings and the idle timeout, the close codes — on top of a `browserver-core`
//! [`Session`](Core). Plain mode is the degenerate case: no hello, no numbers, no resumption.
//! Time is an argument; the simulator drives it exactly as the runtime's driver does.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use browserver_core::{
    CloseReason, Event as CoreEvent, PathId, PathMode, Payload, Session as Core, State,
    Transmit as CoreTransmit,
};
use browserver_runtime::{Event, Machine, Message, Output, Outputs, SendError, send_bytes};
use bytes::Bytes;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::codec::{self, CLOSE_CLOSED, CLOSE_STOPPED, Frame};

/// How the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A plain WebSocket client: one frame per message, nothing else sent to it; a send
    /// counts as acknowledged once written to the socket; no resumption.
    Plain,
    /// The negotiated session mode: sequence numbers, acknowledgements, resumption.
    Session,
}

/// Identifies one WebSocket connection of a session (the I/O side chooses it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub u64);

/// What the connection tasks feed in.
#[derive(Debug)]
#[non_exhaustive]
pub enum Input {
    /// A new connection (the first, or a resumption with the client's acknowledgement).
    Attach {
        /// The connection.
        conn: ConnId,
        /// The client's `ack` (resumption).
        ack: Option<u64>,
    },
    /// A message read from `conn`.
    Frame {
        /// The connection.
        conn: ConnId,
        /// The message.
        message: WsMessage,
    },
    /// Plain mode: `conn` flushed every message up to `upto` to its socket.
    Written {
        /// The connection.
        conn: ConnId,
        /// The last message written.
        upto: u64,
    },
    /// `conn` ended without a close frame.
    Gone {
        /// The connection.
        conn: ConnId,
    },
}

/// What the connection tasks are asked to do.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Transmit {
    /// Write `message` on `conn`.
    Frame {
        /// The connection.
        conn: ConnId,
        /// The message.
        message: WsMessage,
    },
    /// Plain mode: report [`Input::Written`] once everything before this is flushed.
    Written {
        /// The connection.
        conn: ConnId,
        /// The last message queued.
        upto: u64,
    },
    /// Nothing more will be written on `conn`: close it once its queue is written.
    Release {
        /// The connection.
        conn: ConnId,
    },
}

/// The machine's settings (from the endpoint's options).
#[derive(Debug, Clone)]
pub struct Config {
    /// The session id (sent in the hello).
    pub id: String,
    /// The resume token (sent in the hello).
    pub resume_token: String,
    /// Plain or session mode.
    pub mode: Mode,
    /// Ping period on an idle connection.
    pub keep_alive_interval: Duration,
    /// How long a session-mode session waits for its client to resume.
    pub session_timeout: Duration,
    /// A connection from which nothing arrived this long is dropped.
    pub idle_timeout: Duration,
    /// Unacknowledged outbound bytes retained.
    pub max_buffered_bytes: usize,
    /// How far ahead of a missing message others are held.
    pub reorder_window: u64,
    /// Session mode: how long an acknowledgement may wait for company.
    pub ack_delay: Duration,
}

#[derive(Debug)]
struct Conn {
    path: PathId,
    last_heard: Instant,
}

/// One WebSocket session, server side.
#[derive(Debug)]
pub struct SessionMachine {
    core: Core,
    config: Config,
    conns: HashMap<ConnId, Conn>,
    /// Plain mode: the sequence number of the next message (plain clients send none).
    inbound_next: u64,
    /// Whether message frames were written during this drain (an acknowledgement rides
    /// along at once).
    wrote: bool,
    out: Outputs<Transmit>,
}

/// A close frame; the reason cut to 120 bytes (a control frame holds 125).
pub fn close_frame(code: u16, reason: &str) -> WsMessage {
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    WsMessage::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason[..end].into(),
    }))
}

fn tagged(tag: u8, body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(tag);
    out.extend_from_slice(body);
    Bytes::from(out)
}

impl SessionMachine {
    /// A new session at `now`.
    pub fn new(config: Config, now: Instant) -> SessionMachine {
        let core_config = browserver_core::Config {
            keepalive_interval: config.keep_alive_interval,
            session_timeout: config.session_timeout,
            attach_timeout: config.session_timeout,
            keepalive: browserver_core::KeepaliveMode::Ping,
            max_buffered_bytes: config.max_buffered_bytes,
            reorder_window: config.reorder_window,
            // Plain clients get no acknowledgements: no timer for them.
            ack_delay: if config.mode == Mode::Session {
                config.ack_delay
            } else {
                Duration::ZERO
            },
            ..browserver_core::Config::default()
        };
        SessionMachine {
            core: Core::new(browserver_core::Role::Server, core_config, now),
            config,
            conns: HashMap::new(),
            inbound_next: 0,
            wrote: false,
            out: Outputs::default(),
        }
    }

    fn frame_out(&mut self, conn: ConnId, message: WsMessage) {
        self.out.transmit(Transmit::Frame { conn, message });
    }

    fn release(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
        self.out.transmit(Transmit::Release { conn });
    }

    fn attach(&mut self, now: Instant, conn: ConnId, ack: Option<u64>) {
        if let Some(ack) = ack {
            // An acknowledgement of messages never sent is ignored (the core refuses it).
            let _ = self.core.handle_ack(now, ack);
        }
        let resumed = self.core.state() != State::Init;
        let Ok(path) = self.core.attach(now, PathMode::default()) else {
            self.frame_out(conn, close_frame(CLOSE_CLOSED, "closed"));
            self.out.transmit(Transmit::Release { conn });
            return;
        };
        if self.config.mode == Mode::Session {
            let hello = Frame::Hello {
                sid: self.config.id.clone(),
                ack: self.core.ack_position(),
                resumed,
                token: Some(self.config.resume_token.clone()),
            };
            self.frame_out(conn, WsMessage::Binary(codec::encode(&hello)));
            // The hello carries the acknowledgement.
            let _ = self.core.poll_ack(true);
        }
        self.conns.insert(
            conn,
            Conn {
                path,
                last_heard: now,
            },
        );
    }

    fn frame_in(&mut self, now: Instant, conn: ConnId, message: WsMessage) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.last_heard = now;
        match (self.config.mode, message) {
            (_, WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_)) => {}
            // A close frame is the client's decision (a browser tab going away included); only
            // a connection lost without one can be resumed.
            (_, WsMessage::Close(_)) => {
                self.conns.remove(&conn);
                let _ = self.core.handle_peer_close(now);
            }
            (Mode::Plain, WsMessage::Text(text)) => {
                self.plain_message(now, tagged(b'T', text.as_bytes()));
            }
            (Mode::Plain, WsMessage::Binary(data)) => {
                self.plain_message(now, tagged(b'B', &data));
            }
            (Mode::Session, WsMessage::Binary(data)) => match codec::decode(&data) {
                Ok(Frame::Text { seq, text }) => {
                    let _ =
                        self.core
                            .handle_incoming(now, seq, Payload::Message(tagged(b'T', &text)));
                }
                Ok(Frame::Binary { seq, data }) => {
                    let _ =
                        self.core
                            .handle_incoming(now, seq, Payload::Message(tagged(b'B', &data)));
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

    fn plain_message(&mut self, now: Instant, data: Bytes) {
        let seq = self.inbound_next;
        self.inbound_next = self.inbound_next.saturating_add(1);
        let _ = self.core.handle_incoming(now, seq, Payload::Message(data));
    }

    fn protocol_error(&mut self, now: Instant, what: &str) {
        let _ = self
            .core
            .close(now, CloseReason::Protocol(what.to_string()));
    }

    fn conn_for(&self, path: PathId) -> Option<ConnId> {
        self.conns
            .iter()
            .find(|(_, c)| c.path == path)
            .map(|(k, _)| *k)
    }

    fn write(&mut self, transmit: CoreTransmit) {
        match transmit {
            CoreTransmit::Batch { path, items, end } => {
                let Some(conn) = self.conn_for(path) else {
                    return;
                };
                self.wrote = true;
                let mode = self.config.mode;
                let mut stopped = false;
                let mut last = None;
                for item in &items {
                    last = Some(item.seq);
                    let message = match (&item.payload, mode) {
                        // The body is sliced out of the payload, not copied (text was valid
                        // UTF-8 when the application gave it).
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
                        self.frame_out(conn, m);
                    }
                }
                if stopped {
                    self.frame_out(conn, close_frame(CLOSE_STOPPED, "stop"));
                    self.out.event(Event::StopWritten);
                }
                if mode == Mode::Plain
                    && let Some(upto) = last
                {
                    // A plain client cannot acknowledge: what its writer flushed counts as
                    // delivered (`Input::Written`), so a client that does not read holds at
                    // most the session's buffer limit.
                    self.out.transmit(Transmit::Written { conn, upto });
                }
                if end {
                    self.release(conn);
                }
            }
            CoreTransmit::Ping { path } => {
                let Some(conn) = self.conn_for(path) else {
                    return;
                };
                let now = self.core.now();
                let idle = self
                    .conns
                    .get(&conn)
                    .is_some_and(|c| now.duration_since(c.last_heard) > self.config.idle_timeout);
                if idle {
                    self.frame_out(conn, close_frame(1001, "idle"));
                    self.release(conn);
                    self.core.detach(now, path);
                    if self.config.mode == Mode::Plain {
                        let _ = self.core.handle_peer_close(now);
                    }
                } else {
                    self.frame_out(conn, WsMessage::Ping(Bytes::new()));
                }
            }
            CoreTransmit::End { path } => {
                if let Some(conn) = self.conn_for(path) {
                    let frame = match self.core.close_reason() {
                        Some(reason) => close_frame(CLOSE_CLOSED, &reason.to_string()),
                        None => close_frame(1000, "replaced"),
                    };
                    self.frame_out(conn, frame);
                    self.release(conn);
                }
            }
            _ => {}
        }
    }

    fn event(&mut self, event: CoreEvent) {
        let Some(data) = self.out.core_event(event) else {
            return;
        };
        let message = match data.split_first() {
            Some((b'T', text)) => match String::from_utf8(text.to_vec()) {
                Ok(text) => Message::Text(text),
                Err(_) => return,
            },
            Some((b'B', _)) => Message::Binary(data.slice(1..)),
            _ => return,
        };
        self.out.event(Event::Message(message));
    }
}

impl Machine for SessionMachine {
    type Input = Input;
    type Transmit = Transmit;

    fn core(&self) -> &Core {
        &self.core
    }

    fn core_mut(&mut self) -> &mut Core {
        &mut self.core
    }

    fn handle_input(&mut self, now: Instant, input: Input) {
        match input {
            Input::Attach { conn, ack } => self.attach(now, conn, ack),
            Input::Frame { conn, message } => self.frame_in(now, conn, message),
            Input::Written { conn, upto } => {
                if self.config.mode == Mode::Plain && self.conns.contains_key(&conn) {
                    let _ = self.core.handle_ack(now, upto);
                }
            }
            Input::Gone { conn } => {
                if let Some(c) = self.conns.remove(&conn) {
                    self.out.transmit(Transmit::Release { conn });
                    if self.core.detach(now, c.path) && self.config.mode == Mode::Plain {
                        let _ = self.core.handle_peer_close(now);
                    }
                }
            }
        }
    }

    fn send(&mut self, now: Instant, message: Message) -> Result<u64, SendError> {
        let data = match &message {
            Message::Text(text) => tagged(b'T', text.as_bytes()),
            Message::Binary(data) => tagged(b'B', data),
            _ => {
                return Err(SendError::Unsupported(
                    "WebSocket carries text and binary messages, not maps",
                ));
            }
        };
        send_bytes(&mut self.core, now, data)
    }

    fn poll_output(&mut self) -> Output<Transmit> {
        loop {
            if let Some(output) = self.out.pop() {
                return output;
            }
            let transmit = self.core.poll_transmit();
            let event = self.core.poll_event();
            if transmit.is_none() && event.is_none() {
                // Session mode: acknowledge what the application has been given, when the
                // core says it is due (at once if frames were just written: they leave in
                // the same write).
                let wrote = std::mem::take(&mut self.wrote);
                if self.config.mode == Mode::Session
                    && let Some(conn) = self.conns.keys().next().copied()
                    && let Some(upto) = self.core.poll_ack(wrote)
                {
                    let ack = WsMessage::Binary(codec::encode(&Frame::Ack { upto }));
                    self.frame_out(conn, ack);
                    continue;
                }
                return Output::Timeout(self.core.poll_timeout());
            }
            if let Some(t) = transmit {
                self.write(t);
            }
            if let Some(e) = event {
                self.event(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(mode: Mode) -> Config {
        Config {
            id: "s1".into(),
            resume_token: "secret".into(),
            mode,
            keep_alive_interval: Duration::from_secs(10),
            session_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(20),
            max_buffered_bytes: 1 << 20,
            reorder_window: 100,
            ack_delay: Duration::from_millis(100),
        }
    }

    fn outputs(m: &mut SessionMachine) -> (Vec<Transmit>, Vec<Event>) {
        let (mut transmits, mut events) = (Vec::new(), Vec::new());
        loop {
            match m.poll_output() {
                Output::Transmit(t) => transmits.push(t),
                Output::Event(e) => events.push(e),
                Output::Timeout(_) => return (transmits, events),
            }
        }
    }

    /// The session-mode frames written, decoded (close frames and pings as `None`).
    /// When the machine next wants `handle_timeout` (draining what it had to say).
    fn next_timeout(m: &mut SessionMachine) -> Option<Instant> {
        loop {
            if let Output::Timeout(t) = m.poll_output() {
                return t;
            }
        }
    }

    fn frames(transmits: &[Transmit]) -> Vec<Frame> {
        transmits
            .iter()
            .filter_map(|t| match t {
                Transmit::Frame {
                    message: WsMessage::Binary(b),
                    ..
                } => Some(codec::decode(b).expect("a session frame")),
                _ => None,
            })
            .collect()
    }

    fn closes(transmits: &[Transmit]) -> Vec<u16> {
        transmits
            .iter()
            .filter_map(|t| match t {
                Transmit::Frame {
                    message: WsMessage::Close(Some(f)),
                    ..
                } => Some(u16::from(f.code)),
                _ => None,
            })
            .collect()
    }

    fn frame(m: &mut SessionMachine, now: Instant, conn: u64, message: WsMessage) {
        m.handle_input(
            now,
            Input::Frame {
                conn: ConnId(conn),
                message,
            },
        );
    }

    fn session(now: Instant) -> (SessionMachine, Vec<Frame>) {
        let mut m = SessionMachine::new(config(Mode::Session), now);
        m.handle_input(
            now,
            Input::Attach {
                conn: ConnId(1),
                ack: None,
            },
        );
        let (transmits, _) = outputs(&mut m);
        (m, frames(&transmits))
    }

    fn plain(now: Instant) -> SessionMachine {
        let mut m = SessionMachine::new(config(Mode::Plain), now);
        m.handle_input(
            now,
            Input::Attach {
                conn: ConnId(1),
                ack: None,
            },
        );
        let _ = outputs(&mut m);
        m
    }

    #[test]
    fn a_session_starts_with_a_hello_carrying_the_id_and_resume_token() {
        let (_, frames) = session(Instant::now());
        assert_eq!(
            frames[0],
            Frame::Hello {
                sid: "s1".into(),
                ack: None,
                resumed: false,
                token: Some("secret".into()),
            }
        );
    }

    #[test]
    fn session_frames_are_delivered_and_acknowledged() {
        let t0 = Instant::now();
        let (mut m, _) = session(t0);
        let text = codec::encode(&Frame::Text {
            seq: 0,
            text: Bytes::from_static(b"hi"),
        });
        let binary = codec::encode(&Frame::Binary {
            seq: 1,
            data: Bytes::from_static(&[0, 255]),
        });
        frame(&mut m, t0, 1, WsMessage::Binary(text));
        frame(&mut m, t0, 1, WsMessage::Binary(binary));
        let (transmits, events) = outputs(&mut m);
        assert!(events.contains(&Event::Message(Message::Text("hi".into()))));
        assert!(
            events.contains(&Event::Message(Message::Binary(Bytes::from_static(&[
                0, 255
            ]))))
        );
        // The acknowledgement waits for company, then goes.
        assert!(!frames(&transmits).contains(&Frame::Ack { upto: 1 }));
        let due = next_timeout(&mut m).expect("the ack timer");
        m.handle_timeout(due);
        let (transmits, _) = outputs(&mut m);
        assert!(frames(&transmits).contains(&Frame::Ack { upto: 1 }));
    }

    #[test]
    fn sends_are_numbered_and_resolved_by_the_clients_ack() {
        let t0 = Instant::now();
        let (mut m, _) = session(t0);
        let first = m.send(t0, Message::Text("a".into())).expect("send");
        let second = m
            .send(t0, Message::Binary(Bytes::from_static(b"b")))
            .expect("send");
        assert_eq!(second, first + 1);
        let (transmits, _) = outputs(&mut m);
        let frames = frames(&transmits);
        assert!(frames.contains(&Frame::Text {
            seq: first,
            text: Bytes::from_static(b"a")
        }));
        assert!(frames.contains(&Frame::Binary {
            seq: second,
            data: Bytes::from_static(b"b")
        }));
        let ack = codec::encode(&Frame::Ack { upto: second });
        frame(&mut m, t0, 1, WsMessage::Binary(ack));
        let (_, events) = outputs(&mut m);
        assert!(events.contains(&Event::Acked(first)));
        assert!(events.contains(&Event::Acked(second)));
        assert!(matches!(
            m.send(t0, Message::Map(Default::default())),
            Err(SendError::Unsupported(_))
        ));
    }

    #[test]
    fn a_text_frame_or_garbage_in_session_mode_is_a_protocol_error() {
        let t0 = Instant::now();
        for message in [
            WsMessage::Text("hi".into()),
            WsMessage::Binary(Bytes::from_static(b"\xff\xff")),
            WsMessage::Binary(codec::encode(&Frame::Stop { seq: 0 })),
        ] {
            let (mut m, _) = session(t0);
            frame(&mut m, t0, 1, message.clone());
            let (transmits, events) = outputs(&mut m);
            assert!(
                matches!(m.close_reason(), Some(CloseReason::Protocol(_))),
                "{message:?}"
            );
            assert_eq!(closes(&transmits), [CLOSE_CLOSED]);
            assert!(
                events
                    .iter()
                    .any(|e| matches!(e, Event::Closed(CloseReason::Protocol(_))))
            );
        }
    }

    #[test]
    fn a_lost_connection_can_be_resumed_with_the_clients_ack() {
        let t0 = Instant::now();
        let (mut m, _) = session(t0);
        let seq = m.send(t0, Message::Text("a".into())).expect("send");
        let _ = outputs(&mut m);
        m.handle_input(t0, Input::Gone { conn: ConnId(1) });
        let (transmits, _) = outputs(&mut m);
        assert!(transmits.contains(&Transmit::Release { conn: ConnId(1) }));
        assert!(!m.is_closed());
        m.handle_input(
            t0,
            Input::Attach {
                conn: ConnId(2),
                ack: Some(seq),
            },
        );
        let (transmits, events) = outputs(&mut m);
        assert!(matches!(
            frames(&transmits)[0],
            Frame::Hello { resumed: true, .. }
        ));
        assert!(events.contains(&Event::Acked(seq)));
        // What the client had is not sent again.
        assert!(
            !frames(&transmits)
                .iter()
                .any(|f| matches!(f, Frame::Text { .. }))
        );
    }

    #[test]
    fn a_close_frame_from_the_client_ends_the_session() {
        let t0 = Instant::now();
        let (mut m, _) = session(t0);
        frame(&mut m, t0, 1, close_frame(1000, "bye"));
        let (_, events) = outputs(&mut m);
        assert!(events.contains(&Event::Closed(CloseReason::PeerClosed)));
        // Frames on a connection the session does not know are ignored.
        let mut m = plain(t0);
        frame(&mut m, t0, 9, WsMessage::Text("x".into()));
        let (_, events) = outputs(&mut m);
        assert!(events.is_empty());
    }

    #[test]
    fn attaching_to_a_closed_session_is_refused_with_a_close_frame() {
        let t0 = Instant::now();
        let (mut m, _) = session(t0);
        m.close(t0, CloseReason::Closed(None));
        let _ = outputs(&mut m);
        m.handle_input(
            t0,
            Input::Attach {
                conn: ConnId(2),
                ack: None,
            },
        );
        let (transmits, _) = outputs(&mut m);
        assert_eq!(closes(&transmits), [CLOSE_CLOSED]);
        assert!(transmits.contains(&Transmit::Release { conn: ConnId(2) }));
    }

    #[test]
    fn stop_writes_the_stop_frame_then_closes_with_the_stop_code() {
        let t0 = Instant::now();
        let (mut m, _) = session(t0);
        assert!(m.stop(t0));
        let (transmits, events) = outputs(&mut m);
        assert!(
            frames(&transmits)
                .iter()
                .any(|f| matches!(f, Frame::Stop { .. }))
        );
        assert_eq!(closes(&transmits)[0], CLOSE_STOPPED);
        assert!(events.contains(&Event::StopWritten));
    }

    #[test]
    fn a_plain_client_gets_bare_messages_and_written_counts_as_acknowledged() {
        let t0 = Instant::now();
        let mut m = plain(t0);
        frame(&mut m, t0, 1, WsMessage::Text("a".into()));
        frame(&mut m, t0, 1, WsMessage::Binary(Bytes::from_static(b"b")));
        let (transmits, events) = outputs(&mut m);
        assert_eq!(
            events
                .iter()
                .filter(|e| matches!(e, Event::Message(_)))
                .count(),
            2
        );
        assert!(transmits.is_empty(), "no acknowledgement to a plain client");
        let seq = m.send(t0, Message::Text("hi".into())).expect("send");
        let (transmits, _) = outputs(&mut m);
        assert_eq!(
            transmits,
            [
                Transmit::Frame {
                    conn: ConnId(1),
                    message: WsMessage::Text("hi".into())
                },
                Transmit::Written {
                    conn: ConnId(1),
                    upto: seq
                }
            ]
        );
        // Only the connection's own writer can say it was written.
        m.handle_input(
            t0,
            Input::Written {
                conn: ConnId(7),
                upto: seq,
            },
        );
        assert!(!outputs(&mut m).1.contains(&Event::Acked(seq)));
        m.handle_input(
            t0,
            Input::Written {
                conn: ConnId(1),
                upto: seq,
            },
        );
        assert!(outputs(&mut m).1.contains(&Event::Acked(seq)));
    }

    #[test]
    fn a_plain_connection_lost_ends_the_session() {
        let t0 = Instant::now();
        let mut m = plain(t0);
        m.handle_input(t0, Input::Gone { conn: ConnId(1) });
        let (transmits, events) = outputs(&mut m);
        assert!(transmits.contains(&Transmit::Release { conn: ConnId(1) }));
        assert!(events.contains(&Event::Closed(CloseReason::PeerClosed)));
    }

    /// Runs the timers until `until`, returning when each ping or close was written.
    fn run(m: &mut SessionMachine, t0: Instant, until: Duration) -> Vec<(Duration, &'static str)> {
        let mut seen = Vec::new();
        while let Some(due) = next_timeout(m) {
            if due > t0 + until {
                break;
            }
            m.handle_timeout(due);
            let (transmits, _) = outputs(m);
            for t in transmits {
                match t {
                    Transmit::Frame {
                        message: WsMessage::Ping(_),
                        ..
                    } => seen.push((due - t0, "ping")),
                    Transmit::Frame {
                        message: WsMessage::Close(_),
                        ..
                    } => seen.push((due - t0, "close")),
                    Transmit::Release { .. } => seen.push((due - t0, "release")),
                    _ => {}
                }
            }
        }
        seen
    }

    #[test]
    fn an_idle_connection_is_pinged_then_dropped_after_the_idle_timeout() {
        let t0 = Instant::now();
        let mut m = plain(t0);
        let seen = run(&mut m, t0, Duration::from_secs(60));
        let s = Duration::from_secs;
        // Silent for exactly the idle timeout is still allowed; past it is not.
        assert_eq!(
            seen,
            [
                (s(10), "ping"),
                (s(20), "ping"),
                (s(30), "close"),
                (s(30), "release")
            ],
            "{seen:?}"
        );
        assert!(m.is_closed(), "a plain session ends with its connection");
    }

    #[test]
    fn a_pong_keeps_a_connection_alive() {
        let t0 = Instant::now();
        let mut m = plain(t0);
        let _ = run(&mut m, t0, Duration::from_secs(20));
        frame(
            &mut m,
            t0 + Duration::from_secs(25),
            1,
            WsMessage::Pong(Bytes::new()),
        );
        let seen = run(&mut m, t0, Duration::from_secs(40));
        assert!(!seen.iter().any(|(_, what)| *what == "close"), "{seen:?}");
    }

    #[test]
    fn a_close_reason_is_cut_to_fit_a_control_frame_on_a_character_boundary() {
        let reason = format!("{}é and more", "x".repeat(119));
        let WsMessage::Close(Some(f)) = close_frame(4000, &reason) else {
            panic!("a close frame");
        };
        assert_eq!(f.reason.as_str(), "x".repeat(119));
        let WsMessage::Close(Some(f)) = close_frame(4000, "short") else {
            panic!("a close frame");
        };
        assert_eq!(f.reason.as_str(), "short");
    }
}
