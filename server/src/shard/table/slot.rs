//! One lock of the table in 64 bytes: its key, its holder, its tokens, its place in the
//! commit order, and the number of its waiter queue.
//!
//! A large table is mostly slots of held locks with nobody waiting, so that case is made
//! small: the key and the holder's owner share one allocation (with the split position in
//! a `u16`, as keys are at most `KEY_BYTES_MAX` = 512 bytes), the lease end is an 8-byte
//! [`Moment`], and waiters live out of line in the table's
//! [`WaiterQueues`](super::waiters::WaiterQueues), so a slot only holds a queue number.
//!
//! When the holder leaves, its owner, token, lease end and durability stay in the slot as
//! the *last* holder until the next grant: a hand-off answers the waiters whose time ran
//! out with BUSY naming the holder that just left, and a grant to the same owner (or one
//! of the same length) rewrites the owner bytes in place instead of allocating.

use kahu_protocol::Durability;

use super::super::clock::Moment;
use super::waiters::NO_QUEUE;

#[derive(Debug)]
pub(super) struct Slot {
    /// The key, then the owner of the holder (or, when free, of the last holder, or of
    /// the request that made the slot).
    key_and_owner: Box<[u8]>,
    /// The key's hash, as given by the router (the index is keyed by it).
    pub hash: u64,
    /// The lease end of the holder (of the last holder when free).
    pub expires_at: Moment,
    /// The token of the holder (of the last holder when free).
    pub token: u64,
    /// The largest token granted for this lock since the slot was made.
    pub last_token: u64,
    /// The commit sequence of the last decision logged about this lock; while it is not
    /// durable, replies about the lock wait for it and the slot is not freed.
    pub logged_in: u64,
    /// The number of this lock's waiter queue, or [`NO_QUEUE`]: a slot has a queue exactly
    /// when it has waiters.
    pub waiters: u32,
    /// Where the key ends and the owner starts in `key_and_owner`.
    key_length: u16,
    /// The durability of the holder (of the last holder when free).
    pub durability: Durability,
    pub held: bool,
}

// The point of this layout; a field added here costs a million times over.
const _: () = assert!(std::mem::size_of::<Slot>() <= 64);

/// The holder of a lock (or the last one), as stored in its slot.
#[derive(Clone, Copy, Debug)]
pub(super) struct Holder<'a> {
    pub owner: &'a [u8],
    pub token: u64,
    pub expires_at: Moment,
    pub durability: Durability,
}

impl Holder<'_> {
    /// Whether a request naming `owner` (and `token`, if given) speaks for this grant.
    pub fn matches(&self, owner: &[u8], token: Option<u64>) -> bool {
        self.owner == owner && token.is_none_or(|token| token == self.token)
    }
}

impl Slot {
    /// A free slot for `key`, with room for `owner`, whom it is about to be granted to.
    pub fn new(key: &[u8], owner: &[u8], hash: u64) -> Slot {
        let mut slot = Slot {
            key_and_owner: Box::default(),
            hash: 0,
            expires_at: Moment::default(),
            token: 0,
            last_token: 0,
            logged_in: 0,
            waiters: NO_QUEUE,
            key_length: 0,
            durability: Durability::Ephemeral,
            held: false,
        };
        slot.reuse(key, owner, hash);
        slot
    }

    /// Makes a freed slot the slot of `key` (see [`Slot::new`]).
    pub fn reuse(&mut self, key: &[u8], owner: &[u8], hash: u64) {
        debug_assert!(!self.held && self.waiters == NO_QUEUE && self.key_and_owner.is_empty());
        self.key_length = u16::try_from(key.len()).expect("keys are at most 512 bytes");
        self.key_and_owner = [key, owner].concat().into_boxed_slice();
        self.hash = hash;
    }

    /// Forgets the key (and frees its bytes) once the slot is no longer in use.
    pub fn clear(&mut self) {
        debug_assert!(!self.held && self.waiters == NO_QUEUE);
        self.key_and_owner = Box::default();
        self.key_length = 0;
        self.last_token = 0;
        self.logged_in = 0;
    }

    pub fn key(&self) -> &[u8] {
        &self.key_and_owner[..usize::from(self.key_length)]
    }

    /// The holder, if the lock is held.
    pub fn holder(&self) -> Option<Holder<'_>> {
        self.held.then(|| self.last_holder())
    }

    /// The holder or, when free, the last one (see the module doc).
    pub fn last_holder(&self) -> Holder<'_> {
        Holder {
            owner: &self.key_and_owner[usize::from(self.key_length)..],
            token: self.token,
            expires_at: self.expires_at,
            durability: self.durability,
        }
    }

    /// Makes `owner` the holder of this free lock.
    pub fn hold(&mut self, owner: &[u8], token: u64, expires_at: Moment, durability: Durability) {
        debug_assert!(!self.held);
        let key_length = usize::from(self.key_length);
        if self.key_and_owner.len() - key_length == owner.len() {
            self.key_and_owner[key_length..].copy_from_slice(owner);
        } else {
            self.key_and_owner = [self.key(), owner].concat().into_boxed_slice();
        }
        self.token = token;
        self.expires_at = expires_at;
        self.durability = durability;
        self.held = true;
    }

    /// Ends the holder's grant; it stays readable as the last holder.
    pub fn release(&mut self) {
        debug_assert!(self.held);
        self.held = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_and_owner_share_one_allocation_and_a_same_length_owner_reuses_it() {
        let mut slot = Slot::new(b"backup-lock", b"alice", 7);
        assert_eq!(slot.key(), b"backup-lock");
        assert!(slot.holder().is_none());
        let start = Moment::default();
        slot.hold(b"alice", 1, start.after_ms(10), Durability::Persistent);
        let bytes = slot.key_and_owner.as_ptr();
        slot.release();
        assert!(slot.holder().is_none());
        assert_eq!(slot.last_holder().owner, b"alice");
        slot.hold(b"bobby", 2, start.after_ms(20), Durability::Ephemeral);
        assert_eq!(
            slot.key_and_owner.as_ptr(),
            bytes,
            "same length: rewritten in place"
        );
        let holder = slot.holder().expect("held");
        assert_eq!((holder.owner, holder.token), (&b"bobby"[..], 2));
        slot.release();
        slot.hold(
            b"carol-the-second",
            3,
            start.after_ms(30),
            Durability::Ephemeral,
        );
        assert_eq!(slot.key(), b"backup-lock");
        assert_eq!(slot.holder().expect("held").owner, b"carol-the-second");
    }
}
