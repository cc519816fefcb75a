//! # browserver-server
//!
//! The library behind the `browserver` binary: BrowserChannel, WebSocket and the proxy's
//! HTTP ingress on one listener.
//!
//! - [`run`] with [`Mode::Proxy`]: every connected client becomes `<name>.<domain>`; HTTP
//!   requests to that host are answered by the client.
//! - [`run`] with [`Mode::Echo`]: every channel message goes back to its sender.

// On docs.rs, every feature-gated item is marked with the feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use browserver_core::stream::Frame;
use browserver_runtime::{ClientAddr, Message, SendError, Session, Transport, client_addr};
use browserver_transport_bc::BrowserChannel;
use browserver_transport_http::{
    Channel, Connected, Delivery, HostPattern, Proxy, ProxyBody, ProxyOptions, Undelivered, Wire,
};
use browserver_transport_ws::WsEndpoint;
use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

mod admin;
pub mod cluster;
pub mod config_file;
pub mod conn;
pub mod expose;
pub mod inspector;
pub mod names;
pub mod prometheus;
pub mod tls;

pub use conn::Limits;

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
    /// How long a new BrowserChannel session may wait for its first back channel (default
    /// 10 s).
    pub attach_timeout: Duration,
    /// How long a proxied request waits for the client's answer (default 30 s).
    pub request_timeout: Duration,
    /// Bearer token for the status endpoint `/_browserver/clients`. Without one it answers
    /// only loopback peers that name a loopback (or this server's) host and come through no
    /// proxy (default: none).
    pub admin_token: Option<String>,
    /// Reverse proxies whose `X-Forwarded-For`/`-Proto`/`-Host` are believed (default: none).
    pub trusted_proxies: Vec<browserver_transport_http::IpNet>,
    /// Web origins that may open sessions besides this server's own; `*` for any (default:
    /// none).
    pub allowed_origins: Vec<String>,
    /// What clients may reach through egress (default `public`).
    pub egress: browserver_transport_http::EgressMode,
    /// Egress destinations allowed although their addresses are refused by default
    /// (`host` or `host:port`); with `EgressMode::AllowList`, the only ones.
    pub egress_allow: Vec<String>,
    /// Certificate authorities egress trusts for `https://` targets besides the compiled-in
    /// web roots (default: none).
    pub egress_ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Per-request authorization of proxied requests, both directions (default: allow all).
    pub authorizer: Arc<dyn browserver_transport_http::Authorizer>,
    /// `Access-Control-Allow-Origin` on BrowserChannel responses, for pages served elsewhere
    /// (default: none).
    pub cors: Option<String>,
    /// Decides who may connect and which public name each client gets (default: everyone,
    /// random names).
    pub authenticator: Option<Arc<dyn browserver_transport_http::Authenticator>>,
    /// Connection limits and timeouts.
    pub limits: Limits,
    /// Sessions per client address: live and created per minute.
    pub quota: browserver_core::QuotaConfig,
    /// Most live sessions per transport (default 100 000).
    pub max_sessions: usize,
    /// Unacknowledged outbound bytes per session; past it sends fail (a client that stops
    /// reading holds no more than this). Default: room for one largest proxied message plus
    /// 1 MiB (about 22 MiB).
    pub max_buffered_bytes: Option<usize>,
    /// Request-body bytes being read at once over all requests, and (separately) bodies the
    /// proxy holds waiting for their clients (default 256 MiB each); past either → 503 (400
    /// on BrowserChannel).
    pub max_in_flight_body_bytes: usize,
    /// Serve HTTPS and WSS with this certificate (default: none, plain HTTP). [`run`] presents
    /// whatever it holds at each handshake, so [`tls::Certificate::reload`] takes effect for
    /// new connections without touching open ones.
    pub tls: Option<Arc<tls::Certificate>>,
    /// Requests the inspector keeps per connected client, for `/_browserver/inspect` (default
    /// 50; 0: the inspector is off).
    pub inspector_requests: usize,
    /// Be one node of several sharing clients and sessions through Redis ([`cluster`];
    /// default: none, a single node). Only [`run`] joins a cluster.
    pub cluster: Option<cluster::ClusterConfig>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("host_pattern", &self.host_pattern)
            .field("channel_base", &self.channel_base)
            .field("ws_path", &self.ws_path)
            .field("request_timeout", &self.request_timeout)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "…"))
            .field("trusted_proxies", &self.trusted_proxies)
            .field("allowed_origins", &self.allowed_origins)
            .field("egress", &self.egress)
            .field("egress_allow", &self.egress_allow)
            .field("limits", &self.limits)
            .field("quota", &self.quota)
            .field("tls", &self.tls)
            .field("cluster", &self.cluster)
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
            attach_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            admin_token: None,
            trusted_proxies: Vec::new(),
            allowed_origins: Vec::new(),
            egress: browserver_transport_http::EgressMode::Public,
            egress_allow: Vec::new(),
            egress_ca: Vec::new(),
            authorizer: Arc::new(browserver_transport_http::AllowAll),
            cors: None,
            authenticator: None,
            limits: Limits::default(),
            quota: browserver_core::QuotaConfig::default(),
            max_sessions: 100_000,
            max_buffered_bytes: None,
            max_in_flight_body_bytes: 256 << 20,
            tls: None,
            inspector_requests: 50,
            cluster: None,
        }
    }
}

/// Why the server cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The host pattern is invalid.
    #[error(transparent)]
    Pattern(#[from] browserver_transport_http::PatternError),
    /// The TLS certificate cannot be used.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// An egress certificate authority cannot be used.
    #[error("egress CA: {0}")]
    EgressCa(String),
    /// The cluster cannot be joined.
    #[error("cluster: {0}")]
    Cluster(#[from] cluster::ClusterError),
}

/// A session as a proxy channel. On BrowserChannel every message travels as a JSON string;
/// on WebSocket as one text message.
struct SessionChannel(Session);

/// Sends `text` the way the client's transport carries text.
fn send_str(session: &Session, text: String) -> browserver_runtime::Ack {
    browserver_runtime::metrics::message(transport_name(session), "out", text.len());
    if session.transport() == Transport::BrowserChannel {
        session.send_json(&text)
    } else {
        session.send_text(text)
    }
}

fn delivery(ack: browserver_runtime::Ack) -> Delivery {
    Box::pin(async move {
        ack.await.map_err(|e| match e {
            SendError::BufferFull { .. } => {
                browserver_runtime::metrics::limit_hit(
                    browserver_runtime::metrics::Limit::MaxBufferedBytes,
                );
                Undelivered::Full
            }
            _ => Undelivered::Closed,
        })
    })
}

impl Channel for SessionChannel {
    fn send(&self, message: String) -> Delivery {
        delivery(send_str(&self.0, message))
    }

    fn send_frame(&self, frame: Bytes) -> Delivery {
        browserver_runtime::metrics::message(transport_name(&self.0), "out", frame.len());
        delivery(match self.0.transport() {
            // BrowserChannel carries JSON only: the frame travels base64 in an object
            // (`{"f": …}`; the client sends it back the same way, or as a map).
            Transport::BrowserChannel => self
                .0
                .send_json(&json!({ FRAME_KEY: BASE64.encode(&frame) })),
            _ => self.0.send_binary(frame),
        })
    }

    fn abort(&self, why: &str) {
        tracing::warn!(error = %why, "a client broke the stream protocol; closing its session");
        self.0.close();
    }

    fn replace(&self) {
        // Told to stop, not merely closed: a replaced client that reconnected would take the
        // name back, and the two would replace each other for ever.
        drop(self.0.stop());
    }
}

/// The BrowserChannel map key that carries one base64 stream frame.
const FRAME_KEY: &str = "f";

/// What the proxy calls the transport.
fn transport_name(session: &Session) -> &'static str {
    match session.transport() {
        Transport::BrowserChannel => "browserchannel",
        _ => "websocket",
    }
}

/// One handler for every session, whatever its transport: register it with the proxy (or
/// echo), then pass its messages on until it closes.
async fn serve_session(
    proxy: Proxy,
    inspector: Arc<inspector::Inspector>,
    cluster: Option<cluster::Cluster>,
    mode: Mode,
    session: Session,
) {
    let transport = transport_name(&session);
    let _open = Gauge::up(browserver_runtime::metrics::SESSIONS, transport);
    let wire = match (session.transport(), session.query_param("brow")) {
        (Transport::BrowserChannel | Transport::WebSocketSession, Some("3")) => Wire::Streams,
        (Transport::BrowserChannel, Some("2")) | (Transport::WebSocketSession, _) => Wire::Json,
        _ => Wire::Text,
    };
    let channel = Arc::new(SessionChannel(session.clone()));
    let Some(client) = register(&proxy, mode, session.name(), channel, wire, transport) else {
        session.close();
        return;
    };
    // Several nodes: the name is registered before the client learns it.
    if let (Some(cluster), Some(c)) = (&cluster, &client)
        && let Err(e) = cluster.claim(&c.name, session.name().is_some()).await
    {
        tracing::warn!(client = %c.name, error = %e, "cannot register the name");
        session.close_with("name taken");
    }
    log_connected(client.as_ref(), transport, session.address());
    let _registered = client
        .as_ref()
        .map(|_| Gauge::up(browserver_runtime::metrics::CLIENTS, transport));
    let inspected = client.as_ref().map(|c| inspector.connected(&c.name));
    if let Some(c) = &client
        && wire != Wire::Text
    {
        drop(send_str(&session, hello(&c.name, &c.hostname)));
    }
    while let Some(m) = session.recv().await {
        browserver_runtime::metrics::message(transport, "in", message_len(&m));
        match (&client, m) {
            (None, Message::Map(map)) => drop(session.send_json(&map)),
            (None, m) => drop(session.send(m)),
            (Some(c), Message::Binary(b)) if wire == Wire::Streams && Frame::is_frame(&b) => {
                proxy.frame_from_client(c, b).await;
            }
            (Some(c), Message::Map(map))
                if wire == Wire::Streams && map.contains_key(FRAME_KEY) =>
            {
                match map.get(FRAME_KEY).map(|f| BASE64.decode(f)) {
                    Some(Ok(frame)) => proxy.frame_from_client(c, Bytes::from(frame)).await,
                    _ => {
                        tracing::warn!(client = %c.name, "dropped a map with an invalid stream frame")
                    }
                }
            }
            (Some(c), Message::Text(t)) if wire == Wire::Streams && t.starts_with("{\"f\":") => {
                match frame_of_json(&t) {
                    Some(frame) => proxy.frame_from_client(c, frame).await,
                    None => tracing::warn!(client = %c.name, "dropped an invalid stream frame"),
                }
            }
            (Some(c), Message::Text(t)) => proxy.from_client(c, message_text(&t).as_bytes()),
            (Some(c), Message::Binary(b)) => proxy.from_client(c, &b),
            // A BrowserChannel map without a message carries nothing for the proxy.
            (Some(_), _) => {}
        }
    }
    let reason = session.closed().await;
    if let Some(c) = &client {
        proxy.disconnect(c, &reason);
        // Unless a newer connection here holds it now.
        if let Some(cluster) = &cluster
            && !proxy.holds(&c.name)
        {
            cluster.release(&c.name).await;
        }
        if let Some(connection) = inspected {
            inspector.disconnected(&c.name, connection);
        }
    }
    log_disconnected(client.as_ref(), &reason);
}

/// A gauge raised by one for as long as this lives.
struct Gauge(&'static str, &'static str);

impl Gauge {
    fn up(name: &'static str, transport: &'static str) -> Gauge {
        browserver_runtime::metrics::gauge(name, transport, 1.0);
        Gauge(name, transport)
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        browserver_runtime::metrics::gauge(self.0, self.1, -1.0);
    }
}

/// A received message's size, for the message metrics.
fn message_len(m: &Message) -> usize {
    match m {
        Message::Text(t) => t.len(),
        Message::Binary(b) => b.len(),
        Message::Map(map) => map.iter().map(|(k, v)| k.len() + v.len()).sum(),
        _ => 0,
    }
}

/// The stream frame in a BrowserChannel JSON message `{"f": "<base64>"}`.
fn frame_of_json(text: &str) -> Option<Bytes> {
    let value: Value = serde_json::from_str(text).ok()?;
    let encoded = value.get(FRAME_KEY)?.as_str()?;
    BASE64.decode(encoded).ok().map(Bytes::from)
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
        address: client_addr(&parts.extensions),
    };
    Box::pin(async move {
        authenticator.authenticate(&client).await.map_err(|r| {
            tracing::info!(
                transport,
                address = ?client.address,
                status = r.status,
                reason = %r.reason,
                "refused a connecting client"
            );
            (r.status, r.reason)
        })
    })
}

fn form_pairs(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// The body of browserver's responses (a proxied answer is recorded as it is written:
/// [`inspector`]).
pub type Body = Either<browserver_transport_bc::ResponseBody, inspector::Recorded<ProxyBody>>;

/// A response body that is not a proxied answer.
fn unrecorded(body: ProxyBody) -> Body {
    Either::Right(inspector::Recorded::unrecorded(body))
}

fn page(status: u16, content_type: &'static str, body: String) -> http::Response<Body> {
    let mut r = http::Response::new(unrecorded(ProxyBody::from(Full::new(Bytes::from(body)))));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r
}

/// The request inspector, served at `/_browserver/inspect` (its data comes from the admin
/// API, which asks for the admin token).
const INSPECTOR_PAGE: &str = include_str!("../web/inspect.html");

/// The demo page served at `/` by the proxy: the tab becomes a server.
const DEMO_PAGE: &str = include_str!("../web/index.html");
/// The browser browserver client, served at `/browserver.js`.
const BROWSERVER_JS: &str = include_str!("../web/browserver.js");

const INDEX: &str = "<!doctype html><html><head><meta charset=\"utf-8\"><title>browserver</title></head><body><h1>browserver</h1><p>BrowserChannel at <code>/channel</code> (client script <a href=\"/channel/bcsocket.js\">/channel/bcsocket.js</a>), WebSocket at <code>/ws</code>, connected clients at <a href=\"/_browserver/clients\">/_browserver/clients</a>.</p></body></html>";

/// browserver's own routes — the proxy for `<name>.<domain>`, the BrowserChannel and
/// WebSocket endpoints, the client list `/_browserver/clients` and the browser client
/// `/browserver.js` — as one service, to put in front of an application's own routes on one
/// port. Cheap to clone; clones are the same server.
///
/// It is a `tower::Layer`: `Router::layer(browserver)` in axum, or
/// `ServiceBuilder::new().layer(browserver)`, or [`with_fallback`](Self::with_fallback). A
/// request that is none of browserver's reaches the application unchanged. The client
/// address comes from the request's `ClientAddr` extension, or from axum's `ConnectInfo`
/// with the `axum` feature.
///
/// ```no_run
/// # async fn doc() -> Result<(), Box<dyn std::error::Error>> {
/// use browserver_server::{Browserver, Config, Mode};
///
/// let browserver = Browserver::new(Config::default(), Mode::Proxy)?;
/// let app = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("my own page")))
/// });
/// let service = browserver.with_fallback(app);
/// # let _ = service;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Browserver {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Browserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browserver")
            .field("mode", &self.shared.mode)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// What every request is routed with.
struct Shared {
    bc: BrowserChannel,
    ws: WsEndpoint,
    proxy: Proxy,
    config: Config,
    mode: Mode,
    /// This server's own listening address (a `Host` naming it is local, for the admin
    /// check).
    local: Option<SocketAddr>,
    /// The proxied requests' history, per client.
    inspector: Arc<inspector::Inspector>,
    /// The other nodes, when this is one of several.
    cluster: Option<cluster::Cluster>,
}

impl Browserver {
    /// The endpoints and the proxy for `config`; its session tasks run on the current tokio
    /// runtime (call it from within one).
    pub fn new(config: Config, mode: Mode) -> Result<Browserver, StartError> {
        Browserver::build(config, mode, None, None)
    }

    fn build(
        config: Config,
        mode: Mode,
        local: Option<SocketAddr>,
        cluster: Option<cluster::Cluster>,
    ) -> Result<Browserver, StartError> {
        let pattern = HostPattern::parse(&config.host_pattern)?;
        let egress_tls = browserver_transport_http::tls::client_config(
            browserver_transport_http::tls::Roots::WebPki,
            &config.egress_ca,
        )
        .map_err(StartError::EgressCa)?;
        let proxy_options = ProxyOptions {
            request_timeout: config.request_timeout,
            egress: browserver_transport_http::EgressPolicy {
                mode: config.egress,
                allow: config.egress_allow.clone(),
                tls: Some(egress_tls),
                ..Default::default()
            },
            authorizer: config.authorizer.clone(),
            trusted_proxies: config.trusted_proxies.clone(),
            max_in_flight_body_bytes: config.max_in_flight_body_bytes,
            scheme: if config.tls.is_some() {
                "https"
            } else {
                "http"
            },
            ..ProxyOptions::default()
        };
        // One channel message carries one HTTP message: a body of up to the proxy's limit, in
        // base64 (4/3), plus its head.
        let message_limit = proxy_options.max_body_bytes / 3 * 4 + (1 << 20);
        let max_buffered_bytes = config
            .max_buffered_bytes
            .unwrap_or(message_limit + (1 << 20));
        let origins = browserver_core::OriginPolicy::allow(&config.allowed_origins);
        // One table for both transports: an address's sessions count wherever they are.
        let quota = browserver_core::SharedQuota::new(config.quota.clone());
        let proxy = Proxy::new(pattern, proxy_options);
        let (bc, bc_sessions) = BrowserChannel::new(browserver_transport_bc::Options {
            base: config.channel_base.clone(),
            keep_alive_interval: config.keepalive_interval,
            session_timeout_interval: config.session_timeout,
            attach_timeout: config.attach_timeout,
            max_body_bytes: message_limit,
            max_held_bytes: message_limit,
            max_unread_bytes: 2 * message_limit,
            max_buffered_bytes,
            max_sessions: config.max_sessions,
            quota: quota.clone(),
            origins: origins.clone(),
            cors: config
                .cors
                .clone()
                .map(browserver_transport_bc::Cors::Origin),
            admission: config.authenticator.clone().map(|a| {
                let admission: browserver_transport_bc::Admission =
                    Arc::new(move |parts| admit(a.clone(), "browserchannel", parts));
                admission
            }),
            node: cluster.as_ref().map(|c| c.tag().clone()),
            ..Default::default()
        });
        let (ws, ws_sessions) = WsEndpoint::new(browserver_transport_ws::Options {
            keep_alive_interval: config.keepalive_interval,
            session_timeout: config.session_timeout,
            max_frame_size: message_limit,
            max_message_size: message_limit,
            max_unread_bytes: 2 * message_limit,
            max_buffered_bytes,
            max_sessions: config.max_sessions,
            quota,
            origins,
            admission: config.authenticator.clone().map(|a| {
                let admission: browserver_transport_ws::Admission =
                    Arc::new(move |parts| admit(a.clone(), "websocket", parts));
                admission
            }),
            node: cluster.as_ref().map(|c| c.tag().clone()),
            ..Default::default()
        });
        let inspector = Arc::new(inspector::Inspector::new(config.inspector_requests));
        for mut sessions in [bc_sessions, ws_sessions] {
            let proxy = proxy.clone();
            let inspector = inspector.clone();
            let cluster = cluster.clone();
            tokio::spawn(async move {
                while let Some(session) = sessions.accept().await {
                    tokio::spawn(serve_session(
                        proxy.clone(),
                        inspector.clone(),
                        cluster.clone(),
                        mode,
                        session,
                    ));
                }
            });
        }
        Ok(Browserver {
            shared: Arc::new(Shared {
                bc,
                ws,
                proxy,
                config,
                mode,
                local,
                inspector,
                cluster,
            }),
        })
    }

    /// Wraps `fallback`: requests that are none of browserver's go to it.
    pub fn with_fallback<S>(&self, fallback: S) -> WithFallback<S> {
        WithFallback {
            browserver: self.clone(),
            fallback,
        }
    }

    /// Whether this is the proxy (not the echo server).
    pub(crate) fn is_proxy(&self) -> bool {
        self.shared.mode == Mode::Proxy
    }

    /// The proxy (its connected clients: [`Proxy::list`]).
    pub fn proxy(&self) -> &Proxy {
        &self.shared.proxy
    }

    /// The BrowserChannel endpoint.
    pub fn browserchannel(&self) -> &BrowserChannel {
        &self.shared.bc
    }

    /// The WebSocket endpoint.
    pub fn websocket(&self) -> &WsEndpoint {
        &self.shared.ws
    }

    /// Closes every session (reason `server shutting down`) and gives the closes up to a
    /// second to be written. Clients are not told to stop: they reconnect with backoff, to
    /// this server once it is back or to another behind the same name. Pending proxied
    /// requests end with 502/504 as their clients' sessions close.
    pub async fn shutdown(&self) {
        let (bc, ws) = (&self.shared.bc, &self.shared.ws);
        let sessions: Vec<Session> = bc
            .table()
            .sessions()
            .into_iter()
            .chain(ws.table().sessions())
            .collect();
        for session in &sessions {
            session.close_with("server shutting down");
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            for session in &sessions {
                session.closed().await;
            }
        })
        .await;
        bc.table().close_all();
        ws.table().close_all();
    }

    /// Answers `req` if it is one of browserver's, else gives it back.
    pub async fn route<B>(
        &self,
        req: http::Request<B>,
    ) -> Result<http::Response<Body>, http::Request<B>>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let shared = &*self.shared;
        let (bc, ws, proxy, config, mode) = (
            &shared.bc,
            &shared.ws,
            &shared.proxy,
            &shared.config,
            shared.mode,
        );
        // The handlers' futures are boxed: hyper keeps room for this function's future on
        // every connection, in use or not, so it is kept small (a hanging back channel's
        // connection would otherwise carry several KiB of it).
        let req = match &shared.cluster {
            Some(cluster) if req.extensions().get::<cluster::hop::Hopped>().is_none() => {
                match Box::pin(self.elsewhere(cluster, req)).await {
                    Ok(response) => return Ok(response),
                    Err(req) => req,
                }
            }
            _ => req,
        };
        if mode == Mode::Proxy
            && let Some(name) = proxy.client_of(&req)
        {
            return Ok(Box::pin(self.proxied(name, req)).await);
        }
        let path = req.uri().path();
        if path == config.ws_path {
            return Ok(Box::pin(ws.handle(req))
                .await
                .map(|b| unrecorded(ProxyBody::from(b))));
        }
        if bc.owns(path) {
            return Ok(Box::pin(bc.handle(req)).await.map(Either::Left));
        }
        match path {
            "/_browserver/clients" => Ok(self.clients(&req)),
            "/_browserver/inspect" => {
                let mut r = page(200, "text/html; charset=utf-8", INSPECTOR_PAGE.into());
                // It shows what visitors sent: nothing else may run in it or frame it.
                r.headers_mut().insert(
                    http::header::CONTENT_SECURITY_POLICY,
                    http::HeaderValue::from_static(
                        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'",
                    ),
                );
                Ok(r)
            }
            "/_browserver/api/requests" => Ok(self.requests(&req)),
            "/browserver.js" => {
                let mut r = page(200, "application/javascript", BROWSERVER_JS.into());
                if let Some(origin) = config
                    .cors
                    .as_deref()
                    .and_then(|o| http::HeaderValue::from_str(o).ok())
                {
                    r.headers_mut()
                        .insert(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
                }
                Ok(r)
            }
            _ => Err(req),
        }
    }

    /// Several nodes: `req` forwarded to the node that holds its client (a public name) or
    /// its session (a secret made there); given back if it is this node's to answer.
    async fn elsewhere<B>(
        &self,
        cluster: &cluster::Cluster,
        req: http::Request<B>,
    ) -> Result<http::Response<Body>, http::Request<B>>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let shared = &*self.shared;
        if shared.mode == Mode::Proxy
            && let Some(name) = shared.proxy.client_of(&req)
        {
            if shared.proxy.holds(&name) {
                return Err(req);
            }
            return match cluster.holder(&name).await {
                cluster::Holder::Node(node) => {
                    Ok(self.hop_to_client(cluster, &node, req, &name).await)
                }
                cluster::Holder::Unknown => {
                    let mut r = cluster::hop::refusal(
                        http::StatusCode::SERVICE_UNAVAILABLE,
                        "Service Unavailable: the cluster's registry cannot be reached",
                    );
                    r.headers_mut().insert(
                        http::header::RETRY_AFTER,
                        http::HeaderValue::from_static("1"),
                    );
                    Ok(r.map(unrecorded))
                }
                cluster::Holder::Here | cluster::Holder::Nobody => Err(req),
            };
        }
        // The secret a request acts with: a WebSocket resume token, a BrowserChannel SID, or
        // the OSID of a new session replacing an old one (created beside the old one, which
        // it ends).
        let path = req.uri().path();
        let params: &[&str] = if path == shared.config.ws_path {
            &["resume"]
        } else if shared.bc.owns(path) {
            &["SID", "OSID"]
        } else {
            return Err(req);
        };
        let query = form_pairs(req.uri().query().unwrap_or(""));
        let secret = params.iter().find_map(|p| {
            query
                .iter()
                .find(|(k, v)| k == p && !v.is_empty())
                .map(|(_, v)| v.clone())
        });
        if let Some(secret) = secret
            && let browserver_core::cluster::Route::Node { node, epoch } =
                browserver_core::cluster::route(cluster.tag(), &secret)
            && let Some(node) = cluster.node(node, Some(epoch)).await
        {
            return Ok(self.hop(cluster, &node, req, None).await);
        }
        // Ours, or made by a node that is gone: the endpoint answers (an unknown session).
        Err(req)
    }

    /// Forwards a request for client `name` to `node`, which held it a moment ago. If the
    /// name has moved since (the node answers that it does not hold it), the holder is looked
    /// up again and a request without a body is sent there; one with a body, already spent,
    /// gets a 503 to retry.
    async fn hop_to_client<B>(
        &self,
        cluster: &cluster::Cluster,
        node: &cluster::NodeInfo,
        req: http::Request<B>,
        name: &str,
    ) -> http::Response<Body>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let again = (req.body().is_end_stream()
            && !req.headers().contains_key(http::header::UPGRADE))
        .then(|| {
            let mut copy = http::Request::new(http_body_util::Empty::<Bytes>::new());
            *copy.method_mut() = req.method().clone();
            *copy.uri_mut() = req.uri().clone();
            *copy.headers_mut() = req.headers().clone();
            if let Some(address) = req.extensions().get::<ClientAddr>() {
                copy.extensions_mut().insert(*address);
            }
            copy
        });
        let response = self.hop(cluster, node, req, Some(name)).await;
        if !cluster::hop::is_not_here(&response) {
            return response;
        }
        cluster.forget_holder(name);
        if let (Some(again), cluster::Holder::Node(moved)) = (again, cluster.holder(name).await)
            && moved.id != node.id
        {
            return self.hop(cluster, &moved, again, Some(name)).await;
        }
        let mut r = cluster::hop::refusal(
            http::StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable: the client moved to another node; try again",
        );
        r.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
        r.map(unrecorded)
    }

    /// Forwards `req` to `node`; a 502 if it cannot be reached.
    async fn hop<B>(
        &self,
        cluster: &cluster::Cluster,
        node: &cluster::NodeInfo,
        req: http::Request<B>,
        name: Option<&str>,
    ) -> http::Response<Body>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match cluster.hops().forward(node, cluster.key(), req).await {
            Ok(response) => {
                browserver_runtime::metrics::hop(true);
                response.map(unrecorded)
            }
            Err(e) => {
                browserver_runtime::metrics::hop(false);
                tracing::warn!(node = %node.id, error = %e, "cannot forward to the node holding it");
                cluster.forget_node(&node.id);
                if let Some(name) = name {
                    cluster.forget_holder(name);
                }
                cluster::hop::refusal(
                    http::StatusCode::BAD_GATEWAY,
                    "Bad Gateway: the node holding this client cannot be reached",
                )
                .map(unrecorded)
            }
        }
    }

    /// Whether `req`'s body passes through without being held here: a client that speaks
    /// streams takes it as it arrives (its stream's window bounds it), and a client on
    /// another node gets it over the hop (HTTP/2's window bounds it). Other bodies count
    /// against the read budget.
    fn passes_body_through<B>(&self, req: &http::Request<B>) -> bool {
        let shared = &*self.shared;
        if shared.mode != Mode::Proxy {
            return false;
        }
        match shared.proxy.client_of(req) {
            Some(name) if shared.proxy.holds(&name) => shared.proxy.streams_to(req),
            // Forwarded to the node that holds it, or refused unread.
            Some(_) => shared.cluster.is_some(),
            None => false,
        }
    }

    /// A request for client `name`: proxied, and recorded (log line, metrics, inspector) once
    /// its answer is written.
    async fn proxied<B>(&self, name: String, req: http::Request<B>) -> http::Response<Body>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let bytes_in = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (parts, body) = req.into_parts();
        let mut record = inspector::Record::start(
            self.shared.inspector.clone(),
            name,
            &parts,
            bytes_in.clone(),
        );
        let req =
            http::Request::from_parts(parts, inspector::Counted::new(Box::pin(body), bytes_in));
        let response = match self.shared.proxy.handle(req).await {
            Ok(response) => response,
            // Not reached: `client_of` said the proxy takes it.
            Err(_) => return page(500, "text/plain", "Internal Server Error".into()),
        };
        let (parts, body) = response.into_parts();
        record.answered(&parts);
        http::Response::from_parts(parts, Either::Right(inspector::Recorded::new(body, record)))
    }

    /// Whether `req` may read the admin surface; the refusal to send if not.
    fn admin_refusal<B>(&self, req: &http::Request<B>) -> Option<http::Response<Body>> {
        let shared = &*self.shared;
        let peer = client_addr(req.extensions());
        let trusted = peer.is_some_and(|p| shared.proxy.is_trusted_proxy(p.ip()));
        let (status, why) = admin::authorize(
            req.headers(),
            peer,
            trusted,
            shared.local,
            shared.config.admin_token.as_deref(),
        )
        .err()?;
        let mut r = page(status, "text/plain", why.into());
        if status == 401 {
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        Some(r)
    }

    /// The inspector's API: `?client=NAME&since=SEQ` → that client's last requests after
    /// `since`, as JSON (admin only).
    fn requests<B>(&self, req: &http::Request<B>) -> http::Response<Body> {
        if let Some(refusal) = self.admin_refusal(req) {
            return refusal;
        }
        let query = form_pairs(req.uri().query().unwrap_or(""));
        let param = |k: &str| {
            query
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        let Some(client) = param("client") else {
            return page(400, "text/plain", "Bad Request: ?client=NAME".into());
        };
        let since = param("since").and_then(|s| s.parse().ok()).unwrap_or(0);
        let entries = self.shared.inspector.requests(client, since);
        let mut r = page(
            200,
            "application/json",
            serde_json::to_string(&entries).unwrap_or_default(),
        );
        r.headers_mut().insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        r
    }

    /// The connected clients, for those the admin check admits.
    fn clients<B>(&self, req: &http::Request<B>) -> http::Response<Body> {
        if let Some(refusal) = self.admin_refusal(req) {
            return refusal;
        }
        let shared = &*self.shared;
        let body = serde_json::to_string_pretty(&shared.proxy.list()).unwrap_or_default();
        page(200, "application/json", body)
    }
}

impl<S> tower::Layer<S> for Browserver {
    type Service = WithFallback<S>;

    fn layer(&self, inner: S) -> WithFallback<S> {
        self.with_fallback(inner)
    }
}

/// [`Browserver`] in front of an application's service.
#[derive(Clone, Debug)]
pub struct WithFallback<S> {
    browserver: Browserver,
    fallback: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for WithFallback<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<Either<Body, RB>>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.fallback.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let browserver = self.browserver.clone();
        // The ready fallback goes with this call; a clone takes its place (tower's rule for
        // services that are driven after `call` returns).
        let clone = self.fallback.clone();
        let mut fallback = std::mem::replace(&mut self.fallback, clone);
        Box::pin(async move {
            match browserver.route(req).await {
                Ok(response) => Ok(response.map(Either::Left)),
                Err(req) => Ok(fallback.call(req).await?.map(Either::Right)),
            }
        })
    }
}

/// Runs the server on `listener` until `shutdown` resolves; then every session is closed.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: Config,
    mode: Mode,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), StartError> {
    let local = listener.local_addr().ok();
    let limits = config.limits.clone();
    let read_budget = browserver_transport_http::Budget::new(config.max_in_flight_body_bytes);
    let acceptor = config.tls.as_ref().map(|c| c.acceptor()).transpose()?;
    let cluster = match config.cluster.clone() {
        Some(c) => Some(cluster::Cluster::join(c).await?),
        None => None,
    };
    let request_timeout = config.request_timeout;
    let browserver = Browserver::build(config, mode, local, cluster.clone())?;
    if let Some(cluster) = &cluster {
        cluster.hops().set_head_timeout(request_timeout);
        cluster.start(browserver.clone());
    }
    let max_connections = match conn::file_limit() {
        Some(files) => {
            let ceiling = usize::try_from(files.saturating_sub(256)).unwrap_or(usize::MAX);
            if limits.max_connections > ceiling {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    files,
                    "the file limit lowers max_connections to {ceiling}"
                );
            }
            limits.max_connections.min(ceiling).max(1)
        }
        None => limits.max_connections,
    };
    let connections = conn::Connections::new(max_connections, limits.max_connections_per_address);
    let server = Arc::new(Server {
        browserver: browserver.clone(),
        limits,
        read_budget,
    });
    let serve = async {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors or similar: keep accepting once some close.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let slot = match connections.try_open(peer.ip()) {
                Ok(slot) => slot,
                Err(why) => {
                    tracing::debug!(%peer, why, "connection refused");
                    drop(stream);
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let server = server.clone();
            let activity = conn::Activity::new();
            let io = conn::Tracked::new(stream, activity.clone(), slot);
            match &acceptor {
                None => {
                    tokio::spawn(serve_connection(io, peer, activity, server));
                }
                Some(acceptor) => {
                    let handshake = acceptor.accept(io);
                    let timeout = server.limits.header_read_timeout;
                    tokio::spawn(async move {
                        // The handshake counts as part of the request head: same deadline.
                        match tokio::time::timeout(timeout, handshake).await {
                            Ok(Ok(tls)) => serve_connection(tls, peer, activity, server).await,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                browserver_runtime::metrics::limit_hit(
                                    browserver_runtime::metrics::Limit::HeaderReadTimeout,
                                );
                            }
                        }
                    });
                }
            }
        }
    };
    tokio::select! {
        _ = serve => {}
        _ = shutdown => {}
    }
    // Stop accepting (the accept loop is gone), then close every session; clients reconnect
    // with backoff (to this server once it is back).
    tracing::info!("shutting down: closing every session");
    browserver.shutdown().await;
    if let Some(cluster) = &cluster {
        cluster.leave().await;
    }
    Ok(())
}

/// The binary's server: browserver's routes, then its own pages.
struct Server {
    browserver: Browserver,
    limits: Limits,
    /// Request-body bytes being read at once, over all connections.
    read_budget: browserver_transport_http::Budget,
}

/// Registers a session with the proxy (proxy mode): `Some(None)` in echo mode, `None` if
/// it cannot be registered.
fn register(
    proxy: &Proxy,
    mode: Mode,
    name: Option<&str>,
    channel: Arc<dyn Channel>,
    wire: Wire,
    transport: &str,
) -> Option<Option<Connected>> {
    if mode == Mode::Echo {
        return Some(None);
    }
    match proxy.connect(name, channel, wire, transport) {
        Ok(c) => Some(Some(c)),
        Err(e) => {
            tracing::warn!(error = %e, "cannot register a client");
            None
        }
    }
}

fn log_connected(client: Option<&Connected>, transport: &str, address: Option<SocketAddr>) {
    match client {
        Some(c) => tracing::info!(client = %c.name, transport, address = ?address, "connected"),
        None => tracing::debug!(transport, address = ?address, "connected"),
    }
}

fn log_disconnected(client: Option<&Connected>, reason: &browserver_core::CloseReason) {
    match client {
        Some(c) => tracing::info!(client = %c.name, %reason, "disconnected"),
        None => tracing::debug!(%reason, "disconnected"),
    }
}

/// Serves one accepted connection under the limits: header-read timeout, idle timeout, body
/// minimum rate; its slot is held by the socket (upgraded connections included).
async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    activity: Arc<conn::Activity>,
    server: Arc<Server>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = server.limits.clone();
    let io = TokioIo::new(io);
    let requests = activity.clone();
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let server = server.clone();
        let in_flight = requests.request();
        async move {
            let limits = &server.limits;
            // A body streamed to a client is not held here (its stream's window bounds it):
            // only bodies read whole count against the read budget.
            let streamed = server.browserver.passes_body_through(&req);
            let budget = (!streamed).then_some(&server.read_budget);
            let mut req = req.map(|body| {
                conn::RequestBody::new(body, limits.body_min_rate, limits.body_grace, budget)
            });
            req.extensions_mut().insert(ClientAddr(peer));
            let response = match server.browserver.route(req).await {
                Ok(response) => response,
                Err(req) => own_page(server.browserver.shared.mode, req.uri().path()),
            };
            Ok::<_, Infallible>(response.map(|body| conn::Guarded::new(body, in_flight)))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let connection = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(connection);
    let check = (limits.idle_timeout / 4).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            r = connection.as_mut() => {
                if r.is_err_and(|e| e.is_timeout()) {
                    browserver_runtime::metrics::limit_hit(
                        browserver_runtime::metrics::Limit::HeaderReadTimeout,
                    );
                }
                return;
            }
            _ = tokio::time::sleep(check) => {
                if activity.is_idle(limits.idle_timeout) {
                    tracing::debug!(%peer, "closing an idle connection");
                    browserver_runtime::metrics::limit_hit(browserver_runtime::metrics::Limit::IdleTimeout);
                    return;
                }
            }
        }
    }
}

/// The binary's own pages: the demo page (proxy) or an index (echo) at `/`; 404 elsewhere.
fn own_page(mode: Mode, path: &str) -> http::Response<Body> {
    match path {
        "/" if mode == Mode::Proxy => page(200, "text/html; charset=utf-8", DEMO_PAGE.into()),
        "/" => page(200, "text/html; charset=utf-8", INDEX.into()),
        _ => page(404, "text/plain", "Not found".into()),
    }
}
