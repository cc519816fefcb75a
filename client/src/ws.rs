//! The WebSocket session-mode client around a client-role core session: sequenced frames,
//! acknowledgements, and resumption of a dropped connection (`?resume=SID&ack=N`).

use std::time::{Duration, Instant};

use browserver_core::{CloseReason, Config, PathMode, Payload, Role, Session, Transmit};
use browserver_transport_ws::codec::{self, CLOSE_CLOSED, CLOSE_STOPPED, Frame, SUBPROTOCOL};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{Command, Ended, Link, SendError, Tracker, Transport};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a dropped connection is retried before the session is given up.
const RESUME_FOR: Duration = Duration::from_secs(25);

async fn open(url: &str) -> Result<Ws, String> {
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    let value = SUBPROTOCOL
        .parse()
        .map_err(|_| "bad subprotocol".to_string())?;
    req.headers_mut().insert("sec-websocket-protocol", value);
    let (ws, response) = tokio::time::timeout(
        Duration::from_secs(10),
        // Without TCP_NODELAY, Nagle's algorithm holds small frames behind delayed ACKs
        // (~40 ms a round trip).
        tokio_tungstenite::connect_async_with_config(req, None, true),
    )
    .await
    .map_err(|_| "WebSocket connect timed out".to_string())?
    .map_err(|e| e.to_string())?;
    if response
        .headers()
        .get("sec-websocket-protocol")
        .is_none_or(|v| v != SUBPROTOCOL)
    {
        return Err("the server does not offer session mode".into());
    }
    Ok(ws)
}

/// The hello's session id, acknowledgement, whether it resumed, and the resume token.
type Hello = (String, Option<u64>, bool, String);

async fn hello(ws: &mut Ws) -> Result<Hello, String> {
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .map_err(|_| "no hello".to_string())?;
    match first {
        Some(Ok(WsMessage::Binary(b))) => match codec::decode(&b) {
            Ok(Frame::Hello {
                sid,
                ack,
                resumed,
                token,
            }) => {
                // Servers before resume tokens resumed by session id.
                let token = token.unwrap_or_else(|| sid.clone());
                Ok((sid, ack, resumed, token))
            }
            _ => Err("the first frame is not a hello".into()),
        },
        _ => Err("the connection closed before the hello".into()),
    }
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

struct Driver<'a> {
    link: &'a mut Link,
    core: Session,
    tracker: Tracker,
    sid: String,
    /// The secret that resumes this session (given only in our hello).
    resume_token: String,
}

pub(crate) async fn run(link: &mut Link, url: &str) -> Ended {
    let params = link.common_params();
    let mut ws = match open(&with_query(url, &params)).await {
        Ok(ws) => ws,
        Err(e) => return Ended::Failed(e),
    };
    let (sid, _, _, resume_token) = match hello(&mut ws).await {
        Ok(h) => h,
        Err(e) => return Ended::Failed(e),
    };
    let config = Config {
        keepalive_interval: Duration::MAX,
        session_timeout: Duration::MAX,
        attach_timeout: Duration::MAX,
        ack_delay: ACK_DELAY,
        ..Config::default()
    };
    let now = Instant::now();
    let mut d = Driver {
        core: Session::new(Role::Client, config, now),
        link,
        tracker: Tracker::new(Transport::WebSocket),
        sid,
        resume_token,
    };
    for (json, ack) in std::mem::take(&mut d.link.queued) {
        d.send(now, json, ack);
    }
    let _ = d.core.attach(now, PathMode::default());
    loop {
        let outcome = d.connection(&mut ws).await;
        match outcome {
            Some(ended) => return ended,
            None => {
                // The connection dropped: resume within the window.
                match d.resume(url, &params).await {
                    Ok(new_ws) => ws = new_ws,
                    Err(ended) => return ended,
                }
            }
        }
    }
}

/// How long an acknowledgement of the server's messages waits for company (more messages, or
/// a frame of ours to travel with): fewer frames when messages come in bursts.
const ACK_DELAY: Duration = Duration::from_millis(10);

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

impl Driver<'_> {
    fn send(&mut self, now: Instant, json: Bytes, ack: oneshot::Sender<Result<(), SendError>>) {
        self.tracker.send(&mut self.core, now, json, ack);
    }

    /// Serves one connection; `None` when it dropped without a close frame (resume), else how
    /// the session ended.
    async fn connection(&mut self, ws: &mut Ws) -> Option<Ended> {
        loop {
            if let Err(ended) = self.flush(ws).await {
                return Some(ended);
            }
            let deadline = self.core.poll_timeout();
            tokio::select! {
                _ = sleep_until(deadline) => self.core.handle_timeout(Instant::now()),
                command = self.link.commands.recv() => match command {
                    Some(Command::Send { json, ack }) => self.send(Instant::now(), json, ack),
                    Some(Command::Close) | None => {
                        let _ = ws.close(None).await;
                        let _ = self.core.close(Instant::now(), CloseReason::Closed(None));
                        let _ = self.flush(ws).await;
                        return Some(Ended::ByApplication);
                    }
                },
                frame = ws.next() => match frame {
                    Some(Ok(WsMessage::Binary(b))) => self.frame(&b),
                    Some(Ok(WsMessage::Close(close))) => {
                        let code = close.as_ref().map(|c| u16::from(c.code));
                        let reason = close.map(|c| c.reason.to_string()).unwrap_or_default();
                        let now = Instant::now();
                        return Some(match code {
                            Some(CLOSE_STOPPED) => {
                                let _ = self.core.close(now, CloseReason::Stopped);
                                let _ = self.flush(ws).await;
                                Ended::Stopped
                            }
                            Some(CLOSE_CLOSED) => {
                                let r = CloseReason::Closed(Some(reason));
                                let _ = self.core.close(now, r.clone());
                                let _ = self.flush(ws).await;
                                Ended::Closed(r)
                            }
                            _ => return None,
                        });
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return None,
                },
            }
        }
    }

    fn frame(&mut self, bytes: &Bytes) {
        let now = Instant::now();
        match codec::decode(bytes) {
            Ok(Frame::Open { seq }) => {
                let _ = self.core.handle_incoming(now, seq, Payload::Open);
            }
            Ok(Frame::Text { seq, text }) => {
                let _ = self.core.handle_incoming(now, seq, Payload::Message(text));
            }
            Ok(Frame::Binary { seq, data }) => {
                let _ = self.core.handle_incoming(now, seq, Payload::Message(data));
            }
            Ok(Frame::Stop { seq }) => {
                let _ = self.core.handle_incoming(now, seq, Payload::Stop);
            }
            Ok(Frame::Ack { upto }) => {
                let _ = self.core.handle_ack(now, upto);
            }
            Ok(Frame::Hello { .. }) | Err(_) => {
                tracing::debug!("unexpected frame from the server");
            }
        }
    }

    /// Writes what the core transmits, acknowledges what it released, reports events.
    async fn flush(&mut self, ws: &mut Ws) -> Result<(), Ended> {
        let mut wrote = false;
        while let Some(t) = self.core.poll_transmit() {
            if let Transmit::Batch { items, .. } = t {
                wrote = true;
                for item in items {
                    if let Payload::Message(json) = item.payload {
                        let frame = Frame::Text {
                            seq: item.seq,
                            text: json,
                        };
                        if ws
                            .feed(WsMessage::Binary(codec::encode(&frame)))
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
        }
        if let Some(upto) = self.core.poll_ack(wrote) {
            let _ = ws
                .feed(WsMessage::Binary(codec::encode(&Frame::Ack { upto })))
                .await;
        }
        let _ = ws.flush().await;
        let ended = self.tracker.drain(&mut self.core, self.link, &self.sid);
        match ended {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn resume(&mut self, url: &str, params: &[(String, String)]) -> Result<Ws, Ended> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(100);
        while started.elapsed() < RESUME_FOR {
            let mut p = params.to_vec();
            p.push(("resume".into(), self.resume_token.clone()));
            if let Some(ack) = self.core.ack_position() {
                p.push(("ack".into(), ack.to_string()));
            }
            // The resumption request carries the acknowledgement.
            let _ = self.core.poll_ack(true);
            if let Ok(mut ws) = open(&with_query(url, &p)).await {
                match hello(&mut ws).await {
                    Ok((_, ack, true, _)) => {
                        let now = Instant::now();
                        if let Some(ack) = ack {
                            let _ = self.core.handle_ack(now, ack);
                        }
                        let _ = self.core.attach(now, PathMode::default());
                        return Ok(ws);
                    }
                    Ok((_, _, false, _)) => {
                        // The server forgot the session: end the new one it made, start over.
                        let _ = ws.close(None).await;
                        let _ = self.core.close(Instant::now(), CloseReason::PeerClosed);
                        let _ = self.flush(&mut ws).await;
                        return Err(Ended::Closed(CloseReason::PeerClosed));
                    }
                    Err(_) => {}
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
        let _ = self.core.close(Instant::now(), CloseReason::TimedOut);
        while self.core.poll_transmit().is_some() {}
        self.tracker.drain(&mut self.core, self.link, &self.sid);
        Err(Ended::Closed(CloseReason::TimedOut))
    }
}
