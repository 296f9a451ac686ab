//! The handshake rules (same version, cluster id and shard count, a real other node), and
//! the incarnations and advertised address it carries: read back, or refused cleanly. (The
//! incarnation rules over connections are in `incarnations.rs`.)

use super::*;

#[test]
fn a_handshake_of_the_same_cluster_is_accepted_both_ways() {
    // Phase 1: node 1 connects and sends its handshake.
    let connecting = handshake_of(4, 1);
    let accepting = handshake_of(4, 2);
    let mut wire = encode(&PeerFrame::Handshake(connecting.clone()));

    // Phase 2: node 2 reads and checks it, then answers with its own identity.
    let Some(PeerFrame::Handshake(received)) = PeerCodec::default().decode(&mut wire).unwrap()
    else {
        panic!("not a handshake");
    };
    assert_eq!(accepting.check(&received), Ok(()));
    assert_eq!(received, connecting, "the address too");
    let mut wire = encode(&PeerFrame::HandshakeAccepted(accepting));

    // Phase 3: node 1 checks the answer the same way.
    let Some(PeerFrame::HandshakeAccepted(answer)) =
        PeerCodec::default().decode(&mut wire).unwrap()
    else {
        panic!("not an accepted handshake");
    };
    assert_eq!(connecting.check(&answer), Ok(()));
    assert_eq!(answer.address, Some(address_of(2)));
}

#[test]
fn handshake_mismatch_errors_name_what_differs() {
    let local = handshake_of(4, 1);

    let other_version = Handshake {
        version: 2,
        incarnation: 0,
        address: None,
        ..handshake_of(4, 2)
    };
    let error = local.check(&other_version).unwrap_err();
    assert_eq!(
        error.to_string(),
        "peer protocol version differs: node 2 speaks version 2, node 1 version 3; upgrade \
         the older node"
    );

    let other_cluster = Handshake::new(CLUSTER + 1, 4, 2, incarnation_of(2), address_of(2));
    let error = local.check(&other_cluster).unwrap_err();
    assert_eq!(
        error.to_string(),
        "cluster id differs: node 2 belongs to cluster 0123456789abcdeffedcba9876543211, node 1 \
         to cluster 0123456789abcdeffedcba9876543210; a node only joins the cluster it was \
         created for"
    );

    let error = local.check(&handshake_of(8, 2)).unwrap_err();
    assert_eq!(
        error.to_string(),
        "shard count differs: node 2 has 8 shards, node 1 has 4; the shard count is fixed \
         when a cluster is created and must match on every node"
    );

    let error = local.check(&handshake_of(4, 1)).unwrap_err();
    assert_eq!(error, HandshakeError::OwnNodeId(1));
    let zero = Handshake {
        node_id: 0,
        ..handshake_of(4, 2)
    };
    assert_eq!(local.check(&zero), Err(HandshakeError::NodeIdZero));
}

#[test]
fn a_refusal_carries_the_reason_to_the_refused_node() {
    // Phase 1: node 2 refuses node 1 and says why.
    let local = handshake_of(4, 2);
    let error = local.check(&handshake_of(8, 1)).unwrap_err();
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

/// The first 36 bytes of a handshake body, the same in every version.
fn fixed_fields(version: u16, node: u64) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_slice(b"KAHUPEER");
    body.put_u16_le(version);
    body.put_u16_le(4); // shard_count
    body.put_u64_le(node);
    body.put_u128_le(CLUSTER);
    body
}

fn put_str16(body: &mut BytesMut, text: &[u8]) {
    body.put_u16_le(text.len() as u16);
    body.put_slice(text);
}

#[test]
fn a_later_version_handshake_with_other_fields_is_read_up_to_its_version() {
    // Phase 1: a version 4 node sends fields this version does not know after the first
    // 36 bytes.
    let mut body = fixed_fields(4, 2);
    body.put_u64_le(42);

    // Phase 2: they are not read, and the check names the versions.
    let Some(PeerFrame::Handshake(remote)) =
        decode_one(&frame_around(FrameKind::Handshake, &body)).unwrap()
    else {
        panic!("not a handshake");
    };
    assert_eq!((remote.version, remote.node_id), (4, 2));
    assert_eq!((&remote.address, remote.incarnation), (&None, 0));
    assert!(matches!(
        handshake_of(4, 1).check(&remote),
        Err(HandshakeError::Version { remote: 4, .. })
    ));
}

#[test]
fn a_version_1_or_2_handshake_is_refused_with_the_version_message() {
    // A version 1 node sends the 36 bytes of its version; a version 2 node its addresses
    // after them, and no incarnations.
    let version_1 = fixed_fields(1, 2);
    let mut version_2 = fixed_fields(2, 2);
    put_str16(&mut version_2, b"127.0.0.1:9002");
    put_str16(&mut version_2, b"127.0.0.1:8002");
    for (version, body) in [(1, version_1), (2, version_2)] {
        let Some(PeerFrame::Handshake(remote)) =
            decode_one(&frame_around(FrameKind::Handshake, &body)).unwrap()
        else {
            panic!("not a handshake");
        };
        assert_eq!((&remote.address, remote.incarnation), (&None, 0));
        let error = handshake_of(4, 1).check(&remote).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "peer protocol version differs: node 2 speaks version {version}, node 1 version \
                 3; upgrade the older node"
            )
        );
    }
}

#[test]
fn the_advertised_address_round_trips_in_its_notation() {
    let address = PeerAddress::parse("[::1]:9001/kahu-2.example:8001").unwrap();
    let handshake = Handshake::new(CLUSTER, 4, 2, incarnation_of(2), address.clone());
    let mut wire = encode(&PeerFrame::HandshakeAccepted(handshake.clone()));
    let Some(PeerFrame::HandshakeAccepted(received)) =
        PeerCodec::default().decode(&mut wire).unwrap()
    else {
        panic!("not an accepted handshake");
    };
    assert_eq!(received, handshake);
    assert_eq!(
        received.address.unwrap().to_string(),
        "[::1]:9001/kahu-2.example:8001"
    );
}

#[test]
fn a_truncated_incarnation_or_address_is_a_malformed_frame() {
    // Every cut inside the incarnations and the addresses, each frame's checksums correct: an error naming the
    // field, never a panic.
    let whole = encode(&PeerFrame::Handshake(handshake_of(4, 2)));
    let body = &whole[PEER_HEADER_BYTES..];
    for cut in crate::peer::handshake::HANDSHAKE_BYTES..body.len() {
        let result = decode_one(&frame_around(FrameKind::Handshake, &body[..cut]));
        let error = result.unwrap_err().to_string();
        let fields = [
            "incarnation",
            "receiver_incarnation",
            "peer_address",
            "client_address",
        ];
        assert!(
            fields
                .iter()
                .any(|field| error.contains(&format!("body ends inside field `{field}`"))),
            "cut at {cut}: {error}"
        );
    }
}

#[test]
fn an_oversized_or_invalid_address_is_refused_cleanly() {
    let long = vec![b'a'; NODE_ADDRESS_BYTES_MAX + 1];
    let cases: [(&[u8], &[u8], &str); 7] = [
        (
            &long,
            b"127.0.0.1:8002",
            "peer_address of 256 bytes exceeds node_address_bytes_max (255)",
        ),
        (
            b"127.0.0.1:9002",
            &long,
            "client_address of 256 bytes exceeds node_address_bytes_max (255)",
        ),
        (
            b"localhost:9002",
            b"a:1",
            "the peer address `localhost:9002` is not IP:PORT",
        ),
        (b"127.0.0.1:9002", b"", "the client address is empty"),
        (b"127.0.0.1:9002", b"a/b:1", "contains '/'"),
        (b"127.0.0.1:9002", b"no-port", "is not HOST:PORT"),
        (
            b"127.0.0.1:9002",
            &[0xff, b':', b'1'],
            "field `client_address` is not UTF-8",
        ),
    ];
    for (peer, client, expected) in cases {
        let mut body = fixed_fields(PEER_PROTOCOL_VERSION, 2);
        body.put_u64_le(incarnation_of(2));
        body.put_u64_le(0); // receiver_incarnation
        put_str16(&mut body, peer);
        put_str16(&mut body, client);
        let result = decode_one(&frame_around(FrameKind::Handshake, &body));
        let error = result.unwrap_err();
        assert!(matches!(error, PeerError::Malformed { .. }), "{error:?}");
        assert!(error.to_string().contains(expected), "{expected}: {error}");
    }
}

#[test]
fn a_handshake_of_this_version_is_read_exactly() {
    let mut body = encode(&PeerFrame::Handshake(handshake_of(4, 2))).split_off(PEER_HEADER_BYTES);
    body.put_u8(0);
    let error = decode_one(&frame_around(FrameKind::Handshake, &body)).unwrap_err();
    assert!(
        error.to_string().contains("1 bytes after the last field"),
        "{error}"
    );
}
