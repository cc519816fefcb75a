//! # browserver-client
//!
//! A Rust client with one WebSocket-like API over WebSocket (session mode) or BrowserChannel,
//! modelled on node-browserchannel's `BCSocket`: [`connect`], [`Client::send`] returning an
//! acknowledgement future, [`Client::next_event`] (connecting, open, message, error, close),
//! [`Client::close`]. Messages are JSON values. Each connection is driven by a client-role
//! `browserver-core` [`Session`](browserver_core::Session).
//!
//! ```no_run
//! use browserver_client::{connect, Event, Options};
//! # async fn run() {
//! let client = connect("http://127.0.0.1:3572/channel", Options::default());
//! let ack = client.send(&serde_json::json!({"hello": "world"})); // queued until open
//! while let Some(event) = client.next_event().await {
//!     match event {
//!         Event::Open { .. } => println!("open"),
//!         Event::Message(value) => println!("got {value}"),
//!         Event::Close { reason, .. } => { println!("closed: {reason}"); break }
//!         _ => {}
//!     }
//! }
//! let _ = ack.await;
//! # }
//! ```
//!
//! Transports ([`Transport`]): `BrowserChannel` speaks the full client protocol (both test
//! channel phases with fallback to buffered `CI=1` mode behind a buffering proxy, host
//! prefixes, forward batching with retries under the same `RID`, back-channel reconnects with
//! `AID`, `terminate` on close, `OSID`/`OAID` on reconnect); `WebSocket` uses the server's
//! session mode (resumes a dropped connection without loss); `Auto` tries WebSocket first and
//! falls back to BrowserChannel.
//!
//! [`host::serve`] turns the client into an HTTP server behind a browserver proxy: any
//! `tower::Service` (an axum `Router`, say) answers the requests for `<id>.<domain>`.

// On docs.rs, every feature-gated item is marked with the feature it needs.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod bc;
pub mod host;
mod ws;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use rand::RngExt;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

pub use browserver_core::CloseReason;
use browserver_runtime::ClientEvent;

/// Which transport to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Transport {
    /// WebSocket first; BrowserChannel when the WebSocket handshake fails.
    #[default]
    Auto,
    /// Only WebSocket (session mode).
    WebSocket,
    /// Only BrowserChannel.
    BrowserChannel,
}

/// Client options.
#[derive(Clone, Debug)]
pub struct Options {
    /// Which transport. Default `Auto`.
    pub transport: Transport,
    /// The WebSocket URL for `Auto`/`WebSocket` when the connect URL is a BrowserChannel base;
    /// default: the same host with `ws://` and the path `/ws`.
    pub ws_url: Option<String>,
    /// Sent as `CVER` (BrowserChannel).
    pub app_version: Option<String>,
    /// Reconnect after a close that was not a stop or the application's own close. Default true.
    pub reconnect: bool,
    /// First reconnect delay; doubles per failed attempt up to `max_reconnect_delay`, with
    /// ±50 % jitter. Default 1 s.
    pub reconnect_delay: Duration,
    /// Upper bound of the reconnect delay. Default 30 s.
    pub max_reconnect_delay: Duration,
    /// Give up on a failing request at once instead of retrying. Default false.
    pub fail_fast: bool,
    /// Add a random session-affinity token to every request. Default true.
    pub affinity: bool,
    /// The affinity token's query parameter. Default `a`.
    pub affinity_param: String,
    /// Extra query parameters on every request.
    pub extra_params: Vec<(String, String)>,
    /// Use the server's host prefix (BrowserChannel "secondary domains"). Default false.
    pub use_host_prefix: bool,
    /// Extra headers on every request to the server (the WebSocket handshake, every
    /// BrowserChannel request): an `authorization` header for a reserved name, say.
    pub headers: Vec<(String, String)>,
    /// TLS for `https://` and `wss://` servers. Default: the operating system's certificate
    /// authorities ([`tls_config`] builds one that also trusts a private CA).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// A TLS configuration trusting the operating system's certificate authorities plus those in
/// the PEM file `ca` (a private CA, a self-signed certificate), for [`Options::tls`].
pub fn tls_config(ca: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    use browserver_transport_http::tls;
    let extra = match ca {
        Some(path) => tls::read_certificates(path)?,
        None => Vec::new(),
    };
    tls::client_config(tls::Roots::System, &extra)
}

impl Default for Options {
    fn default() -> Self {
        Options {
            transport: Transport::Auto,
            ws_url: None,
            app_version: None,
            reconnect: true,
            reconnect_delay: Duration::from_secs(1),
            max_reconnect_delay: Duration::from_secs(30),
            fail_fast: false,
            affinity: true,
            affinity_param: "a".into(),
            extra_params: Vec::new(),
            use_host_prefix: false,
            headers: Vec::new(),
            tls: None,
        }
    }
}

/// What the client reports, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A connection attempt started.
    Connecting {
        /// The transport being tried.
        transport: Transport,
    },
    /// The session is open.
    Open {
        /// The server's session id.
        session_id: String,
        /// The transport in use (`WebSocket` or `BrowserChannel`).
        transport: Transport,
    },
    /// A message from the server, in order.
    Message(Value),
    /// A binary message from the server, in order: a stream frame of host mode (WebSocket
    /// only; see [`host`]).
    Binary(Bytes),
    /// Something failed; a `Close` follows if the session ended.
    Error(String),
    /// The session ended. `reconnecting` says whether a new attempt follows.
    Close {
        /// Why.
        reason: CloseReason,
        /// Whether the client will reconnect.
        reconnecting: bool,
    },
}

/// Why a send did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The session ended before the server acknowledged the message.
    #[error("session closed before the message was acknowledged: {0}")]
    Closed(CloseReason),
    /// The value cannot be serialised.
    #[error("message cannot be serialised: {0}")]
    Serialize(String),
}

pub(crate) enum Command {
    Send {
        json: Bytes,
        ack: oneshot::Sender<Result<(), SendError>>,
    },
    Close,
}

/// A connected (or connecting) client. Dropping it closes the connection.
#[derive(Debug)]
pub struct Client {
    tx: mpsc::UnboundedSender<Command>,
    events: tokio::sync::Mutex<mpsc::UnboundedReceiver<Event>>,
}

/// Starts connecting to `url` (a BrowserChannel base such as `http://host:3572/channel`, or a
/// WebSocket URL `ws://host:3572/ws`) and returns at once; progress arrives as events.
pub fn connect(url: &str, options: Options) -> Client {
    let (tx, rx) = mpsc::unbounded_channel();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    tokio::spawn(run(url.to_string(), options, rx, events_tx));
    Client {
        tx,
        events: tokio::sync::Mutex::new(events_rx),
    }
}

impl Client {
    /// Sends a JSON value; allowed before the session is open (it goes with the first
    /// request). The [`Ack`] resolves once: `Ok` when the server acknowledged the message, or
    /// the reason it never will.
    pub fn send<T: Serialize + ?Sized>(&self, value: &T) -> Ack {
        let json = match browserver_transport_bc::codec::to_ascii_json(value) {
            Ok(j) => Bytes::from(j),
            Err(e) => {
                return Ack(AckInner::Ready(Some(Err(SendError::Serialize(
                    e.to_string(),
                )))));
            }
        };
        let (ack, rx) = oneshot::channel();
        if self.tx.send(Command::Send { json, ack }).is_err() {
            return Ack(AckInner::Ready(Some(Err(SendError::Closed(
                CloseReason::Closed(None),
            )))));
        }
        Ack(AckInner::Pending(rx))
    }

    /// Sends bytes as they are: on WebSocket, bytes starting with a control character (a
    /// stream frame) go as a binary message. Host mode's stream frames.
    pub(crate) fn send_bytes(&self, data: Bytes) -> Ack {
        let (ack, rx) = oneshot::channel();
        if self.tx.send(Command::Send { json: data, ack }).is_err() {
            return Ack(AckInner::Ready(Some(Err(SendError::Closed(
                CloseReason::Closed(None),
            )))));
        }
        Ack(AckInner::Pending(rx))
    }

    /// Closes the session (BrowserChannel: sends `terminate`); no reconnect follows.
    pub fn close(&self) {
        let _ = self.tx.send(Command::Close);
    }

    /// The next event; `None` once the client has finished (closed and not reconnecting).
    pub async fn next_event(&self) -> Option<Event> {
        self.events.lock().await.recv().await
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.tx.send(Command::Close);
    }
}

/// Resolves once with the outcome of a send.
#[must_use = "an Ack does nothing unless awaited; dropping it is fine if the outcome does not matter"]
pub struct Ack(AckInner);

enum AckInner {
    Ready(Option<Result<(), SendError>>),
    Pending(oneshot::Receiver<Result<(), SendError>>),
}

impl Future for Ack {
    type Output = Result<(), SendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let closed = || Err(SendError::Closed(CloseReason::Closed(None)));
        match &mut self.0 {
            AckInner::Ready(r) => Poll::Ready(r.take().unwrap_or_else(closed)),
            AckInner::Pending(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or_else(|_| closed())),
        }
    }
}

/// How one connection (one server session) ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The application closed the client.
    ByApplication,
    /// The server stopped the session: do not reconnect.
    Stopped,
    /// The session ended otherwise; reconnecting is allowed.
    Closed(CloseReason),
    /// The connection could not be established (the transport may be unavailable).
    Failed(String),
    /// The server refused this client (401/403): do not retry.
    Refused(String),
}

/// What both transport drivers keep around their client machine: the pending
/// acknowledgements, how the session ended, and the translation of the machine's events
/// into the application's.
pub(crate) struct Tracker {
    acks: std::collections::HashMap<u64, oneshot::Sender<Result<(), SendError>>>,
    transport: Transport,
    ended: Option<Ended>,
}

impl Tracker {
    pub(crate) fn new(transport: Transport) -> Tracker {
        Tracker {
            acks: std::collections::HashMap::new(),
            transport,
            ended: None,
        }
    }

    /// Files a send's outcome: its sequence number resolves `ack` later, an error at once.
    pub(crate) fn sent(
        &mut self,
        result: Result<u64, browserver_core::SendError>,
        ack: oneshot::Sender<Result<(), SendError>>,
    ) {
        match result {
            Ok(seq) => {
                self.acks.insert(seq, ack);
            }
            Err(e) => {
                let _ = ack.send(Err(SendError::Closed(CloseReason::Protocol(e.to_string()))));
            }
        }
    }

    /// Applies one of the machine's events.
    pub(crate) fn event(&mut self, link: &Link, event: ClientEvent) {
        match event {
            ClientEvent::Open { sid } => link.emit(Event::Open {
                session_id: sid,
                transport: self.transport,
            }),
            ClientEvent::Message(data) if browserver_core::stream::Frame::is_frame(&data) => {
                link.emit(Event::Binary(data));
            }
            ClientEvent::Message(data) => {
                let value = serde_json::from_slice(&data)
                    .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&data).into_owned()));
                link.emit(Event::Message(value));
            }
            ClientEvent::Acked(seq) => {
                if let Some(ack) = self.acks.remove(&seq) {
                    let _ = ack.send(Ok(()));
                }
            }
            ClientEvent::SendFailed(seq, reason) => {
                if let Some(ack) = self.acks.remove(&seq) {
                    let _ = ack.send(Err(SendError::Closed(reason)));
                }
            }
            ClientEvent::Error(e) => link.emit(Event::Error(e)),
            ClientEvent::OpenFailed(e) => {
                self.ended.get_or_insert(Ended::Failed(e));
            }
            ClientEvent::Refused { status, reason } => {
                let why = if reason.is_empty() {
                    format!("refused by the server (HTTP {status})")
                } else {
                    format!("refused by the server (HTTP {status}): {reason}")
                };
                self.ended.get_or_insert(Ended::Refused(why));
            }
            ClientEvent::Closed(CloseReason::Stopped) => {
                link.emit(Event::Error("Stopped by server".into()));
                self.ended.get_or_insert(Ended::Stopped);
            }
            ClientEvent::Closed(reason) => {
                self.ended.get_or_insert(Ended::Closed(reason));
            }
            _ => {}
        }
    }

    /// How the session ended (`by_application` wins).
    pub(crate) fn ended(&mut self, by_application: bool) -> Ended {
        if by_application {
            return Ended::ByApplication;
        }
        self.ended
            .take()
            .unwrap_or(Ended::Closed(CloseReason::Closed(None)))
    }
}

/// State shared by the outer loop and the transport drivers.
pub(crate) struct Link {
    pub(crate) options: Options,
    pub(crate) commands: mpsc::UnboundedReceiver<Command>,
    pub(crate) events: mpsc::UnboundedSender<Event>,
    /// Sends accepted while no session was running; they open the next one.
    pub(crate) queued: Vec<(Bytes, oneshot::Sender<Result<(), SendError>>)>,
    /// The previous BrowserChannel session (`OSID`, `OAID`).
    pub(crate) previous: Option<(String, Option<u64>)>,
    pub(crate) affinity: Option<String>,
    /// The TLS configuration, made when first needed.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Link {
    pub(crate) fn emit(&self, e: Event) {
        let _ = self.events.send(e);
    }

    /// The TLS configuration for `https://`/`wss://`: the options' own, or the system's roots.
    pub(crate) fn tls(&mut self) -> Result<Arc<rustls::ClientConfig>, String> {
        if let Some(c) = self.tls.clone().or_else(|| self.options.tls.clone()) {
            return Ok(c);
        }
        let config = tls_config(None)?;
        self.tls = Some(config.clone());
        Ok(config)
    }

    /// Query parameters common to every request.
    pub(crate) fn common_params(&self) -> Vec<(String, String)> {
        let mut p = self.options.extra_params.clone();
        if let Some(a) = &self.affinity {
            p.push((self.options.affinity_param.clone(), a.clone()));
        }
        p
    }
}

fn ws_url_for(url: &str, options: &Options) -> Option<String> {
    if url.starts_with("ws://") || url.starts_with("wss://") {
        return Some(url.to_string());
    }
    if let Some(ws) = &options.ws_url {
        return Some(ws.clone());
    }
    let mut u = url::Url::parse(url).ok()?;
    let scheme = if u.scheme() == "https" { "wss" } else { "ws" };
    u.set_scheme(scheme).ok()?;
    u.set_path("/ws");
    u.set_query(None);
    Some(u.to_string())
}

async fn run(
    url: String,
    options: Options,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<Event>,
) {
    let affinity = options
        .affinity
        .then(|| format!("{:x}", rand::rng().random::<u64>()));
    let is_ws = url.starts_with("ws://") || url.starts_with("wss://");
    let ws_url = ws_url_for(&url, &options);
    let mut link = Link {
        options,
        commands,
        events,
        queued: Vec::new(),
        previous: None,
        affinity,
        tls: None,
    };
    let mut attempt: u32 = 0;
    let mut ws_works = link.options.transport != Transport::BrowserChannel;
    loop {
        let transport = match link.options.transport {
            Transport::WebSocket => Transport::WebSocket,
            Transport::BrowserChannel => Transport::BrowserChannel,
            Transport::Auto if is_ws => Transport::WebSocket,
            Transport::Auto if ws_works => Transport::WebSocket,
            Transport::Auto => Transport::BrowserChannel,
        };
        link.emit(Event::Connecting { transport });
        let ended = match (transport, &ws_url) {
            (Transport::WebSocket, Some(ws)) => ws::run(&mut link, ws).await,
            (Transport::WebSocket, None) => Ended::Failed("no WebSocket URL".into()),
            _ => bc::run(&mut link, &url).await,
        };
        let (reason, may_reconnect, failed_attempt) = match ended {
            Ended::ByApplication => (CloseReason::Closed(None), false, false),
            Ended::Stopped => (CloseReason::Stopped, false, false),
            Ended::Refused(why) => {
                link.emit(Event::Error(why.clone()));
                (CloseReason::Protocol(why), false, false)
            }
            Ended::Closed(r) => (r, true, false),
            Ended::Failed(e) => {
                if transport == Transport::WebSocket
                    && link.options.transport == Transport::Auto
                    && !is_ws
                {
                    // Fall back to BrowserChannel at once.
                    ws_works = false;
                    link.emit(Event::Error(format!("WebSocket unavailable: {e}")));
                    continue;
                }
                link.emit(Event::Error(e.clone()));
                (CloseReason::Protocol(e), true, true)
            }
        };
        let reconnecting = may_reconnect && link.options.reconnect && !link.commands.is_closed();
        link.emit(Event::Close {
            reason: reason.clone(),
            reconnecting,
        });
        if !reconnecting {
            for (_, ack) in link.queued.drain(..) {
                let _ = ack.send(Err(SendError::Closed(reason.clone())));
            }
            return;
        }
        attempt = if failed_attempt { attempt + 1 } else { 0 };
        let base = link.options.reconnect_delay.as_secs_f64() * 2f64.powi(attempt.min(16) as i32);
        let capped = base.min(link.options.max_reconnect_delay.as_secs_f64());
        let delay = Duration::from_secs_f64(capped * rand::rng().random_range(0.5..1.5));
        // Keep accepting sends (queued for the next session) while waiting.
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                command = link.commands.recv() => match command {
                    Some(Command::Send { json, ack }) => link.queued.push((json, ack)),
                    Some(Command::Close) | None => {
                        link.emit(Event::Close { reason: CloseReason::Closed(None), reconnecting: false });
                        for (_, ack) in link.queued.drain(..) {
                            let _ = ack.send(Err(SendError::Closed(CloseReason::Closed(None))));
                        }
                        return;
                    }
                },
            }
        }
    }
}

/// The README's examples, compiled and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
