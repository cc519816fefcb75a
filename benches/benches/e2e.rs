//! End-to-end round trips on loopback: one message out through the Rust client and its echo
//! back (over WebSocket and BrowserChannel), and one GET through the browserver proxy to a
//! client host and its answer back.
//!
//! `cargo bench -p browserver-benches --bench e2e`

use std::time::Duration;

use std::hint::black_box;

use browserver_client::{Client, Event, Options, Transport, connect, host};
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

async fn bc_echo() -> String {
    let (bc, mut sessions) = browserver_transport_bc::BrowserChannel::new(Default::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(browserver_transport_bc::serve(listener, bc));
    tokio::spawn(async move {
        while let Some(s) = sessions.accept().await {
            tokio::spawn(async move {
                while let Some(m) = s.recv().await {
                    drop(s.send(m));
                }
            });
        }
    });
    format!("http://{addr}/channel")
}

async fn ws_echo() -> String {
    let (ws, mut sessions) = browserver_transport_ws::WsEndpoint::new(Default::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(browserver_transport_ws::serve(listener, ws));
    tokio::spawn(async move {
        while let Some(s) = sessions.accept().await {
            tokio::spawn(async move {
                while let Some(m) = s.recv().await {
                    drop(s.send(m));
                }
            });
        }
    });
    format!("ws://{addr}/ws")
}

async fn open(url: &str, transport: Transport) -> Client {
    let client = connect(
        url,
        Options {
            transport,
            ..Options::default()
        },
    );
    loop {
        match tokio::time::timeout(Duration::from_secs(10), client.next_event()).await {
            Ok(Some(Event::Open { .. })) => return client,
            Ok(Some(_)) => {}
            other => panic!("no open: {other:?}"),
        }
    }
}

async fn round_trip(client: &Client) {
    drop(client.send(&json!({"ping": 1})));
    loop {
        if let Some(Event::Message(_)) = client.next_event().await {
            return;
        }
    }
}

fn round_trips(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let mut group = c.benchmark_group("e2e/client_roundtrip");
    group.throughput(Throughput::Elements(1));
    for (name, transport) in [
        ("browserchannel", Transport::BrowserChannel),
        ("websocket", Transport::WebSocket),
    ] {
        let client = rt.block_on(async {
            let url = if transport == Transport::WebSocket {
                ws_echo().await
            } else {
                bc_echo().await
            };
            open(&url, transport).await
        });
        group.bench_function(name, |b| b.to_async(&rt).iter(|| round_trip(&client)));
    }
    group.finish();
}

async fn hello(
    _req: http::Request<browserver_client::host::Body>,
) -> Result<http::Response<Full<Bytes>>, std::convert::Infallible> {
    Ok(http::Response::new(Full::new(Bytes::from_static(b"hello"))))
}

/// A proxy, a client host connected to it, and a keep-alive HTTP connection to the proxy.
async fn proxied(
    transport: Transport,
) -> (
    host::Host,
    String,
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(browserver_server::run(
        listener,
        browserver_server::Config::default(),
        browserver_server::Mode::Proxy,
        std::future::pending(),
    ));
    let url = match transport {
        Transport::BrowserChannel => format!("http://{addr}/channel"),
        _ => format!("ws://{addr}/ws"),
    };
    let h = host::serve(
        &url,
        Options {
            transport,
            ..Options::default()
        },
        tower::service_fn(hello),
    );
    let hostname = tokio::time::timeout(Duration::from_secs(10), h.hostname())
        .await
        .ok()
        .flatten()
        .expect("the host connects");
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    (h, hostname, sender)
}

/// A hyper server answering `hello` (the baseline for the proxied GET) and a connection to it.
async fn direct() -> (String, hyper::client::conn::http1::SendRequest<Full<Bytes>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                TokioIo::new(stream),
                hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                        Bytes::from_static(b"hello"),
                    )))
                }),
            ));
        }
    });
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    (addr.to_string(), sender)
}

/// One GET through the proxy to a client host, and the same GET to a bare hyper server
/// (`direct_hyper`, the baseline: the ratio of the two is the proxy's cost in latency).
fn proxied_get(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let mut group = c.benchmark_group("e2e/proxied_get");
    group.throughput(Throughput::Elements(1));
    let mut targets = Vec::new();
    for (name, transport) in [
        ("websocket_host", Some(Transport::WebSocket)),
        ("browserchannel_host", Some(Transport::BrowserChannel)),
        ("direct_hyper", None),
    ] {
        let (host, hostname, sender) = match transport {
            Some(t) => {
                let (h, name, sender) = rt.block_on(proxied(t));
                (Some(h), name, sender)
            }
            None => {
                let (name, sender) = rt.block_on(direct());
                (None, name, sender)
            }
        };
        targets.push((name, host, hostname, tokio::sync::Mutex::new(sender)));
    }
    for (name, _host, hostname, sender) in &targets {
        group.bench_function(*name, |b| {
            b.to_async(&rt).iter(|| async {
                let req = http::Request::get("/")
                    .header("host", hostname.as_str())
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                let mut sender = sender.lock().await;
                sender.ready().await.expect("connection ready");
                let res = sender.send_request(req).await.expect("response");
                assert_eq!(res.status(), 200);
                black_box(res.into_body().collect().await.expect("body"));
            })
        });
    }
    group.finish();
}

criterion_group!(benches, round_trips, proxied_get);
criterion_main!(benches);
