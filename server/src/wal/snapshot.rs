//! Snapshots of a shard's persistent locks, so the log before them can be deleted.
//!
//! ```text
//! file       = magic "KAHUSNP3" | last_index u64 | last_term u64 | membership | count u64
//!              | count x lock | crc32c u32
//! membership = the Raft membership at last_index, as a log record writes it
//!              (`record.rs`: voters, then the addresses of voters added at run time)
//! lock       = token u64 | ttl_ms u64 | key bytes16 | owner bytes16
//! ```
//!
//! Older files are read too: "KAHUSNP2" has only the voters (`n u16 | n x node id u64`),
//! "KAHUSNP1" (before replication) not even those, read as an empty membership (the
//! founding one applies).
//!
//! Little-endian; the checksum (CRC-32C) covers every byte before it. `ttl_ms` is the lease
//! left when the snapshot was taken; whoever loads it counts that in full from the load,
//! so a lease never ends early. The file is written atomically (temporary file, fsync,
//! rename, fsync of the directory) and named `snapshot-<last_index>.snap`.

use bytes::{Buf, BufMut, Bytes};

use super::record::{decode_membership, decode_voters_only, encode_membership};
use crate::raft::Membership;

const MAGIC: &[u8; 8] = b"KAHUSNP3";
const MAGIC_V2: &[u8; 8] = b"KAHUSNP2";
const MAGIC_V1: &[u8; 8] = b"KAHUSNP1";

/// One held persistent lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotLock {
    pub key: Bytes,
    pub owner: Bytes,
    pub token: u64,
    pub ttl_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// The index of the last log entry the snapshot includes.
    pub last_index: u64,
    pub last_term: u64,
    /// The shard's Raft membership as of `last_index` (empty in files written before
    /// replication).
    pub membership: Membership,
    pub locks: Vec<SnapshotLock>,
}

impl Snapshot {
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(40 + self.locks.len() * 64);
        bytes.put_slice(MAGIC);
        bytes.put_u64_le(self.last_index);
        bytes.put_u64_le(self.last_term);
        encode_membership(&self.membership, &mut bytes);
        bytes.put_u64_le(self.locks.len() as u64);
        for lock in &self.locks {
            bytes.put_u64_le(lock.token);
            bytes.put_u64_le(lock.ttl_ms);
            bytes.put_u16_le(lock.key.len() as u16);
            bytes.put_slice(&lock.key);
            bytes.put_u16_le(lock.owner.len() as u16);
            bytes.put_slice(&lock.owner);
        }
        let crc = crc32c::crc32c(&bytes);
        bytes.put_u32_le(crc);
        bytes
    }

    /// Decodes a snapshot file; `None` if it is damaged in any way.
    pub fn decode(bytes: &[u8]) -> Option<Snapshot> {
        let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
        if crc32c::crc32c(body) != (&crc[..]).get_u32_le() {
            return None;
        }
        let mut body = body;
        if body.len() < 32 {
            return None;
        }
        let magic: [u8; 8] = body[..8].try_into().expect("8 bytes");
        body.advance(8);
        let last_index = body.get_u64_le();
        let last_term = body.get_u64_le();
        let membership = match &magic {
            MAGIC => decode_membership(&mut body).ok()?,
            MAGIC_V2 => decode_voters_only(&mut body).ok()?,
            MAGIC_V1 => Membership::default(),
            _ => return None,
        };
        if body.remaining() < 8 {
            return None;
        }
        let count = body.get_u64_le();
        let mut locks = Vec::with_capacity(count.min(body.len() as u64 / 20) as usize);
        for _ in 0..count {
            if body.remaining() < 18 {
                return None;
            }
            let token = body.get_u64_le();
            let ttl_ms = body.get_u64_le();
            let key = take_bytes16(&mut body)?;
            let owner = take_bytes16(&mut body)?;
            locks.push(SnapshotLock {
                key,
                owner,
                token,
                ttl_ms,
            });
        }
        body.is_empty().then_some(Snapshot {
            last_index,
            last_term,
            membership,
            locks,
        })
    }

    pub fn file_name(last_index: u64) -> String {
        format!("snapshot-{last_index:020}.snap")
    }

    /// The last index named by a snapshot file name.
    pub fn parse_file_name(name: &str) -> Option<u64> {
        name.strip_prefix("snapshot-")?
            .strip_suffix(".snap")?
            .parse()
            .ok()
    }
}

fn take_bytes16(body: &mut &[u8]) -> Option<Bytes> {
    if body.remaining() < 2 {
        return None;
    }
    let length = body.get_u16_le() as usize;
    if body.remaining() < length {
        return None;
    }
    let (field, rest) = body.split_at(length);
    *body = rest;
    Some(Bytes::copy_from_slice(field))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            last_index: 42,
            last_term: 3,
            membership: Membership {
                voters: [1, 2, 3].into(),
                addresses: [(3, "127.0.0.1:7003/127.0.0.1:8003".to_string())].into(),
            },
            locks: vec![
                SnapshotLock {
                    key: Bytes::from_static(b"backup-lock"),
                    owner: Bytes::from_static(b"alice@host1"),
                    token: (3 << 40) | 7,
                    ttl_ms: 60_000,
                },
                SnapshotLock {
                    key: Bytes::from_static(b"k"),
                    owner: Bytes::from_static(b"o"),
                    token: 9,
                    ttl_ms: 1,
                },
            ],
        }
    }

    #[test]
    fn round_trips_and_rejects_any_damage() {
        let bytes = sample().encode();
        assert_eq!(Snapshot::decode(&bytes), Some(sample()));
        for cut in 0..bytes.len() {
            assert_eq!(Snapshot::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        for position in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[position] ^= 0x10;
            assert_eq!(Snapshot::decode(&damaged), None, "byte {position} flipped");
        }
    }

    #[test]
    fn a_snapshot_written_before_replication_reads_with_no_voters() {
        let mut v1 = Vec::new();
        v1.put_slice(MAGIC_V1);
        v1.put_u64_le(5);
        v1.put_u64_le(2);
        v1.put_u64_le(0);
        let crc = crc32c::crc32c(&v1);
        v1.put_u32_le(crc);
        let decoded = Snapshot::decode(&v1).expect("a v1 snapshot");
        assert_eq!((decoded.last_index, decoded.last_term), (5, 2));
        assert!(decoded.membership.voters.is_empty() && decoded.locks.is_empty());
    }

    #[test]
    fn a_snapshot_written_before_addresses_reads_its_voters() {
        let mut v2 = Vec::new();
        v2.put_slice(MAGIC_V2);
        v2.put_u64_le(5);
        v2.put_u64_le(2);
        v2.put_u16_le(2);
        v2.put_u64_le(1);
        v2.put_u64_le(2);
        v2.put_u64_le(0);
        let crc = crc32c::crc32c(&v2);
        v2.put_u32_le(crc);
        let decoded = Snapshot::decode(&v2).expect("a v2 snapshot");
        assert_eq!(decoded.membership, Membership::new([1, 2]));
    }

    #[test]
    fn file_names_sort_by_index() {
        assert_eq!(
            Snapshot::parse_file_name(&Snapshot::file_name(42)),
            Some(42)
        );
        assert!(Snapshot::file_name(9) < Snapshot::file_name(10));
        assert_eq!(Snapshot::parse_file_name("snapshot-x.snap"), None);
    }
}
