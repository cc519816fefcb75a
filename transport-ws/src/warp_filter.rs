//! The warp filter: warp performs the upgrade; frames are handed to the same session tasks.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use warp::Filter;
use warp::ws::Message as WarpMessage;

use crate::codec::SUBPROTOCOL;
use browserver_runtime::ClientAddr;

use crate::endpoint::WsEndpoint;

fn to_tungstenite(m: WarpMessage) -> WsMessage {
    if m.is_text() {
        WsMessage::Text(m.to_str().unwrap_or("").into())
    } else if m.is_ping() {
        WsMessage::Ping(bytes::Bytes::copy_from_slice(m.as_bytes()))
    } else if m.is_pong() {
        WsMessage::Pong(bytes::Bytes::copy_from_slice(m.as_bytes()))
    } else if m.is_close() {
        WsMessage::Close(m.close_frame().map(|(code, reason)| CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        }))
    } else {
        WsMessage::Binary(m.into_bytes())
    }
}

fn to_warp(m: WsMessage) -> WarpMessage {
    match m {
        WsMessage::Text(t) => WarpMessage::text(t.as_str()),
        WsMessage::Binary(b) => WarpMessage::binary(b),
        WsMessage::Ping(p) => WarpMessage::ping(p),
        WsMessage::Pong(p) => WarpMessage::pong(p),
        WsMessage::Close(Some(f)) => {
            WarpMessage::close_with(u16::from(f.code), f.reason.as_str().to_string())
        }
        WsMessage::Close(None) | WsMessage::Frame(_) => WarpMessage::close(),
    }
}

impl WsEndpoint {
    /// A warp filter that upgrades the request (mount it under the path you want, e.g.
    /// `warp::path("ws").and(endpoint.filter())`).
    pub fn filter(
        &self,
    ) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection>
    + Clone
    + Send
    + Sync
    + 'static
    + use<> {
        let endpoint = self.clone();
        warp::ws()
            .and(warp::header::headers_cloned())
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .and(warp::addr::remote())
            .then(
                move |ws: warp::ws::Ws, headers: http::HeaderMap, query: String, remote| {
                    let endpoint = endpoint.clone();
                    async move {
                        let offered = headers
                            .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
                            .iter()
                            .any(|v| {
                                v.to_str()
                                    .is_ok_and(|s| s.split(',').any(|t| t.trim() == SUBPROTOCOL))
                            });
                        let mut req = http::Request::new(());
                        *req.headers_mut() = headers;
                        if let Ok(uri) = format!("/?{query}").parse() {
                            *req.uri_mut() = uri;
                        }
                        if let Some(addr) = remote {
                            req.extensions_mut().insert(ClientAddr(addr));
                        }
                        let (parts, _) = req.into_parts();
                        let target = match endpoint.target_for_warp(&parts, offered).await {
                            Ok(target) => target,
                            Err(refused) => {
                                let (parts, body) = refused.into_parts();
                                let bytes = http_body_util::BodyExt::collect(body)
                                    .await
                                    .map(|c| c.to_bytes())
                                    .unwrap_or_default();
                                return warp::Reply::into_response(
                                    warp::http::Response::from_parts(parts, bytes),
                                );
                            }
                        };
                        let options = endpoint.options().clone();
                        let reply = ws
                            .max_frame_size(options.max_frame_size)
                            .max_message_size(options.max_message_size)
                            .on_upgrade(move |socket| async move {
                                let socket = socket.map(|r| r.map(to_tungstenite)).with(
                                    |m: WsMessage| async move { Ok::<_, warp::Error>(to_warp(m)) },
                                );
                                endpoint.run_connection(Box::pin(socket), target);
                            });
                        let mut response = warp::Reply::into_response(reply);
                        if offered {
                            response.headers_mut().insert(
                                http::header::SEC_WEBSOCKET_PROTOCOL,
                                http::HeaderValue::from_static(SUBPROTOCOL),
                            );
                        }
                        response
                    }
                },
            )
    }
}
