//! The Raft hard state of one shard (current term and vote), in its own small file.
//!
//! ```text
//! raft-state = magic "KAHURST1" | term u64 | vote u64 | crc32c u32     (little-endian)
//! ```
//!
//! Why a file of its own and not records in the log: a follower's log may have to drop a
//! suffix that a new leader replaced (Raft §5.3), which the log does by zeroing it; a term
//! or vote record inside that suffix would go with it, and a node that forgets its vote can
//! vote twice in one term. The file is replaced atomically (temporary file, fsync, rename,
//! fsync of the directory) before any message that depends on it leaves, which happens
//! only when the term or the vote changes (elections), never per request. The commit index
//! is not stored: a restarted node learns it from the leader (or, alone, commits its whole
//! log with its first entry as leader).

use std::path::{Path, PathBuf};

use bytes::{Buf, BufMut};

use super::storage::Storage;
use super::WalError;
use crate::raft::HardState;

const MAGIC: &[u8; 8] = b"KAHURST1";
const FILE_NAME: &str = "raft-state";
const FILE_BYTES: usize = 8 + 8 + 8 + 4;

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

fn encode(state: &HardState) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(FILE_BYTES);
    bytes.put_slice(MAGIC);
    bytes.put_u64_le(state.term);
    bytes.put_u64_le(state.vote);
    let crc = crc32c::crc32c(&bytes);
    bytes.put_u32_le(crc);
    bytes
}

fn decode(bytes: &[u8]) -> Option<HardState> {
    if bytes.len() != FILE_BYTES || &bytes[..8] != MAGIC {
        return None;
    }
    let (body, mut crc) = bytes.split_at(FILE_BYTES - 4);
    if crc32c::crc32c(body) != crc.get_u32_le() {
        return None;
    }
    let mut fields = &body[8..];
    Some(HardState {
        term: fields.get_u64_le(),
        vote: fields.get_u64_le(),
        commit: 0,
    })
}

/// The stored term and vote; the default (term 0, no vote) when there is no file yet. A
/// damaged file is refused: starting with a forgotten vote could elect two leaders.
pub fn load(storage: &dyn Storage, dir: &Path) -> Result<HardState, WalError> {
    let path = path(dir);
    let names = storage.list(dir).map_err(|source| WalError::Io {
        operation: "list",
        path: dir.to_path_buf(),
        source,
    })?;
    if !names.iter().any(|name| name == FILE_NAME) {
        return Ok(HardState::default());
    }
    let contents = storage.read(&path).map_err(|source| WalError::Io {
        operation: "read",
        path: path.clone(),
        source,
    })?;
    decode(&contents).ok_or_else(|| WalError::Corruption {
        path,
        offset: 0,
        detail: "the Raft state file's checksum or layout is wrong".into(),
    })
}

/// Replaces the stored term and vote, durably.
pub fn store(storage: &dyn Storage, dir: &Path, state: &HardState) -> Result<(), WalError> {
    let path = path(dir);
    storage
        .write_atomic(&path, &encode(state))
        .map_err(|source| WalError::Io {
            operation: "write",
            path,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::storage::FileStorage;

    #[test]
    fn a_stored_state_loads_back_and_a_missing_one_is_the_default() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(
            load(&FileStorage, dir.path()).unwrap(),
            HardState::default()
        );
        let state = HardState {
            term: 7,
            vote: 3,
            commit: 0,
        };
        store(&FileStorage, dir.path(), &state).unwrap();
        assert_eq!(load(&FileStorage, dir.path()).unwrap(), state);
    }

    #[test]
    fn every_damaged_byte_is_refused() {
        let bytes = encode(&HardState {
            term: 9,
            vote: 2,
            commit: 0,
        });
        for position in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[position] ^= 0x10;
            assert_eq!(decode(&damaged), None, "byte {position}");
        }
        assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
    }

    #[test]
    fn the_format_is_stable() {
        let bytes = encode(&HardState {
            term: 1,
            vote: 2,
            commit: 0,
        });
        assert_eq!(&bytes[..8], b"KAHURST1");
        assert_eq!(&bytes[8..16], &1u64.to_le_bytes());
        assert_eq!(&bytes[16..24], &2u64.to_le_bytes());
        assert_eq!(&bytes[24..], &crc32c::crc32c(&bytes[..24]).to_le_bytes());
    }
}
