//! Links that follow the memberships: a voter added at run time is linked, a node that
//! leaves every shard is unlinked (its connection closed, its messages dropped), and a node
//! this node never heard of is answered over the link its handshake taught.

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

use super::loopback::*;
use super::*;
use crate::peer::transport::PEER_RECONNECT_DELAY_MIN;
use crate::raft::NodeId;
use crate::shard::PeerOutbox;

/// A membership of `voters`, with `addresses` for those added at run time.
fn membership(voters: &[NodeId], addresses: &[(NodeId, String)]) -> Membership {
    let mut membership = Membership::new(voters.iter().copied());
    membership.addresses = addresses.iter().cloned().collect();
    membership
}

/// Node `id` of one shard that knows no founder but itself, on a loopback port.
async fn lone_node(id: NodeId) -> TestNode {
    let listener = loopback_listener().await;
    let address = listener.local_addr().unwrap();
    start(config(id, CLUSTER, 1, address, &[]), Some(listener)).await
}

/// Accepts one connection on `listener` and handshakes as node `id` of one shard.
async fn accept_as(listener: &TcpListener, id: NodeId) -> Framed<TcpStream, PeerCodec> {
    let accepted = tokio::time::timeout(WAIT, listener.accept()).await;
    let (stream, _) = accepted.expect("node 1 connects").unwrap();
    let mut framed = Framed::new(stream, PeerCodec::default());
    let handshake = tokio::time::timeout(WAIT, framed.next()).await.unwrap();
    assert!(
        matches!(handshake, Some(Ok(PeerFrame::Handshake(_)))),
        "{handshake:?}"
    );
    let local = listener.local_addr().unwrap();
    let answer = Handshake::new(CLUSTER, 1, id, incarnation_of(id), node_address(id, local));
    framed
        .send(PeerFrame::HandshakeAccepted(answer))
        .await
        .unwrap();
    framed
}

/// Connects to `node` as node `id` of one shard, advertising `advertise`, and sends it a
/// heartbeat; returns once the heartbeat was delivered, and so once `node` has acted on
/// the handshake.
async fn connect_and_send_as(node: &mut TestNode, id: NodeId, advertise: PeerAddress) {
    let stream = TcpStream::connect(node.running.local_addr()).await.unwrap();
    let mut framed = Framed::new(stream, PeerCodec::default());
    let handshake = Handshake::new(CLUSTER, 1, id, incarnation_of(id), advertise);
    framed.send(PeerFrame::Handshake(handshake)).await.unwrap();
    let answer = tokio::time::timeout(WAIT, framed.next()).await.unwrap();
    assert!(
        matches!(answer, Some(Ok(PeerFrame::HandshakeAccepted(_)))),
        "{answer:?}"
    );
    let heartbeat = ShardMessage {
        shard: 0,
        message: heartbeat_message(id, node.id, 21),
    };
    framed
        .send(PeerFrame::batch(vec![heartbeat]))
        .await
        .unwrap();
    assert_eq!(commit_of(&node.receive(1).await[0].1), 21);
}

#[tokio::test]
async fn a_node_that_leaves_every_shard_loses_its_link_and_its_messages_are_dropped() {
    // Phase 1: two founders of two shards, connected.
    const SHARDS: u16 = 2;
    let mut nodes = cluster(2, SHARDS).await;
    all_connected(&nodes).await;

    // Phase 2: node 2 leaves shard 0 only: still a voter of shard 1, it keeps its link.
    nodes[0].outbox.members_changed(0, &membership(&[1], &[]));
    assert_eq!(
        nodes[0].outbox.client_address(2).as_deref(),
        Some("client-of-2:8002")
    );
    nodes[0].outbox.send(0, vec![heartbeat_message(1, 2, 1)]);
    assert_eq!(commit_of(&nodes[1].receive(1).await[0].1), 1);

    // Phase 3: node 2 leaves shard 1 too: its link is gone, and what node 1 sends it is
    // dropped and counted.
    nodes[0].outbox.members_changed(1, &membership(&[1], &[]));
    assert_eq!(nodes[0].outbox.client_address(2), None);
    nodes[0].outbox.send(
        1,
        (2..5)
            .map(|commit| heartbeat_message(1, 2, commit))
            .collect(),
    );
    assert_eq!(nodes[0].stat("peer_messages_dropped_total"), 3);

    // Phase 4: the connection closes on both ends, without an unreachable call; node 2's
    // own link to node 1 is untouched.
    wait_until("node 1's connection to node 2 closes on both ends", || {
        nodes[0].stat("peer_connections_outbound") == 0
            && nodes[1].stat("peer_connections_inbound") == 0
    })
    .await;
    assert!(nodes[0].unreachable.try_recv().is_err(), "not unreachable");
    assert!(nodes[1].received_nothing());
    assert_eq!(nodes[1].stat("peer_connections_outbound"), 1);
    shutdown(nodes).await;
}

#[tokio::test]
async fn removing_a_node_closes_the_connection_it_was_sent_on() {
    // Phase 1: node 1 knows founder 2, played by the test, which accepts its connection.
    let listener_2 = loopback_listener().await;
    let listener_1 = loopback_listener().await;
    let addresses = [
        (1, listener_1.local_addr().unwrap()),
        (2, listener_2.local_addr().unwrap()),
    ];
    let mut node_1 = start(
        config(1, CLUSTER, 1, addresses[0].1, &addresses),
        Some(listener_1),
    )
    .await;
    let mut raw_2 = accept_as(&listener_2, 2).await;
    wait_until("node 1 is connected to node 2", || {
        node_1.stat("peer_connections_outbound") == 1
    })
    .await;

    // Phase 2: what node 1 queues before the removal is still written.
    node_1.outbox.send(0, vec![heartbeat_message(1, 2, 7)]);
    node_1.outbox.members_changed(0, &membership(&[1], &[]));
    let frame = tokio::time::timeout(WAIT, raw_2.next()).await.unwrap();
    let Some(Ok(PeerFrame::Batch(messages))) = frame else {
        panic!("not a batch: {frame:?}");
    };
    let BatchMessage::Raft(first) = &messages[0] else {
        panic!("not a Raft message: {:?}", messages[0]);
    };
    assert_eq!(commit_of(&first.message), 7);

    // Phase 3: then node 2 sees the connection close, and node 1 does not connect again.
    let next = tokio::time::timeout(WAIT, raw_2.next()).await;
    assert!(
        matches!(next, Ok(None) | Ok(Some(Err(_)))),
        "not closed: {next:?}"
    );
    let again = tokio::time::timeout(PEER_RECONNECT_DELAY_MIN * 4, listener_2.accept()).await;
    assert!(again.is_err(), "node 1 connected again");
    assert!(node_1.unreachable.try_recv().is_err(), "not unreachable");
    shutdown(vec![node_1]).await;
}

#[tokio::test]
async fn a_voter_added_with_an_address_is_linked_at_that_address() {
    let (logs, _guard) = Logs::capture();
    // Phase 1: node 1 knows no other node.
    let node_1 = lone_node(1).await;
    assert_eq!(node_1.outbox.client_address(3), None);

    // Phase 2: shard 0 adds node 3 with its address: node 3 has a link.
    let added = membership(&[1, 3], &[(3, "127.0.0.1:9/client-of-3:8003".to_string())]);
    node_1.outbox.members_changed(0, &added);
    assert_eq!(
        node_1.outbox.client_address(3).as_deref(),
        Some("client-of-3:8003")
    );

    // Phase 3: told the same again, it does nothing.
    node_1.outbox.members_changed(0, &added);
    assert_eq!(logs.text().matches("a new voter; linking to it").count(), 1);

    // Phase 4: a new address for node 3 replaces its link.
    let moved = membership(&[1, 3], &[(3, "127.0.0.1:10/moved-3:8003".to_string())]);
    node_1.outbox.members_changed(0, &moved);
    assert_eq!(
        node_1.outbox.client_address(3).as_deref(),
        Some("moved-3:8003")
    );
    assert!(logs.text().contains("a node's address changed; relinking"));
    shutdown(vec![node_1]).await;
}

#[tokio::test]
async fn a_bad_or_missing_address_is_logged_and_links_nothing() {
    let (logs, _guard) = Logs::capture();
    let node_1 = lone_node(1).await;

    // Phase 1: node 4's address does not parse; node 5 has none, and is no founder.
    let bad = membership(&[1, 4, 5], &[(4, "nowhere/client:1".to_string())]);
    node_1.outbox.members_changed(0, &bad);
    assert_eq!(node_1.outbox.client_address(4), None);
    assert_eq!(node_1.outbox.client_address(5), None);
    let text = logs.text();
    assert!(
        text.contains("ignored a membership's address of a node")
            && text.contains("the peer address `nowhere` is not IP:PORT"),
        "{text}"
    );

    // Phase 2: a later change warns about a voter without an address once only.
    node_1
        .outbox
        .members_changed(0, &membership(&[1, 4, 5, 6], &[]));
    let warnings = logs
        .text()
        .matches("a voter without a known address")
        .count();
    assert_eq!(warnings, 3, "nodes 4 and 5, then 6: {}", logs.text());
    shutdown(vec![node_1]).await;
}

#[tokio::test]
async fn a_node_added_at_run_time_is_reached_and_answers_over_the_link_it_learned() {
    // Phase 1: two nodes, neither a founder the other knows.
    let mut node_1 = lone_node(1).await;
    let mut node_2 = lone_node(2).await;
    let address_2 = node_address(2, node_2.running.local_addr());

    // Phase 2: node 1's shard adds node 2; node 1 links to it and its messages flow.
    let added = membership(&[1, 2], &[(2, address_2.to_string())]);
    node_1.outbox.members_changed(0, &added);
    wait_until("node 1 connects to node 2", || {
        node_1.stat("peer_connections_outbound") == 1
    })
    .await;
    node_1.outbox.send(0, vec![heartbeat_message(1, 2, 11)]);
    assert_eq!(commit_of(&node_2.receive(1).await[0].1), 11);

    // Phase 3: node 2, told nothing, linked back to the address node 1 advertised.
    assert_eq!(
        node_2.outbox.client_address(1).as_deref(),
        Some("client-of-1:8002")
    );
    wait_until("node 2 connects to node 1", || {
        node_2.stat("peer_connections_outbound") == 1
    })
    .await;
    node_2.outbox.send(0, vec![heartbeat_message(2, 1, 12)]);
    let answer = node_1.receive(1).await;
    assert_eq!((answer[0].1.from, commit_of(&answer[0].1)), (2, 12));
    shutdown(vec![node_1, node_2]).await;
}

#[tokio::test]
async fn a_node_that_left_every_shard_is_not_linked_again_when_it_connects() {
    // Phase 1: node 2 (played by the test) is added to node 1's only shard, then removed.
    let mut node_1 = lone_node(1).await;
    let address_2 = node_address(2, closed_address().await);
    let added = membership(&[1, 2], &[(2, address_2.to_string())]);
    node_1.outbox.members_changed(0, &added);
    node_1.outbox.members_changed(0, &membership(&[1], &[]));
    assert_eq!(node_1.outbox.client_address(2), None);

    // Phase 2: node 2 connects to node 1: it is heard, but not linked to.
    connect_and_send_as(&mut node_1, 2, address_2.clone()).await;
    assert_eq!(node_1.outbox.client_address(2), None);

    // Phase 3: once a membership names it again, it is linked again.
    node_1.outbox.members_changed(0, &added);
    assert_eq!(
        node_1.outbox.client_address(2).as_deref(),
        Some(address_2.client.as_str())
    );
    shutdown(vec![node_1]).await;
}
