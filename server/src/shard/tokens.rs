//! Fencing tokens: u64, never 0, strictly increasing per lock for the lock's whole life.
//!
//! ```text
//!  63            40 39                                0
//! +----------------+-----------------------------------+
//! |  epoch (24)    |  grant counter within epoch (40)   |
//! +----------------+-----------------------------------+
//! ```
//!
//! The epoch is a number that grows every time the server starts (persisted in the data
//! directory, see `epoch.rs`), so tokens of a later run are larger than every token of an
//! earlier one even though the lock table itself is in memory. Within an epoch each shard
//! counts its grants from 1; a key always maps to one shard while the server runs, so a
//! lock's tokens grow. When the replication issue lands, the epoch becomes the shard's Raft
//! term, as DESIGN.md describes.
//!
//! 2^40 grants per epoch is 12 days of one shard granting a million locks a second; before
//! the counter runs out the shard worker moves to a fresh epoch (`needs_new_epoch`), which
//! keeps every later token larger.

/// Bits of the grant counter; the epoch sits above them.
pub const COUNTER_BITS: u32 = 40;
/// The largest epoch that fits in a token.
pub const EPOCH_MAX: u64 = (1 << (64 - COUNTER_BITS)) - 1;
const COUNTER_MAX: u64 = (1 << COUNTER_BITS) - 1;

/// Grants the worker may make before it must switch epochs. One turn of the worker loop
/// grants at most one lock per request in its batch plus one per timer it fires, both
/// bounded far below this.
pub const GRANTS_PER_TURN_MAX: u64 = 1 << 20;

#[derive(Debug)]
pub struct TokenSource {
    epoch: u64,
    counter: u64,
    last: u64,
}

impl TokenSource {
    pub fn new(epoch: u64) -> TokenSource {
        assert!(
            (1..=EPOCH_MAX).contains(&epoch),
            "epoch {epoch} out of range"
        );
        TokenSource {
            epoch,
            counter: 0,
            last: 0,
        }
    }

    /// The next token. Panics if the worker let the counter run out: it checks
    /// [`TokenSource::needs_new_epoch`] before every turn.
    pub fn next_token(&mut self) -> u64 {
        assert!(
            self.counter < COUNTER_MAX,
            "grant counter exhausted in epoch {}",
            self.epoch
        );
        self.counter += 1;
        let token = (self.epoch << COUNTER_BITS) | self.counter;
        assert!(token > self.last, "fencing token went backwards");
        self.last = token;
        token
    }

    /// True when fewer than [`GRANTS_PER_TURN_MAX`] grants are left in this epoch.
    pub fn needs_new_epoch(&self) -> bool {
        COUNTER_MAX - self.counter < GRANTS_PER_TURN_MAX
    }

    /// Moves to a later epoch; every later token is larger than every earlier one.
    pub fn advance_epoch(&mut self, epoch: u64) {
        assert!(epoch > self.epoch && epoch <= EPOCH_MAX, "epoch must grow");
        self.epoch = epoch;
        self.counter = 0;
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_never_zero_and_grow_across_epochs() {
        let mut tokens = TokenSource::new(1);
        let first = tokens.next_token();
        assert_eq!(first, (1 << COUNTER_BITS) | 1);
        let second = tokens.next_token();
        assert!(second > first);
        tokens.advance_epoch(2);
        assert!(tokens.next_token() > second);
    }

    #[test]
    fn the_worker_is_told_before_the_counter_runs_out() {
        let mut tokens = TokenSource::new(3);
        tokens.counter = COUNTER_MAX - GRANTS_PER_TURN_MAX - 1;
        assert!(!tokens.needs_new_epoch());
        tokens.next_token();
        tokens.next_token();
        assert!(tokens.needs_new_epoch());
        let before = tokens.next_token();
        tokens.advance_epoch(4);
        assert!(tokens.next_token() > before);
    }
}
