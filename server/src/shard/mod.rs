//! Shards: the lock table split by key hash, each part owned by one worker thread.
//!
//! A connection computes the key's hash once (xxh3, stable across versions and machines, so
//! the mapping can later be stored with a cluster), picks the shard from its high bits, and
//! sends the request down that shard's lock-free queue (crossbeam). The worker owns its
//! [`table::LockTable`], its Raft group member and its log alone, so no lock guards lock
//! state. Replies go back through the connection's own channel, in whatever order the
//! shards answer. Raft traffic from peer nodes arrives on the same queue.

pub mod clock;
mod lease_heap;
mod replica;
#[cfg(test)]
mod simulation;
pub mod table;
pub mod timers;
pub mod tokens;
mod worker;

pub use replica::RaftTiming;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::Sender;
use kahu_protocol::{Request, Response};
use tokio::sync::mpsc::UnboundedSender;

use crate::data_dir::DataDir;
use crate::raft::{self, Membership, NodeId};
use crate::wal::record::Command;
use crate::wal::storage::Storage;
use crate::wal::{raft_state, Wal, WalError, WalOptions};
use replica::{LogContents, Replica, ReplicaParts};
use table::{ReplyTarget, TableStats};

/// Where a shard sends the reply to one request.
#[derive(Debug)]
pub struct ReplyTo {
    pub connection_id: u64,
    pub request_id: u32,
    pub sender: UnboundedSender<(u32, Response)>,
}

impl ReplyTarget for ReplyTo {
    fn connection_id(&self) -> u64 {
        self.connection_id
    }

    fn is_gone(&self) -> bool {
        self.sender.is_closed()
    }
}

impl ReplyTo {
    /// Sends the reply; a connection that has gone simply does not read it.
    pub fn send(self, response: Response) {
        let _ = self.sender.send((self.request_id, response));
    }
}

#[derive(Debug)]
pub(crate) enum ShardMessage {
    /// A keyed request (LOCK, UNLOCK, EXTEND, GET) with the key's hash.
    Request {
        hash: u64,
        request: Request,
        reply: ReplyTo,
    },
    /// The connection closed (or stopped reading): answer its waiters with BUSY and drop
    /// them.
    ConnectionClosed(u64),
    /// The server is stopping: answer every waiter, now and from now on, with SHUTTING_DOWN.
    Shutdown,
    /// A Raft message from a peer node, for this shard's group.
    Peer(raft::Message<Command>),
    /// The connection to a peer node failed: what was in flight to it may be lost.
    PeerUnreachable(NodeId),
}

/// Where a shard's Raft messages go: the peer connections of a cluster, batched per node.
pub trait PeerOutbox: Send + Sync + std::fmt::Debug {
    /// Queues messages of `shard`'s group for their destination nodes.
    fn send(&self, shard: usize, messages: Vec<raft::Message<Command>>);
    /// The client address of `node`, for NOT_LEADER hints.
    fn client_address(&self, node: NodeId) -> Option<String>;
    /// `shard`'s group now has `membership` (its latest, committed or not). The transport
    /// keeps a link to every node that is a voter of some shard's latest membership. An
    /// empty membership (a joining node that has not heard of its group yet) says nothing.
    fn members_changed(&self, shard: usize, membership: &raft::Membership);
    /// Whether `node` answers at `address` (`PEER_ADDR/CLIENT_ADDR`) now: this node's link
    /// to it there is connected, its handshake having proved the node's id. If there is no
    /// such link, opens one (a node about to be added), so that a later call can say yes.
    fn reachable(&self, node: NodeId, address: &str) -> bool;
}

/// A single node: its one-voter groups never send anything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPeers;

impl PeerOutbox for NoPeers {
    fn send(&self, shard: usize, messages: Vec<raft::Message<Command>>) {
        assert!(
            messages.is_empty(),
            "shard {shard}: a one-voter group sent {} messages",
            messages.len()
        );
    }

    fn client_address(&self, _node: NodeId) -> Option<String> {
        None
    }

    fn members_changed(&self, _shard: usize, _membership: &raft::Membership) {}

    /// A single node has no peers (it is never asked: it refuses membership changes).
    fn reachable(&self, _node: NodeId, _address: &str) -> bool {
        false
    }
}

/// A shard's counters, written by its worker once per turn and read by INFO.
#[derive(Debug, Default)]
pub struct ShardStats {
    values: [AtomicU64; STAT_NAMES.len()],
    raft: [AtomicU64; RAFT_STAT_NAMES.len()],
    /// The node is stopping and this shard's leadership is being handed over.
    handing_over: AtomicBool,
}

/// INFO field names of a shard's Raft state, each prefixed `shard<N>_`, in
/// [`ShardStats`] order: whether this node leads the shard (0 or 1), the leader's node id
/// (0: none known), the term, and the commit, applied and last log indexes.
pub const RAFT_STAT_NAMES: [&str; 6] = [
    "is_leader",
    "leader",
    "term",
    "commit_index",
    "applied_index",
    "last_index",
];

/// INFO field names of the per-shard counters, in [`ShardStats`] order.
pub const STAT_NAMES: [&str; 14] = [
    "keys",
    "locks_held",
    "waiters",
    "grants_total",
    "reentries_total",
    "releases_total",
    "expiries_total",
    "extends_total",
    "busy_total",
    "wait_timeouts_total",
    "shard_requests_total",
    "wal_commits_total",
    "wal_errors_total",
    "snapshots_total",
];

/// What a worker counts itself, beside its table's counters.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct WorkerCounters {
    pub requests_total: u64,
    pub wal_commits_total: u64,
    pub wal_errors_total: u64,
    pub snapshots_total: u64,
}

impl ShardStats {
    fn publish(&self, keys: usize, table: &TableStats, counters: &WorkerCounters) {
        let values = [
            keys as u64,
            table.locks_held,
            table.waiters,
            table.grants_total,
            table.reentries_total,
            table.releases_total,
            table.expiries_total,
            table.extends_total,
            table.busy_total,
            table.wait_timeouts_total,
            counters.requests_total,
            counters.wal_commits_total,
            counters.wal_errors_total,
            counters.snapshots_total,
        ];
        for (slot, value) in self.values.iter().zip(values) {
            slot.store(value, Ordering::Relaxed);
        }
    }

    /// Values in [`RAFT_STAT_NAMES`] order.
    fn publish_raft(&self, values: [u64; RAFT_STAT_NAMES.len()]) {
        for (slot, value) in self.raft.iter().zip(values) {
            slot.store(value, Ordering::Relaxed);
        }
    }
}

/// The senders to every shard worker.
#[derive(Debug)]
pub struct ShardSet {
    senders: Vec<Sender<ShardMessage>>,
    stats: Vec<Arc<ShardStats>>,
    /// Held while the shards run: its file lock keeps other servers out of the directory.
    _data_dir: Arc<DataDir>,
}

/// Where keys go: the hash (also the table's index hash) and the shard, shared with clients
/// so they can send each key to its shard's leader.
pub use kahu_protocol::routing::{key_hash, shard_of};

impl ShardSet {
    /// Recovers every shard from its log (in parallel), raises the token epoch above every
    /// token the logs hold, and starts one worker thread per shard. Returns the epoch.
    pub fn start(
        data_dir: Arc<DataDir>,
        settings: &ShardSettings,
    ) -> Result<(ShardSet, Vec<JoinHandle<()>>, u64), StartError> {
        let started = Instant::now();
        let recovered = std::thread::scope(|scope| {
            let recoveries: Vec<_> = (0..settings.count)
                .map(|shard| {
                    let data_dir = &data_dir;
                    std::thread::Builder::new()
                        .name(format!("kahu-recover-{shard}"))
                        .spawn_scoped(scope, move || recover_shard(shard, data_dir, settings))
                        .map_err(StartError::Thread)
                })
                .collect();
            recoveries
                .into_iter()
                .map(|handle| handle?.join().expect("recovery does not panic"))
                .collect::<Result<Vec<_>, StartError>>()
        })?;
        // Above every token the logs hold, and every term they were written in (tokens of
        // locks released and compacted away are covered by their term) or voted in.
        let token_max = recovered
            .iter()
            .map(|shard| shard.token_max)
            .max()
            .unwrap_or(0);
        let term_max = recovered
            .iter()
            .map(|shard| shard.wal.last_term().max(shard.stored.term))
            .max()
            .unwrap_or(0);
        let floor = ((token_max >> tokens::COUNTER_BITS) + 1).max(term_max + 1);
        let epoch = data_dir.next_epoch_at_least(floor)?;
        tracing::info!(
            shards = settings.count,
            entries = recovered
                .iter()
                .map(|shard| shard.contents.entries.len())
                .sum::<usize>(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            epoch,
            "read the write-ahead logs"
        );

        // Each shard's group starts in parallel (a single node elects itself and rebuilds
        // its table from the log here, so the server serves once started).
        let stats: Vec<Arc<ShardStats>> = (0..settings.count)
            .map(|_| Arc::new(ShardStats::default()))
            .collect();
        let replicas = std::thread::scope(|scope| {
            let starts: Vec<_> = recovered
                .into_iter()
                .enumerate()
                .map(|(id, shard)| {
                    let membership = shard.contents.membership(&settings.founding);
                    let alone = membership.is_only(settings.node);
                    let parts = ReplicaParts {
                        shard: id,
                        node: settings.node,
                        founding: settings.founding.clone(),
                        wal: shard.wal,
                        contents: shard.contents,
                        storage: settings.storage.clone(),
                        dir: data_dir.shard_path(id),
                        stored: shard.stored,
                        // A group of this node alone leads in the epoch of this run (its
                        // election adds one); in a cluster, terms are the cluster's
                        // business alone (a node that raised its own would depose a
                        // healthy leader).
                        term_floor: if alone { epoch - 1 } else { 0 },
                        waiters_per_lock_max: settings.waiters_per_lock_max,
                        stats: stats[id].clone(),
                        peers: settings.peers.clone(),
                        timing: settings.raft,
                        // Different on every node, shard and run, so that election timeouts
                        // of nodes started together do not move in lockstep.
                        seed: election_seed(settings.node, id, epoch),
                    };
                    std::thread::Builder::new()
                        .name(format!("kahu-start-{id}"))
                        .spawn_scoped(scope, move || -> Result<Replica, StartError> {
                            let mut replica = Replica::new(parts).map_err(StartError::Raft)?;
                            replica.start(Instant::now());
                            Ok(replica)
                        })
                        .map_err(StartError::Thread)
                })
                .collect();
            starts
                .into_iter()
                .map(|handle| handle?.join().expect("starting a shard does not panic"))
                .collect::<Result<Vec<_>, StartError>>()
        })?;
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "shards started"
        );

        let mut senders = Vec::with_capacity(settings.count);
        let mut handles = Vec::with_capacity(settings.count);
        for (id, replica) in replicas.into_iter().enumerate() {
            let (sender, receiver) = crossbeam_channel::unbounded();
            let worker = worker::ShardWorker::new(receiver, replica);
            let handle = std::thread::Builder::new()
                .name(format!("kahu-shard-{id}"))
                .spawn(move || run_or_abort(id, worker))
                .map_err(StartError::Thread)?;
            senders.push(sender);
            handles.push(handle);
        }
        let shard_set = ShardSet {
            senders,
            stats,
            _data_dir: data_dir,
        };
        Ok((shard_set, handles, epoch))
    }

    pub fn len(&self) -> usize {
        self.senders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.senders.is_empty()
    }

    /// Sends a keyed request to its shard. Gives the reply handle back if the shard has
    /// stopped, so the caller can answer.
    pub fn submit(&self, request: Request, reply: ReplyTo) -> Result<(), ReplyTo> {
        let (hash, shard) = match &request {
            // A membership change names its shard (the caller checked it exists).
            Request::Members(members) => (0, usize::from(members.shard)),
            _ => {
                let key = request.key().expect("only keyed requests go to shards");
                let hash = key_hash(key);
                (hash, shard_of(hash, self.senders.len()))
            }
        };
        let shard = &self.senders[shard];
        shard
            .send(ShardMessage::Request {
                hash,
                request,
                reply,
            })
            .map_err(|error| match error.0 {
                ShardMessage::Request { reply, .. } => reply,
                _ => unreachable!("sent a request"),
            })
    }

    /// Hands a Raft message from a peer node to its shard's group; false if the shard
    /// does not exist or has stopped.
    pub(crate) fn deliver_peer(&self, shard: usize, message: raft::Message<Command>) -> bool {
        self.senders
            .get(shard)
            .is_some_and(|sender| sender.send(ShardMessage::Peer(message)).is_ok())
    }

    /// Tells every shard that the connection to `node` failed.
    pub(crate) fn peer_unreachable(&self, node: NodeId) {
        for sender in &self.senders {
            let _ = sender.send(ShardMessage::PeerUnreachable(node));
        }
    }

    /// Tells every shard that a connection closed, so its waiters are dropped.
    pub fn connection_closed(&self, connection_id: u64) {
        for sender in &self.senders {
            let _ = sender.send(ShardMessage::ConnectionClosed(connection_id));
        }
    }

    pub fn shutdown(&self) {
        // Until each worker has looked (see `Replica::hand_over_if_wanted`).
        for stats in &self.stats {
            stats.handing_over.store(true, Ordering::Relaxed);
        }
        for sender in &self.senders {
            let _ = sender.send(ShardMessage::Shutdown);
        }
    }

    /// Shards whose leadership this stopping node is handing over (until it leads them no
    /// more, as last published by their workers).
    pub fn handing_over(&self) -> usize {
        self.stats
            .iter()
            .filter(|stats| stats.handing_over.load(Ordering::Relaxed))
            .count()
    }

    /// Each shard's Raft state, as INFO fields `shard<N>_<name>`.
    pub fn raft_status(&self) -> Vec<(String, u64)> {
        let mut fields = Vec::with_capacity(self.stats.len() * RAFT_STAT_NAMES.len());
        for (shard, stats) in self.stats.iter().enumerate() {
            for (name, value) in RAFT_STAT_NAMES.iter().zip(&stats.raft) {
                fields.push((
                    format!("shard{shard}_{name}"),
                    value.load(Ordering::Relaxed),
                ));
            }
        }
        fields
    }

    /// Every shard counter summed, as INFO fields.
    pub fn stats(&self) -> Vec<(String, u64)> {
        STAT_NAMES
            .iter()
            .enumerate()
            .map(|(index, name)| {
                let sum = self
                    .stats
                    .iter()
                    .map(|stats| stats.values[index].load(Ordering::Relaxed))
                    .sum();
                (name.to_string(), sum)
            })
            .collect()
    }
}

/// How to start the shards.
#[derive(Debug, Clone)]
pub struct ShardSettings {
    pub count: usize,
    /// This node's id in its Raft groups.
    pub node: NodeId,
    /// The voters of every group when the cluster was created (this node alone for a
    /// single node).
    pub founding: Membership,
    pub raft: RaftTiming,
    /// Where the groups' messages to other nodes go.
    pub peers: Arc<dyn PeerOutbox>,
    pub waiters_per_lock_max: usize,
    pub wal: WalOptions,
    pub storage: Arc<dyn Storage>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("shard {shard}: {source}")]
    Wal { shard: usize, source: WalError },
    #[error(transparent)]
    DataDir(#[from] crate::data_dir::DataDirError),
    #[error("cannot start a shard thread: {0}")]
    Thread(std::io::Error),
    #[error(transparent)]
    Raft(raft::ConfigError),
}

struct RecoveredShard {
    contents: LogContents,
    wal: Wal,
    stored: raft::HardState,
    token_max: u64,
}

/// Opens one shard's log and reads what it holds (the Raft core applies it once the log's
/// committed part is known).
fn recover_shard(
    shard: usize,
    data_dir: &DataDir,
    settings: &ShardSettings,
) -> Result<RecoveredShard, StartError> {
    let dir = data_dir.shard_path(shard);
    let mut contents = LogContents::default();
    let wal = Wal::open(&dir, settings.storage.clone(), settings.wal, &mut contents)
        .map_err(|source| StartError::Wal { shard, source })?;
    let stored = raft_state::load(settings.storage.as_ref(), &dir)
        .map_err(|source| StartError::Wal { shard, source })?;
    let token_max = contents.token_max();
    Ok(RecoveredShard {
        contents,
        wal,
        stored,
        token_max,
    })
}

/// A seed for a shard's randomized election timeouts.
fn election_seed(node: NodeId, shard: usize, epoch: u64) -> u64 {
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    xxhash_rust::xxh3::xxh3_64(
        &[
            node,
            shard as u64,
            epoch,
            clock,
            u64::from(std::process::id()),
        ]
        .map(u64::to_le_bytes)
        .concat(),
    )
}

/// Runs a worker; a panic in it is a bug that has lost that shard's lock state, so the
/// process stops at once rather than serve with a shard missing (and hang shutdown on
/// replies that will never come).
fn run_or_abort(id: usize, worker: worker::ShardWorker) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker.run())).is_err() {
        tracing::error!(shard = id, "shard worker panicked; aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_spread_over_every_shard() {
        let mut counts = [0usize; 4];
        for key in 0..4000 {
            counts[shard_of(key_hash(format!("lock-{key}").as_bytes()), 4)] += 1;
        }
        for count in counts {
            assert!((800..1200).contains(&count), "{counts:?}");
        }
        assert_eq!(shard_of(u64::MAX, 7), 6);
        assert_eq!(shard_of(0, 7), 0);
    }
}
