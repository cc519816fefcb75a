//! What the example applications share: one chat handler for every transport.
//!
//! A client sends JSON messages — `{"join": "room"}`, `{"say": "text", "room": "room"}` —
//! and receives `{"from": "…", "room": "…", "text": "…"}` for what others say in its rooms,
//! or `{"error": "…"}`. Every client starts in the room `lobby`. The handler is written
//! once: a BrowserChannel session and a WebSocket session are the same [`Session`] type.
//!
//! Run an example with `cargo run -p browserver-examples --example axum` (or `hyper`,
//! `warp`, `axum-proxy`) and open <http://127.0.0.1:3000/> in two tabs.

use browserver_runtime::{Hub, Session, Sessions};
use serde::{Deserialize, Serialize};

/// What a client may send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Incoming {
    /// Join a room.
    Join {
        /// The room.
        join: String,
    },
    /// Say something to a room (default `lobby`).
    Say {
        /// The text.
        say: String,
        /// The room.
        #[serde(default = "lobby")]
        room: String,
    },
}

fn lobby() -> String {
    "lobby".to_string()
}

/// What a client receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Outgoing {
    /// Someone said something in one of the client's rooms.
    Said {
        /// Who: their session's transport and address (never their session id: that is a
        /// secret).
        from: String,
        /// Where.
        room: String,
        /// What.
        text: String,
    },
    /// The client's last message was not understood.
    Error {
        /// Why.
        error: String,
    },
}

/// One session's chat, whatever its transport.
pub async fn chat(hub: Hub, session: Session) {
    if hub.join(&session, "lobby").is_err() {
        session.close_with("the chat is full");
        return;
    }
    let from = match session.address() {
        Some(address) => format!("{} {address}", session.transport()),
        None => session.transport().to_string(),
    };
    while let Some(message) = session.recv_json::<Incoming>().await {
        match message {
            Ok(Incoming::Join { join }) => {
                if let Err(e) = hub.join(&session, &join) {
                    drop(session.send_json(&Outgoing::Error {
                        error: e.to_string(),
                    }));
                }
            }
            Ok(Incoming::Say { say, room }) if hub.rooms_of(&session).contains(&room) => {
                let said = Outgoing::Said {
                    from: from.clone(),
                    room: room.clone(),
                    text: say,
                };
                // Queued for every other member at once; one that does not keep up is
                // skipped (and would be listed in the report this returns).
                drop(hub.to(room).except(&session).send_json(&said));
            }
            Ok(Incoming::Say { room, .. }) => drop(session.send_json(&Outgoing::Error {
                error: format!("not in room {room}"),
            })),
            Err(e) => drop(session.send_json(&Outgoing::Error {
                error: e.to_string(),
            })),
        }
    }
}

/// Runs [`chat`] for every session an endpoint creates.
pub fn spawn_chat(hub: Hub, mut sessions: Sessions) {
    tokio::spawn(async move {
        while let Some(session) = sessions.accept().await {
            tokio::spawn(chat(hub.clone(), session));
        }
    });
}

/// The page every example serves at `/`: a chat over WebSocket (session mode), or
/// BrowserChannel with `?t=bc`, through the browser client the BrowserChannel endpoint
/// serves at `/channel/bcsocket.js`.
pub const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8"><title>browserver chat</title>
<ul id="log"></ul><input id="text" autofocus placeholder="say something">
<script type="module">
  import { BCSocket } from '/channel/bcsocket.js';
  const log = (t) => { const li = document.createElement('li'); li.textContent = t; document.getElementById('log').append(li); };
  const transport = new URLSearchParams(location.search).get('t') === 'bc' ? 'browserchannel' : 'websocket';
  const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
  const socket = new BCSocket('/channel', { transport, wsUrl, reconnect: true });
  socket.onopen = () => log(`connected over ${transport}`);
  socket.onmessage = (e) => log(e.data.error ? `error: ${e.data.error}` : `${e.data.from}: ${e.data.text}`);
  socket.onclose = (reason) => log(`disconnected: ${reason}`);
  document.getElementById('text').onkeydown = (e) => {
    if (e.key !== 'Enter' || socket.readyState !== BCSocket.OPEN) return;
    socket.send({ say: e.target.value });
    log(`me: ${e.target.value}`);
    e.target.value = '';
  };
</script>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_as_the_page_sends_them() {
        let join: Incoming = serde_json::from_str(r#"{"join":"red"}"#).expect("join");
        assert_eq!(join, Incoming::Join { join: "red".into() });
        let say: Incoming = serde_json::from_str(r#"{"say":"hi"}"#).expect("say");
        assert_eq!(
            say,
            Incoming::Say {
                say: "hi".into(),
                room: "lobby".into()
            }
        );
        assert!(serde_json::from_str::<Incoming>(r#"{"shout":"hi"}"#).is_err());
    }
}

/// What the examples' tests share: a Rust client that waits for what it expects.
#[doc(hidden)]
pub mod support {
    use std::time::Duration;

    /// How long a test waits for one thing.
    pub const WAIT: Duration = Duration::from_secs(10);

    /// Waits for `client` to open; panics on a close.
    pub async fn opened(client: &browserver_client::Client) {
        loop {
            match tokio::time::timeout(WAIT, client.next_event()).await {
                Ok(Some(browserver_client::Event::Open { .. })) => return,
                Ok(Some(browserver_client::Event::Close { reason, .. })) => {
                    panic!("closed before opening: {reason}")
                }
                Ok(Some(_)) => {}
                other => panic!("no open: {other:?}"),
            }
        }
    }

    /// The next message `client` receives.
    pub async fn message(client: &browserver_client::Client) -> serde_json::Value {
        loop {
            match tokio::time::timeout(WAIT, client.next_event()).await {
                Ok(Some(browserver_client::Event::Message(value))) => return value,
                Ok(Some(browserver_client::Event::Close { reason, .. })) => {
                    panic!("closed: {reason}")
                }
                Ok(Some(_)) => {}
                other => panic!("no message: {other:?}"),
            }
        }
    }

    /// A client of `url` over `transport`, open, without reconnects.
    pub async fn connect(
        url: &str,
        transport: browserver_client::Transport,
    ) -> browserver_client::Client {
        let client = browserver_client::connect(
            url,
            browserver_client::Options {
                transport,
                reconnect: false,
                ..Default::default()
            },
        );
        opened(&client).await;
        client
    }

    /// Serves `app` on a fresh loopback port, with `ConnectInfo` (as the examples' `main` do).
    pub async fn serve_axum(app: axum::Router) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
            axum::serve(listener, app).await
        });
        addr
    }

    /// A GET over a fresh connection: status and body.
    pub async fn fetch(addr: std::net::SocketAddr, host: &str, path: &str) -> (u16, String) {
        use http_body_util::BodyExt;
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(conn);
        let req = http::Request::get(path)
            .header("host", host)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request");
        let response = tokio::time::timeout(WAIT, sender.send_request(req))
            .await
            .expect("in time")
            .expect("response");
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }
}
