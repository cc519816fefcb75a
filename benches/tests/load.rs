//! The load tool's own check: short runs against in-process servers on loopback must see
//! every echo come back once and in order, and every proxied GET answered. (If the tool
//! miscounted, every figure in docs/benchmarks.md would be wrong.)

use std::time::Duration;

use browserver_benches::load::{self, Ctx, bc, ws};
use serde_json::Value;
use tokio::net::TcpListener;

async fn server(mode: browserver_server::Mode) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(browserver_server::run(
        listener,
        browserver_server::Config::default(),
        mode,
        std::future::pending(),
    ));
    addr
}

fn assert_clean(summary: &Value, sessions: u64) {
    assert_eq!(summary["opened"], sessions, "{summary}");
    assert!(summary["echoed"].as_u64() > Some(100), "{summary}");
    assert_eq!(summary["echoed"], summary["sent"], "{summary}");
    for field in ["errors", "lost", "out_of_order", "duplicates"] {
        assert_eq!(summary[field], 0, "{field}: {summary}");
    }
    assert!(summary["latency_us"]["p99"].as_u64() > Some(0), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_over_browserchannel_counts_every_message_once_in_order() {
    let addr = server(browserver_server::Mode::Echo).await;
    let ctx = Ctx::new(format!("http://{addr}/channel"), 8, 16);
    let client = load::http::client(4);
    let summary = load::run_echo(ctx, "browserchannel", 5, 1.0, move |c| {
        bc::session(c, client.clone())
    })
    .await;
    assert_clean(&summary, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_over_websocket_in_both_dialects_counts_every_message_once_in_order() {
    let addr = server(browserver_server::Mode::Echo).await;
    for dialect in [ws::Dialect::Plain, ws::Dialect::Session] {
        let ctx = Ctx::new(format!("ws://{addr}/ws"), 8, 16);
        let summary =
            load::run_echo(ctx, "websocket", 5, 1.0, move |c| ws::session(c, dialect)).await;
        assert_clean(&summary, 5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_open_and_send_nothing() {
    let addr = server(browserver_server::Mode::Echo).await;
    let ctx = Ctx::new(format!("http://{addr}/channel"), 0, 16);
    let client = load::http::client(4);
    let summary = load::run_echo(ctx, "browserchannel", 20, 0.5, move |c| {
        bc::session(c, client.clone())
    })
    .await;
    assert_eq!(summary["opened"], 20, "{summary}");
    assert_eq!(summary["sent"], 0, "{summary}");
    assert_eq!(summary["errors"], 0, "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_to_an_unknown_client_count_as_errors() {
    let addr = server(browserver_server::Mode::Proxy).await;
    let summary = tokio::time::timeout(
        Duration::from_secs(20),
        load::http::run_gets(&[addr], vec!["nobody.localhost".into()], "/", 2, 0.5),
    )
    .await
    .expect("bounded");
    assert_eq!(summary["requests"], 0, "{summary}");
    assert!(summary["errors"].as_u64() > Some(0), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_through_the_proxy_reach_a_client_host() {
    use browserver_client::{Options, Transport, host};
    use bytes::Bytes;
    use http_body_util::Full;
    let addr = server(browserver_server::Mode::Proxy).await;
    let h = host::serve(
        &format!("ws://{addr}/ws"),
        Options {
            transport: Transport::WebSocket,
            ..Options::default()
        },
        tower::service_fn(|_req: http::Request<browserver_client::host::Body>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(
                b"hello",
            ))))
        }),
    );
    let name = tokio::time::timeout(Duration::from_secs(10), h.hostname())
        .await
        .ok()
        .flatten()
        .expect("the host connects");
    let summary = load::http::run_gets(&[addr], vec![name], "/", 4, 1.0).await;
    assert!(summary["requests"].as_u64() > Some(50), "{summary}");
    assert_eq!(summary["errors"], 0, "{summary}");
}
