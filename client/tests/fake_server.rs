//! The client against a scripted fake server: each test plays the server's side by hand
//! (`Framed<TcpStream, ServerCodec>`), so reconnects, out-of-order replies, timeouts, wait
//! chunking and polling are exercised deterministically, without the real server's timing.
//!
//! Every test binds 127.0.0.1 port 0, and every wait on the fake side is bounded by
//! `STEP_TIMEOUT`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use kahu_client::{
    Client, ClientOptions, Durability, Error, ErrorCode, ExtendOutcome, LockGuard, LockState,
    UnlockOutcome,
};
use kahu_protocol::{
    Acquired, Busy, Extended, Incoming, LockInfo, NotHeld, ProtocolError, Released, Request,
    Response, ServerCodec,
};
use kahu_protocol::{HelloOk, VERSION};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

/// The longest the fake server waits for anything before the test fails.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

struct FakeServer {
    listener: TcpListener,
}

impl FakeServer {
    async fn bind() -> FakeServer {
        FakeServer {
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    fn address(&self) -> String {
        self.listener.local_addr().unwrap().to_string()
    }

    /// Accepts one connection and answers its HELLO.
    async fn accept(&self, wait_ms_max: u64) -> FakeConnection {
        let (stream, _) = tokio::time::timeout(STEP_TIMEOUT, self.listener.accept())
            .await
            .expect("the client connects")
            .unwrap();
        let mut connection = FakeConnection {
            framed: Framed::new(stream, ServerCodec::default()),
        };
        let (request_id, request) = connection.next_request().await;
        let Request::Hello(hello) = request else {
            panic!("the first request is HELLO, got {request:?}");
        };
        assert_eq!((hello.version_min, hello.version_max), (VERSION, VERSION));
        connection
            .reply(request_id, Response::HelloOk(hello_ok(wait_ms_max)))
            .await;
        connection
    }
}

struct FakeConnection {
    framed: Framed<TcpStream, ServerCodec>,
}

impl FakeConnection {
    async fn next_request(&mut self) -> (u32, Request) {
        match self.next_incoming().await {
            Some((request_id, request)) => (request_id, request),
            None => panic!("the client closed the connection"),
        }
    }

    /// The next request, or `None` when the client closed the connection.
    async fn next_incoming(&mut self) -> Option<(u32, Request)> {
        let frame = tokio::time::timeout(STEP_TIMEOUT, self.framed.next())
            .await
            .expect("the client sends a request or closes")?;
        match frame.unwrap() {
            Incoming::Request {
                request_id,
                request,
            } => Some((request_id, request)),
            Incoming::Invalid { error, .. } => panic!("the client sent an invalid frame: {error}"),
        }
    }

    async fn reply(&mut self, request_id: u32, response: Response) {
        self.framed.send((request_id, response)).await.unwrap();
    }
}

fn hello_ok(wait_ms_max: u64) -> HelloOk {
    HelloOk {
        version: VERSION,
        server_name: "fake".into(),
        shard_count: 3,
        frame_bytes_max: 16 * 1024,
        key_bytes_max: 512,
        owner_bytes_max: 256,
        ttl_ms_max: 7 * 24 * 3600 * 1000,
        wait_ms_max,
    }
}

const WAIT_MS_MAX: u64 = 60 * 60 * 1000;

fn fast_options() -> ClientOptions {
    ClientOptions::default()
        .request_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(2))
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(20))
}

async fn connect(server: &FakeServer, options: ClientOptions) -> (Client, FakeConnection) {
    let (client, connection) = tokio::join!(
        Client::connect_with(server.address(), options),
        server.accept(WAIT_MS_MAX)
    );
    (client.unwrap(), connection)
}

fn acquired(token: u64, ttl_ms: u64) -> Response {
    Response::Acquired(Acquired {
        token,
        ttl_ms,
        reentered: false,
    })
}

/// Takes lock `key` through `client`, the fake granting `token` with a lease of `ttl_ms`.
/// Returns the guard and the owner the LOCK carried.
async fn acquire_from_fake(
    client: &Client,
    connection: &mut FakeConnection,
    key: &'static str,
    token: u64,
    ttl_ms: u64,
) -> (LockGuard, Bytes) {
    let fake = async {
        let (request_id, request) = connection.next_request().await;
        let Request::Lock(lock) = request else {
            panic!("expected LOCK, got {request:?}");
        };
        connection.reply(request_id, acquired(token, ttl_ms)).await;
        lock.owner
    };
    let acquire = client
        .lock(key)
        .ttl(Duration::from_millis(ttl_ms))
        .acquire();
    let (guard, owner) = tokio::join!(acquire, fake);
    let guard = guard.unwrap();
    assert_eq!(guard.owner(), &owner);
    (guard, owner)
}

fn busy() -> Response {
    Response::Busy(Busy {
        token: 7,
        remaining_ms: 900,
        owner: Bytes::from_static(b"someone-else"),
    })
}

#[tokio::test]
async fn hello_is_sent_and_its_answer_kept() {
    let server = FakeServer::bind().await;
    let (client, _connection) = connect(&server, fast_options().client_name("test-suite")).await;
    let hello = client.server_hello();
    assert_eq!(hello.server_name, "fake");
    assert_eq!(hello.shard_count, 3);
    assert_eq!(client.address(), server.address());
}

#[tokio::test]
async fn replies_are_routed_by_request_id_in_any_order() {
    let server = FakeServer::bind().await;
    let (client, mut connection) = connect(&server, fast_options()).await;

    // Phase 1: two GETs in flight at once.
    let fake = async {
        let first = connection.next_request().await;
        let second = connection.next_request().await;
        assert_ne!(first.0, second.0, "request ids are distinct");
        // Phase 2: answer in reverse order, each with something naming its key.
        for (request_id, request) in [second, first] {
            let Request::Get(get) = request else {
                panic!("expected GET, got {request:?}");
            };
            let response = if get.key == "held" {
                Response::LockInfo(LockInfo {
                    owner: Bytes::from_static(b"alice"),
                    token: 11,
                    remaining_ms: 500,
                    waiters: 2,
                    durability: Durability::Ephemeral,
                })
            } else {
                Response::NotHeld(NotHeld { last_token: 5 })
            };
            connection.reply(request_id, response).await;
        }
    };
    let (held, free, ()) = tokio::join!(client.get("held"), client.get("free"), fake);

    // Phase 3: each caller got the answer to its own request.
    let LockState::Held(held) = held.unwrap() else {
        panic!("`held` is held");
    };
    assert_eq!(
        (held.owner.as_ref(), held.fencing_token, held.waiters),
        (&b"alice"[..], 11, 2)
    );
    assert_eq!(
        free.unwrap(),
        LockState::NotHeld {
            last_fencing_token: Some(5)
        }
    );
}

#[tokio::test]
async fn a_lost_connection_fails_pending_requests_and_the_next_request_reconnects() {
    let server = FakeServer::bind().await;
    let (client, mut connection) = connect(&server, fast_options()).await;

    // Phase 1: a request is in flight when the server goes away.
    let fake = async {
        let (_, request) = connection.next_request().await;
        assert!(matches!(request, Request::Get(_)));
        drop(connection);
    };
    let (result, ()) = tokio::join!(client.get("k"), fake);
    let error = result.unwrap_err();
    assert!(matches!(error, Error::ConnectionLost { .. }), "{error:?}");
    assert!(error.is_retryable());

    // Phase 2: the next request opens a new connection, says HELLO again, and is served.
    let fake = async {
        let mut connection = server.accept(WAIT_MS_MAX).await;
        let (request_id, request) = connection.next_request().await;
        assert_eq!(request, Request::Ping);
        connection.reply(request_id, Response::Pong).await;
        connection
    };
    let (pong, _connection) = tokio::join!(client.ping(), fake);
    pong.unwrap();
}

#[tokio::test]
async fn reconnecting_gives_up_after_the_configured_attempts() {
    let server = FakeServer::bind().await;
    let options = fast_options().connect_attempts_max(2);
    let (client, connection) = connect(&server, options).await;
    let address = server.address();

    // Phase 1: the server goes away entirely.
    drop(connection);
    drop(server);

    // Phase 2: requests fail with a retryable error, quickly: the first may still be
    // written to the dead connection; the next one cannot connect.
    let started = Instant::now();
    let first = client.ping().await.unwrap_err();
    assert!(first.is_retryable(), "{first:?}");
    let error = client.ping().await.unwrap_err();
    assert!(error.is_connect(), "{error:?}");
    assert!(error.is_retryable());
    assert!(error.to_string().contains(&address), "{error}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn connecting_to_a_closed_port_fails_with_a_connect_error() {
    let address = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let error = Client::connect_with(address, fast_options())
        .await
        .unwrap_err();
    assert!(error.is_connect(), "{error:?}");
    assert_eq!(error.code_name(), "CANNOT_CONNECT");
}

#[tokio::test]
async fn a_silent_server_times_out_and_its_late_reply_is_dropped() {
    let server = FakeServer::bind().await;
    let options = fast_options().request_timeout(Duration::from_millis(100));
    let (client, mut connection) = connect(&server, options).await;

    // Phase 1: the server reads the request and does not answer.
    let (result, (late_id, _)) = tokio::join!(client.ping(), connection.next_request());
    let error = result.unwrap_err();
    assert!(error.is_timeout(), "{error:?}");

    // Phase 2: the late reply arrives before the next request's reply; the next caller
    // still gets its own answer on the same connection.
    let fake = async {
        let (request_id, request) = connection.next_request().await;
        assert!(matches!(request, Request::Get(_)));
        connection.reply(late_id, Response::Pong).await;
        connection
            .reply(request_id, Response::NotHeld(NotHeld { last_token: 0 }))
            .await;
    };
    let (state, ()) = tokio::join!(client.get("k"), fake);
    assert_eq!(
        state.unwrap(),
        LockState::NotHeld {
            last_fencing_token: None
        }
    );
}

#[tokio::test]
async fn a_lock_wait_goes_to_the_server_and_extends_the_timeout() {
    let server = FakeServer::bind().await;
    let options = fast_options().request_timeout(Duration::from_millis(150));
    let (client, mut connection) = connect(&server, options).await;

    let fake = async {
        let (request_id, request) = connection.next_request().await;
        let Request::Lock(lock) = request else {
            panic!("expected LOCK, got {request:?}");
        };
        assert_eq!((lock.key.as_ref(), lock.ttl_ms), (&b"job"[..], 10_000));
        assert!(
            (200..=400).contains(&lock.wait_ms),
            "wait_ms {}",
            lock.wait_ms
        );
        assert!(
            !lock.if_not_held,
            "the library default is an idempotent LOCK"
        );
        assert_eq!(
            lock.durability,
            Durability::Persistent,
            "locks are persistent by default"
        );
        // Answer later than the request timeout, within timeout + wait.
        tokio::time::sleep(Duration::from_millis(250)).await;
        connection.reply(request_id, acquired(42, 10_000)).await;
        lock.owner
    };
    let acquire = client
        .lock("job")
        .ttl(Duration::from_secs(10))
        .wait(Duration::from_millis(400))
        .acquire();
    let (guard, owner) = tokio::join!(acquire, fake);
    let guard = guard.unwrap();
    assert_eq!(guard.owner(), &owner);
    assert!(guard.is_acquired());
    assert_eq!(guard.fencing_token(), Some(42));
    assert_eq!(guard.ttl(), Some(Duration::from_secs(10)));
    assert!(guard.lease_expires_at().unwrap() <= Instant::now() + Duration::from_secs(10));
    guard.detach();
}

#[tokio::test]
async fn waits_longer_than_wait_ms_max_are_sent_in_chunks() {
    let server = FakeServer::bind().await;
    let (client, mut connection) = tokio::join!(
        Client::connect_with(server.address(), fast_options()),
        server.accept(100)
    );
    let client = client.unwrap();

    let fake = async {
        // Phase 1: the first LOCK waits the server's maximum, and comes back BUSY.
        let (request_id, request) = connection.next_request().await;
        let Request::Lock(first) = request else {
            panic!("expected LOCK");
        };
        assert_eq!(first.wait_ms, 100);
        tokio::time::sleep(Duration::from_millis(100)).await;
        connection.reply(request_id, busy()).await;
        // Phase 2: the client queues again at once with the rest of its wait.
        let (request_id, request) = connection.next_request().await;
        let Request::Lock(second) = request else {
            panic!("expected LOCK");
        };
        assert!(
            second.wait_ms > 0 && second.wait_ms <= 100,
            "{}",
            second.wait_ms
        );
        connection.reply(request_id, acquired(3, 1000)).await;
    };
    let acquire = client.lock("k").wait(Duration::from_millis(1000)).acquire();
    let (guard, ()) = tokio::join!(acquire, fake);
    let guard = guard.unwrap();
    assert_eq!(guard.fencing_token(), Some(3));
    guard.detach();
}

#[tokio::test]
async fn a_full_waiter_queue_is_polled_until_the_deadline_then_not_acquired() {
    let server = FakeServer::bind().await;
    let (client, mut connection) = connect(&server, fast_options()).await;

    let fake = tokio::spawn(async move {
        let mut locks = 0;
        while let Some((request_id, request)) = connection.next_incoming().await {
            assert!(matches!(request, Request::Lock(_)), "{request:?}");
            locks += 1;
            let refusal = ProtocolError::new(ErrorCode::TooManyWaiters, "queue full");
            connection.reply(request_id, refusal.into()).await;
        }
        locks
    });
    let started = Instant::now();
    let guard = client
        .lock("k")
        .wait(Duration::from_millis(300))
        .retry(Duration::from_millis(50))
        .acquire()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(!guard.is_acquired());
    assert_eq!(guard.fencing_token(), None);
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    drop(guard);
    drop(client);
    let locks = fake.await.unwrap();
    assert!((3..=8).contains(&locks), "polled {locks} times");
}

#[tokio::test]
async fn busy_is_an_answer_not_an_error() {
    let server = FakeServer::bind().await;
    let (client, mut connection) = connect(&server, fast_options()).await;
    let fake = async {
        let (request_id, request) = connection.next_request().await;
        let Request::Lock(lock) = request else {
            panic!("expected LOCK");
        };
        assert_eq!(lock.wait_ms, 0);
        assert!(lock.if_not_held);
        assert_eq!(lock.owner, "cli@host");
        connection.reply(request_id, busy()).await;
    };
    let acquire = client
        .lock("k")
        .owner("cli@host")
        .if_not_held(true)
        .acquire();
    let (guard, ()) = tokio::join!(acquire, fake);
    let guard = guard.unwrap();
    assert!(!guard.is_acquired());
    let holder = guard.holder().expect("BUSY names the holder");
    assert_eq!(holder.owner, "someone-else");
    assert_eq!(holder.fencing_token, 7);
    assert_eq!(
        guard.release().await.unwrap(),
        UnlockOutcome::NotHeld {
            last_fencing_token: None
        }
    );
}

#[tokio::test]
async fn persistent_locks_are_refused_never_downgraded() {
    let server = FakeServer::bind().await;
    let (client, mut connection) = connect(&server, fast_options()).await;
    let fake = async {
        let (request_id, request) = connection.next_request().await;
        let Request::Lock(lock) = request else {
            panic!("expected LOCK");
        };
        assert_eq!(lock.durability, Durability::Persistent);
        let refusal = ProtocolError::new(ErrorCode::Unsupported, "persistent locks need the WAL");
        connection.reply(request_id, refusal.into()).await;
    };
    let acquire = client
        .lock("k")
        .durability(Durability::Persistent)
        .acquire();
    let (result, ()) = tokio::join!(acquire, fake);
    let error = result.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Unsupported));
    assert!(!error.is_retryable());
    assert!(error.message().contains("WAL"));
}

#[tokio::test]
async fn invalid_input_is_refused_before_sending() {
    let server = FakeServer::bind().await;
    let (client, mut connection) = connect(&server, fast_options()).await;

    let empty_key = client.lock("").acquire().await.unwrap_err();
    assert_eq!(empty_key.code(), Some(ErrorCode::KeyEmpty));
    let zero_ttl = client.extend("k", "me", Duration::ZERO).await.unwrap_err();
    assert_eq!(zero_ttl.code(), Some(ErrorCode::TtlOutOfRange));
    assert!(matches!(zero_ttl, Error::InvalidRequest(_)));
    let long_owner = client.unlock("k", vec![b'o'; 257]).await.unwrap_err();
    assert_eq!(long_owner.code(), Some(ErrorCode::OwnerTooLong));

    // Nothing reached the server: the next request it sees is the PING.
    let fake = async {
        let (request_id, request) = connection.next_request().await;
        assert_eq!(request, Request::Ping);
        connection.reply(request_id, Response::Pong).await;
    };
    let (pong, ()) = tokio::join!(client.ping(), fake);
    pong.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_guard_unlocks_even_outside_the_runtime() {
    let server = FakeServer::bind().await;
    let (client, mut connection) = connect(&server, fast_options()).await;
    let (guard, owner) = acquire_from_fake(&client, &mut connection, "k", 9, 5000).await;

    // Phase 1: drop the guard on a thread that has no tokio runtime.
    std::thread::spawn(move || drop(guard)).join().unwrap();

    // Phase 2: the UNLOCK arrives with the guard's key, owner and token.
    let (request_id, request) = connection.next_request().await;
    let Request::Unlock(unlock) = request else {
        panic!("expected UNLOCK, got {request:?}");
    };
    assert_eq!(
        (unlock.key.as_ref(), &unlock.owner, unlock.token),
        (&b"k"[..], &owner, Some(9))
    );
    connection
        .reply(request_id, Response::Released(Released { token: 9 }))
        .await;
}

#[tokio::test]
async fn the_last_client_handle_delivers_background_unlocks_before_closing() {
    let server = FakeServer::bind().await;
    let (client, mut connection) = connect(&server, fast_options()).await;
    let fake = async {
        let (request_id, _) = connection.next_request().await;
        connection.reply(request_id, acquired(9, 5000)).await;
    };
    let (guard, ()) = tokio::join!(client.lock("k").acquire(), fake);
    let guard = guard.unwrap();

    // Phase 1: drop everything; the guard holds the last client handle.
    drop(client);
    drop(guard);

    // Phase 2: the UNLOCK still goes out, and the connection closes once it is answered.
    let (request_id, request) = connection.next_request().await;
    assert!(matches!(request, Request::Unlock(_)), "{request:?}");
    connection
        .reply(request_id, Response::Released(Released { token: 9 }))
        .await;
    assert!(
        connection.next_incoming().await.is_none(),
        "the client closes"
    );
}

#[tokio::test]
async fn an_error_frame_for_the_connection_fails_pending_requests() {
    let server = FakeServer::bind().await;
    let (client, mut connection) = connect(&server, fast_options()).await;
    let fake = async {
        connection.next_request().await;
        let error = ProtocolError::new(ErrorCode::Malformed, "bad frame");
        connection.reply(0, error.into()).await;
        drop(connection);
    };
    let (result, ()) = tokio::join!(client.get("k"), fake);
    let error = result.unwrap_err();
    assert!(matches!(error, Error::ConnectionLost { .. }), "{error:?}");
    assert!(error.to_string().contains("MALFORMED"), "{error}");
}

#[tokio::test]
async fn an_idempotent_acquire_survives_a_lost_connection_within_its_wait() {
    let server = FakeServer::bind().await;
    let (client, mut connection) = connect(&server, fast_options()).await;
    let fake = async {
        // Phase 1: the first LOCK is lost with its connection.
        let (_, first) = connection.next_request().await;
        drop(connection);
        // Phase 2: the client reconnects and sends the same LOCK again, with the same
        // owner, so that it re-enters the grant the first LOCK may have taken.
        let mut connection = server.accept(WAIT_MS_MAX).await;
        let (request_id, again) = connection.next_request().await;
        let (Request::Lock(first), Request::Lock(again)) = (first, again) else {
            panic!("expected two LOCKs");
        };
        assert_eq!(
            again.owner, first.owner,
            "one owner for all of one acquire's LOCKs"
        );
        connection.reply(request_id, acquired(5, 1000)).await;
        connection
    };
    let acquire = client
        .lock("k")
        .wait(Duration::from_secs(3))
        .retry(Duration::from_millis(10))
        .acquire();
    let (guard, _connection) = tokio::join!(acquire, fake);
    let guard = guard.unwrap();
    assert_eq!(guard.fencing_token(), Some(5));
    guard.detach();
}

#[tokio::test]
async fn an_if_not_held_acquire_reports_a_lost_connection() {
    let server = FakeServer::bind().await;
    let (client, mut connection) = connect(&server, fast_options()).await;
    let fake = async {
        connection.next_request().await;
        drop(connection);
    };
    let acquire = client
        .lock("k")
        .wait(Duration::from_secs(3))
        .if_not_held(true)
        .acquire();
    let (result, ()) = tokio::join!(acquire, fake);
    let error = result.unwrap_err();
    assert!(matches!(error, Error::ConnectionLost { .. }), "{error:?}");
}

#[tokio::test]
async fn each_acquire_has_its_own_owner_unless_one_is_set() {
    let server = FakeServer::bind().await;
    let (client, mut connection) = connect(&server, fast_options()).await;

    // Phase 1: two acquires through two clones of one client: two owners, both made from
    // the client's base owner, neither the base itself.
    let clone = client.clone();
    let (first, first_owner) = acquire_from_fake(&client, &mut connection, "a", 1, 5000).await;
    let (second, second_owner) = acquire_from_fake(&clone, &mut connection, "a", 2, 5000).await;
    assert_ne!(first_owner, second_owner);
    for owner in [&first_owner, &second_owner] {
        assert!(owner.starts_with(client.owner()), "{owner:?}");
        assert_ne!(owner, client.owner());
    }
    first.detach();
    second.detach();

    // Phase 2: an owner set in the options, or on the builder, is used as given.
    let server = FakeServer::bind().await;
    let (client, mut connection) = connect(&server, fast_options().owner("svc-7")).await;
    assert_eq!(client.owner(), "svc-7");
    let (first, first_owner) = acquire_from_fake(&client, &mut connection, "a", 1, 5000).await;
    let (second, second_owner) = acquire_from_fake(&client, &mut connection, "a", 1, 5000).await;
    assert_eq!(
        (first_owner.as_ref(), second_owner.as_ref()),
        (&b"svc-7"[..], &b"svc-7"[..])
    );
    first.detach();
    second.detach();
}

#[tokio::test]
async fn a_guard_sends_its_token_with_extend_and_release() {
    let server = FakeServer::bind().await;
    let (client, mut connection) = connect(&server, fast_options()).await;
    let (mut guard, owner) = acquire_from_fake(&client, &mut connection, "k", 9, 5000).await;

    // Phase 1: EXTEND names the guard's grant.
    let fake = async {
        let (request_id, request) = connection.next_request().await;
        let Request::Extend(extend) = request else {
            panic!("expected EXTEND, got {request:?}");
        };
        assert_eq!((&extend.owner, extend.token), (&owner, Some(9)));
        let extended = Extended {
            token: 9,
            ttl_ms: extend.ttl_ms,
        };
        connection
            .reply(request_id, Response::Extended(extended))
            .await;
    };
    let (extended, ()) = tokio::join!(guard.extend(Duration::from_secs(8)), fake);
    assert!(extended.unwrap().is_extended());

    // Phase 2: so does UNLOCK; a later grant to the same owner answers NOT_OWNER.
    let fake = async {
        let (request_id, request) = connection.next_request().await;
        let Request::Unlock(unlock) = request else {
            panic!("expected UNLOCK, got {request:?}");
        };
        assert_eq!((&unlock.owner, unlock.token), (&owner, Some(9)));
        let newer = Busy {
            token: 12,
            remaining_ms: 4000,
            owner: owner.clone(),
        };
        connection
            .reply(request_id, Response::NotOwner(newer))
            .await;
    };
    let (released, ()) = tokio::join!(guard.release(), fake);
    let UnlockOutcome::NotOwner(holder) = released.unwrap() else {
        panic!("a later grant is not released");
    };
    assert_eq!((&holder.owner, holder.fencing_token), (&owner, 12));
}

#[tokio::test]
async fn a_guard_that_lost_its_grant_sends_nothing_on_drop() {
    let server = FakeServer::bind().await;
    let (client, mut connection) = connect(&server, fast_options()).await;
    let (mut guard, owner) = acquire_from_fake(&client, &mut connection, "k", 9, 5000).await;

    // Phase 1: EXTEND finds a later grant to the same owner.
    let fake = async {
        let (request_id, _) = connection.next_request().await;
        let newer = Busy {
            token: 12,
            remaining_ms: 4000,
            owner: owner.clone(),
        };
        connection
            .reply(request_id, Response::NotOwner(newer))
            .await;
    };
    let (extended, ()) = tokio::join!(guard.extend(Duration::from_secs(8)), fake);
    assert!(matches!(extended.unwrap(), ExtendOutcome::NotOwner(_)));

    // Phase 2: dropping the guard sends no UNLOCK: the next request the server sees is
    // the PING sent after the drop.
    drop(guard);
    let fake = async {
        let (request_id, request) = connection.next_request().await;
        assert_eq!(request, Request::Ping);
        connection.reply(request_id, Response::Pong).await;
    };
    let (pong, ()) = tokio::join!(client.ping(), fake);
    pong.unwrap();
}

#[tokio::test]
async fn a_guard_whose_lease_ended_by_the_clients_clock_still_releases_with_its_token() {
    let server = FakeServer::bind().await;
    let (client, mut connection) = connect(&server, fast_options()).await;
    let (guard, owner) = acquire_from_fake(&client, &mut connection, "k", 9, 20).await;

    // Phase 1: the lease ends by the client's count.
    let lease_end = guard.lease_expires_at().unwrap();
    tokio::time::sleep_until(lease_end.into()).await;
    assert!(Instant::now() >= lease_end);

    // Phase 2: release still sends UNLOCK, for this grant only.
    let fake = async {
        let (request_id, request) = connection.next_request().await;
        let Request::Unlock(unlock) = request else {
            panic!("expected UNLOCK, got {request:?}");
        };
        assert_eq!((&unlock.owner, unlock.token), (&owner, Some(9)));
        connection
            .reply(request_id, Response::NotHeld(NotHeld { last_token: 9 }))
            .await;
    };
    let (released, ()) = tokio::join!(guard.release(), fake);
    assert_eq!(
        released.unwrap(),
        UnlockOutcome::NotHeld {
            last_fencing_token: Some(9)
        }
    );
}

#[tokio::test]
async fn unlock_and_extend_by_key_send_a_token_only_when_given() {
    let server = FakeServer::bind().await;
    let (client, mut connection) = connect(&server, fast_options()).await;
    let fake = async {
        let mut tokens = Vec::new();
        for _ in 0..4 {
            let (request_id, request) = connection.next_request().await;
            let (token, response) = match request {
                Request::Unlock(unlock) => {
                    (unlock.token, Response::Released(Released { token: 3 }))
                }
                Request::Extend(extend) => (
                    extend.token,
                    Response::Extended(Extended {
                        token: 3,
                        ttl_ms: extend.ttl_ms,
                    }),
                ),
                other => panic!("expected UNLOCK or EXTEND, got {other:?}"),
            };
            tokens.push(token);
            connection.reply(request_id, response).await;
        }
        tokens
    };
    let calls = async {
        let ttl = Duration::from_secs(1);
        client.unlock("k", "cron").await.unwrap();
        client.unlock_token("k", "cron", Some(3)).await.unwrap();
        client.extend("k", "cron", ttl).await.unwrap();
        client
            .extend_token("k", "cron", ttl, Some(3))
            .await
            .unwrap();
    };
    let ((), tokens) = tokio::join!(calls, fake);
    assert_eq!(tokens, [None, Some(3), None, Some(3)]);

    // A token of 0 is never granted: refused before sending.
    let zero = client.unlock_token("k", "cron", Some(0)).await.unwrap_err();
    assert!(matches!(zero, Error::InvalidRequest(_)), "{zero:?}");
}
