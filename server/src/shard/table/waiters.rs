//! The FIFO waiter queues of a table, kept out of the slots.
//!
//! Most locks never have a waiter, so a slot holds only the number of its queue (4 bytes,
//! [`NO_QUEUE`] when it has none) instead of a `VecDeque` (32 bytes). A lock gets a queue
//! when its first waiter comes and gives it back when its last one leaves; given-back
//! queues keep their buffers and are handed out again, so a steady flow of waiters
//! allocates nothing. Memory kept: one queue per lock that has waiters at the same time,
//! at most.
//!
//! Invariant: a queue in use is non-empty and belongs to exactly one slot; every other
//! queue is empty and on the free list.

use std::collections::VecDeque;

use bytes::Bytes;
use kahu_protocol::Durability;

use super::super::clock::Moment;

/// The queue number of a slot without waiters.
pub(super) const NO_QUEUE: u32 = u32::MAX;

#[derive(Debug)]
pub(super) struct Waiter<R> {
    pub id: u64,
    pub owner: Bytes,
    pub ttl_ms: u64,
    pub deadline: Moment,
    pub durability: Durability,
    pub reply: R,
}

#[derive(Debug)]
pub(super) struct WaiterQueues<R> {
    queues: Vec<VecDeque<Waiter<R>>>,
    free: Vec<u32>,
}

impl<R> Default for WaiterQueues<R> {
    fn default() -> Self {
        WaiterQueues {
            queues: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<R> WaiterQueues<R> {
    /// The waiters of queue `queue` (none for [`NO_QUEUE`]), first in line first.
    #[cfg(test)]
    pub fn iter(&self, queue: u32) -> impl Iterator<Item = &Waiter<R>> {
        let waiters = (queue != NO_QUEUE).then(|| &self.queues[queue as usize]);
        waiters.into_iter().flatten()
    }

    pub fn len(&self, queue: u32) -> usize {
        if queue == NO_QUEUE {
            0
        } else {
            self.queues[queue as usize].len()
        }
    }

    /// Queues `waiter` last in `*queue`, giving the slot a queue if it has none.
    pub fn push_back(&mut self, queue: &mut u32, waiter: Waiter<R>) {
        if *queue == NO_QUEUE {
            *queue = match self.free.pop() {
                Some(free) => free,
                None => {
                    let number = u32::try_from(self.queues.len()).expect("fewer queues than slots");
                    self.queues.push(VecDeque::new());
                    number
                }
            };
        }
        self.queues[*queue as usize].push_back(waiter);
    }

    /// Takes the first waiter out of `*queue`.
    pub fn pop_front(&mut self, queue: &mut u32) -> Option<Waiter<R>> {
        if *queue == NO_QUEUE {
            return None;
        }
        let waiter = self.queues[*queue as usize].pop_front();
        self.give_back_if_empty(queue);
        waiter
    }

    /// Takes the waiter with `id` out of `*queue`, if it is there.
    pub fn remove(&mut self, queue: &mut u32, id: u64) -> Option<Waiter<R>> {
        if *queue == NO_QUEUE {
            return None;
        }
        let waiters = &mut self.queues[*queue as usize];
        let position = waiters.iter().position(|waiter| waiter.id == id)?;
        let waiter = waiters.remove(position);
        self.give_back_if_empty(queue);
        waiter
    }

    /// Takes every waiter for which `leaves` is true out of `*queue`, in queue order.
    pub fn take_if(
        &mut self,
        queue: &mut u32,
        mut leaves: impl FnMut(&Waiter<R>) -> bool,
    ) -> Vec<Waiter<R>> {
        if *queue == NO_QUEUE {
            return Vec::new();
        }
        let waiters = &mut self.queues[*queue as usize];
        let mut leaving = Vec::new();
        for _ in 0..waiters.len() {
            let waiter = waiters.pop_front().expect("counted");
            if leaves(&waiter) {
                leaving.push(waiter);
            } else {
                waiters.push_back(waiter);
            }
        }
        self.give_back_if_empty(queue);
        leaving
    }

    fn give_back_if_empty(&mut self, queue: &mut u32) {
        if self.queues[*queue as usize].is_empty() {
            self.free.push(*queue);
            *queue = NO_QUEUE;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter(id: u64) -> Waiter<()> {
        Waiter {
            id,
            owner: Bytes::from_static(b"owner"),
            ttl_ms: 1_000,
            deadline: Moment::default(),
            durability: Durability::Ephemeral,
            reply: (),
        }
    }

    fn ids(queues: &WaiterQueues<()>, queue: u32) -> Vec<u64> {
        queues.iter(queue).map(|waiter| waiter.id).collect()
    }

    #[test]
    fn a_queue_is_held_only_while_it_has_waiters_and_is_reused() {
        let mut queues = WaiterQueues::default();
        let (mut first, mut second) = (NO_QUEUE, NO_QUEUE);
        queues.push_back(&mut first, waiter(1));
        queues.push_back(&mut first, waiter(2));
        queues.push_back(&mut second, waiter(3));
        assert_ne!(first, second);
        assert_eq!(ids(&queues, first), [1, 2]);
        assert_eq!(queues.pop_front(&mut first).map(|w| w.id), Some(1));
        assert_eq!(queues.remove(&mut first, 2).map(|w| w.id), Some(2));
        assert_eq!(first, NO_QUEUE, "empty: given back");
        assert_eq!(queues.len(first), 0);
        assert!(queues.pop_front(&mut first).is_none());
        let given_back = {
            let mut third = NO_QUEUE;
            queues.push_back(&mut third, waiter(4));
            third
        };
        assert_eq!(queues.queues.len(), 2, "the given-back queue was reused");
        assert_ne!(given_back, second);
    }

    #[test]
    fn take_if_keeps_the_order_of_both_parts() {
        let mut queues = WaiterQueues::default();
        let mut queue = NO_QUEUE;
        for id in 1..=6 {
            queues.push_back(&mut queue, waiter(id));
        }
        let taken: Vec<u64> = queues
            .take_if(&mut queue, |waiter| waiter.id % 2 == 0)
            .iter()
            .map(|waiter| waiter.id)
            .collect();
        assert_eq!(taken, [2, 4, 6]);
        assert_eq!(ids(&queues, queue), [1, 3, 5]);
        queues.take_if(&mut queue, |_| true);
        assert_eq!(queue, NO_QUEUE);
    }
}
