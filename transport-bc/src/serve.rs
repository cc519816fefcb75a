//! Serving a [`BrowserChannel`] on its own: enough for tests, examples and the echo server.
//! Applications with their own server mount the service or the warp filter instead.

use tokio::net::TcpListener;

use crate::service::BrowserChannel;

/// Serves `bc` on `listener` (HTTP/1 and HTTP/2, with the runtime's accept loop) until the
/// task is dropped; requests outside `base` get 404.
pub async fn serve(listener: TcpListener, bc: BrowserChannel) {
    browserver_runtime::serve(listener, move |req| {
        let bc = bc.clone();
        async move { bc.handle(req).await }
    })
    .await;
}
