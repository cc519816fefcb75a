//! HTTP plumbing shared by the long-polling transports, and HTTP request load (through the
//! proxy to client hosts, or straight to a server).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::percentile;

/// A pooled HTTP/1.1 client with `TCP_NODELAY`.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A client keeping up to `idle` connections per host.
pub fn client(idle: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(idle)
        .build(connector)
}

/// One request; the status and the whole body as text.
pub async fn request(
    client: &HttpClient,
    method: &str,
    url: String,
    content_type: &str,
    body: String,
) -> Result<(u16, String), String> {
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let res = client.request(req).await.map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The socket address and path of `url`, which must name a loopback address (`localhost`,
/// 127.0.0.0/8, `[::1]`): the tool never sends load anywhere else.
pub fn loopback(url: &str) -> Result<(std::net::SocketAddr, String), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let authority = uri.authority().ok_or(format!("{url}: no host"))?;
    let port = authority.port_u16().unwrap_or(80);
    let ip: std::net::IpAddr = match authority.host() {
        "localhost" => std::net::Ipv4Addr::LOCALHOST.into(),
        h => h
            .trim_matches(['[', ']'])
            .parse()
            .map_err(|_| format!("{url}: give a loopback IP address"))?,
    };
    if !ip.is_loopback() {
        return Err(format!("{url}: this tool talks to loopback only"));
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    Ok(((ip, port).into(), path))
}

/// Sends GETs for `path` one after another on one keep-alive connection to `addr`, cycling
/// through `hosts` as the Host header, until `stop`. Returns latencies (µs) and errors.
pub async fn get_loop(
    addr: std::net::SocketAddr,
    hosts: Arc<Vec<String>>,
    first: usize,
    path: String,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> (Vec<u32>, u64) {
    let Ok(stream) = TcpStream::connect(addr).await else {
        return (Vec::new(), 1);
    };
    let _ = stream.set_nodelay(true);
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return (Vec::new(), 1);
    };
    tokio::spawn(conn);
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut k = first;
    while !stop.load(Ordering::Relaxed) {
        let host = &hosts[k % hosts.len()];
        k += 1;
        let Ok(req) = http::Request::get(path.as_str())
            .header("host", host.as_str())
            .body(Full::new(Bytes::new()))
        else {
            break;
        };
        let started = Instant::now();
        match sender.send_request(req).await {
            Ok(r) if r.status() == 200 => {
                if r.into_body().collect().await.is_ok() {
                    latencies.push(started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    errors += 1;
                }
            }
            _ => {
                errors += 1;
                if sender.ready().await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    (latencies, errors)
}

/// Runs `connections` GET loops for `seconds` and sums up as JSON.
pub async fn run_gets(
    addrs: &[std::net::SocketAddr],
    hosts: Vec<String>,
    path: &str,
    connections: usize,
    seconds: f64,
) -> serde_json::Value {
    let hosts = Arc::new(hosts);
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..connections)
        .map(|k| {
            tokio::spawn(get_loop(
                addrs[k % addrs.len()],
                hosts.clone(),
                k,
                path.to_string(),
                stop.clone(),
                done.clone(),
            ))
        })
        .collect();
    let started = Instant::now();
    let mut last = (Instant::now(), 0);
    while started.elapsed().as_secs_f64() < seconds {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if last.0.elapsed() >= Duration::from_secs(1) {
            let n = done.load(Ordering::Relaxed);
            eprintln!(
                "{:>6.1} s  {:>9.0} req/s",
                started.elapsed().as_secs_f64(),
                (n - last.1) as f64 / last.0.elapsed().as_secs_f64()
            );
            last = (Instant::now(), n);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let completed = done.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        if let Ok(Ok((l, e))) = tokio::time::timeout(Duration::from_secs(10), t).await {
            all.extend(l);
            errors += e;
        } else {
            errors += 1;
        }
    }
    all.sort_unstable();
    serde_json::json!({
        "connections": connections,
        "hosts": hosts.len(),
        "seconds": seconds,
        "requests": all.len(),
        "requests_per_second": (completed as f64 / elapsed).round(),
        "latency_us": {
            "p50": percentile(&all, 0.50),
            "p99": percentile(&all, 0.99),
            "p999": percentile(&all, 0.999),
        },
        "errors": errors,
    })
}

/// One transfer of `bytes` to or from a `baseline-server http-hello` at `addr` (with `Host:
/// host`): down is `GET /bytes?n=BYTES`, up a `POST` of that many zero bytes. The summary:
/// seconds, MiB/s, and whether every byte crossed.
pub async fn transfer(
    addr: std::net::SocketAddr,
    host: &str,
    bytes: u64,
    up: bool,
) -> Result<serde_json::Value, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Zeros>(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let started = Instant::now();
    let req = if up {
        http::Request::post("/upload")
            .header("host", host)
            .body(Zeros { left: bytes })
    } else {
        http::Request::get(format!("/bytes?n={bytes}"))
            .header("host", host)
            .body(Zeros { left: 0 })
    }
    .map_err(|e| e.to_string())?;
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let mut body = res.into_body();
    let mut got: u64 = 0;
    let mut text = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Some(d) = frame.data_ref() {
            got += d.len() as u64;
            if up && text.len() < 64 {
                text.extend_from_slice(d);
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let complete = if up {
        String::from_utf8_lossy(&text).trim() == bytes.to_string()
    } else {
        got == bytes
    };
    Ok(serde_json::json!({
        "status": status,
        "bytes": bytes,
        "complete": complete,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "mib_per_second": ((bytes as f64 / (1 << 20) as f64) / seconds).round(),
    }))
}

/// `left` zero bytes as a body, 64 KiB per frame.
pub struct Zeros {
    /// Bytes still to come.
    pub left: u64,
}

impl http_body::Body for Zeros {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        static ZEROS: [u8; 65536] = [0; 65536];
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(ZEROS.len() as u64);
        self.left -= n;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
            &ZEROS[..n as usize],
        )))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

#[cfg(test)]
mod tests {
    use super::loopback;

    #[test]
    fn only_loopback_urls_are_accepted() {
        let (addr, path) = loopback("http://127.0.0.1:3572/channel?x=1").expect("loopback");
        assert_eq!(addr.to_string(), "127.0.0.1:3572");
        assert_eq!(path, "/channel?x=1");
        assert!(loopback("http://localhost/").is_ok());
        assert!(loopback("http://[::1]:80/").is_ok());
        assert!(loopback("http://127.9.9.9:1/").is_ok());
        assert!(loopback("http://10.0.0.1:3572/").is_err());
        assert!(loopback("http://example.com/").is_err());
        assert!(loopback("not a url").is_err());
    }
}
