//! Deadlines of a shard: lease ends and waiter deadlines, in one min-heap.
//!
//! Entries are never removed early: extending a lease or granting a waiter leaves the old
//! entry in place, and the table checks when an entry fires whether it still applies (the
//! slot's generation and the lease's current end). This keeps every update O(log n) with no
//! search; stale entries cost one pop each, at the time they would have fired.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// What a deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerKind {
    /// The holder's lease of the lock in this slot may have ended.
    Lease,
    /// The waiter with this id may have waited long enough.
    Waiter(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timer {
    pub deadline: Instant,
    pub slot: u32,
    pub generation: u32,
    pub kind: TimerKind,
}

#[derive(Debug, Default)]
pub struct TimerQueue {
    heap: BinaryHeap<Reverse<Timer>>,
}

impl TimerQueue {
    pub fn push(&mut self, timer: Timer) {
        self.heap.push(Reverse(timer));
    }

    /// The earliest deadline, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(timer)| timer.deadline)
    }

    /// Removes and returns the earliest timer if its deadline is at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        match self.heap.peek() {
            Some(Reverse(timer)) if timer.deadline <= now => self.heap.pop().map(|Reverse(t)| t),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}
