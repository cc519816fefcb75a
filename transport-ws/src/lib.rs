//! # browserver-transport-ws
//!
//! The WebSocket transport: a `tokio-tungstenite` adapter that drives `browserver-core`'s
//! [`Session`] with the same guarantees as BrowserChannel (ordering, acknowledgements,
//! keep-alive, session timeout, resumption), while a plain WebSocket client that negotiates
//! nothing just exchanges one message per frame. Mounted as a `tower::Service` and a
//! `warp::Filter` next to the BrowserChannel service (issue 5).
//!
//! [`Session`]: browserver_core::Session
