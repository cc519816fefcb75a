//! The `browserver` binary.

use std::net::SocketAddr;
use std::time::Duration;

use browserver_server::{EchoConfig, echo};
use clap::{Parser, Subcommand};

/// browserver: BrowserChannel and browser-as-server proxy.
///
/// Today both `browserver` and `browserver echo` run the BrowserChannel echo server (every
/// message is sent back to its sender); the proxy arrives with issue 6.
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
    /// BrowserChannel base path.
    #[arg(
        long,
        env = "BROWSERVER_CHANNEL_BASE",
        default_value = "/channel",
        global = true
    )]
    channel_base: String,
    /// Keep-alive interval on idle back channels (e.g. `20s`).
    #[arg(long, env = "BROWSERVER_KEEPALIVE_INTERVAL", default_value = "20s", value_parser = humantime::parse_duration, global = true)]
    keepalive_interval: Duration,
    /// How long a session may be without a back channel (e.g. `30s`).
    #[arg(long, env = "BROWSERVER_SESSION_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    session_timeout: Duration,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A plain channel echo server: every message goes back to its sender.
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
    let config = EchoConfig {
        channel_base: cli.channel_base,
        keepalive_interval: cli.keepalive_interval,
        session_timeout: cli.session_timeout,
    };
    match cli.command {
        None | Some(Command::Echo) => {
            tracing::info!(
                "BrowserChannel echo on http://{}{}",
                cli.listen,
                config.channel_base
            );
            echo(listener, config, shutdown_signal()).await;
        }
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
