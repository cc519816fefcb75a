//! The connection layer: how many connections, for how long, and how slowly a body may
//! arrive. Everything here bounds what one client host can hold; none of it is protocol.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use browserver_core::quota::AddressKey;
use browserver_runtime::metrics::{Limit, limit_hit};
use browserver_transport_http::{BodyError, Budget, Reservation};
use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Connection limits and timeouts. Every field has a safe default ([`Limits::default`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A request head must arrive within this long of the connection (or the previous
    /// response) being ready for it; then the connection closes. 10 s.
    pub header_read_timeout: Duration,
    /// A connection with nothing read or written for this long closes when no request is in
    /// flight, or when its writes are stuck (a client that does not read). Above the
    /// keep-alive interval and the request timeout. 60 s.
    pub idle_timeout: Duration,
    /// A request body must arrive at least this fast (bytes per second) after the grace
    /// period; a slower one fails (the request ends with 408, or 400 on BrowserChannel). 1 024.
    pub body_min_rate: u64,
    /// Time a request body gets before the minimum rate applies. 10 s.
    pub body_grace: Duration,
    /// Open connections in total; more are closed at once (accept keeps working). 10 000,
    /// and never more than the process's file-descriptor limit less 256.
    pub max_connections: usize,
    /// Open connections per client address (IPv6 by `/64`); more are closed at once. 256.
    /// 0 = no limit.
    pub max_connections_per_address: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_min_rate: 1024,
            body_grace: Duration::from_secs(10),
            max_connections: 10_000,
            max_connections_per_address: 256,
        }
    }
}

/// Open connections, in total and per address.
#[derive(Debug)]
pub(crate) struct Connections {
    total: AtomicUsize,
    per_address: Mutex<HashMap<AddressKey, usize>>,
    max_total: usize,
    max_per_address: usize,
}

/// One open connection's place in [`Connections`]; given back when dropped (when the socket
/// closes, upgraded connections included: the socket owns it).
#[derive(Debug)]
pub(crate) struct Slot {
    connections: Arc<Connections>,
    key: AddressKey,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.total.fetch_sub(1, Ordering::AcqRel);
        let mut table = self.connections.table();
        if let Some(n) = table.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                table.remove(&self.key);
            }
        }
    }
}

impl Connections {
    pub(crate) fn new(max_total: usize, max_per_address: usize) -> Arc<Connections> {
        Arc::new(Connections {
            total: AtomicUsize::new(0),
            per_address: Mutex::new(HashMap::new()),
            max_total,
            max_per_address,
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<AddressKey, usize>> {
        self.per_address.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many connections are open.
    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// A slot for a new connection from `ip`, if the limits allow.
    pub(crate) fn try_open(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, &'static str> {
        let key = AddressKey::of(ip);
        let mut table = self.table();
        let n = table.get(&key).copied().unwrap_or(0);
        if self.max_per_address > 0 && n >= self.max_per_address {
            limit_hit(Limit::MaxConnectionsPerAddress);
            return Err("too many connections from this address");
        }
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            limit_hit(Limit::MaxConnections);
            return Err("too many connections");
        }
        table.insert(key, n + 1);
        Ok(Slot {
            connections: self.clone(),
            key,
        })
    }
}

/// When a connection last moved bytes, and whether its writes are stuck.
#[derive(Debug)]
pub(crate) struct Activity {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last byte read or written.
    last: AtomicU64,
    /// Milliseconds after `epoch` since which a write has been waiting (0: none is).
    write_blocked_since: AtomicU64,
    /// Requests whose response has not been fully written.
    pub(crate) in_flight: AtomicUsize,
}

impl Activity {
    pub(crate) fn new() -> Arc<Activity> {
        Arc::new(Activity {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            write_blocked_since: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn touch(&self) {
        self.last.store(self.now_ms(), Ordering::Release);
    }

    /// Whether the connection should be closed: nothing moved for `idle`, and either no
    /// request is in flight or a write has been stuck that long.
    pub(crate) fn is_idle(&self, idle: Duration) -> bool {
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let now = self.now_ms();
        let quiet = now.saturating_sub(self.last.load(Ordering::Acquire)) >= idle_ms;
        let blocked = self.write_blocked_since.load(Ordering::Acquire);
        let stuck = blocked != 0 && now.saturating_sub(blocked) >= idle_ms;
        quiet && (self.in_flight.load(Ordering::Acquire) == 0 || stuck)
    }

    /// A request started; the guard ends it (held by its response body).
    pub(crate) fn request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }
}

/// A request in flight on a connection.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A socket that records its activity and owns its connection slot.
pub(crate) struct Tracked<S> {
    stream: S,
    activity: Arc<Activity>,
    _slot: Slot,
}

impl<S> Tracked<S> {
    pub(crate) fn new(stream: S, activity: Arc<Activity>, slot: Slot) -> Tracked<S> {
        activity.touch();
        Tracked {
            stream,
            activity,
            _slot: slot,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.wrote(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.wrote(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl<S> Tracked<S> {
    fn wrote(&self, r: &Poll<io::Result<usize>>) {
        match r {
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.activity.touch();
                self.activity
                    .write_blocked_since
                    .store(0, Ordering::Release);
            }
            Poll::Pending => {
                let _ = self.activity.write_blocked_since.compare_exchange(
                    0,
                    self.activity.now_ms(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
            _ => {}
        }
    }
}

/// A request body as the server reads it: it fails with
/// [`BodyError::TooSlow`] when it arrives slower
/// than a minimum rate after a grace period, and with
/// [`BodyError::Busy`] when the bytes being read
/// over all requests at once would exceed the server's read budget (each body's share is given
/// back when its stream is dropped).
pub struct RequestBody<B> {
    inner: B,
    rate: u64,
    grace: Duration,
    started: Option<Instant>,
    bytes: u64,
    deadline: Option<Pin<Box<Sleep>>>,
    /// `None`: the body passes through (streamed), nothing is held.
    budget: Option<Budget>,
    held: Option<Reservation>,
}

impl<B> RequestBody<B> {
    pub(crate) fn new(
        inner: B,
        rate: u64,
        grace: Duration,
        budget: Option<&Budget>,
    ) -> RequestBody<B> {
        RequestBody {
            inner,
            rate,
            grace,
            started: None,
            bytes: 0,
            deadline: None,
            held: budget.map(Budget::empty),
            budget: budget.cloned(),
        }
    }

    fn due(&self, started: Instant) -> Instant {
        let allowed = match self.bytes.checked_div(self.rate) {
            Some(secs) => Duration::from_secs(secs),
            None => Duration::from_secs(365 * 24 * 3600),
        };
        started + self.grace + allowed
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Error = hyper::Error> + Unpin,
{
    type Data = B::Data;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BodyError>>> {
        let started = *self.started.get_or_insert_with(Instant::now);
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.remaining();
                    let this = &mut *self;
                    if let (Some(budget), Some(held)) = (&this.budget, &mut this.held)
                        && !budget.grow(held, len)
                    {
                        return Poll::Ready(Some(Err(BodyError::Busy)));
                    }
                    self.bytes = self.bytes.saturating_add(len as u64);
                    let due = self.due(started);
                    if let Some(d) = self.deadline.as_mut() {
                        d.as_mut().reset(due);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                Poll::Ready(Some(Err(BodyError::Unreadable(e.to_string()))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if self.rate == 0 {
                    return Poll::Pending;
                }
                let due = self.due(started);
                let deadline = self
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::TooSlow))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its request counted as in flight until it is fully written.
pub struct Guarded<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> Guarded<B> {
    pub(crate) fn new(inner: B, in_flight: InFlight) -> Guarded<B> {
        Guarded {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body + Unpin> Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The process's limit on open files, raised to its hard limit where allowed.
pub(crate) fn file_limit() -> Option<u64> {
    let (soft, hard) = rlimit::Resource::NOFILE.get().ok()?;
    if soft < hard && rlimit::Resource::NOFILE.set(hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn request_bodies_share_the_read_budget_and_give_it_back_when_dropped() {
        use http_body_util::{BodyExt, StreamBody};
        let frames = || {
            StreamBody::new(futures_util::stream::iter(vec![
                Ok::<_, hyper::Error>(Frame::data(bytes::Bytes::from_static(b"12345"))),
                Ok(Frame::data(bytes::Bytes::from_static(b"67890"))),
            ]))
        };
        let budget = Budget::new(8);
        let mut first = RequestBody::new(frames(), 0, Duration::ZERO, Some(&budget));
        assert!(first.frame().await.expect("frame").is_ok());
        assert_eq!(budget.used(), 5);
        let second = RequestBody::new(frames(), 0, Duration::ZERO, Some(&budget));
        let err = second.collect().await.expect_err("over the budget");
        assert!(matches!(err, BodyError::Busy), "{err}");
        drop(first);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_slower_than_the_minimum_rate_fails_after_the_grace() {
        use http_body_util::BodyExt;
        let (mut tx, body) = http_body_util::channel::Channel::<bytes::Bytes, hyper::Error>::new(4);
        let budget = Budget::new(1 << 20);
        let mut body = RequestBody::new(body, 100, Duration::from_secs(2), Some(&budget));
        tx.send_data(bytes::Bytes::from_static(b"x"))
            .await
            .expect("send");
        assert!(body.frame().await.expect("frame").is_ok());
        let started = Instant::now();
        let err = body.frame().await.expect("an error").expect_err("too slow");
        assert!(matches!(err, BodyError::TooSlow), "{err}");
        assert!(started.elapsed() >= Duration::from_secs(2));
        drop(tx);
    }

    #[test]
    fn connections_are_limited_in_total_and_per_address_and_given_back() {
        let c = Connections::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let s1 = c.try_open(a).expect("1");
        let _s2 = c.try_open(a).expect("2");
        assert!(c.try_open(a).is_err(), "per address");
        let _s3 = c.try_open(b).expect("3");
        assert!(
            c.try_open("10.0.0.3".parse().expect("ip")).is_err(),
            "total"
        );
        drop(s1);
        assert_eq!(c.open(), 2);
        c.try_open(a).expect("a slot given back is free");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_means_quiet_and_either_no_request_or_a_stuck_write() {
        let a = Activity::new();
        a.touch();
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(a.is_idle(Duration::from_secs(5)));
        assert!(!a.is_idle(Duration::from_secs(7)));
        let request = a.request();
        assert!(!a.is_idle(Duration::from_secs(5)), "a request in flight");
        a.write_blocked_since.store(a.now_ms(), Ordering::Release);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(a.is_idle(Duration::from_secs(5)), "its write is stuck");
        drop(request);
    }
}
