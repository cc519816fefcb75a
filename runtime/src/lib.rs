//! # browserver-runtime
//!
//! The tokio side of browserver's transports, written once:
//!
//! | module | concept |
//! |---|---|
//! | [`machine`] | the [`Machine`] trait every transport's sans-IO protocol machine implements |
//! | [`driver`] | one generic task that runs any machine: commands in, drain, one timer |
//! | [`session`] | the application's one [`Session`] type, whatever the transport; [`Sessions`] |
//! | [`message`] | [`Message`]: text, binary, or a BrowserChannel map |
//! | [`error`] | [`SendError`] |
//! | [`hub`] | [`Hub`]: broadcast and rooms over any mix of transports, bounded |
//! | [`http`] | client address, owned headers, origin check, quota slot, admission hooks |
//! | [`streams`] | the stream task: [`browserver_core::stream`] flow-controlled streams over a session (proxied requests) |
//! | [`table`] | [`SessionTable`]: an endpoint's live sessions by secret id, bounded |
//! | `serve` | the accept loop (HTTP/1 and HTTP/2, upgrades, graceful drain; feature `serve`, on by default) |
//!
//! A transport (`browserver-transport-bc`, `browserver-transport-ws`) parses requests or
//! frames into its machine's inputs and writes its transmits; everything between — the
//! application's commands, acknowledgements, the unread bound, state changes, timers — is
//! here. An application writes one handler for every transport:
//!
//! ```
//! use browserver_runtime::{Message, Session};
//!
//! async fn echo(session: Session) {
//!     while let Some(message) = session.recv().await {
//!         // Sends are acknowledged by the client; the Ack may be awaited or dropped.
//!         let _ack = session.send(message);
//!     }
//!     println!("{} client closed: {}", session.transport(), session.closed().await);
//! }
//! # let _ = echo;
//! ```

// On docs.rs, every feature-gated item is marked with the feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod driver;
pub mod error;
pub mod http;
pub mod hub;
pub mod machine;
pub mod message;
pub mod metrics;
#[cfg(feature = "serve")]
mod serve;
pub mod session;
pub mod streams;
pub mod table;

pub use driver::{Io, Limits, Link, Parts};
pub use error::SendError;
pub use http::{ClientAddr, client_addr};
pub use hub::{Delivery, Hub, HubError, HubOptions, Recipients, Relay, Report};
pub use machine::{ClientEvent, Event, Machine, Output, Outputs, send_bytes};
pub use message::{Map, Message};
#[cfg(feature = "serve")]
pub use serve::{DRAIN_TIMEOUT, HEADER_READ_TIMEOUT, serve, serve_with_shutdown};
pub use session::{Ack, Announce, Info, Session, Sessions, Status, Transport};
pub use table::{Entry, SessionTable};

pub use browserver_core::{CloseReason, State};

/// The README's examples, compiled and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
