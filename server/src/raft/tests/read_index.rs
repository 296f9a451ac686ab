//! Linearizable reads by ReadIndex (§6.4): the leader confirms with a quorum that it still
//! leads before it serves a read at its commit index.

use super::Network;

#[test]
fn a_read_is_released_once_a_quorum_confirms_leadership() {
    let mut network = Network::new(3);
    network.elect(1);
    network.propose(1, &[1]);
    network.raft_mut(1).read_index(42).expect("leader");
    network.process_ready_of(1);
    assert!(
        network.nodes[&1].read_states.is_empty(),
        "not before a quorum answers"
    );
    network.stabilize();
    let reads = &network.nodes[&1].read_states;
    assert_eq!(reads.len(), 1);
    assert_eq!(reads[0].context, 42);
    assert_eq!(reads[0].index, network.raft(1).commit_index());
}

#[test]
fn a_leader_cut_off_from_its_quorum_never_confirms_a_read() {
    let mut network = Network::new(3);
    network.elect(1);
    network.isolate(1);
    network
        .raft_mut(1)
        .read_index(7)
        .expect("still thinks it leads");
    network.stabilize();
    network.tick(1, 3);
    network.stabilize();
    assert!(network.nodes[&1].read_states.is_empty());
}

#[test]
fn a_read_on_a_follower_is_refused_with_the_leader() {
    let mut network = Network::new(3);
    network.elect(1);
    let error = network.raft_mut(2).read_index(1).unwrap_err();
    assert_eq!(
        error,
        super::super::ProposeError::NotLeader { leader: Some(1) }
    );
}

#[test]
fn a_new_leaders_read_waits_for_its_first_entry() {
    let mut network = Network::new(3);
    network.elect(1);
    network.propose(1, &[1]);
    network.elect(2);
    network.raft_mut(2).read_index(9).expect("leader");
    network.stabilize();
    let reads = &network.nodes[&2].read_states;
    assert_eq!(reads.len(), 1);
    assert!(reads[0].index >= network.raft(2).term_start_index());
}

#[test]
fn a_single_voter_confirms_reads_at_once() {
    let mut network = Network::new(1);
    network.elect(1);
    network.raft_mut(1).read_index(3).expect("leader");
    network.process_ready_of(1);
    assert_eq!(network.nodes[&1].read_states.len(), 1);
}
