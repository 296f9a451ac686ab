//! The core promise over a real server and the real client: many clients contending for
//! one lock never hold it at once, tokens grow in grant order, and waiters are served in
//! the order they queued.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kahu_client::{Client, LockState};
use kahu_tests::{within, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contending_clients_never_hold_the_lock_at_once() {
    let server = TestServer::start().await;
    let clients = 12;
    let rounds = 15;
    // 0: nobody; otherwise the holder's number + 1, as the clients themselves see it.
    let holder = Arc::new(AtomicUsize::new(0));
    let grants = Arc::new(Mutex::new(Vec::new()));
    let deadline = Instant::now() + Duration::from_secs(60);

    let mut tasks = Vec::new();
    for number in 0..clients {
        let (holder, grants) = (holder.clone(), grants.clone());
        let addr = server.addr().to_string();
        tasks.push(tokio::spawn(async move {
            let client = Client::connect(addr).await.expect("connect");
            let mut acquired = 0;
            while acquired < rounds && Instant::now() < deadline {
                let guard = client
                    .lock("contended")
                    .ttl(Duration::from_secs(30))
                    .wait(Duration::from_secs(5))
                    .acquire()
                    .await
                    .expect("lock request");
                if !guard.is_acquired() {
                    continue;
                }
                let previous = holder.swap(number + 1, Ordering::SeqCst);
                assert_eq!(
                    previous,
                    0,
                    "client {number} got the lock while client {} held it",
                    previous - 1
                );
                grants
                    .lock()
                    .unwrap()
                    .push((number, guard.fencing_token().unwrap()));
                tokio::time::sleep(Duration::from_micros(200)).await;
                assert_eq!(holder.swap(0, Ordering::SeqCst), number + 1);
                assert!(guard.release().await.expect("release").is_released());
                acquired += 1;
            }
            acquired
        }));
    }
    for task in tasks {
        assert_eq!(
            within("a contending client", task).await.expect("task"),
            rounds
        );
    }
    let grants = std::mem::take(&mut *grants.lock().unwrap());
    assert_eq!(grants.len(), clients * rounds);
    for pair in grants.windows(2) {
        assert!(pair[1].1 > pair[0].1, "tokens out of grant order: {pair:?}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_granted_in_the_order_they_queued() {
    let server = TestServer::start().await;
    let holder = Client::connect(server.addr().to_string()).await.unwrap();
    let first = holder
        .lock("fifo")
        .ttl(Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();
    assert!(first.is_acquired());

    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for number in 0..5usize {
        let client = Client::connect(server.addr().to_string()).await.unwrap();
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            let guard = client
                .lock("fifo")
                .ttl(Duration::from_secs(30))
                .wait(Duration::from_secs(20))
                .acquire()
                .await
                .expect("lock");
            assert!(guard.is_acquired(), "waiter {number} was not granted");
            order
                .lock()
                .unwrap()
                .push((number, guard.fencing_token().unwrap()));
            guard.release().await.expect("release");
        }));
        // Queue them one at a time so their order on the server is known.
        let mut queued = false;
        for _ in 0..500 {
            if let LockState::Held(held) = holder.get("fifo").await.unwrap() {
                if held.waiters as usize == number + 1 {
                    queued = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(queued, "waiter {number} never queued");
    }
    let first_token = first.fencing_token().unwrap();
    first.release().await.unwrap();
    for task in tasks {
        within("a waiter", task).await.expect("waiter task");
    }
    let order = std::mem::take(&mut *order.lock().unwrap());
    let numbers: Vec<usize> = order.iter().map(|&(number, _)| number).collect();
    assert_eq!(numbers, vec![0, 1, 2, 3, 4]);
    let mut last = first_token;
    for &(_, token) in order.iter() {
        assert!(token > last);
        last = token;
    }
    server.stop().await;
}
