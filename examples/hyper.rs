//! The chat on plain hyper: both endpoints as tower services in front of the application's
//! own page, the client address inserted by the accept loop (`ClientAddr`).
//!
//! ```sh
//! cargo run -p browserver-examples --example hyper    # then open http://127.0.0.1:3000/
//! ```

use std::convert::Infallible;

use browserver_examples::{PAGE, spawn_chat};
use browserver_runtime::{ClientAddr, Hub};
use browserver_transport_bc::BrowserChannel;
use browserver_transport_ws::WsEndpoint;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tower::ServiceBuilder;

/// The application's own answer: the page at `/`, 404 elsewhere.
async fn page(req: http::Request<Incoming>) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let (status, body) = match req.uri().path() {
        "/" => (200, PAGE),
        _ => (404, "Not found"),
    };
    let mut response = http::Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
    Ok(response)
}

/// Accepts connections on `listener` for ever; each request gets its client's address.
async fn serve(listener: tokio::net::TcpListener, hub: Hub) {
    let (bc, bc_sessions) = BrowserChannel::new(Default::default());
    let (ws, ws_sessions) = WsEndpoint::new(Default::default());
    spawn_chat(hub.clone(), bc_sessions);
    spawn_chat(hub, ws_sessions);
    // BrowserChannel under `/channel`, WebSocket at `/ws`, the page behind them.
    let app = ServiceBuilder::new()
        .layer(bc)
        .layer(ws.at("/ws"))
        .service_fn(page);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let app = ServiceBuilder::new()
            .map_request(move |mut req: http::Request<Incoming>| {
                req.extensions_mut().insert(ClientAddr(peer));
                req
            })
            .service(app.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
                // WebSocket upgrades need the connection handed over.
                .with_upgrades();
            if let Err(e) = connection.await {
                eprintln!("connection from {peer}: {e}");
            }
        });
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("chat at http://{}/", listener.local_addr()?);
    serve(listener, Hub::default()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use browserver_client::Transport;
    use browserver_examples::support::{connect, fetch, message};
    use serde_json::json;

    #[tokio::test]
    async fn clients_of_both_transports_chat_through_plain_hyper() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hub = Hub::default();
        tokio::spawn(serve(listener, hub.clone()));
        let bc = connect(&format!("http://{addr}/channel"), Transport::BrowserChannel).await;
        let ws = connect(&format!("ws://{addr}/ws"), Transport::WebSocket).await;
        while hub.members("lobby").len() < 2 {
            tokio::task::yield_now().await;
        }
        ws.send(&json!({"say": "over hyper"}))
            .await
            .expect("acknowledged");
        let said = message(&bc).await;
        assert_eq!(said["text"], "over hyper");
        assert!(
            said["from"]
                .as_str()
                .is_some_and(|f| f.starts_with("websocket-session 127.0.0.1:"))
        );
        assert_eq!(fetch(addr, "localhost", "/").await.0, 200);
        assert_eq!(fetch(addr, "localhost", "/other").await.0, 404);
    }
}
