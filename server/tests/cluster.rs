//! Several nodes on one Redis, against the real binary and a real `redis-server` on loopback
//! (scripts/test installs it), behind round-robin fronts without stickiness: per TCP
//! connection (L4) and per request (L7). Hosts on different nodes are reachable through every
//! node, bodies and WebSocket upgrades included, a BrowserChannel host whose every request
//! lands on the next node among them; a WebSocket session resumes through whichever node its
//! new connection lands on; killing a node drops only its clients, which come back through
//! the others; Redis going away and restarting empty is survived and repaired by the
//! heartbeats; the internal listener refuses strangers; bodies pass through unheld.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{Expose, Server, WAIT};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The registry's time to live in these tests (heartbeats every second).
const TTL: &str = "3s";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A throwaway `redis-server` on a loopback port, without persistence.
struct Redis {
    port: u16,
    child: tokio::process::Child,
}

impl Redis {
    async fn start() -> Redis {
        Redis::on(free_port()).await
    }

    async fn on(port: u16) -> Redis {
        let mut child = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server (scripts/test installs it from apt)");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.expect("stdout") {
                if line.contains("Ready to accept connections") {
                    return;
                }
            }
            panic!("redis-server ended");
        })
        .await
        .expect("redis-server starts in time");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Redis { port, child }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis")
    }

    /// The node registered as holding `name`.
    async fn holder(&self, name: &str) -> Option<String> {
        let mut c = self.connection().await;
        redis::cmd("GET")
            .arg(format!("browserver:name:{name}"))
            .query_async(&mut c)
            .await
            .expect("GET")
    }

    /// Stops it; `on(port)` starts an empty one again.
    async fn stop(mut self) -> u16 {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
        self.port
    }
}

/// A node of the cluster: the proxy (or `extra`, e.g. `echo`) on `redis`, with its internal
/// listener on a known port.
async fn node(redis: &Redis, id: &str, extra: &[&str]) -> (Server, SocketAddr) {
    let internal = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (url, listen) = (redis.url(), internal.to_string());
    let mut args = extra.to_vec();
    args.extend([
        "--redis",
        &url,
        "--node-id",
        id,
        "--cluster-ttl",
        TTL,
        "--cluster-listen",
        &listen,
    ]);
    (Server::start(&args).await, internal)
}

/// A round-robin TCP front without stickiness: each connection to the next node that
/// accepts. `cut` drops every connection it carries.
struct Front {
    addr: SocketAddr,
    pipes: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Front {
    async fn start(backends: Vec<SocketAddr>) -> Front {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let pipes: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let held = pipes.clone();
        tokio::spawn(async move {
            let mut next = 0usize;
            while let Ok((mut client, _)) = listener.accept().await {
                let mut upstream = None;
                for _ in 0..backends.len() {
                    let backend = backends[next % backends.len()];
                    next += 1;
                    if let Ok(s) = tokio::net::TcpStream::connect(backend).await {
                        upstream = Some(s);
                        break;
                    }
                }
                let Some(mut upstream) = upstream else {
                    continue;
                };
                let pipe = tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
                held.lock().expect("lock").push(pipe.abort_handle());
            }
        });
        Front { addr, pipes }
    }

    fn cut(&self) {
        for pipe in self.pipes.lock().expect("lock").drain(..) {
            pipe.abort();
        }
    }
}

/// A round-robin HTTP front without stickiness: each request to the next node that accepts
/// a connection, on a connection of its own (an upgrade is piped once switched).
async fn l7_front(backends: Vec<SocketAddr>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (backends, next) = (backends.clone(), next.clone());
            let service =
                hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                    let (backends, next) = (backends.clone(), next.clone());
                    async move {
                        let mut upstream = None;
                        for _ in 0..backends.len() {
                            let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            if let Ok(s) =
                                tokio::net::TcpStream::connect(backends[k % backends.len()]).await
                            {
                                upstream = Some(s);
                                break;
                            }
                        }
                        let upstream = upstream.expect("a node accepts");
                        let (mut sender, conn) =
                            hyper::client::conn::http1::handshake(TokioIo::new(upstream))
                                .await
                                .expect("handshake");
                        tokio::spawn(conn.with_upgrades());
                        let downstream = hyper::upgrade::on(&mut req);
                        let mut response = sender.send_request(req).await?;
                        if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                            let up = hyper::upgrade::on(&mut response);
                            tokio::spawn(async move {
                                if let (Ok(down), Ok(up)) = tokio::join!(downstream, up) {
                                    let _ = tokio::io::copy_bidirectional(
                                        &mut TokioIo::new(down),
                                        &mut TokioIo::new(up),
                                    )
                                    .await;
                                }
                            });
                        }
                        Ok::<_, hyper::Error>(response)
                    }
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades(),
            );
        }
    });
    addr
}

/// A local server: `GET` → `<tag> GET <path> xff=<x-forwarded-for>`; `POST` → the body back;
/// a WebSocket upgrade → an echo of every message prefixed with the tag.
async fn local_server(tag: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |mut req: http::Request<hyper::body::Incoming>| async move {
                        if req.headers().contains_key(http::header::UPGRADE) {
                            let key = req
                                .headers()
                                .get("sec-websocket-key")
                                .cloned()
                                .expect("key");
                            let upgrade = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                let Ok(io) = upgrade.await else { return };
                                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                                    TokioIo::new(io),
                                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                                    None,
                                )
                                .await;
                                while let Some(Ok(m)) = ws.next().await {
                                    if let Ok(text) = m.to_text() {
                                        let reply = format!("{tag} {text}");
                                        if ws.send(reply.into()).await.is_err() {
                                            return;
                                        }
                                    }
                                }
                            });
                            let accept =
                                tokio_tungstenite::tungstenite::handshake::derive_accept_key(
                                    key.as_bytes(),
                                );
                            let response = http::Response::builder()
                                .status(101)
                                .header("connection", "upgrade")
                                .header("upgrade", "websocket")
                                .header("sec-websocket-accept", accept)
                                .body(Full::new(Bytes::new()))
                                .expect("response");
                            return Ok::<_, Infallible>(response);
                        }
                        let xff = req
                            .headers()
                            .get("x-forwarded-for")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_string();
                        let head = format!("{tag} {} {} xff={xff}", req.method(), req.uri());
                        let body = if req.method() == http::Method::POST {
                            req.into_body().collect().await.expect("body").to_bytes()
                        } else {
                            Bytes::from(head)
                        };
                        Ok(http::Response::new(Full::new(body)))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// One request with `Host: host` to `addr`: status and body.
async fn request(
    addr: SocketAddr,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> (u16, Bytes) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let r = common::request_over(tcp, host, method, path, headers, body, WAIT).await;
    (r.status().as_u16(), r.into_body())
}

async fn get(addr: SocketAddr, host: &str, path: &str) -> (u16, String) {
    let (status, body) = request(addr, host, "GET", path, &[], Bytes::new()).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Retries `get` until it answers 200 (a client reconnecting, a registry being rewritten).
async fn eventually_ok(addr: SocketAddr, host: &str, path: &str, within: Duration) -> String {
    let start = tokio::time::Instant::now();
    loop {
        let (status, body) = get(addr, host, path).await;
        if status == 200 {
            return body;
        }
        assert!(
            start.elapsed() < within,
            "{host}{path} via {addr}: still {status} {body:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The name in a public URL `http://NAME.localhost:PORT`.
fn name_of(public: &str) -> String {
    public
        .trim_start_matches("http://")
        .split('.')
        .next()
        .expect("name")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_on_different_nodes_are_reachable_through_every_node() {
    let redis = Redis::start().await;
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics_arg = metrics.to_string();
    let mut nodes = Vec::new();
    for id in ["n1", "n2"] {
        nodes.push(node(&redis, id, &[]).await);
    }
    nodes.push(node(&redis, "n3", &["--metrics-listen", &metrics_arg]).await);
    let addrs: Vec<SocketAddr> = nodes.iter().map(|(n, _)| n.addr).collect();
    let (a, b) = (local_server("a").await, local_server("b").await);
    // One host over WebSocket on n1, one over BrowserChannel through an L7 front: each of
    // its requests lands on the next node.
    let front = l7_front(addrs.clone()).await;
    let mut ws_host = Expose::spawn(&[
        &format!("http://{a}"),
        "--server",
        &format!("ws://{}", addrs[0]),
        "--transport",
        "websocket",
    ]);
    let mut bc_host = Expose::spawn(&[
        &format!("http://{b}"),
        "--server",
        &format!("http://{front}"),
        "--transport",
        "browserchannel",
    ]);
    let (ws_name, bc_name) = (
        name_of(&ws_host.public().await),
        name_of(&bc_host.public().await),
    );
    assert_eq!(redis.holder(&ws_name).await.as_deref(), Some("n1"));
    // The BrowserChannel host's session was created by whichever node the front gave its
    // creating request: after the two test requests, the third node.
    let bc_node = redis.holder(&bc_name).await;
    assert!(
        matches!(bc_node.as_deref(), Some("n2" | "n3")),
        "the hosts are on different nodes: {bc_node:?}"
    );
    for addr in &addrs {
        for (name, tag) in [(&ws_name, "a"), (&bc_name, "b")] {
            let host = format!("{name}.localhost");
            let (status, body) = get(*addr, &host, "/x?q=1").await;
            assert_eq!(status, 200, "{host} via {addr}: {body}");
            // The visitor's address, not a node's, reaches the client.
            assert_eq!(body, format!("{tag} GET /x?q=1 xff=127.0.0.1"));
            // A 2 MiB body both ways, byte for byte, through a node that does not hold it.
            let big: Vec<u8> = (0..2u32 << 20).map(|i| (i % 251) as u8).collect();
            let (status, echoed) =
                request(*addr, &host, "POST", "/echo", &[], Bytes::from(big.clone())).await;
            assert_eq!(status, 200);
            assert!(echoed == big, "the body came back changed via {addr}");
        }
    }
    // A visitor's WebSocket to the client on n1, through n3: upgraded and piped.
    let (mut ws, _) = tokio_tungstenite::client_async(
        format!("ws://{ws_name}.localhost/socket"),
        tokio::net::TcpStream::connect(addrs[2])
            .await
            .expect("connect"),
    )
    .await
    .expect("the upgrade goes through n3 to the client on n1");
    ws.send("hello".into()).await.expect("send");
    let reply = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("in time")
        .expect("a reply")
        .expect("ok");
    assert_eq!(reply.to_text().expect("text"), "a hello");
    // Every request above through n3 to a host held elsewhere hopped: a's three (GET, POST,
    // the upgrade), and b's two unless b is on n3.
    let (status, scrape) = get(metrics, "localhost", "/metrics").await;
    assert_eq!(status, 200);
    let value = |series: &str| -> f64 {
        scrape
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{scrape}"))
    };
    let b_on_n3 = redis.holder(&bc_name).await.as_deref() == Some("n3");
    let hopped = if b_on_n3 { 3.0 } else { 5.0 };
    assert!(
        value("browserver_cluster_hops_total{outcome=\"ok\"}") >= hopped,
        "{scrape}"
    );
    assert_eq!(
        value("browserver_cluster_hops_total{outcome=\"failed\"}"),
        0.0
    );
    assert!(value("browserver_cluster_redis_commands_total") >= 1.0);
    // An unknown name is unknown everywhere.
    for addr in &addrs {
        let (status, _) = get(*addr, "nobody.localhost", "/").await;
        assert_eq!(status, 504);
    }
    for (n, _) in &nodes {
        n.assert_healthy();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_session_resumes_through_whichever_node_its_connection_reaches() {
    let redis = Redis::start().await;
    let mut nodes = Vec::new();
    for id in ["n1", "n2", "n3"] {
        nodes.push(node(&redis, id, &["echo"]).await);
    }
    let front = Front::start(nodes.iter().map(|(n, _)| n.addr).collect()).await;
    let client = browserver_client::connect(
        &format!("ws://{}/ws", front.addr),
        browserver_client::Options {
            transport: browserver_client::Transport::WebSocket,
            ..Default::default()
        },
    );
    let session = loop {
        match tokio::time::timeout(WAIT, client.next_event())
            .await
            .expect("events")
        {
            Some(browserver_client::Event::Open { session_id, .. }) => break session_id,
            Some(_) => {}
            None => panic!("client ended"),
        }
    };
    assert!(
        session.starts_with("n1-"),
        "{session}: made by the first node"
    );
    let mut echoed = Vec::new();
    for round in 0..3 {
        for i in 0..20 {
            drop(client.send(&(round * 20 + i)));
        }
        while echoed.len() < (round + 1) * 20 {
            match tokio::time::timeout(WAIT, client.next_event())
                .await
                .expect("echoes")
            {
                Some(browserver_client::Event::Message(v)) => echoed.push(v),
                Some(browserver_client::Event::Open { session_id, .. }) => {
                    assert_eq!(session_id, session, "resumed, not a new session");
                }
                Some(browserver_client::Event::Close { reason, .. }) => {
                    panic!("the session ended: {reason:?}")
                }
                Some(_) => {}
                None => panic!("client ended"),
            }
        }
        // Every connection dropped: the client resumes through the front, on the next node.
        front.cut();
    }
    let expected: Vec<serde_json::Value> = (0..60).map(|i| serde_json::json!(i)).collect();
    assert_eq!(echoed, expected, "every message once, in order");
    for (n, _) in &nodes {
        n.assert_healthy();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_node_drops_only_its_clients_and_a_redis_restart_is_repaired() {
    let redis = Redis::start().await;
    let tokens =
        std::env::temp_dir().join(format!("browserver-cluster-{}.toml", std::process::id()));
    std::fs::write(
        &tokens,
        "[names]\nalice = \"alice-token-0123456789\"\nbob = \"bob-token-0123456789ab\"\n",
    )
    .expect("tokens");
    let tokens_arg = tokens.to_string_lossy().into_owned();
    let mut nodes = Vec::new();
    for id in ["n1", "n2", "n3"] {
        nodes.push(node(&redis, id, &["--tokens", &tokens_arg]).await);
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(|(n, _)| n.addr).collect();
    let front = Front::start(addrs.clone()).await;
    let (a, b) = (local_server("a").await, local_server("b").await);
    // alice through the front (its first connection: n1), bob straight to n2.
    let mut alice = Expose::spawn(&[
        &format!("http://{a}"),
        "--server",
        &format!("ws://{}", front.addr),
        "--transport",
        "websocket",
        "--name",
        "alice",
        "--token",
        "alice-token-0123456789",
    ]);
    alice.public().await;
    let mut bob = Expose::spawn(&[
        &format!("http://{b}"),
        "--server",
        &format!("ws://{}", addrs[1]),
        "--transport",
        "websocket",
        "--name",
        "bob",
        "--token",
        "bob-token-0123456789ab",
    ]);
    bob.public().await;
    assert_eq!(redis.holder("alice").await.as_deref(), Some("n1"));
    assert_eq!(redis.holder("bob").await.as_deref(), Some("n2"));
    eventually_ok(addrs[2], "alice.localhost", "/", WAIT).await;

    // n1 dies without a word.
    let (mut n1, _) = nodes.remove(0);
    n1.child.start_kill().expect("kill");
    let _ = n1.child.wait().await;
    // bob never noticed: answered through n3 at once, and still its first connection.
    let (status, body) = get(addrs[2], "bob.localhost", "/").await;
    assert_eq!((status, body.as_str()), (200, "b GET / xff=127.0.0.1"));
    // alice reconnects through the front to a live node; its reserved name moves at once.
    let body = eventually_ok(addrs[2], "alice.localhost", "/", Duration::from_secs(20)).await;
    assert_eq!(body, "a GET / xff=127.0.0.1");
    let holder = redis.holder("alice").await;
    assert!(
        matches!(holder.as_deref(), Some("n2" | "n3")),
        "alice is held by {holder:?}"
    );
    eventually_ok(addrs[1], "alice.localhost", "/", WAIT).await;
    let mut bob_said = Vec::new();
    while let Some(Ok(Some(line))) = bob.lines.next_line().now_or_never() {
        bob_said.push(line);
    }
    assert!(
        !bob_said.iter().any(|l| l.starts_with("forwarding")),
        "bob did not reconnect: {bob_said:?}"
    );

    // Redis goes away: what was looked up before keeps working; a name never looked up on
    // this node cannot be found, and says so (503, retry).
    let port = redis.stop().await;
    let (status, _) = get(addrs[2], "bob.localhost", "/").await;
    assert_eq!(status, 200, "bob, looked up before, through n3");
    let started = tokio::time::Instant::now();
    let (status, body) = get(addrs[2], "nobody.localhost", "/").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("registry"), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered without a long wait"
    );
    // Redis restarts empty: the heartbeats write the registry again within a beat or two.
    let redis = Redis::on(port).await;
    assert_eq!(redis.holder("bob").await, None);
    let start = tokio::time::Instant::now();
    while redis.holder("bob").await.is_none() || redis.holder("alice").await.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the registry was not rewritten"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(redis.holder("bob").await.as_deref(), Some("n2"));
    let (status, _) = get(addrs[2], "bob.localhost", "/").await;
    assert_eq!(status, 200);
    eventually_ok(addrs[1], "alice.localhost", "/", WAIT).await;
    eventually_ok(addrs[2], "alice.localhost", "/", WAIT).await;
    for (n, _) in &nodes {
        n.assert_healthy();
    }
    let _ = std::fs::remove_file(&tokens);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserved_name_taken_on_another_node_is_let_go_at_once() {
    let redis = Redis::start().await;
    let tokens =
        std::env::temp_dir().join(format!("browserver-takeover-{}.toml", std::process::id()));
    std::fs::write(&tokens, "[names]\nalice = \"alice-token-0123456789\"\n").expect("tokens");
    let tokens_arg = tokens.to_string_lossy().into_owned();
    // Heartbeats every 10 s: what happens within 3 s is the takeover's own doing.
    let mut nodes = Vec::new();
    for id in ["n1", "n2", "n3"] {
        let (url, listen) = (
            redis.url(),
            SocketAddr::from(([127, 0, 0, 1], free_port())).to_string(),
        );
        nodes.push(
            Server::start(&[
                "--tokens",
                &tokens_arg,
                "--redis",
                &url,
                "--node-id",
                id,
                "--cluster-ttl",
                "30s",
                "--cluster-listen",
                &listen,
            ])
            .await,
        );
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let alice = |local: SocketAddr, node: SocketAddr| {
        Expose::spawn(&[
            &format!("http://{local}"),
            "--server",
            &format!("ws://{node}"),
            "--transport",
            "websocket",
            "--name",
            "alice",
            "--token",
            "alice-token-0123456789",
        ])
    };
    let (first, second, third) = (
        local_server("first").await,
        local_server("second").await,
        local_server("third").await,
    );
    let mut on_n1 = alice(first, addrs[0]);
    on_n1.public().await;
    eventually_ok(addrs[2], "alice.localhost", "/", WAIT).await;
    // alice again, on n2: n1 is told, and its holder stops well before a heartbeat.
    let mut on_n2 = alice(second, addrs[1]);
    on_n2.public().await;
    let stopped = tokio::time::timeout(Duration::from_secs(3), on_n1.child.wait())
        .await
        .expect("the holder on n1 is let go at once")
        .expect("wait");
    assert!(!stopped.success(), "the replaced holder stops");
    assert_eq!(redis.holder("alice").await.as_deref(), Some("n2"));
    for addr in &addrs {
        assert_eq!(
            get(*addr, "alice.localhost", "/").await,
            (200, "second GET / xff=127.0.0.1".into())
        );
    }
    // alice once more, on n2 itself: the new holder stays (n2 does not let itself go).
    let mut on_n2_again = alice(third, addrs[1]);
    on_n2_again.public().await;
    let stopped = tokio::time::timeout(WAIT, on_n2.child.wait())
        .await
        .expect("the holder it replaced stops")
        .expect("wait");
    assert!(!stopped.success());
    tokio::time::sleep(Duration::from_secs(1)).await;
    for addr in &addrs {
        assert_eq!(
            get(*addr, "alice.localhost", "/").await,
            (200, "third GET / xff=127.0.0.1".into())
        );
    }
    for n in &nodes {
        n.assert_healthy();
    }
    let _ = std::fs::remove_file(&tokens);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_name_held_elsewhere_is_never_taken() {
    let redis = Redis::start().await;
    let mut config = browserver_server::cluster::ClusterConfig::new(redis.url());
    config.node_id = Some("me".into());
    let cluster = browserver_server::cluster::Cluster::join(config)
        .await
        .expect("join");
    let mut c = redis.connection().await;
    let () = redis::cmd("SET")
        .arg("browserver:name:taken")
        .arg("other")
        .query_async(&mut c)
        .await
        .expect("SET");
    assert_eq!(
        cluster.claim("taken", false).await,
        Err(browserver_server::cluster::ClaimError::Taken)
    );
    assert_eq!(redis.holder("taken").await.as_deref(), Some("other"));
    assert_eq!(cluster.claim("free", false).await, Ok(()));
    assert_eq!(redis.holder("free").await.as_deref(), Some("me"));
    // A reserved name is taken whoever holds it.
    assert_eq!(cluster.claim("taken", true).await, Ok(()));
    assert_eq!(redis.holder("taken").await.as_deref(), Some("me"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_listener_refuses_strangers_and_visitors_cannot_pose_as_a_node() {
    let redis = Redis::start().await;
    // A small read budget: bodies that pass through a node must not count against it.
    let budget = ["--max-in-flight-body-bytes", "1048576"];
    let (n1, internal1) = node(&redis, "n1", &budget).await;
    let (n2, _) = node(&redis, "n2", &budget).await;
    let a = local_server("a").await;
    let mut host = Expose::spawn(&[
        &format!("http://{a}"),
        "--server",
        &format!("ws://{}", n1.addr),
        "--transport",
        "websocket",
    ]);
    let name = name_of(&host.public().await);
    let hostname = format!("{name}.localhost");
    // Straight to n1's internal listener: no key, a wrong key → 403, nothing reaches the client.
    for headers in [
        vec![],
        vec![("x-browserver-hop-key", "not-the-key")],
        vec![("x-browserver-hop-key", "")],
    ] {
        let (status, body) =
            request(internal1, &hostname, "GET", "/", &headers, Bytes::new()).await;
        assert_eq!(status, 403, "{headers:?}: {body:?}");
    }
    // Through n2 with a visitor's own hop headers: they are replaced, the client sees the
    // visitor's real address.
    let (status, body) = request(
        n2.addr,
        &hostname,
        "GET",
        "/",
        &[
            ("x-browserver-hop-key", "guess"),
            ("x-browserver-hop-client", "203.0.113.9:1"),
            ("x-browserver-hop-host", "other.localhost"),
        ],
        Bytes::new(),
    )
    .await;
    assert_eq!(
        (status, String::from_utf8_lossy(&body).as_ref()),
        (200, "a GET / xff=127.0.0.1")
    );
    // An upload four times n2's read budget streams through it to the client on n1.
    let big: Vec<u8> = (0..4u32 << 20).map(|i| (i % 253) as u8).collect();
    let (status, echoed) = request(
        n2.addr,
        &hostname,
        "POST",
        "/echo",
        &[],
        Bytes::from(big.clone()),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&echoed));
    assert!(echoed == big, "the upload came back changed");
    n1.assert_healthy();
    n2.assert_healthy();
}

/// `FutureExt::now_or_never` for a line read: what is already there.
trait NowOrNever: std::future::Future + Sized {
    fn now_or_never(self) -> Option<Self::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut fut = std::pin::pin!(self);
        match fut.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }
}

impl<F: std::future::Future> NowOrNever for F {}
