//! What a leader knows about one follower's log, and how fast it may send to it.
//!
//! - `Probe`: the leader does not know where the follower's log matches; it sends one
//!   append at a time and waits for the answer (or the next heartbeat answer).
//! - `Replicate`: the logs matched at `match_index`; the leader streams appends ahead of
//!   the acknowledgements, at most `appends_in_flight_max` at once.
//! - `Snapshot`: the follower needs entries the leader has compacted; a snapshot is on its
//!   way and nothing else is sent until it is acknowledged or times out.
//!
//! Invariant: `match_index < next_index`.

use std::collections::VecDeque;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    Probe,
    Replicate,
    Snapshot { index: u64 },
}

#[derive(Clone, Debug)]
pub struct Progress {
    pub match_index: u64,
    pub next_index: u64,
    pub state: ProgressState,
    /// Probe: an append is out and unanswered.
    pub probe_sent: bool,
    /// Replicate: the last index of each append in flight, oldest first.
    pub in_flight: VecDeque<u64>,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// Snapshot: ticks since the snapshot was sent. Replicate: ticks since appends in
    /// flight last got an acknowledgement. Either way, after an election timeout without
    /// an answer the leader assumes the messages were lost and probes again.
    pub stalled_ticks: u32,
}

impl Progress {
    pub fn new(next_index: u64) -> Progress {
        Progress {
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            in_flight: VecDeque::new(),
            recent_active: false,
            stalled_ticks: 0,
        }
    }

    /// Whether the leader must hold back appends to this follower for now.
    pub fn is_paused(&self, in_flight_max: usize) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.in_flight.len() >= in_flight_max,
            ProgressState::Snapshot { .. } => true,
        }
    }

    /// Records an append ending at `last_index` as sent.
    pub fn sent(&mut self, last_index: u64) {
        match self.state {
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Replicate => {
                self.next_index = last_index + 1;
                self.in_flight.push_back(last_index);
            }
            ProgressState::Snapshot { .. } => unreachable!("appends are not sent in snapshot"),
        }
    }

    /// The follower acknowledged everything up to `index`. Returns whether it was news.
    pub fn acknowledged(&mut self, index: u64) -> bool {
        let news = index > self.match_index;
        if news {
            self.match_index = index;
            self.probe_sent = false;
            self.stalled_ticks = 0;
        }
        self.next_index = self.next_index.max(index + 1);
        while self.in_flight.front().is_some_and(|&last| last <= index) {
            self.in_flight.pop_front();
        }
        news
    }

    /// The follower's log did not match at `rejected` (a `prev_index` the leader sent);
    /// `candidate_next` is where the follower's hint says to try next. Returns false for a
    /// stale rejection that says nothing new.
    pub fn rejected(&mut self, rejected: u64, candidate_next: u64) -> bool {
        match self.state {
            ProgressState::Replicate => {
                if rejected <= self.match_index {
                    return false;
                }
                self.become_probe();
                true
            }
            ProgressState::Probe => {
                // The follower acknowledged `match_index` after it was on disk, so a
                // rejection at or below it is an old (delayed or duplicated) answer.
                if rejected != self.next_index - 1 || rejected <= self.match_index {
                    return false;
                }
                self.next_index = candidate_next.clamp(self.match_index + 1, rejected);
                self.probe_sent = false;
                true
            }
            ProgressState::Snapshot { .. } => false,
        }
    }

    /// Counts a tick; returns true when the follower has not answered for `ticks_max`
    /// ticks while a snapshot or appends are in flight, and is back to probing.
    pub fn tick_stalled(&mut self, ticks_max: u32) -> bool {
        let waiting = match self.state {
            ProgressState::Probe => false,
            ProgressState::Replicate => !self.in_flight.is_empty(),
            ProgressState::Snapshot { .. } => true,
        };
        if !waiting {
            self.stalled_ticks = 0;
            return false;
        }
        self.stalled_ticks += 1;
        if self.stalled_ticks < ticks_max {
            return false;
        }
        self.state = ProgressState::Probe;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.in_flight.clear();
        self.stalled_ticks = 0;
        true
    }

    pub fn become_probe(&mut self) {
        let next = match self.state {
            ProgressState::Snapshot { index } => self.match_index.max(index) + 1,
            _ => self.match_index + 1,
        };
        self.state = ProgressState::Probe;
        self.next_index = next;
        self.probe_sent = false;
        self.in_flight.clear();
        self.stalled_ticks = 0;
    }

    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index + 1;
        self.probe_sent = false;
        self.in_flight.clear();
    }

    pub fn become_snapshot(&mut self, index: u64) {
        self.state = ProgressState::Snapshot { index };
        self.probe_sent = false;
        self.in_flight.clear();
        self.stalled_ticks = 0;
    }
}
