//! Process-level faults in a 3-node cluster, checked like Kahuna's Jepsen suite (issue 5,
//! "Process-level faults").
//!
//! The story of [`locks_stay_exclusive_and_fenced_through_kills_pauses_and_partitions`]:
//!
//! 1. **Start** three real `kahu-server` processes on loopback (`--tick-ms 10
//!    --election-ticks 10 --shards 2`), each with its own data directory. Every node's
//!    `--peers` names, for every node, the address of a fault-injecting proxy the test runs
//!    in front of that node's real peer port (`--peer-listen`); see `support/proxy.rs`.
//!    Wait until each shard has one leader that every node knows.
//! 2. **Traffic.** [`CLIENTS`] clients, each its own owner with its own lease length (two
//!    long, three short, so leases also run out during the test) and LOCK wait (none or a
//!    short queue), send persistent LOCK, UNLOCK and EXTEND (with the token) and GET on
//!    [`LOCKS_PER_SHARD`] locks per shard, one request at a time, following NOT_LEADER
//!    hints with bounded retries. Every attempt is recorded with the monotonic time it was
//!    sent and answered (`support/traffic.rs`, `support/history.rs`).
//! 3. **Faults**, in a random order, [`CYCLES_DEFAULT`] of each by default, traffic
//!    running all along, and after each one a wait until the cluster has settled again:
//!    - **kill**: SIGKILL the leader of a shard (found with INFO `shard<N>_is_leader`),
//!      keep it down a while, restart it on the same data directory and ports;
//!    - **pause**: SIGSTOP a node (mostly a shard leader) for 0.1 to 1.5 s, then SIGCONT:
//!      it wakes up believing it still leads, which must not make a second holder;
//!    - **partition**: the proxies cut a node (mostly a shard leader) off from both others,
//!      both ways, silently (bytes are swallowed, connections stay open), then heal.
//! 4. **Settle.** Stop the clients, wait until every shard has one leader and every node
//!    has applied the same log.
//! 5. **Final check.** GET every lock through its leader: a lock some owner definitely
//!    holds now (acquired or extended, not unlocked since, its lease counted from the
//!    request's send not yet over) is held by that owner with that token, and its lease
//!    does not end before the client's own count.
//! 6. **Checkers** over the whole history (`support/history.rs` has the details):
//!    - **exclusion**: per lock, the definite holding windows of different owners never
//!      overlap. A window runs from when ACQUIRED (or EXTENDED) was received to the
//!      earliest of the owner's next UNLOCK's send time and the request's send time plus
//!      its ttl; errors and unknown outcomes give no window;
//!    - **fencing**: per lock, over the acquisitions ordered by when ACQUIRED was
//!      received, tokens never decrease; a token is never seen with two owners; a fresh
//!      grant's token is above every token answered before it was sent; a released token
//!      is never shown held again.
//!
//!    Zero violations are allowed.
//!
//! # Reproducing a failure
//! A failure prints the seed, the phase, the violations (each with the requests that prove
//! it), the fault log and the last stderr lines of every node, and keeps the data
//! directories with `history.txt` (every request, every fault) beside them.
//! `KAHU_CLUSTER_FAULT_SEED=<seed>` replays the same choices (faults, their order, targets
//! and durations, the clients' requests); process and network timing still vary.
//! `KAHU_CLUSTER_FAULT_CYCLES=<n>` runs `n` of each fault instead of [`CYCLES_DEFAULT`].

mod support;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use kahu_protocol::routing::{key_hash, shard_of};
use kahu_protocol::{ClientCodec, Request, Response};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use support::history::{self, Event, Op, Outcome, Window};
use support::node::{NodeProcess, StderrTail};
use support::proxy::PeerProxies;
use support::traffic::{ClientSpec, Driver, Router, Shared, OP_DEADLINE};
use support::{env_number, millis, seed_from_clock, Rng, Timeline};

const NODE_COUNT: u64 = 3;
const SHARD_COUNT: usize = 2;
const LOCKS_PER_SHARD: usize = 2;
/// The clients: two hold long leases (so the final check has locks to find held), three
/// short ones (so leases run out during the test, also across faults).
const CLIENTS: [ClientSpec; 5] = [
    ClientSpec {
        ttl_ms: 20_000,
        wait_ms: 0,
    },
    ClientSpec {
        ttl_ms: 20_000,
        wait_ms: 200,
    },
    ClientSpec {
        ttl_ms: 1_500,
        wait_ms: 0,
    },
    ClientSpec {
        ttl_ms: 2_000,
        wait_ms: 300,
    },
    ClientSpec {
        ttl_ms: 1_000,
        wait_ms: 0,
    },
];
/// Each kind of fault this many times when `KAHU_CLUSTER_FAULT_CYCLES` is not set.
const CYCLES_DEFAULT: usize = 3;
/// Traffic with every node up, before each fault (ms, low..high).
const TRAFFIC_BETWEEN_FAULTS_MS: (u64, u64) = (300, 900);
/// How long a killed leader stays down.
const DOWN_MS: (u64, u64) = (200, 1_000);
/// How long a node stays stopped: from below one election timeout (100 to 200 ms) to
/// several.
const PAUSE_MS: (u64, u64) = (100, 1_500);
const PARTITION_MS: (u64, u64) = (300, 1_500);
/// A pause or partition hits a shard leader this often, else any node.
const LEADER_TARGET_PERCENT: u64 = 75;
/// Traffic after the last fault, before the clients stop.
const TRAFFIC_AFTER_FAULTS: Duration = Duration::from_millis(500);
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
const START_ATTEMPTS_MAX: usize = 5;
const RESTART_ATTEMPTS_MAX: usize = 3;
/// The longest the cluster may take to have one known leader per shard again.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(20);
const INFO_TIMEOUT: Duration = Duration::from_secs(1);
/// The clients stop within one request's deadline; a little more for the join.
const CLIENTS_STOP_TIMEOUT: Duration = Duration::from_secs(10);
const VIOLATIONS_SHOWN_MAX: usize = 8;

#[test]
fn locks_stay_exclusive_and_fenced_through_kills_pauses_and_partitions() {
    let seed = env_number("KAHU_CLUSTER_FAULT_SEED").unwrap_or_else(seed_from_clock);
    let cycles = env_number("KAHU_CLUSTER_FAULT_CYCLES").map_or(CYCLES_DEFAULT, |n| n as usize);
    eprintln!(
        "cluster faults: seed {seed} (KAHU_CLUSTER_FAULT_SEED), {cycles} of each fault \
         (KAHU_CLUSTER_FAULT_CYCLES)"
    );
    let mut run = FaultRun::new(seed, cycles);
    run.start_cluster();
    run.start_traffic();
    let mut faults: Vec<Fault> = (0..cycles)
        .flat_map(|_| [Fault::Kill, Fault::Pause, Fault::Partition])
        .collect();
    run.rng.shuffle(&mut faults);
    for (number, fault) in faults.iter().enumerate() {
        let traffic_ms = run
            .rng
            .between(TRAFFIC_BETWEEN_FAULTS_MS.0, TRAFFIC_BETWEEN_FAULTS_MS.1);
        std::thread::sleep(Duration::from_millis(traffic_ms));
        let phase = format!("fault {} of {}", number + 1, faults.len());
        run.inject(*fault, &phase);
        run.wait_until_settled(&format!("{phase}: settling"), false);
    }
    std::thread::sleep(TRAFFIC_AFTER_FAULTS);
    run.stop_traffic();
    let infos = run.wait_until_settled("settling after the faults", true);
    run.counts.terms = (0..SHARD_COUNT)
        .map(|shard| infos[0][&format!("shard{shard}_term")])
        .collect();
    run.final_check();
    run.check_history();
    run.finish();
}

/// The checkers themselves, on made-up histories: each known fault is caught, and the
/// histories a correct server can produce (an expired lease, a stale UNLOCK of unknown
/// outcome) are not flagged.
#[test]
fn the_checkers_catch_two_holders_and_bad_tokens_and_nothing_else() {
    let started = Instant::now();
    let timeline = Timeline { started };
    let check = |events: &[Event]| {
        let (windows, _) = history::windows(events, 0);
        let mut violations = history::check_answers(events, &timeline);
        violations.extend(history::check_exclusion(events, &windows, "l", &timeline));
        violations.extend(history::check_fencing(events, &windows, 0, "l", &timeline));
        violations
    };
    let kinds = |violations: Vec<String>| {
        let mut kinds: Vec<String> = violations
            .iter()
            .map(|violation| violation.split(':').next().unwrap_or("").to_string())
            .collect();
        kinds.dedup();
        kinds
    };
    let made_up = MadeUp { started };

    // Phase 1: release then grant, and a lease that ran out then a grant: clean.
    let clean = [
        made_up.lock(0, (0, 5), 10, false, 1_000),
        made_up.unlock(0, (100, 105), 10, made_up.released(10)),
        made_up.lock(1, (110, 115), 11, false, 100),
        made_up.lock(2, (300, 305), 12, false, 100),
    ];
    assert_eq!(kinds(check(&clean)), Vec::<String>::new());

    // Phase 2: a grant to another owner inside a definite window.
    let two_holders = [
        made_up.lock(0, (0, 5), 10, false, 1_000),
        made_up.lock(1, (500, 505), 11, false, 1_000),
    ];
    assert_eq!(kinds(check(&two_holders)), ["exclusion"]);

    // Phase 3: a token that goes backwards, and one token with two owners.
    let backwards = [
        made_up.lock(0, (0, 5), 10, false, 100),
        made_up.lock(1, (200, 205), 9, false, 100),
    ];
    assert_eq!(kinds(check(&backwards)), ["fencing"]);
    let two_owners = [
        made_up.lock(0, (0, 5), 10, false, 100),
        made_up
            .lock(1, (50, 55), 0, false, 100)
            .answered(made_up.busy(2, 10)),
    ];
    assert_eq!(kinds(check(&two_owners)), ["fencing"]);

    // Phase 4: a released token shown held again.
    let resurrected = [
        made_up.lock(0, (0, 5), 10, false, 1_000),
        made_up.unlock(0, (100, 105), 10, made_up.released(10)),
        made_up.lock(0, (200, 205), 10, true, 1_000),
    ];
    assert_eq!(kinds(check(&resurrected)), ["fencing"]);

    // Phase 5: an UNLOCK of unknown outcome may land after the owner's re-entry: the
    // re-entry proves no window, so a later grant to another owner is no violation.
    let stale_unlock = [
        made_up.lock(0, (0, 5), 10, false, 5_000),
        made_up.unlock(0, (100, 1_100), 10, Outcome::Unknown("timed out".into())),
        made_up.lock(0, (1_150, 1_155), 10, true, 5_000),
        made_up.lock(1, (1_300, 1_305), 11, false, 5_000),
    ];
    assert_eq!(
        history::windows(&stale_unlock, 0).1,
        1,
        "one tainted answer"
    );
    assert_eq!(kinds(check(&stale_unlock)), Vec::<String>::new());

    // Phase 6: an answer of the wrong kind.
    let wrong = [made_up
        .lock(0, (0, 5), 10, false, 100)
        .answered(made_up.released(10))];
    assert_eq!(kinds(check(&wrong)), ["answer"]);
}

/// Made-up events on lock 0 for the checker test, times in ms from `started`.
struct MadeUp {
    started: Instant,
}

impl MadeUp {
    fn at(&self, ms: u64) -> Instant {
        self.started + Duration::from_millis(ms)
    }

    fn lock(
        &self,
        owner: usize,
        (sent, ended): (u64, u64),
        token: u64,
        reentered: bool,
        ttl_ms: u64,
    ) -> Event {
        Event {
            owner: Some(owner),
            lock: 0,
            node: 1,
            op: Op::Lock { ttl_ms, wait_ms: 0 },
            sent: self.at(sent),
            ended: self.at(ended),
            outcome: Outcome::Answered(Response::Acquired(kahu_protocol::Acquired {
                token,
                ttl_ms,
                reentered,
            })),
        }
    }

    fn unlock(
        &self,
        owner: usize,
        (sent, ended): (u64, u64),
        token: u64,
        outcome: Outcome,
    ) -> Event {
        Event {
            owner: Some(owner),
            lock: 0,
            node: 1,
            op: Op::Unlock { token },
            sent: self.at(sent),
            ended: self.at(ended),
            outcome,
        }
    }

    fn released(&self, token: u64) -> Outcome {
        Outcome::Answered(Response::Released(kahu_protocol::Released { token }))
    }

    fn busy(&self, owner: usize, token: u64) -> Outcome {
        Outcome::Answered(Response::Busy(kahu_protocol::Busy {
            token,
            remaining_ms: 50,
            owner: history::owner_name(owner),
        }))
    }
}

trait Answered {
    fn answered(self, outcome: Outcome) -> Self;
}

impl Answered for Event {
    fn answered(mut self, outcome: Outcome) -> Event {
        self.outcome = outcome;
        self
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Kill,
    Pause,
    Partition,
}

/// One node: its addresses (fixed for the whole test, also across restarts), its data
/// directory and its current process.
#[derive(Debug)]
struct Node {
    id: u64,
    client: SocketAddr,
    /// The real peer port (`--peer-listen`).
    peer: SocketAddr,
    /// The proxy in front of the peer port: what `--peers` names.
    proxy: SocketAddr,
    data_dir: PathBuf,
    process: Option<NodeProcess>,
    stderr: StderrTail,
    runs: usize,
}

#[derive(Debug, Default)]
struct FaultCounts {
    kills: usize,
    pauses: usize,
    partitions: usize,
    final_held: usize,
    final_free: usize,
    /// Each shard's Raft term once the faults are over: how many elections there were.
    terms: Vec<u64>,
}

/// The test's state. Field order is drop order: processes die before their directories go.
struct FaultRun {
    seed: u64,
    cycles: usize,
    rng: Rng,
    timeline: Timeline,
    nodes: Vec<Node>,
    proxies: PeerProxies,
    shared: Option<Arc<Shared>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
    counts: FaultCounts,
    /// What happened when, for the failure message and `history.txt`.
    log: Vec<String>,
    runtime: tokio::runtime::Runtime,
    root: Option<tempfile::TempDir>,
}

impl FaultRun {
    fn new(seed: u64, cycles: usize) -> FaultRun {
        let root = tempfile::Builder::new()
            .prefix("kahu-cluster-faults-")
            .tempdir()
            .expect("temporary directory");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        FaultRun {
            seed,
            cycles,
            rng: Rng::new(seed),
            timeline: Timeline {
                started: Instant::now(),
            },
            nodes: Vec::new(),
            proxies: PeerProxies::new(),
            shared: None,
            clients: Vec::new(),
            counts: FaultCounts::default(),
            log: Vec::new(),
            runtime,
            root: Some(root),
        }
    }

    fn note(&mut self, what: String) {
        let line = format!("[{}] {what}", self.timeline.now());
        eprintln!("cluster faults: {line}");
        self.log.push(line);
    }

    // -----------------------------------------------------------------------------------
    // Phase 1: start
    // -----------------------------------------------------------------------------------

    /// Binds the proxies, then starts the three nodes on freshly picked ports; a port
    /// taken by someone else in between fails the start, which is retried on new ports
    /// (bounded). Then waits for one leader per shard.
    fn start_cluster(&mut self) {
        let root = self.root.as_ref().expect("root dir").path().to_path_buf();
        let listeners: Vec<std::net::TcpListener> = (0..NODE_COUNT)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a proxy port"))
            .collect();
        let mut last_error = String::new();
        for attempt in 1..=START_ATTEMPTS_MAX {
            self.nodes = listeners
                .iter()
                .zip(1..=NODE_COUNT)
                .map(|(listener, id)| {
                    let data_dir = root.join(format!("node-{id}"));
                    let _ = std::fs::remove_dir_all(&data_dir);
                    Node {
                        id,
                        client: free_port(),
                        peer: free_port(),
                        proxy: listener.local_addr().expect("proxy address"),
                        data_dir,
                        process: None,
                        stderr: StderrTail::default(),
                        runs: 0,
                    }
                })
                .collect();
            match self.spawn_all() {
                Ok(()) => {
                    {
                        let _entered = self.runtime.enter();
                        for (listener, node) in listeners.into_iter().zip(&self.nodes) {
                            self.proxies.serve(listener, node.id, node.peer);
                        }
                    }
                    let addresses: Vec<String> = self
                        .nodes
                        .iter()
                        .map(|node| {
                            format!(
                                "node {}: client {} peer {} behind proxy {}",
                                node.id, node.client, node.peer, node.proxy
                            )
                        })
                        .collect();
                    self.note(format!("started: {}", addresses.join("; ")));
                    self.wait_until_settled("start", false);
                    return;
                }
                Err(error) => {
                    eprintln!("cluster faults: start attempt {attempt} failed: {error}");
                    last_error = error;
                    for node in &mut self.nodes {
                        node.process = None;
                    }
                }
            }
        }
        self.fail(
            "start",
            &format!("the cluster did not start in {START_ATTEMPTS_MAX} attempts: {last_error}"),
        );
    }

    fn spawn_all(&mut self) -> Result<(), String> {
        let peers = self.peers_flag();
        for index in 0..self.nodes.len() {
            let args = self.node_args(index, &peers);
            let node = &mut self.nodes[index];
            node.runs += 1;
            let process = NodeProcess::start(&args, &node.stderr, STARTUP_TIMEOUT)
                .map_err(|error| format!("node {}: {error}", node.id))?;
            node.process = Some(process);
        }
        Ok(())
    }

    /// `--peers`, the same on every node: each node's proxy and client address.
    fn peers_flag(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("{}={}/{}", node.id, node.proxy, node.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn node_args(&self, index: usize, peers: &str) -> Vec<OsString> {
        let node = &self.nodes[index];
        let mut args: Vec<OsString> = [
            "--node-id".to_string(),
            node.id.to_string(),
            "--listen".to_string(),
            node.client.to_string(),
            "--peer-listen".to_string(),
            node.peer.to_string(),
            "--peers".to_string(),
            peers.to_string(),
            "--tick-ms".to_string(),
            "10".to_string(),
            "--election-ticks".to_string(),
            "10".to_string(),
            "--shards".to_string(),
            SHARD_COUNT.to_string(),
            "--log-level".to_string(),
            "warn".to_string(),
            "--data-dir".to_string(),
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        args.push(node.data_dir.clone().into_os_string());
        args
    }

    // -----------------------------------------------------------------------------------
    // Phase 2: traffic
    // -----------------------------------------------------------------------------------

    fn start_traffic(&mut self) {
        let shared = Arc::new(Shared {
            nodes: self
                .nodes
                .iter()
                .map(|node| (node.id, node.client))
                .collect(),
            locks: lock_names(),
            shard_count: SHARD_COUNT,
            history: Mutex::default(),
            stop: Default::default(),
        });
        for (owner, spec) in CLIENTS.iter().enumerate() {
            let driver = Driver::new(owner, *spec, shared.clone(), self.rng.fork(owner as u64));
            self.clients.push(self.runtime.spawn(driver.run()));
        }
        self.shared = Some(shared);
        self.note(format!("traffic: {} clients", CLIENTS.len()));
    }

    fn shared(&self) -> Arc<Shared> {
        self.shared.clone().expect("traffic started")
    }

    // -----------------------------------------------------------------------------------
    // Phase 3: faults
    // -----------------------------------------------------------------------------------

    fn inject(&mut self, fault: Fault, phase: &str) {
        match fault {
            Fault::Kill => self.kill_a_leader(phase),
            Fault::Pause => self.pause_a_node(phase),
            Fault::Partition => self.partition_a_node(phase),
        }
    }

    /// SIGKILL the leader of a random shard, then restart it on the same data directory.
    fn kill_a_leader(&mut self, phase: &str) {
        let shard = self.rng.below(SHARD_COUNT as u64) as usize;
        let index = self.leader_of(shard, phase);
        let down_ms = self.rng.between(DOWN_MS.0, DOWN_MS.1);
        let id = self.nodes[index].id;
        self.note(format!(
            "{phase}: SIGKILL node {id} (leader of shard {shard}), down for {down_ms} ms"
        ));
        let killed = self.nodes[index]
            .process
            .take()
            .expect("a running node")
            .sigkill();
        if let Err(error) = killed {
            self.fail(phase, &format!("SIGKILL node {id}: {error}"));
        }
        std::thread::sleep(Duration::from_millis(down_ms));
        self.restart(index, phase);
        self.counts.kills += 1;
    }

    fn restart(&mut self, index: usize, phase: &str) {
        let peers = self.peers_flag();
        let args = self.node_args(index, &peers);
        let mut last_error = String::new();
        for attempt in 1..=RESTART_ATTEMPTS_MAX {
            let node = &mut self.nodes[index];
            node.runs += 1;
            node.stderr
                .push(format!("--- (test) run {} starts", node.runs));
            let spawned = Instant::now();
            match NodeProcess::start(&args, &node.stderr, STARTUP_TIMEOUT) {
                Ok(process) => {
                    node.process = Some(process);
                    let id = node.id;
                    let took = millis(spawned.elapsed());
                    self.note(format!(
                        "{phase}: node {id} restarted (listening after {took} ms)"
                    ));
                    return;
                }
                Err(error) => {
                    let id = self.nodes[index].id;
                    self.note(format!(
                        "{phase}: restart {attempt} of node {id} failed: {error}"
                    ));
                    last_error = error;
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        let id = self.nodes[index].id;
        self.fail(
            phase,
            &format!("node {id} did not restart on its data directory: {last_error}"),
        );
    }

    /// SIGSTOP a node, mostly a shard leader, then SIGCONT.
    fn pause_a_node(&mut self, phase: &str) {
        let (index, role) = self.pick_target(phase);
        let pause_ms = self.rng.between(PAUSE_MS.0, PAUSE_MS.1);
        let id = self.nodes[index].id;
        self.note(format!(
            "{phase}: SIGSTOP node {id} ({role}) for {pause_ms} ms"
        ));
        let process = self.nodes[index].process.as_mut().expect("a running node");
        if let Err(error) = process.pause() {
            self.fail(phase, &format!("SIGSTOP node {id}: {error}"));
        }
        std::thread::sleep(Duration::from_millis(pause_ms));
        let process = self.nodes[index].process.as_mut().expect("a running node");
        if let Err(error) = process.resume() {
            self.fail(phase, &format!("SIGCONT node {id}: {error}"));
        }
        self.note(format!("{phase}: SIGCONT node {id}"));
        self.counts.pauses += 1;
    }

    /// Cut a node, mostly a shard leader, off from the others, then heal.
    fn partition_a_node(&mut self, phase: &str) {
        let (index, role) = self.pick_target(phase);
        let partition_ms = self.rng.between(PARTITION_MS.0, PARTITION_MS.1);
        let id = self.nodes[index].id;
        self.note(format!(
            "{phase}: partition node {id} ({role}) from the others for {partition_ms} ms"
        ));
        self.proxies.isolate(id);
        std::thread::sleep(Duration::from_millis(partition_ms));
        self.proxies.heal();
        self.note(format!("{phase}: healed"));
        self.counts.partitions += 1;
    }

    /// The node a pause or partition hits: the leader of a random shard, or any node.
    fn pick_target(&mut self, phase: &str) -> (usize, String) {
        if self.rng.percent(LEADER_TARGET_PERCENT) {
            let shard = self.rng.below(SHARD_COUNT as u64) as usize;
            (
                self.leader_of(shard, phase),
                format!("leader of shard {shard}"),
            )
        } else {
            let index = self.rng.below(self.nodes.len() as u64) as usize;
            (index, "any node".to_string())
        }
    }

    /// The index of the node leading `shard`, as INFO says (waiting for one, bounded).
    fn leader_of(&mut self, shard: usize, phase: &str) -> usize {
        let infos = self.wait_until_settled(&format!("{phase}: finding a leader"), false);
        let leader = infos[0][&format!("shard{shard}_leader")];
        self.nodes
            .iter()
            .position(|node| node.id == leader)
            .expect("a leader among the nodes")
    }

    // -----------------------------------------------------------------------------------
    // Phase 4: settle
    // -----------------------------------------------------------------------------------

    /// Waits until every node answers INFO, every shard has exactly one node that says it
    /// leads, and every node names that node as the leader (and with `same_log`, every node
    /// has applied the same index). Returns the INFO of each node.
    fn wait_until_settled(&mut self, phase: &str, same_log: bool) -> Vec<HashMap<String, u64>> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            for index in 0..self.nodes.len() {
                let alive = self.nodes[index]
                    .process
                    .as_mut()
                    .map_or(Ok(()), NodeProcess::check_alive);
                if let Err(error) = alive {
                    let id = self.nodes[index].id;
                    self.fail(phase, &format!("node {id} died: {error}"));
                }
            }
            let addresses: Vec<SocketAddr> = self.nodes.iter().map(|node| node.client).collect();
            let infos: Vec<Option<HashMap<String, u64>>> = self.runtime.block_on(async {
                futures::future::join_all(addresses.into_iter().map(info)).await
            });
            let why = match settled(&infos, same_log) {
                Ok(infos) => return infos,
                Err(why) => why,
            };
            if Instant::now() > deadline {
                self.fail(
                    phase,
                    &format!("the cluster did not settle within {SETTLE_TIMEOUT:?}: {why}"),
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    fn stop_traffic(&mut self) {
        self.shared().stop.store(true, Ordering::SeqCst);
        let clients = std::mem::take(&mut self.clients);
        let joined = self.runtime.block_on(async {
            tokio::time::timeout(CLIENTS_STOP_TIMEOUT, futures::future::join_all(clients)).await
        });
        match joined {
            Ok(results) if results.iter().all(Result::is_ok) => {}
            Ok(_) => self.fail("stopping the clients", "a client panicked"),
            Err(_) => self.fail(
                "stopping the clients",
                &format!("the clients did not stop within {CLIENTS_STOP_TIMEOUT:?}"),
            ),
        }
        self.note("traffic stopped".to_string());
    }

    // -----------------------------------------------------------------------------------
    // Phase 5: final check
    // -----------------------------------------------------------------------------------

    /// GET every lock through its leader; a lock some owner definitely holds now must be
    /// held by that owner, with that token, its lease not ending before the client's count.
    fn final_check(&mut self) {
        let shared = self.shared();
        let mut router = Router::new(None, shared.clone(), self.rng.fork(0xc4ec), false);
        let mut problems = Vec::new();
        for lock in 0..shared.locks.len() {
            let answer = self.runtime.block_on(router.call(lock, Op::Get));
            let history = shared.history();
            let get = history.events.last().expect("the GET was recorded").clone();
            let lock_name = String::from_utf8_lossy(&shared.locks[lock]).into_owned();
            if answer.is_none() {
                problems.push(format!(
                    "lock {lock_name}: no answer to GET within {OP_DEADLINE:?} after the cluster \
                     settled: {}",
                    get.describe(&self.timeline)
                ));
                continue;
            }
            let (windows, _) = history::windows(&history.events, lock);
            let covering: Vec<&Window> = windows
                .iter()
                .filter(|window| window.start < get.sent && window.end > get.ended)
                .collect();
            match expected_holder(&covering) {
                Some((owner, token, lease_end)) => {
                    self.counts.final_held += 1;
                    if let Err(problem) = check_held(&get, owner, token, lease_end) {
                        let proof = covering
                            .iter()
                            .map(|window| history.events[window.event].describe(&self.timeline))
                            .collect::<Vec<_>>()
                            .join("\n        ");
                        problems.push(format!(
                            "final check: lock {lock_name}: {problem}\n      GET: {}\n      \
                             acknowledged by: {proof}",
                            get.describe(&self.timeline)
                        ));
                    }
                }
                None => self.counts.final_free += 1,
            }
        }
        if !problems.is_empty() {
            self.fail("final check", &problems.join("\n"));
        }
        self.note(format!(
            "final check: {} locks held as acknowledged, {} not definitely held by anyone",
            self.counts.final_held, self.counts.final_free
        ));
    }

    // -----------------------------------------------------------------------------------
    // Phase 6: checkers
    // -----------------------------------------------------------------------------------

    fn check_history(&mut self) {
        let shared = self.shared();
        let history = shared.history();
        let mut violations: Vec<String> = history
            .protocol_errors
            .iter()
            .map(|error| format!("protocol: {error}"))
            .collect();
        violations.extend(history::check_answers(&history.events, &self.timeline));
        for (lock, name) in shared.locks.iter().enumerate() {
            let name = String::from_utf8_lossy(name);
            let (windows, _) = history::windows(&history.events, lock);
            violations.extend(history::check_exclusion(
                &history.events,
                &windows,
                &name,
                &self.timeline,
            ));
            violations.extend(history::check_fencing(
                &history.events,
                &windows,
                lock,
                &name,
                &self.timeline,
            ));
        }
        drop(history);
        if !violations.is_empty() {
            let mut problem = format!("{} violations", violations.len());
            for violation in violations.iter().take(VIOLATIONS_SHOWN_MAX) {
                let _ = write!(problem, "\n  - {violation}");
            }
            if violations.len() > VIOLATIONS_SHOWN_MAX {
                problem.push_str("\n  (the rest are in history.txt)");
            }
            self.log.extend(violations);
            self.fail("checkers", &problem);
        }
    }

    fn finish(&mut self) {
        let shared = self.shared();
        let history = shared.history();
        let mut answered = 0;
        let mut refused = 0;
        let mut unknown = 0;
        let mut grants = 0;
        let mut releases = 0;
        for event in &history.events {
            match &event.outcome {
                Outcome::Answered(Response::Acquired(a)) if !a.reentered => grants += 1,
                Outcome::Answered(Response::Released(_)) => releases += 1,
                _ => {}
            }
            match event.outcome {
                Outcome::Answered(_) => answered += 1,
                Outcome::Refused(_) => refused += 1,
                Outcome::Unknown(_) => unknown += 1,
            }
        }
        let (mut windows, mut tainted) = (0, 0);
        for lock in 0..shared.locks.len() {
            let (lock_windows, lock_tainted) = history::windows(&history.events, lock);
            windows += lock_windows.len();
            tainted += lock_tainted;
        }
        let proxy = &self.proxies.counts;
        eprintln!(
            "cluster faults: seed {seed}: {kills} kills, {pauses} pauses, {partitions} \
             partitions in {elapsed:.1} s; {events} requests: {answered} answered, {refused} \
             refused (NOT_LEADER), {unknown} unknown outcome; {grants} fresh grants, \
             {releases} releases, {windows} definite windows ({tainted} answers left out, \
             tainted by an UNLOCK of unknown outcome); final check: {held} locks held as \
             acknowledged, {free} free or unknown; shard terms at the end {terms:?}; proxies: \
             {connections} connections, {cut} cut at heals, {forwarded} bytes forwarded, \
             {dropped} dropped",
            seed = self.seed,
            kills = self.counts.kills,
            pauses = self.counts.pauses,
            partitions = self.counts.partitions,
            elapsed = self.timeline.started.elapsed().as_secs_f64(),
            events = history.events.len(),
            held = self.counts.final_held,
            free = self.counts.final_free,
            terms = self.counts.terms,
            connections = proxy.connections.load(Ordering::Relaxed),
            cut = proxy.connections_cut.load(Ordering::Relaxed),
            forwarded = proxy.bytes_forwarded.load(Ordering::Relaxed),
            dropped = proxy.bytes_dropped.load(Ordering::Relaxed),
        );
        assert!(
            grants > 0 && releases > 0 && windows > 0,
            "seed {}: no grant, release or definite window, so nothing was tested",
            self.seed
        );
        drop(history);
        self.proxies.shutdown();
    }

    // -----------------------------------------------------------------------------------
    // Failure
    // -----------------------------------------------------------------------------------

    /// Panics with everything needed to understand the failure, keeping the data
    /// directories and writing `history.txt` beside them.
    fn fail(&mut self, phase: &str, problem: &str) -> ! {
        let stderr: Vec<String> = self
            .nodes
            .iter()
            .map(|node| {
                format!(
                    "    node {} (last stderr lines):\n{}",
                    node.id,
                    node.stderr.text()
                )
            })
            .collect();
        let kept = self.root.take().map(tempfile::TempDir::keep);
        let history_note = match &kept {
            Some(path) => match self.write_history(&path.join("history.txt")) {
                Ok(()) => format!("{} (kept, with history.txt)", path.display()),
                Err(error) => format!("{} (kept; history.txt: {error})", path.display()),
            },
            None => "(gone)".to_string(),
        };
        let recent: Vec<&String> = self.log.iter().rev().take(20).rev().collect();
        let recent: Vec<&str> = recent.iter().map(|line| line.as_str()).collect();
        panic!(
            "cluster fault test failed\n  seed:      {seed} (rerun with \
             KAHU_CLUSTER_FAULT_SEED={seed} KAHU_CLUSTER_FAULT_CYCLES={cycles})\n  phase:     \
             {phase} (at {now})\n  data dirs: {history_note}\n  problem:\n{problem}\n  \
             fault log (last lines):\n    {log}\n{stderr}",
            seed = self.seed,
            cycles = self.cycles,
            now = self.timeline.now(),
            log = recent.join("\n    "),
            stderr = stderr.join("\n"),
        )
    }

    fn write_history(&self, path: &std::path::Path) -> std::io::Result<()> {
        let mut text = format!("seed {} cycles {}\n\n# fault log\n", self.seed, self.cycles);
        for line in &self.log {
            let _ = writeln!(text, "{line}");
        }
        if let Some(shared) = &self.shared {
            let history = shared.history();
            let _ = writeln!(text, "\n# locks");
            for (lock, name) in shared.locks.iter().enumerate() {
                let _ = writeln!(text, "lock {lock}: {}", String::from_utf8_lossy(name));
            }
            let _ = writeln!(text, "\n# requests, in order of sending");
            let mut events: Vec<_> = history.events.iter().collect();
            events.sort_by_key(|event| event.sent);
            for event in events {
                let _ = writeln!(
                    text,
                    "lock {}: {}",
                    event.lock,
                    event.describe(&self.timeline)
                );
            }
        }
        std::fs::write(path, text)
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// A free port on 127.0.0.1, as the OS picks it (released at once: the node binds it).
///
/// A killed node restarts on the same ports, so nothing else may take them while it is
/// down. Linux gives `bind(0)` odd ports and outgoing connections even ones first, so the
/// test's own connections (clients, proxies, nodes) do not take them in practice; if one
/// ever did, the restart fails with the node's bind error in the message.
fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local address")
}

/// [`LOCKS_PER_SHARD`] lock names on every shard.
fn lock_names() -> Vec<Bytes> {
    let mut by_shard: BTreeMap<usize, Vec<Bytes>> = BTreeMap::new();
    for number in 0.. {
        let name = format!("fault-lock-{number}");
        let shard = shard_of(key_hash(name.as_bytes()), SHARD_COUNT);
        let names = by_shard.entry(shard).or_default();
        if names.len() < LOCKS_PER_SHARD {
            names.push(Bytes::from(name));
        }
        if by_shard.len() == SHARD_COUNT
            && by_shard
                .values()
                .all(|names| names.len() == LOCKS_PER_SHARD)
        {
            break;
        }
    }
    by_shard.into_values().flatten().collect()
}

/// INFO of one node as a map; `None` if it does not answer within [`INFO_TIMEOUT`].
async fn info(address: SocketAddr) -> Option<HashMap<String, u64>> {
    let exchange = async {
        let stream = TcpStream::connect(address).await.ok()?;
        let mut framed = Framed::new(stream, ClientCodec::default());
        framed.send((1, &Request::Info)).await.ok()?;
        match framed.next().await {
            Some(Ok((1, Response::Info(info)))) => Some(info.fields.into_iter().collect()),
            _ => None,
        }
    };
    tokio::time::timeout(INFO_TIMEOUT, exchange).await.ok()?
}

/// Every node answered; every shard has one node that leads it and every node names it.
fn settled(
    infos: &[Option<HashMap<String, u64>>],
    same_log: bool,
) -> Result<Vec<HashMap<String, u64>>, String> {
    let mut answered = Vec::new();
    for (index, info) in infos.iter().enumerate() {
        match info {
            Some(info) => answered.push(info.clone()),
            None => return Err(format!("node {} did not answer INFO", index + 1)),
        }
    }
    let field = |info: &HashMap<String, u64>, name: String| info.get(&name).copied().unwrap_or(0);
    for shard in 0..SHARD_COUNT {
        let leaders: Vec<usize> = (0..answered.len())
            .filter(|&index| field(&answered[index], format!("shard{shard}_is_leader")) == 1)
            .collect();
        let [leader] = leaders[..] else {
            return Err(format!(
                "shard {shard} has {} nodes saying they lead",
                leaders.len()
            ));
        };
        let leader_id = leader as u64 + 1;
        let named: Vec<u64> = answered
            .iter()
            .map(|info| field(info, format!("shard{shard}_leader")))
            .collect();
        if named.iter().any(|&id| id != leader_id) {
            return Err(format!(
                "shard {shard}: node {leader_id} leads, the nodes name {named:?}"
            ));
        }
        if same_log {
            let applied: Vec<u64> = answered
                .iter()
                .map(|info| field(info, format!("shard{shard}_applied_index")))
                .collect();
            if applied.iter().any(|&index| index != applied[0]) {
                return Err(format!("shard {shard}: applied indexes {applied:?}"));
            }
        }
    }
    Ok(answered)
}

/// The one owner whose definite windows cover the final GET, with the token of the latest
/// such window and the latest end of its lease by the client's count. `None` if no window
/// covers it (or windows of several owners do: the exclusion checker reports that).
fn expected_holder(covering: &[&Window]) -> Option<(usize, u64, Instant)> {
    let latest = covering.iter().max_by_key(|window| window.start)?;
    if covering.iter().any(|window| window.owner != latest.owner) {
        return None;
    }
    let lease_end = covering.iter().map(|window| window.end).max()?;
    Some((latest.owner, latest.token, lease_end))
}

fn check_held(
    get: &history::Event,
    owner: usize,
    token: u64,
    lease_end: Instant,
) -> Result<(), String> {
    let want = format!(
        "want held by {} with token {token}",
        String::from_utf8_lossy(&history::owner_name(owner))
    );
    let Some(Response::LockInfo(info)) = get.answer() else {
        return Err(want);
    };
    if info.owner != history::owner_name(owner) || info.token != token {
        return Err(format!("{want}: an acknowledged lock was lost or changed"));
    }
    let server_end_latest = get.ended + Duration::from_millis(info.remaining_ms + 1);
    if server_end_latest < lease_end {
        return Err(format!(
            "the lease ends early: {} ms left, {} ms before the client's own count ends",
            info.remaining_ms,
            millis(lease_end - server_end_latest)
        ));
    }
    Ok(())
}
