//! Server settings: flags, each with an environment variable and a default, validated
//! before anything starts.
//!
//! Per-process settings (addresses, data directory, threads) and the cluster's settings
//! (`--cluster-id`, `--peers`, the shard count), which every node of a cluster must share:
//! nodes compare them when they connect (the peer handshake) and refuse a mismatch, and a
//! data directory keeps its shard count for life.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;

use crate::peer::{PeerAddress, SNAPSHOT_CHUNK_BYTES_MAX, SNAPSHOT_CHUNK_BYTES_MIN};

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

    /// This node's id in its cluster (1 and up). A single node needs no cluster flags.
    #[arg(long, env = "KAHU_NODE_ID", default_value_t = 1)]
    pub node_id: u64,

    /// Every founding node of the cluster, this one included, as
    /// `ID=PEER_ADDR/CLIENT_ADDR,...` (the same value on every node), e.g.
    /// `1=127.0.0.1:9001/127.0.0.1:8001,2=127.0.0.1:9002/127.0.0.1:8002`. PEER_ADDR is
    /// where the node listens for the other nodes; CLIENT_ADDR is what clients are told to
    /// use when that node leads. Empty: a single node.
    #[arg(long, env = "KAHU_PEERS", default_value = "")]
    pub peers: String,

    /// Address to listen on for the other nodes; default: this node's PEER_ADDR in
    /// `--peers` (set it to bind e.g. 0.0.0.0 while advertising another address).
    #[arg(long, env = "KAHU_PEER_LISTEN")]
    pub peer_listen: Option<SocketAddr>,

    /// Bytes of snapshot data per peer message: a shard snapshot larger than this reaches a
    /// follower in chunks of this size, between which the other shards' messages pass.
    #[arg(long, env = "KAHU_PEER_SNAPSHOT_CHUNK_BYTES", default_value_t = crate::peer::SNAPSHOT_CHUNK_BYTES)]
    pub peer_snapshot_chunk_bytes: usize,

    /// Join a running cluster instead of founding it: this node's id is not in `--peers`
    /// (which lists the founders, the same value as on every node), and it waits, a voter
    /// of nothing, until an operator adds it to every shard with
    /// `kahu-cli --add-node ID=PEER_ADDR/CLIENT_ADDR`. The other nodes reach it at
    /// `--peer-listen` and send its clients to `--listen`, so both must be concrete
    /// addresses. Give it on every start of a node that joined.
    #[arg(long, env = "KAHU_JOIN")]
    pub join: bool,

    /// The cluster's name; nodes with different names refuse to talk to each other.
    #[arg(long, env = "KAHU_CLUSTER_ID", default_value = "kahu")]
    pub cluster_id: String,

    /// Milliseconds per Raft tick.
    #[arg(long, env = "KAHU_TICK_MS", default_value_t = 50)]
    pub tick_ms: u64,

    /// Ticks without a leader before a follower starts an election (randomized up to
    /// twice this); the failover time is about this many ticks.
    #[arg(long, env = "KAHU_ELECTION_TICKS", default_value_t = 10)]
    pub election_ticks: u32,

    /// Ticks between a leader's heartbeats; below `--election-ticks`.
    #[arg(long, env = "KAHU_HEARTBEAT_TICKS", default_value_t = 2)]
    pub heartbeat_ticks: u32,

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

impl ConfigError {
    pub fn new(message: impl Into<String>) -> ConfigError {
        ConfigError(message.into())
    }
}

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
            node_id: 1,
            peers: String::new(),
            peer_listen: None,
            peer_snapshot_chunk_bytes: crate::peer::SNAPSHOT_CHUNK_BYTES,
            join: false,
            cluster_id: "kahu".to_string(),
            tick_ms: 50,
            election_ticks: 10,
            heartbeat_ticks: 2,
            unsafe_no_fsync: false,
        }
    }

    /// The founding nodes from `--peers`, this one included; empty for a single node.
    pub fn cluster_nodes(&self) -> Result<BTreeMap<u64, PeerAddress>, ConfigError> {
        parse_peers(&self.peers)
    }

    /// The cluster id as the peer handshake carries it: a stable 128-bit hash of the name
    /// and of every founding node with its addresses, so that nodes started with different
    /// `--peers` lists (whose majorities need not overlap) refuse to talk to each other.
    pub fn cluster_id_hash(&self, nodes: &BTreeMap<u64, PeerAddress>) -> u128 {
        let mut identity = self.cluster_id.clone();
        for (id, address) in nodes {
            identity.push_str(&format!("|{id}={address}"));
        }
        xxhash_rust::xxh3::xxh3_128(identity.as_bytes())
    }

    /// The Raft timing of every shard.
    pub fn raft_timing(&self) -> crate::shard::RaftTiming {
        crate::shard::RaftTiming {
            tick: std::time::Duration::from_millis(self.tick_ms),
            election_ticks: self.election_ticks,
            heartbeat_ticks: self.heartbeat_ticks,
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
        )?;
        check(self.node_id >= 1, "--node-id must be at least 1".into())?;
        let chunk_bytes = SNAPSHOT_CHUNK_BYTES_MIN..=SNAPSHOT_CHUNK_BYTES_MAX;
        check(
            chunk_bytes.contains(&self.peer_snapshot_chunk_bytes),
            format!(
                "--peer-snapshot-chunk-bytes {} is outside {SNAPSHOT_CHUNK_BYTES_MIN}..={SNAPSHOT_CHUNK_BYTES_MAX}",
                self.peer_snapshot_chunk_bytes
            ),
        )?;
        check(
            (1..=60_000).contains(&self.tick_ms),
            format!("--tick-ms {} is outside 1..=60000", self.tick_ms),
        )?;
        check(
            self.heartbeat_ticks >= 1 && self.election_ticks > self.heartbeat_ticks,
            format!(
                "--election-ticks {} must be above --heartbeat-ticks {} (at least 1)",
                self.election_ticks, self.heartbeat_ticks
            ),
        )?;
        let nodes = self.cluster_nodes()?;
        if self.join {
            check(
                !nodes.is_empty(),
                "--join needs --peers: the founding nodes of the cluster to join".into(),
            )?;
            check(
                !nodes.contains_key(&self.node_id),
                format!(
                    "--join: node {} is a founder in --peers; a joining node takes an id no node \
                     of the cluster has had (a founder that lost its data is removed and a new \
                     node added)",
                    self.node_id
                ),
            )?;
            self.joining_address()?;
        } else {
            check(
                nodes.is_empty() || nodes.contains_key(&self.node_id),
                format!(
                    "--peers does not name this node (--node-id {}); list every founding node, \
                     this one included, or give --join to join a running cluster",
                    self.node_id
                ),
            )?;
        }
        check(
            nodes.len() <= crate::wal::record::VOTERS_MAX,
            format!(
                "--peers names {} nodes; at most {}",
                nodes.len(),
                crate::wal::record::VOTERS_MAX
            ),
        )
    }

    /// Where the other nodes reach a joining node (`--peer-listen`) and where its clients
    /// are sent (`--listen`): both must be addresses others can connect to.
    pub fn joining_address(&self) -> Result<PeerAddress, ConfigError> {
        let peer = self.peer_listen.ok_or_else(|| {
            ConfigError::new("--join needs --peer-listen: where the other nodes reach this one")
        })?;
        for (flag, address) in [("--peer-listen", peer), ("--listen", self.listen)] {
            check(
                !address.ip().is_unspecified() && address.port() != 0,
                format!(
                    "--join: {flag} {address} is not an address other nodes can connect to \
                     (give a concrete IP and port)"
                ),
            )?;
        }
        Ok(PeerAddress {
            peer,
            client: self.listen.to_string(),
        })
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

/// `Ok` when `ok`, else the configuration error `message`.
fn check(ok: bool, message: String) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError(message))
    }
}

/// Parses `ID=PEER_ADDR/CLIENT_ADDR,...`; each address by [`PeerAddress::parse`], the
/// notation's one parser.
fn parse_peers(text: &str) -> Result<BTreeMap<u64, PeerAddress>, ConfigError> {
    let mut nodes = BTreeMap::new();
    for item in text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let bad = |why: &str| {
            ConfigError(format!(
                "--peers item `{item}`: {why}; expected ID=PEER_ADDR/CLIENT_ADDR, e.g. 1=127.0.0.1:9001/127.0.0.1:8001"
            ))
        };
        let (id, address) = item.split_once('=').ok_or_else(|| bad("no `=`"))?;
        let id: u64 = id
            .trim()
            .parse()
            .ok()
            .filter(|&id| id >= 1)
            .ok_or_else(|| bad("the id is not a number of 1 or more"))?;
        let address = PeerAddress::parse(address.trim()).map_err(|why| bad(&why))?;
        if nodes.insert(id, address).is_some() {
            return Err(bad("this id is listed twice"));
        }
    }
    Ok(nodes)
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
        assert_eq!(config.peer_snapshot_chunk_bytes, 8 << 20);
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
        for chunk_bytes in ["1023", "33554433"] {
            let config =
                Config::parse_from(["kahu-server", "--peer-snapshot-chunk-bytes", chunk_bytes]);
            let error = config.validate().unwrap_err().to_string();
            assert!(
                error.contains(&format!(
                    "--peer-snapshot-chunk-bytes {chunk_bytes} is outside 1024..=33554432"
                )),
                "{error}"
            );
        }
        assert!(Config::try_parse_from(["kahu-server", "--listen", "nowhere"]).is_err());
    }

    #[test]
    fn peers_parse_and_bad_ones_say_what_is_wrong() {
        let config = Config::parse_from([
            "kahu-server",
            "--node-id",
            "2",
            "--peers",
            "1=127.0.0.1:9001/localhost:8001, 2=127.0.0.1:9002/127.0.0.1:8002",
        ]);
        config.validate().unwrap();
        let nodes = config.cluster_nodes().unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[&1].client, "localhost:8001");
        assert_eq!(nodes[&2].peer, "127.0.0.1:9002".parse().unwrap());
        for (peers, expected) in [
            ("1=127.0.0.1:9001", "no `/`"),
            ("x=127.0.0.1:9001/a:1", "not a number"),
            ("0=127.0.0.1:9001/a:1", "not a number"),
            ("1=nowhere/a:1", "the peer address `nowhere` is not IP:PORT"),
            ("1=127.0.0.1:9001/", "the client address is empty"),
            (
                "1=127.0.0.1:9001/a:b",
                "the client address `a:b` is not HOST:PORT",
            ),
            ("1=127.0.0.1:9001/a b:1", "contains ' '"),
            ("1=127.0.0.1:9001/a:1,1=127.0.0.1:9002/b:1", "listed twice"),
            ("3=127.0.0.1:9003/c:1", "does not name this node"),
        ] {
            let config = Config::parse_from(["kahu-server", "--peers", peers]);
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(expected), "{peers}: {error}");
        }
    }
}
