//! A tokio-util codec over peer frames, for `Framed<TcpStream, PeerCodec>`.
//!
//! Decoding moves through two states like the client protocol's `FrameDecoder`: `Head`
//! waits for the 16-byte header and checks it (magic from the first byte, then checksum,
//! kind, reserved bytes and `peer_frame_bytes_max`) before reserving room for the body;
//! `Body` waits for the body and decodes it. Partial input is `Ok(None)`; every error is
//! fatal to the connection. The body is split off the read buffer without copying, and a
//! snapshot's data stays a slice of it.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use super::frame::{FrameHeader, PeerFrame, PEER_HEADER_BYTES, PEER_MAGIC};
use super::PeerError;

#[derive(Clone, Copy, Debug, Default)]
enum DecodeState {
    #[default]
    Head,
    Body(FrameHeader),
}

/// Decodes and encodes [`PeerFrame`]s; the same codec on both ends of a peer connection.
#[derive(Debug, Default)]
pub struct PeerCodec {
    state: DecodeState,
}

impl Decoder for PeerCodec {
    type Item = PeerFrame;
    type Error = PeerError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<PeerFrame>, PeerError> {
        let header = match self.state {
            DecodeState::Head => {
                if let Some(&first) = src.first() {
                    if first != PEER_MAGIC {
                        return Err(PeerError::BadMagic(first));
                    }
                }
                if src.len() < PEER_HEADER_BYTES {
                    src.reserve(PEER_HEADER_BYTES - src.len());
                    return Ok(None);
                }
                let header = FrameHeader::peek(src)?;
                let _ = src.split_to(PEER_HEADER_BYTES);
                self.state = DecodeState::Body(header);
                header
            }
            DecodeState::Body(header) => header,
        };
        let body_len = header.body_len as usize;
        if src.len() < body_len {
            // Safe to reserve: `peek` checked body_len against peer_frame_bytes_max.
            src.reserve(body_len - src.len());
            return Ok(None);
        }
        self.state = DecodeState::Head;
        let body = src.split_to(body_len).freeze();
        header.decode_body(body).map(Some)
    }
}

impl Encoder<&PeerFrame> for PeerCodec {
    type Error = PeerError;

    fn encode(&mut self, frame: &PeerFrame, dst: &mut BytesMut) -> Result<(), PeerError> {
        frame.encode(dst)
    }
}

impl Encoder<PeerFrame> for PeerCodec {
    type Error = PeerError;

    fn encode(&mut self, frame: PeerFrame, dst: &mut BytesMut) -> Result<(), PeerError> {
        self.encode(&frame, dst)
    }
}
