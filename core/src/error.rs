//! The core's error type: API misuse and exceeded limits are values, never panics.

/// Everything a core call can refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The session is closed: nothing can be sent, attached or delivered any more.
    #[error("the session is closed")]
    Closed,
    /// Accepting the message would exceed the session's outbound buffer limit. The message was
    /// not queued; the application may retry after acknowledgements free room.
    #[error("send buffer full: {buffered} bytes buffered, {len} more would exceed {limit}")]
    BufferFull {
        /// Bytes currently retained.
        buffered: usize,
        /// Length of the refused message.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// An inbound message lies too far beyond a gap; the session was closed because of it.
    #[error("message {pos} is beyond the reorder window (next expected {next}, window {window})")]
    BeyondWindow {
        /// The refused position.
        pos: u64,
        /// The next position the session was waiting for.
        next: u64,
        /// The configured window.
        window: u64,
    },
    /// Held out-of-order messages would exceed their byte limit; the session was closed.
    #[error("held out-of-order messages would exceed {limit} bytes")]
    HeldBytesExceeded {
        /// The configured limit.
        limit: usize,
    },
    /// Too many requests are waiting for an answer.
    #[error("too many pending requests (limit {limit})")]
    TooManyPending {
        /// The configured limit.
        limit: usize,
    },
    /// The registry holds its maximum number of sessions.
    #[error("too many sessions (limit {limit})")]
    RegistryFull {
        /// The configured limit.
        limit: usize,
    },
    /// The id generator returned something that is not a valid id.
    #[error("the id generator produced an invalid id {0:?}")]
    InvalidId(String),
    /// An application-chosen id is already in use.
    #[error("the id {0:?} is already in use")]
    IdInUse(String),
    /// The id generator kept returning ids already in use.
    #[error("the id generator produced {attempts} ids in a row that are already in use")]
    IdCollision {
        /// How many ids were tried.
        attempts: u32,
    },
    /// The operating system's secure random source failed.
    #[error("no secure randomness available: {0}")]
    Entropy(String),
}
