//! What the lock table of one shard costs per request, alone: no channel, no socket, no log
//! write, no clock read (the worker reads the clock once per turn; here `now` is fixed, so
//! no lease ends while measured).
//!
//! Every case runs on a table that already holds [`OTHER_LOCKS`] ephemeral locks (leases of
//! 1 to 60 s, so the timer set is full and the bench lock's timer lands inside it). The key
//! hash is computed once beforehand, as the connection computes it before routing.
//!
//! | id | one iteration is |
//! |---|---|
//! | `table/acquire_release/ephemeral` | LOCK then UNLOCK of one free key, both granted |
//! | `table/acquire_release/persistent` | the same, each in its own worker turn: after each call, the turn's log commands are dropped (not written) and `begin_commit` + `commit_durable` run as in `ShardWorker::persist_and_reply` |
//! | `table/handoff/unlock_grants_waiter` | UNLOCK of a lock with one queued waiter: RELEASED to the holder, ACQUIRED to the waiter |
//! | `table/handoff/enqueue_waiter` | LOCK with WAIT on a held lock: queued |
//!
//! The two hand-off cases run the same steps over [`HANDOFF_LOCKS`] locks, each held by one
//! of two owners: queue the other owner on each lock, then unlock each (it passes to the
//! waiter), and again with the owners swapped. Each times one of the two steps. UNLOCKs
//! carry no token (any grant of the owner); replies are dropped when the turn ends.
//!
//! Before each case the allocations per operation are counted over a separate untimed run
//! and printed (`allocations/op`), by a global allocator that counts only while told to.
//!
//! Run: `cargo bench -p kahu-server --bench table`.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use kahu_protocol::{Durability, Lock, Response, Unlock};
use kahu_server::shard::key_hash;
use kahu_server::shard::table::{LockTable, Output, ReplyTarget};
use kahu_server::shard::tokens::TokenSource;

const SAMPLE_COUNT: usize = 30;
const WARM_UP: Duration = Duration::from_millis(500);
const MEASUREMENT: Duration = Duration::from_secs(2);
/// Locks held in the table besides the ones measured.
const OTHER_LOCKS: usize = 100_000;
/// Locks the hand-off cases cycle through.
const HANDOFF_LOCKS: usize = 1024;
/// The server's default.
const WAITERS_PER_LOCK_MAX: usize = 1024;
const TTL_MS: u64 = 30_000;
const WAIT_MS: u64 = 2_000;
/// Operations each untimed allocation count runs over.
const COUNTED_OPERATIONS: u64 = 10_000;

#[path = "../../protocol/benches/support/counting_allocator.rs"]
mod counting_allocator;
use counting_allocator::{ALLOCATIONS, COUNTING};

/// Allocations (and reallocations) made by `work`.
fn count_allocations(work: impl FnOnce()) -> u64 {
    ALLOCATIONS.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    work();
    COUNTING.store(false, Ordering::Relaxed);
    ALLOCATIONS.load(Ordering::Relaxed)
}

fn print_allocations(id: &str, allocations: u64, operations: u64) {
    println!(
        "table/{id}: {:.2} allocations/op",
        allocations as f64 / operations as f64
    );
}

/// A reply target that is always there; the bench drops the replies.
#[derive(Debug)]
struct BenchReply {
    connection_id: u64,
}

impl ReplyTarget for BenchReply {
    fn connection_id(&self) -> u64 {
        self.connection_id
    }

    fn is_gone(&self) -> bool {
        false
    }
}

fn reply(connection_id: u64) -> BenchReply {
    BenchReply { connection_id }
}

fn lock_request(key: &Bytes, owner: &Bytes, wait_ms: u64, durability: Durability) -> Lock {
    Lock {
        key: key.clone(),
        owner: owner.clone(),
        ttl_ms: TTL_MS,
        wait_ms,
        durability,
        if_not_held: false,
    }
}

fn unlock_request(key: &Bytes, owner: &Bytes) -> Unlock {
    Unlock {
        key: key.clone(),
        owner: owner.clone(),
        token: None,
    }
}

/// A table holding [`OTHER_LOCKS`] ephemeral locks granted at `now`, owned by 1000 clients,
/// with leases spread over 1 to 60 s.
fn populated_table(now: Instant) -> LockTable<BenchReply> {
    let mut table = LockTable::new(TokenSource::new(1), WAITERS_PER_LOCK_MAX);
    let mut out = Output::default();
    for number in 0..OTHER_LOCKS {
        let lock = Lock {
            key: Bytes::from(format!("other-lock-{number:06}")),
            owner: Bytes::from(format!("client-{:04}", number % 1000)),
            ttl_ms: 1_000 + (number as u64 * 7_919) % 59_000,
            wait_ms: 0,
            durability: Durability::Ephemeral,
            if_not_held: false,
        };
        let connection_id = 10_000 + (number % 1000) as u64;
        table.lock(
            now,
            key_hash(&lock.key),
            &lock,
            reply(connection_id),
            &mut out,
        );
        out.replies.clear();
    }
    assert_eq!(table.len(), OTHER_LOCKS);
    assert_eq!(table.stats().locks_held, OTHER_LOCKS as u64);
    table
}

/// Ends a worker turn as `ShardWorker::persist_and_reply` does, without the log write:
/// the replies are sent (dropped), the turn's commands appended (dropped), its commit
/// made durable, and the replies that waited for it sent (dropped).
fn end_turn(table: &mut LockTable<BenchReply>, out: &mut Output<BenchReply>) {
    out.replies.clear();
    if !out.log.is_empty() {
        black_box(&out.log);
        out.log.clear();
        let seq = table.commit_seq();
        table.begin_commit(seq + 1);
        table.commit_durable(seq);
    }
    out.durable_replies.clear();
}

/// One client locking and unlocking a key nobody else uses.
struct AcquireRelease {
    table: LockTable<BenchReply>,
    out: Output<BenchReply>,
    now: Instant,
    hash: u64,
    lock: Lock,
    unlock: Unlock,
}

impl AcquireRelease {
    fn new(durability: Durability) -> AcquireRelease {
        let now = Instant::now();
        let key = Bytes::from_static(b"backup-lock");
        let owner = Bytes::from_static(b"worker-0001");
        let mut bench = AcquireRelease {
            table: populated_table(now),
            out: Output::default(),
            now,
            hash: key_hash(&key),
            lock: lock_request(&key, &owner, 0, durability),
            unlock: unlock_request(&key, &owner),
        };
        bench.check(durability);
        bench
    }

    fn acquire(&mut self) {
        self.table.lock(
            self.now,
            black_box(self.hash),
            black_box(&self.lock),
            reply(1),
            &mut self.out,
        );
    }

    fn release(&mut self) {
        self.table.unlock(
            self.now,
            black_box(self.hash),
            black_box(&self.unlock),
            reply(1),
            &mut self.out,
        );
    }

    /// Ephemeral: both calls in one turn. Persistent: each call in its own turn, with
    /// its own commit, as a client that waits for ACQUIRED before it sends UNLOCK.
    fn cycle(&mut self) {
        self.acquire();
        if self.lock.durability == Durability::Persistent {
            end_turn(&mut self.table, &mut self.out);
        }
        self.release();
        end_turn(&mut self.table, &mut self.out);
    }

    /// One cycle step by step, checking the replies, the log and that the key is
    /// forgotten at the end (for a persistent lock, only once its release is durable).
    fn check(&mut self, durability: Durability) {
        let persistent = durability == Durability::Persistent;
        self.acquire();
        let (replies, log) = (&self.out.replies, &self.out.log);
        let acquired: Vec<&Response> = if persistent {
            self.out
                .durable_replies
                .iter()
                .map(|(_, _, response)| response)
                .collect()
        } else {
            replies.iter().map(|(_, response)| response).collect()
        };
        assert!(
            matches!(acquired[..], [Response::Acquired(_)]),
            "{acquired:?}"
        );
        assert_eq!(log.len(), usize::from(persistent));
        end_turn(&mut self.table, &mut self.out);
        assert_eq!(self.table.len(), OTHER_LOCKS + 1);
        self.release();
        let released: Vec<&Response> = if persistent {
            self.out
                .durable_replies
                .iter()
                .map(|(_, _, response)| response)
                .collect()
        } else {
            self.out
                .replies
                .iter()
                .map(|(_, response)| response)
                .collect()
        };
        assert!(
            matches!(released[..], [Response::Released(_)]),
            "{released:?}"
        );
        assert_eq!(self.out.log.len(), usize::from(persistent));
        end_turn(&mut self.table, &mut self.out);
        assert_eq!(self.table.len(), OTHER_LOCKS);
        assert!(self.out.is_empty());
    }
}

fn acquire_release(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("table/acquire_release");
    for durability in [Durability::Ephemeral, Durability::Persistent] {
        let mut bench = AcquireRelease::new(durability);
        bench.cycle();
        let allocations = count_allocations(|| {
            for _ in 0..COUNTED_OPERATIONS {
                bench.cycle();
            }
        });
        let id = durability.name();
        print_allocations(
            &format!("acquire_release/{id}"),
            allocations,
            COUNTED_OPERATIONS,
        );
        group.bench_function(id, |bencher| bencher.iter(|| bench.cycle()));
    }
    group.finish();
}

/// Which step of a hand-off round is timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Enqueue,
    Unlock,
}

/// [`HANDOFF_LOCKS`] locks, each held by one of two owners and passed between them.
struct HandOff {
    table: LockTable<BenchReply>,
    out: Output<BenchReply>,
    now: Instant,
    hashes: Vec<u64>,
    /// Per lock, the waiting LOCK of owner 0 and of owner 1.
    locks: Vec<[Lock; 2]>,
    /// Per lock, the UNLOCK of owner 0 and of owner 1.
    unlocks: Vec<[Unlock; 2]>,
    /// Per lock, which owner holds it.
    holders: Vec<usize>,
}

impl HandOff {
    fn new() -> HandOff {
        let now = Instant::now();
        let owners = [
            Bytes::from_static(b"worker-0001"),
            Bytes::from_static(b"worker-0002"),
        ];
        let keys: Vec<Bytes> = (0..HANDOFF_LOCKS)
            .map(|number| Bytes::from(format!("job-queue-lock-{number:04}")))
            .collect();
        let mut bench = HandOff {
            table: populated_table(now),
            out: Output::default(),
            now,
            hashes: keys.iter().map(|key| key_hash(key)).collect(),
            locks: keys
                .iter()
                .map(|key| {
                    owners
                        .each_ref()
                        .map(|owner| lock_request(key, owner, WAIT_MS, Durability::Ephemeral))
                })
                .collect(),
            unlocks: keys
                .iter()
                .map(|key| owners.each_ref().map(|owner| unlock_request(key, owner)))
                .collect(),
            holders: vec![0; HANDOFF_LOCKS],
        };
        for lock in 0..HANDOFF_LOCKS {
            let request = &bench.locks[lock][0];
            bench
                .table
                .lock(now, bench.hashes[lock], request, reply(1), &mut bench.out);
        }
        end_turn(&mut bench.table, &mut bench.out);
        assert_eq!(bench.table.len(), OTHER_LOCKS + HANDOFF_LOCKS);
        bench.check();
        bench
    }

    /// The waiting connection of the owner that does not hold `lock`: one per waiter.
    fn waiter_connection(&self, lock: usize) -> u64 {
        1_000_000 + 2 * lock as u64 + (1 - self.holders[lock]) as u64
    }

    fn enqueue(&mut self, locks: Range<usize>) {
        for lock in locks {
            let connection_id = self.waiter_connection(lock);
            let request = &self.locks[lock][1 - self.holders[lock]];
            self.table.lock(
                self.now,
                black_box(self.hashes[lock]),
                black_box(request),
                reply(connection_id),
                &mut self.out,
            );
        }
    }

    fn unlock(&mut self, locks: Range<usize>) {
        for lock in locks {
            let holder = self.holders[lock];
            self.table.unlock(
                self.now,
                black_box(self.hashes[lock]),
                black_box(&self.unlocks[lock][holder]),
                reply(2 + holder as u64),
                &mut self.out,
            );
            self.holders[lock] = 1 - holder;
        }
    }

    /// Queues a waiter on each of the first `count` locks, then unlocks each; times only
    /// `timed`.
    fn round(&mut self, count: usize, timed: Step) -> Duration {
        let start = Instant::now();
        self.enqueue(0..count);
        let queued = Instant::now();
        self.unlock(0..count);
        let unlocked = Instant::now();
        end_turn(&mut self.table, &mut self.out);
        match timed {
            Step::Enqueue => queued - start,
            Step::Unlock => unlocked - queued,
        }
    }

    fn run(&mut self, iterations: u64, timed: Step) -> Duration {
        let mut left = iterations as usize;
        let mut elapsed = Duration::ZERO;
        while left > 0 {
            let count = left.min(HANDOFF_LOCKS);
            elapsed += self.round(count, timed);
            left -= count;
        }
        elapsed
    }

    /// One round: nothing answered on enqueue; RELEASED then ACQUIRED per unlock, every
    /// lock held by the other owner afterwards, no waiter left.
    fn check(&mut self) {
        self.enqueue(0..HANDOFF_LOCKS);
        assert!(self.out.is_empty());
        assert_eq!(self.table.stats().waiters, HANDOFF_LOCKS as u64);
        self.unlock(0..HANDOFF_LOCKS);
        assert_eq!(self.out.replies.len(), 2 * HANDOFF_LOCKS);
        for pair in self.out.replies.chunks(2) {
            assert!(
                matches!(
                    pair,
                    [
                        (_, Response::Released(_)),
                        (_, Response::Acquired(acquired))
                    ] if !acquired.reentered
                ),
                "{pair:?}"
            );
        }
        assert!(self.holders.iter().all(|&holder| holder == 1));
        assert_eq!(self.table.stats().waiters, 0);
        assert_eq!(
            self.table.stats().locks_held,
            (OTHER_LOCKS + HANDOFF_LOCKS) as u64
        );
        end_turn(&mut self.table, &mut self.out);
    }
}

fn handoff(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("table/handoff");
    let mut bench = HandOff::new();
    let rounds = COUNTED_OPERATIONS as usize / HANDOFF_LOCKS;
    let operations = (rounds * HANDOFF_LOCKS) as u64;
    let (mut enqueue_allocations, mut unlock_allocations) = (0, 0);
    for _ in 0..rounds {
        enqueue_allocations += count_allocations(|| bench.enqueue(0..HANDOFF_LOCKS));
        unlock_allocations += count_allocations(|| bench.unlock(0..HANDOFF_LOCKS));
        end_turn(&mut bench.table, &mut bench.out);
    }
    print_allocations(
        "handoff/unlock_grants_waiter",
        unlock_allocations,
        operations,
    );
    print_allocations("handoff/enqueue_waiter", enqueue_allocations, operations);
    group.bench_function("unlock_grants_waiter", |bencher| {
        bencher.iter_custom(|iterations| bench.run(iterations, Step::Unlock))
    });
    group.bench_function("enqueue_waiter", |bencher| {
        bencher.iter_custom(|iterations| bench.run(iterations, Step::Enqueue))
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(SAMPLE_COUNT)
        .warm_up_time(WARM_UP)
        .measurement_time(MEASUREMENT)
}

criterion_group! {
    name = benches;
    config = config();
    targets = acquire_release, handoff
}
criterion_main!(benches);
