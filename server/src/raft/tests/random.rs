//! Randomized safety runs of whole clusters of Raft cores, each driven by one `u64` seed
//! that is printed on failure and replays the run exactly.
//!
//! The network reorders, drops and duplicates messages and cuts links; nodes crash and
//! restart from what they had flushed (a crash may land between `ready` and `advance`,
//! losing the unflushed writes and the messages that promised them); nodes compact their
//! logs, voters are removed and added back, reads ask for a ReadIndex. After every step:
//! - Election Safety (§5.2): at most one leader per term, ever;
//! - State Machine Safety (§5.4.3): every node's state after applying index i (a running
//!   digest of every entry applied, carried through snapshots) is the same;
//! - Leader Completeness (§5.4): a new leader's log holds every entry applied anywhere;
//! - Log Matching (§5.3), checked every few steps over the in-memory logs;
//! - linearizable reads: a confirmed read's index covers everything committed anywhere
//!   before the read was asked;
//! - stored terms never go backwards.
//!
//! Then the network heals and the cluster must commit a last command on every voter.
//! `KAHU_RAFT_SEEDS=N` runs N seeds (default 1000); `KAHU_RAFT_SEED=S` runs seed S alone.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::super::{
    Config, Entry, EntryKind, InitialState, Membership, MembershipChange, Message, NodeId, Raft,
    Role, Snapshot, SnapshotMeta,
};
use super::{Command, Storage};

const NODES: u64 = 5;
const STEPS: usize = 3_000;
const SEEDS_DEFAULT: u64 = 1_000;
/// Rounds of ticks and delivery the healed cluster gets to commit a last command.
const CONVERGE_ROUNDS_MAX: usize = 500;

struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

struct SimNode {
    raft: Raft<Command>,
    storage: Storage,
    config: Config,
    /// The state machine: a digest of every entry applied, and the last index applied.
    digest: u64,
    digest_index: u64,
}

fn digest_step(digest: u64, entry: &Entry<Command>) -> u64 {
    let kind = match &entry.kind {
        EntryKind::Noop => 1,
        EntryKind::Command(Command(value)) => value.wrapping_mul(31).wrapping_add(2),
        EntryKind::Membership(membership) => membership
            .voters
            .iter()
            .fold(3u64, |acc, id| acc.wrapping_mul(7).wrapping_add(*id)),
    };
    let mut z = digest ^ entry.index.rotate_left(17) ^ entry.term.rotate_left(41) ^ kind;
    z = (z ^ (z >> 33)).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    z ^ (z >> 29)
}

fn restore_node(config: Config, storage: Storage) -> SimNode {
    let founding = Membership::new(1..=NODES);
    let (digest_index, digest) = match &storage.snapshot {
        Some(snapshot) => decode_state(&snapshot.data),
        None => (0, 0),
    };
    let initial = InitialState {
        hard_state: storage.hard_state,
        snapshot: storage.snapshot.clone(),
        entries: storage.entries.clone(),
        founding_membership: founding,
    };
    SimNode {
        raft: Raft::new(config.clone(), initial).expect("valid config"),
        storage,
        config,
        digest,
        digest_index,
    }
}

fn encode_state(index: u64, digest: u64) -> Bytes {
    let mut data = Vec::with_capacity(16);
    data.extend_from_slice(&index.to_le_bytes());
    data.extend_from_slice(&digest.to_le_bytes());
    Bytes::from(data)
}

fn decode_state(data: &[u8]) -> (u64, u64) {
    let index = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    let digest = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
    (index, digest)
}

struct Simulation {
    random: Random,
    nodes: BTreeMap<NodeId, SimNode>,
    in_flight: Vec<Message<Command>>,
    cut: BTreeSet<(NodeId, NodeId)>,
    leaders_by_term: BTreeMap<u64, NodeId>,
    /// The digest after applying each index, as first seen anywhere, and its entry's term.
    applied: BTreeMap<u64, (u64, u64)>,
    stored_terms: BTreeMap<NodeId, u64>,
    /// Reads asked and not yet answered: context -> (node, commit index anywhere then).
    reads: BTreeMap<u64, (NodeId, u64)>,
    next_value: u64,
    next_context: u64,
    /// This run's weather: the share of messages lost in sending, in percent.
    loss_percent: u64,
}

impl Simulation {
    fn new(seed: u64) -> Simulation {
        let mut random = Random(seed);
        let mut nodes = BTreeMap::new();
        let election_ticks = 3 + random.below(8) as u32;
        let pre_vote = random.percent(80);
        let check_quorum = random.percent(80);
        for id in 1..=NODES {
            let mut config = Config::new(id);
            config.seed = random.next();
            config.election_ticks = election_ticks;
            config.pre_vote = pre_vote;
            config.check_quorum = check_quorum;
            config.appends_in_flight_max = 1 + random.below(4) as usize;
            config.append_bytes_max = 64 + random.below(512) as usize;
            nodes.insert(id, restore_node(config, Storage::default()));
        }
        let loss_percent = [0, 0, 5, 20][random.below(4) as usize];
        let mut simulation = Simulation {
            random,
            nodes,
            in_flight: Vec::new(),
            cut: BTreeSet::new(),
            leaders_by_term: BTreeMap::new(),
            applied: BTreeMap::new(),
            stored_terms: BTreeMap::new(),
            reads: BTreeMap::new(),
            next_value: 1,
            next_context: 1,
            loss_percent: 0,
        };
        simulation.loss_percent = loss_percent;
        simulation
    }

    fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    fn random_node(&mut self) -> NodeId {
        1 + self.random.below(NODES)
    }

    /// Does `id`'s ready work completely, checking what it applies.
    fn process_ready(&mut self, id: NodeId) {
        for _ in 0..100 {
            if !self.nodes[&id].raft.has_ready() {
                return;
            }
            let node = self.nodes.get_mut(&id).expect("a node");
            let ready = node.raft.ready();
            if let Some(snapshot) = &ready.snapshot {
                node.storage.entries.clear();
                node.storage.snapshot = Some(snapshot.clone());
                let (index, digest) = decode_state(&snapshot.data);
                node.digest_index = index;
                node.digest = digest;
                let known = self.applied.get(&index).map(|(digest, _)| *digest);
                assert_eq!(
                    known,
                    Some(digest),
                    "node {id} installed a snapshot never applied"
                );
            }
            let node = self.nodes.get_mut(&id).expect("a node");
            node.storage.write(&ready.entries);
            if let Some(hard_state) = ready.hard_state {
                node.storage.hard_state = hard_state;
            }
            for index in ready.committed.clone() {
                let entry = self.nodes[&id]
                    .raft
                    .log_entry(index)
                    .expect("a committed entry")
                    .clone();
                self.apply(id, &entry);
            }
            for read in &ready.read_states {
                if let Some((asker, committed_then)) = self.reads.remove(&read.context) {
                    assert_eq!(asker, id);
                    assert!(
                        read.index >= committed_then,
                        "read at {} missed index {committed_then} committed before it",
                        read.index
                    );
                }
            }
            let node = self.nodes.get_mut(&id).expect("a node");
            let outgoing: Vec<Message<Command>> = ready
                .messages
                .into_iter()
                .chain(ready.messages_after_persist)
                .collect();
            node.raft.advance();
            self.send(outgoing);
            self.check_node(id);
        }
        panic!("node {id} is always ready");
    }

    /// Crashes `id` in the middle of its ready work: some of the writes reach the disk,
    /// only the messages that promised nothing leave, nothing is applied.
    fn crash_during_ready(&mut self, id: NodeId) {
        if !self.nodes[&id].raft.has_ready() {
            return self.restart(id);
        }
        let flushed_entries = self.random.below(3);
        let flush_hard_state = self.random.percent(30);
        let node = self.nodes.get_mut(&id).expect("a node");
        let ready = node.raft.ready();
        let keep = match flushed_entries {
            0 => 0,
            1 => ready.entries.len() / 2,
            _ => ready.entries.len(),
        };
        if ready.snapshot.is_none() {
            node.storage.write(&ready.entries[..keep]);
            if flush_hard_state && keep == ready.entries.len() {
                if let Some(hard_state) = ready.hard_state {
                    node.storage.hard_state = hard_state;
                }
            }
        }
        self.send(ready.messages);
        self.restart(id);
    }

    fn restart(&mut self, id: NodeId) {
        let node = self.nodes.remove(&id).expect("a node");
        let mut config = node.config;
        config.seed = self.random.next();
        self.nodes.insert(id, restore_node(config, node.storage));
        self.check_node(id);
    }

    fn apply(&mut self, id: NodeId, entry: &Entry<Command>) {
        let node = self.nodes.get_mut(&id).expect("a node");
        assert_eq!(
            entry.index,
            node.digest_index + 1,
            "node {id} applied out of order"
        );
        node.digest = digest_step(node.digest, entry);
        node.digest_index = entry.index;
        match self.applied.get(&entry.index) {
            Some(&(digest, _)) => assert_eq!(
                digest, node.digest,
                "state machine safety: node {id} differs at index {}",
                entry.index
            ),
            None => {
                self.applied.insert(entry.index, (node.digest, entry.term));
            }
        }
    }

    fn send(&mut self, messages: Vec<Message<Command>>) {
        for message in messages {
            let lost = self.loss_percent > 0 && self.random.percent(self.loss_percent);
            if !lost && !self.cut.contains(&(message.from, message.to)) {
                self.in_flight.push(message);
            }
        }
    }

    fn check_node(&mut self, id: NodeId) {
        let node = &self.nodes[&id];
        let raft = &node.raft;
        let stored = node.storage.hard_state.term;
        let last = self.stored_terms.insert(id, stored).unwrap_or(0);
        assert!(
            stored >= last,
            "node {id}: stored term went from {last} to {stored}"
        );
        if raft.role() != Role::Leader {
            return;
        }
        match self.leaders_by_term.get(&raft.term()) {
            Some(&leader) => assert_eq!(leader, id, "election safety: two leaders in a term"),
            None => {
                self.leaders_by_term.insert(raft.term(), id);
                // Leader Completeness: every entry applied anywhere is in the new log.
                for (&index, &(_, term)) in &self.applied {
                    if index > raft.log.snapshot_index() {
                        assert_eq!(
                            raft.log.term(index),
                            Some(term),
                            "leader completeness: leader {id} of term {} lacks index {index}",
                            raft.term()
                        );
                    }
                }
            }
        }
    }

    fn check_log_matching(&self) {
        let ids = self.ids();
        for (position, &a) in ids.iter().enumerate() {
            for &b in &ids[position + 1..] {
                let (log_a, log_b) = (&self.nodes[&a].raft.log, &self.nodes[&b].raft.log);
                let from = log_a.first_index().max(log_b.first_index());
                let to = log_a.last_index().min(log_b.last_index());
                let Some(last_same) = (from..=to)
                    .rev()
                    .find(|&index| log_a.term(index) == log_b.term(index))
                else {
                    continue;
                };
                for index in from..=last_same {
                    assert_eq!(
                        log_a.entry(index),
                        log_b.entry(index),
                        "log matching: nodes {a} and {b} differ at {index} below {last_same}"
                    );
                }
            }
        }
    }

    fn committed_anywhere(&self) -> u64 {
        self.nodes
            .values()
            .map(|node| node.raft.commit_index())
            .max()
            .unwrap_or(0)
    }

    fn deliver(&mut self, position: usize, duplicate: bool) {
        let message = if duplicate {
            self.in_flight[position].clone()
        } else {
            self.in_flight.swap_remove(position)
        };
        if self.cut.contains(&(message.from, message.to)) {
            return;
        }
        let to = message.to;
        self.nodes.get_mut(&to).expect("a node").raft.step(message);
        self.maybe_process_ready(to);
    }

    /// Does `id`'s ready work now most of the time; otherwise it waits (more messages
    /// arrive first, or a crash catches the node with unflushed work).
    fn maybe_process_ready(&mut self, id: NodeId) {
        if self.random.percent(75) {
            self.process_ready(id);
        }
    }

    fn step(&mut self) {
        let roll = self.random.below(1050);
        match roll {
            0..=449 => {
                // A burst, so delivery keeps up with what ticks produce.
                for _ in 0..1 + self.random.below(8) {
                    if self.in_flight.is_empty() {
                        break;
                    }
                    let position = self.random.below(self.in_flight.len() as u64) as usize;
                    let duplicate = self.random.percent(3);
                    self.deliver(position, duplicate);
                }
            }
            450..=499 if !self.in_flight.is_empty() => {
                let position = self.random.below(self.in_flight.len() as u64) as usize;
                self.in_flight.swap_remove(position);
            }
            500..=749 => {
                let id = self.random_node();
                self.nodes.get_mut(&id).expect("a node").raft.tick();
                self.maybe_process_ready(id);
            }
            750..=799 => {
                let id = self.random_node();
                self.process_ready(id);
            }
            800..=899 => self.propose(),
            900..=929 => self.read(),
            930..=949 => self.compact(),
            950..=969 => self.change_partition(),
            970..=979 => self.change_membership(),
            980..=989 => {
                let id = self.victim();
                self.restart(id);
            }
            990..=999 => {
                let id = self.victim();
                self.crash_during_ready(id);
            }
            1000..=1049 => {
                // A node with unflushed work crashes.
                let pending: Vec<NodeId> = self
                    .ids()
                    .into_iter()
                    .filter(|id| self.nodes[id].raft.has_ready())
                    .collect();
                if !pending.is_empty() {
                    let id = pending[self.random.below(pending.len() as u64) as usize];
                    self.crash_during_ready(id);
                }
            }
            _ => {}
        }
    }

    fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, node)| node.raft.role() == Role::Leader)
            .max_by_key(|(_, node)| node.raft.term())
            .map(|(&id, _)| id)
    }

    /// A node to crash: the leader half the time, where crashes hurt most.
    fn victim(&mut self) -> NodeId {
        match self.leader() {
            Some(id) if self.random.percent(50) => id,
            _ => self.random_node(),
        }
    }

    fn propose(&mut self) {
        let id = match self.leader() {
            Some(id) if self.random.percent(90) => id,
            _ => self.random_node(),
        };
        let count = 1 + self.random.below(4);
        let commands: Vec<Command> = (0..count)
            .map(|_| {
                self.next_value += 1;
                Command(self.next_value)
            })
            .collect();
        let node = self.nodes.get_mut(&id).expect("a node");
        if node.raft.propose(commands).is_ok() {
            // Sometimes the leader dies with its appends half sent.
            if self.random.percent(5) {
                self.crash_during_ready(id);
            } else {
                self.maybe_process_ready(id);
            }
        }
    }

    fn read(&mut self) {
        let Some(id) = self.leader() else {
            return;
        };
        let context = self.next_context;
        self.next_context += 1;
        let committed_then = self.committed_anywhere();
        let node = self.nodes.get_mut(&id).expect("a node");
        if node.raft.read_index(context).is_ok() {
            self.reads.insert(context, (id, committed_then));
            self.process_ready(id);
        }
    }

    fn compact(&mut self) {
        let id = self.random_node();
        let node = self.nodes.get_mut(&id).expect("a node");
        let index = node.digest_index;
        if index <= node.raft.log.snapshot_index() || node.raft.applied_index() != index {
            return;
        }
        let term = node
            .raft
            .log
            .term(index)
            .expect("applied entries are in the log");
        let snapshot = Snapshot {
            meta: SnapshotMeta {
                index,
                term,
                membership: node.raft.membership_at(index).clone(),
            },
            data: encode_state(index, node.digest),
        };
        node.storage.snapshot = Some(snapshot.clone());
        node.storage.entries.retain(|entry| entry.index > index);
        node.raft.compact(snapshot);
    }

    fn change_partition(&mut self) {
        self.cut.clear();
        if self.random.percent(40) {
            return; // healed
        }
        // A random minority (one or two nodes) cut off from the rest, or one link.
        let minority: Vec<NodeId> = (0..1 + self.random.below(2))
            .map(|_| self.random_node())
            .collect();
        for &inside in &minority {
            for outside in 1..=NODES {
                if !minority.contains(&outside) {
                    self.cut.insert((inside, outside));
                    if self.random.percent(80) {
                        self.cut.insert((outside, inside));
                    }
                }
            }
        }
    }

    fn change_membership(&mut self) {
        let Some(id) = self.leader() else {
            return;
        };
        let voters = self.nodes[&id].raft.membership().voters.clone();
        let target = self.random_node();
        let change = if voters.contains(&target) {
            if voters.len() <= 3 {
                return;
            }
            MembershipChange::RemoveVoter(target)
        } else {
            MembershipChange::AddVoter(target, None)
        };
        let node = self.nodes.get_mut(&id).expect("a node");
        if node.raft.propose_membership(change).is_ok() {
            self.process_ready(id);
        }
    }

    /// Heals everything and runs until the cluster commits one more command everywhere.
    fn converge(&mut self) {
        self.cut.clear();
        self.loss_percent = 0;
        let mut target = None;
        for _ in 0..CONVERGE_ROUNDS_MAX {
            for id in self.ids() {
                self.nodes.get_mut(&id).expect("a node").raft.tick();
                self.process_ready(id);
            }
            while !self.in_flight.is_empty() {
                self.deliver(0, false);
            }
            for id in self.ids() {
                self.process_ready(id);
            }
            if target.is_none() {
                if let Some(leader) = self.leader() {
                    self.next_value += 1;
                    let node = self.nodes.get_mut(&leader).expect("a node");
                    if let Ok(index) = node.raft.propose(vec![Command(self.next_value)]) {
                        target = Some((leader, index));
                        self.process_ready(leader);
                    }
                }
            }
            if let Some((leader, index)) = target {
                let voters = self.nodes[&leader].raft.membership().voters.clone();
                if voters
                    .iter()
                    .all(|voter| self.nodes[voter].digest_index >= index)
                {
                    return;
                }
                if self.nodes[&leader].raft.role() != Role::Leader {
                    target = None;
                }
            }
        }
        panic!("the healed cluster did not commit a command on every voter");
    }
}

fn run(seed: u64) {
    let mut simulation = Simulation::new(seed);
    for step in 0..STEPS {
        simulation.step();
        if step % 50 == 0 {
            simulation.check_log_matching();
        }
    }
    simulation.check_log_matching();
    simulation.converge();
    simulation.check_log_matching();
    if std::env::var("KAHU_RAFT_STATS").is_ok() {
        eprintln!(
            "seed {seed}: {} entries applied, {} terms with a leader, {} reads pending, {} in flight",
            simulation.applied.len(),
            simulation.leaders_by_term.len(),
            simulation.reads.len(),
            simulation.in_flight.len()
        );
    }
}

fn run_reporting_seed(seed: u64) {
    let outcome = std::panic::catch_unwind(|| run(seed));
    if let Err(panic) = outcome {
        eprintln!("raft simulation failed with seed {seed}: replay with KAHU_RAFT_SEED={seed}");
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn random_clusters_keep_the_safety_properties_and_converge() {
    if let Some(seed) = std::env::var("KAHU_RAFT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return run_reporting_seed(seed);
    }
    let seeds = std::env::var("KAHU_RAFT_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEEDS_DEFAULT);
    for seed in 0..seeds {
        run_reporting_seed(seed);
    }
}
