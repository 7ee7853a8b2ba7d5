//! Acknowledgement tracking for one file: which byte ranges every sink confirmed, and the offset
//! that may be checkpointed.
//!
//! A source cuts a file into chunks covering contiguous ranges `[start, end)`. Sinks confirm
//! chunks in any order (several sinks, several deliveries in flight, retries). The checkpoint may
//! only move to the end of the longest confirmed prefix: if `[0, 10)` is still in flight while
//! `[10, 20)` was confirmed, a crash must re-read from 0, so the committed offset stays 0 until
//! `[0, 10)` is confirmed too, then jumps to 20.

use std::collections::BTreeMap;

/// Confirmed ranges of one file.
#[derive(Debug, Clone)]
pub struct AckTracker {
    committed: u64,
    /// Confirmed ranges beyond `committed`, by start.
    ahead: BTreeMap<u64, u64>,
}

impl AckTracker {
    /// A tracker whose prefix up to `offset` needs no confirmation (read before, or skipped).
    pub fn new(offset: u64) -> AckTracker {
        AckTracker {
            committed: offset,
            ahead: BTreeMap::new(),
        }
    }

    /// The end of the confirmed prefix: the offset a checkpoint may hold.
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Ranges confirmed out of order, waiting for the gap before them.
    pub fn waiting(&self) -> usize {
        self.ahead.len()
    }

    /// Records that `[start, end)` was confirmed; returns whether the committed offset moved.
    /// A range confirmed twice, or one already behind the committed offset, changes nothing.
    pub fn ack(&mut self, start: u64, end: u64) -> bool {
        if end <= self.committed || end <= start {
            return false;
        }
        if start > self.committed {
            let e = self.ahead.entry(start).or_insert(end);
            *e = (*e).max(end);
            return false;
        }
        self.committed = end;
        // Ranges that now touch the prefix join it.
        while let Some((&s, &e)) = self.ahead.first_key_value() {
            if s > self.committed {
                break;
            }
            self.ahead.pop_first();
            self.committed = self.committed.max(e);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Out-of-order confirmations advance the offset only once the gap is filled.
    #[test]
    fn out_of_order_becomes_contiguous() {
        let mut t = AckTracker::new(0);
        assert!(!t.ack(10, 20));
        assert!(!t.ack(30, 40));
        assert_eq!((t.committed(), t.waiting()), (0, 2));
        assert!(t.ack(0, 10));
        assert_eq!((t.committed(), t.waiting()), (20, 1));
        assert!(!t.ack(0, 10), "a repeated confirmation changes nothing");
        assert!(t.ack(20, 30));
        assert_eq!((t.committed(), t.waiting()), (40, 0));
    }

    /// Every order of confirming ten chunks ends at the last chunk's end, and the committed
    /// offset never passes an unconfirmed chunk.
    #[test]
    fn any_order_ends_at_the_end() {
        let chunks: Vec<(u64, u64)> = (0..10).map(|i| (i * 7 + 5, i * 7 + 12)).collect();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..500 {
            let mut order = chunks.clone();
            rng.shuffle(&mut order);
            let mut t = AckTracker::new(5);
            let mut done = Vec::new();
            for (s, e) in order {
                t.ack(s, e);
                done.push((s, e));
                let first_missing = chunks.iter().find(|c| !done.contains(c));
                let expect = first_missing.map_or(75, |c| c.0);
                assert_eq!(t.committed(), expect);
            }
            assert_eq!(t.waiting(), 0);
        }
    }

    /// Ranges before the starting offset (read in an earlier run) are ignored.
    #[test]
    fn ranges_behind_are_ignored() {
        let mut t = AckTracker::new(100);
        assert!(!t.ack(0, 50));
        assert!(!t.ack(60, 60));
        assert_eq!(t.committed(), 100);
        assert!(t.ack(100, 150));
        assert_eq!(t.committed(), 150);
    }
}
