//! What the protocol costs per message, on byte buffers only (no sockets).
//!
//! | id | one iteration is |
//! |---|---|
//! | `codec/encode/lock_request` | `ClientCodec` encodes a LOCK into a cleared `BytesMut` (46 bytes) |
//! | `codec/encode/acquired_response` | `ServerCodec` encodes an ACQUIRED (28 bytes) |
//! | `codec/decode/refill_only` | anchor: copy the LOCK frame into the read buffer, nothing else |
//! | `codec/decode/lock_request` | copy the LOCK frame into the read buffer, `ServerCodec` decodes it |
//! | `codec/decode/acquired_response` | the same for an ACQUIRED and `ClientCodec` |
//! | `codec/decode/pipelined_lock_requests` | copy 64 LOCK frames (one read), decode all 64 (throughput per frame) |
//! | `codec/text/parse_lock_line` | `text::parse_line("LOCK backup-lock 60000 OWNER w1 WAIT 2000")` |
//! | `codec/text/format_acquired_reply` | `text::format_response` of its ACQUIRED reply line |
//!
//! Decoding reuses one read buffer as `FramedRead` does, so a decode includes the copy a
//! socket read would make (`refill_only` shows that part alone) and drops the decoded
//! request, whose key and owner share the buffer. Before each case, the allocations per
//! operation are counted over a separate untimed run and printed (`allocations/op`), by a
//! global allocator that counts only while told to.
//!
//! Run: `cargo bench -p kahu-protocol --bench codec`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use kahu_protocol::text::{self, TextCommand};
use kahu_protocol::{
    Acquired, ClientCodec, Durability, Incoming, Lock, Request, Response, ServerCodec,
};
use tokio_util::codec::{Decoder, Encoder};

const SAMPLE_COUNT: usize = 30;
const WARM_UP: Duration = Duration::from_millis(500);
const MEASUREMENT: Duration = Duration::from_secs(2);
/// Frames a pipelining client has in flight on one connection (kahu-bench `--pipeline 64`).
const PIPELINE_DEPTH: usize = 64;
/// Operations the untimed allocation count runs over.
const COUNTED_OPERATIONS: u64 = 10_000;
const REQUEST_ID: u32 = 7;
const LOCK_LINE: &str = "LOCK backup-lock 60000 OWNER w1 WAIT 2000";

#[path = "support/counting_allocator.rs"]
mod counting_allocator;
use counting_allocator::{ALLOCATIONS, COUNTING};

/// Runs `operation` once to warm up, then [`COUNTED_OPERATIONS`] times counting
/// allocations (and reallocations), and prints the count per operation.
fn print_allocations(id: &str, mut operation: impl FnMut()) {
    operation();
    ALLOCATIONS.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    for _ in 0..COUNTED_OPERATIONS {
        operation();
    }
    COUNTING.store(false, Ordering::Relaxed);
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) as f64 / COUNTED_OPERATIONS as f64;
    println!("codec/{id}: {allocations:.2} allocations/op");
}

/// The LOCK of the text line, as a client library sends it.
fn lock_request() -> Request {
    Request::Lock(Lock {
        key: Bytes::from_static(b"backup-lock"),
        owner: Bytes::from_static(b"w1"),
        ttl_ms: 60_000,
        wait_ms: 2_000,
        durability: Durability::Persistent,
        if_not_held: false,
    })
}

fn acquired_response() -> Response {
    Response::Acquired(Acquired {
        token: (1 << 40) | 123_456,
        ttl_ms: 60_000,
        reentered: false,
    })
}

fn encoded_lock_request() -> Bytes {
    let mut frame = BytesMut::new();
    ClientCodec::default()
        .encode((REQUEST_ID, &lock_request()), &mut frame)
        .expect("encode LOCK");
    frame.freeze()
}

fn encoded_acquired_response() -> Bytes {
    let mut frame = BytesMut::new();
    ServerCodec::default()
        .encode((REQUEST_ID, acquired_response()), &mut frame)
        .expect("encode ACQUIRED");
    frame.freeze()
}

fn encode(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("codec/encode");

    let request = lock_request();
    let mut client = ClientCodec::default();
    let mut buffer = BytesMut::with_capacity(256);
    let mut encode_request = || {
        buffer.clear();
        client
            .encode((REQUEST_ID, black_box(&request)), &mut buffer)
            .expect("encode LOCK");
        black_box(&buffer);
    };
    print_allocations("encode/lock_request", &mut encode_request);
    group.bench_function("lock_request", |bencher| bencher.iter(&mut encode_request));

    let response = acquired_response();
    let mut server = ServerCodec::default();
    let mut buffer = BytesMut::with_capacity(256);
    let mut encode_response = || {
        buffer.clear();
        server
            .encode((REQUEST_ID, black_box(response.clone())), &mut buffer)
            .expect("encode ACQUIRED");
        black_box(&buffer);
    };
    print_allocations("encode/acquired_response", &mut encode_response);
    group.bench_function("acquired_response", |bencher| {
        bencher.iter(&mut encode_response)
    });

    group.finish();
}

fn decode(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("codec/decode");
    let lock_frame = encoded_lock_request();
    let acquired_frame = encoded_acquired_response();

    let mut buffer = BytesMut::with_capacity(4096);
    let mut refill = || {
        buffer.extend_from_slice(black_box(&lock_frame));
        black_box(&buffer);
        buffer.clear();
    };
    print_allocations("decode/refill_only", &mut refill);
    group.bench_function("refill_only", |bencher| bencher.iter(&mut refill));

    let mut server = ServerCodec::default();
    let mut buffer = BytesMut::with_capacity(4096);
    let mut decode_request = || {
        buffer.extend_from_slice(black_box(&lock_frame));
        let incoming = server.decode(&mut buffer).expect("a valid frame");
        debug_assert!(matches!(incoming, Some(Incoming::Request { .. })));
        black_box(incoming)
    };
    assert_eq!(
        decode_request(),
        Some(Incoming::Request {
            request_id: REQUEST_ID,
            request: lock_request()
        })
    );
    print_allocations("decode/lock_request", || {
        decode_request();
    });
    group.bench_function("lock_request", |bencher| bencher.iter(&mut decode_request));

    let mut client = ClientCodec::default();
    let mut buffer = BytesMut::with_capacity(4096);
    let mut decode_response = || {
        buffer.extend_from_slice(black_box(&acquired_frame));
        black_box(client.decode(&mut buffer).expect("a valid frame"))
    };
    assert_eq!(decode_response(), Some((REQUEST_ID, acquired_response())));
    print_allocations("decode/acquired_response", || {
        decode_response();
    });
    group.bench_function("acquired_response", |bencher| {
        bencher.iter(&mut decode_response)
    });

    let pipelined: Vec<u8> = lock_frame.repeat(PIPELINE_DEPTH);
    let mut server = ServerCodec::default();
    let mut buffer = BytesMut::with_capacity(8192);
    let mut decode_pipelined = || {
        buffer.extend_from_slice(black_box(&pipelined));
        let mut frames = 0;
        while let Some(incoming) = server.decode(&mut buffer).expect("a valid frame") {
            black_box(incoming);
            frames += 1;
        }
        frames
    };
    assert_eq!(decode_pipelined(), PIPELINE_DEPTH);
    print_allocations("decode/pipelined_lock_requests (per 64)", || {
        decode_pipelined();
    });
    group.throughput(Throughput::Elements(PIPELINE_DEPTH as u64));
    group.bench_function("pipelined_lock_requests", |bencher| {
        bencher.iter(&mut decode_pipelined)
    });

    group.finish();
}

fn text_mode(criterion: &mut Criterion) {
    let mut group = criterion.benchmark_group("codec/text");
    let default_owner = Bytes::from_static(b"conn-1");

    let mut parse = || {
        text::parse_line(black_box(LOCK_LINE), &default_owner, Durability::Persistent)
            .expect("a valid line")
    };
    let TextCommand::Request(request) = parse() else {
        panic!("{LOCK_LINE} is a request");
    };
    assert_eq!(request, lock_request());
    print_allocations("text/parse_lock_line", || {
        black_box(parse());
    });
    group.bench_function("parse_lock_line", |bencher| bencher.iter(&mut parse));

    let response = acquired_response();
    let format = || text::format_response(black_box(&request), black_box(&response));
    assert_eq!(
        format(),
        "ACQUIRED token=1099511751232 owner=w1 ttl_ms=60000"
    );
    print_allocations("text/format_acquired_reply", || {
        black_box(format());
    });
    group.bench_function("format_acquired_reply", |bencher| bencher.iter(format));

    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(SAMPLE_COUNT)
        .warm_up_time(WARM_UP)
        .measurement_time(MEASUREMENT)
}

criterion_group! {
    name = benches;
    config = config();
    targets = encode, decode, text_mode
}
criterion_main!(benches);
