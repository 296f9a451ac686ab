//! Requests: what a client asks. One type for both encodings; decoding validates every
//! field against [`crate::limits`], so a `Request` that exists is a valid request.
//!
//! Bodies (see `frame` for the header and `wire` for the field types):
//!
//! | opcode | body |
//! |---|---|
//! | HELLO 0x01 | `version_min u8, version_max u8, client_name str16` |
//! | PING 0x02 | empty |
//! | LOCK 0x03 | `ttl_ms u64, wait_ms u64, durability u8, key bytes16, owner bytes16`; flag 0x01 IF_NOT_HELD |
//! | UNLOCK 0x04 | `key bytes16, owner bytes16, token u64` (token 0: any grant of this owner) |
//! | EXTEND 0x05 | `ttl_ms u64, key bytes16, owner bytes16, token u64` (token 0: any) |
//! | GET 0x06 | `key bytes16` |
//! | INFO 0x07 | empty |
//! | MEMBERS 0x08 | `shard u16, action u8, node u64`, then for add only `address str16` (see [`crate::members`]) |
//!
//! The trailing `token` of UNLOCK and EXTEND may be absent (read as 0), so a frame without
//! it is still valid.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{ErrorCode, ProtocolError};
use crate::frame::{finish_frame, start_frame, FrameHeader, Opcode, FLAG_LOCK_IF_NOT_HELD};
use crate::limits::{
    CLIENT_NAME_BYTES_MAX, KEY_BYTES_MAX, OWNER_BYTES_MAX, TTL_MS_MAX, TTL_MS_MIN, WAIT_MS_MAX,
};
use crate::members::Members;
use crate::wire::{put_bytes16, BodyReader};

/// Where a lock lives. `Persistent` locks (the default) are written to the log and synced
/// before the reply; `Ephemeral` locks live in memory only, are fastest, and are lost if
/// the node dies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Durability {
    Ephemeral = 0,
    #[default]
    Persistent = 1,
}

impl Durability {
    pub fn from_u8(value: u8) -> Option<Durability> {
        match value {
            0 => Some(Durability::Ephemeral),
            1 => Some(Durability::Persistent),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Durability::Ephemeral => "ephemeral",
            Durability::Persistent => "persistent",
        }
    }

    /// Parses `ephemeral` or `persistent`, any case.
    pub fn parse(text: &str) -> Option<Durability> {
        if text.eq_ignore_ascii_case("ephemeral") {
            Some(Durability::Ephemeral)
        } else if text.eq_ignore_ascii_case("persistent") {
            Some(Durability::Persistent)
        } else {
            None
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version_min: u8,
    pub version_max: u8,
    pub client_name: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lock {
    pub key: Bytes,
    pub owner: Bytes,
    pub ttl_ms: u64,
    /// How long to queue on the server when another owner holds the lock; 0: answer BUSY now.
    pub wait_ms: u64,
    pub durability: Durability,
    /// Refuse (BUSY) even when this owner already holds the lock.
    pub if_not_held: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unlock {
    pub key: Bytes,
    pub owner: Bytes,
    /// Release only the grant with this fencing token. A guard sends it, so a guard whose
    /// lease ended cannot release a newer grant to the same owner. `None`: any grant of
    /// this owner.
    pub token: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extend {
    pub key: Bytes,
    pub owner: Bytes,
    pub ttl_ms: u64,
    /// Extend only the grant with this fencing token; `None`: any grant of this owner.
    pub token: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Get {
    pub key: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Hello(Hello),
    Ping,
    Lock(Lock),
    Unlock(Unlock),
    Extend(Extend),
    Get(Get),
    Info,
    /// A change of one voter of one shard's Raft group; see [`crate::members`].
    Members(Members),
}

impl Request {
    pub fn opcode(&self) -> Opcode {
        match self {
            Request::Hello(_) => Opcode::Hello,
            Request::Ping => Opcode::Ping,
            Request::Lock(_) => Opcode::Lock,
            Request::Unlock(_) => Opcode::Unlock,
            Request::Extend(_) => Opcode::Extend,
            Request::Get(_) => Opcode::Get,
            Request::Info => Opcode::Info,
            Request::Members(_) => Opcode::Members,
        }
    }

    /// The key this request is about, for routing to a shard.
    pub fn key(&self) -> Option<&Bytes> {
        match self {
            Request::Lock(lock) => Some(&lock.key),
            Request::Unlock(unlock) => Some(&unlock.key),
            Request::Extend(extend) => Some(&extend.key),
            Request::Get(get) => Some(&get.key),
            Request::Hello(_) | Request::Ping | Request::Info | Request::Members(_) => None,
        }
    }

    /// The shard a request names itself (MEMBERS), for routing to that shard's leader.
    /// Keyed requests name none: their shard is their key's
    /// ([`crate::routing::shard_of`]).
    pub fn shard(&self) -> Option<u16> {
        match self {
            Request::Members(members) => Some(members.shard),
            _ => None,
        }
    }

    /// Checks every field against its limit.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        match self {
            Request::Hello(hello) => check_length(
                hello.client_name.len(),
                CLIENT_NAME_BYTES_MAX,
                ErrorCode::Malformed,
                "client_name",
                "client_name_bytes_max",
            ),
            Request::Ping | Request::Info => Ok(()),
            Request::Lock(lock) => {
                validate_key(&lock.key)?;
                validate_owner(&lock.owner)?;
                validate_ttl(lock.ttl_ms)?;
                validate_wait(lock.wait_ms)
            }
            Request::Unlock(unlock) => {
                validate_key(&unlock.key)?;
                validate_owner(&unlock.owner)?;
                validate_token(unlock.token)
            }
            Request::Extend(extend) => {
                validate_key(&extend.key)?;
                validate_owner(&extend.owner)?;
                validate_ttl(extend.ttl_ms)?;
                validate_token(extend.token)
            }
            Request::Get(get) => validate_key(&get.key),
            Request::Members(members) => members.validate(),
        }
    }

    /// Appends this request as one frame. Panics if the request is not valid (callers
    /// validate user input first; see [`Request::validate`]).
    pub fn encode(&self, request_id: u32, dst: &mut BytesMut) {
        debug_assert!(self.validate().is_ok(), "encoding an invalid request");
        let flags = match self {
            Request::Lock(lock) if lock.if_not_held => FLAG_LOCK_IF_NOT_HELD,
            _ => 0,
        };
        let start = start_frame(dst, self.opcode(), flags, request_id);
        match self {
            Request::Hello(hello) => {
                dst.put_u8(hello.version_min);
                dst.put_u8(hello.version_max);
                put_bytes16(dst, hello.client_name.as_bytes());
            }
            Request::Ping | Request::Info => {}
            Request::Lock(lock) => {
                dst.put_u64_le(lock.ttl_ms);
                dst.put_u64_le(lock.wait_ms);
                dst.put_u8(lock.durability as u8);
                put_bytes16(dst, &lock.key);
                put_bytes16(dst, &lock.owner);
            }
            Request::Unlock(unlock) => {
                put_bytes16(dst, &unlock.key);
                put_bytes16(dst, &unlock.owner);
                dst.put_u64_le(unlock.token.unwrap_or(0));
            }
            Request::Extend(extend) => {
                dst.put_u64_le(extend.ttl_ms);
                put_bytes16(dst, &extend.key);
                put_bytes16(dst, &extend.owner);
                dst.put_u64_le(extend.token.unwrap_or(0));
            }
            Request::Get(get) => put_bytes16(dst, &get.key),
            Request::Members(members) => members.encode_body(dst),
        }
        finish_frame(dst, start);
    }

    /// Decodes and validates the body of a request frame.
    pub fn decode(header: &FrameHeader, body: Bytes) -> Result<Request, ProtocolError> {
        let mut body = BodyReader::new(body);
        let request = match header.opcode {
            Opcode::Hello => Request::Hello(Hello {
                version_min: body.u8("version_min")?,
                version_max: body.u8("version_max")?,
                client_name: body.str16("client_name")?,
            }),
            Opcode::Ping => Request::Ping,
            Opcode::Info => Request::Info,
            Opcode::Lock => {
                let ttl_ms = body.u64("ttl_ms")?;
                let wait_ms = body.u64("wait_ms")?;
                let durability = body.u8("durability")?;
                let durability = Durability::from_u8(durability).ok_or_else(|| {
                    ProtocolError::new(
                        ErrorCode::Malformed,
                        format!(
                            "durability {durability} is neither 0 (ephemeral) nor 1 (persistent)"
                        ),
                    )
                })?;
                Request::Lock(Lock {
                    ttl_ms,
                    wait_ms,
                    durability,
                    key: body.bytes16("key")?,
                    owner: body.bytes16("owner")?,
                    if_not_held: header.flags & FLAG_LOCK_IF_NOT_HELD != 0,
                })
            }
            Opcode::Unlock => Request::Unlock(Unlock {
                key: body.bytes16("key")?,
                owner: body.bytes16("owner")?,
                token: body.optional_token("token")?,
            }),
            Opcode::Extend => Request::Extend(Extend {
                ttl_ms: body.u64("ttl_ms")?,
                key: body.bytes16("key")?,
                owner: body.bytes16("owner")?,
                token: body.optional_token("token")?,
            }),
            Opcode::Get => Request::Get(Get {
                key: body.bytes16("key")?,
            }),
            Opcode::Members => Request::Members(Members::decode_body(&mut body)?),
            response => {
                return Err(ProtocolError::new(
                    ErrorCode::UnknownOpcode,
                    format!("{} is a response opcode, not a request", response.name()),
                ))
            }
        };
        request.validate()?;
        Ok(request)
    }
}

fn check_length(
    length: usize,
    max: usize,
    code: ErrorCode,
    field: &str,
    limit: &str,
) -> Result<(), ProtocolError> {
    if length > max {
        return Err(ProtocolError::new(
            code,
            format!("{field} is {length} bytes; {limit} is {max}"),
        ));
    }
    Ok(())
}

pub fn validate_key(key: &[u8]) -> Result<(), ProtocolError> {
    if key.is_empty() {
        return Err(ProtocolError::new(ErrorCode::KeyEmpty, "key is empty"));
    }
    check_length(
        key.len(),
        KEY_BYTES_MAX,
        ErrorCode::KeyTooLong,
        "key",
        "key_bytes_max",
    )
}

pub fn validate_owner(owner: &[u8]) -> Result<(), ProtocolError> {
    if owner.is_empty() {
        return Err(ProtocolError::new(ErrorCode::OwnerEmpty, "owner is empty"));
    }
    check_length(
        owner.len(),
        OWNER_BYTES_MAX,
        ErrorCode::OwnerTooLong,
        "owner",
        "owner_bytes_max",
    )
}

/// A token to match is never 0 (0 on the wire means "any").
pub fn validate_token(token: Option<u64>) -> Result<(), ProtocolError> {
    if token == Some(0) {
        return Err(ProtocolError::new(
            ErrorCode::Malformed,
            "token 0 is never granted; leave the token out to match any grant",
        ));
    }
    Ok(())
}

pub fn validate_ttl(ttl_ms: u64) -> Result<(), ProtocolError> {
    if !(TTL_MS_MIN..=TTL_MS_MAX).contains(&ttl_ms) {
        return Err(ProtocolError::new(
            ErrorCode::TtlOutOfRange,
            format!(
                "ttl_ms {ttl_ms} is outside {TTL_MS_MIN}..={TTL_MS_MAX} (ttl_ms_max is 7 days)"
            ),
        ));
    }
    Ok(())
}

pub fn validate_wait(wait_ms: u64) -> Result<(), ProtocolError> {
    if wait_ms > WAIT_MS_MAX {
        return Err(ProtocolError::new(
            ErrorCode::WaitOutOfRange,
            format!("wait_ms {wait_ms} is larger than wait_ms_max ({WAIT_MS_MAX}, one hour)"),
        ));
    }
    Ok(())
}
