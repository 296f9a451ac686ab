//! Leader election (§5.2, §5.4.1) with pre-vote (§9.6) and check-quorum, and the term
//! rules every message goes through first.
//!
//! Invariants:
//! - the term never decreases, and a node votes at most once per term (the vote is on
//!   disk before the answer leaves: votes go out after the persist step);
//! - a vote goes only to a candidate whose log is at least as up to date (§5.4.1);
//! - with check-quorum, a node that heard from a leader within `election_ticks` neither
//!   votes nor raises its term for another candidate, unless the leader itself asked for
//!   the election (leadership transfer); so a node cut off and back cannot depose a live
//!   leader.

use super::message::{Entry, EntryKind, Message, MessageBody, NodeId, Payload};
use super::node::Raft;
use super::progress::Progress;
use super::ready::Role;

/// How an election starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Campaign {
    /// Ask for pre-votes; campaign for real only if a quorum would vote.
    PreElection,
    /// Raise the term and ask for votes.
    Election,
    /// As `Election`, at the leader's request: voters set aside their leader lease.
    Transfer,
}

impl<C: Payload> Raft<C> {
    pub(super) fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.promotable() && self.election_elapsed >= self.randomized_election_ticks {
            self.election_elapsed = 0;
            self.campaign_now();
        }
    }

    /// Starts an election now (with a pre-vote first if configured), as when the election
    /// timeout passes: a one-voter cluster calls this at start to lead at once.
    pub fn campaign_now(&mut self) {
        self.assert_not_in_ready();
        if self.config.pre_vote {
            self.campaign(Campaign::PreElection);
        } else {
            self.campaign(Campaign::Election);
        }
    }

    pub(super) fn campaign(&mut self, kind: Campaign) {
        if !self.promotable() || self.role == Role::Leader {
            return;
        }
        let pre_vote = kind == Campaign::PreElection;
        let transfer = kind == Campaign::Transfer;
        if pre_vote {
            self.role = Role::PreCandidate;
            self.leader = None;
            self.reset_role_state();
        } else {
            let term = self.term + 1;
            self.become_follower(term, None);
            self.role = Role::Candidate;
            self.vote = self.id;
        }
        self.votes.insert(self.id, true);
        if self
            .membership()
            .has_quorum(|id| self.votes.get(&id) == Some(&true))
        {
            self.won_election();
            return;
        }
        let last_log_index = self.log.last_index();
        let last_log_term = self.log.last_term();
        for peer in self.peers() {
            if pre_vote {
                let message = Message {
                    from: self.id,
                    to: peer,
                    term: self.term + 1,
                    body: MessageBody::PreVote {
                        last_log_index,
                        last_log_term,
                    },
                };
                self.messages.push(message);
            } else {
                // After the persist step: the term and the vote for ourselves must be on
                // disk before anyone counts on them.
                let body = MessageBody::Vote {
                    last_log_index,
                    last_log_term,
                    transfer,
                };
                self.send_after_persist(peer, body);
            }
        }
    }

    fn won_election(&mut self) {
        match self.role {
            Role::PreCandidate => self.campaign(Campaign::Election),
            Role::Candidate => self.become_leader(),
            role => unreachable!("won an election as {role:?}"),
        }
    }

    fn become_leader(&mut self) {
        assert_eq!(self.role, Role::Candidate);
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.reset_role_state();
        self.sync_progress_with_membership();
        for progress in self.progress.values_mut() {
            progress.recent_active = true;
        }
        let index = self.log.last_index() + 1;
        self.term_start_index = index;
        self.log.append([Entry {
            index,
            term: self.term,
            kind: EntryKind::Noop,
        }]);
        self.broadcast_append();
    }

    /// Makes the progress map hold exactly the other voters.
    pub(super) fn sync_progress_with_membership(&mut self) {
        let peers = self.peers();
        self.progress.retain(|id, _| peers.contains(id));
        let next = self.log.last_index() + 1;
        for peer in peers {
            self.progress.entry(peer).or_insert_with(|| {
                let mut progress = Progress::new(next);
                progress.recent_active = true;
                progress
            });
        }
    }

    /// A message with a higher term arrived. Returns whether to go on handling it.
    pub(super) fn accept_higher_term(&mut self, message: &Message<C>) -> bool {
        let transfer = matches!(message.body, MessageBody::Vote { transfer: true, .. });
        let is_vote_request = matches!(
            message.body,
            MessageBody::PreVote { .. } | MessageBody::Vote { .. }
        );
        if is_vote_request && !transfer && self.in_leader_lease() {
            return false;
        }
        match message.body {
            // Asking costs nothing: a pre-vote never changes anyone's term.
            MessageBody::PreVote { .. } => {}
            // Granted pre-votes carry the term we would campaign in; a late one must not
            // raise our term.
            MessageBody::PreVoteResponse { granted: true } => {}
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. } => {
                self.become_follower(message.term, Some(message.from))
            }
            _ => self.become_follower(message.term, None),
        }
        true
    }

    /// Whether this node heard from a live leader recently enough to ignore elections.
    fn in_leader_lease(&self) -> bool {
        self.config.check_quorum
            && self.leader.is_some()
            && self.election_elapsed < self.config.election_ticks
    }

    /// A message from an older term: tell the sender where the cluster is, where that
    /// helps it (a deposed leader still sending appends, a pre-candidate asking).
    pub(super) fn answer_stale(&mut self, message: &Message<C>) {
        match message.body {
            MessageBody::Append { .. } | MessageBody::Heartbeat { .. } => {
                let body = MessageBody::AppendResponse {
                    success: false,
                    index: 0,
                    hint_index: 0,
                    hint_term: 0,
                };
                self.send(message.from, body);
            }
            MessageBody::PreVote { .. } => {
                self.send(
                    message.from,
                    MessageBody::PreVoteResponse { granted: false },
                );
            }
            _ => {}
        }
    }

    pub(super) fn step_current_term(&mut self, message: Message<C>) {
        let from = message.from;
        match message.body {
            MessageBody::PreVote {
                last_log_index,
                last_log_term,
            } => self.answer_vote_request(message.term, from, last_log_index, last_log_term, true),
            MessageBody::Vote {
                last_log_index,
                last_log_term,
                ..
            } => self.answer_vote_request(message.term, from, last_log_index, last_log_term, false),
            MessageBody::PreVoteResponse { granted } if self.role == Role::PreCandidate => {
                self.count_vote(from, granted)
            }
            MessageBody::VoteResponse { granted } if self.role == Role::Candidate => {
                self.count_vote(from, granted)
            }
            MessageBody::PreVoteResponse { .. } | MessageBody::VoteResponse { .. } => {}
            MessageBody::TimeoutNow if self.role == Role::Follower => {
                self.campaign(Campaign::Transfer)
            }
            MessageBody::TimeoutNow => {}
            body if self.role == Role::Leader => self.step_leader(from, body),
            body => self.step_follower(from, body),
        }
    }

    fn answer_vote_request(
        &mut self,
        term: u64,
        from: NodeId,
        last_log_index: u64,
        last_log_term: u64,
        pre_vote: bool,
    ) {
        let can_vote = self.vote == from
            || (self.vote == 0 && self.leader.is_none())
            || (pre_vote && term > self.term);
        let granted = can_vote && self.log.is_up_to_date(last_log_index, last_log_term);
        if pre_vote {
            let term = if granted { term } else { self.term };
            self.messages.push(Message {
                from: self.id,
                to: from,
                term,
                body: MessageBody::PreVoteResponse { granted },
            });
            return;
        }
        if granted {
            self.vote = from;
            self.election_elapsed = 0;
        }
        self.send_after_persist(from, MessageBody::VoteResponse { granted });
    }

    fn count_vote(&mut self, from: NodeId, granted: bool) {
        self.votes.insert(from, granted);
        let membership = self.membership();
        if membership.has_quorum(|id| self.votes.get(&id) == Some(&true)) {
            self.won_election();
        } else if membership.has_quorum(|id| self.votes.get(&id) == Some(&false)) {
            let term = self.term;
            self.become_follower(term, None);
        }
    }
}
