//! What the clients did and learned: every attempt of every request (one request may be
//! sent to several nodes while it follows NOT_LEADER hints) with its simulated send and
//! receive times and its answer, and every holding window a client believed in.
//!
//! A window is what a careful client may act on: from when it received the answer that
//! granted or extended the lock, to the send time of that request plus the lease (a client
//! counts its lease from when it sent the request). When the client sends anything that
//! may shorten or end the lease (an UNLOCK, an EXTEND or a re-acquiring LOCK for the same
//! grant), the window ends at the earliest moment that request could end it.

use std::fmt::Write;

use bytes::Bytes;
use kahu_protocol::{Durability, Request, Response};

use crate::raft::NodeId;
use crate::shard::tokens::COUNTER_BITS;

/// How an attempt ended, as its client saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum End {
    /// Not yet.
    Pending,
    /// An answer came back.
    Answered,
    /// The node was down: the connection was refused, nothing was sent.
    Refused,
    /// The connection broke with the request sent: it may or may not have taken effect.
    Lost,
    /// No answer in time: it may or may not have taken effect.
    TimedOut,
}

#[derive(Clone, Debug)]
pub(super) struct Attempt {
    pub client: usize,
    pub key: usize,
    pub node: NodeId,
    pub connection: u64,
    pub request: Request,
    pub sent: u64,
    pub end: End,
    /// When the answer (or the client's verdict) arrived.
    pub received: u64,
    /// The answer, also when it came after the client stopped waiting.
    pub answer: Option<Response>,
    /// The Raft term of the answering replica when it answered.
    pub answer_term: u64,
    /// The answer's reply left the node (it is on its way to the client).
    pub answer_sent: bool,
    /// Part of the final audit.
    pub audit: bool,
}

/// A stretch of time in which a client may act as the holder of a lock.
#[derive(Clone, Debug)]
pub(super) struct Window {
    pub client: usize,
    pub key: usize,
    pub owner: Bytes,
    pub token: u64,
    pub durability: Durability,
    pub start: u64,
    pub end: u64,
    /// The attempt whose answer opened the window.
    pub attempt: u32,
}

impl Window {
    /// The Raft term of the leader that granted the lock.
    pub fn term(&self) -> u64 {
        self.token >> COUNTER_BITS
    }
}

#[derive(Debug, Default)]
pub(super) struct History {
    pub attempts: Vec<Attempt>,
    pub windows: Vec<Window>,
}

/// Simulated microseconds as milliseconds, for people.
pub(super) fn ms(time: u64) -> String {
    format!("{}.{:03}ms", time / 1000, time % 1000)
}

pub(super) fn describe_request(request: &Request) -> String {
    let text = |bytes: &Bytes| String::from_utf8_lossy(bytes).into_owned();
    match request {
        Request::Lock(lock) => format!(
            "LOCK {} {} ttl={} wait={} {:?}{}",
            text(&lock.key),
            text(&lock.owner),
            lock.ttl_ms,
            lock.wait_ms,
            lock.durability,
            if lock.if_not_held { " if_not_held" } else { "" }
        ),
        Request::Unlock(unlock) => format!(
            "UNLOCK {} {} token={}",
            text(&unlock.key),
            text(&unlock.owner),
            describe_token(unlock.token)
        ),
        Request::Extend(extend) => format!(
            "EXTEND {} {} ttl={} token={}",
            text(&extend.key),
            text(&extend.owner),
            extend.ttl_ms,
            describe_token(extend.token)
        ),
        Request::Get(get) => format!("GET {}", text(&get.key)),
        other => format!("{other:?}"),
    }
}

fn describe_token(token: Option<u64>) -> String {
    token.map_or("any".into(), token_name)
}

/// A token as term.counter.
pub(super) fn token_name(token: u64) -> String {
    format!(
        "{}.{}",
        token >> COUNTER_BITS,
        token & ((1 << COUNTER_BITS) - 1)
    )
}

pub(super) fn describe_response(response: &Response) -> String {
    let text = |bytes: &Bytes| String::from_utf8_lossy(bytes).into_owned();
    match response {
        Response::Acquired(acquired) => format!(
            "ACQUIRED token={} ttl={}{}",
            token_name(acquired.token),
            acquired.ttl_ms,
            if acquired.reentered { " reentered" } else { "" }
        ),
        Response::Busy(busy) => format!(
            "BUSY owner={} token={} remaining={}",
            text(&busy.owner),
            token_name(busy.token),
            busy.remaining_ms
        ),
        Response::NotOwner(busy) => format!(
            "NOT_OWNER owner={} token={} remaining={}",
            text(&busy.owner),
            token_name(busy.token),
            busy.remaining_ms
        ),
        Response::Released(released) => format!("RELEASED token={}", token_name(released.token)),
        Response::Extended(extended) => format!(
            "EXTENDED token={} ttl={}",
            token_name(extended.token),
            extended.ttl_ms
        ),
        Response::LockInfo(info) => format!(
            "HELD owner={} token={} remaining={} waiters={} {:?}",
            text(&info.owner),
            token_name(info.token),
            info.remaining_ms,
            info.waiters,
            info.durability
        ),
        Response::NotHeld(not_held) => {
            format!("NOT_HELD last_token={}", token_name(not_held.last_token))
        }
        Response::Error(error) => format!("ERROR {:?}: {}", error.code, error.message),
        other => format!("{other:?}"),
    }
}

impl History {
    /// A digest of every attempt and window (FNV-1a over their debug text): equal for two
    /// runs of one seed.
    pub fn fingerprint(&self) -> u64 {
        let text = format!("{:?}{:?}", self.attempts, self.windows);
        text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    pub fn describe_attempt(&self, id: u32) -> String {
        let attempt = &self.attempts[id as usize];
        let mut text = format!(
            "{} #{id} by client {} to node {}: {} sent {}",
            if attempt.audit { "audit" } else { "attempt" },
            attempt.client,
            attempt.node,
            describe_request(&attempt.request),
            ms(attempt.sent)
        );
        match (&attempt.answer, attempt.end) {
            (Some(answer), End::Answered) => {
                let _ = write!(
                    text,
                    ", answered {} in term {}: {}",
                    ms(attempt.received),
                    attempt.answer_term,
                    describe_response(answer)
                );
            }
            (Some(answer), end) => {
                let _ = write!(
                    text,
                    ", {end:?} at {}, answered late in term {}: {}",
                    ms(attempt.received),
                    attempt.answer_term,
                    describe_response(answer)
                );
            }
            (None, end) => {
                let _ = write!(text, ", {end:?} at {}", ms(attempt.received));
            }
        }
        text
    }

    pub fn describe_window(&self, window: &Window) -> String {
        format!(
            "window of client {} on key {}: token {} {:?} from {} to {} (opened by {})",
            window.client,
            window.key,
            token_name(window.token),
            window.durability,
            ms(window.start),
            ms(window.end),
            self.describe_attempt(window.attempt)
        )
    }
}
