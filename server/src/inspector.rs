//! What happened to each proxied request, reported once its answer has been written (or
//! abandoned): one log line, the request metrics, and the request inspector's history — the
//! last requests of each connected client, for the admin page `/_browserver/inspect`
//! (ngrok's `:4040`, on the admin surface).
//!
//! Bounds: a client's history holds its last [`Inspector::per_client`] requests (default
//! 50) and goes when the client disconnects; a request's headers are kept up to
//! [`MAX_HEADERS`] of them, each value cut at [`MAX_HEADER_VALUE`] bytes.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use serde::Serialize;

/// Headers kept per request and per answer.
pub const MAX_HEADERS: usize = 64;
/// Bytes kept of one header value.
pub const MAX_HEADER_VALUE: usize = 1024;

/// One proxied request as the inspector shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Increases by one per request over the whole server (`since` in the API).
    pub seq: u64,
    /// The client's name.
    pub client: String,
    /// When it arrived, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The request's method.
    pub method: String,
    /// Its path and query.
    pub path: String,
    /// The answer's status.
    pub status: u16,
    /// From arrival to the answer's last byte, or to its abandonment.
    pub duration_ms: u64,
    /// Request body bytes read.
    pub bytes_in: u64,
    /// Answer body bytes written.
    pub bytes_out: u64,
    /// Whether the answer was written completely (false: the visitor went away or the
    /// client's answer was cut).
    pub complete: bool,
    /// The request's headers (as the visitor sent them).
    pub request_headers: Headers,
    /// The answer's headers.
    pub response_headers: Headers,
}

/// Headers as the inspector keeps them: at most [`MAX_HEADERS`], values cut at
/// [`MAX_HEADER_VALUE`] bytes, in one string (`name: value` lines; one allocation per
/// message, recorded for every proxied request). Serialized as `[[name, value], …]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(String);

impl Headers {
    /// Keeps `headers` within the bounds.
    pub fn keep(headers: &http::HeaderMap) -> Headers {
        let mut s = String::new();
        for (k, v) in headers.iter().take(MAX_HEADERS) {
            s.push_str(k.as_str());
            s.push_str(": ");
            let value = v.as_bytes();
            let cut = &value[..value.len().min(MAX_HEADER_VALUE)];
            // A value cut inside a UTF-8 sequence shows its remains as U+FFFD.
            s.push_str(&String::from_utf8_lossy(cut));
            s.push('\n');
        }
        Headers(s)
    }

    /// The kept headers, in order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.lines().filter_map(|line| line.split_once(": "))
    }
}

impl Serialize for Headers {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.pairs())
    }
}

impl Entry {
    fn empty() -> Entry {
        Entry {
            seq: 0,
            client: String::new(),
            at_ms: 0,
            method: String::new(),
            path: String::new(),
            status: 0,
            duration_ms: 0,
            bytes_in: 0,
            bytes_out: 0,
            complete: false,
            request_headers: Headers::default(),
            response_headers: Headers::default(),
        }
    }
}

/// The request histories of the connected clients.
#[derive(Debug)]
pub struct Inspector {
    per_client: usize,
    seq: AtomicU64,
    /// Each connected client's history, with the connection it belongs to (a client that
    /// replaced another under the same name starts afresh, and the replaced one leaving does
    /// not take the new one's history with it).
    clients: Mutex<HashMap<String, (u64, VecDeque<Entry>)>>,
}

/// One client's connection, as the inspector knows it: give it back to
/// [`Inspector::disconnected`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection(u64);

impl Inspector {
    /// Keeps the last `per_client` requests of each connected client (0: none, the
    /// inspector is off).
    pub fn new(per_client: usize) -> Inspector {
        Inspector {
            per_client,
            seq: AtomicU64::new(0),
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// How many requests are kept per client.
    pub fn per_client(&self) -> usize {
        self.per_client
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, VecDeque<Entry>)>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A client connected under `name`: its history starts (empty), replacing that of a
    /// connection it replaced.
    pub fn connected(&self, name: &str) -> Connection {
        let connection = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        if self.per_client > 0 {
            self.table()
                .insert(name.to_string(), (connection, VecDeque::new()));
        }
        Connection(connection)
    }

    /// The connection of `name` ended: its history goes, unless another connection holds
    /// the name by now.
    pub fn disconnected(&self, name: &str, connection: Connection) {
        let mut table = self.table();
        if table.get(name).is_some_and(|(c, _)| *c == connection.0) {
            table.remove(name);
        }
    }

    /// Files `entry` under its client, if that client is connected.
    fn record(&self, mut entry: Entry) {
        let mut table = self.table();
        let Some((_, history)) = table.get_mut(&entry.client) else {
            return;
        };
        entry.seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        if history.len() >= self.per_client {
            history.pop_front();
        }
        history.push_back(entry);
    }

    /// The requests of `client` after `since` (a `seq`), oldest first.
    pub fn requests(&self, client: &str, since: u64) -> Vec<Entry> {
        self.table()
            .get(client)
            .map(|(_, h)| h.iter().filter(|e| e.seq > since).cloned().collect())
            .unwrap_or_default()
    }
}

/// A proxied request being answered: reported once, when its answer body ends or is dropped.
#[derive(Debug)]
pub struct Record {
    entry: Entry,
    started: Instant,
    bytes_in: Arc<AtomicU64>,
    inspector: Arc<Inspector>,
    reported: bool,
}

impl Record {
    /// Starts the record of a request to `client`, counting its body bytes in `bytes_in`.
    pub fn start(
        inspector: Arc<Inspector>,
        client: String,
        parts: &http::request::Parts,
        bytes_in: Arc<AtomicU64>,
    ) -> Record {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let keep = inspector.per_client > 0;
        Record {
            entry: Entry {
                seq: 0,
                client,
                at_ms,
                method: parts.method.to_string(),
                path: parts
                    .uri
                    .path_and_query()
                    .map_or_else(|| "/".to_string(), |p| p.to_string()),
                status: 0,
                duration_ms: 0,
                bytes_in: 0,
                bytes_out: 0,
                complete: false,
                request_headers: if keep {
                    Headers::keep(&parts.headers)
                } else {
                    Headers::default()
                },
                response_headers: Headers::default(),
            },
            started: Instant::now(),
            bytes_in,
            inspector,
            reported: false,
        }
    }

    /// The answer's head is known.
    pub fn answered(&mut self, response: &http::response::Parts) {
        self.entry.status = response.status.as_u16();
        if self.inspector.per_client > 0 {
            self.entry.response_headers = Headers::keep(&response.headers);
        }
    }

    fn report(&mut self) {
        if std::mem::replace(&mut self.reported, true) {
            return;
        }
        let e = &mut self.entry;
        let elapsed = self.started.elapsed();
        e.duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        e.bytes_in = self.bytes_in.load(Ordering::Relaxed);
        // The log line leaves the query out: it may carry a visitor's secrets (the inspector,
        // behind the admin token, shows it).
        let path = e.path.split('?').next().unwrap_or_default();
        tracing::info!(
            client = %e.client,
            method = %e.method,
            path,
            status = e.status,
            duration_ms = e.duration_ms,
            bytes_in = e.bytes_in,
            bytes_out = e.bytes_out,
            complete = e.complete,
            "proxied"
        );
        browserver_runtime::metrics::proxied(
            e.status,
            elapsed.as_secs_f64(),
            e.bytes_in,
            e.bytes_out,
        );
        if self.inspector.per_client > 0 {
            // The last use of the entry: moved, not copied.
            let entry = std::mem::replace(&mut self.entry, Entry::empty());
            self.inspector.record(entry);
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        self.report();
    }
}

/// A body that counts the bytes passing through it into a shared counter (a request body,
/// read by the proxy).
pub struct Counted<B> {
    inner: B,
    bytes: Arc<AtomicU64>,
}

impl<B> Counted<B> {
    /// `inner`, counted into `bytes`.
    pub fn new(inner: B, bytes: Arc<AtomicU64>) -> Counted<B> {
        Counted { inner, bytes }
    }
}

impl<B: Body + Unpin> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &r
            && let Some(data) = frame.data_ref()
        {
            self.bytes
                .fetch_add(data.remaining() as u64, Ordering::Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An answer body that completes its [`Record`]: bytes counted as written, reported at its
/// end (complete) or when dropped before it (cut). Without a record it only passes through.
pub struct Recorded<B> {
    inner: B,
    record: Option<Record>,
}

impl<B> Recorded<B> {
    /// `inner`, the answer of `record`'s request.
    pub fn new(inner: B, record: Record) -> Recorded<B> {
        Recorded {
            inner,
            record: Some(record),
        }
    }

    /// `inner`, not a proxied request's answer: nothing recorded.
    pub fn unrecorded(inner: B) -> Recorded<B> {
        Recorded {
            inner,
            record: None,
        }
    }
}

impl<B: Body + Unpin> Body for Recorded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        let Some(record) = this.record.as_mut() else {
            return r;
        };
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.remaining() as u64;
                    record.entry.bytes_out = record.entry.bytes_out.saturating_add(n);
                }
                if this.inner.is_end_stream() {
                    record.entry.complete = true;
                    record.report();
                }
            }
            Poll::Ready(None) => {
                record.entry.complete = true;
                record.report();
            }
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    fn parts(path: &str) -> http::request::Parts {
        let (parts, ()) = http::Request::get(path)
            .header("x-long", "v".repeat(3000))
            .body(())
            .expect("request")
            .into_parts();
        parts
    }

    #[tokio::test]
    async fn a_connected_clients_last_requests_are_kept_with_sizes_and_cut_headers() {
        let inspector = Arc::new(Inspector::new(2));
        let connection = inspector.connected("alice");
        for path in ["/1", "/2", "/3"] {
            let bytes_in = Arc::new(AtomicU64::new(0));
            let mut body = Counted::new(Full::new(bytes::Bytes::from("12345")), bytes_in.clone());
            while body.frame().await.is_some() {}
            let mut record =
                Record::start(inspector.clone(), "alice".into(), &parts(path), bytes_in);
            let (response, answer) = http::Response::builder()
                .status(201)
                .body(Full::new(bytes::Bytes::from("abc")))
                .expect("response")
                .into_parts();
            record.answered(&response);
            let body = Recorded::new(answer, record);
            let _ = body.collect().await;
        }
        let kept = inspector.requests("alice", 0);
        assert_eq!(
            kept.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
            ["/2", "/3"]
        );
        let last = &kept[1];
        assert_eq!(
            (last.status, last.bytes_in, last.bytes_out, last.complete),
            (201, 5, 3, true)
        );
        let (name, value) = last.request_headers.pairs().next().expect("a header");
        assert_eq!((name, value.len()), ("x-long", MAX_HEADER_VALUE));
        let json = serde_json::to_value(last).expect("json");
        assert_eq!(json["request_headers"][0][0], "x-long");
        assert_eq!(inspector.requests("alice", last.seq - 1).len(), 1, "since");
        inspector.disconnected("alice", connection);
        assert!(inspector.requests("alice", 0).is_empty());
    }

    #[test]
    fn a_replaced_connection_leaving_keeps_the_new_holders_history() {
        let inspector = Arc::new(Inspector::new(5));
        let old = inspector.connected("alice");
        let new = inspector.connected("alice");
        drop(Record::start(
            inspector.clone(),
            "alice".into(),
            &parts("/new"),
            Arc::default(),
        ));
        inspector.disconnected("alice", old);
        assert_eq!(inspector.requests("alice", 0).len(), 1, "still recorded");
        inspector.disconnected("alice", new);
        assert!(inspector.requests("alice", 0).is_empty());
    }

    #[test]
    fn at_most_max_headers_are_kept_in_order() {
        let mut headers = http::HeaderMap::new();
        for i in 0..100 {
            let name = http::HeaderName::try_from(format!("x-h{i:03}")).expect("name");
            headers.insert(name, http::HeaderValue::from_static("a: b"));
        }
        let kept = Headers::keep(&headers);
        let pairs: Vec<_> = kept.pairs().collect();
        assert_eq!(pairs.len(), MAX_HEADERS);
        assert_eq!(pairs[0], ("x-h000", "a: b"), "a value may hold ': '");
    }

    #[tokio::test]
    async fn an_answer_dropped_before_its_end_is_recorded_as_cut_and_unknown_clients_are_not_kept()
    {
        let inspector = Arc::new(Inspector::new(10));
        let _bob = inspector.connected("bob");
        let record = Record::start(
            inspector.clone(),
            "bob".into(),
            &parts("/x"),
            Arc::default(),
        );
        drop(Recorded::new(Full::new(bytes::Bytes::from("abc")), record));
        let kept = inspector.requests("bob", 0);
        assert_eq!(kept.len(), 1);
        assert!(!kept[0].complete);
        let record = Record::start(
            inspector.clone(),
            "nobody".into(),
            &parts("/x"),
            Arc::default(),
        );
        drop(record);
        assert!(inspector.requests("nobody", 0).is_empty());
    }
}
