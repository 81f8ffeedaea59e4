//! Patched: connections refused at the server's limits (all connections, or one client
//! address's share) told in the log, at most once a minute for each limit, with how many were
//! refused since the last line; 0.12.0 had no limits, and the counters alone do not say who.

use std::time::{Duration, Instant};

/// How often refusals at one limit are logged at most.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// When refusals at one limit were last logged, and how many came since.
#[derive(Debug)]
pub(crate) struct RefusalLog {
    logged: Option<Instant>,
    since: u64,
}

impl RefusalLog {
    /// Nothing refused yet.
    pub(crate) const fn new() -> RefusalLog {
        RefusalLog {
            logged: None,
            since: 0,
        }
    }

    /// Counts one refusal at `now`; when a line is due, returns how many refusals it tells of
    /// (this one included).
    pub(crate) fn due(&mut self, now: Instant) -> Option<u64> {
        self.since += 1;
        if self
            .logged
            .is_some_and(|at| now.saturating_duration_since(at) < LOG_EVERY)
        {
            return None;
        }
        self.logged = Some(now);
        Some(std::mem::take(&mut self.since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_at_once_then_one_a_minute_telling_the_refusals_between() {
        let start = Instant::now();
        let mut log = RefusalLog::new();
        assert_eq!(log.due(start), Some(1));
        assert_eq!(log.due(start + Duration::from_secs(1)), None);
        assert_eq!(log.due(start + Duration::from_secs(59)), None);
        assert_eq!(log.due(start + Duration::from_secs(60)), Some(3));
        assert_eq!(log.due(start + Duration::from_secs(61)), None);
    }
}
