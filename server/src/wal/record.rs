//! Log records and their byte format.
//!
//! ```text
//! record      = len u32 | crc32c u32 | type u8 | payload      (len = 1 + payload bytes)
//! type 1 ENTRY      payload = index u64 | term u64 | kind u8 | fields
//! type 2 HARD_STATE payload = term u64 | vote u64 | commit u64   (read, no longer written)
//! kind 1 GRANT      token u64 | ttl_ms u64 | key bytes16 | owner bytes16
//! kind 2 RELEASE    token u64 | key bytes16
//! kind 3 EXTEND     token u64 | ttl_ms u64 | key bytes16
//! kind 4 NOOP       (nothing: a new Raft leader's first entry)
//! kind 6 MEMBERSHIP membership   (the shard's voters from this entry on)
//! kind 5 MEMBERSHIP n u16 | n x node id u64   (read only: written before voters had
//!                   addresses; the same as kind 6 with no addresses)
//! membership  = n u16 | n x node id u64 | m u16 | m x (node id u64 | address str16)
//!               voters strictly ascending, none 0, n <= voters_max; addresses (of voters
//!               added at run time, `PEER_ADDR/CLIENT_ADDR`) strictly ascending by node,
//!               each a voter, UTF-8 of 1..=node_address_bytes_max bytes: one encoding each
//! str16       = length u16 | UTF-8 bytes
//! bytes16     = length u16 | bytes
//! ```
//!
//! All integers little-endian. The checksum is CRC-32C over `type | payload`. Decoding
//! checks the checksum first, then that the payload is exactly as long as its fields.
//!
//! The peer protocol (`crate::peer`) carries entries and memberships in these same bytes:
//! an entry is the ENTRY payload (`encode_entry_payload`), a snapshot's voters a
//! membership (`encode_membership`). The encoders write to any [`BufMut`], so the log's
//! `Vec<u8>` and a peer frame's `BytesMut` share one piece of code, and the decoders say
//! why bytes are not an entry ([`EntryDecodeError`]) for the peer's error messages.

use bytes::{Buf, BufMut, Bytes};

use crate::raft::{EntryKind, Membership};

/// Bytes before the payload: `len`, `crc32c`, `type`.
pub const RECORD_HEADER_BYTES: usize = 9;
/// The largest record accepted on decode (keys and owners are bounded far below).
pub const RECORD_BYTES_MAX: usize = 64 * 1024;

const TYPE_ENTRY: u8 = 1;
const TYPE_HARD_STATE: u8 = 2;
const KIND_GRANT: u8 = 1;
const KIND_RELEASE: u8 = 2;
const KIND_EXTEND: u8 = 3;
const KIND_NOOP: u8 = 4;
const KIND_MEMBERSHIP_VOTERS: u8 = 5;
const KIND_MEMBERSHIP: u8 = 6;
/// Voters in one membership entry at most.
pub const VOTERS_MAX: usize = 255;
/// The longest address a membership records for a voter (`PEER_ADDR/CLIENT_ADDR`).
pub const NODE_ADDRESS_BYTES_MAX: usize = 255;

/// A decision about a persistent lock, applied in log order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `owner` holds `key` with `token` for `ttl_ms` from when this is applied.
    Grant {
        key: Bytes,
        owner: Bytes,
        token: u64,
        ttl_ms: u64,
    },
    /// The grant with `token` ended by release.
    Release { key: Bytes, token: u64 },
    /// The grant with `token` now runs `ttl_ms` from when this is applied.
    Extend { key: Bytes, token: u64, ttl_ms: u64 },
}

impl Command {
    pub fn key(&self) -> &Bytes {
        match self {
            Command::Grant { key, .. }
            | Command::Release { key, .. }
            | Command::Extend { key, .. } => key,
        }
    }
}

impl crate::raft::Payload for Command {
    /// Exactly the bytes of the command's encoding, kind byte included.
    fn size_bytes(&self) -> usize {
        match self {
            Command::Grant { key, owner, .. } => 1 + 8 + 8 + 2 + key.len() + 2 + owner.len(),
            Command::Release { key, .. } => 1 + 8 + 2 + key.len(),
            Command::Extend { key, .. } => 1 + 8 + 8 + 2 + key.len(),
        }
    }
}

/// A log entry: the shard's Raft log holds lock commands, leaders' no-ops and membership
/// changes.
pub type Entry = crate::raft::Entry<Command>;

/// The hard state record of earlier versions (now kept in `raft_state.rs`).
pub use crate::raft::HardState;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    Entry(Entry),
    HardState(HardState),
}

/// Why the bytes at some offset are not a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// `len` is 0: the zero fill after the last record.
    End,
    /// Fewer bytes than the record claims: a torn write.
    Short,
    /// The checksum does not match: a torn or damaged record.
    Checksum,
    /// The checksum matches but the payload does not parse.
    Malformed,
}

/// Why bytes are not an entry payload, an entry kind or a membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryDecodeError {
    #[error("the bytes end inside a field")]
    Short,
    #[error("unknown entry kind {0}")]
    UnknownKind(u8),
    #[error("{0} voters exceed voters_max ({VOTERS_MAX})")]
    TooManyVoters(usize),
    #[error("voter {0} is 0 or not above the voter before it")]
    VoterOrder(u64),
    #[error("the address of node {0} is not above the one before it, names no voter, or is not 1..={NODE_ADDRESS_BYTES_MAX} bytes of UTF-8")]
    BadAddress(u64),
}

impl Record {
    /// Appends the encoded record to `dst`.
    pub fn encode(&self, dst: &mut Vec<u8>) {
        let start = dst.len();
        dst.put_u32_le(0);
        dst.put_u32_le(0);
        match self {
            Record::Entry(entry) => {
                dst.put_u8(TYPE_ENTRY);
                encode_entry_payload(entry, dst);
            }
            Record::HardState(state) => {
                dst.put_u8(TYPE_HARD_STATE);
                dst.put_u64_le(state.term);
                dst.put_u64_le(state.vote);
                dst.put_u64_le(state.commit);
            }
        }
        seal(dst, start);
    }

    /// Decodes the record at the start of `src`, returning it and its encoded size.
    pub fn decode(src: &[u8]) -> Result<(Record, usize), DecodeError> {
        if src.len() < 8 {
            // Too short even for a header: zero fill if all zero, else torn.
            return Err(if src.iter().all(|&byte| byte == 0) {
                DecodeError::End
            } else {
                DecodeError::Short
            });
        }
        let mut header = &src[..8];
        let len = header.get_u32_le() as usize;
        let crc = header.get_u32_le();
        if len == 0 {
            return Err(if crc == 0 {
                DecodeError::End
            } else {
                DecodeError::Checksum
            });
        }
        if len + 8 > RECORD_BYTES_MAX {
            return Err(DecodeError::Checksum);
        }
        let Some(body) = src.get(8..8 + len) else {
            return Err(DecodeError::Short);
        };
        if crc32c::crc32c(body) != crc {
            return Err(DecodeError::Checksum);
        }
        let record = decode_body(body).ok_or(DecodeError::Malformed)?;
        Ok((record, 8 + len))
    }
}

/// Fills in `len` and `crc32c` of the record that starts at `start`.
fn seal(dst: &mut [u8], start: usize) {
    let len = dst.len() - start - 8;
    assert!(len + 8 <= RECORD_BYTES_MAX, "record of {len} bytes");
    let crc = crc32c::crc32c(&dst[start + 8..]);
    dst[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    dst[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Appends `entry` as one record to `dst` (without cloning it into a [`Record`]).
pub fn encode_entry(entry: &Entry, dst: &mut Vec<u8>) {
    let start = dst.len();
    dst.put_u32_le(0);
    dst.put_u32_le(0);
    dst.put_u8(TYPE_ENTRY);
    encode_entry_payload(entry, dst);
    seal(dst, start);
}

/// Appends `index u64 | term u64 | kind u8 | fields`: the ENTRY payload, and an entry of
/// the peer protocol.
pub(crate) fn encode_entry_payload(entry: &Entry, dst: &mut impl BufMut) {
    dst.put_u64_le(entry.index);
    dst.put_u64_le(entry.term);
    encode_entry_kind(&entry.kind, dst);
}

/// Exactly the bytes [`encode_entry_payload`] appends for `entry`.
pub(crate) fn entry_payload_bytes(entry: &Entry) -> usize {
    let kind_bytes = match &entry.kind {
        EntryKind::Command(command) => crate::raft::Payload::size_bytes(command),
        EntryKind::Noop => 1,
        EntryKind::Membership(membership) => 1 + membership_bytes(membership),
    };
    16 + kind_bytes
}

/// Decodes an ENTRY payload from the front of `src` and advances `src` past it; on error
/// `src` is left as it was.
pub(crate) fn decode_entry_payload(src: &mut &[u8]) -> Result<Entry, EntryDecodeError> {
    let mut cursor = Cursor(src);
    let index = cursor.u64().ok_or(EntryDecodeError::Short)?;
    let term = cursor.u64().ok_or(EntryDecodeError::Short)?;
    let kind = decode_entry_kind(&mut cursor.0)?;
    *src = cursor.0;
    Ok(Entry { index, term, kind })
}

/// Appends `kind u8 | fields` of an entry.
fn encode_entry_kind(kind: &EntryKind<Command>, dst: &mut impl BufMut) {
    match kind {
        EntryKind::Command(command) => encode_command(command, dst),
        EntryKind::Noop => dst.put_u8(KIND_NOOP),
        EntryKind::Membership(membership) => {
            dst.put_u8(KIND_MEMBERSHIP);
            encode_membership(membership, dst);
        }
    }
}

/// Decodes `kind u8 | fields` from the front of `src` and advances past it.
fn decode_entry_kind(src: &mut &[u8]) -> Result<EntryKind<Command>, EntryDecodeError> {
    let kind = *src.first().ok_or(EntryDecodeError::Short)?;
    match kind {
        KIND_NOOP => {
            *src = &src[1..];
            Ok(EntryKind::Noop)
        }
        KIND_MEMBERSHIP => {
            let mut rest = &src[1..];
            let membership = decode_membership(&mut rest)?;
            *src = rest;
            Ok(EntryKind::Membership(membership))
        }
        KIND_MEMBERSHIP_VOTERS => {
            let mut rest = &src[1..];
            let membership = decode_voters_only(&mut rest)?;
            *src = rest;
            Ok(EntryKind::Membership(membership))
        }
        KIND_GRANT | KIND_RELEASE | KIND_EXTEND => decode_command(src)
            .map(EntryKind::Command)
            .ok_or(EntryDecodeError::Short),
        other => Err(EntryDecodeError::UnknownKind(other)),
    }
}

/// Appends a membership: its voters in ascending order, then the addresses it records.
pub(crate) fn encode_membership(membership: &Membership, dst: &mut impl BufMut) {
    let count = membership.voters.len();
    assert!(count <= VOTERS_MAX, "{count} voters exceed voters_max");
    dst.put_u16_le(count as u16);
    for &voter in &membership.voters {
        dst.put_u64_le(voter);
    }
    dst.put_u16_le(membership.addresses.len() as u16);
    for (&node, address) in &membership.addresses {
        assert!(
            membership.voters.contains(&node) && valid_address(address),
            "the address of node {node} must be a voter's and 1..={NODE_ADDRESS_BYTES_MAX} bytes"
        );
        dst.put_u64_le(node);
        dst.put_u16_le(address.len() as u16);
        dst.put_slice(address.as_bytes());
    }
}

/// Exactly the bytes [`encode_membership`] appends for `membership`.
pub(crate) fn membership_bytes(membership: &Membership) -> usize {
    2 + 8 * membership.voters.len()
        + 2
        + membership
            .addresses
            .values()
            .map(|address| 8 + 2 + address.len())
            .sum::<usize>()
}

/// Whether `address` may be stored: 1..=[`NODE_ADDRESS_BYTES_MAX`] bytes.
pub(crate) fn valid_address(address: &str) -> bool {
    (1..=NODE_ADDRESS_BYTES_MAX).contains(&address.len())
}

/// Decodes a membership from the front of `src` and advances past it. Voters and addresses
/// must be strictly ascending, voters none 0 and every address a voter's, so each
/// membership has one encoding and [`Membership::new`]'s assertion cannot fire on bytes
/// read from a disk or a peer.
pub(crate) fn decode_membership(src: &mut &[u8]) -> Result<Membership, EntryDecodeError> {
    let mut cursor = Cursor(src);
    let voters = decode_voters(&mut cursor)?;
    let count = cursor.u16().ok_or(EntryDecodeError::Short)? as usize;
    if count > voters.len() {
        return Err(EntryDecodeError::TooManyVoters(count));
    }
    let mut addresses = std::collections::BTreeMap::new();
    let mut previous = 0;
    for _ in 0..count {
        let node = cursor.u64().ok_or(EntryDecodeError::Short)?;
        let bytes = cursor.bytes16().ok_or(EntryDecodeError::Short)?;
        let address = String::from_utf8(bytes.to_vec())
            .ok()
            .filter(|address| node > previous && voters.contains(&node) && valid_address(address))
            .ok_or(EntryDecodeError::BadAddress(node))?;
        addresses.insert(node, address);
        previous = node;
    }
    *src = cursor.0;
    Ok(Membership { voters, addresses })
}

/// Decodes a membership of voters only (`n u16 | n x node id u64`, as log kind 5 and
/// KAHUSNP2 snapshots hold it) from the front of `src` and advances past it.
pub(crate) fn decode_voters_only(src: &mut &[u8]) -> Result<Membership, EntryDecodeError> {
    let mut cursor = Cursor(src);
    let voters = decode_voters(&mut cursor)?;
    *src = cursor.0;
    Ok(Membership {
        voters,
        addresses: Default::default(),
    })
}

/// Decodes `n u16 | n x node id u64`, strictly ascending and none 0.
fn decode_voters(
    cursor: &mut Cursor<'_>,
) -> Result<std::collections::BTreeSet<u64>, EntryDecodeError> {
    let count = cursor.u16().ok_or(EntryDecodeError::Short)? as usize;
    if count > VOTERS_MAX {
        return Err(EntryDecodeError::TooManyVoters(count));
    }
    let mut voters = std::collections::BTreeSet::new();
    let mut previous = 0;
    for _ in 0..count {
        let voter = cursor.u64().ok_or(EntryDecodeError::Short)?;
        if voter <= previous {
            return Err(EntryDecodeError::VoterOrder(voter));
        }
        voters.insert(voter);
        previous = voter;
    }
    Ok(voters)
}

/// Appends the encoding of `command` (`kind u8 | fields`, above) to `dst`.
fn encode_command(command: &Command, dst: &mut impl BufMut) {
    match command {
        Command::Grant {
            key,
            owner,
            token,
            ttl_ms,
        } => {
            dst.put_u8(KIND_GRANT);
            dst.put_u64_le(*token);
            dst.put_u64_le(*ttl_ms);
            put_bytes16(dst, key);
            put_bytes16(dst, owner);
        }
        Command::Release { key, token } => {
            dst.put_u8(KIND_RELEASE);
            dst.put_u64_le(*token);
            put_bytes16(dst, key);
        }
        Command::Extend { key, token, ttl_ms } => {
            dst.put_u8(KIND_EXTEND);
            dst.put_u64_le(*token);
            dst.put_u64_le(*ttl_ms);
            put_bytes16(dst, key);
        }
    }
}

fn put_bytes16(dst: &mut impl BufMut, bytes: &[u8]) {
    dst.put_u16_le(u16::try_from(bytes.len()).expect("bytes16 field longer than u16::MAX"));
    dst.put_slice(bytes);
}

/// A cursor over a record body that fails softly: `None` on any shortfall.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn u8(&mut self) -> Option<u8> {
        (self.0.remaining() >= 1).then(|| self.0.get_u8())
    }
    fn u16(&mut self) -> Option<u16> {
        (self.0.remaining() >= 2).then(|| self.0.get_u16_le())
    }
    fn u64(&mut self) -> Option<u64> {
        (self.0.remaining() >= 8).then(|| self.0.get_u64_le())
    }
    fn bytes16(&mut self) -> Option<Bytes> {
        if self.0.remaining() < 2 {
            return None;
        }
        let length = self.0.get_u16_le() as usize;
        if self.0.remaining() < length {
            return None;
        }
        let (field, rest) = self.0.split_at(length);
        self.0 = rest;
        Some(Bytes::copy_from_slice(field))
    }
    fn finished(&self) -> bool {
        self.0.is_empty()
    }
}

/// Decodes one command (`kind u8 | fields`) from the front of `src` and advances `src`
/// past it; `None` if `src` does not start with a whole command.
fn decode_command(src: &mut &[u8]) -> Option<Command> {
    let mut cursor = Cursor(src);
    let command = match cursor.u8()? {
        KIND_GRANT => Command::Grant {
            token: cursor.u64()?,
            ttl_ms: cursor.u64()?,
            key: cursor.bytes16()?,
            owner: cursor.bytes16()?,
        },
        KIND_RELEASE => Command::Release {
            token: cursor.u64()?,
            key: cursor.bytes16()?,
        },
        KIND_EXTEND => Command::Extend {
            token: cursor.u64()?,
            ttl_ms: cursor.u64()?,
            key: cursor.bytes16()?,
        },
        _ => return None,
    };
    *src = cursor.0;
    Some(command)
}

fn decode_body(body: &[u8]) -> Option<Record> {
    let mut cursor = Cursor(body);
    let record = match cursor.u8()? {
        TYPE_ENTRY => Record::Entry(decode_entry_payload(&mut cursor.0).ok()?),
        TYPE_HARD_STATE => Record::HardState(HardState {
            term: cursor.u64()?,
            vote: cursor.u64()?,
            commit: cursor.u64()?,
        }),
        _ => return None,
    };
    cursor.finished().then_some(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn command_strategy() -> impl Strategy<Value = Command> {
        let bytes = || proptest::collection::vec(any::<u8>(), 1..64).prop_map(Bytes::from);
        prop_oneof![
            (bytes(), bytes(), any::<u64>(), any::<u64>()).prop_map(
                |(key, owner, token, ttl_ms)| {
                    Command::Grant {
                        key,
                        owner,
                        token,
                        ttl_ms,
                    }
                }
            ),
            (bytes(), any::<u64>()).prop_map(|(key, token)| Command::Release { key, token }),
            (bytes(), any::<u64>(), any::<u64>())
                .prop_map(|(key, token, ttl_ms)| Command::Extend { key, token, ttl_ms }),
        ]
    }

    fn kind_strategy() -> impl Strategy<Value = EntryKind<Command>> {
        prop_oneof![
            command_strategy().prop_map(EntryKind::Command),
            Just(EntryKind::Noop),
            (
                proptest::collection::btree_set(1..u64::MAX, 1..8),
                proptest::collection::vec("[a-z0-9.:/]{1,40}", 0..8)
            )
                .prop_map(|(voters, addresses)| {
                    // Addresses for some of the voters.
                    let addresses = voters.iter().copied().zip(addresses).collect();
                    EntryKind::Membership(Membership { voters, addresses })
                }),
        ]
    }

    fn record_strategy() -> impl Strategy<Value = Record> {
        prop_oneof![
            (any::<u64>(), any::<u64>(), kind_strategy())
                .prop_map(|(index, term, kind)| Record::Entry(Entry { index, term, kind })),
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(term, vote, commit)| {
                Record::HardState(HardState { term, vote, commit })
            }),
        ]
    }

    proptest! {
        #[test]
        fn every_record_round_trips(records in proptest::collection::vec(record_strategy(), 1..10)) {
            let mut bytes = Vec::new();
            for record in &records {
                record.encode(&mut bytes);
            }
            bytes.extend_from_slice(&[0; 16]); // the zero fill
            let mut offset = 0;
            for record in &records {
                let (decoded, size) = Record::decode(&bytes[offset..]).unwrap();
                prop_assert_eq!(&decoded, record);
                offset += size;
            }
            prop_assert_eq!(Record::decode(&bytes[offset..]), Err(DecodeError::End));
        }

        #[test]
        fn every_truncation_point_is_detected(record in record_strategy()) {
            let mut bytes = Vec::new();
            record.encode(&mut bytes);
            for cut in 1..bytes.len() {
                let mut torn = bytes[..cut].to_vec();
                torn.resize(bytes.len() + 8, 0); // the rest was never written: zeros
                if torn[..bytes.len()] == bytes[..] {
                    continue; // the record ended in zeros anyway: nothing was torn
                }
                let result = Record::decode(&torn);
                prop_assert!(result.is_err(), "cut at {cut} decoded as {result:?}");
            }
        }

        #[test]
        fn every_entry_payload_round_trips_in_the_bytes_it_claims(index in any::<u64>(), term in any::<u64>(), kind in kind_strategy()) {
            let entry = Entry { index, term, kind };
            let mut bytes = Vec::new();
            encode_entry_payload(&entry, &mut bytes);
            prop_assert_eq!(entry_payload_bytes(&entry), bytes.len());
            let mut rest = &bytes[..];
            prop_assert_eq!(decode_entry_payload(&mut rest), Ok(entry));
            prop_assert!(rest.is_empty());
        }

        #[test]
        fn every_flipped_bit_is_detected(record in record_strategy(), bit in any::<prop::sample::Index>()) {
            let mut bytes = Vec::new();
            record.encode(&mut bytes);
            let bit = bit.index(bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            bytes.extend_from_slice(&[0; 8]);
            match Record::decode(&bytes) {
                Err(_) => {}
                Ok((decoded, _)) => prop_assert!(false, "flipped bit {bit} decoded as {decoded:?}"),
            }
        }
    }

    /// The bytes of a membership with these voters, in this order.
    fn voters_bytes(voters: &[u64]) -> Vec<u8> {
        membership_bytes_of(voters, &[])
    }

    /// The bytes of a membership with these voters and addresses, in this order.
    fn membership_bytes_of(voters: &[u64], addresses: &[(u64, &str)]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.put_u16_le(voters.len() as u16);
        for &voter in voters {
            bytes.put_u64_le(voter);
        }
        bytes.put_u16_le(addresses.len() as u16);
        for &(node, address) in addresses {
            bytes.put_u64_le(node);
            bytes.put_u16_le(address.len() as u16);
            bytes.put_slice(address.as_bytes());
        }
        bytes
    }

    #[test]
    fn a_membership_address_has_one_encoding_and_names_a_voter() {
        let address = "127.0.0.1:7004/127.0.0.1:8004";
        let bytes = membership_bytes_of(&[1, 4], &[(4, address)]);
        let membership = decode_membership(&mut &bytes[..]).unwrap();
        assert_eq!(membership.addresses[&4], address);
        let mut encoded = Vec::new();
        encode_membership(&membership, &mut encoded);
        assert_eq!(encoded, bytes);

        let long = "x".repeat(NODE_ADDRESS_BYTES_MAX + 1);
        for (addresses, refused) in [
            (&[(2, address)][..], 2),               // not a voter
            (&[(4, address), (1, address)][..], 1), // out of order
            (&[(4, "")][..], 4),                    // empty
            (&[(4, long.as_str())][..], 4),         // too long
        ] {
            let bytes = membership_bytes_of(&[1, 4], addresses);
            assert_eq!(
                decode_membership(&mut &bytes[..]),
                Err(EntryDecodeError::BadAddress(refused)),
                "{addresses:?}"
            );
        }
        let mut bytes = membership_bytes_of(&[1, 4], &[(4, "ab")]);
        let at = bytes.len() - 1;
        bytes[at] = 0xFF; // not UTF-8
        assert_eq!(
            decode_membership(&mut &bytes[..]),
            Err(EntryDecodeError::BadAddress(4))
        );
    }

    #[test]
    fn a_membership_logged_before_addresses_still_reads() {
        let mut payload = Vec::new();
        payload.extend_from_slice(&1u64.to_le_bytes()); // index
        payload.extend_from_slice(&1u64.to_le_bytes()); // term
        payload.push(KIND_MEMBERSHIP_VOTERS);
        payload.put_u16_le(2);
        payload.extend_from_slice(&1u64.to_le_bytes());
        payload.extend_from_slice(&3u64.to_le_bytes());
        let entry = decode_entry_payload(&mut &payload[..]).unwrap();
        assert_eq!(entry.kind, EntryKind::Membership(Membership::new([1, 3])));
    }

    #[test]
    fn a_membership_has_one_encoding() {
        // Phase 1: ascending voters decode, and encode back to the same bytes.
        let bytes = voters_bytes(&[1, 2, 7]);
        let mut rest = &bytes[..];
        let membership = decode_membership(&mut rest).unwrap();
        assert_eq!(membership, Membership::new([1, 2, 7]));
        assert!(rest.is_empty());
        let mut encoded = Vec::new();
        encode_membership(&membership, &mut encoded);
        assert_eq!(encoded, bytes);

        // Phase 2: any other order, a repeat or node 0 is refused, and nothing is consumed.
        for (voters, refused) in [
            (&[2, 1][..], 1),
            (&[1, 1][..], 1),
            (&[0, 3][..], 0),
            (&[3, 5, 4][..], 4),
        ] {
            let bytes = voters_bytes(voters);
            let mut rest = &bytes[..];
            assert_eq!(
                decode_membership(&mut rest),
                Err(EntryDecodeError::VoterOrder(refused))
            );
            assert_eq!(rest.len(), bytes.len());
        }

        // Phase 3: more than voters_max, and a short membership.
        let voters: Vec<u64> = (1..=VOTERS_MAX as u64 + 1).collect();
        let bytes = voters_bytes(&voters);
        assert_eq!(
            decode_membership(&mut &bytes[..]),
            Err(EntryDecodeError::TooManyVoters(VOTERS_MAX + 1))
        );
        let bytes = voters_bytes(&[1, 2]);
        assert_eq!(
            decode_membership(&mut &bytes[..bytes.len() - 1]),
            Err(EntryDecodeError::Short)
        );
    }

    #[test]
    fn a_logged_membership_out_of_order_is_malformed() {
        let mut body = vec![TYPE_ENTRY];
        body.extend_from_slice(&1u64.to_le_bytes()); // index
        body.extend_from_slice(&1u64.to_le_bytes()); // term
        body.push(KIND_MEMBERSHIP);
        body.extend_from_slice(&voters_bytes(&[3, 2]));
        let mut record = Vec::new();
        record.put_u32_le(body.len() as u32);
        record.put_u32_le(crc32c::crc32c(&body));
        record.extend_from_slice(&body);
        assert_eq!(Record::decode(&record), Err(DecodeError::Malformed));
    }

    #[test]
    fn the_format_is_stable() {
        let mut bytes = Vec::new();
        Record::Entry(Entry {
            index: 1,
            term: 2,
            kind: EntryKind::Command(Command::Release {
                key: Bytes::from_static(b"k"),
                token: 3,
            }),
        })
        .encode(&mut bytes);
        let expected_body: Vec<u8> = [
            &[1u8][..],          // ENTRY
            &1u64.to_le_bytes(), // index
            &2u64.to_le_bytes(), // term
            &[2],                // RELEASE
            &3u64.to_le_bytes(), // token
            &[1, 0, b'k'],       // key
        ]
        .concat();
        assert_eq!(&bytes[..4], &(expected_body.len() as u32).to_le_bytes());
        assert_eq!(&bytes[4..8], &crc32c::crc32c(&expected_body).to_le_bytes());
        assert_eq!(&bytes[8..], &expected_body[..]);
    }
}
