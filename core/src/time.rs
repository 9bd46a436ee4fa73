//! Time as the core sees it: milliseconds since the Unix epoch, passed in by the caller.

use serde::{Deserialize, Serialize};

/// A point in time in milliseconds since the Unix epoch.
///
/// A Durable Object only has `Date.now()`, so this is the one clock every adapter can supply.
/// Clocks can go backwards; code that needs monotonic time clamps with [`Timestamp::max`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The epoch itself.
    pub const ZERO: Timestamp = Timestamp(0);

    /// Milliseconds since the epoch.
    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// This time plus `ms` milliseconds, saturating at the far future.
    #[must_use]
    pub fn plus_millis(self, ms: u64) -> Timestamp {
        Timestamp(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self`, or 0 if `earlier` is later.
    pub fn millis_since(self, earlier: Timestamp) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timestamp_reads_back_its_milliseconds() {
        let t = Timestamp(1_700_000_000_123);
        assert_eq!(t.as_millis(), 1_700_000_000_123);
        assert_eq!(t.plus_millis(7).as_millis(), 1_700_000_000_130);
        assert_eq!(Timestamp(u64::MAX).plus_millis(1), Timestamp(u64::MAX));
        assert_eq!(t.plus_millis(7).millis_since(t), 7);
        assert_eq!(
            t.millis_since(t.plus_millis(7)),
            0,
            "a clock that stepped back"
        );
    }
}
