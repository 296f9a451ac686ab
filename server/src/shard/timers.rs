//! Deadlines of a shard: lease ends and waiter deadlines, in one ordered set.
//!
//! Each live lease and each queued waiter has exactly one entry: extending a lease moves
//! its entry, and a waiter that leaves its queue (granted, cancelled, timed out) takes its
//! entry with it. So the set never holds more than one entry per held lock plus one per
//! waiter, however often leases are extended or re-acquired, and a timer that fires always
//! applies. Updates are O(log n).

use std::collections::BTreeSet;
use std::time::Instant;

/// What a deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerKind {
    /// The lease of the lock in this slot ends.
    Lease,
    /// The waiter with this id has waited long enough.
    Waiter(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timer {
    pub deadline: Instant,
    pub slot: u32,
    pub kind: TimerKind,
}

#[derive(Debug, Default)]
pub struct TimerQueue {
    timers: BTreeSet<Timer>,
}

impl TimerQueue {
    pub fn insert(&mut self, timer: Timer) {
        let inserted = self.timers.insert(timer);
        debug_assert!(inserted, "timer {timer:?} armed twice");
    }

    /// Removes a timer that must be armed.
    pub fn remove(&mut self, timer: Timer) {
        let removed = self.timers.remove(&timer);
        debug_assert!(removed, "timer {timer:?} was not armed");
    }

    /// Removes a timer that may already have fired.
    pub fn remove_if_present(&mut self, timer: Timer) {
        self.timers.remove(&timer);
    }

    /// The earliest deadline, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.first().map(|timer| timer.deadline)
    }

    /// Removes and returns the earliest timer if its deadline is at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        match self.timers.first() {
            Some(timer) if timer.deadline <= now => self.timers.pop_first(),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.timers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.timers.is_empty()
    }
}
