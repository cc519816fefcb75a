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
}

/// One connection's hold on a name: what [`Proxy::connect`] returns, and what the client's
/// messages and its disconnection are reported with. A connection that lost its name (a newer
/// one replaced it) can neither answer nor end the new holder's requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    /// The public name (the hostname's first label; not a secret).
    pub name: String,
    /// `<name>.<domain>`.
    pub hostname: String,
    key: u64,
}

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
    egress: Arc<Semaphore>,
    wire: Wire,
    requests: Requests<Answer>,
    transport: String,
    connected_since: SystemTime,
    served: u64,
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
        let client = Client {
            key,
            channel,
            egress: Arc::new(Semaphore::new(
                self.inner.options.egress.max_concurrent_per_client,
            )),
            wire,
            requests: Requests::new(self.inner.options.max_pending_per_client),
            transport: transport.to_string(),
            connected_since: SystemTime::now(),
            served: 0,
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
            old.requests.fail_all(&CloseReason::Replaced);
            answer_failures(&mut old.requests);
        }
        Ok(Connected {
            hostname: self.inner.pattern.hostname(&name),
            name,
            key,
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
            c.requests.fail_all(reason);
            answer_failures(&mut c.requests);
        }
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
                requests_served: c.served,
            })
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    /// A message from a connected client: an answer to a request, or a request of its own (a
    /// request for another client's hostname is routed to that client; others go out under
    /// the egress policy). Malformed messages are dropped with a logged reason.
    pub fn from_client(&self, client: &Connected, bytes: &[u8]) {
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
                client.served += 1;
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
            Err(Waited::Unanswered(Unanswered::TimedOut)) => {
                Err(gateway_timeout("the client did not answer in time"))
            }
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
    pub async fn handle<B>(&self, req: Request<B>) -> Result<Response<Full<Bytes>>, Request<B>>
    where
        B: http_body::Body + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri().authority().map(|a| a.to_string()))
            .unwrap_or_default();
        let Some(name) = self.inner.pattern.client_id(&host) else {
            return Err(req);
        };
        if req.headers().get_all(http::header::HOST).iter().count() > 1 {
            return Ok(plain(
                StatusCode::BAD_REQUEST,
                "Bad Request: more than one Host header",
            ));
        }
        Ok(self.ingress(&name, &host, req).await)
    }

    /// Whether `peer` is a trusted reverse proxy.
    pub fn is_trusted_proxy(&self, peer: std::net::IpAddr) -> bool {
        self.inner
            .options
            .trusted_proxies
            .iter()
            .any(|net| net.contains(&peer))
    }

    async fn ingress<B>(&self, name: &str, host: &str, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: http_body::Body + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Refused before the body is read: no such client, or too many requests waiting.
        match self.clients().get(name) {
            None => return gateway_timeout("no such client"),
            Some(c) if c.requests.len() >= self.inner.options.max_pending_per_client => {
                return too_many_pending();
            }
            Some(_) => {}
        }
        let (parts, body) = req.into_parts();
        let (body, held) = match self
            .inner
            .budget
            .read(body, self.inner.options.max_body_bytes)
            .await
        {
            Ok(read) => read,
            Err(BodyError::TooLarge { .. }) => {
                return plain(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large");
            }
            Err(BodyError::Busy) => {
                let mut r = plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Service Unavailable: the proxy holds too many request bodies",
                );
                r.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                return r;
            }
            Err(BodyError::TooSlow) => {
                return plain(
                    StatusCode::REQUEST_TIMEOUT,
                    "Request Timeout: the body arrived too slowly",
                );
            }
            Err(BodyError::Unreadable(_)) => {
                return plain(StatusCode::BAD_REQUEST, "Bad Request: unreadable body");
            }
        };
        let raw: Vec<(String, Vec<u8>)> = parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
            .collect();
        let mut headers = forwardable(&raw);
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
        let target = parts
            .uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.to_string());
        let request = Message {
            id: None,
            head: Head::Request {
                method: parts.method.to_string(),
                target,
            },
            headers,
            body,
        };
        if let Err(refusal) = self
            .inner
            .options
            .authorizer
            .authorize_ingress(name, &request)
            .await
        {
            let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::FORBIDDEN);
            return plain(status, &refusal.reason);
        }
        match self.forward(name, request, Some(held)).await {
            Ok(answer) => to_http(answer),
            Err(response) => response,
        }
    }
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
        Wire::Json => Some(message::encode_json(m)),
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
