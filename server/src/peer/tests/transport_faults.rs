//! The transport against the wrong peer: refused handshakes, a peer that goes away, and a
//! peer (played by the test over a raw connection) that sends what it must not, or stops
//! in the middle of a snapshot.

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use super::loopback::*;
use super::*;
use crate::raft::NodeId;
use crate::shard::PeerOutbox;

#[tokio::test]
async fn a_handshake_of_another_cluster_or_shard_count_is_refused_and_delivers_nothing() {
    for (cluster_id, shard_count, reason) in [
        (CLUSTER + 1, 4, "cluster id differs"),
        (CLUSTER, 8, "shard count differs"),
    ] {
        let (logs, _guard) = Logs::capture();
        // Phase 1: node 1 and node 2 disagree on the cluster id or the shard count.
        let (listener_1, listener_2) = (loopback_listener().await, loopback_listener().await);
        let addresses = [
            (1, listener_1.local_addr().unwrap()),
            (2, listener_2.local_addr().unwrap()),
        ];
        let mut node_1 = start(
            config(1, CLUSTER, 4, addresses[0].1, &addresses),
            Some(listener_1),
        )
        .await;
        let mut node_2 = start(
            config(2, cluster_id, shard_count, addresses[1].1, &addresses),
            Some(listener_2),
        )
        .await;

        // Phase 2: each refuses the other, more than once as they retry.
        wait_until("both nodes refuse twice", || {
            node_1.stat("peer_handshakes_refused_total") >= 2
                && node_2.stat("peer_handshakes_refused_total") >= 2
        })
        .await;

        // Phase 3: nothing was connected, so what they send is dropped, never delivered.
        node_1.outbox.send(0, vec![heartbeat_message(1, 2, 1)]);
        node_2.outbox.send(0, vec![heartbeat_message(2, 1, 1)]);
        assert!(node_1.received_nothing() && node_2.received_nothing());
        for node in [&node_1, &node_2] {
            assert_eq!(node.stat("peer_connections_outbound"), 0);
            assert_eq!(node.stat("peer_messages_dropped_total"), 1);
        }

        // Phase 4: the reason is logged by the refusing node and by the refused one.
        let text = logs.text();
        let refusing = text
            .lines()
            .find(|line| line.contains("refused a peer connection at its handshake"));
        assert!(refusing.is_some_and(|line| line.contains(reason)), "{text}");
        assert!(
            text.contains(&format!("refused by the peer: {reason}")),
            "{text}"
        );
        shutdown(vec![node_1, node_2]).await;
    }
}

#[tokio::test]
async fn unreachable_is_called_when_a_peer_goes_away() {
    // Phase 1: two nodes, connected.
    let mut nodes = cluster(2, 1).await;
    all_connected(&nodes).await;

    // Phase 2: node 2 goes away.
    let node_2 = nodes.pop().unwrap();
    node_2.running.shutdown().await;

    // Phase 3: node 1 is told, once, and its connection is gone.
    let node_1 = &mut nodes[0];
    let told = tokio::time::timeout(WAIT, node_1.unreachable.recv()).await;
    assert_eq!(told.ok().flatten(), Some(2));
    wait_until("node 1's connection to node 2 is gone", || {
        node_1.stat("peer_connections_outbound") == 0
    })
    .await;
    assert!(node_1.unreachable.try_recv().is_err(), "told once");
    shutdown(nodes).await;
}

#[tokio::test]
async fn a_full_queue_drops_the_excess_and_tells_raft_once() {
    // Phase 1: two nodes, connected.
    let mut nodes = cluster(2, 1).await;
    all_connected(&nodes).await;

    // Phase 2: without yielding, node 1 queues more than its queue to node 2 holds.
    let excess = 100;
    let burst = PEER_QUEUE_MESSAGES_MAX + excess;
    let messages = (0..burst as u64)
        .map(|commit| heartbeat_message(1, 2, commit))
        .collect();
    nodes[0].outbox.send(0, messages);
    assert_eq!(nodes[0].stat("peer_messages_dropped_total"), excess as u64);

    // Phase 3: node 2 receives what was queued, the first messages, in order.
    let received = nodes[1].receive(PEER_QUEUE_MESSAGES_MAX).await;
    let commits: Vec<u64> = received
        .iter()
        .map(|(_, message)| commit_of(message))
        .collect();
    assert_eq!(
        commits,
        (0..PEER_QUEUE_MESSAGES_MAX as u64).collect::<Vec<_>>()
    );

    // Phase 4: node 1's shards are told once that node 2 lost messages.
    let told = tokio::time::timeout(WAIT, nodes[0].unreachable.recv()).await;
    assert_eq!(told.ok().flatten(), Some(2));
    assert!(nodes[0].unreachable.try_recv().is_err(), "told once");
    assert_eq!(
        nodes[0].stat("peer_connections_outbound"),
        1,
        "still connected"
    );
    shutdown(nodes).await;
}

/// Node 2 with 4 shards, which knows node 1 at a port nothing listens on: the test plays
/// node 1 over raw connections.
async fn node_2_alone() -> TestNode {
    let listener = loopback_listener().await;
    let addresses = [
        (1, closed_address().await),
        (2, listener.local_addr().unwrap()),
    ];
    start(
        config(2, CLUSTER, 4, addresses[1].1, &addresses),
        Some(listener),
    )
    .await
}

/// A raw connection to `node` that handshook as node 1.
async fn connect_as_node_1(node: &TestNode) -> Framed<TcpStream, PeerCodec> {
    let stream = TcpStream::connect(node.running.local_addr()).await.unwrap();
    let mut framed = Framed::new(stream, PeerCodec::default());
    framed
        .send(PeerFrame::Handshake(handshake_of(4, 1)))
        .await
        .unwrap();
    let answer = tokio::time::timeout(WAIT, framed.next()).await.unwrap();
    assert!(
        matches!(&answer, Some(Ok(PeerFrame::HandshakeAccepted(h))) if h.node_id == node.id),
        "{answer:?}"
    );
    framed
}

/// Waits for `framed` to be closed by the other end.
async fn closed_by_peer(framed: &mut Framed<TcpStream, PeerCodec>) {
    let next = tokio::time::timeout(WAIT, framed.next()).await;
    assert!(
        matches!(next, Ok(None) | Ok(Some(Err(_)))),
        "not closed: {next:?}"
    );
}

fn batch(messages: &[(ShardId, Message<Command>)]) -> PeerFrame {
    PeerFrame::batch(messages.iter().map(|(shard, message)| ShardMessage {
        shard: *shard,
        message: message.clone(),
    }))
}

#[tokio::test]
async fn a_message_out_of_shard_range_or_with_a_forged_sender_closes_the_connection() {
    let mut node_2 = node_2_alone().await;
    let (logs, _guard) = Logs::capture();
    let forged: [(ShardId, Message<Command>, &str); 3] = [
        (
            4,
            heartbeat_message(1, 2, 9),
            "a message for shard 4, but the cluster has 4 shards",
        ),
        (
            0,
            heartbeat_message(3, 2, 9),
            "a message from node 3 on the connection of node 1",
        ),
        (
            0,
            heartbeat_message(1, 7, 9),
            "a message for node 7 reached node 2",
        ),
    ];
    for (shard, bad, error) in forged {
        // Phase 1: a sound message on a handshaken connection is delivered.
        let mut raw = connect_as_node_1(&node_2).await;
        raw.send(batch(&[(3, heartbeat_message(1, 2, 1))]))
            .await
            .unwrap();
        let received = node_2.receive(1).await;
        assert_eq!((received[0].0, commit_of(&received[0].1)), (3, 1));

        // Phase 2: a frame with one bad message closes the connection, and none of the
        // frame is delivered, not even its sound message.
        raw.send(batch(&[(0, heartbeat_message(1, 2, 2)), (shard, bad)]))
            .await
            .unwrap();
        closed_by_peer(&mut raw).await;
        assert!(node_2.received_nothing());
        let text = logs.text();
        assert!(text.contains(error), "{text}");
    }
    shutdown(vec![node_2]).await;
}

#[tokio::test]
async fn a_node_that_connects_again_replaces_its_older_connection() {
    // Phase 1: node 1 (played by the test) connects twice.
    let mut node_2 = node_2_alone().await;
    let mut older = connect_as_node_1(&node_2).await;
    let mut newer = connect_as_node_1(&node_2).await;

    // Phase 2: the older connection is closed; the newer one delivers.
    closed_by_peer(&mut older).await;
    newer
        .send(batch(&[(0, heartbeat_message(1, 2, 5))]))
        .await
        .unwrap();
    let received = node_2.receive(1).await;
    assert_eq!(commit_of(&received[0].1), 5);
    wait_until("one inbound connection is left", || {
        node_2.stat("peer_connections_inbound") == 1
    })
    .await;
    shutdown(vec![node_2]).await;
}

#[tokio::test]
async fn messages_to_a_node_without_an_address_are_dropped_and_counted() {
    let node_2 = node_2_alone().await;
    node_2.outbox.send(0, vec![heartbeat_message(2, 9, 1)]);
    assert_eq!(node_2.stat("peer_messages_dropped_total"), 1);
    shutdown(vec![node_2]).await;
}

#[test]
#[should_panic(expected = "node 1 is listed among its own peers")]
fn a_config_that_lists_the_node_itself_is_refused() {
    let address = "127.0.0.1:1".parse().unwrap();
    let _ = PeerNetwork::new(config_listing_itself(address));
}

fn config_listing_itself(address: std::net::SocketAddr) -> PeerConfig {
    let mut config = config(1, CLUSTER, 1, address, &[(2, address)]);
    let itself: NodeId = 1;
    config.peers.insert(itself, node_address(itself, address));
    config
}

#[test]
fn snapshot_chunks_outside_their_range_are_refused_by_the_config() {
    let address = "127.0.0.1:1".parse().unwrap();
    let mut config = config(1, CLUSTER, 1, address, &[(2, address)]);
    for (chunk_bytes, valid) in [
        (SNAPSHOT_CHUNK_BYTES_MIN - 1, false),
        (SNAPSHOT_CHUNK_BYTES_MIN, true),
        (SNAPSHOT_CHUNK_BYTES_MAX, true),
        (SNAPSHOT_CHUNK_BYTES_MAX + 1, false),
    ] {
        config.snapshot_chunk_bytes = chunk_bytes;
        let result = config.validate();
        if valid {
            assert_eq!(result, Ok(()));
        } else {
            assert_eq!(
                result,
                Err(PeerConfigError::SnapshotChunkBytes(chunk_bytes))
            );
        }
    }
}

/// The chunks of a snapshot of shard 0 from node 1 to node 2 at `index`, of `length`
/// bytes, in pieces of `piece` bytes: as a sender cuts them.
fn snapshot_chunks(index: u64, length: usize, piece: usize) -> Vec<SnapshotChunk> {
    let data: Bytes = (0..length)
        .map(|position| position as u8)
        .collect::<Vec<u8>>()
        .into();
    (0..length)
        .step_by(piece)
        .map(|offset| SnapshotChunk {
            shard: 0,
            from: 1,
            to: 2,
            term: 3,
            meta: SnapshotMeta {
                index,
                term: 2,
                membership: Membership::new([1, 2]),
            },
            offset: offset as u64,
            total: length as u64,
            data: data.slice(offset..(offset + piece).min(length)),
        })
        .collect()
}

fn chunk_frame(chunk: &SnapshotChunk) -> PeerFrame {
    PeerFrame::Batch(vec![BatchMessage::Chunk(chunk.clone())])
}

#[tokio::test]
async fn a_snapshot_cut_short_by_a_closed_connection_is_never_delivered() {
    let mut node_2 = node_2_alone().await;
    let chunks = snapshot_chunks(40, 5000, 1000);
    // Phase 1: node 1 sends two chunks, then its connection closes.
    let mut raw = connect_as_node_1(&node_2).await;
    for chunk in &chunks[..2] {
        raw.send(chunk_frame(chunk)).await.unwrap();
    }
    drop(raw);

    // Phase 2: on its next connection, the rest of that snapshot continues nothing; a
    // heartbeat behind it shows that it was read.
    let mut raw = connect_as_node_1(&node_2).await;
    for chunk in &chunks[2..] {
        raw.send(chunk_frame(chunk)).await.unwrap();
    }
    raw.send(batch(&[(0, heartbeat_message(1, 2, 7))]))
        .await
        .unwrap();
    let received = node_2.receive(1).await;
    assert_eq!(commit_of(&received[0].1), 7);

    // Phase 3: the snapshot sent again from its start arrives whole.
    for chunk in &chunks {
        raw.send(chunk_frame(chunk)).await.unwrap();
    }
    let received = node_2.receive(1).await;
    let MessageBody::InstallSnapshot { snapshot } = &received[0].1.body else {
        panic!("not a snapshot: {:?}", received[0].1);
    };
    let data: Vec<u8> = chunks
        .iter()
        .flat_map(|chunk| chunk.data.to_vec())
        .collect();
    assert_eq!((snapshot.meta.index, &snapshot.data[..]), (40, &data[..]));
    assert!(node_2.received_nothing());
    shutdown(vec![node_2]).await;
}

#[tokio::test]
async fn a_chunk_past_the_snapshot_bound_closes_the_connection() {
    let mut node_2 = node_2_alone().await;
    let (logs, _guard) = Logs::capture();
    let mut raw = connect_as_node_1(&node_2).await;
    let mut chunk = snapshot_chunks(40, 5000, 1000).remove(0);
    chunk.total = SNAPSHOT_BYTES_MAX + 1;
    raw.send(batch(&[(0, heartbeat_message(1, 2, 7))]))
        .await
        .unwrap();
    raw.send(chunk_frame(&chunk)).await.unwrap();
    closed_by_peer(&mut raw).await;
    assert_eq!(commit_of(&node_2.receive(1).await[0].1), 7);
    assert!(node_2.received_nothing());
    let text = logs.text();
    assert!(text.contains("past snapshot_bytes_max"), "{text}");
    shutdown(vec![node_2]).await;
}
