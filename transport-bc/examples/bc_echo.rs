//! A BrowserChannel echo server for interop tests and benchmarks.
//!
//! `cargo run -p browserver-transport-bc --example bc_echo -- 127.0.0.1:0`
//!
//! Prints `listening on ADDR` once ready, and `closed SID REASON after N messages` for each
//! session that ends. Every message is sent back to its sender, except
//! the control strings `"close"` (the server closes the session), `"stop"` (the server stops
//! it), `"appVersion"`, `"query"` and `"headers"` (answered with what the session saw). Timers come from the environment:
//! `BC_KEEPALIVE_MS`, `BC_SESSION_TIMEOUT_MS`. `BC_CLOSE_ON_CONNECT=1` closes every new
//! session in the connect hook; `BC_STOP_ON_CONNECT=1` stops it.

use std::sync::Arc;
use std::time::Duration;

use browserver_transport_bc::{BrowserChannel, Options, serve};
use serde_json::{Value, json};

fn env_ms(name: &str) -> Option<Duration> {
    std::env::var(name)
        .ok()?
        .parse()
        .ok()
        .map(Duration::from_millis)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let mut options = Options::default();
    if let Some(d) = env_ms("BC_KEEPALIVE_MS") {
        options.keep_alive_interval = d;
    }
    if let Some(d) = env_ms("BC_SESSION_TIMEOUT_MS") {
        options.session_timeout_interval = d;
    }
    let close_on_connect = std::env::var("BC_CLOSE_ON_CONNECT").is_ok_and(|v| v == "1");
    let stop_on_connect = std::env::var("BC_STOP_ON_CONNECT").is_ok_and(|v| v == "1");
    if close_on_connect || stop_on_connect {
        options.connect_hook = Some(Arc::new(move |s| {
            if close_on_connect {
                s.close();
            } else {
                drop(s.stop());
            }
        }));
    }
    let (bc, mut sessions) = BrowserChannel::new(options);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    tokio::spawn(serve(listener, bc));
    while let Some(session) = sessions.accept().await {
        tokio::spawn(async move {
            let mut received = 0u64;
            while let Some(message) = session.recv().await {
                received += 1;
                let value = match (message.value, message.map) {
                    (Some(v), _) => v,
                    (None, Some(map)) => json!(map),
                    (None, None) => Value::Null,
                };
                match value.as_str() {
                    Some("close") => session.close(),
                    Some("stop") => drop(session.stop()),
                    Some("appVersion") => {
                        drop(session.send(&json!({"appVersion": session.app_version()})))
                    }
                    Some("query") => {
                        let query: serde_json::Map<String, Value> = session
                            .query()
                            .iter()
                            .map(|(k, v)| (k.clone(), json!(v)))
                            .collect();
                        drop(session.send(&json!({ "query": query })));
                    }
                    Some("headers") => {
                        let headers: serde_json::Map<String, Value> = session
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
                            .collect();
                        drop(session.send(&json!({ "headers": headers })));
                    }
                    _ => drop(session.send(&value)),
                }
            }
            let reason = session.closed().await;
            println!("closed {} {reason} after {received} messages", session.id());
        });
    }
    Ok(())
}
