//! The peer transport: the TCP connections that carry Raft messages between kahu nodes.
//!
//! What: [`PeerNetwork::new`] makes the [`PeerOutboxHandle`] the shards send through (before
//! any IO, since the shards start first and need it); [`PeerNetwork::start`] binds the peer
//! port, accepts the other nodes' connections and opens one to each linked node;
//! [`RunningPeers::shutdown`] stops all of it.
//!
//! # Links
//! A *link* is this node's way to send to one other node: a queue in the outbox and an
//! outbound task. The set of links is not fixed: the founders (`PeerConfig::peers`) are the
//! first; the outbox opens one for each voter a shard's membership adds
//! ([`PeerOutbox::members_changed`]) and for each node that handshakes without having one
//! (at the address it advertised), and closes the link of a node that is a voter of no
//! shard any more (see `outbox.rs` for the rules). An opened link reaches the running
//! transport through an unbounded channel, on which a task started by
//! [`PeerNetwork::start_with`] spawns its outbound task; links opened before the start wait
//! in the channel. A closed link's task sees its queue closed, writes what was queued,
//! closes its connection and ends; a new address for a node is a close and an open.
//!
//! # Connections
//! Each node sends on connections it opened and receives on connections it accepted, so
//! between two nodes there are two TCP connections, one per direction:
//! - **Outbound** (`outbound.rs`): one per link, carrying the messages of every shard to
//!   that node. A task connects (retrying after [`PEER_RECONNECT_DELAY_MIN`], doubling up
//!   to [`PEER_RECONNECT_DELAY_MAX`]), sends HANDSHAKE and checks the answer, then loops:
//!   wait for queued messages, drain everything queued, write it as BATCH frames (as few as
//!   fit in `peer_frame_bytes_max`). A snapshot larger than `snapshot_chunk_bytes` goes as
//!   INSTALL_SNAPSHOT_CHUNKs, one per turn after the turn's other messages, one snapshot at
//!   a time (`chunker.rs`). It never reads a BATCH: it reads only to notice the peer closing
//!   or breaking the connection. It ends when its link is closed or the transport shuts
//!   down.
//! - **Inbound** (`inbound.rs`): the accepting node checks the HANDSHAKE
//!   ([`Handshake::check`]) and the peer's incarnation (recording it if it knew none),
//!   answers HANDSHAKE_ACCEPTED or HANDSHAKE_REFUSED (logged at warn with the reason, at
//!   error for a changed incarnation), tells the outbox the address the peer advertised, then only
//!   reads BATCH frames and hands each message to `deliver`, snapshot chunks put back
//!   together first (`reassembly.rs`: `deliver` sees one InstallSnapshot). Any node of the
//!   cluster (same cluster id and shard count) is heard, linked or not. A frame with a message for a
//!   shard past the shard count, from another node than the handshaken one, or to another
//!   node than this one closes the connection (logged at warn) and none of its messages is
//!   delivered. A node keeps one inbound connection per peer node: a new accepted handshake
//!   from a node closes the older one.
//!
//! # Incarnations
//! Every handshake carries the sender's incarnation and the one it remembers for the
//! receiver; a peer whose incarnation changed is refused on both connections, and a node
//! told that a peer remembers it by another incarnation stops the transport for good
//! ([`RunningPeers::failure`]). The rules are in `incarnations.rs`.
//!
//! # Drops
//! The outbox never blocks a shard: each linked node has a queue of at most
//! [`PEER_QUEUE_MESSAGES_MAX`] messages, and a message is dropped (and counted in
//! `peer_messages_dropped_total`) when that queue is full, when the node has no link or is
//! not connected, when its connection fails with the message queued or unwritten (or with
//! the snapshot being sent in chunks), when it is a snapshot the connection is already
//! sending (or one waiting that a later one of its shard replaced), and when it is too
//! large for any frame and cannot be sent in chunks. Raft already resends what is lost (heartbeats,
//! append retries, probes), so a drop costs time, not safety. So that a leader does not
//! wait on appends it believes are in flight, `unreachable(node)` is called once per lost
//! connection and once per burst of drops at a full queue; the shard then probes that node
//! again. A closed link is not a lost connection: `unreachable` is not called for it.
//!
//! # Invariants
//! - Messages of one shard to one node arrive in the order that shard sent them, or not at
//!   all: one connection per direction and link, a FIFO queue, frames cut in order. Two
//!   exceptions, which Raft accepts as it accepts late messages: a snapshot sent in chunks
//!   arrives with its last chunk, after messages sent behind it (so that it does not hold
//!   them up, see `chunker.rs`); and while a node is relinked at a new address, its old
//!   and new connections may overlap.
//! - Nothing reaches `deliver` before the sender's handshake was accepted, its incarnation
//!   included (the one remembered for it, or recorded durably before the answer), and
//!   every delivered message names the handshaken node as `from`, this node as `to`, and a
//!   shard below the shard count.
//! - Once the transport stopped for good, nothing is delivered or sent again.
//! - At most one link per node, and none to this node; a node that was a voter and is a
//!   voter of no shard has none (until a membership names it again). A closed link's task
//!   may outlive it briefly, writing what was queued, but nothing is queued to it again.
//! - Every wait has a bound: connecting and handshaking ([`PEER_HANDSHAKE_TIMEOUT`]), writing
//!   a frame ([`write_timeout`]), the reconnect delay.
//!
//! [`PeerOutbox::members_changed`]: crate::shard::PeerOutbox::members_changed

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::chunker::{SNAPSHOT_CHUNK_BYTES_MAX, SNAPSHOT_CHUNK_BYTES_MIN};
use super::inbound::Inbound;
use super::incarnations::{Fence, SeenIncarnations};
use super::outbound::{Outbound, OutboundContext};
use super::outbox::{Link, PeerOutboxHandle};
use super::reassembly::ReassemblyError;
use super::{Handshake, HandshakeError, PeerError, ShardId, NODE_ADDRESS_BYTES_MAX};
use crate::raft::{Message, NodeId};
use crate::wal::record::Command;

/// Messages queued for one peer node at most; more are dropped until it drains. A queue is
/// drained into one write per loop turn, so this is also the most messages one turn
/// writes. Appends are bounded apart by Raft's flow control (`appends_in_flight_max` per
/// shard and follower).
pub const PEER_QUEUE_MESSAGES_MAX: usize = 4096;
/// Inbound peer connections open at once at most (handshaking or not); more are closed as
/// soon as they are accepted. A cluster needs one per other node (at most `voters_max`,
/// 255); the limit keeps a flood of connections to the peer port from taking every file
/// descriptor.
pub const PEER_CONNECTIONS_INBOUND_MAX: usize = 256;
/// Longest wait for a handshake: for the connecting node, to connect, send its HANDSHAKE
/// and read the answer; for the accepting node, to read the HANDSHAKE.
pub const PEER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// First wait before connecting again to a node that could not be reached.
pub const PEER_RECONNECT_DELAY_MIN: Duration = Duration::from_millis(50);
/// Longest wait before connecting again: the wait doubles from the minimum up to this.
pub const PEER_RECONNECT_DELAY_MAX: Duration = Duration::from_secs(1);
/// Every frame write may take this long, plus its bytes at
/// [`PEER_WRITE_BYTES_PER_SECOND_MIN`]; a slower write means a peer that stopped reading
/// (or vanished without a reset), and the connection is dropped.
pub const PEER_WRITE_TIMEOUT_MIN: Duration = Duration::from_secs(5);
/// The slowest rate a frame write may go at (1 MiB/s: a whole 64 MiB frame gets 69 s).
pub const PEER_WRITE_BYTES_PER_SECOND_MIN: u64 = 1 << 20;

/// How long writing a frame of `bytes` may take.
pub fn write_timeout(bytes: usize) -> Duration {
    PEER_WRITE_TIMEOUT_MIN
        + Duration::from_millis(bytes as u64 * 1000 / PEER_WRITE_BYTES_PER_SECOND_MIN)
}

/// Where a node of the cluster is reached, written `PEER_ADDR/CLIENT_ADDR`, e.g.
/// `127.0.0.1:9001/localhost:8001`: in `--peers`, in a membership's addresses (voters added
/// at run time) and in the handshake. [`PeerAddress::parse`] reads what
/// [`Display`](fmt::Display) writes: `parse(&address.to_string()) == Ok(address)` for every
/// address that [`PeerAddress::check`] accepts, which every parsed one is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAddress {
    /// That node's peer port: an IP address (not a name) and a port.
    pub peer: SocketAddr,
    /// The address its clients use, given in NOT_LEADER hints: `HOST:PORT`, at most
    /// [`NODE_ADDRESS_BYTES_MAX`] bytes, without whitespace, control characters, `/` or `,`
    /// (which separate the notation's parts and `--peers` items).
    pub client: String,
}

impl PeerAddress {
    /// Reads `PEER_ADDR/CLIENT_ADDR`, exactly (no whitespace around the parts). The error
    /// says what is wrong; the caller says where the text came from.
    pub fn parse(text: &str) -> Result<PeerAddress, String> {
        let (peer, client) = text
            .split_once('/')
            .ok_or("no `/` between the peer and the client address")?;
        let address = PeerAddress {
            peer: parse_peer_address(peer)?,
            client: client.to_string(),
        };
        address.check()?;
        Ok(address)
    }

    /// Whether the address is one [`PeerAddress::parse`] reads back from its text (and so
    /// one a handshake can carry): the client part is checked, the peer part always is.
    pub fn check(&self) -> Result<(), String> {
        check_client_address(&self.client)
    }
}

impl fmt::Display for PeerAddress {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}/{}", self.peer, self.client)
    }
}

/// Reads the `PEER_ADDR` part of the notation.
pub(super) fn parse_peer_address(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("the peer address `{text}` is not IP:PORT (a numeric host, e.g. 127.0.0.1:9001)")
    })
}

/// Checks the `CLIENT_ADDR` part of the notation.
pub(super) fn check_client_address(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("the client address is empty".to_string());
    }
    if text.len() > NODE_ADDRESS_BYTES_MAX {
        return Err(format!(
            "the client address is {} bytes, more than node_address_bytes_max \
             ({NODE_ADDRESS_BYTES_MAX})",
            text.len()
        ));
    }
    let separator = |c: char| c.is_whitespace() || c.is_control() || c == '/' || c == ',';
    if let Some(bad) = text.chars().find(|&c| separator(c)) {
        return Err(format!(
            "the client address `{}` contains {bad:?}; whitespace, control characters, `/` and \
             `,` are not allowed",
            text.escape_debug()
        ));
    }
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!(
            "the client address `{text}` is not HOST:PORT (e.g. localhost:8001)"
        )),
    }
}

/// The peer settings of this node.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// This node's id; never 0.
    pub node_id: NodeId,
    /// Chosen when the cluster was created; must match on every node.
    pub cluster_id: u128,
    /// Shards (Raft groups) per node; must match on every node.
    pub shard_count: u16,
    /// Where this node accepts the other nodes' connections.
    pub listen: SocketAddr,
    /// This node's own address, as the other nodes should reach it (its `--peers` entry;
    /// `listen` may differ, e.g. 0.0.0.0 or behind a proxy). Sent in every handshake.
    pub advertise: PeerAddress,
    /// This node's data directory's incarnation (`DataDir::incarnation`); never 0. Sent in
    /// every handshake.
    pub incarnation: u64,
    /// The incarnations this node saw of its peers, and where they are kept (see
    /// `incarnations.rs`).
    pub seen: SeenIncarnations,
    /// The founders of the cluster other than this node: the first links. Nodes added at
    /// run time are linked as memberships name them ([`PeerOutbox::members_changed`]) or
    /// as they connect.
    ///
    /// [`PeerOutbox::members_changed`]: crate::shard::PeerOutbox::members_changed
    pub peers: BTreeMap<NodeId, PeerAddress>,
    /// Data bytes per INSTALL_SNAPSHOT_CHUNK this node sends: a snapshot larger than this
    /// goes in chunks, between which the other shards' messages pass (`chunker.rs`).
    /// [`SNAPSHOT_CHUNK_BYTES`](super::SNAPSHOT_CHUNK_BYTES) (8 MiB) by default; within
    /// [`SNAPSHOT_CHUNK_BYTES_MIN`]`..=`[`SNAPSHOT_CHUNK_BYTES_MAX`]. Per process: the
    /// nodes of a cluster need not agree on it.
    pub snapshot_chunk_bytes: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerConfigError {
    #[error("node id 0 names no node")]
    NodeIdZero,
    #[error("incarnation 0 names no data directory")]
    IncarnationZero,
    #[error("a cluster has at least one shard")]
    ShardCountZero,
    #[error("node {0} is listed among its own peers")]
    PeerIsSelf(NodeId),
    #[error("a peer is listed as node 0, which names no node")]
    PeerIdZero,
    #[error("the address of node {node}: {reason}")]
    Address { node: NodeId, reason: String },
    #[error(
        "snapshot chunks of {0} bytes: the size is within \
         {SNAPSHOT_CHUNK_BYTES_MIN}..={SNAPSHOT_CHUNK_BYTES_MAX}"
    )]
    SnapshotChunkBytes(usize),
}

impl PeerConfig {
    pub fn validate(&self) -> Result<(), PeerConfigError> {
        if self.node_id == 0 {
            return Err(PeerConfigError::NodeIdZero);
        }
        if self.shard_count == 0 {
            return Err(PeerConfigError::ShardCountZero);
        }
        if self.incarnation == 0 {
            return Err(PeerConfigError::IncarnationZero);
        }
        if self.peers.contains_key(&self.node_id) {
            return Err(PeerConfigError::PeerIsSelf(self.node_id));
        }
        if self.peers.contains_key(&0) {
            return Err(PeerConfigError::PeerIdZero);
        }
        if !(SNAPSHOT_CHUNK_BYTES_MIN..=SNAPSHOT_CHUNK_BYTES_MAX)
            .contains(&self.snapshot_chunk_bytes)
        {
            return Err(PeerConfigError::SnapshotChunkBytes(
                self.snapshot_chunk_bytes,
            ));
        }
        let addresses = std::iter::once((&self.node_id, &self.advertise)).chain(&self.peers);
        for (&node, address) in addresses {
            address
                .check()
                .map_err(|reason| PeerConfigError::Address { node, reason })?;
        }
        Ok(())
    }

    pub(super) fn handshake(&self) -> Handshake {
        Handshake::new(
            self.cluster_id,
            self.shard_count,
            self.node_id,
            self.incarnation,
            self.advertise.clone(),
        )
    }
}

/// Called with each message a peer sent, from a tokio task: it must not block.
pub type Deliver = Arc<dyn Fn(ShardId, Message<Command>) + Send + Sync>;
/// Called with a node whose connection was lost, from a tokio task: it must not block.
pub type Unreachable = Arc<dyn Fn(NodeId) + Send + Sync>;

/// Why a peer connection ended or could not be made. Logged, then the connection is
/// dropped (and, outbound, made again).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("the peer closed the connection")]
    Closed,
    #[error("no progress within {0:?}")]
    Timeout(Duration),
    #[error("expected {expected}, the peer sent {actual}")]
    UnexpectedFrame {
        expected: &'static str,
        actual: &'static str,
    },
    #[error("the node at this address says it is node {actual}, not node {expected}")]
    WrongNode { expected: NodeId, actual: NodeId },
    #[error("a message for shard {shard}, but the cluster has {shard_count} shards")]
    ShardOutOfRange { shard: ShardId, shard_count: u16 },
    #[error("a message from node {claimed} on the connection of node {node}")]
    ForgedSender { node: NodeId, claimed: NodeId },
    #[error("a message for node {to} reached node {local}")]
    WrongRecipient { to: NodeId, local: NodeId },
    #[error(transparent)]
    Reassembly(#[from] ReassemblyError),
}

impl LinkError {
    /// The handshake rule this node's check broke, if that is the error (not a refusal by
    /// the peer, which is [`HandshakeError::Refused`]).
    pub(super) fn refusal(&self) -> Option<&HandshakeError> {
        match self {
            LinkError::Peer(PeerError::Handshake(HandshakeError::Refused { .. })) => None,
            LinkError::Peer(PeerError::Handshake(error)) => Some(error),
            _ => None,
        }
    }

    /// Whether the error is one an operator must act on: a data directory created anew.
    pub(super) fn needs_operator(&self) -> bool {
        self.refusal()
            .is_some_and(|error| error.created_anew().is_some())
    }
}

impl From<io::Error> for LinkError {
    fn from(error: io::Error) -> LinkError {
        LinkError::Peer(PeerError::Io(error))
    }
}

/// The transport's counters, for INFO.
#[derive(Debug, Default)]
pub(super) struct PeerCounters {
    pub messages_sent_total: AtomicU64,
    pub messages_received_total: AtomicU64,
    pub messages_dropped_total: AtomicU64,
    pub frames_sent_total: AtomicU64,
    /// INSTALL_SNAPSHOT_CHUNKs written; a snapshot sent in chunks counts once in
    /// `messages_sent_total`, with its last chunk.
    pub snapshot_chunks_sent_total: AtomicU64,
    /// INSTALL_SNAPSHOT_CHUNKs read; a snapshot put back together counts once in
    /// `messages_received_total`, when it is delivered.
    pub snapshot_chunks_received_total: AtomicU64,
    pub handshakes_refused_total: AtomicU64,
    /// Open, handshaken outbound connections.
    pub connections_outbound: AtomicU64,
    /// Open inbound connections, handshaken or not.
    pub connections_inbound: AtomicU64,
    /// 1 once a peer knew this node by another incarnation: the transport stopped.
    pub fenced: AtomicU64,
}

impl PeerCounters {
    pub(super) fn add(counter: &AtomicU64, amount: usize) {
        counter.fetch_add(amount as u64, Ordering::Relaxed);
    }

    fn stats(&self) -> Vec<(String, u64)> {
        [
            ("peer_messages_sent_total", &self.messages_sent_total),
            (
                "peer_messages_received_total",
                &self.messages_received_total,
            ),
            ("peer_messages_dropped_total", &self.messages_dropped_total),
            ("peer_frames_sent_total", &self.frames_sent_total),
            (
                "peer_snapshot_chunks_sent_total",
                &self.snapshot_chunks_sent_total,
            ),
            (
                "peer_snapshot_chunks_received_total",
                &self.snapshot_chunks_received_total,
            ),
            (
                "peer_handshakes_refused_total",
                &self.handshakes_refused_total,
            ),
            ("peer_connections_outbound", &self.connections_outbound),
            ("peer_connections_inbound", &self.connections_inbound),
            ("peer_fenced", &self.fenced),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value.load(Ordering::Relaxed)))
        .collect()
    }
}

/// The transport's counters as INFO fields, readable before it starts and after it stops.
#[derive(Clone, Debug)]
pub struct PeerStats(Arc<PeerCounters>);

impl PeerStats {
    pub fn fields(&self) -> Vec<(String, u64)> {
        self.0.stats()
    }
}

/// The transport, made but not started: it holds the links opened so far (the founders',
/// and any the shards caused before the start) until it starts their tasks.
#[derive(Debug)]
pub struct PeerNetwork {
    config: PeerConfig,
    outbox: Arc<PeerOutboxHandle>,
    opened: mpsc::UnboundedReceiver<Link>,
    counters: Arc<PeerCounters>,
}

impl PeerNetwork {
    /// Makes the outbox and the transport, without IO. Until [`PeerNetwork::start`] has
    /// connected to a node, messages for it are dropped.
    ///
    /// Panics if `config` is not valid ([`PeerConfig::validate`] it first).
    pub fn new(config: PeerConfig) -> (Arc<PeerOutboxHandle>, PeerNetwork) {
        if let Err(error) = config.validate() {
            panic!("invalid peer config: {error}");
        }
        let counters = Arc::new(PeerCounters::default());
        let (outbox, opened) = PeerOutboxHandle::new(&config, counters.clone());
        let outbox = Arc::new(outbox);
        let network = PeerNetwork {
            config,
            outbox: outbox.clone(),
            opened,
            counters,
        };
        (outbox, network)
    }

    /// The transport's counters, for INFO.
    pub fn stats(&self) -> PeerStats {
        PeerStats(self.counters.clone())
    }

    /// The address [`PeerNetwork::start`] binds.
    pub fn listen_addr(&self) -> SocketAddr {
        self.config.listen
    }

    /// Binds the peer port, then accepts and opens connections until
    /// [`RunningPeers::shutdown`]. Must be called within a tokio runtime.
    pub async fn start(
        self,
        deliver: Deliver,
        unreachable: Unreachable,
    ) -> io::Result<RunningPeers> {
        let listener = TcpListener::bind(self.config.listen).await?;
        self.start_with(listener, deliver, unreachable)
    }

    /// [`PeerNetwork::start`] on a listener already bound (its address need not be
    /// `listen`).
    pub fn start_with(
        self,
        listener: TcpListener,
        deliver: Deliver,
        unreachable: Unreachable,
    ) -> io::Result<RunningPeers> {
        let local_addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let handshake = self.config.handshake();
        let fence = Arc::new(Fence::new(cancel.clone(), self.counters.clone()));
        let inbound = Inbound::new(
            handshake.clone(),
            deliver,
            self.outbox.clone(),
            self.counters.clone(),
            fence.clone(),
            tracker.clone(),
            cancel.clone(),
        );
        tracker.spawn(inbound.accept_loop(listener));
        let outbounds = Outbounds {
            context: OutboundContext {
                local: handshake,
                outbox: self.outbox,
                fence: fence.clone(),
                counters: self.counters.clone(),
                unreachable,
                cancel: cancel.clone(),
                snapshot_chunk_bytes: self.config.snapshot_chunk_bytes,
            },
            tracker: tracker.clone(),
        };
        tracker.spawn(outbounds.run(self.opened));
        tracing::info!(
            node = self.config.node_id,
            address = %local_addr,
            peers = self.config.peers.len(),
            "peer transport started"
        );
        Ok(RunningPeers {
            local_addr,
            cancel,
            tracker,
            counters: self.counters,
            fence,
        })
    }
}

/// What starts an outbound task for each link the outbox opens.
struct Outbounds {
    context: OutboundContext,
    tracker: TaskTracker,
}

impl Outbounds {
    /// Starts a task per link received, until the transport shuts down.
    async fn run(self, mut opened: mpsc::UnboundedReceiver<Link>) {
        loop {
            let link = tokio::select! {
                biased;
                () = self.context.cancel.cancelled() => return,
                link = opened.recv() => link,
            };
            let Some(link) = link else {
                return; // the outbox is gone: no link will be opened again
            };
            let outbound = Outbound::new(link, self.context.clone());
            self.tracker.spawn(outbound.run());
        }
    }
}

/// The running transport.
#[derive(Debug)]
pub struct RunningPeers {
    local_addr: SocketAddr,
    cancel: CancellationToken,
    tracker: TaskTracker,
    counters: Arc<PeerCounters>,
    fence: Arc<Fence>,
}

impl RunningPeers {
    /// The address the peer port is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The transport's counters as INFO fields.
    pub fn stats(&self) -> Vec<(String, u64)> {
        self.counters.stats()
    }

    /// Why the transport stopped for good, once it did: `Some` once a peer knew this node
    /// by another incarnation (its data directory was created anew; see
    /// `incarnations.rs`). The server stops on it.
    pub fn failure(&self) -> watch::Receiver<Option<String>> {
        self.fence.failure()
    }

    /// Stops accepting, closes every connection and waits for every task to end. Messages
    /// still queued are dropped; `unreachable` is not called for these closes.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}
