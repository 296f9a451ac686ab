//! A cursor over one frame body that never reads past its end and names what it could
//! not read. Byte strings come out as slices of the body (`Bytes`), not copies, so a
//! snapshot's data shares the decoder's read buffer.

use bytes::{Buf, Bytes};

use super::PeerError;
use crate::wal::record::EntryDecodeError;

pub(super) struct Reader {
    body: Bytes,
    position: usize,
    /// The frame kind, for error messages.
    kind: &'static str,
}

impl Reader {
    pub(super) fn new(body: Bytes, kind: &'static str) -> Reader {
        Reader {
            body,
            position: 0,
            kind,
        }
    }

    pub(super) fn remaining(&self) -> usize {
        self.body.len() - self.position
    }

    pub(super) fn malformed(&self, detail: impl Into<String>) -> PeerError {
        PeerError::Malformed {
            kind: self.kind,
            offset: self.position,
            detail: detail.into(),
        }
    }

    fn take(&mut self, length: usize, field: &'static str) -> Result<&[u8], PeerError> {
        if self.remaining() < length {
            return Err(self.malformed(format!("body ends inside field `{field}`")));
        }
        let start = self.position;
        self.position += length;
        Ok(&self.body[start..self.position])
    }

    pub(super) fn u8(&mut self, field: &'static str) -> Result<u8, PeerError> {
        Ok(self.take(1, field)?[0])
    }

    pub(super) fn u16(&mut self, field: &'static str) -> Result<u16, PeerError> {
        Ok(self.take(2, field)?.get_u16_le())
    }

    pub(super) fn u32(&mut self, field: &'static str) -> Result<u32, PeerError> {
        Ok(self.take(4, field)?.get_u32_le())
    }

    pub(super) fn u64(&mut self, field: &'static str) -> Result<u64, PeerError> {
        Ok(self.take(8, field)?.get_u64_le())
    }

    pub(super) fn u128(&mut self, field: &'static str) -> Result<u128, PeerError> {
        Ok(self.take(16, field)?.get_u128_le())
    }

    /// A `u8` that must be 0 (false) or 1 (true).
    pub(super) fn bool(&mut self, field: &'static str) -> Result<bool, PeerError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            other => {
                self.position -= 1;
                Err(self.malformed(format!("field `{field}` is {other}, not 0 or 1")))
            }
        }
    }

    /// `length` bytes as a slice of the body, without copying.
    pub(super) fn bytes(&mut self, length: usize, field: &'static str) -> Result<Bytes, PeerError> {
        self.take(length, field)?;
        Ok(self.body.slice(self.position - length..self.position))
    }

    /// A value in the write-ahead log's encoding (an entry, a membership), read by that
    /// encoding's own decoder; `what` names it in an error, which is placed at its start.
    pub(super) fn decode<T>(
        &mut self,
        what: &'static str,
        decode: impl FnOnce(&mut &[u8]) -> Result<T, EntryDecodeError>,
    ) -> Result<T, PeerError> {
        let mut rest = &self.body[self.position..];
        let before = rest.len();
        match decode(&mut rest) {
            Ok(value) => {
                self.position += before - rest.len();
                Ok(value)
            }
            Err(error) => Err(self.malformed(format!("{what}: {error}"))),
        }
    }

    /// Checks that a count read from the body could fit in the bytes left, each item taking
    /// at least `item_bytes_min`, before anything is reserved for the items.
    pub(super) fn check_count(
        &self,
        count: usize,
        item_bytes_min: usize,
        field: &'static str,
    ) -> Result<(), PeerError> {
        debug_assert!(item_bytes_min > 0);
        if count > self.remaining() / item_bytes_min {
            return Err(self.malformed(format!(
                "field `{field}` is {count}, more than the {} bytes left can hold",
                self.remaining()
            )));
        }
        Ok(())
    }

    /// Ends a body that must be read exactly.
    pub(super) fn finish(&self) -> Result<(), PeerError> {
        if self.remaining() != 0 {
            return Err(self.malformed(format!("{} bytes after the last field", self.remaining())));
        }
        Ok(())
    }
}
