//! The contract between a transport's sans-IO protocol machine and the driver
//! that runs it (`driver`).
//!
//! A machine is fed inputs with the current time and drained with
//! [`poll_output`](Machine::poll_output) until it answers [`Output::Timeout`] — the shape of
//! str0m's `Rtc`. It never reads a clock, never spawns and never touches a socket, so the
//! seeded simulator can run it exactly as the driver does.

use std::time::Instant;

use browserver_core::{CloseReason, State};

use crate::error::SendError;
use crate::message::Message;

/// What a machine tells the application (through the driver).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The session's state changed.
    State(State),
    /// The next message from the peer, in order, exactly once.
    Message(Message),
    /// The message that `send` numbered `seq` was acknowledged (plain WebSocket: written).
    Acked(u64),
    /// The message that `send` numbered `seq` never will be: the session closed.
    SendFailed(u64, CloseReason),
    /// A `stop` the application asked for was written.
    StopWritten,
    /// The session closed. Every unresolved send fails right after this.
    Closed(CloseReason),
}

/// What a client-side machine (BrowserChannel's or WebSocket's) tells its application.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The session is open.
    Open {
        /// The server's session id.
        sid: String,
    },
    /// A message, as the server wrote it (JSON text for the Rust client).
    Message(bytes::Bytes),
    /// The message `send` numbered `seq` was acknowledged by the server.
    Acked(u64),
    /// The message `send` numbered `seq` never will be.
    SendFailed(u64, CloseReason),
    /// A request failed for good (a `Closed` follows).
    Error(String),
    /// The session could not be opened for a reason that may pass (network, bad answer, no
    /// such transport); a `Closed` follows.
    OpenFailed(String),
    /// The server refused to open the session (401 or 403 to the connecting request: a
    /// missing or wrong credential). Not worth retrying; a `Closed` follows.
    Refused {
        /// The HTTP status.
        status: u16,
        /// The server's reason (its answer's body, shortened).
        reason: String,
    },
    /// The session closed.
    Closed(CloseReason),
}

impl ClientEvent {
    /// The client application's view of a client-role core event (`sid`: the session's id,
    /// for `Open`); `None` for what it does not see.
    pub fn from_core(event: browserver_core::Event, sid: Option<&str>) -> Option<ClientEvent> {
        use browserver_core::Event as CoreEvent;
        Some(match event {
            // The core's state only moves forward: `Ok` comes once.
            CoreEvent::StateChanged { new: State::Ok, .. } => ClientEvent::Open {
                sid: sid.unwrap_or_default().to_string(),
            },
            CoreEvent::Message { data, .. } => ClientEvent::Message(data),
            CoreEvent::Acked { seq } => ClientEvent::Acked(seq),
            CoreEvent::SendFailed { seq, reason } => ClientEvent::SendFailed(seq, reason),
            CoreEvent::Closed(reason) => ClientEvent::Closed(reason),
            _ => return None,
        })
    }
}

/// One step of a machine's output.
#[derive(Debug)]
#[must_use = "drain poll_output until it returns Output::Timeout"]
pub enum Output<T> {
    /// Bytes (or a response) for the transport's I/O side.
    Transmit(T),
    /// Something the application learns.
    Event(Event),
    /// Nothing more to do until this time (or the next input); `None`: no deadline. Ends the
    /// drain.
    Timeout(Option<Instant>),
}

/// A transport's protocol for one session, as a sans-IO state machine built on a
/// `browserver-core` [`Session`](browserver_core::Session).
///
/// A machine implements what its wire protocol decides — inputs, sends, output — and exposes
/// its core session; closing, stopping, timers and the session's state are the core's, so
/// they are provided.
pub trait Machine: Send + 'static {
    /// What the transport's I/O side feeds in (HTTP requests, WebSocket frames, …).
    type Input: Send + 'static;
    /// What the machine asks the I/O side to write.
    type Transmit: Send + 'static;

    /// The core session the protocol runs on.
    fn core(&self) -> &browserver_core::Session;

    /// The core session, mutably.
    fn core_mut(&mut self) -> &mut browserver_core::Session;

    /// Feeds one input from the network side.
    fn handle_input(&mut self, now: Instant, input: Self::Input);

    /// Queues a message from the application; `Ok(seq)` is resolved later by exactly one
    /// [`Event::Acked`] or [`Event::SendFailed`] with that `seq`.
    fn send(&mut self, now: Instant, message: Message) -> Result<u64, SendError>;

    /// The next output; [`Output::Timeout`] once there is nothing else.
    fn poll_output(&mut self) -> Output<Self::Transmit>;

    /// Closes the session (the peer may reconnect). Idempotent.
    fn close(&mut self, now: Instant, reason: CloseReason) {
        // Closing a closed session changes nothing.
        let _ = self.core_mut().close(now, reason);
    }

    /// Tells the peer not to reconnect; [`Event::StopWritten`] follows once it is written,
    /// and the session closes with [`CloseReason::Stopped`]. False if the session is closed.
    fn stop(&mut self, now: Instant) -> bool {
        self.core_mut().stop(now).is_ok()
    }

    /// Runs whatever timer is due at `now` (a spurious call is harmless).
    fn handle_timeout(&mut self, now: Instant) {
        self.core_mut().handle_timeout(now);
    }

    /// Whether the session is closed (the driver stops once it is and the drain is done).
    fn is_closed(&self) -> bool {
        self.core().is_closed()
    }

    /// Why it closed, once it has.
    fn close_reason(&self) -> Option<CloseReason> {
        self.core().close_reason().cloned()
    }
}

/// Queues a message's bytes on `core`, with the runtime's error.
pub fn send_bytes(
    core: &mut browserver_core::Session,
    now: Instant,
    data: bytes::Bytes,
) -> Result<u64, SendError> {
    core.send(now, data).map_err(|e| match e {
        browserver_core::SendError::BufferFull {
            buffered, limit, ..
        } => SendError::BufferFull { buffered, limit },
        _ => SendError::Closed(
            core.close_reason()
                .cloned()
                .unwrap_or(CloseReason::Closed(None)),
        ),
    })
}

/// The output queues a machine fills while it translates its core session's output: its
/// transmits first, then its events.
#[derive(Debug)]
pub struct Outputs<T> {
    transmits: std::collections::VecDeque<T>,
    events: std::collections::VecDeque<Event>,
}

impl<T> Default for Outputs<T> {
    fn default() -> Self {
        Outputs {
            transmits: std::collections::VecDeque::new(),
            events: std::collections::VecDeque::new(),
        }
    }
}

impl<T> Outputs<T> {
    /// Queues a transmit.
    pub fn transmit(&mut self, transmit: T) {
        self.transmits.push_back(transmit);
    }

    /// Queues an event; a core event that is not a message is translated here (a message
    /// is given back: its bytes are the transport's to decode).
    pub fn core_event(&mut self, event: browserver_core::Event) -> Option<bytes::Bytes> {
        use browserver_core::Event as Core;
        let event = match event {
            Core::StateChanged { new, .. } => Event::State(new),
            Core::Closed(reason) => Event::Closed(reason),
            Core::Acked { seq } => Event::Acked(seq),
            Core::SendFailed { seq, reason } => Event::SendFailed(seq, reason),
            Core::Message { data, .. } => return Some(data),
            _ => return None,
        };
        self.events.push_back(event);
        None
    }

    /// Queues an event.
    pub fn event(&mut self, event: Event) {
        self.events.push_back(event);
    }

    /// The next queued output.
    pub fn pop(&mut self) -> Option<Output<T>> {
        if let Some(t) = self.transmits.pop_front() {
            return Some(Output::Transmit(t));
        }
        self.events.pop_front().map(Output::Event)
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.transmits.is_empty() && self.events.is_empty()
    }
}
