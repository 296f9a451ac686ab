//! Primitive field encodings inside a frame body.
//!
//! - `u8`, `u16`, `u32`, `u64`: little-endian;
//! - `bytes16`: a u16 length, then that many bytes;
//! - `str16`: a `bytes16` holding UTF-8.
//!
//! A decoder reads the fields it knows and ignores any bytes after them, so a later minor
//! revision can append fields without breaking older peers.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{ErrorCode, ProtocolError};

/// Reads fields from a frame body. Each read fails with `MALFORMED` when the body is short.
#[derive(Debug)]
pub(crate) struct BodyReader {
    body: Bytes,
}

impl BodyReader {
    pub(crate) fn new(body: Bytes) -> BodyReader {
        BodyReader { body }
    }

    fn need(&self, bytes: usize, field: &str) -> Result<(), ProtocolError> {
        if self.body.remaining() < bytes {
            return Err(ProtocolError::new(
                ErrorCode::Malformed,
                format!("frame body ends inside field `{field}`"),
            ));
        }
        Ok(())
    }

    pub(crate) fn u8(&mut self, field: &str) -> Result<u8, ProtocolError> {
        self.need(1, field)?;
        Ok(self.body.get_u8())
    }

    pub(crate) fn u16(&mut self, field: &str) -> Result<u16, ProtocolError> {
        self.need(2, field)?;
        Ok(self.body.get_u16_le())
    }

    pub(crate) fn u32(&mut self, field: &str) -> Result<u32, ProtocolError> {
        self.need(4, field)?;
        Ok(self.body.get_u32_le())
    }

    pub(crate) fn u64(&mut self, field: &str) -> Result<u64, ProtocolError> {
        self.need(8, field)?;
        Ok(self.body.get_u64_le())
    }

    /// A trailing u64 fencing token that older senders leave out: absent or 0 is `None`.
    pub(crate) fn optional_token(&mut self, field: &str) -> Result<Option<u64>, ProtocolError> {
        if !self.body.has_remaining() {
            return Ok(None);
        }
        Ok(Some(self.u64(field)?).filter(|&token| token != 0))
    }

    /// A `bytes16` field, shared with the frame buffer (no copy).
    pub(crate) fn bytes16(&mut self, field: &str) -> Result<Bytes, ProtocolError> {
        let length = self.u16(field)? as usize;
        self.need(length, field)?;
        Ok(self.body.split_to(length))
    }

    pub(crate) fn str16(&mut self, field: &str) -> Result<String, ProtocolError> {
        let bytes = self.bytes16(field)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| {
            ProtocolError::new(
                ErrorCode::Malformed,
                format!("field `{field}` is not valid UTF-8"),
            )
        })
    }
}

/// Writes a `bytes16` field. The caller has checked the length against its limit.
pub(crate) fn put_bytes16(dst: &mut BytesMut, value: &[u8]) {
    let length = u16::try_from(value.len()).expect("bytes16 field longer than u16::MAX");
    dst.put_u16_le(length);
    dst.put_slice(value);
}

/// Cuts `text` to at most `max` bytes at a character boundary.
pub(crate) fn truncate_str(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
