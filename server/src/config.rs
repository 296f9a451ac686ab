//! Server settings: flags, each with an environment variable and a default, validated
//! before anything starts.
//!
//! Everything here is per process. Settings that every node of a cluster must share (shard
//! count fixed at creation, cluster id) arrive with the replication issue and will be kept
//! apart from these.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;

/// kahu-server: a lock service with leases and fencing tokens.
#[derive(Debug, Clone, Parser)]
#[command(name = "kahu-server", version, about, long_about = None)]
pub struct Config {
    /// Address for clients: binary protocol and the text debug mode (`nc HOST PORT`).
    #[arg(long, env = "KAHU_LISTEN", default_value = "127.0.0.1:8002")]
    pub listen: SocketAddr,

    /// Directory for the server's files; created if missing, used by one server at a time.
    #[arg(long, env = "KAHU_DATA_DIR", default_value = "kahu-data")]
    pub data_dir: PathBuf,

    /// Shard workers (threads owning a part of the lock table, each with its own log); 0
    /// means one per core for a new data directory, and the stored count for an existing
    /// one (keys are placed by hash, so the count of a data directory never changes).
    #[arg(long, env = "KAHU_SHARDS", default_value_t = 0)]
    pub shards: usize,

    /// Log filter, e.g. `info`, `debug`, or `kahu_server=debug,warn`.
    #[arg(long, env = "KAHU_LOG", default_value = "info")]
    pub log_level: String,

    /// Open client connections at most; more are answered TOO_MANY_CONNECTIONS and closed.
    #[arg(long, env = "KAHU_CONNECTIONS_MAX", default_value_t = 10_000)]
    pub connections_max: usize,

    /// Close a connection with no request in flight after this many idle milliseconds;
    /// 0 keeps idle connections open forever.
    #[arg(long, env = "KAHU_CONNECTION_IDLE_MS", default_value_t = 600_000)]
    pub connection_idle_ms: u64,

    /// Requests in flight per connection at most; past it the server stops reading from
    /// that connection until replies drain.
    #[arg(long, env = "KAHU_REQUESTS_IN_FLIGHT_MAX", default_value_t = 4096)]
    pub requests_in_flight_max: usize,

    /// Requests queued on one lock at most; more are answered TOO_MANY_WAITERS.
    #[arg(long, env = "KAHU_WAITERS_PER_LOCK_MAX", default_value_t = 1024)]
    pub waiters_per_lock_max: usize,

    /// On SIGINT/SIGTERM, how long each connection gets to be answered and closed before
    /// it is dropped (a client that stopped reading cannot hold up the stop).
    #[arg(long, env = "KAHU_SHUTDOWN_GRACE_MS", default_value_t = 5_000)]
    pub shutdown_grace_ms: u64,

    /// Bytes per write-ahead log segment file (preallocated).
    #[arg(long, env = "KAHU_WAL_SEGMENT_BYTES", default_value_t = 64 << 20)]
    pub wal_segment_bytes: u64,

    /// Snapshot a shard's persistent locks (and delete the log it covers) once this many
    /// bytes were logged since the last snapshot.
    #[arg(long, env = "KAHU_SNAPSHOT_LOG_BYTES", default_value_t = 64 << 20)]
    pub snapshot_log_bytes: u64,

    /// UNSAFE: do not fdatasync the write-ahead log. Persistent locks acknowledged shortly
    /// before a power cut or kernel crash can be LOST (a process crash alone is survived).
    /// For benchmarks and throwaway test machines only.
    #[arg(long, env = "KAHU_UNSAFE_NO_FSYNC")]
    pub unsafe_no_fsync: bool,
}

/// The largest shard count accepted.
pub const SHARDS_MAX: usize = 256;

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// A server for tests: 127.0.0.1 with a port chosen by the OS, two shards.
    pub fn for_tests(data_dir: &Path) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.to_path_buf(),
            shards: 2,
            log_level: "warn".to_string(),
            connections_max: 1024,
            connection_idle_ms: 600_000,
            requests_in_flight_max: 4096,
            waiters_per_lock_max: 1024,
            shutdown_grace_ms: 5_000,
            wal_segment_bytes: crate::wal::SEGMENT_BYTES_MIN,
            snapshot_log_bytes: 1 << 20,
            unsafe_no_fsync: false,
        }
    }

    /// The shard count after resolving 0 to the number of cores.
    pub fn shard_count(&self) -> usize {
        if self.shards == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.shards
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let check = |ok: bool, message: String| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError(message))
            }
        };
        check(
            (1..=SHARDS_MAX).contains(&self.shard_count()),
            format!(
                "--shards {} is outside 1..={SHARDS_MAX} (0 means one per core)",
                self.shards
            ),
        )?;
        check(
            self.connections_max >= 1,
            "--connections-max must be at least 1".into(),
        )?;
        check(
            self.requests_in_flight_max >= 1,
            "--requests-in-flight-max must be at least 1".into(),
        )?;
        check(
            self.waiters_per_lock_max >= 1,
            "--waiters-per-lock-max must be at least 1".into(),
        )?;
        check(
            self.wal_segment_bytes >= crate::wal::SEGMENT_BYTES_MIN,
            format!(
                "--wal-segment-bytes {} is below {}",
                self.wal_segment_bytes,
                crate::wal::SEGMENT_BYTES_MIN
            ),
        )?;
        check(
            self.snapshot_log_bytes >= 1,
            "--snapshot-log-bytes must be at least 1".into(),
        )?;
        check(
            !self.data_dir.as_os_str().is_empty(),
            "--data-dir must not be empty".into(),
        )
    }

    /// The log settings every shard uses.
    pub fn wal_options(&self) -> crate::wal::WalOptions {
        crate::wal::WalOptions {
            segment_bytes: self.wal_segment_bytes,
            sync: !self.unsafe_no_fsync,
            snapshot_log_bytes: self.snapshot_log_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let config = Config::parse_from(["kahu-server"]);
        config.validate().unwrap();
        assert_eq!(config.listen, "127.0.0.1:8002".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("kahu-data"));
        assert!(config.shard_count() >= 1);
    }

    #[test]
    fn bad_values_are_refused_before_start() {
        let config = Config::parse_from(["kahu-server", "--shards", "1000"]);
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--shards 1000"));
        let config = Config::parse_from(["kahu-server", "--waiters-per-lock-max", "0"]);
        assert!(config.validate().is_err());
        assert!(Config::try_parse_from(["kahu-server", "--listen", "nowhere"]).is_err());
    }
}
