//! The peer protocol: how kahu nodes carry Raft traffic to each other, as bytes and over
//! TCP.
//!
//! What: the frames one node sends another over its own TCP connection (the peer port,
//! apart from the client port): a handshake that proves both ends belong to the same
//! cluster, then batches of Raft messages, each tagged with the shard (Raft group) it is
//! for. The byte code is pure, like [`kahu_protocol`]'s codecs: [`PeerCodec`] works on
//! buffers. The connections that carry the frames are [`transport`]'s ([`PeerNetwork`]):
//! one outbound connection per linked node, on which this node sends, and the connections
//! it accepted, on which it receives. The set of links changes at run time, with the
//! shards' memberships ([`outbox`](PeerOutboxHandle)).
//!
//! Why batches: a shard worker drains its queue and produces one round of messages per
//! loop turn; a node runs many shards, and their messages to one peer go out as one frame
//! with one checksum and one write, not one per shard.
//!
//! Snapshots: an InstallSnapshot larger than a chunk (`snapshot_chunk_bytes`, 8 MiB by
//! default) travels as INSTALL_SNAPSHOT_CHUNK messages, one per turn of the sender, with
//! the other messages passing between them (`chunker.rs`); the receiver puts them back
//! together per connection and shard and delivers one InstallSnapshot (`reassembly.rs`).
//! The Raft core never sees a chunk, and a snapshot is not bound by the frame size.
//!
//! # Frame (little-endian), see [`frame`]
//! ```text
//! offset size field
//!      0    1 magic          0xCD (client frames start 0xCB)
//!      1    1 kind           0x01 HANDSHAKE, 0x02 HANDSHAKE_ACCEPTED, 0x03 HANDSHAKE_REFUSED,
//!                            0x04 BATCH
//!      2    2 reserved       0; a frame with any other value is refused
//!      4    4 body_len       u32, bytes after the header
//!      8    4 body_crc32c    CRC-32C (Castagnoli) of the body
//!     12    4 header_crc32c  CRC-32C of bytes 0..12
//!     16    - body           body_len bytes, per kind
//! ```
//! `16 + body_len` must not exceed [`PEER_FRAME_BYTES_MAX`]. The header has its own
//! checksum so a damaged `body_len` is caught at once, before the decoder waits for (or
//! reserves room for) a body that was never sent.
//!
//! # Bodies
//! ```text
//! HANDSHAKE, HANDSHAKE_ACCEPTED  see [`handshake`]: magic "KAHUPEER" | version u16 (3) |
//!                                shard_count u16 | node_id u64 | cluster_id u128 |
//!                                incarnation u64 | receiver_incarnation u64 |
//!                                peer_address str16 | client_address str16
//! HANDSHAKE_REFUSED              reason_len u16 | reason (UTF-8)
//! BATCH                          count u32 | count x (shard u16 | message)
//! message                        see [`message`]: from u64 | to u64 | term u64 | type u8 | fields
//!                                (type 11, INSTALL_SNAPSHOT_CHUNK, is a piece of a snapshot)
//! ```
//!
//! # Handshake rules
//! The connecting node sends HANDSHAKE first and nothing else until it has the answer. The
//! accepting node checks it with [`Handshake::check`]: same protocol version, same cluster
//! id, same shard count, a node id that is neither 0 nor its own, an incarnation, and, if
//! the peer remembers this node's incarnation, this node's own. Then it checks the peer's
//! incarnation against the one it remembers for that node id, or records it durably if it
//! remembers none ([`incarnations`]). It answers HANDSHAKE_ACCEPTED with its own identity,
//! or HANDSHAKE_REFUSED with the reason and closes. The connecting node checks the accepted
//! identity the same way. A node that a peer remembers by another incarnation (its data
//! directory was created anew) refuses and stops its transport for good. Only then do
//! BATCH frames flow, from the connecting node to the accepting node only: each direction
//! between two nodes has its own connection. Each handshake advertises where its sender is
//! reached (`PEER_ADDR/CLIENT_ADDR`, [`PeerAddress`]), so the accepting node can link back
//! to a node it has no address for.
//!
//! # Invariants
//! - Nothing a node sends is delivered before its incarnation is checked against, or
//!   durably recorded as, the one this node remembers for its id.
//! - Decoding never panics and never allocates more than the frame's checked length:
//!   `body_len` is checked against [`PEER_FRAME_BYTES_MAX`] from the header alone, and
//!   every count inside a body against the bytes left before a vector is reserved.
//! - Partial input is `Ok(None)`; anything that is not a well-formed frame is an error, and
//!   the connection cannot be trusted past it (no resynchronisation on a peer link).
//! - A BATCH body is read exactly: trailing bytes are an error, since both ends agreed the
//!   version. So is a handshake body of this version; one of another version is read up
//!   to its first 36 bytes only, which keep their layout in every version, so that the
//!   version check can name both versions.
//! - Every address a node sends or accepts reads back in the `PEER_ADDR/CLIENT_ADDR`
//!   notation ([`PeerAddress::parse`]), within `node_address_bytes_max`.
//! - A snapshot put back together from chunks is at most [`SNAPSHOT_BYTES_MAX`], and the
//!   partial snapshots of one connection hold at most `snapshot_reassembly_bytes_max`,
//!   grown as their bytes arrive, never reserved from a length the peer claims.

mod chunker;
pub mod codec;
pub mod frame;
pub mod handshake;
mod inbound;
pub mod incarnations;
pub mod message;
mod outbound;
mod outbox;
mod reader;
mod reassembly;
pub mod transport;

#[cfg(test)]
mod tests;

pub use chunker::{SNAPSHOT_CHUNK_BYTES, SNAPSHOT_CHUNK_BYTES_MAX, SNAPSHOT_CHUNK_BYTES_MIN};
pub use codec::PeerCodec;
pub use frame::{FrameKind, PeerFrame, PEER_FRAME_BYTES_MAX, PEER_HEADER_BYTES, PEER_MAGIC};
pub use handshake::{
    Handshake, HandshakeError, NODE_ADDRESS_BYTES_MAX, PEER_PROTOCOL_VERSION,
    REFUSAL_REASON_BYTES_MAX,
};
pub use incarnations::{IncarnationStore, SeenIncarnations};
pub use message::{
    decode_message, encode_message, message_bytes, BatchMessage, ShardId, ShardMessage,
    SnapshotChunk, SNAPSHOT_BYTES_MAX,
};
pub use outbox::PeerOutboxHandle;
pub use transport::{
    PeerAddress, PeerConfig, PeerConfigError, PeerNetwork, PeerStats, RunningPeers,
    PEER_QUEUE_MESSAGES_MAX,
};

/// Why bytes from a peer are not a frame. Every variant but [`PeerError::Io`] means the
/// peer sent something this node cannot trust; the connection should be closed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer connection: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "not a peer frame: first byte {0:#04x}, expected {PEER_MAGIC:#04x}{hint}",
        hint = if *.0 == kahu_protocol::frame::MAGIC {
            " (0xCB starts a client frame: is a client connected to the peer port?)"
        } else {
            ""
        }
    )]
    BadMagic(u8),
    #[error("peer frame header checksum mismatch: the header is damaged")]
    HeaderChecksum,
    #[error("peer {kind} frame body checksum mismatch: the body is damaged")]
    BodyChecksum { kind: &'static str },
    #[error("unknown peer frame kind {0:#04x}")]
    UnknownKind(u8),
    #[error("peer frame reserved header bytes are {0:#06x}, must be 0")]
    Reserved(u16),
    #[error("peer frame of {length} bytes exceeds peer_frame_bytes_max ({max} bytes)")]
    FrameTooLarge { length: usize, max: usize },
    #[error("malformed peer {kind} frame at body byte {offset}: {detail}")]
    Malformed {
        kind: &'static str,
        offset: usize,
        detail: String,
    },
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
}
