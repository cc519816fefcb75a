//! # browserver-transport-http
//!
//! HTTP ingress and egress for the browserver proxy (in progress), and [`message`]: the one
//! codec for browserver's wire format, used by the proxy and by clients.
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

pub mod message;
