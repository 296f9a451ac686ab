//! One simulated node: a real [`Replica`] per shard over the node's simulated disk, started
//! the way `ShardSet::start` starts them, and driven turn by turn the way the shard
//! worker's loop drives them.
//!
//! Why not `ShardWorker::turn` itself: it reads the real clock (`Instant::now()`) and
//! sleeps 100 ms after a refused turn, so it cannot run on simulated time. [`SimWorker::turn`]
//! is the same sequence of calls on the replica with `now` passed in, and the pause left
//! to the simulation. Keep the two in step: any change to `worker.rs`'s `turn`, `apply`,
//! `control` or `refuse` belongs here too.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use kahu_protocol::ProtocolError;

use super::disk::SimDisk;
use super::network::SimOutbox;
use crate::raft::{HardState, Membership, NodeId};
use crate::shard::replica::{LogContents, RaftTiming, Replica, ReplicaParts};
use crate::shard::table::Output;
use crate::shard::worker::Turns;
use crate::shard::{ReplyTo, ShardMessage, ShardStats};
use crate::wal::storage::Storage;
use crate::wal::{raft_state, Wal, WalOptions};

/// What every node of the simulated cluster is started with.
#[derive(Debug, Clone)]
pub(super) struct NodeSettings {
    pub shards: usize,
    pub founding: Membership,
    pub timing: RaftTiming,
    pub wal: WalOptions,
    pub waiters_per_lock_max: usize,
}

/// A running node process: its outbox and one worker per shard.
pub(super) struct Running {
    pub outbox: Arc<SimOutbox>,
    pub workers: Vec<SimWorker>,
}

pub(super) struct SimNode {
    pub id: NodeId,
    /// The handle of the current incarnation.
    pub disk: SimDisk,
    /// Starts at 0, one more after every crash.
    pub incarnation: u64,
    pub running: Option<Running>,
}

fn shard_dir(shard: usize) -> PathBuf {
    PathBuf::from(format!("shard-{shard}"))
}

impl SimNode {
    pub fn new(id: NodeId) -> SimNode {
        SimNode {
            id,
            disk: SimDisk::new(),
            incarnation: 0,
            running: None,
        }
    }

    pub fn is_up(&self) -> bool {
        self.running.is_some()
    }

    /// Starts the process on what its disk holds: per shard, the log is replayed, the term
    /// and vote loaded, the replica built and started (as `ShardSet::start` and
    /// `recover_shard` do; a cluster's groups have no term floor). Returns each shard's
    /// stored term and vote.
    pub fn start(
        &mut self,
        settings: &NodeSettings,
        mut seed: impl FnMut() -> u64,
        now: Instant,
    ) -> Vec<HardState> {
        assert!(self.running.is_none(), "node {} is already up", self.id);
        let outbox = Arc::new(SimOutbox::default());
        let storage: Arc<dyn Storage> = Arc::new(self.disk.clone());
        let mut stored_states = Vec::with_capacity(settings.shards);
        let mut workers = Vec::with_capacity(settings.shards);
        for shard in 0..settings.shards {
            let dir = shard_dir(shard);
            let mut contents = LogContents::default();
            let wal = Wal::open(&dir, storage.clone(), settings.wal, &mut contents).unwrap_or_else(
                |error| {
                    panic!(
                        "node {} shard {shard}: the log does not open: {error}",
                        self.id
                    )
                },
            );
            let stored = raft_state::load(storage.as_ref(), &dir).unwrap_or_else(|error| {
                panic!(
                    "node {} shard {shard}: the Raft state does not load: {error}",
                    self.id
                )
            });
            let parts = ReplicaParts {
                shard,
                node: self.id,
                founding: settings.founding.clone(),
                wal,
                contents,
                storage: storage.clone(),
                dir,
                stored,
                term_floor: 0,
                waiters_per_lock_max: settings.waiters_per_lock_max,
                stats: Arc::new(ShardStats::default()),
                peers: outbox.clone(),
                timing: settings.timing,
                seed: seed(),
            };
            let mut replica = Replica::new(parts).expect("valid Raft settings");
            replica.start(now);
            stored_states.push(stored);
            workers.push(SimWorker::new(replica));
        }
        self.running = Some(Running { outbox, workers });
        stored_states
    }

    /// Kills the process (every replica and what it held in memory goes) and cuts the
    /// power: unsynced pages survive if `keep` says so.
    pub fn crash(&mut self, keep: impl FnMut() -> bool) {
        // Dropping the logs joins their spare-segment threads first, so the crash lands
        // after everything the process did.
        self.running = None;
        self.disk = self.disk.crash(keep);
        self.incarnation += 1;
    }

    pub fn worker(&self, shard: usize) -> Option<&SimWorker> {
        self.running.as_ref().map(|running| &running.workers[shard])
    }

    pub fn worker_mut(&mut self, shard: usize) -> Option<&mut SimWorker> {
        self.running
            .as_mut()
            .map(|running| &mut running.workers[shard])
    }
}

/// One shard's worker: the server's own turn logic ([`Turns`]) and what the simulation
/// keeps around it.
pub(super) struct SimWorker {
    pub turns: Turns,
    output: Output<ReplyTo>,
    /// Messages queued for the worker, oldest first.
    pub inbox: Vec<ShardMessage>,
    /// When the worker takes its next batch from the inbox (simulated microseconds).
    pub turn_at: Option<u64>,
    /// After a refused turn the worker pauses until then.
    pub paused_until: u64,
    /// Turns in a row at one instant, to catch a worker that would spin.
    pub turns_at_instant: (u64, u32),
    /// Why the last turn paused, and when, if it did.
    pub paused: Option<(u64, ProtocolError)>,
}

impl SimWorker {
    fn new(replica: Replica) -> SimWorker {
        SimWorker {
            turns: Turns::new(replica),
            output: Output::default(),
            inbox: Vec::new(),
            turn_at: None,
            paused_until: 0,
            turns_at_instant: (u64::MAX, 0),
            paused: None,
        }
    }

    /// One turn of the worker loop on `batch` at `now` (the server's [`Turns::turn`]).
    /// Returns why the worker would pause after it, if it would: its log cannot be
    /// written, or it cannot grant.
    pub fn turn(&mut self, now: Instant, mut batch: Vec<ShardMessage>) -> Option<ProtocolError> {
        self.turns.turn(now, &mut batch, &mut self.output)
    }
}
