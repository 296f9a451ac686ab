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

use kahu_protocol::{ProtocolError, Request};

use super::disk::SimDisk;
use super::network::SimOutbox;
use crate::raft::{HardState, Membership, NodeId};
use crate::shard::replica::{LogContents, RaftTiming, Replica, ReplicaParts};
use crate::shard::table::{LockTable, Output};
use crate::shard::worker::{HELD_REQUESTS_MAX, TIMERS_PER_TURN_MAX};
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

/// One shard's worker: the replica and what the worker keeps between turns.
pub(super) struct SimWorker {
    pub replica: Replica,
    /// Requests that arrived while this node leads but does not serve yet.
    held: Vec<ShardMessage>,
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
            replica,
            held: Vec::new(),
            output: Output::default(),
            inbox: Vec::new(),
            turn_at: None,
            paused_until: 0,
            turns_at_instant: (u64::MAX, 0),
            paused: None,
        }
    }

    /// One turn of the worker loop on `batch` at `now` (`ShardWorker::turn`). Returns why
    /// the worker would pause after it, if it would: its log cannot be written, or it
    /// cannot grant.
    pub fn turn(&mut self, now: Instant, batch: Vec<ShardMessage>) -> Option<ProtocolError> {
        let mut output = std::mem::take(&mut self.output);
        let pause = self.turn_with(now, batch, &mut output);
        self.output = output;
        pause
    }

    fn turn_with(
        &mut self,
        now: Instant,
        mut batch: Vec<ShardMessage>,
        output: &mut Output<ReplyTo>,
    ) -> Option<ProtocolError> {
        if let Err(error) = self.replica.retry_storage(now, output) {
            self.refuse(batch, output, &error, now);
            return Some(error);
        }
        self.replica.tick_if_due(now);
        let was_serving = self.replica.is_serving();
        if was_serving {
            self.replica.fire_timers(now, TIMERS_PER_TURN_MAX, output);
        }
        for message in batch.drain(..) {
            match message {
                ShardMessage::Request { .. } if self.replica.is_serving() => {
                    self.apply(message, now, output)
                }
                ShardMessage::Request { .. }
                    if self.replica.is_catching_up() && self.held.len() < HELD_REQUESTS_MAX =>
                {
                    self.held.push(message)
                }
                ShardMessage::Request { reply, .. } => {
                    self.replica.counters().requests_total += 1;
                    output
                        .replies
                        .push((reply, self.replica.not_serving().into()));
                }
                message => self.control(message, now, output),
            }
        }
        self.replica.finish_turn(now, output);
        if !was_serving && self.replica.is_serving() && !self.held.is_empty() {
            // Became a serving leader in this turn: the held requests go next, first.
            let held = std::mem::take(&mut self.held);
            return self.turn_with(now, held, output);
        } else if !self.replica.is_catching_up() && !self.held.is_empty() {
            let error = self.replica.not_serving();
            self.fail_held(&error, output);
            self.replica.finish_turn(now, output);
        }
        self.replica
            .is_stalled()
            .then(|| self.replica.not_serving())
    }

    fn apply(&mut self, message: ShardMessage, now: Instant, output: &mut Output<ReplyTo>) {
        let ShardMessage::Request {
            hash,
            request,
            reply,
        } = message
        else {
            unreachable!("only requests are applied");
        };
        self.replica.counters().requests_total += 1;
        let table: &mut LockTable<ReplyTo> = self.replica.table();
        match &request {
            Request::Lock(lock) => table.lock(now, hash, lock, reply, output),
            Request::Unlock(unlock) => table.unlock(now, hash, unlock, reply, output),
            Request::Extend(extend) => table.extend(now, hash, extend, reply, output),
            Request::Get(get) => table.get(now, hash, &get.key, reply, output),
            Request::Hello(_) | Request::Ping | Request::Info => {
                unreachable!("the simulated clients send keyed requests only")
            }
        }
    }

    /// Peer traffic and connection closes (the simulation never shuts a node down: it
    /// crashes it).
    fn control(&mut self, message: ShardMessage, now: Instant, output: &mut Output<ReplyTo>) {
        match message {
            ShardMessage::ConnectionClosed(connection_id) => {
                self.replica.cancel_connection(connection_id, now, output);
            }
            ShardMessage::Peer(message) => self.replica.step(message),
            ShardMessage::PeerUnreachable(node) => self.replica.peer_unreachable(node),
            ShardMessage::Shutdown => unreachable!("the simulation crashes nodes instead"),
            ShardMessage::Request { .. } => unreachable!("requests are applied, not controlled"),
        }
    }

    fn fail_held(&mut self, error: &ProtocolError, output: &mut Output<ReplyTo>) {
        for message in self.held.drain(..) {
            if let ShardMessage::Request { reply, .. } = message {
                output.replies.push((reply, error.clone().into()));
            }
        }
    }

    /// While the log cannot be written: every request is refused, peer traffic dropped.
    fn refuse(
        &mut self,
        batch: Vec<ShardMessage>,
        output: &mut Output<ReplyTo>,
        error: &ProtocolError,
        now: Instant,
    ) {
        for message in batch {
            match message {
                ShardMessage::Request { reply, .. } => {
                    self.replica.counters().requests_total += 1;
                    output.replies.push((reply, error.clone().into()));
                }
                ShardMessage::Peer(_) | ShardMessage::PeerUnreachable(_) => {}
                message => self.control(message, now, output),
            }
        }
        self.fail_held(error, output);
        self.replica.refuse_pending(error, output);
    }
}
