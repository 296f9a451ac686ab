//! The kahu client: named locks with leases and fencing tokens, over one multiplexed
//! connection per kahu node, routed to the leader of each key's shard in a cluster.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! # async fn fetch_from_queue_and_process(token: Option<u64>) -> Result<(), kahu_client::Error> { Ok(()) }
//! # async fn worker() -> Result<(), kahu_client::Error> {
//! // a job scheduler worker
//! let client = kahu_client::Client::connect("localhost:8002").await?;
//! let lock = client.lock("job-queue-lock")
//!     .ttl(Duration::from_secs(10))      // lease: freed automatically if we die
//!     .wait(Duration::from_secs(8))      // queue on the server for up to 8 s
//!     .acquire().await?;
//! if lock.is_acquired() {
//!     fetch_from_queue_and_process(lock.fencing_token()).await?;
//! }   // dropping the guard releases the lock
//! # Ok(())
//! # }
//! ```
//!
//! # How it works
//!
//! - [`Client::connect`] opens one TCP connection (TCP_NODELAY) and says HELLO; the
//!   server's answer (name, shard count, limits) stays available as
//!   [`Client::server_hello`]. A `Client` is cheap to clone; every clone shares the
//!   connection, and requests from all of them are pipelined on it with request ids, so a
//!   LOCK waiting on the server never holds up a GET sent after it.
//! - [`Client::connect_cluster`] takes several seed addresses. Every keyed request goes to
//!   the node believed to lead its key's shard (one connection per node, opened on first
//!   use), learned from the NOT_LEADER hints the cluster answers with; a request is resent
//!   to the leader, after a backoff during an election, or to the next node when one is
//!   down, within a bounded budget, and never in a way that could take effect twice. The
//!   exact rules are on [`Client::connect_cluster`]. [`Client::connect`] to one node of a
//!   cluster works too: the other nodes are learned from the hints.
//! - When the connection breaks, every request in flight fails with a retryable
//!   [`Error::ConnectionLost`] (it may or may not have been applied) and the next request
//!   reconnects, with bounded attempts and backoff.
//! - Every request has a timeout ([`ClientOptions::request_timeout`], default 5 s); a LOCK
//!   that queues on the server gets its wait on top.
//! - Requests are checked against the protocol's limits before they are sent, so an empty
//!   key or an out-of-range ttl is an [`Error::InvalidRequest`] that never reaches the
//!   server.
//!
//! # Locks
//!
//! [`Client::lock`] returns a [`LockBuilder`]; its `acquire` returns a [`LockGuard`].
//! Not getting the lock within the wait is not an error: check
//! [`LockGuard::is_acquired`]. A guard holds a lease: if the process dies or stalls, the
//! server frees the lock when the lease ends, and the next holder gets a larger
//! [`LockGuard::fencing_token`]. Pass the token to the storage the lock protects, so it can
//! reject a holder whose lease ran out while it was paused.
//!
//! # Owners
//!
//! The server grants a lock to an *owner*, and a LOCK by the owner that already holds the
//! lock is an idempotent re-acquire (same token, lease reset): that is what makes resending
//! a LOCK after a lost reply safe. So by default every [`LockBuilder::acquire`] has its own
//! unique owner: the client's base owner ([`Client::owner`], unique per `Client`) and a
//! number counting that client's acquires, kept for all of that acquire's own retries. Two
//! acquires never share a lock by accident, even two tasks using clones of one `Client`:
//! exactly one gets it.
//!
//! Name an owner ([`ClientOptions::owner`] for the client, [`LockBuilder::owner`] for one
//! lock) when acquires should share a lock: all of them then re-enter each other's locks,
//! a restarted process can take back its lock, and [`Client::unlock`] by key and owner
//! works from anywhere. [`LockBuilder::if_not_held`] refuses even the current owner;
//! `kahu-cli` uses it because every run by one user on one host shares an owner.
//!
//! A [`LockGuard`] sends its fencing token with its UNLOCK and EXTEND (and with the UNLOCK
//! its drop sends), so a guard whose lease ended never releases or extends a later grant,
//! even one to the same owner.
//!
//! Lock operations by key and owner, without a guard: [`Client::unlock`],
//! [`Client::extend`] (any grant of the owner), [`Client::unlock_token`],
//! [`Client::extend_token`] (one grant, by fencing token), [`Client::get`]; and
//! [`Client::ping`], [`Client::info`].
//!
//! # Cluster membership
//!
//! [`Client::add_node`] and [`Client::remove_node`] change which nodes vote in every shard's
//! Raft group, shard by shard on each shard's leader; [`Client::change_members`] changes one
//! shard. `kahu-cli --add-node` / `--remove-node` use them.

mod client;
mod driver;
mod error;
mod identity;
mod lock;
mod members;
mod node;
mod options;
mod outcome;
mod pending;
mod route;
mod router;

pub use client::Client;
pub use error::Error;
pub use identity::{host_name, user_name};
pub use lock::{LockBuilder, LockGuard};
pub use options::ClientOptions;
pub use outcome::{ExtendOutcome, HeldLock, Holder, LockState, UnlockOutcome};

pub use kahu_protocol::{
    Durability, ErrorClass, ErrorCode, ErrorReply, HelloOk, InfoReply, MemberChange,
};
