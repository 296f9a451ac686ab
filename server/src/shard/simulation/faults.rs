//! What goes wrong during a run, one fault every `fault_gap_us` or so while the run is
//! on: the partition changes (healed, a minority or a shard's leader cut off, both ways or
//! one); a node crashes (a leader half the time) and restarts later from its disk; the
//! whole cluster loses power; a node's disk starts failing its syncs or its writes, and
//! later works again or the node dies of it; a node's process pauses (its requests and
//! messages wait); a client drops its connections.

use std::collections::BTreeSet;

use super::cluster::{Event, Simulation};
use super::disk::DiskFault;
use super::history::ms;
use crate::raft::NodeId;
use crate::shard::ShardMessage;

impl Simulation {
    pub(super) fn fault(&mut self) {
        if !self.faults_on {
            return;
        }
        match self.random.below(100) {
            0..=29 => self.change_partition(),
            30..=49 => {
                if let Some(node) = self.victim() {
                    self.crash(node);
                    let downtime = self.random.between(5_000, 500_000);
                    self.schedule_restart(node, downtime);
                }
            }
            50..=52 => {
                self.trace(|| "the whole cluster loses power".into());
                for node in 0..self.nodes.len() {
                    if self.nodes[node].is_up() {
                        self.crash(node);
                        let downtime = self.random.between(5_000, 300_000);
                        self.schedule_restart(node, downtime);
                    }
                }
            }
            53..=62 => self.break_disk(),
            63..=74 => self.pause_node(),
            75..=82 => {
                let client = self.random.below(self.settings.clients as u64) as usize;
                let nodes: Vec<NodeId> = self.clients[client].connections.keys().copied().collect();
                for node in nodes {
                    self.close_connection(client, node);
                }
            }
            _ => {}
        }
        let gap = self.settings.fault_gap_us;
        let next = self.random.between(gap / 2, gap * 3 / 2);
        self.schedule(next, Event::Fault);
    }

    fn schedule_restart(&mut self, node: usize, downtime: u64) {
        let node = node as NodeId + 1;
        self.schedule(downtime, Event::Restart { node });
    }

    /// A node that is up: the leader of a random shard half the time.
    fn victim(&mut self) -> Option<usize> {
        self.victim_leading(50)
    }

    /// A node that is up: the leader of a random shard `percent` of the time.
    fn victim_leading(&mut self, percent: u64) -> Option<usize> {
        if self.random.percent(percent) {
            let shard = self.random.below(self.settings.shards as u64) as usize;
            if let Some(leader) = self.leader_of(shard) {
                return Some(leader);
            }
        }
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|&node| self.nodes[node].is_up())
            .collect();
        (!up.is_empty()).then(|| up[self.random.below(up.len() as u64) as usize])
    }

    /// A node whose replica of `shard` believes it leads.
    fn leader_of(&self, shard: usize) -> Option<usize> {
        (0..self.nodes.len()).find(|&node| {
            self.nodes[node]
                .worker(shard)
                .is_some_and(|worker| worker.turns.replica.raft().is_leader())
        })
    }

    fn change_partition(&mut self) {
        let nodes = self.settings.nodes;
        let isolated: Vec<NodeId> = match self.random.below(10) {
            0..=2 => Vec::new(),
            3..=5 => {
                let shard = self.random.below(self.settings.shards as u64) as usize;
                let node = self
                    .leader_of(shard)
                    .unwrap_or_else(|| self.random.below(nodes) as usize);
                vec![node as NodeId + 1]
            }
            _ => {
                let count = self.random.between(1, nodes / 2);
                let mut isolated = BTreeSet::new();
                while (isolated.len() as u64) < count {
                    isolated.insert(self.random.between(1, nodes));
                }
                isolated.into_iter().collect()
            }
        };
        let cut = self.network.partition(&mut self.random, nodes, &isolated);
        self.cut_links(cut);
    }

    /// A new partition is in place: the transports of the cut nodes notice.
    fn cut_links(&mut self, cut: Vec<(NodeId, NodeId)>) {
        self.stats.partitions += 1;
        self.trace(|| format!("partition: links cut {cut:?}"));
        for (from, to) in cut {
            let node = (from - 1) as usize;
            if self.nodes[node].is_up() {
                for shard in 0..self.settings.shards {
                    self.enqueue(node, shard, ShardMessage::PeerUnreachable(to));
                }
            }
        }
    }

    /// The node's process stops for a while (a long GC or VM pause, SIGSTOP): messages and
    /// requests queue up, and it takes them in arrival order when it runs again, a leader
    /// perhaps deposed meanwhile without knowing it yet. Half the time its network is cut
    /// too (a frozen VM), and stays cut after it resumes until the next partition change:
    /// a deposed leader that still believes it leads, reachable by clients alone.
    fn pause_node(&mut self) {
        let Some(node) = self.victim_leading(80) else {
            return;
        };
        let until = self.now + self.random.between(20_000, 600_000);
        let running = self.nodes[node].running.as_mut().expect("a victim is up");
        for worker in &mut running.workers {
            worker.paused_until = worker.paused_until.max(until);
        }
        self.stats.pauses += 1;
        let id = node as NodeId + 1;
        self.trace(|| format!("node {id} pauses until {}", ms(until)));
        if self.random.percent(50) {
            let cut = self.network.isolate(self.settings.nodes, id);
            self.cut_links(cut);
        }
    }

    fn break_disk(&mut self) {
        let Some(node) = self.victim() else {
            return;
        };
        let fault = if self.random.percent(50) {
            DiskFault::SyncsFail
        } else {
            DiskFault::WritesFail
        };
        self.nodes[node].disk.set_fault(fault);
        self.stats.disk_faults += 1;
        let id = node as NodeId + 1;
        let incarnation = self.nodes[node].incarnation;
        let crash = self.random.percent(50);
        let lasts = self.random.between(2_000, 150_000);
        self.trace(|| format!("node {id}: disk fault {fault:?}"));
        self.schedule(
            lasts,
            Event::DiskRecovers {
                node: id,
                incarnation,
                crash,
            },
        );
    }

    pub(super) fn disk_recovers(&mut self, node: NodeId, incarnation: u64, crash: bool) {
        let index = (node - 1) as usize;
        if self.nodes[index].incarnation != incarnation || !self.nodes[index].is_up() {
            return;
        }
        if crash && self.faults_on {
            self.crash(index);
            let downtime = self.random.between(5_000, 300_000);
            self.schedule_restart(index, downtime);
        } else {
            self.trace(|| format!("node {node}: the disk works again"));
            self.nodes[index].disk.set_fault(DiskFault::None);
        }
    }

    /// Kills the node's process and cuts its power.
    pub(super) fn crash(&mut self, node: usize) {
        if !self.nodes[node].is_up() {
            return;
        }
        let random = &mut self.random;
        self.nodes[node].crash(|| random.percent(50));
        self.stats.crashes += 1;
        let id = node as NodeId + 1;
        self.trace(|| format!("node {id} crashes"));
        self.break_connections(id);
    }

    /// Starts the node's process from its disk, if it is down.
    pub(super) fn restart(&mut self, node: usize) {
        if self.nodes[node].is_up() {
            return;
        }
        let id = node as NodeId + 1;
        self.trace(|| format!("node {id} starts"));
        let instant = self.instant();
        let random = &mut self.random;
        let stored = self.nodes[node].start(&self.settings.node, || random.next(), instant);
        for (shard, state) in stored.into_iter().enumerate() {
            self.raft.restarted(shard, id, state);
        }
        for shard in 0..self.settings.shards {
            self.after_turn(node, shard);
        }
    }
}
