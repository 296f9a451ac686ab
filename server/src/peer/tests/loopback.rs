//! A harness for transport tests: networks on loopback with ports from the OS, deliveries
//! and unreachable calls on channels, captured logs, and waits that end in a panic.
//!
//! The tests run on tokio's current-thread runtime, so every task runs on the test's
//! thread (where the log capture applies), and messages a test sends without awaiting in
//! between are all queued before the outbound task looks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;
use crate::peer::transport::{Deliver, Unreachable};
use crate::raft::NodeId;

/// The longest any test waits for something to happen.
pub(super) const WAIT: Duration = Duration::from_secs(10);

/// A started network and what it delivered.
pub(super) struct TestNode {
    pub id: NodeId,
    pub outbox: Arc<PeerOutboxHandle>,
    pub running: RunningPeers,
    pub delivered: mpsc::UnboundedReceiver<(ShardId, Message<Command>)>,
    pub unreachable: mpsc::UnboundedReceiver<NodeId>,
}

impl TestNode {
    pub fn stat(&self, name: &str) -> u64 {
        let stats = self.running.stats();
        let found = stats.iter().find(|(field, _)| field == name);
        found.unwrap_or_else(|| panic!("no stat {name}")).1
    }

    /// The next `count` deliveries.
    pub async fn receive(&mut self, count: usize) -> Vec<(ShardId, Message<Command>)> {
        let mut received = Vec::with_capacity(count);
        while received.len() < count {
            let next = tokio::time::timeout(WAIT, self.delivered.recv()).await;
            let Ok(Some(delivery)) = next else {
                panic!(
                    "node {} received {} of {count} messages",
                    self.id,
                    received.len()
                );
            };
            received.push(delivery);
        }
        received
    }

    pub fn received_nothing(&mut self) -> bool {
        self.delivered.try_recv().is_err()
    }
}

/// A node's client address in these tests.
pub(super) fn client_of(node: NodeId) -> String {
    format!("client-of-{node}:8002")
}

/// A node's address in these tests: its peer port, and [`client_of`].
pub(super) fn node_address(node: NodeId, peer: SocketAddr) -> PeerAddress {
    PeerAddress {
        peer,
        client: client_of(node),
    }
}

/// A node's peer settings: it advertises `listen`, and knows the founders `peers` (itself
/// left out).
pub(super) fn config(
    node_id: NodeId,
    cluster_id: u128,
    shard_count: u16,
    listen: SocketAddr,
    peers: &[(NodeId, SocketAddr)],
) -> PeerConfig {
    let peers: BTreeMap<NodeId, PeerAddress> = peers
        .iter()
        .filter(|(id, _)| *id != node_id)
        .map(|&(id, peer)| (id, node_address(id, peer)))
        .collect();
    PeerConfig {
        node_id,
        cluster_id,
        shard_count,
        listen,
        advertise: node_address(node_id, listen),
        incarnation: incarnation_of(node_id),
        seen: SeenIncarnations::new(BTreeMap::new(), Arc::new(MemoryStore::default())),
        peers,
        snapshot_chunk_bytes: SNAPSHOT_CHUNK_BYTES,
    }
}

/// Seen incarnations kept in memory: every map saved, in order; a save fails while
/// `failing` is set.
#[derive(Debug, Default)]
pub(super) struct MemoryStore {
    pub saved: Mutex<Vec<BTreeMap<NodeId, u64>>>,
    pub failing: AtomicBool,
}

impl MemoryStore {
    /// The map saved last (empty if none was).
    pub fn last(&self) -> BTreeMap<NodeId, u64> {
        let saved = self.saved.lock().unwrap();
        saved.last().cloned().unwrap_or_default()
    }
}

impl IncarnationStore for MemoryStore {
    fn save(&self, seen: &BTreeMap<NodeId, u64>) -> std::io::Result<()> {
        if self.failing.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("the disk is full (injected)"));
        }
        self.saved.lock().unwrap().push(seen.clone());
        Ok(())
    }
}

/// Starts a network on `listener`, or on its configured address when there is none.
pub(super) async fn start(config: PeerConfig, listener: Option<TcpListener>) -> TestNode {
    let id = config.node_id;
    let (outbox, network) = PeerNetwork::new(config);
    let (delivered_sender, delivered) = mpsc::unbounded_channel();
    let (unreachable_sender, unreachable) = mpsc::unbounded_channel();
    let deliver: Deliver = Arc::new(move |shard, message| {
        let _ = delivered_sender.send((shard, message));
    });
    let unreachable_call: Unreachable = Arc::new(move |node| {
        let _ = unreachable_sender.send(node);
    });
    let running = match listener {
        Some(listener) => network.start_with(listener, deliver, unreachable_call),
        None => network.start(deliver, unreachable_call).await,
    };
    TestNode {
        id,
        outbox,
        running: running.expect("the peer transport starts"),
        delivered,
        unreachable,
    }
}

/// A listener on a loopback port chosen by the OS.
pub(super) async fn loopback_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

/// A loopback address nothing listens on (yet): a port the OS chose, closed again.
pub(super) async fn closed_address() -> SocketAddr {
    loopback_listener().await.local_addr().unwrap()
}

/// Nodes 1 to `count` of one cluster, every one a peer of every other.
pub(super) async fn cluster(count: u64, shard_count: u16) -> Vec<TestNode> {
    cluster_with_chunks(count, shard_count, SNAPSHOT_CHUNK_BYTES).await
}

/// [`cluster`], each node sending snapshots in chunks of `snapshot_chunk_bytes`.
pub(super) async fn cluster_with_chunks(
    count: u64,
    shard_count: u16,
    snapshot_chunk_bytes: usize,
) -> Vec<TestNode> {
    let mut listeners = Vec::new();
    for _ in 0..count {
        listeners.push(loopback_listener().await);
    }
    let addresses: Vec<(NodeId, SocketAddr)> = (1..=count)
        .zip(&listeners)
        .map(|(id, listener)| (id, listener.local_addr().unwrap()))
        .collect();
    let mut nodes = Vec::new();
    for ((id, address), listener) in addresses.iter().zip(listeners) {
        let mut config = config(*id, CLUSTER, shard_count, *address, &addresses);
        config.snapshot_chunk_bytes = snapshot_chunk_bytes;
        nodes.push(start(config, Some(listener)).await);
    }
    nodes
}

/// Waits until every node has an outbound connection to every other.
pub(super) async fn all_connected(nodes: &[TestNode]) {
    let peers = nodes.len() as u64 - 1;
    wait_until("every outbound connection is up", || {
        nodes
            .iter()
            .all(|node| node.stat("peer_connections_outbound") == peers)
    })
    .await;
}

pub(super) async fn shutdown(nodes: Vec<TestNode>) {
    for node in nodes {
        node.running.shutdown().await;
    }
}

/// Polls `condition` every 10 ms until it holds; panics after [`WAIT`].
pub(super) async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(WAIT, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "waited {WAIT:?} for: {what}");
}

/// A heartbeat from `from` to `to`; `commit` tells the tests' messages apart.
pub(super) fn heartbeat_message(from: NodeId, to: NodeId, commit: u64) -> Message<Command> {
    Message {
        from,
        to,
        term: 1,
        body: MessageBody::Heartbeat { commit, context: 0 },
    }
}

/// The `commit` of a heartbeat.
pub(super) fn commit_of(message: &Message<Command>) -> u64 {
    match message.body {
        MessageBody::Heartbeat { commit, .. } => commit,
        ref body => panic!("not a heartbeat: {}", body.name()),
    }
}

/// Everything logged on this thread while the guard lives.
#[derive(Clone, Default)]
pub(super) struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
