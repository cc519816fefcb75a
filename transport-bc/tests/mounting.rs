//! The same endpoint mounted as a warp filter and in front of another tower service.

mod common;
use common::MessageExt;

use std::convert::Infallible;

use browserver_transport_bc::{BrowserChannel, Options};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use warp::Filter;

async fn get(addr: std::net::SocketAddr, uri: &str) -> (u16, String) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::get(uri)
        .header("host", "x")
        .body(Full::new(Bytes::new()))
        .expect("req");
    let r = sender.send_request(req).await.expect("response");
    let status = r.status().as_u16();
    let body = r.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn warp_filter_serves_the_channel_and_lets_other_routes_through() {
    let (bc, mut sessions) = BrowserChannel::new(Options::default());
    let routes = bc
        .filter()
        .or(warp::path("hello").map(|| "hello from warp"));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(warp::serve(routes).incoming(listener).run());
    assert_eq!(
        get(addr, "/channel/test?VER=8&MODE=init").await,
        (200, "[null,null]".into())
    );
    assert_eq!(get(addr, "/hello").await, (200, "hello from warp".into()));

    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::post("/channel/bind?VER=8&RID=7")
        .header("host", "x")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from("count=1&ofs=0&req0__S=via%20warp")))
        .expect("req");
    let r = sender.send_request(req).await.expect("response");
    assert_eq!(r.status(), 200);
    let session = sessions.accept().await.expect("session");
    assert_eq!(
        session.recv().await.expect("message").value(),
        Some(serde_json::json!("via warp"))
    );
}

#[tokio::test]
async fn with_fallback_routes_other_paths_to_the_inner_service() {
    let (bc, _sessions) = BrowserChannel::new(Options::default());
    let fallback = tower::service_fn(|_req: http::Request<Incoming>| async {
        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"app"))))
    });
    let svc = bc.with_fallback(fallback);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let svc = hyper_util::service::TowerToHyperService::new(svc.clone());
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc),
            );
        }
    });
    assert_eq!(
        get(addr, "/channel/test?VER=8&MODE=init").await,
        (200, "[null,null]".into())
    );
    assert_eq!(get(addr, "/anything/else").await, (200, "app".into()));
}

#[tokio::test]
async fn axum_router_mounts_it_as_a_fallback_service() {
    let (bc, _sessions) = BrowserChannel::new(Options::default());
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "axum home" }))
        .fallback_service(bc);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    assert_eq!(get(addr, "/").await, (200, "axum home".into()));
    assert_eq!(
        get(addr, "/channel/test?VER=8&MODE=init").await,
        (200, "[null,null]".into())
    );
}
