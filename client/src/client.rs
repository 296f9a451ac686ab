//! [`Client`]: the handle every call goes through.
//!
//! A `Client` is an `Arc` around the sending end of the driver's channel (see
//! [`crate::driver`]), so cloning it is cheap and every clone shares the one multiplexed
//! connection. A call validates its request (the same checks the server makes), sends it
//! with a oneshot for the reply, and waits at most the request timeout, plus the lock wait
//! for a LOCK that queues on the server. Nothing on this path takes a lock: the channel is
//! lock-free and the driver alone owns the connection and the table of pending requests.
//!
//! The channel is unbounded so that a guard's `Drop` can queue its UNLOCK synchronously,
//! with or without a tokio runtime; callers are bounded anyway, since each call waits for
//! its reply.
//!
//! Owners: with [`ClientOptions::owner`] set, every lock that names no owner uses it.
//! Otherwise the client makes a unique base owner when it connects, and each
//! [`LockBuilder::acquire`] takes the lock as `<base>-<n>`, `n` counting that client's
//! acquires (see [`Client::owner_for_acquire`]): clones share a connection, never an owner.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kahu_protocol::limits::WAIT_MS_MAX;
use kahu_protocol::{Extend, Get, HelloOk, InfoReply, Request, Response, Unlock};
use tokio::sync::{mpsc, oneshot, watch};

use crate::driver::{self, Command, Driver};
use crate::error::Error;
use crate::identity::{acquire_owner, unique_owner_base};
use crate::lock::LockBuilder;
use crate::options::ClientOptions;
use crate::outcome::{unexpected, ExtendOutcome, LockState, UnlockOutcome};

/// A connection to one kahu server, shared by every clone.
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
    commands: mpsc::UnboundedSender<Command>,
    address: String,
    options: ClientOptions,
    /// [`ClientOptions::owner`], or this client's unique base owner.
    owner: Bytes,
    /// Acquires that made their own owner from the base (none when the owner is set).
    acquires: AtomicU64,
    hello: watch::Receiver<Arc<HelloOk>>,
    /// The server's wait_ms_max from the latest HELLO, read by every waiting acquire.
    wait_ms_max: Arc<AtomicU64>,
}

impl Client {
    /// Connects to `address` (anything that formats as `host:port`: `&str`, `String`,
    /// `SocketAddr`) with [`ClientOptions::default`].
    ///
    /// Fails with [`Error::Connect`] when no connection can be made within the configured
    /// attempts. Must be called inside a tokio runtime: the connection's driver task is
    /// spawned on it.
    pub async fn connect(address: impl ToString) -> Result<Client, Error> {
        Client::connect_with(address, ClientOptions::default()).await
    }

    /// Connects with explicit options; see [`ClientOptions`].
    pub async fn connect_with(
        address: impl ToString,
        options: ClientOptions,
    ) -> Result<Client, Error> {
        options.validate()?;
        let address = address.to_string();
        let (connection, hello) = driver::connect(&address, &options).await?;
        let owner = options.owner.clone().unwrap_or_else(unique_owner_base);
        let (commands, receiver) = mpsc::unbounded_channel();
        let wait_ms_max = Arc::new(AtomicU64::new(hello.wait_ms_max));
        let (hello_sender, hello) = watch::channel(Arc::new(hello));
        let driver = Driver::new(
            address.clone(),
            options.clone(),
            receiver,
            hello_sender,
            Arc::clone(&wait_ms_max),
        );
        tokio::spawn(driver.run(connection));
        Ok(Client {
            inner: Arc::new(Inner {
                commands,
                address,
                options,
                owner,
                acquires: AtomicU64::new(0),
                hello,
                wait_ms_max,
            }),
        })
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
        UnlockOutcome::from_response(self.call(request, Duration::ZERO).await?)
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

    /// Reads the server's statistics (named counters and gauges).
    pub async fn info(&self) -> Result<InfoReply, Error> {
        match self.call(Request::Info, Duration::ZERO).await? {
            Response::Info(info) => Ok(info),
            other => Err(unexpected("INFO", other)),
        }
    }

    /// The server's answer to HELLO on the current (or last) connection: its name, shard
    /// count and limits.
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

    /// The address this client connects to, as given to [`Client::connect`].
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// The longest wait the server accepts in one LOCK, from its HELLO.
    pub(crate) fn wait_ms_max(&self) -> u64 {
        match self.inner.wait_ms_max.load(Ordering::Relaxed) {
            0 => 0,
            announced => announced.min(WAIT_MS_MAX),
        }
    }

    /// Sends one request and waits for its response: at most the request timeout plus
    /// `server_wait` (the time a LOCK may queue on the server). ERROR replies come back as
    /// `Ok(Response::Error)`; the typed callers turn them into [`Error::Server`].
    pub(crate) async fn call(
        &self,
        request: Request,
        server_wait: Duration,
    ) -> Result<Response, Error> {
        request.validate()?;
        let (sender, receiver) = oneshot::channel();
        let command = Command {
            request,
            reply: Some(sender),
        };
        self.inner
            .commands
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

    /// Queues a request whose answer nobody waits for. Synchronous, needs no runtime and
    /// never panics: it is what a guard's `Drop` uses. The request must be valid.
    pub(crate) fn send_and_forget(&self, request: Request) {
        debug_assert!(request.validate().is_ok());
        // Fails only when the driver is gone, and then there is nobody to tell.
        let _ = self.inner.commands.send(Command {
            request,
            reply: None,
        });
    }
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
