//! A minimal HTTP/1.1 server that upgrades every request on `listener` (tests, examples).

use std::convert::Infallible;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::endpoint::{ClientAddr, WsEndpoint};

/// Serves `ws` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, ws: WsEndpoint) {
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let ws = ws.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                req.extensions_mut().insert(ClientAddr(addr));
                let ws = ws.clone();
                async move { Ok::<_, Infallible>(ws.handle(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}
