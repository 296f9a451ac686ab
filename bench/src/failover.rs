//! The failover workload: how long a shard is without a leader when its leader dies.
//!
//! Starts a 3-node cluster of `kahu-server` processes on loopback (default Raft timing:
//! 50 ms ticks, elections after 10 to 20 ticks without a leader), then `--kills` times:
//! find the node leading the shard of a probe key, SIGKILL it, and send persistent LOCKs on
//! that shard to the survivors (following NOT_LEADER hints) until one is granted; the time
//! from the kill to that grant is one sample. The killed node is restarted on its data
//! directory and the cluster settles before the next round. Every process it starts is
//! killed when it ends.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command as Process, Stdio};
use std::time::{Duration, Instant};

use kahu_protocol::routing::{key_hash, leader_hint, shard_of};

/// Nodes in the cluster.
const NODES: u64 = 3;
/// How long one round may take before the run gives up.
const ROUND_TIME_MAX: Duration = Duration::from_secs(30);

struct Cluster {
    server: std::path::PathBuf,
    dir: tempfile::TempDir,
    peers: String,
    clients: BTreeMap<u64, SocketAddr>,
    children: BTreeMap<u64, Child>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> Result<SocketAddr, std::io::Error> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

impl Cluster {
    fn start(server: &Path) -> Result<Cluster, Box<dyn std::error::Error>> {
        let mut clients = BTreeMap::new();
        let mut peers = Vec::new();
        for id in 1..=NODES {
            let client = free_port()?;
            let peer = free_port()?;
            clients.insert(id, client);
            peers.push(format!("{id}={peer}/{client}"));
        }
        let mut cluster = Cluster {
            server: server.to_path_buf(),
            dir: tempfile::tempdir_in(".")?,
            peers: peers.join(","),
            clients,
            children: BTreeMap::new(),
        };
        for id in 1..=NODES {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, id: u64) -> Result<(), Box<dyn std::error::Error>> {
        let child = Process::new(&self.server)
            .args(["--node-id", &id.to_string(), "--listen"])
            .arg(self.clients[&id].to_string())
            .args([
                "--peers",
                &self.peers,
                "--shards",
                "2",
                "--log-level",
                "error",
            ])
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("node-{id}")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| format!("cannot start {}: {error}", self.server.display()))?;
        self.children.insert(id, child);
        Ok(())
    }

    fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.children.remove(&id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Each running node's INFO.
    fn infos(&self) -> BTreeMap<u64, BTreeMap<String, u64>> {
        self.children
            .keys()
            .filter_map(|&id| Some((id, info(self.clients[&id]).ok()?)))
            .collect()
    }

    /// The node leading `shard` once every running node agrees and has applied as much.
    fn settled_leader(&self, shard: usize) -> Option<u64> {
        let infos = self.infos();
        if infos.len() != self.children.len() {
            return None;
        }
        let leaders: Vec<u64> = infos
            .iter()
            .filter(|(_, info)| info.get(&format!("shard{shard}_is_leader")) == Some(&1))
            .map(|(&id, _)| id)
            .collect();
        let applied: Vec<u64> = infos
            .values()
            .map(|info| info[&format!("shard{shard}_applied_index")])
            .collect();
        (leaders.len() == 1 && applied.iter().all(|&index| index == applied[0])).then(|| leaders[0])
    }
}

fn info(address: SocketAddr) -> Result<BTreeMap<String, u64>, Box<dyn std::error::Error>> {
    let line = call(address, "INFO")?;
    let fields = line
        .strip_prefix("INFO")
        .ok_or_else(|| format!("INFO: {line}"))?;
    Ok(fields
        .split_whitespace()
        .filter_map(|field| {
            let (name, value) = field.split_once('=')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect())
}

/// One text-mode command and its one-line answer.
fn call(address: SocketAddr, command: &str) -> Result<String, Box<dyn std::error::Error>> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(format!("{command}\r\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line.trim().to_string())
}

/// A key named from `base` that lands on `shard` of `shard_count`.
fn key_on_shard(base: &str, shard: usize, shard_count: usize) -> String {
    (0u32..)
        .map(|attempt| format!("{base}-{attempt}"))
        .find(|key| shard_of(key_hash(key.as_bytes()), shard_count) == shard)
        .expect("some key lands on every shard")
}

pub fn run(kills: usize, server: &Path, json: bool) -> Result<(), Box<dyn std::error::Error>> {
    let mut cluster = Cluster::start(server)?;
    let shard = 0;
    let mut samples_ms = Vec::with_capacity(kills);
    for round in 0..kills {
        let started = Instant::now();
        let leader = loop {
            if let Some(leader) = cluster.settled_leader(shard) {
                break leader;
            }
            if started.elapsed() > ROUND_TIME_MAX {
                return Err(format!("round {round}: the cluster did not settle").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let key = key_on_shard(
            &format!("failover-{}-{round}", std::process::id()),
            shard,
            2,
        );
        cluster.kill(leader);
        let killed = Instant::now();
        let mut target = *cluster.clients.values().find(|_| true).expect("a node");
        let survivors: Vec<SocketAddr> = cluster
            .children
            .keys()
            .map(|id| cluster.clients[id])
            .collect();
        let mut next = 0;
        loop {
            if killed.elapsed() > ROUND_TIME_MAX {
                return Err(format!("round {round}: no grant after the kill").into());
            }
            if !survivors.contains(&target) {
                target = survivors[next % survivors.len()];
                next += 1;
            }
            let answer = call(target, &format!("LOCK {key} 60000")).unwrap_or_default();
            if answer.starts_with("ACQUIRED") {
                break;
            }
            match leader_hint(&answer).and_then(|hint| hint.parse().ok()) {
                Some(hint) if survivors.contains(&hint) => target = hint,
                _ => {
                    target = survivors[next % survivors.len()];
                    next += 1;
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
        samples_ms.push(killed.elapsed().as_secs_f64() * 1000.0);
        cluster.spawn(leader)?;
    }
    let mut sorted = samples_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let p50 = sorted[sorted.len() / 2];
    let max = sorted[sorted.len() - 1];
    if json {
        println!(
            "{{\"workload\":\"failover\",\"kills\":{kills},\"p50_ms\":{p50:.1},\"max_ms\":{max:.1}}}"
        );
    } else {
        println!("workload=failover nodes={NODES} kills={kills} (SIGKILL of a shard leader to the next grant on that shard)");
        let shown: Vec<String> = samples_ms.iter().map(|ms| format!("{ms:.0}")).collect();
        println!("samples_ms={}", shown.join(","));
        println!("p50_ms={p50:.1} max_ms={max:.1}");
    }
    Ok(())
}
