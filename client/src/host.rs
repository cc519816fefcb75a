//! Host mode: serve a `tower::Service` at `<id>.<domain>` through a browserver proxy.
//!
//! With a proxy that speaks streams (browserver ≥ 0.2; the host asks with `brow=3`), every
//! request is a flow-controlled stream: the service gets the body as the visitor sends it
//! ([`Body`]), and its answer goes out as the service produces it — server-sent events,
//! large downloads, uploads of any size. A service accepts a WebSocket (or other) upgrade by
//! answering `101` and taking the [`Upgraded`] connection from the request's extensions;
//! [`forward_to`] does all of this for a local HTTP server (what `browserver expose` runs).
//! With an older proxy, requests and answers travel whole, as before.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use browserver_core::{RequestEvent, RequestId, Requests, Resolved, Unanswered};
use tokio::sync::oneshot;

use browserver_transport_http::message::{self, Head, Message};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use tokio::sync::watch;
use tower::{Service, ServiceExt};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use browserver_core::stream::{ResetCode, Side};
use browserver_runtime::streams::{self, FrameAck, FrameSink, Incoming, Mux, MuxConfig};
pub use browserver_transport_http::ProxyBody as Body;

use crate::{Client, Event, Options, Transport, connect};

mod forward;
pub use forward::{ANSWER_TIMEOUT, Forward, ForwardBody, ForwardError, forward_to};

/// A client serving HTTP through the proxy. Dropping it disconnects.
#[derive(Debug)]
pub struct Host {
    client: std::sync::Arc<Client>,
    hostname: watch::Receiver<Option<String>>,
    pending: Arc<Mutex<Requests<Waiter>>>,
    /// Wakes the host's task to re-arm its deadline timer.
    wake: Arc<tokio::sync::Notify>,
    /// Set (under the `pending` lock) once the connection is over.
    ended: Arc<std::sync::atomic::AtomicBool>,
    /// Why the connection ended for good (no reconnect follows), once it has.
    end_reason: Arc<Mutex<Option<browserver_core::CloseReason>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Where a fetch's answer goes: the proxy's response, or why there is none.
type Waiter = oneshot::Sender<Result<Message, Unanswered>>;

/// Why [`Host::fetch`] got no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The connection to the proxy ended first.
    #[error("the connection to the proxy closed")]
    Closed,
    /// No answer within the timeout.
    #[error("no answer in time")]
    TimedOut,
    /// Too many requests in flight.
    #[error("too many requests in flight")]
    TooMany,
    /// The proxy's answer is not a valid HTTP response.
    #[error("invalid response from the proxy")]
    Invalid,
}

/// How long [`Host::fetch`] waits.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

impl Host {
    /// Sends an HTTP request out through the proxy: to another client when its `Host` is that
    /// client's hostname, else to the server it names, as the proxy's egress policy allows
    /// (403 when refused, 502/504 when the target fails).
    pub async fn fetch(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, FetchError> {
        let (parts, body) = request.into_parts();
        // An https:// URL travels whole (absolute form): the proxy speaks TLS to it.
        let target = match parts.uri.scheme_str() {
            Some("https") => parts.uri.to_string(),
            _ => parts
                .uri
                .path_and_query()
                .map_or("/".to_string(), |p| p.to_string()),
        };
        let mut headers: Vec<(String, Vec<u8>)> = parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
            .collect();
        if !headers.iter().any(|(k, _)| k == "host")
            && let Some(authority) = parts.uri.authority()
        {
            headers.push(("host".into(), authority.as_str().as_bytes().to_vec()));
        }
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut pending = lock(&self.pending);
            // Checked under the lock the task fails everything under when it ends.
            if self.ended.load(std::sync::atomic::Ordering::Acquire) {
                return Err(FetchError::Closed);
            }
            pending
                .insert(Instant::now(), FETCH_TIMEOUT, tx)
                .map_err(|_| FetchError::TooMany)?
        };
        let message = Message {
            id: Some(id.to_string()),
            head: Head::Request {
                method: parts.method.to_string(),
                target,
            },
            headers,
            body,
        };
        self.wake.notify_one();
        drop(self.client.send(&message::encode_json(&message)));
        // The deadline is the request table's (one clock): the host's task answers
        // `TimedOut` when it passes.
        let answer = match rx.await {
            Ok(Ok(m)) => m,
            Ok(Err(Unanswered::TimedOut)) => return Err(FetchError::TimedOut),
            Ok(Err(_)) | Err(_) => return Err(FetchError::Closed),
        };
        let Head::Response { status, .. } = answer.head else {
            return Err(FetchError::Invalid);
        };
        let mut response = http::Response::builder().status(status);
        for (k, v) in &answer.headers {
            response = response.header(k.as_str(), v.as_slice());
        }
        response.body(answer.body).map_err(|_| FetchError::Invalid)
    }

    /// The hostname as it changes: `None` while disconnected, the proxy's name for this
    /// client once (re)connected (a reconnect may bring a new name).
    pub fn hostnames(&self) -> watch::Receiver<Option<String>> {
        self.hostname.clone()
    }

    /// Why the connection ended for good — a refusal (`refused by the server (HTTP 403): …`),
    /// a stop — once it has; `None` while it is up or reconnecting.
    pub fn end_reason(&self) -> Option<browserver_core::CloseReason> {
        lock(&self.end_reason).clone()
    }

    /// Waits until the proxy has told this client its hostname (`<id>.<domain>`); `None` if
    /// the connection ended first.
    pub async fn hostname(&self) -> Option<String> {
        let mut rx = self.hostname.clone();
        rx.wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|h| h.clone())
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Answers still being computed hold the client too: close it explicitly.
        self.client.close();
        self.task.abort();
    }
}

/// The connection a service takes over by answering `101 Switching Protocols` to an upgrade
/// request: `req.extensions().get::<Upgraded>()` and [`take`](Upgraded::take) it before
/// answering; once the `101` is sent, its bytes are the visitor's connection.
#[derive(Debug, Clone)]
pub struct Upgraded(Arc<Mutex<Option<tokio::io::DuplexStream>>>);

impl Upgraded {
    /// The connection (once; later calls get `None`).
    pub fn take(&self) -> Option<tokio::io::DuplexStream> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// How the host sends stream frames: binary over WebSocket, base64 in a JSON object over
/// BrowserChannel.
struct HostSink {
    client: Arc<Client>,
    browserchannel: bool,
}

impl FrameSink for HostSink {
    fn send_frame(&self, frame: Bytes) -> FrameAck {
        let ack = if self.browserchannel {
            self.client
                .send(&serde_json::json!({ "f": BASE64.encode(&frame) }))
        } else {
            self.client.send_bytes(frame)
        };
        Box::pin(async move { ack.await.is_ok() })
    }

    fn abort(&self, why: &str) {
        tracing::warn!(error = %why, "the proxy broke the stream protocol");
    }
}

/// Connects to the proxy at `url` (BrowserChannel base or WebSocket URL, as for
/// [`connect`]) and answers every HTTP request for this client's hostname with
/// `service`. Streams are requested (bodies of any size, as they come; upgrades); with a
/// proxy that does not speak them, the richer whole-message form (binary bodies and
/// repeated headers survive).
pub fn serve<S, B>(url: &str, mut options: Options, service: S) -> Host
where
    S: Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::fmt::Display + Send,
{
    // Streams, unless the caller asked for a form itself (`brow=2`: whole messages).
    if !options.extra_params.iter().any(|(k, _)| k == "brow") {
        options.extra_params.push(("brow".into(), "3".into()));
    }
    let client = std::sync::Arc::new(connect(url, options));
    let (hostname_tx, hostname) = watch::channel(None);
    let host_client = client.clone();
    let pending = Arc::new(Mutex::new(Requests::<Waiter>::new(1024)));
    let answers = pending.clone();
    let wake = Arc::new(tokio::sync::Notify::new());
    let woken = wake.clone();
    let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let over = ended.clone();
    let end_reason = Arc::new(Mutex::new(None));
    let final_reason = end_reason.clone();
    let task = tokio::spawn(async move {
        // The stream task of the current session, and the streams the proxy opens on it.
        let mut mux: Option<Mux> = None;
        let mut incoming: Option<tokio::sync::mpsc::Receiver<Incoming>> = None;
        loop {
            let next = lock(&answers).poll_timeout();
            let notified = woken.notified();
            let event = tokio::select! {
                event = client.next_event() => event,
                Some(stream) = async {
                    match incoming.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => None,
                    }
                } => {
                    tokio::spawn(answer_stream(service.clone(), stream));
                    continue;
                }
                () = sleep_until(next) => {
                    let mut pending = lock(&answers);
                    pending.handle_timeout(Instant::now());
                    while let Some(RequestEvent::Failed { value, reason, .. }) = pending.poll_event() {
                        let _ = value.send(Err(reason));
                    }
                    continue;
                }
                () = notified => continue,
            };
            let Some(event) = event else {
                break;
            };
            let value = match event {
                Event::Open { transport, .. } => {
                    // A new session: streams of an earlier one are over.
                    if let Some(old) = mux.take() {
                        old.close();
                    }
                    let sink = HostSink {
                        client: client.clone(),
                        browserchannel: transport == Transport::BrowserChannel,
                    };
                    let (m, rx) = streams::spawn(Side::Client, MuxConfig::default(), sink);
                    mux = Some(m);
                    incoming = Some(rx);
                    continue;
                }
                Event::Close {
                    reason,
                    reconnecting,
                } => {
                    if !reconnecting {
                        *lock(&final_reason) = Some(reason);
                    }
                    let _ = hostname_tx.send(None);
                    if let Some(old) = mux.take() {
                        old.close();
                    }
                    incoming = None;
                    continue;
                }
                Event::Binary(frame) => {
                    if let Some(m) = &mux {
                        m.frame_in(frame).await;
                    }
                    continue;
                }
                Event::Message(value) => value,
                _ => continue,
            };
            if let Some(frame) = value
                .get("f")
                .and_then(Value::as_str)
                .and_then(|f| BASE64.decode(f).ok())
            {
                if let Some(m) = &mux {
                    m.frame_in(Bytes::from(frame)).await;
                }
                continue;
            }
            let text = match value {
                Value::String(s) => s,
                other => other.to_string(),
            };
            if let Some(name) = hello_hostname(&text) {
                let _ = hostname_tx.send(Some(name));
                continue;
            }
            let request = match message::decode(text.as_bytes()) {
                Ok(
                    m @ Message {
                        head: Head::Request { .. },
                        ..
                    },
                ) => m,
                Ok(response) => {
                    resolve(&answers, response);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dropped a malformed message from the proxy");
                    continue;
                }
            };
            let (client, service) = (client.clone(), service.clone());
            tokio::spawn(async move { answer(&client, service, request).await });
        }
        if let Some(old) = mux.take() {
            old.close();
        }
        // The connection is over: every fetch still waiting fails now.
        let mut pending = lock(&answers);
        over.store(true, std::sync::atomic::Ordering::Release);
        pending.fail_all(&browserver_core::CloseReason::Closed(None));
        while let Some(RequestEvent::Failed { value, reason, .. }) = pending.poll_event() {
            let _ = value.send(Err(reason));
        }
    });
    Host {
        client: host_client,
        hostname,
        pending,
        wake,
        ended,
        end_reason,
        task,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

fn resolve(pending: &Mutex<Requests<Waiter>>, response: Message) {
    let Some(id) = response
        .id
        .as_deref()
        .and_then(|i| i.parse::<RequestId>().ok())
    else {
        return;
    };
    let mut pending = pending.lock().unwrap_or_else(|e| e.into_inner());
    if let Resolved::Matched(tx) = pending.resolve(id) {
        let _ = tx.send(Ok(response));
    }
}

fn hello_hostname(text: &str) -> Option<String> {
    let v: Value = serde_json::from_str(text).ok()?;
    v.get("hello")?
        .get("hostname")?
        .as_str()
        .map(str::to_string)
}

/// Answers one stream the proxy opened: the service gets the request with its body as it
/// arrives; its answer goes back as it produces it. A `101` answer to an upgrade request
/// joins the [`Upgraded`] connection to the stream.
async fn answer_stream<S, B>(service: S, incoming: Incoming)
where
    S: Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>,
    S::Future: Send,
    B: http_body::Body + Send,
    B::Data: Send,
    B::Error: std::fmt::Display + Send,
{
    let Incoming { head, end, stream } = incoming;
    let (mut send, recv) = stream.split();
    let request = match message::decode_head(&head) {
        Ok(m) => m,
        Err(_) => {
            let answer = Message::text_response(400, "the proxy sent an invalid request head");
            return respond_whole(&mut send, answer).await;
        }
    };
    let upgrading = request
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("upgrade"));
    let (body, recv) = if end || upgrading {
        (Body::empty(), Some(recv))
    } else {
        (Body::stream(recv, None), None)
    };
    let Some(mut req) = to_http_with(request, body) else {
        let answer = Message::text_response(400, "the proxy sent a request that is not valid HTTP");
        return respond_whole(&mut send, answer).await;
    };
    let mut ours = None;
    if upgrading {
        let (theirs, mine) = tokio::io::duplex(64 << 10);
        req.extensions_mut()
            .insert(Upgraded(Arc::new(Mutex::new(Some(theirs)))));
        ours = Some(mine);
    }
    let response = match service.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    let head = message::encode_head(&Message::from_response(&parts, Bytes::new()));
    if parts.status == http::StatusCode::SWITCHING_PROTOCOLS
        && let (Some(io), Some(recv)) = (ours, recv)
    {
        send.respond(head, false);
        streams::pipe(io, send, recv).await;
        return;
    }
    let end = body.is_end_stream();
    send.respond(head, end);
    if end {
        return;
    }
    let mut body = std::pin::pin!(body);
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                let Ok(mut data) = frame.into_data() else {
                    continue; // trailers are not forwarded
                };
                let len = bytes::Buf::remaining(&data);
                let data = bytes::Buf::copy_to_bytes(&mut data, len);
                // The last chunk carries the end (one frame fewer for small answers).
                let written = if body.is_end_stream() {
                    send.write_last(data).await
                } else {
                    send.write(data).await
                };
                if written.is_err() {
                    return; // the visitor went away: the stream was reset
                }
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "the service's body failed; the answer is cut off");
                return send.reset(ResetCode::Cancel);
            }
            None => return send.finish(),
        }
    }
}

/// Answers a stream with a whole message.
async fn respond_whole(send: &mut streams::SendStream, answer: Message) {
    let body = answer.body.clone();
    send.respond(message::encode_head(&answer), body.is_empty());
    if !body.is_empty() && send.write(body).await.is_ok() {
        send.finish();
    }
}

async fn answer<S, B>(client: &Client, service: S, request: Message)
where
    S: Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>,
    B: http_body::Body,
    B::Error: std::fmt::Display,
{
    let id = request.id.clone();
    let response = match to_http(request) {
        Some(req) => match service.oneshot(req).await {
            Ok(response) => from_http(response).await,
            Err(never) => match never {},
        },
        None => Message::text_response(400, "the proxy sent a request that is not valid HTTP"),
    };
    let response = Message { id, ..response };
    drop(client.send(&message::encode_json(&response)));
}

fn to_http(m: Message) -> Option<http::Request<Body>> {
    let body = Body::from(Full::new(m.body.clone()));
    to_http_with(m, body)
}

fn to_http_with(m: Message, body: Body) -> Option<http::Request<Body>> {
    let Head::Request { method, target } = m.head else {
        return None;
    };
    let mut req = http::Request::builder()
        .method(method.as_str())
        .uri(target.as_str());
    for (k, v) in &m.headers {
        req = req.header(k.as_str(), v.as_slice());
    }
    req.body(body).ok()
}

async fn from_http<B>(response: http::Response<B>) -> Message
where
    B: http_body::Body,
    B::Error: std::fmt::Display,
{
    let (parts, body) = response.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Message::text_response(500, &format!("the service's body failed: {e}")),
    };
    Message::from_response(&parts, body)
}
