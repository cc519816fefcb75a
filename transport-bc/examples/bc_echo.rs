//! An echo server for interop and browser tests: BrowserChannel at `/channel` (plus its
//! client script at `/channel/bcsocket.js`), WebSocket at `/ws` (plain and session mode), and
//! an empty HTML page at `/` for a browser to load.
//!
//! `cargo run -p browserver-transport-bc --example bc_echo -- 127.0.0.1:0`
//!
//! Prints `listening on ADDR` once ready, and `closed SID REASON after N messages` for each
//! BrowserChannel session that ends. Every message is sent back to its sender, except the
//! control strings `"close"` (the server closes the session), `"stop"` (the server stops
//! it), and on BrowserChannel `"appVersion"`, `"query"` and `"headers"` (answered with what
//! the session saw). Timers come from the environment: `BC_KEEPALIVE_MS`,
//! `BC_SESSION_TIMEOUT_MS`. `BC_CLOSE_ON_CONNECT=1` closes every new BrowserChannel session in
//! the connect hook; `BC_STOP_ON_CONNECT=1` stops it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use browserver_transport_bc::{BrowserChannel, ClientAddr, Options};
use browserver_transport_ws::{Message, WsEndpoint};
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

fn env_ms(name: &str) -> Option<Duration> {
    std::env::var(name)
        .ok()?
        .parse()
        .ok()
        .map(Duration::from_millis)
}

const PAGE: &str = "<!doctype html><html><head><meta charset=\"utf-8\"><title>bc_echo</title></head><body>bc_echo</body></html>";

async fn echo_bc(session: browserver_transport_bc::Session) {
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
            Some("appVersion") => drop(session.send(&json!({"appVersion": session.app_version()}))),
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
}

async fn echo_ws(session: browserver_transport_ws::Session) {
    while let Some(message) = session.recv().await {
        match &message {
            Message::Text(t) if t == "\"close\"" || t == "close" => session.close(),
            Message::Text(t) if t == "\"stop\"" || t == "stop" => drop(session.stop()),
            _ => drop(session.send(message)),
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let mut options = Options::default();
    let mut ws_options = browserver_transport_ws::Options::default();
    if let Some(d) = env_ms("BC_KEEPALIVE_MS") {
        options.keep_alive_interval = d;
        ws_options.keep_alive_interval = d;
    }
    if let Some(d) = env_ms("BC_SESSION_TIMEOUT_MS") {
        options.session_timeout_interval = d;
        ws_options.session_timeout = d;
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
    let (ws, mut ws_sessions) = WsEndpoint::new(ws_options);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Some(s) = ws_sessions.accept().await {
            tokio::spawn(echo_ws(s));
        }
    });
    tokio::spawn(async move {
        while let Some(session) = sessions.accept().await {
            tokio::spawn(echo_bc(session));
        }
    });
    loop {
        let (stream, peer) = listener.accept().await?;
        let (bc, ws) = (bc.clone(), ws.clone());
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ClientAddr(peer));
                    req.extensions_mut()
                        .insert(browserver_transport_ws::ClientAddr(peer));
                    let (bc, ws) = (bc.clone(), ws.clone());
                    async move {
                        let path = req.uri().path().to_string();
                        let response = if path == "/ws" {
                            ws.handle(req).await.map(Either::Right)
                        } else if bc.owns(&path) {
                            bc.handle(req).await.map(Either::Left)
                        } else {
                            let (status, body) = if path == "/" {
                                (200, PAGE)
                            } else {
                                (404, "Not found")
                            };
                            let mut r = http::Response::new(Either::Right(Full::new(
                                Bytes::from_static(body.as_bytes()),
                            )));
                            *r.status_mut() =
                                http::StatusCode::from_u16(status).unwrap_or_default();
                            r.headers_mut().insert(
                                "content-type",
                                http::HeaderValue::from_static("text/html; charset=utf-8"),
                            );
                            r
                        };
                        Ok::<_, Infallible>(response)
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}
