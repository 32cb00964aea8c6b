//! One direction of a TCP byte stream put back in order from segments that come out of order, again,
//! or overlapping: for capture replay, for forwarded flows seen on TC, and for the bytes the kernel
//! hands over at egress (`tcp_egress`), which see TCP's own retransmissions.

use std::collections::BTreeMap;

/// Bytes of one direction that are reassembled and inspected; the inspector looks at no more.
pub const STREAM_BUDGET: usize = crate::extract::INSPECTION_BUDGET;

/// One direction of a TCP connection, put back in sequence order.
#[derive(Debug, Default)]
pub struct Stream {
    /// The sequence number of the next byte to deliver; unknown until a SYN or the first data.
    next_seq: Option<u32>,
    /// Segments that arrived ahead of `next_seq`, by their first sequence number.
    ahead: BTreeMap<u32, Vec<u8>>,
    ahead_bytes: usize,
    delivered: usize,
    /// Replay: the side sent its FIN.
    pub(crate) fin: bool,
}

impl Stream {
    /// A stream whose next byte is `seq` (a stream offset where there is no sequence number).
    pub fn starting_at(seq: u32) -> Stream {
        Stream { next_seq: Some(seq), ..Stream::default() }
    }

    /// Bytes delivered in order so far.
    pub fn delivered(&self) -> usize {
        self.delivered
    }

    pub fn on_syn(&mut self, seq: u32) {
        // A repeated SYN (retransmission) restates the same number.
        self.next_seq.get_or_insert(seq.wrapping_add(1));
    }

    /// Accepts a segment's payload and returns the bytes that are now in order, if any.
    pub fn on_data(&mut self, seq: u32, payload: &[u8]) -> Vec<u8> {
        let next = *self.next_seq.get_or_insert(seq);
        let mut ready = Vec::new();
        if self.delivered >= STREAM_BUDGET {
            return ready;
        }
        // Signed distance, so that sequence numbers wrapping past 2^32 still order correctly.
        let ahead_by = seq.wrapping_sub(next) as i32;
        if ahead_by > 0 {
            if self.ahead_bytes + payload.len() <= STREAM_BUDGET {
                self.ahead_bytes += payload.len();
                if let Some(old) = self.ahead.insert(seq, payload.to_vec()) {
                    self.ahead_bytes -= old.len();
                }
            }
            return ready;
        }
        self.take_in_order(ahead_by, payload, &mut ready);
        // Segments held back may now follow on.
        while let Some(next) = self.next_seq
            && let Some(first) = self.ahead.keys().copied().find(|&s| s.wrapping_sub(next) as i32 <= 0)
            && let Some(held) = self.ahead.remove(&first)
        {
            self.ahead_bytes -= held.len();
            self.take_in_order(first.wrapping_sub(next) as i32, &held, &mut ready);
        }
        ready
    }

    /// Appends the part of a segment starting `-offset` bytes before `next_seq` that is new.
    fn take_in_order(&mut self, offset: i32, payload: &[u8], ready: &mut Vec<u8>) {
        let already = usize::try_from(offset.unsigned_abs()).unwrap_or(usize::MAX);
        let Some(fresh) = payload.get(already..) else {
            return;
        };
        let room = STREAM_BUDGET - self.delivered;
        let fresh = &fresh[..fresh.len().min(room)];
        if let Some(next) = &mut self.next_seq {
            // The sequence space moves by the whole segment, including any bytes past the budget.
            *next = next.wrapping_add((payload.len() - already) as u32);
        }
        self.delivered += fresh.len();
        ready.extend_from_slice(fresh);
    }

    /// Data captured past a hole that never filled.
    pub fn has_gap(&self) -> bool {
        !self.ahead.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_reorders_and_drops_retransmissions() {
        let mut stream = Stream::default();
        stream.on_syn(u32::MAX - 2);
        let base = u32::MAX - 1;
        // "world" arrives before "hello ", sequence numbers wrap past 2^32 in between.
        assert!(stream.on_data(base.wrapping_add(6), b"world").is_empty());
        assert_eq!(stream.on_data(base, b"hello "), b"hello world");
        // A retransmission of old bytes, and one overlapping old and new ones.
        assert!(stream.on_data(base, b"hello ").is_empty());
        assert_eq!(stream.on_data(base.wrapping_add(9), b"ld!"), b"!");
        assert!(!stream.has_gap());
        stream.on_data(base.wrapping_add(100), b"late");
        assert!(stream.has_gap());
    }

    #[test]
    fn stream_stops_at_the_budget() {
        let mut stream = Stream::default();
        let chunk = vec![0u8; 40_000];
        assert_eq!(stream.on_data(1, &chunk).len(), 40_000);
        assert_eq!(stream.on_data(40_001, &chunk).len(), STREAM_BUDGET - 40_000);
        assert!(stream.on_data(80_001, &chunk).is_empty());
    }
}
