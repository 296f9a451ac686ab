//! The text debug mode, as a person at `nc` or `telnet` uses it, through a raw socket.

use kahu_protocol::limits::TEXT_LINE_BYTES_MAX;
use kahu_tests::{get, RawClient, TestServer, TextClient};

/// The value of `name=` in a reply line.
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    line.split(' ')
        .find_map(|word| {
            word.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('='))
        })
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debug_session_locks_inspects_and_unlocks() {
    let server = TestServer::start().await;
    let mut session = TextClient::connect(server.addr()).await;

    let acquired = session.command("LOCK backup-lock 60000").await;
    assert!(acquired.starts_with("ACQUIRED "), "{acquired}");
    let token: u64 = field(&acquired, "token").parse().unwrap();
    let owner = field(&acquired, "owner").to_string();
    assert!(
        owner.starts_with("text-"),
        "a default owner per connection: {owner}"
    );
    assert_eq!(field(&acquired, "ttl_ms"), "60000");

    let held = session.command("get backup-lock").await;
    assert!(held.starts_with("HELD "), "{held}");
    assert_eq!(field(&held, "owner"), owner);
    assert_eq!(field(&held, "token"), token.to_string());
    assert_eq!(field(&held, "durability"), "persistent");

    // Another session sees it held by the first.
    let mut other = TextClient::connect(server.addr()).await;
    let busy = other.command("LOCK backup-lock 5000").await;
    assert!(busy.starts_with("BUSY "), "{busy}");
    assert_eq!(field(&busy, "owner"), owner);
    let not_owner = other.command("UNLOCK backup-lock").await;
    assert!(not_owner.starts_with("NOT_OWNER "), "{not_owner}");

    // The binary protocol sees the same lock.
    let mut binary = RawClient::connect(server.addr()).await;
    assert!(matches!(binary.call(1, &get("backup-lock")).await,
        kahu_protocol::Response::LockInfo(info) if info.token == token));

    let extended = session.command("EXTEND backup-lock 90000").await;
    assert_eq!(extended, format!("EXTENDED token={token} ttl_ms=90000"));
    assert_eq!(
        session.command("UNLOCK backup-lock").await,
        format!("RELEASED token={token}")
    );
    assert!(session
        .command("GET backup-lock")
        .await
        .starts_with("NOT_HELD "));
    assert_eq!(session.command("PING").await, "PONG");
    assert!(session.command("HELP").await.starts_with("COMMANDS LOCK"));
    assert!(session.command("INFO").await.contains(" grants_total=1"));
    session.write(b"QUIT\r\n").await;
    assert_eq!(session.line().await, None, "QUIT closes without a reply");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_get_an_error_and_the_session_goes_on() {
    let server = TestServer::start().await;
    let mut session = TextClient::connect(server.addr()).await;
    let cases = [
        ("FROB x", "ERR UNKNOWN_COMMAND"),
        ("LOCK", "ERR KEY_EMPTY"),
        ("LOCK k", "ERR MALFORMED"),
        ("LOCK k 0", "ERR TTL_OUT_OF_RANGE"),
        ("LOCK k 999999999999999", "ERR TTL_OUT_OF_RANGE"),
        ("LOCK k 1000 WAIT 99999999999", "ERR WAIT_OUT_OF_RANGE"),
        ("UNLOCK k TOKEN 0", "ERR MALFORMED"),
        ("MEMBERS", "ERR MALFORMED"),
        ("MEMBERS REMOVE 0 0", "ERR BAD_MEMBERSHIP"),
        ("MEMBERS ADD 0 4 localhost:7004/x:1", "ERR BAD_MEMBERSHIP"),
    ];
    for (line, expected) in cases {
        let reply = session.command(line).await;
        assert!(reply.starts_with(expected), "{line:?} -> {reply:?}");
    }
    session.write(b"GET \xff\xfe\xfd\r\n").await;
    // 0xFF 0xFE 0xFD is a telnet "IAC DONT" sequence: removed, leaving `GET ` (no key).
    assert!(session.line().await.unwrap().starts_with("ERR KEY_EMPTY"));
    session.write(b"GET caf\xc3\r\n").await;
    assert!(session.line().await.unwrap().starts_with("ERR MALFORMED"));

    let long = format!("GET {}\r\n", "k".repeat(TEXT_LINE_BYTES_MAX * 3));
    session.write(long.as_bytes()).await;
    assert!(session
        .line()
        .await
        .unwrap()
        .starts_with("ERR LINE_TOO_LONG"));
    assert_eq!(
        session.command("PING").await,
        "PONG",
        "the rest of the long line was skipped"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telnet_negotiation_and_bare_newlines_work() {
    let server = TestServer::start().await;
    let mut session = TextClient::connect(server.addr()).await;
    // What a telnet client sends first: IAC DO SUPPRESS-GO-AHEAD, IAC WILL TERMINAL-TYPE.
    session.write(b"\xff\xfd\x03\xff\xfb\x18PING\r\n").await;
    assert_eq!(session.line().await.unwrap(), "PONG");
    session.write(b"ping\n").await; // nc sends a bare LF
    assert_eq!(session.line().await.unwrap(), "PONG");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_lock_answers_when_the_holder_lets_go() {
    let server = TestServer::start().await;
    let mut holder = TextClient::connect(server.addr()).await;
    let mut waiter = TextClient::connect(server.addr()).await;
    assert!(holder
        .command("LOCK job 60000 OWNER h")
        .await
        .starts_with("ACQUIRED"));
    // The waiter types two lines; the second waits behind the first.
    waiter
        .write(b"LOCK job 60000 OWNER w WAIT 10000\r\nGET job\r\n")
        .await;
    // Wait until the server has queued the waiter, then release.
    for attempt in 0.. {
        let held = holder.command("GET job").await;
        if field(&held, "waiters") == "1" {
            break;
        }
        assert!(attempt < 200, "waiter never queued: {held}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(holder
        .command("UNLOCK job OWNER h")
        .await
        .starts_with("RELEASED"));
    let granted = waiter.line().await.unwrap();
    assert!(
        granted.starts_with("ACQUIRED ") && field(&granted, "owner") == "w",
        "{granted}"
    );
    let held = waiter.line().await.unwrap();
    assert_eq!(field(&held, "owner"), "w");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_runs_out_answers_busy() {
    let server = TestServer::start().await;
    let mut holder = TextClient::connect(server.addr()).await;
    let mut waiter = TextClient::connect(server.addr()).await;
    assert!(holder
        .command("LOCK job 60000")
        .await
        .starts_with("ACQUIRED"));
    let started = std::time::Instant::now();
    let busy = waiter.command("LOCK job 60000 WAIT 200").await;
    assert!(busy.starts_with("BUSY "), "{busy}");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(200),
        "answered before the wait ran out"
    );
    server.stop().await;
}
