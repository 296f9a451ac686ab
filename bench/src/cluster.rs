//! Running the load against a cluster: every shard has its own leader, so each connection
//! goes to one leader and its slots use keys on the shards that node leads. The leaders are
//! read once from INFO (`shard<N>_is_leader`) before the run; a change of leader during the
//! run shows up as NOT_LEADER errors in the report. Keys are chosen so that no request is
//! redirected: the run measures the cluster, not a client's routing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use kahu_protocol::routing::{key_hash, shard_of};
use kahu_protocol::{ClientCodec, Request, Response};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// How long to wait for every shard to have a leader.
const LEADERS_WAIT_MAX: Duration = Duration::from_secs(10);

/// Which node each connection talks to, and which shards its keys must be on.
#[derive(Debug, Clone)]
pub struct Routes {
    pub shard_count: usize,
    /// Per connection: the node and the shards it leads.
    pub connections: Vec<(SocketAddr, Vec<usize>)>,
}

impl Routes {
    /// The `number`th key of a run on one of `shards`: `bench-{run}-{number}`, with a
    /// suffix if needed to land on one of them.
    pub fn key(&self, connection: usize, base: &str) -> String {
        let shards = &self.connections[connection].1;
        for attempt in 0u32.. {
            let key = if attempt == 0 {
                base.to_string()
            } else {
                format!("{base}-{attempt}")
            };
            if shards.contains(&shard_of(key_hash(key.as_bytes()), self.shard_count)) {
                return key;
            }
        }
        unreachable!("some suffix lands on every shard")
    }
}

/// Asks every node which shards it leads (retrying while an election is on) and spreads
/// `connections` over the leaders; with `shared_key`, every connection goes to that key's
/// leader.
pub async fn discover(
    nodes: &[SocketAddr],
    connections: usize,
    shared_key: Option<&str>,
) -> Result<Routes, Box<dyn std::error::Error>> {
    let started = Instant::now();
    loop {
        let mut leaders: BTreeMap<usize, SocketAddr> = BTreeMap::new();
        let mut shard_count = 0;
        for &node in nodes {
            let Ok(info) = info(node).await else {
                continue; // a node that is down leads nothing
            };
            shard_count = info.get("shards").copied().unwrap_or(0) as usize;
            for shard in 0..shard_count {
                if info.get(&format!("shard{shard}_is_leader")) == Some(&1) {
                    leaders.insert(shard, node);
                }
            }
        }
        if shard_count > 0 && leaders.len() == shard_count {
            return Ok(spread(&leaders, shard_count, connections, shared_key));
        }
        if started.elapsed() > LEADERS_WAIT_MAX {
            return Err(format!(
                "the cluster at {nodes:?} has leaders for {} of {shard_count} shards",
                leaders.len()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spread(
    leaders: &BTreeMap<usize, SocketAddr>,
    shard_count: usize,
    connections: usize,
    shared_key: Option<&str>,
) -> Routes {
    let mut by_node: BTreeMap<SocketAddr, Vec<usize>> = BTreeMap::new();
    for (&shard, &node) in leaders {
        by_node.entry(node).or_default().push(shard);
    }
    let nodes: Vec<(SocketAddr, Vec<usize>)> = by_node.into_iter().collect();
    let connections = (0..connections)
        .map(|connection| match shared_key {
            Some(key) => {
                let shard = shard_of(key_hash(key.as_bytes()), shard_count);
                (leaders[&shard], vec![shard])
            }
            None => nodes[connection % nodes.len()].clone(),
        })
        .collect();
    Routes {
        shard_count,
        connections,
    }
}

async fn info(node: SocketAddr) -> Result<BTreeMap<String, u64>, Box<dyn std::error::Error>> {
    let stream = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(node)).await??;
    let mut framed = Framed::new(stream, ClientCodec::default());
    framed.send((1, &Request::Info)).await?;
    let reply = tokio::time::timeout(Duration::from_secs(1), framed.next()).await?;
    match reply {
        Some(Ok((_, Response::Info(info)))) => Ok(info.fields.into_iter().collect()),
        other => Err(format!("INFO from {node}: {other:?}").into()),
    }
}
