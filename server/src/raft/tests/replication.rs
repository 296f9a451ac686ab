//! Log replication: §5.3 (Log Matching, conflict resolution), §5.4.2 (committing entries
//! from previous terms), §10.2.1 (the leader's own flush in parallel) and flow control.

use super::super::{Entry, EntryKind, Message, MessageBody, Role};
use super::{Command, Network};

#[test]
fn log_matching_every_node_stores_the_same_entries_and_applies_them_in_order() {
    let mut network = Network::new(3);
    network.elect(1);
    network.propose(1, &[1, 2, 3]);
    network.propose(1, &[4]);
    // Followers learn the commit index from the next heartbeat.
    network.tick_all(1);
    let log = network.stored_log(1);
    for id in 2..=3 {
        assert_eq!(network.stored_log(id), log);
        assert_eq!(network.applied_commands(id), vec![1, 2, 3, 4]);
    }
}

#[test]
fn log_matching_a_follower_refuses_an_append_whose_previous_entry_it_lacks() {
    let mut network = Network::new(3);
    network.elect(1);
    let term = network.raft(1).term();
    let last = network.raft(2).last_index();
    network.raft_mut(2).step(Message {
        from: 1,
        to: 2,
        term,
        body: MessageBody::Append {
            prev_index: last + 5,
            prev_term: term,
            entries: vec![Entry {
                index: last + 6,
                term,
                kind: EntryKind::Command(Command(9)),
            }],
            commit: 0,
        },
    });
    network.process_ready_of(2);
    assert_eq!(network.raft(2).last_index(), last, "nothing appended");
    let answer = network.queue.pop_back().expect("an answer");
    assert!(matches!(
        answer.body,
        MessageBody::AppendResponse { success: false, index, hint_index, .. }
            if index == last + 5 && hint_index == last
    ));
}

#[test]
fn log_matching_conflicting_uncommitted_entries_are_replaced_by_the_new_leaders() {
    // Phase 1: leader 1 appends entries nobody else gets, then loses leadership.
    let mut network = Network::new(3);
    network.elect(1);
    network.isolate(1);
    network
        .raft_mut(1)
        .propose(vec![Command(100), Command(101)])
        .expect("still thinks it leads");
    network.process_ready();
    // Phase 2: 2 is elected and commits its own entries.
    network.elect(2);
    network.propose(2, &[200]);
    // Phase 3: 1 rejoins; its uncommitted entries give way to the leader's log.
    network.heal();
    network.tick_all(3);
    assert_eq!(network.stored_log(1), network.stored_log(2));
    assert_eq!(network.applied_commands(1), vec![200]);
    assert_eq!(network.raft(1).role(), Role::Follower);
}

#[test]
fn conflict_hints_catch_up_a_divergent_follower_in_few_round_trips() {
    // Node 3 collects 50 uncommitted entries of a dead term while 1 and 2 commit 50 more.
    let mut network = Network::new(3);
    network.elect(3);
    network.isolate(3);
    let stale: Vec<Command> = (0..50).map(Command).collect();
    network
        .raft_mut(3)
        .propose(stale)
        .expect("still thinks it leads");
    network.process_ready();
    network.elect(1);
    for value in 0..50 {
        network.propose(1, &[1000 + value]);
    }
    network.heal();
    network.delivered.clear();
    network.tick_all(3);
    assert_eq!(network.stored_log(3), network.stored_log(1));
    let rejections = network
        .delivered
        .get("append_response")
        .copied()
        .unwrap_or(0);
    assert!(
        rejections < 20,
        "{rejections} append responses for one divergent follower"
    );
}

#[test]
fn leader_commits_entries_of_earlier_terms_only_with_one_of_its_own() {
    // §5.4.2 / Figure 8: counting replicas of an earlier term's entry is not enough.
    let mut network = Network::new(3);
    network.elect(1);
    let old_term = network.raft(1).term();
    network.isolate(1);
    network
        .raft_mut(1)
        .propose(vec![Command(5)])
        .expect("still thinks it leads");
    network.process_ready();
    let old_index = network.raft(1).last_index();
    network.tick(1, 20); // check-quorum: 1 steps down within two rounds
    assert_eq!(network.raft(1).role(), Role::Follower);
    network.queue.clear();
    // Node 1 comes back and wins a later term (2 and 3 have shorter logs).
    network.heal();
    network.expire_leases();
    network.raft_mut(1).campaign_now();
    network.process_ready();
    // Deliver only the vote traffic, keeping the appends of the new term from arriving.
    let mut guard = 0;
    while network.raft(1).role() != Role::Leader && guard < 100 {
        guard += 1;
        let Some(message) = network.queue.pop_front() else {
            break;
        };
        if matches!(message.body, MessageBody::Append { .. }) {
            continue;
        }
        let to = message.to;
        network.raft_mut(to).step(message);
        network.process_ready_of(to);
    }
    assert_eq!(network.raft(1).role(), Role::Leader);
    assert!(network.raft(1).term() > old_term);
    network.queue.clear();
    // Node 2 reports it stored the old entry (but not the new term's no-op).
    let term = network.raft(1).term();
    network.raft_mut(1).step(Message {
        from: 2,
        to: 1,
        term,
        body: MessageBody::AppendResponse {
            success: true,
            index: old_index,
            hint_index: 0,
            hint_term: 0,
        },
    });
    network.process_ready_of(1);
    assert!(
        network.raft(1).commit_index() < old_index,
        "an earlier term's entry committed by counting"
    );
    // Once an entry of the current term is stored by a quorum, both commit.
    network.queue.clear();
    network.tick_all(2);
    assert!(network.raft(1).commit_index() > old_index);
    assert_eq!(network.applied_commands(1), vec![5]);
}

#[test]
fn a_follower_acknowledges_entries_only_after_they_are_persisted() {
    let mut network = Network::new(3);
    network.elect(1);
    network
        .raft_mut(1)
        .propose(vec![Command(1)])
        .expect("leader");
    let ready = network.raft_mut(1).ready();
    // The leader sends its appends before its own flush (§10.2.1)...
    assert!(ready
        .messages
        .iter()
        .any(|m| matches!(m.body, MessageBody::Append { .. })));
    assert_eq!(ready.entries.len(), 1);
    let append = ready
        .messages
        .into_iter()
        .find(|m| m.to == 2)
        .expect("append");
    network
        .nodes
        .get_mut(&1)
        .expect("node")
        .storage
        .write(&ready.entries);
    network.raft_mut(1).advance();
    // ...and the follower's acknowledgement waits for the follower's flush.
    network.raft_mut(2).step(append);
    let ready = network.raft_mut(2).ready();
    assert!(ready.must_sync());
    assert_eq!(ready.entries.len(), 1);
    assert!(ready.messages.is_empty());
    assert!(matches!(
        ready.messages_after_persist[0].body,
        MessageBody::AppendResponse { success: true, .. }
    ));
    network.raft_mut(2).advance();
}

#[test]
fn flow_control_bounds_the_appends_in_flight_to_a_follower() {
    let mut network = Network::with_config(3, |config| config.appends_in_flight_max = 2);
    network.elect(1);
    network.cut_link(2, 1); // acknowledgements from 2 are lost
    network.queue.clear();
    for value in 0..10 {
        network
            .raft_mut(1)
            .propose(vec![Command(value)])
            .expect("leader");
        network.process_ready_of(1);
    }
    let appends_to_2 = network
        .queue
        .iter()
        .filter(|m| m.to == 2 && matches!(m.body, MessageBody::Append { .. }))
        .count();
    assert_eq!(appends_to_2, 2);
    // Node 3 acknowledges; the leader still commits with it.
    network.stabilize();
    assert_eq!(network.raft(1).commit_index(), network.raft(1).last_index());
}

#[test]
fn appends_are_split_by_the_byte_limit() {
    let mut network = Network::with_config(2, |config| config.append_bytes_max = 100);
    network.elect(1);
    network.queue.clear();
    let commands: Vec<Command> = (0..20).map(Command).collect();
    network.raft_mut(1).propose(commands).expect("leader");
    network.process_ready_of(1);
    let sizes: Vec<usize> = network
        .queue
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::Append { entries, .. } => Some(entries.len()),
            _ => None,
        })
        .collect();
    assert!(sizes.len() > 1, "one message of {sizes:?}");
    assert!(sizes.iter().all(|&n| n * 25 <= 100));
    network.stabilize();
    assert_eq!(network.raft(1).commit_index(), network.raft(1).last_index());
}

#[test]
fn a_restarted_follower_catches_up_from_its_stored_log() {
    let mut network = Network::new(3);
    network.elect(1);
    network.propose(1, &[1, 2]);
    network.restart(3);
    network.propose(1, &[3]);
    network.tick_all(2);
    assert_eq!(network.stored_log(3), network.stored_log(1));
    assert_eq!(network.applied_commands(3), vec![1, 2, 3]);
}
