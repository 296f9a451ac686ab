//! Codec tests on plain bytes: round trips of every message, every split point of a
//! stream, oversized frames and arbitrary garbage.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

use super::*;
use crate::error::{ErrorClass, ErrorCode};
use crate::frame::{MAGIC, VERSION};
use crate::limits::{
    FRAME_BYTES_MAX, KEY_BYTES_MAX, OWNER_BYTES_MAX, TTL_MS_MAX, VOTERS_MAX, WAIT_MS_MAX,
};
use crate::members::{MemberChange, Members, MembersReply};
use crate::request::{Durability, Extend, Get, Hello, Lock, Unlock};
use crate::response::{
    Acquired, Busy, ErrorReply, Extended, HelloOk, InfoReply, LockInfo, NotHeld, Released,
};

fn bytes_strategy(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 1..=max).prop_map(Bytes::from)
}

fn durability_strategy() -> impl Strategy<Value = Durability> {
    prop_oneof![Just(Durability::Ephemeral), Just(Durability::Persistent)]
}

/// Valid node addresses: IPv4 or IPv6 peer, a name, IPv4 or IPv6 client, any ports.
fn node_address_strategy() -> impl Strategy<Value = String> {
    let peer = prop_oneof![
        any::<[u8; 4]>().prop_map(|ip| std::net::Ipv4Addr::from(ip).to_string()),
        any::<[u16; 8]>().prop_map(|ip| format!("[{}]", std::net::Ipv6Addr::from(ip))),
    ];
    let client = prop_oneof![
        "[a-z][a-z0-9.-]{0,60}",
        any::<[u8; 4]>().prop_map(|ip| std::net::Ipv4Addr::from(ip).to_string()),
        Just("[::1]".to_string()),
    ];
    (peer, any::<u16>(), client, any::<u16>())
        .prop_map(|(peer, peer_port, client, port)| format!("{peer}:{peer_port}/{client}:{port}"))
}

fn members_strategy() -> impl Strategy<Value = Request> {
    let change = prop_oneof![
        (1..=u64::MAX, node_address_strategy())
            .prop_map(|(node, address)| MemberChange::Add { node, address }),
        (1..=u64::MAX).prop_map(|node| MemberChange::Remove { node }),
    ];
    (any::<u16>(), change).prop_map(|(shard, change)| Request::Members(Members { shard, change }))
}

fn request_strategy() -> impl Strategy<Value = Request> {
    let key = || bytes_strategy(KEY_BYTES_MAX);
    let owner = || bytes_strategy(OWNER_BYTES_MAX);
    prop_oneof![
        (any::<u8>(), any::<u8>(), "[a-z0-9 -]{0,40}").prop_map(|(min, max, name)| {
            Request::Hello(Hello {
                version_min: min,
                version_max: max,
                client_name: name,
            })
        }),
        Just(Request::Ping),
        Just(Request::Info),
        (
            key(),
            owner(),
            1..=TTL_MS_MAX,
            0..=WAIT_MS_MAX,
            durability_strategy(),
            any::<bool>()
        )
            .prop_map(|(key, owner, ttl_ms, wait_ms, durability, if_not_held)| {
                Request::Lock(Lock {
                    key,
                    owner,
                    ttl_ms,
                    wait_ms,
                    durability,
                    if_not_held,
                })
            }),
        (key(), owner(), proptest::option::of(1..u64::MAX))
            .prop_map(|(key, owner, token)| Request::Unlock(Unlock { key, owner, token })),
        (
            key(),
            owner(),
            1..=TTL_MS_MAX,
            proptest::option::of(1..u64::MAX)
        )
            .prop_map(|(key, owner, ttl_ms, token)| Request::Extend(Extend {
                key,
                owner,
                ttl_ms,
                token,
            })),
        key().prop_map(|key| Request::Get(Get { key })),
        members_strategy(),
    ]
}

fn response_strategy() -> impl Strategy<Value = Response> {
    let holder = || {
        (any::<u64>(), any::<u64>(), bytes_strategy(OWNER_BYTES_MAX)).prop_map(
            |(token, remaining_ms, owner)| Busy {
                token,
                remaining_ms,
                owner,
            },
        )
    };
    prop_oneof![
        (any::<u8>(), "[a-z/0-9.]{0,20}", any::<u16>(), any::<u64>()).prop_map(
            |(version, server_name, shard_count, number)| Response::HelloOk(HelloOk {
                version,
                server_name,
                shard_count,
                frame_bytes_max: number as u32,
                key_bytes_max: number as u16,
                owner_bytes_max: (number >> 16) as u16,
                ttl_ms_max: number,
                wait_ms_max: !number,
            })
        ),
        Just(Response::Pong),
        (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(token, ttl_ms, reentered)| {
            Response::Acquired(Acquired {
                token,
                ttl_ms,
                reentered,
            })
        }),
        holder().prop_map(Response::Busy),
        holder().prop_map(Response::NotOwner),
        any::<u64>().prop_map(|token| Response::Released(Released { token })),
        (any::<u64>(), any::<u64>())
            .prop_map(|(token, ttl_ms)| Response::Extended(Extended { token, ttl_ms })),
        (holder(), any::<u32>(), durability_strategy()).prop_map(
            |(holder, waiters, durability)| {
                Response::LockInfo(LockInfo {
                    owner: holder.owner,
                    token: holder.token,
                    remaining_ms: holder.remaining_ms,
                    waiters,
                    durability,
                })
            }
        ),
        any::<u64>().prop_map(|last_token| Response::NotHeld(NotHeld { last_token })),
        proptest::collection::vec(("[a-z_]{1,20}", any::<u64>()), 0..30)
            .prop_map(|fields| Response::Info(InfoReply { fields })),
        (
            any::<u16>(),
            proptest::collection::btree_set(1..=u64::MAX, 1..=VOTERS_MAX)
        )
            .prop_map(|(shard, voters)| Response::Members(MembersReply {
                shard,
                voters: voters.into_iter().collect(),
            })),
        (proptest::sample::select(ErrorCode::ALL), "[ -~]{0,100}").prop_map(|(code, message)| {
            Response::Error(ErrorReply {
                code: Some(code),
                raw_code: code as u16,
                class: code.class(),
                message,
            })
        }),
    ]
}

fn encode_requests(requests: &[Request]) -> BytesMut {
    let mut codec = ClientCodec::default();
    let mut bytes = BytesMut::new();
    for (id, request) in requests.iter().enumerate() {
        codec.encode((id as u32, request), &mut bytes).unwrap();
    }
    bytes
}

/// Feeds `stream` to the server codec in chunks cut at `cuts`, returning every item.
fn decode_in_chunks(stream: &[u8], cuts: &[usize]) -> Vec<Incoming> {
    let mut codec = ServerCodec::default();
    let mut buffer = BytesMut::new();
    let mut items = Vec::new();
    let mut previous = 0;
    for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
        buffer.extend_from_slice(&stream[previous..cut]);
        previous = cut;
        while let Some(item) = codec.decode(&mut buffer).unwrap() {
            items.push(item);
        }
    }
    assert!(buffer.is_empty(), "bytes left over after the last frame");
    items
}

fn as_requests(items: Vec<Incoming>) -> Vec<Request> {
    items
        .into_iter()
        .map(|item| match item {
            Incoming::Request { request, .. } => request,
            Incoming::Invalid { error, .. } => panic!("valid request decoded as {error}"),
        })
        .collect()
}

proptest! {
    #[test]
    fn every_request_round_trips(requests in proptest::collection::vec(request_strategy(), 1..8)) {
        let bytes = encode_requests(&requests);
        prop_assert_eq!(as_requests(decode_in_chunks(&bytes, &[])), requests);
    }

    #[test]
    fn every_response_round_trips(response in response_strategy(), request_id in any::<u32>()) {
        let mut bytes = BytesMut::new();
        ServerCodec::default().encode((request_id, response.clone()), &mut bytes).unwrap();
        let decoded = ClientCodec::default().decode(&mut bytes).unwrap();
        prop_assert_eq!(decoded, Some((request_id, response)));
        prop_assert!(bytes.is_empty());
    }

    #[test]
    fn any_split_of_a_stream_decodes_the_same(
        requests in proptest::collection::vec(request_strategy(), 1..6),
        cut_fractions in proptest::collection::vec(0.0f64..1.0, 0..12),
    ) {
        let bytes = encode_requests(&requests);
        let mut cuts: Vec<usize> =
            cut_fractions.iter().map(|f| (f * bytes.len() as f64) as usize).collect();
        cuts.sort_unstable();
        prop_assert_eq!(as_requests(decode_in_chunks(&bytes, &cuts)), requests);
    }

    #[test]
    fn garbage_never_panics_or_over_allocates(garbage in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut codec = ServerCodec::default();
        let mut buffer = BytesMut::from(&garbage[..]);
        for _ in 0..garbage.len() + 1 {
            match codec.decode(&mut buffer) {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
        prop_assert!(buffer.capacity() <= FRAME_BYTES_MAX.max(garbage.len()) + 64);
    }

    #[test]
    fn garbage_body_behind_a_valid_header_is_answered_not_fatal(
        opcode in proptest::sample::select(&[0x01u8, 0x03, 0x04, 0x05, 0x06, 0x08][..]),
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut buffer = BytesMut::new();
        buffer.put_slice(&[MAGIC, VERSION, opcode, 0]);
        buffer.put_u32_le(99);
        buffer.put_u32_le(body.len() as u32);
        buffer.put_slice(&body);
        let item = ServerCodec::default().decode(&mut buffer).unwrap().unwrap();
        match item {
            Incoming::Request { request_id, request } => {
                prop_assert_eq!(request_id, 99);
                prop_assert!(request.validate().is_ok());
            }
            Incoming::Invalid { request_id, error } => {
                prop_assert_eq!(request_id, 99);
                prop_assert_eq!(error.code.class(), ErrorClass::Client);
            }
        }
    }
}

#[test]
fn every_split_point_of_one_lock_frame() {
    let request = Request::Lock(Lock {
        key: Bytes::from_static(b"job-queue-lock"),
        owner: Bytes::from_static(b"worker-1"),
        ttl_ms: 10_000,
        wait_ms: 8_000,
        durability: Durability::Ephemeral,
        if_not_held: false,
    });
    let bytes = encode_requests(std::slice::from_ref(&request));
    for cut in 0..=bytes.len() {
        assert_eq!(
            as_requests(decode_in_chunks(&bytes, &[cut])),
            vec![request.clone()]
        );
    }
    // Byte by byte.
    let cuts: Vec<usize> = (1..bytes.len()).collect();
    assert_eq!(as_requests(decode_in_chunks(&bytes, &cuts)), vec![request]);
}

#[test]
fn unlock_without_the_trailing_token_still_decodes() {
    // An UNLOCK as first specified: key and owner only.
    let mut bytes = BytesMut::new();
    bytes.put_slice(&[MAGIC, VERSION, 0x04, 0]);
    bytes.put_u32_le(3);
    bytes.put_u32_le(6);
    bytes.put_slice(&[1, 0, b'k', 1, 0, b'o']);
    let expected = Request::Unlock(Unlock {
        key: Bytes::from_static(b"k"),
        owner: Bytes::from_static(b"o"),
        token: None,
    });
    assert_eq!(as_requests(decode_in_chunks(&bytes, &[])), vec![expected]);
}

#[test]
fn oversized_frame_is_refused_from_its_header_alone() {
    let mut buffer = BytesMut::new();
    buffer.put_slice(&[MAGIC, VERSION, 0x03, 0]);
    buffer.put_u32_le(1);
    buffer.put_u32_le(u32::MAX);
    let error = ServerCodec::default().decode(&mut buffer).unwrap_err();
    assert!(matches!(error, FrameError::FrameTooLarge { .. }), "{error}");
    assert!(
        buffer.capacity() < 1024,
        "reserved {} bytes",
        buffer.capacity()
    );
    assert_eq!(
        error.to_protocol_error().unwrap().code,
        ErrorCode::FrameTooLarge
    );
}

#[test]
fn header_errors_are_fatal_and_named() {
    let cases: [(&[u8], ErrorCode); 4] = [
        (b"LOCK x 5000\n", ErrorCode::BadMagic),
        (
            &[MAGIC, 2, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ErrorCode::UnsupportedVersion,
        ),
        (
            &[MAGIC, VERSION, 0x7E, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ErrorCode::UnknownOpcode,
        ),
        // A response opcode sent to the server.
        (
            &[MAGIC, VERSION, 0x83, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ErrorCode::UnknownOpcode,
        ),
    ];
    for (bytes, code) in cases {
        let mut buffer = BytesMut::from(bytes);
        let error = ServerCodec::default().decode(&mut buffer).unwrap_err();
        assert_eq!(error.to_protocol_error().unwrap().code, code, "{error}");
    }
}

#[test]
fn limits_are_checked_on_decode() {
    let mut encoded = BytesMut::new();
    // Hand-build a LOCK with an empty key: the encoder refuses to, in debug builds.
    encoded.put_slice(&[MAGIC, VERSION, 0x03, 0]);
    encoded.put_u32_le(5);
    let mut body = BytesMut::new();
    body.put_u64_le(1000);
    body.put_u64_le(0);
    body.put_u8(0);
    body.put_u16_le(0);
    body.put_u16_le(1);
    body.put_u8(b'o');
    encoded.put_u32_le(body.len() as u32);
    encoded.put_slice(&body);
    match ServerCodec::default()
        .decode(&mut encoded)
        .unwrap()
        .unwrap()
    {
        Incoming::Invalid { request_id, error } => {
            assert_eq!(request_id, 5);
            assert_eq!(error.code, ErrorCode::KeyEmpty);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn hex_example_in_protocol_md_decodes() {
    // LOCK key="k" owner="o" ttl_ms=5000 wait_ms=0 ephemeral, request id 1.
    let hex = "cb 01 03 00 01 00 00 00 17 00 00 00 \
               88 13 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 \
               01 00 6b 01 00 6f";
    let bytes: Vec<u8> = hex
        .split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16).unwrap())
        .collect();
    let expected = Request::Lock(Lock {
        key: Bytes::from_static(b"k"),
        owner: Bytes::from_static(b"o"),
        ttl_ms: 5000,
        wait_ms: 0,
        durability: Durability::Ephemeral,
        if_not_held: false,
    });
    assert_eq!(
        as_requests(decode_in_chunks(&bytes, &[])),
        vec![expected.clone()]
    );
    assert_eq!(
        &encode_requests(&[expected])[..],
        &{
            let mut again = bytes.clone();
            again[4] = 0; // encode_requests numbers requests from 0
            again
        }[..]
    );
}
