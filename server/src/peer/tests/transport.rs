//! The transport carrying messages: both ways, between three nodes, to a node that starts
//! late, a burst past one frame's limit, and snapshots larger than a chunk.

use std::collections::BTreeMap;

use super::loopback::*;
use super::*;
use crate::raft::NodeId;
use crate::shard::PeerOutbox;

/// The commits each (from, shard) delivered, in delivery order.
fn commits_by_sender(
    deliveries: &[(ShardId, Message<Command>)],
) -> BTreeMap<(NodeId, ShardId), Vec<u64>> {
    let mut by_sender: BTreeMap<_, Vec<u64>> = BTreeMap::new();
    for (shard, message) in deliveries {
        by_sender
            .entry((message.from, *shard))
            .or_default()
            .push(commit_of(message));
    }
    by_sender
}

/// Each node sends `per_shard` heartbeats on every shard to every other node, the commit
/// naming the shard and the position: `shard * 100 + position`.
fn send_to_every_peer(nodes: &[TestNode], shard_count: u16, per_shard: u64) {
    for node in nodes {
        for shard in 0..shard_count {
            let messages = (0..per_shard)
                .flat_map(|position| {
                    let commit = u64::from(shard) * 100 + position;
                    nodes
                        .iter()
                        .filter(|peer| peer.id != node.id)
                        .map(move |peer| heartbeat_message(node.id, peer.id, commit))
                })
                .collect();
            node.outbox.send(usize::from(shard), messages);
        }
    }
}

/// What every node must have received from every other: per shard, the commits in order.
fn expected_from_peers(
    node: NodeId,
    nodes: u64,
    shard_count: u16,
    per_shard: u64,
) -> BTreeMap<(NodeId, ShardId), Vec<u64>> {
    (1..=nodes)
        .filter(|&from| from != node)
        .flat_map(|from| (0..shard_count).map(move |shard| (from, shard)))
        .map(|(from, shard)| {
            let commits = (0..per_shard)
                .map(|position| u64::from(shard) * 100 + position)
                .collect();
            ((from, shard), commits)
        })
        .collect()
}

async fn exchange(node_count: u64) {
    const SHARDS: u16 = 4;
    const PER_SHARD: u64 = 5;
    // Phase 1: the nodes start and connect to each other.
    let mut nodes = cluster(node_count, SHARDS).await;
    all_connected(&nodes).await;

    // Phase 2: every node sends on every shard to every other node.
    send_to_every_peer(&nodes, SHARDS, PER_SHARD);

    // Phase 3: every node receives all of it, in order per sender and shard.
    let from_each = usize::from(SHARDS) * PER_SHARD as usize;
    let expected_total = from_each * (node_count as usize - 1);
    for node in &mut nodes {
        let received = node.receive(expected_total).await;
        assert_eq!(
            commits_by_sender(&received),
            expected_from_peers(node.id, node_count, SHARDS, PER_SHARD)
        );
        assert!(node.received_nothing());
    }

    // Phase 4: the counters agree, and nothing was dropped.
    for node in &nodes {
        assert_eq!(node.stat("peer_messages_sent_total"), expected_total as u64);
        assert_eq!(
            node.stat("peer_messages_received_total"),
            expected_total as u64
        );
        assert_eq!(node.stat("peer_messages_dropped_total"), 0);
        assert_eq!(node.stat("peer_connections_inbound"), node_count - 1);
    }
    shutdown(nodes).await;
}

#[tokio::test]
async fn two_nodes_exchange_messages_of_several_shards_both_ways() {
    exchange(2).await;
}

#[tokio::test]
async fn three_nodes_each_reach_both_others() {
    exchange(3).await;
}

#[tokio::test]
async fn the_outbox_names_each_peers_client_address() {
    let nodes = cluster(2, 1).await;
    assert_eq!(
        nodes[0].outbox.client_address(2).as_deref(),
        Some("client-of-2:8002")
    );
    assert_eq!(nodes[0].outbox.client_address(1), None, "not its own peer");
    assert_eq!(nodes[0].outbox.client_address(9), None);
    shutdown(nodes).await;
}

#[tokio::test]
async fn a_peer_that_starts_late_is_connected_to_once_it_is_up() {
    // Phase 1: node 1 starts; node 2's port is closed.
    let address_1 = closed_address().await;
    let address_2 = closed_address().await;
    let addresses = [(1, address_1), (2, address_2)];
    let node_1 = start(config(1, CLUSTER, 2, address_1, &addresses), None).await;

    // Phase 2: what node 1 sends to node 2 meanwhile is dropped and counted.
    node_1.outbox.send(
        0,
        (0..5)
            .map(|commit| heartbeat_message(1, 2, commit))
            .collect(),
    );
    assert_eq!(node_1.stat("peer_messages_dropped_total"), 5);

    // Phase 3: node 2 starts on its port; node 1 connects to it.
    let mut node_2 = start(config(2, CLUSTER, 2, address_2, &addresses), None).await;
    wait_until("node 1 connects to node 2", || {
        node_1.stat("peer_connections_outbound") == 1
    })
    .await;

    // Phase 4: what node 1 sends now arrives, and only that.
    node_1.outbox.send(
        1,
        (100..103)
            .map(|commit| heartbeat_message(1, 2, commit))
            .collect(),
    );
    let received = node_2.receive(3).await;
    let commits: Vec<u64> = received
        .iter()
        .map(|(_, message)| commit_of(message))
        .collect();
    assert_eq!(commits, [100, 101, 102]);
    assert!(received.iter().all(|(shard, _)| *shard == 1));
    assert!(node_2.received_nothing());
    shutdown(vec![node_1, node_2]).await;
}

#[tokio::test]
async fn a_burst_past_one_frames_limit_is_split_and_delivered_in_order_per_shard() {
    // Phase 1: two nodes, connected, that send snapshots of up to 32 MiB whole.
    let mut nodes = cluster_with_chunks(2, 2, SNAPSHOT_CHUNK_BYTES_MAX).await;
    all_connected(&nodes).await;

    // Phase 2: without yielding, so one drain takes it all: three snapshots of 25 MiB
    // between heartbeats on two shards (75 MiB, more than one 64 MiB frame).
    let snapshot = |data: Bytes| MessageBody::InstallSnapshot {
        snapshot: Snapshot {
            meta: SnapshotMeta {
                index: 7,
                term: 1,
                membership: Membership::new([1, 2]),
            },
            data,
        },
    };
    let message = |body| Message {
        from: 1,
        to: 2,
        term: 1,
        body,
    };
    let data = Bytes::from(vec![0x5a; 25 << 20]);
    let outbox = &nodes[0].outbox;
    for position in 0..3 {
        let shard = position % 2;
        outbox.send(
            shard,
            vec![
                heartbeat_message(1, 2, position as u64),
                message(snapshot(data.clone())),
            ],
        );
    }
    outbox.send(0, vec![heartbeat_message(1, 2, 10)]);
    outbox.send(1, vec![heartbeat_message(1, 2, 11)]);

    // Phase 3: node 2 receives the rest in order per shard, from two frames.
    let received = nodes[1].receive(8).await;
    let order = |shard: ShardId| -> Vec<String> {
        received
            .iter()
            .filter(|(delivered_shard, _)| *delivered_shard == shard)
            .map(|(_, message)| match &message.body {
                MessageBody::Heartbeat { commit, .. } => format!("heartbeat {commit}"),
                MessageBody::InstallSnapshot { snapshot } => {
                    assert_eq!(snapshot.data, data);
                    "snapshot".to_string()
                }
                body => panic!("unexpected {}", body.name()),
            })
            .collect()
    };
    assert_eq!(
        order(0),
        [
            "heartbeat 0",
            "snapshot",
            "heartbeat 2",
            "snapshot",
            "heartbeat 10"
        ]
    );
    assert_eq!(order(1), ["heartbeat 1", "snapshot", "heartbeat 11"]);
    assert!(nodes[1].received_nothing());
    assert_eq!(nodes[0].stat("peer_frames_sent_total"), 2);
    assert_eq!(nodes[0].stat("peer_messages_sent_total"), 8);
    assert_eq!(nodes[0].stat("peer_snapshot_chunks_sent_total"), 0);
    assert_eq!(nodes[0].stat("peer_messages_dropped_total"), 0);
    shutdown(nodes).await;
}

/// An InstallSnapshot of shard `shard` from node 1 to node 2 with `data`.
fn snapshot_message(index: u64, data: Bytes) -> Message<Command> {
    Message {
        from: 1,
        to: 2,
        term: 3,
        body: MessageBody::InstallSnapshot {
            snapshot: Snapshot {
                meta: SnapshotMeta {
                    index,
                    term: 2,
                    membership: Membership::new([1, 2]),
                },
                data,
            },
        },
    }
}

#[tokio::test]
async fn a_snapshot_larger_than_a_chunk_arrives_whole_while_other_messages_pass_it() {
    const CHUNK: usize = 64 << 10;
    // Phase 1: two nodes that send snapshots in chunks of 64 KiB.
    let mut nodes = cluster_with_chunks(2, 2, CHUNK).await;
    all_connected(&nodes).await;

    // Phase 2: node 1 sends shard 0 a snapshot of 4.5 MiB (72 chunks, in as many turns of
    // its writer), and heartbeats of both shards before it, right after it and while it is
    // being written.
    let data: Bytes = (0..CHUNK * 72 + CHUNK / 2)
        .map(|position| (position % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let outbox = &nodes[0].outbox;
    outbox.send(1, vec![heartbeat_message(1, 2, 100)]);
    outbox.send(
        0,
        vec![
            heartbeat_message(1, 2, 0),
            snapshot_message(40, data.clone()),
            heartbeat_message(1, 2, 1),
        ],
    );
    for commit in 101..110 {
        outbox.send(1, vec![heartbeat_message(1, 2, commit)]);
        tokio::task::yield_now().await;
    }

    // Phase 3: node 2 receives the snapshot once, whole, and every heartbeat in the order
    // of its shard; the heartbeat sent right after the snapshot passed it.
    let received = nodes[1].receive(13).await;
    let order = |shard: ShardId| -> Vec<String> {
        received
            .iter()
            .filter(|(delivered_shard, _)| *delivered_shard == shard)
            .map(|(_, message)| match &message.body {
                MessageBody::Heartbeat { commit, .. } => format!("heartbeat {commit}"),
                MessageBody::InstallSnapshot { snapshot } => {
                    assert_eq!(message, &snapshot_message(40, data.clone()));
                    format!("snapshot {}", snapshot.meta.index)
                }
                body => panic!("unexpected {}", body.name()),
            })
            .collect()
    };
    assert_eq!(order(0), ["heartbeat 0", "heartbeat 1", "snapshot 40"]);
    let shard_1: Vec<String> = (100..110)
        .map(|commit| format!("heartbeat {commit}"))
        .collect();
    assert_eq!(order(1), shard_1);
    assert!(nodes[1].received_nothing());

    // Phase 4: the counters tell chunks from messages.
    assert_eq!(nodes[0].stat("peer_snapshot_chunks_sent_total"), 73);
    assert_eq!(nodes[1].stat("peer_snapshot_chunks_received_total"), 73);
    assert_eq!(nodes[0].stat("peer_messages_sent_total"), 13);
    assert_eq!(nodes[1].stat("peer_messages_received_total"), 13);
    assert_eq!(nodes[0].stat("peer_messages_dropped_total"), 0);
    shutdown(nodes).await;
}
