//! Leader election: §5.2 (Election Safety), §5.4.1 (the election restriction), §9.6
//! (pre-vote) and check-quorum.

use super::super::{Message, MessageBody, Role};
use super::Network;

#[test]
fn election_safety_a_candidate_with_a_quorum_leads_and_others_follow_its_term() {
    // Phase 1: node 1 campaigns in a 3-node cluster.
    let mut network = Network::new(3);
    network.elect(1);
    // Phase 2: one leader, everyone in its term and following it.
    assert_eq!(network.leaders(), vec![1]);
    let term = network.raft(1).term();
    for id in 2..=3 {
        assert_eq!(network.raft(id).term(), term);
        assert_eq!(network.raft(id).leader(), Some(1));
        assert_eq!(network.raft(id).role(), Role::Follower);
    }
}

#[test]
fn election_safety_ticking_alone_elects_exactly_one_leader() {
    let mut network = Network::new(5);
    for _ in 0..50 {
        network.tick_all(1);
        if !network.leaders().is_empty() {
            break;
        }
    }
    assert_eq!(network.leaders().len(), 1, "one leader after the timeouts");
}

#[test]
fn election_safety_a_node_votes_once_per_term() {
    let mut network = Network::with_config(3, |config| config.pre_vote = false);
    // Node 3 votes for 1 in term 1.
    network.raft_mut(1).campaign_now();
    network.process_ready();
    let votes: Vec<Message<_>> = network.queue.drain(..).collect();
    for vote in votes.into_iter().filter(|m| m.to == 3) {
        network.raft_mut(3).step(vote);
    }
    network.process_ready_of(3);
    network.queue.clear();
    // Node 2 asks node 3 for term 1 too: refused.
    network.raft_mut(2).campaign_now();
    network.process_ready_of(2);
    assert_eq!(network.raft(2).term(), 1);
    let request = network
        .queue
        .drain(..)
        .find(|m| m.to == 3)
        .expect("a vote request");
    network.raft_mut(3).step(request);
    network.process_ready_of(3);
    let answer = network.queue.pop_front().expect("an answer");
    assert_eq!(answer.body, MessageBody::VoteResponse { granted: false });
}

#[test]
fn election_restriction_a_candidate_missing_committed_entries_cannot_win() {
    // Phase 1: 1 leads and commits entries on 1 and 2 while 3 is cut off.
    let mut network = Network::new(3);
    network.elect(1);
    network.isolate(3);
    network.propose(1, &[10, 11]);
    network.heal();
    // Phase 2: 3 (stale log) campaigns after 1 stops; 2 refuses it (§5.4.1).
    network.isolate(1);
    network.tick(3, 100);
    network.stabilize();
    assert_ne!(network.raft(3).role(), Role::Leader);
    // Phase 3: 2, whose log is complete, can win.
    network.elect(2);
    assert_eq!(network.applied_commands(2), vec![10, 11]);
}

#[test]
fn pre_vote_a_node_cut_off_does_not_raise_the_cluster_term_when_it_returns() {
    let mut network = Network::new(3);
    network.elect(1);
    let term = network.raft(1).term();
    // Phase 1: node 3 cut off times out again and again: pre-votes fail, term unchanged.
    network.isolate(3);
    network.tick(3, 200);
    assert_eq!(network.raft(3).term(), term);
    // Phase 2: back in the cluster, the leader and its term survive.
    network.heal();
    network.tick_all(3);
    assert_eq!(network.leaders(), vec![1]);
    assert_eq!(network.raft(1).term(), term);
}

#[test]
fn check_quorum_a_leader_cut_off_steps_down_and_the_majority_elects_another() {
    let mut network = Network::new(3);
    network.elect(1);
    network.isolate(1);
    for _ in 0..100 {
        network.tick_all(1);
        if network.raft(1).role() != Role::Leader && network.leaders().len() == 1 {
            break;
        }
    }
    assert_ne!(network.raft(1).role(), Role::Leader, "stepped down");
    let leaders = network.leaders();
    assert_eq!(leaders.len(), 1);
    assert_ne!(leaders[0], 1);
}

#[test]
fn check_quorum_a_follower_with_a_live_leader_ignores_vote_requests() {
    let mut network = Network::with_config(3, |config| config.pre_vote = false);
    network.elect(1);
    let term = network.raft(1).term();
    // Node 3 cannot hear the leader and campaigns; 2 hears the leader and ignores it.
    network.cut_link(1, 3);
    network.tick(3, 100);
    network.stabilize();
    assert_eq!(network.raft(2).term(), term, "node 2 kept its term");
    assert_eq!(network.leaders(), vec![1]);
}

#[test]
fn a_single_voter_leads_at_once_and_commits_on_its_own_flush() {
    let mut network = Network::new(1);
    network.elect(1);
    let last = network.propose(1, &[7]);
    assert_eq!(network.raft(1).commit_index(), last);
    assert_eq!(network.applied_commands(1), vec![7]);
}

#[test]
fn a_restarted_node_keeps_its_term_and_vote() {
    let mut network = Network::with_config(3, |config| config.pre_vote = false);
    network.elect(1);
    let term = network.raft(2).term();
    network.restart(2);
    assert_eq!(network.raft(2).term(), term);
    assert_eq!(network.nodes[&2].storage.hard_state.vote, 1);
}
