//! The handshake rules: same version, cluster id and shard count, a real other node.

use super::*;

#[test]
fn a_handshake_of_the_same_cluster_is_accepted_both_ways() {
    // Phase 1: node 1 connects and sends its handshake.
    let connecting = Handshake::new(CLUSTER, 4, 1);
    let accepting = Handshake::new(CLUSTER, 4, 2);
    let mut wire = encode(&PeerFrame::Handshake(connecting));

    // Phase 2: node 2 reads and checks it, then answers with its own identity.
    let Some(PeerFrame::Handshake(received)) = PeerCodec::default().decode(&mut wire).unwrap()
    else {
        panic!("not a handshake");
    };
    assert_eq!(accepting.check(&received), Ok(()));
    let mut wire = encode(&PeerFrame::HandshakeAccepted(accepting));

    // Phase 3: node 1 checks the answer the same way.
    let Some(PeerFrame::HandshakeAccepted(answer)) =
        PeerCodec::default().decode(&mut wire).unwrap()
    else {
        panic!("not an accepted handshake");
    };
    assert_eq!(connecting.check(&answer), Ok(()));
}

#[test]
fn handshake_mismatch_errors_name_what_differs() {
    let local = Handshake::new(CLUSTER, 4, 1);

    let other_version = Handshake {
        version: 2,
        ..Handshake::new(CLUSTER, 4, 2)
    };
    let error = local.check(&other_version).unwrap_err();
    assert_eq!(
        error.to_string(),
        "peer protocol version differs: node 2 speaks version 2, node 1 version 1; upgrade \
         the older node"
    );

    let error = local.check(&Handshake::new(CLUSTER + 1, 4, 2)).unwrap_err();
    assert_eq!(
        error.to_string(),
        "cluster id differs: node 2 belongs to cluster 0123456789abcdeffedcba9876543211, node 1 \
         to cluster 0123456789abcdeffedcba9876543210; a node only joins the cluster it was \
         created for"
    );

    let error = local.check(&Handshake::new(CLUSTER, 8, 2)).unwrap_err();
    assert_eq!(
        error.to_string(),
        "shard count differs: node 2 has 8 shards, node 1 has 4; the shard count is fixed \
         when a cluster is created and must match on every node"
    );

    let error = local.check(&Handshake::new(CLUSTER, 4, 1)).unwrap_err();
    assert_eq!(error, HandshakeError::OwnNodeId(1));
    let zero = Handshake {
        node_id: 0,
        ..Handshake::new(CLUSTER, 4, 2)
    };
    assert_eq!(local.check(&zero), Err(HandshakeError::NodeIdZero));
}

#[test]
fn a_refusal_carries_the_reason_to_the_refused_node() {
    // Phase 1: node 2 refuses node 1 and says why.
    let local = Handshake::new(CLUSTER, 4, 2);
    let error = local.check(&Handshake::new(CLUSTER, 8, 1)).unwrap_err();
    let mut wire = encode(&PeerFrame::HandshakeRefused(error.to_string()));

    // Phase 2: node 1 reads the same words.
    let Some(PeerFrame::HandshakeRefused(reason)) = PeerCodec::default().decode(&mut wire).unwrap()
    else {
        panic!("not a refusal");
    };
    assert_eq!(reason, error.to_string());
    assert!(HandshakeError::Refused { reason }
        .to_string()
        .starts_with("refused by the peer: shard count differs: node 1 has 8 shards"));
}

#[test]
fn an_overlong_refusal_is_cut_at_a_character_boundary() {
    let reason = "é".repeat(REFUSAL_REASON_BYTES_MAX);
    let mut wire = encode(&PeerFrame::HandshakeRefused(reason));
    let Some(PeerFrame::HandshakeRefused(cut)) = PeerCodec::default().decode(&mut wire).unwrap()
    else {
        panic!("not a refusal");
    };
    assert_eq!(cut, "é".repeat(REFUSAL_REASON_BYTES_MAX / 2));
}

#[test]
fn a_later_version_handshake_with_more_fields_is_still_read() {
    let mut body = BytesMut::new();
    Handshake {
        version: 2,
        ..Handshake::new(CLUSTER, 4, 2)
    }
    .encode(&mut body);
    body.put_u64_le(42); // a field version 2 might add
    let Some(PeerFrame::Handshake(remote)) =
        decode_one(&frame_around(FrameKind::Handshake, &body)).unwrap()
    else {
        panic!("not a handshake");
    };
    assert!(matches!(
        Handshake::new(CLUSTER, 4, 1).check(&remote),
        Err(HandshakeError::Version { remote: 2, .. })
    ));
}
