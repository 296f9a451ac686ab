//! Inbound peer connections: accept, check the handshake, deliver what arrives.
//!
//! [`Inbound::accept_loop`] accepts on the peer port (at most
//! [`PEER_CONNECTIONS_INBOUND_MAX`] connections at once) and runs a task per connection:
//! read HANDSHAKE within [`PEER_HANDSHAKE_TIMEOUT`], check it ([`Handshake::check`]),
//! answer HANDSHAKE_ACCEPTED or HANDSHAKE_REFUSED (the refusal logged at warn with its
//! reason), then read BATCH frames. Each frame is checked whole before any of it is
//! delivered: every message's shard below the shard count, `from` the handshaken node, `to`
//! this node, and every snapshot chunk within the bounds of the connection's
//! [`Reassembly`]. A frame that fails, any other frame kind, or bytes that are not a frame
//! close the connection, logged at warn; the peer reconnects and Raft resends.
//!
//! The INSTALL_SNAPSHOT_CHUNKs of a frame go to the connection's [`Reassembly`], which
//! hands back one whole InstallSnapshot with a snapshot's last chunk: that is delivered in
//! the chunk's place, so `deliver` sees Raft messages only. The partial snapshots of a
//! connection are dropped with it.
//!
//! One connection per peer node: a node that handshakes again (it restarted, or lost a
//! connection this side has not noticed yet) replaces its older connection, which is
//! closed. An inbound connection is never written after the handshake, so without this a
//! connection whose peer vanished without a reset would stay open forever.
//!
//! Before it answers, the accepting node checks the peer's incarnation against the one it
//! remembers, recording it (durably) if it remembers none ([`PeerOutboxHandle::admit`]):
//! a node whose data directory was created anew is refused, logged at error. A HANDSHAKE
//! that remembers *this* node by another incarnation is refused too, and stops this
//! node's transport for good ([`Fence`]): this node's own data directory was created anew.
//!
//! An accepted handshake tells the outbox where its node is ([`PeerOutboxHandle::learn`]):
//! a node this node has no link to (one added at run time, whose membership this node has
//! not seen yet) gets one, at the address it advertised, so that it can be answered.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::incarnations::Fence;
use super::reassembly::{Reassembly, SNAPSHOT_REASSEMBLY_BYTES_MAX};
use super::transport::{
    Deliver, LinkError, PeerCounters, PEER_CONNECTIONS_INBOUND_MAX, PEER_HANDSHAKE_TIMEOUT,
    PEER_RECONNECT_DELAY_MIN,
};
use super::{
    BatchMessage, Handshake, PeerCodec, PeerError, PeerFrame, PeerOutboxHandle, ShardMessage,
};
use crate::raft::NodeId;

/// What every inbound connection task shares.
pub(super) struct Inbound {
    local: Handshake,
    deliver: Deliver,
    /// Told each accepted node's advertised address.
    outbox: Arc<PeerOutboxHandle>,
    counters: Arc<PeerCounters>,
    fence: Arc<Fence>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    /// The handshaken connection of each node: its number, and the token that closes it.
    by_node: Mutex<HashMap<NodeId, (u64, CancellationToken)>>,
    next_connection: AtomicU64,
}

impl Inbound {
    pub(super) fn new(
        local: Handshake,
        deliver: Deliver,
        outbox: Arc<PeerOutboxHandle>,
        counters: Arc<PeerCounters>,
        fence: Arc<Fence>,
        tracker: TaskTracker,
        cancel: CancellationToken,
    ) -> Arc<Inbound> {
        Arc::new(Inbound {
            local,
            deliver,
            outbox,
            counters,
            fence,
            tracker,
            cancel,
            by_node: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(0),
        })
    }

    pub(super) async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        loop {
            let accepted = tokio::select! {
                biased;
                () = self.cancel.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, address) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(%error, "accepting a peer connection failed");
                    tokio::time::sleep(PEER_RECONNECT_DELAY_MIN).await;
                    continue;
                }
            };
            let open = self.counters.connections_inbound.load(Ordering::Relaxed);
            if open >= PEER_CONNECTIONS_INBOUND_MAX as u64 {
                tracing::warn!(
                    %address,
                    "closed a peer connection: peer_connections_inbound_max \
                     ({PEER_CONNECTIONS_INBOUND_MAX}) are open"
                );
                continue;
            }
            PeerCounters::add(&self.counters.connections_inbound, 1);
            self.tracker.spawn(self.clone().serve(stream, address));
        }
    }

    async fn serve(self: Arc<Self>, stream: TcpStream, address: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let mut framed = Framed::new(stream, PeerCodec::default());
        let handshake = tokio::select! {
            biased;
            () = self.cancel.cancelled() => None,
            handshake = tokio::time::timeout(PEER_HANDSHAKE_TIMEOUT, self.handshake(&mut framed)) => {
                Some(handshake.unwrap_or(Err(LinkError::Timeout(PEER_HANDSHAKE_TIMEOUT))))
            }
        };
        match handshake {
            None => {}
            Some(Ok(remote)) => {
                if let Some(advertised) = remote.address {
                    self.outbox.learn(remote.node_id, advertised);
                }
                self.read_batches(framed, remote.node_id, address).await;
            }
            Some(Err(error)) if error.needs_operator() => {
                tracing::error!(%address, %error, "refused a peer connection at its handshake");
            }
            Some(Err(error)) => {
                tracing::warn!(%address, %error, "refused a peer connection at its handshake");
            }
        }
        self.counters
            .connections_inbound
            .fetch_sub(1, Ordering::Relaxed);
    }

    /// Reads and answers the HANDSHAKE, recording the peer's incarnation before it
    /// accepts; the peer's handshake if it was accepted.
    async fn handshake(
        &self,
        framed: &mut Framed<TcpStream, PeerCodec>,
    ) -> Result<Handshake, LinkError> {
        let remote = match framed.next().await {
            Some(Ok(PeerFrame::Handshake(remote))) => remote,
            Some(Ok(frame)) => {
                return Err(LinkError::UnexpectedFrame {
                    expected: "HANDSHAKE",
                    actual: frame.kind().name(),
                })
            }
            Some(Err(error)) => return Err(error.into()),
            None => return Err(LinkError::Closed),
        };
        let checked = match self.local.check(&remote) {
            Ok(()) => {
                self.outbox
                    .admit_blocking(remote.node_id, remote.incarnation)
                    .await
            }
            Err(error) => Err(error),
        };
        if let Err(error) = checked {
            PeerCounters::add(&self.counters.handshakes_refused_total, 1);
            let _ = framed
                .send(PeerFrame::HandshakeRefused(error.to_string()))
                .await;
            if error.created_anew() == Some(self.local.node_id) {
                self.fence.stop(&error);
            }
            return Err(PeerError::from(error).into());
        }
        let answer = self
            .local
            .to_receiver(self.outbox.remembered(remote.node_id));
        framed.send(PeerFrame::HandshakeAccepted(answer)).await?;
        Ok(remote)
    }

    /// Delivers what `node` sends until the connection ends, fails a check, is replaced or
    /// the transport shuts down.
    async fn read_batches(
        &self,
        mut framed: Framed<TcpStream, PeerCodec>,
        node: NodeId,
        address: SocketAddr,
    ) {
        let (number, closed) = self.register(node);
        tracing::info!(node, %address, "peer connected");
        let mut reassembly = Reassembly::new(node, SNAPSHOT_REASSEMBLY_BYTES_MAX);
        let ended = loop {
            let frame = tokio::select! {
                biased;
                () = closed.cancelled() => break None,
                frame = framed.next() => frame,
            };
            let result = match frame {
                None => Err(LinkError::Closed),
                Some(Err(error)) => Err(error.into()),
                Some(Ok(PeerFrame::Batch(messages))) => {
                    self.deliver(node, messages, &mut reassembly)
                }
                Some(Ok(frame)) => Err(LinkError::UnexpectedFrame {
                    expected: "BATCH",
                    actual: frame.kind().name(),
                }),
            };
            if let Err(error) = result {
                break Some(error);
            }
        };
        self.unregister(node, number);
        if reassembly.bytes() > 0 {
            tracing::info!(
                node,
                bytes = reassembly.bytes(),
                "dropped the partial snapshots of a closed peer connection"
            );
        }
        match ended {
            None => tracing::debug!(node, %address, "closed a peer connection"),
            Some(LinkError::Closed) => tracing::info!(node, %address, "peer closed its connection"),
            Some(error) => tracing::warn!(node, %address, %error, "closed a peer connection"),
        }
    }

    /// Checks every message of a frame from `node` and puts its snapshot chunks in
    /// `reassembly`, then delivers its Raft messages and the snapshots it completed, in
    /// order.
    fn deliver(
        &self,
        node: NodeId,
        messages: Vec<BatchMessage>,
        reassembly: &mut Reassembly,
    ) -> Result<(), LinkError> {
        for message in &messages {
            self.check(node, message)?;
        }
        let mut chunks = 0;
        let mut deliveries = Vec::with_capacity(messages.len());
        for message in messages {
            match message {
                BatchMessage::Raft(message) => deliveries.push(message),
                BatchMessage::Chunk(chunk) => {
                    chunks += 1;
                    deliveries.extend(reassembly.add(chunk)?);
                }
            }
        }
        PeerCounters::add(&self.counters.snapshot_chunks_received_total, chunks);
        PeerCounters::add(&self.counters.messages_received_total, deliveries.len());
        for ShardMessage { shard, message } in deliveries {
            (self.deliver)(shard, message);
        }
        Ok(())
    }

    /// Checks that a message from `node` is for a shard of the cluster, from `node`, to
    /// this node.
    fn check(&self, node: NodeId, message: &BatchMessage) -> Result<(), LinkError> {
        let shard = message.shard();
        if shard >= self.local.shard_count {
            return Err(LinkError::ShardOutOfRange {
                shard,
                shard_count: self.local.shard_count,
            });
        }
        let (from, to) = message.from_to();
        if from != node {
            return Err(LinkError::ForgedSender {
                node,
                claimed: from,
            });
        }
        if to != self.local.node_id {
            return Err(LinkError::WrongRecipient {
                to,
                local: self.local.node_id,
            });
        }
        Ok(())
    }

    /// Records the connection of `node`, closing the one it replaces; its number and the
    /// token that closes it.
    fn register(&self, node: NodeId) -> (u64, CancellationToken) {
        let number = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let closed = self.cancel.child_token();
        let replaced = self
            .by_node
            .lock()
            .expect("never poisoned: no panic while held")
            .insert(node, (number, closed.clone()));
        if let Some((_, replaced)) = replaced {
            tracing::info!(node, "peer connected again; closing its older connection");
            replaced.cancel();
        }
        (number, closed)
    }

    fn unregister(&self, node: NodeId, number: u64) {
        let mut by_node = self
            .by_node
            .lock()
            .expect("never poisoned: no panic while held");
        if by_node
            .get(&node)
            .is_some_and(|(current, _)| *current == number)
        {
            by_node.remove(&node);
        }
    }
}
