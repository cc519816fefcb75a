//! Outbound sequencing: every item the session sends gets the next sequence number and stays
//! retained until the peer acknowledges it.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::error::SendError;

/// What one sequenced outbound item carries.
///
/// Only [`Payload::Message`] belongs to the application; the other variants are protocol
/// control items that a transport maps to its own wire form (BrowserChannel: the `c`,
/// `noop` and `stop` arrays).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// The session announcement (always sequence 0 of a server-role session).
    Open,
    /// An application message.
    Message(Bytes),
    /// A keep-alive that consumes a sequence number (BrowserChannel's `["noop"]`).
    Keepalive,
    /// "Give up, do not reconnect" (BrowserChannel's `["stop"]`).
    Stop,
}

/// One item of a transmit batch: its sequence number and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// Position in the session's outbound sequence (BrowserChannel: the array id).
    pub seq: u64,
    /// What the item carries.
    pub payload: Payload,
}

/// The retained outbound queue.
///
/// Invariants: `retained` holds exactly the items with `acked < seq < next_seq`, in order;
/// `acked < next_unsent <= next_seq`; `buffered_bytes` is the sum of the retained message
/// lengths and never exceeds `limit`.
#[derive(Debug)]
pub(crate) struct Outbound {
    retained: VecDeque<Item>,
    next_seq: u64,
    next_unsent: u64,
    buffered_bytes: usize,
    limit: usize,
}

impl Outbound {
    pub(crate) fn new(limit: usize) -> Self {
        Outbound {
            retained: VecDeque::new(),
            next_seq: 0,
            next_unsent: 0,
            buffered_bytes: 0,
            limit,
        }
    }

    /// Appends an item; messages are checked against the byte limit first.
    pub(crate) fn push(&mut self, payload: Payload) -> Result<u64, SendError> {
        if let Payload::Message(data) = &payload {
            let len = data.len();
            if self.buffered_bytes + len > self.limit {
                return Err(SendError::BufferFull {
                    buffered: self.buffered_bytes,
                    len,
                    limit: self.limit,
                });
            }
            self.buffered_bytes += len;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.retained.push_back(Item { seq, payload });
        Ok(seq)
    }

    pub(crate) fn has_unsent(&self) -> bool {
        self.next_unsent < self.next_seq
    }

    /// Hands out every item not yet transmitted on the current path.
    pub(crate) fn take_unsent(&mut self) -> Vec<Item> {
        let skip = self.retained.len() - (self.next_seq - self.next_unsent) as usize;
        let items = self.retained.iter().skip(skip).cloned().collect();
        self.next_unsent = self.next_seq;
        items
    }

    /// Releases every item with `seq <= upto`, clamped to what was actually transmitted, and
    /// returns the sequence numbers of the released application messages, in order.
    pub(crate) fn ack(&mut self, upto: u64) -> Vec<u64> {
        let mut released = Vec::new();
        while let Some(front) = self.retained.front() {
            if front.seq > upto || front.seq >= self.next_unsent {
                break;
            }
            if let Some(item) = self.retained.pop_front()
                && let Payload::Message(data) = &item.payload
            {
                self.buffered_bytes -= data.len();
                released.push(item.seq);
            }
        }
        released
    }

    /// The downstream path was replaced: everything not acknowledged goes out again.
    pub(crate) fn rewind(&mut self) {
        self.next_unsent = self.retained.front().map_or(self.next_seq, |i| i.seq);
    }

    /// Empties the queue, returning the sequence numbers of the unacknowledged messages.
    pub(crate) fn drain_messages(&mut self) -> Vec<u64> {
        self.buffered_bytes = 0;
        self.next_unsent = self.next_seq;
        self.retained
            .drain(..)
            .filter(|i| matches!(i.payload, Payload::Message(_)))
            .map(|i| i.seq)
            .collect()
    }

    /// Sequence number of the last item transmitted, if any.
    pub(crate) fn last_sent(&self) -> Option<u64> {
        self.next_unsent.checked_sub(1)
    }

    pub(crate) fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    /// Transmitted but unacknowledged items, oldest first.
    pub(crate) fn in_flight(&self) -> impl Iterator<Item = &Item> {
        self.retained
            .iter()
            .take_while(|i| i.seq < self.next_unsent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(s: &'static str) -> Payload {
        Payload::Message(Bytes::from_static(s.as_bytes()))
    }

    #[test]
    fn each_send_gets_the_next_sequence_number() {
        let mut o = Outbound::new(1024);
        assert_eq!(o.push(Payload::Open).ok(), Some(0));
        assert_eq!(o.push(msg("a")).ok(), Some(1));
        assert_eq!(o.push(msg("b")).ok(), Some(2));
    }

    #[test]
    fn ack_releases_everything_up_to_and_including_n() {
        let mut o = Outbound::new(1024);
        for s in ["a", "b", "c"] {
            o.push(msg(s)).ok();
        }
        assert_eq!(o.take_unsent().len(), 3);
        assert_eq!(o.ack(1), vec![0, 1]);
        assert_eq!(o.buffered_bytes(), 1);
        assert_eq!(
            o.ack(1),
            Vec::<u64>::new(),
            "a repeated ack releases nothing"
        );
        assert_eq!(o.ack(2), vec![2]);
    }

    #[test]
    fn ack_is_clamped_to_what_was_transmitted() {
        let mut o = Outbound::new(1024);
        o.push(msg("a")).ok();
        o.take_unsent();
        o.push(msg("b")).ok();
        assert_eq!(o.ack(99), vec![0]);
        assert!(o.has_unsent());
    }

    #[test]
    fn control_items_are_released_without_reporting() {
        let mut o = Outbound::new(1024);
        o.push(Payload::Open).ok();
        o.push(Payload::Keepalive).ok();
        o.push(msg("x")).ok();
        o.take_unsent();
        assert_eq!(o.ack(2), vec![2]);
    }

    #[test]
    fn rewind_offers_every_unacknowledged_item_again_in_order() {
        let mut o = Outbound::new(1024);
        for s in ["a", "b", "c"] {
            o.push(msg(s)).ok();
        }
        o.take_unsent();
        o.ack(0);
        o.rewind();
        let again: Vec<u64> = o.take_unsent().iter().map(|i| i.seq).collect();
        assert_eq!(again, vec![1, 2]);
    }

    #[test]
    fn buffered_bytes_are_bounded() {
        let mut o = Outbound::new(4);
        assert!(o.push(msg("abc")).is_ok());
        assert!(matches!(
            o.push(msg("de")),
            Err(SendError::BufferFull {
                buffered: 3,
                len: 2,
                limit: 4
            })
        ));
        o.take_unsent();
        o.ack(0);
        assert!(o.push(msg("de")).is_ok(), "acknowledgement frees room");
    }

    #[test]
    fn a_message_that_fills_the_buffer_exactly_is_accepted() {
        let mut o = Outbound::new(4);
        assert!(o.push(msg("abcd")).is_ok());
        assert!(o.push(msg("e")).is_err());
    }

    #[test]
    fn in_flight_is_what_was_transmitted_and_not_acknowledged() {
        let mut o = Outbound::new(1 << 20);
        assert_eq!(o.last_sent(), None);
        for m in ["a", "b", "c"] {
            o.push(msg(m)).expect("room");
        }
        assert_eq!(o.in_flight().count(), 0, "nothing transmitted yet");
        let sent = o.take_unsent();
        assert_eq!(sent.len(), 3);
        assert_eq!(o.last_sent(), Some(2));
        o.push(msg("d")).expect("room");
        let in_flight: Vec<u64> = o.in_flight().map(|i| i.seq).collect();
        assert_eq!(
            in_flight,
            [0, 1, 2],
            "queued but unsent items are not in flight"
        );
        o.ack(0);
        let in_flight: Vec<u64> = o.in_flight().map(|i| i.seq).collect();
        assert_eq!(in_flight, [1, 2]);
    }
}
