//! [`Client`]: the handle every call goes through.
//!
//! A `Client` is an `Arc` around the [`Router`] (the nodes, their connections' channels and
//! the shard -> leader map, see [`crate::router`]), so cloning it is cheap and every clone
//! shares the connections: one multiplexed connection per node (see [`crate::driver`]). A
//! call validates its request (the same checks the server makes), picks the node, sends the
//! request with a oneshot for the reply, and waits at most the request timeout, plus the
//! lock wait for a LOCK that queues on the server. A NOT_LEADER or a node that cannot be
//! reached sends it on to another node, within the request's budget ([`crate::route`]).
//! Nothing on this path takes a lock: the channels are lock-free, the routing state is
//! atomics, and each driver alone owns its connection and its table of pending requests.
//!
//! A guard's `Drop` cannot wait, so its UNLOCK is a task spawned on the runtime the client
//! was made in (which works from any thread), taking the same path as every other call.
//!
//! Owners: with [`ClientOptions::owner`] set, every lock that names no owner uses it.
//! Otherwise the client makes a unique base owner when it connects, and each
//! [`LockBuilder::acquire`] takes the lock as `<base>-<n>`, `n` counting that client's
//! acquires (see [`Client::owner_for_acquire`]): clones share connections, never an owner.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kahu_protocol::limits::WAIT_MS_MAX;
use kahu_protocol::routing::leader_hint;
use kahu_protocol::{
    ErrorClass, ErrorCode, Extend, Get, HelloOk, InfoReply, ProtocolError, Request, Response,
    Unlock,
};
use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};

use crate::driver::{self, Command, Connection};
use crate::error::Error;
use crate::identity::{acquire_owner, unique_owner_base};
use crate::lock::LockBuilder;
use crate::node::{DriverContext, Nodes, NODES_MAX};
use crate::options::ClientOptions;
use crate::outcome::{unexpected, ExtendOutcome, LockState, UnlockOutcome};
use crate::route::{is_pending, may_have_taken_effect, Failure, Route, Routed};
use crate::router::Router;

/// A client of one kahu node or of a cluster, shared by every clone.
///
/// ```no_run
/// # async fn example() -> Result<(), kahu_client::Error> {
/// use std::time::Duration;
/// let client = kahu_client::Client::connect("127.0.0.1:8002").await?;
/// let state = client.get("backup-lock").await?;
/// println!("locked: {}", state.is_locked());
/// let outcome = client.extend("backup-lock", "cron@host1", Duration::from_secs(60)).await?;
/// println!("extended: {}", outcome.is_extended());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    router: Router,
    options: ClientOptions,
    runtime: Handle,
    /// [`ClientOptions::owner`], or this client's unique base owner.
    owner: Bytes,
    /// Acquires that made their own owner from the base (none when the owner is set).
    acquires: AtomicU64,
    hello: watch::Receiver<Arc<HelloOk>>,
    /// The server's wait_ms_max from the latest HELLO, read by every waiting acquire.
    wait_ms_max: Arc<AtomicU64>,
}

impl Client {
    /// Connects to one node, `address` (anything that formats as `host:port`: `&str`,
    /// `String`, `SocketAddr`), with [`ClientOptions::default`]. The same as
    /// [`Client::connect_cluster`] with one address: a node of a cluster is enough, the
    /// client learns the others from the leader hints the cluster answers with.
    ///
    /// Fails with [`Error::Connect`] when no connection can be made within the configured
    /// attempts. Must be called inside a tokio runtime: the connection's driver task is
    /// spawned on it.
    pub async fn connect(address: impl ToString) -> Result<Client, Error> {
        Client::connect_with(address, ClientOptions::default()).await
    }

    /// Connects to one node with explicit options; see [`ClientOptions`].
    pub async fn connect_with(
        address: impl ToString,
        options: ClientOptions,
    ) -> Result<Client, Error> {
        Client::connect_cluster_with([address], options).await
    }

    /// Connects to a cluster through its seed `addresses` (any of its nodes; all of them is
    /// best), with [`ClientOptions::default`].
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), kahu_client::Error> {
    /// let nodes = ["10.0.0.1:8002", "10.0.0.2:8002", "10.0.0.3:8002"];
    /// let client = kahu_client::Client::connect_cluster(nodes).await?;
    /// let lock = client.lock("nightly-report").acquire().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// The seeds are tried in order until one answers HELLO; it becomes the **home** node
    /// (where PING and INFO go) and its `shard_count` places keys on shards
    /// (`kahu_protocol::routing`). Then every keyed request (lock, unlock, extend, get, and
    /// a guard's release on drop) goes to the node believed to lead the key's shard,
    /// learned from the cluster, over one multiplexed connection per node, opened when the
    /// first request goes there. The rules, for one request:
    ///
    /// - it goes to its shard's leader when one is known and not marked down, else home;
    /// - **NOT_LEADER naming `leader=HOST:PORT`**: the leader is recorded for the shard and
    ///   the request is sent there at once (after a pause, as below, if that node itself
    ///   sent this request on with a hint: the nodes disagree, their view is stale); a hint
    ///   naming a node marked down counts as no hint;
    /// - **NOT_LEADER naming no leader** (an election is in progress): the shard's leader is
    ///   forgotten, and the request is sent to the next known node after a pause of 10 ms,
    ///   doubling up to 200 ms;
    /// - **MEMBERSHIP_CHANGE_PENDING** (only a MEMBERS gets it: the shard's leader has a
    ///   change that is not committed yet): the same node is asked again after the same
    ///   pause;
    /// - **no connection can be made** to the node (nothing was sent): the node is marked
    ///   down for 1 s (skipped while another is up) and the request goes to the next node
    ///   at once; when every known node has failed for this request, the caller gets the
    ///   [`Error::Connect`];
    /// - **any other answer** (including every other error) goes to the caller, and a
    ///   lost connection or a timeout too, since the request may have been applied
    ///   ([`LockBuilder::acquire`] retries those itself when its LOCK is idempotent);
    /// - the budget: at most [`ClientOptions::route_attempts_max`] attempts (default 32),
    ///   none starting later than [`ClientOptions::route_time_max`] (default 5 s) after the
    ///   first, plus a LOCK's wait (whose `wait_ms` shrinks by the time already spent). When
    ///   it is spent the caller gets the last NOT_LEADER as an [`Error::Server`] with
    ///   [`Error::is_not_leader`], its message saying how many attempts were made.
    ///
    /// Nothing is resent that could take effect twice: a LOCK is resent with the same owner
    /// (a re-acquire by the holder is idempotent: same token, lease reset), UNLOCK and
    /// EXTEND with the same owner and token. A NOT_LEADER that says the request "may or may
    /// not have taken effect" (its node lost its leadership with the request in flight) is
    /// resent like any other, and the answer of the retry stands, except:
    /// - an UNLOCK whose retry finds the lock not held is reported as
    ///   [`UnlockOutcome::ReleasedUncertain`] (see [`Client::unlock_token`]);
    /// - a LOCK with [`LockBuilder::if_not_held`] is not resent (the retry would be refused
    ///   by the very grant the first attempt may have made): the caller gets that
    ///   NOT_LEADER as an error.
    ///
    /// Fails with [`Error::Connect`] when no seed can be connected to (the last seed's
    /// error, naming every seed), and with [`Error::InvalidRequest`] when `addresses` is
    /// empty or names more than 64 nodes. Must be called inside a tokio runtime.
    pub async fn connect_cluster<A: ToString>(
        addresses: impl IntoIterator<Item = A>,
    ) -> Result<Client, Error> {
        Client::connect_cluster_with(addresses, ClientOptions::default()).await
    }

    /// Connects to a cluster with explicit options; see [`Client::connect_cluster`].
    pub async fn connect_cluster_with<A: ToString>(
        addresses: impl IntoIterator<Item = A>,
        options: ClientOptions,
    ) -> Result<Client, Error> {
        options.validate()?;
        let addresses: Vec<String> = addresses.into_iter().map(|a| a.to_string()).collect();
        if addresses.is_empty() || addresses.len() > NODES_MAX {
            return Err(Error::InvalidRequest(ProtocolError::new(
                ErrorCode::Malformed,
                format!(
                    "a client needs 1 to {NODES_MAX} node addresses, got {}",
                    addresses.len()
                ),
            )));
        }
        let mut last_error = None;
        for (seed, address) in addresses.iter().enumerate() {
            match driver::connect(address, &options).await {
                Ok((connection, hello)) => {
                    return Ok(Client::start(&addresses, seed, connection, hello, options))
                }
                Err(error) => {
                    tracing::debug!(address, %error, "seed did not answer; trying the next");
                    last_error = Some(error);
                }
            }
        }
        match last_error.expect("at least one address was tried") {
            Error::Connect {
                address,
                reason,
                source,
            } if addresses.len() > 1 => Err(Error::Connect {
                address,
                reason: format!("{reason}; no seed answered ({})", addresses.join(", ")),
                source,
            }),
            error => Err(error),
        }
    }

    /// Builds the client around the connection to `addresses[home]`.
    fn start(
        addresses: &[String],
        home: usize,
        connection: Connection,
        hello: HelloOk,
        options: ClientOptions,
    ) -> Client {
        let owner = options.owner.clone().unwrap_or_else(unique_owner_base);
        let wait_ms_max = Arc::new(AtomicU64::new(hello.wait_ms_max));
        let shard_count = hello.shard_count;
        let (hello_sender, hello) = watch::channel(Arc::new(hello));
        let runtime = Handle::current();
        let nodes = Nodes::new(DriverContext {
            options: options.clone(),
            runtime: runtime.clone(),
            hello: Arc::new(hello_sender),
            wait_ms_max: Arc::clone(&wait_ms_max),
        });
        for address in addresses {
            nodes
                .find_or_add(address)
                .expect("the number of addresses was checked");
        }
        let home = nodes
            .find_or_add(&addresses[home])
            .expect("the home address was just added");
        nodes.start_connected(home, connection);
        Client {
            inner: Arc::new(Inner {
                router: Router::new(nodes, shard_count, home),
                options,
                runtime,
                owner,
                acquires: AtomicU64::new(0),
                hello,
                wait_ms_max,
            }),
        }
    }

    /// Starts building a lock request for `key`; see [`LockBuilder`].
    pub fn lock(&self, key: impl Into<Bytes>) -> LockBuilder<'_> {
        LockBuilder::new(self, key.into())
    }

    /// Releases `key` if `owner` holds it, whatever the grant's fencing token. Not holding
    /// it is an outcome, not an error. See [`Client::unlock_token`] to release only one
    /// grant.
    pub async fn unlock(
        &self,
        key: impl Into<Bytes>,
        owner: impl Into<Bytes>,
    ) -> Result<UnlockOutcome, Error> {
        self.unlock_token(key, owner, None).await
    }

    /// Releases `key` if `owner` holds it under the grant with fencing token `token`
    /// (`None`: any grant of `owner`, as [`Client::unlock`]). A newer grant to the same
    /// owner, after the lease of `token` ended, answers [`UnlockOutcome::NotOwner`] and
    /// stays held. A token of 0 is an [`Error::InvalidRequest`]: no grant has it.
    ///
    /// In a cluster, a leader that loses its leadership with the UNLOCK in flight answers
    /// NOT_LEADER "the request may or may not have taken effect", and the UNLOCK is sent
    /// again to the new leader. If that retry finds the lock **not held**, the outcome is
    /// [`UnlockOutcome::ReleasedUncertain`], not [`UnlockOutcome::NotHeld`]: the lock is
    /// free, but whether this UNLOCK freed it (the first attempt was applied) or its lease
    /// had ended first cannot be told. [`UnlockOutcome::is_released`] is false for it, since
    /// the release cannot be claimed; either way the grant is no longer held. RELEASED and
    /// NOT_OWNER from the retry are reported as they are.
    pub async fn unlock_token(
        &self,
        key: impl Into<Bytes>,
        owner: impl Into<Bytes>,
        token: Option<u64>,
    ) -> Result<UnlockOutcome, Error> {
        let request = Request::Unlock(Unlock {
            key: key.into(),
            owner: owner.into(),
            token,
        });
        let routed = self.route_call(request, Duration::ZERO).await?;
        let outcome = UnlockOutcome::from_response(routed.response)?;
        Ok(match outcome {
            UnlockOutcome::NotHeld { last_fencing_token } if routed.uncertain => {
                UnlockOutcome::ReleasedUncertain { last_fencing_token }
            }
            outcome => outcome,
        })
    }

    /// Sets the lease of `key` to `ttl` from now if `owner` holds it, whatever the grant's
    /// fencing token; the token does not change. See [`Client::extend_token`].
    pub async fn extend(
        &self,
        key: impl Into<Bytes>,
        owner: impl Into<Bytes>,
        ttl: Duration,
    ) -> Result<ExtendOutcome, Error> {
        self.extend_token(key, owner, ttl, None).await
    }

    /// Sets the lease of `key` to `ttl` from now if `owner` holds it under the grant with
    /// fencing token `token` (`None`: any grant of `owner`, as [`Client::extend`]). A newer
    /// grant to the same owner answers [`ExtendOutcome::NotOwner`] and is left as it is.
    pub async fn extend_token(
        &self,
        key: impl Into<Bytes>,
        owner: impl Into<Bytes>,
        ttl: Duration,
        token: Option<u64>,
    ) -> Result<ExtendOutcome, Error> {
        let request = Request::Extend(Extend {
            key: key.into(),
            owner: owner.into(),
            ttl_ms: duration_ms(ttl),
            token,
        });
        ExtendOutcome::from_response(self.call(request, Duration::ZERO).await?)
    }

    /// Reads who holds `key`, for how long, and how many wait for it.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<LockState, Error> {
        let request = Request::Get(Get { key: key.into() });
        LockState::from_response(self.call(request, Duration::ZERO).await?)
    }

    /// Sends PING and returns the round-trip time.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let started = Instant::now();
        match self.call(Request::Ping, Duration::ZERO).await? {
            Response::Pong => Ok(started.elapsed()),
            other => Err(unexpected("PING", other)),
        }
    }

    /// Reads the statistics (named counters and gauges) of the home node
    /// ([`Client::address`]).
    ///
    /// A node of a cluster also reports, per shard `N`, whether it leads the shard
    /// (`shardN_is_leader`), the leader's node id (`shardN_leader`, 0 when none is known),
    /// the Raft term and the commit, applied and last log indexes; `kahu-cli
    /// --cluster-status` shows them as a table.
    pub async fn info(&self) -> Result<InfoReply, Error> {
        match self.call(Request::Info, Duration::ZERO).await? {
            Response::Info(info) => Ok(info),
            other => Err(unexpected("INFO", other)),
        }
    }

    /// The latest answer to HELLO, from any node: the server's name, shard count and
    /// limits.
    pub fn server_hello(&self) -> Arc<HelloOk> {
        Arc::clone(&self.inner.hello.borrow())
    }

    /// The owner set with [`ClientOptions::owner`], which every lock that names no owner
    /// uses. Without it, this client's unique base owner: no lock is taken under the base
    /// itself, each acquire that names no owner takes its own, `<base>-<n>` (see
    /// [`crate::LockGuard::owner`]), so clones of one client never share a lock.
    pub fn owner(&self) -> &Bytes {
        &self.inner.owner
    }

    /// The owner for one [`LockBuilder::acquire`] that names none: the configured owner, or
    /// a new one from the base. The acquire keeps it for all of its own retries, so a LOCK
    /// sent again after a lost reply is still an idempotent re-acquire.
    pub(crate) fn owner_for_acquire(&self) -> Bytes {
        if self.inner.options.owner.is_some() {
            return self.inner.owner.clone();
        }
        let acquire = self.inner.acquires.fetch_add(1, Ordering::Relaxed);
        acquire_owner(&self.inner.owner, acquire)
    }

    /// The home node's address, where PING and INFO go (and keyed requests whose shard's
    /// leader is unknown): the first seed that answered [`Client::connect_cluster`], as it
    /// was given, until it is found down.
    pub fn address(&self) -> &str {
        let router = &self.inner.router;
        router.nodes().get(router.home()).address()
    }

    /// Every node this client knows, in the order it learned them: the seeds, then the
    /// nodes named by leader hints.
    pub fn nodes(&self) -> Vec<String> {
        let nodes = self.inner.router.nodes();
        (0..nodes.len())
            .map(|node| nodes.get(node).address().to_string())
            .collect()
    }

    /// The address of the node believed to lead `key`'s shard, when one was learned (from
    /// a hint, or from an answer to a request for a key of that shard).
    pub fn leader_of(&self, key: impl AsRef<[u8]>) -> Option<String> {
        let router = &self.inner.router;
        let leader = router.leader(router.shard_of_key(key.as_ref()))?;
        Some(router.nodes().get(leader).address().to_string())
    }

    /// How many shards the cluster places keys on (from the first HELLO): each is its own
    /// Raft group, numbered from 0.
    pub fn shard_count(&self) -> u16 {
        u16::try_from(self.inner.router.shard_count()).expect("a shard count is a u16")
    }

    /// The longest wait the server accepts in one LOCK, from its HELLO.
    pub(crate) fn wait_ms_max(&self) -> u64 {
        match self.inner.wait_ms_max.load(Ordering::Relaxed) {
            0 => 0,
            announced => announced.min(WAIT_MS_MAX),
        }
    }

    /// Sends one request and waits for its response, following the cluster's NOT_LEADER
    /// hints (see [`Client::route_call`]). ERROR replies come back as
    /// `Ok(Response::Error)`; the typed callers turn them into [`Error::Server`].
    pub(crate) async fn call(
        &self,
        request: Request,
        server_wait: Duration,
    ) -> Result<Response, Error> {
        Ok(self.route_call(request, server_wait).await?.response)
    }

    /// Sends `request` to the node the router chooses, and again to others while the
    /// answers say another node serves it, within the request's budget (the rules are on
    /// [`Client::connect_cluster`]). Each attempt waits at most the request timeout plus
    /// what is left of `server_wait` (the time a LOCK may queue on the server).
    pub(crate) async fn route_call(
        &self,
        mut request: Request,
        server_wait: Duration,
    ) -> Result<Routed, Error> {
        request.validate()?;
        let router = &self.inner.router;
        let shard = router.shard_of(&request)?;
        let started = Instant::now();
        let mut route = Route::new(&self.inner.options, server_wait, started);
        let mut node = router.first_choice(shard, started);
        loop {
            route.attempt(node);
            let wait_left = route.server_wait_left(Instant::now());
            let result = self.attempt(node, request.clone(), wait_left).await;
            let now = Instant::now();
            let failure = match &result {
                Ok(Response::Error(reply)) if reply.class == ErrorClass::NotLeader => {
                    let uncertain = may_have_taken_effect(reply);
                    if uncertain && !resendable_when_uncertain(&request) {
                        return Ok(route.answer(result?));
                    }
                    route.uncertain |= uncertain;
                    Failure::NotLeader {
                        hint: leader_hint(&reply.message),
                    }
                }
                Ok(Response::Error(reply)) if is_pending(reply) => Failure::Pending,
                Err(Error::Connect { .. }) => Failure::Unreachable,
                Ok(response) => {
                    if let (Some(shard), false) = (shard, matches!(response, Response::Error(_))) {
                        router.learn_leader(shard, node);
                    }
                    return Ok(route.answer(result?));
                }
                Err(_) => return Err(result.expect_err("matched as an error")),
            };
            let next = router.reroute(node, shard, failure, &mut route, now);
            let Some((next, pause)) = next.filter(|(_, pause)| route.may_retry(*pause, now)) else {
                return self.give_up(result, &route, now);
            };
            tracing::debug!(
                from = router.nodes().get(node).address(),
                to = router.nodes().get(next).address(),
                ?pause,
                "sending the request to another node"
            );
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            node = next;
            if let Request::Lock(lock) = &mut request {
                let wait_left = route.server_wait_left(Instant::now());
                lock.wait_ms = lock.wait_ms.min(duration_ms(wait_left));
            }
        }
    }

    /// One attempt: `request` to node `node`, waiting at most the request timeout plus
    /// `server_wait`.
    async fn attempt(
        &self,
        node: usize,
        request: Request,
        server_wait: Duration,
    ) -> Result<Response, Error> {
        let (sender, receiver) = oneshot::channel();
        let command = Command {
            request,
            reply: Some(sender),
        };
        self.inner
            .router
            .nodes()
            .commands(node)
            .send(command)
            .map_err(|_| Error::Closed)?;
        let limit = self
            .inner
            .options
            .request_timeout
            .saturating_add(server_wait);
        match tokio::time::timeout(limit, receiver).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout(limit)),
        }
    }

    /// The request's budget is spent, or no node is left to try: the caller gets the last
    /// answer, a NOT_LEADER saying how far the client went, or the last connection error,
    /// naming every node this request could not reach when there are several.
    fn give_up(
        &self,
        result: Result<Response, Error>,
        route: &Route,
        now: Instant,
    ) -> Result<Routed, Error> {
        let nodes = self.inner.router.nodes();
        let unreachable: Vec<&str> = (0..nodes.len())
            .filter(|&node| route.unreachable.contains(node))
            .map(|node| nodes.get(node).address())
            .collect();
        match result {
            Ok(Response::Error(mut reply)) => {
                reply.message = format!("{}; {}", reply.message, route.gave_up(now));
                Ok(route.answer(Response::Error(reply)))
            }
            Ok(response) => Ok(route.answer(response)),
            Err(Error::Connect {
                address,
                reason,
                source,
            }) if unreachable.len() > 1 => Err(Error::Connect {
                address,
                reason: format!(
                    "{reason}; this request could reach none of {}",
                    unreachable.join(", ")
                ),
                source,
            }),
            Err(error) => Err(error),
        }
    }

    /// Sends a request in the background, by the same route as [`Client::call`], and
    /// drops its answer. Synchronous, callable from any thread, with or without a runtime,
    /// and never panics: it is what a guard's `Drop` uses. The task runs on the runtime the
    /// client was made in; when that runtime has shut down, nothing is sent (nor could be:
    /// the connections' tasks ran on it). The request must be valid.
    pub(crate) fn send_in_background(&self, request: Request) {
        debug_assert!(request.validate().is_ok());
        let client = self.clone();
        self.inner.runtime.spawn(async move {
            if let Err(error) = client.call(request, Duration::ZERO).await {
                tracing::debug!(%error, "a background request failed");
            }
        });
    }
}

/// Whether a request whose earlier attempt "may or may not have taken effect" may be sent
/// again. Everything but a LOCK with IF_NOT_HELD: that one would be refused by the very
/// grant its first attempt may have made, and the caller would be told "not acquired"
/// while holding the lock. (A MEMBERS is idempotent on the server: a retry after the change
/// was made answers the voters as they are.)
fn resendable_when_uncertain(request: &Request) -> bool {
    !matches!(request, Request::Lock(lock) if lock.if_not_held)
}

/// Whole milliseconds in `duration`, saturating (the protocol's range checks then refuse
/// values that are too large with a clear error).
pub(crate) fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_become_whole_milliseconds() {
        assert_eq!(duration_ms(Duration::from_micros(1500)), 1);
        assert_eq!(duration_ms(Duration::from_secs(60)), 60_000);
        assert_eq!(duration_ms(Duration::MAX), u64::MAX);
    }
}
