//! Tests of the Raft core over a scripted network: every message goes through a queue the
//! test controls (deliver, drop, cut links, crash nodes), every node's storage is a plain
//! in-memory log, and time moves only when a test ticks. Each file checks one part of the
//! paper and names its section.

mod election;
mod membership;
mod purity;
mod random;
mod read_index;
mod replication;
mod snapshot;
mod transfer;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use super::{
    Config, Entry, EntryKind, HardState, InitialState, Membership, Message, NodeId, Payload, Raft,
    Role, Snapshot, SnapshotMeta,
};

/// A command in the tests: a number, 8 bytes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command(pub u64);

impl Payload for Command {
    fn size_bytes(&self) -> usize {
        8
    }
}

/// What a node has on disk.
#[derive(Clone, Debug, Default)]
pub struct Storage {
    pub hard_state: HardState,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry<Command>>,
}

impl Storage {
    fn write(&mut self, entries: &[Entry<Command>]) {
        let Some(first) = entries.first() else {
            return;
        };
        self.entries.retain(|entry| entry.index < first.index);
        if let Some(last) = self.entries.last() {
            assert_eq!(last.index + 1, first.index, "gap in the stored log");
        }
        self.entries.extend_from_slice(entries);
    }

    fn install(&mut self, snapshot: &Snapshot) {
        self.entries.clear();
        self.snapshot = Some(snapshot.clone());
    }

    /// The term of the stored entry at `index`.
    pub fn term(&self, index: u64) -> Option<u64> {
        self.entries
            .iter()
            .find(|entry| entry.index == index)
            .map(|entry| entry.term)
    }
}

pub struct Node {
    pub raft: Raft<Command>,
    pub storage: Storage,
    /// Applied commands by index, from the snapshot (as one marker) and the log.
    pub applied: BTreeMap<u64, EntryKind<Command>>,
    pub read_states: Vec<super::ReadState>,
    pub config: Config,
}

impl Node {
    fn new(config: Config, storage: Storage, founding: &Membership) -> Node {
        let initial = InitialState {
            hard_state: storage.hard_state,
            snapshot: storage.snapshot.clone(),
            entries: storage.entries.clone(),
            founding_membership: founding.clone(),
        };
        Node {
            raft: Raft::new(config.clone(), initial).expect("valid config"),
            storage,
            applied: BTreeMap::new(),
            read_states: Vec::new(),
            config,
        }
    }
}

/// A cluster on a scripted network.
pub struct Network {
    pub nodes: BTreeMap<NodeId, Node>,
    pub queue: VecDeque<Message<Command>>,
    /// Links (from, to) that drop every message.
    cut: BTreeSet<(NodeId, NodeId)>,
    founding: Membership,
    /// Messages delivered so far, by kind, for tests that count round trips.
    pub delivered: BTreeMap<&'static str, usize>,
}

/// Steps of delivery before a test is sure something loops forever.
const STABILIZE_STEPS_MAX: usize = 100_000;

impl Network {
    /// `voters` founding members with default settings (pre-vote and check-quorum on).
    pub fn new(voters: u64) -> Network {
        Network::with_config(voters, |_| {})
    }

    pub fn with_config(voters: u64, configure: impl Fn(&mut Config)) -> Network {
        let founding = Membership::new(1..=voters);
        let mut network = Network {
            nodes: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            founding: founding.clone(),
            delivered: BTreeMap::new(),
        };
        for id in 1..=voters {
            let mut config = Config::new(id);
            configure(&mut config);
            network
                .nodes
                .insert(id, Node::new(config, Storage::default(), &founding));
        }
        network
    }

    /// Adds a node with empty storage and no membership: it waits for a leader.
    pub fn add_empty_node(&mut self, id: NodeId) {
        let config = Config::new(id);
        let node = Node::new(config, Storage::default(), &Membership::default());
        self.nodes.insert(id, node);
    }

    pub fn raft(&self, id: NodeId) -> &Raft<Command> {
        &self.nodes[&id].raft
    }

    pub fn raft_mut(&mut self, id: NodeId) -> &mut Raft<Command> {
        &mut self.nodes.get_mut(&id).expect("a node").raft
    }

    /// Does every node's ready work: persist, queue messages, apply.
    pub fn process_ready(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.process_ready_of(id);
        }
    }

    pub fn process_ready_of(&mut self, id: NodeId) {
        for _ in 0..100 {
            let node = self.nodes.get_mut(&id).expect("a node");
            if !node.raft.has_ready() {
                return;
            }
            let ready = node.raft.ready();
            if let Some(snapshot) = &ready.snapshot {
                node.storage.install(snapshot);
                node.applied.retain(|&index, _| index > snapshot.meta.index);
                node.applied.insert(snapshot.meta.index, EntryKind::Noop);
            }
            node.storage.write(&ready.entries);
            if let Some(hard_state) = ready.hard_state {
                node.storage.hard_state = hard_state;
            }
            for index in ready.committed.clone() {
                let entry = node.raft.log_entry(index).expect("a committed entry");
                let previous = node.applied.insert(index, entry.kind.clone());
                assert!(previous.is_none(), "entry {index} applied twice");
            }
            node.read_states.extend(ready.read_states.iter().copied());
            let messages = ready
                .messages
                .into_iter()
                .chain(ready.messages_after_persist);
            let mut outgoing: Vec<Message<Command>> = messages.collect();
            node.raft.advance();
            outgoing.retain(|message| !self.cut.contains(&(message.from, message.to)));
            self.queue.extend(outgoing);
        }
        panic!("node {id} is always ready");
    }

    /// Delivers one queued message; false if none.
    pub fn deliver_one(&mut self) -> bool {
        let Some(message) = self.queue.pop_front() else {
            return false;
        };
        if self.cut.contains(&(message.from, message.to)) {
            return true;
        }
        *self.delivered.entry(message.body.name()).or_default() += 1;
        if let Some(node) = self.nodes.get_mut(&message.to) {
            let to = message.to;
            node.raft.step(message);
            self.process_ready_of(to);
        }
        true
    }

    /// Delivers messages and does ready work until nothing is left.
    pub fn stabilize(&mut self) {
        self.process_ready();
        for _ in 0..STABILIZE_STEPS_MAX {
            if !self.deliver_one() {
                self.process_ready();
                if self.queue.is_empty() {
                    return;
                }
            }
        }
        panic!("the network did not stabilize");
    }

    pub fn tick(&mut self, id: NodeId, ticks: u32) {
        for _ in 0..ticks {
            self.raft_mut(id).tick();
            self.process_ready_of(id);
        }
    }

    pub fn tick_all(&mut self, ticks: u32) {
        for _ in 0..ticks {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.raft_mut(id).tick();
            }
            self.stabilize();
        }
    }

    /// As if an election timeout passed on every follower without word from a leader, so
    /// they stop ignoring candidates (check-quorum's leader lease).
    pub fn expire_leases(&mut self) {
        for node in self.nodes.values_mut() {
            if node.raft.role() != Role::Leader {
                node.raft.election_elapsed = node.config.election_ticks;
            }
        }
    }

    /// Makes `id` campaign after the other nodes' leases expired, and delivers everything;
    /// asserts it won.
    pub fn elect(&mut self, id: NodeId) {
        self.expire_leases();
        self.raft_mut(id).campaign_now();
        self.stabilize();
        assert_eq!(self.raft(id).role(), Role::Leader, "node {id} did not win");
    }

    pub fn propose(&mut self, id: NodeId, commands: &[u64]) -> u64 {
        let commands = commands.iter().map(|&value| Command(value)).collect();
        let last = self.raft_mut(id).propose(commands).expect("leader");
        self.stabilize();
        last
    }

    /// Drops every message between `id` and the rest, both ways.
    pub fn isolate(&mut self, id: NodeId) {
        let others: Vec<NodeId> = self.nodes.keys().copied().filter(|&o| o != id).collect();
        for other in others {
            self.cut.insert((id, other));
            self.cut.insert((other, id));
        }
    }

    pub fn cut_link(&mut self, from: NodeId, to: NodeId) {
        self.cut.insert((from, to));
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Restarts `id` from its storage; messages to it in flight stay queued.
    pub fn restart(&mut self, id: NodeId) {
        let node = self.nodes.remove(&id).expect("a node");
        let restarted = Node::new(node.config, node.storage, &self.founding);
        self.nodes.insert(id, restarted);
    }

    /// The commands each node applied, in order (snapshot markers excluded).
    pub fn applied_commands(&self, id: NodeId) -> Vec<u64> {
        self.nodes[&id]
            .applied
            .values()
            .filter_map(|kind| match kind {
                EntryKind::Command(Command(value)) => Some(*value),
                _ => None,
            })
            .collect()
    }

    /// (index, term) of every entry in a node's stored log.
    pub fn stored_log(&self, id: NodeId) -> Vec<(u64, u64)> {
        self.nodes[&id]
            .storage
            .entries
            .iter()
            .map(|entry| (entry.index, entry.term))
            .collect()
    }

    pub fn leaders(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, node)| node.raft.role() == Role::Leader)
            .map(|(&id, _)| id)
            .collect()
    }
}

/// A snapshot of a node's applied state at its applied index, as a state machine would
/// make one.
pub fn snapshot_of(network: &Network, id: NodeId) -> Snapshot {
    let raft = network.raft(id);
    let index = raft.applied_index();
    let term = network.nodes[&id]
        .storage
        .term(index)
        .or_else(|| {
            let snapshot = network.nodes[&id].storage.snapshot.as_ref()?;
            (snapshot.meta.index == index).then_some(snapshot.meta.term)
        })
        .expect("term of the applied index");
    let commands = network.applied_commands(id);
    let data: Vec<u8> = commands
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect();
    Snapshot {
        meta: SnapshotMeta {
            index,
            term,
            membership: raft.membership_at(index).clone(),
        },
        data: Bytes::from(data),
    }
}
