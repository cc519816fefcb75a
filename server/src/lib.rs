//! # browserver-server
//!
//! The `browserver` binary and the library that wires the transports together: the
//! BrowserChannel and WebSocket services and the proxy's HTTP ingress on one listener, with
//! options from flags and environment variables (issue 6).
