//! [`Route`]: one request's way through a cluster, and the limits on it.
//!
//! A request is sent, and sent again after a NOT_LEADER or to another node after a failed
//! connection, until it is answered, or until its budget is spent:
//! - at most [`crate::ClientOptions::route_attempts_max`] attempts (default 32), the first
//!   included: every hint followed, every node tried and every retry after a pause counts;
//! - no attempt starts later than [`crate::ClientOptions::route_time_max`] (default 5 s)
//!   after the first, plus the request's own server-side wait (a LOCK's `wait_ms`);
//! - after a NOT_LEADER that names no leader (an election is in progress), or one whose
//!   hint sends the request back to a node that itself sent it on with a hint earlier (the
//!   nodes disagree: their view is stale), the next attempt waits
//!   [`NOT_LEADER_BACKOFF_FIRST`] (10 ms), doubling after each such pause up to
//!   [`NOT_LEADER_BACKOFF_MAX`] (200 ms). Any other hint is followed at once, and so is the
//!   move to another node after a failed connection;
//! - after a MEMBERSHIP_CHANGE_PENDING (the shard's leader has a membership change that is
//!   not committed yet, so a MEMBERS must wait), the same node is asked again after the same
//!   doubling pause.
//!
//! Plain data and a clock passed in, so it is tested without sockets or sleeping.

use std::time::{Duration, Instant};

use kahu_protocol::{ErrorCode, ErrorReply, Response};

use crate::node::NODES_MAX;
use crate::options::ClientOptions;

/// The first pause after a NOT_LEADER that names no leader.
pub(crate) const NOT_LEADER_BACKOFF_FIRST: Duration = Duration::from_millis(10);
/// The longest pause between attempts of one request.
pub(crate) const NOT_LEADER_BACKOFF_MAX: Duration = Duration::from_millis(200);

/// What a deposed leader appends to the NOT_LEADER it answers requests in flight with: they
/// may have been committed after all.
pub(crate) const MAY_HAVE_TAKEN_EFFECT: &str = "may or may not have taken effect";

/// A set of node indexes (each below [`NODES_MAX`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct NodeSet(u64);

const _: () = assert!(NODES_MAX <= u64::BITS as usize, "a NodeSet is a u64");

impl NodeSet {
    pub(crate) fn insert(&mut self, node: usize) {
        self.0 |= 1 << node;
    }

    pub(crate) fn contains(self, node: usize) -> bool {
        self.0 & (1 << node) != 0
    }
}

/// Why an attempt did not answer the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure<'a> {
    /// The node does not lead the key's shard; `hint` is the leader's address when it
    /// knows it.
    NotLeader { hint: Option<&'a str> },
    /// No connection could be made to the node: nothing was sent.
    Unreachable,
    /// The node leads the shard but cannot take the request yet: it has a membership change
    /// that is not committed (MEMBERSHIP_CHANGE_PENDING). Nothing was applied.
    Pending,
}

/// True for an answer that the same node may give differently a moment later, with
/// nothing applied: MEMBERSHIP_CHANGE_PENDING.
pub(crate) fn is_pending(reply: &ErrorReply) -> bool {
    reply.code == Some(ErrorCode::MembershipChangePending)
}

/// True when a NOT_LEADER says the request may have been applied before the node lost its
/// leadership (rather than "not applied, ask elsewhere").
pub(crate) fn may_have_taken_effect(reply: &ErrorReply) -> bool {
    reply.message.contains(MAY_HAVE_TAKEN_EFFECT)
}

/// A request's answer, and whether an earlier attempt of it may have taken effect.
#[derive(Debug)]
pub(crate) struct Routed {
    pub(crate) response: Response,
    /// An earlier attempt was answered NOT_LEADER "may or may not have taken effect".
    pub(crate) uncertain: bool,
}

/// The state of one request's attempts.
#[derive(Debug)]
pub(crate) struct Route {
    started: Instant,
    /// No attempt starts after this.
    deadline: Instant,
    server_wait: Duration,
    attempts: u32,
    attempts_max: u32,
    /// The pause before the next attempt that needs one.
    backoff: Duration,
    /// Nodes this request was sent to.
    pub(crate) tried: NodeSet,
    /// Nodes this request could not connect to.
    pub(crate) unreachable: NodeSet,
    /// Nodes that answered this request NOT_LEADER with a hint.
    pub(crate) redirected_by: NodeSet,
    /// An earlier attempt was answered NOT_LEADER "may or may not have taken effect".
    pub(crate) uncertain: bool,
}

impl Route {
    /// A request whose first attempt starts `now` and may wait `server_wait` on the server
    /// (a LOCK's wait; zero for everything else).
    pub(crate) fn new(options: &ClientOptions, server_wait: Duration, now: Instant) -> Route {
        let budget = options.route_time_max.saturating_add(server_wait);
        Route {
            started: now,
            deadline: now
                .checked_add(budget)
                .unwrap_or(now + Duration::from_secs(86_400)),
            server_wait,
            attempts: 0,
            attempts_max: options.route_attempts_max,
            backoff: NOT_LEADER_BACKOFF_FIRST,
            tried: NodeSet::default(),
            unreachable: NodeSet::default(),
            redirected_by: NodeSet::default(),
            uncertain: false,
        }
    }

    /// Counts an attempt about to go to `node`.
    pub(crate) fn attempt(&mut self, node: usize) {
        self.attempts += 1;
        self.tried.insert(node);
    }

    /// The pause before an attempt that needs one: the current backoff, which then doubles
    /// up to [`NOT_LEADER_BACKOFF_MAX`].
    pub(crate) fn pause(&mut self) -> Duration {
        let pause = self.backoff;
        self.backoff = self.backoff.saturating_mul(2).min(NOT_LEADER_BACKOFF_MAX);
        pause
    }

    /// Whether another attempt may start `pause` after `now`.
    pub(crate) fn may_retry(&self, pause: Duration, now: Instant) -> bool {
        self.attempts < self.attempts_max && now + pause <= self.deadline
    }

    /// What is left of the request's server-side wait at `now`.
    pub(crate) fn server_wait_left(&self, now: Instant) -> Duration {
        self.server_wait
            .saturating_sub(now.saturating_duration_since(self.started))
    }

    /// The request's final answer.
    pub(crate) fn answer(&self, response: Response) -> Routed {
        Routed {
            response,
            uncertain: self.uncertain,
        }
    }

    /// Why the request stopped, for the caller's error message.
    pub(crate) fn gave_up(&self, now: Instant) -> String {
        format!(
            "kahu-client gave up after {} attempt{} in {} ms (route_attempts_max {}, \
             route_time_max and the request's wait end {} ms after the first)",
            self.attempts,
            if self.attempts == 1 { "" } else { "s" },
            now.saturating_duration_since(self.started).as_millis(),
            self.attempts_max,
            self.deadline
                .saturating_duration_since(self.started)
                .as_millis(),
        )
    }
}

#[cfg(test)]
mod tests {
    use kahu_protocol::ProtocolError;

    use super::*;

    fn options() -> ClientOptions {
        ClientOptions::default()
            .route_attempts_max(5)
            .route_time_max(Duration::from_millis(300))
    }

    #[test]
    fn pauses_double_from_10_ms_up_to_200_ms() {
        let mut route = Route::new(&options(), Duration::ZERO, Instant::now());
        let pauses: Vec<u128> = (0..7).map(|_| route.pause().as_millis()).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 200, 200]);
    }

    #[test]
    fn the_budget_ends_at_the_attempt_limit_or_the_time_limit() {
        let start = Instant::now();

        // Phase 1: attempts. The fifth attempt is the last.
        let mut route = Route::new(&options(), Duration::ZERO, start);
        for node in 0..4 {
            route.attempt(node);
            assert!(route.may_retry(Duration::ZERO, start));
        }
        route.attempt(4);
        assert!(!route.may_retry(Duration::ZERO, start));
        assert!(route.gave_up(start).contains("5 attempts"));

        // Phase 2: time. No attempt starts past route_time_max, pause included.
        let mut route = Route::new(&options(), Duration::ZERO, start);
        route.attempt(0);
        let late = start + Duration::from_millis(250);
        assert!(route.may_retry(Duration::from_millis(50), late));
        assert!(!route.may_retry(Duration::from_millis(51), late));

        // Phase 3: a LOCK that may wait on the server gets its wait on top, and its wait
        // shrinks as attempts go by.
        let wait = Duration::from_secs(2);
        let route = Route::new(&options(), wait, start);
        assert!(route.may_retry(Duration::ZERO, start + Duration::from_millis(2300)));
        assert_eq!(
            route.server_wait_left(start + Duration::from_millis(500)),
            Duration::from_millis(1500)
        );
        assert_eq!(route.server_wait_left(start + wait * 2), Duration::ZERO);
    }

    #[test]
    fn node_sets_hold_every_index_below_nodes_max() {
        let mut set = NodeSet::default();
        set.insert(0);
        set.insert(NODES_MAX - 1);
        assert!(set.contains(0) && set.contains(NODES_MAX - 1));
        assert!(!set.contains(1));
    }

    #[test]
    fn a_deposed_leaders_reply_is_told_apart() {
        let plain = ProtocolError::new(
            ErrorCode::NotLeader,
            "shard 1 is led by node 2; ask leader=127.0.0.1:8003",
        );
        let deposed = ProtocolError::new(
            ErrorCode::NotLeader,
            "shard 1 is led by node 2; ask leader=127.0.0.1:8003; the request may or may not \
             have taken effect",
        );
        assert!(!may_have_taken_effect(&plain.into()));
        assert!(may_have_taken_effect(&deposed.into()));
    }

    #[test]
    fn only_membership_change_pending_asks_the_same_node_again() {
        let pending = ProtocolError::new(ErrorCode::MembershipChangePending, "retry shortly");
        assert!(is_pending(&pending.into()));
        for code in [
            ErrorCode::NotLeader,
            ErrorCode::ShuttingDown,
            ErrorCode::BadMembership,
        ] {
            assert!(
                !is_pending(&ProtocolError::new(code, "no").into()),
                "{code}"
            );
        }
    }
}
