//! The server side of BrowserChannel for one session, as a sans-IO machine: HTTP request
//! parts in (already parsed by [`codec`]), response heads, chunks and ends out. It owns every
//! protocol decision — `RID` ordering and retries, `AID`/`OAID` acknowledgements, the
//! forward-channel status array, html framing, the invalid-JSON close, `stop` — on top of a
//! `browserver-core` [`Session`](Core). Time is an argument; nothing here reads a clock, so
//! the simulator drives it exactly as the runtime's driver does.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use browserver_core::{
    CloseReason, Event as CoreEvent, Inserted, Item, PathId, PathMode, Payload, Reorder,
    Session as Core, Transmit as CoreTransmit,
};
use browserver_runtime::{Event, Machine, Map, Message, Output, Outputs, SendError, send_bytes};
use bytes::Bytes;

use crate::codec::{self, ForwardBody};

/// Identifies one HTTP request waiting for its answer (the I/O side chooses it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(pub u64);

/// What the HTTP side feeds in, parsed.
#[derive(Debug)]
#[non_exhaustive]
pub enum Input {
    /// A forward-channel POST (`creating`: the one that created the session).
    Forward {
        /// The request to answer.
        request: RequestId,
        /// Its `RID`.
        rid: u64,
        /// Its `AID`, if any.
        aid: Option<u64>,
        /// Its maps or messages.
        body: ForwardBody,
        /// Whether it created the session (its answer is the first back channel).
        creating: bool,
    },
    /// A back-channel GET. `html` is `Some(domain)` for the iframe transport.
    BackChannel {
        /// The request to answer.
        request: RequestId,
        /// Its `AID`, if any.
        aid: Option<u64>,
        /// `CI=0`: the back channel may stream.
        streaming: bool,
        /// The html transport's domain.
        html: Option<String>,
    },
    /// `TYPE=terminate`, ordered by its `RID`.
    Terminate {
        /// Its `RID`.
        rid: u64,
        /// Its `AID`, if any.
        aid: Option<u64>,
    },
    /// A newer session of the same client replaces this one (`OSID`/`OAID`).
    Ghost {
        /// The `OAID` it sent: what this session's client had received.
        oaid: Option<u64>,
    },
    /// A streamed response's client went away.
    PathGone(PathId),
}

/// What the HTTP side is asked to write.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transmit {
    /// Answer `request` with a whole body: `status` 200 (a forward channel's status array)
    /// or an error page.
    Respond {
        /// The request.
        request: RequestId,
        /// Its status.
        status: u16,
        /// Its body.
        body: Bytes,
    },
    /// Answer `request` with a stream: `Chunk`s for `path` follow, then `End`.
    Stream {
        /// The request.
        request: RequestId,
        /// The path its chunks are for.
        path: PathId,
        /// Whether it is an html (iframe) response.
        html: bool,
    },
    /// Write `data` on `path`'s response.
    Chunk {
        /// The path.
        path: PathId,
        /// The bytes.
        data: Bytes,
    },
    /// Finish `path`'s response.
    End {
        /// The path.
        path: PathId,
    },
}

/// The machine's settings (from the endpoint's options).
#[derive(Debug, Clone)]
pub struct Config {
    /// The session id, announced in the first array.
    pub id: String,
    /// The host prefix offered in the first array, if any.
    pub host_prefix: Option<String>,
    /// The first forward `RID` (the creating request's).
    pub first_rid: u64,
    /// Keep-alive period on an idle back channel.
    pub keep_alive_interval: Duration,
    /// How long the session may be without a back channel.
    pub session_timeout: Duration,
    /// How long a new session may wait for its first back channel.
    pub attach_timeout: Duration,
    /// Unacknowledged outbound bytes retained.
    pub max_buffered_bytes: usize,
    /// How far ahead of a missing map (or request) others are held.
    pub reorder_window: u64,
    /// Bytes of forward requests held behind a missing `RID`.
    pub max_held_bytes: usize,
    /// A back channel ends after its payload passes this many bytes.
    pub back_channel_max_bytes: usize,
}

/// Work queued under a `RID`, run in `RID` order.
#[derive(Debug)]
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

#[derive(Debug)]
struct Path {
    html: bool,
    wrote_script: bool,
}

/// Message bytes stored in the core: a tag byte, then the map or the JSON.
const TAG_MAP: u8 = b'M';
const TAG_VALUE: u8 = b'V';

/// One BrowserChannel session, server side.
#[derive(Debug)]
pub struct ServerMachine {
    core: Core,
    config: Config,
    rids: Reorder<Pending>,
    /// Bytes of forward bodies held in `rids` behind a missing `RID`.
    held_bytes: usize,
    paths: HashMap<PathId, Path>,
    /// False once the session closed for invalid JSON: nothing more is delivered.
    delivering: bool,
    out: Outputs<Transmit>,
}

impl ServerMachine {
    /// A new session at `now`.
    pub fn new(config: Config, now: Instant) -> ServerMachine {
        let core_config = browserver_core::Config {
            keepalive_interval: config.keep_alive_interval,
            session_timeout: config.session_timeout,
            attach_timeout: config.attach_timeout,
            max_buffered_bytes: config.max_buffered_bytes,
            reorder_window: config.reorder_window,
            ..browserver_core::Config::default()
        };
        ServerMachine {
            core: Core::new(browserver_core::Role::Server, core_config, now),
            rids: Reorder::new(config.first_rid, config.reorder_window),
            held_bytes: 0,
            paths: HashMap::new(),
            delivering: true,
            out: Outputs::default(),
            config,
        }
    }

    fn respond(&mut self, request: RequestId, status: u16, message: &str) {
        self.out.transmit(Transmit::Respond {
            request,
            status,
            body: Bytes::from(codec::error_body(message)),
        });
    }

    fn ack(&mut self, now: Instant, aid: Option<u64>) {
        if let Some(aid) = aid {
            // An acknowledgement of arrays never sent is ignored (the core refuses it).
            let _ = self.core.handle_ack(now, aid);
        }
    }

    /// Runs `pending` in `RID` order: now if its turn has come (or it is a retry of an earlier
    /// request), later if a lower `RID` is missing. False if the `RID` is absurdly far ahead,
    /// or holding it would exceed the held-bytes limit.
    fn order(&mut self, now: Instant, rid: u64, pending: Pending) -> bool {
        let size = pending.size();
        if rid > self.rids.next()
            && self.held_bytes.saturating_add(size) > self.config.max_held_bytes
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

    fn process(&mut self, now: Instant, pending: Pending) {
        // The core ignores maps it already has (a retried request) and refuses what is
        // beyond its window (closing the session).
        match pending {
            Pending::Forward(ForwardBody::Empty) => {}
            Pending::Forward(ForwardBody::Maps { ofs, maps }) => {
                for (map, seq) in maps.iter().zip(ofs..) {
                    let _ = self.core.handle_message(now, seq, encode_map(map));
                }
            }
            Pending::Forward(ForwardBody::Json { ofs, messages }) => {
                for (value, seq) in messages.iter().zip(ofs..) {
                    let data = tagged(TAG_VALUE, value.get().as_bytes());
                    let _ = self.core.handle_message(now, seq, data);
                }
            }
            Pending::Terminate => {
                let _ = self.core.handle_peer_close(now);
            }
        }
    }

    /// Attaches a back channel (or the creation response's one-shot one, `provisional`: it
    /// does not end the attach timeout) and answers `request` with its stream.
    fn attach(
        &mut self,
        now: Instant,
        request: RequestId,
        streaming: bool,
        html: Option<String>,
        provisional: bool,
    ) {
        let mode = PathMode {
            one_shot: !streaming,
            max_bytes: Some(self.config.back_channel_max_bytes),
            provisional,
        };
        let Ok(path) = self.core.attach(now, mode) else {
            return self.respond(request, 400, "Unknown SID");
        };
        self.out.transmit(Transmit::Stream {
            request,
            path,
            html: html.is_some(),
        });
        if let Some(domain) = &html {
            self.out.transmit(Transmit::Chunk {
                path,
                data: Bytes::from(codec::html_prelude(Some(domain))),
            });
        }
        self.paths.insert(
            path,
            Path {
                html: html.is_some(),
                wrote_script: false,
            },
        );
    }

    /// `[backChannelPresent, lastSentArrayId, outstandingBytes]` for a forward-POST answer.
    fn forward_status(&self) -> String {
        let mut outstanding = 0usize;
        let mut count = 0usize;
        for item in self.core.in_flight() {
            outstanding = outstanding.saturating_add(self.item_json(item).len());
            count += 1;
        }
        if count > 0 {
            outstanding = outstanding.saturating_add(count + 1); // brackets and commas
        }
        codec::ForwardStatus {
            back_channel: self.core.has_path(),
            last_sent: self.core.last_sent(),
            outstanding: outstanding as u64,
        }
        .encode()
    }

    fn item_json<'a>(&self, item: &'a Item) -> Cow<'a, [u8]> {
        match &item.payload {
            Payload::Open => Cow::Owned(
                codec::open_array(&self.config.id, self.config.host_prefix.as_deref()).into_bytes(),
            ),
            Payload::Message(data) => Cow::Borrowed(data),
            Payload::Keepalive => Cow::Borrowed(codec::NOOP_ARRAY.as_bytes()),
            Payload::Stop => Cow::Borrowed(codec::STOP_ARRAY.as_bytes()),
        }
    }

    /// Moves everything the core has to say into this machine's queues.
    fn pump(&mut self) {
        while self.pump_one() {}
    }

    /// Moves one transmit and one event from the core into this machine's queues; false if
    /// the core had neither.
    fn pump_one(&mut self) -> bool {
        let transmit = self.core.poll_transmit();
        let event = self.core.poll_event();
        let any = transmit.is_some() || event.is_some();
        if let Some(t) = transmit {
            self.write(t);
        }
        if let Some(e) = event {
            self.event(e);
        }
        any
    }

    fn write(&mut self, transmit: CoreTransmit) {
        match transmit {
            CoreTransmit::Batch { path, items, end } => {
                let text = codec::array_batch(
                    items
                        .iter()
                        .map(|i| (i.seq, self.item_json(i)))
                        .collect::<Vec<_>>()
                        .iter()
                        .map(|(seq, json)| (*seq, json.as_ref())),
                );
                let stop_written = items.iter().any(|i| i.payload == Payload::Stop);
                if let Some(p) = self.paths.get_mut(&path) {
                    let data = if p.html {
                        let first = !p.wrote_script;
                        p.wrote_script = true;
                        let mut out = codec::html_script(&text, first);
                        if end {
                            out.push_str(codec::HTML_DONE);
                        }
                        out
                    } else {
                        codec::chunk(&text)
                    };
                    self.out.transmit(Transmit::Chunk {
                        path,
                        data: Bytes::from(data),
                    });
                }
                if end && self.paths.remove(&path).is_some() {
                    self.out.transmit(Transmit::End { path });
                }
                if stop_written {
                    self.out.event(Event::StopWritten);
                }
            }
            CoreTransmit::End { path } => {
                if let Some(p) = self.paths.remove(&path) {
                    if p.html {
                        self.out.transmit(Transmit::Chunk {
                            path,
                            data: Bytes::from_static(codec::HTML_DONE.as_bytes()),
                        });
                    }
                    self.out.transmit(Transmit::End { path });
                }
            }
            // BrowserChannel's keep-alives are `["noop"]` arrays in the sequence.
            _ => {}
        }
    }

    fn event(&mut self, event: CoreEvent) {
        if let Some(data) = self.out.core_event(event)
            && let Some(m) = self.message(&data)
        {
            self.out.event(Event::Message(m));
        }
    }

    /// The application's message for the core's bytes; closes the session on a map whose
    /// `JSON` is not JSON (after delivering that map, as node-browserchannel does).
    fn message(&mut self, data: &[u8]) -> Option<Message> {
        if !self.delivering {
            return None;
        }
        let (tag, body) = data.split_first()?;
        if *tag == TAG_VALUE {
            return Some(Message::Text(String::from_utf8_lossy(body).into_owned()));
        }
        let map = decode_map(body)?;
        if let Some(json) = map.get("JSON") {
            if is_json(json) {
                return Some(Message::Text(json.clone()));
            }
            self.delivering = false;
            let now = self.core.now();
            let _ = self
                .core
                .close(now, CloseReason::Protocol("Invalid JSON".into()));
            return Some(Message::Map(map));
        }
        if let Some(text) = map.get("_S") {
            return serde_json::to_string(text).ok().map(Message::Text);
        }
        Some(Message::Map(map))
    }
}

/// Whether `text` is one JSON value (validated, not converted: numbers keep their text).
fn is_json(text: &str) -> bool {
    serde_json::from_str::<&serde_json::value::RawValue>(text).is_ok()
}

impl Machine for ServerMachine {
    type Input = Input;
    type Transmit = Transmit;

    fn core(&self) -> &Core {
        &self.core
    }

    fn core_mut(&mut self) -> &mut Core {
        &mut self.core
    }

    fn handle_input(&mut self, now: Instant, input: Input) {
        match input {
            Input::Forward {
                request,
                rid,
                aid,
                body,
                creating,
            } => {
                self.ack(now, aid);
                if !self.order(now, rid, Pending::Forward(body)) {
                    return self.respond(request, 400, "Bad data");
                }
                self.pump();
                if self.core.is_closed() {
                    self.respond(request, 403, "Forbidden");
                } else if creating {
                    self.attach(now, request, false, None, true);
                } else {
                    let status = self.forward_status();
                    self.out.transmit(Transmit::Respond {
                        request,
                        status: 200,
                        body: Bytes::from(codec::chunk(&status)),
                    });
                }
            }
            Input::BackChannel {
                request,
                aid,
                streaming,
                html,
            } => {
                self.ack(now, aid);
                self.attach(now, request, streaming, html, false);
            }
            Input::Terminate { rid, aid } => {
                self.ack(now, aid);
                // A terminate beyond the window is ignored: the session times out instead.
                let _ = self.order(now, rid, Pending::Terminate);
            }
            Input::Ghost { oaid } => {
                self.ack(now, oaid);
                let _ = self.core.close(now, CloseReason::Replaced);
            }
            Input::PathGone(path) => {
                self.paths.remove(&path);
                self.core.detach(now, path);
            }
        }
    }

    fn send(&mut self, now: Instant, message: Message) -> Result<u64, SendError> {
        let json = match &message {
            Message::Text(text) if is_json(text) => codec::ascii_json(text),
            Message::Text(_) => {
                return Err(SendError::Invalid(
                    "BrowserChannel carries JSON: this text is not JSON".into(),
                ));
            }
            Message::Binary(_) => {
                return Err(SendError::Unsupported(
                    "BrowserChannel carries JSON only: binary messages cannot be sent",
                ));
            }
            _ => {
                return Err(SendError::Unsupported(
                    "a BrowserChannel server sends JSON values, not maps",
                ));
            }
        };
        send_bytes(&mut self.core, now, Bytes::from(json.into_owned()))
    }

    fn poll_output(&mut self) -> Output<Transmit> {
        loop {
            if let Some(output) = self.out.pop() {
                return output;
            }
            if !self.pump_one() {
                return Output::Timeout(self.core.poll_timeout());
            }
        }
    }
}

fn tagged(tag: u8, body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(tag);
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// A form map as message bytes for the core: the tag, then each key and value as a 4-byte
/// big-endian length and its UTF-8 bytes. (Cheaper than JSON both ways; only this machine
/// reads it back, in [`decode_map`].)
fn encode_map(map: &Map) -> Bytes {
    let size: usize = map.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(size + 1);
    out.push(TAG_MAP);
    for (k, v) in map {
        for part in [k, v] {
            let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
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

    fn config(max_held_bytes: usize) -> Config {
        Config {
            id: "s1".into(),
            host_prefix: None,
            first_rid: 10,
            keep_alive_interval: Duration::from_secs(20),
            session_timeout: Duration::from_secs(30),
            attach_timeout: Duration::from_secs(10),
            max_buffered_bytes: 1 << 20,
            reorder_window: 100,
            max_held_bytes,
            back_channel_max_bytes: 10 * 1024,
        }
    }

    fn outputs(m: &mut ServerMachine) -> (Vec<Transmit>, Vec<Event>) {
        let (mut transmits, mut events) = (Vec::new(), Vec::new());
        loop {
            match m.poll_output() {
                Output::Transmit(t) => transmits.push(t),
                Output::Event(e) => events.push(e),
                Output::Timeout(_) => return (transmits, events),
            }
        }
    }

    fn messages(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Message(Message::Text(t)) => Some(t.clone()),
                _ => None,
            })
            .collect()
    }

    /// A forward body of `count` JSON messages from id `ofs`, each `len` bytes.
    fn body(ofs: u64, count: usize, len: usize) -> ForwardBody {
        let text = format!("\"{}\"", "x".repeat(len - 2));
        let messages = (0..count)
            .map(|_| serde_json::value::RawValue::from_string(text.clone()).expect("json"))
            .collect();
        ForwardBody::Json { ofs, messages }
    }

    fn forward(m: &mut ServerMachine, now: Instant, rid: u64, body: ForwardBody) -> u16 {
        m.handle_input(
            now,
            Input::Forward {
                request: RequestId(rid),
                rid,
                aid: None,
                body,
                creating: false,
            },
        );
        let (transmits, _) = outputs(m);
        transmits
            .iter()
            .find_map(|t| match t {
                Transmit::Respond {
                    request, status, ..
                } if *request == RequestId(rid) => Some(*status),
                _ => None,
            })
            .expect("an answer")
    }

    fn created(max_held_bytes: usize, now: Instant) -> ServerMachine {
        let mut m = ServerMachine::new(config(max_held_bytes), now);
        m.handle_input(
            now,
            Input::Forward {
                request: RequestId(0),
                rid: 10,
                aid: None,
                body: ForwardBody::Empty,
                creating: true,
            },
        );
        let _ = outputs(&mut m);
        m
    }

    #[test]
    fn forward_requests_are_delivered_in_rid_order() {
        let t0 = Instant::now();
        let mut m = created(1 << 20, t0);
        assert_eq!(forward(&mut m, t0, 12, body(1, 1, 3)), 200);
        let (_, events) = outputs(&mut m);
        assert!(messages(&events).is_empty(), "held behind RID 11");
        m.handle_input(
            t0,
            Input::Forward {
                request: RequestId(11),
                rid: 11,
                aid: None,
                body: body(0, 1, 4),
                creating: false,
            },
        );
        let (_, events) = outputs(&mut m);
        assert_eq!(messages(&events), ["\"xx\"", "\"x\""]);
    }

    #[test]
    fn requests_held_behind_a_missing_rid_are_bounded_by_bytes() {
        let t0 = Instant::now();
        let mut m = created(10, t0);
        // Exactly the limit may wait; one byte more may not.
        assert_eq!(forward(&mut m, t0, 12, body(1, 1, 10)), 200);
        assert_eq!(forward(&mut m, t0, 13, body(2, 1, 3)), 400);
        // The request whose turn it is releases the held one, and the held bytes are free
        // again; a request whose turn it is is never held, whatever its size.
        assert_eq!(forward(&mut m, t0, 11, body(0, 1, 3)), 200);
        assert_eq!(forward(&mut m, t0, 14, body(3, 1, 10)), 200);
        assert_eq!(forward(&mut m, t0, 13, body(2, 1, 50)), 200);
        let (_, events) = outputs(&mut m);
        assert!(events.is_empty());
        assert!(!m.is_closed());
    }

    #[test]
    fn a_retried_request_is_answered_again_without_delivering_twice() {
        let t0 = Instant::now();
        let mut m = created(1 << 20, t0);
        assert_eq!(forward(&mut m, t0, 11, body(0, 1, 3)), 200);
        assert_eq!(forward(&mut m, t0, 11, body(0, 1, 3)), 200);
        assert!(!m.is_closed());
    }

    #[test]
    fn only_json_text_can_be_sent() {
        let t0 = Instant::now();
        let mut m = created(1 << 20, t0);
        assert!(matches!(
            m.send(t0, Message::Text("not json".into())),
            Err(SendError::Invalid(_))
        ));
        assert!(matches!(
            m.send(t0, Message::Binary(Bytes::from_static(b"1"))),
            Err(SendError::Unsupported(why)) if why.contains("binary")
        ));
        assert!(matches!(
            m.send(t0, Message::Map(Map::new())),
            Err(SendError::Unsupported(_))
        ));
        assert!(m.send(t0, Message::Text("1.10".into())).is_ok());
    }

    #[test]
    fn stop_written_is_reported_only_once_the_stop_array_is_written() {
        let t0 = Instant::now();
        let mut m = created(1 << 20, t0);
        m.handle_input(
            t0,
            Input::BackChannel {
                request: RequestId(1),
                aid: Some(0),
                streaming: true,
                html: None,
            },
        );
        m.send(t0, Message::Text("[1]".into())).expect("send");
        let (transmits, events) = outputs(&mut m);
        assert!(
            transmits.iter().any(
                |t| matches!(t, Transmit::Chunk { data, .. } if data.ends_with(b"[[1,[1]]]\n"))
            )
        );
        assert!(!events.contains(&Event::StopWritten));
        assert!(m.stop(t0));
        let (_, events) = outputs(&mut m);
        assert!(events.contains(&Event::StopWritten));
    }
}
