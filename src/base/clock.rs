//! Time helpers: the coordinator reports times as unix seconds with fractions, and pauses
//! that double with each failure in a row.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the unix epoch, with fractions.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// The pause after `strikes` failures in a row (at least one): `first`, doubled with each
/// failure after the first, up to `most`.
pub fn doubling_pause(first: Duration, strikes: u32, most: Duration) -> Duration {
    first
        .saturating_mul(1u32 << strikes.saturating_sub(1).min(31))
        .min(most)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_doubles_with_each_strike_up_to_the_most() {
        let pauses: Vec<u64> = (0..8)
            .map(|n| doubling_pause(Duration::from_secs(1), n, Duration::from_secs(30)).as_secs())
            .collect();
        assert_eq!(pauses, [1, 1, 2, 4, 8, 16, 30, 30]);
        let far = doubling_pause(Duration::from_secs(60), u32::MAX, Duration::from_secs(900));
        assert_eq!(far, Duration::from_secs(900));
    }
}
