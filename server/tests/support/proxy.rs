//! A fault-injecting TCP proxy in front of every node's peer port.
//!
//! Every node's `--peers` names the proxy's address for every node, so all Raft traffic
//! goes through a proxy: node A's outbound connection to node B is A → proxy(B) → B's real
//! peer port (`--peer-listen`). A proxy knows the node behind it; it learns the node at the
//! other end from the HANDSHAKE frame, the first frame on a peer connection (see the peer
//! protocol in `server/src/peer/mod.rs`: a 16-byte header, then the magic `KAHUPEER`,
//! version u16, shard_count u16, node_id u64 little-endian). So it can cut any node off from the others,
//! both ways, which one proxy in front of one node could not: that node's own outbound
//! connections go to the other nodes' addresses.
//!
//! [`PeerProxies::isolate`] cuts a node off like a network partition, not like a crash:
//! connections are not closed; bytes on them (and on connections opened meanwhile) are
//! read and thrown away, so the senders see nothing wrong and nothing arrives.
//! [`PeerProxies::heal`] closes every connection that lost bytes (its frames were cut), so
//! the nodes reconnect and handshake afresh; traffic flows again.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Bytes of a HANDSHAKE frame up to and including the sender's node id.
const HANDSHAKE_PREFIX_BYTES: usize = 36;
/// The sender's node id within the HANDSHAKE frame.
const HANDSHAKE_NODE_ID_OFFSET: usize = 28;
const PEER_MAGIC: u8 = 0xCD;
const FRAME_KIND_HANDSHAKE: u8 = 0x01;
/// The longest wait for a connecting node's handshake bytes, or to reach the node behind.
const PROXY_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const COPY_BUFFER_BYTES: usize = 16 * 1024;

/// What the proxies did, for the summary.
#[derive(Debug, Default)]
pub struct ProxyCounts {
    pub connections: AtomicU64,
    pub connections_cut: AtomicU64,
    pub bytes_forwarded: AtomicU64,
    pub bytes_dropped: AtomicU64,
}

/// One proxied connection: `source` → the proxy of `target` → `target`.
#[derive(Debug)]
struct Link {
    source: u64,
    target: u64,
    /// Lost bytes during a partition: closed at the heal.
    broken: AtomicBool,
    close: CancellationToken,
}

#[derive(Debug, Default)]
struct State {
    /// The node cut off from the others, if any.
    isolated: Option<u64>,
    links: Vec<Arc<Link>>,
}

impl State {
    fn blocks(&self, source: u64, target: u64) -> bool {
        self.isolated
            .is_some_and(|node| node == source || node == target)
    }
}

/// The proxies of one cluster, and the switch that partitions it.
#[derive(Debug, Clone)]
pub struct PeerProxies {
    state: Arc<Mutex<State>>,
    pub counts: Arc<ProxyCounts>,
    stop: CancellationToken,
}

impl Default for PeerProxies {
    fn default() -> Self {
        PeerProxies::new()
    }
}

impl PeerProxies {
    pub fn new() -> PeerProxies {
        PeerProxies {
            state: Arc::default(),
            counts: Arc::default(),
            stop: CancellationToken::new(),
        }
    }

    /// Serves `listener` (bound by the test, so its port is known before any node starts)
    /// as the proxy of node `target`, whose real peer port is `upstream`. Must be called
    /// within the tokio runtime.
    pub fn serve(&self, listener: std::net::TcpListener, target: u64, upstream: SocketAddr) {
        listener
            .set_nonblocking(true)
            .expect("a non-blocking proxy listener");
        let listener = TcpListener::from_std(listener).expect("a tokio proxy listener");
        let proxies = self.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = proxies.stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let proxies = proxies.clone();
                tokio::spawn(async move { proxies.relay(stream, target, upstream).await });
            }
        });
    }

    /// Cuts `node` off: from now on nothing it sends reaches another node, and nothing
    /// another node sends reaches it.
    pub fn isolate(&self, node: u64) {
        let mut state = self.state();
        state.isolated = Some(node);
        for link in &state.links {
            if link.source == node || link.target == node {
                link.broken.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Ends the partition: closes every connection that lost bytes.
    pub fn heal(&self) {
        let mut state = self.state();
        state.isolated = None;
        for link in &state.links {
            if link.broken.load(Ordering::SeqCst) {
                link.close.cancel();
                self.counts.connections_cut.fetch_add(1, Ordering::Relaxed);
            }
        }
        state.links.retain(|link| !link.close.is_cancelled());
    }

    /// Stops accepting and closes every connection.
    pub fn shutdown(&self) {
        self.stop.cancel();
        for link in &self.state().links {
            link.close.cancel();
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// One connection: read the handshake prefix to learn who is calling, connect to the
    /// node behind, then copy both ways until either side closes or the heal cuts it.
    async fn relay(&self, mut downstream: TcpStream, target: u64, upstream: SocketAddr) {
        let mut prefix = [0_u8; HANDSHAKE_PREFIX_BYTES];
        let read = tokio::time::timeout(PROXY_CONNECT_TIMEOUT, downstream.read_exact(&mut prefix));
        if !matches!(read.await, Ok(Ok(_))) {
            return;
        }
        let source = handshake_node_id(&prefix);
        let connected = tokio::time::timeout(PROXY_CONNECT_TIMEOUT, TcpStream::connect(upstream));
        let Ok(Ok(mut upstream)) = connected.await else {
            return; // the node behind is down: the caller sees its connection closed
        };
        let _ = downstream.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        self.counts.connections.fetch_add(1, Ordering::Relaxed);
        let link = {
            let mut state = self.state();
            let link = Arc::new(Link {
                source,
                target,
                broken: AtomicBool::new(state.blocks(source, target)),
                close: self.stop.child_token(),
            });
            state.links.retain(|link| !link.close.is_cancelled());
            state.links.push(link.clone());
            link
        };
        if !self.forward(&link, &prefix, &mut upstream).await {
            link.close.cancel();
            return;
        }
        let (down_read, down_write) = downstream.into_split();
        let (up_read, up_write) = upstream.into_split();
        let there = tokio::spawn(self.clone().copy(link.clone(), down_read, up_write));
        self.clone().copy(link.clone(), up_read, down_write).await;
        let _ = there.await;
    }

    /// Copies `from` to `to` until either ends, the link is closed, or the proxies stop;
    /// then closes the link (so the other direction ends too).
    async fn copy(
        self,
        link: Arc<Link>,
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
    ) {
        let mut buffer = vec![0_u8; COPY_BUFFER_BYTES];
        loop {
            let read = tokio::select! {
                () = link.close.cancelled() => break,
                read = from.read(&mut buffer) => read,
            };
            let bytes = match read {
                Ok(0) | Err(_) => break,
                Ok(bytes) => bytes,
            };
            if !self.forward(&link, &buffer[..bytes], &mut to).await {
                break;
            }
        }
        link.close.cancel();
    }

    /// Writes `bytes` on, or throws them away on a broken link. False when the connection
    /// is over.
    async fn forward<W: AsyncWriteExt + Unpin>(
        &self,
        link: &Link,
        bytes: &[u8],
        to: &mut W,
    ) -> bool {
        if link.broken.load(Ordering::SeqCst) {
            let dropped = bytes.len() as u64;
            self.counts
                .bytes_dropped
                .fetch_add(dropped, Ordering::Relaxed);
            return true;
        }
        let written = tokio::select! {
            () = link.close.cancelled() => return false,
            written = to.write_all(bytes) => written,
        };
        let forwarded = bytes.len() as u64;
        self.counts
            .bytes_forwarded
            .fetch_add(forwarded, Ordering::Relaxed);
        written.is_ok()
    }
}

/// The sender's node id in a HANDSHAKE prefix; 0 (no node) if it is not one.
fn handshake_node_id(prefix: &[u8; HANDSHAKE_PREFIX_BYTES]) -> u64 {
    if prefix[0] != PEER_MAGIC || prefix[1] != FRAME_KIND_HANDSHAKE {
        return 0;
    }
    let mut id = [0_u8; 8];
    id.copy_from_slice(&prefix[HANDSHAKE_NODE_ID_OFFSET..HANDSHAKE_PREFIX_BYTES]);
    u64::from_le_bytes(id)
}
