//! Bytes delivered to the application and not yet taken: a transport adds what it delivers
//! and the application's `recv` takes it back, so that a client cannot make the server hold
//! more than a bound for an application that does not read.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A shared count of unread bytes. Cheap to clone; clones share the count.
#[derive(Clone, Debug, Default)]
pub struct Unread(Arc<AtomicUsize>);

impl Unread {
    /// Counts `bytes` more as delivered; false (and nothing counted) if that would pass
    /// `limit`.
    pub fn deliver(&self, bytes: usize, limit: usize) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                n.checked_add(bytes).filter(|total| *total <= limit)
            })
            .is_ok()
    }

    /// The application took `bytes`.
    pub fn take(&self, bytes: usize) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(bytes))
            });
    }

    /// Bytes delivered and not yet taken.
    pub fn bytes(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_past_the_limit_are_refused_until_the_application_takes_some() {
        let unread = Unread::default();
        let app = unread.clone();
        assert!(unread.deliver(6, 10));
        assert!(unread.deliver(4, 10), "exactly the limit");
        assert!(!unread.deliver(1, 10));
        assert_eq!(unread.bytes(), 10, "a refused delivery counts nothing");
        app.take(6);
        assert!(unread.deliver(5, 10));
        app.take(100);
        assert_eq!(unread.bytes(), 0);
    }
}
