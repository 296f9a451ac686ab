//! The lease ends of a shard: an indexed 4-ary min-heap of (deadline, slot).
//!
//! A shard may hold a million leases, so this is the part of the timers that has to be
//! small: one 16-byte entry per lease in one vector, plus a 4-byte position per slot so a
//! lease can be found, moved and removed exactly (no stale entries, no lazy deletion: the
//! heap holds one entry per armed lease, whatever happened before). A B-tree set of the same
//! leases cost about 80 bytes each.
//!
//! Order: by deadline, then slot number, so equal deadlines come out in a fixed order.
//! Four children per node keep the heap half as deep as a binary one (fewer cache misses
//! when the earliest lease is taken out) while a node's children still span one cache line
//! or two. Costs: arm, move and remove are O(log n), reading the earliest is O(1); a new
//! lease usually ends after most others and so stays near the bottom.
//!
//! Invariants: `positions[entries[i].slot] == i` for every entry, every other slot's
//! position is [`NOT_ARMED`], and each entry is no earlier than its parent.

use super::clock::Moment;

const ARITY: usize = 4;
/// The position of a slot that has no lease in the heap.
const NOT_ARMED: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LeaseEnd {
    pub deadline: Moment,
    pub slot: u32,
}

#[derive(Debug, Default)]
pub struct LeaseHeap {
    entries: Vec<LeaseEnd>,
    /// For each slot number, the index of its entry in `entries`, or [`NOT_ARMED`].
    positions: Vec<u32>,
}

impl LeaseHeap {
    /// Arms the lease of `slot`, which must have none.
    pub fn insert(&mut self, slot: u32, deadline: Moment) {
        let index = slot as usize;
        if index >= self.positions.len() {
            self.positions.resize(index + 1, NOT_ARMED);
        }
        assert_eq!(
            self.positions[index], NOT_ARMED,
            "lease of slot {slot} armed twice"
        );
        let position = self.entries.len();
        assert!(position < NOT_ARMED as usize, "more leases than positions");
        let entry = LeaseEnd { deadline, slot };
        self.entries.push(entry);
        self.sift_up(position, entry);
    }

    /// Moves every deadline by the same distance, `origin` from the clock's origin (see
    /// [`Moment::counted_from`]): the order, and so the heap, stays as it is. O(n).
    pub fn count_from(&mut self, origin: Moment) {
        for entry in &mut self.entries {
            entry.deadline = entry.deadline.counted_from(origin);
        }
    }

    /// Removes the lease of `slot`, which must be armed at `deadline`.
    pub fn remove(&mut self, slot: u32, deadline: Moment) {
        let removed = self.remove_if_armed(slot, deadline);
        assert!(removed, "lease of slot {slot} was not armed");
    }

    /// Removes the lease of `slot` if it is armed (it is not once it was taken out as due);
    /// when armed, it must be at `deadline`. Returns whether it was.
    pub fn remove_if_armed(&mut self, slot: u32, deadline: Moment) -> bool {
        let Some(position) = self.position(slot) else {
            return false;
        };
        debug_assert_eq!(self.entries[position].deadline, deadline, "slot {slot}");
        self.remove_at(position);
        true
    }

    /// Moves the armed lease of `slot` from `previous` to `deadline`.
    pub fn reschedule(&mut self, slot: u32, previous: Moment, deadline: Moment) {
        let position = self
            .position(slot)
            .unwrap_or_else(|| panic!("lease of slot {slot} was not armed"));
        debug_assert_eq!(self.entries[position].deadline, previous, "slot {slot}");
        let entry = LeaseEnd { deadline, slot };
        if deadline < previous {
            self.sift_up(position, entry);
        } else {
            self.sift_down(position, entry);
        }
    }

    /// The earliest lease end, if any.
    pub fn first(&self) -> Option<LeaseEnd> {
        self.entries.first().copied()
    }

    /// Removes and returns the earliest lease end.
    pub fn pop_first(&mut self) -> Option<LeaseEnd> {
        (!self.entries.is_empty()).then(|| self.remove_at(0))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn position(&self, slot: u32) -> Option<usize> {
        match self.positions.get(slot as usize) {
            Some(&position) if position != NOT_ARMED => Some(position as usize),
            _ => None,
        }
    }

    fn remove_at(&mut self, position: usize) -> LeaseEnd {
        let removed = self.entries[position];
        self.positions[removed.slot as usize] = NOT_ARMED;
        let last = self
            .entries
            .pop()
            .expect("the heap holds the removed entry");
        if position < self.entries.len() {
            // The last entry fills the hole, then moves to where it belongs.
            if position > 0 && last < self.entries[parent(position)] {
                self.sift_up(position, last);
            } else {
                self.sift_down(position, last);
            }
        }
        removed
    }

    /// Puts `entry` at `position` or above it, moving later parents down.
    fn sift_up(&mut self, mut position: usize, entry: LeaseEnd) {
        while position > 0 {
            let parent = parent(position);
            let above = self.entries[parent];
            if above <= entry {
                break;
            }
            self.place(position, above);
            position = parent;
        }
        self.place(position, entry);
    }

    /// Puts `entry` at `position` or below it, moving earlier children up.
    fn sift_down(&mut self, mut position: usize, entry: LeaseEnd) {
        let length = self.entries.len();
        loop {
            let first_child = position * ARITY + 1;
            if first_child >= length {
                break;
            }
            let children = first_child..(first_child + ARITY).min(length);
            let mut earliest = first_child;
            for child in children {
                if self.entries[child] < self.entries[earliest] {
                    earliest = child;
                }
            }
            let below = self.entries[earliest];
            if below >= entry {
                break;
            }
            self.place(position, below);
            position = earliest;
        }
        self.place(position, entry);
    }

    fn place(&mut self, position: usize, entry: LeaseEnd) {
        self.entries[position] = entry;
        self.positions[entry.slot as usize] = position as u32;
    }

    #[cfg(test)]
    fn check_invariants(&self) {
        for (position, entry) in self.entries.iter().enumerate() {
            assert_eq!(self.positions[entry.slot as usize] as usize, position);
            if position > 0 {
                assert!(self.entries[parent(position)] <= *entry);
            }
        }
        let armed = self.positions.iter().filter(|&&p| p != NOT_ARMED).count();
        assert_eq!(armed, self.entries.len());
    }
}

fn parent(position: usize) -> usize {
    (position - 1) / ARITY
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use proptest::prelude::*;

    use super::*;
    use crate::shard::clock::Clock;

    #[derive(Debug, Clone)]
    enum Step {
        Insert { slot: u32, deadline: u16 },
        Remove { slot: u32 },
        Reschedule { slot: u32, deadline: u16 },
        PopFirst,
    }

    fn step_strategy() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0..64u32, any::<u16>()).prop_map(|(slot, deadline)| Step::Insert { slot, deadline }),
            2 => (0..64u32).prop_map(|slot| Step::Remove { slot }),
            2 => (0..64u32, any::<u16>()).prop_map(|(slot, deadline)| Step::Reschedule { slot, deadline }),
            1 => Just(Step::PopFirst),
        ]
    }

    fn moment(milliseconds: u16) -> Moment {
        let mut clock = Clock::default();
        clock
            .moment(std::time::Instant::now())
            .after_ms(u64::from(milliseconds))
    }

    proptest! {
        /// Against an ordered set of the same (deadline, slot) pairs: the same earliest
        /// entry after every step, and the same entries in the same order when drained.
        #[test]
        fn behaves_like_an_ordered_set(steps in proptest::collection::vec(step_strategy(), 1..300)) {
            let mut heap = LeaseHeap::default();
            let mut model = BTreeSet::new();
            let mut armed: HashMap<u32, Moment> = HashMap::new();
            for step in steps {
                match step {
                    Step::Insert { slot, deadline } if !armed.contains_key(&slot) => {
                        let deadline = moment(deadline);
                        heap.insert(slot, deadline);
                        model.insert(LeaseEnd { deadline, slot });
                        armed.insert(slot, deadline);
                    }
                    Step::Remove { slot } => {
                        let deadline = armed.remove(&slot).unwrap_or(moment(0));
                        let removed = heap.remove_if_armed(slot, deadline);
                        prop_assert_eq!(removed, model.remove(&LeaseEnd { deadline, slot }));
                    }
                    Step::Reschedule { slot, deadline } => {
                        if let Some(previous) = armed.get_mut(&slot) {
                            let deadline = moment(deadline);
                            heap.reschedule(slot, *previous, deadline);
                            model.remove(&LeaseEnd { deadline: *previous, slot });
                            model.insert(LeaseEnd { deadline, slot });
                            *previous = deadline;
                        }
                    }
                    Step::PopFirst => {
                        let popped = heap.pop_first();
                        prop_assert_eq!(popped, model.pop_first());
                        if let Some(popped) = popped {
                            armed.remove(&popped.slot);
                        }
                    }
                    Step::Insert { .. } => {}
                }
                heap.check_invariants();
                prop_assert_eq!(heap.first(), model.first().copied());
                prop_assert_eq!(heap.len(), model.len());
            }
            let drained: Vec<LeaseEnd> = std::iter::from_fn(|| heap.pop_first()).collect();
            prop_assert_eq!(drained, model.into_iter().collect::<Vec<_>>());
        }
    }

    #[test]
    #[should_panic(expected = "armed twice")]
    fn arming_a_lease_twice_is_a_bug() {
        let mut heap = LeaseHeap::default();
        heap.insert(3, moment(1));
        heap.insert(3, moment(2));
    }
}
