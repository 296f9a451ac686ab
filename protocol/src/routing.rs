//! Routing: which shard a key is on, and which node to ask for it.
//!
//! A kahu node splits its keys over `shard_count` shards (announced in HELLO_OK); in a
//! cluster each shard is its own Raft group with its own leader, so a client that wants to
//! send a keyed request (LOCK, UNLOCK, EXTEND, GET) straight to the right node computes the
//! key's shard the way the server does:
//!
//! ```
//! use kahu_protocol::routing::{key_hash, shard_of};
//! let shard = shard_of(key_hash(b"backup-lock"), 4);
//! assert!(shard < 4);
//! ```
//!
//! Both functions are part of the protocol (PROTOCOL.md, "Routing: which shard a key is
//! on"): their results must never change, or clients and servers of different versions
//! would disagree about where a key lives. The tests below pin them.
//!
//! A node that does not lead a key's shard answers ERROR `NOT_LEADER`; when it knows the
//! leader, the message names the leader's client address as `leader=HOST:PORT`
//! ([`leader_hint`] finds it).

/// The hash a key is placed by: XXH3, 64-bit, seed 0, of the key's bytes. Stable across
/// versions, machines and endianness.
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// The shard of a key hash: the high 32 bits of `hash` scaled to `shard_count`, that is
/// `((hash >> 32) * shard_count) >> 32`. Always below `shard_count`, which must not be 0.
/// (The low 32 bits are left to the server's table index, so the two uses do not
/// correlate.)
pub fn shard_of(hash: u64, shard_count: usize) -> usize {
    debug_assert!(shard_count > 0, "a node has at least one shard");
    // `hash >> 32` and `shard_count` (a u16 on the wire) both fit in 32 bits, so the product
    // fits in 64.
    (((hash >> 32) * shard_count as u64) >> 32) as usize
}

/// What precedes the leader's address in a NOT_LEADER message.
pub const LEADER_HINT_PREFIX: &str = "leader=";

/// The leader's client address named in a NOT_LEADER message (`...; ask
/// leader=127.0.0.1:8003`), or `None` when the message names none (no leader is known, for
/// example during an election). The address runs from after `leader=` to the next
/// whitespace, `;` or `,`, or to the end of the message.
///
/// ```
/// use kahu_protocol::routing::leader_hint;
/// assert_eq!(
///     leader_hint("shard 1 is led by node 2; ask leader=127.0.0.1:8003"),
///     Some("127.0.0.1:8003")
/// );
/// assert_eq!(leader_hint("shard 1 has no leader right now (election in progress); retry"), None);
/// ```
pub fn leader_hint(message: &str) -> Option<&str> {
    let start = message.find(LEADER_HINT_PREFIX)? + LEADER_HINT_PREFIX.len();
    let rest = &message[start..];
    let end = rest
        .find(|character: char| character.is_whitespace() || character == ';' || character == ',')
        .unwrap_or(rest.len());
    let address = &rest[..end];
    (!address.is_empty()).then_some(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned: a change here moves keys to other shards, and clients of one version would
    /// ask the wrong nodes of another.
    #[test]
    fn key_hashes_are_pinned() {
        // XXH3-64 of no bytes, as published with the reference implementation.
        assert_eq!(key_hash(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(key_hash(b"backup-lock"), 0x05a6_60bc_22a2_7f4a);
        assert_eq!(key_hash(b"job-queue-lock"), 0xdbe9_d3b5_730e_b5ce);
        assert_eq!(key_hash(b"k"), 0xa921_e370_4fda_881d);
    }

    #[test]
    fn shards_of_pinned_keys() {
        let shards = |key: &[u8]| {
            [1, 2, 3, 4, 8]
                .map(|shard_count| shard_of(key_hash(key), shard_count))
                .to_vec()
        };
        // With 1, 2, 3, 4 and 8 shards.
        assert_eq!(shards(b""), [0, 0, 0, 0, 1]);
        assert_eq!(shards(b"backup-lock"), [0, 0, 0, 0, 0]);
        assert_eq!(shards(b"job-queue-lock"), [0, 1, 2, 3, 6]);
        assert_eq!(shards(b"k"), [0, 1, 1, 2, 5]);
    }

    #[test]
    fn shard_of_covers_the_range_at_its_edges() {
        // One shard: everything is shard 0.
        assert_eq!(shard_of(0, 1), 0);
        assert_eq!(shard_of(u64::MAX, 1), 0);
        // The low 32 bits never matter.
        assert_eq!(shard_of(0x0000_0000_ffff_ffff, 7), 0);
        // The extremes of the high half map to the first and the last shard.
        assert_eq!(shard_of(0, 7), 0);
        assert_eq!(shard_of(u64::MAX, 7), 6);
        assert_eq!(
            shard_of(u64::MAX, usize::from(u16::MAX)),
            usize::from(u16::MAX) - 1
        );
        // The boundary between shard 0 and 1 of 2 is the top bit.
        assert_eq!(shard_of(0x7fff_ffff_ffff_ffff, 2), 0);
        assert_eq!(shard_of(0x8000_0000_0000_0000, 2), 1);
        // Four shards split the high half into quarters.
        assert_eq!(shard_of(0x4000_0000_0000_0000, 4), 1);
        assert_eq!(shard_of(0xbfff_ffff_0000_0000, 4), 2);
        assert_eq!(shard_of(0xc000_0000_0000_0000, 4), 3);
    }

    #[test]
    fn keys_spread_over_the_shards() {
        let mut counts = [0_u32; 4];
        for key in 0..4000 {
            counts[shard_of(key_hash(format!("lock-{key}").as_bytes()), 4)] += 1;
        }
        for count in counts {
            assert!((800..=1200).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn leader_hints_are_found_wherever_the_message_puts_them() {
        let cases = [
            (
                "shard 1 is led by node 2; ask leader=127.0.0.1:8003",
                Some("127.0.0.1:8003"),
            ),
            (
                "shard 1 is led by node 2; ask leader=[::1]:8003; the request may or may not \
                 have taken effect",
                Some("[::1]:8003"),
            ),
            ("leader=db-2.internal:8002", Some("db-2.internal:8002")),
            ("leader=a:1 leader=b:2", Some("a:1")),
            (
                "shard 1 has no leader right now (election in progress); retry",
                None,
            ),
            ("shard 1 is led by node 2", None),
            ("ask leader=; nobody", None),
            ("", None),
        ];
        for (message, hint) in cases {
            assert_eq!(leader_hint(message), hint, "{message}");
        }
    }
}
