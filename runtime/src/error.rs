//! Why a send did not succeed: one error for every transport.

use browserver_core::CloseReason;

/// Why a [`Session::send`](crate::Session::send) was not acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The session closed before the peer acknowledged the message (or before it was sent).
    #[error("session closed before the message was acknowledged: {0}")]
    Closed(CloseReason),
    /// The session already holds its limit of unacknowledged bytes; try again once earlier
    /// sends resolve. The message was not queued.
    #[error("send buffer full ({buffered} bytes buffered, limit {limit})")]
    BufferFull {
        /// Bytes retained.
        buffered: usize,
        /// The limit.
        limit: usize,
    },
    /// The transport cannot carry this kind of message (binary on BrowserChannel, say).
    #[error("{0}")]
    Unsupported(&'static str),
    /// The message is not valid for the transport (text that is not JSON on BrowserChannel),
    /// or could not be serialised.
    #[error("invalid message: {0}")]
    Invalid(String),
}
