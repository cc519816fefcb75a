//! The load tool's parts: echo sessions over each transport a peer speaks, HTTP load, and the
//! bookkeeping shared by all of them (order check, latency, progress).
//!
//! Every echo message is the JSON object `{"i":N,"t":MICROS,"p":"xxx…"}`: `i` counts up from
//! 0 in each session, `t` is when it was sent (µs since the run started, in this process) and
//! `p` pads it to the requested size. A session keeps `window` messages in flight: it sends
//! one more for each echo it gets back, so every transport carries the same traffic.

pub mod bc;
pub mod http;
pub mod socketio;
pub mod ws;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;

/// What every session of one run shares.
pub struct Ctx {
    /// The server's endpoint URL for the chosen transport.
    pub url: String,
    /// Messages in flight per session (0: the session stays idle).
    pub window: usize,
    /// Padding bytes per message.
    pub size: usize,
    /// When the run started; `t` in the messages is measured from here.
    pub start: Instant,
    /// Set when sessions must stop sending.
    pub stop_sending: AtomicBool,
    /// Set when sessions must end (after the last echoes had time to come back).
    pub stop: AtomicBool,
    /// Sessions established so far.
    pub open: AtomicU64,
    /// Echoes received so far (for progress).
    pub echoed: AtomicU64,
    /// Failed requests, refused handshakes, sessions lost.
    pub errors: AtomicU64,
    /// At most this many sessions are being established at once.
    pub opening: tokio::sync::Semaphore,
}

impl Ctx {
    /// A context for a run against `url`.
    pub fn new(url: String, window: usize, size: usize) -> Arc<Ctx> {
        Arc::new(Ctx {
            url,
            window,
            size,
            start: Instant::now(),
            stop_sending: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            open: AtomicU64::new(0),
            echoed: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            opening: tokio::sync::Semaphore::new(64),
        })
    }

    /// Microseconds since the run started.
    pub fn now_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }

    /// The `i`-th message of a session, stamped now.
    pub fn message(&self, i: u64) -> String {
        format!(
            "{{\"i\":{i},\"t\":{},\"p\":\"{}\"}}",
            self.now_us(),
            Padding(self.size)
        )
    }

    /// Counts an error.
    pub fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether sessions should stop sending.
    pub fn sending(&self) -> bool {
        !self.stop_sending.load(Ordering::Relaxed)
    }

    /// Whether sessions should end.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

struct Padding(usize);

impl std::fmt::Display for Padding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const XS: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";
        let mut left = self.0;
        while left > 0 {
            let n = left.min(XS.len());
            f.write_str(&XS[..n])?;
            left -= n;
        }
        Ok(())
    }
}

/// The fields of an echoed message the tool reads.
#[derive(Deserialize)]
pub struct Probe {
    /// Sequence number within the session.
    pub i: u64,
    /// Send time, µs since the run started.
    pub t: u64,
}

/// One session's record of its echoes.
#[derive(Default)]
pub struct Echoes {
    /// Messages sent.
    pub sent: u64,
    /// The `i` expected next.
    expected: u64,
    /// Round-trip times in µs, one per echo.
    pub latencies_us: Vec<u32>,
    /// Echoes whose `i` was not the one expected (a gap or a reordering).
    pub out_of_order: u64,
    /// Echoes whose `i` had been seen already.
    pub duplicates: u64,
    /// Whether the session was established.
    pub opened: bool,
}

impl Echoes {
    /// Records the echo of a message (its JSON text); `false` if it was not one of ours.
    pub fn on_echo(&mut self, ctx: &Ctx, json: &str) -> bool {
        let Ok(probe) = serde_json::from_str::<Probe>(json) else {
            return false;
        };
        if probe.i < self.expected {
            self.duplicates += 1;
            return true;
        }
        if probe.i != self.expected {
            self.out_of_order += 1;
        }
        self.expected = probe.i + 1;
        let rtt = ctx.now_us().saturating_sub(probe.t);
        self.latencies_us.push(rtt.min(u64::from(u32::MAX)) as u32);
        ctx.echoed.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Messages sent whose echo has not come back.
    pub fn in_flight(&self) -> u64 {
        self.sent.saturating_sub(self.expected)
    }

    /// Marks the session established.
    pub fn open(&mut self, ctx: &Ctx) {
        if !self.opened {
            self.opened = true;
            ctx.open.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How many messages a long-polling session may put in its next request: waits up to 100 ms
/// for the window to open, then takes every free slot, at most 100 (a Closure client's forward
/// channel sends up to 1 000 maps a POST; 100 keeps requests small). 0 if none opened.
pub async fn take_batch(window: &tokio::sync::Semaphore) -> u64 {
    let Ok(Ok(first)) = tokio::time::timeout(Duration::from_millis(100), window.acquire()).await
    else {
        return 0;
    };
    first.forget();
    let mut batch = 1;
    while batch < 100 {
        match window.try_acquire() {
            Ok(p) => {
                p.forget();
                batch += 1;
            }
            Err(_) => break,
        }
    }
    batch
}

/// The value at quantile `p` of sorted samples (0 when there are none).
pub fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Prints progress to stderr every second until `ctx.stop`; prints `ready N` once `sessions`
/// sessions are open (the comparison script waits for that line before measuring memory).
pub async fn progress(ctx: Arc<Ctx>, sessions: u64) {
    let mut ready = false;
    let mut last = (Instant::now(), 0u64);
    while !ctx.stopped() {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let open = ctx.open.load(Ordering::Relaxed);
        if !ready && open >= sessions {
            ready = true;
            eprintln!("ready {open}");
        }
        if last.0.elapsed() >= Duration::from_secs(1) {
            let echoed = ctx.echoed.load(Ordering::Relaxed);
            let rate = (echoed - last.1) as f64 / last.0.elapsed().as_secs_f64();
            eprintln!(
                "{:>6.1} s  open {open}/{sessions}  {rate:>9.0} msg/s  errors {}",
                ctx.start.elapsed().as_secs_f64(),
                ctx.errors.load(Ordering::Relaxed)
            );
            last = (Instant::now(), echoed);
        }
    }
}

/// Runs `sessions` copies of `session` for `seconds`, then lets the last echoes come back
/// (at most `settle`), and sums up as JSON.
pub async fn run_echo<F, Fut>(
    ctx: Arc<Ctx>,
    transport: &str,
    sessions: usize,
    seconds: f64,
    session: F,
) -> serde_json::Value
where
    F: Fn(Arc<Ctx>) -> Fut,
    Fut: std::future::Future<Output = Echoes> + Send + 'static,
{
    let tasks: Vec<_> = (0..sessions)
        .map(|_| tokio::spawn(session(ctx.clone())))
        .collect();
    let reporter = tokio::spawn(progress(ctx.clone(), sessions as u64));
    // The clock for messages/s starts when every session is open (or after 30 s).
    let opening = Instant::now();
    while (ctx.open.load(Ordering::Relaxed) as usize) < sessions
        && opening.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let echoed_before = ctx.echoed.load(Ordering::Relaxed);
    let measuring = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let measured = measuring.elapsed().as_secs_f64();
    let echoed_in_window = ctx.echoed.load(Ordering::Relaxed) - echoed_before;
    ctx.stop_sending.store(true, Ordering::Relaxed);
    // Sessions end on their own once their last echo is back; after 5 s they are told to.
    let stopper = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            ctx.stop.store(true, Ordering::Relaxed);
        })
    };
    let mut results = Vec::new();
    let hard = tokio::time::Instant::now() + Duration::from_secs(10);
    for t in tasks {
        match tokio::time::timeout_at(hard, t).await {
            Ok(Ok(r)) => results.push(r),
            _ => ctx.error(),
        }
    }
    stopper.abort();
    ctx.stop.store(true, Ordering::Relaxed);
    reporter.abort();
    let mut latencies = Vec::new();
    let (mut sent, mut out_of_order, mut duplicates, mut opened) = (0, 0, 0, 0);
    for r in results {
        sent += r.sent;
        out_of_order += r.out_of_order;
        duplicates += r.duplicates;
        opened += u64::from(r.opened);
        latencies.extend(r.latencies_us);
    }
    latencies.sort_unstable();
    let echoed = latencies.len() as u64;
    serde_json::json!({
        "transport": transport,
        "url": ctx.url,
        "sessions": sessions,
        "opened": opened,
        "seconds": seconds,
        "window": ctx.window,
        "size": ctx.size,
        "sent": sent,
        "echoed": echoed,
        "messages_per_second": (echoed_in_window as f64 / measured).round(),
        "latency_us": {
            "p50": percentile(&latencies, 0.50),
            "p99": percentile(&latencies, 0.99),
            "p999": percentile(&latencies, 0.999),
        },
        "errors": ctx.errors.load(Ordering::Relaxed),
        "out_of_order": out_of_order,
        "duplicates": duplicates,
        "lost": sent.saturating_sub(echoed),
    })
}
