//! `baseline-server`: the bare servers browserver is measured against.
//!
//! - `ws-echo`: tokio-tungstenite's own echo example (every text or binary frame is
//!   forwarded back, `read.forward(write)`), at any path;
//! - `http-hello`: a hyper HTTP/1.1 server answering every request with `hello`; and, for the
//!   tunnel comparison, `GET /bytes?n=N` with N bytes (streamed, 64 KiB at a time) and any
//!   `POST` with the number of body bytes it read.
//!
//! `baseline-server ws-echo --listen 127.0.0.1:0` prints `listening on ADDR` once ready.

use std::convert::Infallible;

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use futures_util::{StreamExt, TryStreamExt};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kind {
    WsEcho,
    HttpHello,
}

#[derive(Parser, Debug)]
struct Args {
    #[arg(value_enum)]
    kind: Kind,
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
}

use browserver_benches::load::http::Zeros;

type Body = http_body_util::Either<Full<Bytes>, Zeros>;

async fn hello(
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Body>, Infallible> {
    use http_body_util::BodyExt;
    if req.method() == http::Method::POST {
        let mut body = req.into_body();
        let mut n: u64 = 0;
        while let Some(Ok(frame)) = body.frame().await {
            n += frame.data_ref().map_or(0, |d| d.len() as u64);
        }
        return Ok(http::Response::new(http_body_util::Either::Left(
            Full::new(Bytes::from(n.to_string())),
        )));
    }
    if req.uri().path() == "/bytes" {
        let n = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("n="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        return Ok(http::Response::new(http_body_util::Either::Right(Zeros {
            left: n,
        })));
    }
    Ok(http::Response::new(http_body_util::Either::Left(
        Full::new(Bytes::from_static(b"hello")),
    )))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        match args.kind {
            Kind::WsEcho => tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                let (write, read) = ws.split();
                let _ = read
                    .try_filter(|m| std::future::ready(m.is_text() || m.is_binary()))
                    .forward(write)
                    .await;
            }),
            Kind::HttpHello => tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(hello))
                    .await;
            }),
        };
    }
}
