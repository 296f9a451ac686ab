//! MEMBERS: add a voter to one shard's Raft group, or remove one from it.
//!
//! Each shard of a cluster is its own Raft group, so the cluster's membership changes shard
//! by shard, on each shard's leader, one voter at a time (Raft dissertation §4.1). The leader
//! proposes the change and answers MEMBERS_REPLY, the shard's voters, once the change is
//! committed; a node that does not lead the shard answers NOT_LEADER, as for a keyed request.
//!
//! | opcode | body |
//! |---|---|
//! | MEMBERS 0x08 | `shard u16, action u8 (1 add, 2 remove), node u64`, then for add only `address str16` |
//! | MEMBERS_REPLY 0x8B | `shard u16, count u16`, then `count` times `node u64` (ascending, none 0) |
//!
//! A node address is `PEER_ADDR/CLIENT_ADDR`, as in `kahu-server --peers`: where the other
//! nodes reach the node (an IP address and port), then what clients are told to use when it
//! leads (`host:port`), e.g. `127.0.0.1:7004/127.0.0.1:8004`. The client address is what
//! NOT_LEADER hints carry (`leader=HOST:PORT`, ended by whitespace, `;` or `,`), so it may
//! contain none of those.

use std::net::SocketAddr;

use bytes::{BufMut, BytesMut};

use crate::error::{ErrorCode, ProtocolError};
use crate::limits::{NODE_ADDRESS_BYTES_MAX, VOTERS_MAX};
use crate::wire::{put_bytes16, BodyReader};

/// MEMBERS `action`: make a node a voter.
pub const ACTION_ADD: u8 = 1;
/// MEMBERS `action`: stop counting a node as a voter.
pub const ACTION_REMOVE: u8 = 2;

/// The example address that error messages show.
const ADDRESS_EXAMPLE: &str = "127.0.0.1:7004/127.0.0.1:8004";

/// A change of one voter of one shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Members {
    /// The shard whose Raft group changes; the server refuses one not below its
    /// `shard_count` (`BAD_MEMBERSHIP`).
    pub shard: u16,
    pub change: MemberChange,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberChange {
    /// Make `node` a voter, reached at `address` (`PEER_ADDR/CLIENT_ADDR`). The node must
    /// already be running (`kahu-server --join`) so that it can catch up.
    Add { node: u64, address: String },
    /// Stop counting `node` as a voter.
    Remove { node: u64 },
}

impl MemberChange {
    /// The node added or removed.
    pub fn node(&self) -> u64 {
        match self {
            MemberChange::Add { node, .. } | MemberChange::Remove { node } => *node,
        }
    }

    /// The `action` byte on the wire.
    pub fn action(&self) -> u8 {
        match self {
            MemberChange::Add { .. } => ACTION_ADD,
            MemberChange::Remove { .. } => ACTION_REMOVE,
        }
    }

    /// `add` or `remove`.
    pub fn name(&self) -> &'static str {
        match self {
            MemberChange::Add { .. } => "add",
            MemberChange::Remove { .. } => "remove",
        }
    }
}

impl Members {
    /// Checks the node id and, for an add, the address.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        validate_node(self.change.node())?;
        match &self.change {
            MemberChange::Add { address, .. } => validate_node_address(address),
            MemberChange::Remove { .. } => Ok(()),
        }
    }

    pub(crate) fn encode_body(&self, dst: &mut BytesMut) {
        dst.put_u16_le(self.shard);
        dst.put_u8(self.change.action());
        dst.put_u64_le(self.change.node());
        if let MemberChange::Add { address, .. } = &self.change {
            put_bytes16(dst, address.as_bytes());
        }
    }

    /// Reads the fields in order; the caller validates the result.
    pub(crate) fn decode_body(body: &mut BodyReader) -> Result<Members, ProtocolError> {
        let shard = body.u16("shard")?;
        let action = body.u8("action")?;
        if action != ACTION_ADD && action != ACTION_REMOVE {
            return Err(ProtocolError::new(
                ErrorCode::BadMembership,
                format!(
                    "action {action} is neither {ACTION_ADD} (add) nor {ACTION_REMOVE} (remove)"
                ),
            ));
        }
        let node = body.u64("node")?;
        let change = if action == ACTION_ADD {
            MemberChange::Add {
                node,
                address: body.str16("address")?,
            }
        } else {
            MemberChange::Remove { node }
        };
        Ok(Members { shard, change })
    }
}

/// A shard's voters once a membership change is committed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembersReply {
    pub shard: u16,
    /// Node ids, strictly ascending, none 0; at least one and at most [`VOTERS_MAX`] (a
    /// shard never loses its last voter).
    pub voters: Vec<u64>,
}

impl MembersReply {
    /// Checks the voters: 1 to [`VOTERS_MAX`] of them, strictly ascending, none 0, so that
    /// each set of voters has one encoding.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let malformed = |message: String| Err(ProtocolError::new(ErrorCode::Malformed, message));
        let count = self.voters.len();
        if count == 0 {
            return malformed(format!(
                "shard {} has no voters; a shard always has at least one",
                self.shard
            ));
        }
        if count > VOTERS_MAX {
            return malformed(format!("{count} voters; voters_max is {VOTERS_MAX}"));
        }
        if self.voters.contains(&0) {
            return malformed("voter 0: node id 0 is reserved".into());
        }
        if let Some(pair) = self.voters.windows(2).find(|pair| pair[0] >= pair[1]) {
            return malformed(format!(
                "voters are not strictly ascending: {} then {}",
                pair[0], pair[1]
            ));
        }
        Ok(())
    }

    /// Writes the body. Panics on more than [`VOTERS_MAX`] voters: the server's log never
    /// holds more, so this is a programming error.
    pub(crate) fn encode_body(&self, dst: &mut BytesMut) {
        debug_assert!(self.validate().is_ok(), "encoding invalid voters");
        assert!(
            self.voters.len() <= VOTERS_MAX,
            "{} voters exceed voters_max",
            self.voters.len()
        );
        dst.put_u16_le(self.shard);
        dst.put_u16_le(self.voters.len() as u16);
        for &voter in &self.voters {
            dst.put_u64_le(voter);
        }
    }

    /// Reads and validates the body; the count is checked before any allocation.
    pub(crate) fn decode_body(body: &mut BodyReader) -> Result<MembersReply, ProtocolError> {
        let shard = body.u16("shard")?;
        let count = usize::from(body.u16("count")?);
        if count > VOTERS_MAX {
            return Err(ProtocolError::new(
                ErrorCode::Malformed,
                format!("{count} voters; voters_max is {VOTERS_MAX}"),
            ));
        }
        let mut voters = Vec::with_capacity(count);
        for _ in 0..count {
            voters.push(body.u64("voter")?);
        }
        let reply = MembersReply { shard, voters };
        reply.validate()?;
        Ok(reply)
    }
}

/// A node id is never 0 (as in `kahu-server --node-id` and `--peers`).
pub fn validate_node(node: u64) -> Result<(), ProtocolError> {
    if node == 0 {
        return Err(ProtocolError::new(
            ErrorCode::BadMembership,
            "node id 0 is reserved; node ids are 1 or more",
        ));
    }
    Ok(())
}

/// Checks a node address, `PEER_ADDR/CLIENT_ADDR`: at most
/// [`NODE_ADDRESS_BYTES_MAX`] bytes, exactly one `/`, the peer address an IP address and
/// port (a [`SocketAddr`]), the client address `host:port` (a bracketed host for IPv6)
/// without whitespace, control characters, `,` or `;` (which would end a NOT_LEADER hint).
pub fn validate_node_address(address: &str) -> Result<(), ProtocolError> {
    let bad = |why: String| {
        Err(ProtocolError::new(
            ErrorCode::BadMembership,
            format!("{why}; expected PEER_ADDR/CLIENT_ADDR, e.g. {ADDRESS_EXAMPLE}"),
        ))
    };
    if address.len() > NODE_ADDRESS_BYTES_MAX {
        return bad(format!(
            "address is {} bytes; node_address_bytes_max is {NODE_ADDRESS_BYTES_MAX}",
            address.len()
        ));
    }
    let Some((peer, client)) = address.split_once('/') else {
        return bad(format!("address `{address}` has no `/`"));
    };
    if client.contains('/') {
        return bad(format!("address `{address}` has more than one `/`"));
    }
    if peer.parse::<SocketAddr>().is_err() {
        return bad(format!(
            "peer address `{peer}` is not IP:PORT (a numeric IP address, [brackets] for IPv6)"
        ));
    }
    if let Err(why) = check_client_address(client) {
        return bad(format!("client address `{client}` {why}"));
    }
    Ok(())
}

/// Why `client` is not a `host:port` that a NOT_LEADER hint can carry whole.
fn check_client_address(client: &str) -> Result<(), &'static str> {
    if client.is_empty() {
        return Err("is empty");
    }
    if client
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ',' || c == ';')
    {
        return Err("has whitespace, a control character, `,` or `;`");
    }
    let Some((host, port)) = client.rsplit_once(':') else {
        return Err("has no `:PORT`");
    };
    if host.is_empty() {
        return Err("has no host before `:PORT`");
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err("is an IPv6 address without [brackets]");
    }
    if port.parse::<u16>().is_err() {
        return Err("has a port that is not a number from 0 to 65535");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::frame::{FrameHeader, Opcode};
    use crate::request::Request;
    use crate::response::Response;

    fn header(opcode: Opcode, body: &[u8]) -> FrameHeader {
        FrameHeader {
            opcode,
            flags: 0,
            request_id: 1,
            body_len: body.len() as u32,
        }
    }

    /// A MEMBERS body: `shard`, `action`, `node`, then `address` as a str16 if given.
    fn members_body(shard: u16, action: u8, node: u64, address: Option<&[u8]>) -> Vec<u8> {
        let mut body = BytesMut::new();
        body.put_u16_le(shard);
        body.put_u8(action);
        body.put_u64_le(node);
        if let Some(address) = address {
            put_bytes16(&mut body, address);
        }
        body.to_vec()
    }

    fn decode_request(body: Vec<u8>) -> Result<Request, ProtocolError> {
        Request::decode(&header(Opcode::Members, &body), Bytes::from(body))
    }

    /// A MEMBERS_REPLY body with `count` and then `voters`.
    fn reply_body(shard: u16, count: u16, voters: &[u64]) -> Vec<u8> {
        let mut body = BytesMut::new();
        body.put_u16_le(shard);
        body.put_u16_le(count);
        for voter in voters {
            body.put_u64_le(*voter);
        }
        body.to_vec()
    }

    fn decode_reply(body: Vec<u8>) -> Result<Response, ProtocolError> {
        Response::decode(&header(Opcode::MembersReply, &body), Bytes::from(body))
    }

    fn refusal(result: Result<Request, ProtocolError>) -> (ErrorCode, String) {
        let error = result.expect_err("refused");
        (error.code, error.message)
    }

    #[test]
    fn add_and_remove_decode_from_their_bodies() {
        let add = members_body(3, ACTION_ADD, 4, Some(b"127.0.0.1:7004/127.0.0.1:8004"));
        assert_eq!(
            decode_request(add),
            Ok(Request::Members(Members {
                shard: 3,
                change: MemberChange::Add {
                    node: 4,
                    address: "127.0.0.1:7004/127.0.0.1:8004".into(),
                },
            }))
        );
        let remove = members_body(0, ACTION_REMOVE, 3, None);
        assert_eq!(
            decode_request(remove),
            Ok(Request::Members(Members {
                shard: 0,
                change: MemberChange::Remove { node: 3 },
            }))
        );
    }

    #[test]
    fn node_zero_and_unknown_actions_are_bad_membership() {
        let (code, message) = refusal(decode_request(members_body(0, ACTION_REMOVE, 0, None)));
        assert_eq!(code, ErrorCode::BadMembership);
        assert!(message.contains("node id 0 is reserved"), "{message}");

        let zero_add = members_body(0, ACTION_ADD, 0, Some(b"127.0.0.1:7004/a:1"));
        assert_eq!(
            refusal(decode_request(zero_add)).0,
            ErrorCode::BadMembership
        );

        for action in [0, 3, 0xff] {
            let (code, message) = refusal(decode_request(members_body(0, action, 4, None)));
            assert_eq!(code, ErrorCode::BadMembership, "action {action}");
            assert_eq!(
                message,
                format!("action {action} is neither 1 (add) nor 2 (remove)")
            );
        }
    }

    #[test]
    fn short_bodies_and_non_utf8_addresses_are_malformed() {
        let add = members_body(0, ACTION_ADD, 4, Some(b"127.0.0.1:7004/a:1"));
        for cut in 0..add.len() {
            let (code, _) = refusal(decode_request(add[..cut].to_vec()));
            assert_eq!(code, ErrorCode::Malformed, "cut at {cut}");
        }
        let (code, message) = refusal(decode_request(members_body(
            0,
            ACTION_ADD,
            4,
            Some(b"\xff/a:1"),
        )));
        assert_eq!(code, ErrorCode::Malformed);
        assert!(
            message.contains("`address` is not valid UTF-8"),
            "{message}"
        );
    }

    #[test]
    fn every_bad_address_is_refused_with_its_reason() {
        let long_host = format!("127.0.0.1:7004/{}:8004", "h".repeat(NODE_ADDRESS_BYTES_MAX));
        let cases: [(&str, &str); 14] = [
            ("", "has no `/`"),
            ("127.0.0.1:7004", "has no `/`"),
            ("127.0.0.1:7004/127.0.0.1:8004/x", "more than one `/`"),
            ("/127.0.0.1:8004", "peer address `` is not IP:PORT"),
            ("localhost:7004/127.0.0.1:8004", "is not IP:PORT"),
            ("127.0.0.1/127.0.0.1:8004", "is not IP:PORT"),
            ("127.0.0.1:7004/", "client address `` is empty"),
            ("127.0.0.1:7004/db 2:8004", "whitespace"),
            ("127.0.0.1:7004/a:1,b:2", "`,`"),
            ("127.0.0.1:7004/a:1;b", "`;`"),
            ("127.0.0.1:7004/db-2", "has no `:PORT`"),
            ("127.0.0.1:7004/:8004", "has no host"),
            ("127.0.0.1:7004/::1:8004", "without [brackets]"),
            ("127.0.0.1:7004/db-2:http", "port that is not a number"),
        ];
        for (address, why) in cases {
            let members = Members {
                shard: 0,
                change: MemberChange::Add {
                    node: 4,
                    address: address.into(),
                },
            };
            let error = members.validate().expect_err(address);
            assert_eq!(error.code, ErrorCode::BadMembership, "{address}");
            assert!(error.message.contains(why), "{address}: {}", error.message);
            assert!(
                error.message.ends_with(ADDRESS_EXAMPLE),
                "{address}: {}",
                error.message
            );
            let body = members_body(0, ACTION_ADD, 4, Some(address.as_bytes()));
            assert_eq!(refusal(decode_request(body)).0, ErrorCode::BadMembership);
        }
        let (code, message) = refusal(decode_request(members_body(
            0,
            ACTION_ADD,
            4,
            Some(long_host.as_bytes()),
        )));
        assert_eq!(code, ErrorCode::BadMembership);
        assert!(
            message.starts_with(&format!(
                "address is {} bytes; node_address_bytes_max is 255",
                long_host.len()
            )),
            "{message}"
        );
    }

    #[test]
    fn good_addresses_pass() {
        for address in [
            "127.0.0.1:7004/127.0.0.1:8004",
            "10.0.0.4:7004/db-4.internal:8004",
            "[::1]:7004/[::1]:8004",
            "[fe80::1]:7004/db-4:8004",
        ] {
            assert_eq!(validate_node_address(address), Ok(()), "{address}");
        }
        let longest = format!(
            "127.0.0.1:7004/{}:8004",
            "h".repeat(NODE_ADDRESS_BYTES_MAX - "127.0.0.1:7004/:8004".len())
        );
        assert_eq!(longest.len(), NODE_ADDRESS_BYTES_MAX);
        assert_eq!(validate_node_address(&longest), Ok(()));
    }

    #[test]
    fn a_reply_decodes_its_voters() {
        assert_eq!(
            decode_reply(reply_body(2, 4, &[1, 2, 3, 4])),
            Ok(Response::Members(MembersReply {
                shard: 2,
                voters: vec![1, 2, 3, 4],
            }))
        );
        let most: Vec<u64> = (1..=VOTERS_MAX as u64).collect();
        let decoded = decode_reply(reply_body(0, VOTERS_MAX as u16, &most));
        assert!(matches!(decoded, Ok(Response::Members(reply)) if reply.voters == most));
    }

    #[test]
    fn replies_with_bad_voters_are_refused() {
        let cases: [(Vec<u8>, &str); 6] = [
            (reply_body(0, 0, &[]), "no voters"),
            (
                reply_body(0, VOTERS_MAX as u16 + 1, &[]),
                "256 voters; voters_max is 255",
            ),
            (reply_body(0, 2, &[0, 1]), "node id 0 is reserved"),
            (
                reply_body(0, 3, &[1, 3, 2]),
                "not strictly ascending: 3 then 2",
            ),
            (
                reply_body(0, 2, &[2, 2]),
                "not strictly ascending: 2 then 2",
            ),
            (reply_body(0, 3, &[1, 2]), "ends inside field `voter`"),
        ];
        for (body, why) in cases {
            let error = decode_reply(body).expect_err(why);
            assert_eq!(error.code, ErrorCode::Malformed, "{why}");
            assert!(error.message.contains(why), "{why}: {}", error.message);
        }
    }
}
