//! The file-system seam of the log: everything the WAL does to disk goes through
//! [`Storage`], so tests can make any write, sync or file creation fail (disk full, I/O
//! error) and check that nothing unflushed is acknowledged.
//!
//! [`FileStorage`] is the real one: positioned writes (`pwrite`) and `fdatasync` into
//! preallocated files, reads through a read-only memory map, atomic replacement by
//! write-to-temporary, fsync, rename, fsync the directory.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Deref;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A file the log appends to.
pub trait SegmentFile: Send + Sync + fmt::Debug {
    fn write_at(&self, offset: u64, bytes: &[u8]) -> io::Result<()>;
    /// Makes every write so far durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
}

/// The file operations of the log.
pub trait Storage: Send + Sync + fmt::Debug {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the files in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates `path` holding `bytes` zero bytes, durably: written under a temporary name,
    /// synced, renamed, and the directory synced.
    fn create_zeroed(&self, path: &Path, bytes: u64) -> io::Result<()>;
    fn open_segment(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>>;
    /// Maps a whole file for reading.
    fn read(&self, path: &Path) -> io::Result<Contents>;
    /// Replaces `path` with `contents` atomically and durably.
    fn write_atomic(&self, path: &Path, contents: &[u8]) -> io::Result<()>;
    /// Renames and syncs the directory.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
}

/// The bytes of a file: a read-only memory map, or empty for an empty file.
pub enum Contents {
    Mapped(memmap2::Mmap),
    Empty,
}

impl fmt::Debug for Contents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Contents({} bytes)", self.len())
    }
}

impl Deref for Contents {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Contents::Mapped(map) => map,
            Contents::Empty => &[],
        }
    }
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct FileStorage;

#[derive(Debug)]
struct RealSegment(File);

impl SegmentFile for RealSegment {
    fn write_at(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.0.write_all_at(bytes, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
}

fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty());
    File::open(parent.unwrap_or(Path::new(".")))?.sync_all()
}

fn temporary(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

impl Storage for FileStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn create_zeroed(&self, path: &Path, bytes: u64) -> io::Result<()> {
        const CHUNK: usize = 1 << 20;
        let temporary = temporary(path);
        let mut file = File::create(&temporary)?;
        let zeros = vec![0u8; CHUNK];
        let mut left = bytes;
        while left > 0 {
            let now = left.min(CHUNK as u64) as usize;
            file.write_all(&zeros[..now])?;
            left -= now as u64;
        }
        file.sync_all()?;
        fs::rename(&temporary, path)?;
        sync_parent(path)
    }

    fn open_segment(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Arc::new(RealSegment(file)))
    }

    #[allow(unsafe_code)]
    fn read(&self, path: &Path) -> io::Result<Contents> {
        let file = File::open(path)?;
        if file.metadata()?.len() == 0 {
            return Ok(Contents::Empty);
        }
        // SAFETY: the map is read-only and private to this process. The files mapped are the
        // log's own, which only this process writes (the data directory is locked), and
        // only at offsets past what recovery reads while the map is alive.
        let map = unsafe { memmap2::Mmap::map(&file)? };
        Ok(Contents::Mapped(map))
    }

    fn write_atomic(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        let temporary = temporary(path);
        let write = || -> io::Result<()> {
            let mut file = File::create(&temporary)?;
            file.write_all(contents)?;
            file.sync_all()?;
            fs::rename(&temporary, path)?;
            sync_parent(path)
        };
        let result = write();
        if result.is_err() {
            // A failed attempt leaves nothing behind (no pile of half-written snapshots).
            let _ = fs::remove_file(&temporary);
        }
        result
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)?;
        sync_parent(to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
}

/// Which operation a [`FaultyStorage`] fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultPoint {
    Write,
    Sync,
    Create,
}

/// Real files, with failures on demand: after `n` more successful operations of a kind,
/// every later one fails (a write first writes half its bytes, as a torn write would)
/// until [`FaultyStorage::heal`].
#[derive(Debug, Clone, Default)]
pub struct FaultyStorage {
    plan: Arc<FaultPlan>,
}

#[derive(Debug)]
struct FaultPlan {
    /// Successful operations left per [`FaultPoint`] before failing; `u64::MAX`: never fail.
    left: [AtomicU64; 3],
    /// The OS error to fail with (28 ENOSPC, 5 EIO).
    error: AtomicU64,
}

impl Default for FaultPlan {
    fn default() -> Self {
        FaultPlan {
            left: [
                AtomicU64::new(u64::MAX),
                AtomicU64::new(u64::MAX),
                AtomicU64::new(u64::MAX),
            ],
            error: AtomicU64::new(5),
        }
    }
}

/// `ENOSPC`: the disk is full.
pub const DISK_FULL: i32 = 28;
/// `EIO`: an I/O error.
pub const IO_ERROR: i32 = 5;

impl FaultyStorage {
    /// Fails `point` with OS error `error` after `successes` more successes.
    pub fn fail(&self, point: FaultPoint, successes: u64, error: i32) {
        self.plan.error.store(error as u64, Ordering::SeqCst);
        self.plan.left[point as usize].store(successes, Ordering::SeqCst);
    }

    /// Stops failing.
    pub fn heal(&self) {
        for left in &self.plan.left {
            left.store(u64::MAX, Ordering::SeqCst);
        }
    }

    fn check(&self, point: FaultPoint) -> io::Result<()> {
        let left = &self.plan.left[point as usize];
        let result = left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| match left {
            u64::MAX => None,
            0 => None,
            n => Some(n - 1),
        });
        match result {
            Err(0) => Err(io::Error::from_raw_os_error(
                self.plan.error.load(Ordering::SeqCst) as i32,
            )),
            _ => Ok(()),
        }
    }
}

#[derive(Debug)]
struct FaultySegment {
    inner: Arc<dyn SegmentFile>,
    storage: FaultyStorage,
}

impl SegmentFile for FaultySegment {
    fn write_at(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        if let Err(error) = self.storage.check(FaultPoint::Write) {
            let _ = self.inner.write_at(offset, &bytes[..bytes.len() / 2]);
            return Err(error);
        }
        self.inner.write_at(offset, bytes)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.storage.check(FaultPoint::Sync)?;
        self.inner.sync_data()
    }
}

impl Storage for FaultyStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        FileStorage.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        FileStorage.list(dir)
    }
    fn create_zeroed(&self, path: &Path, bytes: u64) -> io::Result<()> {
        self.check(FaultPoint::Create)?;
        FileStorage.create_zeroed(path, bytes)
    }
    fn open_segment(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        Ok(Arc::new(FaultySegment {
            inner: FileStorage.open_segment(path)?,
            storage: self.clone(),
        }))
    }
    fn read(&self, path: &Path) -> io::Result<Contents> {
        FileStorage.read(path)
    }
    fn write_atomic(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        self.check(FaultPoint::Create)?;
        FileStorage.write_atomic(path, contents)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        FileStorage.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        FileStorage.remove(path)
    }
}
