//! One shard's member of its Raft group: the pure core ([`crate::raft::Raft`]) driven over
//! this shard's write-ahead log, lock table and peer connections.
//!
//! What it does with each [`Ready`] (the order the core requires):
//! 1. sends the messages that promise nothing about this node's disk (a leader's appends
//!    go to the followers while its own write is in flight, Raft dissertation §10.2.1);
//! 2. stores a new term or vote (`wal/raft_state.rs`), replaces entries a new leader
//!    overwrote, appends the new entries and makes them durable with one `fdatasync`;
//! 3. sends the messages that promise what is on disk (votes, acknowledgements);
//! 4. applies committed entries to the lock table, unless this node is the leader (its
//!    table decided them already, see below).
//!
//! The table: a leader's table decides requests and runs ahead of the committed log by the
//! entries in flight (their replies wait for the commit: [`LockTable::begin_commit`]).
//! A table that does not serve (a follower's, or a new leader's until it serves) is
//! exactly the applied state: the newest snapshot plus the committed entries, each lease
//! held as its whole length (counted from the table clock's origin,
//! [`Restorer::counting_from_origin`]). When this node starts serving as leader, every
//! lease starts in full at that moment ([`LockTable::restart_leases`], O(n) without a
//! rebuild, so a large shard's new leader keeps up its heartbeats): a new leader honours
//! every lease it inherits in full. When it stops serving, the table is rebuilt from the
//! snapshot and the committed log: a deposed leader forgets what it decided but never
//! committed. Ephemeral locks and waiters are not in the log, so they end with the
//! leadership; their clients are told NOT_LEADER.
//!
//! Fencing tokens are `term << 40 | counter`: each leader stamps its term, and terms only
//! grow, so tokens grow across every change of leader (see `tokens.rs`).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kahu_protocol::{ErrorCode, MemberChange, MembersReply, ProtocolError, Response};

use super::table::{LockTable, Output, Restorer};
use super::tokens::{TokenSource, EPOCH_MAX};
use super::worker::{send, send_committed};
use super::{PeerOutbox, ReplyTo, ShardStats, WorkerCounters};
use crate::raft::{
    self, HardState, Membership, NodeId, Raft, Ready, Role, RoleChange, SnapshotMeta,
};
use crate::wal::record::{Command, Entry, VOTERS_MAX};
use crate::wal::snapshot::Snapshot;
use crate::wal::storage::Storage;
use crate::wal::{raft_state, Replay, Wal, WalError};

/// How often the Raft core ticks, and its timeouts in ticks.
#[derive(Debug, Clone, Copy)]
pub struct RaftTiming {
    pub tick: Duration,
    pub election_ticks: u32,
    pub heartbeat_ticks: u32,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            tick: Duration::from_millis(50),
            election_ticks: 10,
            heartbeat_ticks: 2,
        }
    }
}

/// What recovery read from a shard's log, for the Raft core to start from.
#[derive(Debug, Default)]
pub(super) struct LogContents {
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
}

impl LogContents {
    /// The largest fencing token the log holds.
    pub fn token_max(&self) -> u64 {
        let in_snapshot = self
            .snapshot
            .iter()
            .flat_map(|snapshot| snapshot.locks.iter().map(|lock| lock.token));
        let in_entries = self.entries.iter().filter_map(|entry| match &entry.kind {
            crate::raft::EntryKind::Command(Command::Grant { token, .. }) => Some(*token),
            _ => None,
        });
        in_snapshot.chain(in_entries).max().unwrap_or(0)
    }
}

impl LogContents {
    /// The group's latest membership as the log holds it; `founding` if it holds none.
    pub fn membership(&self, founding: &Membership) -> Membership {
        let logged = self
            .entries
            .iter()
            .rev()
            .find_map(|entry| match &entry.kind {
                crate::raft::EntryKind::Membership(membership) => Some(membership),
                _ => None,
            });
        let snapshot = self
            .snapshot
            .as_ref()
            .map(|snapshot| &snapshot.membership)
            .filter(|membership| !membership.voters.is_empty());
        logged.or(snapshot).unwrap_or(founding).clone()
    }
}

impl Replay for LogContents {
    fn restore(&mut self, snapshot: &Snapshot) {
        self.snapshot = Some(snapshot.clone());
    }

    fn apply(&mut self, entry: Entry) {
        self.entries.push(entry);
    }
}

/// A ready whose I/O is not done yet (a write or sync failed): it is finished once a
/// retry succeeds.
struct Unpersisted {
    ready: Ready<Command>,
    /// A leader's snapshot still to be stored (it goes before the entries that follow it).
    snapshot: Option<raft::Snapshot>,
    appended: bool,
}

pub(super) struct Replica {
    shard: usize,
    raft: Raft<Command>,
    wal: Wal,
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    /// The term and vote on disk.
    stored: HardState,
    table: LockTable<ReplyTo>,
    waiters_per_lock_max: usize,
    stats: Arc<ShardStats>,
    counters: WorkerCounters,
    peers: Arc<dyn PeerOutbox>,
    timing: RaftTiming,
    next_tick: Instant,
    /// Leading, with every entry before the term applied: requests are served.
    serving: bool,
    /// The term this node serves in.
    serving_term: u64,
    /// Table commit sequences and the last Raft index proposed in each, oldest first.
    proposals: VecDeque<(u64, u64)>,
    unpersisted: Option<Unpersisted>,
    /// The leader cannot grant: its term does not fit in a token.
    stalled: bool,
    /// In a cluster, replies that committed nothing (ephemeral grants, reads, refusals)
    /// wait until a quorum confirms this node still led after they were decided (a
    /// ReadIndex round): a deposed leader that has not noticed yet must not grant an
    /// ephemeral lock the new leader also grants, or serve a stale read. Oldest first.
    confirmations: VecDeque<(u64, Vec<(ReplyTo, Response)>)>,
    next_read_context: u64,
    /// The membership the peer transport was last told of.
    reported_membership: Option<Membership>,
    /// Membership changes proposed and not yet committed: the entry's index and term, the
    /// reply.
    members_pending: Vec<(u64, u64, ReplyTo)>,
    /// A membership change found entries forgotten without a snapshot (a one-voter
    /// group): the next turn takes a snapshot whatever the log's size.
    snapshot_wanted: bool,
    /// The node is stopping: hand the group over at the end of this turn.
    hand_over_wanted: bool,
    /// The bytes of the snapshot file at this index, as last sent to a follower; dropped
    /// once no follower asked for them for a few election timeouts.
    snapshot_bytes: Option<(u64, Bytes)>,
    /// Ticks since the cached snapshot bytes were last sent.
    snapshot_bytes_idle_ticks: u32,
}

/// How to build a replica.
pub(super) struct ReplicaParts {
    pub shard: usize,
    pub node: NodeId,
    pub founding: Membership,
    pub wal: Wal,
    pub contents: LogContents,
    pub storage: Arc<dyn Storage>,
    pub dir: PathBuf,
    pub stored: HardState,
    /// The lowest term to start from (tokens of an older run must stay below every new
    /// one, see `ShardSet::start`).
    pub term_floor: u64,
    pub waiters_per_lock_max: usize,
    pub stats: Arc<ShardStats>,
    pub peers: Arc<dyn PeerOutbox>,
    pub timing: RaftTiming,
    pub seed: u64,
}

impl Replica {
    pub(super) fn new(parts: ReplicaParts) -> Result<Replica, raft::ConfigError> {
        let snapshot = parts
            .contents
            .snapshot
            .as_ref()
            .map(|snapshot| raft::Snapshot {
                meta: SnapshotMeta {
                    index: snapshot.last_index,
                    term: snapshot.last_term,
                    membership: if snapshot.membership.voters.is_empty() {
                        parts.founding.clone()
                    } else {
                        snapshot.membership.clone()
                    },
                },
                // Read from the snapshot file when a follower needs it.
                data: Bytes::new(),
            });
        let hard_state = HardState {
            term: parts.stored.term.max(parts.term_floor),
            vote: if parts.stored.term >= parts.term_floor {
                parts.stored.vote
            } else {
                0
            },
            commit: 0,
        };
        let mut config = raft::Config::new(parts.node);
        config.election_ticks = parts.timing.election_ticks;
        config.heartbeat_ticks = parts.timing.heartbeat_ticks;
        config.seed = parts.seed;
        let raft = Raft::new(
            config,
            raft::InitialState {
                hard_state,
                snapshot,
                entries: parts.contents.entries,
                founding_membership: parts.founding,
            },
        )?;
        Ok(Replica {
            shard: parts.shard,
            raft,
            wal: parts.wal,
            storage: parts.storage,
            dir: parts.dir,
            stored: parts.stored,
            table: LockTable::new(TokenSource::new(1), parts.waiters_per_lock_max),
            waiters_per_lock_max: parts.waiters_per_lock_max,
            stats: parts.stats,
            counters: WorkerCounters::default(),
            peers: parts.peers,
            timing: parts.timing,
            next_tick: Instant::now() + parts.timing.tick,
            serving: false,
            serving_term: 0,
            proposals: VecDeque::new(),
            unpersisted: None,
            stalled: false,
            confirmations: VecDeque::new(),
            next_read_context: 1,
            reported_membership: None,
            members_pending: Vec::new(),
            snapshot_wanted: false,
            hand_over_wanted: false,
            snapshot_bytes: None,
            snapshot_bytes_idle_ticks: 0,
        })
    }

    /// Starts the group member: a one-voter group elects itself at once. (No snapshot
    /// now, even if one is due: it waits for the first commit, after serving starts.)
    pub(super) fn start(&mut self, now: Instant) {
        let started = Instant::now();
        self.report_membership();
        // The table starts as the snapshot plus the applied log and grows by what is
        // applied; once this node leads, its leases start in full then.
        self.rebuild_table();
        let membership = self.raft.membership();
        if membership.is_only(self.raft.id()) {
            self.raft.campaign_now();
        }
        let mut output = Output::default();
        self.drive(now, &mut output);
        self.publish();
        debug_assert!(output.is_empty(), "no requests before the start");
        tracing::debug!(
            shard = self.shard,
            elapsed_ms = started.elapsed().as_millis() as u64,
            serving = self.serving,
            "shard started"
        );
    }

    /// Leading in the term it started serving in, able to grant, not handing over: the
    /// table may decide requests. (A message or tick earlier in the turn may have deposed
    /// the node before the next ready says so.)
    pub(super) fn is_serving(&self) -> bool {
        self.serving
            && self.raft.is_leader()
            && self.raft.term() == self.serving_term
            && !self.stalled
            && self.raft.transfer_target().is_none()
    }

    /// Leading, but not serving yet: requests wait for the first entry of the term.
    pub(super) fn is_catching_up(&self) -> bool {
        self.raft.is_leader() && !self.serving
    }

    pub(super) fn is_stalled(&self) -> bool {
        self.stalled
    }

    /// The Raft core, for the deterministic simulation's checks (`simulation/`).
    #[cfg(test)]
    pub(super) fn raft(&self) -> &Raft<Command> {
        &self.raft
    }

    /// The persistent locks of this node's table with the lease each has left at `now`
    /// (a table that does not serve holds whole leases: see the module doc).
    #[cfg(test)]
    pub(super) fn persistent_locks(&self, now: Instant) -> Vec<crate::wal::snapshot::SnapshotLock> {
        if self.serving {
            self.table.persistent_locks(now)
        } else {
            self.table.persistent_locks_counted_from_origin()
        }
    }

    pub(super) fn table(&mut self) -> &mut LockTable<ReplyTo> {
        &mut self.table
    }

    pub(super) fn counters(&mut self) -> &mut WorkerCounters {
        &mut self.counters
    }

    /// When the worker must wake up even if nothing arrives.
    pub(super) fn next_deadline(&self) -> Instant {
        let lease = if self.is_serving() {
            self.table.next_deadline()
        } else {
            None
        };
        lease.map_or(self.next_tick, |lease| lease.min(self.next_tick))
    }

    pub(super) fn tick_if_due(&mut self, now: Instant) {
        if now < self.next_tick {
            return;
        }
        self.raft.tick();
        self.next_tick += self.timing.tick;
        if self.snapshot_bytes.is_some() {
            self.snapshot_bytes_idle_ticks += 1;
            if self.snapshot_bytes_idle_ticks > 4 * self.timing.election_ticks {
                self.snapshot_bytes = None;
            }
        }
        if self.next_tick <= now {
            // Far behind (a long pause): tick once and start counting again from now.
            self.next_tick = now + self.timing.tick;
        }
    }

    pub(super) fn step(&mut self, message: raft::Message<Command>) {
        if message.to != self.raft.id() || message.from == 0 || message.from == self.raft.id() {
            tracing::warn!(
                shard = self.shard,
                from = message.from,
                to = message.to,
                "dropped a peer message not meant for this node"
            );
            return;
        }
        if let raft::MessageBody::Append {
            prev_index,
            prev_term,
            entries,
            ..
        } = &message.body
        {
            // The core asserts what a correct leader always sends; a peer that sends
            // anything else is dropped here rather than taking the node down.
            let mut previous = (*prev_index, *prev_term);
            for entry in entries {
                if entry.index != previous.0 + 1
                    || entry.term < previous.1
                    || entry.term > message.term
                {
                    tracing::warn!(
                        shard = self.shard,
                        from = message.from,
                        "dropped an append whose entries do not follow each other"
                    );
                    return;
                }
                previous = (entry.index, entry.term);
            }
        }
        if let raft::MessageBody::InstallSnapshot { snapshot } = &message.body {
            // The core takes a snapshot's position on trust; its bytes are checked here,
            // before the core drops its log for them.
            let readable = Snapshot::decode(&snapshot.data).is_some_and(|decoded| {
                decoded.last_index == snapshot.meta.index && decoded.last_term == snapshot.meta.term
            });
            if !readable {
                tracing::warn!(
                    shard = self.shard,
                    from = message.from,
                    "dropped a snapshot that does not decode or does not match its position"
                );
                return;
            }
        }
        self.raft.step(message);
    }

    /// The node is stopping: a leader hands its group to the most up-to-date follower, so
    /// the group has a new leader in a round trip instead of an election timeout. From
    /// then on requests get NOT_LEADER (a transfer is in progress, then another node
    /// leads). Abandoned by the core after an election timeout; the server waits at most
    /// that long.
    pub(super) fn request_hand_over(&mut self) {
        self.hand_over_wanted = true;
    }

    /// Starts the hand-over asked for, once the turn's decisions are proposed (a transfer
    /// in progress refuses proposals) and the core is not between a ready and its advance
    /// (a failed write). Marks the shard as handing over for the server's wait.
    fn hand_over_if_wanted(&mut self) {
        if !self.hand_over_wanted || self.unpersisted.is_some() {
            return;
        }
        self.hand_over_wanted = false;
        // The server waits while this is set (it sets it before asking): it stays set only
        // while a transfer is under way, until this node leads no more (`publish`).
        let handing_over = self.start_hand_over();
        self.stats
            .handing_over
            .store(handing_over, Ordering::Relaxed);
    }

    /// Asks the core to transfer the leadership to the most up-to-date follower; whether
    /// a transfer started.
    fn start_hand_over(&mut self) -> bool {
        if !self.raft.is_leader() {
            return false;
        }
        let Some(target) = self.raft.transfer_candidate() else {
            return false; // a group of one: nobody to hand over to
        };
        match self.raft.transfer_leadership(target) {
            Ok(()) => {
                tracing::info!(
                    shard = self.shard,
                    target,
                    "stopping: handing leadership over"
                );
                true
            }
            Err(error) => {
                tracing::warn!(shard = self.shard, %error, "stopping: cannot hand leadership over");
                false
            }
        }
    }

    pub(super) fn peer_unreachable(&mut self, node: NodeId) {
        self.raft.report_unreachable(node);
    }

    pub(super) fn fire_timers(
        &mut self,
        now: Instant,
        timers_max: usize,
        output: &mut Output<ReplyTo>,
    ) {
        if self.table.tokens().needs_new_epoch() {
            // The grant counter of this term is nearly used up: lead again in a new term.
            tracing::info!(
                shard = self.shard,
                "grant counter nearly exhausted; starting a new term"
            );
            self.raft.step_down();
            self.raft.campaign_now();
            return;
        }
        self.table.fire_timers(now, timers_max, output);
    }

    pub(super) fn cancel_connection(
        &mut self,
        connection_id: u64,
        now: Instant,
        output: &mut Output<ReplyTo>,
    ) {
        self.table.cancel_connection(connection_id, now, output);
    }

    pub(super) fn fail_waiters(&mut self, error: &ProtocolError, output: &mut Output<ReplyTo>) {
        self.table.fail_all_waiters(error, output);
    }

    /// The reply to a request this node cannot serve now.
    pub(super) fn not_serving(&self) -> ProtocolError {
        if self.stalled {
            return ProtocolError::new(
                ErrorCode::Internal,
                format!(
                    "shard {}: the Raft term {} no longer fits in a fencing token",
                    self.shard,
                    self.raft.term()
                ),
            );
        }
        let message = match self.raft.leader() {
            Some(leader) if leader == self.raft.id() => {
                format!(
                    "shard {}: this node was just elected and is catching up; retry",
                    self.shard
                )
            }
            Some(leader) => match self.peers.client_address(leader) {
                Some(address) => format!(
                    "shard {} is led by node {leader}; ask leader={address}",
                    self.shard
                ),
                None => format!("shard {} is led by node {leader}", self.shard),
            },
            None => format!(
                "shard {} has no leader right now (election in progress); retry",
                self.shard
            ),
        };
        ProtocolError::new(ErrorCode::NotLeader, message)
    }

    /// An operator's membership change (`kahu-cli --add-node/--remove-node`), on a serving
    /// leader. Idempotent, so a command cut short can simply be run again: adding a voter
    /// that is one already (at the same address, or a founder) or removing one that is
    /// gone answers with the voters at once. Otherwise the change is proposed and answered
    /// once committed (see [`Replica::answer_committed_members`]).
    pub(super) fn change_members(
        &mut self,
        now: Instant,
        change: &MemberChange,
        reply: ReplyTo,
        output: &mut Output<ReplyTo>,
    ) {
        if self.raft.membership_index() > self.raft.commit_index() {
            // The latest voters are not committed: neither "already done" nor a new
            // change can be answered yet.
            let refusal = self.membership_refusal(raft::ProposeError::MembershipChangePending);
            output.replies.push((reply, refusal.into()));
            return;
        }
        let membership = self.raft.membership();
        let change = match change {
            MemberChange::Add { .. } if membership.voters.len() >= VOTERS_MAX => {
                let refusal = ProtocolError::new(
                    ErrorCode::BadMembership,
                    format!(
                        "shard {}: a group has at most {VOTERS_MAX} voters",
                        self.shard
                    ),
                );
                output.replies.push((reply, refusal.into()));
                return;
            }
            MemberChange::Add { node, address } => {
                if membership.contains(*node) {
                    let response = match membership.addresses.get(node) {
                        Some(known) if known != address => ProtocolError::new(
                            ErrorCode::BadMembership,
                            format!(
                                "shard {}: node {node} is a voter already, at {known}; remove it \
                                 before adding it at another address",
                                self.shard
                            ),
                        )
                        .into(),
                        _ => self.members_response(),
                    };
                    output.replies.push((reply, response));
                    return;
                }
                if !self.peers.reachable(*node, address) {
                    // Added at an address where nothing answers as that node, it would
                    // count in majorities it cannot join: a group at exactly a majority
                    // could commit neither this change nor the removal undoing it.
                    let refusal = ProtocolError::new(
                        ErrorCode::MembershipChangePending,
                        format!(
                            "shard {}: node {node} does not answer at {address} yet; retry \
                             (is it running with --join, --peer-listen and --listen as given?)",
                            self.shard
                        ),
                    );
                    output.replies.push((reply, refusal.into()));
                    return;
                }
                raft::MembershipChange::AddVoter(*node, Some(address.clone()))
            }
            MemberChange::Remove { node } => {
                if !membership.contains(*node) {
                    output.replies.push((reply, self.members_response()));
                    return;
                }
                raft::MembershipChange::RemoveVoter(*node)
            }
        };
        let mut proposed = self.raft.propose_membership(change.clone());
        if proposed == Err(raft::ProposeError::SnapshotNeeded)
            && output.log.is_empty()
            && self.raft.applied_index() == self.raft.last_index()
        {
            // Nothing decided this turn and nothing in flight: the table is the applied
            // state, so the snapshot a new voter will need can be written now.
            self.take_snapshot(now);
            proposed = self.raft.propose_membership(change);
        }
        match proposed {
            Ok(index) => self.members_pending.push((index, self.raft.term(), reply)),
            Err(error) => {
                let refusal = self.membership_refusal(error);
                output.replies.push((reply, refusal.into()));
            }
        }
    }

    /// The answer to a membership request: the shard's committed voters.
    fn members_response(&self) -> Response {
        let committed = self.raft.membership_at(self.raft.commit_index());
        Response::Members(MembersReply {
            shard: self.shard as u16,
            voters: committed.voters.iter().copied().collect(),
        })
    }

    fn membership_refusal(&mut self, error: raft::ProposeError) -> ProtocolError {
        use raft::ProposeError::*;
        match error {
            MembershipChangePending => ProtocolError::new(
                ErrorCode::MembershipChangePending,
                format!(
                    "shard {}: an earlier membership change is not committed yet; retry",
                    self.shard
                ),
            ),
            SnapshotNeeded => {
                self.snapshot_wanted = true;
                ProtocolError::new(
                    ErrorCode::MembershipChangePending,
                    format!(
                        "shard {}: writing the snapshot a new voter needs first; retry",
                        self.shard
                    ),
                )
            }
            InvalidMembershipChange(why) => ProtocolError::new(
                ErrorCode::BadMembership,
                format!("shard {}: {why}", self.shard),
            ),
            NotLeader { .. } | TransferInProgress | LeaderNotReady => self.not_serving(),
        }
    }

    /// Answers the membership changes whose index is committed: with the voters if the
    /// committed entry there is theirs, else (a new leader's entry replaced it while this
    /// node was deposed: found by the simulation, seed 1624) with an unknown outcome, to be
    /// asked again.
    fn answer_committed_members(&mut self) {
        let committed = self.raft.commit_index();
        if !self
            .members_pending
            .iter()
            .any(|(index, _, _)| *index <= committed)
        {
            return;
        }
        let response = self.members_response();
        let (done, waiting) = std::mem::take(&mut self.members_pending)
            .into_iter()
            .partition(|(index, _, _)| *index <= committed);
        self.members_pending = waiting;
        for (index, term, reply) in done {
            if self.raft.term_at(index) == Some(term) {
                reply.send(response.clone());
            } else {
                reply.send(self.unknown_outcome().into());
            }
        }
    }

    /// Ends a turn: proposes the turn's decisions, sends the replies that need nothing,
    /// drives the Raft core until it has nothing to do, then sends the replies whose
    /// decisions are committed.
    pub(super) fn finish_turn(&mut self, now: Instant, output: &mut Output<ReplyTo>) {
        self.publish();
        if !output.log.is_empty() {
            let commands = std::mem::take(&mut output.log);
            match self.raft.propose(commands) {
                Ok(last) => {
                    let seq = self.table.commit_seq();
                    self.table.begin_commit(seq + 1);
                    self.proposals.push_back((seq, last));
                }
                Err(_) => {
                    // Deposed earlier in this turn: these decisions are void (the table is
                    // rebuilt from the committed log when the ready says so). (A transfer
                    // starts only after this proposal: `hand_over_if_wanted`.)
                    let unknown = self.unknown_outcome();
                    for (_, reply, _) in output.durable_replies.drain(..) {
                        reply.send(unknown.clone().into());
                    }
                }
            }
        }
        self.hand_over_if_wanted();
        self.send_or_confirm(&mut output.replies);
        self.drive(now, output);
        self.send_committed(output);
        self.snapshot_if_due(now);
        self.forget_applied_entries();
        self.publish();
        send(&mut output.replies);
    }

    /// A one-voter group keeps no applied entries in memory (no follower will ask for
    /// them, and its table is never rebuilt once it serves), in batches to amortize.
    fn forget_applied_entries(&mut self) {
        const FORGET_BATCH_ENTRIES: u64 = 1024;
        let membership = self.raft.membership();
        let alone = membership.is_only(self.raft.id());
        let applied = self.raft.applied_index();
        if alone && self.is_serving() && applied >= self.raft.first_index() + FORGET_BATCH_ENTRIES {
            self.raft.forget_applied_entries(applied);
        }
    }

    /// Sends replies at once on a single node (or when not serving: they are refusals);
    /// in a cluster a serving leader's replies wait for a ReadIndex confirmation.
    fn send_or_confirm(&mut self, replies: &mut Vec<(ReplyTo, Response)>) {
        // Alone only as the one voter: a leader that removed itself from a group of two
        // must still have the other confirm it leads.
        let membership = self.raft.membership();
        let alone = membership.is_only(self.raft.id());
        if replies.is_empty() || alone || !self.serving {
            send(replies);
            return;
        }
        if !self.is_serving() {
            // Decided by a table this turn deposed: nothing it said can be confirmed.
            let unknown = self.unknown_outcome();
            for (reply, _) in replies.drain(..) {
                reply.send(unknown.clone().into());
            }
            return;
        }
        let context = self.next_read_context;
        self.next_read_context += 1;
        match self.raft.read_index(context) {
            Ok(()) => self
                .confirmations
                .push_back((context, std::mem::take(replies))),
            Err(error) => unreachable!("a serving leader asks for a read index: {error}"),
        }
    }

    /// Sends the replies whose confirmation came back (a later one covers earlier ones).
    fn confirmed(&mut self, context: u64) {
        while self
            .confirmations
            .front()
            .is_some_and(|(waiting, _)| *waiting <= context)
        {
            let (_, mut replies) = self.confirmations.pop_front().expect("checked above");
            send(&mut replies);
        }
    }

    /// Fails every reply still waiting for a confirmation or a membership commit.
    pub(super) fn fail_unconfirmed(&mut self, error: &ProtocolError) {
        for (_, _, reply) in self.members_pending.drain(..) {
            reply.send(error.clone().into());
        }
        for (_, replies) in self.confirmations.drain(..) {
            for (reply, _) in replies {
                reply.send(error.clone().into());
            }
        }
    }

    /// Does the core's I/O until it has none left (or the disk fails).
    fn drive(&mut self, now: Instant, output: &mut Output<ReplyTo>) {
        while self.unpersisted.is_none() && self.raft.has_ready() {
            // First, so a voter added by this ready's entries has a link for its appends.
            self.report_membership();
            let mut ready = self.raft.ready();
            let mut messages = std::mem::take(&mut ready.messages);
            self.attach_snapshot_data(&mut messages);
            self.peers.send(self.shard, messages);
            let snapshot = ready.snapshot.take();
            if snapshot.is_some() && self.serving {
                // Deposed by a leader far ahead: answer this table's waiters and pending
                // replies before the snapshot replaces it.
                self.depose(output);
            }
            let mut unpersisted = Unpersisted {
                ready,
                snapshot,
                appended: false,
            };
            match self.persist(&mut unpersisted) {
                Ok(()) => self.after_persist(unpersisted.ready, output),
                Err(error) => {
                    self.storage_failed(&error, output);
                    self.unpersisted = Some(unpersisted);
                    return;
                }
            }
            if self.raft.is_leader() && !self.serving {
                self.start_serving_if_caught_up(now);
            }
            self.report_membership();
        }
    }

    /// Tells the peer transport when the group's latest membership changed (an entry
    /// appended or overwritten, a snapshot installed), so it connects to added voters.
    fn report_membership(&mut self) {
        let membership = self.raft.membership();
        if self.reported_membership.as_ref() != Some(membership) {
            self.peers.members_changed(self.shard, membership);
            self.reported_membership = Some(membership.clone());
        }
    }

    /// The core keeps only a snapshot's position; its bytes are the snapshot file, read
    /// when a follower needs them.
    /// A snapshot that cannot be read is not sent (the core sends it again later).
    /// The file is read once per snapshot and kept (a leader resends a snapshot every
    /// election timeout while a follower's transfer is unfinished, to each follower that
    /// needs it), until the next snapshot replaces it.
    fn attach_snapshot_data(&mut self, messages: &mut Vec<raft::Message<Command>>) {
        let index = self.wal.snapshot_index();
        if self
            .snapshot_bytes
            .as_ref()
            .is_some_and(|(cached, _)| *cached != index)
        {
            self.snapshot_bytes = None;
        }
        messages.retain_mut(|message| {
            let raft::MessageBody::InstallSnapshot { snapshot } = &mut message.body else {
                return true;
            };
            if !snapshot.data.is_empty() {
                return true;
            }
            self.snapshot_bytes_idle_ticks = 0;
            if let Some((_, bytes)) = &self.snapshot_bytes {
                snapshot.data = bytes.clone();
                return true;
            }
            match self.wal.snapshot_bytes() {
                Ok(bytes) => {
                    let bytes = Bytes::from(bytes);
                    snapshot.data = bytes.clone();
                    self.snapshot_bytes = Some((index, bytes));
                    true
                }
                Err(error) => {
                    tracing::warn!(shard = self.shard, %error, "cannot read the snapshot a follower needs; it is sent again later");
                    false
                }
            }
        });
    }

    fn persist(&mut self, pending: &mut Unpersisted) -> Result<(), WalError> {
        if let Some(snapshot) = &pending.snapshot {
            self.install_snapshot(snapshot)?;
            pending.snapshot = None;
        }
        let ready = &pending.ready;
        if let Some(state) = ready.hard_state {
            if (state.term, state.vote) != (self.stored.term, self.stored.vote) {
                raft_state::store(self.storage.as_ref(), &self.dir, &state)?;
                self.stored = state;
            }
        }
        if !pending.appended {
            if let Some(first) = ready.entries.first() {
                if first.index < self.wal.next_index() {
                    self.wal.truncate_from(first.index)?;
                }
                for entry in &ready.entries {
                    self.wal.append(entry);
                }
            }
            pending.appended = true;
        }
        if self.wal.has_pending() {
            self.wal.commit()?;
            self.counters.wal_commits_total += 1;
        }
        Ok(())
    }

    fn after_persist(&mut self, ready: Ready<Command>, output: &mut Output<ReplyTo>) {
        self.peers.send(self.shard, ready.messages_after_persist);
        if !self.serving {
            // A follower (or a leader not serving yet) applies what was decided, leases
            // counted from the origin until it serves; a serving leader decided it itself
            // (its table is ahead), or, deposed in this ready, rebuilds its table below.
            let mut restorer = Restorer::counting_from_origin(&mut self.table);
            for index in ready.committed.clone() {
                let entry = self.raft.log_entry(index).expect("a committed entry");
                restorer.apply_entry(entry);
            }
        }
        for read in &ready.read_states {
            self.confirmed(read.context);
        }
        if let Some(role) = ready.role {
            self.role_changed(role, output);
        }
        self.raft.advance();
    }

    fn role_changed(&mut self, role: RoleChange, output: &mut Output<ReplyTo>) {
        tracing::debug!(shard = self.shard, ?role, "raft role");
        if !self.serving {
            return;
        }
        let leading = role.role == Role::Leader;
        if leading && role.term == self.serving_term {
            return;
        }
        if leading && role.term == self.serving_term + 1 {
            // Re-elected in the next term with nobody leading in between (a new term for
            // the fencing tokens): the table is still exactly this node's decisions.
            self.serve_in_term(role.term);
            return;
        }
        self.depose(output);
        self.rebuild_table();
    }

    /// Deposed: what this table decided but never committed, its ephemeral locks and its
    /// waiters end here (the caller replaces the table).
    fn depose(&mut self, output: &mut Output<ReplyTo>) {
        self.serving = false;
        let error = self.not_serving();
        self.table.fail_all_waiters(&error, output);
        let unknown = self.unknown_outcome();
        for (_, reply, _) in output.durable_replies.drain(..) {
            output.replies.push((reply, unknown.clone().into()));
        }
        // A leader that removed itself steps down once the change commits: that answer
        // is known.
        self.answer_committed_members();
        self.fail_unconfirmed(&unknown);
        self.proposals.clear();
    }

    /// The answer to a request decided by a leader that lost its leadership before the
    /// decision was committed or confirmed.
    fn unknown_outcome(&self) -> ProtocolError {
        ProtocolError::new(
            ErrorCode::NotLeader,
            format!(
                "{}; the request may or may not have taken effect",
                self.not_serving().message
            ),
        )
    }

    /// A leader serves once every entry before its term is applied: then its table holds
    /// every decision of earlier leaders, and every lease starts in full now. (The table
    /// is the applied state, leases counted from the origin, since this node last stopped
    /// serving: no rebuild, which would keep a large shard from its heartbeats.)
    fn start_serving_if_caught_up(&mut self, now: Instant) {
        if self.raft.applied_index() < self.raft.term_start_index() {
            return;
        }
        let started = Instant::now();
        self.table.restart_leases(now);
        tracing::info!(
            shard = self.shard,
            keys = self.table.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "taking over: every inherited lease starts in full now"
        );
        self.serve_in_term(self.raft.term());
    }

    /// Grants from now on carry `term` in their tokens.
    fn serve_in_term(&mut self, term: u64) {
        self.stalled = term > EPOCH_MAX;
        if self.stalled {
            tracing::error!(
                shard = self.shard,
                term,
                "the Raft term no longer fits in a fencing token; refusing requests"
            );
        } else {
            self.table.set_tokens(TokenSource::new(term));
        }
        self.serving = true;
        self.serving_term = term;
        tracing::debug!(shard = self.shard, term, "serving as leader");
    }

    /// Replaces the table with the newest snapshot plus the applied log, leases counted
    /// from the origin (see [`Restorer::counting_from_origin`]).
    fn rebuild_table(&mut self) {
        let started = Instant::now();
        self.table = self.applied_table(None);
        tracing::info!(
            shard = self.shard,
            keys = self.table.len(),
            applied_index = self.raft.applied_index(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "rebuilt the lock table from the snapshot and the log"
        );
    }

    /// A table holding exactly the applied state: the newest snapshot plus the applied
    /// log, every lease counted from `now` (`None`: from the table clock's origin).
    fn applied_table(&self, now: Option<Instant>) -> LockTable<ReplyTo> {
        let mut table = LockTable::new(TokenSource::new(1), self.waiters_per_lock_max);
        let mut restorer = match now {
            Some(now) => Restorer::new(&mut table, now),
            None => Restorer::counting_from_origin(&mut table),
        };
        match self.wal.load_snapshot() {
            Ok(Some(snapshot)) => restorer.restore(&snapshot),
            Ok(None) => {}
            Err(error) => {
                // It was written atomically and read at start; losing it now loses locks.
                panic!(
                    "shard {}: cannot read back the snapshot: {error}",
                    self.shard
                )
            }
        }
        for index in self.wal.snapshot_index() + 1..=self.raft.applied_index() {
            let entry = self.raft.log_entry(index).unwrap_or_else(|| {
                panic!(
                    "shard {}: entry {index} is not in memory (a one-voter group forgets applied entries and never rebuilds)",
                    self.shard
                )
            });
            restorer.apply_entry(entry);
        }
        table
    }

    /// A snapshot from the leader replaces this node's log and table. A disk error leaves
    /// both as they were, to be tried again (storing it again is harmless); until then
    /// nothing after it is written or acknowledged.
    fn install_snapshot(&mut self, snapshot: &raft::Snapshot) -> Result<(), WalError> {
        // Checked in `step` before the core took it.
        let decoded = Snapshot::decode(&snapshot.data).unwrap_or_else(|| {
            panic!(
                "shard {}: the leader sent a snapshot that does not decode",
                self.shard
            )
        });
        self.wal.install_snapshot(&decoded)?;
        let mut table = LockTable::new(TokenSource::new(1), self.waiters_per_lock_max);
        Restorer::counting_from_origin(&mut table).restore(&decoded);
        self.table = table;
        Ok(())
    }

    /// Replies wait for their commit sequence; Raft says which entries are committed.
    fn send_committed(&mut self, output: &mut Output<ReplyTo>) {
        self.answer_committed_members();
        let committed = self.raft.commit_index();
        let mut committed_seq = None;
        while let Some(&(seq, index)) = self.proposals.front() {
            if index > committed {
                break;
            }
            committed_seq = Some(seq);
            self.proposals.pop_front();
        }
        if let Some(seq) = committed_seq {
            self.table.commit_durable(seq);
            send_committed(&mut output.durable_replies, seq);
        }
    }

    /// A write or sync failed: the replies that waited for it cannot promise anything.
    fn storage_failed(&mut self, error: &WalError, output: &mut Output<ReplyTo>) {
        self.counters.wal_errors_total += 1;
        tracing::error!(shard = self.shard, %error, "cannot write the write-ahead log; refusing requests until it can");
        let failed = ProtocolError::new(
            ErrorCode::StorageFailed,
            format!(
                "the write-ahead log could not be written ({error}); the request was not \
                 acknowledged and may or may not take effect"
            ),
        );
        for (_, reply, _) in output.durable_replies.drain(..) {
            reply.send(failed.clone().into());
        }
        self.publish();
    }

    /// After a failed write: writes again; an error means the log is still not writable.
    pub(super) fn retry_storage(
        &mut self,
        now: Instant,
        output: &mut Output<ReplyTo>,
    ) -> Result<(), ProtocolError> {
        let Some(mut pending) = self.unpersisted.take() else {
            return Ok(());
        };
        match self.persist(&mut pending) {
            Ok(()) => {
                tracing::info!(shard = self.shard, "the write-ahead log is writable again");
                self.after_persist(pending.ready, output);
                self.drive(now, output);
                self.send_committed(output);
                Ok(())
            }
            Err(error) => {
                self.counters.wal_errors_total += 1;
                self.unpersisted = Some(pending);
                self.publish();
                Err(ProtocolError::new(
                    ErrorCode::StorageUnavailable,
                    format!(
                        "this shard cannot write its write-ahead log ({error}); try again later"
                    ),
                ))
            }
        }
    }

    /// While the log cannot be written, replies about undurable decisions cannot go as
    /// they are.
    pub(super) fn refuse_pending(&mut self, error: &ProtocolError, output: &mut Output<ReplyTo>) {
        for (_, reply, _) in output.durable_replies.drain(..) {
            output.replies.push((reply, error.clone().into()));
        }
        self.publish();
        send(&mut output.replies);
    }

    /// Writes a snapshot of the persistent locks once enough was logged since the last (or
    /// a membership change asked for one), when the table holds exactly the applied state.
    fn snapshot_if_due(&mut self, now: Instant) {
        if !(self.wal.wants_snapshot() || self.snapshot_wanted) || self.unpersisted.is_some() {
            return;
        }
        self.take_snapshot(now);
    }

    /// Writes a snapshot of the applied state, unless there is nothing new to cover or the
    /// applied state cannot be had now (entries forgotten and the table ahead).
    fn take_snapshot(&mut self, now: Instant) {
        let applied = self.raft.applied_index();
        if applied <= self.wal.snapshot_index() {
            return;
        }
        if self.raft.membership_at(applied).voters.is_empty() {
            // A node that joined (`--join`) does not know the membership before the entry
            // that added it (the founders' is configuration, not in the log): a snapshot
            // there would say the group has no voters, and so would every node installing
            // it. The log waits for that entry instead (simulation seed 944).
            return;
        }
        // A table that does not serve is the applied state (leases counted from the
        // origin); so is a serving leader's with nothing in flight. A busy leader's table
        // is ahead: replay the applied state aside.
        let locks = if !self.serving {
            self.table.persistent_locks_counted_from_origin()
        } else if applied == self.raft.last_index() {
            self.table.persistent_locks(now)
        } else if self.raft.first_index() <= self.wal.snapshot_index() + 1 {
            self.applied_table(Some(now)).persistent_locks(now)
        } else {
            return; // entries forgotten (one voter) and the table ahead: next turn
        };
        let term = self.raft.term_at(applied).expect("an applied entry");
        let membership = self.raft.membership_at(applied).clone();
        let snapshot = Snapshot {
            last_index: applied,
            last_term: term,
            membership: membership.clone(),
            locks,
        };
        match self.wal.compact(&snapshot) {
            Ok(()) => {
                self.counters.snapshots_total += 1;
                self.snapshot_wanted = false;
                self.raft.compact(raft::Snapshot {
                    meta: SnapshotMeta {
                        index: applied,
                        term,
                        membership,
                    },
                    data: Bytes::new(),
                });
            }
            Err(error) => {
                tracing::warn!(%error, "cannot write a snapshot; the log keeps growing until one succeeds")
            }
        }
    }

    fn publish(&self) {
        self.stats
            .publish(self.table.len(), &self.table.stats(), &self.counters);
        let raft = &self.raft;
        self.stats.publish_raft([
            u64::from(raft.is_leader()),
            raft.leader().unwrap_or(0),
            raft.term(),
            raft.commit_index(),
            raft.applied_index(),
            raft.last_index(),
        ]);
        if !raft.is_leader() {
            self.stats.handing_over.store(false, Ordering::Relaxed);
        }
    }
}
