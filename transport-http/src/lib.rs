//! # browserver-transport-http
//!
//! HTTP ingress and egress for the browserver proxy: requests to `<client-id>.<domain>` are
//! routed to that client over its channel and correlated with `browserver-core`'s
//! [`Requests`] table; requests a client sends up its channel are performed under an egress
//! policy. It also holds the one codec for the browserver wire format (the original
//! `x-brow-req-id` HTTP text, and an extended form for binary and large bodies) (issue 6).
//!
//! [`Requests`]: browserver_core::Requests
