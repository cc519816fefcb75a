//! The BrowserChannel client protocol (Closure's `goog.net.BrowserChannel`, version 8) around a
//! client-role core session: test channel, open, forward channel (one POST in flight, retried
//! under the same `RID`), back channel (reopened with `AID`), terminate.

use std::time::{Duration, Instant};

use browserver_core::{CloseReason, Config, PathMode, Payload, Role, Session, Transmit};
use browserver_transport_bc::codec::{self, Map};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::RngExt;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::{Command, Ended, Event, Link, SendError, Tracker, Transport};

type Http = HttpClient<HttpConnector, Full<Bytes>>;

/// The client's request watchdog (Closure: 45 s) and forward timeout (10–20 s, here 20 s).
const WATCHDOG: Duration = Duration::from_secs(45);
const FORWARD_TIMEOUT: Duration = Duration::from_secs(20);
const MAX_MAPS_PER_POST: usize = 1000;

#[derive(Debug)]
enum Failure {
    /// Network error, timeout, empty or garbled body: retried.
    Transient(String),
    /// HTTP 400 with `Unknown SID`: the session is gone.
    UnknownSession,
    /// Any other non-200 status: fatal.
    Status(u16),
}

impl Failure {
    fn describe(&self) -> String {
        match self {
            Failure::Transient(e) => format!("Request failed: {e}"),
            Failure::UnknownSession => "Unknown session ID".into(),
            Failure::Status(s) => format!("Request failed (HTTP {s})"),
        }
    }
}

enum Io {
    /// Arrays from a back channel.
    Arrays(Vec<(u64, Value)>),
    /// The back channel with this generation ended.
    BackEnded {
        generation: u64,
        outcome: Result<(), Failure>,
    },
    /// The forward POST finished (its body text, or why not).
    Posted(Result<String, Failure>),
}

fn zx() -> String {
    format!("{:x}", rand::rng().random::<u64>())
}

fn url(base: &str, path: &str, params: &[(String, String)]) -> String {
    let mut ser = form_urlencoded_serializer();
    for (k, v) in params {
        ser.append_pair(k, v);
    }
    format!("{base}/{path}?{}", ser.finish())
}

fn form_urlencoded_serializer() -> url::form_urlencoded::Serializer<'static, String> {
    url::form_urlencoded::Serializer::new(String::new())
}

/// One whole request: its status and body text, or why it failed (a timeout is transient).
async fn exchange(
    http: &Http,
    req: http::Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<(u16, String), Failure> {
    let fut = async {
        let res = http
            .request(req)
            .await
            .map_err(|e| Failure::Transient(e.to_string()))?;
        let status = res.status().as_u16();
        let body = res
            .into_body()
            .collect()
            .await
            .map_err(|e| Failure::Transient(e.to_string()))?;
        Ok((
            status,
            String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        ))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| Err(Failure::Transient("timed out".into())))
}

async fn get_text(http: &Http, url: &str, timeout: Duration) -> Result<(u16, String), Failure> {
    let req = http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .map_err(|e| Failure::Transient(e.to_string()))?;
    exchange(http, req, timeout).await
}

fn classify(status: u16, body: &str) -> Result<(), Failure> {
    match status {
        200 => Ok(()),
        400 if body.find("Unknown SID").is_some_and(|i| i > 0) => Err(Failure::UnknownSession),
        s => Err(Failure::Status(s)),
    }
}

/// Incremental decoding of a length-prefixed stream whose chunks may split UTF-8 sequences.
#[derive(Default)]
struct ChunkReader {
    bytes: Vec<u8>,
    text: String,
}

impl ChunkReader {
    fn push(&mut self, data: &[u8]) -> Result<Vec<String>, Failure> {
        self.bytes.extend_from_slice(data);
        let valid = match std::str::from_utf8(&self.bytes) {
            Ok(s) => s.len(),
            Err(e) => e.valid_up_to(),
        };
        self.text
            .push_str(std::str::from_utf8(&self.bytes[..valid]).unwrap_or(""));
        self.bytes.drain(..valid);
        let mut out = Vec::new();
        loop {
            match codec::split_chunk(&self.text) {
                Ok(Some((payload, used))) => {
                    out.push(payload.to_string());
                    self.text.drain(..used);
                }
                Ok(None) => return Ok(out),
                Err(e) => return Err(Failure::Transient(e.to_string())),
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.text.is_empty()
    }
}

fn parse_arrays(payload: &str) -> Result<Vec<(u64, Value)>, Failure> {
    let value: Value = serde_json::from_str(payload.trim_end())
        .map_err(|_| Failure::Transient("bad data".into()))?;
    value
        .as_array()
        .ok_or_else(|| Failure::Transient("bad data".into()))?
        .iter()
        .map(|a| {
            let id = a.get(0).and_then(Value::as_u64);
            let data = a.get(1).cloned();
            id.zip(data)
                .ok_or_else(|| Failure::Transient("bad data".into()))
        })
        .collect()
}

fn payload_of(value: &Value) -> Payload {
    match value
        .as_array()
        .and_then(|a| a.first())
        .and_then(Value::as_str)
    {
        Some("noop") => Payload::Keepalive,
        Some("stop") => Payload::Stop,
        Some("c") => Payload::Open,
        _ => Payload::Message(Bytes::from(value.to_string())),
    }
}

struct Driver<'a> {
    link: &'a mut Link,
    http: Http,
    base: String,
    core: Session,
    tracker: Tracker,
    sid: String,
    rid: u64,
    streaming: bool,
    back_base: String,
    io_tx: mpsc::UnboundedSender<Io>,
    io_rx: mpsc::UnboundedReceiver<Io>,
    /// The forward POST in flight: its RID and the last map id it carried.
    posting: Option<(u64, Option<u64>)>,
    forward_retries: u32,
    back_generation: u64,
    back_retries: u32,
}

/// Runs one BrowserChannel session from the test channel to its end.
pub(crate) async fn run(link: &mut Link, base: &str) -> Ended {
    let base = base.trim_end_matches('/').to_string();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let http: Http = HttpClient::builder(TokioExecutor::new()).build(connector);
    let mut params = link.common_params();
    if let Some((osid, oaid)) = &link.previous {
        params.push(("OSID".into(), osid.clone()));
        params.push((
            "OAID".into(),
            oaid.map_or("-1".to_string(), |a| a.to_string()),
        ));
    }
    // Test channel, phase 1: the host prefix.
    let mut p = params.clone();
    p.extend([
        ("VER".into(), "8".into()),
        ("MODE".into(), "init".into()),
        ("zx".into(), zx()),
        ("t".into(), "1".into()),
    ]);
    let host_prefix = match get_text(&http, &url(&base, "test", &p), WATCHDOG).await {
        Ok((200, body)) => match serde_json::from_str::<Value>(&body) {
            Ok(v) => v.get(0).and_then(Value::as_str).map(str::to_string),
            Err(_) => return Ended::Failed("Request failed: bad test channel answer".into()),
        },
        Ok((status, _)) => return Ended::Failed(format!("Request failed (HTTP {status})")),
        Err(f) => return Ended::Failed(f.describe()),
    };
    let back_base = match (&host_prefix, link.options.use_host_prefix) {
        (Some(prefix), true) => with_host_prefix(&base, prefix).unwrap_or_else(|| base.clone()),
        _ => base.clone(),
    };
    // Phase 2: can responses stream, or does a proxy buffer them?
    let mut p = params.clone();
    p.extend([
        ("VER".into(), "8".into()),
        ("TYPE".into(), "xmlhttp".into()),
        ("zx".into(), zx()),
        ("t".into(), "1".into()),
    ]);
    let streaming = match phase2(&http, &url(&back_base, "test", &p)).await {
        Ok(s) => s,
        Err(f) => return Ended::Failed(f.describe()),
    };
    let (io_tx, io_rx) = mpsc::unbounded_channel();
    let config = Config {
        keepalive_interval: Duration::MAX,
        session_timeout: Duration::MAX,
        attach_timeout: Duration::MAX,
        ..Config::default()
    };
    let mut driver = Driver {
        core: Session::new(Role::Client, config, Instant::now()),
        link,
        http,
        base,
        tracker: Tracker::new(Transport::BrowserChannel),
        sid: String::new(),
        rid: rand::rng().random_range(0..100_000),
        streaming,
        back_base,
        io_tx,
        io_rx,
        posting: None,
        forward_retries: 0,
        back_generation: 0,
        back_retries: 0,
    };
    let ended = driver.session(params).await;
    if !driver.sid.is_empty() {
        driver.link.previous = Some((driver.sid.clone(), driver.core.ack_position()));
    }
    ended
}

fn with_host_prefix(base: &str, prefix: &str) -> Option<String> {
    let mut u = url::Url::parse(base).ok()?;
    let host = format!("{prefix}.{}", u.host_str()?);
    u.set_host(Some(&host)).ok()?;
    Some(u.to_string().trim_end_matches('/').to_string())
}

/// True if `11111` arrives on its own first (streaming works), false if the answer comes
/// buffered.
async fn phase2(http: &Http, url: &str) -> Result<bool, Failure> {
    let req = http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .map_err(|e| Failure::Transient(e.to_string()))?;
    let fut = async {
        let res = http
            .request(req)
            .await
            .map_err(|e| Failure::Transient(e.to_string()))?;
        if res.status() != 200 {
            return Err(Failure::Status(res.status().as_u16()));
        }
        let mut body = res.into_body();
        let mut seen = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Failure::Transient(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                seen.extend_from_slice(&data);
                if seen == b"11111" {
                    return Ok(true);
                }
                if seen.len() > 5 {
                    break;
                }
            }
        }
        while let Some(frame) = body.frame().await {
            frame.map_err(|e| Failure::Transient(e.to_string()))?;
        }
        Ok(false)
    };
    tokio::time::timeout(WATCHDOG, fut)
        .await
        .unwrap_or_else(|_| Err(Failure::Transient("timed out".into())))
}

impl Driver<'_> {
    fn params(
        &self,
        base: Vec<(String, String)>,
        extra: &[(&str, String)],
    ) -> Vec<(String, String)> {
        let mut p = base;
        p.push(("VER".into(), "8".into()));
        for (k, v) in extra {
            p.push((k.to_string(), v.clone()));
        }
        p.push(("zx".into(), zx()));
        p
    }

    async fn session(&mut self, params: Vec<(String, String)>) -> Ended {
        let now = Instant::now();
        for (json, ack) in std::mem::take(&mut self.link.queued) {
            self.send(now, json, ack);
        }
        // Open: the first POST carries whatever was queued (up to 1 000 maps).
        let (rid, body, last) = self.forward_batch(now, false);
        self.rid += 1;
        let mut extra = vec![("RID", rid.to_string())];
        if let Some(v) = &self.link.options.app_version {
            extra.push(("CVER", v.clone()));
        }
        extra.push(("t", "1".to_string()));
        let open_url = url(&self.base, "bind", &self.params(params.clone(), &extra));
        let answer = post(&self.http, &open_url, body, WATCHDOG).await;
        let text = match answer {
            Ok(text) => text,
            Err(f) => {
                self.fail_all(CloseReason::Protocol(f.describe()));
                return match f {
                    Failure::Transient(_) => Ended::Failed(f.describe()),
                    _ => Ended::Closed(CloseReason::Protocol(f.describe())),
                };
            }
        };
        if let Err(e) = self.open_answer(now, &text, last) {
            self.fail_all(CloseReason::Protocol(e.clone()));
            return Ended::Failed(e);
        }
        if let Some(ended) = self.drain() {
            return ended;
        }
        self.start_back_channel(params.clone());
        loop {
            self.maybe_post(&params);
            tokio::select! {
                command = self.link.commands.recv() => match command {
                    Some(Command::Send { json, ack }) => self.send(Instant::now(), json, ack),
                    Some(Command::Close) | None => {
                        self.terminate(&params).await;
                        let _ = self.core.close(Instant::now(), CloseReason::Closed(None));
                        self.drain();
                        return Ended::ByApplication;
                    }
                },
                io = self.io_rx.recv() => {
                    let Some(io) = io else { return Ended::Failed("internal channel closed".into()) };
                    if let Some(ended) = self.io(io, &params).await {
                        return ended;
                    }
                }
            }
            if let Some(ended) = self.drain() {
                return ended;
            }
        }
    }

    fn send(&mut self, now: Instant, json: Bytes, ack: oneshot::Sender<Result<(), SendError>>) {
        self.tracker.send(&mut self.core, now, json, ack);
    }

    /// Takes the next batch of maps from the core (a one-shot path per POST; attaching
    /// rewinds, so a retry carries every unacknowledged map again, plus new ones).
    fn forward_batch(&mut self, now: Instant, retry: bool) -> (u64, String, Option<u64>) {
        let rid = self.rid;
        let mut maps = Vec::new();
        let mut first = None;
        let mut last = None;
        let wanted = retry || self.core.has_unsent();
        if wanted
            && self
                .core
                .attach(
                    now,
                    PathMode {
                        one_shot: true,
                        max_bytes: None,
                        provisional: false,
                    },
                )
                .is_ok()
        {
            while let Some(t) = self.core.poll_transmit() {
                if let Transmit::Batch { items, .. } = t {
                    for item in items.into_iter().take(MAX_MAPS_PER_POST) {
                        if let Payload::Message(json) = item.payload {
                            first.get_or_insert(item.seq);
                            last = Some(item.seq);
                            let mut m = Map::new();
                            m.insert("JSON".into(), String::from_utf8_lossy(&json).into_owned());
                            maps.push(m);
                        }
                    }
                }
            }
        }
        (rid, codec::encode_forward(first.unwrap_or(0), &maps), last)
    }

    fn open_answer(&mut self, now: Instant, text: &str, last: Option<u64>) -> Result<(), String> {
        let mut reader = ChunkReader::default();
        let chunks = reader.push(text.as_bytes()).map_err(|f| f.describe())?;
        let mut arrays = Vec::new();
        for chunk in chunks {
            arrays.extend(parse_arrays(&chunk).map_err(|f| f.describe())?);
        }
        let Some((0, c)) = arrays.first() else {
            return Err("Got bad data from the server".into());
        };
        let sid = c
            .get(1)
            .and_then(Value::as_str)
            .ok_or("Got bad data from the server")?;
        self.sid = sid.to_string();
        if let Some(last) = last {
            let _ = self.core.handle_ack(now, last);
        }
        for (id, value) in arrays {
            let _ = self.core.handle_incoming(now, id, payload_of(&value));
        }
        Ok(())
    }

    fn maybe_post(&mut self, params: &[(String, String)]) {
        if self.posting.is_some() || !self.core.has_unsent() || self.core.is_closed() {
            return;
        }
        let (rid, body, last) = self.forward_batch(Instant::now(), false);
        self.post_now(params, rid, body, last);
        self.rid = rid + 1;
    }

    fn post_now(&mut self, params: &[(String, String)], rid: u64, body: String, last: Option<u64>) {
        let aid = self
            .core
            .ack_position()
            .map_or("-1".to_string(), |a| a.to_string());
        let t = (self.forward_retries + 1).to_string();
        let extra = [
            ("SID", self.sid.clone()),
            ("RID", rid.to_string()),
            ("AID", aid),
            ("t", t),
        ];
        let u = url(&self.base, "bind", &self.params(params.to_vec(), &extra));
        self.posting = Some((rid, last));
        let (http, tx) = (self.http.clone(), self.io_tx.clone());
        tokio::spawn(async move {
            let _ = tx.send(Io::Posted(post(&http, &u, body, FORWARD_TIMEOUT).await));
        });
    }

    fn start_back_channel(&mut self, params: Vec<(String, String)>) {
        self.back_generation += 1;
        let generation = self.back_generation;
        let aid = self
            .core
            .ack_position()
            .map_or("-1".to_string(), |a| a.to_string());
        let ci = if self.streaming { "0" } else { "1" };
        let extra = [
            ("RID", "rpc".to_string()),
            ("SID", self.sid.clone()),
            ("CI", ci.to_string()),
            ("AID", aid),
            ("TYPE", "xmlhttp".to_string()),
            ("t", (self.back_retries + 1).to_string()),
        ];
        let u = url(&self.back_base, "bind", &self.params(params, &extra));
        let (http, tx) = (self.http.clone(), self.io_tx.clone());
        tokio::spawn(async move {
            let outcome = back_channel(&http, &u, &tx).await;
            let _ = tx.send(Io::BackEnded {
                generation,
                outcome,
            });
        });
    }

    async fn io(&mut self, io: Io, params: &[(String, String)]) -> Option<Ended> {
        let now = Instant::now();
        match io {
            Io::Arrays(arrays) => {
                self.back_retries = 0;
                for (id, value) in arrays {
                    let _ = self.core.handle_incoming(now, id, payload_of(&value));
                }
            }
            Io::BackEnded {
                generation,
                outcome,
            } => {
                if generation != self.back_generation || self.core.is_closed() {
                    return None;
                }
                match outcome {
                    Ok(()) => self.start_back_channel(params.to_vec()),
                    Err(Failure::Transient(e))
                        if self.back_retries < 3 && !self.link.options.fail_fast =>
                    {
                        self.back_retries += 1;
                        let delay = retry_delay(self.back_retries);
                        tracing::debug!(error = %e, ?delay, "back channel failed; retrying");
                        tokio::time::sleep(delay).await;
                        self.start_back_channel(params.to_vec());
                    }
                    Err(f) => return Some(self.end_with(f)),
                }
            }
            Io::Posted(outcome) => {
                let (rid, last) = self.posting.take().unwrap_or((self.rid, None));
                match outcome.and_then(|text| check_forward_answer(&text)) {
                    Ok(present) => {
                        self.forward_retries = 0;
                        if let Some(last) = last {
                            let _ = self.core.handle_ack(now, last);
                        }
                        if !present && self.back_retries == 0 {
                            tracing::debug!("server reports no back channel");
                        }
                    }
                    Err(Failure::Transient(e))
                        if self.forward_retries < 2 && !self.link.options.fail_fast =>
                    {
                        self.forward_retries += 1;
                        tracing::debug!(error = %e, "forward request failed; retrying under the same RID");
                        tokio::time::sleep(retry_delay(self.forward_retries)).await;
                        let (_, body, last) = self.forward_batch(now, true);
                        self.post_now(params, rid, body, last);
                    }
                    Err(f) => return Some(self.end_with(f)),
                }
            }
        }
        None
    }

    fn end_with(&mut self, failure: Failure) -> Ended {
        let reason = match failure {
            Failure::UnknownSession => CloseReason::PeerClosed,
            _ => CloseReason::Protocol(failure.describe()),
        };
        self.link.emit(Event::Error(failure.describe()));
        let _ = self.core.close(Instant::now(), reason.clone());
        self.drain();
        Ended::Closed(reason)
    }

    fn fail_all(&mut self, reason: CloseReason) {
        let _ = self.core.close(Instant::now(), reason);
        self.drain();
    }

    /// Applies the core's events; returns how the session ended, if it did.
    fn drain(&mut self) -> Option<Ended> {
        let ended = self.tracker.drain(&mut self.core, self.link, &self.sid);
        while self.core.poll_transmit().is_some() {}
        ended
    }

    async fn terminate(&mut self, params: &[(String, String)]) {
        if self.sid.is_empty() {
            return;
        }
        let extra = [
            ("SID", self.sid.clone()),
            ("RID", self.rid.to_string()),
            ("TYPE", "terminate".to_string()),
        ];
        let u = url(&self.base, "bind", &self.params(params.to_vec(), &extra));
        let _ = get_text(&self.http, &u, Duration::from_secs(2)).await;
    }
}

fn retry_delay(retry: u32) -> Duration {
    if retry <= 1 {
        return Duration::ZERO;
    }
    let ms = (5_000 + rand::rng().random_range(0..10_000)) * u64::from(retry - 1);
    Duration::from_millis(ms.min(30_000))
}

/// The answer to a forward POST must be one chunk holding a 3-element array.
fn check_forward_answer(text: &str) -> Result<bool, Failure> {
    let mut reader = ChunkReader::default();
    let chunks = reader.push(text.as_bytes())?;
    let array = chunks
        .first()
        .and_then(|c| serde_json::from_str::<Value>(c).ok())
        .and_then(|v| v.as_array().cloned())
        .filter(|a| a.len() == 3)
        .ok_or(Failure::Status(200))?;
    Ok(array[0].as_u64() == Some(1))
}

async fn post(http: &Http, url: &str, body: String, timeout: Duration) -> Result<String, Failure> {
    let req = http::Request::post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| Failure::Transient(e.to_string()))?;
    let (status, text) = exchange(http, req, timeout).await?;
    classify(status, &text)?;
    if text.is_empty() {
        return Err(Failure::Transient("no data".into()));
    }
    Ok(text)
}

/// Reads one back-channel response, forwarding its arrays; `Ok` when it completed normally
/// with data.
async fn back_channel(
    http: &Http,
    url: &str,
    tx: &mpsc::UnboundedSender<Io>,
) -> Result<(), Failure> {
    let req = http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .map_err(|e| Failure::Transient(e.to_string()))?;
    let res = tokio::time::timeout(WATCHDOG, http.request(req))
        .await
        .map_err(|_| Failure::Transient("timed out".into()))?
        .map_err(|e| Failure::Transient(e.to_string()))?;
    let status = res.status().as_u16();
    let mut body = res.into_body();
    if status != 200 {
        let text = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        classify(status, &String::from_utf8_lossy(&text))?;
        return Err(Failure::Status(status));
    }
    let mut reader = ChunkReader::default();
    let mut got_data = false;
    loop {
        let frame = tokio::time::timeout(WATCHDOG, body.frame())
            .await
            .map_err(|_| Failure::Transient("timed out".into()))?;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| Failure::Transient(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        for chunk in reader.push(&data)? {
            got_data = true;
            let _ = tx.send(Io::Arrays(parse_arrays(&chunk)?));
        }
    }
    if !reader.is_empty() {
        return Err(Failure::Transient("bad data".into()));
    }
    if got_data {
        Ok(())
    } else {
        Err(Failure::Transient("no data".into()))
    }
}
