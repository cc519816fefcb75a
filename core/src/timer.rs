//! Timers as deadlines: a small fixed table, so that a spurious wake-up is harmless and
//! `poll_timeout` is a minimum over a handful of slots.

use std::time::{Duration, Instant};

/// The session's timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timer {
    /// A downstream path is attached and has been idle for the keep-alive interval.
    Keepalive = 0,
    /// No downstream path has been attached for the session timeout.
    SessionTimeout = 1,
    /// Inbound messages have waited the acknowledgement delay for their acknowledgement.
    Ack = 2,
}

const ALL: [Timer; 3] = [Timer::Keepalive, Timer::SessionTimeout, Timer::Ack];

#[derive(Debug, Default)]
pub(crate) struct Timers {
    deadlines: [Option<Instant>; 3],
}

impl Timers {
    /// Sets `timer` to `now + after`; a deadline past the clock's range (`Duration::MAX`)
    /// means "never".
    pub(crate) fn set_after(&mut self, timer: Timer, now: Instant, after: Duration) {
        self.deadlines[timer as usize] = now.checked_add(after);
    }

    pub(crate) fn is_set(&self, timer: Timer) -> bool {
        self.deadlines[timer as usize].is_some()
    }

    pub(crate) fn stop(&mut self, timer: Timer) {
        self.deadlines[timer as usize] = None;
    }

    pub(crate) fn stop_all(&mut self) {
        self.deadlines = [None; 3];
    }

    pub(crate) fn next(&self) -> Option<Instant> {
        self.deadlines.iter().flatten().min().copied()
    }

    /// Clears and returns the timers whose deadline is at or before `now`.
    pub(crate) fn take_expired(&mut self, now: Instant) -> impl Iterator<Item = Timer> + use<> {
        let mut fired = [None; 3];
        for t in ALL {
            if self.deadlines[t as usize].is_some_and(|at| at <= now) {
                self.deadlines[t as usize] = None;
                fired[t as usize] = Some(t);
            }
        }
        fired.into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_due_timers_fire() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        timers.set_after(Timer::Keepalive, t0, Duration::from_secs(20));
        timers.set_after(Timer::SessionTimeout, t0, Duration::from_secs(30));
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(20)));
        assert_eq!(timers.take_expired(t0 + Duration::from_secs(19)).count(), 0);
        let fired: Vec<_> = timers.take_expired(t0 + Duration::from_secs(20)).collect();
        assert_eq!(fired, vec![Timer::Keepalive]);
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(30)));
    }

    #[test]
    fn stop_all_leaves_no_deadline() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        timers.set_after(Timer::Keepalive, t0, Duration::from_secs(20));
        timers.set_after(Timer::SessionTimeout, t0, Duration::from_secs(30));
        timers.stop_all();
        assert_eq!(timers.next(), None);
        assert!(!timers.is_set(Timer::Keepalive));
        assert_eq!(timers.take_expired(t0 + Duration::from_secs(60)).count(), 0);
    }
}
