//! The proxy end to end over loopback: HTTP requests to `<id>.localhost:PORT` answered by a
//! Rust client host, over WebSocket and over BrowserChannel.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use browserver_client::{Options, Transport, host};
use browserver_server::{Config, Mode, run};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

async fn server(config: Config) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(run(listener, config, Mode::Proxy, std::future::pending()));
    addr
}

/// Answers with what it received: method, target, headers as `x-seen-*`, the body unchanged,
/// and two `set-cookie` headers.
async fn mirror(req: http::Request<host::Body>) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if parts.uri.path() == "/slow" {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    let mut r = http::Response::builder()
        .status(201)
        .header("x-seen-method", parts.method.as_str())
        .header("x-seen-target", parts.uri.to_string())
        .header("set-cookie", "a=1")
        .header("set-cookie", "b=2")
        .header("x-empty", "");
    for (k, v) in &parts.headers {
        if k.as_str().starts_with("x-") {
            r = r.header(format!("x-seen-{k}"), v);
        }
    }
    Ok(r.body(Full::new(body)).expect("response"))
}

async fn hosted(addr: SocketAddr, transport: Transport) -> (browserver_client::host::Host, String) {
    let url = match transport {
        Transport::WebSocket => format!("ws://{addr}/ws"),
        _ => format!("http://{addr}/channel"),
    };
    let options = Options {
        transport,
        ..Options::default()
    };
    let h = host::serve(&url, options, tower::service_fn(mirror));
    let hostname = tokio::time::timeout(WAIT, h.hostname())
        .await
        .expect("hostname in time")
        .expect("hostname");
    (h, hostname)
}

async fn request(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> http::Response<Bytes> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    common::request_over(stream, host, method, path, headers, body, WAIT * 2).await
}

async fn round_trips_over(transport: Transport) {
    let addr = server(Config::default()).await;
    let (_host, hostname) = hosted(addr, transport).await;
    assert!(hostname.ends_with(".localhost"), "{hostname}");
    let host = format!("{hostname}:{}", addr.port());

    let r = request(
        addr,
        &host,
        "GET",
        "/hello?x=1",
        &[("x-custom", "yes")],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-seen-method"], "GET");
    assert_eq!(r.headers()["x-seen-target"], "/hello?x=1");
    assert_eq!(r.headers()["x-seen-x-custom"], "yes");
    assert_eq!(r.headers()["x-seen-x-forwarded-for"], "127.0.0.1");
    assert_eq!(r.headers()["x-seen-x-forwarded-host"], host.as_str());
    assert_eq!(r.headers()["x-seen-x-forwarded-proto"], "http");
    let cookies: Vec<_> = r.headers().get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"], "repeated headers survive");
    assert_eq!(r.headers()["x-empty"], "", "empty values survive");

    let binary = Bytes::from((0..=255u8).cycle().take(70_000).collect::<Vec<_>>());
    let r = request(addr, &host, "POST", "/upload", &[], binary.clone()).await;
    assert_eq!(r.body(), &binary, "a binary body round-trips exactly");

    let big = Bytes::from(vec![b'z'; 1 << 20]);
    let r = request(addr, &host, "PUT", "/big", &[], big.clone()).await;
    assert_eq!(r.body().len(), 1 << 20);
    assert_eq!(r.body(), &big, "a 1 MiB body round-trips exactly");
}

#[tokio::test]
async fn http_requests_are_answered_by_a_rust_host_over_websocket() {
    round_trips_over(Transport::WebSocket).await;
}

#[tokio::test]
async fn http_requests_are_answered_by_a_rust_host_over_browserchannel() {
    round_trips_over(Transport::BrowserChannel).await;
}

#[tokio::test]
async fn an_unknown_client_id_is_504() {
    let addr = server(Config::default()).await;
    let r = request(
        addr,
        "nosuchclient.localhost",
        "GET",
        "/",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status(), 504);
}

#[tokio::test]
async fn a_client_that_disconnects_mid_request_gets_504() {
    let addr = server(Config::default()).await;
    let (host, hostname) = hosted(addr, Transport::WebSocket).await;
    let pending =
        tokio::spawn(
            async move { request(addr, &hostname, "GET", "/slow", &[], Bytes::new()).await },
        );
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(host);
    let r = tokio::time::timeout(WAIT, pending)
        .await
        .expect("answered")
        .expect("task");
    assert_eq!(r.status(), 504);
}

#[tokio::test]
async fn a_client_that_does_not_answer_in_time_gets_504() {
    let addr = server(Config {
        request_timeout: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let (_host, hostname) = hosted(addr, Transport::BrowserChannel).await;
    let r = request(addr, &hostname, "GET", "/slow", &[], Bytes::new()).await;
    assert_eq!(r.status(), 504);
}

#[tokio::test]
async fn other_hosts_fall_through_to_the_server_and_the_status_endpoint_lists_clients() {
    let addr = server(Config::default()).await;
    let (_host, hostname) = hosted(addr, Transport::WebSocket).await;
    let r = request(
        addr,
        "127.0.0.1",
        "GET",
        "/_browserver/clients",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status(), 200);
    let list: serde_json::Value = serde_json::from_slice(r.body()).expect("json");
    assert_eq!(list[0]["hostname"], hostname.as_str());
    assert_eq!(list[0]["transport"], "websocket");
    let r = request(
        addr,
        "127.0.0.1",
        "GET",
        "/channel/test?VER=8&MODE=init",
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.body(), "[null,null]");
}

#[tokio::test]
async fn shutdown_closes_every_session_and_clients_reconnect_later() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stop_rx.await;
    };
    let server = tokio::spawn(run(listener, Config::default(), Mode::Proxy, shutdown));
    let mut clients = Vec::new();
    for (transport, url) in [
        (Transport::BrowserChannel, format!("http://{addr}/channel")),
        (Transport::WebSocket, format!("ws://{addr}/ws")),
    ] {
        let client = browserver_client::connect(
            &url,
            Options {
                transport,
                ..Options::default()
            },
        );
        loop {
            let event = tokio::time::timeout(WAIT, client.next_event())
                .await
                .expect("in time");
            if let Some(browserver_client::Event::Open { .. }) = event {
                break;
            }
        }
        clients.push(client);
    }
    let _ = stop_tx.send(());
    tokio::time::timeout(WAIT, server)
        .await
        .expect("exits in time")
        .expect("task")
        .expect("ran");
    for client in clients {
        loop {
            match tokio::time::timeout(WAIT, client.next_event())
                .await
                .expect("event in time")
            {
                Some(browserver_client::Event::Close {
                    reason,
                    reconnecting,
                }) => {
                    // Closed, not stopped: a restarted server (or another node) gets them back.
                    assert_ne!(reason, browserver_client::CloseReason::Stopped);
                    assert!(reconnecting, "{reason}");
                    break;
                }
                Some(_) => {}
                None => panic!("ended without a close"),
            }
        }
    }
}

async fn fetch(
    host: &browserver_client::host::Host,
    authority: &str,
    path: &str,
) -> http::Response<Bytes> {
    let req = http::Request::get(path)
        .header("host", authority)
        .body(Bytes::new())
        .expect("req");
    tokio::time::timeout(WAIT, host.fetch(req))
        .await
        .expect("in time")
        .expect("answer")
}

#[tokio::test]
async fn a_client_calls_another_client_by_hostname_inside_the_proxy() {
    let addr = server(Config::default()).await;
    let (a, _) = hosted(addr, Transport::WebSocket).await;
    let (_b, b_name) = hosted(addr, Transport::BrowserChannel).await;
    let r = fetch(&a, &b_name, "/from-a?x=1").await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-seen-target"], "/from-a?x=1");
}

/// A loopback HTTP server the tests may reach through the proxy's egress.
async fn upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                TokioIo::new(stream),
                hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let text = format!("upstream saw {}", req.uri());
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(text))))
                    },
                ),
            ));
        }
    });
    addr
}

#[tokio::test]
async fn egress_to_a_loopback_server_works_only_when_allowed() {
    let up = upstream().await;
    let addr = server(Config::default()).await;
    let (host, _) = hosted(addr, Transport::WebSocket).await;
    let r = fetch(&host, &up.to_string(), "/data").await;
    assert_eq!(r.status(), 403, "loopback is refused by default");
    assert!(String::from_utf8_lossy(r.body()).contains("refused"));

    let addr = server(Config {
        egress_allow: vec![up.to_string()],
        ..Config::default()
    })
    .await;
    let (host, _) = hosted(addr, Transport::BrowserChannel).await;
    let r = fetch(&host, &up.to_string(), "/data?y=2").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.body(), "upstream saw /data?y=2");
}

#[tokio::test]
async fn egress_to_private_and_metadata_addresses_is_refused_without_connecting() {
    let addr = server(Config::default()).await;
    let (host, _) = hosted(addr, Transport::WebSocket).await;
    // Refused on the address alone: no packet leaves the machine.
    for target in [
        "10.255.255.1",
        "169.254.169.254",
        "192.168.0.1:8080",
        "[::1]:80",
    ] {
        let r = fetch(&host, target, "/").await;
        assert_eq!(r.status(), 403, "{target}");
    }
}

#[tokio::test]
async fn malformed_channel_messages_are_dropped_and_do_not_affect_other_clients() {
    let addr = server(Config::default()).await;
    let (_good, good_name) = hosted(addr, Transport::WebSocket).await;
    let bad = browserver_client::connect(&format!("ws://{addr}/ws"), Options::default());
    for garbage in [
        serde_json::json!("garbage"),
        serde_json::json!({"brow": 2, "response": {"status": 200}, "id": "zzzz"}),
        serde_json::json!("HTTP/1.1 200 OK\r\nx-brow-req-id: 999999\r\n\r\nunknown id"),
        serde_json::json!("x".repeat(100_000)),
    ] {
        drop(bad.send(&garbage));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = request(addr, &good_name, "GET", "/still-fine", &[], Bytes::new()).await;
    assert_eq!(r.status(), 201);
}

/// Refuses ingress without `authorization: Bearer letmein`, and egress to `/secret`.
struct Guard;

#[async_trait::async_trait]
impl browserver_transport_http::Authorizer for Guard {
    async fn authorize_ingress(
        &self,
        _client: &str,
        request: &browserver_transport_http::message::Message,
    ) -> Result<(), browserver_transport_http::Refusal> {
        let ok = request
            .headers
            .iter()
            .any(|(k, v)| k == "authorization" && v == b"Bearer letmein");
        if ok {
            Ok(())
        } else {
            Err(browserver_transport_http::Refusal::unauthorized(
                "a bearer token is required",
            ))
        }
    }

    async fn authorize_egress(
        &self,
        _client: &str,
        request: &browserver_transport_http::message::Message,
    ) -> Result<(), browserver_transport_http::Refusal> {
        match &request.head {
            browserver_transport_http::message::Head::Request { target, .. }
                if target == "/secret" =>
            {
                Err(browserver_transport_http::Refusal::forbidden("no secrets"))
            }
            _ => Ok(()),
        }
    }
}

#[tokio::test]
async fn authorization_hooks_refuse_with_401_and_403_and_a_reason() {
    let addr = server(Config {
        authorizer: std::sync::Arc::new(Guard),
        ..Config::default()
    })
    .await;
    let (a, a_name) = hosted(addr, Transport::WebSocket).await;
    let (_b, b_name) = hosted(addr, Transport::WebSocket).await;
    let r = request(addr, &a_name, "GET", "/", &[], Bytes::new()).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.body(), "a bearer token is required");
    let r = request(
        addr,
        &a_name,
        "GET",
        "/",
        &[("authorization", "Bearer letmein")],
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status(), 201);
    let r = fetch(&a, &b_name, "/secret").await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.body(), "no secrets");
}

/// Admits `token=alice-secret` as `alice`, `token=guest` with a random id, refuses the rest.
struct Tokens;

#[async_trait::async_trait]
impl browserver_transport_http::Authenticator for Tokens {
    async fn authenticate(
        &self,
        client: &browserver_transport_http::Connecting,
    ) -> Result<Option<String>, browserver_transport_http::Refusal> {
        match client.query_param("token") {
            Some("alice-secret") => Ok(Some("alice".into())),
            Some("guest") => Ok(None),
            _ => Err(browserver_transport_http::Refusal::unauthorized(
                "a valid token is required",
            )),
        }
    }
}

#[tokio::test]
async fn authentication_decides_who_connects_and_which_hostname_they_get() {
    let config = Config {
        authenticator: Some(std::sync::Arc::new(Tokens)),
        ..Config::default()
    };
    for transport in [Transport::WebSocket, Transport::BrowserChannel] {
        let addr = server(config.clone()).await;
        let url = match transport {
            Transport::WebSocket => format!("ws://{addr}/ws"),
            _ => format!("http://{addr}/channel"),
        };
        let with_token = |token: &str| Options {
            transport,
            extra_params: vec![("token".into(), token.into())],
            reconnect: false,
            ..Options::default()
        };
        let alice = host::serve(&url, with_token("alice-secret"), tower::service_fn(mirror));
        let name = tokio::time::timeout(WAIT, alice.hostname())
            .await
            .expect("in time");
        assert_eq!(name.as_deref(), Some("alice.localhost"), "{transport:?}");
        let r = request(addr, "alice.localhost", "GET", "/", &[], Bytes::new()).await;
        assert_eq!(r.status(), 201);

        let guest = host::serve(&url, with_token("guest"), tower::service_fn(mirror));
        let name = tokio::time::timeout(WAIT, guest.hostname())
            .await
            .expect("in time")
            .expect("name");
        assert_ne!(name, "alice.localhost");

        let refused = browserver_client::connect(&url, with_token("wrong"));
        loop {
            match tokio::time::timeout(WAIT, refused.next_event())
                .await
                .expect("in time")
            {
                Some(browserver_client::Event::Open { .. }) => {
                    panic!("{transport:?}: admitted without a token")
                }
                Some(browserver_client::Event::Close { .. }) | None => break,
                Some(browserver_client::Event::Error(e)) => {
                    assert!(e.contains("401"), "{transport:?}: {e}")
                }
                Some(_) => {}
            }
        }
    }
}

#[tokio::test]
async fn a_plain_websocket_client_speaking_the_original_text_format_serves_requests() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Ws;
    let addr = server(Config::default()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("connect");
    // A plain client is told nothing: find its name on the status endpoint (asking until the
    // proxy, which registers it just after the upgrade, lists it).
    let hostname = tokio::time::timeout(WAIT, async {
        loop {
            let list = request(
                addr,
                "127.0.0.1",
                "GET",
                "/_browserver/clients",
                &[],
                Bytes::new(),
            )
            .await;
            let list: serde_json::Value = serde_json::from_slice(list.body()).expect("json");
            if let Some(h) = list[0]["hostname"].as_str() {
                return h.to_string();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("listed in time");
    let pending = tokio::spawn(async move {
        request(
            addr,
            &hostname,
            "POST",
            "/form?x=1",
            &[("content-type", "text/plain")],
            Bytes::from_static(b"ping"),
        )
        .await
    });
    let first = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("frame");
    let Ws::Text(text) = first else {
        panic!("expected a text frame, got {first:?}")
    };
    let text = text.as_str().to_string();
    assert!(text.starts_with("POST /form?x=1 HTTP/1.1\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nping"), "{text}");
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("x-brow-req-id: "))
        .expect("x-brow-req-id")
        .trim()
        .to_string();
    let answer =
        format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-brow-req-id: {id}\r\n\r\npong");
    ws.send(Ws::Text(answer.into())).await.expect("send");
    let r = tokio::time::timeout(WAIT, pending)
        .await
        .expect("answered")
        .expect("task");
    assert_eq!((r.status().as_u16(), &r.body()[..]), (200, &b"pong"[..]));
}

#[tokio::test]
async fn echo_mode_sends_every_message_back_over_both_transports() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(run(
        listener,
        Config::default(),
        Mode::Echo,
        std::future::pending(),
    ));
    for (transport, url) in [
        (Transport::WebSocket, format!("ws://{addr}/ws")),
        (Transport::BrowserChannel, format!("http://{addr}/channel")),
    ] {
        let client = browserver_client::connect(
            &url,
            Options {
                transport,
                ..Options::default()
            },
        );
        let ack = client.send(&serde_json::json!({"echo": "me"}));
        loop {
            match tokio::time::timeout(WAIT, client.next_event())
                .await
                .expect("in time")
            {
                Some(browserver_client::Event::Message(v)) => {
                    assert_eq!(v, serde_json::json!({"echo": "me"}), "{transport:?}");
                    break;
                }
                Some(_) => {}
                None => panic!("ended"),
            }
        }
        assert_eq!(ack.await, Ok(()));
    }
}

type Ready = std::future::Ready<Result<http::Response<Full<Bytes>>, Infallible>>;

/// Answers every request with `who` in an `x-served-by` header.
fn served_by(
    who: &'static str,
) -> tower::util::ServiceFn<impl FnMut(http::Request<host::Body>) -> Ready + Clone + Send + 'static>
{
    tower::service_fn(move |_req: http::Request<host::Body>| {
        std::future::ready(Ok(http::Response::builder()
            .header("x-served-by", who)
            .body(Full::new(Bytes::new()))
            .expect("response")))
    })
}

#[tokio::test]
async fn a_second_connection_admitted_with_a_name_replaces_the_first_which_does_not_come_back() {
    let config = Config {
        authenticator: Some(std::sync::Arc::new(Tokens)),
        ..Config::default()
    };
    for transport in [Transport::WebSocket, Transport::BrowserChannel] {
        let addr = server(config.clone()).await;
        let url = match transport {
            Transport::WebSocket => format!("ws://{addr}/ws"),
            _ => format!("http://{addr}/channel"),
        };
        let options = || Options {
            transport,
            extra_params: vec![("token".into(), "alice-secret".into())],
            reconnect_delay: Duration::from_millis(100),
            ..Options::default()
        };
        let first = host::serve(&url, options(), served_by("first"));
        tokio::time::timeout(WAIT, first.hostname())
            .await
            .expect("in time");
        let who = |r: http::Response<Bytes>| {
            r.headers()
                .get("x-served-by")
                .map(|v| v.to_str().unwrap_or("").to_string())
        };
        let r = request(addr, "alice.localhost", "GET", "/", &[], Bytes::new()).await;
        assert_eq!(who(r).as_deref(), Some("first"), "{transport:?}");
        let second = host::serve(&url, options(), served_by("second"));
        tokio::time::timeout(WAIT, second.hostname())
            .await
            .expect("in time");
        // Long enough for the first to have reconnected several times, had it been allowed.
        tokio::time::sleep(Duration::from_secs(2)).await;
        for _ in 0..3 {
            let r = request(addr, "alice.localhost", "GET", "/", &[], Bytes::new()).await;
            assert_eq!(who(r).as_deref(), Some("second"), "{transport:?}");
        }
        drop(first);
    }
}

#[tokio::test]
async fn the_client_scripts_carry_the_configured_cors_origin() {
    let addr = server(Config {
        cors: Some("https://app.example".into()),
        ..Config::default()
    })
    .await;
    for path in ["/browserver.js", "/channel/bcsocket.js"] {
        let r = request(addr, "localhost", "GET", path, &[], Bytes::new()).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(
            r.headers()["access-control-allow-origin"],
            "https://app.example",
            "{path}"
        );
    }
    let plain = server(Config::default()).await;
    let r = request(
        plain,
        "localhost",
        "GET",
        "/browserver.js",
        &[],
        Bytes::new(),
    )
    .await;
    assert!(!r.headers().contains_key("access-control-allow-origin"));
}
