//! Three kahu nodes in one process, on loopback: elections, replication, NOT_LEADER hints,
//! and what a client sees when a leader stops.
//!
//! Ticks are 10 ms here (elections within a few hundred milliseconds); every wait is
//! bounded. Ports are chosen by the OS: each node's client and peer listeners are bound
//! to port 0 first and their numbers passed to every node's `--peers`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kahu_protocol::{ErrorCode, Request, Response};
use kahu_server::{Config, RunningServer, Server};
use kahu_tests::{get, lock, token, unlock, RawClient, STEP_TIMEOUT};

struct Node {
    server: Option<RunningServer>,
    client: SocketAddr,
    _data_dir: tempfile::TempDir,
}

struct Cluster {
    nodes: BTreeMap<u64, Node>,
}

/// Attempts at starting a cluster on freshly picked ports.
const START_ATTEMPTS_MAX: usize = 5;

/// A free port on 127.0.0.1, as the OS picks it.
fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local address")
}

impl Cluster {
    /// Starts `size` nodes. A port picked for one node can be taken by someone else before
    /// the node binds it; then the whole cluster starts again on new ports (bounded).
    async fn start(size: u64) -> Cluster {
        for _ in 0..START_ATTEMPTS_MAX {
            match Cluster::try_start(size).await {
                Ok(cluster) => return cluster,
                Err(error) => eprintln!("cluster start failed, retrying on new ports: {error}"),
            }
        }
        panic!("the cluster did not start in {START_ATTEMPTS_MAX} attempts");
    }

    async fn try_start(size: u64) -> Result<Cluster, kahu_server::ServerError> {
        let addresses: BTreeMap<u64, (SocketAddr, SocketAddr)> = (1..=size)
            .map(|id| (id, (free_port(), free_port())))
            .collect();
        let peers: Vec<String> = addresses
            .iter()
            .map(|(id, (client, peer))| format!("{id}={peer}/{client}"))
            .collect();
        let peers = peers.join(",");
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
        };
        for (&id, &(client, _)) in &addresses {
            let data_dir = tempfile::tempdir().expect("data directory");
            let mut config = Config::for_tests(data_dir.path());
            config.listen = client;
            config.node_id = id;
            config.peers = peers.clone();
            config.tick_ms = 10;
            let server = match Server::start(config).await {
                Ok(server) => server,
                Err(error) => {
                    let ids: Vec<u64> = cluster.running().map(|(id, _)| id).collect();
                    for id in ids {
                        cluster.stop(id).await;
                    }
                    return Err(error);
                }
            };
            cluster.nodes.insert(
                id,
                Node {
                    server: Some(server),
                    client,
                    _data_dir: data_dir,
                },
            );
        }
        Ok(cluster)
    }

    fn running(&self) -> impl Iterator<Item = (u64, SocketAddr)> + '_ {
        self.nodes
            .iter()
            .filter(|(_, node)| node.server.is_some())
            .map(|(&id, node)| (id, node.client))
    }

    async fn stop(&mut self, id: u64) {
        let server = self.nodes.get_mut(&id).unwrap().server.take().unwrap();
        tokio::time::timeout(STEP_TIMEOUT, server.shutdown())
            .await
            .expect("node stops in time");
    }

    async fn stop_all(mut self) {
        let ids: Vec<u64> = self.running().map(|(id, _)| id).collect();
        for id in ids {
            self.stop(id).await;
        }
    }

    /// Sends `request` to some running node and follows NOT_LEADER hints (retrying while
    /// there is no leader) until a node serves it. Returns the answer and who gave it.
    async fn call(&self, request: &Request) -> (Response, SocketAddr) {
        let started = Instant::now();
        let mut target = self.running().next().expect("a running node").1;
        let mut request_id = 0;
        loop {
            assert!(
                started.elapsed() < STEP_TIMEOUT,
                "no node served {request:?}"
            );
            request_id += 1;
            let mut client = RawClient::connect(target).await;
            let response = client.call(request_id, request).await;
            match &response {
                Response::Error(error) if error.code == Some(ErrorCode::NotLeader) => {
                    match leader_hint(&error.message) {
                        Some(hint) if self.running().any(|(_, address)| address == hint) => {
                            target = hint
                        }
                        _ => {
                            // No leader yet, or the hint names a stopped node: try the next.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            target = self.next_after(target);
                        }
                    }
                }
                _ => return (response, target),
            }
        }
    }

    fn next_after(&self, address: SocketAddr) -> SocketAddr {
        let running: Vec<SocketAddr> = self.running().map(|(_, address)| address).collect();
        let position = running.iter().position(|&a| a == address).unwrap_or(0);
        running[(position + 1) % running.len()]
    }

    /// INFO of one node as a map.
    async fn info(&self, address: SocketAddr) -> BTreeMap<String, u64> {
        let mut client = RawClient::connect(address).await;
        match client.call(1, &Request::Info).await {
            Response::Info(info) => info.fields.into_iter().collect(),
            other => panic!("INFO: {other:?}"),
        }
    }

    /// Waits until every shard has exactly one leader among the running nodes and every
    /// running node has applied the same index for it.
    async fn wait_until_settled(&self) {
        let started = Instant::now();
        loop {
            assert!(
                started.elapsed() < STEP_TIMEOUT,
                "the cluster did not settle"
            );
            let mut infos = Vec::new();
            for (_, address) in self.running() {
                infos.push(self.info(address).await);
            }
            let shards = infos[0]["shards"];
            let settled = (0..shards).all(|shard| {
                let leaders = infos
                    .iter()
                    .filter(|info| info[&format!("shard{shard}_is_leader")] == 1)
                    .count();
                let applied: Vec<u64> = infos
                    .iter()
                    .map(|info| info[&format!("shard{shard}_applied_index")])
                    .collect();
                leaders == 1 && applied.iter().all(|&index| index == applied[0])
            });
            if settled {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The address in a NOT_LEADER message's `leader=HOST:PORT`.
fn leader_hint(message: &str) -> Option<SocketAddr> {
    let (_, rest) = message.split_once("leader=")?;
    rest.split_whitespace()
        .next()?
        .trim_end_matches(';')
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_leaders_replicate_locks_and_point_clients_to_the_leader() {
    let cluster = Cluster::start(3).await;
    // Phase 1: every shard elects one leader.
    cluster.wait_until_settled().await;

    // Phase 2: a persistent lock is granted by the leader of its shard.
    let (granted, leader) = cluster.call(&lock("backup-lock", "alice", 60_000, 0)).await;
    let held = token(&granted);
    let (busy, _) = cluster.call(&lock("backup-lock", "bob", 60_000, 0)).await;
    assert!(matches!(busy, Response::Busy(_)), "{busy:?}");

    // Phase 3: another node answers NOT_LEADER and names the leader.
    let follower = cluster
        .running()
        .map(|(_, address)| address)
        .find(|&address| address != leader)
        .unwrap();
    let mut client = RawClient::connect(follower).await;
    match client.call(1, &get("backup-lock")).await {
        Response::Error(error) => {
            assert_eq!(error.code, Some(ErrorCode::NotLeader));
            assert_eq!(
                leader_hint(&error.message),
                Some(leader),
                "{}",
                error.message
            );
        }
        other => panic!("a follower answered {other:?}"),
    }

    // Phase 4: the grant is replicated: every node applies it.
    cluster.wait_until_settled().await;
    match cluster.call(&get("backup-lock")).await.0 {
        Response::LockInfo(info) => {
            assert_eq!(info.owner, "alice");
            assert_eq!(info.token, held);
        }
        other => panic!("{other:?}"),
    }
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_survives_its_leader_and_tokens_keep_growing() {
    let mut cluster = Cluster::start(3).await;
    cluster.wait_until_settled().await;
    let (granted, leader) = cluster.call(&lock("payments", "worker-1", 60_000, 0)).await;
    let held = token(&granted);
    let (ephemeral, _) = cluster
        .call(&{
            let mut request = lock("cache-warm", "worker-1", 60_000, 0);
            if let Request::Lock(lock) = &mut request {
                lock.durability = kahu_protocol::Durability::Ephemeral;
            }
            request
        })
        .await;
    let ephemeral_token = token(&ephemeral);
    cluster.wait_until_settled().await;

    // Phase 1: the node that led the lock's shard stops.
    let leader_id = cluster
        .running()
        .find(|&(_, address)| address == leader)
        .unwrap()
        .0;
    cluster.stop(leader_id).await;

    // Phase 2: a new leader serves the persistent lock as it was; the ephemeral one is
    // gone with its leader (if it led that shard too).
    let (info, new_leader) = cluster.call(&get("payments")).await;
    assert_ne!(new_leader, leader);
    match info {
        Response::LockInfo(info) => {
            assert_eq!(info.owner, "worker-1");
            assert_eq!(info.token, held);
        }
        other => panic!("the acknowledged grant was lost: {other:?}"),
    }
    let (busy, _) = cluster.call(&lock("payments", "worker-2", 60_000, 0)).await;
    assert!(matches!(busy, Response::Busy(_)), "{busy:?}");

    // Phase 3: after a release, the next grant's token is above every earlier one.
    let (released, _) = cluster.call(&unlock("payments", "worker-1")).await;
    assert!(matches!(released, Response::Released(_)), "{released:?}");
    let (regranted, _) = cluster.call(&lock("payments", "worker-2", 60_000, 0)).await;
    let next = token(&regranted);
    assert!(next > held, "token {next} not above {held}");
    let (cache, _) = cluster
        .call(&lock("cache-warm", "worker-3", 60_000, 0))
        .await;
    if let Response::Acquired(acquired) = cache {
        assert!(acquired.token > ephemeral_token);
    }
    cluster.stop_all().await;
}
