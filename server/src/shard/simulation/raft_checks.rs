//! Raft's safety properties, checked on the real replicas' cores as the simulation runs
//! (the paper's names and sections):
//! - Election Safety (§5.2): at most one leader per term per shard, ever;
//! - one vote per term: a node never grants two candidates its vote in one term, and what
//!   it stored before a crash still says so when it restarts;
//! - State Machine Safety (§5.4.3): the entry committed at an index is the same on every
//!   node, ever;
//! - Leader Completeness (§5.4): a new leader's log holds every entry committed before;
//! - Log Matching (§5.3): two logs with the same term at an index are the same up to it.

use std::collections::BTreeMap;

use crate::raft::{Entry, HardState, NodeId, Raft};
use crate::wal::record::Command;

#[derive(Debug, Default)]
struct ShardLedger {
    leaders_by_term: BTreeMap<u64, NodeId>,
    /// Every entry seen committed, by index.
    committed: BTreeMap<u64, Entry<Command>>,
    /// Per node: the commit index up to which its log was compared with `committed`.
    checked: BTreeMap<NodeId, u64>,
    /// (term, voter) -> the candidate it voted for.
    votes: BTreeMap<(u64, NodeId), NodeId>,
}

#[derive(Debug)]
pub(super) struct RaftChecks {
    shards: Vec<ShardLedger>,
}

impl RaftChecks {
    pub fn new(shards: usize) -> RaftChecks {
        RaftChecks {
            shards: (0..shards).map(|_| ShardLedger::default()).collect(),
        }
    }

    /// `voter` sent a granted vote to `candidate` for `term`.
    pub fn vote_sent(&mut self, shard: usize, voter: NodeId, term: u64, candidate: NodeId) {
        let ledger = &mut self.shards[shard];
        let earlier = *ledger.votes.entry((term, voter)).or_insert(candidate);
        assert_eq!(
            earlier, candidate,
            "shard {shard}: node {voter} voted for {earlier} and {candidate} in term {term}"
        );
    }

    /// `node` restarted with `stored` on disk: it must remember every vote it gave.
    pub fn restarted(&mut self, shard: usize, node: NodeId, stored: HardState) {
        let ledger = &mut self.shards[shard];
        ledger.checked.insert(node, 0);
        for (&(term, voter), &candidate) in &ledger.votes {
            if voter != node {
                continue;
            }
            assert!(
                stored.term >= term,
                "shard {shard}: node {node} voted in term {term} but restarted with term {}",
                stored.term
            );
            if stored.term == term {
                assert_eq!(
                    stored.vote, candidate,
                    "shard {shard}: node {node} voted for {candidate} in term {term} but restarted remembering {}",
                    stored.vote
                );
            }
        }
    }

    /// Checks `node`'s core after it did something.
    pub fn observe(&mut self, shard: usize, node: NodeId, raft: &Raft<Command>) {
        let ledger = &mut self.shards[shard];
        if raft.is_leader() {
            match ledger.leaders_by_term.get(&raft.term()) {
                Some(&leader) => assert_eq!(
                    leader,
                    node,
                    "election safety: shard {shard} has leaders {leader} and {node} in term {}",
                    raft.term()
                ),
                None => {
                    ledger.leaders_by_term.insert(raft.term(), node);
                    check_completeness(ledger, shard, node, raft);
                }
            }
        }
        let commit = raft.commit_index();
        let from = ledger.checked.get(&node).copied().unwrap_or(0) + 1;
        for index in from..=commit {
            let Some(entry) = raft.log_entry(index) else {
                continue; // compacted into a snapshot
            };
            match ledger.committed.get(&index) {
                Some(known) => assert_eq!(
                    known, entry,
                    "state machine safety: shard {shard} node {node} committed another entry at {index}"
                ),
                None => {
                    ledger.committed.insert(index, entry.clone());
                }
            }
        }
        ledger.checked.insert(node, commit.max(from - 1));
    }

    /// Log Matching over every pair of `logs` of one shard.
    pub fn check_log_matching(&self, shard: usize, logs: &[(NodeId, &Raft<Command>)]) {
        for (position, &(a, log_a)) in logs.iter().enumerate() {
            for &(b, log_b) in &logs[position + 1..] {
                let from = first_index(log_a).max(first_index(log_b));
                let to = log_a.last_index().min(log_b.last_index());
                let Some(last_same) = (from..=to)
                    .rev()
                    .find(|&index| log_a.term_at(index) == log_b.term_at(index))
                else {
                    continue;
                };
                for index in from..=last_same {
                    assert_eq!(
                        log_a.log_entry(index),
                        log_b.log_entry(index),
                        "log matching: shard {shard} nodes {a} and {b} differ at {index}, below {last_same} where their terms match"
                    );
                }
            }
        }
    }

    /// Whether a leader of `term` was seen.
    pub fn knows_leader(&self, shard: usize, term: u64) -> bool {
        self.shards[shard].leaders_by_term.contains_key(&term)
    }

    pub fn terms_with_leader(&self) -> usize {
        self.shards
            .iter()
            .map(|ledger| ledger.leaders_by_term.len())
            .sum()
    }

    pub fn committed_entries(&self) -> usize {
        self.shards
            .iter()
            .map(|ledger| ledger.committed.len())
            .sum()
    }
}

/// Leader Completeness: `node`, newly leading, holds every entry committed so far.
fn check_completeness(ledger: &ShardLedger, shard: usize, node: NodeId, raft: &Raft<Command>) {
    for (&index, entry) in &ledger.committed {
        assert!(
            index <= raft.last_index(),
            "leader completeness: shard {shard} leader {node} of term {} ends at {} before committed index {index}",
            raft.term(),
            raft.last_index()
        );
        if let Some(own) = raft.log_entry(index) {
            assert_eq!(
                own,
                entry,
                "leader completeness: shard {shard} leader {node} of term {} has another entry at committed index {index}",
                raft.term()
            );
        }
    }
}

/// The first index whose entry the core still holds (the entries after its snapshot).
fn first_index(raft: &Raft<Command>) -> u64 {
    let last = raft.last_index();
    if last == 0 || raft.log_entry(1).is_some() {
        return 1;
    }
    // Held entries are contiguous and end at `last`: find the first by bisection.
    let (mut low, mut high) = (1, last + 1);
    while low < high {
        let middle = low + (high - low) / 2;
        if raft.log_entry(middle).is_some() {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    low
}
