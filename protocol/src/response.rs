//! Responses: what the server answers. Each carries the request id of the request it
//! answers; a connection may receive them in any order.
//!
//! | opcode | body |
//! |---|---|
//! | HELLO_OK 0x81 | `version u8, server_name str16, shard_count u16, frame_bytes_max u32, key_bytes_max u16, owner_bytes_max u16, ttl_ms_max u64, wait_ms_max u64` |
//! | PONG 0x82 | empty |
//! | ACQUIRED 0x83 | `token u64, ttl_ms u64`; flag 0x01 REENTERED |
//! | BUSY 0x84 | `token u64, remaining_ms u64, owner bytes16` (the current holder) |
//! | RELEASED 0x85 | `token u64` |
//! | EXTENDED 0x86 | `token u64, ttl_ms u64` |
//! | LOCK_INFO 0x87 | `token u64, remaining_ms u64, waiters u32, durability u8, owner bytes16` |
//! | NOT_HELD 0x88 | `last_token u64` (0: unknown) |
//! | NOT_OWNER 0x89 | `token u64, remaining_ms u64, owner bytes16` (the current holder) |
//! | INFO_REPLY 0x8A | `count u16`, then `count` times `name str16, value u64` |
//! | MEMBERS_REPLY 0x8B | `shard u16, count u16`, then `count` times `node u64` (see [`crate::members`]) |
//! | ERROR 0xFF | `code u16, class u8, message str16` |

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{ErrorClass, ErrorCode, ProtocolError};
use crate::frame::{finish_frame, start_frame, FrameHeader, Opcode, FLAG_ACQUIRED_REENTERED};
use crate::limits::ERROR_MESSAGE_BYTES_MAX;
use crate::members::MembersReply;
use crate::request::Durability;
use crate::wire::{put_bytes16, truncate_str, BodyReader};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelloOk {
    pub version: u8,
    pub server_name: String,
    pub shard_count: u16,
    pub frame_bytes_max: u32,
    pub key_bytes_max: u16,
    pub owner_bytes_max: u16,
    pub ttl_ms_max: u64,
    pub wait_ms_max: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Acquired {
    pub token: u64,
    pub ttl_ms: u64,
    /// The owner already held the lock: same token, lease reset.
    pub reentered: bool,
}

/// Someone else holds the lock (or, with IF_NOT_HELD, anyone does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Busy {
    pub token: u64,
    pub remaining_ms: u64,
    pub owner: Bytes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Released {
    pub token: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extended {
    pub token: u64,
    pub ttl_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockInfo {
    pub owner: Bytes,
    pub token: u64,
    pub remaining_ms: u64,
    pub waiters: u32,
    pub durability: Durability,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotHeld {
    /// The last token granted for this lock, or 0 when the server does not know it.
    pub last_token: u64,
}

/// Server statistics, as named counters and gauges.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct InfoReply {
    pub fields: Vec<(String, u64)>,
}

impl InfoReply {
    pub fn get(&self, name: &str) -> Option<u64> {
        self.fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| *value)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    /// `None` for a code this version does not know; `class` still says what to do.
    pub code: Option<ErrorCode>,
    pub raw_code: u16,
    pub class: ErrorClass,
    pub message: String,
}

impl From<ProtocolError> for ErrorReply {
    fn from(error: ProtocolError) -> ErrorReply {
        ErrorReply {
            code: Some(error.code),
            raw_code: error.code as u16,
            class: error.code.class(),
            message: error.message,
        }
    }
}

impl ErrorReply {
    /// The code's name, or `ERROR_<n>` for a code this version does not know.
    pub fn code_name(&self) -> String {
        match self.code {
            Some(code) => code.name().to_string(),
            None => format!("ERROR_{}", self.raw_code),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    HelloOk(HelloOk),
    Pong,
    Acquired(Acquired),
    Busy(Busy),
    Released(Released),
    Extended(Extended),
    LockInfo(LockInfo),
    NotHeld(NotHeld),
    NotOwner(Busy),
    Info(InfoReply),
    /// A shard's voters once a membership change is committed.
    Members(MembersReply),
    Error(ErrorReply),
}

impl From<ProtocolError> for Response {
    fn from(error: ProtocolError) -> Response {
        Response::Error(error.into())
    }
}

impl Response {
    pub fn opcode(&self) -> Opcode {
        match self {
            Response::HelloOk(_) => Opcode::HelloOk,
            Response::Pong => Opcode::Pong,
            Response::Acquired(_) => Opcode::Acquired,
            Response::Busy(_) => Opcode::Busy,
            Response::Released(_) => Opcode::Released,
            Response::Extended(_) => Opcode::Extended,
            Response::LockInfo(_) => Opcode::LockInfo,
            Response::NotHeld(_) => Opcode::NotHeld,
            Response::NotOwner(_) => Opcode::NotOwner,
            Response::Info(_) => Opcode::InfoReply,
            Response::Members(_) => Opcode::MembersReply,
            Response::Error(_) => Opcode::Error,
        }
    }

    /// Appends this response as one frame. Error messages are cut to
    /// `ERROR_MESSAGE_BYTES_MAX`; INFO fields must fit in one frame (the server sends a few
    /// dozen).
    pub fn encode(&self, request_id: u32, dst: &mut BytesMut) {
        let flags = match self {
            Response::Acquired(acquired) if acquired.reentered => FLAG_ACQUIRED_REENTERED,
            _ => 0,
        };
        let start = start_frame(dst, self.opcode(), flags, request_id);
        match self {
            Response::HelloOk(hello) => {
                dst.put_u8(hello.version);
                put_bytes16(dst, hello.server_name.as_bytes());
                dst.put_u16_le(hello.shard_count);
                dst.put_u32_le(hello.frame_bytes_max);
                dst.put_u16_le(hello.key_bytes_max);
                dst.put_u16_le(hello.owner_bytes_max);
                dst.put_u64_le(hello.ttl_ms_max);
                dst.put_u64_le(hello.wait_ms_max);
            }
            Response::Pong => {}
            Response::Acquired(acquired) => {
                dst.put_u64_le(acquired.token);
                dst.put_u64_le(acquired.ttl_ms);
            }
            Response::Busy(holder) | Response::NotOwner(holder) => {
                dst.put_u64_le(holder.token);
                dst.put_u64_le(holder.remaining_ms);
                put_bytes16(dst, &holder.owner);
            }
            Response::Released(released) => dst.put_u64_le(released.token),
            Response::Extended(extended) => {
                dst.put_u64_le(extended.token);
                dst.put_u64_le(extended.ttl_ms);
            }
            Response::LockInfo(info) => {
                dst.put_u64_le(info.token);
                dst.put_u64_le(info.remaining_ms);
                dst.put_u32_le(info.waiters);
                dst.put_u8(info.durability as u8);
                put_bytes16(dst, &info.owner);
            }
            Response::NotHeld(not_held) => dst.put_u64_le(not_held.last_token),
            Response::Info(info) => {
                dst.put_u16_le(u16::try_from(info.fields.len()).expect("too many INFO fields"));
                for (name, value) in &info.fields {
                    put_bytes16(dst, name.as_bytes());
                    dst.put_u64_le(*value);
                }
            }
            Response::Members(reply) => reply.encode_body(dst),
            Response::Error(error) => {
                dst.put_u16_le(error.raw_code);
                dst.put_u8(error.class as u8);
                put_bytes16(
                    dst,
                    truncate_str(&error.message, ERROR_MESSAGE_BYTES_MAX).as_bytes(),
                );
            }
        }
        finish_frame(dst, start);
    }

    /// Decodes the body of a response frame.
    pub fn decode(header: &FrameHeader, body: Bytes) -> Result<Response, ProtocolError> {
        let mut body = BodyReader::new(body);
        Ok(match header.opcode {
            Opcode::HelloOk => Response::HelloOk(HelloOk {
                version: body.u8("version")?,
                server_name: body.str16("server_name")?,
                shard_count: body.u16("shard_count")?,
                frame_bytes_max: body.u32("frame_bytes_max")?,
                key_bytes_max: body.u16("key_bytes_max")?,
                owner_bytes_max: body.u16("owner_bytes_max")?,
                ttl_ms_max: body.u64("ttl_ms_max")?,
                wait_ms_max: body.u64("wait_ms_max")?,
            }),
            Opcode::Pong => Response::Pong,
            Opcode::Acquired => Response::Acquired(Acquired {
                token: body.u64("token")?,
                ttl_ms: body.u64("ttl_ms")?,
                reentered: header.flags & FLAG_ACQUIRED_REENTERED != 0,
            }),
            Opcode::Busy => Response::Busy(decode_holder(&mut body)?),
            Opcode::NotOwner => Response::NotOwner(decode_holder(&mut body)?),
            Opcode::Released => Response::Released(Released {
                token: body.u64("token")?,
            }),
            Opcode::Extended => Response::Extended(Extended {
                token: body.u64("token")?,
                ttl_ms: body.u64("ttl_ms")?,
            }),
            Opcode::LockInfo => {
                let token = body.u64("token")?;
                let remaining_ms = body.u64("remaining_ms")?;
                let waiters = body.u32("waiters")?;
                let durability = body.u8("durability")?;
                Response::LockInfo(LockInfo {
                    token,
                    remaining_ms,
                    waiters,
                    durability: Durability::from_u8(durability).ok_or_else(|| {
                        ProtocolError::new(
                            ErrorCode::Malformed,
                            format!("unknown durability {durability}"),
                        )
                    })?,
                    owner: body.bytes16("owner")?,
                })
            }
            Opcode::NotHeld => Response::NotHeld(NotHeld {
                last_token: body.u64("last_token")?,
            }),
            Opcode::InfoReply => {
                let count = body.u16("count")?;
                let mut fields = Vec::with_capacity(usize::from(count));
                for _ in 0..count {
                    fields.push((body.str16("name")?, body.u64("value")?));
                }
                Response::Info(InfoReply { fields })
            }
            Opcode::MembersReply => Response::Members(MembersReply::decode_body(&mut body)?),
            Opcode::Error => {
                let raw_code = body.u16("code")?;
                let class = body.u8("class")?;
                Response::Error(ErrorReply {
                    code: ErrorCode::from_u16(raw_code),
                    raw_code,
                    // An unknown class is treated as a server error: the safest reading.
                    class: ErrorClass::from_u8(class).unwrap_or(ErrorClass::Server),
                    message: body.str16("message")?,
                })
            }
            request => {
                return Err(ProtocolError::new(
                    ErrorCode::UnknownOpcode,
                    format!("{} is a request opcode, not a response", request.name()),
                ))
            }
        })
    }
}

fn decode_holder(body: &mut BodyReader) -> Result<Busy, ProtocolError> {
    Ok(Busy {
        token: body.u64("token")?,
        remaining_ms: body.u64("remaining_ms")?,
        owner: body.bytes16("owner")?,
    })
}
