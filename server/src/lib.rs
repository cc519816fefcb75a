//! # browserver-server
//!
//! The library behind the `browserver` binary: BrowserChannel, WebSocket and the proxy's
//! HTTP ingress on one listener.
//!
//! - [`run`] with [`Mode::Proxy`]: every connected client becomes `<id>.<domain>`; HTTP
//!   requests to that host are answered by the client.
//! - [`run`] with [`Mode::Echo`]: every channel message goes back to its sender.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use browserver_transport_bc::{BrowserChannel, Received};
use browserver_transport_http::{Channel, HostPattern, Proxy, ProxyOptions, RemoteAddr, Wire};
use browserver_transport_ws::{Message, Mode as WsMode, WsEndpoint};
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// What the server does with its clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The browser-as-server proxy.
    Proxy,
    /// A plain channel echo server.
    Echo,
}

/// Server configuration; `Config::default()` is what `browserver` runs with no arguments.
#[derive(Clone)]
pub struct Config {
    /// Host pattern with one `*` (default `*.localhost`).
    pub host_pattern: String,
    /// BrowserChannel base path (default `/channel`).
    pub channel_base: String,
    /// WebSocket path (default `/ws`).
    pub ws_path: String,
    /// Keep-alive interval on idle channels (default 20 s).
    pub keepalive_interval: Duration,
    /// How long a session may be without a connection (default 30 s).
    pub session_timeout: Duration,
    /// How long a proxied request waits for the client's answer (default 30 s).
    pub request_timeout: Duration,
    /// Answer the status endpoint to any address, not only loopback (default false).
    pub public_status: bool,
    /// Egress destinations allowed although their addresses are refused by default
    /// (`host` or `host:port`).
    pub egress_allow: Vec<String>,
    /// Per-request authorization of proxied requests, both directions (default: allow all).
    pub authorizer: Arc<dyn browserver_transport_http::Authorizer>,
    /// `Access-Control-Allow-Origin` on BrowserChannel responses, for pages served elsewhere
    /// (default: none).
    pub cors: Option<String>,
    /// Decides who may connect and which id each client gets (default: everyone, random ids).
    pub authenticator: Option<Arc<dyn browserver_transport_http::Authenticator>>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("host_pattern", &self.host_pattern)
            .field("channel_base", &self.channel_base)
            .field("ws_path", &self.ws_path)
            .field("request_timeout", &self.request_timeout)
            .field("egress_allow", &self.egress_allow)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host_pattern: "*.localhost".into(),
            channel_base: "/channel".into(),
            ws_path: "/ws".into(),
            keepalive_interval: Duration::from_secs(20),
            session_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(30),
            public_status: false,
            egress_allow: Vec::new(),
            authorizer: Arc::new(browserver_transport_http::AllowAll),
            cors: None,
            authenticator: None,
        }
    }
}

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The host pattern is invalid.
    #[error(transparent)]
    Pattern(#[from] browserver_transport_http::PatternError),
}

/// A BrowserChannel session as a proxy channel: every message travels as a JSON string.
struct BcChannel(browserver_transport_bc::Session);

impl Channel for BcChannel {
    fn send(&self, message: String) -> bool {
        drop(self.0.send(&message));
        self.0.close_reason().is_none()
    }
}

/// A WebSocket session as a proxy channel: one text frame per message.
struct WsChannel(browserver_transport_ws::Session);

impl Channel for WsChannel {
    fn send(&self, message: String) -> bool {
        drop(self.0.send_text(message));
        self.0.close_reason().is_none()
    }
}

/// The text of a client's message: a JSON string is unwrapped (the Rust client and
/// bcsocket.js send strings as JSON).
fn message_text(text: &str) -> String {
    if text.starts_with('"')
        && let Ok(Value::String(s)) = serde_json::from_str::<Value>(text)
    {
        return s;
    }
    text.to_string()
}

fn hello(id: &str, hostname: &str) -> String {
    json!({"brow": 2, "hello": {"id": id, "hostname": hostname}}).to_string()
}

fn received_text(m: &Received) -> Option<String> {
    match &m.value {
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
        None => None,
    }
}

/// Runs the authenticator on a connecting request (the transports' admission step).
fn admit(
    authenticator: Arc<dyn browserver_transport_http::Authenticator>,
    transport: &'static str,
    parts: &http::request::Parts,
) -> browserver_transport_ws::AdmissionFuture {
    let client = browserver_transport_http::Connecting {
        transport,
        headers: parts.headers.clone(),
        query: form_pairs(parts.uri.query().unwrap_or("")),
        address: parts.extensions.get::<RemoteAddr>().map(|a| a.0),
    };
    Box::pin(async move {
        authenticator
            .authenticate(&client)
            .await
            .map_err(|r| (r.status, r.reason))
    })
}

fn form_pairs(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

type Body = Either<browserver_transport_bc::ResponseBody, Full<Bytes>>;

fn page(status: u16, content_type: &'static str, body: String) -> http::Response<Body> {
    let mut r = http::Response::new(Either::Right(Full::new(Bytes::from(body))));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

/// The demo page served at `/` by the proxy: the tab becomes a server.
const DEMO_PAGE: &str = include_str!("../web/index.html");
/// The browser browserver client, served at `/browserver.js`.
const BROWSERVER_JS: &str = include_str!("../web/browserver.js");

const INDEX: &str = "<!doctype html><html><head><meta charset=\"utf-8\"><title>browserver</title></head><body><h1>browserver</h1><p>BrowserChannel at <code>/channel</code> (client script <a href=\"/channel/bcsocket.js\">/channel/bcsocket.js</a>), WebSocket at <code>/ws</code>, connected clients at <a href=\"/_browserver/clients\">/_browserver/clients</a>.</p></body></html>";

/// Runs the server on `listener` until `shutdown` resolves; then every session is closed.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: Config,
    mode: Mode,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), StartError> {
    let pattern = HostPattern::parse(&config.host_pattern)?;
    let proxy_options = ProxyOptions {
        request_timeout: config.request_timeout,
        egress: browserver_transport_http::EgressPolicy {
            allow: config.egress_allow.clone(),
            ..Default::default()
        },
        authorizer: config.authorizer.clone(),
        ..ProxyOptions::default()
    };
    // One channel message carries one HTTP message: a body of up to the proxy's limit, in
    // base64 (4/3), plus its head.
    let message_limit = proxy_options.max_body_bytes / 3 * 4 + (1 << 20);
    let proxy = Proxy::new(pattern, proxy_options);
    let (bc, mut bc_sessions) = BrowserChannel::new(browserver_transport_bc::Options {
        base: config.channel_base.clone(),
        keep_alive_interval: config.keepalive_interval,
        session_timeout_interval: config.session_timeout,
        max_body_bytes: message_limit,
        max_buffered_bytes: 4 * message_limit,
        cors: config
            .cors
            .clone()
            .map(browserver_transport_bc::Cors::Origin),
        admission: config.authenticator.clone().map(|a| {
            let admission: browserver_transport_bc::Admission =
                Arc::new(move |parts| admit(a.clone(), "browserchannel", parts));
            admission
        }),
        ..Default::default()
    });
    let (ws, mut ws_sessions) = WsEndpoint::new(browserver_transport_ws::Options {
        keep_alive_interval: config.keepalive_interval,
        session_timeout: config.session_timeout,
        max_frame_size: message_limit,
        max_message_size: message_limit,
        max_buffered_bytes: 4 * message_limit,
        admission: config.authenticator.clone().map(|a| {
            let admission: browserver_transport_ws::Admission =
                Arc::new(move |parts| admit(a.clone(), "websocket", parts));
            admission
        }),
        ..Default::default()
    });
    let p = proxy.clone();
    tokio::spawn(async move {
        while let Some(session) = bc_sessions.accept().await {
            let proxy = p.clone();
            tokio::spawn(async move {
                let id = session.id().to_string();
                tracing::info!(client = %id, transport = "browserchannel", address = ?session.address(), "connected");
                let wire = if session.query_param("brow") == Some("2") {
                    Wire::Json
                } else {
                    Wire::Text
                };
                if mode == Mode::Proxy {
                    let hostname = proxy.connect(
                        &id,
                        Arc::new(BcChannel(session.clone())),
                        wire,
                        "browserchannel",
                    );
                    if wire == Wire::Json {
                        drop(session.send(&hello(&id, &hostname)));
                    }
                }
                while let Some(m) = session.recv().await {
                    match mode {
                        Mode::Echo => drop(session.send(&m.value)),
                        Mode::Proxy => {
                            if let Some(text) = received_text(&m) {
                                proxy.from_client(&id, text.as_bytes());
                            }
                        }
                    }
                }
                let reason = session.closed().await;
                proxy.disconnect(&id, &reason);
                tracing::info!(client = %id, %reason, "disconnected");
            });
        }
    });
    let p = proxy.clone();
    tokio::spawn(async move {
        while let Some(session) = ws_sessions.accept().await {
            let proxy = p.clone();
            tokio::spawn(async move {
                let id = session.id().to_string();
                tracing::info!(client = %id, transport = "websocket", address = ?session.address(), "connected");
                let wire = if session.mode() == WsMode::Session {
                    Wire::Json
                } else {
                    Wire::Text
                };
                if mode == Mode::Proxy {
                    let hostname =
                        proxy.connect(&id, Arc::new(WsChannel(session.clone())), wire, "websocket");
                    if wire == Wire::Json {
                        drop(session.send_text(hello(&id, &hostname)));
                    }
                }
                while let Some(m) = session.recv().await {
                    match mode {
                        Mode::Echo => drop(session.send(m)),
                        Mode::Proxy => match &m {
                            Message::Text(t) => proxy.from_client(&id, message_text(t).as_bytes()),
                            Message::Binary(b) => proxy.from_client(&id, b),
                        },
                    }
                }
                let reason = session.closed().await;
                proxy.disconnect(&id, &reason);
                tracing::info!(client = %id, %reason, "disconnected");
            });
        }
    });
    let serve = async {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (bc, ws, proxy, config) = (bc.clone(), ws.clone(), proxy.clone(), config.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let (bc, ws, proxy, config) =
                        (bc.clone(), ws.clone(), proxy.clone(), config.clone());
                    async move {
                        Ok::<_, Infallible>(route(req, peer, &bc, &ws, &proxy, &config, mode).await)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    };
    tokio::select! {
        _ = serve => {}
        _ = shutdown => {}
    }
    // Stop accepting (the accept loop is gone), tell every client not to reconnect here, and
    // give the stops up to a second to be written; pending proxied requests end with 504 as
    // their clients' sessions close.
    tracing::info!("shutting down: stopping every session");
    let stops: Vec<_> = bc
        .sessions()
        .iter()
        .map(|s| tokio::spawn(s.stop()))
        .collect();
    let ws_stops: Vec<_> = ws
        .sessions()
        .iter()
        .map(|s| tokio::spawn(s.stop()))
        .collect();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        for s in stops.into_iter().chain(ws_stops) {
            let _ = s.await;
        }
    })
    .await;
    bc.close_all();
    ws.close_all();
    Ok(())
}

async fn route(
    mut req: http::Request<hyper::body::Incoming>,
    peer: SocketAddr,
    bc: &BrowserChannel,
    ws: &WsEndpoint,
    proxy: &Proxy,
    config: &Config,
    mode: Mode,
) -> http::Response<Body> {
    req.extensions_mut()
        .insert(browserver_transport_bc::ClientAddr(peer));
    req.extensions_mut()
        .insert(browserver_transport_ws::ClientAddr(peer));
    req.extensions_mut().insert(RemoteAddr(peer));
    let started = std::time::Instant::now();
    // The handlers' futures are boxed: hyper keeps room for this function's future on every
    // connection, in use or not, so it is kept small (a hanging back channel's connection
    // would otherwise carry several KiB of it).
    let req = if mode == Mode::Proxy {
        let line = format!("{} {}", req.method(), req.uri());
        match Box::pin(proxy.handle(req)).await {
            Ok(response) => {
                tracing::info!(request = %line, status = response.status().as_u16(), duration_ms = started.elapsed().as_millis() as u64, "proxied");
                return response.map(Either::Right);
            }
            Err(req) => req,
        }
    } else {
        req
    };
    let path = req.uri().path().to_string();
    if path == config.ws_path {
        return Box::pin(ws.handle(req)).await.map(Either::Right);
    }
    if bc.owns(&path) {
        return Box::pin(bc.handle(req)).await.map(Either::Left);
    }
    match path.as_str() {
        "/_browserver/clients" => {
            if !config.public_status && !peer.ip().is_loopback() {
                return page(
                    403,
                    "text/plain",
                    "Forbidden: the status endpoint answers loopback only".into(),
                );
            }
            let body = serde_json::to_string_pretty(&proxy.list()).unwrap_or_default();
            page(200, "application/json", body)
        }
        "/" if mode == Mode::Proxy => page(200, "text/html; charset=utf-8", DEMO_PAGE.into()),
        "/" => page(200, "text/html; charset=utf-8", INDEX.into()),
        "/browserver.js" => page(200, "application/javascript", BROWSERVER_JS.into()),
        _ => page(404, "text/plain", "Not found".into()),
    }
}
