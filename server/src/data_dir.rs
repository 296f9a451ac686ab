//! The data directory: held by one server at a time, and home of the epoch.
//!
//! Until the write-ahead log lands, the lock table lives in memory, but fencing tokens must
//! still never repeat across restarts. The epoch is the high part of every token (see
//! `shard/tokens.rs`); it is stored in `epoch` and raised before any token of a new run is
//! handed out, so every token of this run is larger than every token of any earlier run.
//!
//! Files:
//! - `LOCK`: held with an exclusive advisory lock (`flock`) for the life of the server; a
//!   second server on the same directory exits with a message naming the directory.
//! - `shards`: the shard count, fixed when the directory is first used: keys are placed on
//!   shards by hash, so another count would look for locks in the wrong logs.
//! - `shard-<n>/`: each shard's write-ahead log (see `wal`).
//! - `epoch`: one line, the highest epoch ever handed out, in decimal. Written atomically:
//!   `epoch.tmp` is written and fsynced, renamed over `epoch`, then the directory is fsynced.
//!   A crash at any point leaves either the old or the new value, never a torn one.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::shard::tokens::EPOCH_MAX;

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot create data directory {path}: {source}")]
    Create { path: PathBuf, source: io::Error },
    #[error("data directory {path} is in use by another kahu-server (its LOCK file is held); stop that server or choose another --data-dir")]
    InUse { path: PathBuf },
    #[error("cannot lock {path}: {source}")]
    Lock { path: PathBuf, source: io::Error },
    #[error("{path} is corrupt: expected one decimal number, found {found:?}")]
    CorruptEpoch { path: PathBuf, found: String },
    #[error("epoch space exhausted in {path}: every epoch up to {EPOCH_MAX} was used")]
    EpochsExhausted { path: PathBuf },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} was created with {stored} shards; --shards {requested} cannot open it (keys are placed by hash, so the shard count of a data directory never changes; leave --shards at 0 to use the stored count)")]
    ShardCountMismatch {
        path: PathBuf,
        stored: usize,
        requested: usize,
    },
    #[error("{path} belongs to cluster {stored:?}; this server was started with {requested:?} (the cluster name and its founding nodes are fixed when a data directory is created; add or remove nodes with a membership change, or use another --data-dir)")]
    ClusterMismatch {
        path: PathBuf,
        stored: String,
        requested: String,
    },
}

/// An open data directory. Dropping it releases the directory lock.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
    /// Serialises read-raise-write of the epoch between shard workers (a rare path: at
    /// start, and once per 2^40 grants of a shard).
    epoch_update: Mutex<()>,
}

impl DataDir {
    /// Creates the directory if missing and takes its lock.
    pub fn open(path: &Path) -> Result<DataDir, DataDirError> {
        fs::create_dir_all(path).map_err(|source| DataDirError::Create {
            path: path.to_path_buf(),
            source,
        })?;
        let lock_path = path.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|source| DataDirError::Lock {
                path: lock_path.clone(),
                source,
            })?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(DataDirError::InUse {
                    path: path.to_path_buf(),
                })
            }
            Err(TryLockError::Error(source)) => {
                return Err(DataDirError::Lock {
                    path: lock_path,
                    source,
                })
            }
        }
        Ok(DataDir {
            path: path.to_path_buf(),
            _lock: lock,
            epoch_update: Mutex::new(()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The shard count of this directory: the stored one, or `requested` (0: `default`)
    /// stored now for a new directory. A different explicit request is an error.
    pub fn shard_count(&self, requested: usize, default: usize) -> Result<usize, DataDirError> {
        let path = self.path.join("shards");
        match fs::read_to_string(&path) {
            Ok(text) => {
                let stored =
                    text.trim()
                        .parse::<usize>()
                        .map_err(|_| DataDirError::CorruptEpoch {
                            path: path.clone(),
                            found: text.chars().take(40).collect(),
                        })?;
                if requested != 0 && requested != stored {
                    return Err(DataDirError::ShardCountMismatch {
                        path: self.path.clone(),
                        stored,
                        requested,
                    });
                }
                Ok(stored)
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let count = if requested == 0 { default } else { requested };
                self.write_atomically("shards", format!("{count}\n").as_bytes())?;
                Ok(count)
            }
            Err(source) => Err(DataDirError::Read { path, source }),
        }
    }

    /// Checks that this directory belongs to node `node` of the cluster `name` founded by
    /// `voters` (a single node: itself), storing all three for a new directory. A node's logs hold the
    /// cluster's history, so a directory must never change clusters or be reused as a
    /// different founding configuration.
    pub fn check_cluster(&self, name: &str, voters: &[u64], node: u64) -> Result<(), DataDirError> {
        let voters: Vec<String> = voters.iter().map(u64::to_string).collect();
        let requested = format!("name={name} founders={} node={node}", voters.join(","));
        let path = self.path.join("cluster");
        match fs::read_to_string(&path) {
            Ok(text) if text.trim() == requested => Ok(()),
            Ok(text) => Err(DataDirError::ClusterMismatch {
                path,
                stored: text.trim().to_string(),
                requested,
            }),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                self.write_atomically("cluster", format!("{requested}\n").as_bytes())
            }
            Err(source) => Err(DataDirError::Read { path, source }),
        }
    }

    /// The directory of shard `shard`'s log.
    pub fn shard_path(&self, shard: usize) -> PathBuf {
        self.path.join(format!("shard-{shard}"))
    }

    /// Raises the stored epoch to at least `minimum`, and by one past what it was,
    /// durably, and returns the new value. Recovery passes one more than the epoch of the
    /// largest token in the logs, so tokens keep growing even if `epoch` was lost.
    pub fn next_epoch_at_least(&self, minimum: u64) -> Result<u64, DataDirError> {
        self.raise_epoch(minimum)
    }

    /// Raises the stored epoch by one, durably, and returns the new value.
    pub fn next_epoch(&self) -> Result<u64, DataDirError> {
        self.raise_epoch(0)
    }

    fn raise_epoch(&self, minimum: u64) -> Result<u64, DataDirError> {
        let _serialised = self
            .epoch_update
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let path = self.path.join("epoch");
        let current = match fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|_| DataDirError::CorruptEpoch {
                    path: path.clone(),
                    found: text.chars().take(40).collect(),
                })?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => 0,
            Err(source) => return Err(DataDirError::Read { path, source }),
        };
        let next = (current + 1).max(minimum);
        if next > EPOCH_MAX {
            return Err(DataDirError::EpochsExhausted { path });
        }
        self.write_atomically("epoch", format!("{next}\n").as_bytes())?;
        Ok(next)
    }

    fn write_atomically(&self, name: &str, contents: &[u8]) -> Result<(), DataDirError> {
        let path = self.path.join(name);
        let temporary = self.path.join(format!("{name}.tmp"));
        let write = || -> io::Result<()> {
            let mut file = File::create(&temporary)?;
            file.write_all(contents)?;
            file.sync_all()?;
            fs::rename(&temporary, &path)?;
            File::open(&self.path)?.sync_all()
        };
        write().map_err(|source| DataDirError::Write { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_stays_with_its_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = DataDir::open(dir.path()).unwrap();
        data_dir.check_cluster("kahu", &[1, 2, 3], 2).unwrap();
        data_dir.check_cluster("kahu", &[1, 2, 3], 2).unwrap();
        let error = data_dir
            .check_cluster("kahu", &[1], 2)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("founders=1,2,3") && error.contains("founders=1 "),
            "{error}"
        );
        assert!(data_dir.check_cluster("other", &[1, 2, 3], 2).is_err());
        assert!(
            data_dir.check_cluster("kahu", &[1, 2, 3], 3).is_err(),
            "another node's directory"
        );
    }

    #[test]
    fn epochs_grow_across_opens() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path()).unwrap().next_epoch().unwrap();
        let second = DataDir::open(dir.path()).unwrap().next_epoch().unwrap();
        assert_eq!(first, 1);
        assert_eq!(second, 2);
        assert_eq!(fs::read_to_string(dir.path().join("epoch")).unwrap(), "2\n");
    }

    #[test]
    fn a_second_server_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = DataDir::open(dir.path()).unwrap();
        let second = DataDir::open(dir.path()).unwrap_err();
        assert!(matches!(second, DataDirError::InUse { .. }), "{second}");
        assert!(second.to_string().contains("in use by another kahu-server"));
    }

    #[test]
    fn the_shard_count_is_fixed_at_first_use() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = DataDir::open(dir.path()).unwrap();
        assert_eq!(data_dir.shard_count(0, 4).unwrap(), 4);
        assert_eq!(
            data_dir.shard_count(0, 8).unwrap(),
            4,
            "auto uses the stored count"
        );
        assert_eq!(data_dir.shard_count(4, 8).unwrap(), 4);
        let error = data_dir.shard_count(2, 8).unwrap_err();
        assert!(
            error.to_string().contains("created with 4 shards"),
            "{error}"
        );
    }

    #[test]
    fn the_epoch_can_be_raised_past_what_the_logs_hold() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = DataDir::open(dir.path()).unwrap();
        assert_eq!(data_dir.next_epoch().unwrap(), 1);
        assert_eq!(data_dir.next_epoch_at_least(9).unwrap(), 9);
        assert_eq!(data_dir.next_epoch_at_least(3).unwrap(), 10);
    }

    #[test]
    fn a_corrupt_epoch_is_reported_not_reset() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("epoch"), "seven\n").unwrap();
        let error = DataDir::open(dir.path()).unwrap().next_epoch().unwrap_err();
        assert!(
            matches!(error, DataDirError::CorruptEpoch { .. }),
            "{error}"
        );
    }

    #[test]
    fn an_exhausted_epoch_space_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("epoch"), format!("{EPOCH_MAX}\n")).unwrap();
        let error = DataDir::open(dir.path()).unwrap().next_epoch().unwrap_err();
        assert!(
            matches!(error, DataDirError::EpochsExhausted { .. }),
            "{error}"
        );
    }
}
