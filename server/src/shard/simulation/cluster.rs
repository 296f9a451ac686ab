//! The simulation of one cluster for one seed: the event queue, simulated time, the turns
//! of every shard worker, and the network's deliveries.
//!
//! Time is simulated microseconds since `base`, an `Instant` an hour after the real one at
//! the start (so every deadline a replica computed from the real clock when it was built
//! is already due in simulated time, and the first turn ticks and re-anchors it: runs do
//! not depend on how fast the machine is). Nothing sleeps. Each step does the earliest
//! of: the next event (a peer message or a client request arriving, an answer reaching a
//! client, a timeout, a fault, a restart), or the next worker turn (messages waiting in
//! its inbox, or its replica's next deadline: a Raft tick or a lease). Ties go to events,
//! and then to the lowest node and shard, so a seed replays exactly.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kahu_protocol::{Request, Response};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

use super::client::Client;
use super::history::{ms, History};
use super::network::Network;
use super::node::{SimNode, SimWorker};
use super::raft_checks::RaftChecks;
use super::random::Random;
use super::settings::{Settings, Stats};
use crate::raft::{Message, MessageBody, NodeId};
use crate::shard::worker::BATCH_MAX;
use crate::shard::{key_hash, shard_of, ShardMessage};
use crate::wal::record::Command;

/// How long a worker whose log cannot be written pauses (worker.rs's FAILURE_RETRY_PAUSE).
const FAILURE_RETRY_PAUSE_US: u64 = 100_000;
/// Turns of one worker at one instant before the simulation calls it a busy loop.
const TURNS_AT_INSTANT_MAX: u32 = 1_000;
/// Worker turns between two Log Matching checks.
const LOG_CHECK_TURNS: u64 = 500;

pub(super) enum Event {
    /// A Raft message reaches `to` (if the link and `to`'s process still stand).
    Peer {
        from: NodeId,
        to: NodeId,
        incarnation: u64,
        shard: usize,
        message: Message<Command>,
    },
    /// A client's request reaches its node.
    Arrive {
        attempt: u32,
    },
    /// An answer reaches its client.
    Answer {
        attempt: u32,
        response: Response,
    },
    /// The node was down: the client's connection attempt failed.
    Refused {
        attempt: u32,
    },
    /// The connection broke with the request in flight.
    Lost {
        attempt: u32,
    },
    Timeout {
        attempt: u32,
    },
    /// A client sends its request's next attempt.
    ClientSend {
        client: usize,
    },
    /// A client starts its next request.
    ClientWake {
        client: usize,
    },
    /// A connection a client closed is seen closed by its node.
    Closed {
        node: NodeId,
        incarnation: u64,
        connection: u64,
    },
    Restart {
        node: NodeId,
    },
    Fault,
    /// A disk fault ends: the disk works again, or the node dies of it.
    DiskRecovers {
        node: NodeId,
        incarnation: u64,
        crash: bool,
    },
}

/// One client connection to one incarnation of a node; its channel carries the replies.
pub(super) struct Connection {
    pub node: NodeId,
    pub incarnation: u64,
    pub sender: UnboundedSender<(u32, Response)>,
    pub receiver: UnboundedReceiver<(u32, Response)>,
}

pub(super) struct Simulation {
    pub seed: u64,
    pub settings: Settings,
    pub random: Random,
    base: Instant,
    /// Simulated microseconds since `base`.
    pub now: u64,
    events: BTreeMap<(u64, u64), Event>,
    next_event: u64,
    pub nodes: Vec<SimNode>,
    pub network: Network,
    pub keys: Vec<Bytes>,
    /// The clients, then the auditor (which only reads, at the end).
    pub clients: Vec<Client>,
    pub connections: BTreeMap<u64, Connection>,
    pub next_connection: u64,
    /// Attempts whose client still waits.
    pub pending: BTreeSet<u32>,
    pub history: History,
    pub raft: RaftChecks,
    /// Faults happen and clients start requests (the active phase).
    pub faults_on: bool,
    pub clients_on: bool,
    /// 0: quiet, 1: faults, clients and elections, 2: every peer message too.
    pub trace: u8,
    /// No workaround for known bugs (see `verdict.rs`, `mod.rs`).
    pub strict: bool,
    pub stats: Stats,
}

impl Simulation {
    pub fn new(seed: u64, trace: u8, strict: bool) -> Simulation {
        let mut random = Random::new(seed);
        let settings = Settings::random(&mut random);
        let network = Network::new(&mut random);
        let keys = (0..settings.keys)
            .map(|key| Bytes::from(format!("key-{key}")))
            .collect();
        let mut clients: Vec<Client> = (0..settings.clients)
            .map(|id| {
                let owner = format!("client-{id}");
                Client::new(id, &owner, settings.nodes, settings.shards, &mut random)
            })
            .collect();
        let auditor = Client::new(
            settings.clients,
            "auditor",
            settings.nodes,
            settings.shards,
            &mut random,
        );
        clients.push(auditor);
        let mut simulation = Simulation {
            seed,
            raft: RaftChecks::new(settings.shards),
            nodes: (1..=settings.nodes).map(SimNode::new).collect(),
            settings,
            random,
            // See the module doc.
            base: Instant::now() + Duration::from_secs(3_600),
            now: 0,
            events: BTreeMap::new(),
            next_event: 0,
            network,
            keys,
            clients,
            connections: BTreeMap::new(),
            next_connection: 1,
            pending: BTreeSet::new(),
            history: History::default(),
            faults_on: false,
            clients_on: false,
            trace,
            strict,
            stats: Stats::default(),
        };
        simulation.trace(|| {
            format!(
                "seed {seed}: {}; network {}",
                simulation.settings.describe(),
                simulation.network.describe()
            )
        });
        for node in 0..simulation.nodes.len() {
            simulation.restart(node);
        }
        simulation
    }

    /// The instant of simulated time 0.
    pub fn base(&self) -> Instant {
        self.base
    }

    pub fn instant(&self) -> Instant {
        self.base + Duration::from_micros(self.now)
    }

    /// An instant in simulated microseconds, rounded up (a deadline is due at or after it).
    fn offset(&self, instant: Instant) -> u64 {
        let nanoseconds = instant.saturating_duration_since(self.base).as_nanos();
        u64::try_from(nanoseconds.div_ceil(1_000)).expect("simulated time fits in u64")
    }

    pub fn trace(&self, text: impl FnOnce() -> String) {
        if self.trace > 0 {
            eprintln!("{:>12} {}", ms(self.now), text());
        }
    }

    pub fn schedule(&mut self, delay: u64, event: Event) {
        self.events
            .insert((self.now + delay, self.next_event), event);
        self.next_event += 1;
    }

    pub fn auditor(&self) -> usize {
        self.settings.clients
    }

    pub fn shard_of_key(&self, key: usize) -> usize {
        shard_of(key_hash(&self.keys[key]), self.settings.shards)
    }

    /// Runs everything due up to `end`, then sets the clock to `end`.
    pub fn run_until(&mut self, end: u64) {
        while self.next_time().is_some_and(|at| at <= end) {
            self.step();
        }
        self.now = self.now.max(end);
    }

    fn next_time(&self) -> Option<u64> {
        let event = self.events.keys().next().map(|&(at, _)| at);
        let worker = self.next_worker().map(|(at, _, _)| at);
        match (event, worker) {
            (Some(event), Some(worker)) => Some(event.min(worker)),
            (event, worker) => event.or(worker),
        }
    }

    /// Does the earliest thing due.
    pub fn step(&mut self) {
        let event = self.events.keys().next().map(|&(at, _)| at);
        match (event, self.next_worker()) {
            (Some(at), Some((wake, _, _))) if at <= wake => self.next_event_now(),
            (Some(_), None) => self.next_event_now(),
            (_, Some((wake, node, shard))) => self.run_turn(wake, node, shard),
            (None, None) => panic!("nothing left to simulate"),
        }
    }

    fn next_event_now(&mut self) {
        let ((at, _), event) = self.events.pop_first().expect("an event");
        self.now = self.now.max(at);
        self.handle(event);
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Peer {
                from,
                to,
                incarnation,
                shard,
                message,
            } => self.deliver_peer(from, to, incarnation, shard, message),
            Event::Arrive { attempt } => self.arrive(attempt),
            Event::Answer { attempt, response } => self.answer(attempt, response),
            Event::Refused { attempt } => self.refused(attempt),
            Event::Lost { attempt } => self.lost(attempt),
            Event::Timeout { attempt } => self.timed_out(attempt),
            Event::ClientSend { client } => {
                if self.clients[client].call.is_some() {
                    self.send_attempt(client);
                }
            }
            Event::ClientWake { client } => self.client_wakes(client),
            Event::Closed {
                node,
                incarnation,
                connection,
            } => self.connection_closed(node, incarnation, connection),
            Event::Restart { node } => self.restart((node - 1) as usize),
            Event::Fault => self.fault(),
            Event::DiskRecovers {
                node,
                incarnation,
                crash,
            } => self.disk_recovers(node, incarnation, crash),
        }
    }

    /// When a worker next has something to do.
    fn wake_at(&self, worker: &SimWorker) -> u64 {
        let deadline = self.offset(worker.turns.replica.next_deadline());
        let wake = worker.turn_at.map_or(deadline, |at| at.min(deadline));
        wake.max(worker.paused_until)
    }

    /// The worker that wakes first: (when, node index, shard).
    fn next_worker(&self) -> Option<(u64, usize, usize)> {
        let mut first: Option<(u64, usize, usize)> = None;
        for (index, node) in self.nodes.iter().enumerate() {
            let Some(running) = &node.running else {
                continue;
            };
            for (shard, worker) in running.workers.iter().enumerate() {
                let wake = self.wake_at(worker);
                if first.is_none_or(|(earliest, _, _)| wake < earliest) {
                    first = Some((wake, index, shard));
                }
            }
        }
        first
    }

    /// Queues `message` for a worker, which takes it after a moment (often none; sometimes
    /// the thread was busy, and more messages make the batch).
    pub fn enqueue(&mut self, node: usize, shard: usize, message: ShardMessage) {
        let delay = if self.random.percent(60) {
            0
        } else {
            self.random.between(1, 500)
        };
        let at = self.now + delay;
        let worker = self.nodes[node].worker_mut(shard).expect("the node is up");
        worker.inbox.push(message);
        worker.turn_at = Some(worker.turn_at.map_or(at, |earlier| earlier.min(at)));
    }

    fn run_turn(&mut self, wake: u64, node: usize, shard: usize) {
        self.now = self.now.max(wake);
        let (now, instant) = (self.now, self.instant());
        let worker = self.nodes[node].worker_mut(shard).expect("the node is up");
        let taken = worker.inbox.len().min(BATCH_MAX);
        let batch: Vec<ShardMessage> = worker.inbox.drain(..taken).collect();
        worker.turn_at = (!worker.inbox.is_empty()).then_some(now);
        let paused = worker.turn(instant, batch);
        if paused.is_some() {
            worker.paused_until = now + FAILURE_RETRY_PAUSE_US;
        }
        worker.paused = paused.clone().map(|error| (now, error));
        let (at, turns) = &mut worker.turns_at_instant;
        if *at == now {
            *turns += 1;
            assert!(
                *turns < TURNS_AT_INSTANT_MAX,
                "node {} shard {shard} keeps turning at {} without time passing",
                node + 1,
                ms(now)
            );
        } else {
            (*at, *turns) = (now, 1);
        }
        self.stats.turns += 1;
        if let Some(error) = paused {
            let id = node + 1;
            self.trace(|| format!("node {id} shard {shard} pauses: {}", error.message));
        }
        self.after_turn(node, shard);
    }

    /// What follows any turn (or start) of a replica: the Raft checks, its messages onto
    /// the network, its replies back to the clients.
    pub fn after_turn(&mut self, node: usize, shard: usize) {
        let id = node as NodeId + 1;
        if let Some(worker) = self.nodes[node].worker(shard) {
            let raft = worker.turns.replica.raft();
            let new_leader = raft.is_leader() && !self.raft.knows_leader(shard, raft.term());
            self.raft.observe(shard, id, raft);
            if new_leader {
                let term = raft.term();
                self.trace(|| format!("node {id} leads shard {shard} in term {term}"));
            }
        }
        self.send_peer_messages(node);
        self.collect_replies(node);
        if self.stats.turns.is_multiple_of(LOG_CHECK_TURNS) {
            self.check_log_matching();
        }
    }

    pub fn check_log_matching(&self) {
        for shard in 0..self.settings.shards {
            let logs: Vec<_> = self
                .nodes
                .iter()
                .filter_map(|node| Some((node.id, node.worker(shard)?.turns.replica.raft())))
                .collect();
            self.raft.check_log_matching(shard, &logs);
        }
    }

    fn send_peer_messages(&mut self, node: usize) {
        let Some(running) = &self.nodes[node].running else {
            return;
        };
        let from = node as NodeId + 1;
        for (shard, message) in running.outbox.take() {
            self.stats.peer_messages += 1;
            match message.body {
                MessageBody::VoteResponse { granted: true } => {
                    self.raft.vote_sent(shard, from, message.term, message.to)
                }
                MessageBody::InstallSnapshot { .. } => self.stats.snapshots_sent += 1,
                _ => {}
            }
            let to = message.to;
            assert!((1..=self.settings.nodes).contains(&to), "a message to {to}");
            let target = &self.nodes[(to - 1) as usize];
            if !target.is_up() {
                continue;
            }
            let incarnation = target.incarnation;
            for delay in self.network.deliveries(&mut self.random, from, to) {
                let message = message.clone();
                self.schedule(
                    delay,
                    Event::Peer {
                        from,
                        to,
                        incarnation,
                        shard,
                        message,
                    },
                );
            }
        }
    }

    fn deliver_peer(
        &mut self,
        from: NodeId,
        to: NodeId,
        incarnation: u64,
        shard: usize,
        message: Message<Command>,
    ) {
        let node = &self.nodes[(to - 1) as usize];
        if self.network.is_cut(from, to) || node.incarnation != incarnation || !node.is_up() {
            return;
        }
        if self.trace > 1 {
            self.trace(|| {
                format!(
                    "node {from} -> {to} shard {shard} term {}: {}",
                    message.term,
                    message.body.name()
                )
            });
        }
        self.enqueue((to - 1) as usize, shard, ShardMessage::Peer(message));
    }

    /// Takes the replies the node's replicas sent and puts them on the way to their
    /// clients.
    fn collect_replies(&mut self, node: usize) {
        let id = node as NodeId + 1;
        let mut replies = Vec::new();
        for connection in self.connections.values_mut() {
            if connection.node != id {
                continue;
            }
            while let Ok(reply) = connection.receiver.try_recv() {
                replies.push(reply);
            }
        }
        for (attempt, response) in replies {
            let shard = self.shard_of_key(self.history.attempts[attempt as usize].key);
            let term = self.nodes[node]
                .worker(shard)
                .map_or(0, |worker| worker.turns.replica.raft().term());
            let record = &mut self.history.attempts[attempt as usize];
            record.answer_sent = true;
            record.answer_term = term;
            let delay = self.network.latency(&mut self.random);
            self.schedule(delay, Event::Answer { attempt, response });
        }
    }

    pub fn request_of(&self, attempt: u32) -> &Request {
        &self.history.attempts[attempt as usize].request
    }
}
