//! The simulated network: where the replicas' Raft messages go ([`SimOutbox`], a
//! [`PeerOutbox`]), and what happens to them on the way ([`Network`]): a random delay (so
//! messages overtake each other), loss, duplication, and partitions that cut links one way
//! or both. Clients reach every node that is up (they are outside the partitions) with the
//! same delays, but never lose a message: their connections are TCP streams that either
//! work or break.

use std::collections::BTreeSet;
use std::sync::Mutex;

use super::random::Random;
use crate::raft::{Membership, Message, NodeId};
use crate::shard::PeerOutbox;
use crate::wal::record::Command;

/// One node's outgoing Raft messages, as its replicas hand them over; the simulation takes
/// them after every turn.
#[derive(Debug, Default)]
pub(super) struct SimOutbox {
    sent: Mutex<Vec<(usize, Message<Command>)>>,
}

impl SimOutbox {
    pub fn take(&self) -> Vec<(usize, Message<Command>)> {
        std::mem::take(&mut *self.sent.lock().expect("not poisoned"))
    }
}

impl PeerOutbox for SimOutbox {
    fn send(&self, shard: usize, messages: Vec<Message<Command>>) {
        let mut sent = self.sent.lock().expect("not poisoned");
        sent.extend(messages.into_iter().map(|message| (shard, message)));
    }

    fn client_address(&self, node: NodeId) -> Option<String> {
        Some(address(node))
    }

    /// The simulated network reaches every node by its id: there are no links to keep.
    fn members_changed(&self, _shard: usize, _membership: &Membership) {}

    /// Every simulated node is reached by its id, whatever the address.
    fn reachable(&self, _node: NodeId, _address: &str) -> bool {
        true
    }
}

/// A node's client address, as NOT_LEADER hints name it.
pub(super) fn address(node: NodeId) -> String {
    format!("node-{node}")
}

/// The node a hinted address names.
pub(super) fn node_of(address: &str) -> Option<NodeId> {
    address.strip_prefix("node-")?.parse().ok()
}

/// The links and this run's weather.
#[derive(Debug)]
pub(super) struct Network {
    /// Links (from, to) that drop every message.
    cut: BTreeSet<(NodeId, NodeId)>,
    loss_percent: u64,
    duplicate_percent: u64,
    /// Messages that take a slow path (a retransmission, a busy host), in percent.
    slow_percent: u64,
}

impl Network {
    pub fn new(random: &mut Random) -> Network {
        Network {
            cut: BTreeSet::new(),
            loss_percent: random.pick(&[0, 0, 1, 5, 15]),
            duplicate_percent: random.pick(&[0, 1, 3]),
            slow_percent: random.pick(&[0, 2, 10]),
        }
    }

    pub fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        self.cut.contains(&(from, to))
    }

    /// One-way latency of one message, in microseconds.
    pub fn latency(&self, random: &mut Random) -> u64 {
        if random.percent(self.slow_percent) {
            random.between(2_000, 40_000)
        } else {
            random.between(50, 800)
        }
    }

    /// The delays after which copies of a peer message sent now arrive: none (lost or cut),
    /// one, or two (duplicated).
    pub fn deliveries(&self, random: &mut Random, from: NodeId, to: NodeId) -> Vec<u64> {
        if self.is_cut(from, to) || random.percent(self.loss_percent) {
            return Vec::new();
        }
        let mut delays = vec![self.latency(random)];
        if random.percent(self.duplicate_percent) {
            delays.push(self.latency(random));
        }
        delays
    }

    /// Everything reaches everything, nothing is lost.
    pub fn heal(&mut self) {
        self.cut.clear();
        self.loss_percent = 0;
        self.duplicate_percent = 0;
    }

    /// Replaces the partition: `node` cut off from the rest both ways. Returns the links
    /// cut now.
    pub fn isolate(&mut self, nodes: u64, node: NodeId) -> Vec<(NodeId, NodeId)> {
        self.cut.clear();
        for other in (1..=nodes).filter(|&other| other != node) {
            self.cut.insert((node, other));
            self.cut.insert((other, node));
        }
        self.cut.iter().copied().collect()
    }

    /// Replaces the partition: healed, or `isolated` cut off from the rest: both ways,
    /// only what they send, only what they receive (a leader that can hear but not be
    /// heard, or the reverse), or each link one way at random. Returns the links cut now.
    pub fn partition(
        &mut self,
        random: &mut Random,
        nodes: u64,
        isolated: &[NodeId],
    ) -> Vec<(NodeId, NodeId)> {
        self.cut.clear();
        if isolated.is_empty() {
            return Vec::new();
        }
        let shape = random.below(10);
        for &inside in isolated {
            for outside in (1..=nodes).filter(|node| !isolated.contains(node)) {
                let (outgoing, incoming) = match shape {
                    0..=5 => (true, true),
                    6 => (true, false),
                    7 => (false, true),
                    _ => {
                        let outgoing = random.percent(50);
                        (outgoing, !outgoing)
                    }
                };
                if outgoing {
                    self.cut.insert((inside, outside));
                }
                if incoming {
                    self.cut.insert((outside, inside));
                }
            }
        }
        self.cut.iter().copied().collect()
    }

    pub fn describe(&self) -> String {
        format!(
            "loss {}%, duplicates {}%, slow {}%",
            self.loss_percent, self.duplicate_percent, self.slow_percent
        )
    }
}
