//! # browserver-transport-bc
//!
//! The BrowserChannel (protocol version 8) transport: the server side of Google's
//! long-polling channel, wire-compatible with the Closure Library's `goog.net.BrowserChannel`
//! and with node-browserchannel's clients, driven by `browserver-core`'s [`Session`].
//!
//! It will hold a pure codec (forward-channel map parsing, back-channel framing, the html
//! iframe encoding) shared with the Rust client, and a `tower::Service` / `warp::Filter`
//! that serves `<base>/test` and `<base>/bind` (see `docs/` and issue 4).
//!
//! [`Session`]: browserver_core::Session
