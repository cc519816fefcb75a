//! Request correlation over one session: fresh ids, responses matched to requests, deadlines,
//! and failure of everything pending when the session closes.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::error::TooManyPending;
use crate::session::CloseReason;

/// A request id, unique within one [`Requests`] table. Written on the wire in lowercase
/// base 36 (the original browserver used base-36 ids in `x-brow-req-id`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::id::base36(u128::from(self.0)))
    }
}

impl FromStr for RequestId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 36).map(RequestId)
    }
}

/// Why a pending request ended without an answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unanswered {
    /// Its deadline passed.
    TimedOut,
    /// The session closed while it waited.
    SessionClosed(CloseReason),
}

/// Output of the table.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestEvent<T> {
    /// The request will never be answered (a proxy answers 504).
    Failed {
        /// The request.
        id: RequestId,
        /// What the caller stored with it.
        value: T,
        /// Why.
        reason: Unanswered,
    },
}

/// What [`Requests::resolve`] found for a response id.
#[derive(Debug, PartialEq, Eq)]
pub enum Resolved<T> {
    /// The response answers this pending request.
    Matched(T),
    /// No request with this id was ever issued.
    Unknown,
    /// The request was already answered, timed out or failed.
    Repeated,
}

/// Counters kept by the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestStats {
    /// Responses matched to a pending request.
    pub matched: u64,
    /// Responses whose id was never issued.
    pub unknown: u64,
    /// Responses for a request no longer pending.
    pub repeated: u64,
    /// Requests failed by their deadline.
    pub timed_out: u64,
}

/// The pending requests of one session.
///
/// Invariants: every pending request has exactly one deadline entry; ids are never reused;
/// every inserted request leaves exactly once, through `resolve` or a
/// [`RequestEvent::Failed`].
#[derive(Debug)]
pub struct Requests<T> {
    next_id: u64,
    pending: HashMap<u64, (Instant, T)>,
    deadlines: BTreeSet<(Instant, u64)>,
    max_pending: usize,
    events: VecDeque<RequestEvent<T>>,
    stats: RequestStats,
}

impl<T> Requests<T> {
    /// An empty table that admits at most `max_pending` requests at once.
    pub fn new(max_pending: usize) -> Self {
        Requests {
            next_id: 0,
            pending: HashMap::new(),
            deadlines: BTreeSet::new(),
            max_pending,
            events: VecDeque::new(),
            stats: RequestStats::default(),
        }
    }

    /// Registers a request that must be answered within `timeout` of `now`.
    pub fn insert(
        &mut self,
        now: Instant,
        timeout: Duration,
        value: T,
    ) -> Result<RequestId, TooManyPending> {
        if self.pending.len() >= self.max_pending {
            return Err(TooManyPending {
                limit: self.max_pending,
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        let deadline = now + timeout;
        self.pending.insert(id, (deadline, value));
        self.deadlines.insert((deadline, id));
        Ok(RequestId(id))
    }

    /// Matches a response to its request. Unknown and repeated ids are counted and ignored.
    pub fn resolve(&mut self, id: RequestId) -> Resolved<T> {
        match self.pending.remove(&id.0) {
            Some((deadline, value)) => {
                self.deadlines.remove(&(deadline, id.0));
                self.stats.matched += 1;
                Resolved::Matched(value)
            }
            None if id.0 < self.next_id => {
                self.stats.repeated += 1;
                Resolved::Repeated
            }
            None => {
                self.stats.unknown += 1;
                Resolved::Unknown
            }
        }
    }

    /// How many requests wait.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether none wait.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The earliest request deadline.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(at, _)| at)
    }

    /// Fails every request whose deadline is at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some((_, value)) = self.pending.remove(&id) {
                self.stats.timed_out += 1;
                self.events.push_back(RequestEvent::Failed {
                    id: RequestId(id),
                    value,
                    reason: Unanswered::TimedOut,
                });
            }
        }
    }

    /// The session closed: every pending request fails, oldest first.
    pub fn fail_all(&mut self, reason: &CloseReason) {
        let mut ids: Vec<u64> = self.pending.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some((deadline, value)) = self.pending.remove(&id) {
                self.deadlines.remove(&(deadline, id));
                self.events.push_back(RequestEvent::Failed {
                    id: RequestId(id),
                    value,
                    reason: Unanswered::SessionClosed(reason.clone()),
                });
            }
        }
    }

    /// The next failure to report.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<RequestEvent<T>> {
        self.events.pop_front()
    }

    /// Counters.
    pub fn stats(&self) -> RequestStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn request_ids_are_fresh_and_unique() {
        let mut t = Requests::new(10);
        let now = Instant::now();
        let a = t.insert(now, SEC, ()).ok();
        let b = t.insert(now, SEC, ()).ok();
        assert!(a.is_some() && b.is_some() && a != b);
    }

    #[test]
    fn response_is_matched_to_its_request() {
        let mut t = Requests::new(10);
        let now = Instant::now();
        let a = t.insert(now, SEC, "a").ok();
        let b = t.insert(now, SEC, "b").ok();
        assert_eq!(t.resolve(b.expect("b")), Resolved::Matched("b"));
        assert_eq!(t.resolve(a.expect("a")), Resolved::Matched("a"));
        assert!(t.is_empty());
    }

    #[test]
    fn unknown_and_repeated_response_ids_are_ignored_and_counted() {
        let mut t = Requests::new(10);
        let now = Instant::now();
        let a = t.insert(now, SEC, ()).expect("insert");
        assert_eq!(t.resolve(a), Resolved::Matched(()));
        assert_eq!(t.resolve(a), Resolved::Repeated);
        assert_eq!(t.resolve(RequestId(999)), Resolved::Unknown);
        let s = t.stats();
        assert_eq!((s.matched, s.repeated, s.unknown), (1, 1, 1));
    }

    #[test]
    fn a_request_fails_at_its_deadline_and_not_before() {
        let mut t = Requests::new(10);
        let now = Instant::now();
        let a = t.insert(now, SEC, "a").expect("insert");
        assert_eq!(t.poll_timeout(), Some(now + SEC));
        t.handle_timeout(now + SEC / 2);
        assert_eq!(t.poll_event(), None);
        t.handle_timeout(now + SEC);
        assert_eq!(
            t.poll_event(),
            Some(RequestEvent::Failed {
                id: a,
                value: "a",
                reason: Unanswered::TimedOut
            })
        );
        assert_eq!(t.resolve(a), Resolved::Repeated, "a late answer is ignored");
    }

    #[test]
    fn every_pending_request_fails_when_the_session_closes() {
        let mut t = Requests::new(10);
        let now = Instant::now();
        t.insert(now, SEC, 1).ok();
        t.insert(now, SEC, 2).ok();
        t.fail_all(&CloseReason::PeerClosed);
        let failed: Vec<i32> = std::iter::from_fn(|| t.poll_event())
            .map(|RequestEvent::Failed { value, reason, .. }| {
                assert_eq!(reason, Unanswered::SessionClosed(CloseReason::PeerClosed));
                value
            })
            .collect();
        assert_eq!(failed, vec![1, 2]);
        assert_eq!(t.poll_timeout(), None);
    }

    #[test]
    fn pending_requests_are_bounded() {
        let mut t = Requests::new(1);
        let now = Instant::now();
        assert!(t.insert(now, SEC, ()).is_ok());
        assert_eq!(t.insert(now, SEC, ()), Err(TooManyPending { limit: 1 }));
    }

    #[test]
    fn request_ids_round_trip_through_their_text_form() {
        for n in [0, 35, 36, u64::MAX] {
            let id = RequestId(n);
            assert_eq!(id.to_string().parse::<RequestId>(), Ok(id));
        }
        assert_eq!(RequestId(35).to_string(), "z");
    }

    #[test]
    fn len_and_is_empty_count_the_requests_waiting() {
        let t = Instant::now();
        let mut r = Requests::new(8);
        assert!(r.is_empty());
        assert_eq!(r.len(), 0);
        let a = r.insert(t, SEC, 'a').expect("room");
        r.insert(t, SEC, 'b').expect("room");
        assert!(!r.is_empty());
        assert_eq!(r.len(), 2);
        assert_eq!(r.resolve(a), Resolved::Matched('a'));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn the_newest_id_answered_twice_is_repeated_and_the_next_unissued_one_unknown() {
        let t = Instant::now();
        let mut r = Requests::new(8);
        let a = r.insert(t, SEC, ()).expect("room");
        assert_eq!(r.resolve(a), Resolved::Matched(()));
        assert_eq!(r.resolve(a), Resolved::Repeated);
        assert_eq!(r.resolve(RequestId(a.0 + 1)), Resolved::Unknown);
        let stats = r.stats();
        assert_eq!((stats.matched, stats.repeated, stats.unknown), (1, 1, 1));
    }

    #[test]
    fn every_request_timed_out_is_counted() {
        let t = Instant::now();
        let mut r = Requests::new(8);
        for v in 0..3 {
            r.insert(t, SEC, v).expect("room");
        }
        r.handle_timeout(t + SEC);
        assert_eq!(r.stats().timed_out, 3);
        assert_eq!(std::iter::from_fn(|| r.poll_event()).count(), 3);
    }
}
