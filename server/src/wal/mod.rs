//! The write-ahead log of one shard: what makes a `persistent` lock survive `kill -9` and a
//! power cut.
//!
//! # What is logged
//! The shard's Raft log: the leader's decisions about persistent locks (a grant: key,
//! owner, token, ttl; a release: key, token; an extension: key, token, ttl), a new leader's
//! no-op, and membership changes. Entries carry a ttl, never a wall-clock deadline:
//! whoever applies an entry counts the lease from when it applies it, which is later than
//! the leader did, so a lease never ends early. Each entry has an index (1, 2, 3, ... per
//! shard) and the Raft term of the leader that wrote it. The term and vote are kept apart,
//! in `raft-state` ([`raft_state`]), because a follower may have to drop a suffix of its
//! log (see [`Wal::truncate_from`]) and must never drop a vote with it. (Logs written
//! before replication may hold `hard state` records; they are read and ignored.)
//!
//! # Files, in `<data-dir>/shard-<n>/`
//! - `wal-<first index>.log`: segments of `segment_bytes` each, preallocated by writing
//!   zeros (measured fastest to append into, see README), named by the index of their first
//!   entry (20 digits). Records never span segments.
//! - `snapshot-<last index>.snap`: every persistent lock held when it was taken, and the
//!   group's voters; segments holding only entries at or below its index are deleted after
//!   it is written.
//! - `raft-state`: the current term and vote.
//!
//! # Record format (little-endian), see [`record`]
//! ```text
//! [len u32][crc32c u32][type u8][payload: len - 1 bytes]
//! ```
//! `len` counts the type byte and the payload; the checksum (CRC-32C, Castagnoli) covers the
//! same bytes. A `len` of 0 is the zero fill after the last record.
//!
//! # Writing: group commit
//! The shard worker appends the records of a whole batch to an in-memory buffer
//! ([`Wal::append`]), then [`Wal::commit`] writes them with one positioned write and makes
//! them durable with one `fdatasync`. Only then does the worker send the replies that depend
//! on them. If the write or the sync fails, nothing is acknowledged, the records stay in the
//! buffer, and the next commit writes them again from the last durable offset (never
//! trusting the page cache after a failed sync).
//!
//! # Recovery, see [`recovery`]
//! The newest snapshot is loaded, then every entry after it is replayed in order. The cases,
//! each with a test:
//! 1. no files: an empty log starting at index 1;
//! 2. zero fill (`len` 0) after the last record: the end of the log;
//! 3. a torn or corrupt record in the last segment (short, bad checksum, bad type, index not
//!    the next one): the end of the log; it is cut there and the rest of the segment zeroed,
//!    so later appends never run into stale bytes. A write that was not synced was never
//!    acknowledged, so nothing acknowledged is lost;
//! 4. a corrupt record in an earlier segment, or a gap between segments (a missing file):
//!    acknowledged entries may be lost, so the server refuses to start and says which file;
//! 5. a snapshot whose checksum fails: refused, as 4;
//! 6. left-over temporary files from an interrupted snapshot or preallocation: removed.
//!
//! Like etcd's WAL, a corrupt record inside the last segment cannot be told from a torn
//! write, so it is treated as the end of the log.

mod log;
pub mod raft_state;
pub mod record;
pub mod recovery;
pub mod snapshot;
pub mod storage;

use std::path::PathBuf;

pub use log::{Wal, WalOptions, SEGMENT_BYTES_MIN};
pub use recovery::Replay;

/// What can go wrong with a log: storage errors with storage meaning.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("cannot {operation} {}: {source}", path.display())]
    Io {
        operation: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the log is damaged: {} at byte {offset}: {detail}. Acknowledged locks may be lost, so \
         the server will not start on it; move the shard directory aside to start without it"
    , path.display())]
    Corruption {
        path: PathBuf,
        offset: u64,
        detail: String,
    },
}

impl WalError {
    /// True when the disk is full (`ENOSPC`).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, WalError::Io { source, .. } if source.raw_os_error() == Some(storage::DISK_FULL))
    }
}

#[cfg(test)]
mod power_cut;
#[cfg(test)]
mod tests;
