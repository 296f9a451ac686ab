//! One Raft message ([`Message<Command>`]) as bytes, a message tagged with its shard, and
//! the piece of a snapshot that travels in place of an InstallSnapshot too large for one
//! frame ([`SnapshotChunk`]).
//!
//! ```text
//! message    = from u64 | to u64 | term u64 | type u8 | fields
//! type  1 PRE_VOTE            last_log_index u64 | last_log_term u64
//! type  2 PRE_VOTE_RESPONSE   granted bool
//! type  3 VOTE                last_log_index u64 | last_log_term u64 | transfer bool
//! type  4 VOTE_RESPONSE       granted bool
//! type  5 APPEND              prev_index u64 | prev_term u64 | commit u64 | count u32 |
//!                             count x entry
//! type  6 APPEND_RESPONSE     success bool | index u64 | hint_index u64 | hint_term u64
//! type  7 HEARTBEAT           commit u64 | context u64
//! type  8 HEARTBEAT_RESPONSE  context u64
//! type  9 INSTALL_SNAPSHOT    index u64 | term u64 | membership | data_len u32 | data
//! type 10 TIMEOUT_NOW         (no fields)
//! type 11 INSTALL_SNAPSHOT_CHUNK
//!                             index u64 | term u64 | membership | offset u64 | total u64 |
//!                             data_len u32 | data
//! entry      = index u64 | term u64 | kind u8 | fields    (the write-ahead log's ENTRY
//!                                                         payload, crate::wal::record)
//! kind  1 GRANT               token u64 | ttl_ms u64 | key bytes16 | owner bytes16
//! kind  2 RELEASE             token u64 | key bytes16
//! kind  3 EXTEND              token u64 | ttl_ms u64 | key bytes16
//! kind  4 NOOP                (no fields)
//! kind  5 MEMBERSHIP          membership
//! membership = count u16 | count x voter u64   (strictly ascending, never 0, count <= 255)
//! bool       = u8, 0 or 1
//! bytes16    = length u16 | bytes
//! ```
//!
//! Little-endian, no padding. In a BATCH frame each message follows its `shard u16`. The
//! fields are the ones of [`MessageBody`] in declaration order, so the table and the enum
//! read alike. Entries and memberships are encoded and decoded by the write-ahead log's own
//! code: an entry is the very bytes the log stores, so one encoding exists for both and a
//! follower could append it without re-encoding.
//!
//! # INSTALL_SNAPSHOT_CHUNK
//! Not a Raft message: the peer transport's own, never seen by the Raft core. A sender
//! cuts an INSTALL_SNAPSHOT whose data is larger than a chunk (`snapshot_chunk_bytes`, at
//! most what fits a frame) into chunks of the same shard, `from`, `to` and `term`; each
//! carries the whole snapshot position (`index`, `term`, `membership`, as INSTALL_SNAPSHOT
//! does, so each chunk can be checked against the ones before it on its own), the bytes
//! `data` found at `offset` of the snapshot's `total` bytes. They go in order, `offset` 0
//! first, each starting where the one before it ended; the receiver delivers one ordinary
//! INSTALL_SNAPSHOT once `offset + data_len == total` (`reassembly.rs`). Checked here, from
//! the chunk alone: `data_len` is at least 1, `total` at most [`SNAPSHOT_BYTES_MAX`], and
//! `offset + data_len` at most `total`; anything else is malformed.

use bytes::{BufMut, Bytes, BytesMut};

use super::reader::Reader;
use super::PeerError;
use crate::raft::{Message, MessageBody, NodeId, Snapshot, SnapshotMeta};
use crate::wal::record::{
    decode_entry_payload, decode_membership, encode_entry_payload, encode_membership,
    entry_payload_bytes, membership_bytes, Command,
};

/// Which shard (Raft group) a message is for: `0..shard_count`.
pub type ShardId = u16;

/// A Raft message for one shard's group, as carried in a BATCH frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardMessage {
    pub shard: ShardId,
    pub message: Message<Command>,
}

/// A piece of one shard's snapshot, cut from an InstallSnapshot message too large to travel
/// in one frame: INSTALL_SNAPSHOT_CHUNK. `from`, `to` and `term` are that message's; `data`
/// is the snapshot's bytes at `offset`, of `total`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotChunk {
    pub shard: ShardId,
    pub from: NodeId,
    pub to: NodeId,
    pub term: u64,
    pub meta: SnapshotMeta,
    pub offset: u64,
    pub total: u64,
    pub data: Bytes,
}

impl SnapshotChunk {
    /// Whether this chunk ends its snapshot.
    pub fn is_last(&self) -> bool {
        self.offset.saturating_add(self.data.len() as u64) == self.total
    }
}

/// One message of a BATCH frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchMessage {
    /// A Raft message, delivered as it is.
    Raft(ShardMessage),
    /// A piece of an InstallSnapshot, delivered whole once its last piece arrives.
    Chunk(SnapshotChunk),
}

impl BatchMessage {
    pub fn shard(&self) -> ShardId {
        match self {
            BatchMessage::Raft(message) => message.shard,
            BatchMessage::Chunk(chunk) => chunk.shard,
        }
    }

    /// The sending node and the receiving node.
    pub fn from_to(&self) -> (NodeId, NodeId) {
        match self {
            BatchMessage::Raft(message) => (message.message.from, message.message.to),
            BatchMessage::Chunk(chunk) => (chunk.from, chunk.to),
        }
    }

    /// Exactly the bytes this takes in a BATCH body: the shard, then the message.
    pub fn encoded_bytes(&self) -> usize {
        match self {
            BatchMessage::Raft(message) => message.encoded_bytes(),
            BatchMessage::Chunk(chunk) => SHARD_BYTES + chunk_bytes(&chunk.meta, chunk.data.len()),
        }
    }

    /// Raft messages this completes on arrival: 1 for a Raft message and for the last chunk
    /// of a snapshot, 0 for any other chunk. What `peer_messages_*_total` count.
    pub fn messages_completed(&self) -> usize {
        match self {
            BatchMessage::Raft(_) => 1,
            BatchMessage::Chunk(chunk) => usize::from(chunk.is_last()),
        }
    }

    /// The name of the message's type, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            BatchMessage::Raft(message) => message.message.body.name(),
            BatchMessage::Chunk(_) => "install_snapshot_chunk",
        }
    }
}

/// Largest snapshot a node sends or reassembles (4 GiB): its `total`. A snapshot holds
/// every persistent lock of a shard at 40 to 100 bytes each, so this is tens of millions
/// of locks per shard; a larger one is dropped by its sender (logged), and a chunk that
/// claims one is malformed.
pub const SNAPSHOT_BYTES_MAX: u64 = 4 << 30;

/// Bytes of a BATCH entry before its message: the shard.
pub const SHARD_BYTES: usize = 2;
/// Bytes of the smallest message: `from`, `to`, `term`, `type`.
pub const MESSAGE_BYTES_MIN: usize = 25;
/// Bytes of the smallest entry: `index`, `term`, `kind`.
const ENTRY_BYTES_MIN: usize = 17;

const TYPE_PRE_VOTE: u8 = 1;
const TYPE_PRE_VOTE_RESPONSE: u8 = 2;
const TYPE_VOTE: u8 = 3;
const TYPE_VOTE_RESPONSE: u8 = 4;
const TYPE_APPEND: u8 = 5;
const TYPE_APPEND_RESPONSE: u8 = 6;
const TYPE_HEARTBEAT: u8 = 7;
const TYPE_HEARTBEAT_RESPONSE: u8 = 8;
const TYPE_INSTALL_SNAPSHOT: u8 = 9;
const TYPE_TIMEOUT_NOW: u8 = 10;
const TYPE_INSTALL_SNAPSHOT_CHUNK: u8 = 11;

impl ShardMessage {
    /// Exactly the bytes this takes in a BATCH body: the shard, then the message.
    pub fn encoded_bytes(&self) -> usize {
        SHARD_BYTES + message_bytes(&self.message)
    }
}

/// Exactly the bytes [`encode_message`] appends for `message`, so a sender can fill frames
/// up to `peer_frame_bytes_max` without encoding anything twice.
pub fn message_bytes(message: &Message<Command>) -> usize {
    let fields = match &message.body {
        MessageBody::PreVote { .. } | MessageBody::Heartbeat { .. } => 16,
        MessageBody::PreVoteResponse { .. } | MessageBody::VoteResponse { .. } => 1,
        MessageBody::Vote { .. } => 17,
        MessageBody::Append { entries, .. } => {
            28 + entries.iter().map(entry_payload_bytes).sum::<usize>()
        }
        MessageBody::AppendResponse { .. } => 25,
        MessageBody::HeartbeatResponse { .. } => 8,
        MessageBody::InstallSnapshot { snapshot } => {
            16 + membership_bytes(&snapshot.meta.membership) + 4 + snapshot.data.len()
        }
        MessageBody::TimeoutNow => 0,
    };
    MESSAGE_BYTES_MIN + fields
}

/// Exactly the bytes of an INSTALL_SNAPSHOT_CHUNK message of the snapshot at `meta`
/// carrying `data_bytes` of its data.
pub fn chunk_bytes(meta: &SnapshotMeta, data_bytes: usize) -> usize {
    MESSAGE_BYTES_MIN + 16 + membership_bytes(&meta.membership) + 8 + 8 + 4 + data_bytes
}

/// Appends one message to `dst`.
pub fn encode_message(message: &Message<Command>, dst: &mut BytesMut) {
    put_message(dst, message);
}

/// Decodes `src`, which must hold exactly one message.
pub fn decode_message(src: Bytes) -> Result<Message<Command>, PeerError> {
    let mut reader = Reader::new(src, "message");
    let message = read_message(&mut reader)?;
    reader.finish()?;
    Ok(message)
}

/// Appends one BATCH entry to `dst`: the shard, then the message.
pub(super) fn put_batch_message(dst: &mut BytesMut, message: &BatchMessage) {
    match message {
        BatchMessage::Raft(ShardMessage { shard, message }) => {
            dst.put_u16_le(*shard);
            put_message(dst, message);
        }
        BatchMessage::Chunk(chunk) => {
            dst.put_u16_le(chunk.shard);
            put_chunk(dst, chunk);
        }
    }
}

/// Appends one INSTALL_SNAPSHOT_CHUNK message (after its shard) to `dst`.
fn put_chunk(dst: &mut BytesMut, chunk: &SnapshotChunk) {
    dst.put_u64_le(chunk.from);
    dst.put_u64_le(chunk.to);
    dst.put_u64_le(chunk.term);
    dst.put_u8(TYPE_INSTALL_SNAPSHOT_CHUNK);
    dst.put_u64_le(chunk.meta.index);
    dst.put_u64_le(chunk.meta.term);
    encode_membership(&chunk.meta.membership, dst);
    dst.put_u64_le(chunk.offset);
    dst.put_u64_le(chunk.total);
    // A chunk is cut to fit a frame, so far below u32::MAX; saturating keeps this total.
    dst.put_u32_le(u32::try_from(chunk.data.len()).unwrap_or(u32::MAX));
    dst.put_slice(&chunk.data);
}

/// Appends one message to `dst`.
fn put_message(dst: &mut BytesMut, message: &Message<Command>) {
    dst.put_u64_le(message.from);
    dst.put_u64_le(message.to);
    dst.put_u64_le(message.term);
    match &message.body {
        MessageBody::PreVote {
            last_log_index,
            last_log_term,
        } => {
            dst.put_u8(TYPE_PRE_VOTE);
            dst.put_u64_le(*last_log_index);
            dst.put_u64_le(*last_log_term);
        }
        MessageBody::PreVoteResponse { granted } => {
            dst.put_u8(TYPE_PRE_VOTE_RESPONSE);
            dst.put_u8(u8::from(*granted));
        }
        MessageBody::Vote {
            last_log_index,
            last_log_term,
            transfer,
        } => {
            dst.put_u8(TYPE_VOTE);
            dst.put_u64_le(*last_log_index);
            dst.put_u64_le(*last_log_term);
            dst.put_u8(u8::from(*transfer));
        }
        MessageBody::VoteResponse { granted } => {
            dst.put_u8(TYPE_VOTE_RESPONSE);
            dst.put_u8(u8::from(*granted));
        }
        MessageBody::Append {
            prev_index,
            prev_term,
            entries,
            commit,
        } => {
            dst.put_u8(TYPE_APPEND);
            dst.put_u64_le(*prev_index);
            dst.put_u64_le(*prev_term);
            dst.put_u64_le(*commit);
            dst.put_u32_le(u32::try_from(entries.len()).expect("more than u32::MAX entries"));
            for entry in entries {
                encode_entry_payload(entry, dst);
            }
        }
        MessageBody::AppendResponse {
            success,
            index,
            hint_index,
            hint_term,
        } => {
            dst.put_u8(TYPE_APPEND_RESPONSE);
            dst.put_u8(u8::from(*success));
            dst.put_u64_le(*index);
            dst.put_u64_le(*hint_index);
            dst.put_u64_le(*hint_term);
        }
        MessageBody::Heartbeat { commit, context } => {
            dst.put_u8(TYPE_HEARTBEAT);
            dst.put_u64_le(*commit);
            dst.put_u64_le(*context);
        }
        MessageBody::HeartbeatResponse { context } => {
            dst.put_u8(TYPE_HEARTBEAT_RESPONSE);
            dst.put_u64_le(*context);
        }
        MessageBody::InstallSnapshot { snapshot } => {
            dst.put_u8(TYPE_INSTALL_SNAPSHOT);
            dst.put_u64_le(snapshot.meta.index);
            dst.put_u64_le(snapshot.meta.term);
            encode_membership(&snapshot.meta.membership, dst);
            // A snapshot past u32::MAX is past PEER_FRAME_BYTES_MAX too; the frame encoder
            // refuses it, so saturating here only keeps this function total.
            dst.put_u32_le(u32::try_from(snapshot.data.len()).unwrap_or(u32::MAX));
            dst.put_slice(&snapshot.data);
        }
        MessageBody::TimeoutNow => dst.put_u8(TYPE_TIMEOUT_NOW),
    }
}

/// Reads one BATCH entry: the shard, then a Raft message or an INSTALL_SNAPSHOT_CHUNK.
pub(super) fn read_batch_message(reader: &mut Reader) -> Result<BatchMessage, PeerError> {
    let shard = reader.u16("shard")?;
    let from = reader.u64("from")?;
    let to = reader.u64("to")?;
    let term = reader.u64("term")?;
    let message_type = reader.u8("type")?;
    if message_type == TYPE_INSTALL_SNAPSHOT_CHUNK {
        let (meta, offset, total, data) = read_chunk(reader)?;
        return Ok(BatchMessage::Chunk(SnapshotChunk {
            shard,
            from,
            to,
            term,
            meta,
            offset,
            total,
            data,
        }));
    }
    let body = read_body(reader, message_type)?;
    let message = Message {
        from,
        to,
        term,
        body,
    };
    Ok(BatchMessage::Raft(ShardMessage { shard, message }))
}

/// Reads one Raft message; an INSTALL_SNAPSHOT_CHUNK is not one.
fn read_message(reader: &mut Reader) -> Result<Message<Command>, PeerError> {
    let from = reader.u64("from")?;
    let to = reader.u64("to")?;
    let term = reader.u64("term")?;
    let message_type = reader.u8("type")?;
    let body = read_body(reader, message_type)?;
    Ok(Message {
        from,
        to,
        term,
        body,
    })
}

/// Reads the fields of a Raft message of `message_type`, which was just read.
fn read_body(reader: &mut Reader, message_type: u8) -> Result<MessageBody<Command>, PeerError> {
    Ok(match message_type {
        TYPE_PRE_VOTE => MessageBody::PreVote {
            last_log_index: reader.u64("last_log_index")?,
            last_log_term: reader.u64("last_log_term")?,
        },
        TYPE_PRE_VOTE_RESPONSE => MessageBody::PreVoteResponse {
            granted: reader.bool("granted")?,
        },
        TYPE_VOTE => MessageBody::Vote {
            last_log_index: reader.u64("last_log_index")?,
            last_log_term: reader.u64("last_log_term")?,
            transfer: reader.bool("transfer")?,
        },
        TYPE_VOTE_RESPONSE => MessageBody::VoteResponse {
            granted: reader.bool("granted")?,
        },
        TYPE_APPEND => read_append(reader)?,
        TYPE_APPEND_RESPONSE => MessageBody::AppendResponse {
            success: reader.bool("success")?,
            index: reader.u64("index")?,
            hint_index: reader.u64("hint_index")?,
            hint_term: reader.u64("hint_term")?,
        },
        TYPE_HEARTBEAT => MessageBody::Heartbeat {
            commit: reader.u64("commit")?,
            context: reader.u64("context")?,
        },
        TYPE_HEARTBEAT_RESPONSE => MessageBody::HeartbeatResponse {
            context: reader.u64("context")?,
        },
        TYPE_INSTALL_SNAPSHOT => read_install_snapshot(reader)?,
        TYPE_TIMEOUT_NOW => MessageBody::TimeoutNow,
        TYPE_INSTALL_SNAPSHOT_CHUNK => {
            return Err(reader.malformed(
                "an INSTALL_SNAPSHOT_CHUNK is not a Raft message (it travels only in a BATCH)",
            ))
        }
        other => return Err(reader.malformed(format!("unknown message type {other}"))),
    })
}

fn read_append(reader: &mut Reader) -> Result<MessageBody<Command>, PeerError> {
    let prev_index = reader.u64("prev_index")?;
    let prev_term = reader.u64("prev_term")?;
    let commit = reader.u64("commit")?;
    let count = reader.u32("count")? as usize;
    reader.check_count(count, ENTRY_BYTES_MIN, "count")?;
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        entries.push(reader.decode("entry", decode_entry_payload)?);
    }
    Ok(MessageBody::Append {
        prev_index,
        prev_term,
        entries,
        commit,
    })
}

fn read_install_snapshot(reader: &mut Reader) -> Result<MessageBody<Command>, PeerError> {
    let index = reader.u64("index")?;
    let term = reader.u64("term")?;
    let membership = reader.decode("membership", decode_membership)?;
    let data_len = reader.u32("data_len")? as usize;
    let data = reader.bytes(data_len, "data")?;
    Ok(MessageBody::InstallSnapshot {
        snapshot: Snapshot {
            meta: SnapshotMeta {
                index,
                term,
                membership,
            },
            data,
        },
    })
}

/// Reads the fields of an INSTALL_SNAPSHOT_CHUNK and checks them against each other: the
/// snapshot's position, `offset`, `total` and the data.
fn read_chunk(reader: &mut Reader) -> Result<(SnapshotMeta, u64, u64, Bytes), PeerError> {
    let index = reader.u64("index")?;
    let term = reader.u64("term")?;
    let membership = reader.decode("membership", decode_membership)?;
    let offset = reader.u64("offset")?;
    let total = reader.u64("total")?;
    if total > SNAPSHOT_BYTES_MAX {
        return Err(reader.malformed(format!(
            "field `total` is {total}, past snapshot_bytes_max ({SNAPSHOT_BYTES_MAX})"
        )));
    }
    let data_len = reader.u32("data_len")?;
    if data_len == 0 {
        return Err(reader.malformed("a snapshot chunk of no bytes"));
    }
    if offset
        .checked_add(u64::from(data_len))
        .is_none_or(|end| end > total)
    {
        return Err(reader.malformed(format!(
            "a snapshot chunk of {data_len} bytes at offset {offset} ends past `total` ({total})"
        )));
    }
    let data = reader.bytes(data_len as usize, "data")?;
    let meta = SnapshotMeta {
        index,
        term,
        membership,
    };
    Ok((meta, offset, total, data))
}
