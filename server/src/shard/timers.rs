//! Deadlines of a shard: lease ends and waiter deadlines, taken out in one order.
//!
//! Each live lease and each queued waiter has exactly one entry: extending a lease moves
//! its entry, and a waiter that leaves its queue (granted, cancelled, timed out) takes its
//! entry with it. So the timers never hold more than one entry per held lock plus one per
//! waiter, however often leases are extended or re-acquired, and a timer that fires always
//! applies.
//!
//! Leases, up to one per key, live in a compact indexed heap ([`LeaseHeap`], 20 bytes each);
//! waiters, bounded per lock and rarely many, in an ordered set. Due timers come out in one
//! order over both: by deadline, then slot, then a lease before a waiter, then waiter id.
//! Updates are O(log n).

use std::collections::BTreeSet;

use super::clock::Moment;
use super::lease_heap::LeaseHeap;

/// The deadline of one queued waiter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct WaiterTimer {
    pub deadline: Moment,
    pub slot: u32,
    /// The waiter's id, unique in its table.
    pub id: u64,
}

/// A timer that came due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// The lease of the lock in `slot` ends.
    Lease { deadline: Moment, slot: u32 },
    /// A waiter has waited long enough.
    Waiter(WaiterTimer),
}

impl Timer {
    pub fn deadline(&self) -> Moment {
        match self {
            Timer::Lease { deadline, .. } => *deadline,
            Timer::Waiter(waiter) => waiter.deadline,
        }
    }

    pub fn slot(&self) -> u32 {
        match self {
            Timer::Lease { slot, .. } => *slot,
            Timer::Waiter(waiter) => waiter.slot,
        }
    }
}

#[derive(Debug, Default)]
pub struct TimerQueue {
    leases: LeaseHeap,
    waiters: BTreeSet<WaiterTimer>,
}

impl TimerQueue {
    /// Arms the lease of `slot`, which must have none.
    pub fn insert_lease(&mut self, slot: u32, deadline: Moment) {
        self.leases.insert(slot, deadline);
    }

    /// Moves every lease end by `origin` (see [`LeaseHeap::count_from`]); only for a queue
    /// without waiters.
    pub fn count_leases_from(&mut self, origin: Moment) {
        assert!(self.waiters.is_empty(), "waiter deadlines are absolute");
        self.leases.count_from(origin);
    }

    /// Removes the lease of `slot`, which must be armed at `deadline`.
    pub fn remove_lease(&mut self, slot: u32, deadline: Moment) {
        self.leases.remove(slot, deadline);
    }

    /// Removes the lease of `slot` at `deadline` unless it already fired.
    pub fn remove_lease_if_armed(&mut self, slot: u32, deadline: Moment) {
        self.leases.remove_if_armed(slot, deadline);
    }

    /// Moves the armed lease of `slot` from `previous` to `deadline`.
    pub fn move_lease(&mut self, slot: u32, previous: Moment, deadline: Moment) {
        self.leases.reschedule(slot, previous, deadline);
    }

    pub fn insert_waiter(&mut self, timer: WaiterTimer) {
        let inserted = self.waiters.insert(timer);
        debug_assert!(inserted, "timer {timer:?} armed twice");
    }

    /// Removes a waiter's timer, which must be armed.
    pub fn remove_waiter(&mut self, timer: WaiterTimer) {
        let removed = self.waiters.remove(&timer);
        debug_assert!(removed, "timer {timer:?} was not armed");
    }

    /// The earliest deadline, if any.
    pub fn next_deadline(&self) -> Option<Moment> {
        self.first().map(|timer| timer.deadline())
    }

    /// Removes and returns the earliest timer if its deadline is at or before `now`.
    pub fn pop_due(&mut self, now: Moment) -> Option<Timer> {
        match self.first()? {
            Timer::Lease { deadline, .. } if deadline <= now => {
                let lease = self.leases.pop_first().expect("first is a lease");
                Some(Timer::Lease {
                    deadline: lease.deadline,
                    slot: lease.slot,
                })
            }
            Timer::Waiter(waiter) if waiter.deadline <= now => {
                self.waiters.pop_first().map(Timer::Waiter)
            }
            _ => None,
        }
    }

    /// Entries: one per held lock plus one per waiter.
    pub fn len(&self) -> usize {
        self.leases.len() + self.waiters.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty() && self.waiters.is_empty()
    }

    /// The earlier of the first lease and the first waiter; a lease first on a tie of
    /// deadline and slot.
    fn first(&self) -> Option<Timer> {
        let lease = self.leases.first();
        let waiter = self.waiters.first();
        match (lease, waiter) {
            (Some(lease), Some(waiter))
                if (waiter.deadline, waiter.slot) < (lease.deadline, lease.slot) =>
            {
                Some(Timer::Waiter(*waiter))
            }
            (Some(lease), _) => Some(Timer::Lease {
                deadline: lease.deadline,
                slot: lease.slot,
            }),
            (None, waiter) => waiter.copied().map(Timer::Waiter),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::shard::clock::Clock;

    #[test]
    fn leases_and_waiters_come_out_in_one_order() {
        let zero = Clock::default().moment(Instant::now());
        let at = |milliseconds| zero.after_ms(milliseconds);
        let mut timers = TimerQueue::default();
        timers.insert_waiter(WaiterTimer {
            deadline: at(5),
            slot: 1,
            id: 7,
        });
        timers.insert_lease(1, at(5));
        timers.insert_lease(0, at(5));
        timers.insert_waiter(WaiterTimer {
            deadline: at(3),
            slot: 9,
            id: 8,
        });
        timers.insert_lease(2, at(9));
        timers.move_lease(2, at(9), at(1));
        assert_eq!(timers.len(), 5);
        assert_eq!(timers.next_deadline(), Some(at(1)));
        assert_eq!(timers.pop_due(zero), None);
        let due: Vec<Timer> = std::iter::from_fn(|| timers.pop_due(at(5))).collect();
        assert_eq!(
            due,
            [
                Timer::Lease {
                    deadline: at(1),
                    slot: 2
                },
                Timer::Waiter(WaiterTimer {
                    deadline: at(3),
                    slot: 9,
                    id: 8
                }),
                Timer::Lease {
                    deadline: at(5),
                    slot: 0
                },
                Timer::Lease {
                    deadline: at(5),
                    slot: 1
                },
                Timer::Waiter(WaiterTimer {
                    deadline: at(5),
                    slot: 1,
                    id: 7
                }),
            ]
        );
        assert!(timers.is_empty());
    }
}
