//! A simulated disk: one node's files in memory, behind the log's [`Storage`] seam.
//!
//! Each file has the bytes a read sees (the page cache) and the bytes that would survive a
//! power cut. Segment writes land in the cache and mark their 4 KiB pages dirty;
//! `sync_data` makes the file's dirty pages durable. A crash keeps each dirty page or not
//! at random (later pages without earlier ones included, as real disks may) and forgets
//! the rest. File creation, atomic replacement, renames and removals are durable when they
//! return, as `Storage` promises.
//!
//! Faults: while [`DiskFault::SyncsFail`] is on, every sync fails (EIO: the power is
//! going); while [`DiskFault::WritesFail`] is on, every segment write writes half its
//! bytes and fails (ENOSPC), and so does every atomic file write (a snapshot, a leader's
//! snapshot being installed, the term and vote), leaving the old file. Reads, renames and
//! removals never fail: the replica panics when it cannot read back its own snapshot (the
//! process aborts, which the simulation models as a crash instead).
//!
//! A crash starts a new incarnation: handles of the dead process (a log's segment files,
//! its background spare-segment thread) get errors from then on and change nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::wal::storage::{Contents, SegmentFile, Storage, DISK_FULL, IO_ERROR};

const PAGE_BYTES: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DiskFault {
    None,
    SyncsFail,
    WritesFail,
}

#[derive(Debug, Default)]
struct File {
    /// What reads see.
    cached: Vec<u8>,
    /// What a power cut leaves.
    durable: Vec<u8>,
    /// Pages of `cached` written since the last sync.
    dirty: BTreeSet<usize>,
}

impl File {
    fn durable(bytes: Vec<u8>) -> File {
        File {
            cached: bytes.clone(),
            durable: bytes,
            dirty: BTreeSet::new(),
        }
    }

    fn persist_page(&mut self, page: usize) {
        let start = page * PAGE_BYTES;
        let end = (start + PAGE_BYTES).min(self.cached.len());
        if self.durable.len() < end {
            self.durable.resize(end, 0);
        }
        self.durable[start..end].copy_from_slice(&self.cached[start..end]);
    }
}

#[derive(Debug)]
struct DiskState {
    files: BTreeMap<PathBuf, File>,
    fault: DiskFault,
    incarnation: u64,
}

/// A handle on one node's disk, valid for one incarnation of the node's process.
#[derive(Debug, Clone)]
pub(super) struct SimDisk {
    state: Arc<Mutex<DiskState>>,
    incarnation: u64,
}

fn dead() -> io::Error {
    io::Error::other("the process that opened this file has crashed")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, path.display().to_string())
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk {
            state: Arc::new(Mutex::new(DiskState {
                files: BTreeMap::new(),
                fault: DiskFault::None,
                incarnation: 0,
            })),
            incarnation: 0,
        }
    }

    /// The state, if this handle's process is still alive.
    fn alive(&self) -> io::Result<MutexGuard<'_, DiskState>> {
        let state = self.state.lock().expect("the disk lock is never poisoned");
        if state.incarnation != self.incarnation {
            return Err(dead());
        }
        Ok(state)
    }

    pub fn set_fault(&self, fault: DiskFault) {
        self.state.lock().expect("not poisoned").fault = fault;
    }

    /// The power fails: each dirty page survives if `keep` says so; the cache is lost.
    /// Returns the handle for the next incarnation.
    pub fn crash(&self, mut keep: impl FnMut() -> bool) -> SimDisk {
        let mut state = self.state.lock().expect("not poisoned");
        for file in state.files.values_mut() {
            if file.dirty.is_empty() {
                continue;
            }
            for page in std::mem::take(&mut file.dirty) {
                if keep() {
                    file.persist_page(page);
                }
            }
            file.cached = file.durable.clone();
        }
        state.fault = DiskFault::None;
        state.incarnation += 1;
        SimDisk {
            state: self.state.clone(),
            incarnation: state.incarnation,
        }
    }
}

/// Bytes as the log reads them: an anonymous read-only map (the log reads files through
/// memory maps).
fn contents(bytes: &[u8]) -> io::Result<Contents> {
    if bytes.is_empty() {
        return Ok(Contents::Empty);
    }
    let mut map = memmap2::MmapMut::map_anon(bytes.len())?;
    map.copy_from_slice(bytes);
    Ok(Contents::Mapped(map.make_read_only()?))
}

impl Storage for SimDisk {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        self.alive().map(|_| ())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let state = self.alive()?;
        Ok(state
            .files
            .keys()
            .filter(|path| path.parent() == Some(dir))
            .filter_map(|path| Some(path.file_name()?.to_str()?.to_string()))
            .collect())
    }

    fn create_zeroed(&self, path: &Path, bytes: u64) -> io::Result<()> {
        let mut state = self.alive()?;
        let file = File::durable(vec![0; bytes as usize]);
        state.files.insert(path.to_path_buf(), file);
        Ok(())
    }

    fn open_segment(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        let state = self.alive()?;
        if !state.files.contains_key(path) {
            return Err(not_found(path));
        }
        Ok(Arc::new(SimSegment {
            disk: self.clone(),
            path: path.to_path_buf(),
        }))
    }

    fn read(&self, path: &Path) -> io::Result<Contents> {
        let state = self.alive()?;
        let file = state.files.get(path).ok_or_else(|| not_found(path))?;
        contents(&file.cached)
    }

    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.alive()?;
        if state.fault == DiskFault::WritesFail {
            return Err(io::Error::from_raw_os_error(DISK_FULL));
        }
        state
            .files
            .insert(path.to_path_buf(), File::durable(bytes.to_vec()));
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.alive()?;
        let file = state.files.remove(from).ok_or_else(|| not_found(from))?;
        state.files.insert(to.to_path_buf(), file);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.alive()?;
        state
            .files
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| not_found(path))
    }
}

#[derive(Debug)]
struct SimSegment {
    disk: SimDisk,
    path: PathBuf,
}

impl SegmentFile for SimSegment {
    fn write_at(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mut state = self.disk.alive()?;
        let (bytes, result) = match state.fault {
            DiskFault::WritesFail => (
                &bytes[..bytes.len() / 2],
                Err(io::Error::from_raw_os_error(DISK_FULL)),
            ),
            _ => (bytes, Ok(())),
        };
        let file = state
            .files
            .get_mut(&self.path)
            .ok_or_else(|| not_found(&self.path))?;
        let start = offset as usize;
        let end = start + bytes.len();
        if file.cached.len() < end {
            file.cached.resize(end, 0);
        }
        file.cached[start..end].copy_from_slice(bytes);
        if end > start {
            file.dirty
                .extend(start / PAGE_BYTES..=(end - 1) / PAGE_BYTES);
        }
        result
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut state = self.disk.alive()?;
        if state.fault == DiskFault::SyncsFail {
            return Err(io::Error::from_raw_os_error(IO_ERROR));
        }
        let file = state
            .files
            .get_mut(&self.path)
            .ok_or_else(|| not_found(&self.path))?;
        for page in std::mem::take(&mut file.dirty) {
            file.persist_page(page);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_pages_are_lost_in_a_crash_and_synced_ones_are_kept() {
        let disk = SimDisk::new();
        let path = Path::new("shard-0/wal.log");
        disk.create_zeroed(path, 3 * PAGE_BYTES as u64).unwrap();
        let segment = disk.open_segment(path).unwrap();
        segment.write_at(0, b"synced").unwrap();
        segment.sync_data().unwrap();
        segment.write_at(PAGE_BYTES as u64, b"lost").unwrap();
        segment.write_at(2 * PAGE_BYTES as u64, b"kept").unwrap();
        let mut decisions = [false, true].into_iter();
        let disk = disk.crash(|| decisions.next().unwrap());
        let bytes = disk.read(path).unwrap();
        assert_eq!(&bytes[..6], b"synced");
        assert_eq!(&bytes[PAGE_BYTES..PAGE_BYTES + 4], &[0; 4]);
        assert_eq!(&bytes[2 * PAGE_BYTES..2 * PAGE_BYTES + 4], b"kept");
        assert!(segment.write_at(0, b"late").is_err(), "the dead process");
    }

    #[test]
    fn faults_fail_syncs_and_tear_writes() {
        let disk = SimDisk::new();
        let path = Path::new("shard-0/wal.log");
        disk.create_zeroed(path, PAGE_BYTES as u64).unwrap();
        let segment = disk.open_segment(path).unwrap();
        disk.set_fault(DiskFault::SyncsFail);
        segment.write_at(0, b"abcd").unwrap();
        assert!(segment.sync_data().is_err());
        disk.set_fault(DiskFault::WritesFail);
        assert!(segment.write_at(0, b"wxyz").is_err());
        assert_eq!(&disk.read(path).unwrap()[..4], b"wxcd");
        assert_eq!(disk.list(Path::new("shard-0")).unwrap(), ["wal.log"]);
    }
}
