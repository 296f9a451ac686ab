//! Clients' requests through the simulated cluster: connections, attempts, answers,
//! timeouts, and what the clients make of them (see `client.rs` for their choices).
//!
//! A connection belongs to one incarnation of a node: when the node crashes, its
//! connections break, and every request on them whose answer had not left is lost (it may
//! or may not have taken effect). A client that gives up waiting sometimes closes its
//! connection, and the node hears of it (its waiters on that connection are dropped).

use kahu_protocol::routing::leader_hint;
use kahu_protocol::{ErrorClass, Get, Request, Response};
use tokio::sync::mpsc::unbounded_channel;

use super::cluster::{Connection, Event, Simulation};
use super::history::{describe_request, describe_response, Attempt, End};
use super::network::node_of;
use crate::raft::NodeId;
use crate::shard::{key_hash, ReplyTo, ShardMessage};

/// How long a client waits for an answer, on top of the time a LOCK may wait.
const REQUEST_TIMEOUT_US: u64 = 500_000;
/// Think time of a client between two requests, at most.
const THINK_US_MAX: u64 = 30_000;

impl Simulation {
    /// A client starts its next request: the auditor its next GET, the others a random one
    /// while the run is on.
    pub(super) fn client_wakes(&mut self, client: usize) {
        if self.clients[client].call.is_some() {
            return;
        }
        let (key, request) = if client == self.auditor() {
            let Some(key) = self.clients[client].script.pop_front() else {
                return;
            };
            let get = Get {
                key: self.keys[key].clone(),
            };
            (key, Request::Get(get))
        } else {
            if !self.clients_on {
                return;
            }
            let now = self.now;
            self.clients[client].choose(&mut self.random, now, &self.keys)
        };
        let shard = self.shard_of_key(key);
        let now = self.now;
        self.clients[client].begin(key, shard, request, now);
        self.send_attempt(client);
    }

    /// Sends the client's current request to the node it chose.
    pub(super) fn send_attempt(&mut self, client: usize) {
        let now = self.now;
        let call = self.clients[client].call.as_mut().expect("a request");
        if let Request::Lock(lock) = &mut call.request {
            lock.wait_ms = lock
                .wait_ms
                .min(call.wait_until.saturating_sub(now) / 1_000);
        }
        call.attempts += 1;
        let (key, node, request) = (call.key, call.next_node, call.request.clone());
        self.clients[client].before_send(&mut self.history, key, &request, now);
        let id = self.history.attempts.len() as u32;
        let up = self.nodes[(node - 1) as usize].is_up();
        let connection = if up {
            self.connection_for(client, node)
        } else {
            0
        };
        let wait_ms = match &request {
            Request::Lock(lock) => lock.wait_ms,
            _ => 0,
        };
        self.trace(|| {
            format!(
                "client {client} -> node {node}: #{id} {}",
                describe_request(&request)
            )
        });
        self.history.attempts.push(Attempt {
            client,
            key,
            node,
            connection,
            request,
            sent: now,
            end: End::Pending,
            received: now,
            answer: None,
            answer_term: 0,
            answer_sent: false,
            audit: client == self.auditor(),
        });
        self.pending.insert(id);
        let latency = self.network.latency(&mut self.random);
        if up {
            self.schedule(latency, Event::Arrive { attempt: id });
            let timeout = REQUEST_TIMEOUT_US + wait_ms * 1_000;
            self.schedule(timeout, Event::Timeout { attempt: id });
        } else {
            self.schedule(latency, Event::Refused { attempt: id });
        }
    }

    /// The client's open connection to the node's current process, or a new one.
    fn connection_for(&mut self, client: usize, node: NodeId) -> u64 {
        let incarnation = self.nodes[(node - 1) as usize].incarnation;
        if let Some(&id) = self.clients[client].connections.get(&node) {
            if self
                .connections
                .get(&id)
                .is_some_and(|connection| connection.incarnation == incarnation)
            {
                return id;
            }
        }
        let (sender, receiver) = unbounded_channel();
        let id = self.next_connection;
        self.next_connection += 1;
        self.connections.insert(
            id,
            Connection {
                node,
                incarnation,
                sender,
                receiver,
            },
        );
        self.clients[client].connections.insert(node, id);
        id
    }

    /// A request reaches its node, unless its connection broke or closed on the way.
    pub(super) fn arrive(&mut self, id: u32) {
        let attempt = &self.history.attempts[id as usize];
        let Some(connection) = self.connections.get(&attempt.connection) else {
            return;
        };
        let node = (connection.node - 1) as usize;
        debug_assert_eq!(self.nodes[node].incarnation, connection.incarnation);
        let key = &self.keys[attempt.key];
        let message = ShardMessage::Request {
            hash: key_hash(key),
            request: attempt.request.clone(),
            reply: ReplyTo {
                connection_id: attempt.connection,
                request_id: id,
                sender: connection.sender.clone(),
            },
        };
        let shard = self.shard_of_key(attempt.key);
        self.enqueue(node, shard, message);
    }

    pub(super) fn answer(&mut self, id: u32, response: Response) {
        let now = self.now;
        let attempt = &mut self.history.attempts[id as usize];
        attempt.answer = Some(response.clone());
        attempt.received = now;
        if attempt.end != End::Pending {
            return; // the client stopped waiting
        }
        attempt.end = End::Answered;
        self.pending.remove(&id);
        let (client, node) = (attempt.client, attempt.node);
        self.trace(|| {
            format!(
                "client {client} <- node {node}: #{id} {}",
                describe_response(&response)
            )
        });
        match &response {
            Response::Error(reply) if reply.class == ErrorClass::NotLeader => {
                let uncertain = reply.message.contains("may or may not have taken effect");
                let refused_if_held =
                    matches!(self.request_of(id), Request::Lock(lock) if lock.if_not_held);
                if uncertain && refused_if_held {
                    return self.finish_call(client);
                }
                let hint = leader_hint(&reply.message).and_then(node_of);
                match self.clients[client].redirect(node, hint, now) {
                    Some(pause) => self.schedule(pause, Event::ClientSend { client }),
                    None => self.finish_call(client),
                }
            }
            Response::Error(_) => self.finish_call(client),
            _ => {
                let shard = self.clients[client].call.as_ref().expect("a request").shard;
                self.clients[client].learn_leader(shard, node);
                self.clients[client].learn(&mut self.history, id, &response);
                self.finish_call(client);
            }
        }
    }

    /// Ends the attempt with `end` if its client still waits; returns its client.
    fn end_attempt(&mut self, id: u32, end: End) -> Option<usize> {
        let attempt = &mut self.history.attempts[id as usize];
        if attempt.end != End::Pending {
            return None;
        }
        attempt.end = end;
        attempt.received = self.now;
        self.pending.remove(&id);
        let client = attempt.client;
        self.trace(|| format!("client {client}: #{id} {end:?}"));
        Some(client)
    }

    pub(super) fn refused(&mut self, id: u32) {
        let Some(client) = self.end_attempt(id, End::Refused) else {
            return;
        };
        let node = self.history.attempts[id as usize].node;
        let now = self.now;
        match self.clients[client].refused(node, now) {
            Some(pause) => self.schedule(pause, Event::ClientSend { client }),
            None => self.finish_call(client),
        }
    }

    pub(super) fn lost(&mut self, id: u32) {
        if let Some(client) = self.end_attempt(id, End::Lost) {
            self.finish_call(client);
        }
    }

    pub(super) fn timed_out(&mut self, id: u32) {
        let Some(client) = self.end_attempt(id, End::TimedOut) else {
            return;
        };
        self.finish_call(client);
        if self.random.percent(30) {
            let node = self.history.attempts[id as usize].node;
            self.close_connection(client, node);
        }
    }

    /// The client is done with its request; it starts the next after a while.
    pub(super) fn finish_call(&mut self, client: usize) {
        self.clients[client].call = None;
        let more = if client == self.auditor() {
            !self.clients[client].script.is_empty()
        } else {
            self.clients_on
        };
        if more {
            let think = self.random.below(THINK_US_MAX);
            self.schedule(think, Event::ClientWake { client });
        }
    }

    /// The client closes its connection to `node`; requests still on it are lost to it.
    pub(super) fn close_connection(&mut self, client: usize, node: NodeId) {
        let Some(id) = self.clients[client].connections.remove(&node) else {
            return;
        };
        let Some(connection) = self.connections.remove(&id) else {
            return;
        };
        let on_it: Vec<u32> = self
            .pending
            .iter()
            .copied()
            .filter(|&attempt| self.history.attempts[attempt as usize].connection == id)
            .collect();
        for attempt in on_it {
            self.lost(attempt);
        }
        let incarnation = connection.incarnation;
        drop(connection);
        self.trace(|| format!("client {client} closes its connection to node {node}"));
        let latency = self.network.latency(&mut self.random);
        self.schedule(
            latency,
            Event::Closed {
                node,
                incarnation,
                connection: id,
            },
        );
    }

    pub(super) fn connection_closed(&mut self, node: NodeId, incarnation: u64, connection: u64) {
        let index = (node - 1) as usize;
        if !self.nodes[index].is_up() || self.nodes[index].incarnation != incarnation {
            return;
        }
        for shard in 0..self.settings.shards {
            self.enqueue(index, shard, ShardMessage::ConnectionClosed(connection));
        }
    }

    /// The node crashed: its connections break, and what was waiting on them is lost.
    pub(super) fn break_connections(&mut self, node: NodeId) {
        let broken: Vec<u64> = self
            .connections
            .iter()
            .filter(|(_, connection)| connection.node == node)
            .map(|(&id, _)| id)
            .collect();
        for id in &broken {
            self.connections.remove(id);
        }
        let lost: Vec<u32> = self
            .pending
            .iter()
            .copied()
            .filter(|&attempt| {
                let attempt = &self.history.attempts[attempt as usize];
                broken.contains(&attempt.connection) && !attempt.answer_sent
            })
            .collect();
        for attempt in lost {
            let latency = self.network.latency(&mut self.random);
            self.schedule(latency, Event::Lost { attempt });
        }
    }
}
