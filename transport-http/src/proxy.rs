//! The proxy: HTTP requests for `<client-id>.<domain>` travel to that client over its
//! channel, correlated by the core's request table; the client's answer becomes the HTTP
//! response. Transport-agnostic: a connected client is anything implementing [`Channel`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use browserver_core::{CloseReason, RequestId, Requests, Resolved};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use tokio::sync::oneshot;

use crate::host::HostPattern;
use crate::message::{self, Head, Message};

/// Headers that describe one hop and are never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "proxy-authorization",
    "proxy-authenticate",
];

fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.contains(&name) || name.starts_with("proxy-")
}

/// How a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// The original text form (browserver-client 0.1): bodies must be text.
    Text,
    /// The extended JSON form: binary bodies, repeated headers, empty values.
    Json,
}

/// A connected client's channel, as the proxy sees it.
pub trait Channel: Send + Sync + 'static {
    /// Sends one encoded browserver message; false if the channel is closed.
    fn send(&self, message: String) -> bool;
}

/// The client's address, for `x-forwarded-for` (insert it into request extensions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteAddr(pub SocketAddr);

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
            egress: crate::egress::EgressPolicy::default(),
            authorizer: std::sync::Arc::new(crate::hooks::AllowAll),
        }
    }
}

/// What the status endpoint lists about a client.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClientInfo {
    /// The client id.
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

type Answer = oneshot::Sender<Message>;

struct Client {
    channel: Arc<dyn Channel>,
    wire: Wire,
    requests: Requests<Answer>,
    transport: String,
    connected_since: SystemTime,
    served: u64,
}

struct Inner {
    pattern: HostPattern,
    options: ProxyOptions,
    clients: Mutex<HashMap<String, Client>>,
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
                options,
                clients: Mutex::new(HashMap::new()),
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

    /// Registers a connected client and returns its hostname.
    pub fn connect(
        &self,
        id: &str,
        channel: Arc<dyn Channel>,
        wire: Wire,
        transport: &str,
    ) -> String {
        let client = Client {
            channel,
            wire,
            requests: Requests::new(self.inner.options.max_pending_per_client),
            transport: transport.to_string(),
            connected_since: SystemTime::now(),
            served: 0,
        };
        self.clients().insert(id.to_string(), client);
        self.inner.pattern.hostname(id)
    }

    /// The client's channel closed: every request waiting on it fails (504).
    pub fn disconnect(&self, id: &str, reason: &CloseReason) {
        if let Some(mut client) = self.clients().remove(id) {
            client.requests.fail_all(reason);
            // Dropping the failed requests' senders answers their waiters with 504.
            while client.requests.poll_event().is_some() {}
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

    /// A message from client `id`: an answer to a request, or a request of its own (a
    /// request for another client's hostname is routed to that client; other egress is
    /// refused with 403). Malformed messages are dropped with a logged reason.
    pub fn from_client(&self, id: &str, bytes: &[u8]) {
        let message = match message::decode(bytes) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(client = id, error = %e, "dropped a malformed message");
                return;
            }
        };
        match &message.head {
            Head::Response { .. } => self.answer(id, message),
            Head::Request { .. } => {
                let proxy = self.clone();
                let from = id.to_string();
                tokio::spawn(async move { proxy.egress(&from, message).await });
            }
        }
    }

    fn answer(&self, id: &str, message: Message) {
        let Some(rid) = message
            .id
            .as_deref()
            .and_then(|r| r.parse::<RequestId>().ok())
        else {
            tracing::warn!(client = id, "dropped an answer without a valid request id");
            return;
        };
        let mut clients = self.clients();
        let Some(client) = clients.get_mut(id) else {
            return;
        };
        match client.requests.resolve(rid) {
            Resolved::Matched(waiter) => {
                client.served += 1;
                let _ = waiter.send(message);
            }
            Resolved::Unknown | Resolved::Repeated => {
                tracing::debug!(client = id, request = %rid, "ignored an answer to no pending request");
            }
        }
    }

    /// A request a client sent up its channel.
    async fn egress(&self, from: &str, mut request: Message) {
        let request_id = request.id.clone();
        let host = request
            .headers
            .iter()
            .find(|(k, _)| k == "host")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        if let Err(refusal) = self
            .inner
            .options
            .authorizer
            .authorize_egress(from, &request)
            .await
        {
            let mut response = Message::text_response(
                StatusCode::from_u16(refusal.status)
                    .unwrap_or(StatusCode::FORBIDDEN)
                    .as_u16(),
                &refusal.reason,
            );
            response.id = request_id;
            self.send_to(from, &response);
            return;
        }
        let response = match self.inner.pattern.client_id(&host) {
            Some(target) if target != from => {
                request.id = None;
                match self.forward(&target, request).await {
                    Ok(m) => m,
                    Err(r) => Message::text_response(r.status().as_u16(), "client unavailable"),
                }
            }
            Some(_) => Message::text_response(
                StatusCode::LOOP_DETECTED.as_u16(),
                "a client cannot call itself",
            ),
            None => self.inner.options.egress.perform(request).await,
        };
        let mut response = response;
        response.id = request_id;
        self.send_to(from, &response);
    }

    fn send_to(&self, id: &str, m: &Message) {
        let clients = self.clients();
        if let Some(client) = clients.get(id)
            && let Some(text) = encode_for(client.wire, m)
        {
            client.channel.send(text);
        }
    }

    /// Sends `request` to client `id` and waits for its answer.
    async fn forward(
        &self,
        id: &str,
        mut request: Message,
    ) -> Result<Message, Response<Full<Bytes>>> {
        let (tx, rx) = oneshot::channel();
        let timeout = self.inner.options.request_timeout;
        {
            let mut clients = self.clients();
            let Some(client) = clients.get_mut(id) else {
                return Err(gateway_timeout("no such client"));
            };
            let rid = match client.requests.insert(Instant::now(), timeout, tx) {
                Ok(rid) => rid,
                Err(_) => {
                    let mut r = plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Too many pending requests for this client",
                    );
                    r.headers_mut()
                        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                    return Err(r);
                }
            };
            request.id = Some(rid.to_string());
            let sent =
                encode_for(client.wire, &request).is_some_and(|text| client.channel.send(text));
            if !sent {
                client.requests.resolve(rid);
                return Err(gateway_timeout("the client's channel is closed"));
            }
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(gateway_timeout("the client disconnected")),
            Err(_) => {
                if let Some(client) = self.clients().get_mut(id) {
                    client.requests.handle_timeout(Instant::now());
                    while client.requests.poll_event().is_some() {}
                }
                Err(gateway_timeout("the client did not answer in time"))
            }
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
        let Some(id) = self.inner.pattern.client_id(&host) else {
            return Err(req);
        };
        Ok(self.ingress(&id, &host, req).await)
    }

    async fn ingress<B>(&self, id: &str, host: &str, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: http_body::Body + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if !self.clients().contains_key(id) {
            return gateway_timeout("no such client");
        }
        let (parts, body) = req.into_parts();
        let body = match Limited::new(body, self.inner.options.max_body_bytes)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return plain(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large");
            }
            Err(_) => return plain(StatusCode::BAD_REQUEST, "Bad Request: unreadable body"),
        };
        let mut headers: Vec<(String, Vec<u8>)> = parts
            .headers
            .iter()
            .filter(|(k, _)| !is_hop_by_hop(k.as_str()) && k.as_str() != message::REQ_ID_HEADER)
            .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
            .collect();
        if let Some(RemoteAddr(addr)) = parts.extensions.get::<RemoteAddr>() {
            let prior = parts
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .map(|v| format!("{v}, "))
                .unwrap_or_default();
            headers.retain(|(k, _)| k != "x-forwarded-for");
            headers.push((
                "x-forwarded-for".into(),
                format!("{prior}{}", addr.ip()).into_bytes(),
            ));
        }
        headers.retain(|(k, _)| k != "x-forwarded-host" && k != "x-forwarded-proto");
        headers.push(("x-forwarded-host".into(), host.as_bytes().to_vec()));
        headers.push((
            "x-forwarded-proto".into(),
            self.inner.options.scheme.as_bytes().to_vec(),
        ));
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
            .authorize_ingress(id, &request)
            .await
        {
            let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::FORBIDDEN);
            return plain(status, &refusal.reason);
        }
        match self.forward(id, request).await {
            Ok(answer) => to_http(answer),
            Err(response) => response,
        }
    }
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

/// The client's answer as an HTTP response; anything invalid in it becomes a 502.
fn to_http(answer: Message) -> Response<Full<Bytes>> {
    let Head::Response { status, .. } = answer.head else {
        return plain(
            StatusCode::BAD_GATEWAY,
            "Bad Gateway: the client answered with a request",
        );
    };
    let Ok(status) = StatusCode::from_u16(status) else {
        return plain(
            StatusCode::BAD_GATEWAY,
            "Bad Gateway: invalid status from the client",
        );
    };
    let mut response = Response::new(Full::new(answer.body));
    *response.status_mut() = status;
    for (name, value) in answer.headers {
        if is_hop_by_hop(&name) || name == "content-length" {
            continue;
        }
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
