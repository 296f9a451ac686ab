//! Incarnations: a node whose data directory was created anew is refused by the peers that
//! knew it and stops itself; a peer's incarnation is recorded before it is heard; a node
//! that left every shard is forgotten, so that its id can come back.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

use super::loopback::*;
use super::*;
use crate::peer::incarnations::SeenIncarnations;
use crate::raft::NodeId;
use crate::shard::PeerOutbox;

/// Another incarnation of node `node`: its data directory created anew.
fn new_incarnation_of(node: NodeId) -> u64 {
    incarnation_of(node) ^ 0xffff_0000_0000_0000
}

/// Connects to `node` as node `id` of one shard in `incarnation`, remembering `node` as
/// `remembered`; the answer.
async fn handshake_as(
    node: &TestNode,
    id: NodeId,
    incarnation: u64,
    remembered: Option<u64>,
) -> (Framed<TcpStream, PeerCodec>, PeerFrame) {
    let stream = TcpStream::connect(node.running.local_addr()).await.unwrap();
    let mut framed = Framed::new(stream, PeerCodec::default());
    let address = node_address(id, closed_address().await);
    let handshake = Handshake::new(CLUSTER, 1, id, incarnation, address).to_receiver(remembered);
    framed.send(PeerFrame::Handshake(handshake)).await.unwrap();
    let answer = tokio::time::timeout(WAIT, framed.next()).await.unwrap();
    (framed, answer.expect("an answer").expect("a frame"))
}

/// Accepts one connection on `listener` as node `id` of one shard in `incarnation`; the
/// connection and the HANDSHAKE it carried.
async fn accept_as(
    listener: &TcpListener,
    id: NodeId,
    incarnation: u64,
) -> (Framed<TcpStream, PeerCodec>, Handshake) {
    let accepted = tokio::time::timeout(WAIT, listener.accept()).await;
    let (stream, _) = accepted.expect("node 1 connects").unwrap();
    let mut framed = Framed::new(stream, PeerCodec::default());
    let received = tokio::time::timeout(WAIT, framed.next()).await.unwrap();
    let Some(Ok(PeerFrame::Handshake(received))) = received else {
        panic!("not a handshake: {received:?}");
    };
    let local = node_address(id, listener.local_addr().unwrap());
    let answer = Handshake::new(CLUSTER, 1, id, incarnation, local);
    framed
        .send(PeerFrame::HandshakeAccepted(answer))
        .await
        .unwrap();
    (framed, received)
}

/// Node 1 of one shard with founder 2 at `address_2`, and the store of what it saw.
async fn node_1_knowing_2(address_2: std::net::SocketAddr) -> (TestNode, Arc<MemoryStore>) {
    let listener = loopback_listener().await;
    let addresses = [(1, listener.local_addr().unwrap()), (2, address_2)];
    let mut config = config(1, CLUSTER, 1, addresses[0].1, &addresses);
    let store = Arc::new(MemoryStore::default());
    config.seen = SeenIncarnations::new(BTreeMap::new(), store.clone());
    (start(config, Some(listener)).await, store)
}

#[test]
fn a_handshake_carries_both_incarnations_and_one_that_remembers_another_is_refused() {
    // Phase 1: node 1 remembers node 2; the handshake reads back with both incarnations.
    let connecting = handshake_of(4, 1).to_receiver(Some(incarnation_of(2)));
    let mut wire = encode(&PeerFrame::Handshake(connecting.clone()));
    let Some(PeerFrame::Handshake(received)) = PeerCodec::default().decode(&mut wire).unwrap()
    else {
        panic!("not a handshake");
    };
    assert_eq!(received, connecting);
    assert_eq!(
        (received.incarnation, received.receiver_incarnation),
        (incarnation_of(1), incarnation_of(2))
    );
    assert_eq!(handshake_of(4, 2).check(&received), Ok(()));

    // Phase 2: node 2's directory was created anew: its check names node 2 as the node
    // that lost its data, with both incarnations and what to do.
    let wiped_2 = Handshake::new(CLUSTER, 4, 2, new_incarnation_of(2), address_of(2));
    let error = wiped_2.check(&received).unwrap_err();
    assert_eq!(error.created_anew(), Some(2));
    assert_eq!(
        error.to_string(),
        "node 2's data directory was created anew (incarnation 70c55c2e9d1b4762; node 1 \
         knew it as 8f3a5c2e9d1b4762): a node that lost its data must not vote again; remove \
         it (kahu-cli --remove-node 2) and add a new node with a new id (--join)"
    );

    // Phase 3: a peer that remembers none, and a handshake without an incarnation.
    assert_eq!(wiped_2.check(&handshake_of(4, 1)), Ok(()));
    let no_incarnation = Handshake {
        incarnation: 0,
        ..handshake_of(4, 1)
    };
    assert_eq!(
        wiped_2.check(&no_incarnation),
        Err(HandshakeError::IncarnationZero(1))
    );
}

#[test]
fn a_seen_incarnation_is_stored_before_it_is_held_and_a_failed_store_changes_nothing() {
    let store = Arc::new(MemoryStore::default());
    let mut seen = SeenIncarnations::new(BTreeMap::from([(2, 7)]), store.clone());

    // Phase 1: a record and a forget each store the whole map; a repeat stores nothing.
    seen.record(3, 9).unwrap();
    seen.record(3, 9).unwrap();
    assert_eq!(store.last(), BTreeMap::from([(2, 7), (3, 9)]));
    assert!(seen.forget(2).unwrap());
    assert!(!seen.forget(2).unwrap(), "already forgotten");
    assert_eq!(store.last(), BTreeMap::from([(3, 9)]));
    assert_eq!(store.saved.lock().unwrap().len(), 2);

    // Phase 2: while the store fails, nothing changes.
    store.failing.store(true, Ordering::Relaxed);
    assert!(seen.record(4, 11).is_err());
    assert!(seen.forget(3).is_err());
    assert_eq!((seen.get(4), seen.get(3)), (None, Some(9)));
}

#[test]
fn no_more_than_seen_incarnations_max_nodes_are_remembered() {
    use crate::peer::incarnations::SEEN_INCARNATIONS_MAX;
    let full: BTreeMap<NodeId, u64> = (1..=SEEN_INCARNATIONS_MAX as u64)
        .map(|node| (node, 1))
        .collect();
    let store = Arc::new(MemoryStore::default());
    let mut seen = SeenIncarnations::new(full, store.clone());
    let error = seen
        .record(SEEN_INCARNATIONS_MAX as u64 + 1, 1)
        .unwrap_err();
    assert!(
        error.to_string().contains("seen_incarnations_max (4096)"),
        "{error}"
    );
    assert!(store.saved.lock().unwrap().is_empty());
    seen.record(1, 2)
        .expect("a node already remembered can still be recorded");
}

#[tokio::test]
async fn a_node_whose_data_directory_was_created_anew_is_refused_and_stops_itself() {
    let (logs, _guard) = Logs::capture();
    // Phase 1: nodes 1 and 2 connect, and each records the other's incarnation.
    let nodes = cluster(2, 1).await;
    all_connected(&nodes).await;
    assert_eq!(nodes[0].outbox.remembered(2), Some(incarnation_of(2)));
    assert_eq!(nodes[1].outbox.remembered(1), Some(incarnation_of(1)));
    let mut nodes = nodes.into_iter();
    let (mut node_1, node_2) = (nodes.next().unwrap(), nodes.next().unwrap());

    // Phase 2: node 2 stops, loses its data directory and starts again at its address
    // with a new incarnation, remembering no peer.
    let address_2 = node_2.running.local_addr();
    node_2.running.shutdown().await;
    let listener = TcpListener::bind(address_2).await.unwrap();
    let addresses = [(1, node_1.running.local_addr()), (2, address_2)];
    let mut config_2 = config(2, CLUSTER, 1, address_2, &addresses);
    config_2.incarnation = new_incarnation_of(2);
    let mut wiped_2 = start(config_2, Some(listener)).await;

    // Phase 3: node 1 remembers node 2 as it was: the new node 2 learns from node 1's
    // handshake that its directory was created anew, and its transport stops for good.
    let mut failure = wiped_2.running.failure();
    let failed = tokio::time::timeout(WAIT, failure.wait_for(Option::is_some)).await;
    let reason = failed.expect("node 2 stops").unwrap().clone().unwrap();
    assert!(
        reason.starts_with("node 2's data directory was created anew"),
        "{reason}"
    );
    assert!(reason.contains(&format!("node 1 knew it as {:016x}", incarnation_of(2))));
    assert_eq!(wiped_2.stat("peer_fenced"), 1);
    wait_until("node 2 has no connection left", || {
        wiped_2.stat("peer_connections_outbound") == 0
            && wiped_2.stat("peer_connections_inbound") == 0
    })
    .await;

    // Phase 4: nothing the new node 2 sends reaches node 1, nor the reverse; node 1 still
    // remembers the old incarnation, and the reason is in the log at error level.
    wiped_2.outbox.send(0, vec![heartbeat_message(2, 1, 1)]);
    node_1.outbox.send(0, vec![heartbeat_message(1, 2, 1)]);
    assert!(node_1.received_nothing() && wiped_2.received_nothing());
    assert_eq!(node_1.outbox.remembered(2), Some(incarnation_of(2)));
    let text = logs.text();
    assert!(
        text.lines().any(|line| line.contains("ERROR")
            && line.contains("node 2's data directory was created anew")),
        "{text}"
    );
    shutdown(vec![node_1, wiped_2]).await;
}

#[tokio::test]
async fn a_peer_whose_answer_shows_another_incarnation_is_not_written_to() {
    // Phase 1: node 1 connects to founder 2 (played by the test) and records it.
    let listener_2 = loopback_listener().await;
    let (node_1, store) = node_1_knowing_2(listener_2.local_addr().unwrap()).await;
    let (first, handshake) = accept_as(&listener_2, 2, incarnation_of(2)).await;
    assert_eq!(
        handshake.receiver_incarnation, 0,
        "node 1 knew no node 2 yet"
    );
    wait_until("node 1 is connected to node 2", || {
        node_1.stat("peer_connections_outbound") == 1
    })
    .await;
    assert_eq!(store.last(), BTreeMap::from([(2, incarnation_of(2))]));

    // Phase 2: node 2 comes back with a new incarnation; node 1's handshake says which it
    // knew, and node 1 closes the connection on the answer, counting a refusal.
    drop(first);
    let (mut second, handshake) = accept_as(&listener_2, 2, new_incarnation_of(2)).await;
    assert_eq!(handshake.receiver_incarnation, incarnation_of(2));
    let next = tokio::time::timeout(WAIT, second.next()).await;
    assert!(
        matches!(next, Ok(None) | Ok(Some(Err(_)))),
        "not closed: {next:?}"
    );
    wait_until("node 1 counts a refusal", || {
        node_1.stat("peer_handshakes_refused_total") == 1
    })
    .await;
    assert_eq!(node_1.stat("peer_connections_outbound"), 0);
    assert_eq!(node_1.stat("peer_fenced"), 0, "node 1 is not the one wiped");
    assert_eq!(node_1.outbox.remembered(2), Some(incarnation_of(2)));
    shutdown(vec![node_1]).await;
}

#[tokio::test]
async fn a_peer_is_recorded_before_it_is_heard_and_refused_when_that_cannot_be_done() {
    let (node_1, store) = node_1_knowing_2(closed_address().await).await;

    // Phase 1: the record fails: node 3 is refused, and says why.
    store.failing.store(true, Ordering::Relaxed);
    let (_, answer) = handshake_as(&node_1, 3, incarnation_of(3), None).await;
    let PeerFrame::HandshakeRefused(reason) = answer else {
        panic!("not refused: {answer:?}");
    };
    assert!(
        reason.starts_with("node 1 cannot record node 3's incarnation")
            && reason.contains("the disk is full (injected)"),
        "{reason}"
    );
    assert_eq!(node_1.outbox.remembered(3), None);

    // Phase 2: once it can, node 3 is recorded before the answer, which says so.
    store.failing.store(false, Ordering::Relaxed);
    let (_, answer) = handshake_as(&node_1, 3, incarnation_of(3), None).await;
    let PeerFrame::HandshakeAccepted(accepted) = answer else {
        panic!("not accepted: {answer:?}");
    };
    assert_eq!(accepted.receiver_incarnation, incarnation_of(3));
    assert_eq!(store.last(), BTreeMap::from([(3, incarnation_of(3))]));

    // Phase 3: node 3 in another incarnation is refused, and node 1 does not stop.
    let (_, answer) = handshake_as(&node_1, 3, new_incarnation_of(3), None).await;
    let PeerFrame::HandshakeRefused(reason) = answer else {
        panic!("not refused: {answer:?}");
    };
    assert!(
        reason.starts_with("node 3's data directory was created anew"),
        "{reason}"
    );
    assert_eq!(node_1.stat("peer_handshakes_refused_total"), 2);
    assert_eq!(node_1.stat("peer_fenced"), 0);
    shutdown(vec![node_1]).await;
}

#[tokio::test]
async fn a_node_that_left_every_shard_is_forgotten_and_its_id_can_come_back() {
    // Phase 1: node 2 (played by the test) is a founder, connected and recorded.
    let listener_2 = loopback_listener().await;
    let address_2 = listener_2.local_addr().unwrap();
    let (node_1, store) = node_1_knowing_2(address_2).await;
    let (first, _) = accept_as(&listener_2, 2, incarnation_of(2)).await;
    wait_until("node 1 records node 2", || {
        node_1.outbox.remembered(2).is_some()
    })
    .await;

    // Phase 2: node 2 leaves the only shard: its incarnation is forgotten, durably.
    node_1.outbox.members_changed(0, &Membership::new([1]));
    assert_eq!(node_1.outbox.remembered(2), None);
    assert_eq!(store.last(), BTreeMap::new());
    drop(first);

    // Phase 3: a node with id 2 and a new data directory is heard but not recorded while
    // it is no voter.
    let (_, answer) = handshake_as(&node_1, 2, new_incarnation_of(2), None).await;
    assert!(
        matches!(answer, PeerFrame::HandshakeAccepted(_)),
        "{answer:?}"
    );
    assert_eq!(node_1.outbox.remembered(2), None);

    // Phase 4: added again, it is linked again, and its new incarnation recorded.
    let mut added = Membership::new([1, 2]);
    added.addresses = [(2, node_address(2, address_2).to_string())].into();
    node_1.outbox.members_changed(0, &added);
    let (_second, handshake) = accept_as(&listener_2, 2, new_incarnation_of(2)).await;
    assert_eq!(handshake.receiver_incarnation, 0);
    wait_until("node 1 records node 2's new incarnation", || {
        node_1.outbox.remembered(2) == Some(new_incarnation_of(2))
    })
    .await;
    assert_eq!(store.last(), BTreeMap::from([(2, new_incarnation_of(2))]));
    shutdown(vec![node_1]).await;
}
