//! [`Router`]: which node a request goes to, as learned from the cluster.
//!
//! A keyed request (LOCK, UNLOCK, EXTEND, GET) belongs to the key's shard
//! (`kahu_protocol::routing`, with the `shard_count` of the first HELLO), and a MEMBERS to
//! the shard it names (one this cluster has: another is refused before it is sent); only
//! the shard's Raft leader serves it. The router keeps, per shard, the node believed to lead
//! it, and learns it from the cluster:
//! - a NOT_LEADER naming `leader=HOST:PORT` records that node for the shard (adding it to
//!   the known nodes if it is new);
//! - a NOT_LEADER naming no leader forgets the shard's leader, if it was the node asked;
//! - MEMBERSHIP_CHANGE_PENDING, and any other answer that is not an ERROR, from a node
//!   records that node for the shard (only a leader gives them);
//! - a node that cannot be connected to is marked down for [`crate::node::NODE_DOWN_TIME`]
//!   and every shard it was believed to lead is forgotten.
//!
//! A request goes to its shard's leader when one is known and up, else to the **home** node
//! (requests without a key always go there): the seed the client connected to first, until
//! it is found down, then the next node that is up. So a single node is always home, and
//! routing costs it one hash per keyed request.
//!
//! Shared by every clone of a [`crate::Client`] and read on every request without a lock:
//! the leaders are atomics, the node table is append-only (see [`crate::node`]).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kahu_protocol::routing::{key_hash, shard_of};
use kahu_protocol::{ErrorCode, ProtocolError, Request};

use crate::node::Nodes;
use crate::route::{Failure, NodeSet, Route};

/// The leader slot of a shard whose leader is unknown.
const UNKNOWN: usize = 0;

#[derive(Debug)]
pub(crate) struct Router {
    nodes: Nodes,
    shard_count: usize,
    /// Per shard: the index + 1 of the node believed to lead it, or [`UNKNOWN`].
    leaders: Box<[AtomicUsize]>,
    home: AtomicUsize,
}

impl Router {
    /// `shard_count` from the first HELLO (0, which no server sends, is taken as 1);
    /// `home` the node that answered it.
    pub(crate) fn new(nodes: Nodes, shard_count: u16, home: usize) -> Router {
        assert!(home < nodes.len(), "home is a known node");
        let shard_count = usize::from(shard_count).max(1);
        Router {
            nodes,
            shard_count,
            leaders: (0..shard_count)
                .map(|_| AtomicUsize::new(UNKNOWN))
                .collect(),
            home: AtomicUsize::new(home),
        }
    }

    pub(crate) fn nodes(&self) -> &Nodes {
        &self.nodes
    }

    pub(crate) fn home(&self) -> usize {
        self.home.load(Ordering::Relaxed)
    }

    /// The shard of `key`.
    pub(crate) fn shard_of_key(&self, key: &[u8]) -> usize {
        shard_of(key_hash(key), self.shard_count)
    }

    /// How many shards keys are placed on.
    pub(crate) fn shard_count(&self) -> usize {
        self.shard_count
    }

    /// The shard a request belongs to: its key's, or the one it names (MEMBERS); `None` for
    /// requests of no shard (PING, INFO, HELLO). A named shard the cluster does not have is
    /// refused here, so nothing is sent.
    pub(crate) fn shard_of(&self, request: &Request) -> Result<Option<usize>, ProtocolError> {
        if let Some(key) = request.key() {
            return Ok(Some(self.shard_of_key(key)));
        }
        match request.shard().map(usize::from) {
            Some(shard) if shard >= self.shard_count => Err(ProtocolError::new(
                ErrorCode::BadMembership,
                format!(
                    "shard {shard} does not exist: the cluster has {} shard{} (0 to {})",
                    self.shard_count,
                    if self.shard_count == 1 { "" } else { "s" },
                    self.shard_count - 1
                ),
            )),
            shard => Ok(shard),
        }
    }

    /// The node believed to lead `shard`.
    pub(crate) fn leader(&self, shard: usize) -> Option<usize> {
        self.leaders[shard].load(Ordering::Relaxed).checked_sub(1)
    }

    pub(crate) fn learn_leader(&self, shard: usize, node: usize) {
        if self.leader(shard) != Some(node) {
            self.leaders[shard].store(node + 1, Ordering::Relaxed);
        }
    }

    /// Forgets `shard`'s leader if it is still `node` (another caller may have learned a
    /// newer one meanwhile).
    pub(crate) fn forget_leader(&self, shard: usize, node: usize) {
        let _ = self.leaders[shard].compare_exchange(
            node + 1,
            UNKNOWN,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Where the first attempt of a request for `shard` goes.
    pub(crate) fn first_choice(&self, shard: Option<usize>, now: Instant) -> usize {
        if let Some(leader) = shard.and_then(|shard| self.leader(shard)) {
            if !self.nodes.is_down(leader, now) {
                return leader;
            }
        }
        let home = self.home();
        if !self.nodes.is_down(home, now) {
            return home;
        }
        self.next_node(home, NodeSet::default(), now)
            .unwrap_or(home)
    }

    /// The node after `after` in the table's order (wrapping round to `after` itself last),
    /// leaving out `excluded`: the first that is up, else the first that is down. `None`
    /// when every node is excluded.
    pub(crate) fn next_node(&self, after: usize, excluded: NodeSet, now: Instant) -> Option<usize> {
        let count = self.nodes.len();
        let mut down = None;
        for step in 1..=count {
            let node = (after + step) % count;
            if excluded.contains(node) {
                continue;
            }
            if !self.nodes.is_down(node, now) {
                return Some(node);
            }
            down = down.or(Some(node));
        }
        down
    }

    /// `node` could not be connected to: skip it for a while, forget the shards it led,
    /// and move home away from it.
    pub(crate) fn node_down(&self, node: usize, now: Instant) {
        self.nodes.mark_down(node, now);
        for shard in 0..self.shard_count {
            self.forget_leader(shard, node);
        }
        if self.home() == node {
            let mut excluded = NodeSet::default();
            excluded.insert(node);
            if let Some(next) = self.next_node(node, excluded, now) {
                let _ =
                    self.home
                        .compare_exchange(node, next, Ordering::Relaxed, Ordering::Relaxed);
            }
        }
    }

    /// After an attempt of a request for `shard` sent to `node` failed: the node to try
    /// next, and the pause before. `None` when there is nowhere left to go (every known node
    /// was unreachable for this request). The rules are in [`crate::route`].
    pub(crate) fn reroute(
        &self,
        node: usize,
        shard: Option<usize>,
        failure: Failure<'_>,
        route: &mut Route,
        now: Instant,
    ) -> Option<(usize, Duration)> {
        match failure {
            Failure::Unreachable => {
                self.node_down(node, now);
                route.unreachable.insert(node);
                let next = self.next_node(node, route.unreachable, now)?;
                Some((next, Duration::ZERO))
            }
            Failure::Pending => {
                if let Some(shard) = shard {
                    self.learn_leader(shard, node);
                }
                Some((node, route.pause()))
            }
            Failure::NotLeader { hint } => {
                // A hint to a node that is down (a follower that has not noticed yet), or
                // to one this request could not reach, is no better than no hint.
                let hinted = hint
                    .and_then(|address| self.nodes.find_or_add(address))
                    .filter(|&hinted| {
                        !self.nodes.is_down(hinted, now) && !route.unreachable.contains(hinted)
                    });
                if let Some(leader) = hinted {
                    if let Some(shard) = shard {
                        self.learn_leader(shard, leader);
                    }
                    route.redirected_by.insert(node);
                    let pause = if route.redirected_by.contains(leader) {
                        route.pause()
                    } else {
                        Duration::ZERO
                    };
                    return Some((leader, pause));
                }
                if let Some(shard) = shard {
                    self.forget_leader(shard, node);
                }
                let next = self.next_node(node, route.unreachable, now).unwrap_or(node);
                Some((next, route.pause()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    use kahu_protocol::{Get, HelloOk, MemberChange, Members};
    use tokio::sync::watch;

    use super::*;
    use crate::node::DriverContext;
    use crate::options::ClientOptions;

    /// A router over `addresses` with `shard_count` shards, home the first. No driver is
    /// started: these tests never send.
    fn new_router(addresses: &[&str], shard_count: u16) -> Router {
        let hello = HelloOk {
            version: 1,
            server_name: "test".into(),
            shard_count,
            frame_bytes_max: 0,
            key_bytes_max: 0,
            owner_bytes_max: 0,
            ttl_ms_max: 0,
            wait_ms_max: 0,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let nodes = Nodes::new(DriverContext {
            options: ClientOptions::default(),
            runtime: runtime.handle().clone(),
            hello: Arc::new(watch::channel(Arc::new(hello)).0),
            wait_ms_max: Arc::new(AtomicU64::new(0)),
        });
        for address in addresses {
            nodes.find_or_add(address).unwrap();
        }
        Router::new(nodes, shard_count, 0)
    }

    fn new_route() -> Route {
        Route::new(&ClientOptions::default(), Duration::ZERO, Instant::now())
    }

    fn key_on_shard(router: &Router, shard: usize) -> String {
        (0..)
            .map(|index| format!("key-{index}"))
            .find(|key| router.shard_of_key(key.as_bytes()) == shard)
            .unwrap()
    }

    #[test]
    fn requests_go_home_until_a_leader_is_learned() {
        let router = new_router(&["a:1", "b:1", "c:1"], 2);
        let now = Instant::now();
        let get = Request::Get(Get {
            key: key_on_shard(&router, 1).into(),
        });
        let shard = router.shard_of(&get).unwrap();
        assert_eq!(shard, Some(1));
        assert_eq!(router.shard_of(&Request::Ping), Ok(None));
        assert_eq!(router.first_choice(shard, now), 0, "home");

        // A hint names the leader: the next request for the shard goes straight there.
        let mut route = new_route();
        route.attempt(0);
        let hint = Failure::NotLeader { hint: Some("c:1") };
        assert_eq!(
            router.reroute(0, shard, hint, &mut route, now),
            Some((2, Duration::ZERO))
        );
        assert_eq!(router.first_choice(shard, now), 2);
        assert_eq!(
            router.first_choice(Some(0), now),
            0,
            "other shards stay home"
        );
        assert_eq!(router.first_choice(None, now), 0);
    }

    #[test]
    fn a_hint_to_a_new_address_adds_the_node() {
        let router = new_router(&["a:1"], 1);
        let now = Instant::now();
        let mut route = new_route();
        route.attempt(0);
        let hint = Failure::NotLeader { hint: Some("d:1") };
        assert_eq!(
            router.reroute(0, Some(0), hint, &mut route, now),
            Some((1, Duration::ZERO))
        );
        assert_eq!(router.nodes().len(), 2);
        assert_eq!(router.nodes().get(1).address(), "d:1");
    }

    #[test]
    fn no_hint_backs_off_and_tries_the_next_node() {
        let router = new_router(&["a:1", "b:1"], 1);
        let now = Instant::now();
        router.learn_leader(0, 0);
        let mut route = new_route();
        route.attempt(0);
        let none = Failure::NotLeader { hint: None };
        assert_eq!(
            router.reroute(0, Some(0), none, &mut route, now),
            Some((1, Duration::from_millis(10)))
        );
        assert_eq!(router.leader(0), None, "the shard's leader is forgotten");
        route.attempt(1);
        assert_eq!(
            router.reroute(1, Some(0), none, &mut route, now),
            Some((0, Duration::from_millis(20)))
        );
    }

    #[test]
    fn a_hint_back_to_a_node_that_sent_the_request_on_waits_first() {
        let router = new_router(&["a:1", "b:1"], 1);
        let now = Instant::now();
        let mut route = new_route();
        route.attempt(0);
        let to_b = Failure::NotLeader { hint: Some("b:1") };
        let to_a = Failure::NotLeader { hint: Some("a:1") };
        assert_eq!(
            router.reroute(0, Some(0), to_b, &mut route, now),
            Some((1, Duration::ZERO))
        );
        route.attempt(1);
        assert_eq!(
            router.reroute(1, Some(0), to_a, &mut route, now),
            Some((0, Duration::from_millis(10)))
        );

        // A node that answered "no leader" earlier may have been elected since: a hint to
        // it is followed at once.
        let router = new_router(&["a:1", "b:1"], 1);
        let mut route = new_route();
        route.attempt(1);
        let none = Failure::NotLeader { hint: None };
        assert_eq!(
            router.reroute(1, Some(0), none, &mut route, now),
            Some((0, Duration::from_millis(10)))
        );
        route.attempt(0);
        let to_b = Failure::NotLeader { hint: Some("b:1") };
        assert_eq!(
            router.reroute(0, Some(0), to_b, &mut route, now),
            Some((1, Duration::ZERO))
        );
    }

    #[test]
    fn unreachable_nodes_are_skipped_and_forgotten() {
        let router = new_router(&["a:1", "b:1", "c:1"], 2);
        let now = Instant::now();
        router.learn_leader(0, 1);
        router.learn_leader(1, 1);

        // Phase 1: b cannot be reached: its shards are forgotten, and c is next.
        let mut route = new_route();
        route.attempt(1);
        assert_eq!(
            router.reroute(1, Some(0), Failure::Unreachable, &mut route, now),
            Some((2, Duration::ZERO))
        );
        assert_eq!((router.leader(0), router.leader(1)), (None, None));

        // Phase 2: a hint to b while it is down is treated as no hint.
        let mut route = new_route();
        route.attempt(2);
        let to_b = Failure::NotLeader { hint: Some("b:1") };
        assert_eq!(
            router.reroute(2, Some(0), to_b, &mut route, now),
            Some((0, Duration::from_millis(10)))
        );

        // Phase 3: home (a) goes down too: home moves to c, the one node up.
        router.node_down(0, now);
        assert_eq!(router.home(), 2);
        assert_eq!(router.first_choice(Some(0), now), 2);

        // Phase 4: once every node failed for a request, there is nowhere left to go.
        let mut route = new_route();
        for node in [0, 1] {
            route.unreachable.insert(node);
        }
        route.attempt(2);
        assert_eq!(
            router.reroute(2, None, Failure::Unreachable, &mut route, now),
            None
        );

        // Phase 5: down marks end; every node is a candidate again.
        let later = now + crate::node::NODE_DOWN_TIME * 2;
        assert_eq!(router.next_node(2, NodeSet::default(), later), Some(0));
    }

    #[test]
    fn a_members_request_belongs_to_the_shard_it_names() {
        let router = new_router(&["a:1", "b:1"], 4);
        let members = |shard| {
            Request::Members(Members {
                shard,
                change: MemberChange::Remove { node: 3 },
            })
        };

        // Phase 1: shards 0 to 3 exist; the request goes where the shard's leader is.
        assert_eq!(router.shard_of(&members(0)), Ok(Some(0)));
        assert_eq!(router.shard_of(&members(3)), Ok(Some(3)));
        router.learn_leader(3, 1);
        let now = Instant::now();
        assert_eq!(router.first_choice(Some(3), now), 1);

        // Phase 2: shard 4 does not exist; refused with the shards there are.
        let error = router.shard_of(&members(4)).unwrap_err();
        assert_eq!(error.code, ErrorCode::BadMembership);
        assert_eq!(
            error.message,
            "shard 4 does not exist: the cluster has 4 shards (0 to 3)"
        );
        let single = new_router(&["a:1"], 1);
        let error = single.shard_of(&members(u16::MAX)).unwrap_err();
        assert!(error.message.ends_with("has 1 shard (0 to 0)"), "{error}");

        // Phase 3: a NOT_LEADER hint teaches the named shard's leader, as for a key.
        let mut route = new_route();
        route.attempt(1);
        let hint = Failure::NotLeader { hint: Some("a:1") };
        assert_eq!(
            router.reroute(1, Some(2), hint, &mut route, now),
            Some((0, Duration::ZERO))
        );
        assert_eq!(router.leader(2), Some(0));
    }

    #[test]
    fn a_pending_change_asks_the_same_leader_again_after_a_pause() {
        let router = new_router(&["a:1", "b:1"], 2);
        let now = Instant::now();
        let mut route = new_route();
        let pauses: Vec<(usize, u128)> = (0..3)
            .map(|_| {
                route.attempt(1);
                let (next, pause) = router
                    .reroute(1, Some(1), Failure::Pending, &mut route, now)
                    .unwrap();
                (next, pause.as_millis())
            })
            .collect();
        assert_eq!(pauses, [(1, 10), (1, 20), (1, 40)]);
        assert_eq!(router.leader(1), Some(1), "only a leader answers pending");
    }

    #[test]
    fn a_single_node_is_always_home() {
        let router = new_router(&["a:1"], 4);
        let now = Instant::now();
        router.node_down(0, now);
        assert_eq!(
            router.first_choice(Some(3), now),
            0,
            "down, but the only node"
        );
        let mut route = new_route();
        route.attempt(0);
        assert_eq!(
            router.reroute(0, Some(3), Failure::Unreachable, &mut route, now),
            None,
            "no other node to try"
        );
    }
}
