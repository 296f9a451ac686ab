//! Time inside a shard's lock table: a [`Moment`] is a signed count of nanoseconds since the
//! table's origin, and the table's [`Clock`] turns the `Instant`s it is given into moments
//! and back.
//!
//! Why: every held lock stores its lease end and every timer its deadline, a million of
//! each in a large table; an `Instant` takes 16 bytes, a moment 8. Nothing is rounded: on
//! Linux an `Instant` counts nanoseconds, so an instant becomes a moment and back exactly,
//! and a lease ends at the very nanosecond it did when it was an `Instant`.
//!
//! The origin is the first instant the clock was given (the table never reads a clock
//! itself). Moments are signed so that an instant from before the origin (a `now` read a
//! little earlier than the first one the table saw) still has its place; the range is
//! about 292 years either side of the origin, and leaving it is a programmer error (leases
//! and waits are limited to days by the protocol).

use std::time::{Duration, Instant};

const NANOSECONDS_PER_MICROSECOND: i64 = 1_000;
const NANOSECONDS_PER_MILLISECOND: i64 = 1_000_000;

/// A point in time: nanoseconds since the origin of the table's [`Clock`] (the default is
/// the origin itself).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Moment(i64);

impl Moment {
    /// The moment `milliseconds` after this one.
    pub fn after_ms(self, milliseconds: u64) -> Moment {
        let nanoseconds = i64::try_from(milliseconds)
            .ok()
            .and_then(|milliseconds| milliseconds.checked_mul(NANOSECONDS_PER_MILLISECOND))
            .and_then(|nanoseconds| self.0.checked_add(nanoseconds))
            .unwrap_or_else(|| panic!("{milliseconds} ms after {self:?} is out of range"));
        Moment(nanoseconds)
    }

    /// This moment moved as far from `origin` as it is from the clock's origin: a moment
    /// counted from the origin, counted from `origin` instead.
    pub fn counted_from(self, origin: Moment) -> Moment {
        Moment(
            self.0
                .checked_add(origin.0)
                .unwrap_or_else(|| panic!("{self:?} counted from {origin:?} is out of range")),
        )
    }

    /// Whole milliseconds from `earlier` to this moment (rounded down), 0 if `earlier` is
    /// not earlier.
    pub fn milliseconds_since(self, earlier: Moment) -> u64 {
        self.nanoseconds_since(earlier) / NANOSECONDS_PER_MILLISECOND as u64
    }

    /// Whole microseconds from `earlier` to this moment (rounded down), 0 if `earlier` is
    /// not earlier.
    pub fn microseconds_since(self, earlier: Moment) -> u64 {
        self.nanoseconds_since(earlier) / NANOSECONDS_PER_MICROSECOND as u64
    }

    fn nanoseconds_since(self, earlier: Moment) -> u64 {
        // Both are i64, so the difference fits an i128 and, when positive, a u64.
        (i128::from(self.0) - i128::from(earlier.0)).max(0) as u64
    }
}

/// Turns instants into moments and back, counting from the first instant it was given.
#[derive(Debug, Default)]
pub struct Clock {
    origin: Option<Instant>,
}

impl Clock {
    /// The moment of `instant`; the first instant ever given becomes the origin.
    pub fn moment(&mut self, instant: Instant) -> Moment {
        let origin = *self.origin.get_or_insert(instant);
        moment_from(origin, instant)
    }

    /// The moment of `instant`, or `None` before the clock was first given an instant (so
    /// before the table held anything: no moment exists yet to compare it with).
    pub fn moment_if_started(&self, instant: Instant) -> Option<Moment> {
        self.origin.map(|origin| moment_from(origin, instant))
    }

    /// The instant of a moment this clock made.
    pub fn instant(&self, moment: Moment) -> Instant {
        let origin = self
            .origin
            .expect("a moment exists only once the clock has an origin");
        let distance = Duration::from_nanos(moment.0.unsigned_abs());
        let instant = if moment.0 >= 0 {
            origin.checked_add(distance)
        } else {
            origin.checked_sub(distance)
        };
        instant.unwrap_or_else(|| panic!("{moment:?} is not a representable instant"))
    }
}

fn moment_from(origin: Instant, instant: Instant) -> Moment {
    let (distance, sign) = match instant.checked_duration_since(origin) {
        Some(after) => (after, 1),
        None => (origin.duration_since(instant), -1),
    };
    let nanoseconds = i64::try_from(distance.as_nanos())
        .unwrap_or_else(|_| panic!("{distance:?} from the clock's origin is out of range"));
    Moment(sign * nanoseconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_become_moments_and_back_exactly() {
        let mut clock = Clock::default();
        let origin = Instant::now();
        assert_eq!(clock.moment_if_started(origin), None);
        assert_eq!(clock.moment(origin), Moment(0));
        for offset in [1, 999, 1_000_000_007, 7 * 24 * 3_600 * 1_000_000_000] {
            let later = origin + Duration::from_nanos(offset);
            let moment = clock.moment(later);
            assert_eq!(moment, Moment(offset as i64));
            assert_eq!(clock.instant(moment), later);
            if let Some(earlier) = origin.checked_sub(Duration::from_nanos(offset)) {
                let moment = clock.moment(earlier);
                assert_eq!(moment, Moment(-(offset as i64)));
                assert_eq!(clock.instant(moment), earlier);
            }
        }
    }

    #[test]
    fn durations_round_down_and_never_go_negative() {
        let start = Moment(5);
        let end = start.after_ms(3);
        assert_eq!(end, Moment(3_000_005));
        assert_eq!(end.milliseconds_since(start), 3);
        assert_eq!(Moment(2_999_999).milliseconds_since(Moment(0)), 2);
        assert_eq!(Moment(2_999_999).microseconds_since(Moment(0)), 2_999);
        assert_eq!(start.milliseconds_since(end), 0);
        assert_eq!(
            Moment(i64::MAX).microseconds_since(Moment(i64::MIN)),
            u64::MAX / 1_000
        );
    }
}
