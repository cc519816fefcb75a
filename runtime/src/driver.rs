//! One generic tokio driver for any [`Machine`]: the only place a session's protocol machine
//! meets a clock, a task and channels.
//!
//! The loop (quinn's `ConnectionDriver` shape): take one command — from the application's
//! [`Session`] or from the transport's I/O side — and whatever else is already queued (up to
//! [`BATCH`]), then drain the machine until [`Output::Timeout`], then sleep on one timer that
//! is re-armed only when the deadline moved.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use browserver_core::{CloseReason, State, Unread};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::SendError;
use crate::machine::{Event, Machine, Output};
use crate::message::Message;
use crate::session::{Command, Info, Session, Shared, Status};

/// Commands handled per wake-up before the machine is drained (so that a burst of sends, or
/// of an application's answers, leaves in one write).
pub const BATCH: usize = 64;

/// The transport's I/O side of one session: the channels its requests and connections wait
/// on. It holds no protocol state — it maps the machine's tokens (request ids, path ids,
/// connection ids) to channels.
pub trait Io<M: Machine>: Send + 'static {
    /// What the transport's tasks send to the session (an HTTP request with its reply
    /// channel, a connection with its write queue, a frame).
    type Command: Send + 'static;

    /// Registers what `command` carries and returns the machine's input, if any.
    fn command(&mut self, command: Self::Command) -> Option<M::Input>;

    /// Performs one of the machine's transmits.
    fn transmit(&mut self, transmit: M::Transmit);

    /// Answers a command that arrived after the session closed.
    fn refuse(&mut self, command: Self::Command, reason: &CloseReason);

    /// The session closed (leave the registry, give back the quota).
    fn closed(&mut self, reason: &CloseReason);
}

/// Limits the driver keeps for the application's side.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of sends queued for the driver and not yet taken (a tight loop of sends is
    /// refused with `BufferFull` past it). Use the machine's unacknowledged-bytes limit.
    pub max_queued_bytes: usize,
    /// Bytes of messages delivered and not yet taken by [`Session::recv`]; past it the
    /// session closes (`Protocol("the application is not reading")`).
    pub max_unread_bytes: usize,
}

/// The transport's route into one session: the application's [`Session`] and the channel
/// for the transport's own commands. What a transport keeps in its registry.
pub struct Link<C> {
    /// The session.
    pub session: Session,
    tx: mpsc::UnboundedSender<C>,
}

impl<C> Clone for Link<C> {
    fn clone(&self) -> Self {
        Link {
            session: self.session.clone(),
            tx: self.tx.clone(),
        }
    }
}

impl<C> std::fmt::Debug for Link<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.session.fmt(f)
    }
}

impl<C> Link<C> {
    /// A sender that does not keep the session's mailbox open (for notifications from
    /// things the session owns, such as a response body reporting that it was dropped).
    pub fn downgrade(&self) -> mpsc::WeakUnboundedSender<C> {
        self.tx.downgrade()
    }

    /// Hands `command` to the session's driver; gives it back if the driver has stopped.
    pub fn send(&self, command: C) -> Result<(), C> {
        self.tx.send(command).map_err(|e| e.0)
    }
}

/// A session whose driver is not running yet (see [`session`]).
pub struct Parts<C> {
    pub(crate) app: mpsc::UnboundedReceiver<Command>,
    io: mpsc::UnboundedReceiver<C>,
    messages: mpsc::UnboundedSender<Message>,
    status: watch::Sender<Status>,
    shared: Arc<Shared>,
    max_unread: usize,
}

/// A new session: its [`Link`] (register it, announce its session) and the parts its driver
/// runs on ([`Parts::spawn`]).
pub fn session<C>(info: Info, limits: Limits) -> (Link<C>, Parts<C>) {
    let (tx, app) = mpsc::unbounded_channel();
    let (io_tx, io) = mpsc::unbounded_channel();
    let (messages, messages_rx) = mpsc::unbounded_channel();
    let (status, status_rx) = watch::channel(Status {
        state: State::Init,
        close_reason: None,
    });
    let shared = Arc::new(Shared {
        info,
        tx,
        status: status_rx,
        messages: tokio::sync::Mutex::new(messages_rx),
        unread: Unread::default(),
        queued: AtomicUsize::new(0),
        max_queued: limits.max_queued_bytes,
        closing: AtomicBool::new(false),
    });
    let link = Link {
        session: Session {
            shared: shared.clone(),
        },
        tx: io_tx,
    };
    let parts = Parts {
        app,
        io,
        messages,
        status,
        shared,
        max_unread: limits.max_unread_bytes,
    };
    (link, parts)
}

impl<C: Send + 'static> Parts<C> {
    /// Runs `machine` with `io` on a new task until the session closes.
    pub fn spawn<M, I>(self, machine: M, io: I)
    where
        M: Machine,
        I: Io<M, Command = C>,
    {
        tokio::spawn(self.run(machine, io));
    }

    /// The driver itself (what [`spawn`](Self::spawn) runs).
    pub async fn run<M, I>(self, machine: M, io: I)
    where
        M: Machine,
        I: Io<M, Command = C>,
    {
        let mut driver = Driver {
            machine,
            io,
            messages: Some(self.messages),
            status: self.status,
            shared: self.shared,
            max_unread: self.max_unread,
            acks: HashMap::new(),
            stop_waiters: Vec::new(),
        };
        let mut app = self.app;
        let mut io_rx = self.io;
        let sleep = tokio::time::sleep(std::time::Duration::ZERO);
        tokio::pin!(sleep);
        let mut armed: Option<Instant> = None;
        loop {
            let deadline = driver.drain();
            if driver.machine.is_closed() {
                break;
            }
            if deadline != armed {
                if let Some(at) = deadline {
                    sleep.as_mut().reset(tokio::time::Instant::from_std(at));
                }
                armed = deadline;
            }
            // The application's commands first: what a connect hook sends goes out before the
            // creating request is answered. Then both mailboxes, up to `BATCH` each, so that
            // neither side starves the other.
            tokio::select! {
                biased;
                command = app.recv() => match command {
                    Some(command) => driver.app_command(command),
                    None => break,
                },
                command = io_rx.recv() => match command {
                    Some(command) => driver.io_command(command),
                    None => break,
                },
                () = &mut sleep, if armed.is_some() => {
                    armed = None;
                    driver.machine.handle_timeout(now());
                }
            }
            for _ in 1..BATCH {
                match app.try_recv() {
                    Ok(command) => driver.app_command(command),
                    Err(_) => break,
                }
            }
            for _ in 1..BATCH {
                match io_rx.try_recv() {
                    Ok(command) => driver.io_command(command),
                    Err(_) => break,
                }
            }
        }
        if !driver.machine.is_closed() {
            driver.machine.close(now(), CloseReason::Closed(None));
            let _ = driver.drain();
        }
        // Whatever raced with the close is refused.
        let reason = driver
            .machine
            .close_reason()
            .unwrap_or(CloseReason::Closed(None));
        app.close();
        while let Ok(command) = app.try_recv() {
            if let Command::Send { ack, .. } = command {
                let _ = ack.send(Err(SendError::Closed(reason.clone())));
            }
        }
        io_rx.close();
        while let Ok(command) = io_rx.try_recv() {
            driver.io.refuse(command, &reason);
        }
    }
}

struct Driver<M, I> {
    machine: M,
    io: I,
    messages: Option<mpsc::UnboundedSender<Message>>,
    status: watch::Sender<Status>,
    shared: Arc<Shared>,
    max_unread: usize,
    acks: HashMap<u64, oneshot::Sender<Result<(), SendError>>>,
    stop_waiters: Vec<oneshot::Sender<()>>,
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl<M: Machine, I: Io<M>> Driver<M, I> {
    fn io_command(&mut self, command: I::Command) {
        if let Some(input) = self.io.command(command) {
            self.machine.handle_input(now(), input);
        }
    }

    fn app_command(&mut self, command: Command) {
        let now = now();
        match command {
            Command::Send {
                message,
                counted,
                ack,
            } => {
                self.shared.queued.fetch_sub(counted, Ordering::AcqRel);
                match self.machine.send(now, message) {
                    // An application that dropped its `Ack` is not told.
                    Ok(_) if ack.is_closed() => {}
                    Ok(seq) => {
                        self.acks.insert(seq, ack);
                    }
                    Err(e) => {
                        let _ = ack.send(Err(e));
                    }
                }
            }
            Command::Stop(written) => {
                if self.machine.stop(now) {
                    self.stop_waiters.push(written);
                }
            }
            Command::Close(reason) => self.machine.close(now, reason),
        }
    }

    /// Drains the machine; returns its next deadline.
    fn drain(&mut self) -> Option<Instant> {
        loop {
            match self.machine.poll_output() {
                Output::Transmit(t) => self.io.transmit(t),
                Output::Event(e) => self.event(e),
                Output::Timeout(at) => return at,
            }
        }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::State(state) => self.status.send_modify(|s| s.state = state),
            Event::Message(message) => self.deliver(message),
            Event::Acked(seq) => {
                if let Some(ack) = self.acks.remove(&seq) {
                    let _ = ack.send(Ok(()));
                }
            }
            Event::SendFailed(seq, reason) => {
                if let Some(ack) = self.acks.remove(&seq) {
                    let _ = ack.send(Err(SendError::Closed(reason)));
                }
            }
            Event::StopWritten => {
                for waiter in self.stop_waiters.drain(..) {
                    let _ = waiter.send(());
                }
            }
            Event::Closed(reason) => {
                tracing::debug!(name = ?self.shared.info.name, %reason, "session closed");
                self.io.closed(&reason);
                self.messages = None;
                self.stop_waiters.clear();
                self.status.send_modify(|s| {
                    s.state = State::Closed;
                    s.close_reason = Some(reason);
                });
            }
        }
    }

    fn deliver(&mut self, message: Message) {
        let Some(messages) = &self.messages else {
            return;
        };
        if !self.shared.unread.deliver(message.len(), self.max_unread) {
            // The application does not keep up: hold no more for it.
            self.messages = None;
            self.machine.close(
                now(),
                CloseReason::Protocol("the application is not reading".into()),
            );
            return;
        }
        let _ = messages.send(message);
    }
}

impl<C: Send + 'static> crate::table::Entry for Link<C> {
    fn session(&self) -> &Session {
        &self.session
    }
}
