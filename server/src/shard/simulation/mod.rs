//! Deterministic simulation of whole kahu clusters (issue #5): 3 or 5 nodes with 1 or 2
//! shards of real [`Replica`](super::replica::Replica)s (the real Raft core, lock table
//! and write-ahead log) over a simulated network, clock and disk, with clients that lock,
//! unlock, extend and read through the cluster, all driven by one `u64` seed. A failure
//! prints the seed; the same seed replays the same run, event for event.
//!
//! - `settings.rs`: the shape of a run, drawn from its seed; `cluster.rs`: the event
//!   queue, simulated time, the workers' turns, the network's deliveries; `node.rs`: a
//!   node's replicas, started as `ShardSet::start` starts them and turned as the shard
//!   worker turns them; `disk.rs`: an in-memory disk where a crash loses what was not
//!   synced; `network.rs`: delay, reordering, loss, duplication, partitions;
//! - `client.rs` and `requests.rs`: clients that follow NOT_LEADER hints, and every
//!   attempt they make, recorded with its simulated send and receive times in
//!   `history.rs`;
//! - `faults.rs`: partitions, crashes, power cuts, disk faults, process pauses;
//!   `verdict.rs`: the healing, the audits, the checks at the end;
//! - `oracle.rs`: the lock contract over the history (mutual exclusion, no lease ends
//!   early, nothing acknowledged is lost, fencing tokens); `raft_checks.rs`: Raft's
//!   safety properties on the live cores, after every turn.
//!
//! `KAHU_SIM_SEEDS=N` runs seeds 0..N (default [`SEEDS_DEFAULT`], less [`SKIPPED`]);
//! `KAHU_SIM_SEED=S` runs seed S alone; `KAHU_SIM_TRACE=1` prints what happens (`2`: every
//! peer message too); `KAHU_SIM_STATS=1` prints a line per seed; `KAHU_SIM_KEEP_GOING=1`
//! runs every seed and names all that failed. Runs are strict: `KAHU_SIM_STRICT=0` brings
//! back the allowances once made for two bugs this simulation found, since fixed (see
//! [`KNOWN_FAILING`] and `verdict.rs`).

mod client;
mod cluster;
mod disk;
mod faults;
mod history;
mod network;
mod node;
mod oracle;
mod raft_checks;
mod random;
mod requests;
mod settings;
mod verdict;

/// Seeds run by default, split over [`PARTS`] tests so that they run in parallel.
const SEEDS_DEFAULT: u64 = 500;
const PARTS: u64 = 2;

/// Seeds that fail on the known snapshot bug (see [`KNOWN_FAILING`]), skipped by the
/// seed ranges of the default tests (not by `KAHU_SIM_SEED`). Empty this once it is fixed.
const SKIPPED: &[u64] = &[];

/// Seeds that fail on known server bugs, with whether they need `strict` to show it. Each
/// must pass once its bug is fixed; then remove it here (and from [`SKIPPED`]).
const KNOWN_FAILING: &[(u64, bool)] = &[
    // A snapshot leaves out a persistent grant whose lease ran out by the snapshotting
    // node's own count (it counts from when it applied the grant), although the log never
    // released it; a later committed Extend of that grant (decided by a leader that
    // counted it live) is then ignored when the snapshot and log are replayed (restart,
    // new leader), and the lock is lost there. 1343: two clients hold one persistent lock
    // at once; 1729: the audit gets NOT_HELD for an acknowledged 60 s lease; 1191: an older
    // grant reappears as the holder after a newer token was granted; 211: a follower's
    // table lacks a lock its leader holds.
    (1343, false),
    (1729, false),
    (1191, false),
    (211, false),
    // A failed sync (or torn write) in `cut_tail` during `Wal::truncate_from` cannot be
    // retried: the shard stays wedged until the process restarts (strict: the simulation
    // does not restart it).
    (401, true),
];

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
}

fn run(seed: u64, strict: bool) -> String {
    let trace = env_u64("KAHU_SIM_TRACE").unwrap_or(0).min(2) as u8;
    cluster::Simulation::new(seed, trace, strict).run()
}

/// Runs one seed; on failure prints how to replay it and passes the panic on.
fn run_reporting_seed(seed: u64) {
    // Strict unless KAHU_SIM_STRICT=0: both known bugs are fixed.
    let strict = std::env::var("KAHU_SIM_STRICT").map_or(true, |value| value != "0");
    match std::panic::catch_unwind(|| run(seed, strict)) {
        Ok(summary) => {
            if std::env::var("KAHU_SIM_STATS").is_ok() {
                eprintln!("{summary}");
            }
        }
        Err(panic) => {
            eprintln!(
                "kahu simulation failed with seed {seed}: replay with KAHU_SIM_SEED={seed} \
                 (add KAHU_SIM_TRACE=1 for a trace)"
            );
            std::panic::resume_unwind(panic);
        }
    }
}

/// Runs this part's share of the seeds, or the one seed asked for (in part 0). With
/// `KAHU_SIM_KEEP_GOING=1`, runs every seed and fails at the end, naming each that failed.
fn run_part(part: u64) {
    if let Some(seed) = env_u64("KAHU_SIM_SEED") {
        if part == 0 {
            run_reporting_seed(seed);
        }
        return;
    }
    let seeds = env_u64("KAHU_SIM_SEEDS").unwrap_or(SEEDS_DEFAULT);
    let keep_going = std::env::var("KAHU_SIM_KEEP_GOING").is_ok();
    let mut failed = Vec::new();
    let seeds = (part..seeds)
        .step_by(PARTS as usize)
        .filter(|seed| !SKIPPED.contains(seed));
    for seed in seeds {
        if !keep_going {
            run_reporting_seed(seed);
        } else if std::panic::catch_unwind(|| run_reporting_seed(seed)).is_err() {
            failed.push(seed);
        }
    }
    assert!(failed.is_empty(), "seeds that failed: {failed:?}");
}

#[test]
fn simulated_clusters_keep_the_lock_contract_part_0() {
    run_part(0);
}

#[test]
fn simulated_clusters_keep_the_lock_contract_part_1() {
    run_part(1);
}

/// One seed, one run: the same seed twice gives the same history, event for event.
#[test]
fn a_seed_replays_the_same_run() {
    for seed in [3, 4] {
        assert_eq!(run(seed, false), run(seed, false), "seed {seed}");
    }
}

/// The seeds that found the two bugs (both fixed), kept as regressions.
#[test]
fn known_failing_seeds_pass_once_their_bugs_are_fixed() {
    let failed: Vec<u64> = KNOWN_FAILING
        .iter()
        .filter(|&&(seed, strict)| std::panic::catch_unwind(|| run(seed, strict)).is_err())
        .map(|&(seed, _)| seed)
        .collect();
    assert!(failed.is_empty(), "seeds that still fail: {failed:?}");
}
