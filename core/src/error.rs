//! The core's errors, one type per concern: API misuse and exceeded limits are values, never
//! panics, and a caller matches only what its call can return.

/// The session is closed: nothing can be sent, attached, acknowledged or delivered any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the session is closed")]
pub struct Closed;

/// Why [`Session::send`](crate::Session::send) (or `stop`) refused a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The session is closed.
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
}

/// Why an item from the peer was refused
/// ([`Session::handle_incoming`](crate::Session::handle_incoming)). Except for `Closed`, the session closed because of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// The session was already closed.
    #[error("the session is closed")]
    Closed,
    /// The item lies too far beyond a gap.
    #[error("message {pos} is beyond the reorder window (next expected {next}, window {window})")]
    BeyondWindow {
        /// The refused position.
        pos: u64,
        /// The next position the session was waiting for.
        next: u64,
        /// The configured window.
        window: u64,
    },
    /// Held out-of-order items would exceed their byte limit.
    #[error("held out-of-order messages would exceed {limit} bytes")]
    HeldBytesExceeded {
        /// The configured limit.
        limit: usize,
    },
}

impl From<Closed> for SendError {
    fn from(_: Closed) -> SendError {
        SendError::Closed
    }
}

impl From<Closed> for InputError {
    fn from(_: Closed) -> InputError {
        InputError::Closed
    }
}

/// The operating system's secure random source failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no secure randomness available: {0}")]
pub struct EntropyError(pub String);

/// Why the [`Registry`](crate::Registry) refused to create an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// The registry holds its maximum number of sessions.
    #[error("too many sessions (limit {limit})")]
    Full {
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
    /// No secure randomness for an id.
    #[error(transparent)]
    Entropy(#[from] EntropyError),
}

/// Too many requests are waiting for an answer ([`Requests::insert`](crate::Requests::insert)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many pending requests (limit {limit})")]
pub struct TooManyPending {
    /// The configured limit.
    pub limit: usize,
}
