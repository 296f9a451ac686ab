//! Opening a shard's log after a restart or a crash.
//!
//! The cases (module doc of `wal` has the why), each tested in `wal/tests.rs`:
//! 1. no files: empty log, next index 1 (`an_empty_directory_is_an_empty_log`);
//! 2. zero fill after the last record: end of the log (`reopen_replays_every_entry`);
//! 3. torn, corrupt or out-of-sequence record in the last segment, or zero fill with bytes
//!    after it: end of the log; the segment is cut there and the rest zeroed
//!    (`a_torn_tail_is_cut_at_every_point`,
//!    `a_flipped_bit_in_the_last_segment_ends_the_log_there_and_stale_bytes_are_zeroed`,
//!    `records_after_a_zero_gap_are_never_replayed`);
//! 4. corrupt record in an earlier segment, or a missing segment: refused
//!    (`damage_before_the_last_segment_is_refused`, `a_missing_segment_is_refused`);
//! 5. a damaged snapshot: refused (`a_damaged_snapshot_is_refused`);
//! 6. temporary files: removed (`temporary_files_are_removed_and_a_spare_is_prepared`); a complete preallocated
//!    spare segment is kept for the next roll.

use std::path::{Path, PathBuf};

use super::record::{DecodeError, Entry, HardState, Record};
use super::snapshot::Snapshot;
use super::storage::Storage;
use super::WalError;

/// Applies what recovery reads: the snapshot first, then every later entry in order
/// (handed over, not copied: a log can hold millions).
pub trait Replay {
    fn restore(&mut self, snapshot: &Snapshot);
    fn apply(&mut self, entry: Entry);
}

/// A segment file found on disk.
#[derive(Debug, Clone)]
pub(super) struct FoundSegment {
    pub first_index: u64,
    pub path: PathBuf,
}

/// What recovery leaves for the log to continue from.
#[derive(Debug)]
pub(super) struct Recovered {
    pub segments: Vec<FoundSegment>,
    /// Offset after the last valid record of the last segment.
    pub tail_end: u64,
    pub next_index: u64,
    pub last_term: u64,
    pub hard_state: Option<HardState>,
    pub bytes_since_snapshot: u64,
    pub spare_ready: bool,
    pub snapshot_index: u64,
}

pub(super) const SPARE_NAME: &str = "spare.log";

pub(super) fn segment_name(first_index: u64) -> String {
    format!("wal-{first_index:020}.log")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix("wal-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

fn io_error<'a>(
    operation: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> WalError + 'a {
    move |source| WalError::Io {
        operation,
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn recover(
    dir: &Path,
    storage: &dyn Storage,
    replay: &mut dyn Replay,
) -> Result<Recovered, WalError> {
    storage
        .create_dir_all(dir)
        .map_err(io_error("create", dir))?;
    let names = storage.list(dir).map_err(io_error("list", dir))?;
    let mut snapshots = Vec::new();
    let mut segments = Vec::new();
    let mut spare_ready = false;
    for name in names {
        let path = dir.join(&name);
        if name.ends_with(".tmp") {
            storage.remove(&path).map_err(io_error("remove", &path))?;
        } else if name == SPARE_NAME {
            spare_ready = true;
        } else if let Some(index) = Snapshot::parse_file_name(&name) {
            snapshots.push((index, path));
        } else if let Some(first_index) = parse_segment_name(&name) {
            segments.push(FoundSegment { first_index, path });
        }
    }
    snapshots.sort_by_key(|(index, _)| *index);
    segments.sort_by_key(|segment| segment.first_index);

    // The newest snapshot; older ones are garbage from an interrupted compaction.
    let snapshot = match snapshots.pop() {
        Some((_, path)) => {
            let contents = storage.read(&path).map_err(io_error("read", &path))?;
            let snapshot = Snapshot::decode(&contents).ok_or_else(|| WalError::Corruption {
                path: path.clone(),
                offset: 0,
                detail: "the snapshot's checksum or layout is wrong".into(),
            })?;
            replay.restore(&snapshot);
            Some(snapshot)
        }
        None => None,
    };
    for (_, path) in snapshots {
        storage.remove(&path).map_err(io_error("remove", &path))?;
    }
    let snapshot_index = snapshot.as_ref().map_or(0, |snapshot| snapshot.last_index);
    let mut last_term = snapshot.as_ref().map_or(0, |snapshot| snapshot.last_term);

    // Segments wholly covered by the snapshot are left from an interrupted compaction.
    while segments.len() > 1 && segments[1].first_index <= snapshot_index + 1 {
        let covered = segments.remove(0);
        storage
            .remove(&covered.path)
            .map_err(io_error("remove", &covered.path))?;
    }

    let mut expected = snapshot_index + 1;
    if let Some(first) = segments.first() {
        if first.first_index > expected {
            return Err(WalError::Corruption {
                path: first.path.clone(),
                offset: 0,
                detail: format!(
                    "the log should continue at entry {expected} but this segment starts at {}: a segment is missing",
                    first.first_index
                ),
            });
        }
    }

    let mut hard_state = None;
    let mut bytes_since_snapshot = 0;
    let mut tail_end = 0;
    let count = segments.len();
    for (position, segment) in segments.iter().enumerate() {
        let last = position + 1 == count;
        if position > 0 && segment.first_index != expected {
            return Err(WalError::Corruption {
                path: segment.path.clone(),
                offset: 0,
                detail: format!(
                    "the previous segment ends before entry {expected} but this one starts at {}: a segment is missing or damaged",
                    segment.first_index
                ),
            });
        }
        let contents = storage
            .read(&segment.path)
            .map_err(io_error("read", &segment.path))?;
        let mut offset = 0usize;
        let mut applied = 0u64;
        let end_reason = loop {
            match Record::decode(&contents[offset..]) {
                Ok((Record::Entry(entry), size)) if entry.index == expected => {
                    last_term = entry.term;
                    replay.apply(entry);
                    expected += 1;
                    applied += 1;
                    bytes_since_snapshot += size as u64;
                    offset += size;
                }
                Ok((Record::Entry(entry), size))
                    if position == 0 && applied == 0 && entry.index <= snapshot_index =>
                {
                    // Covered by the snapshot (only at the start of the first segment).
                    offset += size;
                }
                Ok((Record::Entry(_), _)) => break Some(DecodeError::Malformed),
                Ok((Record::HardState(state), size)) => {
                    hard_state = Some(state);
                    offset += size;
                }
                Err(DecodeError::End) => break None,
                Err(error) => break Some(error),
            }
        };
        match (end_reason, last) {
            // The end of the log is where the first record fails to read, zero fill
            // included: whatever follows (a later page of a batch whose first page never
            // reached the disk) was never acknowledged and must never be read back later,
            // behind new records. So the last segment is always cut there.
            (_, true) => cut_tail(storage, &segment.path, offset as u64, &contents)?,
            (None, false) => {}
            (Some(error), false) => {
                return Err(WalError::Corruption {
                    path: segment.path.clone(),
                    offset: offset as u64,
                    detail: format!("{error:?} record before the last segment"),
                })
            }
        }
        if last {
            tail_end = offset as u64;
        }
    }
    Ok(Recovered {
        segments,
        tail_end,
        next_index: expected,
        last_term,
        hard_state,
        bytes_since_snapshot,
        spare_ready,
        snapshot_index,
    })
}

/// Zeroes the last segment from `offset` to its last non-zero byte, so that what a torn
/// write left there can never be read as records after later appends.
pub(super) fn cut_tail(
    storage: &dyn Storage,
    path: &Path,
    offset: u64,
    contents: &[u8],
) -> Result<(), WalError> {
    let start = offset as usize;
    let Some(last_nonzero) = contents[start..].iter().rposition(|&byte| byte != 0) else {
        return Ok(());
    };
    tracing::warn!(path = %path.display(), offset, "log ends in a torn or damaged record; cutting it there");
    zero_range(storage, path, offset, last_nonzero as u64 + 1)
}

/// Writes `length` zero bytes at `offset` and syncs them.
pub(super) fn zero_range(
    storage: &dyn Storage,
    path: &Path,
    offset: u64,
    length: u64,
) -> Result<(), WalError> {
    let zeros = vec![0u8; length as usize];
    let file = storage.open_segment(path).map_err(io_error("open", path))?;
    file.write_at(offset, &zeros)
        .map_err(io_error("write", path))?;
    file.sync_data().map_err(io_error("sync", path))
}
