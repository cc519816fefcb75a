//! The body of the proxy's responses: whole (an error page, a buffered answer from a client
//! that speaks the original form), or streamed from a client as it produces it.

use std::pin::Pin;
use std::task::{Context, Poll};

use browserver_runtime::streams::RecvStream;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::Full;

/// A streamed answer ended without its end: the client reset it or went away. The visitor's
/// connection is cut (an HTTP/1.1 chunked body without its last chunk), never left hanging.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the client's answer was cut off: {0}")]
pub struct BodyAborted(pub String);

/// A proxy response body.
#[derive(Debug)]
pub struct ProxyBody(Inner);

#[derive(Debug)]
enum Inner {
    Full(Full<Bytes>),
    /// The stream, and the length its sender declared (`content-length`), if any.
    Stream(RecvStream, Option<u64>),
    /// Relayed from elsewhere (another node of a cluster).
    Relayed(http_body_util::combinators::UnsyncBoxBody<Bytes, BodyAborted>),
}

impl ProxyBody {
    /// A body streamed from a client; `length`: what it declared it will send (then the
    /// HTTP framing uses it, and a body that disagrees is an error).
    pub fn stream(recv: RecvStream, length: Option<u64>) -> ProxyBody {
        ProxyBody(Inner::Stream(recv, length))
    }

    /// A body relayed from another server (the node of a cluster that holds the client).
    pub fn relayed<B>(body: B) -> ProxyBody
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
    {
        use http_body_util::BodyExt;
        ProxyBody(Inner::Relayed(
            body.map_err(|e| BodyAborted(e.to_string())).boxed_unsync(),
        ))
    }

    /// An empty body.
    pub fn empty() -> ProxyBody {
        ProxyBody(Inner::Full(Full::new(Bytes::new())))
    }
}

impl From<Full<Bytes>> for ProxyBody {
    fn from(full: Full<Bytes>) -> ProxyBody {
        ProxyBody(Inner::Full(full))
    }
}

impl http_body::Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyAborted;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyAborted>>> {
        match &mut self.0 {
            Inner::Full(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            Inner::Stream(recv, _) => recv.poll_data(cx).map(|chunk| {
                chunk.map(|r| {
                    r.map(Frame::data)
                        .map_err(|reset| BodyAborted(format!("{:?}", reset.0)))
                })
            }),
            Inner::Relayed(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Full(full) => full.is_end_stream(),
            Inner::Stream(recv, _) => recv.is_done(),
            Inner::Relayed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Full(full) => full.size_hint(),
            Inner::Stream(_, Some(length)) => SizeHint::with_exact(*length),
            Inner::Stream(_, None) => SizeHint::default(),
            Inner::Relayed(body) => body.size_hint(),
        }
    }
}
