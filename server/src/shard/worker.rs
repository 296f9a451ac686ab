//! The shard worker: one thread that owns one lock table, its Raft group member and its
//! write-ahead log.
//!
//! Each turn of its loop: wait for a message, the next lease timer or the next Raft tick,
//! drain everything queued (up to [`BATCH_MAX`]), then:
//! 1. step the Raft core with the peer messages and ticks;
//! 2. as a serving leader, fire due lease timers and apply the batch's requests to the
//!    table, which decides at once (grants, waits, refusals) and lists its decisions about
//!    persistent locks; those are proposed to Raft as one batch (one entry each);
//! 3. send the replies that depend on nothing unflushed (ephemeral locks never wait for
//!    the disk or the peers);
//! 4. drive the Raft core ([`super::replica`]): write the new entries with one write and
//!    one `fdatasync` (group commit), send the appends to the peers, apply what is
//!    committed; then send the replies whose decisions are committed.
//!
//! A single node is a one-voter Raft group: its entries commit as soon as they are on its
//! disk, so a turn costs one write and one sync, as without Raft.
//!
//! Only a leader that has applied every entry before its term (its first entry is
//! committed and applied) serves requests: before that its table could miss a decision an
//! earlier leader made. Requests that arrive in between wait for it. Followers answer
//! NOT_LEADER with the leader's id. On every change of leader the table becomes the
//! committed state (see `replica.rs`): leases counted in full from the change, ephemeral
//! locks and waiters gone (their clients are told NOT_LEADER).
//!
//! Each turn's decisions form one commit with a sequence number; the table holds back every
//! reply about a lock whose last decision is in a commit not yet committed by Raft (reads
//! included), and keeps a lock it freed until then, so nothing uncommitted is seen.
//!
//! If the log cannot be written (disk full, I/O error), the replies that waited for it get
//! STORAGE_FAILED (the request may or may not take effect: its entries are kept and
//! written again), and until a retry succeeds every request to this shard gets
//! STORAGE_UNAVAILABLE, so nobody can observe a decision that is not durable.

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use kahu_protocol::{ErrorCode, ProtocolError, Request, Response};

use super::replica::Replica;
use super::table::{LockTable, Output};
use super::{ReplyTo, ShardMessage};

/// Messages taken from the queue in one turn at most.
pub const BATCH_MAX: usize = 1024;
/// Timers fired in one turn at most, so a burst of expiries cannot starve requests.
pub const TIMERS_PER_TURN_MAX: usize = 4096;
/// Requests held while a new leader catches up, at most; later ones are told to retry.
pub const HELD_REQUESTS_MAX: usize = 64 * 1024;
/// How long a shard that cannot write its log waits before trying again.
const FAILURE_RETRY_PAUSE: Duration = Duration::from_millis(100);

pub(super) struct ShardWorker {
    receiver: Receiver<ShardMessage>,
    turns: Turns,
}

impl ShardWorker {
    pub(super) fn new(receiver: Receiver<ShardMessage>, replica: Replica) -> ShardWorker {
        ShardWorker {
            receiver,
            turns: Turns::new(replica),
        }
    }

    /// Runs until every sender is gone (the server dropped its shard set).
    pub(super) fn run(mut self) {
        let mut batch = Vec::with_capacity(BATCH_MAX);
        let mut output: Output<ReplyTo> = Output::default();
        loop {
            let deadline = self.turns.replica.next_deadline();
            match self.receiver.recv_deadline(deadline) {
                Ok(message) => batch.push(message),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while batch.len() < BATCH_MAX {
                match self.receiver.try_recv() {
                    Ok(message) => batch.push(message),
                    Err(_) => break,
                }
            }
            if self
                .turns
                .turn(Instant::now(), &mut batch, &mut output)
                .is_some()
            {
                // The log cannot be written, or no token can be granted (timers stay due):
                // pause instead of spinning.
                std::thread::sleep(FAILURE_RETRY_PAUSE);
            }
        }
        self.turns.stop(&mut output);
    }
}

/// What a worker does with each batch, at a `now` it is given: the server's worker passes
/// the clock, the cluster simulation its simulated time.
pub(super) struct Turns {
    pub replica: Replica,
    /// Requests that arrived while this node leads but does not serve yet.
    held: Vec<ShardMessage>,
    stopping: bool,
}

impl Turns {
    pub(super) fn new(replica: Replica) -> Turns {
        Turns {
            replica,
            held: Vec::new(),
            stopping: false,
        }
    }

    /// One turn on `batch` (drained). Returns why the worker should pause before the next
    /// one, if it should: its log cannot be written, or it cannot grant.
    pub(super) fn turn(
        &mut self,
        now: Instant,
        batch: &mut Vec<ShardMessage>,
        output: &mut Output<ReplyTo>,
    ) -> Option<ProtocolError> {
        if let Err(error) = self.replica.retry_storage(now, output) {
            self.refuse(batch, output, &error, now);
            return Some(error);
        }
        self.replica.tick_if_due(now);
        let was_serving = self.replica.is_serving();
        if was_serving {
            self.replica.fire_timers(now, TIMERS_PER_TURN_MAX, output);
        }
        for message in batch.drain(..) {
            match message {
                ShardMessage::Request { .. } if self.replica.is_serving() => {
                    self.apply(message, now, output)
                }
                ShardMessage::Request { .. }
                    if self.replica.is_catching_up() && self.held.len() < HELD_REQUESTS_MAX =>
                {
                    // Counted when applied.
                    self.held.push(message)
                }
                ShardMessage::Request { reply, .. } => {
                    self.replica.counters().requests_total += 1;
                    output
                        .replies
                        .push((reply, self.replica.not_serving().into()));
                }
                message => self.control(message, now, output),
            }
        }
        if self.stopping {
            // From the stop on, nobody waits: waiters queued this turn are answered too.
            let error = ProtocolError::new(ErrorCode::ShuttingDown, "the server is stopping");
            self.replica.fail_waiters(&error, output);
        }
        self.replica.finish_turn(now, output);
        if !was_serving && self.replica.is_serving() && !self.held.is_empty() {
            // Became a serving leader in this turn: the held requests go next, first.
            let mut held = std::mem::take(&mut self.held);
            return self.turn(now, &mut held, output);
        } else if !self.replica.is_catching_up() && !self.held.is_empty() {
            let error = self.replica.not_serving();
            self.fail_held(&error, output);
            self.replica.finish_turn(now, output);
        }
        self.replica
            .is_stalled()
            .then(|| self.replica.not_serving())
    }

    /// The queue closed: answers everything still waiting.
    fn stop(&mut self, output: &mut Output<ReplyTo>) {
        let error = ProtocolError::new(ErrorCode::ShuttingDown, "the server is stopping");
        self.replica.fail_waiters(&error, output);
        self.fail_held(&error, output);
        self.replica.finish_turn(Instant::now(), output);
        let unknown = ProtocolError::new(
            ErrorCode::ShuttingDown,
            "the server stopped before it could confirm the answer; the request may or may not have taken effect",
        );
        self.replica.fail_unconfirmed(&unknown);
    }

    fn apply(&mut self, message: ShardMessage, now: Instant, output: &mut Output<ReplyTo>) {
        let ShardMessage::Request {
            hash,
            request,
            reply,
        } = message
        else {
            unreachable!("only requests are applied");
        };
        self.replica.counters().requests_total += 1;
        if let Request::Members(members) = &request {
            self.replica
                .change_members(now, &members.change, reply, output);
            return;
        }
        let table: &mut LockTable<ReplyTo> = self.replica.table();
        match &request {
            Request::Lock(lock) => table.lock(now, hash, lock, reply, output),
            Request::Unlock(unlock) => table.unlock(now, hash, unlock, reply, output),
            Request::Extend(extend) => table.extend(now, hash, extend, reply, output),
            Request::Get(get) => table.get(now, hash, &get.key, reply, output),
            Request::Hello(_) | Request::Ping | Request::Info | Request::Members(_) => {
                debug_assert!(false, "unkeyed request routed to a shard");
                let error =
                    ProtocolError::new(ErrorCode::Internal, "request routed to a shard by mistake");
                output.replies.push((reply, error.into()));
            }
        }
    }

    /// Peer traffic, connection closes and shutdown.
    fn control(&mut self, message: ShardMessage, now: Instant, output: &mut Output<ReplyTo>) {
        match message {
            ShardMessage::ConnectionClosed(connection_id) => {
                self.replica.cancel_connection(connection_id, now, output);
            }
            ShardMessage::Shutdown => {
                self.stopping = true;
                let error = ProtocolError::new(ErrorCode::ShuttingDown, "the server is stopping");
                self.replica.fail_waiters(&error, output);
                self.fail_held(&error, output);
                self.replica.request_hand_over();
            }
            ShardMessage::Peer(message) => self.replica.step(message),
            ShardMessage::PeerUnreachable(node) => self.replica.peer_unreachable(node),
            ShardMessage::Request { .. } => unreachable!("requests are applied, not controlled"),
        }
    }

    fn fail_held(&mut self, error: &ProtocolError, output: &mut Output<ReplyTo>) {
        for message in self.held.drain(..) {
            if let ShardMessage::Request { reply, .. } = message {
                output.replies.push((reply, error.clone().into()));
            }
        }
    }

    /// While the log cannot be written: every request is refused (nothing may observe a
    /// decision that is not durable); closes and shutdown still take effect.
    fn refuse(
        &mut self,
        batch: &mut Vec<ShardMessage>,
        output: &mut Output<ReplyTo>,
        error: &ProtocolError,
        now: Instant,
    ) {
        for message in batch.drain(..) {
            match message {
                ShardMessage::Request { reply, .. } => {
                    self.replica.counters().requests_total += 1;
                    output.replies.push((reply, error.clone().into()));
                }
                // Peers send again what is lost; the core cannot take messages now.
                ShardMessage::Peer(_) | ShardMessage::PeerUnreachable(_) => {}
                message => self.control(message, now, output),
            }
        }
        self.fail_held(error, output);
        self.replica.refuse_pending(error, output);
    }
}

/// Sends replies that depend on nothing unflushed.
pub(super) fn send(replies: &mut Vec<(ReplyTo, Response)>) {
    for (reply, response) in replies.drain(..) {
        reply.send(response);
    }
}

/// Sends the replies waiting for commits up to `committed_seq`, in order; keeps the others.
pub(super) fn send_committed(replies: &mut Vec<(u64, ReplyTo, Response)>, committed_seq: u64) {
    if replies.iter().all(|(seq, _, _)| *seq <= committed_seq) {
        for (_, reply, response) in replies.drain(..) {
            reply.send(response);
        }
        return;
    }
    let pending = std::mem::take(replies);
    for (seq, reply, response) in pending {
        if seq <= committed_seq {
            reply.send(response);
        } else {
            replies.push((seq, reply, response));
        }
    }
}
