//! A minimal HTTP/1.1 server for a [`BrowserChannel`]: enough for tests, examples and the echo
//! server. Applications with their own server mount the service or the warp filter instead.

use std::convert::Infallible;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::service::{BrowserChannel, ClientAddr};

/// Serves `bc` on `listener` until the task is dropped; requests outside `base` get 404.
/// Each connection runs on its own task; a failed `accept` (for example too many open
/// files) is logged and retried.
pub async fn serve(listener: TcpListener, bc: BrowserChannel) {
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let bc = bc.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                req.extensions_mut().insert(ClientAddr(addr));
                let bc = bc.clone();
                async move { Ok::<_, Infallible>(bc.handle(req).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}
