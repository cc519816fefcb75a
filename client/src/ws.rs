//! WebSocket session mode for the client. The protocol — the hello, sequenced frames,
//! acknowledgements, resumption of a dropped connection — is `browserver-transport-ws`'s
//! sans-IO [`ClientMachine`]; this file only opens connections, moves frames and runs its
//! one timer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use browserver_transport_ws::client::{ClientConfig, ClientInput, ClientMachine, ClientTransmit};
use browserver_transport_ws::codec::SUBPROTOCOL;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{Command, Ended, Link, SendError, Tracker, Transport};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a closing client waits for the server's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
type Connecting = Pin<Box<dyn Future<Output = Result<Ws, OpenError>> + Send>>;

/// Why a connection attempt failed.
enum OpenError {
    /// The server refused the handshake (401/403) with this reason.
    Refused(u16, String),
    /// Anything else (it may pass).
    Failed(String),
}

/// Opens a connection offering session mode, with the extra `headers` and, for `wss://`,
/// `tls`. No timeout here: the machine's deadline abandons it.
async fn open(
    url: String,
    headers: Vec<(String, String)>,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Ws, OpenError> {
    let failed = |e: String| OpenError::Failed(e);
    let mut req = url
        .into_client_request()
        .map_err(|e| failed(e.to_string()))?;
    let value = SUBPROTOCOL
        .parse()
        .map_err(|_| failed("bad subprotocol".to_string()))?;
    req.headers_mut().insert("sec-websocket-protocol", value);
    for (k, v) in &headers {
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            http::HeaderValue::from_str(v),
        ) else {
            return Err(failed(format!("invalid header {k:?}")));
        };
        req.headers_mut().append(name, value);
    }
    // Without TCP_NODELAY, Nagle's algorithm holds small frames behind delayed ACKs
    // (~40 ms a round trip).
    let connector = tls.map(tokio_tungstenite::Connector::Rustls);
    let (ws, response) =
        tokio_tungstenite::connect_async_tls_with_config(req, None, true, connector)
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(r)
                    if matches!(r.status().as_u16(), 401 | 403) =>
                {
                    let body = r.body().as_deref().unwrap_or_default();
                    let reason = String::from_utf8_lossy(body);
                    let reason = reason.trim().lines().next().unwrap_or("").trim();
                    OpenError::Refused(r.status().as_u16(), reason.chars().take(200).collect())
                }
                e => failed(e.to_string()),
            })?;
    if response
        .headers()
        .get("sec-websocket-protocol")
        .is_none_or(|v| v != SUBPROTOCOL)
    {
        return Err(failed("the server does not offer session mode".into()));
    }
    Ok(ws)
}

fn with_query(url: &str, params: &[(String, String)]) -> String {
    if params.is_empty() {
        return url.to_string();
    }
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        ser.append_pair(k, v);
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{}", ser.finish())
}

/// Runs one session-mode session from its first connection to its end.
pub(crate) async fn run(link: &mut Link, url: &str) -> Ended {
    let params = link.common_params();
    let headers = link.options.headers.clone();
    let tls = if url.starts_with("wss://") {
        match link.tls() {
            Ok(tls) => Some(tls),
            Err(e) => return Ended::Failed(format!("TLS: {e}")),
        }
    } else {
        None
    };
    let now = Instant::now();
    let mut machine = ClientMachine::new(ClientConfig::default(), now);
    let mut tracker = Tracker::new(Transport::WebSocket);
    for (json, ack) in std::mem::take(&mut link.queued) {
        tracker.sent(machine.send(now, json), ack);
    }
    machine.open(now);
    let mut ws: Option<Ws> = None;
    let mut connecting: Option<Connecting> = None;
    let sleep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sleep);
    let mut armed = None;
    let mut by_application = false;
    loop {
        // Do what the machine asks, then tell the application what it learned.
        while let Some(t) = machine.poll_transmit() {
            match t {
                ClientTransmit::Connect { params: extra } => {
                    ws = None;
                    let mut all = params.clone();
                    all.extend(extra);
                    connecting = Some(Box::pin(open(
                        with_query(url, &all),
                        headers.clone(),
                        tls.clone(),
                    )));
                }
                ClientTransmit::Frame(message) => {
                    if let Some(w) = ws.as_mut()
                        && let Err(e) = w.feed(message).await
                    {
                        ws = None;
                        machine.handle_input(Instant::now(), ClientInput::Lost(e.to_string()));
                    }
                }
                ClientTransmit::Close => {
                    connecting = None;
                    if let Some(mut w) = ws.take() {
                        let _ = w.close(None).await;
                        // The close handshake: read until the server's close (briefly). Dropping
                        // the socket with unread data in it would reset the connection, and a
                        // reset can discard our close frame before the server reads it (it
                        // would then wait for a resume until the session timeout).
                        let _ = tokio::time::timeout(CLOSE_WAIT, async {
                            while let Some(Ok(_)) = w.next().await {}
                        })
                        .await;
                    }
                }
                _ => {}
            }
        }
        if let Some(w) = ws.as_mut()
            && let Err(e) = w.flush().await
        {
            ws = None;
            machine.handle_input(Instant::now(), ClientInput::Lost(e.to_string()));
            continue;
        }
        while let Some(e) = machine.poll_event() {
            tracker.event(link, e);
        }
        if machine.is_closed() {
            break;
        }
        let deadline = machine.poll_timeout();
        if deadline != armed {
            if let Some(at) = deadline {
                sleep.as_mut().reset(tokio::time::Instant::from_std(at));
            }
            armed = deadline;
        }
        tokio::select! {
            command = link.commands.recv() => match command {
                Some(Command::Send { json, ack }) => send(&mut machine, &mut tracker, json, ack),
                Some(Command::Close) | None => {
                    by_application = true;
                    machine.close(Instant::now());
                }
            },
            Some(result) = async {
                match connecting.as_mut() {
                    Some(c) => Some(c.await),
                    None => None,
                }
            } => {
                connecting = None;
                let input = match result {
                    Ok(w) => {
                        ws = Some(w);
                        ClientInput::Connected
                    }
                    Err(OpenError::Failed(e)) => ClientInput::Lost(e),
                    Err(OpenError::Refused(status, reason)) => {
                        ClientInput::Refused { status, reason }
                    }
                };
                machine.handle_input(Instant::now(), input);
            }
            Some(frame) = async {
                match ws.as_mut() {
                    Some(w) => Some(w.next().await),
                    None => None,
                }
            } => {
                let input = match frame {
                    Some(Ok(message)) => ClientInput::Frame(message),
                    Some(Err(e)) => ClientInput::Lost(e.to_string()),
                    None => ClientInput::Lost("connection closed".into()),
                };
                if matches!(input, ClientInput::Lost(_)) {
                    ws = None;
                }
                machine.handle_input(Instant::now(), input);
            }
            () = &mut sleep, if armed.is_some() => {
                armed = None;
                machine.handle_timeout(Instant::now());
            }
        }
    }
    tracker.ended(by_application)
}

fn send(
    machine: &mut ClientMachine,
    tracker: &mut Tracker,
    json: Bytes,
    ack: oneshot::Sender<Result<(), SendError>>,
) {
    tracker.sent(machine.send(Instant::now(), json), ack);
}
