//! Peer codec tests on plain bytes: round trips of every message and frame, every split and
//! truncation point, flipped bits, lengths and counts past what the bytes can hold, the
//! handshake rules, and the byte format pinned by a hex dump (also the one in PROTOCOL.md);
//! then the transport over loopback sockets.

use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

use super::*;
use crate::raft::{Entry, EntryKind, Membership, Message, MessageBody, Snapshot, SnapshotMeta};
use crate::wal::record::Command;

mod address;
mod chunks;
mod format;
mod handshake;
mod incarnations;
mod limits;
mod loopback;
mod members;
mod properties;
mod transport;
mod transport_faults;

// ---- strategies ----------------------------------------------------------------------------

fn bytes_strategy(length_max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..=length_max).prop_map(Bytes::from)
}

fn command_strategy() -> impl Strategy<Value = Command> {
    let key = || bytes_strategy(64);
    prop_oneof![
        (key(), key(), any::<u64>(), any::<u64>()).prop_map(|(key, owner, token, ttl_ms)| {
            Command::Grant {
                key,
                owner,
                token,
                ttl_ms,
            }
        }),
        (key(), any::<u64>()).prop_map(|(key, token)| Command::Release { key, token }),
        (key(), any::<u64>(), any::<u64>()).prop_map(|(key, token, ttl_ms)| Command::Extend {
            key,
            token,
            ttl_ms
        }),
    ]
}

fn membership_strategy() -> impl Strategy<Value = Membership> {
    proptest::collection::btree_set(1..u64::MAX, 0..6).prop_map(Membership::new)
}

fn entry_strategy() -> impl Strategy<Value = Entry<Command>> {
    let kind = prop_oneof![
        Just(EntryKind::Noop),
        command_strategy().prop_map(EntryKind::Command),
        membership_strategy().prop_map(EntryKind::Membership),
    ];
    (any::<u64>(), any::<u64>(), kind).prop_map(|(index, term, kind)| Entry { index, term, kind })
}

fn body_strategy() -> impl Strategy<Value = MessageBody<Command>> {
    let u64 = any::<u64>;
    prop_oneof![
        (u64(), u64()).prop_map(|(last_log_index, last_log_term)| MessageBody::PreVote {
            last_log_index,
            last_log_term
        }),
        any::<bool>().prop_map(|granted| MessageBody::PreVoteResponse { granted }),
        (u64(), u64(), any::<bool>()).prop_map(|(last_log_index, last_log_term, transfer)| {
            MessageBody::Vote {
                last_log_index,
                last_log_term,
                transfer,
            }
        }),
        any::<bool>().prop_map(|granted| MessageBody::VoteResponse { granted }),
        (
            u64(),
            u64(),
            proptest::collection::vec(entry_strategy(), 0..8),
            u64()
        )
            .prop_map(
                |(prev_index, prev_term, entries, commit)| MessageBody::Append {
                    prev_index,
                    prev_term,
                    entries,
                    commit,
                }
            ),
        (any::<bool>(), u64(), u64(), u64()).prop_map(|(success, index, hint_index, hint_term)| {
            MessageBody::AppendResponse {
                success,
                index,
                hint_index,
                hint_term,
            }
        }),
        (u64(), u64()).prop_map(|(commit, context)| MessageBody::Heartbeat { commit, context }),
        u64().prop_map(|context| MessageBody::HeartbeatResponse { context }),
        (u64(), u64(), membership_strategy(), bytes_strategy(512)).prop_map(
            |(index, term, membership, data)| MessageBody::InstallSnapshot {
                snapshot: Snapshot {
                    meta: SnapshotMeta {
                        index,
                        term,
                        membership,
                    },
                    data,
                },
            }
        ),
        Just(MessageBody::TimeoutNow),
    ]
}

fn message_strategy() -> impl Strategy<Value = Message<Command>> {
    (any::<u64>(), any::<u64>(), any::<u64>(), body_strategy()).prop_map(
        |(from, to, term, body)| Message {
            from,
            to,
            term,
            body,
        },
    )
}

/// Chunks as a sender cuts them: never empty, ending within `total`, which is within
/// [`SNAPSHOT_BYTES_MAX`].
fn chunk_strategy() -> impl Strategy<Value = SnapshotChunk> {
    let u64 = any::<u64>;
    (
        (any::<u16>(), u64(), u64(), u64()),
        (u64(), u64(), membership_strategy()),
        proptest::collection::vec(any::<u8>(), 1..=256).prop_map(Bytes::from),
        0..SNAPSHOT_BYTES_MAX - 1024,
        0u64..=512,
    )
        .prop_map(
            |((shard, from, to, term), (index, snapshot_term, membership), data, offset, after)| {
                let total = offset + data.len() as u64 + after;
                SnapshotChunk {
                    shard,
                    from,
                    to,
                    term,
                    meta: SnapshotMeta {
                        index,
                        term: snapshot_term,
                        membership,
                    },
                    offset,
                    total,
                    data,
                }
            },
        )
}

fn batch_message_strategy() -> impl Strategy<Value = BatchMessage> {
    let shard_message = (any::<u16>(), message_strategy())
        .prop_map(|(shard, message)| BatchMessage::Raft(ShardMessage { shard, message }));
    prop_oneof![
        4 => shard_message,
        1 => chunk_strategy().prop_map(BatchMessage::Chunk),
    ]
}

fn batch_strategy() -> impl Strategy<Value = PeerFrame> {
    proptest::collection::vec(batch_message_strategy(), 1..6).prop_map(PeerFrame::Batch)
}

/// Addresses as [`PeerAddress::parse`] reads them: an IPv4 or IPv6 peer address (whose
/// text has no flow info, so none is generated) and a `HOST:PORT` client address.
fn peer_address_strategy() -> impl Strategy<Value = PeerAddress> {
    let peer = prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
        (any::<[u16; 8]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port))),
    ];
    let client =
        ("[a-z0-9.-]{1,60}", any::<u16>()).prop_map(|(host, port)| format!("{host}:{port}"));
    (peer, client).prop_map(|(peer, client)| PeerAddress { peer, client })
}

/// Handshakes of this version, with an address, and of any other, without one (as another
/// version's handshake decodes).
fn handshake_strategy() -> impl Strategy<Value = Handshake> {
    let version = prop_oneof![3 => Just(PEER_PROTOCOL_VERSION), 1 => any::<u16>()];
    (
        version,
        any::<u128>(),
        any::<u16>(),
        any::<u64>(),
        any::<(u64, u64)>(),
        peer_address_strategy(),
    )
        .prop_map(
            |(version, cluster_id, shard_count, node_id, incarnations, address)| {
                let this_version = version == PEER_PROTOCOL_VERSION;
                let (incarnation, receiver_incarnation) =
                    if this_version { incarnations } else { (0, 0) };
                Handshake {
                    version,
                    cluster_id,
                    shard_count,
                    node_id,
                    incarnation,
                    receiver_incarnation,
                    address: this_version.then_some(address),
                }
            },
        )
}

fn frame_strategy() -> impl Strategy<Value = PeerFrame> {
    prop_oneof![
        handshake_strategy().prop_map(PeerFrame::Handshake),
        handshake_strategy().prop_map(PeerFrame::HandshakeAccepted),
        "\\PC{0,80}".prop_map(PeerFrame::HandshakeRefused),
        batch_strategy(),
        batch_strategy(),
    ]
}

// ---- helpers -------------------------------------------------------------------------------

/// The cluster of the examples (also in PROTOCOL.md).
const CLUSTER: u128 = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;

/// Where node `node` of the examples is reached: peer port 9000 + `node`, client port
/// 8000 + `node`, on 127.0.0.1.
fn address_of(node: u64) -> PeerAddress {
    PeerAddress {
        peer: SocketAddr::from(([127, 0, 0, 1], 9000 + node as u16)),
        client: format!("127.0.0.1:{}", 8000 + node),
    }
}

/// The incarnation of node `node`'s data directory in the examples.
fn incarnation_of(node: u64) -> u64 {
    0x8f3a_5c2e_9d1b_4760 + node
}

/// Node `node`'s handshake in the cluster of the examples, remembering no receiver.
fn handshake_of(shard_count: u16, node: u64) -> Handshake {
    Handshake::new(
        CLUSTER,
        shard_count,
        node,
        incarnation_of(node),
        address_of(node),
    )
}

fn encode(frame: &PeerFrame) -> BytesMut {
    let mut bytes = BytesMut::new();
    PeerCodec::default().encode(frame, &mut bytes).unwrap();
    bytes
}

fn decode_one(bytes: &[u8]) -> Result<Option<PeerFrame>, PeerError> {
    PeerCodec::default().decode(&mut BytesMut::from(bytes))
}

/// A frame with a correct header and checksums around any body, to reach the body decoder.
fn frame_around(kind: FrameKind, body: &[u8]) -> BytesMut {
    let mut bytes = BytesMut::new();
    bytes.put_u8(PEER_MAGIC);
    bytes.put_u8(kind as u8);
    bytes.put_u16_le(0);
    bytes.put_u32_le(body.len() as u32);
    bytes.put_u32_le(crc32c::crc32c(body));
    let header_crc = crc32c::crc32c(&bytes[..12]);
    bytes.put_u32_le(header_crc);
    bytes.put_slice(body);
    bytes
}

fn hex(bytes: &[u8]) -> String {
    let pairs: Vec<String> = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    pairs.join(" ")
}

fn heartbeat(shard: ShardId, from: u64, to: u64, term: u64, commit: u64) -> ShardMessage {
    ShardMessage {
        shard,
        message: Message {
            from,
            to,
            term,
            body: MessageBody::Heartbeat { commit, context: 0 },
        },
    }
}

/// An entry of term 2 at `index`: `owner` is granted `key` with token `2 << 32 | 1` for a
/// minute.
fn grant(index: u64, key: &'static [u8], owner: &'static [u8]) -> Entry<Command> {
    Entry {
        index,
        term: 2,
        kind: EntryKind::Command(Command::Grant {
            key: Bytes::from_static(key),
            owner: Bytes::from_static(owner),
            token: (2 << 32) | 1,
            ttl_ms: 60_000,
        }),
    }
}
