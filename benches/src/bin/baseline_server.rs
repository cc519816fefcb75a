//! `baseline-server`: the bare servers browserver is measured against.
//!
//! - `ws-echo`: tokio-tungstenite's own echo example (every text or binary frame is
//!   forwarded back, `read.forward(write)`), at any path;
//! - `http-hello`: a hyper HTTP/1.1 server answering every request with `hello`.
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

async fn hello(
    _req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    Ok(http::Response::new(Full::new(Bytes::from_static(b"hello"))))
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
