//! Snapshots in chunks, without sockets: the INSTALL_SNAPSHOT_CHUNK bytes (round trips,
//! every truncation, bad fields), the sender's cutting ([`Chunker`]) and the receiver's
//! putting back together ([`Reassembly`]).

use super::loopback::Logs;
use super::*;
use crate::peer::chunker::Chunker;
use crate::peer::frame::{split_into_batches, BATCH_FRAME_BYTES_MIN};
use crate::peer::reassembly::{Reassembly, ReassemblyError, SNAPSHOT_REASSEMBLY_BYTES_MAX};

// ---- helpers -------------------------------------------------------------------------------

/// `length` bytes that tell their positions apart (a misplaced chunk shows).
fn data_of(length: usize) -> Bytes {
    let bytes: Vec<u8> = (0..length).map(|position| (position % 251) as u8).collect();
    Bytes::from(bytes)
}

/// An InstallSnapshot for `shard` from node 1 to node 2, of the snapshot at `index`.
fn snapshot_message(shard: ShardId, index: u64, data: Bytes) -> ShardMessage {
    ShardMessage {
        shard,
        message: Message {
            from: 1,
            to: 2,
            term: 3,
            body: MessageBody::InstallSnapshot {
                snapshot: Snapshot {
                    meta: SnapshotMeta {
                        index,
                        term: 2,
                        membership: Membership::new([1, 2, 3]),
                    },
                    data,
                },
            },
        },
    }
}

fn heartbeat_of(shard: ShardId, commit: u64) -> ShardMessage {
    heartbeat(shard, 1, 2, 3, commit)
}

/// What a turn writes, by name: `heartbeat S/C` (shard, commit), `snapshot S/I` (whole),
/// `chunk S/I@OFFSET` (shard, index, offset).
fn names(messages: &[BatchMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|message| match message {
            BatchMessage::Raft(ShardMessage { shard, message }) => match &message.body {
                MessageBody::Heartbeat { commit, .. } => format!("heartbeat {shard}/{commit}"),
                MessageBody::InstallSnapshot { snapshot } => {
                    format!("snapshot {shard}/{}", snapshot.meta.index)
                }
                body => panic!("unexpected {}", body.name()),
            },
            BatchMessage::Chunk(chunk) => {
                format!(
                    "chunk {}/{}@{}",
                    chunk.shard, chunk.meta.index, chunk.offset
                )
            }
        })
        .collect()
}

/// The chunks a chunker cuts `message` into, turn by turn, with nothing else queued.
fn cut(message: ShardMessage, chunk_bytes: usize) -> Vec<SnapshotChunk> {
    let mut chunker = Chunker::new(chunk_bytes, PEER_FRAME_BYTES_MAX);
    let mut chunks = Vec::new();
    let mut turn = chunker.turn([message]);
    loop {
        for message in turn.messages {
            let BatchMessage::Chunk(chunk) = message else {
                panic!("not a chunk: {message:?}");
            };
            chunks.push(chunk);
        }
        if !chunker.is_sending() {
            return chunks;
        }
        turn = chunker.turn([]);
    }
}

/// A BATCH body of one INSTALL_SNAPSHOT_CHUNK for shard 0 from node 1 to node 2, with
/// fields as given (`data_len` apart from the data, to lie about it).
fn chunk_body(offset: u64, total: u64, data_len: u32, data: &[u8]) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_u32_le(1); // count
    body.put_u16_le(0); // shard
    body.put_u64_le(1); // from
    body.put_u64_le(2); // to
    body.put_u64_le(3); // term
    body.put_u8(11); // INSTALL_SNAPSHOT_CHUNK
    body.put_u64_le(40); // index
    body.put_u64_le(2); // term
    body.put_u16_le(0); // membership: no voters
    body.put_u16_le(0); // and no addresses
    body.put_u64_le(offset);
    body.put_u64_le(total);
    body.put_u32_le(data_len);
    body.put_slice(data);
    body
}

// ---- bytes ---------------------------------------------------------------------------------

proptest! {
    #[test]
    fn a_chunk_round_trips_in_the_bytes_it_claims(chunk in chunk_strategy()) {
        let message = BatchMessage::Chunk(chunk);
        let frame = PeerFrame::Batch(vec![message.clone()]);
        let bytes = encode(&frame);
        prop_assert_eq!(bytes.len(), BATCH_FRAME_BYTES_MIN + message.encoded_bytes());
        prop_assert_eq!(decode_one(&bytes).unwrap(), Some(frame));
    }
}

#[test]
fn every_truncation_of_a_chunk_is_partial_input_and_every_cut_body_is_malformed() {
    let chunk = cut(snapshot_message(0, 40, data_of(2500)), 1000).remove(1);
    let bytes = encode(&PeerFrame::Batch(vec![BatchMessage::Chunk(chunk)]));
    // Phase 1: fed one byte at a time, the decoder waits at every cut.
    let mut codec = PeerCodec::default();
    let mut buffer = BytesMut::new();
    for (cut, &byte) in bytes.iter().enumerate() {
        let result = codec.decode(&mut buffer);
        assert!(matches!(result, Ok(None)), "cut at {cut} gave {result:?}");
        buffer.put_u8(byte);
    }
    assert!(matches!(codec.decode(&mut buffer), Ok(Some(_))));

    // Phase 2: a body cut short but checksummed again is malformed at every cut.
    let body = &bytes[PEER_HEADER_BYTES..];
    for cut in 0..body.len() {
        let result = decode_one(&frame_around(FrameKind::Batch, &body[..cut]));
        assert!(
            matches!(result, Err(PeerError::Malformed { .. })),
            "body cut at {cut} gave {result:?}"
        );
    }
}

#[test]
fn a_chunk_with_bad_fields_is_refused_naming_them() {
    let past_max = SNAPSHOT_BYTES_MAX + 1;
    let cases: [(BytesMut, String); 5] = [
        (
            chunk_body(0, past_max, 4, b"KAHU"),
            format!("field `total` is {past_max}, past snapshot_bytes_max"),
        ),
        (
            chunk_body(0, 10, 0, b""),
            "a snapshot chunk of no bytes".into(),
        ),
        (
            chunk_body(8, 10, 4, b"KAHU"),
            "a snapshot chunk of 4 bytes at offset 8 ends past `total` (10)".into(),
        ),
        (
            chunk_body(u64::MAX - 1, 10, 4, b"KAHU"),
            "ends past `total` (10)".into(),
        ),
        (
            chunk_body(0, 10, 9, b"KAHU"),
            "body ends inside field `data`".into(),
        ),
    ];
    for (body, expected) in cases {
        let error = decode_one(&frame_around(FrameKind::Batch, &body)).unwrap_err();
        assert!(matches!(error, PeerError::Malformed { .. }), "{error:?}");
        assert!(error.to_string().contains(&expected), "{error}");
    }
    // And a sound one, for contrast.
    let sound = decode_one(&frame_around(
        FrameKind::Batch,
        &chunk_body(6, 10, 4, b"KAHU"),
    ));
    assert!(matches!(sound, Ok(Some(PeerFrame::Batch(_)))), "{sound:?}");
}

#[test]
fn a_chunk_is_not_a_raft_message() {
    let body = chunk_body(0, 10, 4, b"KAHU");
    let message = Bytes::copy_from_slice(&body[6..]); // after count and shard
    let error = decode_message(message).unwrap_err();
    assert!(error.to_string().contains("not a Raft message"), "{error}");
}

// ---- cutting -------------------------------------------------------------------------------

#[test]
fn a_snapshot_of_three_and_a_half_chunks_goes_as_four_chunks_in_order() {
    let data = data_of(3500);
    let chunks = cut(snapshot_message(1, 40, data.clone()), 1000);
    let layout: Vec<(u64, usize, u64, bool)> = chunks
        .iter()
        .map(|chunk| (chunk.offset, chunk.data.len(), chunk.total, chunk.is_last()))
        .collect();
    assert_eq!(
        layout,
        [
            (0, 1000, 3500, false),
            (1000, 1000, 3500, false),
            (2000, 1000, 3500, false),
            (3000, 500, 3500, true)
        ]
    );
    let joined: Vec<u8> = chunks
        .iter()
        .flat_map(|chunk| chunk.data.to_vec())
        .collect();
    assert_eq!(joined, data);
    let original = snapshot_message(1, 40, data);
    let MessageBody::InstallSnapshot { snapshot } = &original.message.body else {
        unreachable!("a snapshot message")
    };
    for chunk in &chunks {
        assert_eq!(
            (chunk.shard, chunk.from, chunk.to, chunk.term),
            (1, 1, 2, 3)
        );
        assert_eq!(chunk.meta, snapshot.meta);
    }
}

#[test]
fn a_snapshot_within_one_chunk_is_sent_whole() {
    for length in [0, 10, 1000] {
        let mut chunker = Chunker::new(1000, PEER_FRAME_BYTES_MAX);
        let message = snapshot_message(0, 40, data_of(length));
        let turn = chunker.turn([message.clone()]);
        assert_eq!(turn.messages, [BatchMessage::Raft(message)]);
        assert!(!chunker.is_sending());
    }
}

#[test]
fn chunks_are_cut_to_fit_a_small_frame() {
    // Chunks of up to 1 MiB asked for, but frames of 600 bytes: each chunk fills a frame.
    let frame_bytes_max = 600;
    let mut chunker = Chunker::new(1 << 20, frame_bytes_max);
    let data = data_of(5000);
    let mut turn = chunker.turn([snapshot_message(0, 40, data.clone())]);
    let mut joined = Vec::new();
    loop {
        let batches = split_into_batches(turn.messages.clone(), frame_bytes_max);
        assert!(batches.too_large.is_empty());
        for message in turn.messages {
            let BatchMessage::Chunk(chunk) = &message else {
                panic!("not a chunk");
            };
            assert!(BATCH_FRAME_BYTES_MIN + message.encoded_bytes() <= frame_bytes_max);
            joined.extend_from_slice(&chunk.data);
        }
        if !chunker.is_sending() {
            break;
        }
        turn = chunker.turn([]);
    }
    assert_eq!(joined, data);
}

#[test]
fn a_snapshot_whose_chunk_has_no_room_in_a_frame_is_sent_whole_and_set_apart() {
    // A chunk's fields alone (shard, envelope, position, membership, offset, total,
    // data_len) take more than a frame of 100 bytes: the snapshot cannot be cut.
    let mut chunker = Chunker::new(1000, 100);
    let message = snapshot_message(0, 40, data_of(5000));
    let turn = chunker.turn([message.clone()]);
    assert!(!chunker.is_sending());
    let batches = split_into_batches(turn.messages, 100);
    assert_eq!(batches.too_large, [BatchMessage::Raft(message)]);
}

#[test]
fn other_messages_go_before_each_chunk_and_pass_the_snapshot() {
    let mut chunker = Chunker::new(1000, PEER_FRAME_BYTES_MAX);
    // Phase 1: heartbeats of both shards around a snapshot of shard 0 go first.
    let turn = chunker.turn([
        heartbeat_of(1, 1),
        snapshot_message(0, 40, data_of(2500)),
        heartbeat_of(0, 2),
    ]);
    assert_eq!(
        names(&turn.messages),
        ["heartbeat 1/1", "heartbeat 0/2", "chunk 0/40@0"]
    );
    // Phase 2: what is queued between chunks goes between them.
    let turn = chunker.turn([heartbeat_of(1, 3), heartbeat_of(0, 4)]);
    assert_eq!(
        names(&turn.messages),
        ["heartbeat 1/3", "heartbeat 0/4", "chunk 0/40@1000"]
    );
    // Phase 3: a turn with nothing queued writes the next chunk; then nothing is left.
    assert_eq!(names(&chunker.turn([]).messages), ["chunk 0/40@2000"]);
    assert!(!chunker.is_sending());
    assert!(chunker.turn([]).messages.is_empty());
}

#[test]
fn one_snapshot_at_a_time_and_a_resent_one_is_dropped() {
    let mut chunker = Chunker::new(1000, PEER_FRAME_BYTES_MAX);
    let first = || snapshot_message(0, 40, data_of(2500));
    // Phase 1: shard 0's snapshot starts; sent again (its leader timed out), it is dropped.
    let turn = chunker.turn([first()]);
    assert_eq!(names(&turn.messages), ["chunk 0/40@0"]);
    let turn = chunker.turn([first()]);
    assert_eq!(
        (names(&turn.messages), turn.superseded),
        (vec!["chunk 0/40@1000".to_string()], 1)
    );

    // Phase 2: a snapshot of shard 1 waits; a later one of shard 1 takes its place.
    let turn = chunker.turn([snapshot_message(1, 70, data_of(1500))]);
    assert_eq!(
        (names(&turn.messages), turn.superseded),
        (vec!["chunk 0/40@2000".to_string()], 0)
    );
    assert_eq!(chunker.snapshots(), 1);
    let turn = chunker.turn([snapshot_message(1, 90, data_of(1500))]);
    assert_eq!(
        (names(&turn.messages), turn.superseded),
        (vec!["chunk 1/90@0".to_string()], 1)
    );

    // Phase 3: the later one goes to its end, the earlier one of shard 1 never.
    assert_eq!(names(&chunker.turn([]).messages), ["chunk 1/90@1000"]);
    assert!(!chunker.is_sending());
}

// ---- putting back together -----------------------------------------------------------------

/// Adds `chunks` in order; the messages they completed.
fn add_all(
    reassembly: &mut Reassembly,
    chunks: impl IntoIterator<Item = SnapshotChunk>,
) -> Vec<ShardMessage> {
    let mut delivered = Vec::new();
    for chunk in chunks {
        delivered.extend(reassembly.add(chunk).expect("within the bounds"));
    }
    delivered
}

#[test]
fn chunks_in_order_deliver_one_install_snapshot_equal_to_the_original() {
    let original = snapshot_message(2, 40, data_of(3500));
    let chunks = cut(original.clone(), 1000);
    let mut reassembly = Reassembly::new(1, SNAPSHOT_REASSEMBLY_BYTES_MAX);
    let (last, before) = chunks.split_last().unwrap();
    assert!(add_all(&mut reassembly, before.to_vec()).is_empty());
    assert_eq!(reassembly.bytes(), 3000);
    assert_eq!(reassembly.add(last.clone()).unwrap(), Some(original));
    assert_eq!(reassembly.bytes(), 0);
}

#[test]
fn a_gap_drops_the_partial_snapshot_and_delivers_nothing() {
    let (logs, _guard) = Logs::capture();
    let mut chunks = cut(snapshot_message(0, 40, data_of(3500)), 1000);
    chunks.remove(1);
    let mut reassembly = Reassembly::new(1, SNAPSHOT_REASSEMBLY_BYTES_MAX);
    assert!(add_all(&mut reassembly, chunks).is_empty());
    assert_eq!(reassembly.bytes(), 0);
    let text = logs.text();
    assert!(text.contains("WARN"), "{text}");
    assert!(
        text.contains("dropped a partial snapshot: a chunk at offset 2000, after 1000 bytes"),
        "{text}"
    );
}

#[test]
fn a_changed_index_term_membership_or_total_drops_the_partial_snapshot() {
    type Change = fn(&mut SnapshotChunk);
    let changes: [(&str, Change); 5] = [
        ("index", |chunk| chunk.meta.index += 1),
        ("snapshot term", |chunk| chunk.meta.term += 1),
        ("message term", |chunk| chunk.term += 1),
        ("membership", |chunk| {
            chunk.meta.membership = Membership::new([1, 2])
        }),
        ("total", |chunk| chunk.total += 1),
    ];
    for (what, change) in changes {
        let (logs, _guard) = Logs::capture();
        let mut chunks = cut(snapshot_message(0, 40, data_of(3500)), 1000);
        change(&mut chunks[1]);
        let mut reassembly = Reassembly::new(1, SNAPSHOT_REASSEMBLY_BYTES_MAX);
        assert!(add_all(&mut reassembly, chunks).is_empty(), "{what}");
        assert_eq!(reassembly.bytes(), 0, "{what}");
        assert!(logs.text().contains("dropped a partial snapshot"), "{what}");
    }
}

#[test]
fn a_snapshot_started_again_at_offset_zero_replaces_the_partial_one() {
    let older = cut(snapshot_message(0, 40, data_of(3500)), 1000);
    let newer = snapshot_message(0, 41, data_of(2100));
    let mut reassembly = Reassembly::new(1, SNAPSHOT_REASSEMBLY_BYTES_MAX);
    assert!(add_all(&mut reassembly, older[..2].to_vec()).is_empty());
    assert_eq!(add_all(&mut reassembly, cut(newer.clone(), 1000)), [newer]);
    assert_eq!(reassembly.bytes(), 0);
}

#[test]
fn a_total_past_the_bound_is_an_error_and_drops_the_partial_snapshot() {
    let mut reassembly = Reassembly::new(1, 2500);
    // Phase 1: a snapshot of 3500 bytes is refused at its first chunk.
    let chunks = cut(snapshot_message(0, 40, data_of(3500)), 1000);
    let result = reassembly.add(chunks[0].clone());
    assert!(
        matches!(
            result,
            Err(ReassemblyError::SnapshotTooLarge {
                total: 3500,
                max: 2500,
                ..
            })
        ),
        "{result:?}"
    );
    // Phase 2: a chunk claiming a larger total drops the partial snapshot it interrupts.
    let fitting = cut(snapshot_message(0, 41, data_of(2000)), 1000);
    assert!(reassembly.add(fitting[0].clone()).unwrap().is_none());
    assert_eq!(reassembly.bytes(), 1000);
    let mut claims_more = fitting[1].clone();
    claims_more.total = 1 << 40;
    assert!(reassembly.add(claims_more).is_err());
    assert_eq!(reassembly.bytes(), 0);
    assert!(
        reassembly.add(fitting[1].clone()).unwrap().is_none(),
        "nothing to continue"
    );
}

#[test]
fn the_partial_snapshots_of_one_connection_are_bounded_together() {
    let mut reassembly = Reassembly::new(1, 2500);
    let shard_0 = cut(snapshot_message(0, 40, data_of(2000)), 1000);
    let shard_1 = cut(snapshot_message(1, 40, data_of(2000)), 1000);
    assert!(add_all(&mut reassembly, [shard_0[0].clone(), shard_1[0].clone()]).is_empty());
    assert_eq!(reassembly.bytes(), 2000);
    let result = reassembly.add(shard_1[1].clone());
    assert!(
        matches!(
            result,
            Err(ReassemblyError::TooManyBytes {
                shard: 1,
                bytes: 3000,
                max: 2500
            })
        ),
        "{result:?}"
    );
    assert!(result
        .unwrap_err()
        .to_string()
        .contains("past snapshot_reassembly_bytes_max"));
}

#[test]
fn a_closed_connection_drops_its_partial_snapshots() {
    let original = snapshot_message(0, 40, data_of(3500));
    let chunks = cut(original.clone(), 1000);
    // Phase 1: half the snapshot arrives on a connection that then closes.
    let mut first = Reassembly::new(1, SNAPSHOT_REASSEMBLY_BYTES_MAX);
    assert!(add_all(&mut first, chunks[..2].to_vec()).is_empty());
    drop(first);
    // Phase 2: the rest, on the next connection, continues nothing.
    let mut second = Reassembly::new(1, SNAPSHOT_REASSEMBLY_BYTES_MAX);
    assert!(add_all(&mut second, chunks[2..].to_vec()).is_empty());
    assert_eq!(second.bytes(), 0);
    // Phase 3: the snapshot sent again from its start arrives whole.
    assert_eq!(add_all(&mut second, chunks), [original]);
}
