//! Loopback test helpers: a real server on 127.0.0.1 and a real HTTP/1.1 client.
#![allow(dead_code, missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use browserver_transport_bc::{BrowserChannel, Options, Session, Sessions, serve};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

pub const WAIT: Duration = Duration::from_secs(5);

pub struct Server {
    pub addr: SocketAddr,
    pub bc: BrowserChannel,
    pub sessions: Sessions,
}

pub async fn start(options: Options) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (bc, sessions) = BrowserChannel::new(options);
    tokio::spawn(serve(listener, bc.clone()));
    Server { addr, bc, sessions }
}

impl Server {
    pub async fn accept(&mut self) -> Session {
        tokio::time::timeout(WAIT, self.sessions.accept())
            .await
            .expect("a session within 5 s")
            .expect("session stream open")
    }

    /// `CONNECT` of the checklist: creates a session with RID base 1000 and returns it with
    /// the creation response's body.
    pub async fn connect(&mut self) -> (Session, String) {
        let (status, _, body) = self
            .text(Method::POST, "/channel/bind?VER=8&RID=1000&t=1", "count=0")
            .await;
        assert_eq!(status, 200, "{body}");
        (self.accept().await, body)
    }

    pub async fn request(&self, method: Method, uri: &str, body: &str) -> http::Response<Incoming> {
        self.request_with(
            method,
            uri,
            &[("content-type", "application/x-www-form-urlencoded")],
            body,
        )
        .await
    }

    pub async fn request_with(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> http::Response<Incoming> {
        let stream = TcpStream::connect(self.addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "127.0.0.1");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("request");
        tokio::time::timeout(WAIT, sender.send_request(req))
            .await
            .expect("response head within 5 s")
            .expect("response")
    }

    /// A whole response as text.
    pub async fn text(
        &self,
        method: Method,
        uri: &str,
        body: &str,
    ) -> (StatusCode, HeaderMap, String) {
        let response = self.request(method, uri, body).await;
        read_all(response).await
    }

    pub async fn back_channel(
        &self,
        sid: &str,
        aid: i64,
        ci: u8,
        kind: &str,
    ) -> http::Response<Incoming> {
        self.request(
            Method::GET,
            &format!("/channel/bind?VER=8&RID=rpc&SID={sid}&AID={aid}&TYPE={kind}&CI={ci}"),
            "",
        )
        .await
    }

    pub async fn forward(&self, sid: &str, rid: u64, aid: i64, body: &str) -> (StatusCode, String) {
        let (status, _, text) = self
            .text(
                Method::POST,
                &format!("/channel/bind?VER=8&RID={rid}&SID={sid}&AID={aid}"),
                body,
            )
            .await;
        (status, text)
    }
}

pub async fn read_all(response: http::Response<Incoming>) -> (StatusCode, HeaderMap, String) {
    let (parts, body) = response.into_parts();
    let bytes = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("body within 5 s")
        .expect("body")
        .to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

/// The next data frame of a streamed body, or `None` if the body ended.
pub async fn next_data(body: &mut Incoming, within: Duration) -> Option<String> {
    loop {
        let frame = tokio::time::timeout(within, body.frame())
            .await
            .expect("a frame in time")?
            .expect("frame");
        if let Ok(data) = frame.into_data() {
            return Some(String::from_utf8_lossy(&data).into_owned());
        }
    }
}

/// Whether nothing at all arrives on a body for `quiet`.
pub async fn stays_quiet(body: &mut Incoming, quiet: Duration) -> bool {
    tokio::time::timeout(quiet, body.frame()).await.is_err()
}

/// `LP(x)`: a length-prefixed chunk.
pub fn lp(x: &str) -> String {
    format!("{}\n{x}", x.len())
}

pub fn fast_timers() -> Options {
    Options {
        keep_alive_interval: Duration::from_millis(300),
        session_timeout_interval: Duration::from_millis(500),
        test_phase2_delay: Duration::from_millis(400),
        ..Options::default()
    }
}

/// The old `Received` view of a message, for the conformance items: its JSON value (`None`
/// for a map without one) and its map (`None` for a message).
pub trait MessageExt {
    fn value(&self) -> Option<serde_json::Value>;
    fn map(&self) -> Option<browserver_transport_bc::Map>;
}

impl MessageExt for browserver_transport_bc::Message {
    fn value(&self) -> Option<serde_json::Value> {
        match self {
            browserver_transport_bc::Message::Map(_) => None,
            other => other.json().ok(),
        }
    }

    fn map(&self) -> Option<browserver_transport_bc::Map> {
        match self {
            browserver_transport_bc::Message::Map(map) => Some(map.clone()),
            _ => None,
        }
    }
}
