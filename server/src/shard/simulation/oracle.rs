//! The lock contract (DESIGN.md §2), checked over everything the clients saw.
//!
//! 1. Mutual exclusion: holding windows (see `history.rs`) of different grants never
//!    overlap. One exception, by design: an ephemeral lock lives in its leader's memory
//!    only, so a later leader may grant the lock again while the ephemeral lease still
//!    runs; a window of an ephemeral grant of term T may overlap grants of later terms,
//!    if the answer that opened it was asked for before the later grant was answered.
//! 2. A live lease is what every answer sees: while a window certainly covers an answer
//!    (it opened before the request was sent and ends after the answer came), the answer
//!    names that holder and token, never NOT_HELD, never a grant to someone else; so no
//!    lease ends early, and no acknowledged persistent grant is lost (the final audits are
//!    such answers). Same exception for ephemeral grants and answers of later terms.
//! 3. Fencing tokens: a token names one owner, ever; each fresh grant has a token of its
//!    own; and tokens only grow in real time: once an answer naming a holder's token
//!    arrived, every answer to a request sent later names a token at least as large, and
//!    larger once an answer said that grant was released (RELEASED, or NOT_HELD naming it
//!    as the last token).

use std::collections::BTreeMap;

use bytes::Bytes;
use kahu_protocol::{Durability, Request, Response};

use super::history::{token_name, History, Window};

/// Violations reported at most, so a broken run stays readable.
const VIOLATIONS_MAX: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The token is the lock's current grant.
    Holder,
    /// The grant with the token has ended.
    Ended,
}

#[derive(Clone, Debug)]
struct Observation {
    attempt: u32,
    sent: u64,
    received: u64,
    token: u64,
    owner: Option<Bytes>,
    kind: Kind,
}

fn requester(request: &Request) -> Option<Bytes> {
    match request {
        Request::Lock(lock) => Some(lock.owner.clone()),
        Request::Unlock(unlock) => Some(unlock.owner.clone()),
        Request::Extend(extend) => Some(extend.owner.clone()),
        _ => None,
    }
}

/// What an answer says about the lock's grants.
fn observation(request: &Request, answer: &Response) -> Option<(u64, Option<Bytes>, Kind)> {
    let owner = requester(request);
    match answer {
        Response::Acquired(acquired) => Some((acquired.token, owner, Kind::Holder)),
        Response::Extended(extended) => Some((extended.token, owner, Kind::Holder)),
        Response::Released(released) => Some((released.token, owner, Kind::Ended)),
        Response::LockInfo(info) => Some((info.token, Some(info.owner.clone()), Kind::Holder)),
        Response::Busy(busy) | Response::NotOwner(busy) => {
            Some((busy.token, Some(busy.owner.clone()), Kind::Holder))
        }
        Response::NotHeld(not_held) if not_held.last_token != 0 => {
            Some((not_held.last_token, None, Kind::Ended))
        }
        _ => None,
    }
}

struct Checker<'a> {
    history: &'a History,
    /// (key, what is wrong)
    violations: Vec<(usize, String)>,
    coverage: Coverage,
}

/// How much the checks had to work with (a run that checks nothing proves nothing).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Coverage {
    /// Answers given while some window certainly covered them.
    pub answers_under_windows: u64,
    /// Answers to requests sent after an earlier answer named a token.
    pub ordered_tokens: u64,
}

impl Checker<'_> {
    fn violation(&mut self, key: usize, text: String) {
        if self.violations.len() < VIOLATIONS_MAX {
            self.violations.push((key, text));
        }
    }

    fn attempt(&self, id: u32) -> String {
        self.history.describe_attempt(id)
    }
}

/// Every violation found (at most a few): its key, and what is wrong with the attempts and
/// windows involved.
pub(super) fn check(history: &History, keys: usize) -> (Vec<(usize, String)>, Coverage) {
    let mut checker = Checker {
        history,
        violations: Vec::new(),
        coverage: Coverage::default(),
    };
    let mut observations: Vec<Vec<Observation>> = vec![Vec::new(); keys];
    for (id, attempt) in history.attempts.iter().enumerate() {
        let Some(answer) = &attempt.answer else {
            continue;
        };
        if let Some((token, owner, kind)) = observation(&attempt.request, answer) {
            observations[attempt.key].push(Observation {
                attempt: id as u32,
                sent: attempt.sent,
                received: attempt.received,
                token,
                owner,
                kind,
            });
        }
    }
    let mut windows: Vec<Vec<&Window>> = vec![Vec::new(); keys];
    for window in &history.windows {
        windows[window.key].push(window);
    }
    for key in 0..keys {
        check_token_owners(&mut checker, key, &observations[key]);
        check_fresh_grants(&mut checker, key);
        check_tokens_grow(&mut checker, key, &observations[key]);
        windows[key].sort_by_key(|window| (window.start, window.end));
        check_exclusion(&mut checker, key, &windows[key]);
        check_answers_see_windows(&mut checker, key, &windows[key]);
    }
    (checker.violations, checker.coverage)
}

/// A token names one owner.
fn check_token_owners(checker: &mut Checker, key: usize, observations: &[Observation]) {
    let mut owners: BTreeMap<u64, (&Bytes, u32)> = BTreeMap::new();
    for observation in observations {
        let Some(owner) = &observation.owner else {
            continue;
        };
        let (first, first_attempt) = *owners
            .entry(observation.token)
            .or_insert((owner, observation.attempt));
        if first != owner {
            let text = format!(
                "token {} names two owners:\n  {}\n  {}",
                token_name(observation.token),
                checker.attempt(first_attempt),
                checker.attempt(observation.attempt)
            );
            checker.violation(key, text);
        }
    }
}

/// Each fresh grant has a token of its own.
fn check_fresh_grants(checker: &mut Checker, key: usize) {
    let mut granted: BTreeMap<u64, u32> = BTreeMap::new();
    for (id, attempt) in checker.history.attempts.iter().enumerate() {
        if attempt.key != key {
            continue;
        }
        let Some(Response::Acquired(acquired)) = &attempt.answer else {
            continue;
        };
        if acquired.reentered {
            continue;
        }
        if let Some(&first) = granted.get(&acquired.token) {
            let text = format!(
                "token {} granted fresh twice:\n  {}\n  {}",
                token_name(acquired.token),
                checker.attempt(first),
                checker.attempt(id as u32)
            );
            checker.violation(key, text);
        } else {
            granted.insert(acquired.token, id as u32);
        }
    }
}

/// Tokens grow in real time.
fn check_tokens_grow(checker: &mut Checker, key: usize, observations: &[Observation]) {
    let mut by_received: Vec<&Observation> = observations.iter().collect();
    by_received.sort_by_key(|observation| observation.received);
    // For each prefix: the largest holder token and the largest ended token, with where
    // each was seen.
    let mut holder_max: Vec<(u64, u32)> = Vec::with_capacity(by_received.len());
    let mut ended_max: Vec<(u64, u32)> = Vec::with_capacity(by_received.len());
    let (mut holder, mut ended) = ((0, 0), (0, 0));
    for observation in &by_received {
        let slot = match observation.kind {
            Kind::Holder => &mut holder,
            Kind::Ended => &mut ended,
        };
        if observation.token > slot.0 {
            *slot = (observation.token, observation.attempt);
        }
        holder_max.push(holder);
        ended_max.push(ended);
    }
    for later in observations.iter().filter(|o| o.kind == Kind::Holder) {
        let before = by_received.partition_point(|earlier| earlier.received < later.sent);
        if before == 0 {
            continue;
        }
        checker.coverage.ordered_tokens += 1;
        let (held, held_at) = holder_max[before - 1];
        let (gone, gone_at) = ended_max[before - 1];
        let broken = if later.token < held {
            Some(("was seen held", held_at))
        } else if gone != 0 && later.token <= gone {
            Some(("was seen released", gone_at))
        } else {
            None
        };
        if let Some((what, at)) = broken {
            let text = format!(
                "fencing token went backwards: token {} {what} before this answer was asked for:\n  {}\n  then: {}",
                token_name(held.max(gone)),
                checker.attempt(at),
                checker.attempt(later.attempt)
            );
            checker.violation(key, text);
        }
    }
}

/// An ephemeral grant's window may overlap grants made by later leaders.
fn exempt(earlier: &Window, later_term: u64) -> bool {
    earlier.durability == Durability::Ephemeral && earlier.term() < later_term
}

/// Windows of different grants never overlap.
fn check_exclusion(checker: &mut Checker, key: usize, windows: &[&Window]) {
    for (position, a) in windows.iter().enumerate() {
        for b in &windows[position + 1..] {
            if b.start >= a.end {
                break; // sorted by start: no later window overlaps `a` either
            }
            if a.token == b.token && a.owner == b.owner {
                continue;
            }
            let (low, high) = if a.token < b.token { (a, b) } else { (b, a) };
            // Only an ephemeral grant the later leader could not know of: one decided
            // before the later grant was answered (a deposed leader deciding anything
            // after that cannot have had it confirmed by a quorum).
            let history = checker.history;
            let decided_before = history.attempts[low.attempt as usize].sent
                <= history.attempts[high.attempt as usize].received;
            if exempt(low, high.term()) && decided_before {
                continue;
            }
            let text = format!(
                "two grants held at once:\n  {}\n  {}",
                checker.history.describe_window(a),
                checker.history.describe_window(b)
            );
            checker.violation(key, text);
        }
    }
}

/// Answers given while a window certainly covered them name its grant.
fn check_answers_see_windows(checker: &mut Checker, key: usize, windows: &[&Window]) {
    let history = checker.history;
    let mut attempts: Vec<u32> = (0..history.attempts.len() as u32)
        .filter(|&id| {
            let attempt = &history.attempts[id as usize];
            attempt.key == key && attempt.answer.is_some()
        })
        .collect();
    attempts.sort_by_key(|&id| history.attempts[id as usize].sent);
    let mut next_window = 0;
    let mut open: Vec<&Window> = Vec::new();
    for id in attempts {
        let attempt = &history.attempts[id as usize];
        while next_window < windows.len() && windows[next_window].start <= attempt.sent {
            open.push(windows[next_window]);
            next_window += 1;
        }
        open.retain(|window| window.end > attempt.sent);
        for window in &open {
            if window.end <= attempt.received
                || exempt(window, attempt.answer_term)
                || window.attempt == id
            {
                continue;
            }
            checker.coverage.answers_under_windows += 1;
            let answer = attempt.answer.as_ref().expect("filtered");
            if let Some(problem) = contradiction(window, &attempt.request, answer) {
                let text = format!(
                    "{problem}:\n  {}\n  answer: {}",
                    history.describe_window(window),
                    history.describe_attempt(id)
                );
                checker.violation(key, text);
            }
        }
    }
}

/// How `answer` contradicts `window` being live throughout the request, if it does.
fn contradiction(window: &Window, request: &Request, answer: &Response) -> Option<&'static str> {
    let same = |owner: &Bytes, token: u64| *owner == window.owner && token == window.token;
    let by_holder = requester(request).is_some_and(|owner| owner == window.owner);
    match answer {
        Response::Acquired(_) if !by_holder => Some("granted to another owner during a live lease"),
        Response::Acquired(acquired) if acquired.token != window.token => {
            Some("granted again with a new token during the holder's live lease")
        }
        Response::Extended(extended) if !by_holder || extended.token != window.token => {
            Some("extended another grant during a live lease")
        }
        Response::Released(released) if !by_holder || released.token != window.token => {
            Some("released another grant during a live lease")
        }
        Response::Released(_) => Some("released by a request that names another grant"),
        Response::LockInfo(info) if !same(&info.owner, info.token) => {
            Some("GET named another holder during a live lease")
        }
        Response::Busy(busy) | Response::NotOwner(busy) if !same(&busy.owner, busy.token) => {
            Some("refused naming another holder during a live lease")
        }
        Response::NotHeld(_) => Some("NOT_HELD during a live lease (it ended early or was lost)"),
        _ => None,
    }
}
