//! kahu's wire protocol, shared by the server, the client and the benchmark.
//!
//! Two encodings of one command set reach the same port:
//! - **binary**: length-prefixed frames ([`frame`]) carrying typed messages ([`request`],
//!   [`response`]), decoded and encoded by tokio-util codecs ([`codec`]);
//! - **text**: one command per line for people at `nc` or `telnet` ([`text`]), parsed into the
//!   same [`Request`] type.
//!
//! The server tells them apart by the first byte of a connection: binary frames start with
//! [`frame::MAGIC`], which is never printable ASCII, never whitespace and never telnet's IAC.
//!
//! Everything here works on byte buffers; no sockets. Every limit is a named constant in
//! [`limits`], checked when a message is decoded, so the server never sees an invalid request.
//! `PROTOCOL.md` at the repository root is the specification; this crate is its reference
//! implementation.

pub mod codec;
pub mod error;
pub mod frame;
pub mod limits;
pub mod members;
pub mod request;
pub mod response;
pub mod routing;
pub mod text;
mod wire;

pub use codec::{ClientCodec, Incoming, ServerCodec};
pub use error::{ErrorClass, ErrorCode, FrameError, ProtocolError};
pub use frame::{FrameHeader, Opcode, MAGIC, VERSION};
pub use members::{MemberChange, Members, MembersReply};
pub use request::{Durability, Extend, Get, Hello, Lock, Request, Unlock};
pub use response::{
    Acquired, Busy, ErrorReply, Extended, HelloOk, InfoReply, LockInfo, NotHeld, Released, Response,
};
