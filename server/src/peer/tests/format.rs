//! The byte format pinned by a hex dump, and every peer hex dump of PROTOCOL.md decoded.

use super::*;

use crate::peer::frame::FrameHeader;

/// The BATCH example of PROTOCOL.md: a heartbeat for shard 3 from node 1 to node 2.
const BATCH_HEX: &str = "cd 04 00 00 2f 00 00 00 \
    c6 3d b1 60 53 f9 a2 79 \
    01 00 00 00 03 00 \
    01 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 05 00 00 00 00 00 00 00 07 \
    07 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00";

#[test]
fn the_format_is_stable() {
    let bytes = encode(&PeerFrame::batch(vec![heartbeat(3, 1, 2, 5, 7)]));
    assert_eq!(hex(&bytes), hex(&hex_tokens(BATCH_HEX)));
    // The checksums in the literal are CRC-32C of the body and of the header's first 12 bytes.
    let body = &bytes[PEER_HEADER_BYTES..];
    assert_eq!(&bytes[8..12], &crc32c::crc32c(body).to_le_bytes());
    assert_eq!(&bytes[12..16], &crc32c::crc32c(&bytes[..12]).to_le_bytes());
    let header = FrameHeader::peek(&bytes).unwrap();
    assert_eq!((header.kind, header.body_len), (FrameKind::Batch, 47));
}

/// The bytes of a hex dump line: two-digit hex tokens, `|` between fields skipped, up to
/// the first other token (a comment).
fn hex_tokens(text: &str) -> Vec<u8> {
    text.split_whitespace()
        .filter(|&token| token != "|")
        .map_while(|token| {
            (token.len() == 2)
                .then(|| u8::from_str_radix(token, 16).ok())
                .flatten()
        })
        .collect()
}

/// Each ```peer-hex block of PROTOCOL.md: one frame, hex bytes per line, comments after.
fn protocol_md_dumps() -> Vec<Vec<u8>> {
    let mut dumps = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    for line in include_str!("../../../../PROTOCOL.md").lines() {
        match (&mut current, line.trim()) {
            (None, "```peer-hex") => current = Some(Vec::new()),
            (Some(_), "```") => dumps.push(current.take().unwrap()),
            (Some(bytes), line) => bytes.extend(hex_tokens(line)),
            (None, _) => {}
        }
    }
    dumps
}

#[test]
fn every_peer_hex_dump_in_protocol_md_is_one_valid_frame() {
    let dumps = protocol_md_dumps();
    assert!(
        dumps.len() >= 3,
        "found only {} peer hex dumps",
        dumps.len()
    );
    for dump in dumps {
        let mut buffer = BytesMut::from(&dump[..]);
        let result = PeerCodec::default().decode(&mut buffer);
        assert!(
            matches!(result, Ok(Some(_))),
            "{}\n  decodes as {result:?}",
            hex(&dump)
        );
        assert!(
            buffer.is_empty(),
            "{}\n  has bytes past its frame",
            hex(&dump)
        );
    }
}

/// The frames PROTOCOL.md shows, in its order.
fn protocol_md_examples() -> Vec<PeerFrame> {
    let append = ShardMessage {
        shard: 1,
        message: Message {
            from: 1,
            to: 2,
            term: 2,
            body: MessageBody::Append {
                prev_index: 9,
                prev_term: 1,
                entries: vec![
                    Entry {
                        index: 10,
                        term: 2,
                        kind: EntryKind::Noop,
                    },
                    grant(11, b"job", b"w1"),
                ],
                commit: 9,
            },
        },
    };
    let chunk = SnapshotChunk {
        shard: 0,
        from: 1,
        to: 2,
        term: 3,
        meta: SnapshotMeta {
            index: 40,
            term: 2,
            membership: Membership::new([1, 2, 3]),
        },
        offset: 0,
        total: 20_000_000,
        data: Bytes::from_static(b"KAHUSNP3"),
    };
    vec![
        PeerFrame::Handshake(handshake_of(4, 1).to_receiver(Some(incarnation_of(2)))),
        PeerFrame::HandshakeRefused("shard count differs".to_string()),
        PeerFrame::batch(vec![heartbeat(3, 1, 2, 5, 7)]),
        PeerFrame::batch(vec![append]),
        PeerFrame::Batch(vec![BatchMessage::Chunk(chunk)]),
    ]
}

#[test]
fn the_protocol_md_dumps_are_the_examples_byte_for_byte() {
    let examples: Vec<String> = protocol_md_examples()
        .iter()
        .map(|frame| hex(&encode(frame)))
        .collect();
    let dumps: Vec<String> = protocol_md_dumps().iter().map(|dump| hex(dump)).collect();
    assert_eq!(
        dumps, examples,
        "reprint them with print_the_protocol_md_examples"
    );
}

#[test]
#[ignore = "not a check: prints the dumps PROTOCOL.md shows"]
fn print_the_protocol_md_examples() {
    // For when the format changes on purpose:
    // `cargo test -p kahu-server --lib print_the_protocol -- --ignored --nocapture`.
    for frame in protocol_md_examples() {
        println!("{:?}\n{}\n", frame.kind(), hex(&encode(&frame)));
    }
}
