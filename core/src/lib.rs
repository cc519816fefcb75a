//! # browserver-core
//!
//! The protocol-agnostic, sans-IO heart of browserver. It owns every decision a channel
//! makes — session state, message sequencing and acknowledgement, inbound ordering, timers,
//! request correlation, session ids — and none of the I/O. There is no tokio, no socket and
//! no clock in here: time comes in as an argument, and output is pulled with `poll_*`.
//! Transport crates (`browserver-transport-bc`, `browserver-transport-ws`) move bytes
//! between sockets and these machines.
//!
//! | module | concept |
//! |---|---|
//! | [`session`] | one peer's [`Session`]: `init → ok → closed`, sequencing, ordering, timers |
//! | [`reorder`] | the bounded [`Reorder`] buffer used for inbound ordering (and by transports) |
//! | [`correlate`] | [`Requests`]: pending requests over one session, matched by [`RequestId`] |
//! | [`registry`] | [`Registry`]: sessions by unguessable id |
//! | [`id`] | [`IdGenerator`] and the default [`RandomIds`] |
//! | [`secret`] | session ids and resume tokens: CSPRNG secrets compared in constant time |
//! | [`quota`] | [`AddressQuota`] / [`SharedQuota`]: live sessions and creation rate per client address |
//! | [`origin`] | [`OriginPolicy`]: which web origins may open sessions |
//! | [`unread`] | [`Unread`]: bytes delivered to the application and not yet taken, bounded |
//! | [`sim`] | a seeded network simulator that checks the invariants (feature `sim`) |
//!
//! ## The driving loop
//!
//! This is the contract between a transport and a [`Session`] (the same one str0m and
//! quinn-proto use):
//!
//! 1. Feed one input with the current time: [`Session::send`], [`Session::attach`],
//!    [`Session::detach`], [`Session::handle_incoming`], [`Session::handle_ack`],
//!    [`Session::handle_peer_close`], [`Session::close`], [`Session::stop`], or
//!    [`Session::handle_timeout`].
//! 2. Drain [`Session::poll_transmit`] (write each batch on its path) and
//!    [`Session::poll_event`] (tell the application) until both return `None`. A transport
//!    whose acknowledgements travel on their own then sends what [`Session::poll_ack`]
//!    returns (one whose acknowledgements ride on requests reads
//!    [`Session::ack_position`] instead).
//! 3. Sleep until [`Session::poll_timeout`] or the next input, whichever comes first; on
//!    waking for the deadline, call [`Session::handle_timeout`]. A spurious wake-up is
//!    harmless: only what is due fires.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use bytes::Bytes;
//! use browserver_core::{Config, Event, Payload, PathMode, Role, Session, State, Transmit};
//!
//! let t0 = Instant::now();
//! let mut server = Session::new(Role::Server, Config::default(), t0);
//! let mut client = Session::new(Role::Client, Config::default(), t0);
//!
//! // The server application may send before the session is open.
//! let seq = server.send(t0, Bytes::from_static(b"hello")).unwrap();
//!
//! // The client opens a downstream path (a back channel); the server writes on it.
//! server.attach(t0, PathMode::default()).unwrap();
//! while let Some(t) = server.poll_transmit() {
//!     if let Transmit::Batch { items, .. } = t {
//!         for item in items {
//!             client.handle_incoming(t0, item.seq, item.payload).unwrap();
//!         }
//!     }
//! }
//! assert_eq!(server.state(), State::Ok);
//! assert_eq!(client.state(), State::Ok);
//!
//! // The client application gets the message; its acknowledgement releases it.
//! let mut got = Vec::new();
//! while let Some(e) = client.poll_event() {
//!     if let Event::Message { data, .. } = e { got.push(data) }
//! }
//! assert_eq!(got, [Bytes::from_static(b"hello")]);
//! server.handle_ack(t0, client.ack_position().unwrap()).unwrap();
//! let events: Vec<Event> = std::iter::from_fn(|| server.poll_event()).collect();
//! assert!(events.contains(&Event::Acked { seq }));
//!
//! // An idle path gets a keep-alive when it is due, and not before.
//! let due = server.poll_timeout().unwrap();
//! assert_eq!(due, t0 + Duration::from_secs(20));
//! server.handle_timeout(due);
//! assert!(matches!(server.poll_transmit(),
//!     Some(Transmit::Batch { items, .. }) if items[0].payload == Payload::Keepalive));
//! ```

// On docs.rs, every feature-gated item is marked with the feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod cluster;
pub mod correlate;
mod error;
pub mod id;
pub mod origin;
mod outbound;
pub mod quota;
pub mod registry;
pub mod reorder;
pub mod secret;
pub mod session;
#[cfg(feature = "sim")]
pub mod sim;
pub mod stream;
mod timer;
pub mod unread;

pub use correlate::{RequestEvent, RequestId, Requests, Resolved, Unanswered};
pub use error::{Closed, EntropyError, InputError, RegistryError, SendError, TooManyPending};
pub use id::{IdGenerator, RandomIds, is_valid_id};
pub use origin::OriginPolicy;
pub use outbound::{Item, Payload};
pub use quota::{AddressQuota, QuotaConfig, QuotaError, SharedQuota};
pub use registry::{Closable, Registry};
pub use reorder::{Inserted, Reorder};
pub use session::{
    CloseReason, Config, Event, KeepaliveMode, PathId, PathMode, Role, Session, State, Transmit,
};
pub use unread::Unread;
