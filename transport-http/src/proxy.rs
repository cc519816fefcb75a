//! The proxy: HTTP requests for `<name>.<domain>` travel to that client over its
//! channel, correlated by the core's request table; the client's answer becomes the HTTP
//! response. Transport-agnostic: a connected client is anything implementing [`Channel`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use std::sync::atomic::{AtomicU64, Ordering};

use browserver_core::{
    CloseReason, IdGenerator, RandomIds, RequestEvent, RequestId, Requests, Resolved, Unanswered,
};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use ipnet::IpNet;
use tokio::sync::{Semaphore, oneshot};

use browserver_core::stream::{ResetCode, Side};
use browserver_runtime::metrics::{self, Limit};
use browserver_runtime::streams::{self, FrameAck, FrameSink, Mux, MuxConfig, Reset};

use crate::body::ProxyBody;
use crate::budget::{BodyError, Budget, Reservation};
use crate::headers::{forwardable, host_count};
use crate::host::HostPattern;
use crate::message::{self, Head, Message};

/// How a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// The original text form (browserver-client 0.1): bodies must be text.
    Text,
    /// The extended JSON form: binary bodies, repeated headers, empty values.
    Json,
    /// Streams ([`browserver_core::stream`]): requests and answers of any size in
    /// flow-controlled frames, server-sent events, WebSocket upgrades passed through.
    Streams,
}

/// Why a channel did not deliver a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undelivered {
    /// The client's send buffer is full (it is not reading): answer 503.
    Full,
    /// The channel closed first.
    Closed,
}

/// Resolves once the client has the message (`Ok`), or why it never will.
pub type Delivery =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Undelivered>> + Send>>;

/// A connected client's channel, as the proxy sees it.
pub trait Channel: Send + Sync + 'static {
    /// Queues one encoded browserver message; the [`Delivery`] may be awaited or dropped.
    fn send(&self, message: String) -> Delivery;

    /// Ends the client's session: a newer connection with the same name took its place.
    fn replace(&self);

    /// Queues one stream frame (clients that speak [`Wire::Streams`]); the [`Delivery`]
    /// resolves once the client acknowledged it.
    fn send_frame(&self, frame: Bytes) -> Delivery {
        drop(frame);
        Box::pin(async { Err(Undelivered::Closed) })
    }

    /// The client broke the stream protocol: end its session.
    fn abort(&self, why: &str) {
        tracing::warn!(error = %why, "a client broke the stream protocol");
        self.replace();
    }
}

/// A channel as the stream task's frame sink.
struct ChannelSink(Arc<dyn Channel>);

impl FrameSink for ChannelSink {
    fn send_frame(&self, frame: Bytes) -> FrameAck {
        let delivery = self.0.send_frame(frame);
        Box::pin(async move { delivery.await.is_ok() })
    }

    fn abort(&self, why: &str) {
        self.0.abort(why);
    }
}

/// One connection's hold on a name: what [`Proxy::connect`] returns, and what the client's
/// messages and its disconnection are reported with. A connection that lost its name (a newer
/// one replaced it) can neither answer nor end the new holder's requests.
#[derive(Debug, Clone)]
pub struct Connected {
    /// The public name (the hostname's first label; not a secret).
    pub name: String,
    /// `<name>.<domain>`.
    pub hostname: String,
    key: u64,
    /// The connection's stream task (clients that speak [`Wire::Streams`]): its frames go
    /// straight there, without the proxy's client table.
    mux: Option<Mux>,
}

impl PartialEq for Connected {
    fn eq(&self, other: &Connected) -> bool {
        (self.key, &self.name) == (other.key, &other.name)
    }
}

impl Eq for Connected {}

/// Why a client cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The requested name is not a valid DNS label.
    #[error("invalid name {0:?}")]
    InvalidName(String),
    /// No random name could be made.
    #[error("cannot make a name: {0}")]
    NoName(String),
}

/// Proxy options.
#[derive(Clone)]
pub struct ProxyOptions {
    /// How long a request waits for the client's answer; then 504. 30 s.
    pub request_timeout: Duration,
    /// Largest request body forwarded; larger → 413. 16 MiB.
    pub max_body_bytes: usize,
    /// Most requests waiting on one client; more → 503 with `Retry-After`. 64.
    pub max_pending_per_client: usize,
    /// The scheme the proxy is reached by, for `x-forwarded-proto`. `http`.
    pub scheme: &'static str,
    /// Body bytes held in memory at once over all clients (requests waiting for their client,
    /// answers from egress); past it a request is refused with 503. 256 MiB.
    pub max_in_flight_body_bytes: usize,
    /// Peers whose `x-forwarded-for`, `x-forwarded-proto` and `x-forwarded-host` are believed
    /// (reverse proxies in front of this one); from anyone else these headers are replaced.
    /// None by default.
    pub trusted_proxies: Vec<IpNet>,
    /// What clients may reach through the proxy.
    pub egress: crate::egress::EgressPolicy,
    /// Per-request authorization in both directions (default: allow all).
    pub authorizer: std::sync::Arc<dyn crate::hooks::Authorizer>,
    /// Flow control of streaming clients ([`Wire::Streams`]): windows, frame size, bytes in
    /// flight. The defaults: 512 KiB per stream, 2 MiB per client, 32 KiB frames, 3 MiB
    /// unacknowledged. Streams per client are `max_pending_per_client`; the answer deadline
    /// is `request_timeout`.
    pub streams: MuxConfig,
    /// Largest streamed request body (bytes); larger → the stream is reset and the visitor
    /// gets 413 (or a cut connection once the answer started). `None`: no limit (the flow
    /// control bounds memory whatever the size). `None` by default.
    pub max_streamed_body_bytes: Option<u64>,
}

impl std::fmt::Debug for ProxyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyOptions")
            .field("request_timeout", &self.request_timeout)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_pending_per_client", &self.max_pending_per_client)
            .field("egress", &self.egress)
            .finish_non_exhaustive()
    }
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            request_timeout: Duration::from_secs(30),
            max_body_bytes: 16 << 20,
            max_pending_per_client: 64,
            scheme: "http",
            max_in_flight_body_bytes: 256 << 20,
            trusted_proxies: Vec::new(),
            egress: crate::egress::EgressPolicy::default(),
            authorizer: std::sync::Arc::new(crate::hooks::AllowAll),
            streams: MuxConfig::default(),
            max_streamed_body_bytes: None,
        }
    }
}

/// What the status endpoint lists about a client: public facts only, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClientInfo {
    /// The client's public name (the hostname's first label).
    pub id: String,
    /// Its hostname.
    pub hostname: String,
    /// `websocket` or `browserchannel`.
    pub transport: String,
    /// Seconds since the Unix epoch when it connected.
    pub connected_since: u64,
    /// Requests it answered.
    pub requests_served: u64,
}

/// Where a waiting request's answer goes: the client's message, or why there is none.
type Answer = oneshot::Sender<Result<Message, Unanswered>>;

struct Client {
    key: u64,
    channel: Arc<dyn Channel>,
    /// The stream task of a client that speaks [`Wire::Streams`].
    mux: Option<Mux>,
    egress: Arc<Semaphore>,
    wire: Wire,
    requests: Requests<Answer>,
    transport: String,
    connected_since: SystemTime,
    /// Requests answered (shared with the streams waiting on answers).
    served: Arc<AtomicU64>,
}

struct Inner {
    pattern: HostPattern,
    options: ProxyOptions,
    /// Connected clients by public name.
    clients: Mutex<HashMap<String, Client>>,
    next_key: AtomicU64,
    budget: Budget,
    /// Wakes the deadline task when a request's deadline may be earlier than the one it
    /// sleeps for.
    deadlines: Arc<tokio::sync::Notify>,
    deadline_task: std::sync::Once,
    /// The deadline the task sleeps until (`None`: it waits for a request).
    deadline_target: Mutex<Option<Instant>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The deadline task wakes, finds the proxy gone, and ends.
        self.deadlines.notify_one();
    }
}

/// The proxy. Cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("pattern", &self.inner.pattern)
            .finish()
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The host a request names: its `Host` header, or its URI's authority.
fn request_host<B>(req: &Request<B>) -> String {
    req.headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default()
}

/// `response`, counted as a hit of `limit`.
fn limited(limit: Limit, response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    metrics::limit_hit(limit);
    response
}

fn gateway_timeout(why: &str) -> Response<Full<Bytes>> {
    plain(
        StatusCode::GATEWAY_TIMEOUT,
        &format!("Gateway Timeout: {why}"),
    )
}

impl Proxy {
    /// A proxy for hosts matching `pattern`.
    pub fn new(pattern: HostPattern, options: ProxyOptions) -> Proxy {
        Proxy {
            inner: Arc::new(Inner {
                pattern,
                budget: Budget::new(options.max_in_flight_body_bytes),
                options,
                clients: Mutex::new(HashMap::new()),
                next_key: AtomicU64::new(0),
                deadlines: Arc::new(tokio::sync::Notify::new()),
                deadline_target: Mutex::new(None),
                deadline_task: std::sync::Once::new(),
            }),
        }
    }

    fn clients(&self) -> MutexGuard<'_, HashMap<String, Client>> {
        self.inner.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The host pattern.
    pub fn pattern(&self) -> &HostPattern {
        &self.inner.pattern
    }

    /// Registers a connected client under `name` (one its admission granted) or a fresh
    /// random one. A client already holding that name is replaced: its session is ended
    /// ([`Channel::replace`]) and its waiting requests answer 504.
    pub fn connect(
        &self,
        name: Option<&str>,
        channel: Arc<dyn Channel>,
        wire: Wire,
        transport: &str,
    ) -> Result<Connected, ConnectError> {
        let key = self.inner.next_key.fetch_add(1, Ordering::Relaxed);
        let mux = (wire == Wire::Streams).then(|| {
            let options = &self.inner.options;
            let mut config = options.streams.clone();
            config.head_timeout = Some(options.request_timeout);
            config.streams.max_local_streams = options.max_pending_per_client;
            // Streams the client opens (requests out) are not taken yet: refused.
            let (mux, _incoming) =
                streams::spawn(Side::Proxy, config, ChannelSink(channel.clone()));
            mux
        });
        let client = Client {
            key,
            channel,
            mux: mux.clone(),
            egress: Arc::new(Semaphore::new(
                self.inner.options.egress.max_concurrent_per_client,
            )),
            wire,
            requests: Requests::new(self.inner.options.max_pending_per_client),
            transport: transport.to_string(),
            connected_since: SystemTime::now(),
            served: Arc::new(AtomicU64::new(0)),
        };
        let mut clients = self.clients();
        let name = match name {
            Some(name) if browserver_core::is_valid_id(name) => name.to_string(),
            Some(name) => return Err(ConnectError::InvalidName(name.to_string())),
            None => loop {
                let candidate = RandomIds
                    .generate()
                    .map_err(|e| ConnectError::NoName(e.to_string()))?;
                if !clients.contains_key(&candidate) {
                    break candidate;
                }
            },
        };
        if let Some(mut old) = clients.insert(name.clone(), client) {
            old.channel.replace();
            if let Some(mux) = &old.mux {
                mux.close();
            }
            old.requests.fail_all(&CloseReason::Replaced);
            answer_failures(&mut old.requests);
        }
        Ok(Connected {
            hostname: self.inner.pattern.hostname(&name),
            name,
            key,
            mux,
        })
    }

    /// The client's channel closed: every request waiting on it fails (504). Nothing happens
    /// if a newer connection holds the name now.
    pub fn disconnect(&self, client: &Connected, reason: &CloseReason) {
        let mut clients = self.clients();
        if clients
            .get(&client.name)
            .is_some_and(|c| c.key == client.key)
            && let Some(mut c) = clients.remove(&client.name)
        {
            if let Some(mux) = &c.mux {
                mux.close();
            }
            c.requests.fail_all(reason);
            answer_failures(&mut c.requests);
        }
    }

    /// Whether a client holds `name` here.
    pub fn holds(&self, name: &str) -> bool {
        self.clients().contains_key(name)
    }

    /// The names held here.
    pub fn names(&self) -> Vec<String> {
        self.clients().keys().cloned().collect()
    }

    /// Ends the hold of whoever holds `name` here, as a newer connection elsewhere took it
    /// (several nodes: [`Channel::replace`], its waiting requests answer 504). Whether one did.
    pub fn evict(&self, name: &str) -> bool {
        let old = self.clients().remove(name);
        let Some(mut old) = old else { return false };
        old.channel.replace();
        if let Some(mux) = &old.mux {
            mux.close();
        }
        old.requests.fail_all(&CloseReason::Replaced);
        answer_failures(&mut old.requests);
        true
    }

    /// Connected clients, for the status endpoint.
    pub fn list(&self) -> Vec<ClientInfo> {
        let mut list: Vec<ClientInfo> = self
            .clients()
            .iter()
            .map(|(id, c)| ClientInfo {
                id: id.clone(),
                hostname: self.inner.pattern.hostname(id),
                transport: c.transport.clone(),
                connected_since: c
                    .connected_since
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                requests_served: c.served.load(Ordering::Relaxed),
            })
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    /// A message from a connected client: an answer to a request, or a request of its own (a
    /// request for another client's hostname is routed to that client; others go out under
    /// the egress policy). Malformed messages are dropped with a logged reason.
    pub fn from_client(&self, client: &Connected, bytes: &[u8]) {
        if browserver_core::stream::Frame::is_frame(bytes) {
            tracing::warn!(client = %client.name, "dropped a stream frame from a client that did not ask for streams");
            return;
        }
        let message = match message::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(client = %client.name, error = %e, "dropped a malformed message");
                return;
            }
        };
        match &message.head {
            Head::Response { .. } => self.answer(client, message),
            Head::Request { .. } => {
                let egress = match self.clients().get(&client.name) {
                    Some(c) if c.key == client.key => c.egress.clone(),
                    _ => return,
                };
                let Ok(permit) = egress.try_acquire_owned() else {
                    metrics::limit_hit(Limit::MaxEgressPerClient);
                    let mut refusal = Message::text_response(
                        StatusCode::TOO_MANY_REQUESTS.as_u16(),
                        "too many requests of this client in flight",
                    );
                    refusal.id = message.id;
                    self.send_to(client, &refusal);
                    return;
                };
                let proxy = self.clone();
                let from = client.clone();
                tokio::spawn(async move {
                    proxy.egress(&from, message).await;
                    drop(permit);
                });
            }
        }
    }

    /// A stream frame from a client that speaks [`Wire::Streams`] (a binary message for
    /// which [`Frame::is_frame`](browserver_core::stream::Frame::is_frame) holds). Waits
    /// while the client's stream task is behind.
    pub async fn frame_from_client(&self, client: &Connected, frame: Bytes) {
        // A replaced connection's stream task was closed: its frames go nowhere.
        match &client.mux {
            Some(mux) => mux.frame_in(frame).await,
            None => {
                tracing::warn!(client = %client.name, "dropped a stream frame from a client that did not ask for streams");
            }
        }
    }

    fn answer(&self, from: &Connected, message: Message) {
        let Some(rid) = message
            .id
            .as_deref()
            .and_then(|r| r.parse::<RequestId>().ok())
        else {
            tracing::warn!(client = %from.name, "dropped an answer without a valid request id");
            return;
        };
        let mut clients = self.clients();
        let Some(client) = clients.get_mut(&from.name).filter(|c| c.key == from.key) else {
            return;
        };
        match client.requests.resolve(rid) {
            Resolved::Matched(waiter) => {
                client.served.fetch_add(1, Ordering::Relaxed);
                let _ = waiter.send(Ok(message));
            }
            Resolved::Unknown | Resolved::Repeated => {
                tracing::debug!(client = %from.name, request = %rid, "ignored an answer to no pending request");
            }
        }
    }

    /// A request a client sent up its channel.
    async fn egress(&self, from: &Connected, mut request: Message) {
        let request_id = request.id.take();
        let host = request
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("host"))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let response = if let Err(refusal) = self
            .inner
            .options
            .authorizer
            .authorize_egress(&from.name, &request)
            .await
        {
            Message::text_response(
                StatusCode::from_u16(refusal.status)
                    .unwrap_or(StatusCode::FORBIDDEN)
                    .as_u16(),
                &refusal.reason,
            )
        } else {
            match self.inner.pattern.client_id(&host) {
                _ if host_count(&request.headers) > 1 => {
                    Message::text_response(400, "more than one Host header")
                }
                Some(target) if target != from.name => {
                    request.headers = forwardable(&request.headers);
                    match self.forward(&target, request, None).await {
                        Ok(m) => m,
                        Err(r) => Message::text_response(r.status().as_u16(), "client unavailable"),
                    }
                }
                Some(_) => Message::text_response(
                    StatusCode::LOOP_DETECTED.as_u16(),
                    "a client cannot call itself",
                ),
                None => {
                    self.inner
                        .options
                        .egress
                        .perform(request, &self.inner.budget)
                        .await
                }
            }
        };
        let mut response = response;
        response.id = request_id;
        self.send_to(from, &response);
    }

    fn send_to(&self, to: &Connected, m: &Message) {
        let clients = self.clients();
        if let Some(client) = clients.get(&to.name).filter(|c| c.key == to.key)
            && let Some(text) = encode_for(client.wire, m)
        {
            // Its delivery is not awaited: a client that does not read loses its answers.
            drop(client.channel.send(text));
        }
    }

    /// Sends `request` to client `name` and waits for its answer. `held` is the request's
    /// share of the body budget, kept until the answer came.
    async fn forward(
        &self,
        name: &str,
        mut request: Message,
        held: Option<Reservation>,
    ) -> Result<Message, Response<Full<Bytes>>> {
        let (tx, rx) = oneshot::channel::<Result<Message, Unanswered>>();
        let timeout = self.inner.options.request_timeout;
        let (key, rid, delivery) = {
            let mut clients = self.clients();
            let Some(client) = clients.get_mut(name) else {
                return Err(gateway_timeout("no such client"));
            };
            let key = client.key;
            let rid = match client.requests.insert(Instant::now(), timeout, tx) {
                Ok(rid) => rid,
                Err(_) => return Err(too_many_pending()),
            };
            request.id = Some(rid.to_string());
            match encode_for(client.wire, &request) {
                Some(text) => (key, rid, client.channel.send(text)),
                None => {
                    client.requests.resolve(rid);
                    return Err(plain(
                        StatusCode::BAD_GATEWAY,
                        "Bad Gateway: the request cannot be written in the client's form",
                    ));
                }
            }
        };
        self.ensure_deadline_task();
        {
            // Wake the deadline task only if it would sleep past this request's deadline.
            let deadline = Instant::now() + timeout;
            let target = self
                .inner
                .deadline_target
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if target.is_none_or(|at| deadline < at) {
                self.inner.deadlines.notify_one();
            }
        }
        // The answer, unless the channel refuses the request first. Its deadline is the
        // request table's (one clock): the deadline task answers `TimedOut`.
        let outcome = async {
            let mut rx = rx;
            let mut delivery = Some(delivery);
            loop {
                tokio::select! {
                    answer = &mut rx => return answer.unwrap_or(Err(Unanswered::SessionClosed(CloseReason::Closed(None)))).map_err(Waited::Unanswered),
                    refused = async { delivery.as_mut().map(|d| d.as_mut()).expect("some").await },
                        if delivery.is_some() => match refused {
                        Ok(()) => delivery = None,
                        Err(why) => return Err(Waited::Undelivered(why)),
                    },
                }
            }
        }
        .await;
        drop(held);
        match outcome {
            Ok(answer) => Ok(answer),
            Err(Waited::Undelivered(Undelivered::Full)) => {
                self.forget_request(name, key, rid);
                Err(plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Service Unavailable: the client cannot take more",
                ))
            }
            Err(Waited::Undelivered(Undelivered::Closed))
            | Err(Waited::Unanswered(Unanswered::SessionClosed(_))) => {
                self.forget_request(name, key, rid);
                Err(gateway_timeout("the client disconnected"))
            }
            Err(Waited::Unanswered(Unanswered::TimedOut)) => Err(limited(
                Limit::RequestTimeout,
                gateway_timeout("the client did not answer in time"),
            )),
        }
    }

    /// Starts the task that fails requests at their deadlines (once per proxy, on the first
    /// request; it ends with the proxy).
    fn ensure_deadline_task(&self) {
        let weak = Arc::downgrade(&self.inner);
        let wake = self.inner.deadlines.clone();
        self.inner.deadline_task.call_once(|| {
            tokio::spawn(run_deadlines(weak, wake));
        });
    }

    /// Drops request `rid` of the connection `key` holding `name` (not of a newer holder,
    /// whose request ids start again).
    fn forget_request(&self, name: &str, key: u64, rid: RequestId) {
        if let Some(client) = self.clients().get_mut(name).filter(|c| c.key == key) {
            client.requests.resolve(rid);
        }
    }

    /// Answers `req` if its host matches the pattern; otherwise hands it back (it belongs to
    /// the application).
    pub async fn handle<B>(&self, req: Request<B>) -> Result<Response<ProxyBody>, Request<B>>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let host = request_host(&req);
        let Some(name) = self.inner.pattern.client_id(&host) else {
            return Err(req);
        };
        if req.headers().get_all(http::header::HOST).iter().count() > 1 {
            return Ok(plain(
                StatusCode::BAD_REQUEST,
                "Bad Request: more than one Host header",
            )
            .map(ProxyBody::from));
        }
        Ok(self.ingress(&name, &host, req).await)
    }

    /// The client name `req` is for (its `Host` matches the pattern), connected or not:
    /// whether [`handle`](Self::handle) takes it.
    pub fn client_of<B>(&self, req: &Request<B>) -> Option<String> {
        self.inner.pattern.client_id(&request_host(req))
    }

    /// Whether `req` is for a connected client that speaks streams: its body will pass
    /// through (bounded by the stream's window), not be held whole.
    pub fn streams_to<B>(&self, req: &Request<B>) -> bool {
        self.client_of(req)
            .is_some_and(|name| self.clients().get(&name).is_some_and(|c| c.mux.is_some()))
    }

    /// Whether `peer` is a trusted reverse proxy.
    pub fn is_trusted_proxy(&self, peer: std::net::IpAddr) -> bool {
        self.inner
            .options
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&peer))
    }

    async fn ingress<B>(&self, name: &str, host: &str, req: Request<B>) -> Response<ProxyBody>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Refused before the body is read: no such client, or too many requests waiting.
        let mux = match self.clients().get(name) {
            None => return gateway_timeout("no such client").map(ProxyBody::from),
            Some(c) if c.requests.len() >= self.inner.options.max_pending_per_client => {
                return too_many_pending().map(ProxyBody::from);
            }
            Some(c) => (c.mux.clone(), c.served.clone()),
        };
        let (mut parts, body) = req.into_parts();
        if let (Some(mux), served) = mux {
            let upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
            let request = self.request_head(name, host, &parts);
            if let Err(refused) = self.authorize_ingress(name, &request).await {
                return refused.map(ProxyBody::from);
            }
            return self
                .ingress_stream(&mux, request, body, upgrade, &served)
                .await;
        }
        self.ingress_buffered(name, host, parts, body)
            .await
            .map(ProxyBody::from)
    }

    /// The authorizer's verdict on a visitor's request to `name`; a refusal as the response.
    async fn authorize_ingress(
        &self,
        name: &str,
        request: &Message,
    ) -> Result<(), Response<Full<Bytes>>> {
        self.inner
            .options
            .authorizer
            .authorize_ingress(name, request)
            .await
            .map_err(|refusal| {
                let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::FORBIDDEN);
                plain(status, &refusal.reason)
            })
    }

    /// The request's head as the client gets it: forwardable headers, `x-forwarded-*`, and
    /// for a WebSocket (or other) upgrade, `connection: upgrade` and the `upgrade` header.
    fn request_head(&self, _name: &str, host: &str, parts: &http::request::Parts) -> Message {
        let raw: Vec<(String, Vec<u8>)> = parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
            .collect();
        let mut headers = forwardable(&raw);
        if let Some(upgrade) = upgrade_of(&parts.headers) {
            headers.push(("connection".into(), b"upgrade".to_vec()));
            headers.push(("upgrade".into(), upgrade.into_bytes()));
        }
        self.forwarding_headers(host, parts, &mut headers);
        let target = parts
            .uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.to_string());
        Message {
            id: None,
            head: Head::Request {
                method: parts.method.to_string(),
                target,
            },
            headers,
            body: Bytes::new(),
        }
    }

    /// Appends `x-forwarded-for`, `-host` and `-proto` (believing a trusted proxy's).
    fn forwarding_headers(
        &self,
        host: &str,
        parts: &http::request::Parts,
        headers: &mut Vec<(String, Vec<u8>)>,
    ) {
        let peer = browserver_runtime::client_addr(&parts.extensions).map(|a| a.ip());
        let trusted = peer.is_some_and(|p| self.is_trusted_proxy(p));
        let prior = |name: &str| {
            trusted
                .then(|| parts.headers.get(name).and_then(|v| v.to_str().ok()))
                .flatten()
                .map(str::to_string)
        };
        if let Some(peer) = peer {
            let chain = match prior("x-forwarded-for") {
                Some(p) => format!("{p}, {peer}"),
                None => peer.to_string(),
            };
            headers.push(("x-forwarded-for".into(), chain.into_bytes()));
        }
        let forwarded_host = prior("x-forwarded-host").unwrap_or_else(|| host.to_string());
        headers.push(("x-forwarded-host".into(), forwarded_host.into_bytes()));
        let proto =
            prior("x-forwarded-proto").unwrap_or_else(|| self.inner.options.scheme.to_string());
        headers.push(("x-forwarded-proto".into(), proto.into_bytes()));
    }

    /// A visitor's request to a streaming client: the body goes up as it arrives, the answer
    /// comes back as the client produces it; a WebSocket upgrade the client accepts becomes
    /// a byte pipe over the same stream.
    async fn ingress_stream<B>(
        &self,
        mux: &Mux,
        request: Message,
        body: B,
        upgrade: Option<hyper::upgrade::OnUpgrade>,
        served: &AtomicU64,
    ) -> Response<ProxyBody>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let upgrading = upgrade.is_some() && upgrade_requested(&request.headers);
        // An upgrade keeps the request direction open for the upgraded bytes.
        let end = body.is_end_stream() && !upgrading;
        let stream = match mux.open(message::encode_head(&request), end).await {
            Ok(s) => s,
            Err(browserver_core::stream::StreamError::TooManyStreams) => {
                return too_many_pending().map(ProxyBody::from);
            }
            Err(_) => return gateway_timeout("the client disconnected").map(ProxyBody::from),
        };
        let (mut send, mut recv) = stream.split();
        let failure = Arc::new(std::sync::Mutex::new(None::<BodyFailure>));
        // The request body goes up in its own task; an upgrade keeps `send` for its bytes.
        let mut send = if end || upgrading {
            Some(send)
        } else {
            let limit = self.inner.options.max_streamed_body_bytes;
            let idle = self.inner.options.request_timeout;
            let failure = failure.clone();
            tokio::spawn(async move {
                pump_body(body, &mut send, limit, idle, &failure).await;
            });
            None
        };
        let answer = match recv.head().await {
            Ok((head, end)) => (head, end),
            Err(Reset(code)) => {
                let failed = *failure.lock().unwrap_or_else(|e| e.into_inner());
                return match (failed, code) {
                    (Some(BodyFailure::TooSlow), _) => limited(
                        Limit::BodyMinRate,
                        plain(
                            StatusCode::REQUEST_TIMEOUT,
                            "Request Timeout: the body arrived too slowly",
                        ),
                    ),
                    (Some(BodyFailure::Busy), _) => limited(
                        Limit::MaxInFlightBodyBytes,
                        plain(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "Service Unavailable: the proxy holds too many request bodies",
                        ),
                    ),
                    (Some(BodyFailure::Unreadable), _) => {
                        plain(StatusCode::BAD_REQUEST, "Bad Request: unreadable body")
                    }
                    (None, code) => match code {
                        ResetCode::TimedOut => limited(
                            Limit::RequestTimeout,
                            gateway_timeout("the client did not answer in time"),
                        ),
                        ResetCode::SessionClosed => gateway_timeout("the client disconnected"),
                        ResetCode::TooLarge => limited(
                            Limit::MaxBodyBytes,
                            plain(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large"),
                        ),
                        ResetCode::Refused => too_many_pending(),
                        _ => plain(
                            StatusCode::BAD_GATEWAY,
                            "Bad Gateway: the client abandoned the request",
                        ),
                    },
                }
                .map(ProxyBody::from);
            }
        };
        let (head, answer_end) = answer;
        served.fetch_add(1, Ordering::Relaxed);
        let Ok(message) = message::decode_head(&head) else {
            return plain(
                StatusCode::BAD_GATEWAY,
                "Bad Gateway: invalid answer head from the client",
            )
            .map(ProxyBody::from);
        };
        if upgrading
            && matches!(message.head, Head::Response { status: 101, .. })
            && let (Some(on_upgrade), Some(send)) = (upgrade, send.take())
        {
            return switch(message, on_upgrade, send, recv);
        }
        let valid =
            matches!(message.head, Head::Response { status, .. } if (200..600).contains(&status));
        // The length the client declared frames the visitor's answer (no chunked encoding,
        // one write for a small answer); a body that disagrees cuts the connection.
        let length = message
            .headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok());
        let response = to_http(message);
        if answer_end || !valid {
            // No body follows, or the answer is refused (502; dropping `recv` resets the
            // stream).
            return response.map(ProxyBody::from);
        }
        // A refused switch: the request direction (kept open for the upgrade) ends here.
        if let Some(mut send) = send {
            send.finish();
        }
        response.map(|_| ProxyBody::stream(recv, length))
    }

    async fn ingress_buffered<B>(
        &self,
        name: &str,
        host: &str,
        parts: http::request::Parts,
        body: B,
    ) -> Response<Full<Bytes>>
    where
        B: http_body::Body + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (body, held) = match self
            .inner
            .budget
            .read(body, self.inner.options.max_body_bytes)
            .await
        {
            Ok(read) => read,
            Err(BodyError::TooLarge { .. }) => {
                return limited(
                    Limit::MaxBodyBytes,
                    plain(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large"),
                );
            }
            Err(BodyError::Busy) => {
                metrics::limit_hit(Limit::MaxInFlightBodyBytes);
                let mut r = plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Service Unavailable: the proxy holds too many request bodies",
                );
                r.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                return r;
            }
            Err(BodyError::TooSlow) => {
                return limited(
                    Limit::BodyMinRate,
                    plain(
                        StatusCode::REQUEST_TIMEOUT,
                        "Request Timeout: the body arrived too slowly",
                    ),
                );
            }
            Err(BodyError::Unreadable(_)) => {
                return plain(StatusCode::BAD_REQUEST, "Bad Request: unreadable body");
            }
        };
        let mut request = self.request_head(name, host, &parts);
        request.body = body;
        if let Err(refused) = self.authorize_ingress(name, &request).await {
            return refused;
        }
        match self.forward(name, request, Some(held)).await {
            Ok(answer) => to_http(answer),
            Err(response) => response,
        }
    }
}

/// The `upgrade` header's value, when the request asks to switch protocols
/// (`connection: upgrade`).
fn upgrade_of(headers: &http::HeaderMap) -> Option<String> {
    let asks = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !asks {
        return None;
    }
    headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn upgrade_requested(headers: &[(String, Vec<u8>)]) -> bool {
    headers.iter().any(|(k, _)| k == "upgrade")
}

/// Copies a visitor's request body into the stream: at the pace the client reads it (each
/// write waits while the stream's buffer is full), within `limit`, each chunk within `idle`.
async fn pump_body<B>(
    body: B,
    send: &mut streams::SendStream,
    limit: Option<u64>,
    idle: std::time::Duration,
    failure: &std::sync::Mutex<Option<BodyFailure>>,
) where
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http_body_util::BodyExt;
    let mut body = std::pin::pin!(body);
    let mut total: u64 = 0;
    loop {
        let frame = match tokio::time::timeout(idle, body.frame()).await {
            Ok(Some(Ok(frame))) => frame,
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                let e: Box<dyn std::error::Error + Send + Sync> = e.into();
                let why = match e.downcast_ref::<BodyError>() {
                    Some(BodyError::TooSlow) => BodyFailure::TooSlow,
                    Some(BodyError::Busy) => BodyFailure::Busy,
                    _ => BodyFailure::Unreadable,
                };
                *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                return send.reset(ResetCode::Cancel);
            }
            Err(_) => {
                *failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(BodyFailure::TooSlow);
                return send.reset(ResetCode::Cancel);
            }
        };
        let Ok(mut data) = frame.into_data() else {
            continue; // trailers are not forwarded
        };
        let len = bytes::Buf::remaining(&data);
        let data = bytes::Buf::copy_to_bytes(&mut data, len);
        total = total.saturating_add(data.len() as u64);
        if limit.is_some_and(|l| total > l) {
            return send.reset(ResetCode::TooLarge);
        }
        let written = if body.is_end_stream() {
            send.write_last(data).await
        } else {
            send.write(data).await
        };
        if written.is_err() {
            return;
        }
    }
    send.finish();
}

/// Why a visitor's streamed request body failed (its stream was reset).
#[derive(Clone, Copy, Debug)]
enum BodyFailure {
    TooSlow,
    Busy,
    Unreadable,
}

/// The client accepted a protocol switch (`101`): the visitor gets the `101`, and once its
/// connection is upgraded, bytes flow both ways over the stream until either side ends.
fn switch(
    answer: Message,
    on_upgrade: hyper::upgrade::OnUpgrade,
    mut send: streams::SendStream,
    recv: streams::RecvStream,
) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let upgrade = answer
        .headers
        .iter()
        .find(|(k, _)| k == "upgrade")
        .and_then(|(_, v)| HeaderValue::from_bytes(v).ok())
        .unwrap_or(HeaderValue::from_static("websocket"));
    for (name, value) in forwardable(&answer.headers) {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            response.headers_mut().append(n, v);
        }
    }
    response.headers_mut().insert(
        http::header::CONNECTION,
        HeaderValue::from_static("upgrade"),
    );
    response
        .headers_mut()
        .insert(http::header::UPGRADE, upgrade);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            send.reset(ResetCode::Cancel);
            return;
        };
        let io = hyper_util::rt::TokioIo::new(upgraded);
        streams::pipe(io, send, recv).await;
    });
    response
}

/// How waiting for an answer ended without one.
enum Waited {
    Undelivered(Undelivered),
    Unanswered(Unanswered),
}

/// Answers the waiters of every failed request in `requests` with why.
fn answer_failures(requests: &mut Requests<Answer>) {
    while let Some(RequestEvent::Failed { value, reason, .. }) = requests.poll_event() {
        let _ = value.send(Err(reason));
    }
}

/// The proxy's one timer for request deadlines: sleeps until the earliest deadline over all
/// clients' request tables (or until a new request may have an earlier one), then lets each
/// table fail what is due, which answers those waiters 504.
async fn run_deadlines(inner: std::sync::Weak<Inner>, wake: Arc<tokio::sync::Notify>) {
    loop {
        let next = {
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let now = Instant::now();
            let mut clients = inner.clients.lock().unwrap_or_else(|e| e.into_inner());
            let mut next = None::<Instant>;
            for client in clients.values_mut() {
                client.requests.handle_timeout(now);
                answer_failures(&mut client.requests);
                if let Some(at) = client.requests.poll_timeout() {
                    next = Some(next.map_or(at, |n: Instant| n.min(at)));
                }
            }
            // Set under the clients lock: a request inserted after this sees the new target.
            *inner
                .deadline_target
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = next;
            next
        };
        let notified = wake.notified();
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                    () = notified => {}
                }
            }
            None => notified.await,
        }
    }
}

fn too_many_pending() -> Response<Full<Bytes>> {
    metrics::limit_hit(Limit::MaxPendingPerClient);
    let mut r = plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "Too many pending requests for this client",
    );
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn encode_for(wire: Wire, m: &Message) -> Option<String> {
    match wire {
        Wire::Json | Wire::Streams => Some(message::encode_json(m)),
        Wire::Text => match message::encode_text(m) {
            Ok(t) => Some(t),
            Err(message::CodecError::BinaryBody) => {
                // The original format treats bodies as text, as browserver-client expects.
                let mut lossy = m.clone();
                lossy.body = Bytes::from(String::from_utf8_lossy(&m.body).into_owned());
                message::encode_text(&lossy).ok()
            }
            Err(e) => {
                tracing::warn!(error = %e, "message cannot be written in the text form");
                None
            }
        },
    }
}

/// The client's answer as an HTTP response; anything invalid in it becomes a 502: a request,
/// a status outside 200–599 (an informational or `101` answer would switch the visitor's
/// connection), a header that is not valid HTTP. Hop-by-hop, framing and forwarding headers
/// are dropped: the body as sent is the body.
fn to_http(answer: Message) -> Response<Full<Bytes>> {
    let Head::Response { status, .. } = answer.head else {
        return plain(
            StatusCode::BAD_GATEWAY,
            "Bad Gateway: the client answered with a request",
        );
    };
    let status = match StatusCode::from_u16(status) {
        Ok(s) if (200..600).contains(&s.as_u16()) => s,
        _ => {
            return plain(
                StatusCode::BAD_GATEWAY,
                "Bad Gateway: invalid status from the client",
            );
        }
    };
    let mut response = Response::new(Full::new(answer.body));
    *response.status_mut() = status;
    for (name, value) in forwardable(&answer.headers) {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            (Ok(n), Ok(v)) => {
                response.headers_mut().append(n, v);
            }
            _ => tracing::warn!(header = %name, "dropped an invalid header from a client's answer"),
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, headers: &[(&str, &str)]) -> Message {
        Message {
            id: Some("1".into()),
            head: Head::Response {
                status,
                reason: String::new(),
            },
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: Bytes::from_static(b"body"),
        }
    }

    #[test]
    fn informational_switching_and_invalid_statuses_from_a_client_are_502() {
        for status in [100, 101, 103, 199, 600, 999, 0] {
            assert_eq!(
                to_http(answer(status, &[])).status(),
                StatusCode::BAD_GATEWAY,
                "{status}"
            );
        }
        assert_eq!(to_http(answer(204, &[])).status(), StatusCode::NO_CONTENT);
    }

    #[test]
    fn a_clients_framing_and_hop_headers_do_not_reach_the_visitor() {
        let r = to_http(answer(
            200,
            &[
                ("content-length", "999"),
                ("transfer-encoding", "chunked"),
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("x-brow-req-id", "5"),
                ("x-ok", "1"),
            ],
        ));
        let names: Vec<_> = r.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-ok"]);
    }
}
