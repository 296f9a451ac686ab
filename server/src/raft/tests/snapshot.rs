//! Log compaction and InstallSnapshot (§7).

use super::super::{MessageBody, Role};
use super::{snapshot_of, Network};

#[test]
fn a_follower_behind_the_compacted_log_gets_the_snapshot_then_the_rest() {
    // Phase 1: 3 is away while 1 commits and compacts.
    let mut network = Network::new(3);
    network.elect(1);
    network.isolate(3);
    network.propose(1, &[1, 2, 3]);
    let snapshot = snapshot_of(&network, 1);
    network.raft_mut(1).compact(snapshot.clone());
    network.propose(1, &[4]);
    // Phase 2: 3 returns, gets the snapshot, then entry 4.
    network.heal();
    network.delivered.clear();
    // The appends lost while 3 was away are given up after an election timeout.
    network.tick_all(12);
    assert_eq!(network.delivered.get("install_snapshot"), Some(&1));
    let node = &network.nodes[&3];
    assert_eq!(node.storage.snapshot.as_ref(), Some(&snapshot));
    assert_eq!(network.applied_commands(3), vec![4]);
    assert_eq!(
        network.raft(3).commit_index(),
        network.raft(1).commit_index()
    );
    assert_eq!(network.raft(3).role(), Role::Follower);
}

#[test]
fn a_lost_snapshot_is_sent_again_after_an_election_timeout() {
    let mut network = Network::new(3);
    network.elect(1);
    network.isolate(3);
    network.propose(1, &[1]);
    let snapshot = snapshot_of(&network, 1);
    network.raft_mut(1).compact(snapshot);
    // Snapshots reach 3 but its answers are lost: the leader sends it again.
    network.heal();
    network.cut_link(3, 1);
    network.delivered.clear();
    for _ in 0..25 {
        network.tick_all(1);
    }
    let sent = network
        .delivered
        .get("install_snapshot")
        .copied()
        .unwrap_or(0);
    assert!(sent >= 2, "the snapshot was sent {sent} times");
    network.heal();
    network.tick_all(25);
    assert_eq!(
        network.raft(3).commit_index(),
        network.raft(1).commit_index()
    );
    assert_eq!(network.leaders(), vec![1]);
}

#[test]
fn a_restart_from_a_snapshot_keeps_the_log_after_it() {
    let mut network = Network::new(1);
    network.elect(1);
    network.propose(1, &[1, 2]);
    let snapshot = snapshot_of(&network, 1);
    network.raft_mut(1).compact(snapshot.clone());
    // The state machine would store the snapshot; the harness stores it with the log.
    let node = network.nodes.get_mut(&1).expect("node");
    node.storage.snapshot = Some(snapshot.clone());
    node.storage
        .entries
        .retain(|e| e.index > snapshot.meta.index);
    network.propose(1, &[3]);
    network.restart(1);
    assert_eq!(network.raft(1).last_index(), snapshot.meta.index + 1);
    network.elect(1);
    assert_eq!(network.applied_commands(1), vec![3]);
    // The compacted node still answers snapshots it is asked about.
    let _ = MessageBody::<super::Command>::TimeoutNow.name();
}
