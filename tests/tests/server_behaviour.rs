//! Server-wide behaviour: connection limits, idle connections, disconnects and shutdown.

use std::time::Duration;

use kahu_protocol::{ErrorCode, Request, Response};
use kahu_tests::{get, lock, token, within, RawClient, TestServer, TextClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused_in_their_own_encoding() {
    let server = TestServer::start_with(|config| config.connections_max = 2).await;
    let mut first = RawClient::connect(server.addr()).await;
    let mut second = TextClient::connect(server.addr()).await;
    assert_eq!(first.call(1, &Request::Ping).await, Response::Pong);
    assert_eq!(second.command("PING").await, "PONG");

    let mut refused_binary = RawClient::connect(server.addr()).await;
    refused_binary.send(1, &Request::Ping).await;
    match refused_binary.receive().await {
        Some((0, Response::Error(error))) => {
            assert_eq!(error.code, Some(ErrorCode::TooManyConnections))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(refused_binary.receive().await, None);

    let mut refused_text = TextClient::connect(server.addr()).await;
    refused_text.write(b"PING\r\n").await;
    assert!(refused_text
        .line()
        .await
        .unwrap()
        .starts_with("ERR TOO_MANY_CONNECTIONS"));
    assert_eq!(refused_text.line().await, None);

    // Those admitted are unaffected, and a slot frees when one leaves.
    assert_eq!(first.call(2, &Request::Ping).await, Response::Pong);
    drop(second);
    let mut admitted = None;
    for _ in 0..200 {
        let mut client = RawClient::connect(server.addr()).await;
        client.send(1, &Request::Ping).await;
        if let Some((1, Response::Pong)) = client.receive().await {
            admitted = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(admitted.is_some(), "a freed slot is reused");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_but_their_locks_stay() {
    let server = TestServer::start_with(|config| config.connection_idle_ms = 200).await;
    let mut client = RawClient::connect(server.addr()).await;
    let held = token(&client.call(1, &lock("k", "sleepy", 60_000, 0)).await);
    assert_eq!(client.receive().await, None, "closed after idling");
    let mut other = RawClient::connect(server.addr()).await;
    match other.call(1, &get("k")).await {
        Response::LockInfo(info) => assert_eq!(info.token, held),
        response => panic!("{response:?}"),
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_keeps_its_lock_until_the_lease_ends() {
    let server = TestServer::start().await;
    let mut crashed = RawClient::connect(server.addr()).await;
    let first = token(&crashed.call(1, &lock("k", "crashed", 300, 0)).await);
    drop(crashed); // the process died: no UNLOCK

    let mut next = RawClient::connect(server.addr()).await;
    assert!(matches!(
        next.call(1, &lock("k", "next", 60_000, 0)).await,
        Response::Busy(_)
    ));
    // Waiting on the server: granted when the dead holder's lease ends, with a larger token.
    let started = std::time::Instant::now();
    let second = token(&next.call(2, &lock("k", "next", 60_000, 5_000)).await);
    assert!(second > first);
    assert!(started.elapsed() < Duration::from_secs(5));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_client_disconnects_is_never_granted() {
    let server = TestServer::start().await;
    let mut holder = RawClient::connect(server.addr()).await;
    token(&holder.call(1, &lock("k", "holder", 60_000, 0)).await);
    let mut leaving = RawClient::connect(server.addr()).await;
    leaving.send(1, &lock("k", "leaving", 60_000, 10_000)).await;
    let mut staying = RawClient::connect(server.addr()).await;
    staying.send(1, &lock("k", "staying", 60_000, 10_000)).await;
    wait_for_waiters(&mut holder, 2).await;

    drop(leaving);
    wait_for_waiters(&mut holder, 1).await;
    assert!(matches!(
        holder.call(3, &kahu_tests::unlock("k", "holder")).await,
        Response::Released(_)
    ));
    let (_, response) = staying.receive().await.expect("granted");
    token(&response);
    match holder.call(4, &get("k")).await {
        Response::LockInfo(info) => assert_eq!(info.owner, "staying"),
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

async fn wait_for_waiters(client: &mut RawClient, expected: u32) {
    for attempt in 0..500 {
        if let Response::LockInfo(info) = client.call(100 + attempt, &get("k")).await {
            if info.waiters == expected {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never saw {expected} waiters");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_waiting_requests_before_closing() {
    let server = TestServer::start().await;
    let mut holder = RawClient::connect(server.addr()).await;
    token(&holder.call(1, &lock("k", "holder", 60_000, 0)).await);
    let mut waiter = RawClient::connect(server.addr()).await;
    waiter.send(7, &lock("k", "waiter", 60_000, 30_000)).await;
    let mut text_waiter = TextClient::connect(server.addr()).await;
    text_waiter.write(b"LOCK k 60000 WAIT 30000\r\n").await;
    wait_for_waiters(&mut holder, 2).await;

    let stopping = tokio::spawn(server.stop());
    match waiter.receive().await {
        Some((7, Response::Error(error))) => assert_eq!(error.code, Some(ErrorCode::ShuttingDown)),
        other => panic!("{other:?}"),
    }
    assert!(text_waiter
        .line()
        .await
        .unwrap()
        .starts_with("ERR SHUTTING_DOWN"));
    assert_eq!(waiter.receive().await, None);
    within("shutdown", stopping).await.expect("shutdown task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_zero_keeps_connections_open() {
    let server = TestServer::start_with(|config| config.connection_idle_ms = 0).await;
    let mut client = RawClient::connect(server.addr()).await;
    for id in 0..3 {
        assert_eq!(client.call(id, &Request::Ping).await, Response::Pong);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut text = TextClient::connect(server.addr()).await;
    assert_eq!(text.command("PING").await, "PONG");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_closes_its_side_still_gets_every_answer() {
    let server = TestServer::start().await;
    let mut holder = RawClient::connect(server.addr()).await;
    token(&holder.call(1, &lock("k", "holder", 60_000, 0)).await);

    // Binary: a waiting LOCK and a GET, then the client shuts its write side.
    let stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let mut framed = tokio_util::codec::Framed::new(stream, kahu_protocol::ClientCodec::default());
    use futures::{SinkExt, StreamExt};
    framed
        .feed((1, &lock("k", "leaver", 60_000, 30_000)))
        .await
        .unwrap();
    framed.feed((2, &get("k"))).await.unwrap();
    SinkExt::<(u32, &Request)>::flush(&mut framed)
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::shutdown(framed.get_mut())
        .await
        .unwrap();
    let mut answers = Vec::new();
    while let Some(frame) = within("answers after half-close", framed.next()).await {
        answers.push(frame.unwrap());
    }
    answers.sort_by_key(|(id, _)| *id);
    assert!(
        matches!(
            &answers[..],
            [(1, Response::Busy(_)), (2, Response::LockInfo(_))]
        ),
        "{answers:?}"
    );

    // Text: `printf 'LOCK k 60000 WAIT 30000\n' | nc -N` prints an answer.
    let mut text = TextClient::connect(server.addr()).await;
    text.write(b"LOCK k 60000 WAIT 30000\r\n").await;
    text.shutdown_write().await;
    assert!(text.line().await.unwrap().starts_with("BUSY owner=holder"));
    assert_eq!(text.line().await, None);

    // Neither waiter was left behind.
    match holder.call(2, &get("k")).await {
        Response::LockInfo(info) => assert_eq!(info.waiters, 0),
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_stuck_clients_cannot_hold_up_shutdown() {
    let server = TestServer::start_with(|config| config.shutdown_grace_ms = 300).await;
    // Connected, never sends a byte.
    let _silent = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    // Pipelines requests with large replies and never reads them, until its writes stall.
    let mut stuck = RawClient::connect(server.addr()).await;
    for id in 0..20_000 {
        stuck.feed(id, &Request::Info).await;
    }
    let flushed = tokio::time::timeout(Duration::from_millis(500), stuck.flush()).await;
    let _ = flushed; // stalled or not, the server must still stop
    let started = std::time::Instant::now();
    server.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_paused_at_the_in_flight_limit_is_noticed() {
    let server = TestServer::start_with(|config| config.requests_in_flight_max = 2).await;
    let mut holder = RawClient::connect(server.addr()).await;
    token(&holder.call(1, &lock("k", "holder", 60_000, 0)).await);
    // Two waiting LOCKs fill this connection's in-flight limit: the server stops reading it.
    let mut leaving = RawClient::connect(server.addr()).await;
    leaving.feed(1, &lock("k", "leaving", 60_000, 30_000)).await;
    leaving.feed(2, &lock("k", "leaving", 60_000, 30_000)).await;
    leaving.flush().await;
    wait_for_waiters(&mut holder, 2).await;
    drop(leaving);
    // Noticed although the server was not reading from it: its waiters are dropped...
    wait_for_waiters(&mut holder, 0).await;
    // ...so the lock is not handed to a client that is gone.
    assert!(matches!(
        holder.call(3, &kahu_tests::unlock("k", "holder")).await,
        Response::Released(_)
    ));
    assert!(matches!(
        holder.call(4, &get("k")).await,
        Response::NotHeld(_)
    ));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_keeps_sending_past_the_in_flight_limit_is_served_in_turn() {
    let server = TestServer::start_with(|config| config.requests_in_flight_max = 4).await;
    let mut client = RawClient::connect(server.addr()).await;
    let count = 500u32;
    for id in 0..count {
        client
            .feed(id, &lock(&format!("paced-{id}"), "o", 60_000, 0))
            .await;
    }
    client.flush().await;
    let mut answered = 0;
    for _ in 0..count {
        let (_, response) = client.receive().await.expect("every request answered");
        token(&response);
        answered += 1;
    }
    assert_eq!(answered, count);
    server.stop().await;
}
