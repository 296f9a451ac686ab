//! The outbox: where the shard workers put their Raft messages for the other nodes.
//!
//! Called from plain threads (the shard workers), it never blocks: each message goes, by
//! its `to`, into that node's bounded queue (a tokio channel, `try_send`), which the node's
//! outbound connection task drains. A message for a node that is not connected, or whose
//! queue is full, or that is not a peer at all, is dropped and counted; Raft resends.
//!
//! Invariant: a queue holds messages only while its node is connected, apart from the few
//! that race with a disconnect (they are sent on the next connection, which Raft accepts
//! as it accepts any late message).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::transport::{PeerConfig, PeerCounters, PEER_QUEUE_MESSAGES_MAX};
use super::{ShardId, ShardMessage};
use crate::raft::{Message, NodeId};
use crate::shard::PeerOutbox;
use crate::wal::record::Command;

/// What the outbox and a node's outbound task share.
#[derive(Debug, Default)]
pub(super) struct LinkState {
    /// The outbound connection to the node is handshaken and writing.
    pub connected: AtomicBool,
    /// A message was dropped at the full queue since the task last looked.
    pub overflowed: AtomicBool,
}

/// The sending side of one node's queue.
#[derive(Debug)]
struct LinkSender {
    queue: mpsc::Sender<ShardMessage>,
    state: Arc<LinkState>,
    client: String,
}

/// The receiving side of one node's queue, and where the node is, for its outbound task.
#[derive(Debug)]
pub(super) struct Link {
    pub node: NodeId,
    pub address: std::net::SocketAddr,
    pub queue: mpsc::Receiver<ShardMessage>,
    pub state: Arc<LinkState>,
}

/// The shards' way to the other nodes: implements [`PeerOutbox`].
#[derive(Debug)]
pub struct PeerOutboxHandle {
    node_id: NodeId,
    shard_count: u16,
    links: BTreeMap<NodeId, LinkSender>,
    counters: Arc<PeerCounters>,
}

impl PeerOutboxHandle {
    pub(super) fn new(
        config: &PeerConfig,
        counters: Arc<PeerCounters>,
    ) -> (PeerOutboxHandle, Vec<Link>) {
        let mut senders = BTreeMap::new();
        let mut links = Vec::with_capacity(config.peers.len());
        for (&node, address) in &config.peers {
            let (sender, receiver) = mpsc::channel(PEER_QUEUE_MESSAGES_MAX);
            let state = Arc::new(LinkState::default());
            senders.insert(
                node,
                LinkSender {
                    queue: sender,
                    state: state.clone(),
                    client: address.client.clone(),
                },
            );
            links.push(Link {
                node,
                address: address.peer,
                queue: receiver,
                state,
            });
        }
        let outbox = PeerOutboxHandle {
            node_id: config.node_id,
            shard_count: config.shard_count,
            links: senders,
            counters,
        };
        (outbox, links)
    }

    fn drop_message(&self) {
        PeerCounters::add(&self.counters.messages_dropped_total, 1);
    }
}

impl PeerOutbox for PeerOutboxHandle {
    fn send(&self, shard: usize, messages: Vec<Message<Command>>) {
        assert!(
            shard < usize::from(self.shard_count),
            "shard {shard} of {}",
            self.shard_count
        );
        let shard = shard as ShardId;
        for message in messages {
            assert_eq!(message.from, self.node_id, "a message of another node");
            let Some(link) = self.links.get(&message.to) else {
                tracing::debug!(shard, to = message.to, "no address for this node; dropped");
                self.drop_message();
                continue;
            };
            if !link.state.connected.load(Ordering::Acquire) {
                self.drop_message();
                continue;
            }
            match link.queue.try_send(ShardMessage { shard, message }) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    link.state.overflowed.store(true, Ordering::Release);
                    self.drop_message();
                }
                Err(mpsc::error::TrySendError::Closed(_)) => self.drop_message(),
            }
        }
    }

    fn client_address(&self, node: NodeId) -> Option<String> {
        self.links.get(&node).map(|link| link.client.clone())
    }
}
