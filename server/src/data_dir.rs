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
//! - `incarnation`: one line, 16 lowercase hex digits: a random u64, never 0, drawn when
//!   the directory is first opened (or first opened by a version that has incarnations)
//!   and never changed. A directory created anew draws another, which is how the peers
//!   tell a node that lost its data from the node it was (see `peer/incarnations.rs`).
//!   Written atomically, before anything but `LOCK` of a new directory, and so before any
//!   peer can be told it.
//! - `peers-seen`: the incarnation this node saw of each peer node, one line per node in
//!   ascending order, `NODE_ID INCARNATION` (decimal, then 16 hex digits); absent or empty
//!   while none was seen. Rewritten whole, atomically, when one is learned or forgotten.
//!
//! Recovery: a leftover `<name>.tmp` (a crash during an atomic write) is ignored and
//! overwritten by the next write; the file it was for holds the old contents, whole. A
//! file that does not read as its format is reported (`Corrupt`), never reset: a reset
//! epoch could repeat tokens, a reset incarnation or `peers-seen` would undo the guard
//! against a node that lost its data.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::peer::IncarnationStore;
use crate::raft::NodeId;
use crate::shard::tokens::EPOCH_MAX;

/// The file of the directory's incarnation.
const INCARNATION_FILE: &str = "incarnation";
/// The file of the incarnations this node saw of its peers.
const PEERS_SEEN_FILE: &str = "peers-seen";

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
    #[error("{path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
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
    /// Drawn when the directory was created, never 0.
    incarnation: u64,
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
        let mut data_dir = DataDir {
            path: path.to_path_buf(),
            _lock: lock,
            incarnation: 0,
            epoch_update: Mutex::new(()),
        };
        data_dir.incarnation = data_dir.read_or_draw_incarnation()?;
        Ok(data_dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This directory's incarnation: random, never 0, drawn when it was created and the
    /// same at every open since. Every peer handshake carries it.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    fn read_or_draw_incarnation(&self) -> Result<u64, DataDirError> {
        let path = self.path.join(INCARNATION_FILE);
        match fs::read_to_string(&path) {
            Ok(text) => parse_incarnation(text.trim()).ok_or_else(|| DataDirError::Corrupt {
                path,
                detail: format!(
                    "expected 16 hex digits, not all zero, found {:?}; a directory that lost its \
                     incarnation is treated as lost: remove this node (kahu-cli --remove-node) \
                     and add a new node with a new id and an empty directory (--join)",
                    text.chars().take(40).collect::<String>()
                ),
            }),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let incarnation = random_incarnation();
                self.write_atomically(
                    INCARNATION_FILE,
                    format!("{incarnation:016x}\n").as_bytes(),
                )?;
                Ok(incarnation)
            }
            Err(source) => Err(DataDirError::Read { path, source }),
        }
    }

    /// The incarnation this node saw of each peer node (none for a new directory).
    pub fn peers_seen(&self) -> Result<BTreeMap<NodeId, u64>, DataDirError> {
        let path = self.path.join(PEERS_SEEN_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(source) => return Err(DataDirError::Read { path, source }),
        };
        parse_peers_seen(&text).map_err(|detail| DataDirError::Corrupt {
            path,
            detail: format!(
                "{detail}; it is not reset by itself: deleting it makes this node trust the next \
                 incarnation each peer shows it"
            ),
        })
    }

    /// Replaces `peers-seen` with `seen`, atomically and durably.
    pub fn write_peers_seen(&self, seen: &BTreeMap<NodeId, u64>) -> Result<(), DataDirError> {
        let mut text = String::new();
        for (node, incarnation) in seen {
            assert!(
                *node != 0 && *incarnation != 0,
                "node {node} incarnation {incarnation}"
            );
            text.push_str(&format!("{node} {incarnation:016x}\n"));
        }
        self.write_atomically(PEERS_SEEN_FILE, text.as_bytes())
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

impl IncarnationStore for DataDir {
    fn save(&self, seen: &BTreeMap<NodeId, u64>) -> io::Result<()> {
        self.write_peers_seen(seen).map_err(|error| {
            let kind = match &error {
                DataDirError::Write { source, .. } => source.kind(),
                _ => io::ErrorKind::Other,
            };
            io::Error::new(kind, error.to_string())
        })
    }
}

/// A random u64, never 0. `RandomState`'s keys come from the operating system's random
/// source; the time and the process id are hashed too, so two directories created in one
/// process draw different values.
fn random_incarnation() -> u64 {
    loop {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        let now = SystemTime::now().duration_since(UNIX_EPOCH);
        hasher.write_u128(now.map_or(0, |since| since.as_nanos()));
        hasher.write_u32(std::process::id());
        let value = hasher.finish();
        if value != 0 {
            return value;
        }
    }
}

/// Reads 16 hex digits, not all zero.
fn parse_incarnation(text: &str) -> Option<u64> {
    if text.len() != 16 || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(text, 16)
        .ok()
        .filter(|&value| value != 0)
}

/// Reads `peers-seen`: lines of `NODE_ID INCARNATION`, node ids ascending and never 0.
fn parse_peers_seen(text: &str) -> Result<BTreeMap<NodeId, u64>, String> {
    let mut seen = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let number = number + 1;
        let fields: Vec<&str> = line.split(' ').collect();
        let [node, incarnation] = fields[..] else {
            return Err(format!(
                "line {number} is not `NODE_ID INCARNATION`: {line:?}"
            ));
        };
        let node = node
            .parse::<NodeId>()
            .ok()
            .filter(|&node| node != 0)
            .ok_or_else(|| format!("line {number}: `{node}` is not a node id"))?;
        let incarnation = parse_incarnation(incarnation)
            .ok_or_else(|| format!("line {number}: `{incarnation}` is not an incarnation"))?;
        if seen.last_key_value().is_some_and(|(&last, _)| last >= node) {
            return Err(format!("line {number}: node {node} is out of order"));
        }
        seen.insert(node, incarnation);
    }
    Ok(seen)
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
    fn a_directory_draws_its_incarnation_once_and_keeps_it() {
        // Phase 1: a new directory draws one, before anything else is written.
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path()).unwrap().incarnation();
        assert_ne!(first, 0);
        let stored = fs::read_to_string(dir.path().join("incarnation")).unwrap();
        assert_eq!(stored, format!("{first:016x}\n"));

        // Phase 2: every later open reads the same one.
        for _ in 0..3 {
            assert_eq!(DataDir::open(dir.path()).unwrap().incarnation(), first);
        }

        // Phase 3: the directory created anew, at the same path, draws another.
        fs::remove_dir_all(dir.path()).unwrap();
        let again = DataDir::open(dir.path()).unwrap().incarnation();
        assert_ne!(again, first);
    }

    #[test]
    fn a_directory_of_an_earlier_version_draws_an_incarnation_and_keeps_its_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("epoch"), "7\n").unwrap();
        fs::write(dir.path().join("shards"), "4\n").unwrap();
        let data_dir = DataDir::open(dir.path()).unwrap();
        assert_ne!(data_dir.incarnation(), 0);
        assert_eq!(data_dir.shard_count(0, 8).unwrap(), 4);
        assert_eq!(data_dir.next_epoch().unwrap(), 8);
    }

    #[test]
    fn a_corrupt_incarnation_is_reported_not_drawn_again() {
        for text in ["", "0000000000000000\n", "12345\n", "zz3a5c2e9d1b4761\n"] {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join("incarnation"), text).unwrap();
            let error = DataDir::open(dir.path()).unwrap_err();
            assert!(
                matches!(error, DataDirError::Corrupt { .. }),
                "{text:?}: {error}"
            );
            assert!(error.to_string().contains("--remove-node"), "{error}");
            assert_eq!(
                fs::read_to_string(dir.path().join("incarnation")).unwrap(),
                text
            );
        }
    }

    #[test]
    fn the_seen_incarnations_round_trip_and_a_torn_write_leaves_the_old_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = DataDir::open(dir.path()).unwrap();

        // Phase 1: none at first; what is written reads back, in a fixed text form.
        assert_eq!(data_dir.peers_seen().unwrap(), BTreeMap::new());
        let seen = BTreeMap::from([(2, 0x8f3a_5c2e_9d1b_4762), (13, 1)]);
        data_dir.write_peers_seen(&seen).unwrap();
        let text = fs::read_to_string(dir.path().join("peers-seen")).unwrap();
        assert_eq!(text, "2 8f3a5c2e9d1b4762\n13 0000000000000001\n");
        assert_eq!(data_dir.peers_seen().unwrap(), seen);

        // Phase 2: a crash while writing the next map leaves its temporary file behind,
        // cut short; the file itself is the old map, whole.
        fs::write(
            dir.path().join("peers-seen.tmp"),
            "2 8f3a5c2e9d1b4762\n3 8f",
        )
        .unwrap();
        assert_eq!(data_dir.peers_seen().unwrap(), seen);

        // Phase 3: the next write replaces both; through the store seam too.
        let fewer = BTreeMap::from([(13, 1)]);
        IncarnationStore::save(&data_dir, &fewer).unwrap();
        assert_eq!(data_dir.peers_seen().unwrap(), fewer);
        assert!(!dir.path().join("peers-seen.tmp").exists());
        data_dir.write_peers_seen(&BTreeMap::new()).unwrap();
        assert_eq!(data_dir.peers_seen().unwrap(), BTreeMap::new());
    }

    #[test]
    fn a_corrupt_seen_incarnations_file_is_reported_not_reset() {
        let cases = [
            (
                "2 8f3a5c2e9d1b4762 extra\n",
                "line 1 is not `NODE_ID INCARNATION`",
            ),
            ("0 8f3a5c2e9d1b4762\n", "line 1: `0` is not a node id"),
            (
                "2 0000000000000000\n",
                "line 1: `0000000000000000` is not an incarnation",
            ),
            ("2 8f3a\n", "line 1: `8f3a` is not an incarnation"),
            (
                "3 8f3a5c2e9d1b4762\n2 8f3a5c2e9d1b4762\n",
                "line 2: node 2 is out of order",
            ),
        ];
        for (text, expected) in cases {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join("peers-seen"), text).unwrap();
            let error = DataDir::open(dir.path()).unwrap().peers_seen().unwrap_err();
            assert!(matches!(error, DataDirError::Corrupt { .. }), "{error}");
            assert!(error.to_string().contains(expected), "{expected}: {error}");
        }
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
