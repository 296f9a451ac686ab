//! Incarnations: which life of its data directory each peer node is in, as this node saw
//! it.
//!
//! A Raft node's votes and the entries it acknowledged live in its data directory. A node
//! that lost its directory (a replaced disk, a directory wiped by mistake) and is started
//! again under its old id has forgotten them: it could vote twice in a term (two leaders)
//! or help elect a leader that lacks a committed entry (an acknowledged lock lost). Such a
//! node must be removed and a new node, with a new id, added instead. This guard catches
//! the common mistake of starting it again with its old command line.
//!
//! Every data directory draws a random *incarnation* (a u64, never 0) when it is created
//! and keeps it (`DataDir::incarnation`). Every handshake carries the sender's
//! incarnation, and the incarnation the sender remembers for the receiver (0: none). Each
//! node remembers, durably ([`IncarnationStore`], the data directory's `peers-seen` file),
//! the incarnation it saw for each peer node id. The rules, applied by the transport:
//!
//! - **Record before hearing.** A node records a peer's incarnation when it first accepts
//!   that peer's HANDSHAKE, durably and before it answers or delivers any message of the
//!   peer; and when its own HANDSHAKE is first accepted by the peer (the answer carries
//!   the peer's incarnation). A record that cannot be written refuses the handshake.
//! - **Refuse a changed incarnation.** A handshake from node N with another incarnation
//!   than the one remembered for N is refused (HANDSHAKE_REFUSED, or the connection closed
//!   by the connecting node), with [`HandshakeError::IncarnationChanged`] in both logs and
//!   counted in `peer_handshakes_refused_total`. So N is never heard: it can neither vote
//!   for this node nor acknowledge its entries, nor receive them.
//! - **The wiped node stops.** A node told in a handshake that the peer remembers it by
//!   another incarnation than its own knows that its data directory was created anew: it
//!   refuses, stops its peer transport for good (no message in or out, so it votes for no
//!   one) and reports it ([`RunningPeers::failure`]); the `kahu-server` binary exits with
//!   that message.
//! - **Forget a departed node.** When a node that was a voter of some shard is a voter of
//!   none (it was removed), its incarnation is forgotten, and not recorded again while it
//!   stays so, so that a node given the same id later can be added. When a membership
//!   names it again, its new link's handshake records the incarnation it has then.
//!
//! What this does not catch: a wiped node that reaches only nodes that never heard from
//! it (say it was cut off from them its whole earlier life, or they joined while it was
//! down); a removal that is undone (a membership entry that is overwritten) during which
//! the node was wiped; a node whose incarnation file alone was deleted or copied from
//! another directory. And it refuses a node id that comes back, after a removal, to a node
//! that did not see the removal (it was down): ids are not reused.
//!
//! [`RunningPeers::failure`]: super::RunningPeers::failure
//! [`HandshakeError::IncarnationChanged`]: super::HandshakeError::IncarnationChanged

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::transport::PeerCounters;
use super::HandshakeError;
use crate::raft::NodeId;

/// Node ids whose incarnation a node remembers at most; a handshake that would record one
/// more is refused. A cluster has at most `voters_max` (255) voters at a time, and a
/// removed node is forgotten, so this is reached only by a flood of made-up node ids; it
/// keeps `peers-seen`, which is rewritten whole at each record, small.
pub const SEEN_INCARNATIONS_MAX: usize = 4096;

/// Where a node keeps the incarnations it saw of its peers (the data directory, or in
/// tests a map that can fail).
pub trait IncarnationStore: Send + Sync + fmt::Debug {
    /// Replaces what is stored with `seen`, durably, before it returns: after a crash at
    /// any point, the store holds either the old or the new map, whole.
    fn save(&self, seen: &BTreeMap<NodeId, u64>) -> io::Result<()>;
}

/// The incarnation this node saw of each peer node, and where it is kept. Changed only
/// through [`SeenIncarnations::record`] and [`SeenIncarnations::forget`], each of which
/// stores the whole map before it changes what is held here.
#[derive(Clone, Debug)]
pub struct SeenIncarnations {
    seen: BTreeMap<NodeId, u64>,
    store: Arc<dyn IncarnationStore>,
}

impl SeenIncarnations {
    /// The incarnations `seen` (as the store holds them), kept in `store` from now on.
    pub fn new(seen: BTreeMap<NodeId, u64>, store: Arc<dyn IncarnationStore>) -> Self {
        assert!(
            seen.values().all(|&incarnation| incarnation != 0),
            "incarnation 0 names no data directory"
        );
        SeenIncarnations { seen, store }
    }

    /// The incarnation remembered for `node`.
    pub fn get(&self, node: NodeId) -> Option<u64> {
        self.seen.get(&node).copied()
    }

    /// Remembers `incarnation` for `node`, durably first. On an error (the store's, or
    /// [`SEEN_INCARNATIONS_MAX`] reached) nothing changed.
    pub(super) fn record(&mut self, node: NodeId, incarnation: u64) -> io::Result<()> {
        assert!(incarnation != 0, "incarnation 0 names no data directory");
        if self.get(node) == Some(incarnation) {
            return Ok(());
        }
        if !self.seen.contains_key(&node) && self.seen.len() >= SEEN_INCARNATIONS_MAX {
            return Err(io::Error::other(format!(
                "the incarnations of seen_incarnations_max ({SEEN_INCARNATIONS_MAX}) nodes are \
                 remembered already"
            )));
        }
        let mut next = self.seen.clone();
        next.insert(node, incarnation);
        self.store.save(&next)?;
        self.seen = next;
        Ok(())
    }

    /// Forgets `node`'s incarnation, durably first; whether one was remembered. On an
    /// error nothing changed.
    pub(super) fn forget(&mut self, node: NodeId) -> io::Result<bool> {
        if !self.seen.contains_key(&node) {
            return Ok(false);
        }
        let mut next = self.seen.clone();
        next.remove(&node);
        self.store.save(&next)?;
        self.seen = next;
        Ok(true)
    }
}

/// Stops the transport for good once a peer knew this node by another incarnation: this
/// node's data directory was created anew, and it must not vote or acknowledge again
/// (the rules above).
#[derive(Debug)]
pub(super) struct Fence {
    /// Why the transport stopped; `None` while it runs.
    reason: watch::Sender<Option<String>>,
    cancel: CancellationToken,
    counters: Arc<PeerCounters>,
}

impl Fence {
    pub(super) fn new(cancel: CancellationToken, counters: Arc<PeerCounters>) -> Fence {
        Fence {
            reason: watch::Sender::new(None),
            cancel,
            counters,
        }
    }

    /// Why the transport stopped, once it did.
    pub(super) fn failure(&self) -> watch::Receiver<Option<String>> {
        self.reason.subscribe()
    }

    /// Stops the transport for `error`, an [`HandshakeError::IncarnationChanged`] naming
    /// this node: every connection closes, none is accepted or made again, and what the
    /// shards send is dropped. Said once, at error level.
    pub(super) fn stop(&self, error: &HandshakeError) {
        let first = self.reason.send_if_modified(|reason| {
            let first = reason.is_none();
            if first {
                *reason = Some(error.to_string());
            }
            first
        });
        if first {
            self.counters.fenced.store(1, Ordering::Relaxed);
            tracing::error!(
                %error,
                "this node's data directory is not the one its peers know; the peer transport \
                 stops for good: this node takes part in no shard's group again"
            );
        }
        self.cancel.cancel();
    }
}
