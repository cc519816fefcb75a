//! # browserver-transport-http
//!
//! The browserver proxy's HTTP side, transport-agnostic: [`Proxy`] routes an HTTP request for
//! `<name>.<domain>` ([`HostPattern`]) to that client over its [`Channel`], correlated by
//! `browserver-core`'s request table, and turns the answer into the HTTP response (504 when
//! there is no such client, it disconnects or does not answer in time; 413 for a body too
//! large; 503 with `Retry-After` when too many requests wait on one client). A client's own
//! request for another client's hostname is routed inside the proxy; other requests are
//! performed under an [`EgressPolicy`] that refuses every address that is not globally
//! reachable unless allowed. [`headers`] is the one rule for what crosses a hop, [`message`]
//! the one codec for the wire format. A client's name is public; what acts on its session is
//! authorised by the transports' secrets (see `docs/security.md`).
//!
//! ```
//! use browserver_transport_http::message::{Message, Head, decode, encode_text};
//!
//! let wire = "GET /hello?x=1 HTTP/1.1\r\nhost: abc.localhost\r\nx-brow-req-id: k3j2\r\n\r\n";
//! let m = decode(wire.as_bytes()).unwrap();
//! assert_eq!(m.id.as_deref(), Some("k3j2"));
//! assert!(matches!(&m.head, Head::Request { method, target } if method == "GET" && target == "/hello?x=1"));
//! assert_eq!(encode_text(&m).unwrap(), wire);
//! ```

// On docs.rs, every feature-gated item is marked with the feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod body;
mod budget;
mod egress;
pub mod headers;
mod hooks;
pub mod host;
pub mod message;
mod proxy;
pub mod tls;

pub use body::{BodyAborted, ProxyBody};
pub use browserver_runtime::{ClientAddr, client_addr};
pub use budget::{BodyError, Budget, Reservation};
pub use egress::{EgressMode, EgressPolicy, is_refused_address};
pub use hooks::{AllowAll, Authenticator, Authorizer, Connecting, Refusal};
pub use host::{HostPattern, PatternError};
pub use ipnet::IpNet;
pub use proxy::{
    Channel, ClientInfo, ConnectError, Connected, Delivery, Proxy, ProxyOptions, Undelivered, Wire,
};
