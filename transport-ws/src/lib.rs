//! # browserver-transport-ws
//!
//! The WebSocket transport. [`protocol`] is one session's protocol as a sans-IO machine
//! ([`SessionMachine`], on `browserver-core`'s session); the `browserver-runtime` driver
//! runs it, and `tokio-tungstenite` moves the frames. Applications get the runtime's one
//! [`Session`] type, the same as BrowserChannel's.
//!
//! - A **plain** WebSocket client (a browser's `new WebSocket(url)`, the `ws` npm package)
//!   just exchanges messages: each text or binary frame is one message and nothing else is
//!   ever sent to it. An [`Ack`] then resolves when the frame was written.
//! - A client that offers the subprotocol [`codec::SUBPROTOCOL`] gets **session mode**:
//!   sequence numbers, acknowledgements (an [`Ack`] means the client's application received
//!   the message), and resumption: reconnecting within the session timeout with
//!   `?resume=<sid>&ack=<n>` delivers what was missed, in order, once.
//!
//! In both modes: keep-alive pings, an idle timeout, `close` (close code 4000, the client may
//! reconnect) vs `stop` (4001, it must not), frame and message size limits, and a bounded
//! outbound buffer (`send` fails with [`SendError::BufferFull`] past it).
//!
//! ```no_run
//! use browserver_transport_ws::{Options, WsEndpoint, serve};
//! # async fn run() -> std::io::Result<()> {
//! let (ws, mut sessions) = WsEndpoint::new(Options::default());
//! tokio::spawn(serve(tokio::net::TcpListener::bind("127.0.0.1:4322").await?, ws));
//! while let Some(session) = sessions.accept().await {
//!     tokio::spawn(async move {
//!         while let Some(message) = session.recv().await {
//!             let _ack = session.send(message); // echo
//!         }
//!     });
//! }
//! # Ok(()) }
//! ```

// On docs.rs, every feature-gated item is marked with the feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod client;
pub mod codec;
#[cfg(feature = "server")]
mod endpoint;
#[cfg(feature = "server")]
mod io;
pub mod protocol;
#[cfg(feature = "server")]
mod serve;
#[cfg(feature = "warp")]
mod warp_filter;

#[cfg(feature = "server")]
pub use endpoint::{
    Admission, AdmissionFuture, ConnectHook, Options, WithFallback, WsEndpoint, WsLayer,
};
pub use protocol::{Mode, SessionMachine};
#[cfg(feature = "server")]
pub use serve::serve;

pub use browserver_runtime::{
    Ack, ClientAddr, CloseReason, Delivery, Hub, HubError, HubOptions, Message, Recipients, Relay,
    Report, SendError, Session, Sessions, State, Status, Transport, client_addr,
};

/// The README's examples, compiled and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
