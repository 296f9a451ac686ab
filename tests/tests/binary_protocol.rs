//! The binary protocol over a real server: pipelining, out-of-order replies, and bad input
//! that is answered without disturbing anyone else.

use kahu_protocol::frame::{HEADER_BYTES, MAGIC, VERSION};
use kahu_protocol::limits::FRAME_BYTES_MAX;
use kahu_protocol::{ErrorCode, Hello, Request, Response};
use kahu_tests::{get, lock, token, unlock, RawClient, TestServer};

fn error_code(response: &Response) -> ErrorCode {
    match response {
        Response::Error(error) => error.code.expect("a known code"),
        other => panic!("expected ERROR, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_lock_does_not_hold_up_later_requests_on_the_connection() {
    let server = TestServer::start().await;
    let mut holder = RawClient::connect(server.addr()).await;
    let first = token(&holder.call(1, &lock("busy-key", "holder", 60_000, 0)).await);

    // One connection pipelines: a LOCK that must wait, then three quick requests.
    let mut client = RawClient::connect(server.addr()).await;
    client
        .feed(10, &lock("busy-key", "waiter", 60_000, 5_000))
        .await;
    client.feed(11, &Request::Ping).await;
    client
        .feed(12, &lock("free-key", "waiter", 60_000, 0))
        .await;
    client.feed(13, &get("busy-key")).await;
    client.flush().await;

    let mut early = Vec::new();
    for _ in 0..3 {
        early.push(client.receive().await.expect("reply").0);
    }
    early.sort_unstable();
    assert_eq!(
        early,
        vec![11, 12, 13],
        "the waiting LOCK (10) must not block them"
    );

    // Releasing the lock answers the waiting request on its own id.
    assert!(matches!(
        holder.call(2, &unlock("busy-key", "holder")).await,
        Response::Released(_)
    ));
    let (id, response) = client.receive().await.expect("the hand-off");
    assert_eq!(id, 10);
    assert!(token(&response) > first);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_pipelined_requests_each_get_exactly_one_reply() {
    let server = TestServer::start().await;
    let mut client = RawClient::connect(server.addr()).await;
    let count = 2_000u32;
    for id in 0..count {
        let key = format!("key-{}", id % 50);
        let request = if id % 2 == 0 {
            lock(&key, "pipeliner", 60_000, 0)
        } else {
            unlock(&key, "pipeliner")
        };
        client.feed(id, &request).await;
    }
    client.flush().await;
    let mut seen = vec![false; count as usize];
    for _ in 0..count {
        let (id, response) = client.receive().await.expect("reply");
        assert!(
            !std::mem::replace(&mut seen[id as usize], true),
            "two replies to {id}"
        );
        assert!(
            !matches!(response, Response::Error(_)),
            "{id}: {response:?}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_body_is_answered_and_the_connection_stays_open() {
    let server = TestServer::start().await;
    let mut client = RawClient::connect(server.addr()).await;
    // A LOCK whose body stops inside the ttl field.
    let mut frame = vec![MAGIC, VERSION, 0x03, 0];
    frame.extend_from_slice(&7u32.to_le_bytes());
    frame.extend_from_slice(&3u32.to_le_bytes());
    frame.extend_from_slice(&[1, 2, 3]);
    client.write_raw(&frame).await;
    let (id, response) = client.receive().await.expect("an answer");
    assert_eq!(id, 7);
    assert_eq!(error_code(&response), ErrorCode::Malformed);
    assert_eq!(client.call(8, &Request::Ping).await, Response::Pong);

    // Limits: empty key, absurd ttl, long owner.
    assert_eq!(
        error_code(&client.call_raw(9, &lock_unchecked("", "o", 1000)).await),
        ErrorCode::KeyEmpty
    );
    assert_eq!(
        error_code(
            &client
                .call_raw(10, &lock_unchecked("k", "o", u64::MAX))
                .await
        ),
        ErrorCode::TtlOutOfRange
    );
    let long_owner = "o".repeat(300);
    assert_eq!(
        error_code(
            &client
                .call_raw(11, &lock_unchecked("k", &long_owner, 1000))
                .await
        ),
        ErrorCode::OwnerTooLong
    );
    assert_eq!(client.call(12, &Request::Ping).await, Response::Pong);

    // MEMBERS: node 0, an unknown action, an address without its client side.
    let refusals = [
        (13, members_unchecked(0, 2, 0, None)),
        (14, members_unchecked(0, 9, 4, None)),
        (15, members_unchecked(0, 1, 4, Some("127.0.0.1:7004"))),
    ];
    for (request_id, frame) in refusals {
        let response = client.call_raw(request_id, &frame).await;
        assert_eq!(
            error_code(&response),
            ErrorCode::BadMembership,
            "{request_id}"
        );
    }
    assert_eq!(client.call(16, &Request::Ping).await, Response::Pong);
    server.stop().await;
}

/// A MEMBERS frame built by hand: `shard`, `action`, `node`, then `address` if given.
fn members_unchecked(shard: u16, action: u8, node: u64, address: Option<&str>) -> RawFrame {
    let mut body = Vec::new();
    body.extend_from_slice(&shard.to_le_bytes());
    body.push(action);
    body.extend_from_slice(&node.to_le_bytes());
    if let Some(address) = address {
        body.extend_from_slice(&(address.len() as u16).to_le_bytes());
        body.extend_from_slice(address.as_bytes());
    }
    RawFrame { opcode: 0x08, body }
}

/// A LOCK frame built by hand, so invalid values reach the server.
fn lock_unchecked(key: &str, owner: &str, ttl_ms: u64) -> RawFrame {
    let mut body = Vec::new();
    body.extend_from_slice(&ttl_ms.to_le_bytes());
    body.extend_from_slice(&0u64.to_le_bytes());
    body.push(0);
    body.extend_from_slice(&(key.len() as u16).to_le_bytes());
    body.extend_from_slice(key.as_bytes());
    body.extend_from_slice(&(owner.len() as u16).to_le_bytes());
    body.extend_from_slice(owner.as_bytes());
    RawFrame { opcode: 0x03, body }
}

struct RawFrame {
    opcode: u8,
    body: Vec<u8>,
}

trait CallRaw {
    async fn call_raw(&mut self, request_id: u32, frame: &RawFrame) -> Response;
}

impl CallRaw for RawClient {
    async fn call_raw(&mut self, request_id: u32, frame: &RawFrame) -> Response {
        let mut bytes = vec![MAGIC, VERSION, frame.opcode, 0];
        bytes.extend_from_slice(&request_id.to_le_bytes());
        bytes.extend_from_slice(&(frame.body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&frame.body);
        self.write_raw(&bytes).await;
        let (id, response) = self.receive().await.expect("an answer");
        assert_eq!(id, request_id);
        response
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_header_errors_are_answered_then_the_connection_closes() {
    let server = TestServer::start().await;
    let oversized = {
        let mut header = vec![MAGIC, VERSION, 0x03, 0, 5, 0, 0, 0];
        header.extend_from_slice(&((FRAME_BYTES_MAX - HEADER_BYTES + 1) as u32).to_le_bytes());
        header
    };
    let cases: [(&str, Vec<u8>, ErrorCode); 4] = [
        (
            "bad version",
            vec![MAGIC, 9, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ErrorCode::UnsupportedVersion,
        ),
        (
            "unknown opcode",
            vec![MAGIC, VERSION, 0x55, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ErrorCode::UnknownOpcode,
        ),
        ("oversized frame", oversized, ErrorCode::FrameTooLarge),
        // Starts binary, then the second frame is garbage.
        (
            "garbage after a good frame",
            [
                &[MAGIC, VERSION, 0x02, 0, 1, 0, 0, 0, 0, 0, 0, 0][..],
                b"GARBAGE GARBAGE!",
            ]
            .concat(),
            ErrorCode::BadMagic,
        ),
    ];
    for (what, bytes, code) in cases {
        let mut client = RawClient::connect(server.addr()).await;
        client.write_raw(&bytes).await;
        let mut response = client.receive().await.expect(what);
        if response.1 == Response::Pong {
            response = client.receive().await.expect(what);
        }
        assert_eq!(response.0, 0, "{what}: fatal errors carry request id 0");
        assert_eq!(error_code(&response.1), code, "{what}");
        assert_eq!(
            client.receive().await,
            None,
            "{what}: the connection closes"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_one_client_does_not_disturb_another() {
    let server = TestServer::start().await;
    let mut good = RawClient::connect(server.addr()).await;
    let held = token(&good.call(1, &lock("shared", "good", 60_000, 0)).await);

    let mut tasks = Vec::new();
    for seed in 0..8u64 {
        let addr = server.addr();
        tasks.push(tokio::spawn(async move {
            let mut bad = RawClient::connect(addr).await;
            let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let garbage: Vec<u8> = (0..4096)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let mut start = vec![MAGIC];
            start.extend_from_slice(&garbage);
            bad.write_raw(&start).await;
            // Whatever comes back, the server must close this connection cleanly.
            while bad.receive().await.is_some() {}
        }));
    }
    for task in tasks {
        kahu_tests::within("garbage client", task)
            .await
            .expect("garbage task");
    }
    assert_eq!(good.call(2, &Request::Ping).await, Response::Pong);
    match good.call(3, &get("shared")).await {
        Response::LockInfo(info) => assert_eq!(info.token, held),
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_negotiates_the_version_and_announces_the_limits() {
    let server = TestServer::start().await;
    let mut client = RawClient::connect(server.addr()).await;
    let hello = |min, max| {
        Request::Hello(Hello {
            version_min: min,
            version_max: max,
            client_name: "test".into(),
        })
    };
    match client.call(1, &hello(1, 3)).await {
        Response::HelloOk(ok) => {
            assert_eq!(ok.version, 1);
            assert_eq!(ok.shard_count, 2);
            assert_eq!(ok.frame_bytes_max as usize, FRAME_BYTES_MAX);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        error_code(&client.call(2, &hello(2, 3)).await),
        ErrorCode::UnsupportedVersion
    );

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_counts_what_happened() {
    let server = TestServer::start().await;
    let mut client = RawClient::connect(server.addr()).await;
    token(&client.call(1, &lock("a", "o", 60_000, 0)).await);
    token(&client.call(2, &lock("b", "o", 60_000, 0)).await);
    assert!(matches!(
        client.call(3, &lock("a", "p", 60_000, 0)).await,
        Response::Busy(_)
    ));
    let Response::Info(info) = client.call(4, &Request::Info).await else {
        panic!("INFO")
    };
    assert_eq!(info.get("locks_held"), Some(2));
    assert_eq!(info.get("grants_total"), Some(2));
    assert_eq!(info.get("busy_total"), Some(1));
    assert_eq!(info.get("connections"), Some(1));
    assert_eq!(info.get("shards"), Some(2));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_decisions_about_one_lock_in_one_batch() {
    // LOCK, UNLOCK, LOCK, GET, UNLOCK of one persistent lock, pipelined so they share a
    // shard turn and a commit, for many keys at once.
    let server = TestServer::start().await;
    let mut client = RawClient::connect(server.addr()).await;
    let mut id = 0;
    for key in 0..200 {
        let key = format!("same-batch-{key}");
        for request in [
            lock(&key, "o", 60_000, 0),
            unlock(&key, "o"),
            lock(&key, "o", 60_000, 0),
            get(&key),
            unlock(&key, "o"),
        ] {
            client.feed(id, &request).await;
            id += 1;
        }
    }
    client.flush().await;
    let mut answers = vec![None; id as usize];
    for _ in 0..id {
        let (answer_id, response) = client.receive().await.expect("every answer");
        answers[answer_id as usize] = Some(response);
    }
    for (position, answer) in answers.iter().enumerate() {
        let answer = answer.as_ref().expect("answered");
        let expected = match position % 5 {
            0 | 2 => matches!(answer, Response::Acquired(_)),
            1 | 4 => matches!(answer, Response::Released(_)),
            _ => matches!(answer, Response::LockInfo(_)),
        };
        assert!(expected, "request {position}: {answer:?}");
    }
    assert_eq!(
        client.call(id, &Request::Ping).await,
        Response::Pong,
        "the server is still up"
    );
    server.stop().await;
}
