//! The client side of WebSocket session mode for one session, as a sans-IO machine: the
//! hello, sequenced frames both ways, acknowledgements, and resumption of a connection lost
//! without a close frame (`?resume=<token>&ack=<n>`, retried with backoff within a window).
//! Frames in, frames and connection requests out; every deadline is in this machine's timer,
//! so the simulator runs it exactly as the client's driver does. The wire format is
//! [`codec`], shared with the server's [`SessionMachine`](crate::SessionMachine).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use browserver_core::{CloseReason, PathId, PathMode, Payload, Role, Session as Core};
use bytes::Bytes;
use tokio_tungstenite::tungstenite::Message as WsMessage;

pub use browserver_runtime::ClientEvent;

use crate::codec::{self, CLOSE_CLOSED, CLOSE_STOPPED, Frame};

/// Settings of one client session.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Deadline of a connection attempt, its hello included. 10 s.
    pub connect_timeout: Duration,
    /// How long a lost connection is retried before the session is given up. 25 s.
    pub resume_for: Duration,
    /// The first resume attempt is at once; then this delay, doubling. 100 ms.
    pub retry_delay: Duration,
    /// Upper bound of the resume delay. 2 s.
    pub max_retry_delay: Duration,
    /// How long an acknowledgement of the server's messages waits for company (more
    /// messages, or a frame of ours to ride with). 10 ms.
    pub ack_delay: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(10),
            resume_for: Duration::from_secs(25),
            retry_delay: Duration::from_millis(100),
            max_retry_delay: Duration::from_secs(2),
            ack_delay: Duration::from_millis(10),
        }
    }
}

/// What the I/O side feeds in.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientInput {
    /// The WebSocket handshake of the last [`ClientTransmit::Connect`] succeeded (with the
    /// session-mode subprotocol).
    Connected,
    /// A message read from the connection.
    Frame(WsMessage),
    /// The connection, or the attempt to make it, failed or ended without a close frame.
    Lost(String),
    /// The server answered the handshake with 401 or 403: the session is refused.
    Refused {
        /// The HTTP status.
        status: u16,
        /// The answer's body (the server's reason).
        reason: String,
    },
}

/// What the I/O side is asked to do.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientTransmit {
    /// Open a connection with these query parameters added (none the first time; the resume
    /// token and acknowledgement after a loss), replacing any previous one.
    Connect {
        /// The parameters.
        params: Vec<(String, String)>,
    },
    /// Write this on the current connection.
    Frame(WsMessage),
    /// Close the current connection (a close frame, then the socket).
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    /// A `Connect` is out; the handshake, then the hello, are due by `deadline`.
    Connecting { deadline: Instant, connected: bool },
    /// The hello arrived: frames flow on the core's `path`.
    Open { path: PathId },
    /// No connection; the next attempt at `at`.
    Waiting { at: Instant },
    /// The session is over.
    Done,
}

/// One WebSocket session-mode session, client side.
#[derive(Debug)]
pub struct ClientMachine {
    core: Core,
    config: ClientConfig,
    conn: Conn,
    sid: Option<String>,
    /// The secret that resumes this session (only in our hello).
    token: Option<String>,
    /// When the connection was lost (the resume window's start).
    lost_at: Option<Instant>,
    /// The wait before the next resume attempt.
    backoff: Duration,
    transmits: VecDeque<ClientTransmit>,
    events: VecDeque<ClientEvent>,
}

impl ClientMachine {
    /// A session that is not connected yet: `send` queues, [`open`](Self::open) connects.
    pub fn new(config: ClientConfig, now: Instant) -> ClientMachine {
        let core_config = browserver_core::Config {
            keepalive_interval: Duration::MAX,
            session_timeout: Duration::MAX,
            attach_timeout: Duration::MAX,
            ack_delay: config.ack_delay,
            ..browserver_core::Config::default()
        };
        ClientMachine {
            core: Core::new(Role::Client, core_config, now),
            config,
            conn: Conn::Waiting { at: now },
            sid: None,
            token: None,
            lost_at: None,
            backoff: Duration::ZERO,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Asks for the first connection.
    pub fn open(&mut self, now: Instant) {
        if self.sid.is_none() && matches!(self.conn, Conn::Waiting { .. }) {
            self.connect(now, Vec::new());
        }
    }

    /// Whether the session is over (nothing more will be transmitted).
    pub fn is_closed(&self) -> bool {
        self.conn == Conn::Done
    }

    /// Queues a message and sends it if connected; `Ok(seq)` is resolved by `Acked` or
    /// `SendFailed`. JSON text travels as a text message; bytes that start with a control
    /// character (below 0x20, which JSON text never does: a browserver stream frame) travel
    /// as a binary message.
    pub fn send(&mut self, now: Instant, data: Bytes) -> Result<u64, browserver_core::SendError> {
        let seq = self.core.send(now, data)?;
        self.after();
        Ok(seq)
    }

    /// The application closes the session: the connection gets a close frame.
    pub fn close(&mut self, now: Instant) {
        let _ = self.core.close(now, CloseReason::Closed(None));
        self.after();
    }

    /// Feeds what the connection did.
    pub fn handle_input(&mut self, now: Instant, input: ClientInput) {
        match (self.conn, input) {
            (Conn::Connecting { deadline, .. }, ClientInput::Connected) => {
                self.conn = Conn::Connecting {
                    deadline,
                    connected: true,
                };
            }
            (
                Conn::Connecting {
                    connected: true, ..
                },
                ClientInput::Frame(m),
            ) => self.hello(now, m),
            (Conn::Open { path }, ClientInput::Frame(m)) => self.frame(now, path, m),
            (Conn::Connecting { .. } | Conn::Open { .. }, ClientInput::Lost(why)) => {
                self.lost(now, why);
            }
            (Conn::Connecting { .. }, ClientInput::Refused { status, reason }) => {
                let why = refused(status, &reason);
                self.events
                    .push_back(ClientEvent::Refused { status, reason });
                let _ = self.core.close(now, CloseReason::Protocol(why));
            }
            // Late news of a connection already given up.
            _ => {}
        }
        self.after();
    }

    /// Runs the deadlines due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.core.handle_timeout(now);
        match self.conn {
            Conn::Connecting { deadline, .. } if deadline <= now => {
                self.transmits.push_back(ClientTransmit::Close);
                self.lost(now, "timed out".into());
            }
            Conn::Waiting { at } if at <= now && self.sid.is_some() => {
                let mut params = Vec::new();
                if let Some(token) = &self.token {
                    params.push(("resume".to_string(), token.clone()));
                }
                if let Some(ack) = self.core.ack_position() {
                    params.push(("ack".to_string(), ack.to_string()));
                }
                // The resumption carries the acknowledgement.
                let _ = self.core.poll_ack(true);
                self.connect(now, params);
            }
            _ => {}
        }
        self.after();
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let own = match self.conn {
            Conn::Connecting { deadline, .. } => Some(deadline),
            Conn::Waiting { at } if self.sid.is_some() => Some(at),
            _ => None,
        };
        let core = match self.conn {
            Conn::Open { .. } => self.core.poll_timeout(),
            _ => None,
        };
        own.into_iter().chain(core).min()
    }

    /// The next thing for the I/O side to do.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<ClientTransmit> {
        self.transmits.pop_front()
    }

    /// The next event for the application.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    fn connect(&mut self, now: Instant, params: Vec<(String, String)>) {
        self.transmits.push_back(ClientTransmit::Connect { params });
        self.conn = Conn::Connecting {
            deadline: now + self.config.connect_timeout,
            connected: false,
        };
    }

    /// The first frame of a connection.
    fn hello(&mut self, now: Instant, message: WsMessage) {
        let hello = match &message {
            WsMessage::Binary(b) => codec::decode(b).ok(),
            _ => None,
        };
        let Some(Frame::Hello {
            sid,
            ack,
            resumed,
            token,
        }) = hello
        else {
            self.transmits.push_back(ClientTransmit::Close);
            return self.lost(now, "the first frame is not a hello".into());
        };
        if self.sid.is_some() && !resumed {
            // The server forgot the session: end the new one it made.
            let _ = self.core.close(now, CloseReason::PeerClosed);
            return;
        }
        if let Some(ack) = ack {
            // An acknowledgement of messages never sent is ignored (the core refuses it).
            let _ = self.core.handle_ack(now, ack);
        }
        if self.sid.is_none() {
            // Servers before resume tokens resumed by session id.
            self.token = Some(token.unwrap_or_else(|| sid.clone()));
            self.sid = Some(sid);
        }
        // Attaching re-sends whatever the server has not acknowledged.
        match self.core.attach(now, PathMode::default()) {
            Ok(path) => {
                self.conn = Conn::Open { path };
                self.lost_at = None;
                self.backoff = Duration::ZERO;
            }
            Err(_) => self.transmits.push_back(ClientTransmit::Close),
        }
    }

    fn frame(&mut self, now: Instant, path: PathId, message: WsMessage) {
        match message {
            WsMessage::Binary(b) => {
                let (seq, payload) = match codec::decode(&b) {
                    Ok(Frame::Open { seq }) => (seq, Payload::Open),
                    Ok(Frame::Text { seq, text }) => (seq, Payload::Message(text)),
                    Ok(Frame::Binary { seq, data }) => (seq, Payload::Message(data)),
                    Ok(Frame::Stop { seq }) => (seq, Payload::Stop),
                    Ok(Frame::Ack { upto }) => {
                        // An acknowledgement of messages never sent is ignored.
                        let _ = self.core.handle_ack(now, upto);
                        return;
                    }
                    Ok(other) => return self.protocol_error(now, &format!("unexpected {other:?}")),
                    Err(e) => return self.protocol_error(now, &e.to_string()),
                };
                // Messages already received (resent after a resumption) are dropped by the
                // core; one beyond its window closes the session.
                let _ = self.core.handle_incoming(now, seq, payload);
            }
            WsMessage::Text(_) => self.protocol_error(now, "text frame in session mode"),
            WsMessage::Close(close) => {
                let code = close.as_ref().map(|c| u16::from(c.code));
                let reason = match code {
                    Some(CLOSE_STOPPED) => CloseReason::Stopped,
                    Some(CLOSE_CLOSED) => CloseReason::Closed(
                        close
                            .map(|c| c.reason.to_string())
                            .filter(|r| !r.is_empty()),
                    ),
                    // Any other close (a server shutting down, a proxy): resume.
                    _ => return self.lost(now, format!("closed ({code:?})")),
                };
                self.core.detach(now, path);
                let _ = self.core.close(now, reason);
            }
            WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => {}
        }
    }

    fn protocol_error(&mut self, now: Instant, what: &str) {
        let _ = self.core.close(
            now,
            CloseReason::Protocol(format!("from the server: {what}")),
        );
    }

    /// The connection (or attempt) is gone: retry within the resume window, or give up.
    fn lost(&mut self, now: Instant, why: String) {
        if let Conn::Open { path } = self.conn {
            self.core.detach(now, path);
        }
        if self.sid.is_none() {
            // Never opened: the transport may be unavailable.
            self.events.push_back(ClientEvent::OpenFailed(why.clone()));
            let _ = self.core.close(now, CloseReason::Protocol(why));
            return;
        }
        let since = *self.lost_at.get_or_insert(now);
        if now.saturating_duration_since(since) >= self.config.resume_for {
            let _ = self.core.close(now, CloseReason::TimedOut);
            return;
        }
        self.conn = Conn::Waiting {
            at: now + self.backoff,
        };
        self.backoff = if self.backoff.is_zero() {
            self.config.retry_delay
        } else {
            (self.backoff * 2).min(self.config.max_retry_delay)
        };
    }

    /// Writes what the core has for the connection and moves its events out.
    fn after(&mut self) {
        if let Conn::Open { .. } = self.conn {
            let mut wrote = false;
            while let Some(t) = self.core.poll_transmit() {
                if let browserver_core::Transmit::Batch { items, .. } = t {
                    for item in items {
                        if let Payload::Message(data) = item.payload {
                            wrote = true;
                            let frame = if is_binary(&data) {
                                Frame::Binary {
                                    seq: item.seq,
                                    data,
                                }
                            } else {
                                Frame::Text {
                                    seq: item.seq,
                                    text: data,
                                }
                            };
                            self.transmits
                                .push_back(ClientTransmit::Frame(WsMessage::Binary(
                                    codec::encode(&frame),
                                )));
                        }
                    }
                }
            }
            if let Some(upto) = self.core.poll_ack(wrote) {
                let ack = WsMessage::Binary(codec::encode(&Frame::Ack { upto }));
                self.transmits.push_back(ClientTransmit::Frame(ack));
            }
        }
        if self.core.is_closed() && self.conn != Conn::Done {
            if matches!(self.conn, Conn::Open { .. } | Conn::Connecting { .. }) {
                self.transmits.push_back(ClientTransmit::Close);
            }
            self.conn = Conn::Done;
        }
        while let Some(e) = self.core.poll_event() {
            if let Some(event) = ClientEvent::from_core(e, self.sid.as_deref()) {
                self.events.push_back(event);
            }
        }
    }
}

/// Whether a payload travels as a binary message: its first byte is a control character
/// (a stream frame), which JSON text never starts with.
fn is_binary(data: &[u8]) -> bool {
    data.first()
        .is_some_and(|b| *b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r'))
}

/// How a refusal reads in the close reason.
fn refused(status: u16, reason: &str) -> String {
    if reason.is_empty() {
        format!("refused by the server (HTTP {status})")
    } else {
        format!("refused by the server (HTTP {status}): {reason}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::close_frame;

    fn transmits(m: &mut ClientMachine) -> Vec<ClientTransmit> {
        std::iter::from_fn(|| m.poll_transmit()).collect()
    }

    fn events(m: &mut ClientMachine) -> Vec<ClientEvent> {
        std::iter::from_fn(|| m.poll_event()).collect()
    }

    fn binary(frame: &Frame) -> ClientInput {
        ClientInput::Frame(WsMessage::Binary(codec::encode(frame)))
    }

    fn hello(resumed: bool, ack: Option<u64>) -> ClientInput {
        binary(&Frame::Hello {
            sid: "s1".into(),
            ack,
            resumed,
            token: Some("s1.secret".into()),
        })
    }

    /// A session whose first connection is open, with the server's `Open` received.
    fn open(now: Instant) -> ClientMachine {
        let mut m = ClientMachine::new(ClientConfig::default(), now);
        m.open(now);
        assert_eq!(
            transmits(&mut m),
            [ClientTransmit::Connect { params: vec![] }]
        );
        m.handle_input(now, ClientInput::Connected);
        m.handle_input(now, hello(false, None));
        m.handle_input(now, binary(&Frame::Open { seq: 0 }));
        assert_eq!(events(&mut m), [ClientEvent::Open { sid: "s1".into() }]);
        m
    }

    fn sent_frames(out: &[ClientTransmit]) -> Vec<Frame> {
        out.iter()
            .filter_map(|t| match t {
                ClientTransmit::Frame(WsMessage::Binary(b)) => codec::decode(b).ok(),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn messages_flow_both_ways_with_acknowledgements() {
        let t0 = Instant::now();
        let mut m = open(t0);
        let seq = m.send(t0, Bytes::from_static(b"1")).expect("send");
        // The pending acknowledgement of the server's `Open` rides along.
        let frames = sent_frames(&transmits(&mut m));
        assert_eq!(
            frames,
            [
                Frame::Text {
                    seq,
                    text: Bytes::from_static(b"1")
                },
                Frame::Ack { upto: 0 }
            ]
        );
        m.handle_input(t0, binary(&Frame::Ack { upto: seq }));
        m.handle_input(
            t0,
            binary(&Frame::Text {
                seq: 1,
                text: Bytes::from_static(b"2"),
            }),
        );
        assert_eq!(
            events(&mut m),
            [
                ClientEvent::Acked(seq),
                ClientEvent::Message(Bytes::from_static(b"2"))
            ]
        );
        // Our acknowledgement waits for company, then goes alone.
        let due = m.poll_timeout().expect("ack timer");
        assert_eq!(due, t0 + Duration::from_millis(10));
        m.handle_timeout(due);
        assert_eq!(sent_frames(&transmits(&mut m)), [Frame::Ack { upto: 1 }]);
    }

    #[test]
    fn a_lost_connection_is_resumed_at_once_with_the_token_and_ack() {
        let t0 = Instant::now();
        let mut m = open(t0);
        let seq = m.send(t0, Bytes::from_static(b"1")).expect("send");
        let _ = transmits(&mut m);
        m.handle_input(t0, ClientInput::Lost("reset".into()));
        assert_eq!(m.poll_timeout(), Some(t0));
        m.handle_timeout(t0);
        assert_eq!(
            transmits(&mut m),
            [ClientTransmit::Connect {
                params: vec![
                    ("resume".into(), "s1.secret".into()),
                    ("ack".into(), "0".into())
                ]
            }]
        );
        m.handle_input(t0, ClientInput::Connected);
        m.handle_input(t0, hello(true, None));
        // What the server did not acknowledge is sent again.
        assert_eq!(
            sent_frames(&transmits(&mut m)),
            [Frame::Text {
                seq,
                text: Bytes::from_static(b"1")
            }]
        );
        assert!(!m.is_closed());
    }

    #[test]
    fn resume_attempts_back_off_and_give_up_after_the_window() {
        let t0 = Instant::now();
        let mut m = open(t0);
        let mut now = t0;
        let mut waits = Vec::new();
        while !m.is_closed() {
            m.handle_input(now, ClientInput::Lost("refused".into()));
            let Some(at) = m.poll_timeout() else { break };
            waits.push(at - now);
            now = at;
            m.handle_timeout(now);
            let _ = transmits(&mut m);
        }
        let ms = Duration::from_millis;
        assert_eq!(
            &waits[..6],
            [ms(0), ms(100), ms(200), ms(400), ms(800), ms(1600)]
        );
        assert!(waits[6..].iter().all(|w| *w == ms(2000)), "{waits:?}");
        assert!(now - t0 >= Duration::from_secs(25));
        assert!(now - t0 < Duration::from_secs(28));
        assert!(events(&mut m).contains(&ClientEvent::Closed(CloseReason::TimedOut)));
    }

    #[test]
    fn a_forgotten_session_ends_as_closed_by_the_peer() {
        let t0 = Instant::now();
        let mut m = open(t0);
        m.handle_input(t0, ClientInput::Lost("reset".into()));
        m.handle_timeout(t0);
        let _ = transmits(&mut m);
        m.handle_input(t0, ClientInput::Connected);
        m.handle_input(t0, hello(false, None));
        assert_eq!(transmits(&mut m), [ClientTransmit::Close]);
        assert!(events(&mut m).contains(&ClientEvent::Closed(CloseReason::PeerClosed)));
        assert!(m.is_closed());
    }

    #[test]
    fn a_first_connection_that_fails_is_an_open_failure() {
        let t0 = Instant::now();
        let mut m = ClientMachine::new(ClientConfig::default(), t0);
        m.open(t0);
        m.open(t0);
        assert_eq!(transmits(&mut m).len(), 1, "opening twice connects once");
        m.handle_input(t0, ClientInput::Lost("refused".into()));
        let events = events(&mut m);
        assert_eq!(events[0], ClientEvent::OpenFailed("refused".into()));
        assert!(m.is_closed());
    }

    #[test]
    fn a_refused_handshake_ends_the_session_with_the_servers_reason() {
        let t0 = Instant::now();
        let mut m = ClientMachine::new(ClientConfig::default(), t0);
        m.open(t0);
        let _ = transmits(&mut m);
        m.handle_input(
            t0,
            ClientInput::Refused {
                status: 403,
                reason: "wrong token".into(),
            },
        );
        let events = events(&mut m);
        assert_eq!(
            events[0],
            ClientEvent::Refused {
                status: 403,
                reason: "wrong token".into()
            }
        );
        assert!(events.contains(&ClientEvent::Closed(CloseReason::Protocol(
            "refused by the server (HTTP 403): wrong token".into()
        ))));
        assert!(m.is_closed());
        assert_eq!(m.poll_timeout(), None, "no retry");
    }

    #[test]
    fn a_connection_without_a_hello_in_time_is_abandoned() {
        let t0 = Instant::now();
        let mut m = ClientMachine::new(ClientConfig::default(), t0);
        m.open(t0);
        let _ = transmits(&mut m);
        m.handle_input(t0, ClientInput::Connected);
        assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        m.handle_timeout(t0 + Duration::from_secs(10));
        assert!(transmits(&mut m).contains(&ClientTransmit::Close));
        assert_eq!(
            events(&mut m)[0],
            ClientEvent::OpenFailed("timed out".into())
        );
        // A first frame that is not a hello fails the same way.
        let mut m = ClientMachine::new(ClientConfig::default(), t0);
        m.open(t0);
        m.handle_input(t0, ClientInput::Connected);
        m.handle_input(t0, binary(&Frame::Open { seq: 0 }));
        assert!(m.is_closed());
    }

    #[test]
    fn close_codes_decide_between_stopped_closed_and_resume() {
        let t0 = Instant::now();
        let mut m = open(t0);
        m.handle_input(t0, ClientInput::Frame(close_frame(CLOSE_STOPPED, "stop")));
        assert!(events(&mut m).contains(&ClientEvent::Closed(CloseReason::Stopped)));
        let mut m = open(t0);
        m.handle_input(t0, ClientInput::Frame(close_frame(CLOSE_CLOSED, "bye")));
        assert!(
            events(&mut m).contains(&ClientEvent::Closed(CloseReason::Closed(Some(
                "bye".into()
            ))))
        );
        let mut m = open(t0);
        m.handle_input(t0, ClientInput::Frame(close_frame(1001, "going away")));
        assert!(!m.is_closed());
        assert_eq!(m.poll_timeout(), Some(t0), "resumes");
    }

    #[test]
    fn text_or_garbage_from_the_server_is_a_protocol_error() {
        let t0 = Instant::now();
        for input in [
            ClientInput::Frame(WsMessage::Text("x".into())),
            ClientInput::Frame(WsMessage::Binary(Bytes::from_static(b"\xff"))),
            hello(true, None),
        ] {
            let mut m = open(t0);
            m.handle_input(t0, input);
            assert!(m.is_closed());
            assert!(transmits(&mut m).contains(&ClientTransmit::Close));
        }
    }

    #[test]
    fn closing_sends_a_close_and_fails_what_was_not_acknowledged() {
        let t0 = Instant::now();
        let mut m = open(t0);
        let seq = m.send(t0, Bytes::from_static(b"1")).expect("send");
        let _ = transmits(&mut m);
        m.close(t0);
        assert_eq!(transmits(&mut m), [ClientTransmit::Close]);
        let events = events(&mut m);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, ClientEvent::SendFailed(s, _) if *s == seq))
        );
        assert!(m.send(t0, Bytes::from_static(b"2")).is_err());
    }

    #[test]
    fn timers_act_only_when_due() {
        let t0 = Instant::now();
        // Before `open`, nothing is due and nothing happens.
        let mut m = ClientMachine::new(ClientConfig::default(), t0);
        assert_eq!(m.poll_timeout(), None);
        m.handle_timeout(t0 + Duration::from_secs(1));
        assert!(transmits(&mut m).is_empty());
        // A connection attempt is not abandoned early.
        m.open(t0);
        let _ = transmits(&mut m);
        m.handle_timeout(t0 + Duration::from_secs(9));
        assert!(transmits(&mut m).is_empty());
        assert!(!m.is_closed());
        // A resume attempt waits for its backoff.
        let mut m = open(t0);
        m.handle_input(t0, ClientInput::Lost("reset".into()));
        m.handle_timeout(t0);
        let _ = transmits(&mut m);
        m.handle_input(t0, ClientInput::Lost("refused".into()));
        assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_millis(100)));
        m.handle_timeout(t0 + Duration::from_millis(50));
        assert!(transmits(&mut m).is_empty());
        m.handle_timeout(t0 + Duration::from_millis(100));
        assert_eq!(transmits(&mut m).len(), 1);
    }
}
