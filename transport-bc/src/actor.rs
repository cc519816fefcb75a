//! One task per session: it owns the core [`Session`] machine and the session's `RID`
//! ordering, and is the only place either is touched. HTTP requests and the application talk
//! to it through its command channel, so a hanging back channel holds neither a thread nor a
//! lock.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use browserver_core::{
    CloseReason, Event, Inserted, Item, PathId, PathMode, Payload, Reorder, Session as Core, State,
    Transmit,
};
use bytes::Bytes;
use http::{HeaderMap, Response};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::body::{DropGuard, ResponseBody};
use crate::codec::{self, ForwardBody, Map};
use crate::service::{Inner, error_response, ok_response};
use crate::session::{Command, Received, SendError, Status};

/// What the HTTP layer asks of a session.
pub(crate) enum HttpCommand {
    /// A forward-channel POST (or the session-creating one).
    Post {
        rid: u64,
        aid: Option<u64>,
        body: ForwardBody,
        creating: bool,
        headers: HeaderMap,
        reply: oneshot::Sender<Response<ResponseBody>>,
    },
    /// A back-channel GET. `html` is `Some(domain)` for the iframe transport.
    BackChannel {
        aid: Option<u64>,
        streaming: bool,
        html: Option<String>,
        headers: HeaderMap,
        reply: oneshot::Sender<Response<ResponseBody>>,
    },
    /// `TYPE=terminate`, ordered by its `RID`.
    Terminate { rid: u64, aid: Option<u64> },
    /// A newer session of the same client replaces this one (`OSID`/`OAID`).
    Ghost {
        oaid: Option<u64>,
        done: oneshot::Sender<()>,
    },
}

/// Work queued under a `RID`, run in `RID` order.
enum Pending {
    Forward(ForwardBody),
    Terminate,
}

impl Pending {
    fn size(&self) -> usize {
        match self {
            Pending::Forward(body) => body.size(),
            Pending::Terminate => 0,
        }
    }
}

struct Sink {
    tx: mpsc::UnboundedSender<Bytes>,
    html: bool,
    wrote_script: bool,
}

/// Message bytes stored in the core: a tag byte, then JSON.
const TAG_MAP: u8 = b'M';
const TAG_VALUE: u8 = b'V';

pub(crate) struct Actor {
    core: Core,
    id: String,
    host_prefix: Option<String>,
    rx: mpsc::UnboundedReceiver<Command>,
    tx: mpsc::WeakUnboundedSender<Command>,
    rids: Reorder<Pending>,
    /// Bytes of forward bodies held in `rids` behind a missing `RID`.
    held_bytes: usize,
    sinks: HashMap<PathId, Sink>,
    acks: HashMap<u64, oneshot::Sender<Result<(), SendError>>>,
    stop_waiters: Vec<oneshot::Sender<()>>,
    /// Messages for the application, each with its size in `unread`.
    messages: Option<mpsc::UnboundedSender<(Received, usize)>>,
    unread: browserver_core::Unread,
    status: watch::Sender<Status>,
    inner: Arc<Inner>,
}

pub(crate) struct ActorParts {
    pub(crate) id: String,
    pub(crate) first_rid: u64,
    pub(crate) host_prefix: Option<String>,
    pub(crate) rx: mpsc::UnboundedReceiver<Command>,
    pub(crate) tx: mpsc::WeakUnboundedSender<Command>,
    pub(crate) messages: mpsc::UnboundedSender<(Received, usize)>,
    pub(crate) unread: browserver_core::Unread,
    pub(crate) status: watch::Sender<Status>,
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

impl Actor {
    pub(crate) fn new(inner: Arc<Inner>, parts: ActorParts) -> Actor {
        let o = &inner.options;
        let config = browserver_core::Config {
            keepalive_interval: o.keep_alive_interval,
            session_timeout: o.session_timeout_interval,
            attach_timeout: o.attach_timeout,
            max_buffered_bytes: o.max_buffered_bytes,
            reorder_window: o.reorder_window,
            ..browserver_core::Config::default()
        };
        Actor {
            core: Core::new(browserver_core::Role::Server, config, now()),
            rids: Reorder::new(parts.first_rid, o.reorder_window),
            held_bytes: 0,
            id: parts.id,
            host_prefix: parts.host_prefix,
            rx: parts.rx,
            tx: parts.tx,
            sinks: HashMap::new(),
            acks: HashMap::new(),
            stop_waiters: Vec::new(),
            messages: Some(parts.messages),
            unread: parts.unread,
            status: parts.status,
            inner,
        }
    }

    pub(crate) async fn run(mut self) {
        loop {
            self.flush();
            if self.core.is_closed() {
                break;
            }
            let deadline = self.core.poll_timeout();
            tokio::select! {
                command = self.rx.recv() => match command {
                    Some(command) => {
                        self.handle(command);
                        // Take whatever else is queued before flushing: an application
                        // answering a batch of messages then gets one chunk, one write.
                        for _ in 0..64 {
                            match self.rx.try_recv() {
                                Ok(command) => self.handle(command),
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                _ = sleep_until(deadline) => self.core.handle_timeout(now()),
            }
        }
        if !self.core.is_closed() {
            let _ = self.core.close(now(), CloseReason::Closed(None));
            self.flush();
        }
        // Whatever raced with the close is answered as for an unknown session.
        self.rx.close();
        while let Ok(command) = self.rx.try_recv() {
            self.refuse(command);
        }
    }

    fn handle(&mut self, command: Command) {
        let now = now();
        match command {
            Command::Send { data, ack } => match self.core.send(now, data) {
                // An application that dropped its `Ack` is not told.
                Ok(_) if ack.is_closed() => {}
                Ok(seq) => {
                    self.acks.insert(seq, ack);
                }
                Err(browserver_core::Error::BufferFull {
                    buffered, limit, ..
                }) => {
                    let _ = ack.send(Err(SendError::BufferFull { buffered, limit }));
                }
                Err(_) => {
                    let _ = ack.send(Err(self.closed_error()));
                }
            },
            Command::Stop { written } => {
                if self.core.stop(now).is_ok() {
                    self.stop_waiters.push(written);
                }
            }
            Command::Close(reason) => {
                let _ = self.core.close(now, CloseReason::Closed(reason));
            }
            Command::PathGone(path) => {
                self.sinks.remove(&path);
                self.core.detach(now, path);
            }
            Command::Http(http) => self.http(now, *http),
        }
    }

    fn http(&mut self, now: std::time::Instant, command: HttpCommand) {
        match command {
            HttpCommand::Post {
                rid,
                aid,
                body,
                creating,
                headers,
                reply,
            } => {
                if let Some(aid) = aid {
                    let _ = self.core.handle_ack(now, aid);
                }
                if !self.order(now, rid, Pending::Forward(body)) {
                    let _ = reply.send(error_response(400, "Bad data", &headers));
                    return;
                }
                self.flush();
                let response = if self.core.is_closed() {
                    error_response(403, "Forbidden", &headers)
                } else if creating {
                    self.attach(now, false, None, headers, true)
                } else {
                    let status = self.forward_status();
                    ok_response(&headers, ResponseBody::full(codec::chunk(&status)))
                };
                let _ = reply.send(response);
            }
            HttpCommand::BackChannel {
                aid,
                streaming,
                html,
                headers,
                reply,
            } => {
                if let Some(aid) = aid {
                    let _ = self.core.handle_ack(now, aid);
                }
                let _ = reply.send(self.attach(now, streaming, html, headers, false));
            }
            HttpCommand::Terminate { rid, aid } => {
                if let Some(aid) = aid {
                    let _ = self.core.handle_ack(now, aid);
                }
                self.order(now, rid, Pending::Terminate);
            }
            HttpCommand::Ghost { oaid, done } => {
                if let Some(oaid) = oaid {
                    let _ = self.core.handle_ack(now, oaid);
                }
                let _ = self.core.close(now, CloseReason::Replaced);
                self.flush();
                let _ = done.send(());
            }
        }
    }

    /// Runs `pending` in `RID` order: now if its turn has come (or it is a retry of an earlier
    /// request), later if a lower `RID` is missing. False if the `RID` is absurdly far ahead,
    /// or holding it would exceed the held-bytes limit.
    fn order(&mut self, now: std::time::Instant, rid: u64, pending: Pending) -> bool {
        let size = pending.size();
        if rid > self.rids.next()
            && self.held_bytes.saturating_add(size) > self.inner.options.max_held_bytes
        {
            return false;
        }
        match self.rids.insert(rid, pending) {
            Inserted::Ready => {
                while let Some((pos, p)) = self.rids.pop_ready() {
                    if pos != rid {
                        self.held_bytes = self.held_bytes.saturating_sub(p.size());
                    }
                    self.process(now, p);
                }
                true
            }
            Inserted::Held => {
                self.held_bytes = self.held_bytes.saturating_add(size);
                true
            }
            Inserted::Duplicate(p) => {
                self.process(now, p);
                true
            }
            Inserted::BeyondWindow(_) => false,
        }
    }

    fn process(&mut self, now: std::time::Instant, pending: Pending) {
        match pending {
            Pending::Forward(ForwardBody::Empty) => {}
            Pending::Forward(ForwardBody::Maps { ofs, maps }) => {
                for (map, seq) in maps.iter().zip(ofs..) {
                    let data = encode_map(map);
                    let _ = self.core.handle_message(now, seq, data);
                }
            }
            Pending::Forward(ForwardBody::Json { ofs, messages }) => {
                for (value, seq) in messages.iter().zip(ofs..) {
                    let data = encode_message(TAG_VALUE, value.get());
                    let _ = self.core.handle_message(now, seq, data);
                }
            }
            Pending::Terminate => {
                let _ = self.core.handle_peer_close(now);
            }
        }
    }

    /// Attaches a back channel (or the creation response's one-shot one, `provisional`: it
    /// does not end the attach timeout) and returns the response that streams it.
    fn attach(
        &mut self,
        now: std::time::Instant,
        streaming: bool,
        html: Option<String>,
        headers: HeaderMap,
        provisional: bool,
    ) -> Response<ResponseBody> {
        let mode = PathMode {
            one_shot: !streaming,
            max_bytes: Some(self.inner.options.back_channel_max_bytes),
            provisional,
        };
        let Ok(path) = self.core.attach(now, mode) else {
            return error_response(400, "Unknown SID", &headers);
        };
        let tx = self.tx.clone();
        let guard = DropGuard::new(move || {
            if let Some(tx) = tx.upgrade() {
                let _ = tx.send(Command::PathGone(path));
            }
        });
        let (sink, body) = ResponseBody::channel(Some(guard));
        let response_headers = match &html {
            Some(domain) => {
                let _ = sink.send(Bytes::from(codec::html_prelude(Some(domain))));
                self.inner.html_headers.clone()
            }
            None => headers,
        };
        self.sinks.insert(
            path,
            Sink {
                tx: sink,
                html: html.is_some(),
                wrote_script: false,
            },
        );
        ok_response(&response_headers, body)
    }

    /// `[backChannelPresent, lastSentArrayId, outstandingBytes]` for a forward-POST answer.
    fn forward_status(&self) -> String {
        let present = u8::from(self.core.has_path());
        let last_sent = self.core.last_sent().map_or(-1, |s| s as i64);
        let mut outstanding = 0usize;
        let mut count = 0usize;
        for item in self.core.in_flight() {
            outstanding += self.item_json(item).len();
            count += 1;
        }
        if count > 0 {
            outstanding += count + 1; // brackets and commas of the JSON list
        }
        format!("[{present},{last_sent},{outstanding}]")
    }

    fn item_json<'a>(&self, item: &'a Item) -> Cow<'a, [u8]> {
        match &item.payload {
            Payload::Open => {
                Cow::Owned(codec::open_array(&self.id, self.host_prefix.as_deref()).into_bytes())
            }
            Payload::Message(data) => Cow::Borrowed(data),
            Payload::Keepalive => Cow::Borrowed(codec::NOOP_ARRAY.as_bytes()),
            Payload::Stop => Cow::Borrowed(codec::STOP_ARRAY.as_bytes()),
        }
    }

    /// The driving loop's second half: drain transmits and events until both are empty.
    fn flush(&mut self) {
        loop {
            let transmit = self.core.poll_transmit();
            let event = self.core.poll_event();
            if transmit.is_none() && event.is_none() {
                return;
            }
            if let Some(t) = transmit {
                self.write(t);
            }
            if let Some(e) = event {
                self.event(e);
            }
        }
    }

    fn write(&mut self, transmit: Transmit) {
        match transmit {
            Transmit::Batch { path, items, end } => {
                let text = codec::array_batch(
                    items
                        .iter()
                        .map(|i| (i.seq, self.item_json(i)))
                        .collect::<Vec<_>>()
                        .iter()
                        .map(|(seq, json)| (*seq, json.as_ref())),
                );
                let stop_written = items.iter().any(|i| i.payload == Payload::Stop);
                if let Some(sink) = self.sinks.get_mut(&path) {
                    let bytes = if sink.html {
                        let first = !sink.wrote_script;
                        sink.wrote_script = true;
                        let mut out = codec::html_script(&text, first);
                        if end {
                            out.push_str(codec::HTML_DONE);
                        }
                        out
                    } else {
                        codec::chunk(&text)
                    };
                    let _ = sink.tx.send(Bytes::from(bytes));
                }
                if end {
                    self.sinks.remove(&path);
                }
                if stop_written {
                    for waiter in self.stop_waiters.drain(..) {
                        let _ = waiter.send(());
                    }
                }
            }
            Transmit::End { path } => {
                if let Some(sink) = self.sinks.remove(&path)
                    && sink.html
                {
                    let _ = sink
                        .tx
                        .send(Bytes::from_static(codec::HTML_DONE.as_bytes()));
                }
            }
            Transmit::Ping { .. } => {}
        }
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::StateChanged { new, .. } => {
                self.status.send_modify(|s| s.state = new);
            }
            Event::Closed(reason) => {
                tracing::debug!(session = %self.id, %reason, "session closed");
                self.inner.forget(&self.id);
                self.messages = None;
                self.stop_waiters.clear();
                self.status.send_modify(|s| {
                    s.state = State::Closed;
                    s.close_reason = Some(reason);
                });
            }
            Event::Message { data, .. } => self.deliver(&data),
            Event::Acked { seq } => {
                if let Some(ack) = self.acks.remove(&seq) {
                    let _ = ack.send(Ok(()));
                }
            }
            Event::SendFailed { seq, reason } => {
                if let Some(ack) = self.acks.remove(&seq) {
                    let _ = ack.send(Err(SendError::Closed(reason)));
                }
            }
        }
    }

    fn deliver(&mut self, data: &[u8]) {
        // Nothing is delivered once the session closed (see the invalid-JSON case below).
        if self.messages.is_none() {
            return;
        }
        let size = data.len();
        if !self
            .unread
            .deliver(size, self.inner.options.max_unread_bytes)
        {
            // The application does not keep up: hold no more for it.
            self.messages = None;
            let _ = self.core.close(
                now(),
                CloseReason::Protocol("the application is not reading".into()),
            );
            return;
        }
        let Some(messages) = &self.messages else {
            return;
        };
        let (tag, json) = data.split_first().unwrap_or((&0, &[]));
        // (For a map, `json` is the map in encode_map's form.)
        let received = match *tag {
            TAG_MAP => {
                let map = decode_map(json).unwrap_or_default();
                let value = if let Some(text) = map.get("JSON") {
                    match serde_json::from_str::<Value>(text) {
                        Ok(v) => Some(v),
                        Err(_) => {
                            let _ = messages.send((
                                Received {
                                    value: None,
                                    map: Some(map),
                                },
                                size,
                            ));
                            let _ = self
                                .core
                                .close(now(), CloseReason::Protocol("Invalid JSON".into()));
                            // Maps the core released after this one are not delivered.
                            self.messages = None;
                            return;
                        }
                    }
                } else {
                    map.get("_S").map(|s| Value::String(s.clone()))
                };
                Received {
                    value,
                    map: Some(map),
                }
            }
            _ => Received {
                value: serde_json::from_slice(json).ok(),
                map: None,
            },
        };
        let _ = messages.send((received, size));
    }

    fn closed_error(&self) -> SendError {
        SendError::Closed(
            self.core
                .close_reason()
                .cloned()
                .unwrap_or(CloseReason::Closed(None)),
        )
    }

    fn refuse(&mut self, command: Command) {
        match command {
            Command::Send { ack, .. } => {
                let _ = ack.send(Err(self.closed_error()));
            }
            Command::Http(http) => match *http {
                // The application closed the session before its creating request was answered.
                HttpCommand::Post {
                    headers,
                    reply,
                    creating: true,
                    ..
                } => {
                    let _ = reply.send(error_response(403, "Forbidden", &headers));
                }
                HttpCommand::Post { headers, reply, .. }
                | HttpCommand::BackChannel { headers, reply, .. } => {
                    let _ = reply.send(error_response(400, "Unknown SID", &headers));
                }
                HttpCommand::Ghost { done, .. } => {
                    let _ = done.send(());
                }
                HttpCommand::Terminate { .. } => {}
            },
            _ => {}
        }
    }
}

fn encode_message(tag: u8, json: &str) -> Bytes {
    let mut out = Vec::with_capacity(json.len() + 1);
    out.push(tag);
    out.extend_from_slice(json.as_bytes());
    Bytes::from(out)
}

/// A form map as message bytes for the core: the tag, then each key and value as a 4-byte
/// big-endian length and its UTF-8 bytes. (Cheaper than JSON both ways; only this actor
/// reads it back, in [`decode_map`].)
fn encode_map(map: &Map) -> Bytes {
    let size: usize = map.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(size + 1);
    out.push(TAG_MAP);
    for (k, v) in map {
        for part in [k, v] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
    }
    Bytes::from(out)
}

/// The map [`encode_map`] wrote (without its tag); `None` if the bytes are not such a map.
fn decode_map(mut bytes: &[u8]) -> Option<Map> {
    fn part(bytes: &mut &[u8]) -> Option<String> {
        let (len, rest) = bytes.split_first_chunk::<4>()?;
        let len = u32::from_be_bytes(*len) as usize;
        let text = rest.get(..len)?;
        *bytes = &rest[len..];
        String::from_utf8(text.to_vec()).ok()
    }
    let mut map = Map::new();
    while !bytes.is_empty() {
        let k = part(&mut bytes)?;
        let v = part(&mut bytes)?;
        map.insert(k, v);
    }
    Some(map)
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_survive_the_trip_through_the_core() {
        let map: Map = [
            ("JSON".to_string(), "{\"a\":\"é 😀\"}".to_string()),
            (String::new(), String::new()),
            ("k".to_string(), "x".repeat(70_000)),
        ]
        .into();
        let bytes = encode_map(&map);
        assert_eq!(bytes[0], TAG_MAP);
        assert_eq!(decode_map(&bytes[1..]), Some(map));
        assert_eq!(decode_map(&[]), Some(Map::new()));
    }

    #[test]
    fn truncated_or_invalid_map_bytes_are_refused_without_panicking() {
        let map: Map = [("key".to_string(), "value".to_string())].into();
        let bytes = encode_map(&map);
        for end in 2..bytes.len() {
            assert_eq!(decode_map(&bytes[1..end]), None, "cut at {end}");
        }
        assert_eq!(decode_map(&[0, 0, 0, 1, 0xff, 0, 0, 0, 0]), None);
        assert_eq!(decode_map(&[0xff, 0xff, 0xff, 0xff]), None);
    }
}
