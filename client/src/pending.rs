//! [`PendingRequests`]: the requests sent on one connection and not yet answered, by
//! request id. Owned by the driver; plain data, so it is tested without sockets.
//!
//! An entry lives from the moment its request is written until its reply arrives or the
//! connection is reset, and never shorter. A caller that gives up (its timeout passed, or it
//! dropped the future) leaves its entry behind as a **tombstone**: the server may still be
//! working on the request (a LOCK can queue for up to `wait_ms_max`, an hour). If the id
//! were freed and, after the u32 counter wrapped, given to a new request, the late reply
//! (an ACQUIRED, say) would be routed to the new caller: a false grant. So:
//! - an id is never given out while an entry (live or tombstone) holds it;
//! - a reply to a tombstone is dropped, and only then is its id free again;
//! - a reset connection drops every entry: no reply from it can arrive on the next one.
//!
//! An entry whose reply sender is closed (the caller gave up) or absent (fire and forget,
//! the UNLOCK of a dropped guard) is a tombstone; nothing needs converting.
//!
//! Memory: every entry is a request the server has not answered yet, and the server answers
//! each one (a LOCK by the end of its wait). The server reads at most its
//! `requests_in_flight_max` unanswered requests per connection (4096 by default) and the
//! client's writes back up behind them, so the table holds about that many entries plus
//! what the socket buffers hold. [`REQUESTS_IN_FLIGHT_MAX`] bounds it on the client's side
//! too, against a server that does not bound itself: when the table is full the driver takes
//! no new command until a reply frees an entry, and the search for a free id always ends.

use std::collections::HashMap;

use kahu_protocol::Response;

use crate::driver::ReplySender;
use crate::error::Error;

/// The most requests in flight (tombstones included) on one connection. Far above the
/// server's default `requests_in_flight_max` (4096) and far below the 2^32 - 1 request ids.
pub(crate) const REQUESTS_IN_FLIGHT_MAX: usize = 1 << 16;

/// The request id of HELLO, sent before any other request on a connection.
pub(crate) const HELLO_REQUEST_ID: u32 = 1;

#[derive(Debug)]
pub(crate) struct PendingRequests {
    /// `Some(sender)`: a caller waits (or waited, if the sender is closed); `None`: nobody
    /// waits. Either way the id is taken until the reply arrives.
    entries: HashMap<u32, Option<ReplySender>>,
    next_request_id: u32,
}

impl PendingRequests {
    pub(crate) fn new() -> PendingRequests {
        PendingRequests {
            entries: HashMap::new(),
            next_request_id: HELLO_REQUEST_ID + 1,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True when no request may be sent until a reply frees an entry.
    pub(crate) fn is_full(&self) -> bool {
        self.entries.len() >= REQUESTS_IN_FLIGHT_MAX
    }

    /// Takes a free request id for a request about to be written, and keeps `reply` until
    /// the answer arrives. The caller checks [`PendingRequests::is_full`] first.
    pub(crate) fn insert(&mut self, reply: Option<ReplySender>) -> u32 {
        assert!(
            !self.is_full(),
            "requests_in_flight_max is checked before sending"
        );
        let request_id = self.allocate_request_id();
        self.entries.insert(request_id, reply);
        request_id
    }

    /// The next id that is not 0 (the server's id for connection-level errors) and not held
    /// by an entry. Ends: fewer than [`REQUESTS_IN_FLIGHT_MAX`] of the ids are held.
    fn allocate_request_id(&mut self) -> u32 {
        loop {
            let request_id = self.next_request_id;
            self.next_request_id = self.next_request_id.wrapping_add(1);
            if request_id != 0 && !self.entries.contains_key(&request_id) {
                return request_id;
            }
        }
    }

    /// Hands the answer to `request_id` to its caller, if it still waits, and frees the id.
    /// Returns false when nobody received it (a tombstone, or an id never sent).
    pub(crate) fn complete(&mut self, request_id: u32, result: Result<Response, Error>) -> bool {
        match self.entries.remove(&request_id) {
            Some(Some(sender)) => sender.send(result).is_ok(),
            Some(None) | None => false,
        }
    }

    /// The connection is gone: every caller still waiting gets `ConnectionLost`, and every
    /// id is free again (no reply from the old connection can arrive on a new one).
    pub(crate) fn fail_all(&mut self, reason: &str) {
        for (_, sender) in self.entries.drain() {
            if let Some(sender) = sender {
                // The caller may have given up; then nobody wants the answer.
                let _ = sender.send(Err(Error::connection_lost(reason)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use kahu_protocol::{Acquired, Released};
    use tokio::sync::oneshot;

    use super::*;

    fn acquired() -> Response {
        Response::Acquired(Acquired {
            token: 7,
            ttl_ms: 1000,
            reentered: false,
        })
    }

    #[test]
    fn request_ids_wrap_around_skipping_zero_and_ids_in_flight() {
        let mut pending = PendingRequests::new();
        pending.next_request_id = u32::MAX;
        pending.entries.insert(1, None);
        assert_eq!(pending.insert(None), u32::MAX);
        assert_eq!(pending.insert(None), 2, "0 is reserved, 1 is in flight");
    }

    #[test]
    fn an_abandoned_request_keeps_its_id_until_its_reply_arrives() {
        let mut pending = PendingRequests::new();

        // Phase 1: a LOCK is sent, and its caller gives up (timeout) while it still queues
        // on the server; a burst of other requests follows, half of them abandoned too.
        let (sender, receiver) = oneshot::channel();
        let abandoned = pending.insert(Some(sender));
        drop(receiver);
        let mut waiting = Vec::new();
        for index in 0..4096 {
            let (sender, receiver) = oneshot::channel();
            pending.insert(Some(sender));
            if index % 2 == 0 {
                waiting.push(receiver);
            }
        }
        assert_eq!(pending.len(), 4097, "tombstones are kept");

        // Phase 2: the id counter wraps round to the abandoned id: it is skipped.
        pending.next_request_id = abandoned;
        let (sender, mut next_caller) = oneshot::channel();
        let next = pending.insert(Some(sender));
        assert_ne!(next, abandoned);

        // Phase 3: the late ACQUIRED for the abandoned LOCK is dropped, not routed to the
        // next caller; only now is its id free.
        assert!(!pending.complete(abandoned, Ok(acquired())));
        assert!(next_caller.try_recv().is_err(), "no false grant");
        pending.next_request_id = abandoned;
        assert_eq!(pending.insert(None), abandoned);

        // Phase 4: the next caller gets its own answer.
        let released = Response::Released(Released { token: 7 });
        assert!(pending.complete(next, Ok(released.clone())));
        assert_eq!(next_caller.try_recv().unwrap().unwrap(), released);
    }

    #[test]
    fn a_full_table_refuses_more_until_a_reply_frees_an_id() {
        let mut pending = PendingRequests::new();
        for _ in 0..REQUESTS_IN_FLIGHT_MAX {
            pending.insert(None);
        }
        assert!(pending.is_full());
        assert!(!pending.complete(HELLO_REQUEST_ID + 1, Ok(Response::Pong)));
        assert!(!pending.is_full());
        pending.insert(None);
        assert!(pending.is_full());
    }

    #[test]
    fn lost_connections_fail_every_pending_request_once_and_free_every_id() {
        let mut pending = PendingRequests::new();
        let (sender, mut receiver) = oneshot::channel();
        let live = pending.insert(Some(sender));
        let abandoned = pending.insert(None);
        pending.fail_all("reset by peer");
        assert!(pending.is_empty());
        let error = receiver.try_recv().unwrap().unwrap_err();
        assert!(matches!(error, Error::ConnectionLost { ref reason } if reason == "reset by peer"));
        assert!(!pending.complete(live, Ok(Response::Pong)));
        assert!(!pending.complete(abandoned, Ok(Response::Pong)));
    }
}
