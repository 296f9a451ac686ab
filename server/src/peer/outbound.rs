//! One node's outbound connection: connect, handshake, then write what the shards queue.
//!
//! A task per link runs [`Outbound::run`]: it connects (retrying with a doubling delay),
//! sends HANDSHAKE and checks the answer, then loops: wait for queued messages, drain
//! everything queued, cut the snapshots larger than a chunk into chunks ([`Chunker`]: each
//! turn writes the next chunk of one snapshot, after the other messages, and does not wait
//! for the queue while a snapshot is unfinished), cut the turn into as few BATCH frames as
//! fit ([`split_into_batches`]), write them. The connection carries no frames back; the
//! task reads it only to notice the peer closing or breaking it. When the connection is
//! lost it drops what is queued and the snapshots it was sending (the receiver drops their
//! chunks), calls `unreachable` once and connects again.
//!
//! The task ends when the transport shuts down or when its link is closed (the outbox
//! dropped the queue's sending side: the node left the cluster, or has a new address). It
//! watches the queue for that while connecting and waiting too, dropping (and counting)
//! any message that raced a disconnect. A closed link's queued messages are written first
//! (but not the rest of a snapshot being sent in chunks: the node is gone); then the
//! connection is closed, and `unreachable` is not called.
//!
//! The HANDSHAKE tells the incarnation this node remembers for the peer; the answer's
//! incarnation is checked against it and recorded if there was none
//! ([`PeerOutboxHandle::admit`]). A peer whose incarnation changed is not written to: the
//! connection is closed, counted as a refused handshake, and tried again later (the node
//! may be removed meanwhile, which closes the link). An answer that remembers *this* node
//! by another incarnation stops the transport for good ([`Fence`]).
//!
//! A failed attempt is logged at warn (at error for a changed incarnation) when its error
//! differs from the attempt before it, else at debug, so a node that stays down (or keeps
//! refusing) is said once, not every second.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::chunker::Chunker;
use super::frame::split_into_batches;
use super::incarnations::Fence;
use super::outbox::{Link, PeerOutboxHandle};
use super::transport::{
    write_timeout, LinkError, PeerCounters, Unreachable, PEER_HANDSHAKE_TIMEOUT,
    PEER_QUEUE_MESSAGES_MAX, PEER_RECONNECT_DELAY_MAX, PEER_RECONNECT_DELAY_MIN,
};
use super::{
    BatchMessage, Handshake, HandshakeError, PeerCodec, PeerError, PeerFrame, ShardMessage,
    PEER_FRAME_BYTES_MAX, SNAPSHOT_BYTES_MAX,
};
use crate::raft::NodeId;

/// A handshaken connection. The read half is watched only for the peer closing it.
struct Connection {
    reader: FramedRead<OwnedReadHalf, PeerCodec>,
    writer: OwnedWriteHalf,
}

/// What every outbound task of a transport shares.
#[derive(Clone)]
pub(super) struct OutboundContext {
    pub local: Handshake,
    pub outbox: Arc<PeerOutboxHandle>,
    pub fence: Arc<Fence>,
    pub counters: Arc<PeerCounters>,
    pub unreachable: Unreachable,
    pub cancel: CancellationToken,
    /// Data bytes per snapshot chunk (`PeerConfig::snapshot_chunk_bytes`).
    pub snapshot_chunk_bytes: usize,
}

/// The task state of one peer node's outbound connection.
pub(super) struct Outbound {
    link: Link,
    local: Handshake,
    outbox: Arc<PeerOutboxHandle>,
    fence: Arc<Fence>,
    counters: Arc<PeerCounters>,
    unreachable: Unreachable,
    cancel: CancellationToken,
    snapshot_chunk_bytes: usize,
    /// The snapshots the current connection is sending in chunks.
    chunker: Chunker,
}

impl Outbound {
    pub(super) fn new(link: Link, context: OutboundContext) -> Outbound {
        let OutboundContext {
            local,
            outbox,
            fence,
            counters,
            unreachable,
            cancel,
            snapshot_chunk_bytes,
        } = context;
        Outbound {
            link,
            local,
            outbox,
            fence,
            counters,
            unreachable,
            cancel,
            snapshot_chunk_bytes,
            chunker: Chunker::new(snapshot_chunk_bytes, PEER_FRAME_BYTES_MAX),
        }
    }

    /// Connects, serves and reconnects until the transport shuts down or the link is
    /// closed.
    pub(super) async fn run(mut self) {
        let (node, address) = (self.link.node, self.link.address);
        let mut delay = PEER_RECONNECT_DELAY_MIN;
        let mut last_failure: Option<String> = None;
        loop {
            let local = self.local.to_receiver(self.outbox.remembered(node));
            let attempt = tokio::select! {
                biased;
                () = self.cancel.cancelled() => return,
                () = closed(&mut self.link.queue, &self.counters) => {
                    return link_closed(node, address);
                }
                attempt = connect(address, node, &local, &self.outbox) => attempt,
            };
            match attempt {
                Ok(connection) => {
                    tracing::info!(node, %address, "connected to peer");
                    delay = PEER_RECONNECT_DELAY_MIN;
                    last_failure = None;
                    let lost = self.serve(connection).await;
                    self.disconnected();
                    let Some(error) = lost else {
                        if !self.cancel.is_cancelled() {
                            link_closed(node, address);
                        }
                        return;
                    };
                    tracing::warn!(node, %address, %error, "lost the connection to peer; reconnecting");
                    (self.unreachable)(node);
                }
                Err(error) => {
                    self.refused(&error);
                    let failure = error.to_string();
                    if last_failure.as_ref() == Some(&failure) {
                        tracing::debug!(node, %address, error = %failure, "cannot connect to peer");
                    } else if error.needs_operator() {
                        tracing::error!(node, %address, error = %failure, "cannot connect to peer; retrying");
                    } else {
                        tracing::warn!(node, %address, error = %failure, "cannot connect to peer; retrying");
                    }
                    last_failure = Some(failure);
                }
            }
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return,
                () = closed(&mut self.link.queue, &self.counters) => {
                    return link_closed(node, address);
                }
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(PEER_RECONNECT_DELAY_MAX);
        }
    }

    /// Counts a handshake this node refused (the peer's answer broke a rule), and stops
    /// the transport if the peer knew this node by another incarnation.
    fn refused(&self, error: &LinkError) {
        let Some(refusal) = error.refusal() else {
            return;
        };
        PeerCounters::add(&self.counters.handshakes_refused_total, 1);
        if refusal.created_anew() == Some(self.local.node_id) {
            self.fence.stop(refusal);
        }
    }

    /// Writes queued messages until the connection fails (the error), the transport shuts
    /// down or the link is closed (`None`).
    async fn serve(&mut self, connection: Connection) -> Option<LinkError> {
        let Connection {
            mut reader,
            mut writer,
        } = connection;
        let node = self.link.node;
        self.link.state.connected.store(true, Ordering::Release);
        PeerCounters::add(&self.counters.connections_outbound, 1);
        let mut drained = Vec::new();
        loop {
            let sending = self.chunker.is_sending();
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return None,
                frame = reader.next() => return Some(ended_by_peer(frame)),
                received = self.link.queue.recv_many(&mut drained, PEER_QUEUE_MESSAGES_MAX) => {
                    if received == 0 {
                        return None; // the link is closed: nothing will be queued again
                    }
                }
                // A snapshot is unfinished: its next chunk goes now, queued messages or not.
                () = std::future::ready(()), if sending => {}
            }
            let turn = self.chunker.turn(drained.drain(..));
            PeerCounters::add(&self.counters.messages_dropped_total, turn.superseded);
            let written = tokio::select! {
                biased;
                () = self.cancel.cancelled() => return None,
                written = write_batch(&mut writer, turn.messages, &self.counters, node) => written,
            };
            if let Err(error) = written {
                return Some(error);
            }
            if self.link.state.overflowed.swap(false, Ordering::AcqRel) {
                tracing::debug!(node, "the queue to peer was full; messages were dropped");
                (self.unreachable)(node);
            }
        }
    }

    /// The connection is gone: later messages are dropped at the outbox, and those queued
    /// now are dropped here, with the snapshots it was sending in chunks.
    fn disconnected(&mut self) {
        self.link.state.connected.store(false, Ordering::Release);
        self.counters
            .connections_outbound
            .fetch_sub(1, Ordering::Relaxed);
        let mut dropped = self.chunker.snapshots();
        self.chunker = Chunker::new(self.snapshot_chunk_bytes, PEER_FRAME_BYTES_MAX);
        while self.link.queue.try_recv().is_ok() {
            dropped += 1;
        }
        PeerCounters::add(&self.counters.messages_dropped_total, dropped);
        // The unreachable call for the lost connection covers any overflow before it.
        self.link.state.overflowed.store(false, Ordering::Release);
    }
}

/// Resolves once the link's queue is closed (the outbox dropped its sending side). Messages
/// that arrive meanwhile raced a disconnect: they are dropped and counted.
async fn closed(queue: &mut mpsc::Receiver<ShardMessage>, counters: &PeerCounters) {
    while queue.recv().await.is_some() {
        PeerCounters::add(&counters.messages_dropped_total, 1);
    }
}

fn link_closed(node: NodeId, address: SocketAddr) {
    tracing::info!(node, %address, "the link to peer was closed; its connection too");
}

/// Connects to `node` at `address` and handshakes, within [`PEER_HANDSHAKE_TIMEOUT`].
async fn connect(
    address: SocketAddr,
    node: NodeId,
    local: &Handshake,
    outbox: &Arc<PeerOutboxHandle>,
) -> Result<Connection, LinkError> {
    let handshake = handshake(address, node, local, outbox);
    match tokio::time::timeout(PEER_HANDSHAKE_TIMEOUT, handshake).await {
        Ok(result) => result,
        Err(_) => Err(LinkError::Timeout(PEER_HANDSHAKE_TIMEOUT)),
    }
}

/// Sends `local`, then checks the answer: the handshake rules, the node, and its
/// incarnation (recorded if none was).
async fn handshake(
    address: SocketAddr,
    node: NodeId,
    local: &Handshake,
    outbox: &Arc<PeerOutboxHandle>,
) -> Result<Connection, LinkError> {
    let stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let (read, mut writer) = stream.into_split();
    let mut reader = FramedRead::new(read, PeerCodec::default());
    let mut bytes = BytesMut::new();
    PeerFrame::Handshake(local.clone()).encode(&mut bytes)?;
    writer.write_all(&bytes).await?;
    match reader.next().await {
        Some(Ok(PeerFrame::HandshakeAccepted(remote))) => {
            local.check(&remote).map_err(PeerError::from)?;
            if remote.node_id != node {
                return Err(LinkError::WrongNode {
                    expected: node,
                    actual: remote.node_id,
                });
            }
            outbox
                .admit_blocking(node, remote.incarnation)
                .await
                .map_err(PeerError::from)?;
            Ok(Connection { reader, writer })
        }
        Some(Ok(PeerFrame::HandshakeRefused(reason))) => {
            Err(PeerError::from(HandshakeError::Refused { reason }).into())
        }
        Some(Ok(frame)) => Err(LinkError::UnexpectedFrame {
            expected: "HANDSHAKE_ACCEPTED",
            actual: frame.kind().name(),
        }),
        Some(Err(error)) => Err(error.into()),
        None => Err(LinkError::Closed),
    }
}

/// Why reading an outbound connection, which should stay silent, returned.
fn ended_by_peer(frame: Option<Result<PeerFrame, PeerError>>) -> LinkError {
    match frame {
        None => LinkError::Closed,
        Some(Err(error)) => error.into(),
        Some(Ok(frame)) => LinkError::UnexpectedFrame {
            expected: "no frame on an outbound connection",
            actual: frame.kind().name(),
        },
    }
}

/// Writes `messages` as BATCH frames, each within its write timeout. A message too large
/// for any frame is dropped and logged; on a failed write, the rest are dropped. A TCP
/// stream buffers nothing in user space, so a written frame needs no flush.
///
/// `peer_messages_*_total` count Raft messages: a snapshot sent in chunks counts once,
/// with its last chunk; `peer_snapshot_chunks_sent_total` counts the chunks.
async fn write_batch(
    writer: &mut OwnedWriteHalf,
    messages: Vec<BatchMessage>,
    counters: &PeerCounters,
    node: NodeId,
) -> Result<(), LinkError> {
    let batches = split_into_batches(messages, PEER_FRAME_BYTES_MAX);
    for message in &batches.too_large {
        tracing::warn!(
            node,
            shard = message.shard(),
            message = message.name(),
            bytes = message.encoded_bytes(),
            "a message larger than peer_frame_bytes_max ({PEER_FRAME_BYTES_MAX}) was dropped \
             (a snapshot is sent in chunks up to snapshot_bytes_max, {SNAPSHOT_BYTES_MAX})"
        );
    }
    let too_large = batches
        .too_large
        .iter()
        .map(BatchMessage::messages_completed);
    PeerCounters::add(&counters.messages_dropped_total, too_large.sum());
    let mut frames = batches.frames.into_iter();
    while let Some((messages, frame_bytes)) = frames.next() {
        let count = completed(&messages);
        let chunks = messages
            .iter()
            .filter(|message| matches!(message, BatchMessage::Chunk(_)))
            .count();
        let mut bytes = BytesMut::with_capacity(frame_bytes);
        PeerFrame::Batch(messages)
            .encode(&mut bytes)
            .expect("frames are cut to fit peer_frame_bytes_max");
        debug_assert_eq!(bytes.len(), frame_bytes);
        let limit = write_timeout(frame_bytes);
        let written = match tokio::time::timeout(limit, writer.write_all(&bytes)).await {
            Ok(written) => written.map_err(LinkError::from),
            Err(_) => Err(LinkError::Timeout(limit)),
        };
        if let Err(error) = written {
            let unsent = count
                + frames
                    .map(|(messages, _)| completed(&messages))
                    .sum::<usize>();
            PeerCounters::add(&counters.messages_dropped_total, unsent);
            return Err(error);
        }
        PeerCounters::add(&counters.messages_sent_total, count);
        PeerCounters::add(&counters.snapshot_chunks_sent_total, chunks);
        PeerCounters::add(&counters.frames_sent_total, 1);
    }
    Ok(())
}

/// The Raft messages `messages` complete, see [`BatchMessage::messages_completed`].
fn completed(messages: &[BatchMessage]) -> usize {
    messages.iter().map(BatchMessage::messages_completed).sum()
}
