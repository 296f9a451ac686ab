//! Log replication (§5.3), commitment (§5.4.2), snapshots to lagging followers (§7),
//! linearizable reads (§6.4, ReadIndex) and leadership transfer (dissertation §3.10).
//!
//! Invariants:
//! - every append carries `prev_index`/`prev_term` and a follower accepts it only if its
//!   log holds that entry (Log Matching); there is no other path into a follower's log
//!   except a snapshot;
//! - a leader commits by counting replicas only for entries of its own term; earlier ones
//!   commit with them (§5.4.2);
//! - a follower acknowledges entries only after they are on disk (acknowledgements go out
//!   after the persist step), and the leader counts itself only for what it has flushed;
//! - appends to one follower are bounded: one at a time while probing, at most
//!   `appends_in_flight_max` messages of at most `append_bytes_max` bytes while streaming.

use super::message::{EntryKind, MessageBody, NodeId, Payload, Snapshot};
use super::node::{ProposeError, Raft};
use super::progress::ProgressState;
use super::ready::{ReadState, Role};

impl<C: Payload> Raft<C> {
    pub(super) fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.config.election_ticks {
            self.election_elapsed = 0;
            if self.config.check_quorum && !self.quorum_recently_active() {
                let term = self.term;
                self.become_follower(term, None);
                return;
            }
        }
        if let Some(target) = self.transfer_target {
            self.transfer_elapsed += 1;
            let timed_out = self.transfer_elapsed >= self.config.election_ticks;
            if timed_out || !self.progress.contains_key(&target) {
                self.transfer_target = None;
            }
        }
        let election_ticks = self.config.election_ticks;
        let mut retry = Vec::new();
        for (&id, progress) in self.progress.iter_mut() {
            // A lost snapshot, lost appends or lost answers: probe again from what we know.
            if progress.tick_stalled(election_ticks) {
                retry.push(id);
            }
        }
        for id in retry {
            self.send_append(id);
        }
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
        }
    }

    /// Whether a quorum was heard from since the last check; starts the next round.
    fn quorum_recently_active(&mut self) -> bool {
        let id = self.id;
        let progress = &self.progress;
        let active = self.membership().has_quorum(|voter| {
            voter == id || progress.get(&voter).is_some_and(|p| p.recent_active)
        });
        for progress in self.progress.values_mut() {
            progress.recent_active = false;
        }
        active
    }

    /// The follower best placed to take over (a leader only): among those heard from
    /// since the last check-quorum round (all, if none was), the one with the longest
    /// matching log, the lowest id on a tie.
    pub fn transfer_candidate(&self) -> Option<NodeId> {
        if self.role != Role::Leader {
            return None;
        }
        let active = self
            .progress
            .values()
            .any(|progress| progress.recent_active);
        self.progress
            .iter()
            .filter(|(_, progress)| progress.recent_active || !active)
            .max_by_key(|&(&id, progress)| (progress.match_index, std::cmp::Reverse(id)))
            .map(|(&id, _)| id)
    }

    /// Moves leadership to `target`: no new proposals meanwhile; once the target's log is
    /// complete it is told to campaign at once. Abandoned after `election_ticks`.
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), ProposeError> {
        self.assert_not_in_ready();
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if target == self.id {
            return Ok(());
        }
        if !self.progress.contains_key(&target) {
            return Err(ProposeError::InvalidMembershipChange(
                "the transfer target is not a voter",
            ));
        }
        self.transfer_target = Some(target);
        self.transfer_elapsed = 0;
        if self.progress[&target].match_index == self.log.last_index() {
            self.send(target, MessageBody::TimeoutNow);
        } else {
            // Catch the target up now rather than trust appends that may be lost.
            let progress = self.progress.get_mut(&target).expect("a voter");
            if progress.state == ProgressState::Replicate {
                progress.become_probe();
            }
            self.send_appends_while_open(target);
        }
        Ok(())
    }

    /// The connection to `id` failed: whatever was in flight may be lost, so probe again
    /// from what is known instead of waiting for an election timeout.
    pub fn report_unreachable(&mut self, id: NodeId) {
        self.assert_not_in_ready();
        if let Some(progress) = self.progress.get_mut(&id) {
            if progress.state == ProgressState::Replicate {
                progress.become_probe();
            }
        }
    }

    pub(super) fn step_leader(&mut self, from: NodeId, body: MessageBody<C>) {
        let Some(progress) = self.progress.get_mut(&from) else {
            return; // not (or no longer) a voter
        };
        progress.recent_active = true;
        match body {
            MessageBody::AppendResponse {
                success: true,
                index,
                ..
            } => self.append_accepted(from, index),
            MessageBody::AppendResponse {
                success: false,
                index,
                hint_index,
                hint_term,
            } => {
                let (next_match, _) = self.log.hint_at_or_before(hint_index, hint_term);
                let progress = self.progress.get_mut(&from).expect("checked above");
                if progress.rejected(index, next_match + 1) {
                    self.send_append(from);
                }
            }
            MessageBody::HeartbeatResponse { context } => {
                let progress = self.progress.get_mut(&from).expect("checked above");
                progress.probe_sent = false;
                if progress.match_index < self.log.last_index() {
                    self.send_append(from);
                }
                if context != 0 {
                    self.read_acknowledged(from, context);
                }
            }
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. } => {
                panic!("two leaders in term {}: {} and {from}", self.term, self.id)
            }
            _ => {}
        }
    }

    fn append_accepted(&mut self, from: NodeId, index: u64) {
        let last_index = self.log.last_index();
        let progress = self.progress.get_mut(&from).expect("a voter");
        if !progress.acknowledged(index) {
            return;
        }
        match progress.state {
            ProgressState::Probe => progress.become_replicate(),
            ProgressState::Snapshot { index: snapshot } if progress.match_index >= snapshot => {
                progress.become_replicate()
            }
            _ => {}
        }
        let caught_up = progress.match_index == last_index;
        self.maybe_commit();
        if self.transfer_target == Some(from) && caught_up {
            self.send(from, MessageBody::TimeoutNow);
        }
        self.send_appends_while_open(from);
    }

    pub(super) fn step_follower(&mut self, from: NodeId, body: MessageBody<C>) {
        match body {
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                self.heard_from_leader(from);
                self.accept_append(from, prev_index, prev_term, entries, commit);
            }
            MessageBody::Heartbeat { commit, context } => {
                self.heard_from_leader(from);
                self.log.commit_to(commit.min(self.log.last_index()));
                self.send(from, MessageBody::HeartbeatResponse { context });
            }
            MessageBody::InstallSnapshot { snapshot } => {
                self.heard_from_leader(from);
                self.install_snapshot(from, snapshot);
            }
            _ => {}
        }
    }

    fn heard_from_leader(&mut self, leader: NodeId) {
        if self.role != Role::Follower {
            let term = self.term;
            self.become_follower(term, Some(leader));
        }
        self.leader = Some(leader);
        self.election_elapsed = 0;
    }

    fn accept_append(
        &mut self,
        leader: NodeId,
        prev_index: u64,
        prev_term: u64,
        entries: Vec<super::message::Entry<C>>,
        commit: u64,
    ) {
        if prev_index < self.log.committed() {
            // Everything up to the commit index matches any leader's log already.
            let index = self.log.committed();
            self.acknowledge(leader, index);
            return;
        }
        let last_before = self.log.last_index();
        match self.log.try_append(prev_index, prev_term, entries) {
            Some((last_new, truncated_from)) => {
                let appended_from = match truncated_from {
                    Some(index) => {
                        self.log_truncated(index);
                        index
                    }
                    None => last_before + 1,
                };
                for index in appended_from..=self.log.last_index() {
                    let entry = self.log.entry(index).expect("just appended");
                    if let EntryKind::Membership(membership) = &entry.kind {
                        let membership = membership.clone();
                        self.membership_appended(index, membership);
                    }
                }
                self.log.commit_to(commit.min(last_new));
                self.acknowledge(leader, last_new);
            }
            None => {
                let (hint_index, hint_term) = self.log.hint_at_or_before(prev_index, prev_term);
                let body = MessageBody::AppendResponse {
                    success: false,
                    index: prev_index,
                    hint_index,
                    hint_term,
                };
                self.send(leader, body);
            }
        }
    }

    /// Tells the leader the log matches up to `index`, once what this turn wrote is on disk.
    fn acknowledge(&mut self, leader: NodeId, index: u64) {
        let body = MessageBody::AppendResponse {
            success: true,
            index,
            hint_index: 0,
            hint_term: 0,
        };
        self.send_after_persist(leader, body);
    }

    fn install_snapshot(&mut self, leader: NodeId, snapshot: Snapshot) {
        let meta = &snapshot.meta;
        if meta.index <= self.log.committed() {
            let index = self.log.committed();
            self.acknowledge(leader, index);
            return;
        }
        if self.log.matches(meta.index, meta.term) {
            // The log already holds it: commit instead of replacing state.
            self.log.commit_to(meta.index);
            self.acknowledge(leader, meta.index);
            return;
        }
        self.log.restore(&snapshot);
        self.memberships = vec![(meta.index, meta.membership.clone())];
        let index = meta.index;
        self.snapshot = Some(snapshot.clone());
        self.snapshot_to_install = Some(snapshot);
        self.acknowledge(leader, index);
    }

    /// Commits the highest index a quorum has stored, if it is of this term (§5.4.2).
    pub(super) fn maybe_commit(&mut self) {
        let id = self.id;
        let persisted = self.log.persisted();
        let progress = &self.progress;
        let index = self.membership().quorum_index(|voter| {
            if voter == id {
                persisted
            } else {
                progress.get(&voter).map_or(0, |p| p.match_index)
            }
        });
        if index <= self.log.committed() || self.log.term(index) != Some(self.term) {
            return;
        }
        self.log.commit_to(index);
        self.release_confirmed_reads();
        let removed = self.memberships.last().expect("a membership").0 <= index
            && !self.membership().contains(self.id);
        if removed {
            // Our removal is committed: stop leading; the others elect a new leader.
            let term = self.term;
            self.become_follower(term, None);
        }
    }

    pub(super) fn broadcast_append(&mut self) {
        for peer in self.peers() {
            self.send_appends_while_open(peer);
        }
    }

    /// Sends appends to `to` until its window is full or it has everything.
    fn send_appends_while_open(&mut self, to: NodeId) {
        for _ in 0..self.config.appends_in_flight_max {
            let Some(progress) = self.progress.get(&to) else {
                return;
            };
            let has_more = progress.next_index <= self.log.last_index();
            let probing = progress.state == ProgressState::Probe;
            if progress.is_paused(self.config.appends_in_flight_max) || !(has_more || probing) {
                return;
            }
            if !self.send_append(to) || probing {
                return;
            }
        }
    }

    /// Sends `to` the entries from its next index (or a snapshot if they are compacted).
    /// Returns whether a message went out.
    pub(super) fn send_append(&mut self, to: NodeId) -> bool {
        let Some(progress) = self.progress.get(&to) else {
            return false;
        };
        if progress.is_paused(self.config.appends_in_flight_max) {
            return false;
        }
        let prev_index = progress.next_index - 1;
        let Some(prev_term) = self.log.term(prev_index) else {
            self.send_snapshot(to);
            return true;
        };
        let entries = if prev_index < self.log.last_index() {
            self.log
                .entries_from(prev_index + 1, self.config.append_bytes_max)
        } else {
            Vec::new()
        };
        let last = prev_index + entries.len() as u64;
        let progress = self.progress.get_mut(&to).expect("checked above");
        if progress.state == ProgressState::Replicate && entries.is_empty() {
            return false;
        }
        progress.sent(last);
        let commit = self.log.committed();
        self.send(
            to,
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            },
        );
        true
    }

    fn send_snapshot(&mut self, to: NodeId) {
        let snapshot = self
            .snapshot
            .clone()
            .expect("a compacted log has a snapshot");
        let progress = self.progress.get_mut(&to).expect("a voter");
        progress.become_snapshot(snapshot.meta.index);
        self.send(to, MessageBody::InstallSnapshot { snapshot });
    }

    pub(super) fn broadcast_heartbeat(&mut self) {
        let context = self.pending_reads.back().map_or(0, |read| read.context);
        let commit = self.log.committed();
        let heartbeats: Vec<(NodeId, u64)> = self
            .progress
            .iter()
            .map(|(&id, progress)| (id, commit.min(progress.match_index)))
            .collect();
        for (id, commit) in heartbeats {
            self.send(id, MessageBody::Heartbeat { commit, context });
        }
    }

    fn read_acknowledged(&mut self, from: NodeId, context: u64) {
        if let Some(read) = self
            .pending_reads
            .iter_mut()
            .find(|read| read.context == context)
        {
            read.acknowledged.insert(from);
        }
        self.release_confirmed_reads();
    }

    /// Hands out every pending read up to the newest one a quorum confirmed (a later
    /// confirmation covers every earlier read).
    pub(super) fn release_confirmed_reads(&mut self) {
        let membership = self.membership();
        let Some(confirmed) = self
            .pending_reads
            .iter()
            .rposition(|read| membership.has_quorum(|id| read.acknowledged.contains(&id)))
        else {
            return;
        };
        for read in self.pending_reads.drain(..=confirmed) {
            self.read_states.push(ReadState {
                context: read.context,
                index: read.index,
            });
        }
    }
}
