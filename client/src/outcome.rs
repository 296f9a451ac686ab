//! Typed answers to UNLOCK, EXTEND and GET.
//!
//! The wire protocol answers these with one of a few responses (RELEASED / NOT_OWNER /
//! NOT_HELD, ...). Each operation gets an enum holding exactly the answers it can get, so a
//! caller matches on them instead of on raw [`Response`]s. Refusals that are part of the
//! lock contract (not the owner, not held) are outcomes, not errors; an ERROR reply is an
//! [`Error::Server`]; any other response is an [`Error::Protocol`].

use std::time::Duration;

use bytes::Bytes;
use kahu_protocol::{Busy, Durability, LockInfo, Response};

use crate::error::Error;

/// Who holds a lock, as the server reported it in BUSY or NOT_OWNER.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub owner: Bytes,
    pub fencing_token: u64,
    /// Lease time left when the server answered.
    pub remaining: Duration,
}

impl From<Busy> for Holder {
    fn from(busy: Busy) -> Holder {
        Holder {
            owner: busy.owner,
            fencing_token: busy.token,
            remaining: Duration::from_millis(busy.remaining_ms),
        }
    }
}

/// The answer to an UNLOCK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnlockOutcome {
    /// The lock was ours and is now free; the next waiter, if any, gets it.
    Released { fencing_token: u64 },
    /// Another grant holds the lock; nothing changed. It is another owner's, or, when the
    /// UNLOCK named a fencing token, possibly a later grant to the same owner.
    NotOwner(Holder),
    /// Nobody holds the lock (it was never taken, was released, or its lease ran out).
    NotHeld { last_fencing_token: Option<u64> },
    /// Nobody holds the lock, and this UNLOCK may be what released it: in a cluster, an
    /// earlier attempt was answered "may or may not have taken effect" (its node lost its
    /// leadership meanwhile), and the retry found the lock not held. Either that attempt
    /// released the grant, or the grant had ended before; it is not held any more. See
    /// [`crate::Client::unlock_token`].
    ReleasedUncertain { last_fencing_token: Option<u64> },
}

impl UnlockOutcome {
    /// True for [`UnlockOutcome::Released`] only: this UNLOCK released the lock. False for
    /// [`UnlockOutcome::ReleasedUncertain`], where that cannot be known.
    pub fn is_released(&self) -> bool {
        matches!(self, UnlockOutcome::Released { .. })
    }

    pub(crate) fn from_response(response: Response) -> Result<UnlockOutcome, Error> {
        match response {
            Response::Released(released) => Ok(UnlockOutcome::Released {
                fencing_token: released.token,
            }),
            Response::NotOwner(holder) => Ok(UnlockOutcome::NotOwner(holder.into())),
            Response::NotHeld(not_held) => Ok(UnlockOutcome::NotHeld {
                last_fencing_token: known_token(not_held.last_token),
            }),
            other => Err(unexpected("UNLOCK", other)),
        }
    }
}

/// The answer to an EXTEND.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtendOutcome {
    /// The lease now ends `ttl` after the request was sent; the token is unchanged.
    Extended { fencing_token: u64, ttl: Duration },
    /// Another grant holds the lock: ours was lost (its lease ran out and the lock was
    /// granted again: to another owner, or, when the EXTEND named a fencing token, possibly
    /// to the same owner).
    NotOwner(Holder),
    /// Nobody holds the lock: ours was lost (its lease ran out).
    NotHeld { last_fencing_token: Option<u64> },
}

impl ExtendOutcome {
    pub fn is_extended(&self) -> bool {
        matches!(self, ExtendOutcome::Extended { .. })
    }

    pub(crate) fn from_response(response: Response) -> Result<ExtendOutcome, Error> {
        match response {
            Response::Extended(extended) => Ok(ExtendOutcome::Extended {
                fencing_token: extended.token,
                ttl: Duration::from_millis(extended.ttl_ms),
            }),
            Response::NotOwner(holder) => Ok(ExtendOutcome::NotOwner(holder.into())),
            Response::NotHeld(not_held) => Ok(ExtendOutcome::NotHeld {
                last_fencing_token: known_token(not_held.last_token),
            }),
            other => Err(unexpected("EXTEND", other)),
        }
    }
}

/// A held lock, as GET reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeldLock {
    pub owner: Bytes,
    pub fencing_token: u64,
    /// Lease time left when the server answered.
    pub remaining: Duration,
    /// Requests queued for this lock on the server.
    pub waiters: u32,
    pub durability: Durability,
}

impl From<LockInfo> for HeldLock {
    fn from(info: LockInfo) -> HeldLock {
        HeldLock {
            owner: info.owner,
            fencing_token: info.token,
            remaining: Duration::from_millis(info.remaining_ms),
            waiters: info.waiters,
            durability: info.durability,
        }
    }
}

/// The answer to a GET.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockState {
    Held(HeldLock),
    /// Nobody holds the lock. `last_fencing_token` is the last token granted for it, when
    /// the server knows it.
    NotHeld {
        last_fencing_token: Option<u64>,
    },
}

impl LockState {
    pub fn is_locked(&self) -> bool {
        matches!(self, LockState::Held(_))
    }

    pub(crate) fn from_response(response: Response) -> Result<LockState, Error> {
        match response {
            Response::LockInfo(info) => Ok(LockState::Held(info.into())),
            Response::NotHeld(not_held) => Ok(LockState::NotHeld {
                last_fencing_token: known_token(not_held.last_token),
            }),
            other => Err(unexpected("GET", other)),
        }
    }
}

/// Tokens are never 0, so the wire uses 0 for "unknown".
fn known_token(token: u64) -> Option<u64> {
    (token != 0).then_some(token)
}

/// An ERROR reply becomes [`Error::Server`]; any other response that does not answer the
/// request is a protocol error.
pub(crate) fn unexpected(request: &str, response: Response) -> Error {
    match response {
        Response::Error(reply) => Error::Server(reply),
        other => Error::Protocol(format!(
            "the server answered {request} with {}",
            other.opcode().name()
        )),
    }
}

#[cfg(test)]
mod tests {
    use kahu_protocol::{ErrorCode, NotHeld, ProtocolError, Released};

    use super::*;

    #[test]
    fn unlock_answers_map_to_outcomes() {
        let released = UnlockOutcome::from_response(Response::Released(Released { token: 9 }));
        assert_eq!(
            released.unwrap(),
            UnlockOutcome::Released { fencing_token: 9 }
        );
        let not_held =
            UnlockOutcome::from_response(Response::NotHeld(NotHeld { last_token: 0 })).unwrap();
        assert_eq!(
            not_held,
            UnlockOutcome::NotHeld {
                last_fencing_token: None
            }
        );
        let holder = Busy {
            token: 4,
            remaining_ms: 1500,
            owner: Bytes::from_static(b"other"),
        };
        let not_owner = UnlockOutcome::from_response(Response::NotOwner(holder)).unwrap();
        let UnlockOutcome::NotOwner(holder) = not_owner else {
            panic!("expected NotOwner, got {not_owner:?}");
        };
        assert_eq!(holder.remaining, Duration::from_millis(1500));
    }

    #[test]
    fn errors_and_wrong_answers_are_errors() {
        let refused = Response::from(ProtocolError::new(ErrorCode::KeyEmpty, "key is empty"));
        let error = LockState::from_response(refused).unwrap_err();
        assert_eq!(error.code(), Some(ErrorCode::KeyEmpty));
        let wrong = ExtendOutcome::from_response(Response::Pong).unwrap_err();
        assert!(matches!(wrong, Error::Protocol(ref message) if message.contains("PONG")));
    }
}
