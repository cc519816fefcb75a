//! The HTTP side: routing under `base`, the stateless test channel, and `bind` requests handed
//! to their session's task.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use browserver_runtime::http::{QuotaSlot, admits_origin, owned_headers, quota_refusal};
use browserver_runtime::{Announce, Entry, Info, Link, SessionTable, Sessions, Transport};
use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_REQUEST_HEADERS, CONTENT_TYPE, ETAG, RETRY_AFTER,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use rand::RngExt;
use tokio::sync::oneshot;

use crate::body::ResponseBody;
use crate::codec::{self, CodecError, Query, leading_u64, param, parse_query};
use crate::io::{Command, HttpIo};
use crate::options::{Cors, Options, normalize_base};
use crate::protocol::{self, ServerMachine};
use crate::response::{error_response, ok_response, plain_response, standard_headers};

/// A BrowserChannel endpoint. Cheap to clone; clones share sessions.
///
/// Mount it any of these ways:
///
/// - as a `tower::Layer` in front of an application (`Router::layer` in axum,
///   `ServiceBuilder::layer`): requests under `base` are BrowserChannel's, all others reach
///   the application — or, the same, [`with_fallback`](Self::with_fallback);
/// - as a `tower::Service` on its own, at `base` or nested under any prefix (axum's
///   `nest_service("/channel", bc)`, which strips the prefix: the service answers
///   `…/test`, `…/bind` and `…/bcsocket.js` relative to where it is mounted); anything else
///   gets a plain 404;
/// - by calling [`handle`](Self::handle) from your own server, or with
///   [`filter`](Self::filter) in warp (feature `warp`).
#[derive(Clone)]
pub struct BrowserChannel {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for BrowserChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserChannel")
            .field("base", &self.inner.base)
            .field("sessions", &self.inner.table.len())
            .finish()
    }
}

struct Inner {
    options: Options,
    base: String,
    headers: HeaderMap,
    html_headers: HeaderMap,
    table: SessionTable<Link<Command>>,
    accept: Announce,
}

impl BrowserChannel {
    /// An endpoint with these options, and the stream of sessions it creates.
    pub fn new(options: Options) -> (BrowserChannel, Sessions) {
        let base = normalize_base(&options.base);
        let mut headers = standard_headers("text/plain");
        for (name, value) in &options.headers {
            headers.insert(name.clone(), value.clone());
        }
        if let Some(Cors::Origin(origin)) = &options.cors
            && let Ok(v) = HeaderValue::from_str(origin)
        {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, v);
        }
        if options.cors_allow_credentials {
            headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
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
            base,
            headers,
            html_headers: standard_headers("text/html"),
            accept,
        };
        (
            BrowserChannel {
                inner: Arc::new(inner),
            },
            sessions,
        )
    }

    /// The normalised base path.
    pub fn base(&self) -> &str {
        &self.inner.base
    }

    /// Whether a request for `path` is BrowserChannel's (it starts with `base/`).
    pub fn owns(&self, path: &str) -> bool {
        path.strip_prefix(self.inner.base.as_str())
            .is_some_and(|rest| rest.starts_with('/'))
    }

    /// The live sessions (look one up by id, list, count, close all — as
    /// node-browserchannel's `close()` does).
    pub fn table(&self) -> &SessionTable<impl Entry + use<>> {
        &self.inner.table
    }

    fn link(&self, id: &str) -> Option<Link<Command>> {
        self.inner.table.get(id)
    }

    /// Wraps `fallback`: requests under `base` are BrowserChannel's, all others go to
    /// `fallback`.
    pub fn with_fallback<S>(&self, fallback: S) -> WithFallback<S> {
        WithFallback {
            bc: self.clone(),
            fallback,
        }
    }

    fn response_headers(&self, parts: &http::request::Parts) -> HeaderMap {
        let mut headers = self.inner.headers.clone();
        if let Some(Cors::Dynamic(f)) = &self.inner.options.cors
            && let Some(v) = f(parts).and_then(|o| HeaderValue::from_str(&o).ok())
        {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, v);
        }
        headers
    }

    /// Answers one request. Requests outside `base` get a plain 404.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<ResponseBody>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.answer(req, false).await
    }

    /// Answers one request; `nested`: a path outside `base` is taken as relative to where
    /// the service is mounted (a router stripped the prefix).
    async fn answer<B>(&self, req: Request<B>, nested: bool) -> Response<ResponseBody>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = req.into_parts();
        let headers = self.response_headers(&parts);
        let path = parts.uri.path();
        let under_base = path
            .strip_prefix(self.inner.base.as_str())
            .and_then(|r| r.strip_prefix('/'));
        let Some(rest) = under_base.or_else(|| path.strip_prefix('/').filter(|_| nested)) else {
            return plain_response(StatusCode::NOT_FOUND, "Not found", &headers);
        };
        if parts.method == Method::OPTIONS {
            return self.preflight(&parts, headers);
        }
        let query = parse_query(parts.uri.query());
        match rest {
            "bcsocket.js" => self.client_script(&parts.method, &headers),
            "test" => self.test(&parts.method, &query, headers),
            "bind" => self.bind(parts, query, body, headers).await,
            _ => plain_response(StatusCode::NOT_FOUND, "Not found", &headers),
        }
    }

    fn preflight(
        &self,
        parts: &http::request::Parts,
        mut headers: HeaderMap,
    ) -> Response<ResponseBody> {
        headers.insert(
            ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        if let Some(requested) = parts.headers.get(ACCESS_CONTROL_REQUEST_HEADERS) {
            headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, requested.clone());
        }
        let mut r = ok_response(&headers, ResponseBody::empty());
        *r.status_mut() = StatusCode::NO_CONTENT;
        r
    }

    /// The browser client, with the endpoint's CORS headers (so that a page on another
    /// origin allowed by `cors` can load it as a module).
    fn client_script(&self, method: &Method, headers: &HeaderMap) -> Response<ResponseBody> {
        let script = self.inner.options.client_script;
        let body = if method == Method::HEAD {
            ResponseBody::empty()
        } else {
            ResponseBody::full(Bytes::from_static(script.as_bytes()))
        };
        let mut r = Response::new(body);
        let h = r.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/javascript"),
        );
        h.insert(
            http::header::CONTENT_LENGTH,
            HeaderValue::from(script.len()),
        );
        for name in [
            ACCESS_CONTROL_ALLOW_ORIGIN,
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
        ] {
            if let Some(v) = headers.get(&name) {
                h.insert(name, v.clone());
            }
        }
        let etag = format!("\"{}-{:x}\"", script.len(), fnv1a(script.as_bytes()));
        if let Ok(v) = HeaderValue::from_str(&etag) {
            h.insert(ETAG, v);
        }
        r
    }

    fn host_prefix(&self) -> Option<String> {
        let prefixes = &self.inner.options.host_prefixes;
        if prefixes.is_empty() {
            return None;
        }
        let i = rand::rng().random_range(0..prefixes.len());
        Some(prefixes[i].clone())
    }

    fn test(&self, method: &Method, query: &Query, headers: HeaderMap) -> Response<ResponseBody> {
        if param(query, "VER") != Some("8") {
            return error_response(400, "Version 8 required", &headers);
        }
        if param(query, "MODE") == Some("init") && method == Method::GET {
            let answer = codec::test_init_answer(self.host_prefix().as_deref());
            let mut r = ok_response(&headers, ResponseBody::full(answer));
            r.headers_mut().insert(
                HeaderName::from_static("x-accept"),
                HeaderValue::from_static("application/json; application/x-www-form-urlencoded"),
            );
            return r;
        }
        let html = param(query, "TYPE") == Some("html");
        let (first, second, headers) = if html {
            let domain = param(query, "DOMAIN");
            (
                codec::html_prelude(domain) + &codec::html_script(codec::TEST_FIRST, true),
                codec::html_script(codec::TEST_SECOND, false) + codec::HTML_DONE,
                self.inner.html_headers.clone(),
            )
        } else {
            (
                codec::TEST_FIRST.to_string(),
                codec::TEST_SECOND.to_string(),
                headers,
            )
        };
        let (tx, body) = ResponseBody::channel(None);
        let _ = tx.send(Bytes::from(first));
        let delay = self.inner.options.test_phase2_delay;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(Bytes::from(second));
        });
        ok_response(&headers, body)
    }

    async fn bind<B>(
        &self,
        parts: http::request::Parts,
        query: Query,
        body: B,
        headers: HeaderMap,
    ) -> Response<ResponseBody>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if param(&query, "VER") != Some("8") {
            return error_response(400, "Version 8 required", &headers);
        }
        let session = match param(&query, "SID").filter(|s| !s.is_empty()) {
            Some(sid) => match self.link(sid) {
                Some(s) => Some(s),
                None => return error_response(400, "Unknown SID", &headers),
            },
            None => None,
        };
        let aid = param(&query, "AID").and_then(leading_u64);
        let rid = param(&query, "RID");
        match parts.method {
            Method::POST => {
                // A creation is checked (origin, the address's quota) before its body is read.
                let slot = match &session {
                    Some(_) => None,
                    None => match self.admit_creation(&parts) {
                        Ok(slot) => Some(slot),
                        Err(refusal) => return *refusal,
                    },
                };
                let limit = self.inner.options.max_body_bytes;
                let bytes = match Limited::new(body, limit).collect().await {
                    Ok(collected) => collected.to_bytes(),
                    Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                        return error_response(413, "Request body too large", &headers);
                    }
                    Err(_) => return error_response(400, "Bad data", &headers),
                };
                let json = parts
                    .headers
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split(';').next())
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
                let limits = codec::ForwardLimits {
                    max_maps: self.inner.options.max_maps_per_post,
                    max_entries: self.inner.options.max_map_entries,
                };
                let forward = match codec::parse_forward(&bytes, json, limits) {
                    Ok(f) => f,
                    Err(CodecError::TooManyMaps { .. }) => {
                        return error_response(413, "Too many maps", &headers);
                    }
                    Err(CodecError::TooManyEntries { .. }) => {
                        return error_response(413, "Too many map entries", &headers);
                    }
                    Err(_) => return error_response(400, "Bad data", &headers),
                };
                let Some(rid) = rid.and_then(|r| r.parse::<u64>().ok()) else {
                    return error_response(400, "Bad data", &headers);
                };
                let creating = session.is_none();
                let session = match (session, slot) {
                    (Some(s), _) => s,
                    (None, Some(slot)) => match self.create(&parts, &query, rid, slot).await {
                        Ok(s) => s,
                        Err(response) => return response,
                    },
                    (None, None) => return error_response(500, "Cannot create session", &headers),
                };
                let (reply, rx) = oneshot::channel();
                let command = Command::Forward {
                    rid,
                    aid,
                    body: forward,
                    creating,
                    headers: headers.clone(),
                    reply,
                };
                // A session that vanished while being created was closed by the connect hook.
                let refused = if creating {
                    error_response(403, "Forbidden", &headers)
                } else {
                    error_response(400, "Unknown SID", &headers)
                };
                self.ask(&session, command, rx, refused).await
            }
            Method::GET => match param(&query, "TYPE") {
                Some("terminate") => {
                    if let Some(session) = session {
                        let rid = rid.and_then(|r| r.parse().ok()).unwrap_or(0);
                        let _ = session.send(Command::Terminate { rid, aid });
                    }
                    ok_response(&headers, ResponseBody::empty())
                }
                Some(kind @ ("xmlhttp" | "html")) => {
                    let Some(session) = session else {
                        return error_response(400, "Unknown SID", &headers);
                    };
                    if rid != Some("rpc") {
                        return error_response(400, "Expected RPC", &headers);
                    }
                    let html =
                        (kind == "html").then(|| param(&query, "DOMAIN").unwrap_or("").to_string());
                    let (reply, rx) = oneshot::channel();
                    let command = Command::BackChannel {
                        aid,
                        streaming: param(&query, "CI") == Some("0"),
                        html,
                        headers: headers.clone(),
                        reply,
                    };
                    self.ask(
                        &session,
                        command,
                        rx,
                        error_response(400, "Unknown SID", &headers),
                    )
                    .await
                }
                _ => error_response(400, "Bad TYPE", &headers),
            },
            _ => plain_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method not allowed",
                &headers,
            ),
        }
    }

    /// Hands a request to its session's task and waits for the answer. If the task is gone
    /// (the session closed meanwhile), answers `refused`.
    async fn ask(
        &self,
        session: &Link<Command>,
        command: Command,
        rx: oneshot::Receiver<Response<ResponseBody>>,
        refused: Response<ResponseBody>,
    ) -> Response<ResponseBody> {
        if session.send(command).is_err() {
            return refused;
        }
        rx.await.unwrap_or(refused)
    }

    /// The checks of a session-creating request that come before its body is read: the
    /// origin, and a place in the address's quota.
    fn admit_creation(
        &self,
        parts: &http::request::Parts,
    ) -> Result<QuotaSlot, Box<Response<ResponseBody>>> {
        let headers = &self.inner.headers;
        if !admits_origin(&self.inner.options.origins, parts) {
            return Err(Box::new(error_response(403, "Origin not allowed", headers)));
        }
        QuotaSlot::take(&self.inner.options.quota, parts).map_err(|e| {
            let (status, retry) = quota_refusal(&e);
            let mut r = error_response(status, &e.to_string(), headers);
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry));
            Box::new(r)
        })
    }

    /// Creates a session for a `bind` POST without `SID` that [`admit_creation`] let in:
    /// runs admission, ghosts `OSID` (a session id: only its owner knows it), registers
    /// under a fresh secret id, starts the session's task, runs the connect hook, and
    /// announces it on [`Sessions`].
    ///
    /// [`admit_creation`]: Self::admit_creation
    async fn create(
        &self,
        parts: &http::request::Parts,
        query: &Query,
        first_rid: u64,
        slot: QuotaSlot,
    ) -> Result<Link<Command>, Response<ResponseBody>> {
        let headers = &self.inner.headers;
        let options = &self.inner.options;
        let name = match &options.admission {
            Some(admit) => match admit(parts).await {
                Ok(name) => name,
                Err((status, reason)) => return Err(error_response(status, &reason, headers)),
            },
            None => None,
        };
        if let Some(name) = &name
            && !browserver_core::is_valid_id(name)
        {
            tracing::warn!(name, "admission chose an invalid name");
            return Err(error_response(500, "Cannot create session", headers));
        }
        if let Some(old) = param(query, "OSID").and_then(|id| self.link(id)) {
            let oaid = param(query, "OAID").and_then(leading_u64);
            let (done, rx) = oneshot::channel();
            if old.send(Command::Ghost { oaid, done }).is_ok() {
                let _ = rx.await;
            }
        }
        let limits = browserver_runtime::Limits {
            max_queued_bytes: options.max_buffered_bytes,
            max_unread_bytes: options.max_unread_bytes,
        };
        let mut parts_out = None;
        let make = |id: &str| {
            let info = Info {
                id: id.to_string(),
                name,
                transport: Transport::BrowserChannel,
                address: slot.address(),
                query: query.clone(),
                headers: owned_headers(&parts.headers),
                app_version: param(query, "CVER")
                    .filter(|v| !v.is_empty())
                    .map(str::to_string),
            };
            let (link, driver) = browserver_runtime::driver::session(info, limits);
            parts_out = Some(driver);
            link
        };
        let created = self.inner.table.create(make);
        let (id, link) = match created {
            Ok(created) => created,
            Err(browserver_core::RegistryError::Full { .. }) => {
                browserver_runtime::metrics::limit_hit(
                    browserver_runtime::metrics::Limit::MaxSessions,
                );
                let mut r = error_response(503, "Too many sessions", headers);
                r.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("5"));
                return Err(r);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot create a session");
                return Err(error_response(500, "Cannot create session", headers));
            }
        };
        let Some(driver) = parts_out else {
            return Err(error_response(500, "Cannot create session", headers));
        };
        // Registered: the session gives its place back when it closes.
        slot.keep();
        let machine = ServerMachine::new(
            protocol::Config {
                id: id.clone(),
                host_prefix: self.host_prefix(),
                first_rid,
                keep_alive_interval: options.keep_alive_interval,
                session_timeout: options.session_timeout_interval,
                attach_timeout: options.attach_timeout,
                max_buffered_bytes: options.max_buffered_bytes,
                reorder_window: options.reorder_window,
                max_held_bytes: options.max_held_bytes,
                back_channel_max_bytes: options.back_channel_max_bytes,
            },
            tokio::time::Instant::now().into_std(),
        );
        let inner = Arc::downgrade(&self.inner);
        let io = HttpIo::new(
            self.inner.html_headers.clone(),
            link.downgrade(),
            Box::new(move || {
                if let Some(inner) = inner.upgrade() {
                    inner.table.forget(&id);
                }
            }),
        );
        driver.spawn(machine, io);
        let session = link.session.clone();
        tracing::debug!(name = ?session.name(), "session created");
        if let Some(hook) = &options.connect_hook {
            hook(&session);
        }
        self.inner.accept.announce(session);
        Ok(link)
    }
}

impl<B> tower::Service<Request<B>> for BrowserChannel
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let bc = self.clone();
        // On its own, the service may be nested under a prefix a router stripped.
        Box::pin(async move { Ok(bc.answer(req, true).await) })
    }
}

/// As a layer, the endpoint answers requests under `base` and passes all others to the
/// service it wraps ([`BrowserChannel::with_fallback`]).
impl<S> tower::Layer<S> for BrowserChannel {
    type Service = WithFallback<S>;

    fn layer(&self, inner: S) -> WithFallback<S> {
        self.with_fallback(inner)
    }
}

/// A [`BrowserChannel`] in front of another service: requests under `base` are answered by
/// BrowserChannel, everything else by the fallback.
#[derive(Clone, Debug)]
pub struct WithFallback<S> {
    bc: BrowserChannel,
    fallback: S,
}

impl<S, B, RB> tower::Service<Request<B>> for WithFallback<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<http_body_util::Either<ResponseBody, RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.fallback.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if self.bc.owns(req.uri().path()) {
            let bc = self.bc.clone();
            Box::pin(async move { Ok(bc.handle(req).await.map(http_body_util::Either::Left)) })
        } else {
            let future = self.fallback.call(req);
            Box::pin(async move { Ok(future.await?.map(http_body_util::Either::Right)) })
        }
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
