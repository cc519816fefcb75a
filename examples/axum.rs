//! A chat in axum over BrowserChannel and WebSocket: one handler for both transports,
//! rooms and typed messages, the client address from axum's `ConnectInfo`.
//!
//! ```sh
//! cargo run -p browserver-examples --example axum    # then open http://127.0.0.1:3000/
//! ```

use std::net::SocketAddr;

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use browserver_examples::{PAGE, spawn_chat};
use browserver_runtime::Hub;
use browserver_transport_bc::BrowserChannel;
use browserver_transport_ws::WsEndpoint;

/// The application: its own page, BrowserChannel nested at `/channel`, WebSocket at `/ws`.
fn app(hub: &Hub) -> Router {
    let (bc, bc_sessions) = BrowserChannel::new(browserver_transport_bc::Options {
        base: "/channel".into(),
        ..Default::default()
    });
    let (ws, ws_sessions) = WsEndpoint::new(Default::default());
    spawn_chat(hub.clone(), bc_sessions);
    spawn_chat(hub.clone(), ws_sessions);
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        // axum strips `/channel`; the endpoint answers relative to where it is nested.
        .nest_service("/channel", bc)
        .route_service("/ws", ws)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("chat at http://{}/", listener.local_addr()?);
    let app = app(&Hub::default());
    // `ConnectInfo` gives every session its client's address, with no middleware.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use browserver_client::Transport;
    use browserver_examples::support::{connect, fetch, message, serve_axum as start};
    use serde_json::json;

    #[tokio::test]
    async fn a_browserchannel_and_a_websocket_client_chat_in_one_room() {
        let hub = Hub::default();
        let addr = start(app(&hub)).await;
        let bc = connect(&format!("http://{addr}/channel"), Transport::BrowserChannel).await;
        let ws = connect(&format!("ws://{addr}/ws"), Transport::WebSocket).await;
        // Both are in the lobby once the hub has them.
        while hub.members("lobby").len() < 2 {
            tokio::task::yield_now().await;
        }
        bc.send(&json!({"say": "hello from bc"}))
            .await
            .expect("acknowledged");
        let said = message(&ws).await;
        assert_eq!(said["text"], "hello from bc");
        assert_eq!(said["room"], "lobby");
        // The sender's address came from `ConnectInfo`: a loopback address.
        let from = said["from"].as_str().expect("from");
        assert!(from.starts_with("browserchannel 127.0.0.1:"), "{from}");

        // Rooms: only members hear a room; a typed error for what is not understood.
        ws.send(&json!({"join": "side"}))
            .await
            .expect("acknowledged");
        ws.send(&json!({"say": "psst", "room": "side"}))
            .await
            .expect("acknowledged");
        bc.send(&json!({"say": "anyone?", "room": "side"}))
            .await
            .expect("acknowledged");
        assert_eq!(message(&bc).await["error"], "not in room side");
        bc.send(&json!({"shout": 1})).await.expect("acknowledged");
        assert!(message(&bc).await["error"].is_string());
        ws.send(&json!({"say": "back in the lobby"}))
            .await
            .expect("acknowledged");
        assert_eq!(message(&bc).await["text"], "back in the lobby");
    }

    #[tokio::test]
    async fn the_application_keeps_its_own_routes() {
        let addr = start(app(&Hub::default())).await;
        let (status, body) = fetch(addr, "localhost", "/").await;
        assert_eq!(status, 200);
        assert!(body.contains("browserver chat"));
        assert_eq!(fetch(addr, "localhost", "/nothing").await.0, 404);
        let (status, script) = fetch(addr, "localhost", "/channel/bcsocket.js").await;
        assert_eq!(status, 200);
        assert!(script.contains("BCSocket"));
    }

    /// The other ways users mount the transports: as layers (`Router::layer`, `ServiceBuilder`)
    /// beside the application's fallback.
    #[tokio::test]
    async fn the_endpoints_work_as_layers_beside_a_fallback() {
        let hub = Hub::default();
        let (bc, bc_sessions) = BrowserChannel::new(Default::default());
        let (ws, ws_sessions) = WsEndpoint::new(Default::default());
        spawn_chat(hub.clone(), bc_sessions);
        spawn_chat(hub.clone(), ws_sessions);
        let router = Router::new()
            .route("/", get(|| async { "home" }))
            .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "app's own 404") })
            .layer(bc)
            .layer(ws.at("/ws"));
        let addr = start(router).await;
        assert_eq!(fetch(addr, "localhost", "/").await.1, "home");
        assert_eq!(
            fetch(addr, "localhost", "/elsewhere").await.1,
            "app's own 404"
        );
        let b = connect(&format!("http://{addr}/channel"), Transport::BrowserChannel).await;
        let w = connect(&format!("ws://{addr}/ws"), Transport::WebSocket).await;
        while hub.members("lobby").len() < 2 {
            tokio::task::yield_now().await;
        }
        w.send(&json!({"say": "layered"}))
            .await
            .expect("acknowledged");
        let said = message(&b).await;
        assert_eq!(said["text"], "layered");
        assert!(
            said["from"]
                .as_str()
                .is_some_and(|f| f.contains("127.0.0.1"))
        );
    }

    #[tokio::test]
    async fn service_builder_composes_the_layers_around_a_router() {
        let hub = Hub::default();
        let (bc, bc_sessions) = BrowserChannel::new(Default::default());
        spawn_chat(hub.clone(), bc_sessions);
        let app = tower::ServiceBuilder::new()
            .layer(bc)
            .service(Router::new().route("/", get(|| async { "home" })));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(browserver_runtime::serve(listener, move |req| {
            let mut app = app.clone();
            async move {
                use tower::Service;
                match app.call(req.map(axum::body::Body::new)).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            }
        }));
        assert_eq!(fetch(addr, "localhost", "/").await.1, "home");
        let client = connect(&format!("http://{addr}/channel"), Transport::BrowserChannel).await;
        client
            .send(&json!({"join": "x"}))
            .await
            .expect("acknowledged");
        // Acknowledged means received; the handler joins right after.
        tokio::time::timeout(browserver_examples::support::WAIT, async {
            while hub.members("x").is_empty() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("joined");
    }
}
