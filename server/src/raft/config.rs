//! Settings of one Raft node, validated before the node starts.

use super::message::NodeId;

/// Settings of one Raft group member. Time is counted in ticks: the caller calls
/// [`super::Raft::tick`] at a fixed interval of its choosing.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id; never 0.
    pub id: NodeId,
    /// A follower that hears nothing from a leader for a random number of ticks in
    /// `[election_ticks, 2 * election_ticks)` starts an election. Default 10.
    pub election_ticks: u32,
    /// A leader sends heartbeats every `heartbeat_ticks`. Must be below `election_ticks`.
    /// Default 1.
    pub heartbeat_ticks: u32,
    /// Ask for pre-votes before raising the term (§9.6). Default true.
    pub pre_vote: bool,
    /// A leader that has not heard from a quorum for `election_ticks` steps down, and a
    /// node that heard from a leader within `election_ticks` ignores vote requests. Default
    /// true.
    pub check_quorum: bool,
    /// Bytes of entries in one append message at most (at least one entry is always sent).
    /// Default 1 MiB.
    pub append_bytes_max: usize,
    /// Append messages in flight to one follower at most, before the leader waits for
    /// acknowledgements. Default 64.
    pub appends_in_flight_max: usize,
    /// Seeds the randomized election timeouts, so a run can be replayed.
    pub seed: u64,
}

impl Config {
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            election_ticks: 10,
            heartbeat_ticks: 1,
            pre_vote: true,
            check_quorum: true,
            append_bytes_max: 1 << 20,
            appends_in_flight_max: 64,
            seed: id,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(ConfigError("node id must not be 0"));
        }
        if self.heartbeat_ticks == 0 {
            return Err(ConfigError("heartbeat_ticks must be at least 1"));
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return Err(ConfigError(
                "election_ticks must be greater than heartbeat_ticks",
            ));
        }
        if self.append_bytes_max == 0 {
            return Err(ConfigError("append_bytes_max must be at least 1"));
        }
        if self.appends_in_flight_max == 0 {
            return Err(ConfigError("appends_in_flight_max must be at least 1"));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid raft config: {0}")]
pub struct ConfigError(pub &'static str);
