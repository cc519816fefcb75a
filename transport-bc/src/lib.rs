//! # browserver-transport-bc
//!
//! The server side of BrowserChannel (protocol version 8), wire-compatible with the Closure
//! Library's `goog.net.BrowserChannel` and node-browserchannel's clients.
//!
//! - [`codec`]: the wire format as pure functions (shared with the Rust client).
//! - [`client`]: the client side of one session as a sans-IO machine ([`client::ClientMachine`]),
//!   run by the Rust client and by the simulator.
//! - [`protocol`]: one session's protocol as a sans-IO machine ([`ServerMachine`]), run by
//!   the `browserver-runtime` driver and by the simulator.
//! - [`BrowserChannel`]: the endpoint — a `tower::Service`, a [`warp` filter](BrowserChannel::filter)
//!   (feature `warp`), or [`handle`](BrowserChannel::handle) for your own server; [`serve`]
//!   runs it on a listener.
//! - [`Sessions`] yields each new [`Session`] — the runtime's one session type, shared with
//!   the WebSocket transport: `send(message)` → [`Ack`], `recv()`, `close()`, `stop()`,
//!   state and close reason. BrowserChannel carries JSON: messages arrive as
//!   [`Message::Text`] holding the client's JSON exactly as written (or [`Message::Map`] for
//!   a map without `JSON`/`_S`).
//!
//! An echo server:
//!
//! ```no_run
//! use browserver_transport_bc::{BrowserChannel, Options, serve};
//!
//! # async fn run() -> std::io::Result<()> {
//! let (bc, mut sessions) = BrowserChannel::new(Options::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:4321").await?;
//! tokio::spawn(serve(listener, bc));
//! while let Some(session) = sessions.accept().await {
//!     tokio::spawn(async move {
//!         while let Some(message) = session.recv().await {
//!             let _ack = session.send(message); // awaiting it waits for the client's ack
//!         }
//!         println!("{:?} closed: {}", session.name(), session.closed().await);
//!     });
//! }
//! # Ok(()) }
//! ```
//!
//! See `docs/browserchannel.md` for the options and protocol notes.

// On docs.rs, every feature-gated item is marked with the feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "server")]
mod body;
pub mod client;
pub mod codec;
#[cfg(feature = "server")]
mod io;
#[cfg(feature = "server")]
mod options;
pub mod protocol;
#[cfg(feature = "server")]
mod response;
#[cfg(feature = "server")]
mod serve;
#[cfg(feature = "server")]
mod service;
#[cfg(feature = "warp")]
mod warp_filter;

#[cfg(feature = "server")]
pub use body::ResponseBody;
#[cfg(feature = "server")]
pub use options::{Admission, AdmissionFuture, ConnectHook, Cors, CorsFn, Options};
pub use protocol::ServerMachine;
#[cfg(feature = "server")]
pub use serve::serve;
#[cfg(feature = "server")]
pub use service::{BrowserChannel, WithFallback};

pub use browserver_runtime::{
    Ack, ClientAddr, CloseReason, Delivery, Hub, HubError, HubOptions, Map, Message, Recipients,
    Relay, Report, SendError, Session, Sessions, State, Status, Transport, client_addr,
};

/// The browser client served at `<base>/bcsocket.js`.
#[cfg(feature = "server")]
pub const CLIENT_SCRIPT: &str = include_str!("../js/bcsocket.js");

/// The README's examples, compiled and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
