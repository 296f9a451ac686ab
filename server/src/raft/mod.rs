//! Raft consensus for one shard, as a pure state machine.
//!
//! What: the algorithm of Ongaro and Ousterhout's paper and Ongaro's dissertation, shaped
//! like etcd's raft and raft-rs: leader election with randomized timeouts, pre-vote and
//! check-quorum; log replication with the log-matching check on every append, conflict
//! back-off by term hints, batched and pipelined appends with a bound per follower;
//! commitment of current-term entries by counting; snapshots sent to followers behind the
//! compacted log; leadership transfer; linearizable reads (ReadIndex); membership change
//! one voter at a time.
//!
//! Why pure: [`Raft`] does no I/O and reads no clock. Time is [`Raft::tick`]; messages come
//! in through [`Raft::step`]; everything it needs done (entries and hard state to persist,
//! messages to send before or after the flush, entries to apply) comes out of
//! [`Raft::ready`], and the caller reports completion with [`Raft::advance`]. The shard
//! worker runs it over the write-ahead log and peer connections; the tests and the
//! deterministic simulator run it over a scripted network and disk, replayable from a seed.
//! `tests/purity.rs` fails the build if this module names an I/O, thread or clock API.
//!
//! Safety properties kept here (each tested, named after the paper's sections):
//! - Election Safety: at most one leader per term (§5.2);
//! - Leader Append-Only: a leader never overwrites or deletes its log (§5.3);
//! - Log Matching: same index and term means same entry and same history (§5.3);
//! - Leader Completeness: a committed entry is in every later leader's log (§5.4);
//! - State Machine Safety: no two nodes apply different entries at one index (§5.4.3).

mod config;
mod election;
mod log;
mod message;
mod node;
mod progress;
mod ready;
mod replication;

#[cfg(test)]
mod tests;

pub use config::{Config, ConfigError};
pub use message::{
    Entry, EntryKind, HardState, Membership, MembershipChange, Message, MessageBody, NodeId,
    Payload, Snapshot, SnapshotMeta,
};
pub use node::{InitialState, ProposeError, Raft, Status};
pub use ready::{ReadState, Ready, Role, RoleChange};
