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
//! - after `settle`, a lock with waiters has a holder (a free lock is handed to the first
//!   live waiter at once, FIFO);
//! - a held lock has exactly one lease timer, at its `expires_at`; a queued waiter has
//!   exactly one timer, at its deadline; nothing else is in the timer set;
//! - a slot with no holder and no waiters is removed from the index and reused.
//!
//! Time: a lease that ended is handed on *at the moment it ended*, not when the table
//! noticed, so a waiter whose deadline came after the lease's end gets the lock even if the
//! worker was late, and one whose deadline came before gets BUSY. A lease granted that way
//! counts from the end of the previous one, which is after the waiter's request arrived:
//! never later than the client's own count, which starts when it sent the request.
//!
//! Storage, sized for a million held locks per server: slots live in a slab (`Vec<Slot>`
//! plus a free list), 64 bytes each with the key and the holder's owner in one allocation
//! beside them (see `slot.rs`); the key index is a `hashbrown::HashTable<u32>` of slot
//! numbers hashed with the key hash the router already computed, so each key is stored
//! once and timers refer to slots by number; waiter queues live out of line
//! (`waiters.rs`), only for locks that have waiters; lease ends and waiter deadlines are
//! [`Moment`]s (8 bytes, exact to the nanosecond), converted from and to instants at the
//! table's edge. A held lock with nobody waiting costs about 142 resident bytes: the slot,
//! the key-and-owner allocation, its lease in the timers' heap and its index entry.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;
use hashbrown::HashTable;
use kahu_protocol::{
    Acquired, Busy, Durability, ErrorCode, Extend, Extended, Lock, LockInfo, NotHeld,
    ProtocolError, Released, Response, Unlock,
};

use super::clock::{Clock, Moment};
use super::timers::{Timer, TimerQueue, WaiterTimer};
use super::tokens::TokenSource;
use crate::raft::EntryKind;
use crate::wal::record::{Command, Entry};
use crate::wal::snapshot::{Snapshot, SnapshotLock};
use crate::wal::Replay;

mod slot;
mod waiters;

use slot::{Holder, Slot};
use waiters::{Waiter, WaiterQueues, NO_QUEUE};

/// Where a reply goes. The table keeps these for queued waiters.
pub trait ReplyTarget {
    /// The connection the request came on; its waiters are dropped when it closes.
    fn connection_id(&self) -> u64;
    /// True when nobody will read a reply any more: such a waiter is never granted.
    fn is_gone(&self) -> bool;
}

/// What one turn of the table produced, for the worker to send and log.
#[derive(Debug)]
pub struct Output<R> {
    /// Replies that depend on nothing unflushed: send them now.
    pub replies: Vec<(R, Response)>,
    /// Replies about locks with decisions not yet durable, each with the commit sequence
    /// it waits for: send them once that commit is durable.
    pub durable_replies: Vec<(u64, R, Response)>,
    /// Decisions about persistent locks, to append to the write-ahead log in this order.
    pub log: Vec<Command>,
}

impl<R> Default for Output<R> {
    fn default() -> Self {
        Output {
            replies: Vec::new(),
            durable_replies: Vec::new(),
            log: Vec::new(),
        }
    }
}

impl<R> Output<R> {
    pub fn is_empty(&self) -> bool {
        self.replies.is_empty() && self.durable_replies.is_empty() && self.log.is_empty()
    }
}

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
pub struct LockTable<R> {
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    index: HashTable<u32>,
    /// The FIFO waiters of the locks that have some; a slot holds its queue's number.
    waiters: WaiterQueues<R>,
    /// Turns the instants callers pass into the moments the table stores.
    clock: Clock,
    timers: TimerQueue,
    tokens: TokenSource,
    /// For each connection with queued waiters: slot -> how many of its waiters are there.
    waits_by_connection: HashMap<u64, HashMap<u32, u32>>,
    next_waiter_id: u64,
    waiters_per_lock_max: usize,
    stats: TableStats,
    /// The commit sequence decisions logged now will be made durable by.
    commit_seq: u64,
    /// The last commit sequence known durable.
    durable_seq: u64,
    /// (slot, commit sequence) for each slot and commit with a logged decision not yet
    /// known durable, in order; one entry per slot and commit.
    dirty_slots: VecDeque<(u32, u64)>,
}

impl<R: ReplyTarget> LockTable<R> {
    pub fn new(tokens: TokenSource, waiters_per_lock_max: usize) -> LockTable<R> {
        assert!(waiters_per_lock_max > 0);
        LockTable {
            slots: Vec::new(),
            free_slots: Vec::new(),
            index: HashTable::new(),
            waiters: WaiterQueues::default(),
            clock: Clock::default(),
            timers: TimerQueue::default(),
            tokens,
            waits_by_connection: HashMap::new(),
            next_waiter_id: 1,
            waiters_per_lock_max,
            stats: TableStats::default(),
            commit_seq: 1,
            durable_seq: 0,
            dirty_slots: VecDeque::new(),
        }
    }

    /// Every persistent lock the log holds, with the lease it has left at `now`, for a
    /// snapshot.
    pub fn persistent_locks(&self, now: Instant) -> Vec<SnapshotLock> {
        let Some(now) = self.clock.moment_if_started(now) else {
            return Vec::new();
        };
        self.persistent_locks_at(now)
    }

    /// Every persistent lock of a table restored with leases counted from its clock's
    /// origin ([`Restorer::counting_from_origin`]), each with its whole lease.
    pub fn persistent_locks_counted_from_origin(&self) -> Vec<SnapshotLock> {
        self.persistent_locks_at(Moment::default())
    }

    /// A table restored with leases counted from its clock's origin (a follower's: see
    /// [`Restorer::counting_from_origin`]) counts them from `now` instead: every lease
    /// starts in full now, as when a new leader inherits them. O(n), no allocation.
    pub fn restart_leases(&mut self, now: Instant) {
        let now = self.clock.moment(now);
        for slot in &mut self.slots {
            slot.expires_at = slot.expires_at.counted_from(now);
        }
        self.timers.count_leases_from(now);
    }

    fn persistent_locks_at(&self, now: Moment) -> Vec<SnapshotLock> {
        self.index
            .iter()
            .filter_map(|&index| {
                let slot = &self.slots[index as usize];
                let holder = slot.holder()?;
                // Also a lease that ran out on this node's count but that the log has not
                // released: a follower counts from when it applied the grant, and an
                // Extend later in the log may renew it. (It is restored with 0 left.)
                (holder.durability == Durability::Persistent).then(|| SnapshotLock {
                    key: Bytes::copy_from_slice(slot.key()),
                    owner: Bytes::copy_from_slice(holder.owner),
                    token: holder.token,
                    // Rounded up: a lease is never shortened by a snapshot.
                    ttl_ms: holder.expires_at.microseconds_since(now).div_ceil(1000),
                })
            })
            .collect()
    }

    /// Decisions logged from now on are made durable by commit `seq` (sequences grow).
    pub fn begin_commit(&mut self, seq: u64) {
        assert!(
            seq > self.durable_seq && seq >= self.commit_seq,
            "commit sequences grow"
        );
        self.commit_seq = seq;
    }

    /// The commit sequence decisions logged now belong to.
    pub fn commit_seq(&self) -> u64 {
        self.commit_seq
    }

    /// Commit `seq` (and every earlier one) is durable: replies about its locks may go,
    /// and locks it left free with nobody waiting are forgotten.
    pub fn commit_durable(&mut self, seq: u64) {
        assert!(seq >= self.durable_seq, "durability moves forward");
        self.durable_seq = seq;
        while let Some(&(index, logged_in)) = self.dirty_slots.front() {
            if logged_in > seq {
                break;
            }
            self.dirty_slots.pop_front();
            // Only the entry of the slot's last decision acts: an older entry for the same
            // slot (or for a freed and reused one) names a sequence the slot no longer has.
            if self.slots[index as usize].logged_in == logged_in {
                self.remove_if_unused(index);
            }
        }
    }

    pub fn stats(&self) -> TableStats {
        self.stats
    }

    pub fn tokens(&mut self) -> &mut TokenSource {
        &mut self.tokens
    }

    /// Replaces the token source (at start, once recovery has fixed the new epoch).
    pub fn set_tokens(&mut self, tokens: TokenSource) {
        self.tokens = tokens;
    }

    /// Keys with a holder or waiters.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Entries in the timer set: one per held lock plus one per waiter.
    pub fn timer_count(&self) -> usize {
        self.timers.len()
    }

    /// When [`LockTable::fire_timers`] next has work.
    pub fn next_deadline(&self) -> Option<Instant> {
        let deadline = self.timers.next_deadline()?;
        Some(self.clock.instant(deadline))
    }

    /// LOCK: grant, re-grant to the same owner, queue, or answer BUSY.
    pub fn lock(&mut self, now: Instant, hash: u64, request: &Lock, reply: R, out: &mut Output<R>) {
        let now = self.clock.moment(now);
        let index = self.find_or_insert(hash, &request.key, &request.owner);
        self.settle(index, now, out);
        let slot = &self.slots[index as usize];
        let Some(holder) = slot.holder() else {
            // The owner is copied into the slot, so the table never pins the request's
            // frame buffer.
            let token = self.grant(
                index,
                &request.owner,
                request.ttl_ms,
                request.durability,
                now,
                out,
            );
            self.respond(out, index, reply, acquired(token, request.ttl_ms, false));
            return;
        };
        if holder.owner == request.owner && !request.if_not_held {
            self.reenter(index, now, request, reply, out);
        } else if request.wait_ms == 0 {
            let busy = Response::Busy(holder_info(holder, now));
            self.stats.busy_total += 1;
            self.respond(out, index, reply, busy);
        } else if self.waiters.len(slot.waiters) >= self.waiters_per_lock_max {
            let error = ProtocolError::new(
                ErrorCode::TooManyWaiters,
                format!(
                    "{} requests already wait for this lock; waiters_per_lock_max is {}",
                    self.waiters.len(slot.waiters),
                    self.waiters_per_lock_max
                ),
            );
            self.respond(out, index, reply, error.into());
        } else {
            self.enqueue(index, now, request, reply);
        }
    }

    /// UNLOCK: release when the owner (and token, if given) match a live lease, then hand
    /// the lock to the next waiter.
    pub fn unlock(
        &mut self,
        now: Instant,
        hash: u64,
        request: &Unlock,
        reply: R,
        out: &mut Output<R>,
    ) {
        let now = self.clock.moment(now);
        let Some(index) = self.settled(now, hash, &request.key, out) else {
            out.replies.push((reply, not_held(0)));
            return;
        };
        let slot = &self.slots[index as usize];
        match slot.holder() {
            None => {
                let response = not_held(slot.last_token);
                self.respond(out, index, reply, response);
            }
            Some(holder) if !holder.matches(&request.owner, request.token) => {
                let response = Response::NotOwner(holder_info(holder, now));
                self.respond(out, index, reply, response);
            }
            Some(holder) => {
                let Holder {
                    token,
                    expires_at,
                    durability,
                    ..
                } = holder;
                self.slots[index as usize].release();
                self.timers.remove_lease(index, expires_at);
                self.stats.locks_held -= 1;
                self.stats.releases_total += 1;
                if durability == Durability::Persistent {
                    let key = Bytes::copy_from_slice(self.slots[index as usize].key());
                    self.log(index, Command::Release { key, token }, out);
                }
                self.respond(out, index, reply, Response::Released(Released { token }));
                self.hand_off(index, now, out);
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
        out: &mut Output<R>,
    ) {
        let now = self.clock.moment(now);
        let Some(index) = self.settled(now, hash, &request.key, out) else {
            out.replies.push((reply, not_held(0)));
            return;
        };
        let slot = &self.slots[index as usize];
        let response = match slot.holder() {
            None => not_held(slot.last_token),
            Some(holder) if !holder.matches(&request.owner, request.token) => {
                Response::NotOwner(holder_info(holder, now))
            }
            Some(holder) => {
                let token = holder.token;
                self.set_lease_end(index, now.after_ms(request.ttl_ms));
                self.log_extend(index, request.ttl_ms, out);
                self.stats.extends_total += 1;
                Response::Extended(Extended {
                    token,
                    ttl_ms: request.ttl_ms,
                })
            }
        };
        self.respond(out, index, reply, response);
        self.remove_if_unused(index);
    }

    /// GET: the holder, its token, remaining lease and waiter count, or NOT_HELD.
    pub fn get(&mut self, now: Instant, hash: u64, key: &[u8], reply: R, out: &mut Output<R>) {
        let now = self.clock.moment(now);
        let Some(index) = self.settled(now, hash, key, out) else {
            out.replies.push((reply, not_held(0)));
            return;
        };
        let slot = &self.slots[index as usize];
        let response = match slot.holder() {
            None => not_held(slot.last_token),
            Some(holder) => Response::LockInfo(LockInfo {
                owner: Bytes::copy_from_slice(holder.owner),
                token: holder.token,
                remaining_ms: remaining_ms(holder, now),
                waiters: self.waiters.len(slot.waiters) as u32,
                durability: holder.durability,
            }),
        };
        self.respond(out, index, reply, response);
        self.remove_if_unused(index);
    }

    /// Fires up to `timers_max` due timers, each at its own deadline: ends leases (handing
    /// the lock to the next waiter) and answers waiters whose wait ran out with BUSY.
    /// Returns true when more timers are due.
    pub fn fire_timers(&mut self, now: Instant, timers_max: usize, out: &mut Output<R>) -> bool {
        let now = self.clock.moment(now);
        for _ in 0..timers_max {
            let Some(timer) = self.timers.pop_due(now) else {
                return false;
            };
            match timer {
                Timer::Lease { deadline, slot } => self.settle(slot, deadline, out),
                Timer::Waiter(waiter) => self.time_out_waiter(waiter, out),
            }
            self.remove_if_unused(timer.slot());
        }
        self.timers
            .next_deadline()
            .is_some_and(|deadline| deadline <= now)
    }

    /// Drops every waiter of a connection that closed (or stopped reading), answering each
    /// with BUSY so a half-closed client still hears that it did not get the lock.
    pub fn cancel_connection(&mut self, connection_id: u64, now: Instant, out: &mut Output<R>) {
        let now = self.clock.moment(now);
        let Some(slots) = self.waits_by_connection.remove(&connection_id) else {
            return;
        };
        for index in slots.into_keys() {
            let slot = &mut self.slots[index as usize];
            let leaving = self.waiters.take_if(&mut slot.waiters, |waiter| {
                waiter.reply.connection_id() == connection_id
            });
            let holder = self.slots[index as usize]
                .holder()
                .expect("a lock with waiters has a holder");
            let busy = holder_info(holder, now);
            for waiter in leaving {
                self.timers.remove_waiter(waiter_timer(&waiter, index));
                self.stats.waiters -= 1;
                self.respond(out, index, waiter.reply, Response::Busy(busy.clone()));
            }
        }
    }

    /// Answers every waiter with `error` (used at shutdown).
    pub fn fail_all_waiters(&mut self, error: &ProtocolError, out: &mut Output<R>) {
        for (index, slot) in self.slots.iter_mut().enumerate() {
            while let Some(waiter) = self.waiters.pop_front(&mut slot.waiters) {
                self.timers
                    .remove_waiter(waiter_timer(&waiter, index as u32));
                out.replies.push((waiter.reply, error.clone().into()));
            }
        }
        self.stats.waiters = 0;
        self.waits_by_connection.clear();
    }

    /// The slot of a known key with its lease settled at `now`; `None` for a key the table
    /// does not track (never held, or forgotten once free with nobody waiting).
    fn settled(&mut self, now: Moment, hash: u64, key: &[u8], out: &mut Output<R>) -> Option<u32> {
        let index = self.find(hash, key)?;
        self.settle(index, now, out);
        Some(index)
    }

    fn find(&self, hash: u64, key: &[u8]) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(hash, |&index| slots[index as usize].key() == key)
            .copied()
    }

    /// The slot of `key`, made (free, with room for `owner`) if the key has none.
    fn find_or_insert(&mut self, hash: u64, key: &[u8], owner: &[u8]) -> u32 {
        if let Some(index) = self.find(hash, key) {
            return index;
        }
        let index = match self.free_slots.pop() {
            Some(index) => {
                self.slots[index as usize].reuse(key, owner, hash);
                index
            }
            None => {
                let index = u32::try_from(self.slots.len()).expect("more than u32::MAX slots");
                self.slots.push(Slot::new(key, owner, hash));
                index
            }
        };
        let slots = &self.slots;
        self.index
            .insert_unique(hash, index, |&i| slots[i as usize].hash);
        index
    }

    /// Frees a slot that has neither holder nor waiters (and so no timers), once no
    /// decision about it waits to be durable (until then a read must find it, and wait).
    fn remove_if_unused(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        if slot.held || slot.waiters != NO_QUEUE || slot.logged_in > self.durable_seq {
            return;
        }
        match self.index.find_entry(slot.hash, |&i| i == index) {
            Ok(entry) => {
                entry.remove();
            }
            Err(_) => panic!("slot {index} is in use but not in the index"),
        }
        slot.clear();
        self.free_slots.push(index);
    }

    /// Ends every lease that ended by `now`, handing the lock on at the moment each ended
    /// (see the module doc), until the lock is held by a live lease or free with nobody
    /// waiting.
    fn settle(&mut self, index: u32, now: Moment, out: &mut Output<R>) {
        while let Some(expired) = self.slots[index as usize]
            .holder()
            .filter(|holder| holder.expires_at <= now)
        {
            let Holder {
                token,
                expires_at,
                durability,
                ..
            } = expired;
            self.slots[index as usize].release();
            // Absent when the lease timer itself is what fired.
            self.timers.remove_lease_if_armed(index, expires_at);
            self.stats.locks_held -= 1;
            self.stats.expiries_total += 1;
            if durability == Durability::Persistent {
                // Logged like a release: otherwise a restart would bring this grant back
                // over whatever came after it (an ephemeral grant with a larger token, say)
                // and hold the lock for a whole lease.
                let key = Bytes::copy_from_slice(self.slots[index as usize].key());
                self.log(index, Command::Release { key, token }, out);
            }
            self.hand_off(index, expires_at, out);
        }
        let slot = &self.slots[index as usize];
        debug_assert!(slot.held || slot.waiters == NO_QUEUE);
    }

    /// Grants a lock that came free at `at` to the first waiter that is still there and
    /// was still waiting at `at`; waiters whose time ran out get BUSY naming the holder
    /// that just left (still in the slot as its last holder).
    fn hand_off(&mut self, index: u32, at: Moment, out: &mut Output<R>) {
        while !self.slots[index as usize].held {
            let slot = &mut self.slots[index as usize];
            let Some(waiter) = self.waiters.pop_front(&mut slot.waiters) else {
                return;
            };
            self.timers.remove_waiter(waiter_timer(&waiter, index));
            self.waiter_left(waiter.reply.connection_id(), index);
            if waiter.reply.is_gone() {
                continue;
            }
            if waiter.deadline <= at {
                let busy = holder_info(self.slots[index as usize].last_holder(), at);
                self.stats.wait_timeouts_total += 1;
                self.respond(out, index, waiter.reply, Response::Busy(busy));
                continue;
            }
            let token = self.grant(
                index,
                &waiter.owner,
                waiter.ttl_ms,
                waiter.durability,
                at,
                out,
            );
            self.respond(
                out,
                index,
                waiter.reply,
                acquired(token, waiter.ttl_ms, false),
            );
        }
    }

    /// Makes `owner` the holder of a free lock with a new token and a lease from `now`.
    fn grant(
        &mut self,
        index: u32,
        owner: &[u8],
        ttl_ms: u64,
        durability: Durability,
        now: Moment,
        out: &mut Output<R>,
    ) -> u64 {
        let token = self.tokens.next_token();
        let slot = &self.slots[index as usize];
        debug_assert!(!slot.held);
        assert!(token > slot.last_token, "fencing token must grow per lock");
        let expires_at = now.after_ms(ttl_ms);
        if durability == Durability::Persistent {
            let command = Command::Grant {
                key: Bytes::copy_from_slice(slot.key()),
                owner: Bytes::copy_from_slice(owner),
                token,
                ttl_ms,
            };
            self.log(index, command, out);
        }
        let slot = &mut self.slots[index as usize];
        slot.hold(owner, token, expires_at, durability);
        slot.last_token = token;
        self.timers.insert_lease(index, expires_at);
        self.stats.locks_held += 1;
        self.stats.grants_total += 1;
        token
    }

    /// A LOCK from the holder itself: same token, the lease reset to the request's ttl.
    fn reenter(&mut self, index: u32, now: Moment, request: &Lock, reply: R, out: &mut Output<R>) {
        let slot = &mut self.slots[index as usize];
        let token = slot.token;
        // Asking for a persistent lock you hold as ephemeral makes it persistent (logged as
        // a grant with the same token); the other way keeps it persistent.
        let upgrade = request.durability == Durability::Persistent
            && slot.durability == Durability::Ephemeral;
        if upgrade {
            slot.durability = Durability::Persistent;
        }
        self.stats.reentries_total += 1;
        self.set_lease_end(index, now.after_ms(request.ttl_ms));
        if upgrade {
            let command = Command::Grant {
                key: Bytes::copy_from_slice(&request.key),
                owner: Bytes::copy_from_slice(&request.owner),
                token,
                ttl_ms: request.ttl_ms,
            };
            self.log(index, command, out);
        } else {
            self.log_extend(index, request.ttl_ms, out);
        }
        self.respond(out, index, reply, acquired(token, request.ttl_ms, true));
    }

    /// Queues a reply about the lock in `index`: after the commit holding the last
    /// decision about it, if that is not durable yet, else now.
    fn respond(&self, out: &mut Output<R>, index: u32, reply: R, response: Response) {
        let logged_in = self.slots[index as usize].logged_in;
        if logged_in > self.durable_seq {
            out.durable_replies.push((logged_in, reply, response));
        } else {
            out.replies.push((reply, response));
        }
    }

    /// Logs a decision about the lock in `index`; replies about it now wait for its commit.
    fn log(&mut self, index: u32, command: Command, out: &mut Output<R>) {
        out.log.push(command);
        let slot = &mut self.slots[index as usize];
        if slot.logged_in != self.commit_seq {
            slot.logged_in = self.commit_seq;
            self.dirty_slots.push_back((index, self.commit_seq));
        }
    }

    /// Logs a new lease of `ttl_ms` for a persistent holder of `index`.
    fn log_extend(&mut self, index: u32, ttl_ms: u64, out: &mut Output<R>) {
        let slot = &self.slots[index as usize];
        let holder = slot.holder().expect("extending a held lock");
        if holder.durability == Durability::Persistent {
            let command = Command::Extend {
                key: Bytes::copy_from_slice(slot.key()),
                token: holder.token,
                ttl_ms,
            };
            self.log(index, command, out);
        }
    }

    /// Moves the lease of the holder of `index` to end at `expires_at`.
    fn set_lease_end(&mut self, index: u32, expires_at: Moment) {
        let slot = &mut self.slots[index as usize];
        assert!(slot.held, "only a held lock has a lease");
        let previous = std::mem::replace(&mut slot.expires_at, expires_at);
        self.timers.move_lease(index, previous, expires_at);
    }

    fn enqueue(&mut self, index: u32, now: Moment, request: &Lock, reply: R) {
        let id = self.next_waiter_id;
        self.next_waiter_id += 1;
        *self
            .waits_by_connection
            .entry(reply.connection_id())
            .or_default()
            .entry(index)
            .or_default() += 1;
        let waiter = Waiter {
            id,
            owner: Bytes::copy_from_slice(&request.owner),
            ttl_ms: request.ttl_ms,
            deadline: now.after_ms(request.wait_ms),
            durability: request.durability,
            reply,
        };
        self.timers.insert_waiter(waiter_timer(&waiter, index));
        let slot = &mut self.slots[index as usize];
        self.waiters.push_back(&mut slot.waiters, waiter);
        self.stats.waiters += 1;
    }

    /// A waiter's deadline fired (its timer is already out of the set).
    fn time_out_waiter(&mut self, timer: WaiterTimer, out: &mut Output<R>) {
        let WaiterTimer {
            deadline,
            slot: index,
            id,
        } = timer;
        self.settle(index, deadline, out);
        let slot = &mut self.slots[index as usize];
        let Some(waiter) = self.waiters.remove(&mut slot.waiters, id) else {
            // Settling handed the lock on and answered it already.
            return;
        };
        let holder = self.slots[index as usize]
            .holder()
            .expect("a lock with waiters has a holder");
        let busy = holder_info(holder, deadline);
        self.waiter_left(waiter.reply.connection_id(), index);
        self.stats.wait_timeouts_total += 1;
        self.respond(out, index, waiter.reply, Response::Busy(busy));
    }

    /// Book-keeping when a waiter leaves the queue of `index`.
    fn waiter_left(&mut self, connection_id: u64, index: u32) {
        self.stats.waiters -= 1;
        let Some(slots) = self.waits_by_connection.get_mut(&connection_id) else {
            return;
        };
        if let Some(count) = slots.get_mut(&index) {
            *count -= 1;
            if *count == 0 {
                slots.remove(&index);
            }
        }
        if slots.is_empty() {
            self.waits_by_connection.remove(&connection_id);
        }
    }
}

/// Rebuilds a table's persistent locks from its log at start. Every lease is counted in
/// full from `now` (the restart), never from when it was first granted, so none ends
/// before its holder's own count.
#[derive(Debug)]
pub struct Restorer<'a, R> {
    table: &'a mut LockTable<R>,
    now: Moment,
    /// The largest fencing token seen, so the new run's tokens can start above it.
    pub token_max: u64,
}

impl<'a, R: ReplyTarget> Restorer<'a, R> {
    pub fn new(table: &'a mut LockTable<R>, now: Instant) -> Restorer<'a, R> {
        let now = table.clock.moment(now);
        Restorer {
            table,
            now,
            token_max: 0,
        }
    }

    /// A restorer that counts every lease from the clock's origin rather than from a
    /// `now`: the table then holds each lock's whole lease (its ttl as logged, or as the
    /// snapshot left it), so that [`LockTable::restart_leases`] can start them all in full
    /// at once when this node takes over, instead of rebuilding the table. Such a table
    /// must not decide anything (it has no waiters, and fires no timers) until then.
    pub fn counting_from_origin(table: &'a mut LockTable<R>) -> Restorer<'a, R> {
        Restorer {
            table,
            now: Moment::default(),
            token_max: 0,
        }
    }

    fn hold(&mut self, key: &[u8], owner: &[u8], token: u64, ttl_ms: u64) {
        self.token_max = self.token_max.max(token);
        let table = &mut *self.table;
        let index = table.find_or_insert(super::key_hash(key), key, owner);
        if table.slots[index as usize].held {
            table.release_for_replay(index);
        }
        let expires_at = self.now.after_ms(ttl_ms);
        let slot = &mut table.slots[index as usize];
        slot.hold(owner, token, expires_at, Durability::Persistent);
        slot.last_token = slot.last_token.max(token);
        table.timers.insert_lease(index, expires_at);
        table.stats.locks_held += 1;
    }

    /// The slot of `key` if `token` is its current grant.
    fn current(&self, key: &[u8], token: u64) -> Option<u32> {
        let index = self.table.find(super::key_hash(key), key)?;
        let holder = self.table.slots[index as usize].holder()?;
        (holder.token == token).then_some(index)
    }
}

impl<R: ReplyTarget> Replay for Restorer<'_, R> {
    fn restore(&mut self, snapshot: &Snapshot) {
        for lock in &snapshot.locks {
            self.hold(&lock.key, &lock.owner, lock.token, lock.ttl_ms);
        }
    }

    fn apply(&mut self, entry: Entry) {
        self.apply_entry(&entry);
    }
}

impl<R: ReplyTarget> Restorer<'_, R> {
    /// Applies one committed entry (a follower, or a table rebuilt from the log).
    pub fn apply_entry(&mut self, entry: &Entry) {
        let EntryKind::Command(command) = &entry.kind else {
            return; // no-ops and membership changes hold no lock state
        };
        match command {
            Command::Grant {
                key,
                owner,
                token,
                ttl_ms,
            } => self.hold(key, owner, *token, *ttl_ms),
            Command::Release { key, token } => {
                if let Some(index) = self.current(key, *token) {
                    self.table.release_for_replay(index);
                    self.table.remove_if_unused(index);
                }
            }
            Command::Extend { key, token, ttl_ms } => {
                if let Some(index) = self.current(key, *token) {
                    self.table.set_lease_end(index, self.now.after_ms(*ttl_ms));
                }
            }
        }
    }
}

impl<R: ReplyTarget> LockTable<R> {
    /// Ends the grant in `index` while the log is replayed: no reply, no hand-off, no log.
    fn release_for_replay(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        slot.release();
        self.timers.remove_lease(index, slot.expires_at);
        self.stats.locks_held -= 1;
    }
}

fn waiter_timer<R>(waiter: &Waiter<R>, slot: u32) -> WaiterTimer {
    WaiterTimer {
        deadline: waiter.deadline,
        slot,
        id: waiter.id,
    }
}

fn remaining_ms(holder: Holder<'_>, now: Moment) -> u64 {
    holder.expires_at.milliseconds_since(now)
}

fn holder_info(holder: Holder<'_>, now: Moment) -> Busy {
    Busy {
        token: holder.token,
        remaining_ms: remaining_ms(holder, now),
        owner: Bytes::copy_from_slice(holder.owner),
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
