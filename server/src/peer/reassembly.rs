//! Snapshots put back together on the receiving side, from their INSTALL_SNAPSHOT_CHUNKs.
//!
//! What: a [`Reassembly`] belongs to one inbound connection and lives as long as it does.
//! It keeps, per shard, the snapshot whose chunks are arriving: the chunks so far, copied
//! into one buffer that grows as they arrive. A chunk must continue it exactly: the same
//! message (`from`, `to`, `term`), the same snapshot (`index`, `term`, `membership`), the
//! same `total`, and `offset` equal to the bytes so far. When `offset + data_len == total`
//! the snapshot is whole, and [`Reassembly::add`] returns one ordinary InstallSnapshot
//! message, as it would have arrived in one piece: the shards never see a chunk.
//!
//! A chunk that does not continue its shard's snapshot drops that snapshot, logged at warn:
//! nothing of it is delivered. (A chunk at offset 0 then starts a new one; any other chunk
//! is dropped too.) A sender sends the chunks of a snapshot in order on one connection, so
//! this takes a sender that broke the rules; the leader sends the snapshot again later (a
//! follower it sends a snapshot to and does not hear from is probed again after an
//! election timeout, `raft/replication.rs`). For the same reason a connection that closes
//! drops what it was putting together: the partial snapshots are dropped with the
//! [`Reassembly`].
//!
//! # Bounds
//! A snapshot's `total` is at most [`SNAPSHOT_BYTES_MAX`] (checked by the decoder), and
//! the bytes held for all the shards of one connection at most `bytes_max`
//! ([`SNAPSHOT_REASSEMBLY_BYTES_MAX`]): one snapshot at the largest, since a sender sends
//! one at a time (`chunker.rs`). A chunk past either is an error that closes the
//! connection. Nothing is reserved from `total` up front: a buffer grows with the data
//! that arrived (doubling, but never past its `total`), so a peer makes this node hold
//! only what it sent.

use std::collections::BTreeMap;

use super::message::{ShardId, ShardMessage, SnapshotChunk, SNAPSHOT_BYTES_MAX};
use crate::raft::{Message, MessageBody, NodeId, Snapshot, SnapshotMeta};
use crate::wal::record::Command;

/// Bytes of partial snapshots one inbound connection holds at most: the largest snapshot.
pub const SNAPSHOT_REASSEMBLY_BYTES_MAX: u64 = SNAPSHOT_BYTES_MAX;

/// A chunk this node cannot hold: the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum ReassemblyError {
    #[error(
        "a snapshot of {total} bytes for shard {shard}, past snapshot_reassembly_bytes_max \
         ({max})"
    )]
    SnapshotTooLarge {
        shard: ShardId,
        total: u64,
        max: u64,
    },
    #[error(
        "a chunk for shard {shard} would make the partial snapshots of this connection \
         {bytes} bytes, past snapshot_reassembly_bytes_max ({max})"
    )]
    TooManyBytes {
        shard: ShardId,
        bytes: u64,
        max: u64,
    },
}

/// One shard's snapshot whose chunks are arriving.
#[derive(Debug)]
struct Partial {
    from: NodeId,
    to: NodeId,
    term: u64,
    meta: SnapshotMeta,
    total: u64,
    data: Vec<u8>,
}

impl Partial {
    fn start(chunk: &SnapshotChunk) -> Partial {
        Partial {
            from: chunk.from,
            to: chunk.to,
            term: chunk.term,
            meta: chunk.meta.clone(),
            total: chunk.total,
            data: Vec::new(),
        }
    }

    /// Why `chunk` does not continue this snapshot, if it does not.
    fn mismatch(&self, chunk: &SnapshotChunk) -> Option<String> {
        let received = self.data.len() as u64;
        if (chunk.from, chunk.to, chunk.term) != (self.from, self.to, self.term) {
            Some(format!(
                "a chunk of another message (term {}, the partial snapshot's is {})",
                chunk.term, self.term
            ))
        } else if (chunk.meta.index, chunk.meta.term) != (self.meta.index, self.meta.term) {
            Some(format!(
                "a chunk of snapshot {}/{} (index/term), the partial snapshot is {}/{}",
                chunk.meta.index, chunk.meta.term, self.meta.index, self.meta.term
            ))
        } else if chunk.meta.membership != self.meta.membership {
            Some("a chunk with another membership".to_string())
        } else if chunk.total != self.total {
            Some(format!(
                "a chunk of a {}-byte snapshot, the partial snapshot has {} bytes",
                chunk.total, self.total
            ))
        } else if chunk.offset != received {
            Some(format!(
                "a chunk at offset {}, after {received} bytes arrived",
                chunk.offset
            ))
        } else if received.saturating_add(chunk.data.len() as u64) > self.total {
            Some(format!(
                "a chunk of {} bytes at offset {received} ends past the snapshot's {} bytes",
                chunk.data.len(),
                self.total
            ))
        } else {
            None
        }
    }

    /// Appends `data`, growing the buffer by doubling but never past `total`.
    fn append(&mut self, data: &[u8]) {
        let needed = self.data.len() + data.len();
        if needed > self.data.capacity() {
            let total = usize::try_from(self.total).unwrap_or(usize::MAX);
            let target = needed.max(self.data.capacity() * 2).min(total).max(needed);
            self.data.reserve_exact(target - self.data.len());
        }
        self.data.extend_from_slice(data);
    }

    fn into_message(self) -> Message<Command> {
        Message {
            from: self.from,
            to: self.to,
            term: self.term,
            body: MessageBody::InstallSnapshot {
                snapshot: Snapshot {
                    meta: self.meta,
                    data: self.data.into(),
                },
            },
        }
    }
}

/// The snapshots one inbound connection is putting back together.
#[derive(Debug)]
pub(super) struct Reassembly {
    /// The node at the other end, for logs.
    node: NodeId,
    bytes_max: u64,
    partials: BTreeMap<ShardId, Partial>,
    /// Bytes held in `partials`.
    bytes: u64,
}

impl Reassembly {
    /// Nothing put together yet, for a connection from `node`, holding at most `bytes_max`
    /// bytes of partial snapshots.
    pub(super) fn new(node: NodeId, bytes_max: u64) -> Reassembly {
        Reassembly {
            node,
            bytes_max,
            partials: BTreeMap::new(),
            bytes: 0,
        }
    }

    /// Bytes held in partial snapshots.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Takes the next chunk of its shard; the whole InstallSnapshot if this chunk ends it.
    /// The caller has checked the chunk's shard, `from` and `to`.
    pub(super) fn add(
        &mut self,
        chunk: SnapshotChunk,
    ) -> Result<Option<ShardMessage>, ReassemblyError> {
        let shard = chunk.shard;
        if chunk.total > self.bytes_max {
            self.drop_partial(shard);
            return Err(ReassemblyError::SnapshotTooLarge {
                shard,
                total: chunk.total,
                max: self.bytes_max,
            });
        }
        let mismatch = self
            .partials
            .get(&shard)
            .and_then(|partial| partial.mismatch(&chunk));
        if let Some(reason) = mismatch {
            tracing::warn!(
                node = self.node,
                shard,
                index = chunk.meta.index,
                offset = chunk.offset,
                "dropped a partial snapshot: {reason}"
            );
            self.drop_partial(shard);
        }
        if !self.partials.contains_key(&shard) && !self.starts(&chunk) {
            return Ok(None);
        }
        let length = chunk.data.len() as u64;
        let bytes = self.bytes + length;
        if bytes > self.bytes_max {
            self.drop_partial(shard);
            return Err(ReassemblyError::TooManyBytes {
                shard,
                bytes,
                max: self.bytes_max,
            });
        }
        let partial = self
            .partials
            .entry(shard)
            .or_insert_with(|| Partial::start(&chunk));
        partial.append(&chunk.data);
        self.bytes = bytes;
        if (partial.data.len() as u64) < partial.total {
            return Ok(None);
        }
        let partial = self.partials.remove(&shard).expect("just appended to");
        self.bytes -= partial.data.len() as u64;
        Ok(Some(ShardMessage {
            shard,
            message: partial.into_message(),
        }))
    }

    /// Whether `chunk`, for a shard with no partial snapshot, starts one; logged if not.
    fn starts(&self, chunk: &SnapshotChunk) -> bool {
        let ends_within = chunk
            .offset
            .checked_add(chunk.data.len() as u64)
            .is_some_and(|end| end <= chunk.total);
        if chunk.offset == 0 && ends_within {
            return true;
        }
        tracing::warn!(
            node = self.node,
            shard = chunk.shard,
            index = chunk.meta.index,
            offset = chunk.offset,
            total = chunk.total,
            "dropped a snapshot chunk that neither starts a snapshot nor continues one"
        );
        false
    }

    fn drop_partial(&mut self, shard: ShardId) {
        if let Some(partial) = self.partials.remove(&shard) {
            self.bytes -= partial.data.len() as u64;
        }
    }
}
