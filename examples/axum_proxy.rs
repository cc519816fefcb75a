//! browserver's proxy next to an application's own routes, on one port, in axum: every
//! connected client is reachable at `<name>.localhost:3000`, everything else is the app's.
//!
//! ```sh
//! cargo run -p browserver-examples --example axum-proxy
//! # open http://127.0.0.1:3000/ (the app), connect a client (`browserver.js`, the Rust
//! # client's `host::serve`), then open http://<its name>.localhost:3000/
//! ```

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use browserver_server::{Browserver, Config, Mode};

/// The application's routes with browserver in front: requests for `<name>.localhost`, the
/// channel endpoints, `/browserver.js` and `/_browserver/clients` are browserver's.
fn app(browserver: &Browserver) -> Router {
    Router::new()
        .route("/", get(|| async { "the application's home" }))
        .route("/api/hello", get(|| async { "hello from the application" }))
        .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "no such page") })
        .layer(browserver.clone())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    let browserver = Browserver::new(
        Config {
            host_pattern: "*.localhost".into(),
            ..Config::default()
        },
        Mode::Proxy,
    )?;
    let app = app(&browserver);
    println!("app and proxy at http://{}/", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use browserver_client::{Options, Transport, host};
    use browserver_examples::support::{WAIT, fetch, serve_axum};

    async fn start() -> SocketAddr {
        let browserver = Browserver::new(Config::default(), Mode::Proxy).expect("config");
        serve_axum(app(&browserver)).await
    }

    /// A client host that answers every request with the path it was asked for.
    async fn client(addr: SocketAddr, transport: Transport) -> (host::Host, String) {
        let url = match transport {
            Transport::WebSocket => format!("ws://{addr}/ws"),
            _ => format!("http://{addr}/channel"),
        };
        let options = Options {
            transport,
            ..Options::default()
        };
        type Body = http_body_util::Full<bytes::Bytes>;
        let service = tower::service_fn(|req: http::Request<host::Body>| async move {
            let body = format!("a client answers {}", req.uri().path());
            Ok::<_, std::convert::Infallible>(http::Response::new(Body::from(body)))
        });
        let h = host::serve(&url, options, service);
        let hostname = tokio::time::timeout(WAIT, h.hostname())
            .await
            .expect("in time")
            .expect("hostname");
        (h, hostname)
    }

    #[tokio::test]
    async fn clients_and_the_application_share_one_port() {
        let addr = start().await;
        for transport in [Transport::WebSocket, Transport::BrowserChannel] {
            let (_host, hostname) = client(addr, transport).await;
            let (status, body) = fetch(addr, &hostname, "/page").await;
            assert_eq!((status, body.as_str()), (200, "a client answers /page"));
            // The client's host owns every path, even those the application routes.
            let (_, body) = fetch(addr, &hostname, "/api/hello").await;
            assert_eq!(body, "a client answers /api/hello");
        }
        assert_eq!(
            fetch(addr, "localhost", "/").await,
            (200, "the application's home".into())
        );
        assert_eq!(
            fetch(addr, "localhost", "/api/hello").await,
            (200, "hello from the application".into())
        );
        assert_eq!(
            fetch(addr, "localhost", "/missing").await,
            (404, "no such page".into())
        );
        let (status, script) = fetch(addr, "localhost", "/browserver.js").await;
        assert_eq!(status, 200);
        assert!(!script.is_empty());
        // An unknown client: the proxy's answer, not the application's.
        assert_eq!(fetch(addr, "nosuch.localhost", "/").await.0, 504);
    }

    #[tokio::test]
    async fn the_client_list_answers_loopback_peers_known_through_connect_info() {
        let addr = start().await;
        let (_host, hostname) = client(addr, Transport::WebSocket).await;
        let (status, list) = fetch(addr, "localhost", "/_browserver/clients").await;
        assert_eq!(status, 200, "{list}");
        assert!(list.contains(&hostname), "{list}");
    }
}
