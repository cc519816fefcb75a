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

use std::sync::Arc;
use std::time::Duration;

use browserver_runtime::{Message, Session, Transport};
use browserver_transport_bc::{BrowserChannel, Options};
use browserver_transport_ws::WsEndpoint;
use bytes::Bytes;
use http_body_util::{Either, Full};
use serde_json::{Value, json};

fn env_ms(name: &str) -> Option<Duration> {
    std::env::var(name)
        .ok()?
        .parse()
        .ok()
        .map(Duration::from_millis)
}

const PAGE: &str = "<!doctype html><html><head><meta charset=\"utf-8\"><title>bc_echo</title></head><body>bc_echo</body></html>";

/// One handler for both transports.
async fn echo(session: Session) {
    let bc = session.transport() == Transport::BrowserChannel;
    let mut received = 0u64;
    while let Some(message) = session.recv().await {
        received += 1;
        // A control string arrives as JSON text (BrowserChannel, the session-mode clients)
        // or as plain text (a plain WebSocket client).
        let control = message
            .as_text()
            .map(|t| serde_json::from_str::<String>(t).unwrap_or_else(|_| t.to_string()));
        match control.as_deref() {
            Some("close") => session.close(),
            Some("stop") => drop(session.stop()),
            Some("appVersion") if bc => {
                drop(session.send_json(&json!({"appVersion": session.app_version()})))
            }
            Some("query") if bc => {
                let query: serde_json::Map<String, Value> = session
                    .query()
                    .iter()
                    .map(|(k, v)| (k.clone(), json!(v)))
                    .collect();
                drop(session.send_json(&json!({ "query": query })));
            }
            Some("headers") if bc => {
                let headers: serde_json::Map<String, Value> = session
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
                    .collect();
                drop(session.send_json(&json!({ "headers": headers })));
            }
            // A map without a message goes back as an object of its keys.
            _ => match message {
                Message::Map(map) => drop(session.send_json(&map)),
                message => drop(session.send(message)),
            },
        }
    }
    let reason = session.closed().await;
    if bc {
        println!("closed {} {reason} after {received} messages", session.id());
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
    let (bc, bc_sessions) = BrowserChannel::new(options);
    let (ws, ws_sessions) = WsEndpoint::new(ws_options);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    for mut sessions in [bc_sessions, ws_sessions] {
        tokio::spawn(async move {
            while let Some(session) = sessions.accept().await {
                tokio::spawn(echo(session));
            }
        });
    }
    browserver_runtime::serve(
        listener,
        move |req: http::Request<hyper::body::Incoming>| {
            let (bc, ws) = (bc.clone(), ws.clone());
            async move {
                let path = req.uri().path().to_string();
                if path == "/ws" {
                    ws.handle(req).await.map(Either::Right)
                } else if bc.owns(&path) {
                    bc.handle(req).await.map(Either::Left)
                } else {
                    let (status, body) = if path == "/" {
                        (200, PAGE)
                    } else {
                        (404, "Not found")
                    };
                    let mut r = http::Response::new(Either::Right(Full::new(Bytes::from_static(
                        body.as_bytes(),
                    ))));
                    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
                    r.headers_mut().insert(
                        "content-type",
                        http::HeaderValue::from_static("text/html; charset=utf-8"),
                    );
                    r
                }
            }
        },
    )
    .await;
    Ok(())
}
