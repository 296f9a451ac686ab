//! What one durable commit of a batch of log records costs, by how the log is written.
//!
//! A shard makes the records of a whole batch durable at once (group commit, see
//! `kahu_server::wal`). This bench times that commit, one batch after another on one thread,
//! for each way of writing the log that the WAL issue asked to compare:
//!
//! | id | a commit is |
//! |---|---|
//! | `a_wal` | `Wal::append` per record + `Wal::commit`: one `pwrite` + `fdatasync` into a segment zero-filled beforehand. What the server does. |
//! | `a_raw` | the same two system calls without `Wal` (control for `Wal`'s own cost) |
//! | `b_mmap_msync` | copy into a `MmapMut` of a zero-filled file + `flush_range` (`msync`) of the range |
//! | `c_o_dsync` | `pwrite` into a zero-filled file opened `O_DSYNC`, no sync call |
//! | `d_growing` | `pwrite` at the end of a file that grows + `fdatasync` (no preallocation) |
//! | `e_fallocate` | `pwrite` + `fdatasync` into a `fallocate`d file (unwritten extents) |
//! | `f_raw_mapped` | `a_raw` while a read-only map of the file is alive and read back after every commit |
//!
//! Every record is a real encoded grant (`Record::Entry`, 10-byte key, 11-byte owner:
//! 67 bytes), encoded inside the timed commit as the server does. Batches of 1, 8 and 64
//! records. Files are 64 MiB; the clock is stopped while the log wraps to the start of the
//! file (or, for `d_growing`, truncates it; for `e_fallocate`, replaces it by a new
//! `fallocate`d one; for `a_wal`, opens a fresh log before the segment is half full, so no
//! spare segment is prepared in the background while timed). So only `d_growing` ever
//! extends a file while timed, and only `e_fallocate` writes into unwritten extents.
//!
//! Besides criterion's estimates (median of per-sample means, in
//! `target/criterion/wal_io/<id>/<batch>/new/estimates.json`), each case prints the
//! percentiles of the individual commits of its measured samples (warm-up excluded).
//!
//! Run: `cargo bench -p kahu-server --bench wal_io`. Files go to a temporary directory
//! under the target directory, on the repository's file system; `KAHU_WAL_BENCH_DIR`
//! points it elsewhere (e.g. `/dev/shm` as a no-op-sync control).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use kahu_server::wal::record::{Command, Entry, Record};
use kahu_server::wal::snapshot::Snapshot;
use kahu_server::wal::storage::{FileStorage, Storage};
use kahu_server::wal::{Replay, Wal, WalOptions};
use memmap2::{Mmap, MmapMut};

/// Size of every preallocated file, and the most a growing file reaches.
const FILE_BYTES: u64 = 64 << 20;
const BATCH_SIZES: [usize; 3] = [1, 8, 64];
const SAMPLE_COUNT: usize = 20;
const WARM_UP: Duration = Duration::from_secs(1);
const MEASUREMENT: Duration = Duration::from_millis(2500);
/// Distinct keys and owners the grants cycle through.
const KEY_COUNT: usize = 1024;
const OWNER_COUNT: usize = 64;
const TERM: u64 = 1;
const TTL_MS: u64 = 30_000;

/// The grants a shard would log, with increasing indexes and tokens.
struct Grants {
    keys: Vec<Bytes>,
    owners: Vec<Bytes>,
    next_index: u64,
}

impl Grants {
    fn new() -> Grants {
        Grants {
            keys: (0..KEY_COUNT)
                .map(|key| Bytes::from(format!("lock-{key:05}")))
                .collect(),
            owners: (0..OWNER_COUNT)
                .map(|owner| Bytes::from(format!("client-{owner:04}")))
                .collect(),
            next_index: 1,
        }
    }

    fn next_command(&mut self) -> Command {
        let index = self.next_index;
        self.next_index += 1;
        let slot = index as usize;
        Command::Grant {
            key: self.keys[slot % KEY_COUNT].clone(),
            owner: self.owners[slot % OWNER_COUNT].clone(),
            token: index,
            ttl_ms: TTL_MS,
        }
    }

    /// Replaces `buffer` with the next `count` grants, encoded.
    fn encode_batch(&mut self, count: usize, buffer: &mut Vec<u8>) {
        buffer.clear();
        for _ in 0..count {
            let index = self.next_index;
            let command = self.next_command();
            Record::Entry(Entry {
                index,
                term: TERM,
                kind: kahu_server::raft::EntryKind::Command(command),
            })
            .encode(buffer);
        }
    }
}

/// Bytes of one encoded grant (all grants here have the same size).
fn record_bytes() -> u64 {
    let mut buffer = Vec::new();
    Grants::new().encode_batch(1, &mut buffer);
    buffer.len() as u64
}

/// One way of making a batch of records durable.
trait DurableLog {
    /// Encodes `batch` records, writes them and makes them durable: the timed part.
    fn commit(&mut self, batch: usize) -> io::Result<()>;
    /// Untimed upkeep before the next commit of `batch` records: make room for it.
    fn between_commits(&mut self, batch: usize) -> io::Result<()>;
}

#[derive(Clone, Copy, Debug)]
enum Strategy {
    Wal,
    Raw,
    MmapMsync,
    OpenDsync,
    Growing,
    Fallocate,
    RawMapped,
}

impl Strategy {
    const ALL: [Strategy; 7] = [
        Strategy::Wal,
        Strategy::Raw,
        Strategy::MmapMsync,
        Strategy::OpenDsync,
        Strategy::Growing,
        Strategy::Fallocate,
        Strategy::RawMapped,
    ];

    fn id(self) -> &'static str {
        match self {
            Strategy::Wal => "a_wal",
            Strategy::Raw => "a_raw",
            Strategy::MmapMsync => "b_mmap_msync",
            Strategy::OpenDsync => "c_o_dsync",
            Strategy::Growing => "d_growing",
            Strategy::Fallocate => "e_fallocate",
            Strategy::RawMapped => "f_raw_mapped",
        }
    }

    /// Prepares the files of this strategy in the empty directory `dir`.
    fn open(self, dir: &Path) -> io::Result<Box<dyn DurableLog>> {
        let path = dir.join("log");
        Ok(match self {
            Strategy::Wal => Box::new(WalLog::open(dir)?),
            Strategy::Raw => Box::new(PwriteLog::zero_filled(&path, SyncCall::Fdatasync)?),
            Strategy::MmapMsync => Box::new(MappedLog::open(&path)?),
            Strategy::OpenDsync => Box::new(PwriteLog::zero_filled(&path, SyncCall::OpenDsync)?),
            Strategy::Growing => Box::new(PwriteLog::growing(&path)?),
            Strategy::Fallocate => Box::new(PwriteLog::fallocated(&path)?),
            Strategy::RawMapped => {
                let mut log = PwriteLog::zero_filled(&path, SyncCall::Fdatasync)?;
                log.map_for_reading()?;
                Box::new(log)
            }
        })
    }
}

/// Recovery of an empty log replays nothing.
struct NoReplay;

impl Replay for NoReplay {
    fn restore(&mut self, _snapshot: &Snapshot) {}
    fn apply(&mut self, _entry: Entry) {}
}

/// A: the server's own log.
struct WalLog {
    root: PathBuf,
    generation: u64,
    wal: Option<Wal>,
    /// Bytes in the tail segment, to open a fresh log before it is half full (when `Wal`
    /// starts zero-filling the next segment in the background).
    tail_bytes: u64,
    record_bytes: u64,
    grants: Grants,
}

impl WalLog {
    fn open(root: &Path) -> io::Result<WalLog> {
        let mut log = WalLog {
            root: root.to_path_buf(),
            generation: 0,
            wal: None,
            tail_bytes: 0,
            record_bytes: record_bytes(),
            grants: Grants::new(),
        };
        log.open_fresh()?;
        Ok(log)
    }

    fn directory(&self) -> PathBuf {
        self.root.join(format!("wal-{}", self.generation))
    }

    /// Replaces the log by a new one whose segment exists (the first commit creates it).
    fn open_fresh(&mut self) -> io::Result<()> {
        if self.wal.take().is_some() {
            fs::remove_dir_all(self.directory())?;
            self.generation += 1;
        }
        let options = WalOptions {
            segment_bytes: FILE_BYTES,
            sync: true,
            snapshot_log_bytes: u64::MAX,
        };
        let mut wal = Wal::open(
            &self.directory(),
            Arc::new(FileStorage),
            options,
            &mut NoReplay,
        )
        .map_err(io::Error::other)?;
        wal.append_command(TERM, self.grants.next_command());
        wal.commit().map_err(io::Error::other)?;
        self.tail_bytes = self.record_bytes;
        self.wal = Some(wal);
        Ok(())
    }
}

impl DurableLog for WalLog {
    fn commit(&mut self, batch: usize) -> io::Result<()> {
        let wal = self.wal.as_mut().expect("an open log");
        for _ in 0..batch {
            wal.append_command(TERM, self.grants.next_command());
        }
        wal.commit().map_err(io::Error::other)?;
        self.tail_bytes += batch as u64 * self.record_bytes;
        Ok(())
    }

    fn between_commits(&mut self, batch: usize) -> io::Result<()> {
        if self.tail_bytes + batch as u64 * self.record_bytes >= FILE_BYTES / 2 {
            self.open_fresh()?;
        }
        Ok(())
    }
}

/// How a [`PwriteLog`] makes a write durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SyncCall {
    Fdatasync,
    /// The file is opened `O_DSYNC`: each `pwrite` returns once its data is durable.
    OpenDsync,
}

/// What a [`PwriteLog`] does when the next batch would pass [`FILE_BYTES`].
#[derive(Clone, Copy, Debug)]
enum Wrap {
    /// Write again from the start of the preallocated file.
    Overwrite,
    /// Truncate to empty, so that appends keep growing the file.
    Truncate,
    /// Replace the file by a new `fallocate`d one, so writes keep converting extents.
    Refallocate,
}

/// A, C, D, E and F: positioned writes.
struct PwriteLog {
    path: PathBuf,
    file: File,
    sync: SyncCall,
    wrap: Wrap,
    /// A read-only map of the file, read back after each commit (F).
    reader: Option<Mmap>,
    offset: u64,
    last_offset: u64,
    record_bytes: u64,
    grants: Grants,
    buffer: Vec<u8>,
}

impl PwriteLog {
    fn new(path: &Path, file: File, sync: SyncCall, wrap: Wrap) -> PwriteLog {
        PwriteLog {
            path: path.to_path_buf(),
            file,
            sync,
            wrap,
            reader: None,
            offset: 0,
            last_offset: 0,
            record_bytes: record_bytes(),
            grants: Grants::new(),
            buffer: Vec::new(),
        }
    }

    /// A file preallocated by writing zeros, as the server's segments are.
    fn zero_filled(path: &Path, sync: SyncCall) -> io::Result<PwriteLog> {
        FileStorage.create_zeroed(path, FILE_BYTES)?;
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if sync == SyncCall::OpenDsync {
            options.custom_flags(libc::O_DSYNC);
        }
        let file = options.open(path)?;
        Ok(PwriteLog::new(path, file, sync, Wrap::Overwrite))
    }

    fn growing(path: &Path) -> io::Result<PwriteLog> {
        let file = create_durably(path)?;
        Ok(PwriteLog::new(
            path,
            file,
            SyncCall::Fdatasync,
            Wrap::Truncate,
        ))
    }

    fn fallocated(path: &Path) -> io::Result<PwriteLog> {
        let file = create_fallocated(path)?;
        Ok(PwriteLog::new(
            path,
            file,
            SyncCall::Fdatasync,
            Wrap::Refallocate,
        ))
    }

    /// Maps the whole file read-only and touches every page, so that written pages are
    /// mapped when they are synced.
    fn map_for_reading(&mut self) -> io::Result<()> {
        let map = map_readable(&self.file)?;
        let touched = map.iter().step_by(4096).fold(0u8, |sum, byte| sum ^ byte);
        std::hint::black_box(touched);
        self.reader = Some(map);
        Ok(())
    }

    fn wrap_around(&mut self) -> io::Result<()> {
        match self.wrap {
            Wrap::Overwrite => {}
            Wrap::Truncate => {
                self.file.set_len(0)?;
                self.file.sync_all()?;
            }
            Wrap::Refallocate => {
                fs::remove_file(&self.path)?;
                self.file = create_fallocated(&self.path)?;
            }
        }
        self.offset = 0;
        Ok(())
    }
}

impl DurableLog for PwriteLog {
    fn commit(&mut self, batch: usize) -> io::Result<()> {
        self.grants.encode_batch(batch, &mut self.buffer);
        self.file.write_all_at(&self.buffer, self.offset)?;
        if self.sync == SyncCall::Fdatasync {
            self.file.sync_data()?;
        }
        self.last_offset = self.offset;
        self.offset += self.buffer.len() as u64;
        Ok(())
    }

    fn between_commits(&mut self, batch: usize) -> io::Result<()> {
        if let Some(reader) = &self.reader {
            let start = self.last_offset as usize;
            assert_eq!(
                &reader[start..start + self.buffer.len()],
                &self.buffer[..],
                "the map shows what was written"
            );
        }
        if self.offset + batch as u64 * self.record_bytes > FILE_BYTES {
            self.wrap_around()?;
        }
        Ok(())
    }
}

/// B: writes through a shared writable map.
struct MappedLog {
    map: MmapMut,
    offset: usize,
    record_bytes: usize,
    grants: Grants,
    buffer: Vec<u8>,
}

impl MappedLog {
    fn open(path: &Path) -> io::Result<MappedLog> {
        FileStorage.create_zeroed(path, FILE_BYTES)?;
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(MappedLog {
            map: map_writable(&file)?,
            offset: 0,
            record_bytes: record_bytes() as usize,
            grants: Grants::new(),
            buffer: Vec::new(),
        })
    }
}

impl DurableLog for MappedLog {
    fn commit(&mut self, batch: usize) -> io::Result<()> {
        self.grants.encode_batch(batch, &mut self.buffer);
        let end = self.offset + self.buffer.len();
        self.map[self.offset..end].copy_from_slice(&self.buffer);
        self.map.flush_range(self.offset, self.buffer.len())?;
        self.offset = end;
        Ok(())
    }

    fn between_commits(&mut self, batch: usize) -> io::Result<()> {
        if self.offset + batch * self.record_bytes > self.map.len() {
            self.offset = 0;
        }
        Ok(())
    }
}

/// Creates an empty file and makes it and its name durable.
fn create_durably(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    file.sync_all()?;
    File::open(path.parent().expect("a directory"))?.sync_all()?;
    Ok(file)
}

/// A file of [`FILE_BYTES`] of unwritten extents: allocated, never written.
fn create_fallocated(path: &Path) -> io::Result<File> {
    let file = create_durably(path)?;
    fallocate(&file, FILE_BYTES)?;
    file.sync_all()?;
    Ok(file)
}

#[allow(unsafe_code)]
fn fallocate(file: &File, bytes: u64) -> io::Result<()> {
    let length = libc::off_t::try_from(bytes).expect("a file size that fits off_t");
    // SAFETY: fallocate reads and writes none of this process's memory, and the descriptor
    // stays open for the call because `file` is borrowed.
    let result = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, length) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[allow(unsafe_code)]
fn map_writable(file: &File) -> io::Result<MmapMut> {
    // SAFETY: the file is this bench's own, in a temporary directory nothing else uses; no
    // one truncates or writes it while the map is alive, so the mapped memory stays valid
    // and changes only through this map.
    unsafe { MmapMut::map_mut(file) }
}

#[allow(unsafe_code)]
fn map_readable(file: &File) -> io::Result<Mmap> {
    // SAFETY: the file is this bench's own and is never truncated while the map is alive;
    // it changes only through `pwrite` by this thread, between reads of the map, which the
    // map then shows as plain bytes (no references into it are held across writes).
    unsafe { Mmap::map(file) }
}

/// Where the files go: `KAHU_WAL_BENCH_DIR`, else the target directory.
fn bench_root() -> io::Result<tempfile::TempDir> {
    let parent = std::env::var_os("KAHU_WAL_BENCH_DIR")
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR"))
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    fs::create_dir_all(&parent)?;
    tempfile::Builder::new()
        .prefix("wal_io-")
        .tempdir_in(parent)
}

/// Runs `iterations` commits, timing only the commits; keeps each commit's latency.
fn time_commits(
    log: &mut dyn DurableLog,
    batch: usize,
    iterations: u64,
    samples: &Mutex<Vec<Vec<Duration>>>,
) -> Duration {
    let mut latencies = Vec::with_capacity(iterations as usize);
    for _ in 0..iterations {
        log.between_commits(batch).expect("upkeep between commits");
        let start = Instant::now();
        log.commit(batch).expect("a durable commit");
        latencies.push(start.elapsed());
    }
    let total = latencies.iter().sum();
    samples.lock().expect("not poisoned").push(latencies);
    total
}

/// Prints the percentiles of the commits of the last [`SAMPLE_COUNT`] samples (criterion's
/// measurement; the calls before them are its warm-up).
fn print_percentiles(id: &str, batch: usize, samples: Vec<Vec<Duration>>) {
    let skip = samples.len().saturating_sub(SAMPLE_COUNT);
    let mut latencies: Vec<Duration> = samples.into_iter().skip(skip).flatten().collect();
    if latencies.is_empty() {
        return;
    }
    latencies.sort_unstable();
    let at = |quantile: f64| {
        let rank = ((quantile * latencies.len() as f64).ceil() as usize).max(1);
        latencies[rank.min(latencies.len()) - 1].as_secs_f64() * 1e6
    };
    let median_us = at(0.5);
    println!(
        "wal_io/{id}/{batch}: commits {}, p50 {median_us:.1} µs, p90 {:.1}, p99 {:.1}, \
         p99.9 {:.1}, max {:.1}; {:.0} records/s at p50",
        latencies.len(),
        at(0.9),
        at(0.99),
        at(0.999),
        at(1.0),
        batch as f64 / median_us * 1e6,
    );
}

fn commit_latency(criterion: &mut Criterion) {
    let root = bench_root().expect("a temporary directory for the bench");
    let mut group = criterion.benchmark_group("wal_io");
    group.sampling_mode(SamplingMode::Flat);
    for strategy in Strategy::ALL {
        for batch in BATCH_SIZES {
            let dir = root.path().join(format!("{}-{batch}", strategy.id()));
            fs::create_dir(&dir).expect("a case directory");
            let mut log = strategy.open(&dir).expect("the files of a strategy");
            let samples = Mutex::new(Vec::new());
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_function(BenchmarkId::new(strategy.id(), batch), |bencher| {
                bencher.iter_custom(|iterations| {
                    time_commits(log.as_mut(), batch, iterations, &samples)
                });
            });
            drop(log);
            print_percentiles(
                strategy.id(),
                batch,
                samples.into_inner().expect("not poisoned"),
            );
            fs::remove_dir_all(&dir).expect("remove a case directory");
        }
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(SAMPLE_COUNT)
        .warm_up_time(WARM_UP)
        .measurement_time(MEASUREMENT)
}

criterion_group! {
    name = benches;
    config = config();
    targets = commit_latency
}
criterion_main!(benches);
