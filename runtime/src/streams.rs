//! The tokio side of [`browserver_core::stream`]: one task per session owns the sans-IO
//! [`Streams`] machine and only moves things — frames from the session in, frames to the
//! session out (through a [`FrameSink`]), chunks to the stream handles, and the machine's one
//! timer. Every decision (windows, credit, fairness, resets, deadlines) is the machine's.
//!
//! Used by both ends: the proxy (it opens a stream per visitor's request) and a client host
//! (it answers them, and opens its own for requests out).
//!
//! Bounds: a stream's unread chunks are at most its window (the machine refuses a peer that
//! sends more); a writer has one chunk outstanding and waits while the stream's send buffer
//! is full; frames queued on the session and not yet acknowledged are at most
//! [`MuxConfig::max_in_flight`] bytes; incoming streams waiting for the application are at
//! most [`StreamConfig::max_peer_streams`](browserver_core::stream::StreamConfig).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use browserver_core::stream::{
    Frame, ResetCode, Side, StreamConfig, StreamError, StreamEvent, StreamId, Streams,
};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};

/// Resolves `true` once the session acknowledged the frame, `false` if it never will.
pub type FrameAck = Pin<Box<dyn Future<Output = bool> + Send>>;

/// Where a stream task's frames go: the session carrying them.
pub trait FrameSink: Send + Sync + 'static {
    /// Queues one encoded frame on the session.
    fn send_frame(&self, frame: Bytes) -> FrameAck;
    /// The peer broke the stream protocol (or a frame was refused): end the session.
    fn abort(&self, why: &str);
}

/// Settings of a stream task.
#[derive(Clone, Debug)]
pub struct MuxConfig {
    /// The machine's windows and limits.
    pub streams: StreamConfig,
    /// How long a stream this side opens waits for the answer's head; then it is reset
    /// ([`ResetCode::TimedOut`]). `None`: no deadline.
    pub head_timeout: Option<Duration>,
    /// Frame bytes queued on the session and not yet acknowledged, at most; keep it well
    /// under the session's send buffer. 3 MiB.
    pub max_in_flight: usize,
}

impl Default for MuxConfig {
    fn default() -> Self {
        MuxConfig {
            streams: StreamConfig::default(),
            head_timeout: None,
            max_in_flight: 3 << 20,
        }
    }
}

enum Cmd {
    Open {
        head: Bytes,
        end: bool,
        reply: oneshot::Sender<Result<Stream, StreamError>>,
    },
    Respond {
        id: StreamId,
        head: Bytes,
        end: bool,
    },
    Write {
        id: StreamId,
        data: Bytes,
        /// The last chunk: the end goes in the same frame.
        finish: bool,
        done: oneshot::Sender<Result<(), StreamError>>,
    },
    Finish {
        id: StreamId,
    },
    Reset {
        id: StreamId,
        code: ResetCode,
    },
    Consumed {
        id: StreamId,
        n: usize,
    },
    Close,
}

/// What a stream's reader receives.
#[derive(Debug)]
enum Piece {
    Head { head: Bytes, end: bool },
    Data(Bytes),
    End,
    Reset(ResetCode),
}

/// A stream the peer opened, waiting for the application.
#[derive(Debug)]
pub struct Incoming {
    /// The peer's head.
    pub head: Bytes,
    /// No body follows.
    pub end: bool,
    /// The stream: read the body, [`respond`](Stream::respond), write the answer.
    pub stream: Stream,
}

/// Why a stream ended without a normal end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("stream reset: {0:?}")]
pub struct Reset(pub ResetCode);

/// A handle on the session's stream task. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Mux {
    cmd: mpsc::UnboundedSender<Cmd>,
    frames: mpsc::Sender<Bytes>,
}

/// Starts the stream task of one session. Returns its handle and the streams the peer
/// opens. The task ends on [`Mux::close`] (every open stream is then reset) or when the
/// handle, every stream and the receiver are gone.
pub fn spawn(
    side: Side,
    config: MuxConfig,
    sink: impl FrameSink,
) -> (Mux, mpsc::Receiver<Incoming>) {
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (frames_tx, frames_rx) = mpsc::channel(64);
    let (incoming_tx, incoming_rx) = mpsc::channel(config.streams.max_peer_streams.max(1));
    let mut machine = Streams::new(side, config.streams.clone());
    machine.set_head_timeout(config.head_timeout);
    let task = Task {
        machine,
        sink: Box::new(sink),
        cmd_tx: cmd_tx.downgrade(),
        readers: HashMap::new(),
        writers: HashMap::new(),
        incoming: incoming_tx,
        in_flight: 0,
        max_in_flight: config.max_in_flight,
        held: None,
    };
    tokio::spawn(task.run(cmd_rx, frames_rx));
    (
        Mux {
            cmd: cmd_tx,
            frames: frames_tx,
        },
        incoming_rx,
    )
}

impl Mux {
    /// A frame from the session (a binary message that [`Frame::is_frame`]). Waits while the
    /// task is behind (backpressure on the session's reader).
    pub async fn frame_in(&self, frame: Bytes) {
        let _ = self.frames.send(frame).await;
    }

    /// Opens a stream with `head`; `end`: no body follows.
    pub async fn open(&self, head: Bytes, end: bool) -> Result<Stream, StreamError> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Cmd::Open { head, end, reply })
            .map_err(|_| StreamError::Closed)?;
        rx.await.unwrap_or(Err(StreamError::Closed))
    }

    /// The session ended: every stream is reset ([`ResetCode::SessionClosed`]).
    pub fn close(&self) {
        let _ = self.cmd.send(Cmd::Close);
    }
}

/// One stream: read the peer's body with [`data`](Self::data), write this side's with
/// [`write`](Self::write) and [`finish`](Self::finish); or [`split`](Self::split) it to do
/// both at once. Dropping the sending half before it finished resets the stream
/// ([`ResetCode::Cancel`]). Dropping the receiving half before the peer finished resets the
/// stream too when this side opened it (nobody wants the answer any more); on a stream the
/// peer opened, what still comes is dropped (a handler that answered without reading the
/// whole request).
#[derive(Debug)]
pub struct Stream {
    send: SendStream,
    recv: RecvStream,
}

/// The sending half of a [`Stream`].
#[derive(Debug)]
pub struct SendStream {
    id: StreamId,
    cmd: mpsc::UnboundedSender<Cmd>,
    /// This side's direction is over (finished, or the stream was reset).
    done: bool,
}

/// The receiving half of a [`Stream`].
#[derive(Debug)]
pub struct RecvStream {
    id: StreamId,
    cmd: mpsc::UnboundedSender<Cmd>,
    rx: mpsc::UnboundedReceiver<Piece>,
    /// The peer's direction is over.
    done: bool,
    /// This side opened the stream.
    local: bool,
}

impl Stream {
    /// The stream's number.
    pub fn id(&self) -> StreamId {
        self.send.id
    }

    /// The two halves, to read and write at once.
    pub fn split(self) -> (SendStream, RecvStream) {
        (self.send, self.recv)
    }

    /// Waits for the answer's head on a stream this side opened: `(head, end)`.
    pub async fn head(&mut self) -> Result<(Bytes, bool), Reset> {
        self.recv.head().await
    }

    /// Answers a stream the peer opened.
    pub fn respond(&mut self, head: Bytes, end: bool) {
        self.send.respond(head, end);
    }

    /// The next chunk of the peer's body; `None` at its end.
    pub async fn data(&mut self) -> Option<Result<Bytes, Reset>> {
        self.recv.data().await
    }

    /// Writes a chunk of this side's body (see [`SendStream::write`]).
    pub async fn write(&mut self, data: Bytes) -> Result<(), Reset> {
        self.send.write(data).await
    }

    /// Writes the last chunk and ends this side's body (see [`SendStream::write_last`]).
    pub async fn write_last(&mut self, data: Bytes) -> Result<(), Reset> {
        self.send.write_last(data).await
    }

    /// Ends this side's body.
    pub fn finish(&mut self) {
        self.send.finish();
    }

    /// Abandons the stream both ways.
    pub fn reset(&mut self, code: ResetCode) {
        self.send.reset(code);
        self.recv.done = true;
    }
}

impl SendStream {
    /// The stream's number.
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// Answers a stream the peer opened; `end`: no body follows.
    pub fn respond(&mut self, head: Bytes, end: bool) {
        if end {
            self.done = true;
        }
        let _ = self.cmd.send(Cmd::Respond {
            id: self.id,
            head,
            end,
        });
    }

    /// Writes a chunk of this side's body; waits while the stream's send buffer is full
    /// (the peer reads slowly). An error: the stream is over (reset, or the session ended).
    pub async fn write(&mut self, data: Bytes) -> Result<(), Reset> {
        self.write_chunk(data, false).await
    }

    /// Writes the last chunk of this side's body and ends it (one frame, where a `write`
    /// then a `finish` may take two).
    pub async fn write_last(&mut self, data: Bytes) -> Result<(), Reset> {
        self.write_chunk(data, true).await
    }

    async fn write_chunk(&mut self, data: Bytes, finish: bool) -> Result<(), Reset> {
        if self.done {
            return Err(Reset(ResetCode::Cancel));
        }
        let (done, rx) = oneshot::channel();
        let sent = self.cmd.send(Cmd::Write {
            id: self.id,
            data,
            finish,
            done,
        });
        if finish {
            self.done = true;
        }
        match (sent, rx.await) {
            (Ok(()), Ok(Ok(()))) => Ok(()),
            _ => {
                self.done = true;
                Err(Reset(ResetCode::Cancel))
            }
        }
    }

    /// Ends this side's body.
    pub fn finish(&mut self) {
        if !self.done {
            self.done = true;
            let _ = self.cmd.send(Cmd::Finish { id: self.id });
        }
    }

    /// Abandons the stream both ways.
    pub fn reset(&mut self, code: ResetCode) {
        self.done = true;
        let _ = self.cmd.send(Cmd::Reset { id: self.id, code });
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.cmd.send(Cmd::Reset {
                id: self.id,
                code: ResetCode::Cancel,
            });
        }
    }
}

impl RecvStream {
    /// Waits for the answer's head on a stream this side opened: `(head, end)`.
    pub async fn head(&mut self) -> Result<(Bytes, bool), Reset> {
        match self.rx.recv().await {
            Some(Piece::Head { head, end }) => {
                if end {
                    self.done = true;
                }
                Ok((head, end))
            }
            Some(Piece::Reset(code)) => {
                self.done = true;
                Err(Reset(code))
            }
            _ => {
                self.done = true;
                Err(Reset(ResetCode::SessionClosed))
            }
        }
    }

    /// The next chunk of the peer's body; `None` at its end. Its credit goes back to the
    /// peer as it is returned.
    pub async fn data(&mut self) -> Option<Result<Bytes, Reset>> {
        if self.done {
            return None;
        }
        let piece = self.rx.recv().await;
        self.piece(piece)
    }

    /// [`data`](Self::data) as a poll function (for `http_body::Body`).
    pub fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Reset>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(piece) => Poll::Ready(self.piece(piece)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Whether the peer's body is over.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn piece(&mut self, piece: Option<Piece>) -> Option<Result<Bytes, Reset>> {
        match piece {
            Some(Piece::Data(data)) => {
                let _ = self.cmd.send(Cmd::Consumed {
                    id: self.id,
                    n: data.len(),
                });
                Some(Ok(data))
            }
            Some(Piece::End) => {
                self.done = true;
                None
            }
            Some(Piece::Reset(code)) => {
                self.done = true;
                Some(Err(Reset(code)))
            }
            Some(Piece::Head { .. }) => {
                self.done = true;
                Some(Err(Reset(ResetCode::Protocol)))
            }
            None => {
                self.done = true;
                Some(Err(Reset(ResetCode::SessionClosed)))
            }
        }
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        if !self.done && self.local {
            let _ = self.cmd.send(Cmd::Reset {
                id: self.id,
                code: ResetCode::Cancel,
            });
        }
        // Bytes delivered and never read: their credit goes back, or the session's window
        // would shrink for good. (What arrives after this is dropped by the task, which
        // returns its credit too.)
        self.rx.close();
        let mut unread = 0;
        while let Ok(piece) = self.rx.try_recv() {
            if let Piece::Data(data) = piece {
                unread += data.len();
            }
        }
        if unread > 0 {
            let _ = self.cmd.send(Cmd::Consumed {
                id: self.id,
                n: unread,
            });
        }
    }
}

/// Joins a byte connection to a stream both ways (an upgraded WebSocket connection, a
/// tunnelled socket): what `io` reads goes out on `send`, what `recv` brings is written to
/// `io`. Each direction ends on its own (EOF → finish; the peer's end → shutdown); an
/// error either way resets the stream. Returns once both directions are over.
pub async fn pipe<T>(io: T, mut send: SendStream, mut recv: RecvStream)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut reader, mut writer) = tokio::io::split(io);
    let failed = {
        let send = &mut send;
        let up = async move {
            let mut buf = bytes::BytesMut::with_capacity(16 << 10);
            loop {
                buf.reserve(16 << 10);
                match reader.read_buf(&mut buf).await {
                    Ok(0) => {
                        send.finish();
                        return true;
                    }
                    Ok(_) => {
                        if send.write(buf.split().freeze()).await.is_err() {
                            return false;
                        }
                    }
                    Err(_) => return false,
                }
            }
        };
        let down = async {
            while let Some(chunk) = recv.data().await {
                let Ok(chunk) = chunk else {
                    return false;
                };
                if writer.write_all(&chunk).await.is_err() {
                    return false;
                }
            }
            let _ = writer.shutdown().await;
            true
        };
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        let mut failed = false;
        while !(failed || up_done && down_done) {
            tokio::select! {
                ok = &mut up, if !up_done => {
                    up_done = true;
                    failed = !ok;
                }
                ok = &mut down, if !down_done => {
                    down_done = true;
                    failed = !ok;
                }
            }
        }
        failed
    };
    if failed {
        // One side failed: the stream is abandoned both ways.
        send.reset(ResetCode::Cancel);
    }
}

/// Where a write's outcome goes.
type WriteDone = oneshot::Sender<Result<(), StreamError>>;

type AckFuture = Pin<Box<dyn Future<Output = (usize, bool)> + Send>>;

struct Task {
    machine: Streams,
    sink: Box<dyn FrameSink>,
    /// For new streams' handles (weak: the task does not keep itself alive).
    cmd_tx: mpsc::WeakUnboundedSender<Cmd>,
    readers: HashMap<StreamId, mpsc::UnboundedSender<Piece>>,
    /// Writes refused for a full send buffer (and whether each is the last), retried on
    /// `Writable`.
    writers: HashMap<StreamId, (Bytes, bool, WriteDone)>,
    incoming: mpsc::Sender<Incoming>,
    in_flight: usize,
    max_in_flight: usize,
    held: Option<Bytes>,
}

impl Task {
    async fn run(
        mut self,
        mut cmd_rx: mpsc::UnboundedReceiver<Cmd>,
        mut frames_rx: mpsc::Receiver<Bytes>,
    ) {
        let mut acks: FuturesUnordered<AckFuture> = FuturesUnordered::new();
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        let mut armed = None;
        loop {
            self.events();
            self.flush(&mut acks);
            if self.machine.is_closed() {
                return;
            }
            let deadline = self.machine.poll_timeout();
            if deadline != armed {
                if let Some(at) = deadline {
                    sleep.as_mut().reset(tokio::time::Instant::from_std(at));
                }
                armed = deadline;
            }
            tokio::select! {
                cmd = cmd_rx.recv() => match cmd {
                    Some(cmd) => self.command(cmd),
                    None => self.machine.close(),
                },
                frame = frames_rx.recv() => match frame {
                    Some(frame) => self.frame(frame),
                    None => self.machine.close(),
                },
                Some((len, ok)) = acks.next(), if !acks.is_empty() => {
                    self.in_flight -= len;
                    if !ok {
                        // The session refused or lost a frame: the streams cannot go on.
                        self.machine.close();
                    }
                }
                () = &mut sleep, if armed.is_some() => {
                    armed = None;
                    self.machine.handle_timeout(Instant::now());
                }
            }
        }
    }

    fn frame(&mut self, bytes: Bytes) {
        let result = Frame::decode(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|f| {
                self.machine
                    .handle_frame(Instant::now(), f)
                    .map_err(|e| e.to_string())
            });
        if let Err(why) = result {
            tracing::warn!(error = %why, "stream protocol error: ending the session");
            self.sink.abort(&why);
            self.machine.close();
        }
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Open { head, end, reply } => {
                let result = self
                    .machine
                    .open(Instant::now(), head, end)
                    .and_then(|id| self.handle(id, end, false, true).ok_or(StreamError::Closed));
                if let Err(Ok(stream)) = reply.send(result) {
                    // The opener is gone: its stream is dropped here, which resets it.
                    drop(stream);
                }
            }
            Cmd::Respond { id, head, end } => {
                let _ = self.machine.respond(id, head, end);
            }
            Cmd::Write {
                id,
                data,
                finish,
                done,
            } => self.write(id, data, finish, done),
            Cmd::Finish { id } => {
                let _ = self.machine.finish(id);
            }
            Cmd::Reset { id, code } => {
                self.machine.reset(id, code);
                // The reader (if another half holds it) hears why.
                self.deliver(id, Piece::Reset(code));
                self.forget(id);
            }
            Cmd::Consumed { id, n } => self.machine.consumed(id, n),
            Cmd::Close => self.machine.close(),
        }
    }

    /// A handle for stream `id`, its reader registered.
    fn handle(&mut self, id: StreamId, sent: bool, received: bool, local: bool) -> Option<Stream> {
        let cmd = self.cmd_tx.upgrade()?;
        let (tx, rx) = mpsc::unbounded_channel();
        self.readers.insert(id, tx);
        Some(Stream {
            send: SendStream {
                id,
                cmd: cmd.clone(),
                done: sent,
            },
            recv: RecvStream {
                id,
                cmd,
                rx,
                done: received,
                local,
            },
        })
    }

    /// A write: queued (and the stream finished if it is the last), or parked until the
    /// stream's buffer has room.
    fn write(&mut self, id: StreamId, data: Bytes, finish: bool, done: WriteDone) {
        match self.machine.write(id, data.clone()) {
            Err(StreamError::Full) => {
                self.writers.insert(id, (data, finish, done));
            }
            result => {
                if finish && result.is_ok() {
                    let _ = self.machine.finish(id);
                }
                let _ = done.send(result);
            }
        }
    }

    fn forget(&mut self, id: StreamId) {
        self.readers.remove(&id);
        if let Some((_, _, done)) = self.writers.remove(&id) {
            let _ = done.send(Err(StreamError::Unknown));
        }
    }

    fn deliver(&mut self, id: StreamId, piece: Piece) {
        let ended = matches!(piece, Piece::End | Piece::Reset(_));
        if let Some(reader) = self.readers.get(&id) {
            if let Err(mpsc::error::SendError(Piece::Data(data))) = reader.send(piece) {
                // The reader is gone without telling: its bytes are consumed here.
                self.machine.consumed(id, data.len());
            }
        } else if let Piece::Data(data) = piece {
            self.machine.consumed(id, data.len());
        }
        if ended {
            self.readers.remove(&id);
        }
    }

    fn events(&mut self) {
        while let Some(event) = self.machine.poll_event() {
            match event {
                StreamEvent::Opened { id, head, end } => match self.handle(id, false, end, false) {
                    Some(stream) => {
                        if end {
                            self.readers.remove(&id);
                        }
                        let incoming = Incoming { head, end, stream };
                        if let Err(e) = self.incoming.try_send(incoming) {
                            // Nobody takes streams, or too many wait: refused.
                            let mut incoming = e.into_inner();
                            incoming.stream.reset(ResetCode::Refused);
                        }
                    }
                    None => self.machine.reset(id, ResetCode::Refused),
                },
                StreamEvent::Head { id, head, end } => {
                    self.deliver(id, Piece::Head { head, end });
                    if end {
                        self.readers.remove(&id);
                    }
                }
                StreamEvent::Data { id, data } => self.deliver(id, Piece::Data(data)),
                StreamEvent::End { id } => self.deliver(id, Piece::End),
                StreamEvent::Reset { id, code } => {
                    self.deliver(id, Piece::Reset(code));
                    self.forget(id);
                }
                StreamEvent::Writable { id } => {
                    if let Some((data, finish, done)) = self.writers.remove(&id) {
                        self.write(id, data, finish, done);
                    }
                }
            }
        }
    }

    fn flush(&mut self, acks: &mut FuturesUnordered<AckFuture>) {
        while self.in_flight < self.max_in_flight {
            let Some(bytes) = self
                .held
                .take()
                .or_else(|| self.machine.poll_frame().map(|f| f.encode()))
            else {
                break;
            };
            let len = bytes.len();
            self.in_flight += len;
            let ack = self.sink.send_frame(bytes);
            acks.push(Box::pin(async move { (len, ack.await) }));
        }
        // Writes accepted after frames left.
        self.events();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Two muxes joined back to back: each one's frames are the other's input.
    struct Wire {
        peer: Arc<Mutex<Option<Mux>>>,
        aborted: Arc<Mutex<Vec<String>>>,
    }

    impl FrameSink for Wire {
        fn send_frame(&self, frame: Bytes) -> FrameAck {
            let peer = self.peer.lock().expect("lock").clone();
            Box::pin(async move {
                match peer {
                    Some(p) => {
                        p.frame_in(frame).await;
                        true
                    }
                    None => false,
                }
            })
        }
        fn abort(&self, why: &str) {
            self.aborted.lock().expect("lock").push(why.to_string());
        }
    }

    fn pair(config: MuxConfig) -> (Mux, Mux, mpsc::Receiver<Incoming>) {
        let to_client = Arc::new(Mutex::new(None));
        let to_proxy = Arc::new(Mutex::new(None));
        let aborted = Arc::new(Mutex::new(Vec::new()));
        let (proxy, _) = spawn(
            Side::Proxy,
            config.clone(),
            Wire {
                peer: to_client.clone(),
                aborted: aborted.clone(),
            },
        );
        let (client, incoming) = spawn(
            Side::Client,
            config,
            Wire {
                peer: to_proxy.clone(),
                aborted,
            },
        );
        *to_client.lock().expect("lock") = Some(client.clone());
        *to_proxy.lock().expect("lock") = Some(proxy.clone());
        (proxy, client, incoming)
    }

    #[tokio::test]
    async fn a_request_and_a_large_answer_cross_exactly() {
        let (proxy, _client, mut incoming) = pair(MuxConfig::default());
        let server = tokio::spawn(async move {
            let mut req = incoming.recv().await.expect("a stream");
            assert_eq!(&req.head[..], b"GET");
            let mut body = Vec::new();
            while let Some(chunk) = req.stream.data().await {
                body.extend_from_slice(&chunk.expect("data"));
            }
            assert_eq!(body, b"upload");
            req.stream.respond(Bytes::from_static(b"200"), false);
            for i in 0..256u32 {
                let chunk = Bytes::from(vec![(i % 251) as u8; 10_000]);
                req.stream.write(chunk).await.expect("write");
            }
            req.stream.finish();
        });
        let mut s = proxy
            .open(Bytes::from_static(b"GET"), false)
            .await
            .expect("open");
        s.write(Bytes::from_static(b"upload")).await.expect("write");
        s.finish();
        let (head, end) = s.head().await.expect("head");
        assert_eq!((&head[..], end), (&b"200"[..], false));
        let mut n = 0usize;
        while let Some(chunk) = s.data().await {
            let chunk = chunk.expect("data");
            for b in chunk.iter() {
                assert_eq!(*b, ((n / 10_000) % 251) as u8);
                n += 1;
            }
        }
        assert_eq!(n, 2_560_000);
        server.await.expect("server");
    }

    #[tokio::test]
    async fn a_writer_waits_for_a_reader_that_does_not_read() {
        let (proxy, _client, mut incoming) = pair(MuxConfig::default());
        let mut s = proxy
            .open(Bytes::from_static(b"h"), false)
            .await
            .expect("open");
        let _req = incoming.recv().await.expect("a stream");
        let chunk = Bytes::from(vec![0u8; 64 << 10]);
        let mut written = 0usize;
        loop {
            match tokio::time::timeout(Duration::from_millis(200), s.write(chunk.clone())).await {
                Ok(r) => {
                    r.expect("write");
                    written += chunk.len();
                }
                Err(_) => break, // stalled
            }
            assert!(written < 16 << 20, "the writer never stalled");
        }
        let c = StreamConfig::default();
        assert!(written <= (c.stream_window as usize) + c.send_buffer + chunk.len());
    }

    #[tokio::test]
    async fn dropping_the_opener_resets_the_peer_and_closing_resets_everyone() {
        let (proxy, _client, mut incoming) = pair(MuxConfig::default());
        let s = proxy
            .open(Bytes::from_static(b"h"), false)
            .await
            .expect("open");
        let mut req = incoming.recv().await.expect("a stream");
        drop(s);
        assert_eq!(req.stream.data().await, Some(Err(Reset(ResetCode::Cancel))));
        let mut s = proxy
            .open(Bytes::from_static(b"h"), true)
            .await
            .expect("open");
        let _req = incoming.recv().await.expect("a stream");
        proxy.close();
        assert_eq!(s.head().await, Err(Reset(ResetCode::SessionClosed)));
    }

    /// Records the frames a mux sends, and passes them on.
    struct Recording {
        inner: Wire,
        frames: Arc<Mutex<Vec<Frame>>>,
    }

    impl FrameSink for Recording {
        fn send_frame(&self, frame: Bytes) -> FrameAck {
            if let Ok(f) = Frame::decode(&frame) {
                self.frames.lock().expect("lock").push(f);
            }
            self.inner.send_frame(frame)
        }
        fn abort(&self, why: &str) {
            self.inner.abort(why);
        }
    }

    #[tokio::test]
    async fn the_last_chunk_carries_the_end_in_its_frame() {
        let to_proxy = Arc::new(Mutex::new(None));
        let to_client = Arc::new(Mutex::new(None));
        let frames = Arc::new(Mutex::new(Vec::new()));
        let aborted = Arc::new(Mutex::new(Vec::new()));
        let (proxy, _) = spawn(
            Side::Proxy,
            MuxConfig::default(),
            Wire {
                peer: to_client.clone(),
                aborted: aborted.clone(),
            },
        );
        let (client, mut incoming) = spawn(
            Side::Client,
            MuxConfig::default(),
            Recording {
                inner: Wire {
                    peer: to_proxy.clone(),
                    aborted,
                },
                frames: frames.clone(),
            },
        );
        *to_client.lock().expect("lock") = Some(client);
        *to_proxy.lock().expect("lock") = Some(proxy.clone());
        let mut s = proxy
            .open(Bytes::from_static(b"GET"), true)
            .await
            .expect("open");
        let mut req = incoming.recv().await.expect("a stream");
        req.stream.respond(Bytes::from_static(b"200"), false);
        let (mut send, _recv) = req.stream.split();
        send.write_last(Bytes::from_static(b"hello"))
            .await
            .expect("write");
        let within = Duration::from_secs(5);
        let head = tokio::time::timeout(within, s.head())
            .await
            .expect("in time");
        assert_eq!(head.expect("head").0, Bytes::from_static(b"200"));
        let data = tokio::time::timeout(within, s.data())
            .await
            .expect("in time");
        assert_eq!(data, Some(Ok(Bytes::from_static(b"hello"))));
        let end = tokio::time::timeout(within, s.data())
            .await
            .expect("the end comes");
        assert_eq!(end, None);
        let sent = frames.lock().expect("lock").clone();
        assert_eq!(
            sent.iter()
                .filter(|f| matches!(f, Frame::Data { .. }))
                .count(),
            1,
            "{sent:?}"
        );
        assert!(matches!(sent.last(), Some(Frame::Data { end: true, .. })));
    }

    #[tokio::test]
    async fn an_answer_that_does_not_read_the_request_lets_the_uploader_finish() {
        let (proxy, _client, mut incoming) = pair(MuxConfig::default());
        let s = proxy
            .open(Bytes::from_static(b"POST"), false)
            .await
            .expect("open");
        let (mut up, _down) = s.split();
        let req = incoming.recv().await.expect("a stream");
        // The handler answers and drops the request body unread.
        let (mut answer, body) = req.stream.split();
        drop(body);
        answer.respond(Bytes::from_static(b"200"), true);
        // Far more than the windows: what comes is dropped and its credit returned.
        let chunk = Bytes::from(vec![1u8; 64 << 10]);
        for _ in 0..64 {
            tokio::time::timeout(Duration::from_secs(5), up.write(chunk.clone()))
                .await
                .expect("the uploader is not stalled")
                .expect("write");
        }
        up.finish();
    }

    #[tokio::test]
    async fn answers_dropped_unread_give_their_credit_back() {
        let (proxy, _client, mut incoming) = pair(MuxConfig::default());
        let window = StreamConfig::default().stream_window as usize;
        // Four times the session's window, each answer dropped after its head, unread.
        for _ in 0..16 {
            let mut s = proxy
                .open(Bytes::from_static(b"GET"), true)
                .await
                .expect("open");
            let mut req = incoming.recv().await.expect("a stream");
            req.stream.respond(Bytes::from_static(b"200"), false);
            let writer = tokio::spawn(async move {
                let _ = req.stream.write(Bytes::from(vec![0u8; window])).await;
                req
            });
            s.head().await.expect("head");
            // Let the data arrive into the reader's buffer, then drop it unread.
            tokio::time::sleep(Duration::from_millis(5)).await;
            drop(s);
            drop(writer.await.expect("writer"));
        }
        // The session's window is whole again: a new answer flows.
        let mut s = proxy
            .open(Bytes::from_static(b"GET"), true)
            .await
            .expect("open");
        let mut req = incoming.recv().await.expect("a stream");
        req.stream.respond(Bytes::from_static(b"200"), false);
        tokio::spawn(async move { req.stream.write_last(Bytes::from(vec![1u8; 3 << 20])).await });
        s.head().await.expect("head");
        let mut got = 0;
        while let Some(chunk) = tokio::time::timeout(Duration::from_secs(5), s.data())
            .await
            .expect("credit was not lost")
        {
            got += chunk.expect("data").len();
        }
        assert_eq!(got, 3 << 20);
    }

    #[tokio::test]
    async fn streams_nobody_takes_are_refused() {
        let (proxy, _client, incoming) = pair(MuxConfig::default());
        drop(incoming);
        let mut s = proxy
            .open(Bytes::from_static(b"GET"), true)
            .await
            .expect("open");
        assert_eq!(s.head().await, Err(Reset(ResetCode::Refused)));
    }

    #[tokio::test]
    async fn an_answer_that_does_not_come_in_time_is_a_timeout() {
        let (proxy, _client, mut incoming) = pair(MuxConfig {
            head_timeout: Some(Duration::from_millis(50)),
            ..MuxConfig::default()
        });
        let mut s = proxy
            .open(Bytes::from_static(b"h"), true)
            .await
            .expect("open");
        let mut req = incoming.recv().await.expect("a stream");
        assert_eq!(s.head().await, Err(Reset(ResetCode::TimedOut)));
        assert_eq!(req.stream.data().await, None, "the request had no body");
        // The answer's writer learns it is over.
        req.stream.respond(Bytes::from_static(b"late"), false);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(req.stream.write(Bytes::from_static(b"x")).await.is_err());
    }
}
