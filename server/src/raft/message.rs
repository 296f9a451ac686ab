//! What Raft nodes say to each other, and what their logs hold.
//!
//! The vocabulary is the paper's (Ongaro and Ousterhout, "In Search of an Understandable
//! Consensus Algorithm", and Ongaro's dissertation): `term`, `index`, `commit`. A node id
//! is a non-zero `u64`; 0 never names a node (the hard state stores "no vote" as 0).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;

use bytes::Bytes;

/// A node's id in the cluster; never 0.
pub type NodeId = u64;

/// What the state machine puts in the log. The core never looks inside a command; it only
/// needs its size to bound the bytes of one append message.
pub trait Payload: Clone + Debug {
    /// About how many bytes the command takes on the wire.
    fn size_bytes(&self) -> usize;
}

/// One slot of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry<C> {
    pub index: u64,
    pub term: u64,
    pub kind: EntryKind<C>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind<C> {
    /// Appended by every new leader so it can commit its term (§5.4.2) and learn what is
    /// committed.
    Noop,
    /// A state-machine command.
    Command(C),
    /// The cluster's voters from this entry on. A node uses the latest membership in its
    /// log, committed or not (dissertation §4.1).
    Membership(Membership),
}

impl<C: Payload> Entry<C> {
    /// About how many bytes the entry takes on the wire.
    pub fn size_bytes(&self) -> usize {
        const HEADER_BYTES: usize = 17;
        HEADER_BYTES
            + match &self.kind {
                EntryKind::Noop => 0,
                EntryKind::Command(command) => command.size_bytes(),
                EntryKind::Membership(membership) => {
                    8 * membership.voters.len()
                        + membership
                            .addresses
                            .values()
                            .map(|address| 10 + address.len())
                            .sum::<usize>()
                }
            }
    }
}

/// The voters of a cluster. A majority of them is a quorum.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    pub voters: BTreeSet<NodeId>,
    /// Where voters added by a membership change are reached, in the embedder's own
    /// notation (kahu: `PEER_ADDR/CLIENT_ADDR`). The core carries it from the change to
    /// the entry, the snapshot and the next membership, and never reads it. A voter
    /// without an address here is a founder, reached through the embedder's configuration.
    pub addresses: BTreeMap<NodeId, String>,
}

impl Membership {
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Membership {
        let voters: BTreeSet<NodeId> = voters.into_iter().collect();
        assert!(!voters.contains(&0), "node id 0 is reserved");
        Membership {
            voters,
            addresses: BTreeMap::new(),
        }
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    /// Whether `id` is the one and only voter: its own vote and log are a quorum.
    pub fn is_only(&self, id: NodeId) -> bool {
        self.voters.len() == 1 && self.contains(id)
    }

    /// How many voters make a majority.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Whether the voters for whom `agrees` is true form a majority.
    pub fn has_quorum(&self, agrees: impl Fn(NodeId) -> bool) -> bool {
        !self.voters.is_empty()
            && self.voters.iter().filter(|&&id| agrees(id)).count() >= self.quorum()
    }

    /// The largest index that a majority of voters has reached, given each voter's index.
    pub fn quorum_index(&self, index_of: impl Fn(NodeId) -> u64) -> u64 {
        if self.voters.is_empty() {
            return 0;
        }
        let mut indexes: Vec<u64> = self.voters.iter().map(|&id| index_of(id)).collect();
        indexes.sort_unstable_by(|a, b| b.cmp(a));
        indexes[self.quorum() - 1]
    }
}

/// A change of one voter at a time (dissertation §4.1): any two majorities of the old and
/// new membership overlap, so no joint consensus is needed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    /// Adds a voter, with where it is reached (kept in [`Membership::addresses`]; `None`
    /// for a node the embedder can reach without it).
    AddVoter(NodeId, Option<String>),
    /// Removes a voter and its address.
    RemoveVoter(NodeId),
}

/// Raft's persistent state: saved before any message that depends on it is sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: u64,
    /// The node voted for in `term`, 0 for none.
    pub vote: NodeId,
    pub commit: u64,
}

/// Where a snapshot sits in the log and the membership at that point.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub index: u64,
    pub term: u64,
    pub membership: Membership,
}

/// The state machine as of `meta.index`, in the state machine's own encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub data: Bytes,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message<C> {
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's term; for a pre-vote request, the term the sender would campaign in.
    pub term: u64,
    pub body: MessageBody<C>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody<C> {
    /// Would you vote for me in `term`? Asked before a real campaign so that a node cut off
    /// from the cluster cannot raise everyone's term when it comes back (§9.6).
    PreVote {
        last_log_index: u64,
        last_log_term: u64,
    },
    PreVoteResponse {
        granted: bool,
    },
    /// RequestVote (§5.2). `transfer` is set when the leader asked for this campaign
    /// (leadership transfer), so voters set aside their belief in a live leader.
    Vote {
        last_log_index: u64,
        last_log_term: u64,
        transfer: bool,
    },
    VoteResponse {
        granted: bool,
    },
    /// AppendEntries (§5.3): `entries` follow the entry at `prev_index` with `prev_term`.
    Append {
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry<C>>,
        commit: u64,
    },
    /// On success, `index` is the last index the follower now has in common with the
    /// leader. On rejection, `index` is the `prev_index` that did not match and
    /// `hint_index`/`hint_term` are where the follower suggests the leader look next: the
    /// last entry at or before `prev_index` whose term is at most the leader's `prev_term`.
    AppendResponse {
        success: bool,
        index: u64,
        hint_index: u64,
        hint_term: u64,
    },
    /// The leader's heartbeat: it is alive, and commit is at least `commit` (never more
    /// than the follower is known to hold). `context` is non-zero when the heartbeat also
    /// confirms leadership for a linearizable read.
    Heartbeat {
        commit: u64,
        context: u64,
    },
    HeartbeatResponse {
        context: u64,
    },
    /// InstallSnapshot (§7): the follower is behind the leader's compacted log.
    InstallSnapshot {
        snapshot: Snapshot,
    },
    /// Leadership transfer: campaign now, you are up to date.
    TimeoutNow,
}

impl<C> MessageBody<C> {
    /// A short name for logs and statistics.
    pub fn name(&self) -> &'static str {
        match self {
            MessageBody::PreVote { .. } => "pre_vote",
            MessageBody::PreVoteResponse { .. } => "pre_vote_response",
            MessageBody::Vote { .. } => "vote",
            MessageBody::VoteResponse { .. } => "vote_response",
            MessageBody::Append { .. } => "append",
            MessageBody::AppendResponse { .. } => "append_response",
            MessageBody::Heartbeat { .. } => "heartbeat",
            MessageBody::HeartbeatResponse { .. } => "heartbeat_response",
            MessageBody::InstallSnapshot { .. } => "install_snapshot",
            MessageBody::TimeoutNow => "timeout_now",
        }
    }
}
