//! Simulated clients: each sends one request at a time (LOCK persistent or ephemeral, with
//! or without a wait, UNLOCK and EXTEND with or without its token, GET) on a small set of
//! keys, to the node it believes leads the key's shard, and follows NOT_LEADER hints the
//! way `kahu-client` routes (client/src/router.rs): a hint is followed at once unless it
//! points back to a node that already redirected this request (then after a pause); no
//! hint means the next node, after a pause; a refused connection marks the node down for a
//! while and moves on; a request gives up after a budget of attempts and time.
//!
//! A client also keeps what it believes it holds, and writes its holding windows into the
//! history (see `history.rs` for how they are counted).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use kahu_protocol::{Durability, Extend, Get, Lock, Request, Response, Unlock};

use super::history::{History, Window};
use super::random::Random;
use crate::raft::NodeId;

/// Attempts of one request at most.
const ATTEMPTS_MAX: u32 = 8;
/// How long one request may keep trying other nodes.
const CALL_BUDGET_US: u64 = 2_000_000;
/// The pause before asking again where no hint (or a hint back) leads.
const REDIRECT_PAUSE_US: u64 = 20_000;
/// How long a node that refused a connection is skipped.
const DOWN_FOR_US: u64 = 300_000;
/// Lease lengths clients ask for, in milliseconds: most end within the run, some outlive
/// it (so the final audits find them).
const TTLS_MS: [u64; 9] = [20, 50, 100, 150, 400, 400, 1_000, 3_000, 60_000];

/// What a client believes it holds on one key.
#[derive(Clone, Debug)]
struct Hold {
    token: u64,
    durability: Durability,
    /// Its windows in the history (each answer that set the lease opened one).
    windows: Vec<usize>,
    end: u64,
}

/// One request on its way through the cluster.
#[derive(Clone, Debug)]
pub(super) struct Call {
    pub key: usize,
    pub shard: usize,
    pub request: Request,
    pub started: u64,
    /// For a LOCK that may wait: when its wait ends, across attempts.
    pub wait_until: u64,
    pub attempts: u32,
    pub next_node: NodeId,
    redirected_by: BTreeSet<NodeId>,
    unreachable: BTreeSet<NodeId>,
}

#[derive(Debug)]
pub(super) struct Client {
    pub id: usize,
    pub owner: Bytes,
    nodes: u64,
    home: NodeId,
    leaders: Vec<Option<NodeId>>,
    down_until: BTreeMap<NodeId, u64>,
    holds: BTreeMap<usize, Hold>,
    /// The last token granted to this client per key, live or not (for stale requests).
    last_tokens: BTreeMap<usize, u64>,
    pub call: Option<Call>,
    /// Requests to send in order (the auditor's GETs), instead of random ones.
    pub script: VecDeque<usize>,
    /// Open connection per node.
    pub connections: BTreeMap<NodeId, u64>,
}

impl Client {
    pub fn new(id: usize, owner: &str, nodes: u64, shards: usize, random: &mut Random) -> Client {
        Client {
            id,
            owner: Bytes::from(owner.to_string()),
            nodes,
            home: random.between(1, nodes),
            leaders: vec![None; shards],
            down_until: BTreeMap::new(),
            holds: BTreeMap::new(),
            last_tokens: BTreeMap::new(),
            call: None,
            script: VecDeque::new(),
            connections: BTreeMap::new(),
        }
    }

    /// A random request on a random key, given what this client holds.
    pub fn choose(&mut self, random: &mut Random, now: u64, keys: &[Bytes]) -> (usize, Request) {
        // Half the time, a key this client holds (or held): holders come back to extend
        // and release.
        let known: Vec<usize> = self.last_tokens.keys().copied().collect();
        let key_index = if !known.is_empty() && random.percent(50) {
            random.pick(&known)
        } else {
            random.below(keys.len() as u64) as usize
        };
        let key = keys[key_index].clone();
        let owner = self.owner.clone();
        let live = self
            .holds
            .get(&key_index)
            .filter(|hold| hold.end > now)
            .map(|hold| hold.token);
        let stale = self.last_tokens.get(&key_index).copied();
        let roll = random.below(100);
        let request = match live {
            Some(token) => match roll {
                0..=34 => Request::Extend(Extend {
                    key,
                    owner,
                    ttl_ms: random.pick(&TTLS_MS),
                    token: maybe_token(random, token),
                }),
                35..=69 => Request::Unlock(Unlock {
                    key,
                    owner,
                    token: maybe_token(random, token),
                }),
                70..=79 => Request::Lock(random_lock(random, key, owner)),
                _ => Request::Get(Get { key }),
            },
            None => match roll {
                0..=59 => Request::Lock(random_lock(random, key, owner)),
                60..=66 => Request::Unlock(Unlock {
                    key,
                    owner,
                    token: stale.filter(|_| random.percent(70)),
                }),
                67..=72 => Request::Extend(Extend {
                    key,
                    owner,
                    ttl_ms: random.pick(&TTLS_MS),
                    token: stale.filter(|_| random.percent(70)),
                }),
                _ => Request::Get(Get { key }),
            },
        };
        (key_index, request)
    }

    /// Starts a request: to the known leader of its shard, else to this client's home node.
    pub fn begin(&mut self, key: usize, shard: usize, request: Request, now: u64) {
        assert!(self.call.is_none(), "one request at a time");
        let wait_ms = match &request {
            Request::Lock(lock) => lock.wait_ms,
            _ => 0,
        };
        let next_node = self.leaders[shard]
            .filter(|&leader| !self.is_down(leader, now))
            .or_else(|| (!self.is_down(self.home, now)).then_some(self.home))
            .or_else(|| self.next_node(self.home, &BTreeSet::new(), now))
            .unwrap_or(self.home);
        self.call = Some(Call {
            key,
            shard,
            request,
            started: now,
            wait_until: now + wait_ms * 1000,
            attempts: 0,
            next_node,
            redirected_by: BTreeSet::new(),
            unreachable: BTreeSet::new(),
        });
    }

    fn is_down(&self, node: NodeId, now: u64) -> bool {
        self.down_until.get(&node).is_some_and(|&until| until > now)
    }

    /// The next node after `after` in id order that is neither excluded nor down.
    fn next_node(&self, after: NodeId, excluded: &BTreeSet<NodeId>, now: u64) -> Option<NodeId> {
        (1..=self.nodes)
            .map(|step| (after - 1 + step) % self.nodes + 1)
            .find(|node| !excluded.contains(node) && !self.is_down(*node, now))
    }

    fn call_mut(&mut self) -> &mut Call {
        self.call.as_mut().expect("a request under way")
    }

    /// Whether the request may be sent again after `pause`.
    fn may_retry(&self, pause: u64, now: u64) -> bool {
        let call = self.call.as_ref().expect("a request under way");
        call.attempts < ATTEMPTS_MAX && now + pause - call.started <= CALL_BUDGET_US
    }

    /// `node` answered NOT_LEADER, naming `hint` or nobody: the pause before the next
    /// attempt (at `call.next_node`), or `None` to give up.
    pub fn redirect(&mut self, node: NodeId, hint: Option<NodeId>, now: u64) -> Option<u64> {
        let hinted = hint.filter(|&hinted| {
            !self.is_down(hinted, now) && !self.call_mut().unreachable.contains(&hinted)
        });
        let shard = self.call_mut().shard;
        let (next, pause) = match hinted {
            Some(leader) => {
                self.leaders[shard] = Some(leader);
                let call = self.call_mut();
                call.redirected_by.insert(node);
                let pause = if call.redirected_by.contains(&leader) {
                    REDIRECT_PAUSE_US
                } else {
                    0
                };
                (leader, pause)
            }
            None => {
                if self.leaders[shard] == Some(node) {
                    self.leaders[shard] = None;
                }
                let unreachable = self.call_mut().unreachable.clone();
                let next = self.next_node(node, &unreachable, now).unwrap_or(node);
                (next, REDIRECT_PAUSE_US)
            }
        };
        self.call_mut().next_node = next;
        self.may_retry(pause, now).then_some(pause)
    }

    /// `node` refused the connection: skip it for a while and try the next one at once,
    /// if any is left.
    pub fn refused(&mut self, node: NodeId, now: u64) -> Option<u64> {
        self.down_until.insert(node, now + DOWN_FOR_US);
        for leader in &mut self.leaders {
            if *leader == Some(node) {
                *leader = None;
            }
        }
        self.call_mut().unreachable.insert(node);
        let unreachable = self.call_mut().unreachable.clone();
        let next = self.next_node(node, &unreachable, now)?;
        self.call_mut().next_node = next;
        self.may_retry(0, now).then_some(0)
    }

    pub fn learn_leader(&mut self, shard: usize, node: NodeId) {
        self.leaders[shard] = Some(node);
    }

    /// Before an attempt leaves: a request that may shorten or end the current grant ends
    /// the window where it could take effect.
    pub fn before_send(&mut self, history: &mut History, key: usize, request: &Request, now: u64) {
        let Some(hold) = self.holds.get_mut(&key) else {
            return;
        };
        let same_grant = |token: Option<u64>| token.is_none_or(|token| token == hold.token);
        let bound = match request {
            Request::Lock(lock) => Some(now + lock.ttl_ms * 1000),
            Request::Extend(extend) if same_grant(extend.token) => Some(now + extend.ttl_ms * 1000),
            Request::Unlock(unlock) if same_grant(unlock.token) => Some(now),
            _ => None,
        };
        if let Some(bound) = bound {
            hold.end = hold.end.min(bound);
            for &window in &hold.windows {
                let window = &mut history.windows[window];
                window.end = window.end.min(bound);
            }
        }
    }

    /// An answer that is not an error came back for attempt `id`: what this client now
    /// holds, and its new window.
    pub fn learn(&mut self, history: &mut History, id: u32, response: &Response) {
        let attempt = &history.attempts[id as usize];
        let (key, sent) = (attempt.key, attempt.sent);
        let current = self.holds.get(&key).cloned();
        match (&attempt.request, response) {
            (Request::Lock(lock), Response::Acquired(acquired)) => {
                let was_persistent = current.as_ref().is_some_and(|hold| {
                    hold.token == acquired.token && hold.durability == Durability::Persistent
                });
                let durability = if lock.durability == Durability::Persistent || was_persistent {
                    Durability::Persistent
                } else {
                    // A re-entry into a grant this client did not know of may be either.
                    Durability::Ephemeral
                };
                let end = sent + lock.ttl_ms * 1000;
                self.open_window(history, id, acquired.token, durability, end);
            }
            (Request::Extend(extend), Response::Extended(extended)) => {
                let durability = current
                    .as_ref()
                    .filter(|hold| hold.token == extended.token)
                    .map_or(Durability::Ephemeral, |hold| hold.durability);
                let end = sent + extend.ttl_ms * 1000;
                self.open_window(history, id, extended.token, durability, end);
            }
            (_, Response::Released(_))
            | (Request::Unlock(_) | Request::Extend(_), Response::NotHeld(_))
            | (Request::Unlock(_) | Request::Extend(_), Response::NotOwner(_)) => {
                self.holds.remove(&key);
            }
            (Request::Lock(_), Response::Busy(busy)) if busy.owner != self.owner => {
                self.holds.remove(&key);
            }
            _ => {}
        }
    }

    /// The answer to `attempt` set the lease of grant `token` to end at `end` (as this
    /// client counts): a window from the answer's arrival.
    fn open_window(
        &mut self,
        history: &mut History,
        attempt: u32,
        token: u64,
        durability: Durability,
        end: u64,
    ) {
        let (key, start) = {
            let attempt = &history.attempts[attempt as usize];
            (attempt.key, attempt.received)
        };
        self.last_tokens.insert(key, token);
        let window = (end > start).then(|| {
            history.windows.push(Window {
                client: self.id,
                key,
                owner: self.owner.clone(),
                token,
                durability,
                start,
                end,
                attempt,
            });
            history.windows.len() - 1
        });
        let hold = self.holds.entry(key).or_insert(Hold {
            token,
            durability,
            windows: Vec::new(),
            end,
        });
        if hold.token != token {
            hold.windows.clear();
        }
        *hold = Hold {
            token,
            durability,
            windows: std::mem::take(&mut hold.windows),
            end,
        };
        hold.windows.extend(window);
    }
}

fn maybe_token(random: &mut Random, token: u64) -> Option<u64> {
    random.percent(85).then_some(token)
}

fn random_lock(random: &mut Random, key: Bytes, owner: Bytes) -> Lock {
    Lock {
        key,
        owner,
        ttl_ms: random.pick(&TTLS_MS),
        wait_ms: if random.percent(50) {
            0
        } else {
            random.between(5, 400)
        },
        durability: if random.percent(60) {
            Durability::Persistent
        } else {
            Durability::Ephemeral
        },
        if_not_held: random.percent(5),
    }
}
