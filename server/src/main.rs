//! The `browserver` binary.

use std::net::SocketAddr;
use std::time::Duration;

use browserver_server::{Config, Mode, run};
use clap::{Parser, Subcommand};

/// browserver: every connected client (a browser tab, or any program) becomes an HTTP server
/// at `<client-id>.<domain>`. Clients connect over WebSocket or BrowserChannel.
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
    /// Answer /_browserver/clients to any address, not only loopback.
    #[arg(long, env = "BROWSERVER_PUBLIC_STATUS", global = true)]
    public_status: bool,
    /// Allow clients' requests to this destination (`host` or `host:port`) although its
    /// address is loopback, private, link-local or metadata; repeatable.
    #[arg(
        long,
        env = "BROWSERVER_EGRESS_ALLOW",
        value_delimiter = ',',
        global = true
    )]
    egress_allow: Vec<String>,
    /// `Access-Control-Allow-Origin` for BrowserChannel responses (a page served elsewhere
    /// connecting to this server).
    #[arg(long, env = "BROWSERVER_CORS", global = true)]
    cors: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A plain channel echo server: every message goes back to its sender (WebSocket and
    /// BrowserChannel on the same paths).
    Echo,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let listener = match tokio::net::TcpListener::bind(cli.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("browserver: cannot listen on {}: {e}", cli.listen);
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Ok(addr) = listener.local_addr() {
        println!("listening on {addr}");
    }
    let config = Config {
        host_pattern: cli.host_pattern,
        channel_base: cli.channel_base,
        ws_path: cli.ws_path,
        keepalive_interval: cli.keepalive_interval,
        session_timeout: cli.session_timeout,
        request_timeout: cli.request_timeout,
        public_status: cli.public_status,
        egress_allow: cli.egress_allow,
        cors: cli.cors,
        ..Config::default()
    };
    let mode = match cli.command {
        None => Mode::Proxy,
        Some(Command::Echo) => Mode::Echo,
    };
    tracing::info!(
        "browserver ({mode:?}) on http://{}: BrowserChannel {}, WebSocket {}, clients at {}",
        cli.listen,
        config.channel_base,
        config.ws_path,
        config.host_pattern
    );
    if let Err(e) = run(listener, config, mode, shutdown_signal()).await {
        eprintln!("browserver: {e}");
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
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
