//! A bounded reorder buffer: items arrive tagged with sequence positions in any order, possibly
//! twice, and leave strictly in order, each position once.
//!
//! The session uses it for inbound messages; transports use it for their own request
//! ordering (BrowserChannel orders forward requests by `RID` before their maps are looked at).

use std::collections::BTreeMap;

/// What [`Reorder::insert`] did with an item.
#[derive(Debug, PartialEq, Eq)]
pub enum Inserted<T> {
    /// The item fills the next position: it (and any held successors) can now be popped.
    Ready,
    /// The item is ahead of a gap and is held until the gap fills.
    Held,
    /// The position was already passed or is already held: the item is handed back unused.
    Duplicate(T),
    /// The position lies beyond the window: the item is handed back unused.
    BeyondWindow(T),
}

/// A bounded reorder buffer.
///
/// Invariants: every held position is in `(next, next + window)`; `pop_ready` yields
/// positions `next, next + 1, …` with no gaps and never the same position twice.
#[derive(Debug, Clone)]
pub struct Reorder<T> {
    next: u64,
    window: u64,
    held: BTreeMap<u64, T>,
}

impl<T> Reorder<T> {
    /// A buffer expecting position `first` next, holding positions below `first + window`.
    pub fn new(first: u64, window: u64) -> Self {
        Reorder {
            next: first,
            window: window.max(1),
            held: BTreeMap::new(),
        }
    }

    /// Offers the item at `pos` (a peer-supplied number: any value is handled, the last one,
    /// `u64::MAX`, is refused as beyond the window).
    pub fn insert(&mut self, pos: u64, item: T) -> Inserted<T> {
        if pos < self.next || self.held.contains_key(&pos) {
            return Inserted::Duplicate(item);
        }
        // The last position is never accepted, so that `next` cannot step past `u64::MAX`.
        if pos - self.next >= self.window || pos == u64::MAX {
            return Inserted::BeyondWindow(item);
        }
        self.held.insert(pos, item);
        if pos == self.next {
            Inserted::Ready
        } else {
            Inserted::Held
        }
    }

    /// Takes the item at the next position, if it has arrived.
    pub fn pop_ready(&mut self) -> Option<(u64, T)> {
        let item = self.held.remove(&self.next)?;
        let pos = self.next;
        self.next += 1;
        Some((pos, item))
    }

    /// The next position that will be released.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// How many items wait behind a gap.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Drops everything held.
    pub fn clear(&mut self) {
        self.held.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_near_the_end_of_the_number_space_neither_overflow_nor_wrap() {
        let mut r = Reorder::new(u64::MAX - 1, 8);
        assert!(matches!(r.insert(u64::MAX - 1, 'a'), Inserted::Ready));
        assert_eq!(r.pop_ready(), Some((u64::MAX - 1, 'a')));
        assert!(matches!(
            r.insert(u64::MAX, 'b'),
            Inserted::BeyondWindow('b')
        ));
        assert!(matches!(r.insert(0, 'c'), Inserted::Duplicate('c')));
        assert_eq!(r.next(), u64::MAX);
    }

    fn drain(r: &mut Reorder<char>) -> String {
        std::iter::from_fn(|| r.pop_ready())
            .map(|(_, c)| c)
            .collect()
    }

    #[test]
    fn out_of_order_items_leave_in_order() {
        let mut r = Reorder::new(0, 16);
        assert_eq!(r.insert(2, 'c'), Inserted::Held);
        assert_eq!(r.insert(1, 'b'), Inserted::Held);
        assert_eq!(drain(&mut r), "");
        assert_eq!(r.insert(0, 'a'), Inserted::Ready);
        assert_eq!(drain(&mut r), "abc");
        assert_eq!(r.next(), 3);
    }

    #[test]
    fn duplicates_are_handed_back() {
        let mut r = Reorder::new(0, 16);
        r.insert(0, 'a');
        assert_eq!(r.insert(0, 'x'), Inserted::Duplicate('x'), "held twice");
        drain(&mut r);
        assert_eq!(
            r.insert(0, 'y'),
            Inserted::Duplicate('y'),
            "already released"
        );
    }

    #[test]
    fn a_gap_is_held_only_within_the_window() {
        let mut r = Reorder::new(10, 4);
        assert_eq!(r.insert(13, 'd'), Inserted::Held);
        assert_eq!(r.insert(14, 'e'), Inserted::BeyondWindow('e'));
        assert_eq!(r.held(), 1);
    }

    #[test]
    fn held_counts_what_waits_behind_a_gap_and_clear_drops_it() {
        let mut r = Reorder::new(0, 8);
        assert_eq!(r.held(), 0);
        assert!(matches!(r.insert(2, 'c'), Inserted::Held));
        assert!(matches!(r.insert(3, 'd'), Inserted::Held));
        assert_eq!(r.held(), 2);
        r.clear();
        assert_eq!(r.held(), 0);
        assert!(matches!(r.insert(0, 'a'), Inserted::Ready));
        assert_eq!(r.pop_ready(), Some((0, 'a')));
        assert_eq!(r.pop_ready(), None, "nothing held survives clear");
    }
}
