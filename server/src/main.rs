//! The `browserver` binary.

use std::net::SocketAddr;
use std::time::Duration;

use browserver_server::{Config, Mode, run};
use clap::{Parser, Subcommand};

/// browserver: every connected client (a browser tab, or any program) becomes an HTTP server
/// at `<name>.<domain>`. Clients connect over WebSocket or BrowserChannel.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Address to listen on.
    #[arg(
        long,
        env = "BROWSERVER_LISTEN",
        default_value = "127.0.0.1:3572",
        global = true
    )]
    listen: SocketAddr,
    /// Host pattern with exactly one `*`, replaced by each client's id.
    #[arg(
        long,
        env = "BROWSERVER_HOST_PATTERN",
        default_value = "*.localhost",
        global = true
    )]
    host_pattern: String,
    /// BrowserChannel base path.
    #[arg(
        long,
        env = "BROWSERVER_CHANNEL_BASE",
        default_value = "/channel",
        global = true
    )]
    channel_base: String,
    /// WebSocket path.
    #[arg(long, env = "BROWSERVER_WS_PATH", default_value = "/ws", global = true)]
    ws_path: String,
    /// Keep-alive interval on idle channels (e.g. `20s`).
    #[arg(long, env = "BROWSERVER_KEEPALIVE_INTERVAL", default_value = "20s", value_parser = humantime::parse_duration, global = true)]
    keepalive_interval: Duration,
    /// How long a session may be without a connection (e.g. `30s`).
    #[arg(long, env = "BROWSERVER_SESSION_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    session_timeout: Duration,
    /// How long a proxied request waits for the client's answer (e.g. `30s`); then 504.
    #[arg(long, env = "BROWSERVER_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    request_timeout: Duration,
    /// How long a new BrowserChannel session may wait for its first back channel.
    #[arg(long, env = "BROWSERVER_ATTACH_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    attach_timeout: Duration,
    /// Bearer token for /_browserver/clients. Without it the endpoint answers only local,
    /// unforwarded requests to a loopback host.
    #[arg(long, env = "BROWSERVER_ADMIN_TOKEN", global = true)]
    admin_token: Option<String>,
    /// Reverse proxies (CIDR, comma-separated) whose X-Forwarded-For/-Proto/-Host are believed.
    #[arg(
        long,
        env = "BROWSERVER_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = parse_cidr,
        global = true
    )]
    trusted_proxies: Vec<browserver_transport_http::IpNet>,
    /// Web origins (comma-separated, `*` for any) allowed to open sessions besides this
    /// server's own; requests without Origin (non-browser clients) are always allowed.
    #[arg(
        long,
        env = "BROWSERVER_ALLOWED_ORIGINS",
        value_delimiter = ',',
        global = true
    )]
    allowed_origins: Vec<String>,
    /// What clients may reach through egress: `off`, `public` (every public address, plus
    /// --egress-allow) or `allow-list` (only --egress-allow).
    #[arg(
        long,
        env = "BROWSERVER_EGRESS",
        default_value = "public",
        global = true
    )]
    egress: browserver_transport_http::EgressMode,
    /// Allow clients' requests to this destination (`host` or `host:port`) although its
    /// address is loopback, private, link-local or metadata; repeatable.
    #[arg(
        long,
        env = "BROWSERVER_EGRESS_ALLOW",
        value_delimiter = ',',
        global = true
    )]
    egress_allow: Vec<String>,
    /// A request head must arrive within this long.
    #[arg(long, env = "BROWSERVER_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    header_read_timeout: Duration,
    /// A connection that moved no bytes for this long closes (when nothing is in flight, or
    /// its writes are stuck).
    #[arg(long, env = "BROWSERVER_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration, global = true)]
    idle_timeout: Duration,
    /// Minimum request-body rate in bytes per second, after --body-grace (0: none).
    #[arg(
        long,
        env = "BROWSERVER_BODY_MIN_RATE",
        default_value_t = 1024,
        global = true
    )]
    body_min_rate: u64,
    /// Time a request body gets before the minimum rate applies.
    #[arg(long, env = "BROWSERVER_BODY_GRACE", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    body_grace: Duration,
    /// Most open connections (never more than the file limit allows).
    #[arg(
        long,
        env = "BROWSERVER_MAX_CONNECTIONS",
        default_value_t = 10_000,
        global = true
    )]
    max_connections: usize,
    /// Most open connections per client address (IPv6 by /64; 0: no limit).
    #[arg(
        long,
        env = "BROWSERVER_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 256,
        global = true
    )]
    max_connections_per_address: usize,
    /// Most live sessions per transport.
    #[arg(
        long,
        env = "BROWSERVER_MAX_SESSIONS",
        default_value_t = 100_000,
        global = true
    )]
    max_sessions: usize,
    /// Most live sessions per client address (0: no limit).
    #[arg(
        long,
        env = "BROWSERVER_MAX_SESSIONS_PER_ADDRESS",
        default_value_t = 256,
        global = true
    )]
    max_sessions_per_address: usize,
    /// Sessions one client address may create per minute (0: no limit).
    #[arg(
        long,
        env = "BROWSERVER_SESSION_RATE",
        default_value_t = 120,
        global = true
    )]
    session_rate: u32,
    /// Sessions one client address may create in a burst before --session-rate applies.
    #[arg(
        long,
        env = "BROWSERVER_SESSION_BURST",
        default_value_t = 60,
        global = true
    )]
    session_burst: u32,
    /// Unacknowledged outbound bytes per session (default: one largest proxied message plus
    /// 1 MiB).
    #[arg(long, env = "BROWSERVER_MAX_BUFFERED_BYTES", global = true)]
    max_buffered_bytes: Option<usize>,
    /// Request-body bytes the proxy holds in memory at once, over all clients.
    #[arg(long, env = "BROWSERVER_MAX_IN_FLIGHT_BODY_BYTES", default_value_t = 256 << 20, global = true)]
    max_in_flight_body_bytes: usize,
    /// `Access-Control-Allow-Origin` for BrowserChannel responses (a page served elsewhere
    /// connecting to this server).
    #[arg(long, env = "BROWSERVER_CORS", global = true)]
    cors: Option<String>,
    /// Read settings from this TOML file: keys are the long flag names (`listen = "…"`);
    /// flags and environment variables override it; an unknown key is an error.
    #[arg(
        long,
        env = "BROWSERVER_CONFIG",
        value_name = "FILE.toml",
        global = true
    )]
    config: Option<std::path::PathBuf>,
    /// `text` (coloured only on a terminal) or `json` (one JSON object per line, every line
    /// this process writes).
    #[arg(
        long,
        env = "BROWSERVER_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    log_format: LogFormat,
    /// Serve HTTPS and WSS on --listen with this certificate chain (PEM, leaf first);
    /// reloaded with --tls-key on SIGHUP.
    #[arg(
        long,
        env = "BROWSERVER_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key",
        global = true
    )]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(
        long,
        env = "BROWSERVER_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert",
        global = true
    )]
    tls_key: Option<std::path::PathBuf>,
    /// Reserved names: a TOML file with a `[names]` table (`alice = "TOKEN"`); a client
    /// presenting a name's token gets that name. Reloaded on SIGHUP.
    #[arg(long, env = "BROWSERVER_TOKENS", value_name = "FILE", global = true)]
    tokens: Option<std::path::PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (a separate listener; keep it private).
    #[arg(
        long,
        env = "BROWSERVER_METRICS_LISTEN",
        value_name = "ADDR",
        global = true
    )]
    metrics_listen: Option<SocketAddr>,
    /// Extra certificate authorities (PEM) egress trusts for https:// targets, besides the
    /// built-in web roots.
    #[arg(long, env = "BROWSERVER_EGRESS_CA", value_name = "PEM", global = true)]
    egress_ca: Option<std::path::PathBuf>,
    /// Requests the inspector (/_browserver/inspect) keeps per connected client (0: off).
    #[arg(
        long,
        env = "BROWSERVER_INSPECTOR_REQUESTS",
        default_value_t = 50,
        global = true
    )]
    inspector_requests: usize,
    /// Be one node of several: the registry of names and nodes in this Redis
    /// (`redis://HOST:PORT`). Without it, a single node with nothing shared.
    #[arg(long, env = "BROWSERVER_REDIS", value_name = "URL", global = true)]
    redis: Option<String>,
    /// This node's id in the cluster (1 to 20 of a-z, 0-9; unique; default: random).
    #[arg(
        long,
        env = "BROWSERVER_NODE_ID",
        requires = "redis",
        value_name = "ID",
        global = true
    )]
    node_id: Option<String>,
    /// Where other nodes' forwarded requests arrive (plain HTTP/2 and HTTP/1.1; keep it on
    /// a private network).
    #[arg(
        long,
        env = "BROWSERVER_CLUSTER_LISTEN",
        requires = "redis",
        default_value = "127.0.0.1:0",
        value_name = "ADDR",
        global = true
    )]
    cluster_listen: SocketAddr,
    /// How other nodes reach --cluster-listen, `http://HOST:PORT` (default: its address,
    /// unless it listens on every interface).
    #[arg(
        long,
        env = "BROWSERVER_ADVERTISE",
        requires = "redis",
        value_name = "URL",
        global = true
    )]
    advertise: Option<String>,
    /// How long a node's and a name's registry entries live without a heartbeat (a dead
    /// node's names come free after it; heartbeats every third of it).
    #[arg(long, env = "BROWSERVER_CLUSTER_TTL", default_value = "15s", value_parser = humantime::parse_duration, requires = "redis", global = true)]
    cluster_ttl: Duration,
    #[command(subcommand)]
    command: Option<Command>,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A plain channel echo server: every message goes back to its sender (WebSocket and
    /// BrowserChannel on the same paths).
    Echo,
    /// Make a local HTTP server reachable through a browserver at `<name>.<domain>`:
    /// connects as a client, forwards every request to LOCAL_URL (streaming both ways,
    /// WebSocket upgrades and server-sent events included), reconnects with backoff.
    Expose {
        /// The local server, e.g. `http://127.0.0.1:8080`.
        #[arg(value_name = "LOCAL_URL")]
        local: String,
        /// The browserver: `ws://HOST:PORT` or `http://HOST:PORT` (a path selects the
        /// WebSocket path or the BrowserChannel base).
        #[arg(long, value_name = "PROXY_URL")]
        server: String,
        /// Send this `Host` header to the local server instead of the visitor's.
        #[arg(long)]
        host_header: Option<String>,
        /// `auto` (WebSocket, falling back to BrowserChannel), `websocket` or
        /// `browserchannel` (through proxies that refuse WebSocket).
        #[arg(long, default_value = "auto")]
        transport: ExposeTransport,
        /// Trust this certificate authority (PEM) for an https:// or wss:// server, besides
        /// the system's.
        #[arg(long, value_name = "PEM")]
        ca: Option<std::path::PathBuf>,
        /// Ask for this reserved name (the server's --tokens file); needs --token.
        #[arg(long, requires = "token")]
        name: Option<String>,
        /// The reserved name's token (prefer the environment variable: a flag shows in `ps`).
        #[arg(long, env = "BROWSERVER_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

/// `browserver expose --transport`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ExposeTransport {
    Auto,
    Websocket,
    Browserchannel,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(Parsed::Clap(e)) => e.exit(),
        Err(Parsed::File(why, format)) => {
            return fail(format, &format!("browserver: {why}"));
        }
    };
    init_logs(cli.log_format);
    let format = cli.log_format;
    if let Some(Command::Expose {
        local,
        server,
        host_header,
        transport,
        ca,
        name,
        token,
    }) = cli.command
    {
        let config = browserver_server::expose::ExposeConfig {
            local,
            server,
            host_header,
            transport: match transport {
                ExposeTransport::Auto => None,
                ExposeTransport::Websocket => Some(browserver_client::Transport::WebSocket),
                ExposeTransport::Browserchannel => {
                    Some(browserver_client::Transport::BrowserChannel)
                }
            },
            ca,
            name,
            token,
            json: format == LogFormat::Json,
        };
        let result = tokio::select! {
            r = browserver_server::expose::expose(config) => r,
            () = shutdown_signal() => Ok(()),
        };
        return match result {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => fail(format, &format!("browserver expose: {e}")),
        };
    }
    let tls = match (&cli.tls_cert, &cli.tls_key) {
        (Some(cert), Some(key)) => match browserver_server::tls::Certificate::load(cert, key) {
            Ok(c) => Some(c),
            Err(e) => return fail(format, &format!("browserver: --tls-cert/--tls-key: {e}")),
        },
        _ => None,
    };
    let names = match &cli.tokens {
        Some(path) => match browserver_server::names::ReservedNames::load(path) {
            Ok(n) => Some(n),
            Err(e) => return fail(format, &format!("browserver: --tokens: {e}")),
        },
        None => None,
    };
    let egress_ca = match &cli.egress_ca {
        Some(path) => match browserver_transport_http::tls::read_certificates(path) {
            Ok(certs) => certs,
            Err(e) => return fail(format, &format!("browserver: --egress-ca: {e}")),
        },
        None => Vec::new(),
    };
    if let Some(addr) = cli.metrics_listen {
        let handle = match browserver_server::prometheus::install() {
            Ok(h) => h,
            Err(e) => return fail(format, &format!("browserver: metrics: {e}")),
        };
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                tokio::spawn(browserver_server::prometheus::serve(l, handle));
            }
            Err(e) => {
                return fail(
                    format,
                    &format!("browserver: cannot listen on {addr} for metrics: {e}"),
                );
            }
        }
    }
    let listener = match tokio::net::TcpListener::bind(cli.listen).await {
        Ok(l) => l,
        Err(e) => {
            return fail(
                format,
                &format!("browserver: cannot listen on {}: {e}", cli.listen),
            );
        }
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    if let Ok(addr) = listener.local_addr() {
        // The first line, whatever the log level: tests and scripts read the address here.
        match format {
            LogFormat::Text => println!("listening on {addr}"),
            LogFormat::Json => println!(
                "{}",
                serde_json::json!({
                    "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
                    "level": "INFO",
                    "message": format!("listening on {addr}"),
                    "address": addr.to_string(),
                    "scheme": scheme,
                })
            ),
        }
    }
    #[cfg(unix)]
    reload_on_hangup(tls.clone(), names.clone());
    let config = Config {
        host_pattern: cli.host_pattern,
        channel_base: cli.channel_base,
        ws_path: cli.ws_path,
        keepalive_interval: cli.keepalive_interval,
        session_timeout: cli.session_timeout,
        request_timeout: cli.request_timeout,
        attach_timeout: cli.attach_timeout,
        admin_token: cli.admin_token,
        trusted_proxies: cli.trusted_proxies,
        allowed_origins: cli.allowed_origins,
        egress: cli.egress,
        egress_allow: cli.egress_allow,
        egress_ca,
        limits: browserver_server::Limits {
            header_read_timeout: cli.header_read_timeout,
            idle_timeout: cli.idle_timeout,
            body_min_rate: cli.body_min_rate,
            body_grace: cli.body_grace,
            max_connections: cli.max_connections,
            max_connections_per_address: cli.max_connections_per_address,
        },
        quota: browserver_core::QuotaConfig {
            max_sessions: cli.max_sessions_per_address,
            creations_per_minute: cli.session_rate,
            burst: cli.session_burst,
            ..browserver_core::QuotaConfig::default()
        },
        max_sessions: cli.max_sessions,
        max_buffered_bytes: cli.max_buffered_bytes,
        max_in_flight_body_bytes: cli.max_in_flight_body_bytes,
        cors: cli.cors,
        tls,
        authenticator: names.map(|n| {
            let a: std::sync::Arc<dyn browserver_transport_http::Authenticator> = n;
            a
        }),
        inspector_requests: cli.inspector_requests,
        cluster: cli
            .redis
            .map(|redis| browserver_server::cluster::ClusterConfig {
                node_id: cli.node_id,
                listen: cli.cluster_listen,
                advertise: cli.advertise,
                ttl: cli.cluster_ttl,
                ..browserver_server::cluster::ClusterConfig::new(redis)
            }),
        ..Config::default()
    };
    let mode = match cli.command {
        None => Mode::Proxy,
        Some(Command::Echo) => Mode::Echo,
        Some(Command::Expose { .. }) => return std::process::ExitCode::FAILURE,
    };
    tracing::info!(
        mode = ?mode,
        listen = %cli.listen,
        scheme,
        channel = %config.channel_base,
        websocket = %config.ws_path,
        clients = %config.host_pattern,
        "browserver ({mode:?}) on {scheme}://{}: BrowserChannel {}, WebSocket {}, clients at {}",
        cli.listen,
        config.channel_base,
        config.ws_path,
        config.host_pattern
    );
    if let Err(e) = run(listener, config, mode, shutdown_signal()).await {
        return fail(format, &format!("browserver: {e}"));
    }
    std::process::ExitCode::SUCCESS
}

/// Why the command line could not be parsed.
enum Parsed {
    /// Clap's own error (usage, `--help`, `--version`): clap prints it.
    Clap(clap::Error),
    /// The config file is unusable, and the log format to say it in.
    File(String, LogFormat),
}

/// The command line, with `--config`'s settings under it.
fn parse() -> Result<Cli, Parsed> {
    use clap::{CommandFactory, FromArgMatches};
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let command = Cli::command();
    // Leniently first: a required flag (`expose --server`) may be in the file.
    let lenient = command
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(&args)
        .map_err(Parsed::Clap)?;
    let args = match lenient.get_one::<std::path::PathBuf>("config") {
        Some(file) => {
            let format = lenient
                .get_one::<LogFormat>("log_format")
                .copied()
                .unwrap_or(LogFormat::Text);
            browserver_server::config_file::merge(&command, &lenient, &args, file)
                .map_err(|why| Parsed::File(why, format))?
        }
        None => args,
    };
    let matches = command.try_get_matches_from(args).map_err(Parsed::Clap)?;
    Cli::from_arg_matches(&matches).map_err(Parsed::Clap)
}

/// Logs to stdout: text (colour only on a terminal) or one JSON object per line.
fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stdout().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

/// Reports a fatal error (on stderr; a JSON object under `--log-format json`) and fails.
fn fail(format: LogFormat, message: &str) -> std::process::ExitCode {
    match format {
        LogFormat::Text => eprintln!("{message}"),
        LogFormat::Json => eprintln!(
            "{}",
            serde_json::json!({
                "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
                "level": "ERROR",
                "message": message,
            })
        ),
    }
    std::process::ExitCode::FAILURE
}

/// SIGHUP: read the certificate and the reserved names again (each keeps its old contents
/// if the new ones are unusable). Open connections and sessions are not touched.
#[cfg(unix)]
fn reload_on_hangup(
    tls: Option<std::sync::Arc<browserver_server::tls::Certificate>>,
    names: Option<std::sync::Arc<browserver_server::names::ReservedNames>>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot handle SIGHUP: no reloading");
        return;
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            if let Some(tls) = &tls {
                match tls.reload() {
                    Ok(()) => tracing::info!("reloaded the TLS certificate"),
                    Err(e) => {
                        tracing::error!(error = %e, "TLS certificate not reloaded; the old one stays")
                    }
                }
            }
            if let Some(names) = &names {
                match names.reload() {
                    Ok(n) => tracing::info!(names = n, "reloaded the reserved names"),
                    Err(e) => {
                        tracing::error!(error = %e, "reserved names not reloaded; the old ones stay")
                    }
                }
            }
        }
    });
}

/// A CIDR (`10.0.0.0/8`) or a single address (`127.0.0.1`).
fn parse_cidr(s: &str) -> Result<browserver_transport_http::IpNet, String> {
    s.parse::<browserver_transport_http::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(Into::into))
        .map_err(|_| format!("not a CIDR or an address: {s:?}"))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
