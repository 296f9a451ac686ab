//! The lock table of one shard: holders, leases, FIFO waiters and fencing tokens.
//!
//! This is the lock contract of DESIGN.md section 2 as a pure data structure: it never reads
//! a clock (every call takes `now`), never touches a channel (replies are pushed onto an
//! output vector the worker sends after the turn), and is owned by one shard thread, so it
//! needs no lock. Tests drive it with made-up instants.
//!
//! Invariants, checked where cheap:
//! - at most one holder per key; a holder's lease is live while `now < expires_at`;
//! - every grant takes a token from the shard's [`TokenSource`], so tokens per lock grow
//!   strictly and are never 0; a same-owner re-acquire keeps the token and resets the lease;
//! - after [`LockTable::settle`], a lock with waiters has a holder (a free lock is handed to
//!   the first live waiter at once, FIFO);
//! - a slot with no holder and no waiters is removed from the index; its generation grows,
//!   so timers still pointing at it are recognised as stale.
//!
//! Storage: slots live in a slab (`Vec<Slot>` plus a free list) and the key index is a
//! `hashbrown::HashTable<u32>` of slot numbers hashed with the key hash the router already
//! computed, so each key is stored once and timers refer to slots by number.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hashbrown::HashTable;
use kahu_protocol::{
    Acquired, Busy, Durability, ErrorCode, Extend, Extended, Lock, LockInfo, NotHeld,
    ProtocolError, Released, Response, Unlock,
};

use super::timers::{Timer, TimerKind, TimerQueue};
use super::tokens::TokenSource;

/// Where a reply goes. The table keeps these for queued waiters.
pub trait ReplyTarget {
    /// The connection the request came on; its waiters are dropped when it closes.
    fn connection_id(&self) -> u64;
    /// True when nobody will read a reply any more: such a waiter is never granted.
    fn is_gone(&self) -> bool;
}

/// Replies produced by one call, sent by the worker after the turn.
pub type Replies<R> = Vec<(R, Response)>;

/// Counters a shard publishes in INFO.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    pub locks_held: u64,
    pub waiters: u64,
    pub grants_total: u64,
    pub reentries_total: u64,
    pub releases_total: u64,
    pub expiries_total: u64,
    pub extends_total: u64,
    pub busy_total: u64,
    pub wait_timeouts_total: u64,
}

#[derive(Debug)]
struct Holder {
    owner: Bytes,
    token: u64,
    expires_at: Instant,
    durability: Durability,
}

#[derive(Debug)]
struct Waiter<R> {
    id: u64,
    owner: Bytes,
    ttl_ms: u64,
    deadline: Instant,
    durability: Durability,
    reply: R,
}

#[derive(Debug)]
struct Slot<R> {
    key: Box<[u8]>,
    hash: u64,
    generation: u32,
    holder: Option<Holder>,
    last_token: u64,
    waiters: VecDeque<Waiter<R>>,
}

/// The slots a connection has waiters in, to drop them when it closes.
#[derive(Debug, Default)]
struct ConnectionWaits {
    live: u32,
    slots: Vec<(u32, u32)>,
}

#[derive(Debug)]
pub struct LockTable<R> {
    slots: Vec<Slot<R>>,
    free_slots: Vec<u32>,
    index: HashTable<u32>,
    timers: TimerQueue,
    tokens: TokenSource,
    waits_by_connection: HashMap<u64, ConnectionWaits>,
    next_waiter_id: u64,
    waiters_per_lock_max: usize,
    stats: TableStats,
}

impl<R: ReplyTarget> LockTable<R> {
    pub fn new(tokens: TokenSource, waiters_per_lock_max: usize) -> LockTable<R> {
        assert!(waiters_per_lock_max > 0);
        LockTable {
            slots: Vec::new(),
            free_slots: Vec::new(),
            index: HashTable::new(),
            timers: TimerQueue::default(),
            tokens,
            waits_by_connection: HashMap::new(),
            next_waiter_id: 1,
            waiters_per_lock_max,
            stats: TableStats::default(),
        }
    }

    pub fn stats(&self) -> TableStats {
        self.stats
    }

    pub fn tokens(&mut self) -> &mut TokenSource {
        &mut self.tokens
    }

    /// Keys with a holder or waiters.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// When [`LockTable::fire_timers`] next has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// LOCK: grant, re-grant to the same owner, queue, or answer BUSY.
    pub fn lock(
        &mut self,
        now: Instant,
        hash: u64,
        request: &Lock,
        reply: R,
        out: &mut Replies<R>,
    ) {
        let index = self.find_or_insert(hash, &request.key);
        self.settle(index, now, out);
        let slot = &mut self.slots[index as usize];
        match &mut slot.holder {
            None => {
                let token = self.grant(
                    index,
                    request.owner.clone(),
                    request.ttl_ms,
                    request.durability,
                    now,
                );
                out.push((reply, acquired(token, request.ttl_ms, false)));
            }
            Some(holder) if holder.owner == request.owner && !request.if_not_held => {
                holder.expires_at = now + ms(request.ttl_ms);
                let token = holder.token;
                let generation = slot.generation;
                self.timers
                    .push(lease_timer(holder.expires_at, index, generation));
                self.stats.reentries_total += 1;
                out.push((reply, acquired(token, request.ttl_ms, true)));
            }
            Some(holder) if request.wait_ms == 0 => {
                let busy = Response::Busy(holder_info(holder, now));
                self.stats.busy_total += 1;
                out.push((reply, busy));
            }
            Some(_) if slot.waiters.len() >= self.waiters_per_lock_max => {
                let error = ProtocolError::new(
                    ErrorCode::TooManyWaiters,
                    format!(
                        "{} requests already wait for this lock; waiters_per_lock_max is {}",
                        slot.waiters.len(),
                        self.waiters_per_lock_max
                    ),
                );
                out.push((reply, error.into()));
            }
            Some(_) => self.enqueue(index, now, request, reply),
        }
    }

    /// UNLOCK: release when the owner matches and the lease is live, then hand off.
    pub fn unlock(
        &mut self,
        now: Instant,
        hash: u64,
        request: &Unlock,
        reply: R,
        out: &mut Replies<R>,
    ) {
        let Some(index) = self.settled(now, hash, &request.key, out) else {
            out.push((reply, not_held(0)));
            return;
        };
        let slot = &mut self.slots[index as usize];
        match &slot.holder {
            None => out.push((reply, not_held(slot.last_token))),
            Some(holder) if holder.owner != request.owner => {
                out.push((reply, Response::NotOwner(holder_info(holder, now))));
            }
            Some(_) => {
                let released = slot.holder.take().expect("matched Some");
                self.stats.locks_held -= 1;
                self.stats.releases_total += 1;
                out.push((
                    reply,
                    Response::Released(Released {
                        token: released.token,
                    }),
                ));
                self.hand_off(index, now, Some(&released), out);
            }
        }
        self.remove_if_unused(index);
    }

    /// EXTEND: a new lease of `ttl_ms` from now, same token.
    pub fn extend(
        &mut self,
        now: Instant,
        hash: u64,
        request: &Extend,
        reply: R,
        out: &mut Replies<R>,
    ) {
        let Some(index) = self.settled(now, hash, &request.key, out) else {
            out.push((reply, not_held(0)));
            return;
        };
        let slot = &mut self.slots[index as usize];
        let response = match &mut slot.holder {
            None => not_held(slot.last_token),
            Some(holder) if holder.owner != request.owner => {
                Response::NotOwner(holder_info(holder, now))
            }
            Some(holder) => {
                holder.expires_at = now + ms(request.ttl_ms);
                self.timers
                    .push(lease_timer(holder.expires_at, index, slot.generation));
                self.stats.extends_total += 1;
                Response::Extended(Extended {
                    token: holder.token,
                    ttl_ms: request.ttl_ms,
                })
            }
        };
        out.push((reply, response));
        self.remove_if_unused(index);
    }

    /// GET: the holder, its token, remaining lease and waiter count, or NOT_HELD.
    pub fn get(&mut self, now: Instant, hash: u64, key: &[u8], reply: R, out: &mut Replies<R>) {
        let Some(index) = self.settled(now, hash, key, out) else {
            out.push((reply, not_held(0)));
            return;
        };
        let slot = &self.slots[index as usize];
        let response = match &slot.holder {
            None => not_held(slot.last_token),
            Some(holder) => Response::LockInfo(LockInfo {
                owner: holder.owner.clone(),
                token: holder.token,
                remaining_ms: remaining_ms(holder, now),
                waiters: slot.waiters.len() as u32,
                durability: holder.durability,
            }),
        };
        out.push((reply, response));
        self.remove_if_unused(index);
    }

    /// Fires up to `timers_max` due timers: ends leases (handing the lock to the next
    /// waiter) and answers waiters whose wait ran out with BUSY. Each timer is applied at
    /// its own deadline, so the outcome does not depend on how late the worker got to it: a
    /// waiter whose deadline came before the lease ended gets BUSY, one still waiting when
    /// the lease ended gets the lock. A lease granted here counts from that deadline, which
    /// is after the waiter's request arrived, so it never ends before the client's own
    /// count (from when it sent the request). Returns true when more timers are due.
    pub fn fire_timers(&mut self, now: Instant, timers_max: usize, out: &mut Replies<R>) -> bool {
        for _ in 0..timers_max {
            let Some(timer) = self.timers.pop_due(now) else {
                return false;
            };
            let slot = &self.slots[timer.slot as usize];
            if slot.generation != timer.generation {
                continue; // The slot was freed (and maybe reused) since.
            }
            match timer.kind {
                TimerKind::Lease => self.settle(timer.slot, timer.deadline, out),
                TimerKind::Waiter(id) => self.time_out_waiter(timer.slot, id, timer.deadline, out),
            }
            self.remove_if_unused(timer.slot);
        }
        self.timers
            .next_deadline()
            .is_some_and(|deadline| deadline <= now)
    }

    /// Drops every waiter of a closed connection. No replies: nobody would read them.
    pub fn cancel_connection(&mut self, connection_id: u64) {
        let Some(waits) = self.waits_by_connection.remove(&connection_id) else {
            return;
        };
        for (index, generation) in waits.slots {
            let slot = &mut self.slots[index as usize];
            if slot.generation != generation {
                continue;
            }
            let before = slot.waiters.len();
            slot.waiters
                .retain(|waiter| waiter.reply.connection_id() != connection_id);
            self.stats.waiters -= (before - slot.waiters.len()) as u64;
        }
    }

    /// Answers every waiter with `error` (used at shutdown).
    pub fn fail_all_waiters(&mut self, error: &ProtocolError, out: &mut Replies<R>) {
        for slot in &mut self.slots {
            for waiter in slot.waiters.drain(..) {
                out.push((waiter.reply, error.clone().into()));
            }
        }
        self.stats.waiters = 0;
        self.waits_by_connection.clear();
    }

    /// The slot of a known key with its lease settled at `now`; `None` for a key the table
    /// does not track (never held, or forgotten once free with nobody waiting).
    fn settled(
        &mut self,
        now: Instant,
        hash: u64,
        key: &[u8],
        out: &mut Replies<R>,
    ) -> Option<u32> {
        let index = self.find(hash, key)?;
        self.settle(index, now, out);
        Some(index)
    }

    fn find(&self, hash: u64, key: &[u8]) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(hash, |&index| &*slots[index as usize].key == key)
            .copied()
    }

    fn find_or_insert(&mut self, hash: u64, key: &[u8]) -> u32 {
        if let Some(index) = self.find(hash, key) {
            return index;
        }
        let index = match self.free_slots.pop() {
            Some(index) => {
                let slot = &mut self.slots[index as usize];
                slot.key = key.into();
                slot.hash = hash;
                index
            }
            None => {
                let index = u32::try_from(self.slots.len()).expect("more than u32::MAX slots");
                self.slots.push(Slot {
                    key: key.into(),
                    hash,
                    generation: 0,
                    holder: None,
                    last_token: 0,
                    waiters: VecDeque::new(),
                });
                index
            }
        };
        let slots = &self.slots;
        self.index
            .insert_unique(hash, index, |&i| slots[i as usize].hash);
        index
    }

    /// Frees a slot that has neither holder nor waiters.
    fn remove_if_unused(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        if slot.holder.is_some() || !slot.waiters.is_empty() {
            return;
        }
        match self.index.find_entry(slot.hash, |&i| i == index) {
            Ok(entry) => {
                entry.remove();
            }
            Err(_) => panic!("slot {index} is in use but not in the index"),
        }
        slot.generation = slot.generation.wrapping_add(1);
        slot.key = Box::default();
        slot.last_token = 0;
        self.free_slots.push(index);
    }

    /// Ends an expired lease and hands a free lock to the next live waiter.
    fn settle(&mut self, index: u32, now: Instant, out: &mut Replies<R>) {
        let slot = &mut self.slots[index as usize];
        let expired = match &slot.holder {
            Some(holder) if holder.expires_at <= now => slot.holder.take(),
            _ => None,
        };
        if expired.is_some() {
            self.stats.locks_held -= 1;
            self.stats.expiries_total += 1;
        }
        self.hand_off(index, now, expired.as_ref(), out);
        let slot = &self.slots[index as usize];
        debug_assert!(slot.holder.is_some() || slot.waiters.is_empty());
    }

    /// Grants a free lock to the first waiter that is still there and still waiting;
    /// waiters whose time ran out get BUSY naming `previous`, the holder that just left.
    fn hand_off(
        &mut self,
        index: u32,
        now: Instant,
        previous: Option<&Holder>,
        out: &mut Replies<R>,
    ) {
        while self.slots[index as usize].holder.is_none() {
            let Some(waiter) = self.slots[index as usize].waiters.pop_front() else {
                return;
            };
            self.waiter_left(waiter.reply.connection_id());
            if waiter.reply.is_gone() {
                continue;
            }
            if waiter.deadline <= now {
                let busy = match previous {
                    Some(holder) => holder_info(holder, now),
                    None => Busy {
                        token: self.slots[index as usize].last_token,
                        remaining_ms: 0,
                        owner: Bytes::new(),
                    },
                };
                self.stats.wait_timeouts_total += 1;
                out.push((waiter.reply, Response::Busy(busy)));
                continue;
            }
            let token = self.grant(index, waiter.owner, waiter.ttl_ms, waiter.durability, now);
            out.push((waiter.reply, acquired(token, waiter.ttl_ms, false)));
        }
    }

    /// Makes `owner` the holder of a free lock with a new token.
    fn grant(
        &mut self,
        index: u32,
        owner: Bytes,
        ttl_ms: u64,
        durability: Durability,
        now: Instant,
    ) -> u64 {
        let token = self.tokens.next_token();
        let slot = &mut self.slots[index as usize];
        debug_assert!(slot.holder.is_none());
        assert!(token > slot.last_token, "fencing token must grow per lock");
        let expires_at = now + ms(ttl_ms);
        slot.holder = Some(Holder {
            // Copy out of the request's frame buffer so the table never pins it.
            owner: Bytes::copy_from_slice(&owner),
            token,
            expires_at,
            durability,
        });
        slot.last_token = token;
        self.timers
            .push(lease_timer(expires_at, index, slot.generation));
        self.stats.locks_held += 1;
        self.stats.grants_total += 1;
        token
    }

    fn enqueue(&mut self, index: u32, now: Instant, request: &Lock, reply: R) {
        let id = self.next_waiter_id;
        self.next_waiter_id += 1;
        let deadline = now + ms(request.wait_ms);
        let slot = &mut self.slots[index as usize];
        let waits = self
            .waits_by_connection
            .entry(reply.connection_id())
            .or_default();
        waits.live += 1;
        waits.slots.push((index, slot.generation));
        slot.waiters.push_back(Waiter {
            id,
            owner: Bytes::copy_from_slice(&request.owner),
            ttl_ms: request.ttl_ms,
            deadline,
            durability: request.durability,
            reply,
        });
        self.timers.push(Timer {
            deadline,
            slot: index,
            generation: slot.generation,
            kind: TimerKind::Waiter(id),
        });
        self.stats.waiters += 1;
    }

    fn time_out_waiter(&mut self, index: u32, id: u64, now: Instant, out: &mut Replies<R>) {
        self.settle(index, now, out);
        let slot = &mut self.slots[index as usize];
        let Some(position) = slot.waiters.iter().position(|waiter| waiter.id == id) else {
            return; // Granted, cancelled or already answered.
        };
        let waiter = slot.waiters.remove(position).expect("position is in range");
        let holder = slot
            .holder
            .as_ref()
            .expect("a lock with waiters has a holder");
        let busy = holder_info(holder, now);
        self.waiter_left(waiter.reply.connection_id());
        self.stats.wait_timeouts_total += 1;
        out.push((waiter.reply, Response::Busy(busy)));
    }

    /// Book-keeping when a waiter leaves its queue (granted, timed out, or gone).
    fn waiter_left(&mut self, connection_id: u64) {
        self.stats.waiters -= 1;
        if let Some(waits) = self.waits_by_connection.get_mut(&connection_id) {
            waits.live -= 1;
            if waits.live == 0 {
                self.waits_by_connection.remove(&connection_id);
            }
        }
    }
}

fn ms(milliseconds: u64) -> Duration {
    Duration::from_millis(milliseconds)
}

fn lease_timer(deadline: Instant, slot: u32, generation: u32) -> Timer {
    Timer {
        deadline,
        slot,
        generation,
        kind: TimerKind::Lease,
    }
}

fn remaining_ms(holder: &Holder, now: Instant) -> u64 {
    holder.expires_at.saturating_duration_since(now).as_millis() as u64
}

fn holder_info(holder: &Holder, now: Instant) -> Busy {
    Busy {
        token: holder.token,
        remaining_ms: remaining_ms(holder, now),
        owner: holder.owner.clone(),
    }
}

fn acquired(token: u64, ttl_ms: u64, reentered: bool) -> Response {
    Response::Acquired(Acquired {
        token,
        ttl_ms,
        reentered,
    })
}

fn not_held(last_token: u64) -> Response {
    Response::NotHeld(NotHeld { last_token })
}

#[cfg(test)]
mod tests;
