//! Membership changes: [`Client::change_members`] changes one voter of one shard;
//! [`Client::add_node`] and [`Client::remove_node`] change it on every shard of the cluster.
//!
//! Each shard is its own Raft group, so a node joins or leaves the cluster shard by shard,
//! on each shard's leader, one voter at a time: a MEMBERS request per shard, routed like a
//! keyed request of that shard (NOT_LEADER hints followed, "no leader" retried after a pause,
//! see [`Client::connect_cluster`]), and MEMBERSHIP_CHANGE_PENDING retried on the same leader
//! after a pause too, all within the request's route budget
//! ([`crate::ClientOptions::route_attempts_max`], [`crate::ClientOptions::route_time_max`]).
//!
//! The server makes a change idempotent: adding a voter that is already one, or removing one
//! that is not, answers the voters as they are. That is what makes every retry safe (even
//! after a NOT_LEADER saying the request "may or may not have taken effect"), and what lets
//! an operator finish a change that stopped part way by running it again.

use std::time::Duration;

use kahu_protocol::{MemberChange, Members, Request, Response};

use crate::client::Client;
use crate::error::Error;
use crate::outcome::unexpected;

impl Client {
    /// Adds or removes one voter of `shard`'s Raft group, on the shard's leader, and returns
    /// the shard's voters (ascending node ids) once the change is committed.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), kahu_client::Error> {
    /// use kahu_protocol::MemberChange;
    /// let client = kahu_client::Client::connect("127.0.0.1:8001").await?;
    /// let voters = client.change_members(0, MemberChange::Remove { node: 3 }).await?;
    /// assert!(!voters.contains(&3));
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// MEMBERSHIP_CHANGE_PENDING (the shard's previous change is not committed yet, or its
    /// leader was just elected) and NOT_LEADER without a hint (an election is in progress)
    /// are retried after a pause of 10 ms, doubling up to 200 ms, within the request's route
    /// budget; NOT_LEADER hints are followed. When the budget is spent the caller gets the
    /// last of those answers as an [`Error::Server`], its message saying how many attempts
    /// were made.
    ///
    /// Fails with [`Error::InvalidRequest`] (code `BAD_MEMBERSHIP`), before anything is
    /// sent, for node 0, an address that is not `PEER_ADDR/CLIENT_ADDR`, or a shard not
    /// below [`Client::shard_count`]; with [`Error::Server`] when the leader refuses the
    /// change (`BAD_MEMBERSHIP`: removing the last voter; `UNSUPPORTED`: a server that
    /// cannot change its membership).
    pub async fn change_members(
        &self,
        shard: u16,
        change: MemberChange,
    ) -> Result<Vec<u64>, Error> {
        let request = Request::Members(Members { shard, change });
        match self.call(request, Duration::ZERO).await? {
            Response::Members(reply) if reply.shard == shard => Ok(reply.voters),
            Response::Members(reply) => Err(Error::Protocol(format!(
                "the server answered MEMBERS for shard {shard} with the voters of shard {}",
                reply.shard
            ))),
            other => Err(unexpected("MEMBERS", other)),
        }
    }

    /// Makes `node` a voter of every shard, reached at `address` (`PEER_ADDR/CLIENT_ADDR`,
    /// e.g. `127.0.0.1:7004/127.0.0.1:8004`). The node must already be running
    /// (`kahu-server --join`), so that each shard's leader can bring it up to date.
    ///
    /// Goes through the shards in order, 0 to [`Client::shard_count`] - 1, each change
    /// committed before the next is asked for (see [`Client::change_members`]), and returns
    /// `(shard, voters)` for each. The change is idempotent on the server: when it stops part
    /// way, [`Error::MembershipIncomplete`] names the shard it stopped at, and calling
    /// `add_node` again with the same values finishes the job.
    pub async fn add_node(&self, node: u64, address: &str) -> Result<Vec<(u16, Vec<u64>)>, Error> {
        let change = MemberChange::Add {
            node,
            address: address.to_string(),
        };
        self.change_every_shard(change).await
    }

    /// Stops counting `node` as a voter of every shard, shard by shard as
    /// [`Client::add_node`] does, and returns `(shard, voters)` for each; likewise
    /// idempotent, so running it again after an [`Error::MembershipIncomplete`] finishes the
    /// job.
    pub async fn remove_node(&self, node: u64) -> Result<Vec<(u16, Vec<u64>)>, Error> {
        self.change_every_shard(MemberChange::Remove { node }).await
    }

    /// `change` on shards 0, 1, ... in order, each committed before the next.
    async fn change_every_shard(
        &self,
        change: MemberChange,
    ) -> Result<Vec<(u16, Vec<u64>)>, Error> {
        // A bad node or address fails here, before any shard is asked, not as "stopped at
        // shard 0".
        Members {
            shard: 0,
            change: change.clone(),
        }
        .validate()?;
        let shard_count = self.shard_count();
        let mut shards = Vec::with_capacity(usize::from(shard_count));
        for shard in 0..shard_count {
            match self.change_members(shard, change.clone()).await {
                Ok(voters) => shards.push((shard, voters)),
                Err(source) => {
                    return Err(Error::MembershipIncomplete {
                        action: change.name(),
                        node: change.node(),
                        shard,
                        shard_count,
                        source: Box::new(source),
                    })
                }
            }
        }
        Ok(shards)
    }
}
