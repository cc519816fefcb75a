//! Streams over a session: many concurrent byte streams (proxied HTTP requests and
//! responses) multiplexed on one session, with credit-based flow control in h2's model.
//!
//! A stream carries a *head* each way (an opaque byte string: the HTTP head, encoded by
//! whoever uses the streams), then data, then an end — or a reset from either side. Both
//! directions are flow-controlled twice: per stream and per connection (the whole session).
//! A sender may only send data while it holds credit for both; the receiver grants credit
//! back as its application *consumes* data ([`Streams::consumed`]), not as it arrives. So
//! the bytes a receiver holds for a stream never exceed that stream's window, whatever the
//! body size, and a slow reader stalls its writer instead of growing a buffer.
//!
//! The machine is sans-IO: frames in through [`Streams::handle_frame`], frames out through
//! [`Streams::poll_frame`] (which interleaves streams fairly, at most
//! [`StreamConfig::max_frame_data`] bytes of one stream at a time), events through
//! [`Streams::poll_event`], time as an argument ([`Streams::handle_timeout`]). Frames ride
//! the session's ordinary, reliable, in-order delivery: a credit frame lost on a dead
//! connection is retransmitted with everything else when the session resumes. When the
//! session ends, [`Streams::close`] resets every stream.
//!
//! ```
//! use std::time::Instant;
//! use bytes::Bytes;
//! use browserver_core::stream::{Side, StreamConfig, StreamEvent, Streams};
//!
//! let now = Instant::now();
//! let mut proxy = Streams::new(Side::Proxy, StreamConfig::default());
//! let mut client = Streams::new(Side::Client, StreamConfig::default());
//! let id = proxy.open(now, Bytes::from_static(b"GET / HTTP/1.1"), true).expect("ok");
//! while let Some(frame) = proxy.poll_frame() {
//!     client.handle_frame(now, frame).expect("ok");
//! }
//! assert!(matches!(client.poll_event(), Some(StreamEvent::Opened { end: true, .. })));
//! client.respond(id, Bytes::from_static(b"200"), false).expect("ok");
//! client.write(id, Bytes::from_static(b"hello")).expect("ok");
//! client.finish(id).expect("ok");
//! while let Some(frame) = client.poll_frame() {
//!     proxy.handle_frame(now, frame).expect("ok");
//! }
//! assert!(matches!(proxy.poll_event(), Some(StreamEvent::Head { .. })));
//! assert_eq!(proxy.poll_event(), Some(StreamEvent::Data { id, data: Bytes::from_static(b"hello") }));
//! assert_eq!(proxy.poll_event(), Some(StreamEvent::End { id }));
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// A stream's number. The proxy opens even numbers, the client odd ones; 0 names the
/// connection in a [`Frame::Credit`].
pub type StreamId = u32;

/// Which end of the session this machine is (it decides the parity of the stream ids it
/// opens).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The proxy: opens even ids (a visitor's request to the client).
    Proxy,
    /// The client: opens odd ids (a request of its own, out through the proxy).
    Client,
}

/// Why a stream was reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResetCode {
    /// The side that reset it no longer wants it (a visitor went away, a handler gave up).
    Cancel,
    /// Refused before any processing: too many streams, or a malformed head.
    Refused,
    /// The peer broke flow control or framing on this stream.
    Protocol,
    /// The response head did not come in time.
    TimedOut,
    /// The session carrying the stream ended.
    SessionClosed,
    /// The stream's body exceeded a size limit.
    TooLarge,
    /// A code this version does not know.
    Other(u8),
}

impl ResetCode {
    fn to_byte(self) -> u8 {
        match self {
            ResetCode::Cancel => 1,
            ResetCode::Refused => 2,
            ResetCode::Protocol => 3,
            ResetCode::TimedOut => 4,
            ResetCode::SessionClosed => 5,
            ResetCode::TooLarge => 6,
            ResetCode::Other(b) => b,
        }
    }

    fn from_byte(b: u8) -> ResetCode {
        match b {
            1 => ResetCode::Cancel,
            2 => ResetCode::Refused,
            3 => ResetCode::Protocol,
            4 => ResetCode::TimedOut,
            5 => ResetCode::SessionClosed,
            6 => ResetCode::TooLarge,
            b => ResetCode::Other(b),
        }
    }
}

/// One stream frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A head: opens a stream (from its opener) or answers it (from the other side).
    /// `end`: no data follows.
    Head {
        /// The stream.
        id: StreamId,
        /// The encoded head (opaque here).
        head: Bytes,
        /// No data follows in this direction.
        end: bool,
    },
    /// Body bytes; `end` marks the last frame of this direction.
    Data {
        /// The stream.
        id: StreamId,
        /// The bytes (may be empty when `end`).
        data: Bytes,
        /// The last frame of this direction.
        end: bool,
    },
    /// The stream is abandoned in both directions.
    Reset {
        /// The stream.
        id: StreamId,
        /// Why.
        code: ResetCode,
    },
    /// The receiver consumed `bytes` of stream `id` (0: of the connection); the sender may
    /// send that much more.
    Credit {
        /// The stream, or 0 for the connection.
        id: StreamId,
        /// Bytes granted.
        bytes: u32,
    },
}

/// The first byte of every encoded frame is its type, below 0x20, so a stream frame is
/// never mistaken for a JSON or text message on the same channel (those start with `{`, `"`
/// or a letter).
const T_HEAD: u8 = 0x01;
const T_DATA: u8 = 0x02;
const T_RESET: u8 = 0x03;
const T_CREDIT: u8 = 0x04;
const FLAG_END: u8 = 0x01;
/// Type, flags, stream id.
const HEADER_LEN: usize = 6;

/// A frame that cannot be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than a frame needs.
    #[error("truncated stream frame")]
    Truncated,
    /// An unknown frame type.
    #[error("unknown stream frame type {0:#04x}")]
    UnknownType(u8),
    /// A field out of range (credit of 0 or over 2³¹−1, id 0 on a stream frame).
    #[error("invalid stream frame: {0}")]
    Invalid(&'static str),
}

impl Frame {
    /// Whether `bytes` looks like an encoded stream frame (its first byte is a frame type).
    pub fn is_frame(bytes: &[u8]) -> bool {
        matches!(bytes.first(), Some(T_HEAD..=T_CREDIT))
    }

    /// The frame's binary form: type (1 byte), flags (1), stream id (4, big-endian), payload.
    pub fn encode(&self) -> Bytes {
        let (ty, flags, id, payload_len) = match self {
            Frame::Head { id, head, end } => (T_HEAD, end_flag(*end), *id, head.len()),
            Frame::Data { id, data, end } => (T_DATA, end_flag(*end), *id, data.len()),
            Frame::Reset { id, .. } => (T_RESET, 0, *id, 1),
            Frame::Credit { id, .. } => (T_CREDIT, 0, *id, 4),
        };
        let mut out = BytesMut::with_capacity(HEADER_LEN + payload_len);
        out.put_u8(ty);
        out.put_u8(flags);
        out.put_u32(id);
        match self {
            Frame::Head { head, .. } => out.put_slice(head),
            Frame::Data { data, .. } => out.put_slice(data),
            Frame::Reset { code, .. } => out.put_u8(code.to_byte()),
            Frame::Credit { bytes, .. } => out.put_u32(*bytes),
        }
        out.freeze()
    }

    /// Decodes one frame (the payload is a slice of `bytes`, not a copy).
    pub fn decode(bytes: &Bytes) -> Result<Frame, FrameError> {
        if bytes.len() < HEADER_LEN {
            return Err(FrameError::Truncated);
        }
        let mut header = &bytes[..HEADER_LEN];
        let ty = header.get_u8();
        let end = header.get_u8() & FLAG_END != 0;
        let id = header.get_u32();
        let mut payload = bytes.slice(HEADER_LEN..);
        let frame = match ty {
            T_HEAD => Frame::Head {
                id,
                head: payload,
                end,
            },
            T_DATA => Frame::Data {
                id,
                data: payload,
                end,
            },
            T_RESET => {
                if payload.is_empty() {
                    return Err(FrameError::Truncated);
                }
                Frame::Reset {
                    id,
                    code: ResetCode::from_byte(payload.get_u8()),
                }
            }
            T_CREDIT => {
                if payload.len() < 4 {
                    return Err(FrameError::Truncated);
                }
                let credit = payload.get_u32();
                if credit == 0 || credit > MAX_WINDOW {
                    return Err(FrameError::Invalid("credit out of range"));
                }
                Frame::Credit { id, bytes: credit }
            }
            other => return Err(FrameError::UnknownType(other)),
        };
        if id == 0 && !matches!(frame, Frame::Credit { .. }) {
            return Err(FrameError::Invalid("stream id 0"));
        }
        Ok(frame)
    }

    /// The stream the frame belongs to (0: the connection).
    pub fn id(&self) -> StreamId {
        match self {
            Frame::Head { id, .. }
            | Frame::Data { id, .. }
            | Frame::Reset { id, .. }
            | Frame::Credit { id, .. } => *id,
        }
    }
}

fn end_flag(end: bool) -> u8 {
    if end { FLAG_END } else { 0 }
}

/// The largest window (h2's limit, 2³¹−1).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

/// Flow-control and limit settings. Both sides must use the same windows (each assumes the
/// other's receive windows are its own defaults; nothing negotiates them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamConfig {
    /// Bytes of one stream a receiver accepts before it grants more. 512 KiB.
    pub stream_window: u32,
    /// Bytes over all streams a receiver accepts before it grants more. 2 MiB.
    pub connection_window: u32,
    /// Largest data frame: a stream gives way to the next after this many bytes. 32 KiB.
    pub max_frame_data: usize,
    /// Streams the peer may have open at once; more are refused. 128.
    pub max_peer_streams: usize,
    /// Streams this side may have open at once; `open` refuses more. 128.
    pub max_local_streams: usize,
    /// Largest head accepted. 64 KiB.
    pub max_head_bytes: usize,
    /// Bytes `write` queues per stream before it refuses (the writer waits for
    /// [`StreamEvent::Writable`]). 256 KiB.
    pub send_buffer: usize,
    /// Bytes `write` queues over all streams before it refuses: what one session's senders
    /// hold at most, however many streams. 2 MiB.
    pub connection_send_buffer: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            stream_window: 512 << 10,
            connection_window: 2 << 20,
            max_frame_data: 32 << 10,
            max_peer_streams: 128,
            max_local_streams: 128,
            max_head_bytes: 64 << 10,
            send_buffer: 256 << 10,
            connection_send_buffer: 2 << 20,
        }
    }
}

/// What the application learns, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// The peer opened a stream with `head`; `end`: it sends no body.
    Opened {
        /// The new stream.
        id: StreamId,
        /// Its head.
        head: Bytes,
        /// No body follows.
        end: bool,
    },
    /// The peer answered a stream this side opened.
    Head {
        /// The stream.
        id: StreamId,
        /// The answer's head.
        head: Bytes,
        /// No body follows.
        end: bool,
    },
    /// Body bytes; hand them on, then report them with [`Streams::consumed`].
    Data {
        /// The stream.
        id: StreamId,
        /// The bytes.
        data: Bytes,
    },
    /// The peer's direction of the stream ended normally.
    End {
        /// The stream.
        id: StreamId,
    },
    /// The stream is over, abandoned: by the peer, by a timeout, or because the session
    /// ended. Nothing more comes for it and writes to it fail.
    Reset {
        /// The stream.
        id: StreamId,
        /// Why.
        code: ResetCode,
    },
    /// The stream's send buffer has room again after a `write` was refused.
    Writable {
        /// The stream.
        id: StreamId,
    },
}

/// Why a local operation on a stream failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// No such stream (never opened, or already over).
    #[error("no such stream")]
    Unknown,
    /// This side already ended its direction.
    #[error("the stream's direction is already finished")]
    Finished,
    /// The send buffer is full: wait for [`StreamEvent::Writable`].
    #[error("the stream's send buffer is full")]
    Full,
    /// Too many streams open.
    #[error("too many streams open")]
    TooManyStreams,
    /// The head was already sent.
    #[error("the head was already sent")]
    HeadSent,
    /// The session is over.
    #[error("the session is closed")]
    Closed,
}

/// The peer broke the stream protocol; the session should be closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StreamProtocolError {
    /// More data than the window allowed.
    #[error("flow-control window exceeded on stream {0}")]
    FlowControl(StreamId),
    /// Credit that would take a window past 2³¹−1.
    #[error("window overflow on stream {0}")]
    WindowOverflow(StreamId),
    /// A head or data out of place (e.g. data before the head, after the end, or an id
    /// of the wrong parity or reused).
    #[error("unexpected frame on stream {0}: {1}")]
    Unexpected(StreamId, &'static str),
}

#[derive(Debug, Default)]
struct Stream {
    /// Whether this side opened it.
    local: bool,
    // --- sending half ---
    /// This side's head went out (or is queued in `control`).
    head_sent: bool,
    /// Credit the peer granted for this stream.
    send_window: i64,
    queue: VecDeque<Bytes>,
    queued: usize,
    /// `finish` was called: end after the queue.
    finishing: bool,
    /// The end went out.
    send_done: bool,
    /// A `write` was refused; report `Writable` once there is room.
    blocked: bool,
    // --- receiving half ---
    /// The peer's head arrived (for local streams: the answer).
    head_received: bool,
    /// Bytes the peer may still send before more credit.
    recv_left: u32,
    /// Consumed bytes not yet granted back.
    to_grant: u32,
    /// The peer's end arrived.
    recv_done: bool,
    /// When the answer's head is due (local streams).
    head_due: Option<Instant>,
}

impl Stream {
    fn over(&self) -> bool {
        self.send_done && self.recv_done
    }
}

/// The streams of one session (see the [module docs](self)).
#[derive(Debug)]
pub struct Streams {
    side: Side,
    config: StreamConfig,
    streams: BTreeMap<StreamId, Stream>,
    next_local: Option<StreamId>,
    /// Highest id the peer opened.
    last_peer: StreamId,
    peer_open: usize,
    local_open: usize,
    /// Credit the peer granted for the connection.
    conn_send: i64,
    /// Connection bytes the peer may still send.
    conn_recv_left: u32,
    /// Connection bytes consumed and not yet granted back.
    conn_to_grant: u32,
    /// Heads, resets and credits, sent before data.
    control: VecDeque<Frame>,
    /// Bytes queued by `write` over all streams.
    queued: usize,
    /// Some stream's `write` was refused for the connection's send buffer.
    blocked: bool,
    /// The stream after which the fair scan for data resumes.
    cursor: StreamId,
    events: VecDeque<StreamEvent>,
    head_timeout: Option<Duration>,
    closed: bool,
}

impl Streams {
    /// A machine for `side` with `config`.
    pub fn new(side: Side, config: StreamConfig) -> Streams {
        Streams {
            side,
            next_local: Some(match side {
                Side::Proxy => 2,
                Side::Client => 1,
            }),
            last_peer: 0,
            peer_open: 0,
            local_open: 0,
            conn_send: i64::from(config.connection_window),
            conn_recv_left: config.connection_window,
            conn_to_grant: 0,
            streams: BTreeMap::new(),
            control: VecDeque::new(),
            queued: 0,
            blocked: false,
            cursor: 0,
            events: VecDeque::new(),
            head_timeout: None,
            closed: false,
            config,
        }
    }

    /// Streams this side opens fail with [`ResetCode::TimedOut`] when the peer's head does
    /// not arrive within `timeout` of `open` (a proxied request's answer deadline).
    pub fn set_head_timeout(&mut self, timeout: Option<Duration>) {
        self.head_timeout = timeout;
    }

    /// The configuration.
    pub fn config(&self) -> &StreamConfig {
        &self.config
    }

    /// Streams open (either side's).
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// Whether no stream is open.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Opens a stream with `head`; `end`: no body follows.
    pub fn open(&mut self, now: Instant, head: Bytes, end: bool) -> Result<StreamId, StreamError> {
        if self.closed {
            return Err(StreamError::Closed);
        }
        if self.local_open >= self.config.max_local_streams {
            return Err(StreamError::TooManyStreams);
        }
        let id = self.next_local.ok_or(StreamError::TooManyStreams)?;
        self.next_local = id.checked_add(2).filter(|n| *n <= MAX_WINDOW);
        self.local_open += 1;
        let stream = Stream {
            local: true,
            head_sent: true,
            send_window: i64::from(self.config.stream_window),
            finishing: end,
            send_done: end,
            recv_left: self.config.stream_window,
            head_due: self.head_timeout.and_then(|t| now.checked_add(t)),
            ..Stream::default()
        };
        self.streams.insert(id, stream);
        self.control.push_back(Frame::Head { id, head, end });
        Ok(id)
    }

    /// Answers stream `id` (one the peer opened) with `head`; `end`: no body follows.
    pub fn respond(&mut self, id: StreamId, head: Bytes, end: bool) -> Result<(), StreamError> {
        let s = self.streams.get_mut(&id).ok_or(StreamError::Unknown)?;
        if s.head_sent {
            return Err(StreamError::HeadSent);
        }
        s.head_sent = true;
        s.finishing = end;
        s.send_done = end;
        self.control.push_back(Frame::Head { id, head, end });
        self.forget_if_over(id);
        Ok(())
    }

    /// Bytes `write` would queue on stream `id` now (0: wait for `Writable`).
    pub fn capacity(&self, id: StreamId) -> usize {
        let connection = self
            .config
            .connection_send_buffer
            .saturating_sub(self.queued);
        self.streams
            .get(&id)
            .filter(|s| !s.finishing)
            .map_or(0, |s| {
                self.config
                    .send_buffer
                    .saturating_sub(s.queued)
                    .min(connection)
            })
    }

    /// Queues body bytes on stream `id`. Accepted while the stream's queue is below
    /// [`StreamConfig::send_buffer`] and all streams' below
    /// [`StreamConfig::connection_send_buffer`] (a chunk may overshoot them once); otherwise
    /// [`StreamError::Full`] and a [`StreamEvent::Writable`] follows when there is room.
    pub fn write(&mut self, id: StreamId, data: Bytes) -> Result<(), StreamError> {
        let buffer = self.config.send_buffer;
        let connection_full = self.queued >= self.config.connection_send_buffer;
        let s = self.streams.get_mut(&id).ok_or(StreamError::Unknown)?;
        if s.finishing {
            return Err(StreamError::Finished);
        }
        if !s.head_sent {
            return Err(StreamError::Unknown);
        }
        if s.queued >= buffer || connection_full {
            s.blocked = true;
            self.blocked |= connection_full;
            return Err(StreamError::Full);
        }
        if !data.is_empty() {
            s.queued += data.len();
            self.queued += data.len();
            s.queue.push_back(data);
        }
        Ok(())
    }

    /// Ends this side's direction of stream `id` after what is queued.
    pub fn finish(&mut self, id: StreamId) -> Result<(), StreamError> {
        let s = self.streams.get_mut(&id).ok_or(StreamError::Unknown)?;
        if s.finishing {
            return Err(StreamError::Finished);
        }
        if !s.head_sent {
            return Err(StreamError::Unknown);
        }
        s.finishing = true;
        if s.queue.is_empty() {
            // Nothing queued: the end goes now, as an empty data frame.
            s.send_done = true;
            self.control.push_back(Frame::Data {
                id,
                data: Bytes::new(),
                end: true,
            });
            self.forget_if_over(id);
        }
        Ok(())
    }

    /// Abandons stream `id` in both directions and tells the peer. Unknown ids are ignored.
    pub fn reset(&mut self, id: StreamId, code: ResetCode) {
        if self.remove(id).is_some() {
            self.control.push_back(Frame::Reset { id, code });
        }
    }

    /// The application consumed `n` bytes of stream `id`'s data (wrote them on, or dropped
    /// them): the credit goes back to the peer, in batches of half a window.
    pub fn consumed(&mut self, id: StreamId, n: usize) {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        self.conn_to_grant = self.conn_to_grant.saturating_add(n);
        if self.conn_to_grant >= self.config.connection_window / 2 {
            let bytes = std::mem::take(&mut self.conn_to_grant);
            self.conn_recv_left = self.conn_recv_left.saturating_add(bytes);
            self.control.push_back(Frame::Credit { id: 0, bytes });
        }
        let half = self.config.stream_window / 2;
        if let Some(s) = self.streams.get_mut(&id)
            && !s.recv_done
        {
            s.to_grant = s.to_grant.saturating_add(n);
            if s.to_grant >= half {
                let bytes = std::mem::take(&mut s.to_grant);
                s.recv_left = s.recv_left.saturating_add(bytes);
                self.control.push_back(Frame::Credit { id, bytes });
            }
        }
    }

    /// A frame from the peer. An error means the peer broke the protocol: close the session.
    pub fn handle_frame(&mut self, _now: Instant, frame: Frame) -> Result<(), StreamProtocolError> {
        if self.closed {
            return Ok(());
        }
        match frame {
            Frame::Head { id, head, end } => self.on_head(id, head, end),
            Frame::Data { id, data, end } => self.on_data(id, data, end),
            Frame::Reset { id, code } => {
                if self.remove(id).is_some() {
                    self.events.push_back(StreamEvent::Reset { id, code });
                }
                Ok(())
            }
            Frame::Credit { id: 0, bytes } => {
                self.conn_send += i64::from(bytes);
                if self.conn_send > i64::from(MAX_WINDOW) {
                    return Err(StreamProtocolError::WindowOverflow(0));
                }
                Ok(())
            }
            Frame::Credit { id, bytes } => {
                if let Some(s) = self.streams.get_mut(&id) {
                    s.send_window += i64::from(bytes);
                    if s.send_window > i64::from(MAX_WINDOW) {
                        return Err(StreamProtocolError::WindowOverflow(id));
                    }
                }
                Ok(())
            }
        }
    }

    fn is_peer_id(&self, id: StreamId) -> bool {
        let odd = id % 2 == 1;
        match self.side {
            Side::Proxy => odd,
            Side::Client => !odd,
        }
    }

    fn on_head(&mut self, id: StreamId, head: Bytes, end: bool) -> Result<(), StreamProtocolError> {
        if let Some(s) = self.streams.get_mut(&id) {
            if !s.local || s.head_received {
                return Err(StreamProtocolError::Unexpected(id, "second head"));
            }
            s.head_received = true;
            s.head_due = None;
            s.recv_done = end;
            self.events.push_back(StreamEvent::Head { id, head, end });
            self.forget_if_over(id);
            return Ok(());
        }
        if !self.is_peer_id(id) {
            // An answer to a stream this side already abandoned.
            return Ok(());
        }
        if id <= self.last_peer {
            // A stream already over (reset, or finished): its id is not reused.
            return Ok(());
        }
        self.last_peer = id;
        if self.peer_open >= self.config.max_peer_streams || head.len() > self.config.max_head_bytes
        {
            self.control.push_back(Frame::Reset {
                id,
                code: ResetCode::Refused,
            });
            return Ok(());
        }
        self.peer_open += 1;
        self.streams.insert(
            id,
            Stream {
                head_received: true,
                send_window: i64::from(self.config.stream_window),
                recv_left: self.config.stream_window,
                recv_done: end,
                ..Stream::default()
            },
        );
        self.events.push_back(StreamEvent::Opened { id, head, end });
        Ok(())
    }

    fn on_data(&mut self, id: StreamId, data: Bytes, end: bool) -> Result<(), StreamProtocolError> {
        let len = u32::try_from(data.len()).map_err(|_| StreamProtocolError::FlowControl(id))?;
        if len > self.conn_recv_left {
            return Err(StreamProtocolError::FlowControl(0));
        }
        self.conn_recv_left -= len;
        let Some(s) = self.streams.get_mut(&id) else {
            // A stream this side reset (its data was in flight): the connection's credit
            // comes back at once, the bytes are dropped.
            self.consumed(id, len as usize);
            return Ok(());
        };
        if !s.head_received {
            return Err(StreamProtocolError::Unexpected(id, "data before the head"));
        }
        if s.recv_done {
            return Err(StreamProtocolError::Unexpected(id, "data after the end"));
        }
        if len > s.recv_left {
            return Err(StreamProtocolError::FlowControl(id));
        }
        s.recv_left -= len;
        if len > 0 {
            self.events.push_back(StreamEvent::Data { id, data });
        }
        if end {
            s.recv_done = true;
            self.events.push_back(StreamEvent::End { id });
            self.forget_if_over(id);
        }
        Ok(())
    }

    /// The next frame to send: heads, resets and credit first, then data from the streams
    /// that have both credit and bytes, taking turns.
    pub fn poll_frame(&mut self) -> Option<Frame> {
        if let Some(f) = self.control.pop_front() {
            return Some(f);
        }
        if self.conn_send <= 0 {
            return None;
        }
        let next = self
            .streams
            .range(self.cursor.saturating_add(1)..)
            .chain(self.streams.range(..=self.cursor))
            .find(|(_, s)| s.send_window > 0 && !s.queue.is_empty())
            .map(|(id, _)| *id)?;
        self.cursor = next;
        let max = self.config.max_frame_data;
        let buffer = self.config.send_buffer;
        let s = self.streams.get_mut(&next)?;
        let allowed = s.send_window.min(self.conn_send);
        let allowed = usize::try_from(allowed).unwrap_or(0).min(max);
        let front = s.queue.front_mut()?;
        let data = if front.len() <= allowed {
            s.queue.pop_front()?
        } else {
            front.split_to(allowed)
        };
        let n = data.len();
        s.queued -= n;
        self.queued -= n;
        s.send_window -= n as i64;
        self.conn_send -= n as i64;
        let end = s.queue.is_empty() && s.finishing;
        if end {
            s.send_done = true;
        }
        let connection_room = self.queued < self.config.connection_send_buffer;
        if s.blocked && s.queued < buffer && connection_room {
            s.blocked = false;
            self.events.push_back(StreamEvent::Writable { id: next });
        }
        self.forget_if_over(next);
        if self.blocked && connection_room {
            self.wake_blocked();
        }
        Some(Frame::Data {
            id: next,
            data,
            end,
        })
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<StreamEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.streams.values().filter_map(|s| s.head_due).min()
    }

    /// Fails the streams whose answer is overdue: each is reset ([`ResetCode::TimedOut`]),
    /// to the peer and as an event.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<StreamId> = self
            .streams
            .iter()
            .filter(|(_, s)| s.head_due.is_some_and(|at| at <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.reset(id, ResetCode::TimedOut);
            self.events.push_back(StreamEvent::Reset {
                id,
                code: ResetCode::TimedOut,
            });
        }
    }

    /// The session ended: every stream is reset ([`ResetCode::SessionClosed`]) and no frame
    /// goes out any more.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        let ids: Vec<StreamId> = self.streams.keys().copied().collect();
        for id in ids {
            self.remove(id);
            self.events.push_back(StreamEvent::Reset {
                id,
                code: ResetCode::SessionClosed,
            });
        }
        self.control.clear();
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Bytes queued to send over all streams (for bounds and tests).
    pub fn queued_bytes(&self) -> usize {
        self.streams.values().map(|s| s.queued).sum()
    }

    /// The connection's send buffer has room: every stream refused for it may write again.
    fn wake_blocked(&mut self) {
        self.blocked = false;
        let buffer = self.config.send_buffer;
        for (id, s) in &mut self.streams {
            if s.blocked && s.queued < buffer {
                s.blocked = false;
                self.events.push_back(StreamEvent::Writable { id: *id });
            }
        }
    }

    fn remove(&mut self, id: StreamId) -> Option<Stream> {
        let s = self.streams.remove(&id)?;
        self.queued -= s.queued;
        if self.blocked && self.queued < self.config.connection_send_buffer {
            self.wake_blocked();
        }
        if s.local {
            self.local_open -= 1;
        } else {
            self.peer_open -= 1;
        }
        // Credit for bytes received and not yet consumed is the application's to return
        // (it drops them and calls `consumed`, or they were never delivered).
        Some(s)
    }

    fn forget_if_over(&mut self, id: StreamId) {
        if self.streams.get(&id).is_some_and(Stream::over) {
            self.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Streams, Streams, Instant) {
        (
            Streams::new(Side::Proxy, StreamConfig::default()),
            Streams::new(Side::Client, StreamConfig::default()),
            Instant::now(),
        )
    }

    /// Moves every frame `from` has to `to` (through the binary codec).
    fn pump(from: &mut Streams, to: &mut Streams, now: Instant) -> usize {
        let mut n = 0;
        while let Some(f) = from.poll_frame() {
            let f = Frame::decode(&f.encode()).expect("decodes");
            to.handle_frame(now, f).expect("valid");
            n += 1;
        }
        n
    }

    fn events(s: &mut Streams) -> Vec<StreamEvent> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    #[test]
    fn frames_round_trip_through_the_binary_form() {
        let frames = [
            Frame::Head {
                id: 2,
                head: Bytes::from_static(b"{}"),
                end: true,
            },
            Frame::Data {
                id: 7,
                data: Bytes::from_static(b"\x00\xffdata"),
                end: false,
            },
            Frame::Data {
                id: 7,
                data: Bytes::new(),
                end: true,
            },
            Frame::Reset {
                id: 9,
                code: ResetCode::TimedOut,
            },
            Frame::Credit {
                id: 0,
                bytes: 12345,
            },
        ];
        for f in frames {
            let bytes = f.encode();
            assert!(Frame::is_frame(&bytes));
            assert_eq!(Frame::decode(&bytes), Ok(f));
        }
    }

    #[test]
    fn credit_is_accepted_up_to_the_largest_window_and_no_further() {
        let credit = |bytes: u32| {
            let mut f = BytesMut::new();
            f.put_slice(&[T_CREDIT, 0, 0, 0, 0, 1]);
            f.put_u32(bytes);
            Frame::decode(&f.freeze())
        };
        assert_eq!(MAX_WINDOW, (1 << 31) - 1);
        assert_eq!(
            credit(MAX_WINDOW),
            Ok(Frame::Credit {
                id: 1,
                bytes: MAX_WINDOW
            })
        );
        assert!(credit(MAX_WINDOW + 1).is_err());
        assert_eq!(credit(MAX_WINDOW).map(|f| f.id()), Ok(1));
        let data = Frame::Data {
            id: 9,
            data: Bytes::new(),
            end: true,
        };
        assert_eq!(data.id(), 9);
    }

    #[test]
    fn windows_may_grow_to_the_largest_and_no_further() {
        let (mut proxy, mut client, now) = pair();
        let id = proxy.open(now, Bytes::new(), false).expect("open");
        pump(&mut proxy, &mut client, now);
        let conn = StreamConfig::default().connection_window;
        let stream = StreamConfig::default().stream_window;
        let grow = |m: &mut Streams, id, by| m.handle_frame(now, Frame::Credit { id, bytes: by });
        assert_eq!(grow(&mut proxy, 0, MAX_WINDOW - conn), Ok(()));
        assert_eq!(
            grow(&mut proxy, 0, 1),
            Err(StreamProtocolError::WindowOverflow(0))
        );
        assert_eq!(grow(&mut proxy, id, MAX_WINDOW - stream), Ok(()));
        assert_eq!(
            grow(&mut proxy, id, 1),
            Err(StreamProtocolError::WindowOverflow(id))
        );
    }

    #[test]
    fn accessors_tell_the_machines_state() {
        let config = StreamConfig {
            max_frame_data: 1000,
            ..StreamConfig::default()
        };
        let mut proxy = Streams::new(Side::Proxy, config.clone());
        let now = Instant::now();
        assert_eq!(proxy.config(), &config);
        assert!(proxy.is_empty());
        assert_eq!(proxy.len(), 0);
        let a = proxy.open(now, Bytes::new(), false).expect("open");
        proxy.open(now, Bytes::new(), false).expect("open");
        assert_eq!(proxy.len(), 2);
        assert!(!proxy.is_empty());
        proxy.write(a, Bytes::from_static(b"12345")).expect("write");
        assert_eq!(proxy.queued_bytes(), 5);
        assert!(!proxy.is_closed());
        proxy.close();
        assert!(proxy.is_closed());
        assert_eq!(proxy.queued_bytes(), 0);
    }

    #[test]
    fn a_request_without_a_body_is_over_when_its_answer_ends() {
        let (mut proxy, mut client, now) = pair();
        let id = proxy
            .open(now, Bytes::from_static(b"GET"), true)
            .expect("open");
        assert_eq!(
            proxy.write(id, Bytes::from_static(b"x")),
            Err(StreamError::Finished)
        );
        assert_eq!(proxy.finish(id), Err(StreamError::Finished));
        pump(&mut proxy, &mut client, now);
        events(&mut client);
        client
            .respond(id, Bytes::from_static(b"204"), true)
            .expect("respond");
        assert!(client.is_empty());
        pump(&mut client, &mut proxy, now);
        assert!(
            proxy.is_empty(),
            "both directions ended: the stream is forgotten"
        );
    }

    #[test]
    fn credit_goes_back_in_batches_of_half_a_window() {
        let (mut proxy, mut client, now) = pair();
        let id = proxy.open(now, Bytes::new(), false).expect("open");
        proxy
            .write(id, Bytes::from(vec![0; 300 << 10]))
            .expect("write");
        pump(&mut proxy, &mut client, now);
        events(&mut client);
        let half = StreamConfig::default().stream_window as usize / 2;
        client.consumed(id, half - 1);
        assert_eq!(client.poll_frame(), None, "no credit before half a window");
        client.consumed(id, 1);
        assert_eq!(
            client.poll_frame(),
            Some(Frame::Credit {
                id,
                bytes: half as u32
            })
        );
        assert_eq!(
            client.poll_frame(),
            None,
            "the session's half is not reached yet"
        );
    }

    #[test]
    fn the_session_window_is_enforced_on_what_arrives() {
        let config = StreamConfig {
            connection_window: 64 << 10,
            ..StreamConfig::default()
        };
        let mut proxy = Streams::new(Side::Proxy, StreamConfig::default());
        let mut client = Streams::new(Side::Client, config);
        let now = Instant::now();
        let a = proxy.open(now, Bytes::new(), false).expect("open");
        let b = proxy.open(now, Bytes::new(), false).expect("open");
        pump(&mut proxy, &mut client, now);
        let data = |id| Frame::Data {
            id,
            data: Bytes::from(vec![0; 32 << 10]),
            end: false,
        };
        assert_eq!(client.handle_frame(now, data(a)), Ok(()));
        assert_eq!(client.handle_frame(now, data(b)), Ok(()));
        assert_eq!(
            client.handle_frame(now, data(a)),
            Err(StreamProtocolError::FlowControl(0))
        );
    }

    #[test]
    fn an_empty_last_frame_is_an_end_and_no_data() {
        let (mut proxy, mut client, now) = pair();
        let id = proxy.open(now, Bytes::new(), false).expect("open");
        proxy.finish(id).expect("finish");
        pump(&mut proxy, &mut client, now);
        assert!(matches!(
            events(&mut client)[..],
            [StreamEvent::Opened { .. }, StreamEvent::End { .. }]
        ));
    }

    #[test]
    fn a_client_opens_streams_of_its_own_parity() {
        let (mut proxy, mut client, now) = pair();
        let id = client
            .open(now, Bytes::from_static(b"out"), true)
            .expect("open");
        assert_eq!(id % 2, 1);
        pump(&mut client, &mut proxy, now);
        assert_eq!(
            events(&mut proxy),
            [StreamEvent::Opened {
                id,
                head: Bytes::from_static(b"out"),
                end: true
            }]
        );
        // A second head for it, from either side's view, breaks the protocol.
        assert!(
            proxy
                .handle_frame(
                    now,
                    Frame::Head {
                        id,
                        head: Bytes::new(),
                        end: true
                    }
                )
                .is_err()
        );
        let p = proxy.open(now, Bytes::new(), true).expect("open");
        pump(&mut proxy, &mut client, now);
        client.respond(p, Bytes::new(), false).expect("respond");
        pump(&mut client, &mut proxy, now);
        assert!(
            proxy
                .handle_frame(
                    now,
                    Frame::Head {
                        id: p,
                        head: Bytes::new(),
                        end: true
                    }
                )
                .is_err(),
            "a second answer head"
        );
    }

    #[test]
    fn heads_up_to_the_limit_are_taken_and_larger_ones_refused() {
        let config = StreamConfig {
            max_head_bytes: 10,
            ..StreamConfig::default()
        };
        let mut proxy = Streams::new(Side::Proxy, StreamConfig::default());
        let mut client = Streams::new(Side::Client, config);
        let now = Instant::now();
        let ok = proxy
            .open(now, Bytes::from(vec![b'h'; 10]), true)
            .expect("open");
        let big = proxy
            .open(now, Bytes::from(vec![b'h'; 11]), true)
            .expect("open");
        pump(&mut proxy, &mut client, now);
        assert!(matches!(events(&mut client)[..], [StreamEvent::Opened { id, .. }] if id == ok));
        assert_eq!(
            client.poll_frame(),
            Some(Frame::Reset {
                id: big,
                code: ResetCode::Refused
            })
        );
    }

    #[test]
    fn stream_limits_are_counts_of_open_streams_not_of_streams_ever() {
        let config = StreamConfig {
            max_local_streams: 2,
            max_peer_streams: 2,
            ..StreamConfig::default()
        };
        let mut proxy = Streams::new(Side::Proxy, config.clone());
        let mut client = Streams::new(Side::Client, config);
        let now = Instant::now();
        for round in 0..5 {
            let ids: Vec<_> = (0..2)
                .map(|_| proxy.open(now, Bytes::new(), true).expect("open"))
                .collect();
            assert_eq!(
                proxy.open(now, Bytes::new(), true),
                Err(StreamError::TooManyStreams),
                "round {round}"
            );
            pump(&mut proxy, &mut client, now);
            assert_eq!(events(&mut client).len(), 2, "round {round}: none refused");
            for id in ids {
                client.respond(id, Bytes::new(), true).expect("respond");
            }
            pump(&mut client, &mut proxy, now);
            events(&mut proxy);
            assert!(proxy.is_empty() && client.is_empty());
        }
    }

    #[test]
    fn a_reset_stream_frees_the_sessions_send_buffer_for_the_others() {
        let config = StreamConfig {
            send_buffer: 64 << 10,
            connection_send_buffer: 64 << 10,
            ..StreamConfig::default()
        };
        let mut proxy = Streams::new(Side::Proxy, config);
        let now = Instant::now();
        let a = proxy.open(now, Bytes::new(), false).expect("open");
        let b = proxy.open(now, Bytes::new(), false).expect("open");
        let idle = proxy.open(now, Bytes::new(), false).expect("open");
        proxy
            .write(a, Bytes::from(vec![0; 64 << 10]))
            .expect("write");
        assert_eq!(
            proxy.write(b, Bytes::from_static(b"x")),
            Err(StreamError::Full)
        );
        events(&mut proxy);
        proxy.reset(a, ResetCode::Cancel);
        let writable: Vec<_> = events(&mut proxy)
            .into_iter()
            .filter_map(|e| match e {
                StreamEvent::Writable { id } => Some(id),
                _ => None,
            })
            .collect();
        assert_eq!(writable, [b], "only the refused stream hears, not {idle}");
        assert!(proxy.write(b, Bytes::from_static(b"x")).is_ok());
    }

    /// The `Writable` events among `m`'s pending events.
    fn writable(m: &mut Streams) -> Vec<StreamId> {
        events(m)
            .into_iter()
            .filter_map(|e| match e {
                StreamEvent::Writable { id } => Some(id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn writable_comes_only_once_the_streams_buffer_has_room() {
        let config = StreamConfig {
            max_frame_data: 1000,
            send_buffer: 2000,
            ..StreamConfig::default()
        };
        let mut proxy = Streams::new(Side::Proxy, config);
        let now = Instant::now();
        let id = proxy.open(now, Bytes::new(), false).expect("open");
        proxy.write(id, Bytes::from(vec![0; 3000])).expect("write");
        assert_eq!(
            proxy.write(id, Bytes::from_static(b"x")),
            Err(StreamError::Full)
        );
        let _head = proxy.poll_frame();
        assert!(matches!(proxy.poll_frame(), Some(Frame::Data { .. })));
        assert_eq!(writable(&mut proxy), [], "2000 queued: still full");
        assert!(matches!(proxy.poll_frame(), Some(Frame::Data { .. })));
        assert_eq!(writable(&mut proxy), [id]);
    }

    #[test]
    fn writable_comes_only_once_the_sessions_buffer_has_room() {
        let config = StreamConfig {
            max_frame_data: 1000,
            send_buffer: 1 << 20,
            connection_send_buffer: 2000,
            ..StreamConfig::default()
        };
        let mut proxy = Streams::new(Side::Proxy, config);
        let now = Instant::now();
        let a = proxy.open(now, Bytes::new(), false).expect("open");
        let b = proxy.open(now, Bytes::new(), false).expect("open");
        proxy.write(a, Bytes::from(vec![0; 3000])).expect("write");
        assert_eq!(
            proxy.write(b, Bytes::from_static(b"x")),
            Err(StreamError::Full)
        );
        while let Some(Frame::Head { .. }) = proxy.poll_frame() {}
        // The first data frame went out with the heads: 2000 queued, still full.
        assert_eq!(proxy.queued_bytes(), 2000);
        assert_eq!(writable(&mut proxy), []);
        assert!(matches!(proxy.poll_frame(), Some(Frame::Data { .. })));
        assert_eq!(writable(&mut proxy), [b]);
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"\x01\x00\x00\x00",
            b"\x09\x00\x00\x00\x00\x01",
            b"\x03\x00\x00\x00\x00\x01",
            b"\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00",
            b"\x04\x00\x00\x00\x00\x00\x00\x01",
            b"\x04\x00\x00\x00\x00\x00\xff\xff\xff\xff",
            b"\x02\x00\x00\x00\x00\x00",
        ] {
            assert!(
                Frame::decode(&Bytes::copy_from_slice(bad)).is_err(),
                "{bad:?}"
            );
        }
        assert!(!Frame::is_frame(b"{\"a\":1}"));
        assert!(!Frame::is_frame(b"GET / HTTP/1.1"));
    }

    #[test]
    fn a_slow_reader_stalls_the_writer_at_the_window() {
        let (mut proxy, mut client, now) = pair();
        let id = proxy
            .open(now, Bytes::from_static(b"h"), false)
            .expect("ok");
        pump(&mut proxy, &mut client, now);
        events(&mut client);
        // The writer fills its buffer; the reader never consumes.
        let chunk = Bytes::from(vec![7u8; 8 << 10]);
        let mut written = 0;
        for _ in 0..1000 {
            if proxy.write(id, chunk.clone()).is_err() {
                pump(&mut proxy, &mut client, now);
                if proxy.write(id, chunk.clone()).is_err() {
                    break;
                }
            }
            written += chunk.len();
        }
        pump(&mut proxy, &mut client, now);
        let received: usize = events(&mut client)
            .iter()
            .map(|e| match e {
                StreamEvent::Data { data, .. } => data.len(),
                _ => 0,
            })
            .sum();
        let window = StreamConfig::default().stream_window as usize;
        assert_eq!(received, window, "the receiver holds exactly one window");
        assert!(written <= window + StreamConfig::default().send_buffer + chunk.len());
        assert_eq!(proxy.write(id, chunk.clone()), Err(StreamError::Full));
        // Consuming returns credit; the writer may go on and hears it may.
        client.consumed(id, window);
        pump(&mut client, &mut proxy, now);
        pump(&mut proxy, &mut client, now);
        assert!(events(&mut proxy).contains(&StreamEvent::Writable { id }));
        assert!(proxy.write(id, chunk).is_ok());
    }

    #[test]
    fn the_connection_send_buffer_bounds_what_all_streams_queue_together() {
        let config = StreamConfig {
            send_buffer: 64 << 10,
            connection_send_buffer: 100 << 10,
            ..StreamConfig::default()
        };
        let mut proxy = Streams::new(Side::Proxy, config.clone());
        let mut client = Streams::new(Side::Client, config);
        let now = Instant::now();
        let chunk = Bytes::from(vec![1u8; 16 << 10]);
        let ids: Vec<_> = (0..8)
            .map(|_| proxy.open(now, Bytes::new(), false).expect("open"))
            .collect();
        let mut refused = Vec::new();
        for &id in &ids {
            while proxy.write(id, chunk.clone()).is_ok() {}
            refused.push(id);
        }
        assert!(proxy.queued_bytes() <= (100 << 10) + chunk.len());
        assert_eq!(proxy.capacity(ids[7]), 0);
        // As frames leave, every refused stream hears it may write again.
        pump(&mut proxy, &mut client, now);
        let writable: Vec<_> = events(&mut proxy)
            .into_iter()
            .filter_map(|e| match e {
                StreamEvent::Writable { id } => Some(id),
                _ => None,
            })
            .collect();
        for id in refused {
            assert!(
                writable.contains(&id),
                "stream {id} never told: {writable:?}"
            );
        }
    }

    #[test]
    fn data_beyond_the_window_is_a_protocol_error() {
        let (mut proxy, mut client, now) = pair();
        let id = proxy
            .open(now, Bytes::from_static(b"h"), false)
            .expect("ok");
        pump(&mut proxy, &mut client, now);
        let window = StreamConfig::default().stream_window as usize;
        client
            .handle_frame(
                now,
                Frame::Data {
                    id,
                    data: Bytes::from(vec![0; window]),
                    end: false,
                },
            )
            .expect("ok");
        assert_eq!(
            client.handle_frame(
                now,
                Frame::Data {
                    id,
                    data: Bytes::from_static(b"x"),
                    end: false
                }
            ),
            Err(StreamProtocolError::FlowControl(id))
        );
    }

    #[test]
    fn streams_take_turns_frame_by_frame() {
        let (mut proxy, mut client, now) = pair();
        let a = proxy
            .open(now, Bytes::from_static(b"a"), false)
            .expect("ok");
        let b = proxy
            .open(now, Bytes::from_static(b"b"), false)
            .expect("ok");
        proxy.write(a, Bytes::from(vec![1; 64 << 10])).expect("ok");
        proxy.write(b, Bytes::from(vec![2; 64 << 10])).expect("ok");
        let mut order = Vec::new();
        while let Some(f) = proxy.poll_frame() {
            if let Frame::Data { id, data, .. } = &f {
                assert!(data.len() <= StreamConfig::default().max_frame_data);
                order.push(*id);
            }
            client.handle_frame(now, f).expect("ok");
        }
        assert_eq!(
            order.len(),
            2 * (64 << 10) / StreamConfig::default().max_frame_data
        );
        assert!(order.windows(2).all(|w| w[0] != w[1]), "{order:?}");
    }

    #[test]
    fn the_connection_window_is_shared_by_all_streams() {
        let config = StreamConfig {
            connection_window: 64 << 10,
            ..StreamConfig::default()
        };
        let mut proxy = Streams::new(Side::Proxy, config.clone());
        let mut client = Streams::new(Side::Client, config);
        let now = Instant::now();
        let a = proxy.open(now, Bytes::new(), false).expect("ok");
        let b = proxy.open(now, Bytes::new(), false).expect("ok");
        proxy.write(a, Bytes::from(vec![1; 100 << 10])).expect("ok");
        proxy.write(b, Bytes::from(vec![2; 100 << 10])).expect("ok");
        pump(&mut proxy, &mut client, now);
        let got: usize = events(&mut client)
            .iter()
            .map(|e| match e {
                StreamEvent::Data { data, .. } => data.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(got, 64 << 10);
    }

    #[test]
    fn a_reset_mid_stream_drops_the_stream_and_returns_connection_credit() {
        let (mut proxy, mut client, now) = pair();
        let id = proxy
            .open(now, Bytes::from_static(b"h"), false)
            .expect("ok");
        pump(&mut proxy, &mut client, now);
        events(&mut client);
        proxy
            .write(id, Bytes::from(vec![0; 600 << 10]))
            .expect("ok");
        // The client resets while data is in flight.
        client.reset(id, ResetCode::Cancel);
        let mut in_flight = Vec::new();
        while let Some(f) = proxy.poll_frame() {
            in_flight.push(f);
        }
        pump(&mut client, &mut proxy, now);
        assert!(events(&mut proxy).contains(&StreamEvent::Reset {
            id,
            code: ResetCode::Cancel
        }));
        assert_eq!(
            proxy.write(id, Bytes::from_static(b"x")),
            Err(StreamError::Unknown)
        );
        assert_eq!(proxy.queued_bytes(), 0);
        for f in in_flight {
            client.handle_frame(now, f).expect("ok");
        }
        assert!(
            events(&mut client).is_empty(),
            "data of a reset stream is dropped"
        );
        // Its connection credit came back: a new stream can use the whole window.
        pump(&mut client, &mut proxy, now);
        let id2 = proxy.open(now, Bytes::new(), false).expect("ok");
        proxy
            .write(id2, Bytes::from(vec![0; 200 << 10]))
            .expect("ok");
        pump(&mut proxy, &mut client, now);
        let got: usize = events(&mut client)
            .iter()
            .map(|e| match e {
                StreamEvent::Data { data, .. } => data.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(got, 200 << 10);
    }

    #[test]
    fn a_request_and_its_answer_end_the_stream_on_both_sides() {
        let (mut proxy, mut client, now) = pair();
        let id = proxy
            .open(now, Bytes::from_static(b"req"), false)
            .expect("ok");
        proxy.write(id, Bytes::from_static(b"body")).expect("ok");
        proxy.finish(id).expect("ok");
        pump(&mut proxy, &mut client, now);
        assert_eq!(
            events(&mut client),
            [
                StreamEvent::Opened {
                    id,
                    head: Bytes::from_static(b"req"),
                    end: false
                },
                StreamEvent::Data {
                    id,
                    data: Bytes::from_static(b"body")
                },
                StreamEvent::End { id },
            ]
        );
        client
            .respond(id, Bytes::from_static(b"res"), true)
            .expect("ok");
        assert!(client.is_empty());
        pump(&mut client, &mut proxy, now);
        assert_eq!(
            events(&mut proxy),
            [StreamEvent::Head {
                id,
                head: Bytes::from_static(b"res"),
                end: true
            }]
        );
        assert!(proxy.is_empty());
    }

    #[test]
    fn an_answer_that_does_not_come_in_time_resets_the_stream() {
        let (mut proxy, mut client, now) = pair();
        proxy.set_head_timeout(Some(Duration::from_secs(30)));
        let id = proxy.open(now, Bytes::new(), true).expect("ok");
        assert_eq!(proxy.poll_timeout(), Some(now + Duration::from_secs(30)));
        proxy.handle_timeout(now + Duration::from_secs(29));
        assert!(events(&mut proxy).is_empty());
        proxy.handle_timeout(now + Duration::from_secs(30));
        assert_eq!(
            events(&mut proxy),
            [StreamEvent::Reset {
                id,
                code: ResetCode::TimedOut
            }]
        );
        assert_eq!(proxy.poll_timeout(), None);
        pump(&mut proxy, &mut client, now);
        // The client saw the open and then the reset.
        assert!(matches!(
            events(&mut client).last(),
            Some(StreamEvent::Reset {
                code: ResetCode::TimedOut,
                ..
            })
        ));
    }

    #[test]
    fn a_peer_opening_too_many_streams_is_refused_per_stream() {
        let config = StreamConfig {
            max_peer_streams: 2,
            ..StreamConfig::default()
        };
        let mut proxy = Streams::new(Side::Proxy, StreamConfig::default());
        let mut client = Streams::new(Side::Client, config);
        let now = Instant::now();
        let ids: Vec<_> = (0..3)
            .map(|_| proxy.open(now, Bytes::new(), true).expect("ok"))
            .collect();
        pump(&mut proxy, &mut client, now);
        assert_eq!(events(&mut client).len(), 2);
        pump(&mut client, &mut proxy, now);
        assert_eq!(
            events(&mut proxy),
            [StreamEvent::Reset {
                id: ids[2],
                code: ResetCode::Refused
            }]
        );
    }

    #[test]
    fn wrong_parity_reused_ids_and_stray_data_are_handled() {
        let (mut proxy, mut client, now) = pair();
        // The proxy receiving a head with its own parity for an unknown stream ignores it.
        proxy
            .handle_frame(
                now,
                Frame::Head {
                    id: 4,
                    head: Bytes::new(),
                    end: true,
                },
            )
            .expect("ok");
        assert!(events(&mut proxy).is_empty());
        let id = proxy.open(now, Bytes::new(), true).expect("ok");
        pump(&mut proxy, &mut client, now);
        // Data after the opener ended its direction is an error.
        assert!(
            client
                .handle_frame(
                    now,
                    Frame::Data {
                        id,
                        data: Bytes::from_static(b"x"),
                        end: false
                    }
                )
                .is_err()
        );
        // Credit overflow is an error.
        assert!(
            proxy
                .handle_frame(
                    now,
                    Frame::Credit {
                        id: 0,
                        bytes: MAX_WINDOW
                    }
                )
                .is_err()
        );
    }

    #[test]
    fn closing_resets_every_stream_once() {
        let (mut proxy, _client, now) = pair();
        let a = proxy.open(now, Bytes::new(), false).expect("ok");
        let b = proxy.open(now, Bytes::new(), false).expect("ok");
        proxy.close();
        proxy.close();
        assert_eq!(
            events(&mut proxy),
            [
                StreamEvent::Reset {
                    id: a,
                    code: ResetCode::SessionClosed
                },
                StreamEvent::Reset {
                    id: b,
                    code: ResetCode::SessionClosed
                }
            ]
        );
        assert_eq!(proxy.poll_frame(), None);
        assert_eq!(
            proxy.open(now, Bytes::new(), true),
            Err(StreamError::Closed)
        );
    }
}
