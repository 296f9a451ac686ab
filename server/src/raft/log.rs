//! The node's view of the replicated log: a compacted prefix (the last snapshot's index and
//! term) followed by the entries the node holds in memory.
//!
//! Invariants (asserted):
//! - entries are contiguous from `snapshot_index + 1` and their terms never decrease;
//! - `applied <= committed <= last_index()` and `snapshot_index <= applied`;
//! - a committed entry is never replaced (§5.4: Leader Completeness makes this impossible
//!   in a correct cluster, so seeing it is a bug and panics);
//! - `persisted < unsaved_from`: entries from `unsaved_from` on have not been handed to
//!   the caller to write; entries up to `persisted` are known to be on disk.

use std::collections::VecDeque;

use super::message::{Entry, Payload, Snapshot};

#[derive(Debug)]
pub struct RaftLog<C> {
    snapshot_index: u64,
    snapshot_term: u64,
    entries: VecDeque<Entry<C>>,
    committed: u64,
    applied: u64,
    persisted: u64,
    unsaved_from: u64,
}

impl<C: Payload> RaftLog<C> {
    /// A log that starts after `snapshot_index` and holds `entries`, all already on disk.
    pub fn new(snapshot_index: u64, snapshot_term: u64, entries: Vec<Entry<C>>) -> RaftLog<C> {
        let mut previous = (snapshot_index, snapshot_term);
        for entry in &entries {
            assert_eq!(entry.index, previous.0 + 1, "log gap");
            assert!(entry.term >= previous.1, "term went backwards in the log");
            previous = (entry.index, entry.term);
        }
        let last_index = previous.0;
        RaftLog {
            snapshot_index,
            snapshot_term,
            // Taking the vector over costs nothing (a restart can hold a million entries).
            entries: VecDeque::from(entries),
            committed: snapshot_index,
            applied: snapshot_index,
            persisted: last_index,
            unsaved_from: last_index + 1,
        }
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }

    pub fn first_index(&self) -> u64 {
        self.snapshot_index + 1
    }

    pub fn last_index(&self) -> u64 {
        self.snapshot_index + self.entries.len() as u64
    }

    pub fn last_term(&self) -> u64 {
        self.entries
            .back()
            .map_or(self.snapshot_term, |entry| entry.term)
    }

    pub fn committed(&self) -> u64 {
        self.committed
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn persisted(&self) -> u64 {
        self.persisted
    }

    /// The term of the entry at `index`, if the log knows it (compacted entries other than
    /// the snapshot's last are forgotten).
    pub fn term(&self, index: u64) -> Option<u64> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        self.entry(index).map(|entry| entry.term)
    }

    pub fn entry(&self, index: u64) -> Option<&Entry<C>> {
        if index <= self.snapshot_index {
            return None;
        }
        self.entries.get((index - self.snapshot_index - 1) as usize)
    }

    pub fn matches(&self, index: u64, term: u64) -> bool {
        self.term(index) == Some(term)
    }

    /// Whether a log ending at (`last_index`, `last_term`) is at least as up to date as
    /// this one (§5.4.1).
    pub fn is_up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Appends entries after the last one (the leader's own proposals).
    pub fn append(&mut self, entries: impl IntoIterator<Item = Entry<C>>) {
        for entry in entries {
            self.push(entry);
        }
    }

    fn push(&mut self, entry: Entry<C>) {
        assert_eq!(entry.index, self.last_index() + 1, "log gap");
        assert!(
            entry.term >= self.last_term(),
            "term went backwards in the log"
        );
        self.entries.push_back(entry);
    }

    /// The follower's side of AppendEntries: if the log holds `prev_index` with
    /// `prev_term`, drop whatever conflicts with `entries`, append the rest and return the
    /// index of the last entry the message covered. `None` if the log does not match
    /// (§5.3). Returns the index from which stored entries were replaced, if any.
    pub fn try_append(
        &mut self,
        prev_index: u64,
        prev_term: u64,
        entries: Vec<Entry<C>>,
    ) -> Option<(u64, Option<u64>)> {
        if !self.matches(prev_index, prev_term) {
            return None;
        }
        let last_new = prev_index + entries.len() as u64;
        let mut truncated_from = None;
        for entry in entries {
            if entry.index <= self.snapshot_index {
                continue;
            }
            match self.term(entry.index) {
                Some(term) if term == entry.term => continue,
                Some(_) => {
                    assert!(
                        entry.index > self.committed,
                        "a committed entry at {} would be replaced",
                        entry.index
                    );
                    self.truncate_from(entry.index);
                    truncated_from.get_or_insert(entry.index);
                    self.push(entry);
                }
                None => self.push(entry),
            }
        }
        Some((last_new, truncated_from))
    }

    fn truncate_from(&mut self, index: u64) {
        let keep = (index - self.snapshot_index - 1) as usize;
        self.entries.truncate(keep);
        self.unsaved_from = self.unsaved_from.min(index);
        self.persisted = self.persisted.min(index - 1);
    }

    /// Where a follower whose log does not match at `index` suggests the leader look next:
    /// the last entry at or before `index` whose term is at most `term` (a leader with
    /// `term` at `index` cannot match anything later in this log).
    pub fn hint_at_or_before(&self, index: u64, term: u64) -> (u64, u64) {
        let mut index = index.min(self.last_index());
        loop {
            match self.term(index) {
                Some(found) if found <= term => return (index, found),
                Some(_) => index -= 1,
                None => return (self.snapshot_index, self.snapshot_term),
            }
        }
    }

    /// Entries from `from` on, as many as fit in `bytes_max` (at least one if any).
    pub fn entries_from(&self, from: u64, bytes_max: usize) -> Vec<Entry<C>> {
        assert!(from > self.snapshot_index, "entry {from} is compacted");
        let mut bytes = 0;
        let mut out = Vec::new();
        for index in from..=self.last_index() {
            let entry = self.entry(index).expect("index within the log");
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(entry.clone());
        }
        out
    }

    /// Raises the commit index; never lowers it.
    pub fn commit_to(&mut self, index: u64) {
        if index > self.committed {
            assert!(
                index <= self.last_index(),
                "commit {index} beyond the last index {}",
                self.last_index()
            );
            self.committed = index;
        }
    }

    /// Entries not yet handed to the caller for writing; marks them handed.
    pub fn take_unsaved(&mut self) -> Vec<Entry<C>> {
        let from = self.unsaved_from.max(self.first_index());
        let entries: Vec<Entry<C>> = (from..=self.last_index())
            .map(|index| self.entry(index).expect("within the log").clone())
            .collect();
        self.unsaved_from = self.last_index() + 1;
        entries
    }

    pub fn has_unsaved(&self) -> bool {
        self.unsaved_from <= self.last_index()
    }

    /// The caller has written everything handed out so far.
    pub fn mark_persisted(&mut self) {
        self.persisted = self.unsaved_from - 1;
    }

    /// The committed entries not yet applied that have been handed out for writing (the
    /// caller writes before it applies), as a range of indexes; counts them applied.
    pub fn take_to_apply(&mut self) -> std::ops::Range<u64> {
        let to = self.committed.min(self.unsaved_from - 1);
        let from = self.applied + 1;
        self.applied = self.applied.max(to);
        from..to.max(from - 1) + 1
    }

    /// Forgets entries up to `index`, which the state machine has in a snapshot.
    pub fn compact(&mut self, index: u64) {
        if index <= self.snapshot_index {
            return;
        }
        assert!(index <= self.applied, "compacting past applied");
        let term = self.term(index).expect("within the log");
        let drop = (index - self.snapshot_index) as usize;
        self.entries.drain(..drop);
        self.snapshot_index = index;
        self.snapshot_term = term;
    }

    /// Replaces the whole log with a snapshot received from the leader.
    pub fn restore(&mut self, snapshot: &Snapshot) {
        let meta = &snapshot.meta;
        assert!(meta.index > self.committed, "restoring an older snapshot");
        self.entries.clear();
        self.snapshot_index = meta.index;
        self.snapshot_term = meta.term;
        self.committed = meta.index;
        self.applied = meta.index;
        self.persisted = meta.index;
        self.unsaved_from = meta.index + 1;
    }
}
