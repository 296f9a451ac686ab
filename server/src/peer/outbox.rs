//! The outbox: where the shard workers put their Raft messages for the other nodes, and
//! the set of links (one per node this node sends to), which changes at run time.
//!
//! Called from plain threads (the shard workers), [`PeerOutbox::send`] never blocks: each
//! message goes, by its `to`, into that node's bounded queue (a tokio channel, `try_send`),
//! which the node's outbound connection task drains. A message for a node that is not
//! connected, or whose queue is full, or that has no link, is dropped and counted; Raft
//! resends. `send` takes the links' read lock once per call (a call carries a shard's
//! whole round of messages), never per message.
//!
//! # Links
//! A link is a node's queue, its address and an outbound task. Opening one puts its
//! sending side in the map and hands its receiving side ([`Link`]) to the transport through
//! an unbounded channel; the transport spawns its task (links opened before the transport
//! starts wait in the channel). Closing one drops its sending side: the task sees its queue
//! closed, writes what was already queued, closes the connection and ends. A new address
//! for a node is a close and an open. Which links exist:
//! - the founders (`PeerConfig::peers`) have one from the start;
//! - [`PeerOutbox::members_changed`]: every voter of some shard's latest membership (other
//!   than this node) has one, at the address the membership gives it, else its address
//!   among the founders, else the address it advertised in its handshake; a voter with none
//!   of these has no link (logged at warn once). A node that was a voter of some shard and
//!   is now a voter of none loses its link, and is *departed*;
//! - [`PeerOutboxHandle::learn`]: a node whose handshake this node accepted gets a link at
//!   the address it advertised if it has none and is not departed (a node added at run time
//!   whose membership this node has not seen yet can then be answered). Such a learned link
//!   stays until the node is a voter that leaves every shard;
//! - [`PeerOutbox::reachable`]: a node a leader is about to add gets a link at the address
//!   given for it (it stops being departed), so the leader proposes the change only once
//!   that node has answered there as itself. Such a link stays as a learned one does.
//!
//! # Incarnations
//! The outbox also holds the incarnation this node saw of each peer
//! ([`SeenIncarnations`], see `incarnations.rs` for the rules), beside the memberships
//! that decide when one is forgotten: [`PeerOutboxHandle::admit`] checks and records a
//! handshaken peer's incarnation (not a departed node's), and a node that departs is
//! forgotten. A record or a forget is written to the data directory while `members` is
//! held: both are rare (a peer's first handshake, a removal).
//!
//! # Invariants
//! - A queue holds messages only while its node is connected, apart from the few that race
//!   with a disconnect; those are dropped (and counted) by the outbound task.
//! - This node never has a link to itself, and a node has at most one link.
//! - Lock order: `members`, then `links`; `send` and `client_address` take only `links`.
//! - A departed node has no remembered incarnation, unless forgetting it failed (logged).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::mpsc;

use super::incarnations::SeenIncarnations;
use super::transport::{PeerAddress, PeerConfig, PeerCounters, PEER_QUEUE_MESSAGES_MAX};
use super::{HandshakeError, ShardId, ShardMessage};
use crate::raft::{Membership, Message, NodeId};
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

/// The sending side of one node's queue. Dropping it closes the link.
#[derive(Debug)]
struct LinkSender {
    queue: mpsc::Sender<ShardMessage>,
    state: Arc<LinkState>,
    address: PeerAddress,
}

/// The receiving side of one node's queue, and where the node is, for its outbound task.
#[derive(Debug)]
pub(super) struct Link {
    pub node: NodeId,
    pub address: std::net::SocketAddr,
    pub queue: mpsc::Receiver<ShardMessage>,
    pub state: Arc<LinkState>,
}

/// What decides which links exist, apart from the links themselves.
#[derive(Debug)]
struct Members {
    /// Each shard's latest membership, as last told; at first, the founders.
    shards: Vec<Membership>,
    /// The address each node advertised in its latest accepted handshake.
    learned: BTreeMap<NodeId, PeerAddress>,
    /// Nodes that were voters of some shard and are now voters of none.
    departed: BTreeSet<NodeId>,
    /// Voters without a known address, already logged.
    warned: BTreeSet<NodeId>,
    /// The incarnation this node saw of each peer node, kept in the data directory.
    seen: SeenIncarnations,
}

impl Members {
    /// Every voter of some shard's latest membership, this node included.
    fn voters(&self) -> BTreeSet<NodeId> {
        let mut voters = BTreeSet::new();
        for membership in &self.shards {
            voters.extend(membership.voters.iter().copied());
        }
        voters
    }
}

/// The shards' way to the other nodes: implements [`PeerOutbox`].
#[derive(Debug)]
pub struct PeerOutboxHandle {
    node_id: NodeId,
    shard_count: u16,
    /// The founders' configured addresses (`PeerConfig::peers`).
    founders: BTreeMap<NodeId, PeerAddress>,
    members: Mutex<Members>,
    links: RwLock<BTreeMap<NodeId, LinkSender>>,
    /// Where new links go for the transport to start their tasks.
    opened: mpsc::UnboundedSender<Link>,
    counters: Arc<PeerCounters>,
}

impl PeerOutboxHandle {
    /// The outbox with a link to every founder, and the channel on which it hands new
    /// links to the transport (the founders' already in it).
    pub(super) fn new(
        config: &PeerConfig,
        counters: Arc<PeerCounters>,
    ) -> (PeerOutboxHandle, mpsc::UnboundedReceiver<Link>) {
        let (opened, receiver) = mpsc::unbounded_channel();
        let founders = config.peers.clone();
        let voters = founders.keys().copied().chain([config.node_id]);
        let founding = Membership::new(voters);
        let outbox = PeerOutboxHandle {
            node_id: config.node_id,
            shard_count: config.shard_count,
            founders,
            members: Mutex::new(Members {
                shards: vec![founding; usize::from(config.shard_count)],
                learned: BTreeMap::new(),
                departed: BTreeSet::new(),
                warned: BTreeSet::new(),
                seen: config.seen.clone(),
            }),
            links: RwLock::new(BTreeMap::new()),
            opened,
            counters,
        };
        {
            let mut links = outbox.write_links();
            for (&node, address) in &outbox.founders {
                outbox.open(&mut links, node, address.clone());
            }
        }
        (outbox, receiver)
    }

    /// `node`'s handshake was accepted, advertising `address`: remembers the address, and
    /// opens a link to it if the node has none and is not departed.
    pub(super) fn learn(&self, node: NodeId, address: PeerAddress) {
        assert_ne!(
            node, self.node_id,
            "the handshake check refuses this node's own id"
        );
        let mut members = self.lock_members();
        members.learned.insert(node, address.clone());
        if members.departed.contains(&node) {
            tracing::debug!(node, %address, "a departed node connected; no link to it");
            return;
        }
        let mut links = self.write_links();
        if !links.contains_key(&node) {
            tracing::info!(
                node,
                %address,
                "a node without a link connected; linking to the address it advertised"
            );
            self.open(&mut links, node, address);
        }
    }

    /// Whether `node`, whose handshake says it is `incarnation`, may be heard: yes if
    /// that is the incarnation remembered for it, or if none is and it is recorded now
    /// (durably: this may wait for the disk) or the node is departed (not recorded). The
    /// caller has checked the handshake itself ([`Handshake::check`]).
    ///
    /// [`Handshake::check`]: super::Handshake::check
    pub(super) fn admit(&self, node: NodeId, incarnation: u64) -> Result<(), HandshakeError> {
        assert_ne!(
            node, self.node_id,
            "the handshake check refuses this node's own id"
        );
        let mut members = self.lock_members();
        match members.seen.get(node) {
            Some(known) if known == incarnation => Ok(()),
            Some(known) => Err(HandshakeError::IncarnationChanged {
                node,
                incarnation,
                known_by: self.node_id,
                known,
            }),
            None if members.departed.contains(&node) => Ok(()),
            None => {
                members.seen.record(node, incarnation).map_err(|error| {
                    HandshakeError::IncarnationNotRecorded {
                        node,
                        incarnation,
                        known_by: self.node_id,
                        reason: error.to_string(),
                    }
                })?;
                tracing::info!(
                    node,
                    incarnation = %format_args!("{incarnation:016x}"),
                    "recorded the incarnation of a peer"
                );
                Ok(())
            }
        }
    }

    /// [`PeerOutboxHandle::admit`] on a thread that may block, since a record waits for
    /// the disk.
    pub(super) async fn admit_blocking(
        self: &Arc<Self>,
        node: NodeId,
        incarnation: u64,
    ) -> Result<(), HandshakeError> {
        let outbox = self.clone();
        match tokio::task::spawn_blocking(move || outbox.admit(node, incarnation)).await {
            Ok(admitted) => admitted,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => Err(HandshakeError::IncarnationNotRecorded {
                node,
                incarnation,
                known_by: self.node_id,
                reason: "the runtime is shutting down".to_string(),
            }),
        }
    }

    /// The incarnation remembered for `node`, to tell it in the handshake.
    pub(super) fn remembered(&self, node: NodeId) -> Option<u64> {
        self.lock_members().seen.get(node)
    }

    /// Forgets the incarnation of `node`, which left every shard.
    fn forget(members: &mut Members, node: NodeId) {
        match members.seen.forget(node) {
            Ok(false) => {}
            Ok(true) => tracing::info!(
                node,
                "forgot the incarnation of a node that left every shard"
            ),
            Err(error) => tracing::error!(
                node,
                %error,
                "cannot forget the incarnation of a node that left every shard: a node given \
                 its id later will be refused by this node"
            ),
        }
    }

    /// Opens a link to `node` at `address`, closing the one it replaces.
    fn open(&self, links: &mut BTreeMap<NodeId, LinkSender>, node: NodeId, address: PeerAddress) {
        assert_ne!(node, self.node_id, "a link to this node itself");
        let (queue, receiver) = mpsc::channel(PEER_QUEUE_MESSAGES_MAX);
        let state = Arc::new(LinkState::default());
        let link = Link {
            node,
            address: address.peer,
            queue: receiver,
            state: state.clone(),
        };
        links.insert(
            node,
            LinkSender {
                queue,
                state,
                address,
            },
        );
        // Fails only once the transport has shut down; the link then stays unconnected.
        let _ = self.opened.send(link);
    }

    /// Where `node` is to be reached, by the rules of [`PeerOutbox::members_changed`]:
    /// the latest memberships (`shard`'s first), then the founders, then its handshake.
    fn address_of(&self, members: &Members, node: NodeId, shard: usize) -> Option<PeerAddress> {
        let others = (0..members.shards.len()).filter(|&other| other != shard);
        for membership in std::iter::once(shard).chain(others) {
            let Some(text) = members.shards[membership].addresses.get(&node) else {
                continue;
            };
            match PeerAddress::parse(text) {
                Ok(address) => return Some(address),
                Err(error) => tracing::warn!(
                    node,
                    shard = membership,
                    address = %text.escape_debug(),
                    %error,
                    "ignored a membership's address of a node"
                ),
            }
        }
        // A founder's address is the one every node was started with; a handshake may
        // only teach addresses of nodes added at run time.
        let founder = self.founders.get(&node);
        founder.or_else(|| members.learned.get(&node)).cloned()
    }

    /// Makes the links match the voters after `shard`'s membership changed from `before`.
    fn reconcile(&self, members: &mut Members, before: &BTreeSet<NodeId>, shard: usize) {
        let after = members.voters();
        let departed: Vec<NodeId> = before
            .difference(&after)
            .copied()
            .filter(|&node| node != self.node_id)
            .collect();
        // Before the links are locked: a forget waits for the disk, `send` must not.
        for &node in &departed {
            PeerOutboxHandle::forget(members, node);
        }
        let mut links = self.write_links();
        for node in departed {
            members.departed.insert(node);
            if links.remove(&node).is_some() {
                tracing::info!(node, "a node is a voter of no shard now; closed its link");
            }
        }
        for &node in &after {
            if node == self.node_id {
                continue;
            }
            members.departed.remove(&node);
            let Some(address) = self.address_of(members, node, shard) else {
                if members.warned.insert(node) {
                    tracing::warn!(node, "a voter without a known address; no link to it");
                }
                continue;
            };
            match links.get(&node) {
                Some(link) if link.address == address => {}
                Some(link) => {
                    tracing::info!(
                        node,
                        from = %link.address,
                        to = %address,
                        "a node's address changed; relinking"
                    );
                    self.open(&mut links, node, address);
                }
                None => {
                    tracing::info!(node, %address, "a new voter; linking to it");
                    self.open(&mut links, node, address);
                }
            }
        }
    }

    fn lock_members(&self) -> std::sync::MutexGuard<'_, Members> {
        self.members
            .lock()
            .expect("never poisoned: no panic while held")
    }

    fn read_links(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<NodeId, LinkSender>> {
        self.links
            .read()
            .expect("never poisoned: no panic while held")
    }

    fn write_links(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<NodeId, LinkSender>> {
        self.links
            .write()
            .expect("never poisoned: no panic while held")
    }

    fn drop_messages(&self, count: usize) {
        PeerCounters::add(&self.counters.messages_dropped_total, count);
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
        let links = self.read_links();
        for message in messages {
            assert_eq!(message.from, self.node_id, "a message of another node");
            let Some(link) = links.get(&message.to) else {
                tracing::debug!(shard, to = message.to, "no link to this node; dropped");
                self.drop_messages(1);
                continue;
            };
            if !link.state.connected.load(Ordering::Acquire) {
                self.drop_messages(1);
                continue;
            }
            match link.queue.try_send(ShardMessage { shard, message }) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    link.state.overflowed.store(true, Ordering::Release);
                    self.drop_messages(1);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => self.drop_messages(1),
            }
        }
    }

    fn client_address(&self, node: NodeId) -> Option<String> {
        let links = self.read_links();
        links.get(&node).map(|link| link.address.client.clone())
    }

    fn reachable(&self, node: NodeId, address: &str) -> bool {
        if node == self.node_id {
            return true;
        }
        let Ok(address) = PeerAddress::parse(address) else {
            return false;
        };
        let mut members = self.lock_members();
        members.departed.remove(&node);
        let mut links = self.write_links();
        match links.get(&node) {
            Some(link) if link.address == address => link.state.connected.load(Ordering::Acquire),
            _ => {
                tracing::info!(node, %address, "a node about to be added; linking to it");
                self.open(&mut links, node, address);
                false
            }
        }
    }

    fn members_changed(&self, shard: usize, membership: &Membership) {
        assert!(
            shard < usize::from(self.shard_count),
            "shard {shard} of {}",
            self.shard_count
        );
        if membership.voters.is_empty() {
            // A node waiting to be added (`--join`) knows nothing of the group yet: it
            // keeps the links it starts with (the founders, and whoever connects to it).
            return;
        }
        let mut members = self.lock_members();
        if members.shards[shard] == *membership {
            return;
        }
        let before = members.voters();
        members.shards[shard] = membership.clone();
        self.reconcile(&mut members, &before, shard);
    }
}
