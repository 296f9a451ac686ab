//! A full disk or a failing disk under a real server: requests get a clear storage error,
//! nothing that is not durable is acknowledged or visible, and service resumes once the
//! disk does.

use std::sync::Arc;

use kahu_protocol::{ErrorClass, ErrorCode, Request, Response};
use kahu_server::wal::storage::{FaultPoint, FaultyStorage, DISK_FULL, IO_ERROR};
use kahu_server::{Config, Server};
use kahu_tests::{get, lock, token, unlock, RawClient};

fn error_code(response: &Response) -> (ErrorCode, ErrorClass) {
    match response {
        Response::Error(error) => (error.code.expect("a known code"), error.class),
        other => panic!("expected ERROR, got {other:?}"),
    }
}

async fn faulty_server(storage: &FaultyStorage) -> (kahu_server::RunningServer, tempfile::TempDir) {
    let data_dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(data_dir.path());
    config.shards = 1; // every key on one shard, so one failure covers them all
    let server = Server::start_with_storage(config, Some(Arc::new(storage.clone())))
        .await
        .expect("start");
    (server, data_dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_refuses_requests_and_acknowledges_nothing_it_did_not_sync() {
    for (point, os_error) in [
        (FaultPoint::Sync, IO_ERROR),
        (FaultPoint::Write, IO_ERROR),
        (FaultPoint::Write, DISK_FULL),
    ] {
        let storage = FaultyStorage::default();
        let (server, _dir) = faulty_server(&storage).await;
        let mut client = RawClient::connect(server.local_addr()).await;
        let held = token(&client.call(1, &lock("before", "o", 60_000, 0)).await);

        // The disk starts failing: the grant is not acknowledged.
        storage.fail(point, 0, os_error);
        let failed = client.call(2, &lock("during", "o", 60_000, 0)).await;
        assert_eq!(
            error_code(&failed),
            (ErrorCode::StorageFailed, ErrorClass::Server),
            "{point:?}"
        );
        // While it fails, the shard refuses everything: nobody sees the undurable grant.
        for (id, request) in [
            (3, get("during")),
            (4, get("before")),
            (5, unlock("before", "o")),
        ] {
            let refused = client.call(id, &request).await;
            assert_eq!(
                error_code(&refused),
                (ErrorCode::StorageUnavailable, ErrorClass::Retryable)
            );
        }
        assert_eq!(
            client.call(6, &Request::Ping).await,
            Response::Pong,
            "the server itself is fine"
        );

        // The disk recovers: the kept decision is written, and service resumes.
        storage.heal();
        let mut resumed = None;
        for attempt in 0..200 {
            match client.call(100 + attempt, &get("during")).await {
                Response::Error(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                response => {
                    resumed = Some(response);
                    break;
                }
            }
        }
        // The server said "may or may not take effect"; here it did, durably, and a retry
        // by the same owner is an idempotent success.
        assert!(
            matches!(resumed, Some(Response::LockInfo(ref info)) if info.owner == "o"),
            "{resumed:?}"
        );
        let retried = client.call(300, &lock("during", "o", 60_000, 0)).await;
        assert!(
            matches!(retried, Response::Acquired(a) if a.reentered),
            "{retried:?}"
        );
        match client.call(301, &get("before")).await {
            Response::LockInfo(info) => assert_eq!(info.token, held),
            other => panic!("{other:?}"),
        }
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_locks_never_wait_for_the_disk() {
    let storage = FaultyStorage::default();
    let (server, _dir) = faulty_server(&storage).await;
    let mut client = RawClient::connect(server.local_addr()).await;
    let mut ephemeral = lock("fast", "o", 60_000, 0);
    if let Request::Lock(lock) = &mut ephemeral {
        lock.durability = kahu_protocol::Durability::Ephemeral;
    }
    // No log record, no commit: a failing sync is never touched.
    storage.fail(FaultPoint::Sync, 0, IO_ERROR);
    storage.fail(FaultPoint::Write, 0, IO_ERROR);
    token(&client.call(1, &ephemeral).await);
    assert!(matches!(
        client.call(2, &unlock("fast", "o")).await,
        Response::Released(_)
    ));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_stays_bounded_under_steady_churn() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(data_dir.path());
    config.shards = 1;
    config.wal_segment_bytes = kahu_server::wal::SEGMENT_BYTES_MIN;
    config.snapshot_log_bytes = 64 * 1024;
    let server = Server::start(config).await.expect("start");
    let mut client = RawClient::connect(server.local_addr()).await;
    // 20,000 grants and releases (about 2.5 MiB of log, ten segments' worth), pipelined
    // 500 at a time so they share commits.
    let mut id = 0u32;
    for round in 0..20 {
        for step in [0, 1] {
            for key in 0..500 {
                let key = format!("churn-{round}-{key}");
                let request = if step == 0 {
                    lock(&key, "o", 60_000, 0)
                } else {
                    unlock(&key, "o")
                };
                client.feed(id, &request).await;
                id += 1;
            }
            client.flush().await;
            for _ in 0..500 {
                let (_, response) = client.receive().await.expect("a reply");
                assert!(
                    matches!(response, Response::Acquired(_) | Response::Released(_)),
                    "{response:?}"
                );
            }
        }
    }
    let Response::Info(info) = client.call(id, &Request::Info).await else {
        panic!("INFO")
    };
    assert!(info.get("snapshots_total").unwrap() >= 10, "{info:?}");
    let segments = std::fs::read_dir(data_dir.path().join("shard-0"))
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("wal-")
        })
        .count();
    assert!(segments <= 2, "{segments} segments left after compaction");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_failure_in_the_middle_of_a_pipelined_burst() {
    let storage = FaultyStorage::default();
    let (server, _dir) = faulty_server(&storage).await;
    let mut client = RawClient::connect(server.local_addr()).await;
    let count = 2_000u32;
    // A few commits succeed, then every sync fails: commits are in flight and staged.
    storage.fail(FaultPoint::Sync, 1, IO_ERROR);
    for id in 0..count {
        client
            .feed(id, &lock(&format!("burst-{id}"), "o", 60_000, 0))
            .await;
    }
    client.flush().await;
    let mut acquired = Vec::new();
    let mut answered = vec![false; count as usize];
    for _ in 0..count {
        let (id, response) = client.receive().await.expect("an answer to every request");
        assert!(
            !std::mem::replace(&mut answered[id as usize], true),
            "two answers to {id}"
        );
        match response {
            Response::Acquired(_) => acquired.push(id),
            Response::Error(error) => assert!(
                matches!(
                    error.code,
                    Some(ErrorCode::StorageFailed | ErrorCode::StorageUnavailable)
                ),
                "{error:?}"
            ),
            other => panic!("{other:?}"),
        }
    }
    assert!(
        !acquired.is_empty() && acquired.len() < count as usize,
        "{} acquired",
        acquired.len()
    );
    storage.heal();
    // Every acknowledged grant is there once the shard serves again.
    let mut id = count;
    for key in acquired {
        loop {
            id += 1;
            match client.call(id, &get(&format!("burst-{key}"))).await {
                Response::LockInfo(info) => {
                    assert_eq!(info.owner, "o");
                    break;
                }
                Response::Error(error) if error.code == Some(ErrorCode::StorageUnavailable) => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                other => panic!("burst-{key}: {other:?}"),
            }
            assert!(id < count + 100_000, "the shard never recovered");
        }
    }
    server.shutdown().await;
}
