//! A simulated disk for tests: segment writes stay volatile until `sync_data`, and a power
//! cut keeps a random subset of the unsynced 4 KiB pages of each file (including later
//! pages without earlier ones, as real disks may). File creation, renames and snapshots
//! go to the real file system and are durable when they return, as `Storage` promises.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::storage::{Contents, FileStorage, SegmentFile, Storage};

const PAGE_BYTES: u64 = 4096;

/// Unsynced writes per file: (offset, bytes), in order.
#[derive(Debug, Default)]
struct Volatile {
    writes: HashMap<PathBuf, Vec<(u64, Vec<u8>)>>,
}

#[derive(Debug, Clone, Default)]
pub struct PowerCutStorage {
    volatile: Arc<Mutex<Volatile>>,
    /// The power is failing: syncs do not complete.
    failing: Arc<AtomicBool>,
}

impl PowerCutStorage {
    /// From now until the cut, every sync fails (the power is going).
    pub fn fail_syncs(&self) {
        self.failing.store(true, Ordering::SeqCst);
    }

    /// The power fails: for every file, each unsynced page survives or not by `keep`
    /// (called with the file and page number), then everything unsynced is forgotten.
    pub fn cut(&self, mut keep: impl FnMut(&Path, u64) -> bool) {
        self.failing.store(false, Ordering::SeqCst);
        let mut volatile = self.volatile.lock().unwrap();
        for (path, writes) in volatile.writes.drain() {
            let mut durable = std::fs::read(&path).expect("segment exists");
            // Pages as the writes left them, from the durable image.
            let mut touched: HashMap<u64, Vec<u8>> = HashMap::new();
            for (offset, bytes) in &writes {
                for (position, byte) in bytes.iter().enumerate() {
                    let at = offset + position as u64;
                    let page = at / PAGE_BYTES;
                    let image = touched.entry(page).or_insert_with(|| {
                        let start = (page * PAGE_BYTES) as usize;
                        let end = (start + PAGE_BYTES as usize).min(durable.len());
                        durable[start..end].to_vec()
                    });
                    image[(at % PAGE_BYTES) as usize] = *byte;
                }
            }
            for (page, image) in touched {
                if keep(&path, page) {
                    let start = (page * PAGE_BYTES) as usize;
                    durable[start..start + image.len()].copy_from_slice(&image);
                }
            }
            std::fs::write(&path, durable).expect("write the surviving image");
        }
    }
}

struct SimulatedSegment {
    path: PathBuf,
    volatile: Arc<Mutex<Volatile>>,
    failing: Arc<AtomicBool>,
}

impl fmt::Debug for SimulatedSegment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimulatedSegment({})", self.path.display())
    }
}

impl SegmentFile for SimulatedSegment {
    fn write_at(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mut volatile = self.volatile.lock().unwrap();
        volatile
            .writes
            .entry(self.path.clone())
            .or_default()
            .push((offset, bytes.to_vec()));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(super::storage::IO_ERROR));
        }
        let writes = self.volatile.lock().unwrap().writes.remove(&self.path);
        if let Some(writes) = writes {
            let file = FileStorage.open_segment(&self.path)?;
            for (offset, bytes) in writes {
                file.write_at(offset, &bytes)?;
            }
        }
        Ok(())
    }
}

impl Storage for PowerCutStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        FileStorage.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        FileStorage.list(dir)
    }
    fn create_zeroed(&self, path: &Path, bytes: u64) -> io::Result<()> {
        FileStorage.create_zeroed(path, bytes)
    }
    fn open_segment(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        Ok(Arc::new(SimulatedSegment {
            path: path.to_path_buf(),
            volatile: self.volatile.clone(),
            failing: self.failing.clone(),
        }))
    }
    fn read(&self, path: &Path) -> io::Result<Contents> {
        FileStorage.read(path)
    }
    fn write_atomic(&self, path: &Path, contents: &[u8]) -> io::Result<()> {
        FileStorage.write_atomic(path, contents)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        FileStorage.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        FileStorage.remove(path)
    }
}
