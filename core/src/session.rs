//! The per-peer session machine: `init → ok → closed`, outbound sequencing with
//! acknowledgement, inbound ordering, and the keep-alive and session-timeout deadlines.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::{Closed, InputError, SendError};
use crate::outbound::{Item, Outbound, Payload};
use crate::reorder::{Inserted, Reorder};
use crate::timer::{Timer, Timers};

/// Session options. Every field has a documented default ([`Config::default`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// While a downstream path is attached and nothing has been written on it for this long,
    /// a keep-alive goes out. Default 20 s (BrowserChannel's; below the Closure client's 45 s
    /// request watchdog). `Duration::MAX` disables keep-alives.
    pub keepalive_interval: Duration,
    /// While no downstream path is attached for this long, the session closes with
    /// [`CloseReason::TimedOut`]. Default 30 s. `Duration::MAX` disables the timeout (a client
    /// learns that its session is gone from the server instead).
    pub session_timeout: Duration,
    /// A new session that has never had a downstream path attached closes after this long
    /// (or after [`session_timeout`](Self::session_timeout), whichever is shorter) with
    /// [`CloseReason::TimedOut`]: a client that creates sessions and never listens holds them
    /// only briefly. Default 10 s.
    pub attach_timeout: Duration,
    /// How keep-alives travel. Default [`KeepaliveMode::Sequenced`].
    pub keepalive: KeepaliveMode,
    /// Bytes of unacknowledged application messages the session retains; past it `send`
    /// returns [`SendError::BufferFull`]. Default 4 MiB.
    pub max_buffered_bytes: usize,
    /// How far past a gap inbound messages are held. Beyond it the session closes with a
    /// protocol error (the peer is misbehaving). Default 4096 positions.
    pub reorder_window: u64,
    /// Bytes of out-of-order inbound messages held behind a gap. Default 4 MiB.
    pub max_held_bytes: usize,
    /// How long an acknowledgement may wait, for more messages to acknowledge at once or for
    /// an outgoing write to travel with, before [`Session::poll_ack`] reports it. Default 0:
    /// at once (and no timer). `Duration::MAX`: only when [`ack_every`](Self::ack_every) is
    /// reached or a write goes out anyway. Transports whose acknowledgements ride on requests
    /// (BrowserChannel's `AID`) keep 0 and read [`Session::ack_position`] instead.
    pub ack_delay: Duration,
    /// Unacknowledged inbound messages after which the acknowledgement goes at once, however
    /// short the delay so far. Default 64.
    pub ack_every: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            keepalive_interval: Duration::from_secs(20),
            session_timeout: Duration::from_secs(30),
            attach_timeout: Duration::from_secs(10),
            keepalive: KeepaliveMode::Sequenced,
            max_buffered_bytes: 4 << 20,
            reorder_window: 4096,
            max_held_bytes: 4 << 20,
            ack_delay: Duration::ZERO,
            ack_every: 64,
        }
    }
}

/// How a keep-alive travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepaliveMode {
    /// As a sequenced [`Payload::Keepalive`] item, acknowledged like any other
    /// (BrowserChannel's `["noop"]` array).
    Sequenced,
    /// As a [`Transmit::Ping`] outside the sequence (a WebSocket ping).
    Ping,
}

/// Which end of the channel this machine is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Announces the session with [`Payload::Open`] at sequence 0 and becomes `ok` when that
    /// announcement is transmitted.
    Server,
    /// Becomes `ok` when it receives the peer's [`Payload::Open`].
    Client,
}

/// The session state. The only transitions are `Init → Ok`, `Init → Closed` and
/// `Ok → Closed`; `Closed` is terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Created, not yet announced to (server) or by (client) the peer.
    Init,
    /// Open.
    Ok,
    /// Closed; see [`Session::close_reason`].
    Closed,
}

impl State {
    /// The lowercase name used on the wire and in logs (`init`, `ok`, `closed`).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Init => "init",
            State::Ok => "ok",
            State::Closed => "closed",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who closed the session and why.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer ended the session (BrowserChannel `terminate`). Shown as `Disconnected`.
    PeerClosed,
    /// No downstream path was attached for the session timeout. Shown as `Timed out`.
    TimedOut,
    /// The application closed the session; the peer may reconnect. Shown as the given text,
    /// or `closed`.
    Closed(Option<String>),
    /// The session was stopped: the peer was told not to reconnect. Shown as `Stopped`.
    Stopped,
    /// A newer session of the same peer replaced this one (BrowserChannel `OSID`). Shown as
    /// `Reconnected`.
    Replaced,
    /// The peer broke the protocol (for example invalid JSON in a message).
    Protocol(String),
}

impl CloseReason {
    /// Whether the peer is allowed to reconnect after this close.
    pub fn may_reconnect(&self) -> bool {
        !matches!(self, CloseReason::Stopped)
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::PeerClosed => f.write_str("Disconnected"),
            CloseReason::TimedOut => f.write_str("Timed out"),
            CloseReason::Closed(Some(text)) => f.write_str(text),
            CloseReason::Closed(None) => f.write_str("closed"),
            CloseReason::Stopped => f.write_str("Stopped"),
            CloseReason::Replaced => f.write_str("Reconnected"),
            CloseReason::Protocol(text) => f.write_str(text),
        }
    }
}

/// Identifies one attachment of a downstream path. A replaced or ended path's id never
/// becomes valid again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PathId(pub u64);

/// How a downstream path behaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathMode {
    /// End the path after its first batch (BrowserChannel `CI=1`, a buffering proxy).
    pub one_shot: bool,
    /// End the path after the batch that takes the message bytes written on it past this
    /// (BrowserChannel: 10 240).
    pub max_bytes: Option<usize>,
    /// A path that does not end the attach timeout ([`Config::attach_timeout`]): BrowserChannel's
    /// session-creating response carries the first arrays but is not a back channel.
    pub provisional: bool,
}

/// Output: something to write on a downstream path.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transmit {
    /// Write these items, in order, as one unit. If `end` is set, finish the path after
    /// writing: the session has already detached it.
    Batch {
        /// Where to write.
        path: PathId,
        /// The items, in sequence order.
        items: Vec<Item>,
        /// Finish the path after this batch.
        end: bool,
    },
    /// Send an out-of-sequence keep-alive ([`KeepaliveMode::Ping`]).
    Ping {
        /// Where to send it.
        path: PathId,
    },
    /// Finish the path normally: it was replaced by a newer one, or the session closed.
    End {
        /// The path to finish.
        path: PathId,
    },
}

/// Output: something the application (or the transport) should learn.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The state changed. A change to `Closed` is followed at once by [`Event::Closed`].
    StateChanged {
        /// The state before.
        old: State,
        /// The state now.
        new: State,
    },
    /// The session closed, and why. Every unresolved send fails right after this.
    Closed(CloseReason),
    /// The next inbound message, in order, exactly once.
    Message {
        /// Its position in the peer's sequence.
        seq: u64,
        /// Its bytes.
        data: Bytes,
    },
    /// The peer acknowledged the message that `send` numbered `seq`.
    Acked {
        /// The number `send` returned.
        seq: u64,
    },
    /// The message that `send` numbered `seq` will never be acknowledged: the session closed.
    SendFailed {
        /// The number `send` returned.
        seq: u64,
        /// Why the session closed.
        reason: CloseReason,
    },
}

#[derive(Debug)]
struct Attached {
    id: PathId,
    mode: PathMode,
    written: usize,
}

/// One peer's end of a session.
///
/// Feed it inputs (`send`, `handle_*`, `attach`, `detach`, `close`, `stop`), each with the
/// current time; then drain [`poll_transmit`](Self::poll_transmit) and
/// [`poll_event`](Self::poll_event) until both return `None`, and wake it at
/// [`poll_timeout`](Self::poll_timeout). It never reads a clock and never touches a socket.
///
/// Guarantees, all checked by the deterministic simulator: inbound messages come out in
/// order, each once, none after close; every `send` that returned `Ok(seq)` is resolved by
/// exactly one [`Event::Acked`] or [`Event::SendFailed`] for that `seq`; an acknowledged
/// message was delivered to the peer's application.
#[derive(Debug)]
pub struct Session {
    role: Role,
    config: Config,
    state: State,
    close_reason: Option<CloseReason>,
    outbound: Outbound,
    stop_seq: Option<u64>,
    inbound: Reorder<Payload>,
    held_bytes: usize,
    duplicates: u64,
    path: Option<Attached>,
    next_path: u64,
    timers: Timers,
    events: VecDeque<Event>,
    transmits: VecDeque<Transmit>,
    now: Instant,
    /// The acknowledgement last reported by `poll_ack`.
    ack_reported: Option<u64>,
    /// The ack timer fired, or a duplicate showed the peer missed an acknowledgement.
    ack_due: bool,
    /// When the session was created (the attach timeout counts from it).
    created: Instant,
    /// Whether a path that is not provisional was ever attached.
    attached: bool,
}

impl Session {
    /// A new session in state `Init`. The attach timeout starts now: a server-role session
    /// must see a downstream path attached within it (and within the session timeout).
    pub fn new(role: Role, config: Config, now: Instant) -> Session {
        let mut outbound = Outbound::new(config.max_buffered_bytes);
        if role == Role::Server {
            // A control item is never refused by the byte limit.
            let _ = outbound.push(Payload::Open);
        }
        let mut timers = Timers::default();
        timers.set_after(
            Timer::SessionTimeout,
            now,
            config.session_timeout.min(config.attach_timeout),
        );
        Session {
            role,
            inbound: Reorder::new(0, config.reorder_window),
            config,
            state: State::Init,
            close_reason: None,
            outbound,
            stop_seq: None,
            held_bytes: 0,
            duplicates: 0,
            path: None,
            next_path: 0,
            timers,
            events: VecDeque::new(),
            transmits: VecDeque::new(),
            now,
            ack_reported: None,
            ack_due: false,
            created: now,
            attached: false,
        }
    }

    /// The latest time it was given (inputs never move it back).
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Why the session closed, once it has.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.close_reason.as_ref()
    }

    /// Whether the session is closed.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The options the session runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Queues an application message and returns its sequence number; the message goes out on
    /// the next transmit once a downstream path is attached (and, for a server, after the
    /// session announcement). Its outcome arrives later as [`Event::Acked`] or
    /// [`Event::SendFailed`] with this number.
    pub fn send(&mut self, now: Instant, data: Bytes) -> Result<u64, SendError> {
        self.advance(now);
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        self.outbound.push(Payload::Message(data))
    }

    /// Tells the peer to give up and not reconnect: queues [`Payload::Stop`] after everything
    /// already sent. Once it has been transmitted, the session closes with
    /// [`CloseReason::Stopped`]. Calling it again returns the same sequence number.
    pub fn stop(&mut self, now: Instant) -> Result<u64, SendError> {
        self.advance(now);
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        if let Some(seq) = self.stop_seq {
            return Ok(seq);
        }
        let seq = self.outbound.push(Payload::Stop)?;
        self.stop_seq = Some(seq);
        Ok(seq)
    }

    /// Closes the session now. Any attached path is ended normally, every unresolved send
    /// fails with `reason`, held inbound messages are dropped.
    pub fn close(&mut self, now: Instant, reason: CloseReason) -> Result<(), Closed> {
        self.advance(now);
        if self.is_closed() {
            return Err(Closed);
        }
        self.close_now(reason);
        Ok(())
    }

    /// The peer ended the session.
    pub fn handle_peer_close(&mut self, now: Instant) -> Result<(), Closed> {
        self.close(now, CloseReason::PeerClosed)
    }

    /// Attaches a downstream path. A path already attached is ended ([`Transmit::End`]);
    /// everything transmitted but not acknowledged is offered again on the new path, in
    /// order. Apply the peer's acknowledgement that came with the attach request first.
    pub fn attach(&mut self, now: Instant, mode: PathMode) -> Result<PathId, Closed> {
        self.advance(now);
        if self.is_closed() {
            return Err(Closed);
        }
        if let Some(old) = self.path.take() {
            self.transmits.push_back(Transmit::End { path: old.id });
        }
        let id = PathId(self.next_path);
        self.next_path += 1;
        self.attached |= !mode.provisional;
        self.path = Some(Attached {
            id,
            mode,
            written: 0,
        });
        self.outbound.rewind();
        self.timers.stop(Timer::SessionTimeout);
        self.timers
            .set_after(Timer::Keepalive, now, self.config.keepalive_interval);
        Ok(id)
    }

    /// The transport lost the path (the peer went away). Returns whether `path` was the
    /// attached one; a path the session already ended or replaced is ignored.
    pub fn detach(&mut self, now: Instant, path: PathId) -> bool {
        self.advance(now);
        if self.path.as_ref().is_some_and(|p| p.id == path) {
            self.detach_current();
            true
        } else {
            false
        }
    }

    /// Whether items wait to be transmitted (they go out once a path is attached).
    pub fn has_unsent(&self) -> bool {
        !self.is_closed() && self.outbound.has_unsent()
    }

    /// Whether a downstream path is attached.
    pub fn has_path(&self) -> bool {
        self.path.is_some()
    }

    /// The peer acknowledged everything up to and including `upto`. Acknowledgements beyond
    /// what was transmitted are clamped; stale or repeated ones release nothing.
    pub fn handle_ack(&mut self, now: Instant, upto: u64) -> Result<(), Closed> {
        self.advance(now);
        if self.is_closed() {
            return Err(Closed);
        }
        for seq in self.outbound.ack(upto) {
            self.events.push_back(Event::Acked { seq });
        }
        Ok(())
    }

    /// An item from the peer at position `seq`. Items are released in order, each once;
    /// duplicates are dropped and counted. A gap is held up to the configured window and
    /// byte limit; past either the session closes with a protocol error.
    pub fn handle_incoming(
        &mut self,
        now: Instant,
        seq: u64,
        payload: Payload,
    ) -> Result<(), InputError> {
        self.advance(now);
        if self.is_closed() {
            return Err(InputError::Closed);
        }
        let len = payload_len(&payload);
        match self.inbound.insert(seq, payload) {
            Inserted::Ready => {
                self.held_bytes += len;
                self.release_inbound();
                Ok(())
            }
            Inserted::Held => {
                self.held_bytes += len;
                if self.held_bytes > self.config.max_held_bytes {
                    let limit = self.config.max_held_bytes;
                    self.close_now(CloseReason::Protocol(
                        "held out-of-order messages exceed the limit".into(),
                    ));
                    return Err(InputError::HeldBytesExceeded { limit });
                }
                Ok(())
            }
            Inserted::Duplicate(_) => {
                self.duplicates += 1;
                // The peer sent it again: it has not heard our acknowledgement.
                self.ack_due = true;
                Ok(())
            }
            Inserted::BeyondWindow(_) => {
                let next = self.inbound.next();
                self.close_now(CloseReason::Protocol("reorder window exceeded".into()));
                Err(InputError::BeyondWindow {
                    pos: seq,
                    next,
                    window: self.config.reorder_window,
                })
            }
        }
    }

    /// Convenience for [`handle_incoming`](Self::handle_incoming) with a message payload.
    pub fn handle_message(
        &mut self,
        now: Instant,
        seq: u64,
        data: Bytes,
    ) -> Result<(), InputError> {
        self.handle_incoming(now, seq, Payload::Message(data))
    }

    /// Fires the timers that are due at `now`, and only those.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        if self.is_closed() {
            return;
        }
        for timer in self.timers.take_expired(now) {
            match timer {
                Timer::Keepalive => self.keepalive(now),
                Timer::SessionTimeout => {
                    if self.path.is_none() {
                        self.close_now(CloseReason::TimedOut);
                        return;
                    }
                }
                Timer::Ack => self.ack_due = true,
            }
        }
    }

    /// The earliest deadline at which [`handle_timeout`](Self::handle_timeout) has work.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_closed() {
            None
        } else {
            self.timers.next()
        }
    }

    /// The next thing to write. Drain until `None` after every input.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if let Some(t) = self.transmits.pop_front() {
            return Some(t);
        }
        if self.is_closed() || !self.outbound.has_unsent() {
            return None;
        }
        let path = self.path.as_mut()?;
        let items = self.outbound.take_unsent();
        path.written += items.iter().map(|i| payload_len(&i.payload)).sum::<usize>();
        let id = path.id;
        let stop_sent = items.iter().any(|i| i.payload == Payload::Stop);
        let end = stop_sent
            || path.mode.one_shot
            || path.mode.max_bytes.is_some_and(|max| path.written > max);
        self.timers
            .set_after(Timer::Keepalive, self.now, self.config.keepalive_interval);
        if self.state == State::Init && items.iter().any(|i| i.payload == Payload::Open) {
            self.set_state(State::Ok);
        }
        if end {
            self.detach_current();
        }
        if stop_sent {
            self.close_now(CloseReason::Stopped);
        }
        Some(Transmit::Batch {
            path: id,
            items,
            end,
        })
    }

    /// The next event. Drain until `None` after every input.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The highest position up to which every inbound item has been released, if any: the
    /// acknowledgement to send to the peer.
    pub fn ack_position(&self) -> Option<u64> {
        self.inbound.next().checked_sub(1)
    }

    /// The acknowledgement to send now, if one is due; reporting it counts as sending it.
    ///
    /// One is due when [`ack_position`](Self::ack_position) has moved past what was last
    /// reported (or the peer repeated an item, a sign it missed our acknowledgement) and:
    /// `piggyback` is set (the caller is writing to the peer anyway, so the acknowledgement
    /// costs nothing extra), or [`Config::ack_every`] messages wait for it, or they have
    /// waited [`Config::ack_delay`] (the deadline is in [`poll_timeout`](Self::poll_timeout)).
    /// Call it after every input, timeout and write, as [`poll_transmit`](Self::poll_transmit).
    #[must_use]
    pub fn poll_ack(&mut self, piggyback: bool) -> Option<u64> {
        let position = self.ack_position()?;
        let waiting = match self.ack_reported {
            Some(reported) => position.saturating_sub(reported),
            None => position + 1,
        };
        if waiting == 0 && !self.ack_due {
            return None;
        }
        let due = piggyback
            || self.ack_due
            || self.config.ack_delay.is_zero()
            || waiting >= self.config.ack_every;
        if !due {
            return None;
        }
        self.ack_reported = Some(position);
        self.ack_due = false;
        self.timers.stop(Timer::Ack);
        Some(position)
    }

    /// The sequence number of the last item transmitted, if any.
    pub fn last_sent(&self) -> Option<u64> {
        self.outbound.last_sent()
    }

    /// Items transmitted and not yet acknowledged, oldest first.
    pub fn in_flight(&self) -> impl Iterator<Item = &Item> {
        self.outbound.in_flight()
    }

    /// Bytes of application messages retained (queued or unacknowledged).
    pub fn buffered_bytes(&self) -> usize {
        self.outbound.buffered_bytes()
    }

    /// How many inbound items wait behind a gap, and their message bytes.
    pub fn held(&self) -> (usize, usize) {
        (self.inbound.held(), self.held_bytes)
    }

    /// How many inbound duplicates were dropped.
    pub fn duplicates_dropped(&self) -> u64 {
        self.duplicates
    }

    fn advance(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
    }

    fn keepalive(&mut self, now: Instant) {
        let Some(path) = &self.path else { return };
        match self.config.keepalive {
            KeepaliveMode::Sequenced => {
                if !self.outbound.has_unsent() {
                    let _ = self.outbound.push(Payload::Keepalive);
                }
            }
            KeepaliveMode::Ping => {
                self.transmits.push_back(Transmit::Ping { path: path.id });
                self.timers
                    .set_after(Timer::Keepalive, now, self.config.keepalive_interval);
            }
        }
    }

    fn release_inbound(&mut self) {
        if !self.timers.is_set(Timer::Ack) && !self.config.ack_delay.is_zero() {
            self.timers
                .set_after(Timer::Ack, self.now, self.config.ack_delay);
        }
        while let Some((seq, payload)) = self.inbound.pop_ready() {
            match payload {
                Payload::Message(data) => {
                    self.held_bytes -= data.len();
                    self.events.push_back(Event::Message { seq, data });
                }
                Payload::Open => {
                    if self.role == Role::Client && self.state == State::Init {
                        self.set_state(State::Ok);
                    }
                }
                Payload::Keepalive => {}
                Payload::Stop => {
                    self.close_now(CloseReason::Stopped);
                    return;
                }
            }
        }
    }

    fn detach_current(&mut self) {
        self.path = None;
        self.timers.stop(Timer::Keepalive);
        let after = if self.attached {
            self.config.session_timeout
        } else {
            // Never attached for real: the attach timeout still counts from creation.
            let limit = self.config.session_timeout.min(self.config.attach_timeout);
            match self.created.checked_add(limit) {
                Some(deadline) => deadline.saturating_duration_since(self.now),
                None => Duration::MAX,
            }
        };
        self.timers
            .set_after(Timer::SessionTimeout, self.now, after);
    }

    fn set_state(&mut self, new: State) {
        let old = self.state;
        self.state = new;
        self.events.push_back(Event::StateChanged { old, new });
    }

    fn close_now(&mut self, reason: CloseReason) {
        self.set_state(State::Closed);
        self.events.push_back(Event::Closed(reason.clone()));
        for seq in self.outbound.drain_messages() {
            self.events.push_back(Event::SendFailed {
                seq,
                reason: reason.clone(),
            });
        }
        self.inbound.clear();
        self.held_bytes = 0;
        if let Some(path) = self.path.take() {
            self.transmits.push_back(Transmit::End { path: path.id });
        }
        self.timers.stop_all();
        self.close_reason = Some(reason);
    }
}

fn payload_len(payload: &Payload) -> usize {
    match payload {
        Payload::Message(data) => data.len(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn t0() -> Instant {
        Instant::now()
    }

    fn events(s: &mut Session) -> Vec<Event> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    fn transmits(s: &mut Session) -> Vec<Transmit> {
        std::iter::from_fn(|| s.poll_transmit()).collect()
    }

    fn batch_seqs(t: &Transmit) -> Vec<u64> {
        match t {
            Transmit::Batch { items, .. } => items.iter().map(|i| i.seq).collect(),
            _ => Vec::new(),
        }
    }

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    fn open_server(now: Instant) -> (Session, PathId) {
        let mut s = Session::new(Role::Server, Config::default(), now);
        let path = s.attach(now, PathMode::default()).expect("attach");
        transmits(&mut s);
        events(&mut s);
        (s, path)
    }

    /// A client-role session with acknowledgements delayed by `delay`, up to `every`.
    fn delayed_acks(now: Instant, delay: Duration, every: u64) -> Session {
        let config = Config {
            ack_delay: delay,
            ack_every: every,
            // No other timers, so that `poll_timeout` shows the acknowledgement's.
            session_timeout: Duration::MAX,
            attach_timeout: Duration::MAX,
            keepalive_interval: Duration::MAX,
            ..Config::default()
        };
        let mut c = Session::new(Role::Client, config, now);
        c.handle_incoming(now, 0, Payload::Open).expect("open");
        c
    }

    // 0. Acknowledgement policy.

    #[test]
    fn by_default_every_release_is_acknowledged_at_once_and_once() {
        let t = t0();
        let mut c = delayed_acks(t, Duration::ZERO, 64);
        assert_eq!(c.poll_ack(false), Some(0));
        assert_eq!(c.poll_ack(false), None);
        c.handle_message(t, 1, b("a")).expect("message");
        assert_eq!(c.poll_ack(false), Some(1));
        assert_eq!(c.poll_timeout(), None, "no ack timer without a delay");
    }

    #[test]
    fn a_delayed_acknowledgement_waits_for_its_deadline_and_not_longer() {
        let t = t0();
        let ms = Duration::from_millis(1);
        let mut c = delayed_acks(t, 10 * ms, 64);
        c.handle_message(t + ms, 1, b("a")).expect("message");
        c.handle_message(t + 2 * ms, 2, b("b")).expect("message");
        assert_eq!(c.poll_ack(false), None);
        assert_eq!(
            c.poll_timeout(),
            Some(t + 10 * ms),
            "armed by the first release"
        );
        c.handle_timeout(t + 9 * ms);
        assert_eq!(c.poll_ack(false), None, "not before the deadline");
        c.handle_timeout(t + 10 * ms);
        assert_eq!(
            c.poll_ack(false),
            Some(2),
            "one acknowledgement for all three"
        );
        assert_eq!(c.poll_ack(false), None);
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn a_write_or_a_full_window_sends_the_acknowledgement_early() {
        let t = t0();
        let mut c = delayed_acks(t, SEC, 3);
        c.handle_message(t, 1, b("a")).expect("message");
        assert_eq!(c.poll_ack(false), None);
        assert_eq!(c.poll_ack(true), Some(1), "rides with a write");
        assert_eq!(c.poll_timeout(), None, "the timer stops once reported");
        for seq in 2..4 {
            c.handle_message(t, seq, b("x")).expect("message");
        }
        assert_eq!(c.poll_ack(false), None, "two waiting, three needed");
        c.handle_message(t, 4, b("x")).expect("message");
        assert_eq!(c.poll_ack(false), Some(4), "three waiting");
    }

    #[test]
    fn a_repeated_item_is_acknowledged_again_at_once() {
        let t = t0();
        let mut c = delayed_acks(t, SEC, 64);
        c.handle_message(t, 1, b("a")).expect("message");
        assert_eq!(c.poll_ack(true), Some(1));
        c.handle_message(t, 1, b("a"))
            .expect("duplicate is not an error");
        assert_eq!(
            c.poll_ack(false),
            Some(1),
            "the peer missed our acknowledgement"
        );
        assert_eq!(c.poll_ack(false), None);
    }

    // 1. State machine.

    #[test]
    fn server_session_becomes_ok_when_its_announcement_is_transmitted() {
        let now = t0();
        let mut s = Session::new(Role::Server, Config::default(), now);
        assert_eq!(s.state(), State::Init);
        s.attach(now, PathMode::default()).expect("attach");
        let t = transmits(&mut s);
        assert_eq!(batch_seqs(&t[0]), vec![0]);
        assert_eq!(
            events(&mut s),
            vec![Event::StateChanged {
                old: State::Init,
                new: State::Ok
            }]
        );
    }

    #[test]
    fn client_session_becomes_ok_when_the_announcement_arrives() {
        let now = t0();
        let mut c = Session::new(Role::Client, Config::default(), now);
        c.handle_incoming(now, 0, Payload::Open).expect("open");
        assert_eq!(c.state(), State::Ok);
    }

    #[test]
    fn closing_in_init_goes_straight_to_closed_with_old_and_new_state() {
        let now = t0();
        let mut s = Session::new(Role::Server, Config::default(), now);
        s.close(now, CloseReason::Closed(None)).expect("close");
        assert_eq!(
            events(&mut s),
            vec![
                Event::StateChanged {
                    old: State::Init,
                    new: State::Closed
                },
                Event::Closed(CloseReason::Closed(None)),
            ]
        );
    }

    #[test]
    fn close_reason_says_who_and_why() {
        assert_eq!(CloseReason::PeerClosed.to_string(), "Disconnected");
        assert_eq!(CloseReason::TimedOut.to_string(), "Timed out");
        assert_eq!(CloseReason::Closed(None).to_string(), "closed");
        assert_eq!(CloseReason::Closed(Some("foo".into())).to_string(), "foo");
        assert_eq!(CloseReason::Replaced.to_string(), "Reconnected");
        assert!(CloseReason::Closed(None).may_reconnect());
        assert!(!CloseReason::Stopped.may_reconnect());
    }

    #[test]
    fn api_misuse_after_close_is_an_error_value() {
        let now = t0();
        let (mut s, _) = open_server(now);
        s.close(now, CloseReason::Closed(None)).expect("close");
        assert_eq!(s.send(now, b("x")), Err(SendError::Closed));
        assert_eq!(s.stop(now), Err(SendError::Closed));
        assert_eq!(s.close(now, CloseReason::TimedOut), Err(Closed));
        assert_eq!(s.attach(now, PathMode::default()), Err(Closed));
        assert_eq!(s.handle_ack(now, 0), Err(Closed));
        assert_eq!(s.handle_message(now, 0, b("x")), Err(InputError::Closed));
        assert_eq!(s.close_reason(), Some(&CloseReason::Closed(None)));
    }

    #[test]
    fn close_ends_the_attached_path() {
        let now = t0();
        let (mut s, path) = open_server(now);
        s.close(now, CloseReason::Closed(None)).expect("close");
        assert_eq!(transmits(&mut s), vec![Transmit::End { path }]);
    }

    #[test]
    fn stop_is_sequenced_after_earlier_sends_and_closes_once_transmitted() {
        let now = t0();
        let (mut s, path) = open_server(now);
        s.send(now, b("last words")).expect("send");
        let stop = s.stop(now).expect("stop");
        assert_eq!(s.stop(now), Ok(stop), "stop is idempotent");
        let t = transmits(&mut s);
        assert_eq!(t.len(), 1);
        let Transmit::Batch {
            path: p,
            items,
            end,
        } = &t[0]
        else {
            panic!("{t:?}")
        };
        assert_eq!((*p, *end), (path, true));
        assert_eq!(
            items[1],
            Item {
                seq: stop,
                payload: Payload::Stop
            }
        );
        assert_eq!(s.close_reason(), Some(&CloseReason::Stopped));
        assert!(events(&mut s).contains(&Event::SendFailed {
            seq: 1,
            reason: CloseReason::Stopped
        }));
    }

    // 2. Outbound sequencing with acknowledgement.

    #[test]
    fn messages_sent_in_init_go_out_once_the_session_is_ok() {
        let now = t0();
        let mut s = Session::new(Role::Server, Config::default(), now);
        assert_eq!(s.send(now, b("early")), Ok(1));
        assert!(
            transmits(&mut s).is_empty(),
            "nothing goes out without a path"
        );
        s.attach(now, PathMode::default()).expect("attach");
        let t = transmits(&mut s);
        assert_eq!(
            batch_seqs(&t[0]),
            vec![0, 1],
            "after the announcement, in one batch"
        );
        assert_eq!(s.state(), State::Ok);
    }

    #[test]
    fn acknowledgement_releases_every_message_up_to_n_and_reports_each() {
        let now = t0();
        let (mut s, _) = open_server(now);
        for m in ["a", "b", "c"] {
            s.send(now, b(m)).expect("send");
        }
        transmits(&mut s);
        s.handle_ack(now, 2).expect("ack");
        assert_eq!(
            events(&mut s),
            vec![Event::Acked { seq: 1 }, Event::Acked { seq: 2 }]
        );
        assert_eq!(s.buffered_bytes(), 1);
        s.handle_ack(now, 2).expect("ack");
        assert!(events(&mut s).is_empty(), "a repeated ack releases nothing");
    }

    #[test]
    fn a_replaced_path_gets_every_unacknowledged_message_again_in_order() {
        let now = t0();
        let (mut s, first) = open_server(now);
        for m in ["a", "b", "c"] {
            s.send(now, b(m)).expect("send");
        }
        transmits(&mut s);
        s.handle_ack(now, 1).expect("ack");
        let second = s.attach(now, PathMode::default()).expect("attach");
        let t = transmits(&mut s);
        assert_eq!(t[0], Transmit::End { path: first });
        assert_eq!(batch_seqs(&t[1]), vec![2, 3]);
        assert!(matches!(t[1], Transmit::Batch { path, .. } if path == second));
    }

    #[test]
    fn every_send_resolves_exactly_once_even_when_the_session_closes() {
        let now = t0();
        let (mut s, _) = open_server(now);
        for m in ["a", "b", "c"] {
            s.send(now, b(m)).expect("send");
        }
        transmits(&mut s);
        s.handle_ack(now, 1).expect("ack");
        s.send(now, b("never transmitted")).expect("send");
        s.close(now, CloseReason::TimedOut).expect("close");
        let mut resolved: Vec<u64> = events(&mut s)
            .into_iter()
            .filter_map(|e| match e {
                Event::Acked { seq } => Some(seq),
                Event::SendFailed { seq, reason } => {
                    assert_eq!(reason, CloseReason::TimedOut);
                    Some(seq)
                }
                _ => None,
            })
            .collect();
        resolved.sort_unstable();
        assert_eq!(resolved, vec![1, 2, 3, 4]);
    }

    #[test]
    fn sends_past_the_buffer_limit_are_refused_with_backpressure() {
        let now = t0();
        let config = Config {
            max_buffered_bytes: 8,
            ..Config::default()
        };
        let mut s = Session::new(Role::Server, config, now);
        s.send(now, b("12345")).expect("fits");
        assert!(matches!(
            s.send(now, b("6789")),
            Err(SendError::BufferFull { limit: 8, .. })
        ));
        assert_eq!(s.buffered_bytes(), 5);
    }

    #[test]
    fn one_shot_path_ends_after_one_batch_and_byte_limited_path_after_the_limit() {
        let now = t0();
        let mut s = Session::new(Role::Server, Config::default(), now);
        s.attach(
            now,
            PathMode {
                one_shot: true,
                max_bytes: None,
                provisional: false,
            },
        )
        .expect("attach");
        assert!(matches!(
            transmits(&mut s)[0],
            Transmit::Batch { end: true, .. }
        ));
        assert!(!s.has_path());
        s.attach(
            now,
            PathMode {
                one_shot: false,
                max_bytes: Some(4),
                provisional: false,
            },
        )
        .expect("attach");
        s.send(now, b("1234")).expect("send");
        assert!(matches!(
            transmits(&mut s)[0],
            Transmit::Batch { end: false, .. }
        ));
        s.send(now, b("5")).expect("send");
        assert!(matches!(
            transmits(&mut s)[0],
            Transmit::Batch { end: true, .. }
        ));
    }

    // 3. Inbound ordering.

    #[test]
    fn inbound_messages_are_delivered_in_order_exactly_once() {
        let now = t0();
        let mut c = Session::new(Role::Client, Config::default(), now);
        c.handle_message(now, 2, b("c")).expect("in");
        c.handle_message(now, 1, b("b")).expect("in");
        assert!(events(&mut c).is_empty(), "a gap is held");
        c.handle_message(now, 0, b("a")).expect("in");
        c.handle_message(now, 1, b("b again")).expect("duplicate");
        let got: Vec<Bytes> = events(&mut c)
            .into_iter()
            .filter_map(|e| match e {
                Event::Message { data, .. } => Some(data),
                _ => None,
            })
            .collect();
        assert_eq!(got, vec![b("a"), b("b"), b("c")]);
        assert_eq!(c.duplicates_dropped(), 1);
        assert_eq!(c.ack_position(), Some(2));
    }

    #[test]
    fn a_gap_is_held_only_up_to_the_window_then_the_session_closes() {
        let now = t0();
        let config = Config {
            reorder_window: 4,
            ..Config::default()
        };
        let mut c = Session::new(Role::Client, config, now);
        c.handle_message(now, 3, b("d")).expect("held");
        assert!(matches!(
            c.handle_message(now, 4, b("e")),
            Err(InputError::BeyondWindow { pos: 4, .. })
        ));
        assert!(matches!(c.close_reason(), Some(CloseReason::Protocol(_))));
    }

    #[test]
    fn held_bytes_are_bounded() {
        let now = t0();
        let config = Config {
            max_held_bytes: 4,
            ..Config::default()
        };
        let mut c = Session::new(Role::Client, config, now);
        c.handle_message(now, 1, b("1234")).expect("held");
        assert_eq!(
            c.handle_message(now, 2, b("5")),
            Err(InputError::HeldBytesExceeded { limit: 4 })
        );
    }

    #[test]
    fn nothing_is_delivered_after_close() {
        let now = t0();
        let mut c = Session::new(Role::Client, Config::default(), now);
        c.handle_message(now, 1, b("held")).expect("held");
        c.close(now, CloseReason::Closed(None)).expect("close");
        assert_eq!(c.handle_message(now, 0, b("a")), Err(InputError::Closed));
        assert!(
            !events(&mut c)
                .iter()
                .any(|e| matches!(e, Event::Message { .. }))
        );
    }

    #[test]
    fn a_received_stop_closes_after_everything_before_it_was_delivered() {
        let now = t0();
        let mut c = Session::new(Role::Client, Config::default(), now);
        c.handle_incoming(now, 1, Payload::Stop).expect("held");
        c.handle_message(now, 2, b("after stop")).expect("held");
        c.handle_message(now, 0, b("before stop")).expect("in");
        let e = events(&mut c);
        assert_eq!(
            e[0],
            Event::Message {
                seq: 0,
                data: b("before stop")
            }
        );
        assert_eq!(e.last(), Some(&Event::Closed(CloseReason::Stopped)));
        assert_eq!(
            e.iter()
                .filter(|e| matches!(e, Event::Message { .. }))
                .count(),
            1
        );
    }

    // 4. Timers as deadlines.

    #[test]
    fn an_idle_attached_path_gets_a_keepalive_after_the_interval_and_not_before() {
        let now = t0();
        let (mut s, _) = open_server(now);
        assert_eq!(s.poll_timeout(), Some(now + 20 * SEC));
        s.handle_timeout(now + 19 * SEC);
        assert!(transmits(&mut s).is_empty());
        s.handle_timeout(now + 20 * SEC);
        let t = transmits(&mut s);
        assert!(
            matches!(&t[0], Transmit::Batch { items, .. } if items[0].payload == Payload::Keepalive)
        );
        assert_eq!(s.poll_timeout(), Some(now + 40 * SEC));
    }

    #[test]
    fn traffic_postpones_the_keepalive() {
        let now = t0();
        let (mut s, _) = open_server(now);
        s.send(now + 15 * SEC, b("x")).expect("send");
        transmits(&mut s);
        assert_eq!(s.poll_timeout(), Some(now + 35 * SEC));
    }

    #[test]
    fn ping_mode_keepalives_are_not_sequenced() {
        let now = t0();
        let config = Config {
            keepalive: KeepaliveMode::Ping,
            ..Config::default()
        };
        let mut s = Session::new(Role::Server, config, now);
        let path = s.attach(now, PathMode::default()).expect("attach");
        transmits(&mut s);
        s.handle_timeout(now + 20 * SEC);
        assert_eq!(transmits(&mut s), vec![Transmit::Ping { path }]);
        assert_eq!(s.last_sent(), Some(0));
    }

    #[test]
    fn a_session_without_a_path_times_out_after_the_timeout_and_not_before() {
        let now = t0();
        let config = Config {
            attach_timeout: Duration::MAX,
            ..Config::default()
        };
        let mut s = Session::new(Role::Server, config, now);
        assert_eq!(s.poll_timeout(), Some(now + 30 * SEC));
        s.handle_timeout(now + 29 * SEC);
        assert_eq!(s.state(), State::Init);
        s.handle_timeout(now + 30 * SEC);
        assert_eq!(s.close_reason(), Some(&CloseReason::TimedOut));
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn a_session_that_never_attaches_closes_after_the_attach_timeout() {
        let now = t0();
        let config = Config {
            attach_timeout: 4 * SEC,
            session_timeout: 30 * SEC,
            ..Config::default()
        };
        let mut s = Session::new(Role::Server, config, now);
        assert_eq!(s.poll_timeout(), Some(now + 4 * SEC));
        s.handle_timeout(now + 4 * SEC - Duration::from_millis(1));
        assert_eq!(s.close_reason(), None, "not before the deadline");
        s.handle_timeout(now + 4 * SEC);
        assert_eq!(s.close_reason(), Some(&CloseReason::TimedOut));
    }

    #[test]
    fn a_provisional_path_does_not_end_the_attach_timeout() {
        let now = t0();
        let config = Config {
            attach_timeout: 4 * SEC,
            session_timeout: 30 * SEC,
            ..Config::default()
        };
        let mut s = Session::new(Role::Server, config, now);
        let mode = PathMode {
            one_shot: true,
            provisional: true,
            ..PathMode::default()
        };
        let path = s.attach(now + SEC, mode).expect("attach");
        assert!(s.detach(now + 2 * SEC, path));
        assert_eq!(
            s.poll_timeout(),
            Some(now + 4 * SEC),
            "counted from creation"
        );
        s.handle_timeout(now + 4 * SEC);
        assert_eq!(s.close_reason(), Some(&CloseReason::TimedOut));
    }

    #[test]
    fn once_attached_the_full_session_timeout_applies_again() {
        let now = t0();
        let config = Config {
            attach_timeout: 4 * SEC,
            session_timeout: 30 * SEC,
            ..Config::default()
        };
        let mut s = Session::new(Role::Server, config, now);
        let path = s.attach(now + SEC, PathMode::default()).expect("attach");
        assert!(s.detach(now + 2 * SEC, path));
        s.handle_timeout(now + 10 * SEC);
        assert_eq!(s.close_reason(), None);
        s.handle_timeout(now + 32 * SEC);
        assert_eq!(s.close_reason(), Some(&CloseReason::TimedOut));
    }

    #[test]
    fn attaching_cancels_the_session_timeout_and_detaching_restarts_it() {
        let now = t0();
        let (mut s, path) = open_server(now);
        assert!(s.detach(now + 5 * SEC, path));
        assert!(!s.detach(now + 5 * SEC, path), "a stale path is ignored");
        assert_eq!(s.poll_timeout(), Some(now + 35 * SEC));
        s.handle_timeout(now + 35 * SEC);
        assert_eq!(s.close_reason(), Some(&CloseReason::TimedOut));
    }

    #[test]
    fn duration_max_disables_both_timers() {
        let now = t0();
        let config = Config {
            keepalive_interval: Duration::MAX,
            session_timeout: Duration::MAX,
            attach_timeout: Duration::MAX,
            ..Config::default()
        };
        let mut s = Session::new(Role::Client, config, now);
        assert_eq!(s.poll_timeout(), None);
        s.attach(now, PathMode::default()).expect("attach");
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn timer_intervals_are_configurable() {
        let now = t0();
        let config = Config {
            keepalive_interval: 2 * SEC,
            session_timeout: 3 * SEC,
            attach_timeout: 5 * SEC,
            ..Config::default()
        };
        let mut s = Session::new(Role::Server, config, now);
        assert_eq!(s.poll_timeout(), Some(now + 3 * SEC));
        s.attach(now, PathMode::default()).expect("attach");
        transmits(&mut s);
        assert_eq!(s.poll_timeout(), Some(now + 2 * SEC));
    }

    #[test]
    fn states_are_named_as_node_browserchannel_names_them() {
        let names: Vec<String> = [State::Init, State::Ok, State::Closed]
            .iter()
            .map(|s| format!("{s}"))
            .collect();
        assert_eq!(names, ["init", "ok", "closed"]);
        assert_eq!(State::Ok.as_str(), "ok");
    }

    #[test]
    fn the_config_given_is_the_config_kept() {
        let config = Config {
            reorder_window: 7,
            ..Config::default()
        };
        let s = Session::new(Role::Server, config.clone(), t0());
        assert_eq!(s.config(), &config);
    }

    #[test]
    fn every_attach_gets_a_new_path_id() {
        let now = t0();
        let mut s = Session::new(Role::Server, Config::default(), now);
        let ids: Vec<PathId> = (0..3)
            .map(|_| s.attach(now, PathMode::default()).expect("attach"))
            .collect();
        assert_eq!(ids, [PathId(0), PathId(1), PathId(2)]);
    }

    #[test]
    fn unsent_in_flight_and_last_sent_follow_the_queue() {
        let now = t0();
        let mut s = Session::new(Role::Server, Config::default(), now);
        assert!(s.has_unsent(), "the announcement waits for a path");
        assert!(!s.has_path());
        assert_eq!(s.last_sent(), None);
        s.send(now, b("a")).expect("send");
        let path = s.attach(now, PathMode::default()).expect("attach");
        assert!(s.has_path());
        transmits(&mut s);
        assert!(!s.has_unsent());
        assert_eq!(s.last_sent(), Some(1));
        let in_flight: Vec<u64> = s.in_flight().map(|i| i.seq).collect();
        assert_eq!(in_flight, [0, 1]);
        s.send(now, b("b")).expect("send");
        s.detach(now, path);
        assert!(s.has_unsent(), "without a path the new message waits");
        s.close(now, CloseReason::Closed(None)).expect("close");
        assert!(!s.has_unsent(), "nothing waits on a closed session");
    }

    #[test]
    fn held_counts_items_and_message_bytes_behind_a_gap_and_releases_them() {
        let now = t0();
        let mut c = Session::new(Role::Client, Config::default(), now);
        c.handle_message(now, 2, b("ccc")).expect("held");
        c.handle_message(now, 5, b("dddd")).expect("held");
        assert_eq!(c.held(), (2, 7));
        c.handle_incoming(now, 0, Payload::Open).expect("open");
        c.handle_message(now, 1, b("bb"))
            .expect("fills the first gap");
        assert_eq!(c.held(), (1, 4), "what was released is no longer counted");
        c.handle_message(now, 1, b("bb"))
            .expect("a duplicate is dropped");
        assert_eq!(c.duplicates_dropped(), 1);
    }

    #[test]
    fn only_a_client_waiting_to_open_is_opened_by_an_announcement() {
        let now = t0();
        let mut s = Session::new(Role::Server, Config::default(), now);
        s.handle_incoming(now, 0, Payload::Open).expect("accepted");
        assert_eq!(
            s.state(),
            State::Init,
            "a server is opened by its first path"
        );
        let mut c = Session::new(Role::Client, Config::default(), now);
        c.handle_incoming(now, 0, Payload::Open).expect("open");
        assert_eq!(c.state(), State::Ok);
        assert_eq!(
            events(&mut c)
                .iter()
                .filter(|e| matches!(e, Event::StateChanged { .. }))
                .count(),
            1
        );
    }
}
