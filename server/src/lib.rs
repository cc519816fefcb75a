//! # browserver-server
//!
//! The library behind the `browserver` binary: it wires the transports together on one
//! listener. Today it runs the BrowserChannel echo server ([`echo`]); the proxy (host-pattern
//! routing to connected clients, WebSocket, the demo page) is issue 6.

use std::time::Duration;

use browserver_transport_bc::{BrowserChannel, Options, Received, serve};
use serde_json::{Value, json};

/// Options of the echo server.
#[derive(Clone, Debug)]
pub struct EchoConfig {
    /// BrowserChannel base path.
    pub channel_base: String,
    /// Keep-alive interval on idle back channels.
    pub keepalive_interval: Duration,
    /// How long a session may have no back channel.
    pub session_timeout: Duration,
}

impl Default for EchoConfig {
    fn default() -> Self {
        let o = Options::default();
        EchoConfig {
            channel_base: o.base,
            keepalive_interval: o.keep_alive_interval,
            session_timeout: o.session_timeout_interval,
        }
    }
}

/// Runs a BrowserChannel echo server on `listener` until `shutdown` resolves; then every
/// session is closed. Each message is sent back to its sender, in order.
pub async fn echo(
    listener: tokio::net::TcpListener,
    config: EchoConfig,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let options = Options {
        base: config.channel_base,
        keep_alive_interval: config.keepalive_interval,
        session_timeout_interval: config.session_timeout,
        ..Options::default()
    };
    let (bc, mut sessions) = BrowserChannel::new(options);
    let server = tokio::spawn(serve(listener, bc.clone()));
    let accept = async {
        while let Some(session) = sessions.accept().await {
            tracing::info!(session = %session.id(), address = ?session.address(), "connected");
            tokio::spawn(async move {
                while let Some(message) = session.recv().await {
                    drop(session.send(&echo_value(message)));
                }
                let reason = session.closed().await;
                tracing::info!(session = %session.id(), %reason, "disconnected");
            });
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = shutdown => {}
    }
    tracing::info!(sessions = bc.session_count(), "shutting down");
    bc.close_all();
    server.abort();
}

fn echo_value(message: Received) -> Value {
    match (message.value, message.map) {
        (Some(v), _) => v,
        (None, Some(map)) => json!(map),
        (None, None) => Value::Null,
    }
}
