//! The WebSocket endpoint: upgrade handling, session creation and resumption, and the
//! connection tasks that move frames between a socket and its session's task.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use browserver_runtime::http::{QuotaSlot, admits_origin, owned_headers, quota_refusal};
use browserver_runtime::{Announce, Info, Link, Session, SessionTable, Sessions, Transport};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::codec::SUBPROTOCOL;
use crate::io::{Command, ConnIo, Out};
use crate::protocol::{self, ConnId, Mode, SessionMachine};

pub use browserver_runtime::http::{Admission, AdmissionFuture, ConnectHook};

/// Options of a [`WsEndpoint`].
#[derive(Clone)]
pub struct Options {
    /// WebSocket ping on a connection idle this long. 20 s.
    pub keep_alive_interval: Duration,
    /// How long a session-mode session waits for its client to resume after the connection
    /// dropped. 30 s.
    pub session_timeout: Duration,
    /// A connection from which nothing (not even a pong) arrived this long is dropped. 60 s.
    pub idle_timeout: Duration,
    /// Largest frame accepted. 1 MiB.
    pub max_frame_size: usize,
    /// Largest message accepted. 4 MiB.
    pub max_message_size: usize,
    /// Bytes read from the socket at a time, per connection. 8 KiB: tungstenite's default
    /// (128 KiB) reads large messages a little faster but costs that much memory per
    /// connection, idle or not.
    pub read_buffer_size: usize,
    /// Unacknowledged outbound bytes per session; past it `send` fails with `BufferFull`. 4 MiB.
    pub max_buffered_bytes: usize,
    /// How far ahead of a missing message others are held (session mode). 4 096.
    pub reorder_window: u64,
    /// Session mode: how long the acknowledgement of a client's messages may wait for more of
    /// them, or for a frame of ours to travel with. 10 ms: fewer frames under load; a
    /// client's `Ack`s resolve up to that much later. `Duration::ZERO` acknowledges each
    /// batch at once.
    pub ack_delay: Duration,
    /// Most live sessions; more upgrades are refused with 503. 100 000.
    pub max_sessions: usize,
    /// Bytes of messages delivered to the application and not yet taken by
    /// [`Session::recv`]; past it the session closes (`Protocol("the application is not
    /// reading")`), so a client cannot make the server hold more for an application that does
    /// not read. 16 MiB (keep it several times `max_message_size`: a burst that arrives before
    /// the application runs counts whole).
    pub max_unread_bytes: usize,
    /// A write to the socket (a flush of what is queued) that takes longer than this drops
    /// the connection: a client that stops reading holds its memory only this long. 30 s.
    pub write_timeout: Duration,
    /// Live sessions and session creations per client address (IPv6 by `/64`); beyond them
    /// an upgrade → 429 with `Retry-After`. 256 live, 120 per minute (bursts of 60). Needs the
    /// client address ([`ClientAddr`](crate::ClientAddr)). Give the BrowserChannel endpoint a clone to count both
    /// transports together.
    pub quota: browserver_core::SharedQuota,
    /// Web origins admitted besides the server's own and requests without `Origin` (checked
    /// on every upgrade, resumptions included); others → 403. None by default.
    pub origins: browserver_core::OriginPolicy,
    /// Runs when a session is created.
    pub connect_hook: Option<ConnectHook>,
    /// Admits (or refuses) a client before its session exists. None admits all.
    pub admission: Option<Admission>,
    /// This node's tag, when it is one of several (`browserver_core::cluster`): every
    /// session id then names the node that holds it, so any node can route a request for
    /// it. None by default (random ids).
    pub node: Option<browserver_core::cluster::NodeTag>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            keep_alive_interval: Duration::from_secs(20),
            session_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_frame_size: 1 << 20,
            max_message_size: 4 << 20,
            read_buffer_size: 8 << 10,
            max_buffered_bytes: 4 << 20,
            reorder_window: 4096,
            ack_delay: Duration::from_millis(10),
            max_sessions: 100_000,
            max_unread_bytes: 16 << 20,
            write_timeout: Duration::from_secs(30),
            quota: browserver_core::SharedQuota::default(),
            origins: browserver_core::OriginPolicy::default(),
            connect_hook: None,
            admission: None,
            node: None,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("keep_alive_interval", &self.keep_alive_interval)
            .field("session_timeout", &self.session_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_message_size", &self.max_message_size)
            .field("write_timeout", &self.write_timeout)
            .field("quota", &self.quota)
            .field("origins", &self.origins)
            .finish_non_exhaustive()
    }
}

/// What the endpoint keeps per live session.
#[derive(Clone)]
struct Entry {
    link: Link<Command>,
    /// `<id>.<secret>`: what a session-mode client presents to resume (only in its hello).
    resume_token: String,
    mode: Mode,
}

impl browserver_runtime::Entry for Entry {
    fn session(&self) -> &Session {
        &self.link.session
    }
}

struct Inner {
    options: Options,
    table: SessionTable<Entry>,
    accept: Announce,
    next_conn: AtomicU64,
}

/// A WebSocket endpoint. Cheap to clone.
///
/// As a `tower::Service` every request it is given is treated as an upgrade request: mount it
/// at the path you want (`route_service("/ws", ws)` or `nest_service("/ws", ws)` in axum;
/// `/ws` in the `browserver` server). As a layer in front of an application,
/// [`at`](Self::at) names its path: `Router::layer(ws.at("/ws"))`, or
/// [`with_fallback`](Self::with_fallback).
#[derive(Clone)]
pub struct WsEndpoint {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WsEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsEndpoint")
            .field("sessions", &self.inner.table.len())
            .finish()
    }
}

/// An upgrade refused: its status and a short reason (the response body).
pub(crate) struct Refusal(StatusCode, std::borrow::Cow<'static, str>);

impl Refusal {
    fn response(self) -> Response<Full<Bytes>> {
        let mut r = Response::new(Full::new(Bytes::from(self.1.into_owned())));
        *r.status_mut() = self.0;
        let h = r.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        if self.0 == StatusCode::SERVICE_UNAVAILABLE || self.0 == StatusCode::TOO_MANY_REQUESTS {
            h.insert(http::header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        r
    }
}

fn bad_request(reason: &'static str) -> Response<Full<Bytes>> {
    Refusal(StatusCode::BAD_REQUEST, reason.into()).response()
}

fn header_has_token(headers: &HeaderMap, name: http::header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Why an upgrade request is refused (answered 400 with this text).
fn validate(parts: &http::request::Parts) -> Result<&HeaderValue, &'static str> {
    if parts.method != Method::GET {
        return Err("WebSocket upgrade requires GET");
    }
    if !header_has_token(&parts.headers, UPGRADE, "websocket") {
        return Err("missing Upgrade: websocket");
    }
    if !header_has_token(&parts.headers, CONNECTION, "upgrade") {
        return Err("missing Connection: upgrade");
    }
    if parts
        .headers
        .get(SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v != "13")
    {
        return Err("Sec-WebSocket-Version must be 13");
    }
    parts
        .headers
        .get(SEC_WEBSOCKET_KEY)
        .ok_or("missing Sec-WebSocket-Key")
}

impl WsEndpoint {
    /// An endpoint and the stream of sessions it creates.
    pub fn new(options: Options) -> (WsEndpoint, Sessions) {
        let (accept, sessions) = Sessions::new();
        let inner = Inner {
            table: {
                let table = SessionTable::new(options.max_sessions, options.quota.clone());
                if let Some(node) = &options.node {
                    table.set_ids(node.clone());
                }
                table
            },
            options,
            accept,
            next_conn: AtomicU64::new(0),
        };
        (
            WsEndpoint {
                inner: Arc::new(inner),
            },
            sessions,
        )
    }

    /// A `tower::Layer` that answers upgrades at `path` and passes every other request to the
    /// service it wraps.
    pub fn at(&self, path: impl Into<String>) -> WsLayer {
        WsLayer {
            endpoint: self.clone(),
            path: path.into(),
        }
    }

    /// Wraps `fallback`: requests for `path` are this endpoint's upgrades, all others go to
    /// `fallback`.
    pub fn with_fallback<S>(&self, path: impl Into<String>, fallback: S) -> WithFallback<S> {
        WithFallback {
            endpoint: self.clone(),
            path: path.into(),
            fallback,
        }
    }

    /// The live sessions (look one up by id, list, count, close all).
    pub fn table(&self) -> &SessionTable<impl browserver_runtime::Entry + use<>> {
        &self.inner.table
    }

    #[cfg(feature = "warp")]
    pub(crate) fn options(&self) -> &Options {
        &self.inner.options
    }

    #[cfg(feature = "warp")]
    pub(crate) async fn target_for_warp(
        &self,
        parts: &http::request::Parts,
        session_mode: bool,
    ) -> Result<Target, Response<Full<Bytes>>> {
        self.target(parts, session_mode)
            .await
            .map_err(Refusal::response)
    }

    fn ws_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.inner.options.read_buffer_size)
            .max_frame_size(Some(self.inner.options.max_frame_size))
            .max_message_size(Some(self.inner.options.max_message_size))
    }

    /// Answers an upgrade request: `101 Switching Protocols` (and the connection is served in
    /// the background once hyper hands it over), or `400` with the reason.
    pub async fn handle<B>(&self, mut req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Send + 'static,
    {
        let on_upgrade = hyper::upgrade::on(&mut req);
        let (parts, _) = req.into_parts();
        let key = match validate(&parts) {
            Ok(key) => key.clone(),
            Err(reason) => return bad_request(reason),
        };
        let session_mode = header_has_token(&parts.headers, SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL);
        let target = match self.target(&parts, session_mode).await {
            Ok(t) => t,
            Err(refusal) => return refusal.response(),
        };
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = response.headers_mut();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
            h.insert(SEC_WEBSOCKET_ACCEPT, v);
        }
        if session_mode {
            h.insert(
                SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(SUBPROTOCOL),
            );
        }
        let endpoint = self.clone();
        let config = self.ws_config();
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let ws = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        Some(config),
                    )
                    .await;
                    endpoint.run_connection(ws, target);
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
        response
    }

    /// Which session a new connection belongs to: a resumed one (session mode, `resume=TOKEN`
    /// presenting a live session's resume token, `ack=N`), or a new one. A stale or wrong
    /// `resume` gets a new session and the client learns it from the hello (`resumed: false`).
    /// The origin is checked on every upgrade.
    async fn target(
        &self,
        parts: &http::request::Parts,
        session_mode: bool,
    ) -> Result<Target, Refusal> {
        if !admits_origin(&self.inner.options.origins, parts) {
            return Err(Refusal(StatusCode::FORBIDDEN, "origin not allowed".into()));
        }
        let query = parse_query(parts.uri.query());
        if session_mode
            && let Some(token) = query.iter().find(|(k, _)| k == "resume").map(|(_, v)| v)
            && let Some(link) = self.resumable(token)
        {
            let ack = query
                .iter()
                .find(|(k, _)| k == "ack")
                .and_then(|(_, v)| v.parse().ok());
            return Ok(Target { link, ack });
        }
        let slot = QuotaSlot::take(&self.inner.options.quota, parts).map_err(|e| {
            let (status, _) = quota_refusal(&e);
            Refusal(
                StatusCode::from_u16(status).unwrap_or(StatusCode::TOO_MANY_REQUESTS),
                e.to_string().into(),
            )
        })?;
        let name = match &self.inner.options.admission {
            Some(admit) => match admit(parts).await {
                Ok(name) => name,
                Err((status, reason)) => {
                    return Err(Refusal(
                        StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN),
                        reason.into(),
                    ));
                }
            },
            None => None,
        };
        if let Some(name) = &name
            && !browserver_core::is_valid_id(name)
        {
            tracing::warn!(name, "admission chose an invalid name");
            return Err(Refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot create session".into(),
            ));
        }
        let mode = if session_mode {
            Mode::Session
        } else {
            Mode::Plain
        };
        let link = self.create(parts, query, mode, name, slot)?;
        Ok(Target { link, ack: None })
    }

    /// The live session-mode session whose resume token is `token` (`<id>.<secret>`), the
    /// secret compared in constant time.
    fn resumable(&self, token: &str) -> Option<Link<Command>> {
        let (id, _) = token.split_once('.')?;
        let entry = self.inner.table.get(id)?;
        (entry.mode == Mode::Session && browserver_core::secret::equal(token, &entry.resume_token))
            .then_some(entry.link)
    }

    fn create(
        &self,
        parts: &http::request::Parts,
        query: Vec<(String, String)>,
        mode: Mode,
        name: Option<String>,
        slot: QuotaSlot,
    ) -> Result<Link<Command>, Refusal> {
        let cannot = || {
            Refusal(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot create session".into(),
            )
        };
        let secret = browserver_core::secret::generate().map_err(|e| {
            tracing::error!(error = %e, "no entropy for a resume token");
            cannot()
        })?;
        let options = &self.inner.options;
        let limits = browserver_runtime::Limits {
            max_queued_bytes: options.max_buffered_bytes,
            max_unread_bytes: options.max_unread_bytes,
        };
        let mut driver = None;
        let make = |id: &str| {
            let info = Info {
                id: id.to_string(),
                name,
                transport: match mode {
                    Mode::Plain => Transport::WebSocket,
                    Mode::Session => Transport::WebSocketSession,
                },
                address: slot.address(),
                query,
                headers: owned_headers(&parts.headers),
                app_version: None,
            };
            let (link, parts) = browserver_runtime::driver::session(info, limits);
            driver = Some(parts);
            Entry {
                link,
                resume_token: format!("{id}.{secret}"),
                mode,
            }
        };
        let created = self.inner.table.create(make);
        let (id, entry) = match created {
            Ok(created) => created,
            Err(browserver_core::RegistryError::Full { .. }) => {
                browserver_runtime::metrics::limit_hit(
                    browserver_runtime::metrics::Limit::MaxSessions,
                );
                return Err(Refusal(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many sessions".into(),
                ));
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot create a session");
                return Err(cannot());
            }
        };
        let Some(driver) = driver else {
            return Err(cannot());
        };
        // Registered: the session gives its place back when it closes.
        slot.keep();
        let machine = SessionMachine::new(
            protocol::Config {
                id: id.clone(),
                resume_token: entry.resume_token.clone(),
                mode,
                keep_alive_interval: options.keep_alive_interval,
                session_timeout: options.session_timeout,
                idle_timeout: options.idle_timeout,
                max_buffered_bytes: options.max_buffered_bytes,
                reorder_window: options.reorder_window,
                ack_delay: options.ack_delay,
            },
            tokio::time::Instant::now().into_std(),
        );
        let inner = Arc::downgrade(&self.inner);
        let io = ConnIo::new(Box::new(move || {
            if let Some(inner) = inner.upgrade() {
                inner.table.forget(&id);
            }
        }));
        driver.spawn(machine, io);
        let session = entry.link.session.clone();
        if let Some(hook) = &options.connect_hook {
            hook(&session);
        }
        self.inner.accept.announce(session);
        Ok(entry.link)
    }

    /// Starts a connection's reader and writer tasks and hands it to its session.
    pub(crate) fn run_connection<S, E>(&self, ws: S, target: Target)
    where
        S: futures_util::Stream<Item = Result<WsMessage, E>>
            + futures_util::Sink<WsMessage>
            + Send
            + 'static,
        E: std::fmt::Display + Send,
    {
        let conn = ConnId(self.inner.next_conn.fetch_add(1, Ordering::Relaxed));
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Out>();
        let actor = target.link;
        let _ = actor.send(Command::Attach {
            conn,
            tx: out_tx,
            ack: target.ack,
        });
        let (mut sink, mut stream) = ws.split();
        let write_timeout = self.inner.options.write_timeout;
        // Bytes read but not yet handled by the session's task: at most one largest message
        // (the reader waits for room, which holds the socket).
        let allowance = self
            .inner
            .options
            .max_message_size
            .clamp(1, u32::MAX as usize);
        let unhandled = Arc::new(tokio::sync::Semaphore::new(allowance));
        let writer_actor = actor.clone();
        // Dropped when the writer ends, which ends the reader too: the socket closes.
        let (writer_alive, mut writer_gone) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _alive = writer_alive;
            // Write everything queued, then flush once; each step within the write timeout.
            let written = async {
                while let Some(first) = out_rx.recv().await {
                    let mut next = Some(first);
                    let mut upto = None;
                    let mut closing = false;
                    while let Some(out) = next.take() {
                        match out {
                            Out::Written(seq) => upto = Some(seq),
                            Out::Frame(m) => {
                                closing = matches!(m, WsMessage::Close(_));
                                match tokio::time::timeout(write_timeout, sink.feed(m)).await {
                                    Ok(Ok(())) => {}
                                    _ => return false,
                                }
                            }
                        }
                        if !closing {
                            next = out_rx.try_recv().ok();
                        }
                    }
                    match tokio::time::timeout(write_timeout, sink.flush()).await {
                        Ok(Ok(())) => {}
                        _ => return false,
                    }
                    if let Some(upto) = upto {
                        let _ = writer_actor.send(Command::Written { conn, upto });
                    }
                    if closing {
                        break;
                    }
                }
                true
            };
            if written.await {
                let _ = tokio::time::timeout(write_timeout, sink.close()).await;
            } else {
                tracing::debug!("websocket write failed or timed out; dropping the connection");
            }
        });
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    frame = stream.next() => match frame {
                        Some(Ok(message)) => {
                            let closing = matches!(message, WsMessage::Close(_));
                            let weight = u32::try_from(message.len().clamp(1, allowance))
                                .unwrap_or(u32::MAX);
                            let Ok(permit) = unhandled.clone().acquire_many_owned(weight).await
                            else {
                                return;
                            };
                            let frame = Command::Frame {
                                conn,
                                message,
                                permit,
                            };
                            if actor.send(frame).is_err() || closing {
                                return;
                            }
                        }
                        Some(Err(e)) => {
                            tracing::debug!(error = %e, "websocket read failed");
                            break;
                        }
                        None => break,
                    },
                    _ = &mut writer_gone => break,
                }
            }
            let _ = actor.send(Command::Gone { conn });
        });
    }
}

pub(crate) struct Target {
    link: Link<Command>,
    ack: Option<u64>,
}

fn parse_query(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

impl<B> tower::Service<Request<B>> for WsEndpoint
where
    B: Send + 'static,
{
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let endpoint = self.clone();
        Box::pin(async move { Ok(endpoint.handle(req).await) })
    }
}

/// The endpoint at a path, as a `tower::Layer` ([`WsEndpoint::at`]).
#[derive(Clone, Debug)]
pub struct WsLayer {
    endpoint: WsEndpoint,
    path: String,
}

impl<S> tower::Layer<S> for WsLayer {
    type Service = WithFallback<S>;

    fn layer(&self, inner: S) -> WithFallback<S> {
        self.endpoint.with_fallback(self.path.clone(), inner)
    }
}

/// A [`WsEndpoint`] in front of another service: upgrades at its path are the endpoint's,
/// everything else the fallback's.
#[derive(Clone, Debug)]
pub struct WithFallback<S> {
    endpoint: WsEndpoint,
    path: String,
    fallback: S,
}

impl<S, B, RB> tower::Service<Request<B>> for WithFallback<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<http_body_util::Either<Full<Bytes>, RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.fallback.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if req.uri().path() == self.path {
            let endpoint = self.endpoint.clone();
            Box::pin(
                async move { Ok(endpoint.handle(req).await.map(http_body_util::Either::Left)) },
            )
        } else {
            let future = self.fallback.call(req);
            Box::pin(async move { Ok(future.await?.map(http_body_util::Either::Right)) })
        }
    }
}
