//! What the caller must do after the core changed: the I/O of one turn.

use super::message::{Entry, HardState, Message, NodeId, Snapshot};

/// The work the core hands to its caller, in the order it must be done:
///
/// 1. if `snapshot` is set, install it in the state machine and store it;
/// 2. send `messages` (they do not depend on this node's disk; a leader may send its
///    appends before its own flush, dissertation §10.2.1);
/// 3. write `entries` to the log, replacing every stored entry from `entries[0].index` on,
///    and `hard_state` if set; flush if [`Ready::must_sync`];
/// 4. send `messages_after_persist` (votes and acknowledgements promise what is on disk);
/// 5. apply the entries at the indexes in `committed`, in order (read them with
///    [`super::Raft::log_entry`]: the log holds them, nothing is compacted before it is
///    applied), and serve the reads in `read_states` once the state machine has applied
///    their index;
/// 6. call [`super::Raft::advance`]. Nothing else may be called on the core between
///    [`super::Raft::ready`] and `advance`.
#[derive(Debug)]
pub struct Ready<C> {
    pub role: Option<RoleChange>,
    pub hard_state: Option<HardState>,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry<C>>,
    pub messages: Vec<Message<C>>,
    pub messages_after_persist: Vec<Message<C>>,
    /// Indexes of the entries to apply now (no copies: a restart may apply millions).
    pub committed: std::ops::Range<u64>,
    pub read_states: Vec<ReadState>,
    pub(super) must_sync: bool,
}

impl<C> Ready<C> {
    /// Whether the log must be flushed before `messages_after_persist` are sent: new
    /// entries, a new term or a vote. A commit index alone can be written lazily.
    pub fn must_sync(&self) -> bool {
        self.must_sync
    }
}

/// The node's role or its idea of the leader changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoleChange {
    pub role: Role,
    pub term: u64,
    pub leader: Option<NodeId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// A linearizable read confirmed by a quorum: once the state machine has applied `index`,
/// a read that asked with `context` sees every write acknowledged before it asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub context: u64,
    pub index: u64,
}
