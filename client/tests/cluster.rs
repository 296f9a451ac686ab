//! The client against a fake cluster: each fake node answers by a script (a function of the
//! request), so leader hints, elections, deposed leaders and dead nodes are played
//! deterministically, without a real Raft cluster's timing. Also membership changes (MEMBERS
//! routed per shard, pending changes waited out), and `kahu-cli --cluster-status`,
//! `--add-node` and `--remove-node` against fake nodes.
//!
//! Every fake node binds 127.0.0.1 port 0; every wait is bounded by `STEP_TIMEOUT`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use kahu_client::{Client, ClientOptions, Error, ErrorCode, LockState, UnlockOutcome};
use kahu_protocol::routing::{key_hash, shard_of};
use kahu_protocol::{
    Acquired, HelloOk, Incoming, InfoReply, MemberChange, Members, MembersReply, NotHeld,
    ProtocolError, Released, Request, Response, ServerCodec, VERSION,
};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::codec::Framed;

/// The longest any step waits before the test fails.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

const CLI: &str = env!("CARGO_BIN_EXE_kahu-cli");

type Script = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// A node that answers HELLO, then every request by its script, on any number of
/// connections, and records what it was sent.
struct FakeNode {
    address: String,
    seen: Arc<Mutex<Vec<Request>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeNode {
    async fn start(
        shard_count: u16,
        script: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> FakeNode {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script: Script = Arc::new(script);
        let task = tokio::spawn(serve(listener, shard_count, script, Arc::clone(&seen)));
        FakeNode {
            address,
            seen,
            task,
        }
    }

    /// Every request but HELLO, in the order they arrived.
    fn requests(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops listening and closes every connection: the node is down.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn serve(
    listener: TcpListener,
    shard_count: u16,
    script: Script,
    seen: Arc<Mutex<Vec<Request>>>,
) {
    // Dropped with this task, which closes every connection.
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let script = Arc::clone(&script);
        let seen = Arc::clone(&seen);
        connections.spawn(async move {
            let mut framed = Framed::new(stream, ServerCodec::default());
            while let Some(Ok(frame)) = framed.next().await {
                let Incoming::Request {
                    request_id,
                    request,
                } = frame
                else {
                    panic!("the client sent an invalid frame");
                };
                let response = match &request {
                    Request::Hello(_) => Response::HelloOk(hello_ok(shard_count)),
                    request => {
                        seen.lock().unwrap().push(request.clone());
                        script(request)
                    }
                };
                if framed.send((request_id, response)).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn hello_ok(shard_count: u16) -> HelloOk {
    HelloOk {
        version: VERSION,
        server_name: "fake".into(),
        shard_count,
        frame_bytes_max: 16 * 1024,
        key_bytes_max: 512,
        owner_bytes_max: 256,
        ttl_ms_max: 7 * 24 * 3600 * 1000,
        wait_ms_max: 60 * 60 * 1000,
    }
}

fn options() -> ClientOptions {
    ClientOptions::default()
        .request_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(2))
        .connect_attempts_max(1)
}

fn not_leader(message: impl Into<String>) -> Response {
    ProtocolError::new(ErrorCode::NotLeader, message).into()
}

fn follower_of(leader: &str) -> Response {
    not_leader(format!("shard 0 is led by node 2; ask leader={leader}"))
}

fn no_leader() -> Response {
    not_leader("shard 0 has no leader right now (election in progress); retry")
}

fn deposed(leader: &str) -> Response {
    not_leader(format!(
        "shard 0 is led by node 2; ask leader={leader}; the request may or may not have taken \
         effect"
    ))
}

fn acquired(token: u64) -> Response {
    Response::Acquired(Acquired {
        token,
        ttl_ms: 30_000,
        reentered: false,
    })
}

/// What a leader answers: a grant, a release, a free lock, a pong.
fn leader_answer(request: &Request) -> Response {
    match request {
        Request::Lock(_) => acquired(9),
        Request::Unlock(_) => Response::Released(Released { token: 9 }),
        Request::Get(_) => Response::NotHeld(NotHeld { last_token: 0 }),
        Request::Ping => Response::Pong,
        other => panic!("unexpected request {other:?}"),
    }
}

fn lock_owner(request: &Request) -> Bytes {
    match request {
        Request::Lock(lock) => lock.owner.clone(),
        other => panic!("expected LOCK, got {other:?}"),
    }
}

/// Waits until `node` has been sent `count` requests.
async fn wait_for_requests(node: &FakeNode, count: usize) {
    let started = Instant::now();
    while node.requests().len() < count {
        assert!(started.elapsed() < STEP_TIMEOUT, "{:?}", node.requests());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_request_to_a_follower_follows_the_hint_to_the_leader() {
    let leader = FakeNode::start(1, leader_answer).await;
    let leader_address = leader.address.clone();
    let follower = FakeNode::start(1, move |request| match request {
        Request::Ping => Response::Pong,
        _ => follower_of(&leader_address),
    })
    .await;

    // Phase 1: the client knows only the follower; the LOCK goes there, then to the
    // leader it names, with the same owner.
    let client = Client::connect_with(&follower.address, options())
        .await
        .unwrap();
    let guard = client.lock("k").acquire().await.unwrap();
    assert_eq!(guard.fencing_token(), Some(9));
    let (to_follower, to_leader) = (follower.requests(), leader.requests());
    assert_eq!((to_follower.len(), to_leader.len()), (1, 1));
    assert_eq!(lock_owner(&to_follower[0]), lock_owner(&to_leader[0]));
    assert_eq!(
        client.nodes(),
        [follower.address.clone(), leader.address.clone()]
    );
    assert_eq!(client.leader_of("k"), Some(leader.address.clone()));

    // Phase 2: the next request for the key goes straight to the leader; PING stays home.
    assert!(!client.get("k").await.unwrap().is_locked());
    client.ping().await.unwrap();
    assert_eq!(follower.requests().len(), 2, "only the PING");
    assert_eq!(leader.requests().len(), 2);

    // Phase 3: the guard's release on drop takes the same route.
    drop(guard);
    wait_for_requests(&leader, 3).await;
    let Request::Unlock(unlock) = &leader.requests()[2] else {
        panic!("expected UNLOCK, got {:?}", leader.requests());
    };
    assert_eq!(unlock.token, Some(9));
    assert_eq!(follower.requests().len(), 2);
}

#[tokio::test]
async fn no_leader_is_retried_with_backoff_on_the_next_node_until_a_leader_appears() {
    // The log of which node was asked, and how many keyed requests the cluster has seen:
    // the first four find no leader; then b is elected.
    let log = Arc::new(Mutex::new(Vec::new()));
    let requests = Arc::new(AtomicUsize::new(0));
    let b_address = Arc::new(Mutex::new(String::new()));
    let script = |name: &'static str| {
        let (log, requests, b_address) = (log.clone(), requests.clone(), b_address.clone());
        move |request: &Request| {
            log.lock().unwrap().push(name);
            if requests.fetch_add(1, Ordering::SeqCst) < 4 {
                return no_leader();
            }
            match name {
                "b" => leader_answer(request),
                _ => follower_of(&b_address.lock().unwrap()),
            }
        }
    };
    let a = FakeNode::start(1, script("a")).await;
    let b = FakeNode::start(1, script("b")).await;
    *b_address.lock().unwrap() = b.address.clone();

    let client = Client::connect_cluster_with([&a.address, &b.address], options())
        .await
        .unwrap();
    let started = Instant::now();
    let guard = client.lock("k").acquire().await.unwrap();
    let elapsed = started.elapsed();

    // Four refusals, each followed by a pause (10 + 20 + 40 + 80 ms), alternating between
    // the nodes; the fifth attempt reaches a follower, whose hint to b (which said "no
    // leader" before, and may have been elected since) is followed at once.
    assert!(guard.is_acquired());
    assert_eq!(*log.lock().unwrap(), ["a", "b", "a", "b", "a", "b"]);
    assert!(elapsed >= Duration::from_millis(150), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    let owners: Vec<Bytes> = a
        .requests()
        .iter()
        .chain(&b.requests())
        .map(lock_owner)
        .collect();
    assert!(
        owners.iter().all(|owner| owner == guard.owner()),
        "one owner for every LOCK"
    );
    guard.detach();
}

/// The answer to the first request after a node closed the client's connection: the
/// client may write that request before it has read the close, and then it fails with
/// `ConnectionLost` (it may or may not have been applied, so it is not resent). In that
/// case, the answer to the same request sent again.
async fn first_after_a_close<T, F>(
    first: Result<T, Error>,
    again: impl FnOnce() -> F,
) -> Result<T, Error>
where
    F: std::future::Future<Output = Result<T, Error>>,
{
    match first {
        Err(Error::ConnectionLost { .. }) => again().await,
        other => other,
    }
}

#[tokio::test]
async fn a_node_that_is_down_is_skipped() {
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let b = FakeNode::start(1, leader_answer).await;

    // Phase 1: a dead seed is skipped when connecting.
    let client = Client::connect_cluster_with([&dead, &b.address], options())
        .await
        .unwrap();
    assert_eq!(client.address(), b.address);
    drop(client);

    // Phase 2: a leader that dies: the next request finds it unreachable and goes on to
    // the next node, which becomes home and the key's leader.
    let a = FakeNode::start(1, leader_answer).await;
    let a_address = a.address.clone();
    let client = Client::connect_cluster_with([&a.address, &b.address], options())
        .await
        .unwrap();
    client.get("k").await.unwrap();
    assert_eq!(client.leader_of("k"), Some(a_address.clone()));
    a.stop().await;
    let b_before = b.requests().len();
    let state = first_after_a_close(client.get("k").await, || client.get("k")).await;
    assert!(!state.unwrap().is_locked());
    assert_eq!(b.requests().len(), b_before + 1);
    assert_eq!(client.leader_of("k"), Some(b.address.clone()));
    assert_eq!(client.address(), b.address, "home moved off the dead node");
    client.ping().await.unwrap();

    // Phase 3: with every node down, the caller gets a connection error naming them.
    b.stop().await;
    let error = first_after_a_close(client.get("k").await, || client.get("k"))
        .await
        .unwrap_err();
    assert!(error.is_connect() && error.is_retryable(), "{error:?}");
    let message = error.to_string();
    assert!(message.contains(&a_address), "{message}");
}

#[tokio::test]
async fn the_retry_budget_ends_with_a_clear_not_leader_error() {
    let node = FakeNode::start(1, |_| no_leader()).await;

    // Phase 1: the attempt limit.
    let client = Client::connect_with(&node.address, options().route_attempts_max(4))
        .await
        .unwrap();
    let error = client.get("k").await.unwrap_err();
    assert!(error.is_not_leader(), "{error:?}");
    assert!(!error.is_retryable());
    assert_eq!(error.code(), Some(ErrorCode::NotLeader));
    assert!(error.message().contains("election in progress"), "{error}");
    assert!(
        error.message().contains("gave up after 4 attempts"),
        "{error}"
    );
    assert_eq!(node.requests().len(), 4);

    // Phase 2: the time limit, for a LOCK too (an error, not "not acquired").
    let client = Client::connect_with(
        &node.address,
        options().route_time_max(Duration::from_millis(100)),
    )
    .await
    .unwrap();
    let before = node.requests().len();
    let started = Instant::now();
    let error = client.lock("k").acquire().await.unwrap_err();
    assert!(error.is_not_leader(), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let attempts = node.requests().len() - before;
    assert!((3..=5).contains(&attempts), "{attempts} attempts in 100 ms");
}

#[tokio::test]
async fn a_lock_retried_after_a_deposed_leader_keeps_its_owner() {
    let leader = FakeNode::start(1, |request| match request {
        Request::Lock(_) => Response::Acquired(Acquired {
            token: 9,
            ttl_ms: 30_000,
            reentered: true,
        }),
        other => leader_answer(other),
    })
    .await;
    let leader_address = leader.address.clone();
    let deposed_node = FakeNode::start(1, move |_| deposed(&leader_address)).await;

    // Phase 1: the first LOCK may have been granted by the deposed leader; the retry at the
    // new leader carries the same owner, so it re-enters that grant instead of a second one.
    let client = Client::connect_with(&deposed_node.address, options())
        .await
        .unwrap();
    let guard = client.lock("k").acquire().await.unwrap();
    assert_eq!(guard.fencing_token(), Some(9));
    let first = lock_owner(&deposed_node.requests()[0]);
    let retry = lock_owner(&leader.requests()[0]);
    assert_eq!(first, retry);
    assert_eq!(&retry, guard.owner());
    guard.detach();

    // Phase 2: with IF_NOT_HELD the LOCK is not resent (its retry would be refused by the
    // grant the first may have made): the caller gets the NOT_LEADER.
    let client = Client::connect_with(&deposed_node.address, options())
        .await
        .unwrap();
    let error = client
        .lock("k")
        .owner("cli@host")
        .if_not_held(true)
        .acquire()
        .await
        .unwrap_err();
    assert!(error.is_not_leader(), "{error:?}");
    assert!(error.message().contains("may or may not"), "{error}");
    assert_eq!(
        leader.requests().len(),
        1,
        "nothing more reached the leader"
    );
}

#[tokio::test]
async fn an_unlock_retried_after_a_deposed_leader_that_finds_the_lock_free_is_released_uncertain() {
    let leader = FakeNode::start(1, |request| match request {
        Request::Unlock(unlock) if unlock.owner == "lost" => {
            Response::NotHeld(NotHeld { last_token: 0 })
        }
        other => leader_answer(other),
    })
    .await;
    let leader_address = leader.address.clone();
    let deposed_node = FakeNode::start(1, move |_| deposed(&leader_address)).await;

    // Phase 1: the retry finds the lock free: maybe released by the first attempt.
    let client = Client::connect_with(&deposed_node.address, options())
        .await
        .unwrap();
    let outcome = client.unlock_token("k", "lost", Some(9)).await.unwrap();
    assert_eq!(
        outcome,
        UnlockOutcome::ReleasedUncertain {
            last_fencing_token: None
        }
    );
    assert!(!outcome.is_released());
    let Request::Unlock(retry) = &leader.requests()[0] else {
        panic!("expected UNLOCK");
    };
    assert_eq!((retry.owner.as_ref(), retry.token), (&b"lost"[..], Some(9)));

    // Phase 2: the retry releases it: the first attempt had not taken effect.
    let client = Client::connect_with(&deposed_node.address, options())
        .await
        .unwrap();
    let outcome = client.unlock_token("k", "held", Some(9)).await.unwrap();
    assert_eq!(outcome, UnlockOutcome::Released { fencing_token: 9 });
}

/// A key of `shard` among `shard_count`.
fn key_on_shard(shard: usize, shard_count: usize) -> String {
    (0..)
        .map(|index| format!("key-{index}"))
        .find(|key| shard_of(key_hash(key.as_bytes()), shard_count) == shard)
        .unwrap()
}

#[tokio::test]
async fn keys_of_different_shards_go_to_their_own_leaders_once_learned() {
    // Two shards: a leads shard 0, b leads shard 1, each naming the other for the other's.
    let refusals = Arc::new(AtomicUsize::new(0));
    let addresses = Arc::new(Mutex::new([String::new(), String::new()]));
    let script = |leads: usize| {
        let (refusals, addresses) = (refusals.clone(), addresses.clone());
        move |request: &Request| {
            let shard = shard_of(key_hash(request.key().unwrap()), 2);
            if shard == leads {
                return leader_answer(request);
            }
            refusals.fetch_add(1, Ordering::SeqCst);
            let leader = addresses.lock().unwrap()[shard].clone();
            not_leader(format!(
                "shard {shard} is led by node {}; ask leader={leader}",
                shard + 1
            ))
        }
    };
    let a = FakeNode::start(2, script(0)).await;
    let b = FakeNode::start(2, script(1)).await;
    *addresses.lock().unwrap() = [a.address.clone(), b.address.clone()];
    let (key_0, key_1) = (key_on_shard(0, 2), key_on_shard(1, 2));

    // Phase 1: one refusal teaches the client shard 1's leader.
    let client = Client::connect_cluster_with([&a.address, &b.address], options())
        .await
        .unwrap();
    client.get(key_1.clone()).await.unwrap();
    client.get(key_0.clone()).await.unwrap();
    assert_eq!(refusals.load(Ordering::SeqCst), 1);

    // Phase 2: from then on each key goes straight to its shard's leader.
    for _ in 0..5 {
        let (zero, one) = tokio::join!(client.get(key_0.clone()), client.get(key_1.clone()));
        assert_eq!(
            zero.unwrap(),
            LockState::NotHeld {
                last_fencing_token: None
            }
        );
        one.unwrap();
    }
    assert_eq!(refusals.load(Ordering::SeqCst), 1);
    let keys = |node: &FakeNode| -> Vec<Bytes> {
        node.requests()
            .iter()
            .map(|request| request.key().unwrap().clone())
            .collect()
    };
    assert!(
        keys(&a)[1..].iter().all(|key| key == key_0.as_str()),
        "{:?}",
        keys(&a)
    );
    assert!(
        keys(&b).iter().all(|key| key == key_1.as_str()),
        "{:?}",
        keys(&b)
    );
    assert_eq!((keys(&a).len(), keys(&b).len()), (7, 6));
    assert_eq!(client.leader_of(&key_0), Some(a.address.clone()));
    assert_eq!(client.leader_of(&key_1), Some(b.address.clone()));
}

/// INFO of a node of a 3-node cluster with two shards: it leads shard 0, node 2 leads 1.
fn cluster_info() -> Response {
    let fields = [
        ("uptime_ms", 1234),
        ("shards", 2),
        ("shard0_is_leader", 1),
        ("shard0_leader", 1),
        ("shard0_term", 3),
        ("shard0_commit_index", 120),
        ("shard0_applied_index", 120),
        ("shard0_last_index", 121),
        ("shard1_is_leader", 0),
        ("shard1_leader", 2),
        ("shard1_term", 5),
        ("shard1_commit_index", 98),
        ("shard1_applied_index", 97),
        ("shard1_last_index", 98),
    ];
    Response::Info(InfoReply {
        fields: fields
            .iter()
            .map(|(name, value)| (name.to_string(), *value))
            .collect(),
    })
}

/// Runs `kahu-cli` with `arguments` (off the runtime's threads) and returns its exit code
/// and stdout.
async fn cli(arguments: &[&str]) -> (i32, String) {
    let arguments: Vec<String> = arguments.iter().map(|a| a.to_string()).collect();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(CLI)
            .args(&arguments)
            .env_remove("KAHU_ADDR")
            .env_remove("KAHU_OWNER")
            .output()
            .unwrap()
    });
    let output = tokio::time::timeout(STEP_TIMEOUT, output)
        .await
        .expect("kahu-cli finishes")
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    (output.status.code().expect("kahu-cli exits"), stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_prints_each_shard_as_a_table_or_json() {
    let node = FakeNode::start(2, |request| match request {
        Request::Info => cluster_info(),
        other => panic!("unexpected request {other:?}"),
    })
    .await;
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    // A dead first address: the list is tried in order.
    let connect = format!("{dead},{}", node.address);

    // Phase 1: the table. A title naming the node, a header, one row per shard.
    let (code, stdout) = cli(&["--connect", &connect, "--cluster-status"]).await;
    assert_eq!(code, 0, "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert_eq!(lines[0], format!("node {} (fake), 2 shards", node.address));
    let rows: Vec<Vec<&str>> = lines[1..]
        .iter()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec![
                "shard",
                "is_leader",
                "leader",
                "term",
                "commit_index",
                "applied_index",
                "last_index"
            ],
            vec!["0", "yes", "1", "3", "120", "120", "121"],
            vec!["1", "no", "2", "5", "98", "97", "98"],
        ]
    );

    // Phase 2: JSON, one object.
    let (code, stdout) = cli(&[
        "--connect",
        &connect,
        "--cluster-status",
        "--format",
        "json",
    ])
    .await;
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let status: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["node"], node.address.as_str());
    assert_eq!(status["server"], "fake");
    assert_eq!(status["shardCount"], 2);
    let shards = status["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    assert_eq!(
        shards[1],
        serde_json::json!({
            "shard": 1, "isLeader": false, "leader": 2, "term": 5,
            "commitIndex": 98, "appliedIndex": 97, "lastIndex": 98
        })
    );
    assert_eq!(shards[0]["isLeader"], true);
    assert_eq!(node.requests(), [Request::Info, Request::Info]);
}

const NODE_4: &str = "127.0.0.1:7004/127.0.0.1:8004";

/// The shard and change of a MEMBERS request.
fn members_of(request: &Request) -> (u16, MemberChange) {
    match request {
        Request::Members(members) => (members.shard, members.change.clone()),
        other => panic!("expected MEMBERS, got {other:?}"),
    }
}

fn voters(shard: u16, voters: &[u64]) -> Response {
    Response::Members(MembersReply {
        shard,
        voters: voters.to_vec(),
    })
}

fn pending(shard: u16) -> Response {
    ProtocolError::new(
        ErrorCode::MembershipChangePending,
        format!("shard {shard} has an uncommitted membership change; retry shortly"),
    )
    .into()
}

/// A leader of `shards` that applies each change to its voters (1, 2, 3 to begin with, the
/// same for every shard), idempotently, answering the first MEMBERS of each shard "pending".
fn membership_leader(shard_count: u16) -> impl Fn(&Request) -> Response + Send + Sync {
    let state = Mutex::new((
        vec![vec![1_u64, 2, 3]; usize::from(shard_count)],
        Vec::new(),
    ));
    move |request| {
        let (shard, change) = members_of(request);
        let (voters_by_shard, answered) = &mut *state.lock().unwrap();
        if !answered.contains(&shard) {
            answered.push(shard);
            return pending(shard);
        }
        let shard_voters = &mut voters_by_shard[usize::from(shard)];
        match change {
            MemberChange::Add { node, .. } if !shard_voters.contains(&node) => {
                shard_voters.push(node);
                shard_voters.sort_unstable();
            }
            MemberChange::Remove { node } => shard_voters.retain(|&voter| voter != node),
            MemberChange::Add { .. } => {}
        }
        voters(shard, shard_voters)
    }
}

#[tokio::test]
async fn adding_a_node_changes_every_shard_in_order_on_its_own_leader() {
    // Two shards: a leads shard 0, b leads shard 1, each naming the other for the other's.
    let addresses = Arc::new(Mutex::new([String::new(), String::new()]));
    let script = |leads: u16| {
        let addresses = addresses.clone();
        let leader = membership_leader(2);
        move |request: &Request| {
            let (shard, _) = members_of(request);
            if shard == leads {
                return leader(request);
            }
            let address = addresses.lock().unwrap()[usize::from(shard)].clone();
            not_leader(format!(
                "shard {shard} is led by node 9; ask leader={address}"
            ))
        }
    };
    let a = FakeNode::start(2, script(0)).await;
    let b = FakeNode::start(2, script(1)).await;
    *addresses.lock().unwrap() = [a.address.clone(), b.address.clone()];

    // Phase 1: each shard's first answer is "pending" and is asked again; shard 1 goes to
    // b by a's hint, only once shard 0 is committed.
    let client = Client::connect_with(&a.address, options()).await.unwrap();
    assert_eq!(client.shard_count(), 2);
    let shards = client.add_node(4, NODE_4).await.unwrap();
    assert_eq!(shards, [(0, vec![1, 2, 3, 4]), (1, vec![1, 2, 3, 4])]);
    let add = MemberChange::Add {
        node: 4,
        address: NODE_4.into(),
    };
    let seen = |node: &FakeNode| -> Vec<u16> {
        node.requests()
            .iter()
            .map(|request| {
                assert_eq!(members_of(request).1, add, "the same change every time");
                members_of(request).0
            })
            .collect()
    };
    assert_eq!(
        seen(&a),
        [0, 0, 1],
        "pending, committed, then shard 1 sent on"
    );
    assert_eq!(seen(&b), [1, 1]);

    // Phase 2: the same change again finishes at once (the server is idempotent), each
    // shard straight to its leader.
    let again = client.add_node(4, NODE_4).await.unwrap();
    assert_eq!(again, shards);
    assert_eq!((seen(&a).len(), seen(&b).len()), (4, 3));

    // Phase 3: removing node 3.
    let shards = client.remove_node(3).await.unwrap();
    assert_eq!(shards, [(0, vec![1, 2, 4]), (1, vec![1, 2, 4])]);
}

#[tokio::test]
async fn a_membership_change_is_retried_through_an_election_and_a_deposed_leader() {
    let leader = FakeNode::start(1, |request| {
        let (shard, _) = members_of(request);
        voters(shard, &[1, 2])
    })
    .await;
    let leader_address = leader.address.clone();
    let answers = AtomicUsize::new(0);
    let old_leader = FakeNode::start(1, move |_| match answers.fetch_add(1, Ordering::SeqCst) {
        0 | 1 => no_leader(),
        _ => deposed(&leader_address),
    })
    .await;

    // Two "no leader" answers, then "may or may not have taken effect" with a hint: a
    // MEMBERS is idempotent, so it is sent on to the new leader.
    let client = Client::connect_with(&old_leader.address, options())
        .await
        .unwrap();
    let remove = MemberChange::Remove { node: 3 };
    let voters = client.change_members(0, remove.clone()).await.unwrap();
    assert_eq!(voters, [1, 2]);
    assert_eq!(old_leader.requests().len(), 3);
    assert_eq!(
        leader.requests(),
        [Request::Members(Members {
            shard: 0,
            change: remove,
        })]
    );
}

#[tokio::test]
async fn a_failed_membership_change_names_its_shard_and_what_was_changed() {
    let node = FakeNode::start(3, |request| match members_of(request) {
        (0, _) => voters(0, &[1, 2]),
        (shard, _) => ProtocolError::new(
            ErrorCode::BadMembership,
            format!("shard {shard}: cannot remove the last voter"),
        )
        .into(),
    })
    .await;
    let client = Client::connect_with(&node.address, options())
        .await
        .unwrap();

    // Phase 1: shard 1 refuses: shard 0 was changed, shard 2 never asked.
    let error = client.remove_node(3).await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::MembershipIncomplete {
                shard: 1,
                shard_count: 3,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.code(), Some(ErrorCode::BadMembership));
    assert!(!error.is_retryable());
    assert_eq!(
        error.message(),
        "remove node 3 stopped at shard 1 of 3 (shard 0 was changed; the change is idempotent: \
         make it again to finish the job): shard 1: cannot remove the last voter"
    );
    let shards: Vec<u16> = node.requests().iter().map(|r| members_of(r).0).collect();
    assert_eq!(shards, [0, 1]);

    // Phase 2: a shard the cluster does not have, and a bad address, are refused before
    // anything is sent.
    let error = client
        .change_members(3, MemberChange::Remove { node: 3 })
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidRequest(_)), "{error:?}");
    assert_eq!(
        error.message(),
        "shard 3 does not exist: the cluster has 3 shards (0 to 2)"
    );
    let error = client.add_node(4, "127.0.0.1:7004").await.unwrap_err();
    assert!(matches!(error, Error::InvalidRequest(_)), "{error:?}");
    assert_eq!(error.code(), Some(ErrorCode::BadMembership));
    assert_eq!(node.requests().len(), 2, "nothing more was sent");
}

#[tokio::test]
async fn a_change_pending_past_the_route_budget_is_a_clear_error() {
    let node = FakeNode::start(1, |request| pending(members_of(request).0)).await;
    let client = Client::connect_with(&node.address, options().route_attempts_max(3))
        .await
        .unwrap();
    let error = client
        .change_members(0, MemberChange::Remove { node: 3 })
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
    assert_eq!(error.code(), Some(ErrorCode::MembershipChangePending));
    assert!(
        error.message().contains("gave up after 3 attempts"),
        "{error}"
    );
    assert_eq!(node.requests().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_node_and_remove_node_print_each_shards_voters() {
    let node = FakeNode::start(2, membership_leader(2)).await;
    let connect = node.address.clone();

    // Phase 1: text, a line per shard.
    let (code, stdout) = cli(&["--connect", &connect, "--add-node", &format!("4={NODE_4}")]).await;
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(stdout, "shard 0: voters 1,2,3,4\nshard 1: voters 1,2,3,4\n");

    // Phase 2: JSON, one object.
    let (code, stdout) = cli(&[
        "--connect",
        &connect,
        "--remove-node",
        "3",
        "--format",
        "json",
    ])
    .await;
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let json: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "action": "remove",
            "node": 3,
            "shards": [
                {"shard": 0, "voters": [1, 2, 4]},
                {"shard": 1, "voters": [1, 2, 4]}
            ]
        })
    );

    // Phase 3: a bad --add-node value is a usage error, before anything is sent.
    let before = node.requests().len();
    let (code, _) = cli(&["--connect", &connect, "--add-node", "4=127.0.0.1:7004"]).await;
    assert_eq!(code, 2);
    assert_eq!(node.requests().len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_change_refused_by_the_server_exits_4_naming_the_shard() {
    let node = FakeNode::start(2, |_| {
        ProtocolError::new(
            ErrorCode::Unsupported,
            "membership changes are not wired into this server yet",
        )
        .into()
    })
    .await;
    let (code, stdout) = cli(&[
        "--connect",
        &node.address,
        "--add-node",
        &format!("4={NODE_4}"),
        "--format",
        "json",
    ])
    .await;
    assert_eq!(code, 4, "{stdout}");
    let json: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["error"]["code"], "UNSUPPORTED");
    assert_eq!(json["error"]["class"], "client");
    let message = json["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("add node 4 stopped at shard 0 of 2 (no shard was changed;"),
        "{message}"
    );
    assert!(
        message.ends_with("not wired into this server yet"),
        "{message}"
    );
}
