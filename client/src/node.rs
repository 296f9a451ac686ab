//! [`Nodes`]: the kahu nodes a client knows, each with its own multiplexed connection.
//!
//! A node is known by the address it was given as (a seed passed to
//! [`crate::Client::connect_cluster`]) or named by (a `leader=HOST:PORT` hint in a
//! NOT_LEADER reply). Its connection is a [`Driver`] task, spawned when the first request
//! goes to the node, so a client of a five-node cluster that only ever talks to two of them
//! opens two connections.
//!
//! The table is append-only and bounded by [`NODES_MAX`]: nodes are never removed (a node
//! that is down is skipped for [`NODE_DOWN_TIME`], then tried again), so an index names the
//! same node for the life of the client. Readers take no lock: slots are `OnceLock`s filled
//! in order, and the count is published after the slot. Only adding a node, which happens
//! when a hint names an address not seen before, takes the insertion mutex, so that two
//! callers learning one address add it once.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kahu_protocol::HelloOk;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};

use crate::driver::{Command, Connection, Driver};
use crate::options::ClientOptions;

/// The most nodes one client keeps. A cluster has 3 or 5; the rest is room for one node
/// known under several addresses (a seed name and the address in a hint). Also what lets a
/// request's tried nodes be a `u64` bit set.
pub(crate) const NODES_MAX: usize = 64;

/// How long a node that could not be connected to is skipped when choosing where to send
/// a request. It is still used when every node is down.
pub(crate) const NODE_DOWN_TIME: Duration = Duration::from_secs(1);

/// What every node's driver shares: the options, the runtime to spawn on, and where the
/// latest HELLO is published.
#[derive(Debug)]
pub(crate) struct DriverContext {
    pub(crate) options: ClientOptions,
    pub(crate) runtime: Handle,
    pub(crate) hello: Arc<watch::Sender<Arc<HelloOk>>>,
    pub(crate) wait_ms_max: Arc<AtomicU64>,
}

#[derive(Debug)]
pub(crate) struct Node {
    address: String,
    /// The driver's command channel, made with the driver.
    commands: OnceLock<mpsc::UnboundedSender<Command>>,
    /// Skipped until this moment, in milliseconds since [`Nodes::started`]; 0: up.
    down_until_ms: AtomicU64,
}

impl Node {
    pub(crate) fn address(&self) -> &str {
        &self.address
    }
}

#[derive(Debug)]
pub(crate) struct Nodes {
    slots: Box<[OnceLock<Node>]>,
    /// Slots filled, published after the slot is.
    count: AtomicUsize,
    insertion: Mutex<()>,
    context: DriverContext,
    /// The base of the down marks' clock.
    started: Instant,
}

impl Nodes {
    pub(crate) fn new(context: DriverContext) -> Nodes {
        Nodes {
            slots: (0..NODES_MAX).map(|_| OnceLock::new()).collect(),
            count: AtomicUsize::new(0),
            insertion: Mutex::new(()),
            context,
            started: Instant::now(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// The node at `index`, which must be below [`Nodes::len`].
    pub(crate) fn get(&self, index: usize) -> &Node {
        self.slots[index]
            .get()
            .expect("indexes below the count name filled slots")
    }

    /// The index of the node known as `address`, added if it is new. `None` when the table
    /// already holds [`NODES_MAX`] nodes.
    pub(crate) fn find_or_add(&self, address: &str) -> Option<usize> {
        if let Some(index) = self.find(address) {
            return Some(index);
        }
        // Poisoning cannot leave the table inconsistent: the slot is set before the count.
        let _insertion = self
            .insertion
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(index) = self.find(address) {
            return Some(index);
        }
        let index = self.len();
        if index == NODES_MAX {
            return None;
        }
        let node = Node {
            address: address.to_string(),
            commands: OnceLock::new(),
            down_until_ms: AtomicU64::new(0),
        };
        assert!(
            self.slots[index].set(node).is_ok(),
            "slots are filled in order, under the insertion mutex"
        );
        self.count.store(index + 1, Ordering::Release);
        Some(index)
    }

    fn find(&self, address: &str) -> Option<usize> {
        (0..self.len()).find(|&index| self.get(index).address == address)
    }

    /// Gives node `index` the connection [`crate::Client::connect_cluster`] opened to it,
    /// and starts its driver. Only before any request has gone to the node.
    pub(crate) fn start_connected(&self, index: usize, connection: Connection) {
        let started = self.start_driver(index, Some(connection));
        assert!(started, "a connected node is started before it is used");
    }

    /// The command channel of node `index`, starting its driver (which connects when the
    /// first command arrives) if this is the node's first request.
    pub(crate) fn commands(&self, index: usize) -> &mpsc::UnboundedSender<Command> {
        self.start_driver(index, None);
        self.get(index)
            .commands
            .get()
            .expect("the driver was just started")
    }

    /// Starts node `index`'s driver unless it runs already. Returns whether it started it.
    fn start_driver(&self, index: usize, connection: Option<Connection>) -> bool {
        let node = self.get(index);
        let mut started = false;
        node.commands.get_or_init(|| {
            let (commands, receiver) = mpsc::unbounded_channel();
            let context = &self.context;
            let driver = Driver::new(
                node.address.clone(),
                context.options.clone(),
                receiver,
                Arc::clone(&context.hello),
                Arc::clone(&context.wait_ms_max),
            );
            context.runtime.spawn(driver.run(connection));
            started = true;
            commands
        });
        started
    }

    /// Skips node `index` for [`NODE_DOWN_TIME`] from `now`.
    pub(crate) fn mark_down(&self, index: usize, now: Instant) {
        let until = self.clock_ms(now + NODE_DOWN_TIME);
        self.get(index)
            .down_until_ms
            .store(until, Ordering::Relaxed);
    }

    pub(crate) fn is_down(&self, index: usize, now: Instant) -> bool {
        self.clock_ms(now) < self.get(index).down_until_ms.load(Ordering::Relaxed)
    }

    /// Milliseconds from the table's start to `moment`, at least 1 (0 means "up").
    fn clock_ms(&self, moment: Instant) -> u64 {
        let elapsed = moment.saturating_duration_since(self.started).as_millis();
        u64::try_from(elapsed).unwrap_or(u64::MAX).max(1)
    }
}
