//! The global budget of body bytes held in memory at once (requests waiting for their client,
//! answers from egress), and the bounded body reader that charges it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;

/// Bytes of bodies held in memory at once, shared by every client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Budget {
    used: Arc<AtomicUsize>,
    limit: usize,
}

/// A share of the [`Budget`]; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    used: Arc<AtomicUsize>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Why a body was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Larger than the per-message limit (answer 413).
    #[error("body larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The global budget is spent (answer 503).
    #[error("the server holds too many bodies at once")]
    Busy,
    /// The body arrived slower than the server's minimum rate (answer 408).
    #[error("request body too slow")]
    TooSlow,
    /// The body could not be read (the peer went away).
    #[error("unreadable body: {0}")]
    Unreadable(String),
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Budget {
        Budget {
            used: Arc::new(AtomicUsize::new(0)),
            limit,
        }
    }

    /// Bytes currently reserved.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// An empty reservation, grown with [`grow`](Self::grow).
    pub fn empty(&self) -> Reservation {
        Reservation {
            used: self.used.clone(),
            bytes: 0,
        }
    }

    /// Adds `bytes` to `r` if the budget allows.
    pub fn grow(&self, r: &mut Reservation, bytes: usize) -> bool {
        let mut current = self.used.load(Ordering::Acquire);
        loop {
            let Some(next) = current.checked_add(bytes).filter(|n| *n <= self.limit) else {
                return false;
            };
            match self.used.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    r.bytes += bytes;
                    return true;
                }
                Err(seen) => current = seen,
            }
        }
    }

    /// Reads a whole body of at most `max` bytes, charging each chunk to the budget as it
    /// arrives (a declared `content-length` above `max` is refused before reading).
    /// A body whose stream fails with a [`BodyError`] (as the server's request bodies do when
    /// too slow, or when the server's read budget is spent) fails with that error.
    pub async fn read<B>(&self, body: B, max: usize) -> Result<(Bytes, Reservation), BodyError>
    where
        B: http_body::Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if body.size_hint().lower() > max as u64 {
            return Err(BodyError::TooLarge { limit: max });
        }
        let mut reservation = self.empty();
        let mut out = BytesMut::new();
        let mut body = std::pin::pin!(body);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| match e.into().downcast::<BodyError>() {
                Ok(known) => *known,
                Err(other) => BodyError::Unreadable(other.to_string()),
            })?;
            let Ok(mut data) = frame.into_data() else {
                continue; // trailers
            };
            let data = data.copy_to_bytes(data.remaining());
            if out.len().saturating_add(data.len()) > max {
                return Err(BodyError::TooLarge { limit: max });
            }
            if !self.grow(&mut reservation, data.len()) {
                return Err(BodyError::Busy);
            }
            out.extend_from_slice(&data);
        }
        Ok((out.freeze(), reservation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[tokio::test]
    async fn reservations_are_bounded_and_given_back_when_dropped() {
        let budget = Budget::new(10);
        let (body, held) = budget
            .read(Full::new(Bytes::from_static(b"12345678")), 100)
            .await
            .expect("fits");
        assert_eq!(&body[..], b"12345678");
        assert_eq!(budget.used(), 8);
        assert_eq!(
            budget
                .read(Full::new(Bytes::from_static(b"abc")), 100)
                .await
                .map(|_| ()),
            Err(BodyError::Busy)
        );
        drop(held);
        assert_eq!(budget.used(), 0);
        assert_eq!(
            budget
                .read(Full::new(Bytes::from_static(b"abc")), 2)
                .await
                .map(|_| ()),
            Err(BodyError::TooLarge { limit: 2 })
        );
        assert_eq!(budget.used(), 0, "a refused body holds nothing");
    }

    #[tokio::test]
    async fn a_body_of_exactly_the_limit_is_read_whatever_its_size_hint() {
        let budget = Budget::new(100);
        let exact = Full::new(Bytes::from_static(b"12345"));
        assert!(budget.read(exact, 5).await.is_ok(), "declared size = limit");
        let unsized_body = http_body_util::StreamBody::new(futures_util::stream::iter([
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from_static(b"123"))),
            Ok(http_body::Frame::data(Bytes::from_static(b"45"))),
        ]));
        assert!(
            budget.read(unsized_body, 5).await.is_ok(),
            "streamed size = limit"
        );
        let over = http_body_util::StreamBody::new(futures_util::stream::iter([
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from_static(b"123"))),
            Ok(http_body::Frame::data(Bytes::from_static(b"456"))),
        ]));
        assert_eq!(
            budget.read(over, 5).await.map(|_| ()),
            Err(BodyError::TooLarge { limit: 5 })
        );
    }
}
