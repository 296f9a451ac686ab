//! The shard worker: one thread that owns one lock table.
//!
//! Each turn of its loop: wait for a message or the next timer, drain everything queued
//! (up to [`BATCH_MAX`]), fire due timers, apply the batch, then send every reply of the
//! turn. Draining first and replying once per turn is what lets the write-ahead log later
//! append and flush once per batch (group commit) before the replies go out.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use kahu_protocol::{ErrorCode, ProtocolError, Request};

use super::table::{LockTable, Output};
use super::{ReplyTo, ShardMessage, ShardStats};
use crate::data_dir::DataDir;

/// Messages taken from the queue in one turn at most.
pub const BATCH_MAX: usize = 1024;
/// Timers fired in one turn at most, so a burst of expiries cannot starve requests.
pub const TIMERS_PER_TURN_MAX: usize = 4096;
/// How long a shard that cannot store a new token epoch waits before trying again.
const EPOCH_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

pub(super) struct ShardWorker {
    receiver: Receiver<ShardMessage>,
    table: LockTable<ReplyTo>,
    stats: Arc<ShardStats>,
    data_dir: Arc<DataDir>,
    requests_total: u64,
    stopping: bool,
}

impl ShardWorker {
    pub(super) fn new(
        receiver: Receiver<ShardMessage>,
        table: LockTable<ReplyTo>,
        stats: Arc<ShardStats>,
        data_dir: Arc<DataDir>,
    ) -> ShardWorker {
        ShardWorker {
            receiver,
            table,
            stats,
            data_dir,
            requests_total: 0,
            stopping: false,
        }
    }

    /// Runs until every sender is gone (the server dropped its shard set).
    pub(super) fn run(mut self) {
        let mut batch = Vec::with_capacity(BATCH_MAX);
        let mut replies: Output<ReplyTo> = Output::default();
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
            self.turn(&mut batch, &mut replies);
        }
        let error = ProtocolError::new(ErrorCode::ShuttingDown, "the server is stopping");
        self.table.fail_all_waiters(&error, &mut replies);
        send_all(&mut replies);
    }

    fn turn(&mut self, batch: &mut Vec<ShardMessage>, replies: &mut Output<ReplyTo>) {
        let now = Instant::now();
        let tokens = self.ensure_tokens();
        if tokens.is_ok() {
            self.table.fire_timers(now, TIMERS_PER_TURN_MAX, replies);
        }
        for message in batch.drain(..) {
            match message {
                ShardMessage::Request {
                    hash,
                    request,
                    reply,
                } => {
                    self.requests_total += 1;
                    match &tokens {
                        Ok(()) => self.apply(now, hash, &request, reply, replies),
                        Err(error) => replies.replies.push((reply, error.clone().into())),
                    }
                }
                ShardMessage::ConnectionClosed(connection_id) => {
                    self.table.cancel_connection(connection_id, now, replies);
                }
                ShardMessage::Shutdown => self.stopping = true,
            }
        }
        if self.stopping {
            let error = ProtocolError::new(ErrorCode::ShuttingDown, "the server is stopping");
            self.table.fail_all_waiters(&error, replies);
        }
        // Publish before replying, so a client that reads a reply and then asks INFO
        // sees counters that include it.
        self.stats
            .publish(self.table.len(), &self.table.stats(), self.requests_total);
        send_all(replies);
        self.table.end_turn();
        if tokens.is_err() {
            // Timers stay due while no token can be granted: pause instead of spinning.
            std::thread::sleep(EPOCH_RETRY_PAUSE);
        }
    }

    fn apply(
        &mut self,
        now: Instant,
        hash: u64,
        request: &Request,
        reply: ReplyTo,
        replies: &mut Output<ReplyTo>,
    ) {
        match request {
            Request::Lock(lock) => self.table.lock(now, hash, lock, reply, replies),
            Request::Unlock(unlock) => self.table.unlock(now, hash, unlock, reply, replies),
            Request::Extend(extend) => self.table.extend(now, hash, extend, reply, replies),
            Request::Get(get) => self.table.get(now, hash, &get.key, reply, replies),
            Request::Hello(_) | Request::Ping | Request::Info => {
                debug_assert!(false, "unkeyed request routed to a shard");
                let error =
                    ProtocolError::new(ErrorCode::Internal, "request routed to a shard by mistake");
                replies.replies.push((reply, error.into()));
            }
        }
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

fn send_all(output: &mut Output<ReplyTo>) {
    debug_assert!(output.log.is_empty(), "persistent decisions without a log");
    output.log.clear();
    for (reply, response) in output
        .replies
        .drain(..)
        .chain(output.durable_replies.drain(..))
    {
        reply.send(response);
    }
}
