//! The data plane between nodes: a request for a client or a session held by another node
//! goes to that node's internal listener, and its answer comes back, both streamed.
//!
//! - Ordinary requests share pooled HTTP/2 connections (one per node, multiplexed, with
//!   HTTP/2's flow control: a slow visitor slows its own stream only).
//! - An upgrade (a WebSocket resuming its session, or a visitor's WebSocket to a client) gets
//!   a fresh HTTP/1.1 connection, piped both ways once the owner switched protocols.
//! - Every hop carries the cluster's key, the visitor's `Host` and its address. The internal
//!   listener refuses a request without the key, and never forwards a hopped request again.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use browserver_transport_http::ProxyBody;
use bytes::{Buf, Bytes};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::{Cluster, NodeInfo};

/// The cluster's key.
pub(crate) const HOP_KEY: HeaderName = HeaderName::from_static("x-browserver-hop-key");
/// The visitor's `Host`.
pub(crate) const HOP_HOST: HeaderName = HeaderName::from_static("x-browserver-hop-host");
/// The visitor's address.
pub(crate) const HOP_CLIENT: HeaderName = HeaderName::from_static("x-browserver-hop-client");
/// Set on a hopped request's answer when this node does not hold the client it names (it
/// moved): the sender looks it up again.
pub(crate) const HOP_NOT_HERE: HeaderName = HeaderName::from_static("x-browserver-hop-not-here");
/// Where a node that took a reserved name tells the previous holder to let it go.
pub(crate) const EVICT_PATH: &str = "/_browserver/cluster/evict";

/// Most connections the internal listener holds at once (each HTTP/2 one multiplexes many
/// requests; each upgraded one is one WebSocket).
pub const MAX_INTERNAL_CONNECTIONS: usize = 4096;
/// Most requests at once on one HTTP/2 connection between nodes (a BrowserChannel back
/// channel held elsewhere keeps one open for as long as it hangs).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 16_384;
/// Bytes one request (or answer) may have in flight between two nodes before its reader
/// takes them: HTTP/2's per-stream window. It bounds what a stalled request holds.
pub const STREAM_WINDOW: u32 = 256 << 10;
/// HTTP/2's connection-wide window, at its maximum: only the per-stream windows bound the
/// hop. A smaller one would let stalled streams (a visitor's upload waiting for its client's
/// window) hold the whole connection, and with it the requests that would unstall them (that
/// client's own acknowledgements): a deadlock.
const CONNECTION_WINDOW: u32 = (1 << 31) - 1;
/// A node must accept a hop's connection within this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A request head from another node must arrive within this long.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A request that came from another node: answered here, never forwarded again.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hopped;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type HopBody = UnsyncBoxBody<Bytes, BoxError>;

/// Why a hop failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HopError {
    #[error("cannot connect to node {0}: {1}")]
    Connect(String, String),
    #[error("node {0} did not answer in time")]
    Timeout(String),
    #[error("node {0}: {1}")]
    Failed(String, String),
}

/// The pooled connections to other nodes.
pub(crate) struct Hops {
    h2: Client<HttpConnector, HopBody>,
    /// How long a forwarded request may wait for its answer's head: the proxy's request
    /// timeout and a margin (the owner answers 504 at its request timeout).
    head_timeout: OnceLock<Duration>,
}

impl Hops {
    pub(crate) fn new() -> Hops {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        let h2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            // A node that stops answering pings is dropped, with the requests on it.
            .http2_keep_alive_interval(Duration::from_secs(10))
            .http2_keep_alive_timeout(Duration::from_secs(10))
            .http2_keep_alive_while_idle(true)
            .http2_initial_stream_window_size(STREAM_WINDOW)
            .http2_initial_connection_window_size(CONNECTION_WINDOW)
            .build(connector);
        Hops {
            h2,
            head_timeout: OnceLock::new(),
        }
    }

    pub(crate) fn set_head_timeout(&self, request_timeout: Duration) {
        let _ = self
            .head_timeout
            .set(request_timeout.saturating_add(Duration::from_secs(10)));
    }

    fn head_timeout(&self) -> Duration {
        self.head_timeout
            .get()
            .copied()
            .unwrap_or(Duration::from_secs(60))
    }

    /// Forwards `req` to node `to` and relays its answer.
    pub(crate) async fn forward<B>(
        &self,
        to: &NodeInfo,
        key: &str,
        req: Request<B>,
    ) -> Result<Response<ProxyBody>, HopError>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let upgrade = req.headers().contains_key(http::header::UPGRADE);
        let (mut parts, body) = req.into_parts();
        let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
        let host = parts.headers.get(http::header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let client = browserver_runtime::client_addr(&parts.extensions);
        let target = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let mut headers = std::mem::take(&mut parts.headers);
        // What the hop carries of the visitor, in its own headers (a visitor's are dropped).
        for name in [HOP_KEY, HOP_HOST, HOP_CLIENT] {
            headers.remove(name);
        }
        headers.remove(http::header::HOST);
        if !upgrade {
            // HTTP/2 has no connection-specific headers.
            for name in [
                http::header::CONNECTION,
                HeaderName::from_static("keep-alive"),
                HeaderName::from_static("proxy-connection"),
                http::header::TRANSFER_ENCODING,
                http::header::TE,
            ] {
                headers.remove(name);
            }
        } else {
            headers.insert(
                http::header::HOST,
                HeaderValue::from_str(&to.address)
                    .map_err(|e| HopError::Failed(to.id.clone(), e.to_string()))?,
            );
        }
        let key = HeaderValue::from_str(key)
            .map_err(|e| HopError::Failed(to.id.clone(), e.to_string()))?;
        headers.insert(HOP_KEY, key);
        if let Some(host) = host {
            headers.insert(HOP_HOST, host);
        }
        if let Some(client) = client.and_then(|c| HeaderValue::from_str(&c.to_string()).ok()) {
            headers.insert(HOP_CLIENT, client);
        }
        let body: HopBody = body
            .map_frame(|frame| frame.map_data(|mut d| d.copy_to_bytes(d.remaining())))
            .map_err(Into::into)
            .boxed_unsync();
        let mut request = Request::new(body);
        *request.method_mut() = parts.method;
        *request.headers_mut() = headers;
        let node = to.id.clone();
        if upgrade {
            *request.uri_mut() = target.parse().map_err(|e: http::uri::InvalidUri| {
                HopError::Failed(node.clone(), e.to_string())
            })?;
            return self.forward_upgrade(to, request, on_upgrade).await;
        }
        *request.uri_mut() = format!("http://{}{target}", to.address)
            .parse()
            .map_err(|e: http::uri::InvalidUri| HopError::Failed(node.clone(), e.to_string()))?;
        let response = tokio::time::timeout(self.head_timeout(), self.h2.request(request))
            .await
            .map_err(|_| HopError::Timeout(node.clone()))?
            .map_err(|e| {
                if e.is_connect() {
                    HopError::Connect(node.clone(), e.to_string())
                } else {
                    HopError::Failed(node.clone(), e.to_string())
                }
            })?;
        Ok(response.map(ProxyBody::relayed))
    }

    /// An upgrade: a connection of its own, piped both ways once the owner switched.
    async fn forward_upgrade(
        &self,
        to: &NodeInfo,
        request: Request<HopBody>,
        on_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> Result<Response<ProxyBody>, HopError> {
        let node = to.id.clone();
        let stream = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect(to.address.as_str()),
        )
        .await
        .map_err(|_| HopError::Timeout(node.clone()))?
        .map_err(|e| HopError::Connect(node.clone(), e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, HopBody>(TokioIo::new(stream))
                .await
                .map_err(|e| HopError::Connect(node.clone(), e.to_string()))?;
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        let mut response = tokio::time::timeout(self.head_timeout(), sender.send_request(request))
            .await
            .map_err(|_| HopError::Timeout(node.clone()))?
            .map_err(|e| HopError::Failed(node.clone(), e.to_string()))?;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS
            && let Some(downstream) = on_upgrade
        {
            let upstream = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                let (Ok(down), Ok(up)) = tokio::join!(downstream, upstream) else {
                    return;
                };
                let _ =
                    tokio::io::copy_bidirectional(&mut TokioIo::new(down), &mut TokioIo::new(up))
                        .await;
            });
        }
        Ok(response.map(ProxyBody::relayed))
    }

    /// Tells node `to` that `name` is held elsewhere now.
    pub(crate) async fn evict(&self, to: &NodeInfo, key: &str, name: &str) -> Result<(), HopError> {
        let uri = format!(
            "http://{}{EVICT_PATH}?name={}",
            to.address,
            url::form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>()
        );
        let request = Request::post(uri)
            .header(HOP_KEY, key)
            .body(
                http_body_util::Empty::<Bytes>::new()
                    .map_err(|e| match e {})
                    .boxed_unsync(),
            )
            .map_err(|e| HopError::Failed(to.id.clone(), e.to_string()))?;
        let response = tokio::time::timeout(CONNECT_TIMEOUT * 2, self.h2.request(request))
            .await
            .map_err(|_| HopError::Timeout(to.id.clone()))?
            .map_err(|e| HopError::Failed(to.id.clone(), e.to_string()))?;
        match response.status() {
            StatusCode::NO_CONTENT => Ok(()),
            s => Err(HopError::Failed(to.id.clone(), s.to_string())),
        }
    }
}

/// Whether a hop's answer says the node does not hold the client (it moved).
pub(crate) fn is_not_here<B>(response: &Response<B>) -> bool {
    response.status() == StatusCode::MISDIRECTED_REQUEST
        && response.headers().contains_key(HOP_NOT_HERE)
}

/// A plain-text answer to a request that could not be forwarded, or a refused hop.
pub(crate) fn refusal(status: StatusCode, why: &str) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::from(http_body_util::Full::new(Bytes::from(
        why.to_string(),
    ))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Serves other nodes' hops until the process ends: HTTP/2 (prior knowledge) and HTTP/1.1
/// with upgrades, at most [`MAX_INTERNAL_CONNECTIONS`].
pub(crate) async fn serve_internal(
    listener: tokio::net::TcpListener,
    browserver: crate::Browserver,
    cluster: Cluster,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_INTERNAL_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "internal accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many connections from other nodes; refused one");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (browserver, cluster) = (browserver.clone(), cluster.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (browserver, cluster) = (browserver.clone(), cluster.clone());
                async move { Ok::<_, Infallible>(internal(req, &browserver, &cluster).await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            builder
                .http2()
                .timer(TokioTimer::new())
                .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
                .keep_alive_interval(Some(Duration::from_secs(20)))
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW);
            let _ = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
            drop(slot);
        });
    }
}

/// One request from another node.
async fn internal(
    mut req: Request<hyper::body::Incoming>,
    browserver: &crate::Browserver,
    cluster: &Cluster,
) -> Response<crate::Body> {
    let authentic = req
        .headers()
        .get(HOP_KEY)
        .and_then(|k| k.to_str().ok())
        .is_some_and(|k| cluster.is_key(k));
    if !authentic {
        return refusal(
            StatusCode::FORBIDDEN,
            "Forbidden: not a node of this cluster",
        )
        .map(crate::unrecorded);
    }
    let headers = req.headers_mut();
    headers.remove(HOP_KEY);
    if let Some(host) = headers.remove(HOP_HOST) {
        headers.insert(http::header::HOST, host);
    }
    let client = headers
        .remove(HOP_CLIENT)
        .and_then(|c| c.to_str().ok()?.parse::<std::net::SocketAddr>().ok());
    if let Some(client) = client {
        req.extensions_mut()
            .insert(browserver_runtime::ClientAddr(client));
    }
    req.extensions_mut().insert(Hopped);
    if req.uri().path() == EVICT_PATH {
        let name = crate::form_pairs(req.uri().query().unwrap_or(""))
            .into_iter()
            .find(|(k, _)| k == "name")
            .map(|(_, v)| v);
        if let Some(name) = name {
            cluster.dropped(&name);
            if browserver.proxy().evict(&name) {
                tracing::info!(client = %name, "another node took the name");
            }
        }
        let mut r = refusal(StatusCode::NO_CONTENT, "");
        *r.body_mut() = ProxyBody::empty();
        return r.map(crate::unrecorded);
    }
    // A client that moved away since the sender looked it up: answered before its body is
    // read, so the sender can look again.
    if let Some(name) = browserver.proxy().client_of(&req)
        && !browserver.proxy().holds(&name)
        && browserver.is_proxy()
    {
        let mut r = refusal(
            StatusCode::MISDIRECTED_REQUEST,
            "Misdirected Request: the client is not on this node",
        );
        r.headers_mut()
            .insert(HOP_NOT_HERE, HeaderValue::from_static("1"));
        return r.map(crate::unrecorded);
    }
    match browserver.route(req).await {
        Ok(response) => response,
        Err(_) => refusal(StatusCode::NOT_FOUND, "Not Found").map(crate::unrecorded),
    }
}
