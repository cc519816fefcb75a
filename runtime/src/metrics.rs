//! What browserver counts, through the [`metrics`] facade: every crate records here, and an
//! application (the `browserver` binary: `--metrics-listen`) installs a recorder to export
//! them — the Prometheus text format in the binary — then calls [`enable`]. Until then
//! nothing is recorded, and recording costs one atomic load.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `browserver_sessions` | gauge | `transport` (`websocket`, `browserchannel`) |
//! | `browserver_clients` | gauge | `transport`: sessions registered with the proxy |
//! | `browserver_messages_total` | counter | `transport`, `direction` (`in`, `out`) |
//! | `browserver_message_bytes_total` | counter | `transport`, `direction` |
//! | `browserver_proxied_requests_total` | counter | `status` (`200`, `504`, …) |
//! | `browserver_proxied_request_duration_seconds` | histogram | — (until the answer is written) |
//! | `browserver_proxied_bytes_total` | counter | `direction` (`in`: request bodies, `out`: answers) |
//! | `browserver_egress_refusals_total` | counter | `reason` (`off`, `allow_list`, `address`) |
//! | `browserver_limit_hits_total` | counter | `limit`: a [`Limit`] |
//! | `browserver_cluster_hops_total` | counter | `outcome` (`ok`, `failed`): requests forwarded to the node holding their client or session |
//! | `browserver_cluster_redis_commands_total` | counter | — (commands this node sent to Redis) |
//!
//! ```
//! use browserver_runtime::metrics::{self, Limit};
//!
//! // With a recorder installed (e.g. `metrics-exporter-prometheus`'s): register every
//! // series, so that a scrape shows each at zero before it first moves, and start recording.
//! metrics::enable();
//! // An embedding application may count its own refusals under the same names.
//! metrics::limit_hit(Limit::MaxConnections);
//! assert_eq!(Limit::SessionRate.as_str(), "session_rate");
//! ```

/// `browserver_sessions`.
pub const SESSIONS: &str = "browserver_sessions";
/// `browserver_clients`.
pub const CLIENTS: &str = "browserver_clients";
/// `browserver_messages_total`.
pub const MESSAGES: &str = "browserver_messages_total";
/// `browserver_message_bytes_total`.
pub const MESSAGE_BYTES: &str = "browserver_message_bytes_total";
/// `browserver_proxied_requests_total`.
pub const PROXIED_REQUESTS: &str = "browserver_proxied_requests_total";
/// `browserver_proxied_request_duration_seconds`.
pub const PROXIED_DURATION: &str = "browserver_proxied_request_duration_seconds";
/// `browserver_proxied_bytes_total`.
pub const PROXIED_BYTES: &str = "browserver_proxied_bytes_total";
/// `browserver_egress_refusals_total`.
pub const EGRESS_REFUSALS: &str = "browserver_egress_refusals_total";
/// `browserver_limit_hits_total`.
pub const LIMIT_HITS: &str = "browserver_limit_hits_total";
/// `browserver_cluster_hops_total`.
pub const CLUSTER_HOPS: &str = "browserver_cluster_hops_total";
/// `browserver_cluster_redis_commands_total`.
pub const CLUSTER_REDIS_COMMANDS: &str = "browserver_cluster_redis_commands_total";

/// The limits of `docs/security.md`, as `browserver_limit_hits_total`'s `limit` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `--max-connections`: a connection refused.
    MaxConnections,
    /// `--max-connections-per-address`.
    MaxConnectionsPerAddress,
    /// `--idle-timeout`: an idle connection closed.
    IdleTimeout,
    /// `--header-read-timeout`: a request head (or a TLS handshake) too slow; connection
    /// closed.
    HeaderReadTimeout,
    /// `--max-sessions`: a session creation refused (503).
    MaxSessions,
    /// `--max-sessions-per-address` (429).
    MaxSessionsPerAddress,
    /// `--session-rate` / `--session-burst` (429).
    SessionRate,
    /// Addresses tracked by the session quota (503).
    QuotaAddresses,
    /// `--max-buffered-bytes`: a send refused (`BufferFull`).
    MaxBufferedBytes,
    /// `--body-min-rate`: a body too slow (408).
    BodyMinRate,
    /// The request body limit (413).
    MaxBodyBytes,
    /// `--max-in-flight-body-bytes` (503).
    MaxInFlightBodyBytes,
    /// Requests waiting on one client (503).
    MaxPendingPerClient,
    /// `--request-timeout`: a client did not answer in time (504).
    RequestTimeout,
    /// Egress requests in flight per client (429 to the client).
    MaxEgressPerClient,
}

impl Limit {
    /// The label value: the flag's name with underscores.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::MaxConnections => "max_connections",
            Limit::MaxConnectionsPerAddress => "max_connections_per_address",
            Limit::IdleTimeout => "idle_timeout",
            Limit::HeaderReadTimeout => "header_read_timeout",
            Limit::MaxSessions => "max_sessions",
            Limit::MaxSessionsPerAddress => "max_sessions_per_address",
            Limit::SessionRate => "session_rate",
            Limit::QuotaAddresses => "quota_addresses",
            Limit::MaxBufferedBytes => "max_buffered_bytes",
            Limit::BodyMinRate => "body_min_rate",
            Limit::MaxBodyBytes => "max_body_bytes",
            Limit::MaxInFlightBodyBytes => "max_in_flight_body_bytes",
            Limit::MaxPendingPerClient => "max_pending_per_client",
            Limit::RequestTimeout => "request_timeout",
            Limit::MaxEgressPerClient => "max_egress_per_client",
        }
    }
}

/// The handles of the series recorded on every message and request, registered once by
/// [`enable`]: recording is then an atomic add, with no lookup or allocation.
struct Handles {
    /// `[transport][direction]`: websocket/browserchannel × in/out.
    messages: [[metrics::Counter; 2]; 2],
    message_bytes: [[metrics::Counter; 2]; 2],
    proxied_bytes: [metrics::Counter; 2],
    duration: metrics::Histogram,
}

static HANDLES: std::sync::OnceLock<Handles> = std::sync::OnceLock::new();

const TRANSPORTS: [&str; 2] = ["websocket", "browserchannel"];
const DIRECTIONS: [&str; 2] = ["in", "out"];

fn index(names: &[&str; 2], name: &str) -> usize {
    usize::from(names[1] == name)
}

/// Counts one hit of `limit`.
pub fn limit_hit(limit: Limit) {
    if HANDLES.get().is_some() {
        metrics::counter!(LIMIT_HITS, "limit" => limit.as_str()).increment(1);
    }
}

/// Counts one egress request refused (`off`, `allow_list` or `address`).
pub fn egress_refused(reason: &'static str) {
    if HANDLES.get().is_some() {
        metrics::counter!(EGRESS_REFUSALS, "reason" => reason).increment(1);
    }
}

/// Counts one message of `bytes` on a session of `transport` (`websocket` or
/// `browserchannel`), `in` (from the peer) or `out`.
pub fn message(transport: &'static str, direction: &'static str, bytes: usize) {
    if let Some(h) = HANDLES.get() {
        let (t, d) = (index(&TRANSPORTS, transport), index(&DIRECTIONS, direction));
        h.messages[t][d].increment(1);
        h.message_bytes[t][d].increment(bytes as u64);
    }
}

/// Counts one proxied request, when its answer has been written (or abandoned).
pub fn proxied(status: u16, seconds: f64, bytes_in: u64, bytes_out: u64) {
    if let Some(h) = HANDLES.get() {
        metrics::counter!(PROXIED_REQUESTS, "status" => status.to_string()).increment(1);
        h.duration.record(seconds);
        h.proxied_bytes[0].increment(bytes_in);
        h.proxied_bytes[1].increment(bytes_out);
    }
}

/// Counts one request forwarded to another node: `ok` (it answered) or `failed`.
pub fn hop(ok: bool) {
    if HANDLES.get().is_some() {
        metrics::counter!(CLUSTER_HOPS, "outcome" => if ok { "ok" } else { "failed" }).increment(1);
    }
}

/// Counts `n` commands sent to Redis.
pub fn redis_commands(n: u64) {
    if HANDLES.get().is_some() {
        metrics::counter!(CLUSTER_REDIS_COMMANDS).increment(n);
    }
}

/// Moves the gauge `name` (`SESSIONS` or `CLIENTS`) of `transport` by `delta`.
pub fn gauge(name: &'static str, transport: &'static str, delta: f64) {
    if HANDLES.get().is_some() {
        metrics::gauge!(name, "transport" => transport).increment(delta);
    }
}

/// Starts recording into the installed recorder: registers every metric's help text, and
/// starts each series at zero (so a scrape shows it before it first moves). Call it once,
/// after installing the recorder; later calls do nothing.
pub fn enable() {
    if HANDLES.get().is_some() {
        return;
    }
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(SESSIONS, "Open sessions, by transport.");
    describe_gauge!(CLIENTS, "Clients registered with the proxy, by transport.");
    describe_counter!(MESSAGES, "Channel messages, by transport and direction.");
    describe_counter!(
        MESSAGE_BYTES,
        Unit::Bytes,
        "Channel message bytes, by transport and direction."
    );
    describe_counter!(PROXIED_REQUESTS, "Proxied HTTP requests, by status code.");
    describe_histogram!(
        PROXIED_DURATION,
        Unit::Seconds,
        "Proxied request duration, until the answer is written."
    );
    describe_counter!(
        PROXIED_BYTES,
        Unit::Bytes,
        "Proxied body bytes: in (requests) and out (answers)."
    );
    describe_counter!(
        EGRESS_REFUSALS,
        "Egress requests refused by the policy, by reason."
    );
    describe_counter!(
        LIMIT_HITS,
        "Times a limit refused or ended something, by limit."
    );
    for transport in ["websocket", "browserchannel"] {
        metrics::gauge!(SESSIONS, "transport" => transport).increment(0.0);
        metrics::gauge!(CLIENTS, "transport" => transport).increment(0.0);
    }
    for limit in [
        Limit::MaxConnections,
        Limit::MaxConnectionsPerAddress,
        Limit::IdleTimeout,
        Limit::HeaderReadTimeout,
        Limit::MaxSessions,
        Limit::MaxSessionsPerAddress,
        Limit::SessionRate,
        Limit::QuotaAddresses,
        Limit::MaxBufferedBytes,
        Limit::BodyMinRate,
        Limit::MaxBodyBytes,
        Limit::MaxInFlightBodyBytes,
        Limit::MaxPendingPerClient,
        Limit::RequestTimeout,
        Limit::MaxEgressPerClient,
    ] {
        metrics::counter!(LIMIT_HITS, "limit" => limit.as_str()).increment(0);
    }
    describe_counter!(
        CLUSTER_HOPS,
        "Requests forwarded to the node holding their client or session, by outcome."
    );
    describe_counter!(
        CLUSTER_REDIS_COMMANDS,
        "Commands this node sent to Redis (several nodes)."
    );
    for outcome in ["ok", "failed"] {
        metrics::counter!(CLUSTER_HOPS, "outcome" => outcome).increment(0);
    }
    metrics::counter!(CLUSTER_REDIS_COMMANDS).increment(0);
    for reason in ["off", "allow_list", "address"] {
        metrics::counter!(EGRESS_REFUSALS, "reason" => reason).increment(0);
    }
    let pair = |name: &'static str, t: &'static str| {
        [
            metrics::counter!(name, "transport" => t, "direction" => "in"),
            metrics::counter!(name, "transport" => t, "direction" => "out"),
        ]
    };
    let _ = HANDLES.set(Handles {
        messages: TRANSPORTS.map(|t| pair(MESSAGES, t)),
        message_bytes: TRANSPORTS.map(|t| pair(MESSAGE_BYTES, t)),
        proxied_bytes: DIRECTIONS.map(|d| metrics::counter!(PROXIED_BYTES, "direction" => d)),
        duration: metrics::histogram!(PROXIED_DURATION),
    });
}
