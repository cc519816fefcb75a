//! The client side of BrowserChannel for one session, as a sans-IO machine (the protocol of
//! Closure's `goog.net.BrowserChannel`, version 8, after the test channel): the creating
//! request, the forward channel (one POST in flight, retried under the same `RID`), the back
//! channel (reopened with `AID`), `terminate`. Responses in (status, body bytes, end, or a
//! failure), requests out; every request deadline and retry delay is in this machine's timer,
//! so the simulator runs it exactly as the client's driver does.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use browserver_core::{
    CloseReason, PathMode, Payload, Role, Session as Core, Transmit as CoreTransmit,
};
use bytes::Bytes;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

pub use browserver_runtime::ClientEvent;

use crate::codec::{self, ArrayKind, ChunkReader, ForwardStatus, Map};
use crate::protocol::RequestId;

/// Settings of one client session.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Whether back channels may stream (`CI=0`; the test channel's verdict).
    pub streaming: bool,
    /// Sent as `CVER`.
    pub app_version: Option<String>,
    /// The session this one replaces (`OSID`, and `OAID`: the last array received).
    pub previous: Option<(String, Option<u64>)>,
    /// The first `RID`.
    pub first_rid: u64,
    /// Deadline of the creating request and of each back channel's silence (Closure: 45 s).
    pub watchdog: Duration,
    /// Deadline of a forward request. 20 s.
    pub forward_timeout: Duration,
    /// Deadline of `terminate`. 2 s.
    pub terminate_timeout: Duration,
    /// Retries of a failed forward request (same `RID`). 2.
    pub max_forward_retries: u32,
    /// Retries of a failed back channel. 3.
    pub max_back_retries: u32,
    /// The first retry is at once; then `retry_delay × (n − 1)` plus up to twice as much
    /// jitter, capped at 30 s (Closure: 5 s + 0–10 s).
    pub retry_delay: Duration,
    /// Give up at the first failure instead of retrying.
    pub fail_fast: bool,
    /// Most maps per forward request. 1 000.
    pub max_maps_per_post: usize,
    /// Bytes of one response held before it is refused. 16 MiB.
    pub max_response_bytes: usize,
    /// Seeds the retry jitter.
    pub seed: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            streaming: true,
            app_version: None,
            previous: None,
            first_rid: 0,
            watchdog: Duration::from_secs(45),
            forward_timeout: Duration::from_secs(20),
            terminate_timeout: Duration::from_secs(2),
            max_forward_retries: 2,
            max_back_retries: 3,
            retry_delay: Duration::from_secs(5),
            fail_fast: false,
            max_maps_per_post: 1000,
            max_response_bytes: 16 << 20,
            seed: 0x9e37_79b9_7f4a_7c15,
        }
    }
}

/// A request for the I/O side to make, at `<base>/bind` (or the host-prefixed base for back
/// channels, `back`) with this query (plus the application's own parameters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Its id; responses name it.
    pub id: RequestId,
    /// POST (forward) or GET.
    pub post: bool,
    /// A back channel: use the host-prefixed base, if any.
    pub back: bool,
    /// The protocol's query parameters.
    pub query: Vec<(String, String)>,
    /// The form body of a POST.
    pub body: Option<String>,
}

/// What the I/O side feeds in.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientInput {
    /// The response's status.
    Head {
        /// The request.
        request: RequestId,
        /// Its status.
        status: u16,
    },
    /// Body bytes, as read.
    Data {
        /// The request.
        request: RequestId,
        /// The bytes.
        data: Bytes,
    },
    /// The body ended normally.
    End {
        /// The request.
        request: RequestId,
    },
    /// The request failed (network error); it is over.
    Failed {
        /// The request.
        request: RequestId,
        /// Why.
        error: String,
    },
}

/// What the I/O side is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientTransmit {
    /// Make this request.
    Request(Request),
    /// Abandon this request (its deadline passed, or the session ended).
    Cancel(RequestId),
}

#[derive(Debug)]
enum Failure {
    /// Network error, timeout, empty or garbled body: retried.
    Transient(String),
    /// HTTP 400 with `Unknown SID`: the session is gone.
    UnknownSession,
    /// 401 or 403: the server refuses this client (with its reason); fatal.
    Refused(u16, String),
    /// Any other non-200 status: fatal.
    Status(u16),
}

impl Failure {
    fn describe(&self) -> String {
        match self {
            Failure::Transient(e) => format!("Request failed: {e}"),
            Failure::UnknownSession => "Unknown session ID".into(),
            Failure::Refused(s, why) if why.is_empty() => {
                format!("refused by the server (HTTP {s})")
            }
            Failure::Refused(s, why) => format!("refused by the server (HTTP {s}): {why}"),
            Failure::Status(s) => format!("Request failed (HTTP {s})"),
        }
    }
}

fn classify(status: u16, body: &[u8]) -> Result<(), Failure> {
    let body = String::from_utf8_lossy(body);
    match status {
        200 => Ok(()),
        400 if body.find("Unknown SID").is_some_and(|i| i > 0) => Err(Failure::UnknownSession),
        401 | 403 => Err(Failure::Refused(status, short_reason(&body))),
        s => Err(Failure::Status(s)),
    }
}

/// A refusal's body as a one-line reason: the heading of the server's error page (or the
/// first line of a plain body), at most 200 characters.
fn short_reason(body: &str) -> String {
    let inner = match (body.find("<h1>"), body.find("</h1>")) {
        (Some(start), Some(end)) if start + 4 <= end => &body[start + 4..end],
        _ => body,
    };
    let line = inner.trim().lines().next().unwrap_or("").trim();
    line.chars().take(200).collect()
}

#[derive(Debug)]
enum Kind {
    Create { last: Option<u64> },
    Forward { rid: u64, last: Option<u64> },
    Back,
    Terminate,
}

#[derive(Debug)]
struct Pending {
    kind: Kind,
    deadline: Instant,
    status: Option<u16>,
    body: Vec<u8>,
    reader: ChunkReader,
    got_data: bool,
}

/// One BrowserChannel session, client side.
#[derive(Debug)]
pub struct ClientMachine {
    core: Core,
    config: ClientConfig,
    sid: Option<String>,
    rid: u64,
    next_request: u64,
    pending: HashMap<RequestId, Pending>,
    posting: Option<RequestId>,
    back: Option<RequestId>,
    forward_retries: u32,
    back_retries: u32,
    post_retry: Option<(Instant, u64)>,
    back_retry: Option<Instant>,
    transmits: VecDeque<ClientTransmit>,
    events: VecDeque<ClientEvent>,
    /// The retry jitter, seeded from the configuration so runs replay.
    rng: Xoshiro256PlusPlus,
    now: Instant,
}

impl ClientMachine {
    /// A session that is not open yet: `send` queues, [`open`](Self::open) starts it.
    pub fn new(config: ClientConfig, now: Instant) -> ClientMachine {
        let core_config = browserver_core::Config {
            keepalive_interval: Duration::MAX,
            session_timeout: Duration::MAX,
            attach_timeout: Duration::MAX,
            ..browserver_core::Config::default()
        };
        ClientMachine {
            core: Core::new(Role::Client, core_config, now),
            rid: config.first_rid,
            rng: Xoshiro256PlusPlus::seed_from_u64(config.seed),
            config,
            sid: None,
            next_request: 0,
            pending: HashMap::new(),
            posting: None,
            back: None,
            forward_retries: 0,
            back_retries: 0,
            post_retry: None,
            back_retry: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            now,
        }
    }

    /// The server's session id, once open.
    pub fn sid(&self) -> Option<&str> {
        self.sid.as_deref()
    }

    /// The last array received (the `OAID` of a session that replaces this one).
    pub fn ack_position(&self) -> Option<u64> {
        self.core.ack_position()
    }

    /// Whether the session is closed.
    pub fn is_closed(&self) -> bool {
        self.core.is_closed()
    }

    /// Closed, and no request (a `terminate`) is still on its way.
    pub fn is_finished(&self) -> bool {
        self.core.is_closed() && self.pending.is_empty()
    }

    /// Queues a message (JSON text, ASCII) and, if no forward request is in flight, sends
    /// it; `Ok(seq)` is resolved by `Acked` or `SendFailed`.
    pub fn send(&mut self, now: Instant, json: Bytes) -> Result<u64, browserver_core::SendError> {
        self.now = now;
        let seq = self.core.send(now, json)?;
        self.maybe_post(now);
        Ok(seq)
    }

    /// Sends the creating request, carrying what was queued.
    pub fn open(&mut self, now: Instant) {
        self.now = now;
        let (body, last) = self.forward_batch(now, false);
        let rid = self.rid;
        self.rid = self.rid.wrapping_add(1);
        let mut query = vec![("VER".into(), "8".into()), ("RID".into(), rid.to_string())];
        if let Some(v) = &self.config.app_version {
            query.push(("CVER".into(), v.clone()));
        }
        if let Some((osid, oaid)) = &self.config.previous {
            query.push(("OSID".into(), osid.clone()));
            query.push(("OAID".into(), aid_text(*oaid)));
        }
        query.push(("t".into(), "1".into()));
        let deadline = now + self.config.watchdog;
        self.request(
            Kind::Create { last },
            true,
            false,
            query,
            Some(body),
            deadline,
        );
    }

    /// The application closes the session: `terminate` is sent (if it is open).
    pub fn close(&mut self, now: Instant) {
        self.now = now;
        if self.core.is_closed() {
            return;
        }
        if let Some(sid) = self.sid.clone() {
            let query = vec![
                ("VER".into(), "8".into()),
                ("SID".into(), sid),
                ("RID".into(), self.rid.to_string()),
                ("TYPE".into(), "terminate".into()),
            ];
            let deadline = now + self.config.terminate_timeout;
            self.request(Kind::Terminate, false, false, query, None, deadline);
        }
        let _ = self.core.close(now, CloseReason::Closed(None));
        // The back channel and any forward request are cancelled at once.
        self.after_input(now);
    }

    /// Feeds one response event.
    pub fn handle_input(&mut self, now: Instant, input: ClientInput) {
        self.now = now;
        match input {
            ClientInput::Head { request, status } => {
                if let Some(p) = self.pending.get_mut(&request) {
                    p.status = Some(status);
                }
            }
            ClientInput::Data { request, data } => self.data(now, request, &data),
            ClientInput::End { request } => {
                if let Some(p) = self.pending.remove(&request) {
                    self.ended(now, request, p);
                }
            }
            ClientInput::Failed { request, error } => {
                if let Some(p) = self.pending.remove(&request) {
                    self.failed(now, request, p.kind, Failure::Transient(error));
                }
            }
        }
        self.after_input(now);
    }

    /// Runs the deadlines and retries due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        let expired: Vec<RequestId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(p) = self.pending.remove(&id) {
                self.transmits.push_back(ClientTransmit::Cancel(id));
                self.failed(now, id, p.kind, Failure::Transient("timed out".into()));
            }
        }
        if let Some((at, rid)) = self.post_retry
            && at <= now
        {
            self.post_retry = None;
            let (body, last) = self.forward_batch(now, true);
            self.post(rid, body, last);
        }
        if let Some(at) = self.back_retry
            && at <= now
        {
            self.back_retry = None;
            self.start_back_channel();
        }
        self.after_input(now);
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let requests = self.pending.values().map(|p| p.deadline);
        let retries = self
            .post_retry
            .map(|(at, _)| at)
            .into_iter()
            .chain(self.back_retry);
        requests.chain(retries).min()
    }

    /// The next request (or cancellation) to make.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<ClientTransmit> {
        self.transmits.pop_front()
    }

    /// The next event for the application.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.pump();
        self.events.pop_front()
    }

    fn next_id(&mut self) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request = self.next_request.wrapping_add(1);
        id
    }

    fn request(
        &mut self,
        kind: Kind,
        post: bool,
        back: bool,
        query: Vec<(String, String)>,
        body: Option<String>,
        deadline: Instant,
    ) -> RequestId {
        let id = self.next_id();
        self.pending.insert(
            id,
            Pending {
                kind,
                deadline,
                status: None,
                body: Vec::new(),
                reader: ChunkReader::with_limit(self.config.max_response_bytes),
                got_data: false,
            },
        );
        self.transmits.push_back(ClientTransmit::Request(Request {
            id,
            post,
            back,
            query,
            body,
        }));
        id
    }

    fn aid(&self) -> String {
        aid_text(self.core.ack_position())
    }

    /// Takes the next batch of maps from the core (a one-shot path per POST; attaching
    /// rewinds, so a retry carries every unacknowledged map again, plus new ones).
    fn forward_batch(&mut self, now: Instant, retry: bool) -> (String, Option<u64>) {
        let mut maps = Vec::new();
        let mut first = None;
        let mut last = None;
        let mode = PathMode {
            one_shot: true,
            max_bytes: None,
            provisional: false,
        };
        if (retry || self.core.has_unsent()) && self.core.attach(now, mode).is_ok() {
            while let Some(t) = self.core.poll_transmit() {
                if let CoreTransmit::Batch { items, .. } = t {
                    for item in items.into_iter().take(self.config.max_maps_per_post) {
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
        (codec::encode_forward(first.unwrap_or(0), &maps), last)
    }

    fn post(&mut self, rid: u64, body: String, last: Option<u64>) {
        let Some(sid) = self.sid.clone() else {
            return;
        };
        let query = vec![
            ("VER".into(), "8".into()),
            ("SID".into(), sid),
            ("RID".into(), rid.to_string()),
            ("AID".into(), self.aid()),
            ("t".into(), (self.forward_retries + 1).to_string()),
        ];
        let deadline = self.now + self.config.forward_timeout;
        let id = self.request(
            Kind::Forward { rid, last },
            true,
            false,
            query,
            Some(body),
            deadline,
        );
        self.posting = Some(id);
    }

    fn maybe_post(&mut self, now: Instant) {
        if self.posting.is_some()
            || self.post_retry.is_some()
            || self.sid.is_none()
            || self.core.is_closed()
            || !self.core.has_unsent()
        {
            return;
        }
        let (body, last) = self.forward_batch(now, false);
        let rid = self.rid;
        self.rid = self.rid.wrapping_add(1);
        self.post(rid, body, last);
    }

    fn start_back_channel(&mut self) {
        let Some(sid) = self.sid.clone() else {
            return;
        };
        let ci = if self.config.streaming { "0" } else { "1" };
        let query = vec![
            ("VER".into(), "8".into()),
            ("RID".into(), "rpc".into()),
            ("SID".into(), sid),
            ("CI".into(), ci.into()),
            ("AID".into(), self.aid()),
            ("TYPE".into(), "xmlhttp".into()),
            ("t".into(), (self.back_retries + 1).to_string()),
        ];
        let deadline = self.now + self.config.watchdog;
        let id = self.request(Kind::Back, false, true, query, None, deadline);
        self.back = Some(id);
    }

    fn data(&mut self, now: Instant, request: RequestId, data: &[u8]) {
        let watchdog = self.config.watchdog;
        let limit = self.config.max_response_bytes;
        let Some(p) = self.pending.get_mut(&request) else {
            return;
        };
        if !matches!(p.kind, Kind::Back) || p.status != Some(200) {
            if p.body.len().saturating_add(data.len()) > limit {
                self.abandon(now, request, "response too large");
            } else {
                p.body.extend_from_slice(data);
            }
            return;
        }
        // A back channel's silence is bounded, not its length.
        p.deadline = now + watchdog;
        let arrays = p.reader.push(data).ok().and_then(|chunks| {
            let mut arrays = Vec::new();
            for chunk in chunks {
                arrays.extend(codec::parse_arrays(&chunk).ok()?);
            }
            Some(arrays)
        });
        let Some(arrays) = arrays else {
            return self.abandon(now, request, "bad data");
        };
        if !arrays.is_empty() {
            p.got_data = true;
            self.back_retries = 0;
        }
        self.incoming(now, &arrays);
    }

    /// Gives up on a request whose response is unusable.
    fn abandon(&mut self, now: Instant, request: RequestId, why: &str) {
        if let Some(p) = self.pending.remove(&request) {
            self.transmits.push_back(ClientTransmit::Cancel(request));
            self.failed(now, request, p.kind, Failure::Transient(why.into()));
        }
    }

    fn incoming(&mut self, now: Instant, arrays: &codec::Arrays) {
        for (id, data) in arrays {
            let payload = match codec::array_kind(data) {
                ArrayKind::Noop => Payload::Keepalive,
                ArrayKind::Stop => Payload::Stop,
                ArrayKind::Open { .. } => Payload::Open,
                ArrayKind::Message => {
                    Payload::Message(Bytes::copy_from_slice(data.get().as_bytes()))
                }
            };
            // Arrays already received (a back channel reopened before its AID landed) are
            // ignored by the core; one beyond its window closes the session.
            let _ = self.core.handle_incoming(now, *id, payload);
        }
    }

    fn ended(&mut self, now: Instant, request: RequestId, p: Pending) {
        let status = p.status.unwrap_or(0);
        match p.kind {
            Kind::Create { last } => {
                if let Err(f) = classify(status, &p.body) {
                    return self.failed(now, request, Kind::Create { last }, f);
                }
                if p.body.is_empty() {
                    let f = Failure::Transient("no data".into());
                    return self.failed(now, request, Kind::Create { last }, f);
                }
                match open_answer(&p.body) {
                    Some((sid, arrays)) => {
                        self.sid = Some(sid);
                        if let Some(last) = last {
                            let _ = self.core.handle_ack(now, last);
                        }
                        self.incoming(now, &arrays);
                        if !self.core.is_closed() {
                            self.start_back_channel();
                        }
                    }
                    None => {
                        self.open_failed(now, "Got bad data from the server".into());
                    }
                }
            }
            Kind::Forward { rid, last } => {
                self.posting = None;
                let outcome = classify(status, &p.body).and_then(|()| {
                    if p.body.is_empty() {
                        return Err(Failure::Transient("no data".into()));
                    }
                    let text = String::from_utf8_lossy(&p.body);
                    ForwardStatus::parse(&text).map_err(|_| Failure::Status(200))
                });
                match outcome {
                    Ok(_) => {
                        self.forward_retries = 0;
                        if let Some(last) = last {
                            let _ = self.core.handle_ack(now, last);
                        }
                    }
                    Err(f) => self.failed(now, request, Kind::Forward { rid, last }, f),
                }
            }
            Kind::Back => {
                let outcome = classify(status, &p.body).and_then(|()| {
                    if !p.reader.is_empty() {
                        Err(Failure::Transient("bad data".into()))
                    } else if p.got_data {
                        Ok(())
                    } else {
                        Err(Failure::Transient("no data".into()))
                    }
                });
                match outcome {
                    Ok(()) => {
                        if self.back == Some(request) {
                            self.back = None;
                            if !self.core.is_closed() {
                                self.start_back_channel();
                            }
                        }
                    }
                    Err(f) => self.failed(now, request, Kind::Back, f),
                }
            }
            Kind::Terminate => {}
        }
    }

    fn failed(&mut self, now: Instant, request: RequestId, kind: Kind, failure: Failure) {
        if self.core.is_closed() {
            return;
        }
        let may_retry = matches!(failure, Failure::Transient(_)) && !self.config.fail_fast;
        match kind {
            Kind::Create { .. } => match failure {
                Failure::Transient(_) => self.open_failed(now, failure.describe()),
                Failure::Refused(status, ref reason) => {
                    self.events.push_back(ClientEvent::Refused {
                        status,
                        reason: reason.clone(),
                    });
                    let _ = self
                        .core
                        .close(now, CloseReason::Protocol(failure.describe()));
                }
                _ => {
                    let _ = self
                        .core
                        .close(now, CloseReason::Protocol(failure.describe()));
                }
            },
            // `posting` is left set: a retry replaces it, and ending the session clears it.
            Kind::Forward { rid, .. } => {
                if may_retry && self.forward_retries < self.config.max_forward_retries {
                    self.forward_retries += 1;
                    let delay = self.retry_delay(self.forward_retries);
                    self.post_retry = Some((now + delay, rid));
                } else {
                    self.end_with(now, &failure);
                }
            }
            Kind::Back => {
                if self.back != Some(request) {
                    return;
                }
                self.back = None;
                if may_retry && self.back_retries < self.config.max_back_retries {
                    self.back_retries += 1;
                    let delay = self.retry_delay(self.back_retries);
                    self.back_retry = Some(now + delay);
                } else {
                    self.end_with(now, &failure);
                }
            }
            Kind::Terminate => {}
        }
    }

    fn open_failed(&mut self, now: Instant, why: String) {
        self.events.push_back(ClientEvent::OpenFailed(why.clone()));
        let _ = self.core.close(now, CloseReason::Protocol(why));
    }

    fn end_with(&mut self, now: Instant, failure: &Failure) {
        let reason = match failure {
            Failure::UnknownSession => CloseReason::PeerClosed,
            _ => CloseReason::Protocol(failure.describe()),
        };
        self.events
            .push_back(ClientEvent::Error(failure.describe()));
        let _ = self.core.close(now, reason);
    }

    /// `retry_delay × (n − 1)` plus up to twice as much jitter, capped at 30 s; the first
    /// retry at once.
    fn retry_delay(&mut self, retry: u32) -> Duration {
        if retry <= 1 {
            return Duration::ZERO;
        }
        let base = u64::try_from(self.config.retry_delay.as_millis()).unwrap_or(u64::MAX);
        let jitter = self.rng.random_range(0..=base.saturating_mul(2));
        let ms = base
            .saturating_add(jitter)
            .saturating_mul(u64::from(retry - 1));
        Duration::from_millis(ms.min(30_000))
    }

    fn after_input(&mut self, now: Instant) {
        self.pump();
        if self.core.is_closed() {
            // Nothing more is wanted from the server except the terminate's answer.
            let abandoned: Vec<RequestId> = self
                .pending
                .iter()
                .filter(|(_, p)| !matches!(p.kind, Kind::Terminate))
                .map(|(id, _)| *id)
                .collect();
            for id in abandoned {
                self.pending.remove(&id);
                self.transmits.push_back(ClientTransmit::Cancel(id));
            }
            self.post_retry = None;
            self.back_retry = None;
            self.posting = None;
            self.back = None;
        } else {
            self.maybe_post(now);
        }
    }

    /// Moves the core's events into this machine's queue (its transmits are only read by
    /// `forward_batch`).
    fn pump(&mut self) {
        while self.core.poll_transmit().is_some() {}
        while let Some(e) = self.core.poll_event() {
            if let Some(event) = ClientEvent::from_core(e, self.sid.as_deref()) {
                self.events.push_back(event);
            }
        }
    }
}

fn aid_text(aid: Option<u64>) -> String {
    aid.map_or_else(|| "-1".to_string(), |a| a.to_string())
}

/// The session id and the arrays of a creating request's answer; `None` if it does not
/// start with the session's `["c", sid, …]` array at id 0.
fn open_answer(body: &[u8]) -> Option<(String, codec::Arrays)> {
    let mut reader = ChunkReader::default();
    let mut arrays = Vec::new();
    for chunk in reader.push(body).ok()? {
        arrays.extend(codec::parse_arrays(&chunk).ok()?);
    }
    let (0, first) = arrays.first()? else {
        return None;
    };
    let ArrayKind::Open { sid, .. } = codec::array_kind(first) else {
        return None;
    };
    Some((sid, arrays))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests(m: &mut ClientMachine) -> Vec<Request> {
        std::iter::from_fn(|| m.poll_transmit())
            .filter_map(|t| match t {
                ClientTransmit::Request(r) => Some(r),
                ClientTransmit::Cancel(_) => None,
            })
            .collect()
    }

    fn param<'a>(r: &'a Request, name: &str) -> Option<&'a str> {
        r.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn answer(m: &mut ClientMachine, now: Instant, r: &Request, status: u16, body: &str) {
        m.handle_input(
            now,
            ClientInput::Head {
                request: r.id,
                status,
            },
        );
        m.handle_input(
            now,
            ClientInput::Data {
                request: r.id,
                data: Bytes::copy_from_slice(body.as_bytes()),
            },
        );
        m.handle_input(now, ClientInput::End { request: r.id });
    }

    fn opened(now: Instant) -> (ClientMachine, Request) {
        let mut m = ClientMachine::new(ClientConfig::default(), now);
        m.open(now);
        let create = requests(&mut m).remove(0);
        let body = codec::chunk(&codec::array_batch([(
            0,
            codec::open_array("s1", None).as_bytes(),
        )]));
        answer(&mut m, now, &create, 200, &body);
        let back = requests(&mut m).remove(0);
        (m, back)
    }

    #[test]
    fn the_creating_request_carries_queued_messages_and_opens_the_session() {
        let t0 = Instant::now();
        let mut m = ClientMachine::new(ClientConfig::default(), t0);
        m.send(t0, Bytes::from_static(b"[1]")).expect("queued");
        m.open(t0);
        let create = requests(&mut m).remove(0);
        assert!(create.post);
        assert_eq!(param(&create, "SID"), None);
        assert!(
            create
                .body
                .as_deref()
                .is_some_and(|b| b.contains("req0_JSON"))
        );
        let body = codec::chunk(&codec::array_batch([(
            0,
            codec::open_array("s1", None).as_bytes(),
        )]));
        answer(&mut m, t0, &create, 200, &body);
        let events: Vec<_> = std::iter::from_fn(|| m.poll_event()).collect();
        assert!(events.contains(&ClientEvent::Open { sid: "s1".into() }));
        assert!(events.contains(&ClientEvent::Acked(0)));
        let back = requests(&mut m).remove(0);
        assert_eq!(param(&back, "TYPE"), Some("xmlhttp"));
        assert_eq!(param(&back, "AID"), Some("0"));
        assert!(back.back);
    }

    #[test]
    fn a_failed_forward_request_is_retried_under_the_same_rid() {
        let t0 = Instant::now();
        let (mut m, _back) = opened(t0);
        m.send(t0, Bytes::from_static(b"\"a\"")).expect("send");
        let first = requests(&mut m).remove(0);
        m.handle_input(
            t0,
            ClientInput::Failed {
                request: first.id,
                error: "reset".into(),
            },
        );
        // The first retry is due at once.
        assert_eq!(m.poll_timeout(), Some(t0));
        m.handle_timeout(t0);
        let retry = requests(&mut m).remove(0);
        assert_eq!(param(&retry, "RID"), param(&first, "RID"));
        assert_eq!(param(&retry, "t"), Some("2"));
        assert_eq!(retry.body, first.body);
    }

    #[test]
    fn a_request_past_its_deadline_is_cancelled_and_counts_as_failed() {
        let t0 = Instant::now();
        let (mut m, back) = opened(t0);
        let due = m.poll_timeout().expect("the back channel's watchdog");
        assert_eq!(due, t0 + Duration::from_secs(45));
        m.handle_timeout(due);
        let out: Vec<_> = std::iter::from_fn(|| m.poll_transmit()).collect();
        assert!(out.contains(&ClientTransmit::Cancel(back.id)));
        // The first retry is at once.
        assert!(
            out.iter()
                .any(|t| matches!(t, ClientTransmit::Request(r) if r.back))
        );
    }

    #[test]
    fn unknown_sid_ends_the_session_as_closed_by_the_peer() {
        let t0 = Instant::now();
        let (mut m, back) = opened(t0);
        answer(&mut m, t0, &back, 400, &codec::error_body("Unknown SID"));
        let events: Vec<_> = std::iter::from_fn(|| m.poll_event()).collect();
        assert!(events.contains(&ClientEvent::Closed(CloseReason::PeerClosed)));
        assert!(m.is_finished());
    }

    #[test]
    fn closing_sends_terminate_and_finishes_when_it_is_answered() {
        let t0 = Instant::now();
        let (mut m, _back) = opened(t0);
        m.close(t0);
        let out: Vec<_> = std::iter::from_fn(|| m.poll_transmit()).collect();
        let terminate = out
            .iter()
            .find_map(|t| match t {
                ClientTransmit::Request(r) if param(r, "TYPE") == Some("terminate") => {
                    Some(r.clone())
                }
                _ => None,
            })
            .expect("terminate");
        assert!(m.is_closed() && !m.is_finished());
        answer(&mut m, t0, &terminate, 200, "");
        assert!(m.is_finished());
    }

    #[test]
    fn retry_delays_grow_and_are_capped() {
        let t0 = Instant::now();
        let mut m = ClientMachine::new(ClientConfig::default(), t0);
        assert_eq!(m.retry_delay(1), Duration::ZERO);
        let second = m.retry_delay(2);
        assert!(second >= Duration::from_secs(5) && second < Duration::from_secs(15));
        assert!(m.retry_delay(100) <= Duration::from_secs(30));
    }

    fn events(m: &mut ClientMachine) -> Vec<ClientEvent> {
        std::iter::from_fn(|| m.poll_event()).collect()
    }

    #[test]
    fn a_failure_is_reported_with_what_failed() {
        let t0 = Instant::now();
        let (mut m, back) = opened(t0);
        answer(&mut m, t0, &back, 500, "oops");
        let events = events(&mut m);
        assert!(events.contains(&ClientEvent::Error("Request failed (HTTP 500)".into())));
        assert!(events.contains(&ClientEvent::Closed(CloseReason::Protocol(
            "Request failed (HTTP 500)".into()
        ))));
    }

    #[test]
    fn unknown_sid_counts_only_inside_an_error_page() {
        let t0 = Instant::now();
        // A 400 that is not the server's "Unknown SID" page is a plain failure.
        for body in ["Bad data", "Unknown SID"] {
            let (mut m, back) = opened(t0);
            answer(&mut m, t0, &back, 400, body);
            let events = events(&mut m);
            assert!(
                events.contains(&ClientEvent::Closed(CloseReason::Protocol(
                    "Request failed (HTTP 400)".into()
                ))),
                "{body}: {events:?}"
            );
        }
    }

    #[test]
    fn a_refused_creating_request_ends_the_session_with_the_servers_reason() {
        let t0 = Instant::now();
        for (status, body, reason) in [
            (
                403,
                codec::error_body("wrong token for alice"),
                "wrong token for alice",
            ),
            (
                401,
                "a token is required\nmore".to_string(),
                "a token is required",
            ),
        ] {
            let mut m = ClientMachine::new(ClientConfig::default(), t0);
            m.open(t0);
            let create = requests(&mut m).remove(0);
            answer(&mut m, t0, &create, status, &body);
            let events = events(&mut m);
            assert!(
                events.contains(&ClientEvent::Refused {
                    status,
                    reason: reason.into()
                }),
                "{events:?}"
            );
            assert!(m.is_closed());
            assert!(requests(&mut m).is_empty(), "not retried");
        }
    }

    #[test]
    fn a_transient_failure_of_the_creating_request_is_an_open_failure() {
        let t0 = Instant::now();
        let mut m = ClientMachine::new(ClientConfig::default(), t0);
        m.open(t0);
        let create = requests(&mut m).remove(0);
        m.handle_input(
            t0,
            ClientInput::Failed {
                request: create.id,
                error: "refused".into(),
            },
        );
        let events = events(&mut m);
        assert!(events.contains(&ClientEvent::OpenFailed("Request failed: refused".into())));
        assert!(m.is_closed());
    }

    #[test]
    fn the_ack_position_is_the_last_array_received() {
        let t0 = Instant::now();
        let (mut m, back) = opened(t0);
        assert!(!m.is_closed());
        assert_eq!(m.ack_position(), Some(0));
        assert_eq!(m.sid(), Some("s1"));
        let arrays = codec::chunk(&codec::array_batch([(1, &b"[1]"[..]), (2, &b"[2]"[..])]));
        m.handle_input(
            t0,
            ClientInput::Head {
                request: back.id,
                status: 200,
            },
        );
        m.handle_input(
            t0,
            ClientInput::Data {
                request: back.id,
                data: Bytes::from(arrays),
            },
        );
        assert_eq!(m.ack_position(), Some(2));
        let messages: Vec<_> = events(&mut m)
            .into_iter()
            .filter(|e| matches!(e, ClientEvent::Message(_)))
            .collect();
        assert_eq!(messages.len(), 2);
    }

    fn feed(m: &mut ClientMachine, now: Instant, r: &Request, status: u16, data: &str) {
        m.handle_input(
            now,
            ClientInput::Head {
                request: r.id,
                status,
            },
        );
        m.handle_input(
            now,
            ClientInput::Data {
                request: r.id,
                data: Bytes::copy_from_slice(data.as_bytes()),
            },
        );
    }

    fn fail(m: &mut ClientMachine, now: Instant, r: &Request) {
        m.handle_input(
            now,
            ClientInput::Failed {
                request: r.id,
                error: "reset".into(),
            },
        );
    }

    #[test]
    fn closing_cancels_the_back_channel_and_waits_two_seconds_for_terminate() {
        let t0 = Instant::now();
        let (mut m, back) = opened(t0);
        m.close(t0);
        let out: Vec<_> = std::iter::from_fn(|| m.poll_transmit()).collect();
        assert!(out.contains(&ClientTransmit::Cancel(back.id)));
        assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_secs(2)));
        m.handle_timeout(t0 + Duration::from_secs(2));
        assert!(m.is_finished());
    }

    #[test]
    fn a_response_may_reach_the_size_limit_but_not_pass_it() {
        let t0 = Instant::now();
        let body = codec::chunk(&codec::array_batch([(
            0,
            codec::open_array("s1", None).as_bytes(),
        )]));
        for (limit, opens) in [(body.len(), true), (body.len() - 1, false)] {
            let config = ClientConfig {
                max_response_bytes: limit,
                ..ClientConfig::default()
            };
            let mut m = ClientMachine::new(config, t0);
            m.open(t0);
            let create = requests(&mut m).remove(0);
            answer(&mut m, t0, &create, 200, &body);
            let events = events(&mut m);
            assert_eq!(
                events.contains(&ClientEvent::Open { sid: "s1".into() }),
                opens,
                "{limit}: {events:?}"
            );
            if !opens {
                assert!(events.contains(&ClientEvent::OpenFailed(
                    "Request failed: response too large".into()
                )));
            }
        }
    }

    #[test]
    fn back_channel_data_restarts_its_watchdog() {
        let t0 = Instant::now();
        let (mut m, back) = opened(t0);
        let t1 = t0 + Duration::from_secs(30);
        feed(&mut m, t1, &back, 200, &codec::chunk("[[1,[1]]]"));
        assert_eq!(m.poll_timeout(), Some(t1 + Duration::from_secs(45)));
    }

    #[test]
    fn a_back_channel_that_ends_after_data_is_reopened_at_once() {
        let t0 = Instant::now();
        let (mut m, back) = opened(t0);
        answer(&mut m, t0, &back, 200, &codec::chunk("[[1,[1]]]"));
        let out: Vec<_> = std::iter::from_fn(|| m.poll_transmit()).collect();
        let [ClientTransmit::Request(next)] = out.as_slice() else {
            panic!("one new back channel: {out:?}");
        };
        assert!(next.back);
        assert_eq!(param(next, "AID"), Some("1"));
        assert_eq!(param(next, "t"), Some("1"));
    }

    #[test]
    fn a_back_channel_cut_mid_chunk_is_retried() {
        let t0 = Instant::now();
        let (mut m, back) = opened(t0);
        answer(&mut m, t0, &back, 200, "10\n[[1,");
        assert!(requests(&mut m).is_empty());
        assert_eq!(m.poll_timeout(), Some(t0));
        m.handle_timeout(t0);
        let retry = requests(&mut m).remove(0);
        assert!(retry.back);
        assert_eq!(param(&retry, "t"), Some("2"));
    }

    #[test]
    fn a_back_channel_that_ends_without_data_is_retried() {
        let t0 = Instant::now();
        let (mut m, back) = opened(t0);
        answer(&mut m, t0, &back, 200, "");
        assert!(requests(&mut m).is_empty());
        m.handle_timeout(t0);
        assert_eq!(param(&requests(&mut m).remove(0), "t"), Some("2"));
    }

    #[test]
    fn garbled_back_channel_data_cancels_the_request() {
        let t0 = Instant::now();
        let (mut m, back) = opened(t0);
        feed(&mut m, t0, &back, 200, "x\n");
        let out: Vec<_> = std::iter::from_fn(|| m.poll_transmit()).collect();
        assert!(out.contains(&ClientTransmit::Cancel(back.id)));
        assert!(!m.is_closed(), "retried, not fatal");
    }

    #[test]
    fn forward_failures_are_retried_up_to_the_limit_with_growing_delays() {
        let t0 = Instant::now();
        let (mut m, _back) = opened(t0);
        m.send(t0, Bytes::from_static(b"1")).expect("send");
        let first = requests(&mut m).remove(0);
        fail(&mut m, t0, &first);
        m.handle_timeout(t0);
        let second = requests(&mut m).remove(0);
        fail(&mut m, t0, &second);
        let due = m.poll_timeout().expect("second retry");
        assert!(due >= t0 + Duration::from_secs(5), "{:?}", due - t0);
        assert!(due <= t0 + Duration::from_secs(15), "{:?}", due - t0);
        m.handle_timeout(due);
        let third = requests(&mut m).remove(0);
        assert_eq!(param(&third, "t"), Some("3"));
        assert_eq!(param(&third, "RID"), param(&first, "RID"));
        fail(&mut m, due, &third);
        let events = events(&mut m);
        assert!(events.contains(&ClientEvent::Error("Request failed: reset".into())));
        assert!(m.is_closed());
    }

    #[test]
    fn a_forward_request_refused_by_the_server_is_not_retried() {
        let t0 = Instant::now();
        let (mut m, _back) = opened(t0);
        m.send(t0, Bytes::from_static(b"1")).expect("send");
        let first = requests(&mut m).remove(0);
        answer(&mut m, t0, &first, 500, "no");
        assert!(m.is_closed());
    }

    #[test]
    fn back_channel_failures_are_retried_up_to_the_limit() {
        let t0 = Instant::now();
        let (mut m, mut back) = opened(t0);
        let mut now = t0;
        for t in ["2", "3", "4"] {
            fail(&mut m, now, &back);
            assert!(!m.is_closed());
            let due = m.poll_timeout().expect("a retry");
            // The first retry at once, the next ones after the retry delay at least.
            assert!(
                due >= now
                    + if t == "2" {
                        Duration::ZERO
                    } else {
                        Duration::from_secs(5)
                    }
            );
            now = due;
            m.handle_timeout(now);
            back = requests(&mut m).remove(0);
            assert_eq!(param(&back, "t"), Some(t));
        }
        fail(&mut m, now, &back);
        assert!(m.is_closed());
    }

    #[test]
    fn retry_jitter_spreads_over_twice_the_delay() {
        let t0 = Instant::now();
        let mut m = ClientMachine::new(ClientConfig::default(), t0);
        let delays: Vec<Duration> = (0..200).map(|_| m.retry_delay(2)).collect();
        assert!(delays.iter().all(|d| *d >= Duration::from_secs(5)));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(15)));
        assert!(delays.iter().any(|d| *d < Duration::from_secs(7)));
        assert!(delays.iter().any(|d| *d > Duration::from_secs(13)));
        let config = ClientConfig {
            retry_delay: Duration::ZERO,
            ..ClientConfig::default()
        };
        let mut m = ClientMachine::new(config, t0);
        assert_eq!(m.retry_delay(3), Duration::ZERO);
    }
}
