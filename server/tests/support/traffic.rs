//! The clients: each one owner, sending persistent LOCK / UNLOCK / EXTEND / GET one at a
//! time, routed by NOT_LEADER hints, every attempt recorded in the [`History`].
//!
//! A [`Router`] sends one request until it gets a definite answer or its op deadline
//! passes: it starts at the node it last saw lead the key's shard, follows `leader=` hints,
//! moves on to the next node when there is no hint or no connection, and gives every
//! attempt a bounded wait ([`REQUEST_TIMEOUT`] plus the request's own wait). An attempt
//! with no answer in time, or a lost connection, has an unknown outcome; the connection is
//! dropped (a late answer is never read) and the request is retried elsewhere, which is
//! safe for all four: a LOCK repeated by its owner re-enters, an UNLOCK or EXTEND names the
//! token.
//!
//! A [`Driver`] is one client's loop: pick a lock, pick what to do from what it believes it
//! holds (its own count of the lease, from when it sent the request), do it, pause a few
//! milliseconds, until told to stop. A client with a short lease sometimes walks away from
//! a lock it holds, so leases also end by running out.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use kahu_protocol::routing::{key_hash, leader_hint, shard_of};
use kahu_protocol::{
    ClientCodec, Durability, ErrorCode, Extend, Get, Lock, Request, Response, Unlock,
};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use super::history::{owner_name, Event, History, Op, Outcome};
use super::Rng;

/// Every attempt waits this long for its answer (plus the LOCK's own wait).
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);
/// A request is given up (its last attempt's outcome stands) after this long.
pub const OP_DEADLINE: Duration = Duration::from_secs(4);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// The pause before trying again when no node is known to lead.
const RETRY_PAUSE: Duration = Duration::from_millis(25);
/// Only clients with leases this short walk away from a lock they hold (and let the
/// lease run out); longer leases would keep the lock from everybody else for too long.
const WALK_AWAY_TTL_MS_MAX: u64 = 5_000;
/// A client stops relying on a lock this long before its own count of the lease ends.
const LEASE_MARGIN: Duration = Duration::from_millis(150);

/// What every client shares: where the nodes are, the locks, the history, the stop flag.
#[derive(Debug)]
pub struct Shared {
    /// Node id and client address of every node.
    pub nodes: Vec<(u64, SocketAddr)>,
    pub locks: Vec<Bytes>,
    pub shard_count: usize,
    pub history: Mutex<History>,
    pub stop: AtomicBool,
}

impl Shared {
    pub fn history(&self) -> MutexGuard<'_, History> {
        self.history
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// One client's settings: its lease length and how long its LOCKs queue.
#[derive(Clone, Copy, Debug)]
pub struct ClientSpec {
    pub ttl_ms: u64,
    pub wait_ms: u64,
}

/// The definite answer a request ended with, and when its attempt was sent.
#[derive(Debug)]
pub struct Answer {
    pub response: Response,
    pub sent: Instant,
}

/// Sends requests to the cluster, following NOT_LEADER hints; one request at a time.
#[derive(Debug)]
pub struct Router {
    owner: Option<usize>,
    shared: Arc<Shared>,
    /// Per shard, the index (in `shared.nodes`) of the node last seen leading it.
    leaders: Vec<Option<usize>>,
    connections: HashMap<usize, (Framed<TcpStream, ClientCodec>, u32)>,
    rng: Rng,
    /// Honour the stop flag (the clients) or not (the final check).
    stoppable: bool,
}

enum Attempt {
    /// No connection could be made: nothing was sent.
    NoConnection,
    Sent(Event),
}

impl Router {
    pub fn new(owner: Option<usize>, shared: Arc<Shared>, rng: Rng, stoppable: bool) -> Router {
        let shards = shared.shard_count;
        Router {
            owner,
            shared,
            leaders: vec![None; shards],
            connections: HashMap::new(),
            rng,
            stoppable,
        }
    }

    /// Sends `op` on `lock` until a definite answer, the op deadline, or the stop flag.
    pub async fn call(&mut self, lock: usize, op: Op) -> Option<Answer> {
        let request = self.request(lock, op);
        let key = &self.shared.locks[lock];
        let shard = shard_of(key_hash(key), self.shared.shard_count);
        let deadline = Instant::now() + OP_DEADLINE;
        let node_count = self.shared.nodes.len();
        let mut node =
            self.leaders[shard].unwrap_or_else(|| self.rng.below(node_count as u64) as usize);
        while Instant::now() < deadline && !(self.stoppable && self.shared.stopping()) {
            let event = match self.attempt(node, lock, op, &request).await {
                Attempt::NoConnection => {
                    node = (node + 1) % node_count;
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
                Attempt::Sent(event) => event,
            };
            let outcome = event.outcome.clone();
            let sent = event.sent;
            self.shared.history().events.push(event);
            match outcome {
                Outcome::Answered(response) => {
                    self.leaders[shard] = Some(node);
                    return Some(Answer { response, sent });
                }
                Outcome::Refused(message) => {
                    let hinted = leader_hint(&message).and_then(|hint| self.node_at(hint));
                    match hinted {
                        Some(leader) if leader != node => {
                            self.leaders[shard] = Some(leader);
                            node = leader;
                        }
                        _ => {
                            self.leaders[shard] = None;
                            node = (node + 1) % node_count;
                            tokio::time::sleep(RETRY_PAUSE).await;
                        }
                    }
                }
                Outcome::Unknown(_) => {
                    self.leaders[shard] = None;
                    node = (node + 1) % node_count;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
        None
    }

    fn node_at(&self, hint: &str) -> Option<usize> {
        let address: SocketAddr = hint.parse().ok()?;
        self.shared
            .nodes
            .iter()
            .position(|&(_, client)| client == address)
    }

    fn request(&self, lock: usize, op: Op) -> Request {
        let key = self.shared.locks[lock].clone();
        let owner = || owner_name(self.owner.expect("only owners send LOCK, UNLOCK, EXTEND"));
        match op {
            Op::Lock { ttl_ms, wait_ms } => Request::Lock(Lock {
                key,
                owner: owner(),
                ttl_ms,
                wait_ms,
                durability: Durability::Persistent,
                if_not_held: false,
            }),
            Op::Unlock { token } => Request::Unlock(Unlock {
                key,
                owner: owner(),
                token: Some(token),
            }),
            Op::Extend { ttl_ms, token } => Request::Extend(Extend {
                key,
                owner: owner(),
                ttl_ms,
                token: Some(token),
            }),
            Op::Get => Request::Get(Get { key }),
        }
    }

    /// One attempt at one node; the connection is dropped unless it answered.
    async fn attempt(&mut self, node: usize, lock: usize, op: Op, request: &Request) -> Attempt {
        let (node_id, address) = self.shared.nodes[node];
        let (framed, next_id) = match self.connections.entry(node) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let Some(framed) = connect(address).await else {
                    return Attempt::NoConnection;
                };
                entry.insert((framed, 0))
            }
        };
        *next_id = next_id.wrapping_add(1);
        let id = *next_id;
        let wait = match op {
            Op::Lock { wait_ms, .. } => Duration::from_millis(wait_ms),
            _ => Duration::ZERO,
        };
        let sent = Instant::now();
        let exchanged = exchange(framed, id, request, REQUEST_TIMEOUT + wait).await;
        let ended = Instant::now();
        let outcome = match exchanged {
            Ok(response) => classify(response),
            Err(Failure::Lost(why)) => Outcome::Unknown(why),
            Err(Failure::Protocol(why)) => {
                self.shared
                    .history()
                    .protocol_errors
                    .push(format!("node {node_id}: {why}"));
                Outcome::Unknown(why)
            }
        };
        if !matches!(outcome, Outcome::Answered(_) | Outcome::Refused(_)) {
            self.connections.remove(&node);
        }
        Attempt::Sent(Event {
            owner: self.owner,
            lock,
            node: node_id,
            op,
            sent,
            ended,
            outcome,
        })
    }
}

enum Failure {
    /// No answer: timed out, or the connection failed.
    Lost(String),
    /// The server sent something that is not a well-formed answer to this request.
    Protocol(String),
}

async fn connect(address: SocketAddr) -> Option<Framed<TcpStream, ClientCodec>> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
        .await
        .ok()?
        .ok()?;
    stream.set_nodelay(true).ok()?;
    Some(Framed::new(stream, ClientCodec::default()))
}

async fn exchange(
    framed: &mut Framed<TcpStream, ClientCodec>,
    id: u32,
    request: &Request,
    timeout: Duration,
) -> Result<Response, Failure> {
    let exchanged = tokio::time::timeout(timeout, async {
        framed
            .send((id, request))
            .await
            .map_err(|error| Failure::Lost(format!("send: {error}")))?;
        match framed.next().await {
            Some(Ok((reply_id, response))) if reply_id == id => Ok(response),
            Some(Ok((reply_id, response))) => Err(Failure::Protocol(format!(
                "reply to request id {reply_id}, want {id}: {response:?}"
            ))),
            Some(Err(error)) => Err(Failure::Lost(format!("receive: {error}"))),
            None => Err(Failure::Lost("the node closed the connection".into())),
        }
    });
    match exchanged.await {
        Ok(result) => result,
        Err(_) => Err(Failure::Lost(format!("no answer within {timeout:?}"))),
    }
}

/// NOT_LEADER says "not applied" unless it says "may or may not"; any other error says
/// nothing for sure.
fn classify(response: Response) -> Outcome {
    match response {
        Response::Error(error) => {
            let not_leader = error.code == Some(ErrorCode::NotLeader);
            let described = format!("{}: {}", error.code_name(), error.message);
            if not_leader && !error.message.contains("may or may not") {
                Outcome::Refused(error.message)
            } else {
                Outcome::Unknown(described)
            }
        }
        response => Outcome::Answered(response),
    }
}

/// What a client believes it holds: a token and its own count of the lease.
#[derive(Clone, Copy, Debug)]
struct Held {
    token: u64,
    lease_end: Instant,
}

/// One client's loop.
#[derive(Debug)]
pub struct Driver {
    spec: ClientSpec,
    router: Router,
    rng: Rng,
    held: Vec<Option<Held>>,
}

impl Driver {
    pub fn new(owner: usize, spec: ClientSpec, shared: Arc<Shared>, mut rng: Rng) -> Driver {
        let locks = shared.locks.len();
        let router_rng = rng.fork(0x5eed);
        Driver {
            spec,
            router: Router::new(Some(owner), shared, router_rng, true),
            rng,
            held: vec![None; locks],
        }
    }

    pub async fn run(mut self) {
        while !self.router.shared.stopping() {
            let lock = self.rng.below(self.held.len() as u64) as usize;
            let live =
                self.held[lock].filter(|held| Instant::now() + LEASE_MARGIN < held.lease_end);
            let ttl_ms = self.spec.ttl_ms;
            let roll = self.rng.below(100);
            let op = match live {
                Some(held) if roll < 30 => Op::Unlock { token: held.token },
                Some(held) if roll < 65 => Op::Extend {
                    ttl_ms,
                    token: held.token,
                },
                Some(_) if roll < 80 => Op::Lock {
                    ttl_ms,
                    wait_ms: self.spec.wait_ms,
                },
                Some(_) if roll < 90 && ttl_ms <= WALK_AWAY_TTL_MS_MAX => {
                    // Walk away: the lease runs out unless a later LOCK re-enters.
                    self.held[lock] = None;
                    continue;
                }
                None if roll < 85 => Op::Lock {
                    ttl_ms,
                    wait_ms: self.spec.wait_ms,
                },
                _ => Op::Get,
            };
            let answer = self.router.call(lock, op).await;
            self.believe(lock, op, answer);
            let pause = self.rng.below(8);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    fn believe(&mut self, lock: usize, op: Op, answer: Option<Answer>) {
        let lease_end = |sent: Instant| sent + Duration::from_millis(self.spec.ttl_ms);
        let held = &mut self.held[lock];
        match (op, answer) {
            (
                Op::Lock { .. },
                Some(Answer {
                    response: Response::Acquired(acquired),
                    sent,
                }),
            ) => {
                *held = Some(Held {
                    token: acquired.token,
                    lease_end: lease_end(sent),
                });
            }
            (
                Op::Extend { .. },
                Some(Answer {
                    response: Response::Extended(_),
                    sent,
                }),
            ) => {
                if let Some(held) = held {
                    held.lease_end = lease_end(sent);
                }
            }
            (Op::Get, _) => {}
            // BUSY, released, refused, or unknown: rely on nothing.
            _ => *held = None,
        }
    }
}
