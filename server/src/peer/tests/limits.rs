//! Limits checked before allocation, and bad input named in the error.

use super::*;

#[test]
fn an_oversized_length_is_refused_from_the_header_alone() {
    for body_len in [
        (PEER_FRAME_BYTES_MAX - PEER_HEADER_BYTES + 1) as u32,
        u32::MAX,
    ] {
        // Phase 1: a header that claims a body past the limit, with a valid checksum.
        let mut header = frame_around(FrameKind::Batch, &[]);
        header[4..8].copy_from_slice(&body_len.to_le_bytes());
        let header_crc = crc32c::crc32c(&header[..12]);
        header[12..16].copy_from_slice(&header_crc.to_le_bytes());

        // Phase 2: refused at once, and no room was reserved for the body.
        let capacity_before = header.capacity();
        let result = PeerCodec::default().decode(&mut header);
        assert!(
            matches!(result, Err(PeerError::FrameTooLarge { max, .. }) if max == PEER_FRAME_BYTES_MAX),
            "{result:?}"
        );
        assert_eq!(header.capacity(), capacity_before);
    }
}

#[test]
fn a_frame_at_the_limit_is_still_waited_for() {
    let mut header = frame_around(FrameKind::Batch, &[]);
    let body_len = (PEER_FRAME_BYTES_MAX - PEER_HEADER_BYTES) as u32;
    header[4..8].copy_from_slice(&body_len.to_le_bytes());
    let header_crc = crc32c::crc32c(&header[..12]);
    header[12..16].copy_from_slice(&header_crc.to_le_bytes());
    assert!(matches!(PeerCodec::default().decode(&mut header), Ok(None)));
}

#[test]
fn counts_past_the_bytes_left_are_refused_before_allocating() {
    // A batch that claims u32::MAX messages in 4 bytes: reserving for them would abort.
    let result = decode_one(&frame_around(FrameKind::Batch, &u32::MAX.to_le_bytes()));
    assert!(
        matches!(result, Err(PeerError::Malformed { .. })),
        "{result:?}"
    );

    // An append that claims u32::MAX entries.
    let mut body = BytesMut::new();
    body.put_u32_le(1);
    body.put_u16_le(0);
    encode_message(
        &Message {
            from: 1,
            to: 2,
            term: 1,
            body: MessageBody::Append {
                prev_index: 0,
                prev_term: 0,
                entries: Vec::new(),
                commit: 0,
            },
        },
        &mut body,
    );
    let count_offset = body.len() - 4;
    body[count_offset..].copy_from_slice(&u32::MAX.to_le_bytes());
    let result = decode_one(&frame_around(FrameKind::Batch, &body));
    let error = result.unwrap_err().to_string();
    assert!(error.contains("field `count` is 4294967295"), "{error}");
}

#[test]
fn a_frame_too_large_to_send_is_refused_and_nothing_is_written() {
    let snapshot = Snapshot {
        meta: SnapshotMeta::default(),
        data: Bytes::from(vec![0; PEER_FRAME_BYTES_MAX]),
    };
    let frame = PeerFrame::batch(vec![ShardMessage {
        shard: 0,
        message: Message {
            from: 1,
            to: 2,
            term: 1,
            body: MessageBody::InstallSnapshot { snapshot },
        },
    }]);
    let mut dst = BytesMut::from(&b"earlier frames"[..]);
    let result = PeerCodec::default().encode(&frame, &mut dst);
    assert!(
        matches!(result, Err(PeerError::FrameTooLarge { .. })),
        "{result:?}"
    );
    assert_eq!(&dst[..], b"earlier frames");
}

#[test]
fn a_client_frame_on_the_peer_port_fails_on_its_first_byte() {
    let error = decode_one(&[kahu_protocol::MAGIC]).unwrap_err();
    assert!(matches!(error, PeerError::BadMagic(0xCB)));
    assert!(error
        .to_string()
        .contains("is a client connected to the peer port?"));
}

#[test]
fn body_errors_name_the_field() {
    let mut body = BytesMut::new();
    body.put_u32_le(1); // count
    body.put_u16_le(0); // shard
    body.put_u64_le(1); // from
    body.put_u64_le(2); // to
    body.put_u64_le(3); // term
    body.put_u8(2); // PRE_VOTE_RESPONSE
    body.put_u8(7); // granted: not a bool
    let error = decode_one(&frame_around(FrameKind::Batch, &body)).unwrap_err();
    assert_eq!(
        error.to_string(),
        "malformed peer BATCH frame at body byte 31: field `granted` is 7, not 0 or 1"
    );

    let mut body = body[..31].to_vec();
    body[30] = 99; // an unknown message type
    let error = decode_one(&frame_around(FrameKind::Batch, &body)).unwrap_err();
    assert!(
        error.to_string().contains("unknown message type 99"),
        "{error}"
    );

    let mut voters = BytesMut::new();
    voters.put_u16_le(2);
    voters.put_u64_le(5);
    voters.put_u64_le(5);
    let mut body = body[..30].to_vec();
    body.push(9); // INSTALL_SNAPSHOT
    body.extend_from_slice(&[0; 16]); // index, term
    body.extend_from_slice(&voters);
    let error = decode_one(&frame_around(FrameKind::Batch, &body)).unwrap_err();
    assert!(
        error.to_string().contains("voter 5 is 0 or not above"),
        "{error}"
    );
}
