//! tokio-util codecs for both ends of a binary connection.
//!
//! [`FrameDecoder`] splits a byte stream into frames in two states, `Head` and `Body`:
//! it returns `Ok(None)` until a whole frame is buffered, checks the header (magic, version,
//! opcode, `frame_bytes_max`) before reserving room for the body, and hands the body out as
//! `Bytes` shared with the read buffer (no copy).
//!
//! - [`ServerCodec`] decodes requests and encodes responses. A frame whose body does not
//!   decode (short field, bad UTF-8, value past a limit) is [`Incoming::Invalid`]: the server
//!   answers it with an ERROR for that request id and goes on, since the framing is intact.
//!   A bad header is a [`FrameError`]: the stream cannot be trusted past it.
//! - [`ClientCodec`] encodes requests and decodes responses.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::{FrameError, ProtocolError};
use crate::frame::{FrameHeader, HEADER_BYTES};
use crate::request::Request;
use crate::response::Response;

#[derive(Debug, Clone, Copy)]
enum DecodeState {
    Head,
    Body(FrameHeader),
}

/// Splits bytes into `(header, body)` frames. Shared by both codecs.
#[derive(Debug)]
pub struct FrameDecoder {
    state: DecodeState,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        FrameDecoder {
            state: DecodeState::Head,
        }
    }
}

impl FrameDecoder {
    pub fn decode_frame(
        &mut self,
        src: &mut BytesMut,
    ) -> Result<Option<(FrameHeader, Bytes)>, FrameError> {
        let header = match self.state {
            DecodeState::Head => {
                if src.len() < HEADER_BYTES {
                    src.reserve(HEADER_BYTES - src.len());
                    return Ok(None);
                }
                let header = FrameHeader::peek(src)?;
                let _ = src.split_to(HEADER_BYTES);
                self.state = DecodeState::Body(header);
                header
            }
            DecodeState::Body(header) => header,
        };
        let body_len = header.body_len as usize;
        if src.len() < body_len {
            // Safe to reserve: body_len was checked against frame_bytes_max in `peek`.
            src.reserve(body_len - src.len());
            return Ok(None);
        }
        self.state = DecodeState::Head;
        Ok(Some((header, src.split_to(body_len).freeze())))
    }
}

/// A request frame as the server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Request {
        request_id: u32,
        request: Request,
    },
    /// The frame was whole but its body was not a valid request: answer with this error.
    Invalid {
        request_id: u32,
        error: ProtocolError,
    },
}

/// Server side: decodes requests, encodes `(request_id, response)`.
#[derive(Debug, Default)]
pub struct ServerCodec {
    frames: FrameDecoder,
}

impl Decoder for ServerCodec {
    type Item = Incoming;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, FrameError> {
        let Some((header, body)) = self.frames.decode_frame(src)? else {
            return Ok(None);
        };
        if !header.opcode.is_request() {
            return Err(FrameError::UnknownOpcode(header.opcode as u8));
        }
        let request_id = header.request_id;
        Ok(Some(match Request::decode(&header, body) {
            Ok(request) => Incoming::Request {
                request_id,
                request,
            },
            Err(error) => Incoming::Invalid { request_id, error },
        }))
    }
}

impl Encoder<(u32, Response)> for ServerCodec {
    type Error = FrameError;

    fn encode(&mut self, item: (u32, Response), dst: &mut BytesMut) -> Result<(), FrameError> {
        item.1.encode(item.0, dst);
        Ok(())
    }
}

/// A response that could not be decoded: the server sent something this client does not
/// understand. The connection should be dropped.
#[derive(Debug, thiserror::Error)]
pub enum ClientDecodeError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("undecodable response to request {request_id}: {error}")]
    Body {
        request_id: u32,
        error: ProtocolError,
    },
}

impl From<std::io::Error> for ClientDecodeError {
    fn from(error: std::io::Error) -> Self {
        ClientDecodeError::Frame(FrameError::Io(error))
    }
}

/// Client side: encodes `(request_id, request)`, decodes `(request_id, response)`.
#[derive(Debug, Default)]
pub struct ClientCodec {
    frames: FrameDecoder,
}

impl Decoder for ClientCodec {
    type Item = (u32, Response);
    type Error = ClientDecodeError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<(u32, Response)>, ClientDecodeError> {
        let Some((header, body)) = self.frames.decode_frame(src)? else {
            return Ok(None);
        };
        let request_id = header.request_id;
        let response = Response::decode(&header, body)
            .map_err(|error| ClientDecodeError::Body { request_id, error })?;
        Ok(Some((request_id, response)))
    }
}

impl Encoder<(u32, &Request)> for ClientCodec {
    type Error = ClientDecodeError;

    fn encode(
        &mut self,
        item: (u32, &Request),
        dst: &mut BytesMut,
    ) -> Result<(), ClientDecodeError> {
        item.1.encode(item.0, dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
