//! # browserver-client
//!
//! The Rust client: one WebSocket-like API (`connect`, `send` → acknowledgement, events
//! open / message / close) over WebSocket or BrowserChannel, with reconnection, driven by a
//! client-role `browserver-core` [`Session`]; and a host mode that serves a `tower::Service`
//! at `<id>.<domain>` through the proxy (issues 5 and 6).
//!
//! [`Session`]: browserver_core::Session
