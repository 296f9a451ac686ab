//! The peer frame: a 16-byte header with its own checksum, then a checksummed body.
//!
//! ```text
//! offset size field
//!      0    1 magic          0xCD
//!      1    1 kind           0x01 HANDSHAKE, 0x02 HANDSHAKE_ACCEPTED, 0x03 HANDSHAKE_REFUSED,
//!                            0x04 BATCH
//!      2    2 reserved       u16, 0 (refused otherwise: a later version agrees its meaning in
//!                            the handshake first)
//!      4    4 body_len       u32, bytes after the header
//!      8    4 body_crc32c    u32, CRC-32C of the body
//!     12    4 header_crc32c  u32, CRC-32C of bytes 0..12
//!     16    - body           body_len bytes
//!
//! BATCH body
//!      0    4 count          u32, messages in the batch, at least 1
//!      4    - count x (shard u16 | message)       message: see super::message (a Raft
//!                                                 message or an INSTALL_SNAPSHOT_CHUNK)
//! ```
//!
//! Little-endian. The decoder checks, in order: magic (from the first byte alone), header
//! checksum, kind, reserved, `16 + body_len <= peer_frame_bytes_max`; only then does it
//! wait for the body, whose checksum it checks before reading any field.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::handshake::{decode_refusal, encode_refusal, Handshake};
use super::message::{
    put_batch_message, read_batch_message, BatchMessage, ShardMessage, MESSAGE_BYTES_MIN,
    SHARD_BYTES,
};
use super::reader::Reader;
use super::PeerError;

/// First byte of every peer frame. Not the client protocol's 0xCB, so a client that
/// reaches the peer port (or the reverse) fails on its first byte.
pub const PEER_MAGIC: u8 = 0xCD;
/// Bytes in a peer frame header.
pub const PEER_HEADER_BYTES: usize = 16;
/// Largest peer frame, header included; checked from the header before any allocation.
///
/// 64 MiB: far above what one frame needs. Append messages are at most `append_bytes_max`
/// (1 MiB by default), and a snapshot larger than a chunk (`snapshot_chunk_bytes`, 8 MiB
/// by default) travels as INSTALL_SNAPSHOT_CHUNK messages, which the receiver puts back
/// together (`chunker.rs`, `reassembly.rs`). A peer connection holds at most one frame
/// being read, so this also bounds the memory one frame can make this node reserve.
pub const PEER_FRAME_BYTES_MAX: usize = 64 << 20;

const _: () = assert!(PEER_FRAME_BYTES_MAX <= u32::MAX as usize);

/// Bytes of a BATCH frame before its first message: the header and `count`.
pub const BATCH_FRAME_BYTES_MIN: usize = PEER_HEADER_BYTES + 4;

/// The kind byte of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Handshake = 0x01,
    HandshakeAccepted = 0x02,
    HandshakeRefused = 0x03,
    Batch = 0x04,
}

impl FrameKind {
    pub fn from_u8(value: u8) -> Option<FrameKind> {
        match value {
            0x01 => Some(FrameKind::Handshake),
            0x02 => Some(FrameKind::HandshakeAccepted),
            0x03 => Some(FrameKind::HandshakeRefused),
            0x04 => Some(FrameKind::Batch),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FrameKind::Handshake => "HANDSHAKE",
            FrameKind::HandshakeAccepted => "HANDSHAKE_ACCEPTED",
            FrameKind::HandshakeRefused => "HANDSHAKE_REFUSED",
            FrameKind::Batch => "BATCH",
        }
    }
}

/// One frame between two nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerFrame {
    /// The connecting node's identity, sent first.
    Handshake(Handshake),
    /// The accepting node's identity: it accepted the connecting node.
    HandshakeAccepted(Handshake),
    /// The accepting node refused the connecting node, for this reason, and closes.
    HandshakeRefused(String),
    /// Raft messages and snapshot chunks, each for one shard's group. Never empty.
    Batch(Vec<BatchMessage>),
}

impl PeerFrame {
    pub fn kind(&self) -> FrameKind {
        match self {
            PeerFrame::Handshake(_) => FrameKind::Handshake,
            PeerFrame::HandshakeAccepted(_) => FrameKind::HandshakeAccepted,
            PeerFrame::HandshakeRefused(_) => FrameKind::HandshakeRefused,
            PeerFrame::Batch(_) => FrameKind::Batch,
        }
    }

    /// A BATCH of Raft messages only.
    pub fn batch(messages: impl IntoIterator<Item = ShardMessage>) -> PeerFrame {
        PeerFrame::Batch(messages.into_iter().map(BatchMessage::Raft).collect())
    }

    /// Appends the frame to `dst`. A frame past [`PEER_FRAME_BYTES_MAX`] (a batch with a
    /// snapshot too large, or too many messages) is refused and `dst` left as it was; the
    /// caller sends fewer messages per frame.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), PeerError> {
        let start = dst.len();
        dst.put_bytes(0, PEER_HEADER_BYTES);
        match self {
            PeerFrame::Handshake(handshake) | PeerFrame::HandshakeAccepted(handshake) => {
                handshake.encode(dst);
            }
            PeerFrame::HandshakeRefused(reason) => encode_refusal(reason, dst),
            PeerFrame::Batch(messages) => {
                assert!(!messages.is_empty(), "an empty batch is never sent");
                dst.put_u32_le(u32::try_from(messages.len()).unwrap_or(u32::MAX));
                for message in messages {
                    put_batch_message(dst, message);
                    if dst.len() - start > PEER_FRAME_BYTES_MAX {
                        break; // refused below; stop copying
                    }
                }
            }
        }
        let length = dst.len() - start;
        if length > PEER_FRAME_BYTES_MAX {
            dst.truncate(start);
            return Err(PeerError::FrameTooLarge {
                length,
                max: PEER_FRAME_BYTES_MAX,
            });
        }
        finish_header(&mut dst[start..], self.kind());
        Ok(())
    }
}

/// Messages cut into BATCH frames, see [`split_into_batches`].
#[derive(Debug, Default)]
pub struct Batches {
    /// The messages of each frame, in the order given, and the frame's bytes.
    pub frames: Vec<(Vec<BatchMessage>, usize)>,
    /// Messages that do not fit in a frame of their own, in the order given.
    pub too_large: Vec<BatchMessage>,
}

/// Cuts `messages` into as few BATCH frames as fit, each at most `frame_bytes_max` bytes
/// (header included), keeping their order: a frame is filled until the next message would
/// take it past the limit. A message too large for any frame is set apart (the outbound
/// task cuts snapshots into chunks that fit before this, see `chunker.rs`).
pub fn split_into_batches(
    messages: impl IntoIterator<Item = BatchMessage>,
    frame_bytes_max: usize,
) -> Batches {
    let mut batches = Batches::default();
    let mut frame = Vec::new();
    let mut frame_bytes = BATCH_FRAME_BYTES_MIN;
    for message in messages {
        let bytes = message.encoded_bytes();
        if BATCH_FRAME_BYTES_MIN + bytes > frame_bytes_max {
            batches.too_large.push(message);
            continue;
        }
        if frame_bytes + bytes > frame_bytes_max {
            batches
                .frames
                .push((std::mem::take(&mut frame), frame_bytes));
            frame_bytes = BATCH_FRAME_BYTES_MIN;
        }
        frame.push(message);
        frame_bytes += bytes;
    }
    if !frame.is_empty() {
        batches.frames.push((frame, frame_bytes));
    }
    batches
}

/// Fills in the header at the front of `frame`, whose body is already written.
fn finish_header(frame: &mut [u8], kind: FrameKind) {
    let (header, body) = frame.split_at_mut(PEER_HEADER_BYTES);
    let mut cursor = &mut header[..];
    cursor.put_u8(PEER_MAGIC);
    cursor.put_u8(kind as u8);
    cursor.put_u16_le(0);
    cursor.put_u32_le(body.len() as u32);
    cursor.put_u32_le(crc32c::crc32c(body));
    let header_crc = crc32c::crc32c(&header[..12]);
    header[12..].copy_from_slice(&header_crc.to_le_bytes());
}

/// A checked frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    pub body_len: u32,
    pub body_crc: u32,
}

impl FrameHeader {
    /// Checks the first [`PEER_HEADER_BYTES`] of `src`, without consuming them.
    pub fn peek(src: &[u8]) -> Result<FrameHeader, PeerError> {
        assert!(src.len() >= PEER_HEADER_BYTES);
        if src[0] != PEER_MAGIC {
            return Err(PeerError::BadMagic(src[0]));
        }
        let mut header = &src[1..PEER_HEADER_BYTES];
        let kind = header.get_u8();
        let reserved = header.get_u16_le();
        let body_len = header.get_u32_le();
        let body_crc = header.get_u32_le();
        let header_crc = header.get_u32_le();
        if crc32c::crc32c(&src[..12]) != header_crc {
            return Err(PeerError::HeaderChecksum);
        }
        let kind = FrameKind::from_u8(kind).ok_or(PeerError::UnknownKind(kind))?;
        if reserved != 0 {
            return Err(PeerError::Reserved(reserved));
        }
        let length = PEER_HEADER_BYTES + body_len as usize;
        if length > PEER_FRAME_BYTES_MAX {
            return Err(PeerError::FrameTooLarge {
                length,
                max: PEER_FRAME_BYTES_MAX,
            });
        }
        Ok(FrameHeader {
            kind,
            body_len,
            body_crc,
        })
    }

    /// Checks the body's checksum and reads the frame it holds.
    pub fn decode_body(&self, body: Bytes) -> Result<PeerFrame, PeerError> {
        assert_eq!(body.len(), self.body_len as usize);
        let kind = self.kind.name();
        if crc32c::crc32c(&body) != self.body_crc {
            return Err(PeerError::BodyChecksum { kind });
        }
        let mut reader = Reader::new(body, kind);
        Ok(match self.kind {
            FrameKind::Handshake => PeerFrame::Handshake(Handshake::decode(&mut reader)?),
            FrameKind::HandshakeAccepted => {
                PeerFrame::HandshakeAccepted(Handshake::decode(&mut reader)?)
            }
            FrameKind::HandshakeRefused => {
                let reason = decode_refusal(&mut reader)?;
                reader.finish()?;
                PeerFrame::HandshakeRefused(reason)
            }
            FrameKind::Batch => {
                let messages = read_batch(&mut reader)?;
                reader.finish()?;
                PeerFrame::Batch(messages)
            }
        })
    }
}

fn read_batch(reader: &mut Reader) -> Result<Vec<BatchMessage>, PeerError> {
    let count = reader.u32("count")? as usize;
    if count == 0 {
        return Err(reader.malformed("a batch of no messages"));
    }
    reader.check_count(count, SHARD_BYTES + MESSAGE_BYTES_MIN, "count")?;
    let mut messages = Vec::with_capacity(count);
    for _ in 0..count {
        messages.push(read_batch_message(reader)?);
    }
    Ok(messages)
}
