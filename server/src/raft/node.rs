//! [`Raft`]: one member of one Raft group, as a pure state machine.
//!
//! Inputs: [`Raft::tick`] (time), [`Raft::step`] (a message from a peer),
//! [`Raft::propose`] (commands from clients, a whole batch at once),
//! [`Raft::propose_membership`], [`Raft::transfer_leadership`], [`Raft::read_index`],
//! [`Raft::compact`]. Output: [`Raft::ready`] hands out the I/O those inputs require and
//! [`Raft::advance`] says it is done. Elections are in `election.rs`, log replication in
//! `replication.rs`; this file holds the state, the role changes and the ready cycle.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::config::{Config, ConfigError};
use super::log::RaftLog;
use super::message::{
    Entry, EntryKind, HardState, Membership, MembershipChange, Message, MessageBody, NodeId,
    Payload, Snapshot,
};
use super::progress::Progress;
use super::ready::{ReadState, Ready, Role, RoleChange};

/// What a node starts from: what its storage holds (nothing, for a new node).
#[derive(Debug)]
pub struct InitialState<C> {
    pub hard_state: HardState,
    /// The last snapshot; the log starts after it.
    pub snapshot: Option<Snapshot>,
    /// The entries after the snapshot, all on disk.
    pub entries: Vec<Entry<C>>,
    /// The voters when the log holds no membership yet: the cluster's founding members for
    /// a node created with the cluster, empty for a node that will be added later (it waits
    /// to hear from a leader).
    pub founding_membership: Membership,
}

impl<C> InitialState<C> {
    /// A node with empty storage.
    pub fn new(founding_membership: Membership) -> InitialState<C> {
        InitialState {
            hard_state: HardState::default(),
            snapshot: None,
            entries: Vec::new(),
            founding_membership,
        }
    }
}

/// Why the core refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("a leadership transfer is in progress")]
    TransferInProgress,
    #[error("a membership change is still uncommitted")]
    MembershipChangePending,
    #[error("the leader has not committed an entry of its term yet")]
    LeaderNotReady,
    #[error("invalid membership change: {0}")]
    InvalidMembershipChange(&'static str),
    #[error("entries were forgotten without a snapshot; take one before adding a voter")]
    SnapshotNeeded,
}

/// A read waiting for a quorum to confirm this node still leads.
#[derive(Debug)]
pub(super) struct PendingRead {
    pub context: u64,
    pub index: u64,
    pub acknowledged: BTreeSet<NodeId>,
}

/// A snapshot of the node's state for status reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_index: u64,
    pub voters: Vec<NodeId>,
    /// For a leader: each follower's match index.
    pub match_indexes: Vec<(NodeId, u64)>,
}

#[derive(Debug)]
pub struct Raft<C> {
    pub(super) config: Config,
    pub(super) id: NodeId,
    pub(super) term: u64,
    pub(super) vote: NodeId,
    pub(super) role: Role,
    pub(super) leader: Option<NodeId>,
    pub(super) log: RaftLog<C>,
    /// Each membership in the log with the index where it took effect, oldest first; the
    /// first is the snapshot's (or the founding one) and the last is in force.
    pub(super) memberships: Vec<(u64, Membership)>,
    /// Leader: one entry per other voter.
    pub(super) progress: BTreeMap<NodeId, Progress>,
    /// Candidate: the answers so far.
    pub(super) votes: BTreeMap<NodeId, bool>,
    /// Leader: the index of the first entry of its term.
    pub(super) term_start_index: u64,
    pub(super) election_elapsed: u32,
    pub(super) heartbeat_elapsed: u32,
    pub(super) randomized_election_ticks: u32,
    pub(super) transfer_target: Option<NodeId>,
    pub(super) transfer_elapsed: u32,
    pub(super) pending_reads: VecDeque<PendingRead>,
    pub(super) read_states: Vec<ReadState>,
    pub(super) messages: Vec<Message<C>>,
    pub(super) messages_after_persist: Vec<Message<C>>,
    /// The latest snapshot, sent to followers behind the compacted log.
    pub(super) snapshot: Option<Snapshot>,
    /// A snapshot received from the leader, not yet handed out.
    pub(super) snapshot_to_install: Option<Snapshot>,
    last_hard_state: HardState,
    last_role: RoleChange,
    in_ready: bool,
    random_state: u64,
}

impl<C: Payload> Raft<C> {
    pub fn new(config: Config, initial: InitialState<C>) -> Result<Raft<C>, ConfigError> {
        config.validate()?;
        let (snapshot_index, snapshot_term, base_membership) = match &initial.snapshot {
            Some(snapshot) => (
                snapshot.meta.index,
                snapshot.meta.term,
                snapshot.meta.membership.clone(),
            ),
            None => (0, 0, initial.founding_membership.clone()),
        };
        let mut memberships = vec![(snapshot_index, base_membership)];
        for entry in &initial.entries {
            if let EntryKind::Membership(membership) = &entry.kind {
                memberships.push((entry.index, membership.clone()));
            }
        }
        let mut log = RaftLog::new(snapshot_index, snapshot_term, initial.entries);
        let stored_hard_state = initial.hard_state;
        let mut hard_state = stored_hard_state;
        if log.last_term() > hard_state.term {
            // A crash kept entries of a later term but not the hard state written with
            // them. Nothing that needed that hard state was sent (votes leave only after
            // it is on disk), so this node voted for nobody in the later term.
            hard_state.term = log.last_term();
            hard_state.vote = 0;
        }
        log.commit_to(hard_state.commit.min(log.last_index()));
        let last_role = RoleChange {
            role: Role::Follower,
            term: hard_state.term,
            leader: None,
        };
        let mut raft = Raft {
            id: config.id,
            random_state: config.seed,
            config,
            term: hard_state.term,
            vote: hard_state.vote,
            role: Role::Follower,
            leader: None,
            log,
            memberships,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            term_start_index: 0,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_ticks: 0,
            transfer_target: None,
            transfer_elapsed: 0,
            pending_reads: VecDeque::new(),
            read_states: Vec::new(),
            messages: Vec::new(),
            messages_after_persist: Vec::new(),
            snapshot: initial.snapshot,
            snapshot_to_install: None,
            last_hard_state: HardState {
                commit: 0,
                ..stored_hard_state
            },
            last_role,
            in_ready: false,
        };
        raft.randomize_election_timeout();
        Ok(raft)
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn term(&self) -> u64 {
        self.term
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }

    /// The index of the entry the latest membership came from (the snapshot's index, or
    /// 0, for the base one): it is committed once the commit index reaches it.
    pub fn membership_index(&self) -> u64 {
        self.memberships.last().expect("a membership").0
    }

    pub fn membership(&self) -> &Membership {
        &self.memberships.last().expect("a membership").1
    }

    /// The entry at `index`, if the log holds it (not compacted, not beyond the end).
    pub fn log_entry(&self, index: u64) -> Option<&Entry<C>> {
        self.log.entry(index)
    }

    /// The term of the entry at `index`, if known (the snapshot's last included).
    pub fn term_at(&self, index: u64) -> Option<u64> {
        self.log.term(index)
    }

    /// The node leadership is being transferred to, if a transfer is under way.
    pub fn transfer_target(&self) -> Option<NodeId> {
        self.transfer_target
    }

    /// Gives up leadership at once; the node stays a voter and can be elected again, in a
    /// later term (a leader whose fencing-token counter for its term runs out does this).
    pub fn step_down(&mut self) {
        self.assert_not_in_ready();
        if self.role == Role::Leader {
            let term = self.term;
            self.become_follower(term, None);
        }
    }

    /// The membership in force at `index` (for a snapshot taken there).
    pub fn membership_at(&self, index: u64) -> &Membership {
        let position = self
            .memberships
            .iter()
            .rposition(|(at, _)| *at <= index)
            .unwrap_or(0);
        &self.memberships[position].1
    }

    pub fn commit_index(&self) -> u64 {
        self.log.committed()
    }

    pub fn applied_index(&self) -> u64 {
        self.log.applied()
    }

    pub fn last_index(&self) -> u64 {
        self.log.last_index()
    }

    /// The index of the first entry of this leader's term: once it is committed the
    /// leader knows everything committed before it.
    pub fn term_start_index(&self) -> u64 {
        self.term_start_index
    }

    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            role: self.role,
            term: self.term,
            leader: self.leader,
            commit_index: self.log.committed(),
            applied_index: self.log.applied(),
            last_index: self.log.last_index(),
            voters: self.membership().voters.iter().copied().collect(),
            match_indexes: self
                .progress
                .iter()
                .map(|(&id, progress)| (id, progress.match_index))
                .collect(),
        }
    }

    /// Advances time by one tick.
    pub fn tick(&mut self) {
        self.assert_not_in_ready();
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.tick_election();
        }
    }

    /// Handles a message from a peer.
    pub fn step(&mut self, message: Message<C>) {
        self.assert_not_in_ready();
        assert_eq!(message.to, self.id, "message for another node");
        if message.from == self.id {
            return;
        }
        if message.term > self.term {
            if !self.accept_higher_term(&message) {
                return;
            }
        } else if message.term < self.term {
            self.answer_stale(&message);
            return;
        }
        self.step_current_term(message);
    }

    /// Appends `commands` to the log as one batch; returns the index of the last one. They
    /// are committed (and come back in [`Ready::committed`]) once a quorum stores them.
    pub fn propose(&mut self, commands: Vec<C>) -> Result<u64, ProposeError> {
        self.assert_not_in_ready();
        self.check_can_propose()?;
        if commands.is_empty() {
            return Ok(self.log.last_index());
        }
        let first = self.log.last_index() + 1;
        let term = self.term;
        self.log.append(
            commands
                .into_iter()
                .enumerate()
                .map(|(offset, command)| Entry {
                    index: first + offset as u64,
                    term,
                    kind: EntryKind::Command(command),
                }),
        );
        self.broadcast_append();
        Ok(self.log.last_index())
    }

    /// Adds or removes one voter. Only one change may be uncommitted at a time, and only
    /// once the leader has committed an entry of its own term (dissertation §4.1, and the
    /// fix to single-server changes described on the raft-dev list in 2015).
    pub fn propose_membership(&mut self, change: MembershipChange) -> Result<u64, ProposeError> {
        self.assert_not_in_ready();
        self.check_can_propose()?;
        if self.log.committed() < self.term_start_index {
            return Err(ProposeError::LeaderNotReady);
        }
        if self.membership_index() > self.log.committed() {
            return Err(ProposeError::MembershipChangePending);
        }
        let snapshot_index = self
            .snapshot
            .as_ref()
            .map_or(0, |snapshot| snapshot.meta.index);
        if snapshot_index < self.log.snapshot_index() {
            return Err(ProposeError::SnapshotNeeded);
        }
        let mut membership = self.membership().clone();
        match change {
            MembershipChange::AddVoter(0, _) => {
                return Err(ProposeError::InvalidMembershipChange(
                    "node id 0 is reserved",
                ))
            }
            MembershipChange::AddVoter(id, address) => {
                if !membership.voters.insert(id) {
                    return Err(ProposeError::InvalidMembershipChange("already a voter"));
                }
                if let Some(address) = address {
                    membership.addresses.insert(id, address);
                }
            }
            MembershipChange::RemoveVoter(id) => {
                membership.addresses.remove(&id);
                if !membership.voters.remove(&id) {
                    return Err(ProposeError::InvalidMembershipChange("not a voter"));
                }
                if membership.voters.is_empty() {
                    return Err(ProposeError::InvalidMembershipChange(
                        "cannot remove the last voter",
                    ));
                }
            }
        }
        let index = self.log.last_index() + 1;
        self.log.append([Entry {
            index,
            term: self.term,
            kind: EntryKind::Membership(membership.clone()),
        }]);
        self.membership_appended(index, membership);
        self.broadcast_append();
        Ok(index)
    }

    /// Asks a quorum to confirm this node still leads; a [`ReadState`] with `context`
    /// comes back in a later [`Ready`] when it does. Ask once per batch of reads: one
    /// context covers every read that arrived before it. `context` must not be 0. If the
    /// node stops leading first, the read never comes back: the caller fails its pending
    /// reads when [`Ready::role`] says it is no longer the leader.
    pub fn read_index(&mut self, context: u64) -> Result<(), ProposeError> {
        self.assert_not_in_ready();
        assert_ne!(context, 0, "read context 0 is reserved");
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        // Until the term's first entry commits, the commit index may lag what earlier
        // leaders committed; that entry's index covers all of it.
        let index = self.log.committed().max(self.term_start_index);
        let mut acknowledged = BTreeSet::new();
        acknowledged.insert(self.id);
        self.pending_reads.push_back(PendingRead {
            context,
            index,
            acknowledged,
        });
        self.release_confirmed_reads();
        if !self.pending_reads.is_empty() {
            self.broadcast_heartbeat();
        }
        Ok(())
    }

    /// The state machine has stored `snapshot` (at an index it has applied); the log
    /// before it can go, and followers too far behind get it instead.
    pub fn compact(&mut self, snapshot: Snapshot) {
        self.assert_not_in_ready();
        assert!(
            snapshot.meta.index <= self.log.applied(),
            "snapshot at {} beyond applied {}",
            snapshot.meta.index,
            self.log.applied()
        );
        if snapshot.meta.index < self.log.snapshot_index() {
            return; // older than what the log has already let go of
        }
        assert_eq!(
            self.log.term(snapshot.meta.index),
            Some(snapshot.meta.term),
            "snapshot term does not match the log"
        );
        if snapshot.meta.index > self.log.snapshot_index() {
            self.log.compact(snapshot.meta.index);
            let keep_from = self
                .memberships
                .iter()
                .rposition(|(index, _)| *index <= snapshot.meta.index)
                .expect("a membership at or before the snapshot");
            self.memberships.drain(..keep_from);
        }
        self.snapshot = Some(snapshot);
    }

    /// Drops the entries up to `index` from memory without a snapshot. Only for a group
    /// whose only voter is this node: nobody will ever ask it for them. (Before another
    /// voter is added, [`Raft::compact`] must give it a snapshot that covers them:
    /// [`Raft::propose_membership`] refuses until then.)
    pub fn forget_applied_entries(&mut self, index: u64) {
        self.assert_not_in_ready();
        assert!(
            self.membership().is_only(self.id),
            "entries are forgotten only in a one-voter group"
        );
        let index = index.min(self.log.applied()).min(self.log.persisted());
        if index <= self.log.snapshot_index() {
            return;
        }
        self.log.compact(index);
        let keep_from = self
            .memberships
            .iter()
            .rposition(|(at, _)| *at <= index)
            .expect("a membership at or before the index");
        self.memberships.drain(..keep_from);
    }

    /// The index of the first entry the node still holds in memory.
    pub fn first_index(&self) -> u64 {
        self.log.first_index()
    }

    pub fn has_ready(&self) -> bool {
        self.role_change() != self.last_role
            || self.hard_state() != self.last_hard_state
            || self.snapshot_to_install.is_some()
            || self.log.has_unsaved()
            || !self.messages.is_empty()
            || !self.messages_after_persist.is_empty()
            || self.log.committed().min(self.log.last_index()) > self.log.applied()
            || !self.read_states.is_empty()
    }

    /// Hands out the I/O to do now; see [`Ready`] for the order. Call
    /// [`Raft::advance`] when done.
    pub fn ready(&mut self) -> Ready<C> {
        self.assert_not_in_ready();
        self.in_ready = true;
        let role = self.role_change();
        let role = (role != self.last_role).then(|| {
            self.last_role = role;
            role
        });
        let hard_state = self.hard_state();
        let must_sync_state = hard_state.term != self.last_hard_state.term
            || hard_state.vote != self.last_hard_state.vote;
        let hard_state = (hard_state != self.last_hard_state).then(|| {
            self.last_hard_state = hard_state;
            hard_state
        });
        let snapshot = self.snapshot_to_install.take();
        let entries = self.log.take_unsaved();
        // The caller writes `entries` before applying, so committed entries among them may
        // be applied in this same turn.
        let committed = self.log.take_to_apply();
        Ready {
            role,
            must_sync: must_sync_state || snapshot.is_some() || !entries.is_empty(),
            hard_state,
            snapshot,
            entries,
            messages: std::mem::take(&mut self.messages),
            messages_after_persist: std::mem::take(&mut self.messages_after_persist),
            committed,
            read_states: std::mem::take(&mut self.read_states),
        }
    }

    /// The caller did everything the last [`Ready`] asked.
    pub fn advance(&mut self) {
        assert!(self.in_ready, "advance without ready");
        self.in_ready = false;
        self.log.mark_persisted();
        if self.role == Role::Leader {
            self.maybe_commit();
        }
    }

    fn check_can_propose(&self) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if self.transfer_target.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        Ok(())
    }

    fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed(),
        }
    }

    fn role_change(&self) -> RoleChange {
        RoleChange {
            role: self.role,
            term: self.term,
            leader: self.leader,
        }
    }

    pub(super) fn assert_not_in_ready(&self) {
        assert!(
            !self.in_ready,
            "the core was used between ready and advance"
        );
    }

    pub(super) fn send(&mut self, to: NodeId, body: MessageBody<C>) {
        self.messages.push(Message {
            from: self.id,
            to,
            term: self.term,
            body,
        });
    }

    pub(super) fn send_after_persist(&mut self, to: NodeId, body: MessageBody<C>) {
        self.messages_after_persist.push(Message {
            from: self.id,
            to,
            term: self.term,
            body,
        });
    }

    /// Voters other than this node.
    pub(super) fn peers(&self) -> Vec<NodeId> {
        self.membership()
            .voters
            .iter()
            .copied()
            .filter(|&id| id != self.id)
            .collect()
    }

    /// Whether this node may start an election: it is a voter, or it was one until a
    /// change not committed yet as far as it knows (dissertation §4.2.2: such a node may
    /// still be needed until the change commits). A leader that removed itself and lost
    /// its leadership (a crash, a higher term) before its removal committed may hold the
    /// longest log, so the remaining voters, which may lack the removal, cannot win without
    /// its vote; it campaigns to commit the removal (its own vote does not count: the quorum
    /// is of its latest membership), and steps down once it is committed.
    pub(super) fn promotable(&self) -> bool {
        if self.membership().contains(self.id) {
            return true;
        }
        let [.., (_, previous), (index, _)] = self.memberships.as_slice() else {
            return false;
        };
        *index > self.log.committed() && previous.contains(self.id)
    }

    pub(super) fn become_follower(&mut self, term: u64, leader: Option<NodeId>) {
        assert!(term >= self.term, "term went backwards");
        if term > self.term {
            self.term = term;
            self.vote = 0;
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.reset_role_state();
    }

    pub(super) fn reset_role_state(&mut self) {
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.randomize_election_timeout();
        self.progress.clear();
        self.votes.clear();
        self.transfer_target = None;
        self.pending_reads.clear();
    }

    /// A membership entry was appended at `index`: it is in force from now on.
    pub(super) fn membership_appended(&mut self, index: u64, membership: Membership) {
        self.memberships.push((index, membership));
        if self.role == Role::Leader {
            self.sync_progress_with_membership();
        }
    }

    /// Entries from `index` on were replaced: memberships they carried are void.
    pub(super) fn log_truncated(&mut self, index: u64) {
        self.memberships.retain(|(at, _)| *at < index);
        assert!(
            !self.memberships.is_empty(),
            "the base membership was truncated"
        );
    }

    pub(super) fn randomize_election_timeout(&mut self) {
        let base = self.config.election_ticks;
        self.randomized_election_ticks = base + (self.next_random() % u64::from(base)) as u32;
    }

    /// SplitMix64: small, fast and good enough for timeouts; seeded for replay.
    fn next_random(&mut self) -> u64 {
        self.random_state = self.random_state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.random_state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
