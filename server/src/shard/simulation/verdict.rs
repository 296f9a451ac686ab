//! The end of a run: the network heals, disks work, every node restarts; once the
//! cluster has settled (one serving leader per shard, every log committed and applied
//! everywhere, no client waiting), the auditor GETs every key through the leaders. Then
//! the whole cluster loses power, restarts, settles, and the auditor GETs every key again:
//! every acknowledged persistent grant still live must be there. Then the checks over the
//! whole run: Log Matching, the replicas' tables against their leaders', and the oracle
//! over the history.

use std::collections::BTreeSet;

use bytes::Bytes;
use kahu_protocol::{ErrorCode, Response};

use super::cluster::{Event, Simulation};
use super::disk::DiskFault;
use super::history::{ms, End};
use super::oracle;
use crate::raft::NodeId;

/// How long the cluster may take to settle once healed.
const SETTLE_US_MAX: u64 = 20_000_000;
/// How long after healing a shard that still cannot write its log counts as wedged.
const WEDGE_CHECK_US: u64 = 1_000_000;

impl Simulation {
    /// Runs the clients and the faults for the run's active time, then ends the run and
    /// judges it. Returns a summary line.
    pub(super) fn run(mut self) -> String {
        for client in 0..self.settings.clients {
            let start = self.random.below(20_000);
            self.schedule(start, Event::ClientWake { client });
        }
        let first_fault = self.random.below(self.settings.fault_gap_us);
        self.schedule(first_fault, Event::Fault);
        self.faults_on = true;
        self.clients_on = true;
        self.run_until(self.settings.active_us);
        self.faults_on = false;
        self.clients_on = false;
        self.heal();
        self.settle("after the run");
        self.audit("after the run");
        self.trace(|| "the whole cluster loses power".into());
        for node in 0..self.nodes.len() {
            self.crash(node);
        }
        for node in 0..self.nodes.len() {
            self.restart(node);
        }
        self.settle("after a power cut of the whole cluster");
        self.audit("after a power cut of the whole cluster");
        self.check_log_matching();
        self.check_follower_tables();
        let (violations, coverage) = oracle::check(&self.history, self.settings.keys);
        if let Some(&(key, _)) = violations.first() {
            let texts: Vec<&str> = violations.iter().map(|(_, text)| text.as_str()).collect();
            let states: Vec<String> = (0..self.nodes.len())
                .map(|node| {
                    let shard = self.shard_of_key(key);
                    let state = self.describe_key_state(node, shard, &self.keys[key]);
                    format!("node {}: {state}", node + 1)
                })
                .collect();
            panic!(
                "the lock contract was broken ({}; network {}):\n{}\nwhat each node holds about key {key} now:\n{}",
                self.settings.describe(),
                self.network.describe(),
                texts.join("\n"),
                states.join("\n")
            );
        }
        self.summary(coverage)
    }

    /// Everything works again and every node runs.
    fn heal(&mut self) {
        self.trace(|| "the network heals, disks work, every node starts".into());
        self.network.heal();
        for node in 0..self.nodes.len() {
            self.nodes[node].disk.set_fault(DiskFault::None);
            self.restart(node);
        }
    }

    /// One serving leader per shard, every replica's log committed and applied up to the
    /// leader's last entry, and no client waiting.
    fn converged(&self) -> bool {
        if self.clients.iter().any(|client| client.call.is_some()) {
            return false;
        }
        (0..self.settings.shards).all(|shard| {
            let Some(leader) = self.serving_leader(shard) else {
                return false;
            };
            let last = self.nodes[leader]
                .worker(shard)
                .expect("the leader is up")
                .turns
                .replica
                .raft()
                .last_index();
            self.nodes.iter().all(|node| {
                node.worker(shard).is_some_and(|worker| {
                    let raft = worker.turns.replica.raft();
                    raft.last_index() == last
                        && raft.commit_index() == last
                        && raft.applied_index() == last
                })
            })
        })
    }

    fn settle(&mut self, what: &str) {
        let healed_at = self.now;
        let limit = self.now + SETTLE_US_MAX;
        let mut wedge_check = self.now + WEDGE_CHECK_US;
        while !self.converged() {
            assert!(
                self.now <= limit,
                "the cluster did not settle {what} within {}:\n{}",
                ms(SETTLE_US_MAX),
                self.status()
            );
            if !self.strict && self.now >= wedge_check {
                self.restart_wedged(healed_at);
                wedge_check = self.now + WEDGE_CHECK_US;
            }
            self.step();
        }
        self.trace(|| format!("settled {what}:\n{}", self.status()));
    }

    /// KNOWN BUG, worked around unless strict: a follower whose log truncation
    /// (`Wal::truncate_from`, replacing entries a new leader overwrote) fails in
    /// `cut_tail` (its zeroing write tears, or its sync fails) can never retry it: the
    /// retry looks for the first dropped entry in the segment, finds its record already
    /// zeroed in the page cache, and reports the log damaged, so the shard refuses every
    /// request and peer message until the process restarts (then recovery ends the log
    /// there, as intended). Such a process, still failing after its disk healed, is
    /// restarted here (a process restart: the page cache survives) so that the run goes
    /// on; replay with `KAHU_SIM_STRICT=1` to see it fail to settle (seed 401).
    fn restart_wedged(&mut self, healed_at: u64) {
        for node in 0..self.nodes.len() {
            let wedged = (0..self.settings.shards).any(|shard| {
                self.nodes[node].worker(shard).is_some_and(|worker| {
                    worker.paused.as_ref().is_some_and(|(at, error)| {
                        *at > healed_at && error.code == ErrorCode::StorageUnavailable
                    })
                })
            });
            if !wedged {
                continue;
            }
            let id = node as NodeId + 1;
            self.trace(|| {
                format!("node {id} is wedged by the known truncation bug; restarting its process")
            });
            self.stats.wedged_restarts += 1;
            self.nodes[node].crash(|| true);
            self.break_connections(id);
            self.restart(node);
        }
    }

    /// The auditor GETs every key; each must be answered.
    fn audit(&mut self, what: &str) {
        let auditor = self.auditor();
        let first = self.history.attempts.len();
        self.clients[auditor].script = (0..self.settings.keys).collect();
        self.schedule(0, Event::ClientWake { client: auditor });
        let limit = self.now + SETTLE_US_MAX;
        while !self.clients[auditor].script.is_empty() || self.clients[auditor].call.is_some() {
            assert!(
                self.now <= limit,
                "the audit {what} did not finish:\n{}",
                self.status()
            );
            self.step();
        }
        for key in 0..self.settings.keys {
            let answered = self.history.attempts[first..].iter().any(|attempt| {
                attempt.key == key
                    && attempt.end == End::Answered
                    && matches!(
                        attempt.answer,
                        Some(Response::LockInfo(_) | Response::NotHeld(_))
                    )
            });
            assert!(
                answered,
                "the audit {what} got no answer for key {key}:\n{}",
                self.status()
            );
        }
        self.settle(what);
    }

    /// Every replica holds the same persistent grants as its leader (key, owner, token;
    /// leases differ: a follower holds each whole, to start in full if it takes over).
    ///
    /// Strict: every grant, read as of the start of the run so that no lease has ended.
    /// Otherwise only the leader's grants with more than 2 s left must be everywhere: the
    /// known snapshot bug (see `KNOWN_FAILING` in `mod.rs`) makes replicas differ
    /// in grants whose lease ran out, harmlessly unless a later Extend revives one.
    fn check_follower_tables(&mut self) {
        let (at, ttl_ms_min) = if self.strict {
            (self.base(), 0)
        } else {
            (self.instant(), 2_000)
        };
        for shard in 0..self.settings.shards {
            let leader = self.serving_leader(shard).expect("settled");
            let held = |node: &mut super::node::SimNode, ttl_ms_min: u64| {
                let worker = node.worker_mut(shard).expect("up");
                worker
                    .turns
                    .replica
                    .persistent_locks(at)
                    .into_iter()
                    .filter(|lock| lock.ttl_ms > ttl_ms_min)
                    .map(|lock| (lock.key, lock.owner, lock.token))
                    .collect::<BTreeSet<(Bytes, Bytes, u64)>>()
            };
            let leader_locks = held(&mut self.nodes[leader], ttl_ms_min);
            for node in 0..self.nodes.len() {
                let node_locks = held(&mut self.nodes[node], 0);
                let missing: Vec<_> = leader_locks.difference(&node_locks).collect();
                let extra: Vec<_> = if self.strict {
                    node_locks.difference(&leader_locks).collect()
                } else {
                    Vec::new()
                };
                if let Some((key, _, _)) = missing.first().or(extra.first()) {
                    panic!(
                        "shard {shard}: node {} holds other locks than its leader {}: lacks {missing:?}, has more {extra:?}\nleader: {}\nnode: {}",
                        node + 1,
                        leader + 1,
                        self.describe_key_state(leader, shard, key),
                        self.describe_key_state(node, shard, key)
                    );
                }
            }
        }
    }

    /// What a node's replica of `shard` knows about `key`: its indexes, its newest
    /// snapshot's lock, and its log's commands about the key.
    fn describe_key_state(&self, node: usize, shard: usize, key: &[u8]) -> String {
        let Some(worker) = self.nodes[node].worker(shard) else {
            return "down".into();
        };
        let raft = worker.turns.replica.raft();
        let mut text = format!(
            "term {} last {} commit {} applied {}",
            raft.term(),
            raft.last_index(),
            raft.commit_index(),
            raft.applied_index()
        );
        let dir = std::path::PathBuf::from(format!("shard-{shard}"));
        let disk = &self.nodes[node].disk;
        let mut names = crate::wal::storage::Storage::list(disk, &dir).unwrap_or_default();
        names.sort();
        if let Some(name) = names
            .iter()
            .rev()
            .find(|name| name.starts_with("snapshot-"))
        {
            let bytes =
                crate::wal::storage::Storage::read(disk, &dir.join(name)).expect("readable");
            let snapshot = crate::wal::snapshot::Snapshot::decode(&bytes).expect("decodes");
            let locks: Vec<_> = snapshot
                .locks
                .iter()
                .filter(|lock| lock.key == key)
                .collect();
            text += &format!("; snapshot at {}: {locks:?}", snapshot.last_index);
        }
        for index in 1..=raft.last_index() {
            if let Some(entry) = raft.log_entry(index) {
                if let crate::raft::EntryKind::Command(command) = &entry.kind {
                    if command.key() == key {
                        text += &format!("; {index}@{}: {command:?}", entry.term);
                    }
                }
            }
        }
        text
    }

    fn summary(&self, coverage: oracle::Coverage) -> String {
        let attempts = &self.history.attempts;
        let answered = attempts
            .iter()
            .filter(|attempt| attempt.end == End::Answered)
            .count();
        let grants = attempts
            .iter()
            .filter(|attempt| matches!(attempt.answer, Some(Response::Acquired(_))))
            .count();
        format!(
            "seed {}: {}; {} simulated, {} turns, {} peer messages, {} attempts ({answered} answered, {grants} grants), {} windows, {} crashes, {} disk faults ({} wedged), {} pauses, {} partitions, {} terms with a leader, {} entries committed, {} snapshots sent; {} answers checked against live windows, {} against earlier tokens; history {:016x}",
            self.seed,
            self.settings.describe(),
            ms(self.now),
            self.stats.turns,
            self.stats.peer_messages,
            attempts.len(),
            self.history.windows.len(),
            self.stats.crashes,
            self.stats.disk_faults,
            self.stats.wedged_restarts,
            self.stats.pauses,
            self.stats.partitions,
            self.raft.terms_with_leader(),
            self.raft.committed_entries(),
            self.stats.snapshots_sent,
            coverage.answers_under_windows,
            coverage.ordered_tokens,
            self.history.fingerprint()
        )
    }
    /// The node that serves `shard` as leader, if exactly one does.
    pub fn serving_leader(&self, shard: usize) -> Option<usize> {
        let mut serving = self.nodes.iter().enumerate().filter(|(_, node)| {
            node.worker(shard)
                .is_some_and(|worker| worker.turns.replica.is_serving())
        });
        let (leader, _) = serving.next()?;
        serving.next().is_none().then_some(leader)
    }

    /// A line per shard: who leads, and each node's term and indexes.
    pub fn status(&self) -> String {
        let mut lines = Vec::new();
        for shard in 0..self.settings.shards {
            let nodes: Vec<String> = self
                .nodes
                .iter()
                .map(|node| match node.worker(shard) {
                    None => format!("{}: down", node.id),
                    Some(worker) => {
                        let raft = worker.turns.replica.raft();
                        format!(
                            "{}: {:?} term {} last {} commit {} applied {}{}",
                            node.id,
                            raft.role(),
                            raft.term(),
                            raft.last_index(),
                            raft.commit_index(),
                            raft.applied_index(),
                            if worker.turns.replica.is_serving() {
                                " serving"
                            } else {
                                ""
                            }
                        )
                    }
                })
                .collect();
            lines.push(format!("shard {shard}: {}", nodes.join("; ")));
        }
        lines.join("\n")
    }
}
