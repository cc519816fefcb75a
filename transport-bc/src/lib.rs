//! # browserver-transport-bc
//!
//! The server side of BrowserChannel (protocol version 8), wire-compatible with the Closure
//! Library's `goog.net.BrowserChannel` and node-browserchannel's clients. Each session is a
//! `browserver-core` [`Session`](browserver_core::Session) machine run by its own task; this
//! crate moves HTTP bytes to and from it.
//!
//! - [`codec`]: the wire format as pure functions (shared with the Rust client).
//! - [`BrowserChannel`]: the endpoint — a `tower::Service`, a [`warp` filter](BrowserChannel::filter),
//!   or [`handle`](BrowserChannel::handle) for your own server; [`serve`] runs it on a listener.
//! - [`Sessions`] yields each new [`Session`]: `send(value)` → [`Ack`], `recv()`, `close()`,
//!   `stop()`, state and close reason.
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
//!             if let Some(value) = message.value {
//!                 let _ack = session.send(&value); // awaiting it waits for the client's ack
//!             }
//!         }
//!         println!("{} closed: {}", session.id(), session.closed().await);
//!     });
//! }
//! # Ok(()) }
//! ```
//!
//! See `docs/browserchannel.md` for the options and protocol notes.

mod actor;
mod body;
pub mod codec;
mod options;
mod serve;
mod service;
mod session;
#[cfg(feature = "warp")]
mod warp_filter;

pub use body::ResponseBody;
pub use options::{Admission, AdmissionFuture, ConnectHook, Cors, CorsFn, Options};
pub use serve::serve;
pub use service::{BrowserChannel, ClientAddr, Sessions, WithFallback};
pub use session::{Ack, Received, SendError, Session, Status};

pub use browserver_core::{CloseReason, State};

/// The browser client served at `<base>/bcsocket.js`.
pub const CLIENT_SCRIPT: &str = include_str!("../js/bcsocket.js");
