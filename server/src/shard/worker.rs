//! The shard worker: one thread that owns one lock table and its write-ahead log.
//!
//! Each turn of its loop: wait for a message or the next timer, drain everything queued
//! (up to [`BATCH_MAX`]), fire due timers, apply the batch, send the replies that depend on
//! nothing unflushed (ephemeral locks never wait for the disk), then append the turn's
//! decisions about persistent locks to the log with one write and one `fdatasync` (group
//! commit), and only then send the replies that depend on them.
//!
//! Each turn's decisions form one commit with a sequence number; the table holds back every
//! reply about a lock whose last decision is in a commit not yet durable (reads included),
//! and keeps a lock it freed until that commit is durable, so nothing undurable is seen.
//! (Overlapping the sync of one turn with the next turn on a second thread was measured
//! and is slower on 2 cores: the extra wake-ups cost more than the overlap saves.)
//!
//! If the log cannot be written (disk full, I/O error), the replies that waited for it get
//! STORAGE_FAILED (the request may or may not take effect: its records are kept and
//! retried), and until a retry succeeds every request to this shard gets
//! STORAGE_UNAVAILABLE, so nobody can observe a decision that is not durable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use kahu_protocol::{ErrorCode, ProtocolError, Request, Response};

use super::table::{LockTable, Output};
use super::{ReplyTo, ShardMessage, ShardStats, WorkerCounters};
use crate::data_dir::DataDir;
use crate::wal::snapshot::Snapshot;
use crate::wal::Wal;

/// Messages taken from the queue in one turn at most.
pub const BATCH_MAX: usize = 1024;
/// Timers fired in one turn at most, so a burst of expiries cannot starve requests.
pub const TIMERS_PER_TURN_MAX: usize = 4096;
/// How long a shard that cannot write its log or store a token epoch waits before trying
/// again.
const FAILURE_RETRY_PAUSE: Duration = Duration::from_millis(100);

pub(super) struct ShardWorker {
    receiver: Receiver<ShardMessage>,
    table: LockTable<ReplyTo>,
    wal: Wal,
    stats: Arc<ShardStats>,
    data_dir: Arc<DataDir>,
    counters: WorkerCounters,
    stopping: bool,
}

impl ShardWorker {
    pub(super) fn new(
        receiver: Receiver<ShardMessage>,
        table: LockTable<ReplyTo>,
        wal: Wal,
        stats: Arc<ShardStats>,
        data_dir: Arc<DataDir>,
    ) -> ShardWorker {
        ShardWorker {
            receiver,
            table,
            wal,
            stats,
            data_dir,
            counters: WorkerCounters::default(),
            stopping: false,
        }
    }

    /// Runs until every sender is gone (the server dropped its shard set).
    pub(super) fn run(mut self) {
        let mut batch = Vec::with_capacity(BATCH_MAX);
        let mut output: Output<ReplyTo> = Output::default();
        loop {
            let first = match self.table.next_deadline() {
                Some(deadline) => self.receiver.recv_deadline(deadline),
                None => self
                    .receiver
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected),
            };
            match first {
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
            self.turn(&mut batch, &mut output);
        }
        let error = ProtocolError::new(ErrorCode::ShuttingDown, "the server is stopping");
        self.table.fail_all_waiters(&error, &mut output);
        self.persist_and_reply(&mut output, Instant::now());
    }

    fn turn(&mut self, batch: &mut Vec<ShardMessage>, output: &mut Output<ReplyTo>) {
        let now = Instant::now();
        if let Err(error) = self.retry_log() {
            self.refuse(batch, output, &error);
            return;
        }
        let tokens = self.ensure_tokens();
        if tokens.is_ok() {
            self.table.fire_timers(now, TIMERS_PER_TURN_MAX, output);
        }
        for message in batch.drain(..) {
            match message {
                ShardMessage::Request {
                    hash,
                    request,
                    reply,
                } => {
                    self.counters.requests_total += 1;
                    match &tokens {
                        Ok(()) => self.apply(now, hash, &request, reply, output),
                        Err(error) => output.replies.push((reply, error.clone().into())),
                    }
                }
                message => self.control(message, now, output),
            }
        }
        self.persist_and_reply(output, now);
        if tokens.is_err() {
            // Timers stay due while no token can be granted: pause instead of spinning.
            std::thread::sleep(FAILURE_RETRY_PAUSE);
        }
    }

    /// Connection closes and shutdown, which need no token and no log.
    fn control(&mut self, message: ShardMessage, now: Instant, output: &mut Output<ReplyTo>) {
        match message {
            ShardMessage::ConnectionClosed(connection_id) => {
                self.table.cancel_connection(connection_id, now, output);
            }
            ShardMessage::Shutdown => self.stopping = true,
            ShardMessage::Request { .. } => unreachable!("requests are applied, not controlled"),
        }
    }

    fn apply(
        &mut self,
        now: Instant,
        hash: u64,
        request: &Request,
        reply: ReplyTo,
        output: &mut Output<ReplyTo>,
    ) {
        match request {
            Request::Lock(lock) => self.table.lock(now, hash, lock, reply, output),
            Request::Unlock(unlock) => self.table.unlock(now, hash, unlock, reply, output),
            Request::Extend(extend) => self.table.extend(now, hash, extend, reply, output),
            Request::Get(get) => self.table.get(now, hash, &get.key, reply, output),
            Request::Hello(_) | Request::Ping | Request::Info => {
                debug_assert!(false, "unkeyed request routed to a shard");
                let error =
                    ProtocolError::new(ErrorCode::Internal, "request routed to a shard by mistake");
                output.replies.push((reply, error.into()));
            }
        }
    }

    /// Sends what depends on nothing unflushed, makes the turn's decisions durable with one
    /// commit, then sends what depended on them. Ends the turn.
    fn persist_and_reply(&mut self, output: &mut Output<ReplyTo>, now: Instant) {
        if self.stopping {
            let error = ProtocolError::new(ErrorCode::ShuttingDown, "the server is stopping");
            self.table.fail_all_waiters(&error, output);
        }
        // Publish before replying, so a client that reads a reply and then asks INFO
        // sees counters that include it.
        self.publish();
        send(&mut output.replies);
        if !output.log.is_empty() {
            let term = self.table.tokens().epoch();
            for command in output.log.drain(..) {
                self.wal.append(term, command);
            }
            // This turn's decisions belong to `seq`; the next turn's to the next one.
            let seq = self.table.commit_seq();
            self.table.begin_commit(seq + 1);
            match self.wal.commit() {
                Ok(()) => {
                    self.counters.wal_commits_total += 1;
                    self.table.commit_durable(seq);
                    send_durable(&mut output.durable_replies);
                    self.snapshot_if_due(now);
                }
                Err(error) => {
                    self.counters.wal_errors_total += 1;
                    tracing::error!(%error, "cannot write the write-ahead log; refusing requests until it can");
                    let failed = ProtocolError::new(
                        ErrorCode::StorageFailed,
                        format!(
                            "the write-ahead log could not be written ({error}); the request was not \
                             acknowledged and may or may not take effect"
                        ),
                    );
                    for (_, reply, _) in output.durable_replies.drain(..) {
                        reply.send(failed.clone().into());
                    }
                }
            }
            self.publish();
        }
        // Replies about decisions of an earlier commit that is durable by now.
        send_durable(&mut output.durable_replies);
    }

    /// After a failed commit, writes the kept records again; an error means the log is
    /// still not writable.
    fn retry_log(&mut self) -> Result<(), ProtocolError> {
        if !self.wal.has_pending() {
            return Ok(());
        }
        match self.wal.commit() {
            Ok(()) => {
                self.counters.wal_commits_total += 1;
                // Everything kept belonged to commits before the current one.
                self.table.commit_durable(self.table.commit_seq() - 1);
                tracing::info!("the write-ahead log is writable again");
                Ok(())
            }
            Err(error) => {
                self.counters.wal_errors_total += 1;
                Err(ProtocolError::new(
                    ErrorCode::StorageUnavailable,
                    format!(
                        "this shard cannot write its write-ahead log ({error}); try again later"
                    ),
                ))
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
    ) {
        let now = Instant::now();
        for message in batch.drain(..) {
            match message {
                ShardMessage::Request { reply, .. } => {
                    self.counters.requests_total += 1;
                    output.replies.push((reply, error.clone().into()));
                }
                message => self.control(message, now, output),
            }
        }
        if self.stopping {
            let stopping = ProtocolError::new(ErrorCode::ShuttingDown, "the server is stopping");
            self.table.fail_all_waiters(&stopping, output);
        }
        // Replies about locks whose decisions are not durable cannot be sent as they are.
        for (_, reply, _) in output.durable_replies.drain(..) {
            output.replies.push((reply, error.clone().into()));
        }
        self.publish();
        send(&mut output.replies);
        std::thread::sleep(FAILURE_RETRY_PAUSE);
    }

    /// Writes a snapshot of the persistent locks once enough was logged since the last.
    fn snapshot_if_due(&mut self, now: Instant) {
        if !self.wal.wants_snapshot() {
            return;
        }
        let snapshot = Snapshot {
            last_index: self.wal.durable_index(),
            last_term: self.wal.last_term(),
            locks: self.table.persistent_locks(now),
        };
        match self.wal.compact(&snapshot) {
            Ok(()) => self.counters.snapshots_total += 1,
            Err(error) => {
                tracing::warn!(%error, "cannot write a snapshot; the log keeps growing until one succeeds")
            }
        }
    }

    fn publish(&self) {
        self.stats
            .publish(self.table.len(), &self.table.stats(), &self.counters);
    }

    /// Moves to a fresh epoch before the grant counter can run out.
    fn ensure_tokens(&mut self) -> Result<(), ProtocolError> {
        if !self.table.tokens().needs_new_epoch() {
            return Ok(());
        }
        match self.data_dir.next_epoch() {
            Ok(epoch) => {
                tracing::info!(
                    epoch,
                    "grant counter nearly exhausted; moved to a new epoch"
                );
                self.table.tokens().advance_epoch(epoch);
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "cannot store a new epoch; refusing requests until it can");
                Err(ProtocolError::new(
                    ErrorCode::Internal,
                    format!("cannot store a new token epoch: {error}"),
                ))
            }
        }
    }
}

fn send(replies: &mut Vec<(ReplyTo, Response)>) {
    for (reply, response) in replies.drain(..) {
        reply.send(response);
    }
}

/// Sends replies whose commits are durable (the caller made sure).
fn send_durable(replies: &mut Vec<(u64, ReplyTo, Response)>) {
    for (_, reply, response) in replies.drain(..) {
        reply.send(response);
    }
}
