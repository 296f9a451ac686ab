//! The history of a run, and the checkers over it (as in Kahuna's Jepsen suite).
//!
//! Every request a client sends to a node is one [`Event`]: what it asked, which node,
//! when it was sent and when it ended (answer received, or given up), on the test's one
//! monotonic clock, and its [`Outcome`]. A retry is a new event.
//!
//! # Definite holding windows
//! An ACQUIRED or EXTENDED answer to owner `o` for token `t`, to a request sent at `s` with
//! `ttl`, received at `r`, proves `o` held the lock from `r` until `s + ttl` (the server
//! decided between `s` and `r` and its lease runs `ttl` from then or later, never ending
//! early), unless `o` released it sooner: the window ends at the send time of the first
//! UNLOCK by `o` sent after `s`, whatever its answer. A window is left out (tainted) when
//! `o` sent an UNLOCK for the same token earlier whose outcome is unknown: that UNLOCK may
//! still be in a node's socket buffer and release the grant this answer re-confirmed.
//! Errors and unknown outcomes give no window.
//!
//! # Checkers
//! - **Exclusion** ([`check_exclusion`]): the windows of different owners on one lock never
//!   overlap.
//! - **Fencing** ([`check_fencing`]): on one lock, (1) over the acquisitions with a window,
//!   ordered by when ACQUIRED was received, tokens never decrease; (2) a token is only ever
//!   seen with one owner (in ACQUIRED, EXTENDED, RELEASED, BUSY, NOT_OWNER, LOCK_INFO);
//!   (3) a token shown as held is at least every token answered before the request was
//!   sent, and a fresh grant's token is above them; (4) after a RELEASED for token `t`,
//!   no answer to a later request shows `t` held.
//! - **Answers** ([`check_answers`]): every answer is of a kind its request allows, with the
//!   ttl and token asked for.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kahu_protocol::Response;

use super::Timeline;

/// What a request asked. The owner is the event's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Lock { ttl_ms: u64, wait_ms: u64 },
    Unlock { token: u64 },
    Extend { ttl_ms: u64, token: u64 },
    Get,
}

#[derive(Clone, Debug)]
pub enum Outcome {
    /// Any answer that is not an ERROR.
    Answered(Response),
    /// NOT_LEADER (without "may or may not"): the request was not applied.
    Refused(String),
    /// The request may or may not have taken effect: no answer in time, the connection
    /// lost, or an error that does not say.
    Unknown(String),
}

#[derive(Clone, Debug)]
pub struct Event {
    /// The client (owner) that sent it; `None`: the test's final check.
    pub owner: Option<usize>,
    pub lock: usize,
    pub node: u64,
    pub op: Op,
    pub sent: Instant,
    /// When the answer arrived, or when the client gave up.
    pub ended: Instant,
    pub outcome: Outcome,
}

impl Event {
    pub fn answer(&self) -> Option<&Response> {
        match &self.outcome {
            Outcome::Answered(response) => Some(response),
            _ => None,
        }
    }

    fn is_unknown(&self) -> bool {
        matches!(self.outcome, Outcome::Unknown(_))
    }

    /// One line: who asked what of which node, when, and what came back.
    pub fn describe(&self, timeline: &Timeline) -> String {
        let who = match self.owner {
            Some(owner) => owner_text(owner),
            None => "the final check".to_string(),
        };
        let op = match self.op {
            Op::Lock { ttl_ms, wait_ms } => format!("LOCK ttl={ttl_ms} wait={wait_ms}"),
            Op::Unlock { token } => format!("UNLOCK token={token}"),
            Op::Extend { ttl_ms, token } => format!("EXTEND ttl={ttl_ms} token={token}"),
            Op::Get => "GET".to_string(),
        };
        let outcome = match &self.outcome {
            Outcome::Answered(response) => show(response),
            Outcome::Refused(message) => format!("refused: {message}"),
            Outcome::Unknown(why) => format!("unknown outcome: {why}"),
        };
        format!(
            "{who} {op} to node {} sent {} ended {}: {outcome}",
            self.node,
            timeline.at(self.sent),
            timeline.at(self.ended)
        )
    }
}

/// Everything the clients did, and anything the wire itself got wrong.
#[derive(Debug, Default)]
pub struct History {
    pub events: Vec<Event>,
    /// Undecodable frames, replies to requests never sent: failures on their own.
    pub protocol_errors: Vec<String>,
}

pub fn owner_name(owner: usize) -> Bytes {
    Bytes::from(owner_text(owner))
}

fn owner_text(owner: usize) -> String {
    format!("fault-client-{owner}")
}

/// A response in one short line, as the text protocol would say it.
pub fn show(response: &Response) -> String {
    let owner = |owner: &Bytes| String::from_utf8_lossy(owner).into_owned();
    match response {
        Response::Acquired(a) => format!(
            "ACQUIRED token={} ttl_ms={}{}",
            a.token,
            a.ttl_ms,
            if a.reentered { " reentered" } else { "" }
        ),
        Response::Busy(b) => format!(
            "BUSY owner={} token={} remaining_ms={}",
            owner(&b.owner),
            b.token,
            b.remaining_ms
        ),
        Response::NotOwner(b) => format!(
            "NOT_OWNER owner={} token={} remaining_ms={}",
            owner(&b.owner),
            b.token,
            b.remaining_ms
        ),
        Response::Released(r) => format!("RELEASED token={}", r.token),
        Response::Extended(e) => format!("EXTENDED token={} ttl_ms={}", e.token, e.ttl_ms),
        Response::LockInfo(i) => format!(
            "LOCK_INFO owner={} token={} remaining_ms={} waiters={}",
            owner(&i.owner),
            i.token,
            i.remaining_ms,
            i.waiters
        ),
        Response::NotHeld(n) => format!("NOT_HELD last_token={}", n.last_token),
        Response::Error(e) => format!("ERROR {}: {}", e.code_name(), e.message),
        other => format!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Windows
// ---------------------------------------------------------------------------------------

/// A span of time in which `owner` definitely held the lock with `token`.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub owner: usize,
    pub token: u64,
    pub start: Instant,
    pub end: Instant,
    /// The ACQUIRED or EXTENDED event that proves it.
    pub event: usize,
    /// The UNLOCK whose send ended it early, if any.
    pub ended_by: Option<usize>,
}

/// The definite windows of one lock (see the module doc), and how many answers gave none
/// because they were tainted by an UNLOCK of unknown outcome.
pub fn windows(events: &[Event], lock: usize) -> (Vec<Window>, usize) {
    let mut unlocks: HashMap<usize, Vec<usize>> = HashMap::new();
    for (index, event) in events.iter().enumerate() {
        if let (Some(owner), Op::Unlock { .. }, true) = (event.owner, event.op, event.lock == lock)
        {
            unlocks.entry(owner).or_default().push(index);
        }
    }
    let mut windows = Vec::new();
    let mut tainted = 0;
    for (index, event) in events.iter().enumerate() {
        let Some(owner) = event.owner.filter(|_| event.lock == lock) else {
            continue;
        };
        let (token, ttl_ms) = match (event.op, event.answer()) {
            (Op::Lock { ttl_ms, .. }, Some(Response::Acquired(a))) => (a.token, ttl_ms),
            (Op::Extend { ttl_ms, .. }, Some(Response::Extended(e))) => (e.token, ttl_ms),
            _ => continue,
        };
        let owner_unlocks = unlocks.get(&owner).map_or(&[][..], Vec::as_slice);
        let is_tainted = owner_unlocks.iter().any(|&unlock| {
            let unlock_event = &events[unlock];
            unlock_event.sent < event.sent
                && unlock_event.is_unknown()
                && unlock_event.op == Op::Unlock { token }
        });
        if is_tainted {
            tainted += 1;
            continue;
        }
        let ended_by = owner_unlocks
            .iter()
            .copied()
            .filter(|&unlock| events[unlock].sent >= event.sent)
            .min_by_key(|&unlock| events[unlock].sent);
        let lease_end = event.sent + Duration::from_millis(ttl_ms);
        let end = ended_by.map_or(lease_end, |unlock| lease_end.min(events[unlock].sent));
        if end > event.ended {
            windows.push(Window {
                owner,
                token,
                start: event.ended,
                end,
                event: index,
                ended_by: ended_by.filter(|&unlock| events[unlock].sent < lease_end),
            });
        }
    }
    (windows, tainted)
}

fn describe_window(window: &Window, events: &[Event], timeline: &Timeline) -> String {
    let mut text = format!(
        "{} holds token {} from {} to {}\n        proved by: {}",
        owner_text(window.owner),
        window.token,
        timeline.at(window.start),
        timeline.at(window.end),
        events[window.event].describe(timeline)
    );
    if let Some(unlock) = window.ended_by {
        let _ = write!(
            text,
            "\n        ended by:  {}",
            events[unlock].describe(timeline)
        );
    }
    text
}

// ---------------------------------------------------------------------------------------
// Checkers
// ---------------------------------------------------------------------------------------

/// Exclusion: definite windows of different owners on one lock never overlap.
pub fn check_exclusion(
    events: &[Event],
    windows: &[Window],
    lock_name: &str,
    timeline: &Timeline,
) -> Vec<String> {
    let mut sorted: Vec<&Window> = windows.iter().collect();
    sorted.sort_by_key(|window| window.start);
    let mut violations = Vec::new();
    for (position, first) in sorted.iter().enumerate() {
        for second in sorted[position + 1..]
            .iter()
            .take_while(|second| second.start < first.end)
        {
            if second.owner != first.owner {
                let overlap = first.end.min(second.end) - second.start;
                violations.push(format!(
                    "exclusion: lock {lock_name} had two holders for {} ms:\n      {}\n      {}",
                    overlap.as_millis(),
                    describe_window(first, events, timeline),
                    describe_window(second, events, timeline)
                ));
            }
        }
    }
    violations
}

/// One answer that names a token of the lock.
#[derive(Clone, Debug)]
struct Seen {
    event: usize,
    token: u64,
    /// The owner it names, if it names one.
    owner: Option<Bytes>,
    /// The token is shown as held (not just as the last granted or as released).
    held: bool,
    /// A grant of a new token (ACQUIRED, not re-entered).
    fresh: bool,
    released: bool,
}

fn seen(events: &[Event], lock: usize) -> Vec<Seen> {
    let mut seen = Vec::new();
    for (index, event) in events.iter().enumerate() {
        if event.lock != lock {
            continue;
        }
        let own = event.owner.map(owner_name);
        let mut add = |token: u64, owner: Option<Bytes>, held, fresh, released| {
            if token != 0 {
                seen.push(Seen {
                    event: index,
                    token,
                    owner,
                    held,
                    fresh,
                    released,
                });
            }
        };
        match event.answer() {
            Some(Response::Acquired(a)) => add(a.token, own, true, !a.reentered, false),
            Some(Response::Extended(e)) => add(e.token, own, true, false, false),
            Some(Response::Released(r)) => add(r.token, own, false, false, true),
            Some(Response::Busy(b) | Response::NotOwner(b)) => {
                add(b.token, Some(b.owner.clone()), true, false, false)
            }
            Some(Response::LockInfo(i)) => add(i.token, Some(i.owner.clone()), true, false, false),
            Some(Response::NotHeld(n)) => add(n.last_token, None, false, false, false),
            _ => {}
        }
    }
    seen
}

/// Fencing, the four rules of the module doc, on one lock.
pub fn check_fencing(
    events: &[Event],
    windows: &[Window],
    lock: usize,
    lock_name: &str,
    timeline: &Timeline,
) -> Vec<String> {
    let describe = |event: usize| events[event].describe(timeline);
    let mut violations = Vec::new();

    // (1) Acquisitions with a window, by when ACQUIRED arrived: tokens never decrease.
    let mut acquisitions: Vec<&Window> = windows
        .iter()
        .filter(|window| matches!(events[window.event].op, Op::Lock { .. }))
        .collect();
    acquisitions.sort_by_key(|window| window.start);
    for pair in acquisitions.windows(2) {
        if pair[1].token < pair[0].token {
            violations.push(format!(
                "fencing: on lock {lock_name} token {} was acquired after token {}:\n      {}\n      {}",
                pair[1].token,
                pair[0].token,
                describe(pair[0].event),
                describe(pair[1].event)
            ));
        }
    }

    let seen = seen(events, lock);
    // (2) A token has one owner.
    let mut owners: HashMap<u64, &Seen> = HashMap::new();
    for item in &seen {
        let Some(owner) = &item.owner else { continue };
        match owners.get(&item.token) {
            Some(first) if first.owner.as_ref() != Some(owner) => violations.push(format!(
                "fencing: on lock {lock_name} token {} was seen with two owners:\n      {}\n      {}",
                item.token,
                describe(first.event),
                describe(item.event)
            )),
            Some(_) => {}
            None => {
                owners.insert(item.token, item);
            }
        }
    }

    // (3) and (4): against every token answered before the request was sent.
    let mut by_received: Vec<&Seen> = seen.iter().collect();
    by_received.sort_by_key(|item| events[item.event].ended);
    let mut by_sent: Vec<&Seen> = seen.iter().filter(|item| item.held).collect();
    by_sent.sort_by_key(|item| events[item.event].sent);
    let mut highest: Option<&Seen> = None;
    let mut released: HashMap<u64, &Seen> = HashMap::new();
    let mut next = 0;
    for item in by_sent {
        let sent = events[item.event].sent;
        while next < by_received.len() && events[by_received[next].event].ended < sent {
            let earlier = by_received[next];
            if highest.is_none_or(|highest| earlier.token > highest.token) {
                highest = Some(earlier);
            }
            if earlier.released {
                released.entry(earlier.token).or_insert(earlier);
            }
            next += 1;
        }
        if let Some(highest) = highest {
            let too_low = if item.fresh {
                item.token <= highest.token
            } else {
                item.token < highest.token
            };
            if too_low {
                violations.push(format!(
                    "fencing: on lock {lock_name} token {} is {} token {} answered before the \
                     request was sent:\n      {}\n      earlier: {}",
                    item.token,
                    if item.fresh {
                        "a new grant not above"
                    } else {
                        "held, below"
                    },
                    highest.token,
                    describe(item.event),
                    describe(highest.event)
                ));
            }
        }
        if let Some(release) = released.get(&item.token) {
            violations.push(format!(
                "fencing: on lock {lock_name} token {} is shown held after it was released:\n      \
                 {}\n      released: {}",
                item.token,
                describe(item.event),
                describe(release.event)
            ));
        }
    }
    violations
}

/// Every answer is of a kind its request allows, with the ttl and token asked for.
pub fn check_answers(events: &[Event], timeline: &Timeline) -> Vec<String> {
    let mut violations = Vec::new();
    for event in events {
        let Some(response) = event.answer() else {
            continue;
        };
        let fine = match (event.op, response) {
            (Op::Lock { ttl_ms, .. }, Response::Acquired(a)) => a.ttl_ms == ttl_ms && a.token != 0,
            (Op::Lock { .. }, Response::Busy(_)) => event.owner.is_some(),
            (Op::Unlock { token }, Response::Released(r)) => r.token == token,
            (Op::Extend { ttl_ms, token }, Response::Extended(e)) => {
                e.ttl_ms == ttl_ms && e.token == token
            }
            (
                Op::Unlock { .. } | Op::Extend { .. },
                Response::NotHeld(_) | Response::NotOwner(_),
            ) => true,
            (Op::Get, Response::LockInfo(_) | Response::NotHeld(_)) => true,
            _ => false,
        };
        if !fine {
            violations.push(format!(
                "answer: not what the request allows: {}",
                event.describe(timeline)
            ));
        }
    }
    violations
}
