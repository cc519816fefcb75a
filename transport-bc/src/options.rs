//! Server options, with node-browserchannel's defaults and the limits it lacks.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

/// Computes `Access-Control-Allow-Origin` per request (for example by checking `Origin`).
pub type CorsFn = Arc<dyn Fn(&http::request::Parts) -> Option<String> + Send + Sync>;

pub use browserver_runtime::http::{Admission, AdmissionFuture, ConnectHook};

/// `Access-Control-Allow-Origin` for BrowserChannel responses.
#[derive(Clone)]
pub enum Cors {
    /// The same origin on every response.
    Origin(String),
    /// Computed per request; `None` omits the header.
    Dynamic(CorsFn),
}

impl std::fmt::Debug for Cors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cors::Origin(o) => f.debug_tuple("Origin").field(o).finish(),
            Cors::Dynamic(_) => f.write_str("Dynamic(..)"),
        }
    }
}

/// Options of a [`BrowserChannel`](crate::BrowserChannel). Start from `Options::default()`.
#[derive(Clone)]
pub struct Options {
    /// URL prefix; `/channel` by default. `"foo"`, `"/foo"` and `"foo/"` all mean `/foo`; `""`
    /// mounts at the root.
    pub base: String,
    /// Host prefixes offered to clients that use secondary domains (one picked at random per
    /// answer). Empty by default.
    pub host_prefixes: Vec<String>,
    /// Extra response headers; they override the standard ones of the same name.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `Access-Control-Allow-Origin`; off by default.
    pub cors: Option<Cors>,
    /// Adds `Access-Control-Allow-Credentials: true`. Off by default.
    pub cors_allow_credentials: bool,
    /// Period of keep-alives on an idle back channel. 20 s.
    pub keep_alive_interval: Duration,
    /// How long a session may be without a back channel before it closes. 30 s.
    pub session_timeout_interval: Duration,
    /// How long a new session may wait for its first back channel before it closes (a
    /// client that creates sessions and never listens holds them only this long). 10 s.
    pub attach_timeout: Duration,
    /// The pause in the test channel's buffering-proxy probe. 2 s (the client relies on it;
    /// shorten only in tests).
    pub test_phase2_delay: Duration,
    /// Largest forward-channel body accepted; larger → 413. 1 MiB.
    pub max_body_bytes: usize,
    /// Most maps in one forward request; more → 413. 1 000 (the Closure client's own batch).
    pub max_maps_per_post: u64,
    /// Most keys over all maps of one forward request; more → 413. 10 000.
    pub max_map_entries: usize,
    /// Bytes of forward requests held behind a missing `RID`; past it the request is refused
    /// with 400. 4 MiB.
    pub max_held_bytes: usize,
    /// Most live sessions; a session-creating request beyond it → 503. 100 000.
    pub max_sessions: usize,
    /// Live sessions and session creations per client address (IPv6 by `/64`); beyond them a
    /// session-creating request → 429 with `Retry-After`. 256 live, 120 per minute (bursts
    /// of 60). Needs the client address ([`ClientAddr`](crate::ClientAddr)). Give the
    /// WebSocket endpoint a clone to count both transports together.
    pub quota: browserver_core::SharedQuota,
    /// Web origins admitted to create sessions besides the server's own and requests without
    /// `Origin`; others → 403. None by default.
    pub origins: browserver_core::OriginPolicy,
    /// Bytes of unacknowledged outbound messages retained per session; past it `send` fails
    /// with [`SendError::BufferFull`](crate::SendError::BufferFull). 4 MiB.
    pub max_buffered_bytes: usize,
    /// Bytes of messages delivered to the application and not yet taken by
    /// [`Session::recv`](crate::Session::recv); past it the session closes (`Protocol("the application is not
    /// reading")`), so a client cannot make the server hold more for an application that does
    /// not read. 16 MiB (keep it several times `max_body_bytes`: a request's maps count
    /// whole before the application runs).
    pub max_unread_bytes: usize,
    /// How far ahead of a missing map (or request) others are held. 4 096.
    pub reorder_window: u64,
    /// Written after each back-channel response's payload exceeds this many characters (the
    /// client then reopens it). 10 240.
    pub back_channel_max_bytes: usize,
    /// Runs when a session is created, before the creating request is answered.
    pub connect_hook: Option<ConnectHook>,
    /// Admits (or refuses) a connecting client before its session exists. None admits all.
    pub admission: Option<Admission>,
    /// The client script served at `<base>/bcsocket.js`.
    pub client_script: &'static str,
    /// This node's tag, when it is one of several (`browserver_core::cluster`): every
    /// session id then names the node that holds it, so any node can route a request for
    /// it. None by default (random ids).
    pub node: Option<browserver_core::cluster::NodeTag>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            base: "/channel".into(),
            host_prefixes: Vec::new(),
            headers: Vec::new(),
            cors: None,
            cors_allow_credentials: false,
            keep_alive_interval: Duration::from_secs(20),
            session_timeout_interval: Duration::from_secs(30),
            attach_timeout: Duration::from_secs(10),
            test_phase2_delay: Duration::from_secs(2),
            max_body_bytes: 1 << 20,
            max_maps_per_post: 1000,
            max_map_entries: 10_000,
            max_held_bytes: 4 << 20,
            max_sessions: 100_000,
            quota: browserver_core::SharedQuota::default(),
            origins: browserver_core::OriginPolicy::default(),
            max_buffered_bytes: 4 << 20,
            max_unread_bytes: 16 << 20,
            reorder_window: 4096,
            back_channel_max_bytes: 10 * 1024,
            connect_hook: None,
            admission: None,
            client_script: crate::CLIENT_SCRIPT,
            node: None,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("base", &self.base)
            .field("host_prefixes", &self.host_prefixes)
            .field("cors", &self.cors)
            .field("cors_allow_credentials", &self.cors_allow_credentials)
            .field("keep_alive_interval", &self.keep_alive_interval)
            .field("session_timeout_interval", &self.session_timeout_interval)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_sessions", &self.max_sessions)
            .field("quota", &self.quota)
            .field("origins", &self.origins)
            .finish_non_exhaustive()
    }
}

/// `base` normalised: one leading slash, no trailing slash (or empty).
pub(crate) fn normalize_base(base: &str) -> String {
    let base = base.strip_suffix('/').unwrap_or(base);
    if base.is_empty() || base.starts_with('/') {
        base.to_string()
    } else {
        format!("/{base}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_is_normalised() {
        for b in ["foozit", "/foozit", "foozit/", "/foozit/"] {
            assert_eq!(normalize_base(b), "/foozit");
        }
        assert_eq!(normalize_base(""), "");
        assert_eq!(normalize_base("/"), "");
    }
}
