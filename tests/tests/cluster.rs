//! Three kahu nodes in one process, on loopback: elections, replication, NOT_LEADER hints,
//! what a client sees when a leader stops, and a follower far behind catching up.
//!
//! Ticks are 10 ms here (elections within a few hundred milliseconds); every wait is
//! bounded. Ports are chosen by the OS: each node's client and peer listeners are bound
//! to port 0 first and their numbers passed to every node's `--peers`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kahu_client::Client;
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
    /// The founders' `--peers`.
    peers: String,
    tick_ms: u64,
    election_ticks: u32,
    /// Applied to every node's settings after the cluster's own.
    adjust: fn(&mut Config),
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
        Cluster::start_with_timing(size, 10, 10).await
    }

    /// [`Cluster::start`] with Raft ticks of `tick_ms` and elections after
    /// `election_ticks` of them.
    async fn start_with_timing(size: u64, tick_ms: u64, election_ticks: u32) -> Cluster {
        Cluster::start_with(size, tick_ms, election_ticks, |_| {}).await
    }

    /// [`Cluster::start_with_timing`], every node's settings then changed by `adjust`.
    async fn start_with(
        size: u64,
        tick_ms: u64,
        election_ticks: u32,
        adjust: fn(&mut Config),
    ) -> Cluster {
        for _ in 0..START_ATTEMPTS_MAX {
            match Cluster::try_start(size, tick_ms, election_ticks, adjust).await {
                Ok(cluster) => return cluster,
                Err(error) => eprintln!("cluster start failed, retrying on new ports: {error}"),
            }
        }
        panic!("the cluster did not start in {START_ATTEMPTS_MAX} attempts");
    }

    async fn try_start(
        size: u64,
        tick_ms: u64,
        election_ticks: u32,
        adjust: fn(&mut Config),
    ) -> Result<Cluster, kahu_server::ServerError> {
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
            peers: peers.clone(),
            tick_ms,
            election_ticks,
            adjust,
        };
        for (&id, &(client, _)) in &addresses {
            let data_dir = tempfile::tempdir().expect("data directory");
            let mut config = Config::for_tests(data_dir.path());
            config.listen = client;
            config.node_id = id;
            config.peers = peers.clone();
            config.tick_ms = tick_ms;
            config.election_ticks = election_ticks;
            adjust(&mut config);
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

    /// Starts node `id` with an empty data directory and `--join`: a voter of nothing
    /// until it is added. Returns its `PEER_ADDR/CLIENT_ADDR`.
    async fn join(&mut self, id: u64) -> String {
        for _ in 0..START_ATTEMPTS_MAX {
            let (client, peer) = (free_port(), free_port());
            let data_dir = tempfile::tempdir().expect("data directory");
            let mut config = Config::for_tests(data_dir.path());
            config.listen = client;
            config.peer_listen = Some(peer);
            config.node_id = id;
            config.peers = self.peers.clone();
            config.join = true;
            config.tick_ms = self.tick_ms;
            config.election_ticks = self.election_ticks;
            (self.adjust)(&mut config);
            match Server::start(config).await {
                Ok(server) => {
                    let address = format!("{peer}/{client}");
                    self.nodes.insert(
                        id,
                        Node {
                            server: Some(server),
                            client,
                            _data_dir: data_dir,
                        },
                    );
                    return address;
                }
                Err(error) => eprintln!("node {id} did not start, retrying on new ports: {error}"),
            }
        }
        panic!("node {id} did not start in {START_ATTEMPTS_MAX} attempts");
    }

    /// Starts stopped node `id` again with its old command line but an empty data
    /// directory, as after a lost disk, on the ports it had.
    async fn start_with_empty_data_dir(&mut self, id: u64) {
        let data_dir = tempfile::tempdir().expect("data directory");
        let node = self.nodes.get_mut(&id).unwrap();
        assert!(node.server.is_none(), "node {id} is running");
        let mut config = Config::for_tests(data_dir.path());
        config.listen = node.client;
        config.node_id = id;
        config.peers = self.peers.clone();
        config.tick_ms = self.tick_ms;
        config.election_ticks = self.election_ticks;
        (self.adjust)(&mut config);
        let server = Server::start(config).await;
        node.server = Some(server.expect("node starts again on the ports it had"));
        node._data_dir = data_dir;
    }

    /// Starts stopped node `id` again, on its data directory and the ports it had.
    async fn restart(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        assert!(node.server.is_none(), "node {id} is running");
        let mut config = Config::for_tests(node._data_dir.path());
        config.listen = node.client;
        config.node_id = id;
        config.peers = self.peers.clone();
        config.tick_ms = self.tick_ms;
        config.election_ticks = self.election_ticks;
        (self.adjust)(&mut config);
        let server = Server::start(config).await;
        node.server = Some(server.expect("node starts again on the ports it had"));
    }

    /// A client of every running node.
    async fn client(&self) -> Client {
        let addresses: Vec<SocketAddr> = self.running().map(|(_, address)| address).collect();
        Client::connect_cluster(addresses)
            .await
            .expect("the client connects")
    }

    fn running(&self) -> impl Iterator<Item = (u64, SocketAddr)> + '_ {
        self.nodes
            .iter()
            .filter(|(_, node)| node.server.is_some())
            .map(|(&id, node)| (id, node.client))
    }

    /// The id of the running node at client address `address`.
    fn id_of(&self, address: SocketAddr) -> u64 {
        self.running()
            .find(|&(_, running)| running == address)
            .expect("a running node")
            .0
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
            let mut infos = Vec::new();
            for (_, address) in self.running() {
                infos.push(self.info(address).await);
            }
            let shards = infos[0]["shards"];
            if started.elapsed() >= STEP_TIMEOUT {
                let raft: Vec<String> = infos
                    .iter()
                    .map(|info| {
                        let fields: Vec<String> = info
                            .iter()
                            .filter(|(name, _)| name.starts_with("shard") || name.contains("peer"))
                            .map(|(name, value)| format!("{name}={value}"))
                            .collect();
                        fields.join(" ")
                    })
                    .collect();
                panic!("the cluster did not settle:\n{}", raft.join("\n"));
            }
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
    let leader_id = cluster.id_of(leader);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_a_founder_leaves_and_every_acknowledged_lock_stays() {
    let mut cluster = Cluster::start(3).await;
    cluster.wait_until_settled().await;
    let (granted, _) = cluster
        .call(&lock("nightly-backup", "alice", 60_000, 0))
        .await;
    let held = token(&granted);

    // Phase 1: node 4 starts empty, a voter of nothing; it is added to every shard and
    // catches up (a snapshot or the log) until it has applied what the others have.
    let address = cluster.join(4).await;
    let client = cluster.client().await;
    let shards = client.add_node(4, &address).await.expect("node 4 is added");
    assert!(!shards.is_empty());
    for (shard, voters) in &shards {
        assert_eq!(voters, &[1, 2, 3, 4], "shard {shard}");
    }
    // Adding it again changes nothing (a command cut short can be run again).
    assert_eq!(client.add_node(4, &address).await.expect("again"), shards);
    cluster.wait_until_settled().await;

    // Phase 2: founder 1 leaves every shard (it may lead some: it hands them over), then
    // stops.
    let shards = client.remove_node(1).await.expect("node 1 is removed");
    for (shard, voters) in &shards {
        assert_eq!(voters, &[2, 3, 4], "shard {shard}");
    }
    cluster.stop(1).await;

    // Phase 3: node 4 is a real voter: with node 3 stopped too, nodes 2 and 4 are a
    // majority of {2, 3, 4} and serve the lock as it was acknowledged.
    cluster.stop(3).await;
    cluster.wait_until_settled().await;
    match cluster.call(&get("nightly-backup")).await.0 {
        Response::LockInfo(info) => {
            assert_eq!(info.owner, "alice");
            assert_eq!(info.token, held);
        }
        other => panic!("the acknowledged grant was lost: {other:?}"),
    }
    let (released, _) = cluster.call(&unlock("nightly-backup", "alice")).await;
    assert!(matches!(released, Response::Released(_)), "{released:?}");
    let (regranted, _) = cluster
        .call(&lock("nightly-backup", "bob", 60_000, 0))
        .await;
    assert!(token(&regranted) > held);
    drop(client);
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_leader_hands_its_shards_over_without_an_election_timeout() {
    // Elections take 1.5-3 s here, so a new leader within a second of the stop can only
    // come from the stopping node's hand-over.
    let mut cluster = Cluster::start_with_timing(3, 10, 150).await;
    cluster.wait_until_settled().await;
    let (granted, leader) = cluster.call(&lock("report", "carol", 60_000, 0)).await;
    let held = token(&granted);
    cluster.wait_until_settled().await;
    let leader_id = cluster.id_of(leader);
    cluster.stop(leader_id).await;

    let stopped = Instant::now();
    loop {
        let mut led = 0;
        let mut shards = 0;
        for (_, address) in cluster.running() {
            let info = cluster.info(address).await;
            shards = info["shards"];
            led += (0..shards)
                .filter(|shard| info[&format!("shard{shard}_is_leader")] == 1)
                .count() as u64;
        }
        if led == shards {
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(1),
            "the shards of node {leader_id} waited for an election"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    match cluster.call(&get("report")).await.0 {
        Response::LockInfo(info) => assert_eq!(info.token, held),
        other => panic!("{other:?}"),
    }
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_data_directory_is_refused_and_stops_while_the_others_serve() {
    let mut cluster = Cluster::start(3).await;
    cluster.wait_until_settled().await;
    let (granted, _) = cluster.call(&lock("ledger", "alice", 60_000, 0)).await;
    let held = token(&granted);
    cluster.wait_until_settled().await;

    // Phase 1: node 3 stops, loses its data directory, and is started again with its old
    // command line: a founder, so a voter of every shard, remembering no vote.
    cluster.stop(3).await;
    cluster.start_with_empty_data_dir(3).await;
    let node_3 = cluster.nodes[&3].client;

    // Phase 2: a node that knew node 3 tells it so in its handshake; node 3 stops taking
    // part in the cluster, with a message saying what to do.
    let server_3 = cluster.nodes[&3].server.as_ref().unwrap();
    let reason = tokio::time::timeout(STEP_TIMEOUT, server_3.failed())
        .await
        .expect("node 3 learns that its data directory was created anew");
    assert!(
        reason.starts_with("node 3's data directory was created anew")
            && reason.contains("remove it (kahu-cli --remove-node 3)"),
        "{reason}"
    );

    // Phase 3: node 3 neither sent nor received a single Raft message: nodes 1 and 2
    // refused its handshakes, and it refused theirs. It leads nothing and applied nothing.
    let info_3 = cluster.info(node_3).await;
    assert_eq!(info_3["peer_fenced"], 1);
    assert_eq!(info_3["peer_messages_sent_total"], 0, "node 3 voted");
    assert_eq!(info_3["peer_messages_received_total"], 0);
    let mut refused = info_3["peer_handshakes_refused_total"];
    for id in [1, 2] {
        let info = cluster.info(cluster.nodes[&id].client).await;
        refused += info["peer_handshakes_refused_total"];
        assert_eq!(info["peer_fenced"], 0, "node {id}");
    }
    assert!(refused >= 1, "no handshake was refused");
    for shard in 0..info_3["shards"] {
        assert_eq!(
            info_3[&format!("shard{shard}_is_leader")],
            0,
            "shard {shard}"
        );
        assert_eq!(
            info_3[&format!("shard{shard}_applied_index")],
            0,
            "shard {shard}"
        );
    }

    // Phase 4: nodes 1 and 2, a majority of {1, 2, 3}, serve the acknowledged lock and
    // grant new ones.
    match cluster.call(&get("ledger")).await.0 {
        Response::LockInfo(info) => {
            assert_eq!(info.owner, "alice");
            assert_eq!(info.token, held);
        }
        other => panic!("the acknowledged grant was lost: {other:?}"),
    }
    let (acquired, served_by) = cluster.call(&lock("audit", "bob", 60_000, 0)).await;
    assert!(matches!(acquired, Response::Acquired(_)), "{acquired:?}");
    assert_ne!(served_by, node_3);
    let info_3 = cluster.info(node_3).await;
    assert_eq!(info_3["peer_messages_received_total"], 0);
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_added_only_once_it_answers_at_the_address_given() {
    let cluster = Cluster::start(3).await;
    cluster.wait_until_settled().await;
    let members = |change| Request::Members(kahu_protocol::Members { shard: 0, change });
    // Phase 1: nothing listens at the address: the leader does not propose (a node that
    // never answers would count in every majority of the shard from then on).
    let nowhere = format!("{}/{}", free_port(), free_port());
    let add = members(kahu_protocol::MemberChange::Add {
        node: 4,
        address: nowhere.clone(),
    });
    for _ in 0..3 {
        match cluster.call(&add).await.0 {
            Response::Error(error) => {
                assert_eq!(error.code, Some(ErrorCode::MembershipChangePending));
                assert!(
                    error.message.contains("does not answer"),
                    "{}",
                    error.message
                );
            }
            other => panic!("added a node that does not answer: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Removing a node that is not a voter answers the voters: node 4 is not one.
    match cluster
        .call(&members(kahu_protocol::MemberChange::Remove { node: 4 }))
        .await
        .0
    {
        Response::Members(reply) => assert_eq!(reply.voters, vec![1, 2, 3]),
        other => panic!("{other:?}"),
    }
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_far_behind_catches_up_through_a_snapshot_sent_in_chunks() {
    // Shards snapshot every 4 KiB of log, and send snapshots in chunks of 1 KiB: a few
    // hundred locks make a snapshot of many chunks.
    let mut cluster = Cluster::start_with(3, 10, 10, |config| {
        config.snapshot_log_bytes = 4 << 10;
        config.peer_snapshot_chunk_bytes = 1 << 10;
    })
    .await;
    cluster.wait_until_settled().await;

    // Phase 1: node 3 stops; 400 locks are granted meanwhile, and the leaders snapshot
    // and drop the log node 3 would need.
    cluster.stop(3).await;
    let mut tokens = BTreeMap::new();
    for position in 0..400 {
        let key = format!("job-{position:04}");
        let (granted, _) = cluster.call(&lock(&key, "scheduler", 600_000, 0)).await;
        tokens.insert(key, token(&granted));
    }
    let mut snapshots = 0;
    for (_, address) in cluster.running() {
        snapshots += cluster.info(address).await["snapshots_total"];
    }
    assert!(snapshots >= 2, "only {snapshots} snapshots were taken");

    // Phase 2: node 3 starts again on its data directory and catches up: every node
    // applies the same index of every shard, the snapshots having come in chunks.
    cluster.restart(3).await;
    cluster.wait_until_settled().await;
    let info_3 = cluster.info(cluster.nodes[&3].client).await;
    let chunks = info_3["peer_snapshot_chunks_received_total"];
    assert!(
        chunks > info_3["shards"],
        "only {chunks} snapshot chunks arrived"
    );

    // Phase 3: node 3 is needed now: with node 1 stopped, nodes 2 and 3 serve every lock
    // as it was granted.
    cluster.stop(1).await;
    cluster.wait_until_settled().await;
    for (key, held) in &tokens {
        match cluster.call(&get(key)).await.0 {
            Response::LockInfo(info) => {
                assert_eq!(info.owner, "scheduler", "{key}");
                assert_eq!(info.token, *held, "{key}");
            }
            other => panic!("{key}: the acknowledged grant was lost: {other:?}"),
        }
    }
    cluster.stop_all().await;
}
