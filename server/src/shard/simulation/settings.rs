//! The shape of one run, drawn from its seed: the cluster (3 or 5 nodes, 1 or 2
//! shards), the workload (keys, clients), the Raft timing, the log's snapshot interval,
//! how often faults come, and what the run counts.

use std::time::Duration;

use super::node::NodeSettings;
use super::random::Random;
use crate::raft::Membership;
use crate::shard::replica::RaftTiming;
use crate::wal::{WalOptions, SEGMENT_BYTES_MIN};

/// The shape of one run, drawn from its seed.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub nodes: u64,
    pub shards: usize,
    pub keys: usize,
    pub clients: usize,
    /// How long clients and faults run, in simulated microseconds.
    pub active_us: u64,
    /// The mean pause between two faults.
    pub fault_gap_us: u64,
    pub node: NodeSettings,
}

impl Settings {
    pub fn random(random: &mut Random) -> Settings {
        let nodes = random.pick(&[3, 3, 5]);
        let shards = random.pick(&[1, 2]);
        let tick_ms = random.pick(&[5, 10, 20]);
        Settings {
            nodes,
            shards,
            keys: random.between(2, 6) as usize,
            clients: random.between(2, 6) as usize,
            active_us: random.between(1_000, 2_000) * 1_000,
            fault_gap_us: random.pick(&[80, 200, 500]) * 1_000,
            node: NodeSettings {
                shards,
                founding: Membership::new(1..=nodes),
                timing: RaftTiming {
                    tick: Duration::from_millis(tick_ms),
                    election_ticks: random.between(5, 10) as u32,
                    heartbeat_ticks: random.between(1, 2) as u32,
                },
                wal: WalOptions {
                    segment_bytes: SEGMENT_BYTES_MIN,
                    sync: true,
                    snapshot_log_bytes: random.pick(&[256, 1 << 10, 32 << 10]),
                },
                waiters_per_lock_max: random.pick(&[1, 4, 64]) as usize,
            },
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} nodes, {} shards, {} keys, {} clients, tick {:?} x{} (heartbeat x{}), snapshots every {} bytes, {} waiters per lock",
            self.nodes,
            self.shards,
            self.keys,
            self.clients,
            self.node.timing.tick,
            self.node.timing.election_ticks,
            self.node.timing.heartbeat_ticks,
            self.node.wal.snapshot_log_bytes,
            self.node.waiters_per_lock_max
        )
    }
}

#[derive(Debug, Default)]
pub(super) struct Stats {
    pub turns: u64,
    pub peer_messages: u64,
    pub crashes: u64,
    pub disk_faults: u64,
    pub partitions: u64,
    pub pauses: u64,
    pub snapshots_sent: u64,
    /// Processes restarted because a shard stayed wedged after its disk healed.
    pub wedged_restarts: u64,
}
