//! A deployable service, against the real binary on loopback: TLS end to end with a
//! throwaway CA (HTTPS through the proxy to `browserver expose`, over WSS and over
//! BrowserChannel on HTTPS; the certificate reloaded on SIGHUP without dropping a session;
//! egress to a local HTTPS server), reserved names, Prometheus metrics, JSON logs and the
//! config file.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Expose, Server, WAIT};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A throwaway certificate authority in a temporary directory.
struct Pki {
    dir: PathBuf,
    ca: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let dir =
            std::env::temp_dir().join(format!("browserver-deploy-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("browserver test CA {tag}"),
        );
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().expect("key");
        let ca = rcgen::CertifiedIssuer::self_signed(params, key).expect("CA");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write");
        Pki { dir, ca }
    }

    fn ca_pem(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A leaf certificate for `names` (and 127.0.0.1) signed by the CA, as `NAME.pem` and
    /// `NAME.key`; returns the paths and the certificate's DER.
    fn leaf(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf, Vec<u8>) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        let (c, k) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}.key")),
        );
        std::fs::write(&c, cert.pem()).expect("write");
        std::fs::write(&k, key.serialize_pem()).expect("write");
        (c, k, cert.der().to_vec())
    }

    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        browserver_client::tls_config(Some(&self.ca_pem())).expect("tls config")
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A plain local HTTP server that says what it got: `local METHOD PATH proto=X-FORWARDED-PROTO`.
async fn local_server(tag: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        let proto = req
                            .headers()
                            .get("x-forwarded-proto")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_string();
                        let body = format!("{tag} {} {} proto={proto}", req.method(), req.uri());
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// A GET over TLS to `addr`, with SNI `server_name` and `Host: host`, trusting `tls`. The
/// response and the leaf certificate the server presented.
async fn https_get(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    server_name: &str,
    host: &str,
    path: &str,
) -> (http::Response<Bytes>, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).expect("name");
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .expect("a certificate");
    (get_over(stream, host, path).await, leaf)
}

/// One GET with `Host: host` over `io`: the whole response.
async fn get_over<I>(io: I, host: &str, path: &str) -> http::Response<Bytes>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("answered in time")
        .expect("response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    http::Response::from_parts(parts, body)
}

/// A plain GET to `addr` with `Host: host`: status and body.
async fn http_get(addr: SocketAddr, host: &str, path: &str) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let r = get_over(tcp, host, path).await;
    (
        r.status().as_u16(),
        String::from_utf8_lossy(r.body()).into_owned(),
    )
}

fn host_of(public: &str) -> &str {
    public
        .trim_start_matches("https://")
        .trim_start_matches("http://")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_reaches_a_local_server_exposed_over_wss_and_over_browserchannel_on_https() {
    let pki = Pki::new("e2e");
    // A wildcard certificate for the clients' domain, as a deployment has.
    let (cert, key, _) = pki.leaf("server", &["tunnel.test", "*.tunnel.test"]);
    let s = Server::start(&[
        "--tls-cert",
        path_str(&cert),
        "--tls-key",
        path_str(&key),
        "--host-pattern",
        "*.tunnel.test",
    ])
    .await;
    let local = local_server("local").await;
    let local_url = format!("http://{local}");
    for (server_url, transport) in [
        (format!("wss://127.0.0.1:{}", s.addr.port()), "websocket"),
        (
            format!("https://127.0.0.1:{}", s.addr.port()),
            "browserchannel",
        ),
    ] {
        let mut e = Expose::spawn(&[
            &local_url,
            "--server",
            &server_url,
            "--transport",
            transport,
            "--ca",
            path_str(&pki.ca_pem()),
        ]);
        let public = e.public().await;
        assert!(public.starts_with("https://"), "{transport}: {public}");
        let host = host_of(&public).to_string();
        let sni = host.split(':').next().expect("name").to_string();
        let (r, _) = https_get(s.addr, pki.client_config(), &sni, &host, "/hello?x=1").await;
        assert_eq!(r.status(), 200, "{transport}");
        assert_eq!(
            r.body(),
            &Bytes::from("local GET /hello?x=1 proto=https"),
            "{transport}: the local server is told the visitor came over https"
        );
    }
    // Without the CA, expose cannot trust the server: it says so and keeps trying.
    let mut untrusting = Expose::spawn(&[
        &local_url,
        "--server",
        &format!("wss://127.0.0.1:{}", s.addr.port()),
        "--transport",
        "websocket",
    ]);
    assert!(
        tokio::time::timeout(Duration::from_secs(2), untrusting.lines.next_line())
            .await
            .is_err(),
        "no forwarding line without trust"
    );
    s.assert_healthy();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_for_new_connections_and_keeps_sessions() {
    let pki = Pki::new("reload");
    let (cert, key, first) = pki.leaf("server", &["localhost", "*.localhost"]);
    let s = Server::start(&["--tls-cert", path_str(&cert), "--tls-key", path_str(&key)]).await;
    let local = local_server("local").await;
    let mut e = Expose::spawn(&[
        &format!("http://{local}"),
        "--server",
        &format!("wss://127.0.0.1:{}", s.addr.port()),
        "--ca",
        path_str(&pki.ca_pem()),
    ]);
    let public = e.public().await;
    let host = host_of(&public).to_string();
    let (_, leaf) = https_get(s.addr, pki.client_config(), "localhost", &host, "/").await;
    assert_eq!(leaf, first);
    // New files in place, then SIGHUP.
    let (cert2, key2, second) = pki.leaf("next", &["localhost", "*.localhost"]);
    std::fs::copy(&cert2, &cert).expect("copy");
    std::fs::copy(&key2, &key).expect("copy");
    let pid = s.child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (r, leaf) = https_get(s.addr, pki.client_config(), "localhost", &host, "/after").await;
        if leaf == second {
            // The exposed client's session survived: same name, still answering.
            assert_eq!(r.status(), 200);
            assert_eq!(r.body(), &Bytes::from("local GET /after proto=https"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A broken file on the next SIGHUP keeps the current certificate.
    std::fs::write(&key, "garbage").expect("write");
    std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (r, leaf) = https_get(s.addr, pki.client_config(), "localhost", &host, "/").await;
    assert_eq!(leaf, second);
    assert_eq!(r.status(), 200);
    // Expose did not reconnect: it would have printed a new forwarding line among its
    // per-request lines.
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_millis(200), e.lines.next_line()).await
    {
        assert!(!line.starts_with("forwarding"), "{line}");
    }
    s.assert_healthy();
}

/// A local HTTPS server with a certificate for `localhost` from `pki`.
async fn local_https(pki: &Pki) -> SocketAddr {
    let (cert, key, _) = pki.leaf("egress-target", &["localhost"]);
    let certificate = browserver_server::tls::Certificate::load(&cert, &key).expect("load");
    let acceptor = certificate.acceptor().expect("acceptor");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let body = format!("secure {}", req.uri());
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

/// A client of the proxy (in process) that answers nothing; for its `fetch`.
async fn fetcher(s: &Server) -> browserver_client::host::Host {
    let service = tower::service_fn(|_req: http::Request<browserver_client::host::Body>| async {
        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let h = browserver_client::host::serve(
        &s.ws(),
        browserver_client::Options {
            transport: browserver_client::Transport::WebSocket,
            ..Default::default()
        },
        service,
    );
    tokio::time::timeout(WAIT, h.hostname())
        .await
        .expect("connected in time")
        .expect("a hostname");
    h
}

async fn fetch(h: &browserver_client::host::Host, url: &str) -> (u16, String) {
    let r = h
        .fetch(http::Request::get(url).body(Bytes::new()).expect("request"))
        .await
        .expect("an answer");
    (
        r.status().as_u16(),
        String::from_utf8_lossy(r.body()).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_speaks_https_trusting_the_egress_ca_under_the_address_policy() {
    let pki = Pki::new("egress");
    let target = local_https(&pki).await;
    let allowed = format!("localhost:{}", target.port());
    let url = format!("https://localhost:{}/over-tls?q=1", target.port());
    // Trusted and allowed.
    let s = Server::start(&[
        "--egress-allow",
        &allowed,
        "--egress-ca",
        path_str(&pki.ca_pem()),
    ])
    .await;
    let h = fetcher(&s).await;
    assert_eq!(
        fetch(&h, &url).await,
        (200, "secure /over-tls?q=1".to_string())
    );
    drop(h);
    // Allowed but not trusted: the certificate is refused.
    let s2 = Server::start(&["--egress-allow", &allowed]).await;
    let h = fetcher(&s2).await;
    let (status, body) = fetch(&h, &url).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("TLS"), "{body}");
    drop(h);
    // Trusted but not allowed: loopback is refused before any connection.
    let s3 = Server::start(&["--egress-ca", path_str(&pki.ca_pem())]).await;
    let h = fetcher(&s3).await;
    let (status, body) = fetch(&h, &url).await;
    assert_eq!(status, 403, "{body}");
    s.assert_healthy();
}

fn tokens_file(dir: &Path) -> PathBuf {
    let path = dir.join("tokens.toml");
    std::fs::write(&path, "[names]\nalice = \"alice-token-0123456789\"\n").expect("write");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserved_name_goes_to_its_token_and_a_wrong_token_disturbs_no_one() {
    let pki = Pki::new("names");
    let tokens = tokens_file(&pki.dir);
    let s = Server::start(&["--tokens", path_str(&tokens)]).await;
    let server = format!("ws://{}", s.addr);
    let first = local_server("first").await;
    let mut alice = Expose::spawn(&[
        &format!("http://{first}"),
        "--server",
        &server,
        "--name",
        "alice",
        "--token",
        "alice-token-0123456789",
    ]);
    let public = alice.public().await;
    assert_eq!(public, format!("http://alice.localhost:{}", s.addr.port()));
    let host = host_of(&public).to_string();
    assert_eq!(
        http_get(s.addr, &host, "/").await,
        (200, "first GET / proto=http".into())
    );
    // A wrong token: refused at connect with the reason, expose exits non-zero, and alice's
    // holder keeps the name.
    let other = local_server("intruder").await;
    let wrong = Expose::spawn(&[
        &format!("http://{other}"),
        "--server",
        &server,
        "--name",
        "alice",
        "--token",
        "not-alices-token-xxxxx",
    ]);
    let (status, err) = wrong.exit().await;
    assert!(!status.success());
    assert!(err.contains("403") && err.contains("wrong token"), "{err}");
    // Over BrowserChannel too, with the token in the environment.
    let mut wrong_bc = tokio::process::Command::new(env!("CARGO_BIN_EXE_browserver"))
        .args([
            "expose",
            &format!("http://{other}"),
            "--server",
            &format!("http://{}", s.addr),
        ])
        .args(["--transport", "browserchannel", "--name", "alice"])
        .env("BROWSERVER_TOKEN", "not-alices-token-xxxxx")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let status = tokio::time::timeout(WAIT, wrong_bc.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert!(!status.success());
    assert_eq!(
        http_get(s.addr, &host, "/").await,
        (200, "first GET / proto=http".into())
    );
    // Asking for the name without a token: 401 with the reason, at the handshake.
    let url = format!("ws://{}/ws?name=alice", s.addr);
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 401);
            let body =
                String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).into_owned();
            assert!(body.contains("reserved"), "{body}");
        }
        other => panic!("expected a 401, got {other:?}"),
    }
    // A name that is not reserved cannot be asked for.
    let url = format!("ws://{}/ws?name=bob", s.addr);
    assert!(matches!(
        tokio_tungstenite::connect_async(url.as_str()).await,
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 403
    ));
    // Others still get random names.
    let mut random = Expose::spawn(&[&format!("http://{other}"), "--server", &server]);
    let random_public = random.public().await;
    assert!(!random_public.contains("alice"), "{random_public}");
    // The right token again: the new connection replaces the first, which is told to stop.
    let second = local_server("second").await;
    let mut again = Expose::spawn(&[
        &format!("http://{second}"),
        "--server",
        &server,
        "--name",
        "alice",
        "--token",
        "alice-token-0123456789",
    ]);
    assert_eq!(again.public().await, public);
    assert_eq!(
        http_get(s.addr, &host, "/").await,
        (200, "second GET / proto=http".into())
    );
    let (status, err) = alice.exit().await;
    assert!(!status.success(), "the replaced holder stops: {err}");
    s.assert_healthy();
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_traffic_sent_in_the_prometheus_text_format() {
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let s = Server::start(&[
        "--metrics-listen",
        &metrics_addr,
        "--max-sessions-per-address",
        "1",
    ])
    .await;
    let answering = tower::service_fn(
        |req: http::Request<browserver_client::host::Body>| async move {
            let status = if req.uri().path() == "/ok" { 200 } else { 404 };
            let mut r = http::Response::new(Full::new(Bytes::from_static(b"12345")));
            *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
            Ok::<_, Infallible>(r)
        },
    );
    let h = browserver_client::host::serve(
        &s.ws(),
        browserver_client::Options {
            transport: browserver_client::Transport::WebSocket,
            ..Default::default()
        },
        answering,
    );
    let name = tokio::time::timeout(WAIT, h.hostname())
        .await
        .expect("in time")
        .expect("name");
    let host = format!("{name}:{}", s.addr.port());
    for _ in 0..3 {
        assert_eq!(http_get(s.addr, &host, "/ok").await.0, 200);
    }
    for _ in 0..2 {
        assert_eq!(http_get(s.addr, &host, "/missing").await.0, 404);
    }
    let nobody = format!("nobody.localhost:{}", s.addr.port());
    assert_eq!(http_get(s.addr, &nobody, "/").await.0, 504);
    // Egress refused by the address policy, and a second session from this address refused
    // by --max-sessions-per-address.
    assert_eq!(fetch(&h, "http://127.0.0.1:9/").await.0, 403);
    assert!(
        tokio_tungstenite::connect_async(s.ws().as_str())
            .await
            .is_err()
    );
    // The proxied request's record is written when its answer ends; give the last a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = reqwest_free_get(&metrics_addr, "/metrics").await;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("the Prometheus text format");
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(ref buckets) => {
                    buckets.last().map_or(0.0, |b| b.count)
                }
                _ => 0.0,
            })
            .sum()
    };
    assert_eq!(
        value("browserver_proxied_requests_total", &[("status", "200")]),
        3.0,
        "{text}"
    );
    assert_eq!(
        value("browserver_proxied_requests_total", &[("status", "404")]),
        2.0
    );
    assert_eq!(
        value("browserver_proxied_requests_total", &[("status", "504")]),
        1.0
    );
    assert_eq!(
        value("browserver_proxied_request_duration_seconds_count", &[]),
        6.0,
        "{text}"
    );
    assert!(value("browserver_proxied_bytes_total", &[("direction", "out")]) >= 25.0);
    assert_eq!(
        value("browserver_sessions", &[("transport", "websocket")]),
        1.0
    );
    assert_eq!(
        value("browserver_clients", &[("transport", "websocket")]),
        1.0
    );
    assert_eq!(
        value("browserver_sessions", &[("transport", "browserchannel")]),
        0.0
    );
    assert!(
        value(
            "browserver_messages_total",
            &[("transport", "websocket"), ("direction", "in")]
        ) >= 5.0
    );
    assert!(
        value(
            "browserver_message_bytes_total",
            &[("transport", "websocket"), ("direction", "out")]
        ) > 0.0
    );
    assert_eq!(
        value("browserver_egress_refusals_total", &[("reason", "address")]),
        1.0
    );
    assert_eq!(
        value(
            "browserver_limit_hits_total",
            &[("limit", "max_sessions_per_address")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "browserver_limit_hits_total",
            &[("limit", "max_connections")]
        ),
        0.0
    );
    // Every limit of the security issue has its series from the start.
    for limit in [
        "max_connections_per_address",
        "idle_timeout",
        "session_rate",
        "max_buffered_bytes",
        "body_min_rate",
        "max_body_bytes",
        "max_in_flight_body_bytes",
        "max_pending_per_client",
        "request_timeout",
    ] {
        assert!(
            scrape
                .samples
                .iter()
                .any(|s| s.metric == "browserver_limit_hits_total"
                    && s.labels.get("limit") == Some(limit)),
            "{limit}"
        );
    }
    // The client goes: the gauges follow.
    drop(h);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = reqwest_free_get(&metrics_addr, "/metrics").await;
        if text.contains("browserver_clients{transport=\"websocket\"} 0") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.assert_healthy();
}

/// A plain GET's body from `addr` (the metrics listener).
async fn reqwest_free_get(addr: &str, path: &str) -> String {
    let addr: SocketAddr = addr.parse().expect("addr");
    let (status, body) = http_get(addr, &addr.to_string(), path).await;
    assert_eq!(status, 200);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_with_a_line_per_proxied_request() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_browserver"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--session-timeout",
            "1s",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("in time")
        .expect("io")
        .expect("line");
    let first: serde_json::Value = serde_json::from_str(&first).expect("the first line is JSON");
    let addr: SocketAddr = first["address"]
        .as_str()
        .expect("address")
        .parse()
        .expect("addr");
    let local = local_server("logged").await;
    let mut e = Expose::spawn(&[
        &format!("http://{local}"),
        "--server",
        &format!("ws://{addr}"),
    ]);
    let public = e.public().await;
    let host = host_of(&public).to_string();
    assert_eq!(http_get(addr, &host, "/logged?x=1").await.0, 200);
    // The client goes away; its session ends at the session timeout (1 s).
    drop(e);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    child.start_kill().expect("kill");
    let mut objects = vec![first];
    while let Ok(Some(line)) = lines.next_line().await {
        assert!(!line.contains('\u{1b}'), "no colour codes: {line:?}");
        let value: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        objects.push(value);
    }
    let name = host.split('.').next().expect("name");
    let proxied = objects
        .iter()
        .find(|o| o["message"] == "proxied")
        .unwrap_or_else(|| panic!("a proxied line in {objects:?}"));
    assert_eq!(proxied["client"], name);
    assert_eq!(proxied["method"], "GET");
    assert_eq!(proxied["path"], "/logged", "the query is left out of logs");
    assert_eq!(proxied["status"], 200);
    assert!(proxied["duration_ms"].is_u64());
    assert_eq!(proxied["bytes_in"], 0);
    assert_eq!(
        proxied["bytes_out"],
        "logged GET /logged?x=1 proto=http".len()
    );
    assert_eq!(proxied["level"], "INFO");
    let connected = objects
        .iter()
        .find(|o| o["message"] == "connected")
        .expect("connected");
    assert_eq!(connected["client"], name);
    assert_eq!(connected["transport"], "websocket");
    let disconnected = objects
        .iter()
        .find(|o| o["message"] == "disconnected")
        .expect("disconnected");
    assert_eq!(disconnected["client"], name);
    assert!(disconnected["reason"].is_string(), "{disconnected}");
}

#[tokio::test]
async fn the_config_file_sets_flags_the_command_line_overrides_and_unknown_keys_fail() {
    let pki = Pki::new("config");
    let config = pki.dir.join("browserver.toml");
    std::fs::write(
        &config,
        "listen = \"127.0.0.1:1\"\nhost-pattern = \"*.from-file.test\"\nrequest-timeout = \"5s\"\n",
    )
    .expect("write");
    // `--listen 127.0.0.1:0` (the helper's) beats the file's port 1; the pattern comes from
    // the file: a request for a name under it is the proxy's (504, no such client).
    let s = Server::start(&["--config", path_str(&config)]).await;
    assert_ne!(s.addr.port(), 1);
    let (status, body) = http_get(s.addr, "someone.from-file.test", "/").await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(
        http_get(s.addr, "someone.localhost", "/nothing").await.0,
        404
    );
    // A flag beats the file.
    let s2 = Server::start(&[
        "--config",
        path_str(&config),
        "--host-pattern",
        "*.from-flag.test",
    ])
    .await;
    assert_eq!(
        http_get(s2.addr, "someone.from-flag.test", "/").await.0,
        504
    );
    assert_eq!(
        http_get(s2.addr, "someone.from-file.test", "/nothing")
            .await
            .0,
        404
    );
    // An unknown key: the process exits non-zero naming it.
    std::fs::write(&config, "lisen = \"127.0.0.1:0\"\n").expect("write");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_browserver"))
        .args(["--config", path_str(&config)])
        .output()
        .await
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown key `lisen`"), "{err}");
    // `expose` takes its own flags from the file too, `--server` (required) included.
    std::fs::write(&config, "server = \"ftp://from-the-file\"\n").expect("write");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_browserver"))
        .args([
            "expose",
            "http://127.0.0.1:9",
            "--config",
            path_str(&config),
        ])
        .output()
        .await
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ftp://from-the-file"), "{err}");
    // A bad value is clap's error, naming the flag.
    std::fs::write(&config, "max-sessions = \"many\"\n").expect("write");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_browserver"))
        .args(["--config", path_str(&config)])
        .output()
        .await
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-sessions"));
}

#[tokio::test]
async fn a_tls_handshake_that_never_comes_is_cut_at_the_header_read_timeout() {
    let pki = Pki::new("slow-tls");
    let (cert, key, _) = pki.leaf("server", &["localhost"]);
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let s = Server::start(&[
        "--tls-cert",
        path_str(&cert),
        "--tls-key",
        path_str(&key),
        "--header-read-timeout",
        "1s",
        "--metrics-listen",
        &metrics_addr,
    ])
    .await;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut silent = tokio::net::TcpStream::connect(s.addr)
        .await
        .expect("connect");
    // Half a ClientHello record header, then nothing.
    silent.write_all(&[0x16, 0x03]).await.expect("write");
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, silent.read(&mut buf))
        .await
        .expect("closed by the server in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    assert!(started.elapsed() >= Duration::from_millis(900));
    // Garbage instead of TLS is dropped at once, and the server keeps serving.
    let mut garbage = tokio::net::TcpStream::connect(s.addr)
        .await
        .expect("connect");
    garbage
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("write");
    let n = tokio::time::timeout(WAIT, garbage.read(&mut buf))
        .await
        .expect("in time")
        .unwrap_or(0);
    assert!(n == 0 || buf[0] == 0x15, "no HTTP answer over a TLS port");
    let (r, _) = https_get(
        s.addr,
        pki.client_config(),
        "localhost",
        "localhost",
        "/nothing",
    )
    .await;
    assert_eq!(r.status(), 404);
    // Counted: the handshake cut at the deadline.
    let text = reqwest_free_get(&metrics_addr, "/metrics").await;
    assert!(
        text.contains("browserver_limit_hits_total{limit=\"header_read_timeout\"} 1"),
        "{text}"
    );
    s.assert_healthy();
}
