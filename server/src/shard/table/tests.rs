//! The lock contract, clause by clause, on a table driven by made-up instants.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kahu_protocol::{Durability, Extend, Lock, Response, Unlock};
use proptest::prelude::*;

use super::*;
use crate::shard::tokens::TokenSource;

#[derive(Debug, Clone)]
struct TestReply {
    connection: u64,
    request: u32,
    gone: Rc<Cell<bool>>,
}

impl ReplyTarget for TestReply {
    fn connection_id(&self) -> u64 {
        self.connection
    }
    fn is_gone(&self) -> bool {
        self.gone.get()
    }
}

/// A table plus a clock and helpers that return the replies of each step.
struct Harness {
    table: LockTable<TestReply>,
    start: Instant,
    now: Instant,
    next_request: u32,
    connections: HashMap<u64, Rc<Cell<bool>>>,
    /// Durability of the LOCKs the helpers send.
    durability: Durability,
    /// Every decision the table logged, as the worker would append it.
    log: Vec<crate::wal::record::Command>,
}

fn hash(key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key.as_bytes())
}

impl Harness {
    fn new() -> Harness {
        Harness::with_waiters_max(16)
    }

    fn with_waiters_max(waiters_per_lock_max: usize) -> Harness {
        let now = Instant::now();
        Harness {
            table: LockTable::new(TokenSource::new(1), waiters_per_lock_max),
            start: now,
            now,
            next_request: 0,
            connections: HashMap::new(),
            durability: Durability::Ephemeral,
            log: Vec::new(),
        }
    }

    /// Ends a step as the worker ends a turn: keeps the log, returns every reply.
    fn finish(&mut self, mut out: Output<TestReply>) -> Vec<(u32, Response)> {
        self.log.append(&mut out.log);
        // As the worker does once the step's commit is durable.
        let seq = self.table.commit_seq();
        self.table.commit_durable(seq);
        self.table.begin_commit(seq + 1);
        ids(out)
    }

    fn reply(&mut self, connection: u64) -> TestReply {
        self.next_request += 1;
        let gone = self.connections.entry(connection).or_default().clone();
        TestReply {
            connection,
            request: self.next_request,
            gone,
        }
    }

    /// Moves the clock and fires due timers.
    fn advance(&mut self, milliseconds: u64) -> Vec<(u32, Response)> {
        self.now += Duration::from_millis(milliseconds);
        let mut out = Output::default();
        while self.table.fire_timers(self.now, 3, &mut out) {}
        self.finish(out)
    }

    fn lock(
        &mut self,
        connection: u64,
        key: &str,
        owner: &str,
        ttl_ms: u64,
        wait_ms: u64,
    ) -> Vec<(u32, Response)> {
        self.lock_request(connection, key, owner, ttl_ms, wait_ms, false)
    }

    fn lock_request(
        &mut self,
        connection: u64,
        key: &str,
        owner: &str,
        ttl_ms: u64,
        wait_ms: u64,
        if_not_held: bool,
    ) -> Vec<(u32, Response)> {
        let request = Lock {
            key: Bytes::copy_from_slice(key.as_bytes()),
            owner: Bytes::copy_from_slice(owner.as_bytes()),
            ttl_ms,
            wait_ms,
            durability: self.durability,
            if_not_held,
        };
        let reply = self.reply(connection);
        let mut out = Output::default();
        self.table
            .lock(self.now, hash(key), &request, reply, &mut out);
        self.finish(out)
    }

    fn unlock(&mut self, key: &str, owner: &str) -> Response {
        self.unlock_token(key, owner, None)
    }

    fn unlock_token(&mut self, key: &str, owner: &str, token: Option<u64>) -> Response {
        let mut replies = self.unlock_request(key, owner, token);
        assert_eq!(replies.len(), 1, "expected one reply: {replies:?}");
        replies.remove(0).1
    }

    /// UNLOCK, returning every reply (the release and any hand-off).
    fn unlock_all(&mut self, key: &str, owner: &str) -> Vec<(u32, Response)> {
        self.unlock_request(key, owner, None)
    }

    fn unlock_request(
        &mut self,
        key: &str,
        owner: &str,
        token: Option<u64>,
    ) -> Vec<(u32, Response)> {
        let request = Unlock {
            key: Bytes::copy_from_slice(key.as_bytes()),
            owner: Bytes::copy_from_slice(owner.as_bytes()),
            token,
        };
        let reply = self.reply(0);
        let mut out = Output::default();
        self.table
            .unlock(self.now, hash(key), &request, reply, &mut out);
        self.finish(out)
    }

    fn extend(&mut self, key: &str, owner: &str, ttl_ms: u64) -> Response {
        self.extend_token(key, owner, ttl_ms, None)
    }

    fn extend_token(
        &mut self,
        key: &str,
        owner: &str,
        ttl_ms: u64,
        token: Option<u64>,
    ) -> Response {
        let request = Extend {
            key: Bytes::copy_from_slice(key.as_bytes()),
            owner: Bytes::copy_from_slice(owner.as_bytes()),
            ttl_ms,
            token,
        };
        let reply = self.reply(0);
        let mut out = Output::default();
        self.table
            .extend(self.now, hash(key), &request, reply, &mut out);
        self.single(out)
    }

    fn get(&mut self, key: &str) -> Response {
        let reply = self.reply(0);
        let mut out = Output::default();
        self.table
            .get(self.now, hash(key), key.as_bytes(), reply, &mut out);
        self.single(out)
    }

    fn single(&mut self, out: Output<TestReply>) -> Response {
        let mut replies = self.finish(out);
        assert_eq!(replies.len(), 1, "expected one reply: {replies:?}");
        replies.remove(0).1
    }

    /// The connection closes: its waiters are answered (to nobody) and dropped.
    fn disconnect(&mut self, connection: u64) -> Vec<(u32, Response)> {
        self.connections.entry(connection).or_default().set(true);
        let mut out = Output::default();
        self.table.cancel_connection(connection, self.now, &mut out);
        self.finish(out)
    }

    /// Moves the clock without firing timers, as when the worker is busy.
    fn skip(&mut self, milliseconds: u64) {
        self.now += Duration::from_millis(milliseconds);
    }

    fn elapsed_ms(&self) -> u128 {
        (self.now - self.start).as_millis()
    }
}

/// Every reply of a step, in order: those sent at once, then those after the flush.
fn ids(out: Output<TestReply>) -> Vec<(u32, Response)> {
    out.replies
        .into_iter()
        .chain(
            out.durable_replies
                .into_iter()
                .map(|(_, reply, response)| (reply, response)),
        )
        .map(|(reply, response)| (reply.request, response))
        .collect()
}

fn token_of(replies: &[(u32, Response)]) -> u64 {
    match replies {
        [(_, Response::Acquired(acquired))] => acquired.token,
        other => panic!("expected one ACQUIRED: {other:?}"),
    }
}

fn assert_busy(replies: &[(u32, Response)]) {
    assert!(
        matches!(replies, [(_, Response::Busy(_))]),
        "expected BUSY: {replies:?}"
    );
}

#[test]
fn a_free_lock_is_granted_and_a_held_one_is_busy() {
    let mut h = Harness::new();
    let token = token_of(&h.lock(1, "k", "alice", 1000, 0));
    assert_ne!(token, 0);
    let busy = h.lock(2, "k", "bob", 1000, 0);
    match &busy[..] {
        [(_, Response::Busy(holder))] => {
            assert_eq!(holder.owner, "alice");
            assert_eq!(holder.token, token);
            assert_eq!(holder.remaining_ms, 1000);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.table.stats().busy_total, 1);
}

#[test]
fn the_lease_expires_without_any_client_action() {
    let mut h = Harness::new();
    h.lock(1, "k", "alice", 1000, 0);
    assert!(h.advance(999).is_empty());
    assert!(matches!(h.get("k"), Response::LockInfo(info) if info.remaining_ms == 1));
    // The timer frees the lock exactly at the end of the lease, with nobody asking.
    assert!(h.advance(1).is_empty());
    assert_eq!(h.table.stats().locks_held, 0);
    assert_eq!(h.table.stats().expiries_total, 1);
    assert!(
        h.table.is_empty(),
        "a free lock with no waiters leaves the table"
    );
    assert_eq!(h.elapsed_ms(), 1000);
    token_of(&h.lock(2, "k", "bob", 1000, 0));
}

#[test]
fn extend_resets_the_lease_and_keeps_the_token() {
    let mut h = Harness::new();
    let token = token_of(&h.lock(1, "k", "alice", 1000, 0));
    h.advance(900);
    assert!(
        matches!(h.extend("k", "alice", 1000), Response::Extended(e) if e.token == token && e.ttl_ms == 1000)
    );
    assert!(
        matches!(h.extend("k", "bob", 1000), Response::NotOwner(holder) if holder.owner == "alice")
    );
    h.advance(900); // 1800 ms after the grant: alive thanks to the extension.
    assert!(
        matches!(h.get("k"), Response::LockInfo(info) if info.token == token && info.remaining_ms == 100)
    );
    h.advance(100);
    assert!(matches!(h.get("k"), Response::NotHeld(_)));
    assert!(
        matches!(h.extend("k", "alice", 1000), Response::NotHeld(_)),
        "an ended lease cannot be extended"
    );
}

#[test]
fn re_acquire_by_the_same_owner_is_idempotent() {
    let mut h = Harness::new();
    let token = token_of(&h.lock(1, "k", "alice", 1000, 0));
    h.advance(600);
    let again = h.lock(1, "k", "alice", 1000, 0);
    assert!(matches!(&again[..], [(_, Response::Acquired(a))] if a.token == token && a.reentered));
    h.advance(600); // 1200 ms after the first grant: the lease was reset.
    assert!(matches!(h.get("k"), Response::LockInfo(info) if info.token == token));
    assert_eq!(h.table.stats().grants_total, 1);
    assert_eq!(h.table.stats().reentries_total, 1);
}

#[test]
fn if_not_held_refuses_even_the_holder() {
    let mut h = Harness::new();
    h.lock(1, "k", "alice", 1000, 0);
    assert_busy(&h.lock_request(1, "k", "alice", 1000, 0, true));
    // And it queues rather than re-entering when asked to wait.
    assert!(h.lock_request(1, "k", "alice", 1000, 500, true).is_empty());
    let handed = h.unlock_all("k", "alice");
    assert!(
        matches!(&handed[..], [(_, Response::Released(_)), (_, Response::Acquired(a))] if !a.reentered)
    );
}

#[test]
fn unlock_needs_the_owner_and_a_live_lease() {
    let mut h = Harness::new();
    assert!(matches!(h.unlock("k", "alice"), Response::NotHeld(n) if n.last_token == 0));
    let token = token_of(&h.lock(1, "k", "alice", 1000, 0));
    assert!(matches!(h.unlock("k", "bob"), Response::NotOwner(_)));
    assert!(matches!(h.unlock("k", "alice"), Response::Released(r) if r.token == token));
    assert!(matches!(h.unlock("k", "alice"), Response::NotHeld(_)));
    h.lock(1, "k", "alice", 10, 0);
    h.advance(10);
    assert!(
        matches!(h.unlock("k", "alice"), Response::NotHeld(_)),
        "an expired lease is not held"
    );
}

#[test]
fn waiters_are_served_first_in_first_out() {
    let mut h = Harness::new();
    let first = token_of(&h.lock(1, "k", "alice", 1000, 0));
    assert!(h.lock(2, "k", "bob", 1000, 5000).is_empty());
    assert!(h.lock(3, "k", "carol", 1000, 5000).is_empty());
    assert!(matches!(h.get("k"), Response::LockInfo(info) if info.waiters == 2));
    // A newcomer without wait is BUSY even though waiters are queued.
    assert_busy(&h.lock(4, "k", "dave", 1000, 0));

    let handed = h.unlock_all("k", "alice");
    let (bob_request, bob_token) = match &handed[..] {
        [(_, Response::Released(_)), (request, Response::Acquired(a))] => (*request, a.token),
        other => panic!("{other:?}"),
    };
    assert_eq!(bob_request, 2, "bob asked first");
    assert!(bob_token > first);
    assert!(
        matches!(h.get("k"), Response::LockInfo(info) if info.owner == "bob" && info.waiters == 1)
    );

    // Carol gets it when bob's lease ends, with nobody asking.
    let handed = h.advance(1000);
    match &handed[..] {
        [(3, Response::Acquired(a))] => assert!(a.token > bob_token),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_waiter_gets_busy_when_its_wait_runs_out() {
    let mut h = Harness::new();
    h.lock(1, "k", "alice", 1000, 0);
    assert!(h.lock(2, "k", "bob", 1000, 300).is_empty());
    assert!(h.advance(299).is_empty());
    let timed_out = h.advance(1);
    assert!(
        matches!(&timed_out[..], [(2, Response::Busy(holder))] if holder.owner == "alice" && holder.remaining_ms == 700)
    );
    assert_eq!(h.table.stats().waiters, 0);
    assert_eq!(h.table.stats().wait_timeouts_total, 1);
    // The lease ends later; nobody is waiting any more.
    assert!(h.advance(700).is_empty());
    assert!(h.table.is_empty());
}

#[test]
fn a_late_worker_decides_by_the_deadlines_not_by_when_it_woke() {
    let mut h = Harness::new();
    h.lock(1, "k", "alice", 1000, 0);
    assert!(h.lock(2, "k", "bob", 1000, 500).is_empty()); // gives up at 500
    assert!(h.lock(3, "k", "carol", 1000, 1500).is_empty()); // still waiting at 1000
                                                             // The worker only wakes at 1200: bob's wait ended before the lease, carol's did not.
    let replies = h.advance(1200);
    assert!(
        matches!(
            &replies[..],
            [(2, Response::Busy(_)), (3, Response::Acquired(_))]
        ),
        "{replies:?}"
    );
    // Carol's lease counts from the moment the lock came free (1000), not from 1200.
    assert!(
        matches!(h.get("k"), Response::LockInfo(info) if info.owner == "carol" && info.remaining_ms == 800)
    );
}

#[test]
fn tokens_grow_per_lock_across_releases_expiries_and_keys() {
    let mut h = Harness::new();
    let mut last = 0;
    for round in 0..20 {
        let key = if round % 3 == 0 { "a" } else { "b" };
        let token = token_of(&h.lock(1, key, "alice", 10, 0));
        assert!(token > last, "round {round}: {token} after {last}");
        last = token;
        if round % 2 == 0 {
            h.unlock(key, "alice");
        } else {
            h.advance(10);
        }
    }
}

#[test]
fn waiters_of_a_closed_connection_are_answered_busy_and_dropped() {
    let mut h = Harness::new();
    h.lock(1, "k", "alice", 1000, 0);
    h.lock(2, "k", "bob", 1000, 5000);
    h.lock(3, "k", "carol", 1000, 5000);
    h.lock(2, "k", "bob", 1000, 5000); // a second waiter of the same connection
    h.lock(2, "other", "bob", 1000, 5000); // free: granted at once
    let cancelled = h.disconnect(2);
    assert!(
        matches!(
            &cancelled[..],
            [(2, Response::Busy(_)), (4, Response::Busy(_))]
        ),
        "{cancelled:?}"
    );
    assert!(matches!(h.get("k"), Response::LockInfo(info) if info.waiters == 1));
    assert_eq!(h.table.stats().waiters, 1);
    assert_eq!(h.table.timer_count(), 3, "two leases and carol's wait");
    let handed = h.unlock_all("k", "alice");
    assert!(matches!(
        &handed[..],
        [(_, Response::Released(_)), (3, Response::Acquired(_))]
    ));
    // The disconnected client's *held* lock stays until its lease ends.
    assert!(matches!(h.get("other"), Response::LockInfo(info) if info.owner == "bob"));
    assert!(h.disconnect(2).is_empty(), "a second close finds nothing");
}

#[test]
fn a_waiter_whose_connection_vanished_is_skipped_even_before_cancel_arrives() {
    let mut h = Harness::new();
    h.lock(1, "k", "alice", 1000, 0);
    h.lock(2, "k", "bob", 1000, 5000);
    h.lock(3, "k", "carol", 1000, 5000);
    h.connections[&2].set(true); // closed, but the cancel message has not arrived yet
    let handed = h.unlock_all("k", "alice");
    assert!(
        matches!(
            &handed[..],
            [(_, Response::Released(_)), (3, Response::Acquired(_))]
        ),
        "{handed:?}"
    );
    assert_eq!(h.table.stats().waiters, 0);
}

#[test]
fn the_waiter_queue_is_bounded() {
    let mut h = Harness::with_waiters_max(2);
    h.lock(1, "k", "alice", 1000, 0);
    assert!(h.lock(2, "k", "bob", 1000, 5000).is_empty());
    assert!(h.lock(3, "k", "carol", 1000, 5000).is_empty());
    let refused = h.lock(4, "k", "dave", 1000, 5000);
    assert!(
        matches!(&refused[..], [(_, Response::Error(e))] if e.code == Some(ErrorCode::TooManyWaiters))
    );
}

#[test]
fn shutdown_answers_every_waiter() {
    let mut h = Harness::new();
    h.lock(1, "k", "alice", 1000, 0);
    h.lock(2, "k", "bob", 1000, 5000);
    let mut out = Output::default();
    let error = ProtocolError::new(ErrorCode::ShuttingDown, "stopping");
    h.table.fail_all_waiters(&error, &mut out);
    assert!(
        matches!(&ids(out)[..], [(2, Response::Error(e))] if e.code == Some(ErrorCode::ShuttingDown))
    );
    assert_eq!(h.table.stats().waiters, 0);
}

#[test]
fn slots_are_reused_and_leave_no_timers_behind() {
    let mut h = Harness::new();
    h.lock(1, "a", "alice", 1000, 0);
    h.unlock("a", "alice"); // slot 0 freed with its lease timer
    assert_eq!(h.table.timer_count(), 0);
    h.lock(1, "b", "bob", 5000, 0); // reuses slot 0
    assert!(h.advance(1000).is_empty());
    assert!(matches!(h.get("b"), Response::LockInfo(info) if info.owner == "bob"));
    assert_eq!(h.table.slots.len(), 1);
}

#[test]
fn extending_often_keeps_one_timer_per_lock() {
    let mut h = Harness::new();
    h.lock(1, "k", "alice", 60_000, 0);
    for _ in 0..1000 {
        h.advance(1);
        assert!(matches!(
            h.extend("k", "alice", 60_000),
            Response::Extended(_)
        ));
        h.lock(1, "k", "alice", 60_000, 0); // a re-acquire resets the lease too
    }
    assert_eq!(h.table.timer_count(), 1);
    // And churn on fresh keys leaves nothing behind once they are released.
    for round in 0..1000 {
        let key = format!("churn-{round}");
        h.lock(1, &key, "alice", 60_000, 0);
        h.unlock(&key, "alice");
    }
    assert_eq!(h.table.timer_count(), 1);
    assert_eq!(h.table.len(), 1);
}

#[test]
fn a_token_in_unlock_or_extend_must_match_the_current_grant() {
    let mut h = Harness::new();
    let first = token_of(&h.lock(1, "k", "shared-owner", 100, 0));
    h.advance(100); // that lease ends; the same owner takes the lock again
    let second = token_of(&h.lock(1, "k", "shared-owner", 1000, 0));
    assert!(second > first);
    // A stale guard of the first grant can neither extend nor release the second.
    assert!(
        matches!(h.extend_token("k", "shared-owner", 1000, Some(first)), Response::NotOwner(holder) if holder.token == second)
    );
    assert!(matches!(
        h.unlock_token("k", "shared-owner", Some(first)),
        Response::NotOwner(_)
    ));
    assert!(matches!(h.get("k"), Response::LockInfo(info) if info.token == second));
    assert!(matches!(
        h.extend_token("k", "shared-owner", 1000, Some(second)),
        Response::Extended(_)
    ));
    assert!(
        matches!(h.unlock_token("k", "shared-owner", Some(second)), Response::Released(r) if r.token == second)
    );
}

#[test]
fn a_busy_worker_still_serves_waiters_in_order_of_their_deadlines() {
    let mut h = Harness::new();
    h.lock(1, "k", "alice", 1000, 0);
    assert!(h.lock(2, "k", "bob", 1000, 1500).is_empty()); // still waiting when the lease ends
                                                           // The worker falls behind: no timer fires until a new request arrives at 1200.
    h.skip(1200);
    let replies = h.lock(3, "k", "carol", 1000, 0);
    // Bob was first in line when the lease ended at 1000, so he holds it, not carol.
    assert!(
        matches!(&replies[..], [(2, Response::Acquired(_)), (_, Response::Busy(holder))] if holder.owner == "bob"),
        "{replies:?}"
    );
    // Bob's lease counts from 1000, when the lock came free.
    assert!(matches!(h.get("k"), Response::LockInfo(info) if info.remaining_ms == 800));
}

#[test]
fn a_chain_of_leases_that_all_ended_is_settled_in_one_step() {
    let mut h = Harness::new();
    h.lock(1, "k", "alice", 100, 0);
    assert!(h.lock(2, "k", "bob", 100, 10_000).is_empty());
    assert!(h.lock(3, "k", "carol", 100, 10_000).is_empty());
    h.skip(250); // alice ends at 100, bob (granted at 100) at 200; carol from 200 to 300
    let replies = h.lock(4, "k", "dave", 100, 0);
    assert!(
        matches!(&replies[..], [(2, Response::Acquired(_)), (3, Response::Acquired(_)), (_, Response::Busy(holder))] if holder.owner == "carol" && holder.remaining_ms == 50),
        "{replies:?}"
    );
}

/// One random step against the table.
#[derive(Debug, Clone)]
enum Step {
    Lock {
        key: u8,
        owner: u8,
        ttl: u16,
        wait: u16,
    },
    Unlock {
        key: u8,
        owner: u8,
    },
    Extend {
        key: u8,
        owner: u8,
        ttl: u16,
    },
    Advance {
        ms: u16,
    },
    Disconnect {
        owner: u8,
    },
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..3u8, 0..4u8, 1..200u16, prop_oneof![Just(0u16), 1..300u16])
            .prop_map(|(key, owner, ttl, wait)| Step::Lock { key, owner, ttl, wait }),
        2 => (0..3u8, 0..4u8).prop_map(|(key, owner)| Step::Unlock { key, owner }),
        1 => (0..3u8, 0..4u8, 1..200u16).prop_map(|(key, owner, ttl)| Step::Extend { key, owner, ttl }),
        3 => (0..150u16).prop_map(|ms| Step::Advance { ms }),
        1 => (0..4u8).prop_map(|owner| Step::Disconnect { owner }),
    ]
}

/// When a reply's grant took effect: at the step's `now`, or (for hand-offs fired by a
/// timer) at the end of the previous holder's lease.
#[derive(Clone, Copy)]
enum GrantedAt {
    Now,
    PreviousLeaseEnd,
}

proptest! {
    /// Against a model of who holds what until when: never two holders, a grant only when
    /// the model says the lock is free (or re-entered by its holder), tokens strictly
    /// growing per lock, and the table's holders equal to the model's after every step.
    #[test]
    fn random_steps_never_break_the_contract(steps in proptest::collection::vec(step_strategy(), 1..120)) {
        let mut h = Harness::new();
        // key -> (owner, token, lease end in ms since start)
        let mut held: HashMap<u8, (u8, u64, u128)> = HashMap::new();
        let mut last_token: HashMap<u8, u64> = HashMap::new();
        // request id -> (key, owner, ttl) for every LOCK not yet answered
        let mut pending: HashMap<u32, (u8, u8, u64)> = HashMap::new();
        let mut disconnected = std::collections::HashSet::new();

        for step in steps {
            let (replies, granted_at) = match step {
                Step::Lock { key, owner, ttl, wait } => {
                    if disconnected.contains(&owner) { continue; }
                    let replies = h.lock(u64::from(owner), &format!("k{key}"), &format!("o{owner}"), u64::from(ttl), u64::from(wait));
                    pending.insert(h.next_request, (key, owner, u64::from(ttl)));
                    (replies, GrantedAt::Now)
                }
                Step::Unlock { key, owner } => {
                    let mut replies = h.unlock_all(&format!("k{key}"), &format!("o{owner}"));
                    let now = h.elapsed_ms();
                    let live = held.get(&key).is_some_and(|&(o, _, end)| o == owner && end > now);
                    match replies.remove(0).1 {
                        Response::Released(released) => {
                            prop_assert!(live, "released k{} which o{} does not hold", key, owner);
                            prop_assert_eq!(released.token, held[&key].1);
                            held.remove(&key);
                        }
                        other => prop_assert!(!live, "refused a live holder's unlock: {:?}", other),
                    }
                    (replies, GrantedAt::Now)
                }
                Step::Extend { key, owner, ttl } => {
                    let response = h.extend(&format!("k{key}"), &format!("o{owner}"), u64::from(ttl));
                    let now = h.elapsed_ms();
                    let live = held.get(&key).is_some_and(|&(o, _, end)| o == owner && end > now);
                    prop_assert_eq!(matches!(response, Response::Extended(_)), live);
                    if live {
                        held.get_mut(&key).unwrap().2 = now + u128::from(ttl);
                    }
                    (Vec::new(), GrantedAt::Now)
                }
                Step::Advance { ms } => (h.advance(u64::from(ms)), GrantedAt::PreviousLeaseEnd),
                Step::Disconnect { owner } => {
                    h.disconnect(u64::from(owner));
                    disconnected.insert(owner);
                    pending.retain(|_, &mut (_, o, _)| o != owner);
                    (Vec::new(), GrantedAt::Now)
                }
            };
            for (id, response) in replies {
                let (key, owner, ttl) = pending.remove(&id).expect("a reply to a LOCK the model knows");
                let Response::Acquired(acquired) = response else { continue };
                let now = h.elapsed_ms();
                match held.get(&key) {
                    Some(&(holder, token, end)) if end > now => {
                        prop_assert_eq!(holder, owner, "two holders of k{}", key);
                        prop_assert!(acquired.reentered);
                        prop_assert_eq!(acquired.token, token);
                    }
                    _ => {
                        prop_assert!(!acquired.reentered);
                        let last = last_token.get(&key).copied().unwrap_or(0);
                        prop_assert!(acquired.token > last, "token went backwards on k{}", key);
                        last_token.insert(key, acquired.token);
                    }
                }
                let start = match granted_at {
                    GrantedAt::Now => now,
                    GrantedAt::PreviousLeaseEnd => held.get(&key).expect("a hand-off follows a lease").2,
                };
                held.insert(key, (owner, acquired.token, start + u128::from(ttl)));
            }
            let now = h.elapsed_ms();
            held.retain(|_, &mut (_, _, end)| end > now);
            for key in 0..3u8 {
                let info = h.get(&format!("k{key}"));
                match (info, held.get(&key)) {
                    (Response::LockInfo(info), Some(&(owner, token, end))) => {
                        let expected_owner = format!("o{owner}");
                        prop_assert_eq!(&info.owner[..], expected_owner.as_bytes());
                        prop_assert_eq!(info.token, token);
                        prop_assert_eq!(u128::from(info.remaining_ms), end - now);
                    }
                    (Response::NotHeld(_), None) => {}
                    (info, model) => prop_assert!(false, "k{}: table {:?}, model {:?}", key, info, model),
                }
            }
        }
    }
}

/// The holder of `key` in `table`: owner, token, durability, lease left.
fn holder_of(
    table: &LockTable<TestReply>,
    key: &str,
    now: Instant,
) -> Option<(Bytes, u64, Durability, Duration)> {
    let index = table.find(hash(key), key.as_bytes())?;
    let holder = table.slots[index as usize].holder()?;
    let expires_at = table.clock.instant(holder.expires_at);
    (expires_at > now).then(|| {
        (
            Bytes::copy_from_slice(holder.owner),
            holder.token,
            holder.durability,
            expires_at - now,
        )
    })
}

proptest! {
    /// What a restart rebuilds from a snapshot taken at some step plus the log written
    /// after it: every persistent lock the live table holds, with the same owner and token
    /// and at least the lease it has left; and never a grant that was released.
    #[test]
    fn snapshot_plus_log_replay_rebuilds_the_persistent_locks(
        steps in proptest::collection::vec((step_strategy(), any::<bool>()), 1..120),
        snapshot_at in any::<prop::sample::Index>(),
    ) {
        let mut h = Harness::new();
        let snapshot_step = snapshot_at.index(steps.len());
        let mut snapshot = None;
        let mut released = std::collections::HashSet::new();
        for (number, (step, persistent)) in steps.into_iter().enumerate() {
            if number == snapshot_step {
                let locks = h.table.persistent_locks(h.now);
                snapshot = Some((crate::wal::snapshot::Snapshot { last_index: 0, last_term: 1, membership: Default::default(), locks }, h.log.len()));
            }
            h.durability = if persistent { Durability::Persistent } else { Durability::Ephemeral };
            let replies = match step {
                Step::Lock { key, owner, ttl, wait } => h.lock(u64::from(owner), &format!("k{key}"), &format!("o{owner}"), u64::from(ttl), u64::from(wait)),
                Step::Unlock { key, owner } => h.unlock_all(&format!("k{key}"), &format!("o{owner}")),
                Step::Extend { key, owner, ttl } => vec![(0, h.extend(&format!("k{key}"), &format!("o{owner}"), u64::from(ttl)))],
                Step::Advance { ms } => h.advance(u64::from(ms)),
                Step::Disconnect { owner } => h.disconnect(u64::from(owner)),
            };
            for (_, response) in replies {
                if let Response::Released(r) = response {
                    released.insert(r.token);
                }
            }
        }
        let (snapshot, from) = snapshot.expect("taken");
        let mut rebuilt: LockTable<TestReply> = LockTable::new(TokenSource::new(1), 16);
        let mut restorer = Restorer::new(&mut rebuilt, h.now);
        restorer.restore(&snapshot);
        for (index, command) in h.log[from..].iter().enumerate() {
            restorer.apply_entry(&Entry { index: index as u64 + 1, term: 1, kind: crate::raft::EntryKind::Command(command.clone()) });
        }
        for key in 0..3u8 {
            let key = format!("k{key}");
            let live = holder_of(&h.table, &key, h.now)
                .filter(|(_, _, durability, _)| *durability == Durability::Persistent);
            let replayed = holder_of(&rebuilt, &key, h.now);
            match (&live, &replayed) {
                (Some((owner, token, _, left)), Some((replayed_owner, replayed_token, _, replayed_left))) => {
                    prop_assert_eq!((replayed_owner, replayed_token), (owner, token), "{}", key);
                    prop_assert!(replayed_left >= left, "{}: lease shortened", key);
                }
                (None, None) => {}
                // Releases and expiries are logged, so the rebuilt table holds exactly the
                // persistent locks the live one holds.
                (live, replayed) => prop_assert!(false, "{}: live {:?}, rebuilt {:?}", key, live, replayed),
            }
            if let Some((_, token, _, _)) = replayed {
                prop_assert!(!released.contains(&token), "{}: a released grant came back", key);
            }
        }
    }
}

#[test]
fn a_read_waits_for_the_commit_of_the_decision_it_would_see() {
    let mut h = Harness::new();
    h.durability = Durability::Persistent;
    let token = token_of(&h.lock(1, "k", "alice", 1000, 0)); // committed
                                                             // A release is logged but not yet durable; in the same turn a GET asks about the key.
    let seq = h.table.commit_seq();
    let mut out = Output::default();
    let release = Unlock {
        key: Bytes::from_static(b"k"),
        owner: Bytes::from_static(b"alice"),
        token: Some(token),
    };
    let reply = h.reply(0);
    h.table.unlock(h.now, hash("k"), &release, reply, &mut out);
    let reply = h.reply(0);
    h.table.get(h.now, hash("k"), b"k", reply, &mut out);
    assert!(
        out.replies.is_empty(),
        "nothing about k may be sent before the release is durable: {:?}",
        out.replies
    );
    assert!(out
        .durable_replies
        .iter()
        .all(|(waits_for, _, _)| *waits_for == seq));
    assert!(matches!(
        &out.durable_replies[..],
        [(_, _, Response::Released(_)), (_, _, Response::NotHeld(_))]
    ));
    assert_eq!(
        h.table.len(),
        1,
        "the freed lock is kept until its release is durable"
    );
    h.table.commit_durable(seq);
    assert_eq!(h.table.len(), 0, "and forgotten after");
}

#[test]
fn re_entering_an_ephemeral_lock_as_persistent_makes_it_persistent() {
    let mut h = Harness::new();
    let token = token_of(&h.lock(1, "k", "alice", 1000, 0)); // ephemeral
    assert!(h.log.is_empty());
    h.durability = Durability::Persistent;
    let again = h.lock(1, "k", "alice", 1000, 0);
    assert!(matches!(&again[..], [(_, Response::Acquired(a))] if a.token == token && a.reentered));
    assert!(
        matches!(&h.log[..], [crate::wal::record::Command::Grant { token: logged, .. }] if *logged == token)
    );
    assert!(
        matches!(h.get("k"), Response::LockInfo(info) if info.durability == Durability::Persistent)
    );
}

#[test]
fn a_persistent_lease_that_ends_is_logged_as_released() {
    let mut h = Harness::new();
    h.durability = Durability::Persistent;
    let token = token_of(&h.lock(1, "k", "alice", 100, 0));
    h.advance(100);
    assert!(
        matches!(&h.log[..], [crate::wal::record::Command::Grant { .. }, crate::wal::record::Command::Release { token: released, .. }] if *released == token)
    );
}

#[test]
fn a_table_counted_from_the_origin_starts_every_lease_in_full_when_it_takes_over() {
    let start = Instant::now();
    let mut table: LockTable<TestReply> = LockTable::new(TokenSource::new(1), 16);
    // The clock may have seen instants before (a follower's table is given some).
    table.cancel_connection(9, start, &mut Output::default());
    let entry = |index: u64, command: Command| Entry {
        index,
        term: 1,
        kind: crate::raft::EntryKind::Command(command),
    };
    let grant = |key: &str, owner: &str, token: u64, ttl_ms: u64| Command::Grant {
        key: Bytes::copy_from_slice(key.as_bytes()),
        owner: Bytes::copy_from_slice(owner.as_bytes()),
        token,
        ttl_ms,
    };
    {
        let mut restorer = Restorer::counting_from_origin(&mut table);
        restorer.apply_entry(&entry(1, grant("short", "a", 5, 1_000)));
        restorer.apply_entry(&entry(2, grant("long", "b", 6, 60_000)));
        restorer.apply_entry(&entry(
            3,
            Command::Extend {
                key: Bytes::from_static(b"short"),
                token: 5,
                ttl_ms: 2_000,
            },
        ));
    }
    // Phase 1: before taking over, a snapshot records each lock's whole lease.
    let ttls = |locks: Vec<crate::wal::snapshot::SnapshotLock>| {
        let mut ttls: Vec<(Bytes, u64)> = locks
            .into_iter()
            .map(|lock| (lock.key, lock.ttl_ms))
            .collect();
        ttls.sort();
        ttls
    };
    let whole = vec![
        (Bytes::from_static(b"long"), 60_000),
        (Bytes::from_static(b"short"), 2_000),
    ];
    assert_eq!(ttls(table.persistent_locks_counted_from_origin()), whole);

    // Phase 2: an hour later this node takes over: every lease starts in full then.
    let takeover = start + Duration::from_secs(3600);
    table.restart_leases(takeover);
    assert_eq!(
        table.next_deadline(),
        Some(takeover + Duration::from_secs(2))
    );
    assert_eq!(ttls(table.persistent_locks(takeover)), whole);

    // Phase 3: the leases end exactly then, not before.
    let mut out = Output::default();
    table.fire_timers(takeover + Duration::from_millis(1_999), 16, &mut out);
    assert!(holder_of(&table, "short", takeover + Duration::from_millis(1_999)).is_some());
    table.fire_timers(takeover + Duration::from_secs(2), 16, &mut out);
    assert!(holder_of(&table, "short", takeover + Duration::from_secs(2)).is_none());
    let long = holder_of(&table, "long", takeover + Duration::from_secs(2)).expect("held");
    assert_eq!(long.3, Duration::from_secs(58));
}
