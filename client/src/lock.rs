//! Taking a lock: [`LockBuilder`] sends LOCK (queuing on the server when asked to wait) and
//! returns a [`LockGuard`], which releases the lock when dropped.
//!
//! How `acquire` waits, in order of preference:
//! 1. on the server: LOCK carries `wait_ms`, the server queues the request FIFO and answers
//!    as soon as the lock is granted or the wait is over. No polling, fair hand-off;
//! 2. in chunks, when the wait is longer than the server's `wait_ms_max`: each LOCK waits
//!    `wait_ms_max` and the next is sent as soon as the previous comes back BUSY;
//! 3. by polling every `retry` interval, only when the server cannot queue the request:
//!    it answered TOO_MANY_WAITERS (or another retryable refusal, such as SHUTTING_DOWN),
//!    or BUSY before the wait was over; and after a connection failure, when the LOCK is
//!    an idempotent one (no `if_not_held`).
//!
//! All three stop at one overall deadline, `wait` after `acquire` was called. Not getting
//! the lock by then is not an error: the guard says [`LockGuard::is_acquired`] `== false`.
//!
//! A lease is counted from when the granting LOCK was sent, never from when the reply
//! arrived, so the client's view of its lease ([`LockGuard::lease_expires_at`]) ends no
//! later than the server's.
//!
//! Owner: unless one is named ([`LockBuilder::owner`], [`crate::ClientOptions::owner`]),
//! each `acquire` makes its own (see [`Client::owner`]) and sends every one of its LOCKs
//! (retries, chunks, polls) with it: a LOCK sent again after a lost reply is an idempotent
//! re-acquire, yet two acquires, even through clones of one client, never both get the lock.
//!
//! A guard acts on its own grant only: its UNLOCK and EXTEND carry its fencing token, so
//! once its lease has ended and the lock was granted again, even to the same owner (every
//! `kahu-cli` run of a user shares one), the guard can neither release nor extend the new
//! grant: the server answers NOT_OWNER.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kahu_protocol::{Acquired, Durability, ErrorClass, ErrorCode, Lock, Request, Response, Unlock};

use crate::client::{duration_ms, Client};
use crate::error::Error;
use crate::outcome::{unexpected, ExtendOutcome, Holder, LockState, UnlockOutcome};

/// A LOCK request being built. Every setting has a default; only the key is required.
///
/// ```no_run
/// # async fn example(client: kahu_client::Client) -> Result<(), kahu_client::Error> {
/// use std::time::Duration;
/// let guard = client
///     .lock("nightly-report")
///     .ttl(Duration::from_secs(30))
///     .wait(Duration::from_secs(10))
///     .acquire()
///     .await?;
/// if let Some(token) = guard.fencing_token() {
///     println!("writing with fencing token {token}");
/// }
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[must_use = "a LockBuilder does nothing until `acquire` is awaited"]
pub struct LockBuilder<'a> {
    client: &'a Client,
    key: Bytes,
    owner: Option<Bytes>,
    ttl: Duration,
    wait: Duration,
    retry: Duration,
    durability: Durability,
    if_not_held: bool,
}

impl<'a> LockBuilder<'a> {
    /// Lease length when none is set.
    pub const TTL_DEFAULT: Duration = Duration::from_secs(30);
    /// Polling interval when none is set (used only where the server cannot queue).
    pub const RETRY_DEFAULT: Duration = Duration::from_millis(100);
    /// Shortest polling interval; shorter ones are raised to this, so polling never spins.
    pub const RETRY_MIN: Duration = Duration::from_millis(1);

    pub(crate) fn new(client: &'a Client, key: Bytes) -> LockBuilder<'a> {
        LockBuilder {
            client,
            key,
            owner: None,
            ttl: LockBuilder::TTL_DEFAULT,
            wait: Duration::ZERO,
            retry: LockBuilder::RETRY_DEFAULT,
            durability: Durability::Persistent,
            if_not_held: false,
        }
    }

    /// The lease (default 30 s): the server frees the lock this long after the request was
    /// sent unless the holder extends or releases it first. Whole milliseconds, at least 1.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long to wait for the lock when someone else holds it (default 0: answer at
    /// once). The wait queues on the server, first come first served.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// The polling interval (default 100 ms), used only where the server cannot queue the
    /// request: when its waiter queue for the lock is full (TOO_MANY_WAITERS) or when it
    /// answers BUSY before the wait is over.
    pub fn retry(mut self, retry: Duration) -> Self {
        self.retry = retry.max(LockBuilder::RETRY_MIN);
        self
    }

    /// Who takes the lock. Default: the owner set with [`crate::ClientOptions::owner`];
    /// without one, a new owner for this acquire alone (the client's base owner and a
    /// number, see [`Client::owner`]), so two acquires never share the lock.
    ///
    /// Name an owner to share locks on purpose: a LOCK by the current holder is then an
    /// idempotent re-acquire (same token, lease reset), across acquires, clients and
    /// processes. That is also what makes retrying a failed `acquire` safe: a timed-out
    /// LOCK may have been granted, and only the same owner can take it again (or release it
    /// by key with [`Client::unlock`]) before its lease ends.
    pub fn owner(mut self, owner: impl Into<Bytes>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Where the lock lives. The default, [`Durability::Persistent`], survives a server
    /// crash: the grant is synced to the server's write-ahead log before it is answered.
    /// [`Durability::Ephemeral`] is faster and lives in the server's memory only. A server
    /// that cannot keep persistent locks refuses them; the client never downgrades.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Refuse the lock even when this owner already holds it (default false).
    ///
    /// By default a LOCK by the current holder is an idempotent re-acquire: same token,
    /// lease reset, which makes retries after a lost reply safe. When many processes share
    /// one owner (`kahu-cli` uses `user@host` for every run), that would let a second copy
    /// of a script "acquire" the lock the first copy holds; with `if_not_held(true)` the
    /// second copy is refused instead. Connection failures are then not retried by
    /// `acquire`, since a retry could be refused by the lock the first attempt took; for the
    /// same reason a NOT_LEADER saying the LOCK "may or may not have taken effect" (a
    /// cluster's leader lost its leadership with it in flight) is returned as an error
    /// ([`Error::is_not_leader`]) instead of being sent to the new leader.
    pub fn if_not_held(mut self, if_not_held: bool) -> Self {
        self.if_not_held = if_not_held;
        self
    }

    /// Sends LOCK until the lock is granted or the wait is over (see the module docs).
    ///
    /// `Ok` with [`LockGuard::is_acquired`] `== false` when the wait ran out; `Err` for
    /// invalid settings (caught before sending), server refusals (for example UNSUPPORTED
    /// for persistent locks) and connection failures.
    pub async fn acquire(self) -> Result<LockGuard, Error> {
        // One owner for every LOCK of this acquire: retries stay idempotent.
        let owner = self
            .owner
            .clone()
            .unwrap_or_else(|| self.client.owner_for_acquire());
        let started = Instant::now();
        let deadline = started
            .checked_add(self.wait)
            .unwrap_or(started + Duration::from_secs(u32::MAX.into()));
        let mut holder = None;
        loop {
            let wait_ms = duration_ms(deadline.saturating_duration_since(Instant::now()))
                .min(self.client.wait_ms_max());
            let request = Request::Lock(Lock {
                key: self.key.clone(),
                owner: owner.clone(),
                ttl_ms: duration_ms(self.ttl),
                wait_ms,
                durability: self.durability,
                if_not_held: self.if_not_held,
            });
            let sent_at = Instant::now();
            let result = self
                .client
                .call(request, Duration::from_millis(wait_ms))
                .await;
            let time_left = Instant::now() < deadline;
            match result {
                Ok(Response::Acquired(acquired)) => {
                    return Ok(self.guard(owner, Some(Grant::new(acquired, sent_at)), None))
                }
                Ok(Response::Busy(busy)) => {
                    holder = Some(Holder::from(busy));
                    if !time_left {
                        return Ok(self.guard(owner, None, holder));
                    }
                    // A BUSY after the whole server wait: queue again at once. An early
                    // BUSY means the server would not queue: poll.
                    let waited_in_full =
                        wait_ms > 0 && sent_at.elapsed() >= Duration::from_millis(wait_ms);
                    if !waited_in_full {
                        self.pause(deadline).await;
                    }
                }
                // Retryable refusals were not applied, so trying again is safe even with
                // `if_not_held`. A full waiter queue at the deadline means "not acquired".
                Ok(Response::Error(reply)) if reply.class == ErrorClass::Retryable => {
                    if !time_left {
                        if reply.code == Some(ErrorCode::TooManyWaiters) {
                            return Ok(self.guard(owner, None, holder));
                        }
                        return Err(Error::Server(reply));
                    }
                    self.pause(deadline).await;
                }
                Ok(other) => return Err(unexpected("LOCK", other)),
                Err(error) if self.retries_after(&error) && time_left => {
                    tracing::debug!(%error, "LOCK failed; trying again within the wait");
                    self.pause(deadline).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Whether `acquire` sends LOCK again after `error`. Only connection failures, only for
    /// an idempotent LOCK, and never after a timeout (which already took its full wait).
    fn retries_after(&self, error: &Error) -> bool {
        !self.if_not_held && error.is_retryable() && !error.is_timeout()
    }

    /// Sleeps one polling interval, or until the deadline when that is sooner.
    async fn pause(&self, deadline: Instant) {
        let until_deadline = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(self.retry.min(until_deadline)).await;
    }

    fn guard(&self, owner: Bytes, grant: Option<Grant>, holder: Option<Holder>) -> LockGuard {
        LockGuard {
            client: self.client.clone(),
            key: self.key.clone(),
            owner,
            grant,
            holder,
            unlock_on_drop: true,
        }
    }
}

/// What the server granted, as the client counts it.
#[derive(Clone, Copy, Debug)]
struct Grant {
    fencing_token: u64,
    ttl: Duration,
    lease_expires_at: Instant,
    reentered: bool,
}

impl Grant {
    fn new(acquired: Acquired, sent_at: Instant) -> Grant {
        let ttl = Duration::from_millis(acquired.ttl_ms);
        Grant {
            fencing_token: acquired.token,
            ttl,
            lease_expires_at: sent_at + ttl,
            reentered: acquired.reentered,
        }
    }
}

/// The result of [`LockBuilder::acquire`]: a held lock, or the news that it was not
/// granted within the wait.
///
/// Dropping a guard that holds its lock releases it in the background (UNLOCK, fire and
/// forget; this works without a tokio runtime and never panics). Use
/// [`LockGuard::release`] to learn the result, or [`LockGuard::detach`] to leave the lock
/// to its lease.
///
/// A guard's UNLOCK and EXTEND carry its fencing token, so they act on its own grant only,
/// never on a later grant of the same key to the same owner. Two guards of one grant (a
/// re-acquire by a named owner keeps the token) share one lock, and releasing either
/// releases it.
#[derive(Debug)]
#[must_use = "dropping a LockGuard releases its lock at once"]
pub struct LockGuard {
    client: Client,
    key: Bytes,
    owner: Bytes,
    grant: Option<Grant>,
    holder: Option<Holder>,
    unlock_on_drop: bool,
}

impl LockGuard {
    /// True when the lock was granted.
    pub fn is_acquired(&self) -> bool {
        self.grant.is_some()
    }

    /// The fencing token of the grant: pass it to every storage system the lock protects,
    /// which rejects writes carrying a smaller token. `None` when not acquired.
    pub fn fencing_token(&self) -> Option<u64> {
        self.grant.map(|grant| grant.fencing_token)
    }

    pub fn key(&self) -> &Bytes {
        &self.key
    }

    /// The owner the LOCKs were sent with: the one named (builder or client options), or
    /// the one this acquire made for itself (`<client base>-<n>`).
    pub fn owner(&self) -> &Bytes {
        &self.owner
    }

    /// When the lease ends by the client's count (from when the granting request was sent,
    /// so no later than the server's). `None` when not acquired.
    pub fn lease_expires_at(&self) -> Option<Instant> {
        self.grant.map(|grant| grant.lease_expires_at)
    }

    /// The lease the server granted (or set by the last [`LockGuard::extend`]). `None`
    /// when not acquired.
    pub fn ttl(&self) -> Option<Duration> {
        self.grant.map(|grant| grant.ttl)
    }

    /// True when this owner already held the lock and the grant only reset its lease.
    pub fn was_reentered(&self) -> bool {
        self.grant.is_some_and(|grant| grant.reentered)
    }

    /// Who held the lock when it was not granted (from the last BUSY), if known.
    pub fn holder(&self) -> Option<&Holder> {
        self.holder.as_ref()
    }

    /// Sets the lease to `ttl` from now; the fencing token does not change. EXTEND carries
    /// the guard's token, so it never extends a later grant to the same owner. When the
    /// answer is not [`ExtendOutcome::Extended`] the grant was lost (its lease ran out) and
    /// the guard no longer releases it on drop. A guard that was not acquired sends nothing
    /// and answers [`ExtendOutcome::NotHeld`].
    pub async fn extend(&mut self, ttl: Duration) -> Result<ExtendOutcome, Error> {
        let Some(token) = self.fencing_token() else {
            return Ok(ExtendOutcome::NotHeld {
                last_fencing_token: None,
            });
        };
        let sent_at = Instant::now();
        let outcome = self
            .client
            .extend_token(self.key.clone(), self.owner.clone(), ttl, Some(token))
            .await?;
        if let Some(grant) = &mut self.grant {
            match &outcome {
                ExtendOutcome::Extended { fencing_token, ttl } => {
                    grant.fencing_token = *fencing_token;
                    grant.ttl = *ttl;
                    grant.lease_expires_at = sent_at + *ttl;
                }
                ExtendOutcome::NotOwner(_) | ExtendOutcome::NotHeld { .. } => {
                    self.unlock_on_drop = false;
                }
            }
        }
        Ok(outcome)
    }

    /// Reads the lock's current state from the server (GET).
    pub async fn info(&self) -> Result<LockState, Error> {
        self.client.get(self.key.clone()).await
    }

    /// Releases the lock and returns the server's answer. UNLOCK carries the guard's token,
    /// so a later grant to the same owner is never released: it answers
    /// [`UnlockOutcome::NotOwner`]. A guard that was not acquired sends nothing and answers
    /// [`UnlockOutcome::NotHeld`]. When the UNLOCK fails (for example the connection broke),
    /// the guard's drop sends it once more in the background.
    ///
    /// UNLOCK is sent even when [`LockGuard::lease_expires_at`] has passed: the client's
    /// count starts when the LOCK was sent, so the server may still hold the grant a little
    /// longer, and the token makes the UNLOCK harmless if it does not.
    pub async fn release(mut self) -> Result<UnlockOutcome, Error> {
        let Some(token) = self.fencing_token() else {
            return Ok(UnlockOutcome::NotHeld {
                last_fencing_token: None,
            });
        };
        let outcome = self
            .client
            .unlock_token(self.key.clone(), self.owner.clone(), Some(token))
            .await?;
        self.unlock_on_drop = false;
        Ok(outcome)
    }

    /// Leaves the lock held until its lease runs out or someone unlocks it by key and
    /// owner (what `kahu-cli --lock` does; with a default owner, that is
    /// [`LockGuard::owner`]). Nothing is sent.
    pub fn detach(mut self) {
        self.unlock_on_drop = false;
    }
}

impl Drop for LockGuard {
    /// Sends UNLOCK for this guard's grant (with its token), whether or not its lease has
    /// ended by the client's count, as [`LockGuard::release`] does: in a task on the
    /// client's runtime, routed like every request (to the leader of the key's shard,
    /// following NOT_LEADER hints).
    fn drop(&mut self) {
        if let (Some(grant), true) = (self.grant, self.unlock_on_drop) {
            self.client.send_in_background(Request::Unlock(Unlock {
                key: self.key.clone(),
                owner: self.owner.clone(),
                token: Some(grant.fencing_token),
            }));
        }
    }
}
