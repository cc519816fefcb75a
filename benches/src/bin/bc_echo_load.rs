//! `bc-echo-load`: many BrowserChannel sessions echoing messages through a server, on
//! loopback. Reports messages/s and echo latency percentiles, and checks that every session's
//! echoes came back in order, each once.
//!
//! ```sh
//! cargo run --release -p browserver-benches --bin bc-echo-load -- --sessions 100 --seconds 10
//! cargo run --release -p browserver-benches --bin bc-echo-load -- --server http://127.0.0.1:3572/channel
//! ```
//!
//! Without `--server` it starts an in-process echo server on 127.0.0.1. Each session behaves
//! like the Closure client: one forward POST in flight (maps batched while it is out), one
//! streaming back channel (`CI=0`), reopened with `AID` when the server ends it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use browserver_transport_bc::codec::{self, Map};
use browserver_transport_bc::{BrowserChannel, Options, serve};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

#[derive(Parser, Debug)]
struct Args {
    /// Base URL of a running server's channel (default: an in-process echo server).
    #[arg(long)]
    server: Option<String>,
    /// Concurrent sessions.
    #[arg(long, default_value_t = 100)]
    sessions: usize,
    /// How long to send, in seconds (the run ends at most 5 s later).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Messages in flight per session (sent but not yet echoed).
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Padding bytes per message.
    #[arg(long, default_value_t = 32)]
    size: usize,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Shared {
    client: HttpClient,
    base: String,
    start: Instant,
    stop_sending: AtomicBool,
    errors: AtomicU64,
}

#[derive(Default)]
struct SessionResult {
    sent: u64,
    latencies_us: Vec<u32>,
    out_of_order: u64,
}

async fn request(
    shared: &Shared,
    method: &str,
    url: String,
    body: String,
) -> Result<(u16, String), String> {
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let res = shared
        .client
        .request(req)
        .await
        .map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn arrays(payload: &str) -> Vec<(i64, Value)> {
    serde_json::from_str::<Value>(payload.trim_end())
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|a| Some((a.get(0)?.as_i64()?, a.get(1)?.clone())))
        .collect()
}

async fn run_session(shared: Arc<Shared>, window: usize, size: usize) -> SessionResult {
    let mut result = SessionResult::default();
    let mut rid: u64 = 1000;
    let created = request(
        &shared,
        "POST",
        format!("{}/bind?VER=8&RID={rid}&t=1", shared.base),
        "count=0".into(),
    )
    .await;
    let sid = match created {
        Ok((200, body)) => codec::split_chunk(&body).ok().flatten().and_then(|(p, _)| {
            arrays(p)
                .first()
                .and_then(|(_, c)| c.get(1)?.as_str().map(str::to_string))
        }),
        _ => None,
    };
    let Some(sid) = sid else {
        shared.errors.fetch_add(1, Ordering::Relaxed);
        return result;
    };
    let last_array = Arc::new(AtomicI64::new(0));
    let permits = Arc::new(Semaphore::new(window));
    let receiver_done = Arc::new(AtomicBool::new(false));

    // Back channel: read echoes, acknowledge by AID, reopen when the server ends a response.
    let receiver = {
        let (shared, sid, last_array, permits, done) = (
            shared.clone(),
            sid.clone(),
            last_array.clone(),
            permits.clone(),
            receiver_done.clone(),
        );
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut expected = 0u64;
            let mut out_of_order = 0;
            while !done.load(Ordering::Relaxed) {
                let aid = last_array.load(Ordering::Relaxed);
                let url = format!(
                    "{}/bind?VER=8&RID=rpc&SID={sid}&CI=0&AID={aid}&TYPE=xmlhttp",
                    shared.base
                );
                let Ok(req) = http::Request::get(url).body(Full::new(Bytes::new())) else {
                    break;
                };
                let Ok(res) = shared.client.request(req).await else {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    break;
                };
                if res.status() != 200 {
                    break; // the session is gone
                }
                let mut body = res.into_body();
                let mut buf = String::new();
                loop {
                    let frame = tokio::select! {
                        f = body.frame() => f,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {
                            if done.load(Ordering::Relaxed) { break } else { continue }
                        }
                    };
                    let Some(Ok(frame)) = frame else { break };
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    buf.push_str(&String::from_utf8_lossy(&data));
                    while let Ok(Some((payload, used))) = codec::split_chunk(&buf) {
                        for (id, value) in arrays(payload) {
                            last_array.store(id, Ordering::Relaxed);
                            if let (Some(i), Some(t)) = (
                                value.get("i").and_then(Value::as_u64),
                                value.get("t").and_then(Value::as_u64),
                            ) {
                                if i != expected {
                                    out_of_order += 1;
                                }
                                expected = i + 1;
                                let now = shared.start.elapsed().as_micros() as u64;
                                latencies.push(now.saturating_sub(t) as u32);
                                permits.add_permits(1);
                            }
                        }
                        buf.drain(..used);
                    }
                }
            }
            (latencies, out_of_order)
        })
    };

    // Forward channel: one POST in flight, batching whatever the window allows.
    let padding = "x".repeat(size);
    let mut next_map = 0u64;
    while !shared.stop_sending.load(Ordering::Relaxed) {
        let Ok(Ok(first)) =
            tokio::time::timeout(Duration::from_millis(200), permits.acquire()).await
        else {
            continue;
        };
        first.forget();
        let mut batch = 1;
        while batch < 100 {
            match permits.try_acquire() {
                Ok(p) => {
                    p.forget();
                    batch += 1;
                }
                Err(_) => break,
            }
        }
        let maps: Vec<Map> = (0..batch)
            .map(|k| {
                let t = shared.start.elapsed().as_micros() as u64;
                let json = json!({"i": next_map + k, "t": t, "p": padding}).to_string();
                [("JSON".to_string(), json)].into()
            })
            .collect();
        rid += 1;
        let aid = last_array.load(Ordering::Relaxed);
        let url = format!("{}/bind?VER=8&SID={sid}&RID={rid}&AID={aid}", shared.base);
        match request(&shared, "POST", url, codec::encode_forward(next_map, &maps)).await {
            Ok((200, _)) => {
                next_map += batch;
                result.sent += batch;
            }
            _ => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
    // Let the last echoes arrive, then end the session.
    let settle = Instant::now();
    while permits.available_permits() < window && settle.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    receiver_done.store(true, Ordering::Relaxed);
    rid += 1;
    let _ = request(
        &shared,
        "GET",
        format!(
            "{}/bind?VER=8&SID={sid}&RID={rid}&TYPE=terminate",
            shared.base
        ),
        String::new(),
    )
    .await;
    if let Ok((latencies, out_of_order)) = receiver.await {
        result.latencies_us = latencies;
        result.out_of_order = out_of_order;
    }
    result
}

async fn in_process_server() -> std::io::Result<SocketAddr> {
    let (bc, mut sessions) = BrowserChannel::new(Options::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(listener, bc));
    tokio::spawn(async move {
        while let Some(session) = sessions.accept().await {
            tokio::spawn(async move {
                while let Some(m) = session.recv().await {
                    if let Some(v) = m.value {
                        drop(session.send(&v));
                    }
                }
            });
        }
    });
    Ok(addr)
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let base = match &args.server {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => format!("http://{}/channel", in_process_server().await?),
    };
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.sessions * 2 + 8)
        .build(connector);
    let shared = Arc::new(Shared {
        client,
        base: base.clone(),
        start: Instant::now(),
        stop_sending: AtomicBool::new(false),
        errors: AtomicU64::new(0),
    });
    eprintln!(
        "bc-echo-load: {} sessions against {base} for {} s",
        args.sessions, args.seconds
    );
    let tasks: Vec<_> = (0..args.sessions)
        .map(|_| tokio::spawn(run_session(shared.clone(), args.window, args.size)))
        .collect();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    shared.stop_sending.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let (mut sent, mut out_of_order) = (0, 0);
    for t in tasks {
        if let Ok(r) = t.await {
            sent += r.sent;
            out_of_order += r.out_of_order;
            latencies.extend(r.latencies_us);
        }
    }
    let elapsed = started.elapsed().as_secs_f64().min(args.seconds as f64);
    latencies.sort_unstable();
    let echoed = latencies.len() as u64;
    let summary = json!({
        "transport": "browserchannel",
        "sessions": args.sessions,
        "seconds": args.seconds,
        "window": args.window,
        "size": args.size,
        "sent": sent,
        "echoed": echoed,
        "messages_per_second": (echoed as f64 / elapsed).round(),
        "latency_us": {
            "p50": percentile(&latencies, 0.50),
            "p99": percentile(&latencies, 0.99),
            "p999": percentile(&latencies, 0.999),
        },
        "errors": shared.errors.load(Ordering::Relaxed),
        "out_of_order": out_of_order,
        "lost": sent.saturating_sub(echoed),
    });
    println!("{summary}");
    Ok(())
}
