//! Hostile clients against the real `browserver` binary on loopback: one test per attack of
//! the security issue, each named after it and asserting the safe outcome — the victim keeps
//! its session and its visitors' requests, the server's memory (VmRSS from /proc) stays under
//! a stated bound, an ordinary client connecting during the attack is still served, and the
//! server never panics (its stderr is checked).
//!
//! Ordinary clients connect from other loopback addresses (127.0.0.2, …) than the attacker
//! (127.0.0.1), as a second host would.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use browserver_client::{Options, Transport, host};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

mod common;
use common::{Server, WAIT};

const ATTACKER: &str = "127.0.0.1";
const ORDINARY: &str = "127.0.0.2";

impl Server {
    /// A request from the attacker's address to the server's own host.
    async fn own(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Reply {
        let host = self.addr.to_string();
        request(ATTACKER, self.addr, &host, method, path, headers, body).await
    }

    /// The status endpoint's list, asked locally.
    async fn clients(&self) -> serde_json::Value {
        let r = self
            .own("GET", "/_browserver/clients", &[], Bytes::new())
            .await;
        serde_json::from_slice(&r.body).expect("json")
    }
}

async fn connect_from(source: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source.parse::<IpAddr>().expect("ip"), 0))?;
    socket.connect(addr).await
}

struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

/// One HTTP/1.1 request from `source`.
async fn request(
    source: &str,
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let stream = connect_from(source, addr).await.expect("connect");
    let r = common::request_over(stream, host, method, path, headers, body.into(), WAIT).await;
    let (parts, body) = r.into_parts();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

/// The answer every victim gives.
async fn victim_service(
    req: http::Request<host::Body>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let mut seen = String::new();
    for (k, v) in req.headers() {
        seen.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
    }
    Ok(http::Response::builder()
        .status(200)
        .header("x-victim", "yes")
        .body(Full::new(Bytes::from(seen)))
        .expect("response"))
}

/// A victim serving its hostname over `transport`, and that hostname.
async fn victim(s: &Server, transport: Transport) -> (host::Host, String) {
    victim_with(s, transport, &[]).await
}

/// A victim that speaks the whole-message form (`brow=2`): the proxy reads its visitors'
/// bodies whole.
async fn buffered_victim(s: &Server, transport: Transport) -> (host::Host, String) {
    victim_with(s, transport, &[("brow", "2")]).await
}

async fn victim_with(
    s: &Server,
    transport: Transport,
    params: &[(&str, &str)],
) -> (host::Host, String) {
    let url = match transport {
        Transport::WebSocket => s.ws(),
        _ => s.bc(),
    };
    let options = Options {
        transport,
        reconnect: false,
        extra_params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Options::default()
    };
    let h = host::serve(&url, options, tower::service_fn(victim_service));
    let hostname = tokio::time::timeout(WAIT, h.hostname())
        .await
        .expect("hostname in time")
        .expect("hostname");
    (h, hostname)
}

fn label(hostname: &str) -> &str {
    hostname.split('.').next().expect("label")
}

/// The victim still answers its visitors (asked from the ordinary address).
async fn assert_victim_served(s: &Server, hostname: &str) {
    let r = request(ORDINARY, s.addr, hostname, "GET", "/", &[], Bytes::new()).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.headers.get("x-victim").map(|v| v.as_bytes()),
        Some(&b"yes"[..])
    );
}

/// An ordinary client still gets a BrowserChannel session.
async fn assert_ordinary_client_served(s: &Server) {
    let r = request(
        ORDINARY,
        s.addr,
        &s.addr.to_string(),
        "POST",
        "/channel/bind?VER=8&RID=1000&t=1",
        &[("content-type", "application/x-www-form-urlencoded")],
        "count=0",
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// Creates a raw BrowserChannel session from `source` and returns its `SID`.
async fn bc_session(s: &Server, source: &str, query: &str) -> Reply {
    request(
        source,
        s.addr,
        &s.addr.to_string(),
        "POST",
        &format!("/channel/bind?VER=8&RID=1000&t=1{query}"),
        &[("content-type", "application/x-www-form-urlencoded")],
        "count=0",
    )
    .await
}

fn sid_of(reply: &Reply) -> String {
    let text = String::from_utf8_lossy(&reply.body);
    let start = text.find("[\"c\",\"").expect("a session announcement") + 6;
    text[start..].split('"').next().expect("sid").to_string()
}

#[tokio::test]
async fn browserchannel_takeover_with_the_public_name_is_refused_and_the_victim_keeps_its_session()
{
    let s = Server::start(&[]).await;
    let (_victim, hostname) = victim(&s, Transport::BrowserChannel).await;
    let name = label(&hostname).to_string();
    let host = s.addr.to_string();
    // Read the victim's back channel.
    let r = request(
        ATTACKER,
        s.addr,
        &host,
        "GET",
        &format!("/channel/bind?VER=8&SID={name}&TYPE=xmlhttp&RID=rpc&CI=0&AID=0"),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, 400, "back channel by name");
    // Answer the victim's visitors blind (request ids are sequential).
    let answer = "HTTP/1.1 200 OK\r\nx-brow-req-id: 0\r\n\r\nforged";
    let form = format!(
        "count=1&ofs=1&req0__S={}",
        url::form_urlencoded::byte_serialize(answer.as_bytes()).collect::<String>()
    );
    let r = request(
        ATTACKER,
        s.addr,
        &host,
        "POST",
        &format!("/channel/bind?VER=8&SID={name}&RID=1001&AID=0"),
        &[("content-type", "application/x-www-form-urlencoded")],
        form,
    )
    .await;
    assert_eq!(r.status, 400, "forward channel by name");
    // One invalid map, a terminate, and a new session ghosting the name.
    let r = request(
        ATTACKER,
        s.addr,
        &host,
        "POST",
        &format!("/channel/bind?VER=8&SID={name}&RID=1001"),
        &[("content-type", "application/x-www-form-urlencoded")],
        "count=1&ofs=1&req0_JSON=%7Bnot-json",
    )
    .await;
    assert_eq!(r.status, 400, "invalid map by name");
    request(
        ATTACKER,
        s.addr,
        &host,
        "GET",
        &format!("/channel/bind?VER=8&SID={name}&TYPE=terminate&RID=1002"),
        &[],
        Bytes::new(),
    )
    .await;
    let r = bc_session(&s, ATTACKER, &format!("&OSID={name}&OAID=0")).await;
    assert_eq!(r.status, 200);
    assert_ne!(sid_of(&r), name, "a session id is never a public name");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_victim_served(&s, &hostname).await;
    s.assert_healthy();
}

#[tokio::test]
async fn websocket_resume_with_the_public_name_or_a_guessed_token_is_refused() {
    let s = Server::start(&[]).await;
    let (_victim, hostname) = victim(&s, Transport::WebSocket).await;
    let name = label(&hostname).to_string();
    for resume in [name.clone(), format!("{name}.0000000000000000000000000")] {
        let mut req = format!("{}?resume={resume}&ack=0", s.ws())
            .into_client_request()
            .expect("request");
        req.headers_mut().insert(
            "sec-websocket-protocol",
            http::HeaderValue::from_static("browserver.session.v1"),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("upgrade");
        let hello = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("hello in time")
            .expect("frame")
            .expect("ok");
        let Ws::Binary(bytes) = hello else {
            panic!("expected a binary hello, got {hello:?}")
        };
        match browserver_transport_ws::codec::decode(&bytes) {
            Ok(browserver_transport_ws::codec::Frame::Hello { resumed, sid, .. }) => {
                assert!(!resumed, "resumed someone else's session with {resume:?}");
                assert_ne!(sid, name);
            }
            other => panic!("{other:?}"),
        }
        drop(ws);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_victim_served(&s, &hostname).await;
    s.assert_healthy();
}

#[tokio::test]
async fn the_status_endpoint_shows_public_names_only_and_refuses_rebinding_and_forwarded_requests()
{
    let s = Server::start(&[]).await;
    let (_victim, hostname) = victim(&s, Transport::BrowserChannel).await;
    let own = s.addr.to_string();
    let get = |host: String, headers: Vec<(&'static str, &'static str)>| {
        let addr = s.addr;
        async move {
            request(
                ATTACKER,
                addr,
                &host,
                "GET",
                "/_browserver/clients",
                &headers,
                Bytes::new(),
            )
            .await
        }
    };
    let r = get(own.clone(), vec![]).await;
    assert_eq!(r.status, 200);
    let list: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    let client = &list[0];
    assert_eq!(client["hostname"], hostname.as_str());
    assert_eq!(client["id"], label(&hostname));
    let mut fields: Vec<_> = client
        .as_object()
        .expect("object")
        .keys()
        .cloned()
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "connected_since",
            "hostname",
            "id",
            "requests_served",
            "transport"
        ]
    );
    // DNS rebinding: a page whose own domain resolves to 127.0.0.1.
    assert_eq!(get("evil.example:3572".into(), vec![]).await.status, 403);
    // A reverse proxy on the same host: every visitor is a loopback peer.
    assert_eq!(
        get(own.clone(), vec![("x-forwarded-for", "203.0.113.9")])
            .await
            .status,
        403
    );
    drop(s);

    let s = Server::start(&["--admin-token", "let-me-in"]).await;
    let get = |headers: &'static [(&'static str, &'static str)]| {
        let addr = s.addr;
        async move {
            request(
                ATTACKER,
                addr,
                "example.com",
                "GET",
                "/_browserver/clients",
                headers,
                Bytes::new(),
            )
            .await
            .status
        }
    };
    assert_eq!(get(&[]).await, 401);
    assert_eq!(get(&[("authorization", "Bearer guess")]).await, 403);
    assert_eq!(get(&[("authorization", "Bearer let-me-in")]).await, 200);
    s.assert_healthy();
}

/// How many of `streams` the server closes within `within` (watched all at once).
async fn count_closed(streams: &mut [TcpStream], within: Duration) -> usize {
    futures_util::future::join_all(streams.iter_mut().map(|s| closed_within(s, within)))
        .await
        .into_iter()
        .filter(|closed| *closed)
        .count()
}

/// Whether the server closes `stream` within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn slowloris_heads_idle_connections_and_slow_bodies_are_closed() {
    let s = Server::start(&[
        "--header-read-timeout",
        "1s",
        "--idle-timeout",
        "2s",
        "--body-grace",
        "1s",
        "--body-min-rate",
        "1000",
    ])
    .await;
    // A victim whose visitors' bodies the proxy reads whole (a streaming victim answers
    // before the body ends; `streaming.rs` covers slow bodies to one).
    let (_victim, hostname) = buffered_victim(&s, Transport::WebSocket).await;
    // A head that never ends, a byte at a time.
    let mut slow_head = connect_from(ATTACKER, s.addr).await.expect("connect");
    slow_head
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .expect("write");
    let dribble = tokio::spawn(async move {
        for _ in 0..20 {
            if slow_head.write_all(b"x").await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        closed_within(&mut slow_head, Duration::from_millis(10)).await
    });
    // An idle keep-alive connection after one request.
    let mut idle = connect_from(ATTACKER, s.addr).await.expect("connect");
    idle.write_all(b"GET /nothing HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .expect("write");
    // An idle connection that never sends anything.
    let mut silent = connect_from(ATTACKER, s.addr).await.expect("connect");
    // A body that trickles in.
    let mut slow_body = connect_from(ATTACKER, s.addr).await.expect("connect");
    slow_body
        .write_all(
            format!("POST / HTTP/1.1\r\nHost: {hostname}\r\ncontent-length: 100000\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("write");
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        for _ in 0..40 {
            if slow_body.write_all(b"0123456789").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut answer = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(1), slow_body.read_to_end(&mut answer)).await;
        answer
    });
    assert_ordinary_client_served(&s).await;
    assert!(
        closed_within(&mut idle, Duration::from_secs(5)).await,
        "idle keep-alive"
    );
    assert!(
        closed_within(&mut silent, Duration::from_secs(5)).await,
        "silent connection"
    );
    assert!(dribble.await.expect("task"), "slowloris head");
    let answer = trickle.await.expect("task");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the slow body was cut off"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "{answer}"
    );
    assert_victim_served(&s, &hostname).await;
    s.assert_healthy();
}

#[tokio::test]
async fn connections_beyond_the_caps_are_closed_at_once_and_accept_keeps_working() {
    let s = Server::start(&[
        "--max-connections-per-address",
        "20",
        "--max-connections",
        "40",
    ])
    .await;
    let mut held = Vec::new();
    for _ in 0..30 {
        held.push(connect_from(ATTACKER, s.addr).await.expect("connect"));
    }
    let refused = count_closed(&mut held, Duration::from_secs(1)).await;
    assert_eq!(refused, 10, "30 from one address, 20 allowed");
    // Another host is served while the attacker holds its 20.
    assert_ordinary_client_served(&s).await;
    // The total cap: 20 more from a third address fill it; the rest are closed.
    let mut third = Vec::new();
    for _ in 0..25 {
        third.push(connect_from("127.0.0.3", s.addr).await.expect("connect"));
    }
    let refused = count_closed(&mut third, Duration::from_secs(1)).await;
    assert!(
        refused >= 5,
        "the total cap of 40 holds ({refused} refused)"
    );
    drop(held);
    drop(third);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_ordinary_client_served(&s).await;
    s.assert_healthy();
}

#[tokio::test]
async fn a_session_creation_flood_from_one_address_is_limited_and_unattached_sessions_expire() {
    // The default burst (60), refilled at one a minute so that the test's own duration
    // earns nothing.
    let s = Server::start(&["--attach-timeout", "1s", "--session-rate", "1"]).await;
    let mut created = 0;
    let mut limited = 0;
    for _ in 0..150 {
        let r = bc_session(&s, ATTACKER, "").await;
        match r.status {
            200 => created += 1,
            429 => {
                assert!(r.headers.contains_key("retry-after"));
                limited += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(created <= 61, "{created} sessions created in a burst");
    assert!(limited >= 89, "{limited} refused");
    // WebSocket upgrades share the per-address rate.
    let r = tokio_tungstenite::connect_async(s.ws()).await;
    assert!(r.is_err(), "a WebSocket session beyond the rate");
    assert_ordinary_client_served(&s).await;
    // None of the flood attached a back channel: they are gone after the attach timeout.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let list = s.clients().await;
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");
    s.assert_healthy();
}

#[tokio::test]
async fn a_plain_websocket_client_that_never_reads_holds_bounded_memory() {
    let s = Server::start(&["echo"]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(s.ws())
        .await
        .expect("upgrade");
    let before = s.rss_kib();
    let chunk = "x".repeat(1 << 20);
    // 200 MiB echoed to a client that reads nothing.
    let sent = tokio::time::timeout(Duration::from_secs(30), async {
        let mut sent = 0;
        for _ in 0..200 {
            if ws.send(Ws::Text(chunk.clone().into())).await.is_err() {
                break;
            }
            sent += 1;
        }
        sent
    })
    .await
    .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = s.rss_kib().saturating_sub(before);
    eprintln!("sent {sent} MiB to a non-reader; server RSS grew {grown} KiB");
    assert!(
        grown < 96 * 1024,
        "server grew {grown} KiB for one client that does not read"
    );
    assert_ordinary_client_served(&s).await;
    s.assert_healthy();
}

#[tokio::test]
async fn a_huge_json_forward_body_is_parsed_without_amplification() {
    let s = Server::start(&["echo"]).await;
    let sid = sid_of(&bc_session(&s, ATTACKER, "").await);
    // 20 MB: 1 000 messages of 20 KB each.
    let element = format!("\"{}\"", "y".repeat(20_000));
    let body = format!("{{\"ofs\":0,\"data\":[{}]}}", vec![element; 1000].join(","));
    let before = s.rss_kib();
    let r = s
        .own(
            "POST",
            &format!("/channel/bind?VER=8&SID={sid}&RID=1001"),
            &[("content-type", "application/json")],
            body,
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grown = s.rss_kib().saturating_sub(before);
    eprintln!("a 20 MB JSON forward body grew the server by {grown} KiB");
    assert!(grown < 160 * 1024, "grew {grown} KiB for a 20 MB body");
    // A body with more messages than allowed is refused whole.
    let many = format!("{{\"ofs\":0,\"data\":[{}1]}}", "1,".repeat(5000));
    let r = s
        .own(
            "POST",
            &format!("/channel/bind?VER=8&SID={sid}&RID=1002"),
            &[("content-type", "application/json")],
            many,
        )
        .await;
    assert_eq!(r.status, 413);
    assert_ordinary_client_served(&s).await;
    s.assert_healthy();
}

#[tokio::test]
async fn forward_requests_held_behind_a_missing_rid_are_capped_in_bytes() {
    let s = Server::start(&["echo"]).await;
    let sid = sid_of(&bc_session(&s, ATTACKER, "").await);
    let value = "z".repeat(3 << 20);
    let mut refused_at = None;
    let before = s.rss_kib();
    // RID 1001 never comes: every later one is held.
    for i in 0..20u64 {
        let r = s
            .own(
                "POST",
                &format!("/channel/bind?VER=8&SID={sid}&RID={}", 1002 + i),
                &[("content-type", "application/x-www-form-urlencoded")],
                format!("count=1&ofs={}&req0__S={value}", i + 1),
            )
            .await;
        if r.status == 400 {
            refused_at = Some(i);
            break;
        }
        assert_eq!(r.status, 200);
    }
    let refused_at = refused_at.expect("refused before 20 held bodies of 3 MiB");
    let grown = s.rss_kib().saturating_sub(before);
    eprintln!("held bodies refused after {refused_at}; server grew {grown} KiB");
    assert!(refused_at <= 8, "held {refused_at} bodies of 3 MiB");
    assert!(grown < 128 * 1024, "grew {grown} KiB");
    assert_ordinary_client_served(&s).await;
    s.assert_healthy();
}

/// A plain WebSocket client speaking the original text form that reads the requests it is
/// sent and answers none; returns its hostname (from the status endpoint) and the socket.
async fn silent_text_client(
    s: &Server,
) -> (
    String,
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
) {
    let (ws, _) = tokio_tungstenite::connect_async(s.ws())
        .await
        .expect("upgrade");
    // The proxy registers the client just after the upgrade: ask until it is listed.
    let hostname = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(h) = s.clients().await[0]["hostname"].as_str() {
                return h.to_string();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("listed in time");
    (hostname, ws)
}

#[tokio::test]
async fn too_many_pending_requests_are_refused_before_their_body_is_read() {
    let s = Server::start(&["--request-timeout", "20s"]).await;
    let (hostname, mut ws) = silent_text_client(&s).await;
    let received = Arc::new(AtomicUsize::new(0));
    let seen = received.clone();
    tokio::spawn(async move {
        while ws.next().await.is_some() {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    let addr = s.addr;
    let mut waiting = Vec::new();
    for _ in 0..64 {
        let host = hostname.clone();
        waiting.push(tokio::spawn(async move {
            let stream = connect_from(ATTACKER, addr).await.expect("connect");
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .expect("handshake");
            tokio::spawn(conn);
            let req = http::Request::get("/")
                .header("host", host)
                .body(Full::new(Bytes::new()))
                .expect("request");
            let _ = sender.send_request(req).await;
        }));
    }
    // Wait until the client has been sent all 64 (they are pending).
    tokio::time::timeout(WAIT, async {
        while received.load(Ordering::SeqCst) < 64 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("64 requests pending");
    // The 65th declares 16 MB and sends none of it: it is answered at once.
    let mut big = connect_from(ORDINARY, s.addr).await.expect("connect");
    big.write_all(
        format!("POST / HTTP/1.1\r\nHost: {hostname}\r\ncontent-length: 16000000\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("write");
    let mut head = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(3), big.read(&mut head))
        .await
        .expect("answered without the body")
        .expect("read");
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after"), "{head}");
    for w in waiting {
        w.abort();
    }
    s.assert_healthy();
}

/// A loopback HTTP server that records each request's headers and how many requests it
/// served at once at most; each answer takes `delay`.
async fn upstream(delay: Duration) -> (SocketAddr, Arc<Mutex<Vec<String>>>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let peak = Arc::new(AtomicUsize::new(0));
    let now = Arc::new(AtomicUsize::new(0));
    let (seen2, peak2) = (seen.clone(), peak.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (seen, peak, now) = (seen2.clone(), peak2.clone(), now.clone());
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (seen, peak, now) = (seen.clone(), peak.clone(), now.clone());
                        async move {
                            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(n, Ordering::SeqCst);
                            let mut headers = String::new();
                            for (k, v) in req.headers() {
                                headers.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
                            }
                            seen.lock().expect("lock").push(headers);
                            tokio::time::sleep(delay).await;
                            now.fetch_sub(1, Ordering::SeqCst);
                            Ok::<_, Infallible>(
                                http::Response::builder()
                                    .header("connection", "x-hop")
                                    .header("x-hop", "1")
                                    .header("keep-alive", "timeout=5")
                                    .body(Full::new(Bytes::from_static(b"upstream")))
                                    .expect("response"),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen, peak)
}

async fn fetch(h: &host::Host, host: &str, headers: &[(&str, &str)]) -> http::Response<Bytes> {
    let mut req = http::Request::get("/").header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    tokio::time::timeout(WAIT * 2, h.fetch(req.body(Bytes::new()).expect("request")))
        .await
        .expect("in time")
        .expect("fetched")
}

#[tokio::test]
async fn one_client_cannot_open_unbounded_egress_connections() {
    let (up, _, peak) = upstream(Duration::from_millis(800)).await;
    let allow = up.to_string();
    let s = Server::start(&["--egress-allow", &allow]).await;
    let (h, _) = victim(&s, Transport::WebSocket).await;
    let h = Arc::new(h);
    let target = up.to_string();
    let mut all = Vec::new();
    for _ in 0..30 {
        let (h, target) = (h.clone(), target.clone());
        all.push(tokio::spawn(async move {
            fetch(&h, &target, &[]).await.status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in all {
        statuses.push(t.await.expect("task"));
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(ok + limited, 30, "{statuses:?}");
    assert!(ok >= 8, "{statuses:?}");
    assert!(
        peak.load(Ordering::SeqCst) <= 8,
        "upstream saw {} at once",
        peak.load(Ordering::SeqCst)
    );
    s.assert_healthy();
}

#[tokio::test]
async fn egress_drops_hop_by_hop_and_forged_headers_both_ways_and_refuses_two_hosts() {
    let (up, seen, _) = upstream(Duration::ZERO).await;
    let allow = up.to_string();
    let s = Server::start(&["--egress-allow", &allow]).await;
    let (h, _) = victim(&s, Transport::WebSocket).await;
    let r = fetch(
        &h,
        &up.to_string(),
        &[
            ("connection", "x-secret"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-brow-req-id", "77"),
            ("transfer-encoding", "chunked"),
            ("x-kept", "yes"),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    for hop in ["connection", "x-hop", "keep-alive"] {
        assert!(!r.headers().contains_key(hop), "{hop} came back");
    }
    let headers = seen.lock().expect("lock").pop().expect("a request");
    assert!(headers.contains("x-kept: yes"), "{headers}");
    for forged in [
        "x-secret",
        "te:",
        "x-forwarded-for",
        "x-brow-req-id",
        "transfer-encoding",
        "connection",
    ] {
        assert!(
            !headers.contains(forged),
            "{forged} reached the upstream:\n{headers}"
        );
    }
    assert_eq!(headers.matches("host:").count(), 1, "{headers}");
    // Two Host headers: refused.
    let mut req = http::Request::get("/")
        .header("host", up.to_string())
        .body(Bytes::new())
        .expect("request");
    req.headers_mut()
        .append("host", http::HeaderValue::from_static("127.0.0.1:1"));
    let r = h.fetch(req).await.expect("answer");
    assert_eq!(r.status(), 400);
    s.assert_healthy();
}

#[tokio::test]
async fn egress_to_ipv6_spellings_of_loopback_is_refused() {
    let (up, seen, _) = upstream(Duration::ZERO).await;
    let s = Server::start(&[]).await;
    let (h, _) = victim(&s, Transport::WebSocket).await;
    let port = up.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("[::ffff:127.0.0.1]:{port}"),
        format!("[::127.0.0.1]:{port}"),
        format!("[64:ff9b::7f00:1]:{port}"),
        format!("[2002:7f00:1::1]:{port}"),
        format!("localhost:{port}"),
    ] {
        let r = fetch(&h, &host, &[]).await;
        assert_eq!(r.status(), 403, "{host}");
    }
    assert!(
        seen.lock().expect("lock").is_empty(),
        "the upstream was reached"
    );
    s.assert_healthy();
}

#[tokio::test]
async fn client_to_client_requests_carry_no_forged_forwarding_or_framing_headers() {
    let s = Server::start(&[]).await;
    let (a, _) = victim(&s, Transport::WebSocket).await;
    let (_b, b_host) = victim(&s, Transport::BrowserChannel).await;
    let r = fetch(
        &a,
        &b_host,
        &[
            ("x-brow-req-id", "999"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-host", "bank.example"),
            ("forwarded", "for=6.6.6.6"),
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
            ("x-kept", "yes"),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    let seen = String::from_utf8_lossy(r.body());
    assert!(seen.contains("x-kept: yes"), "{seen}");
    for forged in [
        "999",
        "6.6.6.6",
        "bank.example",
        "connection",
        "transfer-encoding",
    ] {
        assert!(
            !seen.contains(forged),
            "{forged} reached the other client:\n{seen}"
        );
    }
    s.assert_healthy();
}

/// A text-form client that answers every request with `answer` (its `{id}` replaced).
async fn answering_text_client(s: &Server, answer: &'static str) -> String {
    let (hostname, mut ws) = silent_text_client(s).await;
    tokio::spawn(async move {
        while let Some(Ok(Ws::Text(t))) = ws.next().await {
            let id = t
                .lines()
                .find_map(|l| l.strip_prefix("x-brow-req-id: "))
                .unwrap_or("")
                .trim()
                .to_string();
            let reply = answer.replace("{id}", &id);
            if ws.send(Ws::Text(reply.into())).await.is_err() {
                return;
            }
        }
    });
    hostname
}

#[tokio::test]
async fn a_client_answering_101_or_an_informational_status_gets_the_visitor_502() {
    let s = Server::start(&[]).await;
    let hostname = answering_text_client(
        &s,
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nx-brow-req-id: {id}\r\n\r\n",
    )
    .await;
    let r = request(ORDINARY, s.addr, &hostname, "GET", "/", &[], Bytes::new()).await;
    assert_eq!(r.status, 502);
    assert!(!r.headers.contains_key("upgrade"));
    s.assert_healthy();
}

#[tokio::test]
async fn a_text_form_answer_whose_content_length_disagrees_is_framed_by_its_body() {
    let s = Server::start(&[]).await;
    let hostname = answering_text_client(
        &s,
        "HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\nx-brow-req-id: {id}\r\n\r\nshort",
    )
    .await;
    let r = request(ORDINARY, s.addr, &hostname, "GET", "/", &[], Bytes::new()).await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"short");
    assert_eq!(
        r.headers.get("content-length").map(|v| v.as_bytes()),
        Some(&b"5"[..])
    );
    s.assert_healthy();
}

#[tokio::test]
async fn peer_counters_at_the_end_of_the_u64_range_neither_panic_nor_wrap() {
    let s = Server::start(&["echo"]).await;
    let max = u64::MAX;
    // A session whose first RID is the last u64.
    let r = s
        .own(
            "POST",
            &format!("/channel/bind?VER=8&RID={max}&t=1"),
            &[("content-type", "application/x-www-form-urlencoded")],
            "count=0",
        )
        .await;
    assert!(r.status == 200 || r.status == 400, "{}", r.status);
    let sid = sid_of(&bc_session(&s, ATTACKER, "").await);
    for (rid, ofs, aid) in [
        (1001, max, max),
        (1002, max - 1, 0),
        (max, 1, max),
        (max - 1, 1, 1),
    ] {
        let r = s
            .own(
                "POST",
                &format!("/channel/bind?VER=8&SID={sid}&RID={rid}&AID={aid}"),
                &[("content-type", "application/x-www-form-urlencoded")],
                format!("count=2&ofs={ofs}&req0__S=a&req1__S=b"),
            )
            .await;
        assert!(
            [200, 400].contains(&r.status),
            "RID {rid} ofs {ofs}: {}",
            r.status
        );
    }
    // WebSocket session mode: a message and an acknowledgement at the last sequence number.
    let mut req = s.ws().into_client_request().expect("request");
    req.headers_mut().insert(
        "sec-websocket-protocol",
        http::HeaderValue::from_static("browserver.session.v1"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("upgrade");
    use browserver_transport_ws::codec::{Frame, encode};
    for frame in [
        Frame::Text {
            seq: max,
            text: Bytes::from_static(b"x"),
        },
        Frame::Ack { upto: max },
        Frame::Text {
            seq: max - 1,
            text: Bytes::from_static(b"y"),
        },
    ] {
        let _ = ws.send(Ws::Binary(encode(&frame))).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_ordinary_client_served(&s).await;
    s.assert_healthy();
}

#[tokio::test]
async fn sessions_from_a_foreign_origin_are_refused_and_the_own_origin_is_admitted() {
    let s = Server::start(&[]).await;
    let own = format!("http://{}", s.addr);
    let r = s
        .own(
            "POST",
            "/channel/bind?VER=8&RID=1000&t=1",
            &[("origin", "http://evil.example")],
            "count=0",
        )
        .await;
    assert_eq!(r.status, 403);
    let r = s
        .own(
            "POST",
            "/channel/bind?VER=8&RID=1000&t=1",
            &[("origin", own.as_str())],
            "count=0",
        )
        .await;
    assert_eq!(r.status, 200);
    let mut req = s.ws().into_client_request().expect("request");
    req.headers_mut().insert(
        "origin",
        http::HeaderValue::from_static("http://evil.example"),
    );
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    drop(s);
    let s = Server::start(&["--allowed-origins", "http://app.example"]).await;
    let r = s
        .own(
            "POST",
            "/channel/bind?VER=8&RID=1000&t=1",
            &[("origin", "http://app.example")],
            "count=0",
        )
        .await;
    assert_eq!(r.status, 200);
    s.assert_healthy();
}

#[tokio::test]
async fn bodies_being_read_at_once_are_bounded_by_the_read_budget() {
    let s = Server::start(&[
        "--max-in-flight-body-bytes",
        "4000000",
        "--body-min-rate",
        "0",
    ])
    .await;
    let (_victim, hostname) = buffered_victim(&s, Transport::WebSocket).await;
    // Four uploads declare 2 MB each, send 1.5 MB and stall: 6 MB would be held at once.
    let chunk = vec![b'u'; 1_500_000];
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut c = connect_from(ATTACKER, s.addr).await.expect("connect");
        c.write_all(
            format!("POST / HTTP/1.1\r\nHost: {hostname}\r\ncontent-length: 2000000\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("head");
        let _ = c.write_all(&chunk).await;
        stalled.push(c);
    }
    let mut refused = 0;
    for c in &mut stalled {
        let mut head = [0u8; 64];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), c.read(&mut head)).await
            && String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 503")
        {
            refused += 1;
        }
    }
    assert!(refused >= 1, "no upload was refused by the budget");
    drop(stalled);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_victim_served(&s, &hostname).await;
    s.assert_healthy();
}

#[tokio::test]
async fn at_the_file_descriptor_limit_excess_connections_are_closed_and_accept_keeps_working() {
    // A file limit of 320 leaves room for 64 connections (the rest is the server's reserve).
    let s = Server::start_with_file_limit(
        Some(320),
        &[
            "--max-connections-per-address",
            "40",
            "--header-read-timeout",
            "60s",
        ],
    )
    .await;
    let addr = s.addr;
    let mut held = Vec::new();
    for source in ["127.0.0.1", "127.0.0.3"] {
        for _ in 0..40 {
            held.push(connect_from(source, addr).await.expect("connect"));
        }
    }
    let closed = count_closed(&mut held, Duration::from_secs(1)).await;
    assert_eq!(closed, 80 - 64, "64 connections fit under the file limit");
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = request(
        ORDINARY,
        addr,
        &addr.to_string(),
        "POST",
        "/channel/bind?VER=8&RID=1000&t=1",
        &[],
        "count=0",
    )
    .await;
    assert_eq!(r.status, 200, "served again once the attack ended");
    s.assert_healthy();
}
