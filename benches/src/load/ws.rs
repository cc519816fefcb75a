//! WebSocket sessions in three dialects: plain frames (one text frame per message: our
//! server without a subprotocol, a bare tokio-tungstenite echo server), our session mode
//! (`browserver.session.v1`: sequence numbers and acknowledgements), and Socket.IO 4 over
//! Engine.IO's WebSocket transport (`42["echo",…]` events, answering the server's pings).

use std::sync::Arc;
use std::time::Duration;

use browserver_transport_ws::codec::{self, Frame, SUBPROTOCOL};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{Ctx, Echoes};

/// How messages are put in frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// One text frame per message.
    Plain,
    /// browserver session mode.
    Session,
    /// Socket.IO 4 (Engine.IO 4, WebSocket transport); `ctx.url` is the server's origin.
    SocketIo,
}

/// One session: connects, echoes until told to stop, closes.
pub async fn session(ctx: Arc<Ctx>, dialect: Dialect) -> Echoes {
    let mut echoes = Echoes::default();
    let url = match dialect {
        Dialect::SocketIo => format!(
            "{}/socket.io/?EIO=4&transport=websocket",
            ctx.url.replacen("http", "ws", 1)
        ),
        _ => ctx.url.clone(),
    };
    let Ok(mut req) = url.into_client_request() else {
        ctx.error();
        return echoes;
    };
    if dialect == Dialect::Session
        && let Ok(v) = SUBPROTOCOL.parse()
    {
        req.headers_mut().insert("sec-websocket-protocol", v);
    }
    let connected = {
        let Ok(_permit) = ctx.opening.acquire().await else {
            return echoes;
        };
        tokio_tungstenite::connect_async_with_config(req, None, true).await
    };
    let Ok((ws, _)) = connected else {
        ctx.error();
        return echoes;
    };
    let (mut tx, mut rx) = ws.split();
    let frame = |ctx: &Ctx, i: u64| {
        let text = ctx.message(i);
        match dialect {
            Dialect::Plain => Message::Text(text.into()),
            Dialect::Session => Message::Binary(codec::encode(&Frame::Text {
                seq: i,
                text: Bytes::from(text),
            })),
            Dialect::SocketIo => Message::Text(format!("42[\"echo\",{text}]").into()),
        }
    };
    if dialect == Dialect::SocketIo {
        // Engine.IO open packet, then connect to the main namespace.
        if !matches!(rx.next().await, Some(Ok(Message::Text(t))) if t.starts_with('0'))
            || tx.send(Message::Text("40".into())).await.is_err()
        {
            ctx.error();
            return echoes;
        }
    } else {
        echoes.open(&ctx);
        for _ in 0..ctx.window {
            if tx.send(frame(&ctx, echoes.sent)).await.is_err() {
                ctx.error();
                return echoes;
            }
            echoes.sent += 1;
        }
    }
    loop {
        if !ctx.sending() && echoes.in_flight() == 0 || ctx.stopped() {
            break;
        }
        let next = tokio::select! {
            m = rx.next() => m,
            _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
        };
        let Some(Ok(m)) = next else {
            if ctx.sending() {
                ctx.error();
            }
            break;
        };
        let echoed = match (dialect, &m) {
            (Dialect::Plain, Message::Text(t)) => echoes.on_echo(&ctx, t.as_str()),
            (Dialect::Session, Message::Binary(b)) => match codec::decode(b) {
                Ok(Frame::Text { seq, text }) => {
                    let ok = echoes.on_echo(&ctx, &String::from_utf8_lossy(&text));
                    let _ = tx
                        .feed(Message::Binary(codec::encode(&Frame::Ack { upto: seq })))
                        .await;
                    ok
                }
                _ => false,
            },
            (Dialect::SocketIo, Message::Text(t)) => {
                let t = t.as_str();
                if t == "2" {
                    let _ = tx.send(Message::Text("3".into())).await;
                    false
                } else if let Some(event) = t.strip_prefix("42") {
                    serde_json::from_str::<(String, Box<RawValue>)>(event)
                        .is_ok_and(|(_, v)| echoes.on_echo(&ctx, v.get()))
                } else if t.starts_with("40") && !echoes.opened {
                    echoes.open(&ctx);
                    for _ in 0..ctx.window {
                        let _ = tx.feed(frame(&ctx, echoes.sent)).await;
                        echoes.sent += 1;
                    }
                    let _ = tx.flush().await;
                    false
                } else {
                    false
                }
            }
            _ => false,
        };
        if echoed && ctx.sending() {
            if tx.send(frame(&ctx, echoes.sent)).await.is_err() {
                ctx.error();
                break;
            }
            echoes.sent += 1;
        }
    }
    let _ = tx.close().await;
    echoes
}
