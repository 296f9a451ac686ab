//! The log a shard appends to: [`Wal::append`] buffers, [`Wal::commit`] writes and syncs
//! once per batch, [`Wal::compact`] writes a snapshot and deletes what it covers.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::record::{encode_entry, Entry, HardState, Record, RECORD_BYTES_MAX};
use super::recovery::{recover, segment_name, zero_range, Replay, SPARE_NAME};
use super::snapshot::Snapshot;
use super::storage::{SegmentFile, Storage};
use super::WalError;

/// Settings of one shard's log.
#[derive(Debug, Clone, Copy)]
pub struct WalOptions {
    /// Bytes per segment file, preallocated.
    pub segment_bytes: u64,
    /// `fdatasync` on every commit. Off only in the loudly named unsafe mode.
    pub sync: bool,
    /// Take a snapshot once this many bytes were logged since the last one.
    pub snapshot_log_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 << 20,
            sync: true,
            snapshot_log_bytes: 64 << 20,
        }
    }
}

/// The smallest segment accepted: room for the largest records.
pub const SEGMENT_BYTES_MIN: u64 = 4 * RECORD_BYTES_MAX as u64;

#[derive(Debug)]
struct Segment {
    first_index: u64,
    path: PathBuf,
    /// On disk (zero-filled) yet: a segment is created by the commit that first writes it.
    created: bool,
    /// Open while it has writes not yet synced (and always for the tail, once created).
    file: Option<Arc<dyn SegmentFile>>,
}

/// Bytes appended to one segment at one offset, not yet durable.
#[derive(Debug)]
struct Chunk {
    first_index: u64,
    offset: u64,
    bytes: Vec<u8>,
}

#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    options: WalOptions,
    /// Every segment on disk, oldest first; the last is the tail appended to. A segment
    /// is created (from the spare, or zero-filled) by the commit that first writes to it.
    segments: Vec<Segment>,
    /// Where the next record goes in the tail (pending bytes included).
    tail_end: u64,
    next_index: u64,
    last_term: u64,
    durable_index: u64,
    pending: Vec<Chunk>,
    bytes_since_snapshot: u64,
    spare_ready: bool,
    spare: Option<JoinHandle<std::io::Result<()>>>,
    hard_state: Option<HardState>,
    /// The index of the newest snapshot on disk (0 for none).
    snapshot_index: u64,
    /// A truncation's zeroing (segment, offset, length) not known to be synced: a retry
    /// writes it again, whatever the page cache now shows.
    unsynced_cut: Option<(PathBuf, u64, u64)>,
}

impl Wal {
    /// Opens the log in `dir` (created if missing), replaying what it holds into `replay`.
    pub fn open(
        dir: &Path,
        storage: Arc<dyn Storage>,
        options: WalOptions,
        replay: &mut dyn Replay,
    ) -> Result<Wal, WalError> {
        assert!(
            options.segment_bytes >= SEGMENT_BYTES_MIN,
            "segment_bytes below SEGMENT_BYTES_MIN"
        );
        let recovered = recover(dir, storage.as_ref(), replay)?;
        let segments = recovered
            .segments
            .into_iter()
            .map(|found| Segment {
                first_index: found.first_index,
                path: found.path,
                created: true,
                file: None,
            })
            .collect();
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            storage,
            options,
            segments,
            tail_end: recovered.tail_end,
            next_index: recovered.next_index,
            last_term: recovered.last_term,
            durable_index: recovered.next_index - 1,
            pending: Vec::new(),
            bytes_since_snapshot: recovered.bytes_since_snapshot,
            spare_ready: recovered.spare_ready,
            spare: None,
            hard_state: recovered.hard_state,
            snapshot_index: recovered.snapshot_index,
            unsynced_cut: None,
        };
        wal.prepare_spare();
        Ok(wal)
    }

    /// The index the next entry will get.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// The last entry made durable by a commit.
    pub fn durable_index(&self) -> u64 {
        self.durable_index
    }

    pub fn last_term(&self) -> u64 {
        self.last_term
    }

    pub fn hard_state(&self) -> Option<HardState> {
        self.hard_state
    }

    /// True when appended entries wait for a commit.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Segment files on disk (or about to be).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// True once enough was logged since the last snapshot to take another.
    pub fn wants_snapshot(&self) -> bool {
        self.bytes_since_snapshot >= self.options.snapshot_log_bytes
    }

    /// The index of the newest snapshot on disk, 0 if none.
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }

    /// Reads the newest snapshot back (to rebuild the lock table from it).
    pub fn load_snapshot(&self) -> Result<Option<Snapshot>, WalError> {
        if self.snapshot_index == 0 {
            return Ok(None);
        }
        let path = self.dir.join(Snapshot::file_name(self.snapshot_index));
        let contents = self.storage.read(&path).map_err(|source| WalError::Io {
            operation: "read",
            path: path.clone(),
            source,
        })?;
        Snapshot::decode(&contents)
            .map(Some)
            .ok_or_else(|| WalError::Corruption {
                path,
                offset: 0,
                detail: "the snapshot's checksum or layout is wrong".into(),
            })
    }

    /// The newest snapshot's file, as it is on disk (sent to a follower that is too far
    /// behind, which stores the very same bytes).
    pub fn snapshot_bytes(&self) -> Result<Vec<u8>, WalError> {
        let path = self.dir.join(Snapshot::file_name(self.snapshot_index));
        let contents = self.storage.read(&path).map_err(|source| WalError::Io {
            operation: "read",
            path: path.clone(),
            source,
        })?;
        Ok(contents.to_vec())
    }

    /// Buffers `entry`, which must be the next one (see [`Wal::truncate_from`] for
    /// replacing entries); it is durable after the next successful [`Wal::commit`].
    pub fn append(&mut self, entry: &Entry) -> u64 {
        let index = self.next_index;
        assert_eq!(entry.index, index, "log entries are appended in order");
        let mut bytes = Vec::with_capacity(64);
        encode_entry(entry, &mut bytes);
        if self.segments.is_empty()
            || self.tail_end + bytes.len() as u64 > self.options.segment_bytes
        {
            self.start_segment(index);
        }
        let first_index = self.segments.last().expect("a tail segment").first_index;
        let offset = self.tail_end;
        let length = bytes.len() as u64;
        match self.pending.last_mut() {
            Some(chunk)
                if chunk.first_index == first_index
                    && chunk.offset + chunk.bytes.len() as u64 == offset =>
            {
                chunk.bytes.extend_from_slice(&bytes);
            }
            _ => self.pending.push(Chunk {
                first_index,
                offset,
                bytes,
            }),
        }
        self.tail_end = offset + length;
        self.next_index += 1;
        self.last_term = entry.term;
        index
    }

    /// Appends the next entry holding `command` (tests and benchmarks of the log alone).
    pub fn append_command(&mut self, term: u64, command: super::record::Command) -> u64 {
        let entry = Entry {
            index: self.next_index,
            term,
            kind: crate::raft::EntryKind::Command(command),
        };
        self.append(&entry)
    }

    /// Drops every entry from `index` on, durably, before anything is appended in their
    /// place (a follower whose uncommitted entries a new leader replaced, Raft §5.3):
    /// deletes the later segments, newest first, then zeroes the segment holding `index`
    /// from that entry on and syncs it. A crash part way leaves a shorter but whole log.
    pub fn truncate_from(&mut self, index: u64) -> Result<(), WalError> {
        assert!(
            self.pending.is_empty(),
            "truncating with entries not yet written"
        );
        assert!(
            index > self.snapshot_index && index < self.next_index,
            "truncating at {index} outside ({}, {})",
            self.snapshot_index,
            self.next_index
        );
        self.remove_segments_after(index)?;
        let segment = self.segments.last_mut().expect("a segment holds the entry");
        segment.file = None;
        let path = segment.path.clone();
        let contents = self.storage.read(&path).map_err(|source| WalError::Io {
            operation: "read",
            path: path.clone(),
            source,
        })?;
        let first_index = segment.first_index;
        let offset =
            entry_offset(&contents, first_index, index).ok_or_else(|| WalError::Corruption {
                path: path.clone(),
                offset: 0,
                detail: format!("entry {index} is not in the segment that should hold it"),
            })?;
        let length = match &self.unsynced_cut {
            Some((cut_path, cut_offset, cut_length))
                if *cut_path == path && *cut_offset == offset =>
            {
                *cut_length
            }
            _ => contents[offset as usize..]
                .iter()
                .rposition(|&byte| byte != 0)
                .map_or(0, |last| last as u64 + 1),
        };
        if length > 0 {
            self.unsynced_cut = Some((path.clone(), offset, length));
            zero_range(self.storage.as_ref(), &path, offset, length)?;
            self.unsynced_cut = None;
        }
        let dropped = self.tail_end.saturating_sub(offset);
        self.bytes_since_snapshot = self.bytes_since_snapshot.saturating_sub(dropped);
        self.tail_end = offset;
        self.next_index = index;
        self.durable_index = index - 1;
        Ok(())
    }

    /// Deletes every segment whose first entry is after `index`, newest first. Each file
    /// goes before the segment is forgotten: if a removal fails, a retry deletes it.
    fn remove_segments_after(&mut self, index: u64) -> Result<(), WalError> {
        while let Some(segment) = self
            .segments
            .last()
            .filter(|segment| segment.first_index > index)
        {
            if segment.created {
                self.storage
                    .remove(&segment.path)
                    .map_err(|source| WalError::Io {
                        operation: "remove",
                        path: segment.path.clone(),
                        source,
                    })?;
            }
            self.segments.pop();
        }
        Ok(())
    }

    /// Makes the tail a new segment whose first entry is `first_index`. It is created on
    /// disk by the commit that first writes to it.
    fn start_segment(&mut self, first_index: u64) {
        self.segments.push(Segment {
            first_index,
            path: self.dir.join(segment_name(first_index)),
            created: false,
            file: None,
        });
        self.tail_end = 0;
    }

    /// Writes every appended entry with one write per segment touched, then syncs each
    /// such segment once. On error nothing appended is durable as far as the caller knows;
    /// the entries stay buffered and the next commit writes them again at the same offsets.
    pub fn commit(&mut self) -> Result<(), WalError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        // Chunks are in log order. A segment is synced before the next one is created or
        // written, so after a power cut an earlier segment is never left short behind a
        // later one (which recovery would have to refuse as damage).
        let mut unsynced: Option<(u64, Arc<dyn SegmentFile>, PathBuf)> = None;
        for position in 0..self.pending.len() {
            let first_index = self.pending[position].first_index;
            if let Some((previous, file, path)) = &unsynced {
                if *previous != first_index {
                    self.sync(file, path)?;
                }
            }
            let (file, path) = self.segment_file(first_index)?;
            let chunk = &self.pending[position];
            file.write_at(chunk.offset, &chunk.bytes)
                .map_err(|source| WalError::Io {
                    operation: "write",
                    path: path.clone(),
                    source,
                })?;
            unsynced = Some((first_index, file, path));
        }
        if let Some((_, file, path)) = &unsynced {
            self.sync(file, path)?;
        }
        let written: u64 = self
            .pending
            .iter()
            .map(|chunk| chunk.bytes.len() as u64)
            .sum();
        self.pending.clear();
        self.bytes_since_snapshot += written;
        self.durable_index = self.next_index - 1;
        // Only the tail keeps its file open.
        let tail = self.segments.len() - 1;
        for segment in &mut self.segments[..tail] {
            segment.file = None;
        }
        self.prepare_spare();
        Ok(())
    }

    fn sync(&self, file: &Arc<dyn SegmentFile>, path: &std::path::Path) -> Result<(), WalError> {
        if !self.options.sync {
            return Ok(());
        }
        file.sync_data().map_err(|source| WalError::Io {
            operation: "sync",
            path: path.to_path_buf(),
            source,
        })
    }

    /// The open file of the segment starting at `first_index`, creating it if needed.
    fn segment_file(
        &mut self,
        first_index: u64,
    ) -> Result<(Arc<dyn SegmentFile>, PathBuf), WalError> {
        let position = self
            .segments
            .iter()
            .rposition(|segment| segment.first_index == first_index)
            .expect("pending bytes belong to a known segment");
        if !self.segments[position].created {
            self.create_segment_file(position)?;
            self.segments[position].created = true;
        }
        let segment = &mut self.segments[position];
        if segment.file.is_none() {
            let file = self
                .storage
                .open_segment(&segment.path)
                .map_err(|source| WalError::Io {
                    operation: "open",
                    path: segment.path.clone(),
                    source,
                })?;
            segment.file = Some(file);
        }
        Ok((
            segment.file.clone().expect("just opened"),
            segment.path.clone(),
        ))
    }

    /// Puts a zero-filled file at the segment's path: the spare if one is ready, else a
    /// new one written now.
    fn create_segment_file(&mut self, position: usize) -> Result<(), WalError> {
        let path = self.segments[position].path.clone();
        if let Some(spare) = self.spare.take() {
            self.spare_ready = matches!(spare.join(), Ok(Ok(())));
        }
        if self.spare_ready {
            self.spare_ready = false;
            let spare = self.dir.join(SPARE_NAME);
            if self.storage.rename(&spare, &path).is_ok() {
                return Ok(());
            }
        }
        self.storage
            .create_zeroed(&path, self.options.segment_bytes)
            .map_err(|source| WalError::Io {
                operation: "create",
                path,
                source,
            })
    }

    /// When there is no segment yet, or the tail is half full, zero-fills the next segment
    /// in the background, so that starting a segment costs a rename, not a 64 MiB write on
    /// the request path.
    fn prepare_spare(&mut self) {
        let tail_half_full = self.tail_end >= self.options.segment_bytes / 2;
        let needed = self.segments.is_empty() || tail_half_full;
        if self.spare_ready || self.spare.is_some() || !needed {
            return;
        }
        let storage = self.storage.clone();
        let path = self.dir.join(SPARE_NAME);
        let bytes = self.options.segment_bytes;
        self.spare = std::thread::Builder::new()
            .name("kahu-wal-spare".into())
            .spawn(move || storage.create_zeroed(&path, bytes))
            .ok();
    }

    /// Writes `snapshot` (of durable entries only) and deletes the segments and snapshots
    /// it makes unnecessary.
    pub fn compact(&mut self, snapshot: &Snapshot) -> Result<(), WalError> {
        assert!(self.pending.is_empty(), "compact after a successful commit");
        assert!(
            snapshot.last_index <= self.durable_index,
            "a snapshot of the durable state"
        );
        let path = self.dir.join(Snapshot::file_name(snapshot.last_index));
        if let Err(source) = self.storage.write_atomic(&path, &snapshot.encode()) {
            // Try again after half the interval, not on every commit.
            self.bytes_since_snapshot = self.options.snapshot_log_bytes / 2;
            return Err(WalError::Io {
                operation: "write snapshot",
                path,
                source,
            });
        }
        self.bytes_since_snapshot = 0;
        self.snapshot_index = snapshot.last_index;
        // Older snapshots, then every segment whose entries all precede the snapshot.
        if let Ok(names) = self.storage.list(&self.dir) {
            for name in names {
                match Snapshot::parse_file_name(&name) {
                    Some(index) if index < snapshot.last_index => {
                        let _ = self.storage.remove(&self.dir.join(name));
                    }
                    _ => {}
                }
            }
        }
        while self.segments.len() > 1 && self.segments[1].first_index <= snapshot.last_index + 1 {
            let covered = self.segments.remove(0);
            if let Err(error) = self.storage.remove(&covered.path) {
                tracing::warn!(path = %covered.path.display(), %error, "cannot delete a compacted segment");
            }
        }
        Ok(())
    }
}

impl Wal {
    /// Replaces the whole log with a snapshot from the leader (this node was too far
    /// behind): the snapshot is written, then every segment is deleted, and the log
    /// continues after the snapshot's last index.
    pub fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), WalError> {
        assert!(
            self.pending.is_empty(),
            "install a snapshot with entries not yet written"
        );
        let path = self.dir.join(Snapshot::file_name(snapshot.last_index));
        self.storage
            .write_atomic(&path, &snapshot.encode())
            .map_err(|source| WalError::Io {
                operation: "write snapshot",
                path,
                source,
            })?;
        self.remove_segments_after(0)?;
        if let Ok(names) = self.storage.list(&self.dir) {
            for name in names {
                if Snapshot::parse_file_name(&name).is_some_and(|index| index < snapshot.last_index)
                {
                    let _ = self.storage.remove(&self.dir.join(name));
                }
            }
        }
        self.tail_end = 0;
        self.next_index = snapshot.last_index + 1;
        self.durable_index = snapshot.last_index;
        self.last_term = snapshot.last_term;
        self.snapshot_index = snapshot.last_index;
        self.bytes_since_snapshot = 0;
        Ok(())
    }
}

/// Where the entry `index` starts in the bytes of a segment whose first entry is
/// `first_index`; or, if the records end just before it (a truncation at `index` that was
/// cut but not synced, being retried), where they end.
fn entry_offset(contents: &[u8], first_index: u64, index: u64) -> Option<u64> {
    let mut offset = 0usize;
    let mut last_index = first_index.checked_sub(1);
    loop {
        match Record::decode(&contents[offset..]) {
            Ok((Record::Entry(entry), _)) if entry.index == index => return Some(offset as u64),
            Ok((record, size)) => {
                if let Record::Entry(entry) = record {
                    last_index = Some(entry.index);
                }
                offset += size;
            }
            Err(_) => {
                return (last_index.map(|last| last + 1) == Some(index)).then_some(offset as u64)
            }
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if let Some(spare) = self.spare.take() {
            let _ = spare.join();
        }
    }
}
