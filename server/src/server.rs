//! Starting and stopping a server: the data directory, the shard workers, the acceptor.
//!
//! Shutdown (SIGINT/SIGTERM in the binary, [`RunningServer::shutdown`] in tests): stop
//! accepting; connections stop reading new requests; shards answer every waiting LOCK with
//! SHUTTING_DOWN; in a cluster, every group this node leads is handed to its most
//! up-to-date follower (waited for at most an election timeout), so clients are sent to a
//! new leader within a round trip; connections write every reply still owed and close;
//! then the shard workers see their queues close and exit. Nothing in flight is left
//! unanswered.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle as TaskHandle;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigError};
use crate::data_dir::{DataDir, DataDirError};
use crate::net;
use crate::peer::transport::{PeerConfig, PeerNetwork, PeerStats, RunningPeers};
use crate::peer::{IncarnationStore, SeenIncarnations};
use crate::raft::Membership;
use crate::shard::{NoPeers, PeerOutbox, ShardSet, ShardSettings, StartError};
use crate::wal::storage::{FileStorage, Storage};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Shards(#[from] StartError),
}

/// Connection counts, shared by the acceptor and INFO.
#[derive(Debug, Default)]
pub struct ConnectionCounts {
    current: AtomicU64,
    total: AtomicU64,
    refused: AtomicU64,
}

impl ConnectionCounts {
    pub fn current(&self) -> u64 {
        self.current.load(Ordering::Relaxed)
    }
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Counts a new connection; returns false when it is over `max`.
    pub fn open(&self, max: usize) -> bool {
        self.total.fetch_add(1, Ordering::Relaxed);
        let current = self.current.fetch_add(1, Ordering::Relaxed) + 1;
        if current > max as u64 {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub fn close(&self) {
        self.current.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What every connection task needs.
#[derive(Debug)]
pub struct Shared {
    pub shards: ShardSet,
    /// This node's id in its cluster (1 for a single node).
    pub node_id: u64,
    /// Runs the peer transport (started with `--peers`): its membership can change.
    pub clustered: bool,
    /// The peer transport's counters, for INFO; `None` without `--peers`.
    pub peer_stats: Option<PeerStats>,
    pub epoch: u64,
    pub started: Instant,
    pub connections: ConnectionCounts,
    pub next_connection_id: AtomicU64,
    pub connections_max: usize,
    pub requests_in_flight_max: usize,
    /// `None`: idle connections stay open.
    pub connection_idle: Option<Duration>,
    /// Once stopping, how long a connection may take to close before it is dropped.
    pub shutdown_grace: Duration,
    pub shutdown: watch::Receiver<bool>,
}

/// The entry point for embedding or testing a server.
#[derive(Debug)]
pub struct Server;

impl Server {
    /// Validates `config`, takes the data directory, recovers every shard from its log,
    /// starts the shard workers and begins accepting connections on the current tokio
    /// runtime.
    pub async fn start(config: Config) -> Result<RunningServer, ServerError> {
        Server::start_with_storage(config, None).await
    }

    /// [`Server::start`] with the log's file operations replaced (tests inject disk errors).
    pub async fn start_with_storage(
        config: Config,
        storage: Option<Arc<dyn Storage>>,
    ) -> Result<RunningServer, ServerError> {
        config.validate()?;
        let data_dir = Arc::new(DataDir::open(&config.data_dir)?);
        let shard_count = data_dir.shard_count(config.shards, config.shard_count())?;
        let nodes = config.cluster_nodes()?;
        // The founders: every node of `--peers`, or this one alone. A joining node is
        // none of them and starts a voter of nothing.
        let founders: Vec<u64> = if nodes.is_empty() {
            vec![config.node_id]
        } else {
            nodes.keys().copied().collect()
        };
        data_dir.check_cluster(&config.cluster_id, &founders, config.node_id)?;
        let founding = if config.join {
            Membership::default()
        } else {
            Membership::new(founders.iter().copied())
        };
        // Any node given `--peers` runs the peer transport, even a cluster of one, so
        // nodes can be added to it later.
        let (outbox, network) = if nodes.is_empty() {
            (Arc::new(NoPeers) as Arc<dyn PeerOutbox>, None)
        } else {
            let peers = nodes
                .iter()
                .filter(|(&id, _)| id != config.node_id)
                .map(|(&id, address)| (id, address.clone()))
                .collect();
            let advertise = if config.join {
                config.joining_address()?
            } else {
                nodes[&config.node_id].clone()
            };
            let seen = SeenIncarnations::new(
                data_dir.peers_seen()?,
                data_dir.clone() as Arc<dyn IncarnationStore>,
            );
            let peer_config = PeerConfig {
                node_id: config.node_id,
                cluster_id: config.cluster_id_hash(&nodes),
                shard_count: shard_count as u16,
                listen: config.peer_listen.unwrap_or(advertise.peer),
                advertise,
                incarnation: data_dir.incarnation(),
                seen,
                peers,
                snapshot_chunk_bytes: config.peer_snapshot_chunk_bytes,
            };
            peer_config
                .validate()
                .map_err(|error| ConfigError::new(format!("--peers: {error}")))?;
            let (outbox, network) = PeerNetwork::new(peer_config);
            (outbox as Arc<dyn PeerOutbox>, Some(network))
        };
        let settings = ShardSettings {
            count: shard_count,
            node: config.node_id,
            founding,
            raft: config.raft_timing(),
            peers: outbox,
            waiters_per_lock_max: config.waiters_per_lock_max,
            wal: config.wal_options(),
            storage: storage.unwrap_or_else(|| Arc::new(FileStorage)),
        };
        if config.unsafe_no_fsync {
            tracing::warn!(
                "--unsafe-no-fsync: the write-ahead log is NOT synced; persistent locks acknowledged \
                 before a power cut or kernel crash can be lost"
            );
        }
        let (shards, workers, epoch) = ShardSet::start(data_dir.clone(), &settings)?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Listen {
                    address: config.listen,
                    source,
                })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServerError::Listen {
                address: config.listen,
                source,
            })?;
        let (shutdown_sender, shutdown) = watch::channel(false);
        let shared = Arc::new(Shared {
            shards,
            node_id: config.node_id,
            clustered: network.is_some(),
            peer_stats: network.as_ref().map(PeerNetwork::stats),
            epoch,
            started: Instant::now(),
            connections: ConnectionCounts::default(),
            next_connection_id: AtomicU64::new(1),
            connections_max: config.connections_max,
            requests_in_flight_max: config.requests_in_flight_max,
            connection_idle: (config.connection_idle_ms > 0)
                .then(|| Duration::from_millis(config.connection_idle_ms)),
            shutdown_grace: Duration::from_millis(config.shutdown_grace_ms),
            shutdown,
        });
        let peers = match network {
            Some(network) => Some(start_peers(network, &shared).await?),
            None => None,
        };
        let tracker = TaskTracker::new();
        let acceptor = tokio::spawn(net::accept_loop(listener, shared.clone(), tracker.clone()));
        tracing::info!(
            address = %local_addr,
            data_dir = %data_dir.path().display(),
            shards = shared.shards.len(),
            node = config.node_id,
            incarnation = %format_args!("{:016x}", data_dir.incarnation()),
            founders = founders.len(),
            joining = config.join,
            peer_address = ?peers.as_ref().map(RunningPeers::local_addr),
            epoch,
            "kahu-server started"
        );
        Ok(RunningServer {
            local_addr,
            peers,
            epoch,
            shutdown_sender,
            acceptor,
            tracker,
            workers,
            shared,
            hand_over_max: config.raft_timing().tick * (config.election_ticks + 1),
        })
    }
}

/// A started server. Stop it with [`RunningServer::shutdown`].
#[derive(Debug)]
pub struct RunningServer {
    local_addr: SocketAddr,
    /// The connections to the other nodes of a cluster.
    peers: Option<RunningPeers>,
    epoch: u64,
    shutdown_sender: watch::Sender<bool>,
    acceptor: TaskHandle<()>,
    tracker: TaskTracker,
    workers: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
    /// The longest wait at shutdown for this node's groups to have another leader.
    hand_over_max: Duration,
}

/// How often shutdown looks whether the groups this node led have a new leader.
const HAND_OVER_POLL: Duration = Duration::from_millis(5);

impl RunningServer {
    /// The address the server listens on (with the port the OS chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address other nodes reach this one on, in a cluster.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peers.as_ref().map(RunningPeers::local_addr)
    }

    /// The token epoch of this run: every token it grants is above `epoch << 40`.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Resolves, with the reason, if the server stops taking part in its cluster for good:
    /// a peer knew this node by another incarnation, so its data directory was created
    /// anew and it must not vote again (see `peer/incarnations.rs`); its peer transport
    /// has stopped. Never resolves otherwise. The caller should [`RunningServer::shutdown`]
    /// and report the reason (the binary exits with status 1).
    pub async fn failed(&self) -> String {
        if let Some(peers) = &self.peers {
            let mut failure = peers.failure();
            let reason = match failure.wait_for(Option::is_some).await {
                Ok(reason) => reason.clone(),
                Err(_) => None, // the transport is gone: it can no longer fail
            };
            if let Some(reason) = reason {
                return reason;
            }
        }
        std::future::pending().await
    }

    /// Stops accepting, answers everything in flight, closes every connection and waits
    /// for the shard workers to exit.
    pub async fn shutdown(self) {
        let _ = self.shutdown_sender.send(true);
        let _ = self.acceptor.await;
        self.shared.shards.shutdown();
        if self.peers.is_some() {
            // Each group this node leads is handed to a follower (`Replica::hand_over`);
            // wait for that (the core gives up after an election timeout) while the peer
            // connections still carry it, so the cluster does not wait out an election.
            let deadline = Instant::now() + self.hand_over_max;
            while self.shared.shards.handing_over() > 0 && Instant::now() < deadline {
                tokio::time::sleep(HAND_OVER_POLL).await;
            }
        }
        self.tracker.close();
        self.tracker.wait().await;
        // The peer tasks hold the shard set too; they go before the shards can stop.
        if let Some(peers) = self.peers {
            peers.shutdown().await;
        }
        drop(self.shared);
        let workers = self.workers;
        let _ = tokio::task::spawn_blocking(move || {
            for worker in workers {
                let _ = worker.join();
            }
        })
        .await;
        tracing::info!("kahu-server stopped");
    }
}

/// Starts the peer connections, delivering what arrives to the shards. Every node whose
/// handshake was accepted is heard, founder or not: the handshake's cluster id (a hash of
/// the name and the founders' list) keeps out other clusters, and a node added at run time
/// must be heard before this node has seen the membership that adds it. What a node that
/// is not a voter may not do, the Raft core ignores.
async fn start_peers(
    network: PeerNetwork,
    shared: &Arc<Shared>,
) -> Result<RunningPeers, ServerError> {
    let deliver_to = shared.clone();
    let unreachable_to = shared.clone();
    let address = network.listen_addr();
    network
        .start(
            Arc::new(move |shard, message| {
                deliver_to.shards.deliver_peer(usize::from(shard), message);
            }),
            Arc::new(move |node| unreachable_to.shards.peer_unreachable(node)),
        )
        .await
        .map_err(|source| ServerError::Listen { address, source })
}

/// Resolves once the server is stopping. (A helper rather than `wait_for` inline, whose
/// guard would make the caller's future not `Send`.)
pub(crate) async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}
