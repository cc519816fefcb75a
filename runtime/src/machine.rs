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

/// A transport's protocol for one session, as a sans-IO state machine.
pub trait Machine: Send + 'static {
    /// What the transport's I/O side feeds in (HTTP requests, WebSocket frames, …).
    type Input: Send + 'static;
    /// What the machine asks the I/O side to write.
    type Transmit: Send + 'static;

    /// Feeds one input from the network side.
    fn handle_input(&mut self, now: Instant, input: Self::Input);

    /// Queues a message from the application; `Ok(seq)` is resolved later by exactly one
    /// [`Event::Acked`] or [`Event::SendFailed`] with that `seq`.
    fn send(&mut self, now: Instant, message: Message) -> Result<u64, SendError>;

    /// Closes the session (the peer may reconnect). Idempotent.
    fn close(&mut self, now: Instant, reason: CloseReason);

    /// Tells the peer not to reconnect; [`Event::StopWritten`] follows once it is written,
    /// and the session closes with [`CloseReason::Stopped`]. False if the session is closed.
    fn stop(&mut self, now: Instant) -> bool;

    /// Runs whatever timer is due at `now` (a spurious call is harmless).
    fn handle_timeout(&mut self, now: Instant);

    /// The next output; [`Output::Timeout`] once there is nothing else.
    fn poll_output(&mut self) -> Output<Self::Transmit>;

    /// Whether the session is closed (the driver stops once it is and the drain is done).
    fn is_closed(&self) -> bool;

    /// Why it closed, once it has.
    fn close_reason(&self) -> Option<CloseReason>;
}
