//! The binary frame: a fixed 12-byte header followed by a body.
//!
//! ```text
//! offset size field
//!      0    1 magic       0xCB: never printable ASCII, whitespace or telnet IAC (0xFF)
//!      1    1 version     1
//!      2    1 opcode      requests 0x01..=0x7F, responses 0x80..=0xFF
//!      3    1 flags       per opcode; unknown bits are ignored
//!      4    4 request_id  u32 little-endian, chosen by the client, echoed in the response
//!      8    4 body_len    u32 little-endian, bytes after the header
//! ```
//!
//! All integers are little-endian. `HEADER_BYTES + body_len` must not exceed
//! [`crate::limits::FRAME_BYTES_MAX`].

use bytes::{Buf, BufMut, BytesMut};

use crate::error::FrameError;
use crate::limits::FRAME_BYTES_MAX;

/// First byte of every binary frame.
pub const MAGIC: u8 = 0xCB;
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Bytes in a frame header.
pub const HEADER_BYTES: usize = 12;

/// LOCK flag: grant only when nobody holds the lock, this owner included. Without it a
/// LOCK by the current holder is an idempotent re-acquire (same token, lease reset).
pub const FLAG_LOCK_IF_NOT_HELD: u8 = 0x01;
/// ACQUIRED flag: the owner already held the lock; the token is unchanged.
pub const FLAG_ACQUIRED_REENTERED: u8 = 0x01;

macro_rules! opcodes {
    ($( $variant:ident = $value:literal, $name:literal; )*) => {
        /// The kind of message a frame carries.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum Opcode {
            $( $variant = $value, )*
        }

        impl Opcode {
            pub const ALL: &'static [Opcode] = &[$( Opcode::$variant, )*];

            pub fn from_u8(value: u8) -> Option<Opcode> {
                match value {
                    $( $value => Some(Opcode::$variant), )*
                    _ => None,
                }
            }

            pub fn name(self) -> &'static str {
                match self {
                    $( Opcode::$variant => $name, )*
                }
            }
        }
    };
}

opcodes! {
    Hello = 0x01, "HELLO";
    Ping = 0x02, "PING";
    Lock = 0x03, "LOCK";
    Unlock = 0x04, "UNLOCK";
    Extend = 0x05, "EXTEND";
    Get = 0x06, "GET";
    Info = 0x07, "INFO";
    Members = 0x08, "MEMBERS";
    HelloOk = 0x81, "HELLO_OK";
    Pong = 0x82, "PONG";
    Acquired = 0x83, "ACQUIRED";
    Busy = 0x84, "BUSY";
    Released = 0x85, "RELEASED";
    Extended = 0x86, "EXTENDED";
    LockInfo = 0x87, "LOCK_INFO";
    NotHeld = 0x88, "NOT_HELD";
    NotOwner = 0x89, "NOT_OWNER";
    InfoReply = 0x8A, "INFO_REPLY";
    MembersReply = 0x8B, "MEMBERS_REPLY";
    Error = 0xFF, "ERROR";
}

impl Opcode {
    pub fn is_request(self) -> bool {
        (self as u8) < 0x80
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub opcode: Opcode,
    pub flags: u8,
    pub request_id: u32,
    pub body_len: u32,
}

impl FrameHeader {
    /// Reads a header from the first [`HEADER_BYTES`] of `src` without consuming them.
    /// Checks magic, version, opcode and the frame size before any body is read.
    pub fn peek(src: &[u8]) -> Result<FrameHeader, FrameError> {
        debug_assert!(src.len() >= HEADER_BYTES);
        if src[0] != MAGIC {
            return Err(FrameError::BadMagic(src[0]));
        }
        if src[1] != VERSION {
            return Err(FrameError::UnsupportedVersion(src[1]));
        }
        let opcode = Opcode::from_u8(src[2]).ok_or(FrameError::UnknownOpcode(src[2]))?;
        let mut rest = &src[3..HEADER_BYTES];
        let flags = rest.get_u8();
        let request_id = rest.get_u32_le();
        let body_len = rest.get_u32_le();
        let length = HEADER_BYTES + body_len as usize;
        if length > FRAME_BYTES_MAX {
            return Err(FrameError::FrameTooLarge {
                length,
                max: FRAME_BYTES_MAX,
            });
        }
        Ok(FrameHeader {
            opcode,
            flags,
            request_id,
            body_len,
        })
    }
}

/// Writes a header whose body length is filled in later by [`finish_frame`].
/// Returns the offset of the frame in `dst`.
pub(crate) fn start_frame(dst: &mut BytesMut, opcode: Opcode, flags: u8, request_id: u32) -> usize {
    let start = dst.len();
    dst.reserve(HEADER_BYTES);
    dst.put_u8(MAGIC);
    dst.put_u8(VERSION);
    dst.put_u8(opcode as u8);
    dst.put_u8(flags);
    dst.put_u32_le(request_id);
    dst.put_u32_le(0);
    start
}

/// Fills in the body length of the frame started at `start`.
///
/// Panics if the frame is larger than [`FRAME_BYTES_MAX`]: every message is validated
/// against the limits that keep it below, so this is a programming error.
pub(crate) fn finish_frame(dst: &mut BytesMut, start: usize) {
    let length = dst.len() - start;
    assert!(
        length <= FRAME_BYTES_MAX,
        "encoded frame of {length} bytes exceeds FRAME_BYTES_MAX"
    );
    let body_len = (length - HEADER_BYTES) as u32;
    dst[start + 8..start + 12].copy_from_slice(&body_len.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_is_not_text() {
        assert!(!MAGIC.is_ascii());
        assert_ne!(MAGIC, 0xFF, "0xFF is telnet's IAC");
    }

    #[test]
    fn opcodes_round_trip_and_split_into_requests_and_responses() {
        for &opcode in Opcode::ALL {
            assert_eq!(Opcode::from_u8(opcode as u8), Some(opcode));
            let request = matches!(
                opcode,
                Opcode::Hello
                    | Opcode::Ping
                    | Opcode::Lock
                    | Opcode::Unlock
                    | Opcode::Extend
                    | Opcode::Get
                    | Opcode::Info
                    | Opcode::Members
            );
            assert_eq!(opcode.is_request(), request, "{}", opcode.name());
        }
    }

    #[test]
    fn header_checks_come_before_the_body() {
        let mut bytes = BytesMut::new();
        let start = start_frame(&mut bytes, Opcode::Ping, 0, 7);
        finish_frame(&mut bytes, start);
        let header = FrameHeader::peek(&bytes).unwrap();
        assert_eq!(header.request_id, 7);
        assert_eq!(header.body_len, 0);

        let mut bad = bytes.clone();
        bad[0] = b'L';
        assert!(matches!(
            FrameHeader::peek(&bad),
            Err(FrameError::BadMagic(b'L'))
        ));
        let mut bad = bytes.clone();
        bad[1] = 9;
        assert!(matches!(
            FrameHeader::peek(&bad),
            Err(FrameError::UnsupportedVersion(9))
        ));
        let mut bad = bytes.clone();
        bad[2] = 0x42;
        assert!(matches!(
            FrameHeader::peek(&bad),
            Err(FrameError::UnknownOpcode(0x42))
        ));
        let mut bad = bytes.clone();
        bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            FrameHeader::peek(&bad),
            Err(FrameError::FrameTooLarge { .. })
        ));
    }
}
