//! The client against the real server, started in process on 127.0.0.1 port 0: the lock
//! contract as a client sees it (grant, refuse, hand-off, extend, release, leases), owners
//! per acquire, guards acting on their own grant only, guards releasing on drop, pipelining
//! on one connection, and reconnecting after a restart.
//!
//! Phases that need a request to be queued on the server wait for GET to show it
//! (`wait_for_waiters`), never for a fixed time. Every loop is bounded in count and time;
//! every server started is shut down.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kahu_client::{
    Client, ClientOptions, Durability, ExtendOutcome, LockGuard, LockState, UnlockOutcome,
};
use kahu_server::{Config, RunningServer, Server};
use tempfile::TempDir;

struct TestServer {
    server: RunningServer,
    _data_dir: TempDir,
}

impl TestServer {
    async fn start() -> TestServer {
        TestServer::start_with(|_| {}).await
    }

    async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let data_dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_tests(data_dir.path());
        adjust(&mut config);
        let server = Server::start(config).await.unwrap();
        TestServer {
            server,
            _data_dir: data_dir,
        }
    }

    async fn client(&self) -> Client {
        Client::connect(self.server.local_addr()).await.unwrap()
    }

    async fn client_with_owner(&self, owner: &'static str) -> Client {
        let options = ClientOptions::default().owner(owner);
        Client::connect_with(self.server.local_addr(), options)
            .await
            .unwrap()
    }

    async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

/// Polls `key` until `done` holds for its state: at most 100 polls, 5 s.
async fn wait_for_state(client: &Client, key: &str, done: impl Fn(&LockState) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    for _ in 0..100 {
        if done(&client.get(key.to_string()).await.unwrap()) {
            return;
        }
        assert!(Instant::now() < deadline, "`{key}` never reached the state");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("`{key}` never reached the state");
}

/// Polls `key` until it is held with exactly `waiters` requests queued.
async fn wait_for_waiters(client: &Client, key: &str, waiters: u32) {
    wait_for_state(
        client,
        key,
        |state| matches!(state, LockState::Held(held) if held.waiters == waiters),
    )
    .await;
}

/// Polls `key` until `owner` holds it with exactly `waiters` requests queued.
async fn wait_for_holder(client: &Client, key: &str, owner: &Bytes, waiters: u32) {
    wait_for_state(client, key, |state| {
        matches!(state, LockState::Held(held) if held.owner == owner && held.waiters == waiters)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_extend_get_unlock() {
    let server = TestServer::start().await;
    let client = server.client().await;
    assert_eq!(client.server_hello().shard_count, 2);

    // Phase 1: take the lock.
    let mut guard = client
        .lock("report")
        .ttl(Duration::from_secs(5))
        .acquire()
        .await
        .unwrap();
    assert!(guard.is_acquired());
    let token = guard.fencing_token().unwrap();
    assert!(token > 0);
    assert!(
        guard.owner().starts_with(client.owner()),
        "the acquire's own owner"
    );

    // Phase 2: GET shows it held by us, with the same token.
    let LockState::Held(held) = guard.info().await.unwrap() else {
        panic!("the lock is held");
    };
    assert_eq!((&held.owner, held.fencing_token), (guard.owner(), token));
    assert!(held.remaining <= Duration::from_secs(5));
    assert_eq!(held.durability, Durability::Persistent);

    // Phase 3: EXTEND keeps the token.
    let extended = guard.extend(Duration::from_secs(20)).await.unwrap();
    assert_eq!(
        extended,
        ExtendOutcome::Extended {
            fencing_token: token,
            ttl: Duration::from_secs(20)
        }
    );

    // Phase 4: release; GET reports it free (with the last token, when the server still
    // knows it: the protocol allows "unknown").
    let released = guard.release().await.unwrap();
    assert_eq!(
        released,
        UnlockOutcome::Released {
            fencing_token: token
        }
    );
    let state = client.get("report").await.unwrap();
    assert!(
        matches!(state, LockState::NotHeld { last_fencing_token } if last_fencing_token.is_none_or(|last| last == token)),
        "{state:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_owner_is_refused_then_waits_for_the_hand_off() {
    let server = TestServer::start().await;
    let alice = server.client().await;
    let bob = server.client().await;
    let alice_guard = alice.lock("printer").acquire().await.unwrap();
    let alice_token = alice_guard.fencing_token().unwrap();

    // Phase 1: without a wait, Bob is told at once, with the holder named.
    let refused = bob.lock("printer").acquire().await.unwrap();
    assert!(!refused.is_acquired());
    assert_eq!(&refused.holder().unwrap().owner, alice_guard.owner());

    // Phase 2: Bob queues on the server (GET shows one waiter); Alice releases; Bob gets a
    // larger token.
    let waiting = {
        let bob = bob.clone();
        tokio::spawn(async move {
            bob.lock("printer")
                .wait(Duration::from_secs(5))
                .acquire()
                .await
        })
    };
    wait_for_waiters(&alice, "printer", 1).await;
    assert!(alice_guard.release().await.unwrap().is_released());
    let bob_guard = waiting.await.unwrap().unwrap();
    assert!(bob_guard.is_acquired());
    assert!(bob_guard.fencing_token().unwrap() > alice_token);
    bob_guard.release().await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_owner_reenters_unless_if_not_held() {
    let server = TestServer::start().await;
    let client = server.client_with_owner("cron@host1").await;
    let first = client.lock("cron").acquire().await.unwrap();
    assert_eq!(first.owner(), "cron@host1");

    // Phase 1: the client's owner re-enters, from another clone too; so does a builder's.
    let again = client.clone().lock("cron").acquire().await.unwrap();
    assert!(again.is_acquired() && again.was_reentered());
    assert_eq!(again.fencing_token(), first.fencing_token());
    again.detach();
    let other = server.client().await;
    let named = other
        .lock("cron")
        .owner("cron@host1")
        .acquire()
        .await
        .unwrap();
    assert!(named.was_reentered());
    named.detach();

    // Phase 2: if_not_held refuses even the holder.
    let refused = client
        .lock("cron")
        .if_not_held(true)
        .acquire()
        .await
        .unwrap();
    assert!(!refused.is_acquired());
    first.release().await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_of_one_client_racing_for_one_lock_get_it_once() {
    let server = TestServer::start().await;
    let client = server.client().await;
    for round in 0..20 {
        let key = format!("race-{round}");
        let racers = (0..2).map(|_| {
            let client = client.clone();
            let key = key.clone();
            tokio::spawn(async move { client.lock(key).acquire().await.unwrap() })
        });
        let guards: Vec<LockGuard> = futures::future::try_join_all(racers).await.unwrap();
        let winners: Vec<&LockGuard> = guards.iter().filter(|guard| guard.is_acquired()).collect();
        assert_eq!(winners.len(), 1, "round {round}: exactly one holder");
        let loser = guards.iter().find(|guard| !guard.is_acquired()).unwrap();
        assert_eq!(&loser.holder().unwrap().owner, winners[0].owner());
        assert_ne!(loser.owner(), winners[0].owner());
    }
    server.shutdown().await;
}

/// A guard for `key` whose lease (100 ms) has ended on the server.
async fn guard_whose_lease_ended(client: &Client, key: &str) -> LockGuard {
    let guard = client
        .lock(key.to_string())
        .ttl(Duration::from_millis(100))
        .acquire()
        .await
        .unwrap();
    assert!(guard.is_acquired());
    wait_for_state(client, key, |state| !state.is_locked()).await;
    guard
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_whose_lease_ended_never_touches_a_later_grant_to_its_owner() {
    // One owner for a shell and a script, as kahu-cli does for one user on one host.
    let server = TestServer::start().await;
    let shell = server.client_with_owner("alice@host1").await;
    let script = server.client_with_owner("alice@host1").await;

    // Phase 1: the shell's lease ends; the script takes the lock, with a larger token.
    let mut stale = guard_whose_lease_ended(&shell, "backup-lock").await;
    let fresh = script.lock("backup-lock").acquire().await.unwrap();
    assert!(fresh.is_acquired() && !fresh.was_reentered());
    let fresh_token = fresh.fencing_token().unwrap();
    assert!(fresh_token > stale.fencing_token().unwrap());

    // Phase 2: the shell's guard can neither extend nor release the script's grant.
    let extended = stale.extend(Duration::from_secs(60)).await.unwrap();
    let ExtendOutcome::NotOwner(holder) = extended else {
        panic!("a later grant is not extended: {extended:?}");
    };
    assert_eq!(
        (holder.owner.as_ref(), holder.fencing_token),
        (&b"alice@host1"[..], fresh_token)
    );
    let released = stale.release().await.unwrap();
    assert!(
        matches!(released, UnlockOutcome::NotOwner(_)),
        "{released:?}"
    );

    // Phase 3: nor can a stale guard's drop (its UNLOCK goes out before this GET, on the
    // same connection).
    let dropped = guard_whose_lease_ended(&shell, "report-lock").await;
    let report = script.lock("report-lock").acquire().await.unwrap();
    drop(dropped);
    for (key, guard) in [("backup-lock", &fresh), ("report-lock", &report)] {
        let LockState::Held(held) = shell.get(key).await.unwrap() else {
            panic!("`{key}` is still the script's");
        };
        assert_eq!(Some(held.fencing_token), guard.fencing_token(), "{key}");
    }

    // Phase 4: by key and owner, without a token, any grant of the owner is released.
    let by_key = shell.unlock("backup-lock", "alice@host1").await.unwrap();
    assert_eq!(
        by_key,
        UnlockOutcome::Released {
            fencing_token: fresh_token
        }
    );
    fresh.detach();
    report.release().await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_guard_releases_the_lock() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let guard = client
        .lock("dropped")
        .ttl(Duration::from_secs(60))
        .acquire()
        .await
        .unwrap();
    assert!(guard.is_acquired());
    drop(guard);
    wait_for_state(&client, "dropped", |state| !state.is_locked()).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_lock_lives_on_its_lease_alone() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let guard = client
        .lock("leased")
        .ttl(Duration::from_millis(200))
        .acquire()
        .await
        .unwrap();
    guard.detach();
    assert!(client.get("leased").await.unwrap().is_locked());
    wait_for_state(&client, "leased", |state| !state.is_locked()).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_and_extend_by_key_name_the_refusal() {
    let server = TestServer::start().await;
    let alice = server.client().await;
    let bob = server.client().await;

    let free = bob.unlock("door", "bob").await.unwrap();
    assert!(matches!(free, UnlockOutcome::NotHeld { .. }), "{free:?}");

    let guard = alice.lock("door").acquire().await.unwrap();
    let not_owner = bob.unlock("door", bob.owner().clone()).await.unwrap();
    let UnlockOutcome::NotOwner(holder) = not_owner else {
        panic!("Bob does not own the door: {not_owner:?}");
    };
    assert_eq!(&holder.owner, guard.owner());
    let extend = bob
        .extend("door", bob.owner().clone(), Duration::from_secs(1))
        .await
        .unwrap();
    assert!(matches!(extend, ExtendOutcome::NotOwner(_)), "{extend:?}");
    guard.release().await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_are_persistent_by_default_and_ephemeral_on_request() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let durable = client.lock("durable").acquire().await.unwrap();
    let fast = client
        .lock("fast")
        .durability(Durability::Ephemeral)
        .acquire()
        .await
        .unwrap();
    for (key, expected) in [
        ("durable", Durability::Persistent),
        ("fast", Durability::Ephemeral),
    ] {
        match client.get(key).await.unwrap() {
            LockState::Held(held) => assert_eq!(held.durability, expected, "{key}"),
            other => panic!("{key}: {other:?}"),
        }
    }
    durable.release().await.unwrap();
    fast.release().await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_share_one_connection_and_a_wait_blocks_nothing() {
    let server = TestServer::start().await;
    let holder = server.client().await;
    let client = server.client().await;
    let held = holder.lock("busy").acquire().await.unwrap();

    // Phase 1: a LOCK queues on the server for up to 3 s ...
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .lock("busy")
                .wait(Duration::from_secs(3))
                .acquire()
                .await
        })
    };
    wait_for_waiters(&holder, "busy", 1).await;

    // Phase 2: ... while 200 requests on the same connection are answered.
    let burst = async {
        let started = Instant::now();
        let requests = (0..200).map(|index| {
            let client = client.clone();
            async move {
                let key = format!("burst-{index}");
                let guard = client.lock(key.clone()).acquire().await.unwrap();
                assert!(guard.is_acquired());
                let state = client.get(key).await.unwrap();
                assert!(state.is_locked());
                guard.release().await.unwrap().is_released()
            }
        });
        let released = futures::future::join_all(requests).await;
        assert!(released.into_iter().all(|released| released));
        let elapsed = started.elapsed();
        // Phase 3: the queued LOCK is granted when the holder lets go.
        held.release().await.unwrap();
        elapsed
    };
    let burst_time = burst.await;
    assert!(burst_time < Duration::from_secs(3), "{burst_time:?}");
    let waited = waiting.await.unwrap().unwrap();
    assert!(waited.is_acquired());
    waited.release().await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_waiter_queue_is_polled_within_the_wait() {
    let server = TestServer::start_with(|config| config.waiters_per_lock_max = 1).await;
    let holder = server.client().await;
    let first = server.client().await;
    let second = server.client().await;
    let held = holder.lock("queue").acquire().await.unwrap();

    // Phase 1: `first` takes the only waiter slot.
    let first_wait = {
        let first = first.clone();
        tokio::spawn(async move {
            first
                .lock("queue")
                .wait(Duration::from_secs(5))
                .acquire()
                .await
        })
    };
    wait_for_waiters(&holder, "queue", 1).await;

    // Phase 2: `second` is refused a slot (TOO_MANY_WAITERS) and polls. Its first LOCK is
    // sent before the GET on the same connection, so the GET's answer comes after the
    // refusal; the queue still holds `first` alone.
    let mut second_wait = {
        let second = second.clone();
        Box::pin(async move {
            second
                .lock("queue")
                .wait(Duration::from_secs(5))
                .retry(Duration::from_millis(20))
                .acquire()
                .await
        })
    };
    assert!(
        futures::poll!(&mut second_wait).is_pending(),
        "the first LOCK is sent"
    );
    let second_wait = tokio::spawn(second_wait);
    let LockState::Held(state) = second.get("queue").await.unwrap() else {
        panic!("the holder still holds `queue`");
    };
    assert_eq!((&state.owner, state.waiters), (held.owner(), 1));

    // Phase 3: the holder releases and `first` gets the lock; the slot is free, and
    // `second`'s next poll takes it.
    held.release().await.unwrap();
    let first_guard = first_wait.await.unwrap().unwrap();
    assert!(first_guard.is_acquired());
    wait_for_holder(&holder, "queue", first_guard.owner(), 1).await;

    // Phase 4: `first` releases; the queued `second` gets the lock, with a larger token.
    let first_token = first_guard.fencing_token().unwrap();
    assert!(first_guard.release().await.unwrap().is_released());
    let second_guard = second_wait.await.unwrap().unwrap();
    assert!(second_guard.is_acquired());
    assert!(second_guard.fencing_token().unwrap() > first_token);
    second_guard.release().await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reconnects_after_a_server_restart() {
    let data_dir = tempfile::tempdir().unwrap();
    let server = Server::start(Config::for_tests(data_dir.path()))
        .await
        .unwrap();
    let address = server.local_addr();
    let options = ClientOptions::default()
        .connect_attempts_max(2)
        .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(20));
    let client = Client::connect_with(address, options).await.unwrap();
    client.ping().await.unwrap();

    // Phase 1: the server stops; requests fail with retryable errors.
    server.shutdown().await;
    let error = client.ping().await.unwrap_err();
    assert!(error.is_retryable(), "{error:?}");

    // Phase 2: a server comes back on the same address; the next request reconnects.
    let mut config = Config::for_tests(data_dir.path());
    config.listen = address;
    let server = Server::start(config).await.unwrap();
    let mut pinged = false;
    for _ in 0..20 {
        if client.ping().await.is_ok() {
            pinged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(pinged, "the client reconnects");
    server.shutdown().await;
}
