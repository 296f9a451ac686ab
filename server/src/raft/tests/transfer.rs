//! Leadership transfer (dissertation §3.10).

use super::super::{ProposeError, Role};
use super::{Command, Network};

#[test]
fn leadership_moves_to_an_up_to_date_follower() {
    let mut network = Network::new(3);
    network.elect(1);
    network.propose(1, &[1]);
    let term = network.raft(1).term();
    network.raft_mut(1).transfer_leadership(2).expect("leader");
    network.stabilize();
    assert_eq!(network.leaders(), vec![2]);
    assert_eq!(network.raft(2).term(), term + 1);
    assert_eq!(network.raft(1).role(), Role::Follower);
    network.propose(2, &[2]);
    network.tick_all(1);
    assert_eq!(network.applied_commands(1), vec![1, 2]);
}

#[test]
fn a_lagging_target_is_caught_up_first_and_proposals_wait() {
    let mut network = Network::new(3);
    network.elect(1);
    network.isolate(3);
    network.propose(1, &[1, 2, 3]);
    network.heal();
    network.raft_mut(1).transfer_leadership(3).expect("leader");
    assert_eq!(
        network.raft_mut(1).propose(vec![Command(4)]),
        Err(ProposeError::TransferInProgress)
    );
    network.stabilize();
    assert_eq!(network.leaders(), vec![3]);
    assert_eq!(network.stored_log(3)[..4], network.stored_log(1)[..4]);
}

#[test]
fn a_transfer_to_an_unreachable_node_is_abandoned_after_an_election_timeout() {
    let mut network = Network::new(3);
    network.elect(1);
    network.isolate(3);
    network.raft_mut(1).transfer_leadership(3).expect("leader");
    network.tick(1, 10);
    network.stabilize();
    assert_eq!(network.leaders(), vec![1]);
    network.propose(1, &[5]);
}

#[test]
fn the_transfer_candidate_is_the_best_follower_heard_from_lately() {
    let mut network = Network::new(3);
    network.elect(1);
    network.propose(1, &[1]);
    network.stabilize();
    // Equal logs: the lower id.
    assert_eq!(network.raft(1).transfer_candidate(), Some(2));
    // Node 2 stops answering; after a check-quorum round only node 3 was heard from.
    network.isolate(2);
    network.tick(1, 11);
    network.stabilize();
    network.tick(1, 2);
    network.stabilize();
    assert_eq!(network.leaders(), vec![1]);
    assert_eq!(network.raft(1).transfer_candidate(), Some(3));
    assert_eq!(network.raft(2).transfer_candidate(), None, "not a leader");
}
