//! The chat on warp: the BrowserChannel and WebSocket filters (feature `warp`) next to the
//! application's own route.
//!
//! ```sh
//! cargo run -p browserver-examples --example warp    # then open http://127.0.0.1:3000/
//! ```

use browserver_examples::{PAGE, spawn_chat};
use browserver_runtime::Hub;
use browserver_transport_bc::BrowserChannel;
use browserver_transport_ws::WsEndpoint;
use warp::Filter;

/// The routes: BrowserChannel under `/channel`, WebSocket at `/ws`, the page at `/`.
fn routes(
    hub: &Hub,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection>
+ Clone
+ Send
+ Sync
+ 'static {
    let (bc, bc_sessions) = BrowserChannel::new(Default::default());
    let (ws, ws_sessions) = WsEndpoint::new(Default::default());
    spawn_chat(hub.clone(), bc_sessions);
    spawn_chat(hub.clone(), ws_sessions);
    let page = warp::path::end().map(|| warp::reply::html(PAGE));
    bc.filter()
        .or(warp::path("ws").and(warp::path::end()).and(ws.filter()))
        .unify()
        .or(page.map(warp::Reply::into_response))
        .unify()
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("chat at http://{}/", listener.local_addr()?);
    warp::serve(routes(&Hub::default()))
        .incoming(listener)
        .run()
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use browserver_client::Transport;
    use browserver_examples::support::{connect, fetch, message};
    use serde_json::json;

    #[tokio::test]
    async fn clients_of_both_transports_chat_through_warp() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hub = Hub::default();
        tokio::spawn(warp::serve(routes(&hub)).incoming(listener).run());
        let bc = connect(&format!("http://{addr}/channel"), Transport::BrowserChannel).await;
        let ws = connect(&format!("ws://{addr}/ws"), Transport::WebSocket).await;
        while hub.members("lobby").len() < 2 {
            tokio::task::yield_now().await;
        }
        bc.send(&json!({"say": "over warp"}))
            .await
            .expect("acknowledged");
        let said = message(&ws).await;
        assert_eq!(said["text"], "over warp");
        // warp hands the filters the peer address.
        assert!(
            said["from"]
                .as_str()
                .is_some_and(|f| f.contains("127.0.0.1:"))
        );
        assert_eq!(fetch(addr, "localhost", "/").await.0, 200);
    }
}
