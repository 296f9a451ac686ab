//! Every hex dump in PROTOCOL.md decodes as one whole frame of the right direction, so the
//! specification cannot drift from the code.

use bytes::BytesMut;
use kahu_protocol::{
    ClientCodec, ErrorCode, Incoming, MemberChange, Members, MembersReply, Request, Response,
    ServerCodec,
};
use tokio_util::codec::Decoder;

const PROTOCOL_MD: &str = include_str!("../../PROTOCOL.md");

fn hex_tokens(line: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    for token in line.split_whitespace() {
        if token == "|" {
            continue;
        }
        match (token.len(), u8::from_str_radix(token, 16)) {
            (2, Ok(byte)) => bytes.push(byte),
            _ => break, // a trailing comment
        }
    }
    bytes
}

/// (direction, bytes) for each `C:`/`S:` hex dump, joining continuation lines.
fn dumps() -> Vec<(char, Vec<u8>)> {
    let mut dumps: Vec<(char, Vec<u8>)> = Vec::new();
    let mut in_dump = false;
    for line in PROTOCOL_MD.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = line
            .strip_prefix("C: ")
            .or_else(|| line.strip_prefix("S: "))
        {
            in_dump = rest.starts_with("cb ");
            if in_dump {
                dumps.push((line.chars().next().unwrap(), hex_tokens(rest)));
            }
        } else if in_dump && line.starts_with(' ') && !trimmed.is_empty() {
            let more = hex_tokens(trimmed);
            in_dump = !more.is_empty();
            dumps.last_mut().unwrap().1.extend(more);
        } else {
            in_dump = false;
        }
    }
    dumps
}

#[test]
fn every_hex_dump_in_protocol_md_is_one_valid_frame() {
    let dumps = dumps();
    assert!(dumps.len() >= 20, "found only {} hex dumps", dumps.len());
    for (direction, bytes) in dumps {
        let mut buffer = BytesMut::from(&bytes[..]);
        let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let context = format!("{direction}: {}", hex.join(" "));
        match direction {
            'C' => match ServerCodec::default().decode(&mut buffer) {
                Ok(Some(Incoming::Request { .. })) => {}
                other => panic!("{context}\n  decodes as {other:?}"),
            },
            _ => match ClientCodec::default().decode(&mut buffer) {
                Ok(Some(_)) => {}
                other => panic!("{context}\n  decodes as {other:?}"),
            },
        }
        assert!(
            buffer.is_empty(),
            "{context}\n  has {} bytes past its frame",
            buffer.len()
        );
    }
}

#[test]
fn the_members_examples_decode_to_the_changes_they_describe() {
    let mut requests = Vec::new();
    let mut responses = Vec::new();
    for (direction, bytes) in dumps() {
        let mut buffer = BytesMut::from(&bytes[..]);
        if direction == 'C' {
            if let Ok(Some(Incoming::Request {
                request_id,
                request,
            })) = ServerCodec::default().decode(&mut buffer)
            {
                requests.push((request_id, request));
            }
        } else if let Ok(Some(response)) = ClientCodec::default().decode(&mut buffer) {
            responses.push(response);
        }
    }
    let add = Request::Members(Members {
        shard: 0,
        change: MemberChange::Add {
            node: 4,
            address: "127.0.0.1:7004/127.0.0.1:8004".into(),
        },
    });
    let remove = Request::Members(Members {
        shard: 1,
        change: MemberChange::Remove { node: 3 },
    });
    assert!(requests.contains(&(9, add)), "the add example");
    assert!(requests.contains(&(10, remove)), "the remove example");
    let replies = [(9, vec![1, 2, 3, 4], 0), (10, vec![1, 2], 1)];
    for (request_id, voters, shard) in replies {
        let reply = Response::Members(MembersReply { shard, voters });
        assert!(
            responses.contains(&(request_id, reply)),
            "reply {request_id}"
        );
    }
    let codes: Vec<(u32, Option<ErrorCode>)> = responses
        .iter()
        .filter_map(|(id, response)| match response {
            Response::Error(error) => Some((*id, error.code)),
            _ => None,
        })
        .collect();
    assert!(codes.contains(&(10, Some(ErrorCode::MembershipChangePending))));
    assert!(codes.contains(&(11, Some(ErrorCode::BadMembership))));
}

#[test]
fn the_help_line_in_the_docs_is_the_one_the_server_prints() {
    let readme = include_str!("../../README.md");
    assert!(readme.contains(kahu_protocol::text::HELP), "README.md");
    let escaped = kahu_protocol::text::HELP.replace('|', "\\|");
    assert!(PROTOCOL_MD.contains(&escaped), "PROTOCOL.md reply table");
}
