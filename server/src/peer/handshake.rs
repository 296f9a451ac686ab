//! The handshake: who a peer is, whether it belongs to this cluster, which life of its data
//! directory it is in, and where it is reached.
//!
//! ```text
//! HANDSHAKE and HANDSHAKE_ACCEPTED body
//! offset size field
//!      0    8 magic                 "KAHUPEER" (4b 41 48 55 50 45 45 52)
//!      8    2 version               u16, the peer protocol version: 3
//!     10    2 shard_count           u16, shards (Raft groups) per node, fixed at cluster creation
//!     12    8 node_id               u64, the sender's node id, never 0
//!     20   16 cluster_id            u128, chosen when the cluster was created
//!     36    8 incarnation           u64, the sender's data directory's incarnation, never 0
//!     44    8 receiver_incarnation  u64, the receiver's incarnation as the sender remembers
//!                                   it; 0: the sender remembers none
//!     52  2+p peer_address          str16, where the sender's peer port is reached: IP:PORT
//!   54+p  2+c client_address        str16, what its clients use: HOST:PORT
//!         (the body ends here)
//!
//! HANDSHAKE_REFUSED body
//!      0    2 reason_len   u16, at most refusal_reason_bytes_max (1024)
//!      2    n reason       UTF-8, for the refused node's log
//! ```
//!
//! Little-endian. `str16` is a u16 length, then that many bytes of UTF-8; each address is
//! at most [`NODE_ADDRESS_BYTES_MAX`] bytes and must read as a [`PeerAddress`] (the
//! `PEER_ADDR/CLIENT_ADDR` notation's two parts), or the frame is malformed.
//!
//! The first 36 bytes keep this layout in every version, so two nodes of different
//! versions can always read each other's handshake and say which versions differ. A body
//! of another version is read up to byte 36 only (its later fields are not this version's
//! to read) and refused by [`Handshake::check`] for its version; a version 3 body is read
//! exactly, trailing bytes are an error. Version 3 accepts only version 3. Version 1 had
//! no addresses: version 2 added them so that a node can open a link back to a node it
//! has no address for (one added to the cluster at run time). Version 3 added the two
//! incarnations, so that a node whose data directory was created anew is not heard as the
//! node it replaced (see [`incarnations`](super::incarnations)).
//!
//! The rules ([`Handshake::check`], in this order): the versions are equal; the cluster ids
//! are equal (a node created for another cluster must not vote here); the shard counts are
//! equal (keys are placed on shards by hash, so two counts would disagree on which group
//! owns a key); the peer's node id is not 0 and not this node's own (a misconfigured
//! address list, or two nodes given one id); its incarnation is not 0; and the
//! incarnation it remembers for this node, if any, is this node's own (else this node's
//! data directory was created anew, and this node must stop: see
//! [`HandshakeError::IncarnationChanged`]). What this node remembers of the peer's
//! incarnation is checked apart (`PeerOutboxHandle::admit`), since it is state.

use bytes::{BufMut, BytesMut};

use super::reader::Reader;
use super::transport::{check_client_address, parse_peer_address, PeerAddress};
use super::PeerError;
use crate::raft::NodeId;

/// The peer protocol version this build speaks.
pub const PEER_PROTOCOL_VERSION: u16 = 3;
/// First bytes of every handshake body.
pub const HANDSHAKE_MAGIC: &[u8; 8] = b"KAHUPEER";
/// Bytes of a handshake body before its version's own fields: the same in every version.
pub const HANDSHAKE_BYTES: usize = 36;
/// Longest address in a handshake, each of the peer and the client address (and so the
/// longest client address a node may have). 255 bytes holds any IP:PORT and any DNS name
/// with a port.
pub const NODE_ADDRESS_BYTES_MAX: usize = 255;
/// Longest refusal reason; longer ones are cut at a character boundary.
pub const REFUSAL_REASON_BYTES_MAX: usize = 1024;

/// What a node says about itself when a peer connection opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub version: u16,
    pub cluster_id: u128,
    pub shard_count: u16,
    pub node_id: NodeId,
    /// The sender's data directory's incarnation (`DataDir::incarnation`), never 0. 0 only
    /// in a handshake of another version, whose fields past the first
    /// [`HANDSHAKE_BYTES`] are not read.
    pub incarnation: u64,
    /// The receiver's incarnation as the sender remembers it; 0 when it remembers none (or
    /// in a handshake of another version).
    pub receiver_incarnation: u64,
    /// Where the sender is reached, as it advertises itself. `None` only in a handshake of
    /// another version, whose fields past the first [`HANDSHAKE_BYTES`] are not read (and
    /// which [`Handshake::check`] refuses).
    pub address: Option<PeerAddress>,
}

/// Why a peer is refused. Each message names both nodes and both values, so it reads the
/// same in either node's log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error(
        "peer protocol version differs: node {remote_node} speaks version {remote}, \
         node {local_node} version {local}; upgrade the older node"
    )]
    Version {
        local_node: NodeId,
        local: u16,
        remote_node: NodeId,
        remote: u16,
    },
    #[error(
        "cluster id differs: node {remote_node} belongs to cluster {remote:032x}, node \
         {local_node} to cluster {local:032x}; a node only joins the cluster it was created for"
    )]
    ClusterId {
        local_node: NodeId,
        local: u128,
        remote_node: NodeId,
        remote: u128,
    },
    #[error(
        "shard count differs: node {remote_node} has {remote} shards, node {local_node} has \
         {local}; the shard count is fixed when a cluster is created and must match on every node"
    )]
    ShardCount {
        local_node: NodeId,
        local: u16,
        remote_node: NodeId,
        remote: u16,
    },
    #[error("the peer says it is node 0, which names no node")]
    NodeIdZero,
    #[error("node {0} says its data directory is incarnation 0, which names none")]
    IncarnationZero(NodeId),
    /// `node`'s data directory is not the one `known_by` knew it by: it was lost and
    /// created anew. Refused by `known_by`, and by `node` itself when `known_by` says so in
    /// its handshake; a node that learns this of itself stops its peer transport.
    #[error(
        "node {node}'s data directory was created anew (incarnation {incarnation:016x}; node \
         {known_by} knew it as {known:016x}): a node that lost its data must not vote again; \
         remove it (kahu-cli --remove-node {node}) and add a new node with a new id (--join)"
    )]
    IncarnationChanged {
        node: NodeId,
        incarnation: u64,
        known_by: NodeId,
        known: u64,
    },
    #[error(
        "node {known_by} cannot record node {node}'s incarnation {incarnation:016x} in its data \
         directory: {reason}"
    )]
    IncarnationNotRecorded {
        node: NodeId,
        incarnation: u64,
        known_by: NodeId,
        reason: String,
    },
    #[error(
        "the peer says it is node {0}, this node's own id: two nodes share an id, or this node \
         connected to itself"
    )]
    OwnNodeId(NodeId),
    #[error("refused by the peer: {reason}")]
    Refused { reason: String },
}

impl HandshakeError {
    /// The node whose data directory was created anew, if that is the error.
    pub fn created_anew(&self) -> Option<NodeId> {
        match self {
            HandshakeError::IncarnationChanged { node, .. } => Some(*node),
            _ => None,
        }
    }
}

impl Handshake {
    /// This node's handshake, in this build's protocol version, from its data directory's
    /// `incarnation`, advertising `address`; it remembers no receiver (see
    /// [`Handshake::to_receiver`]).
    ///
    /// Panics if `incarnation` is 0 or `address` fails [`PeerAddress::check`]
    /// ([`PeerConfig::validate`] checks both).
    ///
    /// [`PeerConfig::validate`]: super::PeerConfig::validate
    pub fn new(
        cluster_id: u128,
        shard_count: u16,
        node_id: NodeId,
        incarnation: u64,
        address: PeerAddress,
    ) -> Handshake {
        assert!(node_id != 0, "node id 0 is reserved");
        assert!(incarnation != 0, "incarnation 0 names no data directory");
        assert!(shard_count >= 1, "a cluster has at least one shard");
        if let Err(error) = address.check() {
            panic!("node {node_id} advertises address {address}: {error}");
        }
        Handshake {
            version: PEER_PROTOCOL_VERSION,
            cluster_id,
            shard_count,
            node_id,
            incarnation,
            receiver_incarnation: 0,
            address: Some(address),
        }
    }

    /// This handshake for a receiver this node remembers as `remembered` (`None`: as no
    /// incarnation).
    pub fn to_receiver(&self, remembered: Option<u64>) -> Handshake {
        Handshake {
            receiver_incarnation: remembered.unwrap_or(0),
            ..self.clone()
        }
    }

    /// Checks a peer's handshake (`remote`) against this node's (`self`); used by the
    /// accepting node on HANDSHAKE and by the connecting node on HANDSHAKE_ACCEPTED. An
    /// [`HandshakeError::IncarnationChanged`] from here names this node: the peer knew it
    /// by another incarnation.
    pub fn check(&self, remote: &Handshake) -> Result<(), HandshakeError> {
        let (local_node, remote_node) = (self.node_id, remote.node_id);
        if remote.version != self.version {
            return Err(HandshakeError::Version {
                local_node,
                local: self.version,
                remote_node,
                remote: remote.version,
            });
        }
        if remote.cluster_id != self.cluster_id {
            return Err(HandshakeError::ClusterId {
                local_node,
                local: self.cluster_id,
                remote_node,
                remote: remote.cluster_id,
            });
        }
        if remote.shard_count != self.shard_count {
            return Err(HandshakeError::ShardCount {
                local_node,
                local: self.shard_count,
                remote_node,
                remote: remote.shard_count,
            });
        }
        if remote_node == 0 {
            return Err(HandshakeError::NodeIdZero);
        }
        if remote_node == local_node {
            return Err(HandshakeError::OwnNodeId(remote_node));
        }
        if remote.incarnation == 0 {
            return Err(HandshakeError::IncarnationZero(remote_node));
        }
        let known = remote.receiver_incarnation;
        if known != 0 && known != self.incarnation {
            return Err(HandshakeError::IncarnationChanged {
                node: local_node,
                incarnation: self.incarnation,
                known_by: remote_node,
                known,
            });
        }
        Ok(())
    }

    /// Writes the body: the first [`HANDSHAKE_BYTES`], then the incarnations and the
    /// address when there is an address (a handshake without one is another version's,
    /// which only tests build).
    pub(super) fn encode(&self, dst: &mut BytesMut) {
        dst.put_slice(HANDSHAKE_MAGIC);
        dst.put_u16_le(self.version);
        dst.put_u16_le(self.shard_count);
        dst.put_u64_le(self.node_id);
        dst.put_u128_le(self.cluster_id);
        if let Some(address) = &self.address {
            dst.put_u64_le(self.incarnation);
            dst.put_u64_le(self.receiver_incarnation);
            put_str16(dst, &address.peer.to_string());
            put_str16(dst, &address.client);
        }
    }

    /// Reads a body: the first [`HANDSHAKE_BYTES`], then, in this version only, the
    /// incarnations and the address, to the body's end. Another version's body is read no further.
    pub(super) fn decode(reader: &mut Reader) -> Result<Handshake, PeerError> {
        if reader.bytes(HANDSHAKE_MAGIC.len(), "magic")?[..] != HANDSHAKE_MAGIC[..] {
            return Err(reader.malformed("the handshake does not start with \"KAHUPEER\""));
        }
        let mut handshake = Handshake {
            version: reader.u16("version")?,
            shard_count: reader.u16("shard_count")?,
            node_id: reader.u64("node_id")?,
            cluster_id: reader.u128("cluster_id")?,
            incarnation: 0,
            receiver_incarnation: 0,
            address: None,
        };
        if handshake.version != PEER_PROTOCOL_VERSION {
            return Ok(handshake);
        }
        handshake.incarnation = reader.u64("incarnation")?;
        handshake.receiver_incarnation = reader.u64("receiver_incarnation")?;
        let peer = read_str16(
            reader,
            "peer_address",
            NODE_ADDRESS_BYTES_MAX,
            "node_address_bytes_max",
        )?;
        let peer = parse_peer_address(&peer).map_err(|error| reader.malformed(error))?;
        let client = read_str16(
            reader,
            "client_address",
            NODE_ADDRESS_BYTES_MAX,
            "node_address_bytes_max",
        )?;
        check_client_address(&client).map_err(|error| reader.malformed(error))?;
        reader.finish()?;
        handshake.address = Some(PeerAddress { peer, client });
        Ok(handshake)
    }
}

/// Writes a `str16`. The caller keeps it within its limit (and so within a u16).
fn put_str16(dst: &mut BytesMut, text: &str) {
    assert!(text.len() <= NODE_ADDRESS_BYTES_MAX.max(REFUSAL_REASON_BYTES_MAX));
    dst.put_u16_le(text.len() as u16);
    dst.put_slice(text.as_bytes());
}

/// Reads a `str16` of at most `bytes_max` bytes (named `limit` in the error), checking the
/// length before reading the text.
fn read_str16(
    reader: &mut Reader,
    field: &'static str,
    bytes_max: usize,
    limit: &str,
) -> Result<String, PeerError> {
    let length = reader.u16(field)? as usize;
    if length > bytes_max {
        return Err(reader.malformed(format!(
            "{field} of {length} bytes exceeds {limit} ({bytes_max})"
        )));
    }
    let text = reader.bytes(length, field)?;
    String::from_utf8(text.to_vec())
        .map_err(|_| reader.malformed(format!("field `{field}` is not UTF-8")))
}

/// Writes a HANDSHAKE_REFUSED body, cutting `reason` to [`REFUSAL_REASON_BYTES_MAX`].
pub(super) fn encode_refusal(reason: &str, dst: &mut BytesMut) {
    let mut length = reason.len().min(REFUSAL_REASON_BYTES_MAX);
    while !reason.is_char_boundary(length) {
        length -= 1;
    }
    put_str16(dst, &reason[..length]);
}

pub(super) fn decode_refusal(reader: &mut Reader) -> Result<String, PeerError> {
    read_str16(
        reader,
        "reason",
        REFUSAL_REASON_BYTES_MAX,
        "refusal_reason_bytes_max",
    )
}
