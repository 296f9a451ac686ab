//! Snapshots cut into chunks on the sending side, and what one outbound turn writes.
//!
//! What: an InstallSnapshot whose data is larger than one chunk travels as
//! INSTALL_SNAPSHOT_CHUNK messages (`message.rs`), each with at most `snapshot_chunk_bytes`
//! of the data, and never more than fits a frame of `frame_bytes_max` beside the BATCH
//! header. A [`Chunker`] is the state of one outbound connection: the snapshots it is
//! sending in chunks, in the order they were queued. Each loop turn of the outbound task
//! hands it what it drained from the node's queue, and [`Chunker::turn`] answers what to
//! write: every drained message that is not a snapshot to cut, in queue order, then the
//! next chunk of the first snapshot. While a snapshot is unfinished the task does not wait
//! for the queue: it takes what is queued, if anything, and writes the next chunk.
//!
//! Why one chunk per turn: a large snapshot (hundreds of MiB) must not hold up the
//! heartbeats and appends of the other shards to that node for the seconds it takes to
//! write; between two chunks goes whatever the shards queued meanwhile. Why one snapshot
//! at a time: the receiver holds each partial snapshot in memory until it is whole
//! (`reassembly.rs`, at most `snapshot_reassembly_bytes_max` per connection); one at a
//! time keeps that to one snapshot, and finishes the first one soonest.
//!
//! Order: the other messages of a snapshot's own shard are not held back behind it either;
//! they pass it, and the snapshot reaches Raft when its last chunk arrives. Holding them
//! would keep the follower from hearing its leader for the whole transfer, and the leader
//! from hearing the follower (a leader that hears no majority for an election timeout
//! steps down: check quorum). Raft takes reordered messages as it takes late ones, and
//! while a follower is sent a snapshot its leader sends it only heartbeats, whose commit
//! is at most what that follower already has.
//!
//! Duplicates: a leader that has not heard back for an election timeout sends the snapshot
//! again (`raft/replication.rs`), and a large one takes longer than that to write. A
//! snapshot with the index and term of one this connection is sending for its shard is
//! dropped; another one waits, and a later one takes a waiting one's place (it is newer).
//! So at most two snapshots per shard are held: the one being sent and the next.
//!
//! # Invariants
//! - The chunks of one snapshot go out in order: `offset` 0 first, each starting where the
//!   one before it ended, the last ending at `total`. None is empty.
//! - Every chunk fits a frame of `frame_bytes_max` alone.
//! - A snapshot is cut only if it can be: a chunk of it has room for data, and its data is
//!   at most [`SNAPSHOT_BYTES_MAX`]. Any other message goes out as it is (and one too large
//!   for a frame is then dropped and counted by the caller).

use std::collections::VecDeque;

use bytes::Bytes;

use super::frame::BATCH_FRAME_BYTES_MIN;
use super::message::{
    chunk_bytes, BatchMessage, ShardId, ShardMessage, SnapshotChunk, SHARD_BYTES,
    SNAPSHOT_BYTES_MAX,
};
use crate::raft::{Message, MessageBody, NodeId, SnapshotMeta};

/// Data bytes per chunk by default (`PeerConfig::snapshot_chunk_bytes`): an 8 MiB write
/// takes about 70 ms at 1 Gbit/s, the longest the other shards' messages wait behind it.
pub const SNAPSHOT_CHUNK_BYTES: usize = 8 << 20;
/// Smallest `snapshot_chunk_bytes` accepted: below it the per-chunk headers outweigh the
/// data.
pub const SNAPSHOT_CHUNK_BYTES_MIN: usize = 1 << 10;
/// Largest `snapshot_chunk_bytes` accepted: half a frame, so that a chunk leaves room in
/// its frame for the other messages of the turn.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 32 << 20;

/// What one outbound turn writes, see [`Chunker::turn`].
#[derive(Debug, Default)]
pub(super) struct Turn {
    /// The messages to write now, in order.
    pub messages: Vec<BatchMessage>,
    /// Snapshots dropped: the same as one being sent, or replaced by a later one.
    pub superseded: usize,
}

/// A snapshot being sent in chunks.
#[derive(Debug)]
struct Outgoing {
    shard: ShardId,
    from: NodeId,
    to: NodeId,
    term: u64,
    meta: SnapshotMeta,
    data: Bytes,
    /// Data bytes already cut into chunks.
    sent: usize,
    /// Data bytes per chunk.
    piece: usize,
}

impl Outgoing {
    /// `message`, an InstallSnapshot, to send in chunks of `piece` data bytes.
    fn new(message: ShardMessage, piece: usize) -> Outgoing {
        let ShardMessage {
            shard,
            message:
                Message {
                    from,
                    to,
                    term,
                    body: MessageBody::InstallSnapshot { snapshot },
                },
        } = message
        else {
            unreachable!("only an InstallSnapshot is cut into chunks");
        };
        Outgoing {
            shard,
            from,
            to,
            term,
            meta: snapshot.meta,
            data: snapshot.data,
            sent: 0,
            piece,
        }
    }

    fn is_same(&self, other: &Outgoing) -> bool {
        self.shard == other.shard
            && self.meta.index == other.meta.index
            && self.meta.term == other.meta.term
    }

    fn next_chunk(&mut self) -> SnapshotChunk {
        let end = (self.sent + self.piece).min(self.data.len());
        let chunk = SnapshotChunk {
            shard: self.shard,
            from: self.from,
            to: self.to,
            term: self.term,
            meta: self.meta.clone(),
            offset: self.sent as u64,
            total: self.data.len() as u64,
            data: self.data.slice(self.sent..end),
        };
        self.sent = end;
        chunk
    }
}

/// The snapshots one outbound connection is sending in chunks.
#[derive(Debug)]
pub(super) struct Chunker {
    chunk_bytes: usize,
    frame_bytes_max: usize,
    /// In the order they were queued; the first is the one being sent.
    snapshots: VecDeque<Outgoing>,
}

impl Chunker {
    /// A chunker cutting chunks of at most `chunk_bytes` of data, each within a frame of
    /// `frame_bytes_max`.
    pub(super) fn new(chunk_bytes: usize, frame_bytes_max: usize) -> Chunker {
        assert!(chunk_bytes > 0, "a chunk carries data");
        Chunker {
            chunk_bytes,
            frame_bytes_max,
            snapshots: VecDeque::new(),
        }
    }

    /// Whether a snapshot is unfinished: the next turn writes a chunk even if nothing was
    /// queued.
    pub(super) fn is_sending(&self) -> bool {
        !self.snapshots.is_empty()
    }

    /// Snapshots held, unfinished: dropped with the connection.
    pub(super) fn snapshots(&self) -> usize {
        self.snapshots.len()
    }

    /// Takes the messages drained from the queue this turn; what to write now: each of
    /// them that is not a snapshot to cut, in order, then the next chunk of the first
    /// snapshot being sent.
    pub(super) fn turn(&mut self, drained: impl IntoIterator<Item = ShardMessage>) -> Turn {
        let mut turn = Turn::default();
        for message in drained {
            match self.piece_of(&message) {
                Some(piece) => self.queue(Outgoing::new(message, piece), &mut turn),
                None => turn.messages.push(BatchMessage::Raft(message)),
            }
        }
        if let Some(first) = self.snapshots.front_mut() {
            let chunk = first.next_chunk();
            if chunk.is_last() {
                self.snapshots.pop_front();
            }
            turn.messages.push(BatchMessage::Chunk(chunk));
        }
        turn
    }

    /// Data bytes per chunk of `message` if it is an InstallSnapshot to cut.
    fn piece_of(&self, message: &ShardMessage) -> Option<usize> {
        match &message.message.body {
            MessageBody::InstallSnapshot { snapshot } => {
                self.piece_bytes(&snapshot.meta, snapshot.data.len())
            }
            _ => None,
        }
    }

    /// Data bytes per chunk of a snapshot at `meta` with `data_bytes` of data, if it is to
    /// be cut: it is larger than one chunk, a chunk has room for data in a frame, and it is
    /// within [`SNAPSHOT_BYTES_MAX`].
    fn piece_bytes(&self, meta: &SnapshotMeta, data_bytes: usize) -> Option<usize> {
        let overhead = BATCH_FRAME_BYTES_MIN + SHARD_BYTES + chunk_bytes(meta, 0);
        let piece = self
            .chunk_bytes
            .min(self.frame_bytes_max.saturating_sub(overhead));
        let cut = piece > 0 && data_bytes > piece && data_bytes as u64 <= SNAPSHOT_BYTES_MAX;
        cut.then_some(piece)
    }

    /// Queues a snapshot to send after the ones before it, unless it is one of them again;
    /// a snapshot of its shard waiting to start is replaced by it.
    fn queue(&mut self, outgoing: Outgoing, turn: &mut Turn) {
        if self.snapshots.iter().any(|held| held.is_same(&outgoing)) {
            tracing::debug!(
                node = outgoing.to,
                shard = outgoing.shard,
                index = outgoing.meta.index,
                "dropped a snapshot this connection is already sending"
            );
            turn.superseded += 1;
            return;
        }
        let waiting = self
            .snapshots
            .iter_mut()
            .find(|held| held.shard == outgoing.shard && held.sent == 0);
        if let Some(waiting) = waiting {
            tracing::debug!(
                node = outgoing.to,
                shard = outgoing.shard,
                index = outgoing.meta.index,
                replaced = waiting.meta.index,
                "a later snapshot replaced one waiting to be sent"
            );
            *waiting = outgoing;
            turn.superseded += 1;
            return;
        }
        self.snapshots.push_back(outgoing);
    }
}
