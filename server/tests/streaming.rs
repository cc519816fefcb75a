//! Streaming through the proxy, against the real `browserver` binary on loopback: bodies of
//! any size both ways byte-exact with bounded memory, a slow visitor stalling the local
//! server, server-sent events as they are produced, WebSocket passed through, aborts in each
//! direction, fairness between streams of one client, and `browserver expose` itself.
//!
//! The local server is a hyper server in this process; the client is either `host::serve`
//! with `host::forward_to` in this process or the `browserver expose` binary.
//! `STREAM_TEST_BYTES` sets the size of the big transfers (default 1 GiB).

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use browserver_client::{Options, Transport, host};
use bytes::Bytes;
use common::{Server, WAIT, rss_kib};
use futures_util::{SinkExt, StreamExt};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const MIB: u64 = 1 << 20;

/// A fixed pseudo-random megabyte; a body's chunk `k` is a 64 KiB window of it at an offset
/// depending on `k`, so any lost, repeated or reordered chunk shows.
fn pattern() -> &'static [u8] {
    static PATTERN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    PATTERN.get_or_init(|| {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..MIB as usize + CHUNK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    })
}

const CHUNK: usize = 64 << 10;

/// Chunk `k` of every test body.
fn chunk(k: u64) -> &'static [u8] {
    let offset = (k.wrapping_mul(7919) % MIB) as usize;
    &pattern()[offset..offset + CHUNK]
}

/// Checks a body as it arrives, chunk boundaries anywhere.
#[derive(Default)]
struct Checker {
    offset: u64,
}

impl Checker {
    fn feed(&mut self, mut data: &[u8]) -> Result<(), String> {
        while !data.is_empty() {
            let k = self.offset / CHUNK as u64;
            let within = (self.offset % CHUNK as u64) as usize;
            let expected = &chunk(k)[within..];
            let n = expected.len().min(data.len());
            if data[..n] != expected[..n] {
                return Err(format!("wrong bytes near offset {}", self.offset));
            }
            self.offset += n as u64;
            data = &data[n..];
        }
        Ok(())
    }
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A body of `len` test bytes, produced as it is read; `produced` counts what was handed
/// out, `dropped` is set when the body is dropped (the reader went away).
struct Produce {
    len: u64,
    at: u64,
    produced: Arc<AtomicU64>,
    dropped: Arc<AtomicBool>,
}

impl http_body::Body for Produce {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.at >= self.len {
            return Poll::Ready(None);
        }
        let k = self.at / CHUNK as u64;
        let n = (self.len - self.at).min(CHUNK as u64);
        self.at += n;
        self.produced.fetch_add(n, Ordering::Relaxed);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
            &chunk(k)[..n as usize],
        )))))
    }
}

impl Drop for Produce {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::Relaxed);
    }
}

/// The local server's shared state.
#[derive(Default)]
struct Local {
    produced: Arc<AtomicU64>,
    dropped: Arc<AtomicBool>,
    /// Releases the second server-sent event.
    next_event: Arc<Notify>,
}

/// The local HTTP server the client forwards to: `/download?n=N`, `/upload` (answers
/// `ok N` or what was wrong), `/endless`, `/sse`, `/hello`.
async fn local_server() -> (SocketAddr, Arc<Local>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let local = Arc::new(Local::default());
    let state = local.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let state = state.clone();
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(answer(req, &state).await) }
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades(),
            );
        }
    });
    (addr, local)
}

async fn answer(
    req: http::Request<hyper::body::Incoming>,
    state: &Local,
) -> http::Response<BoxBody> {
    let query = req.uri().query().unwrap_or("").to_string();
    match req.uri().path() {
        "/download" | "/endless" => {
            let len = query
                .strip_prefix("n=")
                .and_then(|n| n.parse().ok())
                .unwrap_or(u64::MAX);
            let body = Produce {
                len,
                at: 0,
                produced: state.produced.clone(),
                dropped: state.dropped.clone(),
            };
            http::Response::new(BoxBody::new(body))
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut checker = Checker::default();
            let mut verdict = None;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(d) = f.data_ref()
                            && verdict.is_none()
                            && let Err(e) = checker.feed(d)
                        {
                            verdict = Some(e);
                        }
                    }
                    Err(e) => {
                        verdict = Some(format!("body failed: {e}"));
                        break;
                    }
                }
            }
            let text = verdict.unwrap_or_else(|| format!("ok {}", checker.offset));
            http::Response::new(BoxBody::new(Full::new(Bytes::from(text))))
        }
        "/sse" => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(b"data: one\n\n"))))
                .await;
            // The second event waits for the test's word.
            let release = state.next_event.clone();
            tokio::spawn(async move {
                release.notified().await;
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"data: two\n\n"))))
                    .await;
            });
            let mut r = http::Response::new(BoxBody::new(StreamBody::new(tokio_stream_from(rx))));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/event-stream"),
            );
            r
        }
        _ => http::Response::new(BoxBody::new(Full::new(Bytes::from_static(b"hello")))),
    }
}

/// An mpsc receiver as a `Stream`.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A WebSocket echo server (plain TCP, tungstenite's handshake).
async fn local_ws_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// An in-process client forwarding its hostname to `local`, over WebSocket.
async fn exposed(s: &Server, local: SocketAddr) -> (host::Host, String) {
    exposed_over(s, local, Transport::WebSocket).await
}

async fn exposed_over(s: &Server, local: SocketAddr, transport: Transport) -> (host::Host, String) {
    let forward = host::forward_to(&format!("http://{local}")).expect("url");
    let options = Options {
        transport,
        reconnect: false,
        ..Options::default()
    };
    let url = match transport {
        Transport::BrowserChannel => s.bc(),
        _ => s.ws(),
    };
    let h = host::serve(&url, options, forward);
    let name = tokio::time::timeout(WAIT, h.hostname())
        .await
        .expect("hostname in time")
        .expect("hostname");
    (h, name)
}

/// A visitor's connection to the proxy.
async fn visitor(s: &Server) -> hyper::client::conn::http1::SendRequest<BoxBody> {
    let tcp = TcpStream::connect(s.addr).await.expect("connect");
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

fn get(host: &str, path: &str) -> http::Request<BoxBody> {
    http::Request::get(path)
        .header("host", host)
        .body(BoxBody::new(Full::new(Bytes::new())))
        .expect("request")
}

fn big() -> u64 {
    std::env::var("STREAM_TEST_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30)
}

/// Samples a process's RSS every 50 ms until stopped; the peak growth over the start, KiB.
fn watch_rss(pid: u32) -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let start = rss_kib(pid);
    let task = tokio::spawn(async move {
        let mut peak = start;
        while !stopped.load(Ordering::Relaxed) {
            peak = peak.max(rss_kib(pid));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        peak.saturating_sub(start)
    });
    (stop, task)
}

/// A `browserver expose` process, its forwarding line read.
struct Expose {
    child: tokio::process::Child,
    public: String,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

async fn expose(s: &Server, local: &str, extra: &[&str]) -> Expose {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_browserver"))
        .args(["expose", local, "--server", &format!("ws://{}", s.addr)])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn expose");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("a forwarding line in time")
        .expect("stdout")
        .expect("a line");
    let rest = first
        .strip_prefix("forwarding ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
    let (public, target) = rest.split_once(" -> ").expect("public -> local");
    assert_eq!(target, local);
    Expose {
        child,
        public: public.to_string(),
        lines,
    }
}

impl Expose {
    /// The public hostname (with port), for the `Host` header.
    fn host(&self) -> &str {
        self.public.trim_start_matches("http://")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_crosses_expose_both_ways_byte_exact_with_bounded_memory() {
    let s = Server::start(&[]).await;
    let (local, _) = local_server().await;
    let e = expose(&s, &format!("http://{local}"), &[]).await;
    let expose_pid = e.child.id().expect("running");
    let n = big();
    // Down.
    let (stop_proxy, proxy_peak) = watch_rss(s.child.id().expect("running"));
    let (stop_expose, expose_peak) = watch_rss(expose_pid);
    let mut v = visitor(&s).await;
    let started = Instant::now();
    let r = v
        .send_request(get(e.host(), &format!("/download?n={n}")))
        .await
        .expect("response");
    assert_eq!(r.status(), 200);
    let mut body = r.into_body();
    let mut checker = Checker::default();
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("the body arrives whole");
        if let Some(d) = frame.data_ref() {
            checker.feed(d).expect("byte-exact");
        }
    }
    assert_eq!(checker.offset, n, "every byte arrived");
    let down = started.elapsed();
    // Up.
    let produced = Arc::new(AtomicU64::new(0));
    let upload = Produce {
        len: n,
        at: 0,
        produced: produced.clone(),
        dropped: Arc::new(AtomicBool::new(false)),
    };
    let started = Instant::now();
    v.ready().await.expect("the connection is ready again");
    let r = v
        .send_request(
            http::Request::post("/upload")
                .header("host", e.host())
                .body(BoxBody::new(upload))
                .expect("request"),
        )
        .await
        .expect("response");
    let verdict = r.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(
        verdict,
        Bytes::from(format!("ok {n}")),
        "the local server got every byte"
    );
    let up = started.elapsed();
    stop_proxy.store(true, Ordering::Relaxed);
    stop_expose.store(true, Ordering::Relaxed);
    let (proxy_growth, expose_growth) = (
        proxy_peak.await.expect("watch"),
        expose_peak.await.expect("watch"),
    );
    eprintln!(
        "{n} bytes: down {down:?}, up {up:?}; RSS growth: proxy {proxy_growth} KiB, expose {expose_growth} KiB"
    );
    assert!(
        proxy_growth < 64 * 1024,
        "proxy RSS grew {proxy_growth} KiB"
    );
    assert!(
        expose_growth < 64 * 1024,
        "expose RSS grew {expose_growth} KiB"
    );
    s.assert_healthy();
}

#[tokio::test]
async fn expose_forwards_prints_one_line_per_request_and_rewrites_host_when_asked() {
    let s = Server::start(&[]).await;
    let (local, _) = local_server().await;
    let mut e = expose(
        &s,
        &format!("http://{local}"),
        &["--host-header", "local.test"],
    )
    .await;
    let mut v = visitor(&s).await;
    let r = v
        .send_request(get(e.host(), "/hello?x=1"))
        .await
        .expect("response");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.into_body().collect().await.expect("body").to_bytes(),
        Bytes::from_static(b"hello")
    );
    let line = tokio::time::timeout(WAIT, e.lines.next_line())
        .await
        .expect("a request line")
        .expect("stdout")
        .expect("line");
    assert!(line.starts_with("GET /hello?x=1 -> 200"), "{line}");
    // The status endpoint counts the streamed answer.
    let r = v
        .send_request(get(&s.addr.to_string(), "/_browserver/clients"))
        .await
        .expect("response");
    let list: serde_json::Value =
        serde_json::from_slice(&r.into_body().collect().await.expect("body").to_bytes())
            .expect("json");
    let name = e.host().split('.').next().expect("label");
    let me = list
        .as_array()
        .and_then(|l| l.iter().find(|c| c["id"] == name))
        .expect("listed");
    assert_eq!(me["requests_served"], 1, "{me}");
    // A local server that is gone: the visitor hears 502 with the reason.
    let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let gone = expose(&s, &format!("http://{dead_addr}"), &[]).await;
    let r = v
        .send_request(get(gone.host(), "/"))
        .await
        .expect("response");
    assert_eq!(r.status(), 502);
    let text = r.into_body().collect().await.expect("body").to_bytes();
    assert!(
        String::from_utf8_lossy(&text).contains("did not answer"),
        "{text:?}"
    );
    s.assert_healthy();
}

#[tokio::test]
async fn expose_exits_non_zero_on_a_bad_url() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_browserver"))
        .args(["expose", "ftp://x", "--server", "ws://127.0.0.1:9"])
        .output()
        .await
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid local URL"));
}

#[tokio::test]
async fn a_slow_visitor_stalls_the_local_server_instead_of_filling_memory() {
    let s = Server::start(&[]).await;
    let (local, state) = local_server().await;
    let (_h, name) = exposed(&s, local).await;
    let mut v = visitor(&s).await;
    let r = v
        .send_request(get(&name, "/endless"))
        .await
        .expect("response");
    assert_eq!(r.status(), 200);
    // The visitor reads nothing: production stops at the windows and socket buffers.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stalled = state.produced.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = state.produced.load(Ordering::Relaxed);
    assert_eq!(stalled, later, "the producer kept going");
    assert!(
        stalled < 64 * MIB,
        "{stalled} bytes produced for a reader that reads nothing"
    );
    // Reading resumes it.
    let mut body = r.into_body();
    let mut read = 0u64;
    while read < stalled + 8 * MIB {
        let frame = body.frame().await.expect("more").expect("data");
        read += frame.data_ref().map_or(0, |d| d.len() as u64);
    }
    assert!(state.produced.load(Ordering::Relaxed) > stalled);
    s.assert_healthy();
}

#[tokio::test]
async fn a_server_sent_event_arrives_before_the_stream_ends() {
    let s = Server::start(&[]).await;
    let (local, state) = local_server().await;
    let (_h, name) = exposed(&s, local).await;
    let mut v = visitor(&s).await;
    let r = v.send_request(get(&name, "/sse")).await.expect("response");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut body = r.into_body();
    let first = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("the first event before the second is even produced")
        .expect("frame")
        .expect("data");
    assert_eq!(
        first.data_ref().expect("data"),
        &Bytes::from_static(b"data: one\n\n")
    );
    state.next_event.notify_one();
    let rest = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("the end")
        .expect("body")
        .to_bytes();
    assert_eq!(rest, Bytes::from_static(b"data: two\n\n"));
}

#[tokio::test]
async fn websocket_echo_through_the_proxy_to_an_exposed_local_server() {
    let s = Server::start(&[]).await;
    let local = local_ws_echo().await;
    let e = expose(&s, &format!("http://{local}"), &[]).await;
    let mut req = format!("ws://{}/chat", s.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("host", e.host().parse().expect("host"));
    let (mut ws, response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("in time")
        .expect("the upgrade goes through");
    assert_eq!(response.status(), 101);
    ws.send(Ws::text("hello")).await.expect("send");
    let big = vec![7u8; 300_000];
    ws.send(Ws::binary(big.clone())).await.expect("send");
    let echo = ws.next().await.expect("echo").expect("frame");
    assert_eq!(echo, Ws::text("hello"));
    let echo = ws.next().await.expect("echo").expect("frame");
    assert_eq!(echo.into_data(), Bytes::from(big));
    ws.close(None).await.expect("close");
    s.assert_healthy();
}

#[tokio::test]
async fn a_visitor_that_goes_away_cancels_the_clients_stream() {
    let s = Server::start(&[]).await;
    let (local, state) = local_server().await;
    let (_h, name) = exposed(&s, local).await;
    let mut v = visitor(&s).await;
    let r = v
        .send_request(get(&name, "/endless"))
        .await
        .expect("response");
    let mut body = r.into_body();
    let _ = body.frame().await;
    drop(body);
    drop(v);
    // The reset reaches the client, which drops the local server's body.
    let deadline = Instant::now() + WAIT;
    while !state.dropped.load(Ordering::Relaxed) {
        assert!(Instant::now() < deadline, "the local server still produces");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.assert_healthy();
}

#[tokio::test]
async fn a_client_that_goes_away_mid_answer_ends_the_visitors_response_with_an_error() {
    let s = Server::start(&[]).await;
    let (local, _) = local_server().await;
    let (h, name) = exposed(&s, local).await;
    let mut v = visitor(&s).await;
    let r = v
        .send_request(get(&name, "/endless"))
        .await
        .expect("response");
    let mut body = r.into_body();
    let _ = body.frame().await;
    drop(h);
    let outcome = tokio::time::timeout(WAIT, async {
        loop {
            match body.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(_)) => return "error",
                None => return "clean end",
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the response never ended; server log:\n{}",
            s.stderr.lock().expect("lock")
        )
    });
    assert_eq!(outcome, "error", "a cut-off answer must not look complete");
    s.assert_healthy();
}

#[tokio::test]
async fn a_slow_request_body_to_a_streaming_client_is_cut_with_408() {
    let s = Server::start(&["--body-grace", "1s", "--body-min-rate", "1000"]).await;
    let (local, _) = local_server().await;
    let (_h, name) = exposed(&s, local).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    tokio::spawn(async move {
        for _ in 0..100 {
            if tx
                .send(Ok(Frame::data(Bytes::from_static(b"0123456789"))))
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut v = visitor(&s).await;
    let started = Instant::now();
    let r = v
        .send_request(
            http::Request::post("/upload")
                .header("host", &name)
                .body(BoxBody::new(StreamBody::new(tokio_stream_from(rx))))
                .expect("request"),
        )
        .await;
    // The upload is cut: a 408 before the local server answered, or the connection closed.
    if let Ok(r) = r {
        assert_eq!(r.status(), 408);
    }
    assert!(started.elapsed() < Duration::from_secs(8));
    s.assert_healthy();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_downloads_on_one_client_progress_together() {
    let s = Server::start(&[]).await;
    let (local, _) = local_server().await;
    let (_h, name) = exposed(&s, local).await;
    let each = 32 * MIB;
    let progress: Vec<Arc<AtomicU64>> = (0..8).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let first_done = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    for p in &progress {
        let (p, done) = (p.clone(), first_done.clone());
        let mut v = visitor(&s).await;
        let name = name.clone();
        tasks.push(tokio::spawn(async move {
            let r = v
                .send_request(get(&name, &format!("/download?n={each}")))
                .await
                .expect("response");
            let mut body = r.into_body();
            let mut checker = Checker::default();
            while let Some(frame) = body.frame().await {
                if let Some(d) = frame.expect("data").data_ref() {
                    checker.feed(d).expect("byte-exact");
                    p.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
            }
            done.notify_one();
            checker.offset
        }));
    }
    first_done.notified().await;
    let snapshot: Vec<u64> = progress.iter().map(|p| p.load(Ordering::Relaxed)).collect();
    for t in tasks {
        assert_eq!(t.await.expect("task"), each);
    }
    // When the first finished, every other had most of its body: none was starved.
    for got in &snapshot {
        assert!(*got >= each / 4, "a stream was starved: {snapshot:?}");
    }
    s.assert_healthy();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_cross_a_browserchannel_client_both_ways_byte_exact() {
    let s = Server::start(&[]).await;
    let (local, _) = local_server().await;
    let (_h, name) = exposed_over(&s, local, Transport::BrowserChannel).await;
    let n = 16 * MIB + 12_345;
    let mut v = visitor(&s).await;
    let r = v
        .send_request(get(&name, &format!("/download?n={n}")))
        .await
        .expect("response");
    assert_eq!(r.status(), 200);
    let mut body = r.into_body();
    let mut checker = Checker::default();
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame.expect("data").data_ref() {
            checker.feed(d).expect("byte-exact");
        }
    }
    assert_eq!(checker.offset, n);
    v.ready().await.expect("ready");
    let upload = Produce {
        len: 4 * MIB,
        at: 0,
        produced: Arc::new(AtomicU64::new(0)),
        dropped: Arc::new(AtomicBool::new(false)),
    };
    let r = v
        .send_request(
            http::Request::post("/upload")
                .header("host", &name)
                .body(BoxBody::new(upload))
                .expect("request"),
        )
        .await
        .expect("response");
    let verdict = r.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(verdict, Bytes::from(format!("ok {}", 4 * MIB)));
    s.assert_healthy();
}

/// A hand-written streaming client over WebSocket session mode: it speaks the frames itself,
/// to break the rules.
struct RawStreamer {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    next_seq: u64,
    hostname: String,
}

impl RawStreamer {
    async fn connect(s: &Server) -> RawStreamer {
        let mut req = format!("{}?brow=3", s.ws())
            .into_client_request()
            .expect("request");
        req.headers_mut().insert(
            "sec-websocket-protocol",
            http::HeaderValue::from_static("browserver.session.v1"),
        );
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("upgrade");
        let mut raw = RawStreamer {
            ws,
            next_seq: 0,
            hostname: String::new(),
        };
        // Until the proxy's hello names us.
        while raw.hostname.is_empty() {
            if let Some(Payload::Text(t)) = raw.next().await {
                let v: serde_json::Value = serde_json::from_slice(&t).expect("json");
                if let Some(h) = v["hello"]["hostname"].as_str() {
                    raw.hostname = h.to_string();
                }
            }
        }
        raw
    }

    /// The next message's payload (acknowledging it); `None` once the connection ended.
    async fn next(&mut self) -> Option<Payload> {
        use browserver_transport_ws::codec::{Frame as WsFrame, decode, encode};
        loop {
            let m = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .ok()??
                .ok()?;
            let Ws::Binary(bytes) = m else {
                if m.is_close() {
                    return None;
                }
                continue;
            };
            let (seq, payload) = match decode(&bytes).ok()? {
                WsFrame::Text { seq, text } => (seq, Payload::Text(text)),
                WsFrame::Binary { seq, data } => (seq, Payload::Binary(data)),
                _ => continue,
            };
            let _ = self
                .ws
                .send(Ws::Binary(encode(&WsFrame::Ack { upto: seq })))
                .await;
            return Some(payload);
        }
    }

    async fn send_frame(&mut self, frame: browserver_core::stream::Frame) -> bool {
        use browserver_transport_ws::codec::{Frame as WsFrame, encode};
        let seq = self.next_seq;
        self.next_seq += 1;
        let data = frame.encode();
        self.ws
            .send(Ws::Binary(encode(&WsFrame::Binary { seq, data })))
            .await
            .is_ok()
    }

    /// Waits for the proxy to open a stream; its id.
    async fn opened(&mut self) -> u32 {
        loop {
            if let Some(Payload::Binary(b)) = self.next().await
                && let Ok(browserver_core::stream::Frame::Head { id, .. }) =
                    browserver_core::stream::Frame::decode(&b)
            {
                return id;
            }
        }
    }
}

enum Payload {
    Text(Bytes),
    Binary(Bytes),
}

fn answer_head() -> Bytes {
    Bytes::from_static(
        br#"{"brow":2,"response":{"status":200,"reason":"OK"},"headers":[],"body":""}"#,
    )
}

#[tokio::test]
async fn a_client_that_sends_past_its_window_is_disconnected_and_its_visitor_hears_it() {
    use browserver_core::stream::Frame as SFrame;
    let s = Server::start(&[]).await;
    let mut raw = RawStreamer::connect(&s).await;
    let host = raw.hostname.clone();
    let reader = tokio::spawn({
        let mut v = visitor(&s).await;
        async move {
            let r = v.send_request(get(&host, "/")).await.expect("response");
            let mut body = r.into_body();
            let mut got = 0usize;
            loop {
                match body.frame().await {
                    Some(Ok(f)) => got += f.data_ref().map_or(0, |d| d.len()),
                    Some(Err(_)) => return ("cut", got),
                    None => return ("end", got),
                }
            }
        }
    });
    let id = raw.opened().await;
    raw.send_frame(SFrame::Head {
        id,
        head: answer_head(),
        end: false,
    })
    .await;
    // Far past the 512 KiB window, never waiting for credit.
    let chunk = Bytes::from(vec![b'x'; 32 << 10]);
    let started = Instant::now();
    while started.elapsed() < WAIT {
        let sent = raw
            .send_frame(SFrame::Data {
                id,
                data: chunk.clone(),
                end: false,
            })
            .await;
        if !sent {
            break;
        }
    }
    let (outcome, got) = tokio::time::timeout(WAIT, reader)
        .await
        .expect("the visitor is not left hanging")
        .expect("task");
    assert_eq!(
        outcome, "cut",
        "a session broken mid-answer must not look complete"
    );
    assert!(got <= 3 << 20, "the visitor got {got} bytes");
    // The proxy ended the session: the name is gone.
    let mut v = visitor(&s).await;
    let r = v
        .send_request(get(&raw.hostname, "/"))
        .await
        .expect("response");
    assert_eq!(r.status(), 504);
    s.assert_healthy();
}

#[tokio::test]
async fn garbage_and_stray_stream_frames_from_a_client_leave_the_proxy_healthy() {
    use browserver_core::stream::{Frame as SFrame, ResetCode};
    let s = Server::start(&[]).await;
    let (local, _) = local_server().await;
    let (_good, good_name) = exposed(&s, local).await;
    let mut raw = RawStreamer::connect(&s).await;
    // Frames for streams that never existed, resets, credit, and bytes that are no frame.
    for frame in [
        SFrame::Data {
            id: 2,
            data: Bytes::from_static(b"stray"),
            end: true,
        },
        SFrame::Reset {
            id: 40,
            code: ResetCode::Cancel,
        },
        SFrame::Credit { id: 6, bytes: 1000 },
        SFrame::Head {
            id: 2,
            head: Bytes::from_static(b"not json"),
            end: true,
        },
    ] {
        raw.send_frame(frame).await;
    }
    use browserver_transport_ws::codec::{Frame as WsFrame, encode};
    let _ = raw
        .ws
        .send(Ws::Binary(encode(&WsFrame::Binary {
            seq: raw.next_seq,
            data: Bytes::from_static(b"\x02\x00\x00"),
        })))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Everyone else is still served.
    let mut v = visitor(&s).await;
    let r = v
        .send_request(get(&good_name, "/hello"))
        .await
        .expect("response");
    assert_eq!(r.status(), 200);
    s.assert_healthy();
}

#[tokio::test]
async fn an_answer_head_that_is_not_http_is_a_502() {
    use browserver_core::stream::Frame as SFrame;
    let s = Server::start(&[]).await;
    let mut raw = RawStreamer::connect(&s).await;
    let host = raw.hostname.clone();
    let mut v = visitor(&s).await;
    let pending = tokio::spawn(async move { v.send_request(get(&host, "/")).await });
    let id = raw.opened().await;
    raw.send_frame(SFrame::Head {
        id,
        head: Bytes::from_static(b"garbage"),
        end: true,
    })
    .await;
    let r = pending.await.expect("task").expect("response");
    assert_eq!(r.status(), 502);
    let mut v = visitor(&s).await;
    let host = raw.hostname.clone();
    let pending = tokio::spawn(async move { v.send_request(get(&host, "/")).await });
    let id = raw.opened().await;
    raw.send_frame(SFrame::Head {
        id,
        head: Bytes::from_static(
            br#"{"brow":2,"response":{"status":101,"reason":""},"headers":[],"body":""}"#,
        ),
        end: true,
    })
    .await;
    let r = pending.await.expect("task").expect("response");
    assert_eq!(
        r.status(),
        502,
        "a 101 to a request that asked for no upgrade"
    );
    s.assert_healthy();
}
