//! The I/O side of one WebSocket session for the runtime's driver: each connection's write
//! queue, keyed by the machine's connection ids. No protocol decision is made here.

use std::collections::HashMap;

use browserver_core::CloseReason;
use browserver_runtime::Io;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::codec::CLOSE_CLOSED;
use crate::protocol::{ConnId, Input, SessionMachine, Transmit, close_frame};

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

/// What a connection's tasks send a session's driver.
pub(crate) enum Command {
    /// A new connection for this session, with its write queue.
    Attach {
        conn: ConnId,
        tx: ConnTx,
        ack: Option<u64>,
    },
    /// A message read from `conn`. Its permit (its bytes' share of the connection's read
    /// allowance) is given back once the machine has it, so a reader never runs more than
    /// that far ahead of the session.
    Frame {
        conn: ConnId,
        message: WsMessage,
        permit: tokio::sync::OwnedSemaphorePermit,
    },
    /// Plain mode: `conn` flushed every message up to `upto`.
    Written { conn: ConnId, upto: u64 },
    /// `conn` ended without a close frame.
    Gone { conn: ConnId },
}

pub(crate) struct ConnIo {
    conns: HashMap<ConnId, ConnTx>,
    /// Runs once when the session closes (leaves the registry, gives back the quota).
    on_close: Option<Box<dyn FnOnce() + Send>>,
}

impl ConnIo {
    pub(crate) fn new(on_close: Box<dyn FnOnce() + Send>) -> ConnIo {
        ConnIo {
            conns: HashMap::new(),
            on_close: Some(on_close),
        }
    }
}

impl Io<SessionMachine> for ConnIo {
    type Command = Command;

    fn command(&mut self, command: Command) -> Option<Input> {
        Some(match command {
            Command::Attach { conn, tx, ack } => {
                self.conns.insert(conn, tx);
                Input::Attach { conn, ack }
            }
            Command::Frame {
                conn,
                message,
                permit,
            } => {
                drop(permit);
                Input::Frame { conn, message }
            }
            Command::Written { conn, upto } => Input::Written { conn, upto },
            Command::Gone { conn } => Input::Gone { conn },
        })
    }

    fn transmit(&mut self, transmit: Transmit) {
        match transmit {
            Transmit::Frame { conn, message } => {
                if let Some(tx) = self.conns.get(&conn) {
                    let _ = tx.send(Out::Frame(message));
                }
            }
            Transmit::Written { conn, upto } => {
                if let Some(tx) = self.conns.get(&conn) {
                    let _ = tx.send(Out::Written(upto));
                }
            }
            Transmit::Release { conn } => {
                self.conns.remove(&conn);
            }
        }
    }

    fn refuse(&mut self, command: Command, _: &CloseReason) {
        if let Command::Attach { tx, .. } = command {
            let _ = tx.send(Out::Frame(close_frame(CLOSE_CLOSED, "closed")));
        }
    }

    fn closed(&mut self, _: &CloseReason) {
        if let Some(forget) = self.on_close.take() {
            forget();
        }
    }
}
