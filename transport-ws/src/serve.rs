//! Serving a [`WsEndpoint`] on its own (tests, examples): every request is an upgrade.

use tokio::net::TcpListener;

use crate::endpoint::WsEndpoint;

/// Serves `ws` on `listener` (the runtime's accept loop) until the task is dropped.
pub async fn serve(listener: TcpListener, ws: WsEndpoint) {
    browserver_runtime::serve(listener, move |req| {
        let ws = ws.clone();
        async move { ws.handle(req).await }
    })
    .await;
}
