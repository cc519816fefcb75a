//! `proxy-compare`: a small GET through the browserver proxy to a Rust client host, against
//! the same request to a direct hyper server, in one run on loopback. The figures are the
//! ratios of requests/s and latency.
//!
//! ```sh
//! cargo run --release -p browserver-benches --bin proxy-compare -- --connections 32 --seconds 3 --rounds 3
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use browserver_client::{Options, Transport, host};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser, Debug)]
struct Args {
    /// Concurrent HTTP/1.1 keep-alive connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Alternating rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The host's transport: websocket or browserchannel.
    #[arg(long, default_value = "websocket")]
    transport: String,
}

async fn hello(
    _req: http::Request<impl hyper::body::Body>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    Ok(http::Response::new(Full::new(Bytes::from_static(b"hello"))))
}

async fn direct_server() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(hello)),
            );
        }
    });
    Ok(addr)
}

/// Sends GETs one after another on one connection until `stop`; returns latencies (µs).
async fn connection(addr: SocketAddr, host: String, stop: Arc<AtomicBool>) -> (Vec<u32>, u64) {
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
    while !stop.load(Ordering::Relaxed) {
        let Ok(req) = http::Request::get("/hello")
            .header("host", host.as_str())
            .body(Full::new(Bytes::new()))
        else {
            break;
        };
        let started = Instant::now();
        match sender.send_request(req).await {
            Ok(r) if r.status() == 200 => {
                let _ = r.into_body().collect().await;
                latencies.push(started.elapsed().as_micros() as u32);
            }
            _ => {
                errors += 1;
                if sender.ready().await.is_err() {
                    break;
                }
            }
        }
    }
    (latencies, errors)
}

async fn measure(addr: SocketAddr, host: &str, args: &Args) -> (f64, u32, u32, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..args.connections)
        .map(|_| tokio::spawn(connection(addr, host.to_string(), stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        if let Ok((l, e)) = t.await {
            all.extend(l);
            errors += e;
        }
    }
    all.sort_unstable();
    let pick = |p: f64| {
        all.get(((all.len().max(1) - 1) as f64 * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    (
        all.len() as f64 / args.seconds as f64,
        pick(0.5),
        pick(0.99),
        errors,
    )
}

fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let direct = direct_server().await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let proxy = listener.local_addr()?;
    let config = browserver_server::Config::default();
    tokio::spawn(browserver_server::run(
        listener,
        config,
        browserver_server::Mode::Proxy,
        std::future::pending(),
    ));
    let (transport, url) = if args.transport == "browserchannel" {
        (Transport::BrowserChannel, format!("http://{proxy}/channel"))
    } else {
        (Transport::WebSocket, format!("ws://{proxy}/ws"))
    };
    let h = host::serve(
        &url,
        Options {
            transport,
            ..Options::default()
        },
        tower::service_fn(|req: http::Request<Full<Bytes>>| hello(req)),
    );
    let Some(hostname) = tokio::time::timeout(Duration::from_secs(10), h.hostname())
        .await
        .ok()
        .flatten()
    else {
        eprintln!("proxy-compare: the host did not connect");
        std::process::exit(1);
    };
    let mut rows: [Vec<(f64, u32, u32, u64)>; 2] = [Vec::new(), Vec::new()];
    for round in 0..args.rounds {
        for (i, (name, addr, host)) in [
            ("direct hyper", direct, "127.0.0.1".to_string()),
            ("through the proxy", proxy, hostname.clone()),
        ]
        .into_iter()
        .enumerate()
        {
            let m = measure(addr, &host, &args).await;
            eprintln!(
                "round {round}: {name}: {:.0} req/s, p50 {} µs, p99 {} µs, errors {}",
                m.0, m.1, m.2, m.3
            );
            rows[i].push(m);
        }
    }
    let summary = |r: &Vec<(f64, u32, u32, u64)>| {
        (
            median(r.iter().map(|m| m.0).collect()),
            median(r.iter().map(|m| m.1).collect()),
            median(r.iter().map(|m| m.2).collect()),
            r.iter().map(|m| m.3).sum::<u64>(),
        )
    };
    let (d, p) = (summary(&rows[0]), summary(&rows[1]));
    println!(
        "{}",
        json!({
            "connections": args.connections,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "host_transport": args.transport,
            "direct": {"requests_per_second": d.0.round(), "p50_us": d.1, "p99_us": d.2, "errors": d.3},
            "proxy": {"requests_per_second": p.0.round(), "p50_us": p.1, "p99_us": p.2, "errors": p.3},
            "ratio_rps_proxy_to_direct": (p.0 / d.0.max(1.0) * 1000.0).round() / 1000.0,
            "ratio_p99_proxy_to_direct": (f64::from(p.2) / f64::from(d.2.max(1)) * 100.0).round() / 100.0,
        })
    );
    Ok(())
}
