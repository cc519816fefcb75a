//! `ws-echo-compare`: WebSocket echo throughput through our server against a bare
//! tokio-tungstenite echo server, in one run, on loopback. The figure is the ratio.
//!
//! ```sh
//! cargo run --release -p browserver-benches --bin ws-echo-compare -- --connections 50 --seconds 3 --rounds 3
//! ```
//!
//! The bare server is tokio-tungstenite's own echo example (`read.forward(write)`). Both
//! servers run in this process on 127.0.0.1; the same load (plain WebSocket clients,
//! each keeping `--window` text messages in flight) is run against each, alternating for
//! `--rounds` rounds, and the medians are compared. "ours (session)" drives our server's
//! session mode (sequence numbers and acknowledgements) through its codec.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use browserver_transport_ws::codec::{self, Frame, SUBPROTOCOL};
use browserver_transport_ws::{WsEndpoint, serve};
use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[derive(Parser, Debug)]
struct Args {
    /// Concurrent connections.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Alternating rounds per server.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Messages in flight per connection.
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
}

async fn bare_server() -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                // tokio-tungstenite's own echo example: forward reads to writes.
                let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                let (write, read) = ws.split();
                let _ = read
                    .try_filter(|m| std::future::ready(m.is_text() || m.is_binary()))
                    .forward(write)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn our_server() -> std::io::Result<SocketAddr> {
    let (ws, mut sessions) = WsEndpoint::new(Default::default());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(listener, ws));
    tokio::spawn(async move {
        while let Some(s) = sessions.accept().await {
            tokio::spawn(async move {
                while let Some(m) = s.recv().await {
                    drop(s.send(m));
                }
            });
        }
    });
    Ok(addr)
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Plain,
    Session,
}

/// One connection: keeps `window` messages in flight until `stop`; returns latencies (µs).
async fn connection(
    addr: SocketAddr,
    mode: Mode,
    window: usize,
    size: usize,
    stop: Arc<AtomicBool>,
) -> Vec<u32> {
    let url = format!("ws://{addr}/ws");
    let mut req = match url.into_client_request() {
        Ok(r) => r,
        Err(_) => return Vec::new(),
    };
    if mode == Mode::Session
        && let Ok(v) = SUBPROTOCOL.parse()
    {
        req.headers_mut().insert("sec-websocket-protocol", v);
    }
    let Ok((ws, _)) = tokio_tungstenite::connect_async(req).await else {
        return Vec::new();
    };
    let (mut tx, mut rx) = ws.split();
    let start = Instant::now();
    let pad = "x".repeat(size.saturating_sub(24));
    let mut seq = 0u64;
    let mut received_seq = None;
    let make = |seq: &mut u64| {
        let text = json!({"t": start.elapsed().as_micros() as u64, "p": pad}).to_string();
        let m = match mode {
            Mode::Plain => Message::Text(text.into()),
            Mode::Session => Message::Binary(codec::encode(&Frame::Text {
                seq: *seq,
                text: Bytes::from(text),
            })),
        };
        *seq += 1;
        m
    };
    for _ in 0..window {
        if tx.send(make(&mut seq)).await.is_err() {
            return Vec::new();
        }
    }
    let mut latencies = Vec::new();
    while let Some(Ok(m)) = rx.next().await {
        let text = match (&m, mode) {
            (Message::Text(t), Mode::Plain) => Some(t.as_str().to_string()),
            (Message::Binary(b), Mode::Session) => match codec::decode(b) {
                Ok(Frame::Text { seq: s, text }) => {
                    received_seq = Some(s);
                    Some(String::from_utf8_lossy(&text).into_owned())
                }
                _ => None,
            },
            _ => None,
        };
        let Some(text) = text else { continue };
        if let Some(t) = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["t"].as_u64())
        {
            latencies.push((start.elapsed().as_micros() as u64).saturating_sub(t) as u32);
        }
        if mode == Mode::Session
            && let Some(upto) = received_seq
        {
            let _ = tx
                .feed(Message::Binary(codec::encode(&Frame::Ack { upto })))
                .await;
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if tx.send(make(&mut seq)).await.is_err() {
            break;
        }
    }
    let _ = tx.close().await;
    latencies
}

struct Measurement {
    per_second: f64,
    p50: u32,
    p99: u32,
}

async fn measure(addr: SocketAddr, mode: Mode, args: &Args) -> Measurement {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..args.connections)
        .map(|_| tokio::spawn(connection(addr, mode, args.window, args.size, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for t in tasks {
        if let Ok(l) = t.await {
            all.extend(l);
        }
    }
    all.sort_unstable();
    let pick = |p: f64| {
        all.get(((all.len().max(1) - 1) as f64 * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    Measurement {
        per_second: all.len() as f64 / args.seconds as f64,
        p50: pick(0.5),
        p99: pick(0.99),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let bare = bare_server().await?;
    let ours = our_server().await?;
    let targets = [
        ("bare tokio-tungstenite", bare, Mode::Plain),
        ("ours (plain)", ours, Mode::Plain),
        ("ours (session)", ours, Mode::Session),
    ];
    let mut results: Vec<(Vec<f64>, Vec<u32>, Vec<u32>)> = vec![Default::default(); targets.len()];
    for round in 0..args.rounds {
        for (i, (name, addr, mode)) in targets.iter().enumerate() {
            let m = measure(*addr, *mode, &args).await;
            eprintln!(
                "round {round}: {name}: {:.0} msg/s, p50 {} µs, p99 {} µs",
                m.per_second, m.p50, m.p99
            );
            results[i].0.push(m.per_second);
            results[i].1.push(m.p50);
            results[i].2.push(m.p99);
        }
    }
    let summary: Vec<_> = targets
        .iter()
        .zip(&results)
        .map(|((name, _, _), (rates, p50, p99))| {
            json!({
                "server": name,
                "messages_per_second": median(rates.clone()).round(),
                "p50_us": median(p50.iter().map(|&x| f64::from(x)).collect()),
                "p99_us": median(p99.iter().map(|&x| f64::from(x)).collect()),
            })
        })
        .collect();
    let bare_rate = median(results[0].0.clone()).max(1.0);
    println!(
        "{}",
        json!({
            "connections": args.connections,
            "window": args.window,
            "size": args.size,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "results": summary,
            "ratio_ours_plain_to_bare": (median(results[1].0.clone()) / bare_rate * 1000.0).round() / 1000.0,
            "ratio_ours_session_to_bare": (median(results[2].0.clone()) / bare_rate * 1000.0).round() / 1000.0,
        })
    );
    Ok(())
}
