//! Error codes shared by both encodings, and the decoder's own errors.
//!
//! Every code has a class that tells a client what to do with it:
//! - `Client`: the request is wrong; sending it again will fail again;
//! - `Server`: the server failed; the request may or may not have been applied;
//! - `Retryable`: the request was not applied; the same request may succeed later;
//! - `NotLeader`: this node cannot serve the key; ask the node named in the message.

use std::fmt;

/// What a client should do with an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ErrorClass {
    Client = 1,
    Server = 2,
    Retryable = 3,
    NotLeader = 4,
}

impl ErrorClass {
    pub fn from_u8(value: u8) -> Option<ErrorClass> {
        Some(match value {
            1 => ErrorClass::Client,
            2 => ErrorClass::Server,
            3 => ErrorClass::Retryable,
            4 => ErrorClass::NotLeader,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::Client => "client",
            ErrorClass::Server => "server",
            ErrorClass::Retryable => "retryable",
            ErrorClass::NotLeader => "not-leader",
        }
    }
}

macro_rules! error_codes {
    ($( $variant:ident = $value:literal, $class:ident, $name:literal; )*) => {
        /// An error code on the wire (u16). The table in PROTOCOL.md lists the same values.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum ErrorCode {
            $( $variant = $value, )*
        }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$( ErrorCode::$variant, )*];

            pub fn from_u16(value: u16) -> Option<ErrorCode> {
                match value {
                    $( $value => Some(ErrorCode::$variant), )*
                    _ => None,
                }
            }

            pub fn class(self) -> ErrorClass {
                match self {
                    $( ErrorCode::$variant => ErrorClass::$class, )*
                }
            }

            /// The upper-case name used in PROTOCOL.md and in text-mode replies.
            pub fn name(self) -> &'static str {
                match self {
                    $( ErrorCode::$variant => $name, )*
                }
            }
        }
    };
}

error_codes! {
    BadMagic = 1, Client, "BAD_MAGIC";
    UnsupportedVersion = 2, Client, "UNSUPPORTED_VERSION";
    UnknownOpcode = 3, Client, "UNKNOWN_OPCODE";
    FrameTooLarge = 4, Client, "FRAME_TOO_LARGE";
    Malformed = 5, Client, "MALFORMED";
    KeyEmpty = 6, Client, "KEY_EMPTY";
    KeyTooLong = 7, Client, "KEY_TOO_LONG";
    OwnerEmpty = 8, Client, "OWNER_EMPTY";
    OwnerTooLong = 9, Client, "OWNER_TOO_LONG";
    TtlOutOfRange = 10, Client, "TTL_OUT_OF_RANGE";
    WaitOutOfRange = 11, Client, "WAIT_OUT_OF_RANGE";
    UnknownCommand = 12, Client, "UNKNOWN_COMMAND";
    Unsupported = 13, Client, "UNSUPPORTED";
    LineTooLong = 14, Client, "LINE_TOO_LONG";
    BadMembership = 15, Client, "BAD_MEMBERSHIP";
    TooManyWaiters = 100, Retryable, "TOO_MANY_WAITERS";
    TooManyConnections = 101, Retryable, "TOO_MANY_CONNECTIONS";
    ShuttingDown = 102, Retryable, "SHUTTING_DOWN";
    StorageUnavailable = 103, Retryable, "STORAGE_UNAVAILABLE";
    MembershipChangePending = 104, Retryable, "MEMBERSHIP_CHANGE_PENDING";
    Internal = 200, Server, "INTERNAL";
    StorageFailed = 201, Server, "STORAGE_FAILED";
    NotLeader = 300, NotLeader, "NOT_LEADER";
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A refused request: a code and a message for a person. Produced by validation, by the
/// text parser and by the server; sent as an ERROR frame or an `ERR` line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ProtocolError {
        ProtocolError {
            code,
            message: message.into(),
        }
    }
}

/// Errors that end a binary connection: after one of these the byte stream cannot be trusted
/// to be at a frame boundary. The server answers with an ERROR frame (request id 0) and closes.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("bad magic byte 0x{0:02x}: not a kahu binary frame")]
    BadMagic(u8),
    #[error("unsupported protocol version {0}; this peer speaks version 1")]
    UnsupportedVersion(u8),
    #[error("unknown opcode 0x{0:02x}")]
    UnknownOpcode(u8),
    #[error("frame of {length} bytes is larger than frame_bytes_max ({max})")]
    FrameTooLarge { length: usize, max: usize },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// The code to send before closing, or `None` when the connection itself failed.
    pub fn to_protocol_error(&self) -> Option<ProtocolError> {
        let code = match self {
            FrameError::BadMagic(_) => ErrorCode::BadMagic,
            FrameError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            FrameError::UnknownOpcode(_) => ErrorCode::UnknownOpcode,
            FrameError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            FrameError::Io(_) => return None,
        };
        Some(ProtocolError::new(code, self.to_string()))
    }
}

// The UnsupportedVersion message names the version; keep it true when VERSION changes.
const _: () = assert!(crate::frame::VERSION == 1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_and_has_a_distinct_name() {
        let mut names = std::collections::HashSet::new();
        for &code in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u16(code as u16), Some(code));
            assert!(names.insert(code.name()), "duplicate name {}", code.name());
            assert_eq!(ErrorClass::from_u8(code.class() as u8), Some(code.class()));
        }
        assert_eq!(ErrorCode::from_u16(0), None);
    }
}
