//! Wall-clock helpers: the coordinator reports times as unix seconds with fractions.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the unix epoch, with fractions.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}
