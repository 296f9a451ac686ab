//! kahu-server: a lock service with leases and fencing tokens.
//!
//! The path of a request, in module order:
//! - [`net`]: accept a connection, tell binary from text by its first byte, decode;
//! - [`command`]: answer what needs no shard, route the rest by key;
//! - [`shard`]: per-core workers, each owning part of the lock table
//!   ([`shard::table`]), with leases, FIFO waiters and fencing tokens ([`shard::tokens`]);
//! - [`data_dir`]: the server's directory, its lock and the token epoch.
//!
//! [`Server::start`] runs a server on the current tokio runtime; the `kahu-server` binary
//! wraps it with flags ([`Config`]) and signal handling.

pub mod command;
pub mod config;
pub mod data_dir;
pub mod net;
pub mod peer;
pub mod raft;
pub mod server;
pub mod shard;
pub mod wal;

pub use config::Config;
pub use server::{RunningServer, Server, ServerError};
