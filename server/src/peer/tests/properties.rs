//! Properties over generated messages and frames, and one message of every kind by name.

use super::*;

proptest! {
    #[test]
    fn every_message_round_trips_in_the_bytes_it_claims(message in message_strategy()) {
        let mut bytes = BytesMut::new();
        encode_message(&message, &mut bytes);
        prop_assert_eq!(message_bytes(&message), bytes.len());
        prop_assert_eq!(decode_message(bytes.freeze()).unwrap(), message);
    }

    #[test]
    fn a_stream_of_frames_decodes_the_same_in_any_chunks(
        frames in proptest::collection::vec(frame_strategy(), 1..5),
        cut_fractions in proptest::collection::vec(0.0f64..1.0, 0..8),
    ) {
        let mut stream = BytesMut::new();
        let mut codec = PeerCodec::default();
        for frame in &frames {
            codec.encode(frame, &mut stream).unwrap();
        }
        let mut cuts: Vec<usize> =
            cut_fractions.iter().map(|f| (f * stream.len() as f64) as usize).collect();
        cuts.push(stream.len());
        cuts.sort_unstable();
        let mut buffer = BytesMut::new();
        let mut decoded = Vec::new();
        let mut fed = 0;
        for cut in cuts {
            buffer.extend_from_slice(&stream[fed..cut]);
            fed = cut;
            while let Some(frame) = codec.decode(&mut buffer).unwrap() {
                decoded.push(frame);
            }
        }
        prop_assert_eq!(decoded, frames);
        prop_assert!(buffer.is_empty());
    }

    #[test]
    fn every_truncation_point_is_partial_input(frame in frame_strategy()) {
        // Fed one byte at a time, the decoder waits at every cut, in both of its states,
        // and yields the frame with the last byte.
        let bytes = encode(&frame);
        let mut codec = PeerCodec::default();
        let mut buffer = BytesMut::new();
        for (cut, &byte) in bytes.iter().enumerate() {
            let result = codec.decode(&mut buffer);
            prop_assert!(matches!(result, Ok(None)), "cut at {} gave {:?}", cut, result);
            buffer.put_u8(byte);
        }
        prop_assert_eq!(codec.decode(&mut buffer).unwrap(), Some(frame));
    }

    #[test]
    fn every_flipped_bit_is_detected(frame in frame_strategy(), bit in any::<prop::sample::Index>()) {
        let mut bytes = encode(&frame);
        let bit = bit.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);
        let result = decode_one(&bytes);
        prop_assert!(result.is_err(), "flipped bit {} gave {:?}", bit, result);
    }

    #[test]
    fn garbage_never_panics_or_over_allocates(garbage in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut buffer = BytesMut::from(&garbage[..]);
        let _ = PeerCodec::default().decode(&mut buffer);
        prop_assert!(buffer.capacity() <= PEER_FRAME_BYTES_MAX.max(garbage.len()));
    }

    #[test]
    fn garbage_body_behind_a_sound_header_never_panics(
        kind in proptest::sample::select(&[0x01u8, 0x02, 0x03, 0x04][..]),
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let kind = FrameKind::from_u8(kind).unwrap();
        let _ = decode_one(&frame_around(kind, &body));
    }
}

proptest! {
    // Quadratic in the frame's size: fewer and smaller cases.
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn every_truncated_body_behind_a_sound_header_is_an_error(frame in batch_strategy()) {
        // A body cut short but checksummed again, as a buggy peer would send it: never a
        // panic, never a frame, always an error naming where it ends.
        let bytes = encode(&frame);
        let body = &bytes[PEER_HEADER_BYTES..];
        for cut in 0..body.len() {
            let result = decode_one(&frame_around(FrameKind::Batch, &body[..cut]));
            prop_assert!(
                matches!(result, Err(PeerError::Malformed { .. })),
                "body cut at {} gave {:?}", cut, result
            );
        }
    }
}

#[test]
fn one_message_of_every_kind_with_entries_of_every_kind_round_trips() {
    // Phase 1: one entry of each kind, including a membership.
    let entries = vec![
        Entry {
            index: 10,
            term: 2,
            kind: EntryKind::Noop,
        },
        grant(11, b"backup-lock", b"host-1"),
        Entry {
            index: 12,
            term: 2,
            kind: EntryKind::Command(Command::Extend {
                key: Bytes::from_static(b"backup-lock"),
                token: (2 << 32) | 1,
                ttl_ms: 30_000,
            }),
        },
        Entry {
            index: 13,
            term: 2,
            kind: EntryKind::Command(Command::Release {
                key: Bytes::from_static(b"backup-lock"),
                token: (2 << 32) | 1,
            }),
        },
        Entry {
            index: 14,
            term: 2,
            kind: EntryKind::Membership(Membership::new([1, 2, 3])),
        },
    ];
    // Phase 2: one message of each body, all in one batch across shards.
    let bodies = vec![
        MessageBody::PreVote {
            last_log_index: 9,
            last_log_term: 1,
        },
        MessageBody::PreVoteResponse { granted: true },
        MessageBody::Vote {
            last_log_index: 9,
            last_log_term: 1,
            transfer: true,
        },
        MessageBody::VoteResponse { granted: false },
        MessageBody::Append {
            prev_index: 9,
            prev_term: 1,
            entries,
            commit: 9,
        },
        MessageBody::AppendResponse {
            success: false,
            index: 9,
            hint_index: 7,
            hint_term: 1,
        },
        MessageBody::Heartbeat {
            commit: 14,
            context: 3,
        },
        MessageBody::HeartbeatResponse { context: 3 },
        MessageBody::InstallSnapshot {
            snapshot: Snapshot {
                meta: SnapshotMeta {
                    index: 100,
                    term: 2,
                    membership: Membership::new([1, 2, 3]),
                },
                data: Bytes::from_static(b"KAHUSNP1 and the locks"),
            },
        },
        MessageBody::TimeoutNow,
    ];
    assert_eq!(bodies.len(), 10, "one per MessageBody variant");
    let messages: Vec<ShardMessage> = bodies
        .into_iter()
        .enumerate()
        .map(|(shard, body)| ShardMessage {
            shard: shard as ShardId,
            message: Message {
                from: 1,
                to: 2,
                term: 2,
                body,
            },
        })
        .collect();
    let mut messages: Vec<BatchMessage> = messages.into_iter().map(BatchMessage::Raft).collect();
    messages.push(BatchMessage::Chunk(SnapshotChunk {
        shard: 10,
        from: 1,
        to: 2,
        term: 2,
        meta: SnapshotMeta {
            index: 100,
            term: 2,
            membership: Membership::new([1, 2, 3]),
        },
        offset: 8,
        total: 22,
        data: Bytes::from_static(b"and the locks"),
    }));
    let frame = PeerFrame::Batch(messages);

    // Phase 3: the frame comes back equal, with nothing left over.
    let mut bytes = encode(&frame);
    assert_eq!(
        PeerCodec::default().decode(&mut bytes).unwrap(),
        Some(frame)
    );
    assert!(bytes.is_empty());
}

proptest! {
    #[test]
    fn a_burst_is_split_into_full_frames_in_order_each_within_the_limit(
        frame in batch_strategy(),
        frame_bytes_max in 40usize..400,
    ) {
        let PeerFrame::Batch(messages) = frame else { unreachable!("a batch") };
        let batches = frame::split_into_batches(messages.clone(), frame_bytes_max);

        // Phase 1: each frame is at most the limit, and exactly the bytes it claims.
        for (frame_messages, frame_bytes) in &batches.frames {
            prop_assert!(*frame_bytes <= frame_bytes_max);
            prop_assert_eq!(encode(&PeerFrame::Batch(frame_messages.clone())).len(), *frame_bytes);
        }
        // Phase 2: a frame was closed only when the next message did not fit.
        for pair in batches.frames.windows(2) {
            let (_, bytes) = &pair[0];
            let next = pair[1].0[0].encoded_bytes();
            prop_assert!(bytes + next > frame_bytes_max);
        }
        // Phase 3: nothing lost, nothing reordered; only what fits no frame is set apart.
        let fits = |message: &BatchMessage| {
            frame::BATCH_FRAME_BYTES_MIN + message.encoded_bytes() <= frame_bytes_max
        };
        let sent: Vec<BatchMessage> =
            batches.frames.iter().flat_map(|(messages, _)| messages.clone()).collect();
        let expected: Vec<BatchMessage> = messages.iter().filter(|m| fits(m)).cloned().collect();
        prop_assert_eq!(sent, expected);
        let apart: Vec<BatchMessage> = messages.into_iter().filter(|m| !fits(m)).collect();
        prop_assert_eq!(batches.too_large, apart);
    }
}
