//! `Repeats`: one log message that a lasting condition (a full disk, a store locked by another
//! program) would repeat every second, let through at most once a period, with a count of the
//! repeats held back. A disk that stays full for a weekend then costs the log a line a minute,
//! not one a second.

use std::time::{Duration, Instant};

/// How often a repeated message is let through.
pub const REPEAT_PERIOD: Duration = Duration::from_secs(60);

/// The repeats of one message.
#[derive(Debug)]
pub struct Repeats {
    period: Duration,
    last: Option<Instant>,
    held: u64,
}

impl Repeats {
    /// Lets the message through at most once per `period`.
    pub const fn new(period: Duration) -> Repeats {
        Repeats {
            period,
            last: None,
            held: 0,
        }
    }

    /// Whether to log the message now: `Some(n)` with the `n` repeats held back since it last
    /// went through, or `None` to hold this one back too.
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.period)
        {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }

    /// Counts `n` more repeats held back: those that came together with the message just
    /// checked, and go into the count of the next one let through.
    pub fn hold(&mut self, n: u64) {
        self.held += n;
    }

    /// The condition ended: the next message goes through at once.
    pub fn reset(&mut self) {
        self.last = None;
        self.held = 0;
    }

    /// The text to append to a message let through after `held` repeats.
    pub fn suffix(held: u64) -> String {
        match held {
            0 => String::new(),
            n => format!(" ({n} more like it since the last one)"),
        }
    }
}

/// A budget of log lines for a message any stranger can set off with each request (a refused
/// client key): bursts of up to `burst` lines, then one every `every` on average; the lines
/// held back are counted into the next one let through. A mistaken key is logged whole; a
/// flood costs the log a line a second, not thousands (journald would drop the overflow, the
/// coordinator's other lines with it).
#[derive(Debug)]
pub struct LineBudget {
    burst: u32,
    every: Duration,
    tokens: u32,
    /// When the last token was earned (or the budget first used).
    earned: Option<Instant>,
    held: u64,
}

impl LineBudget {
    /// A full budget of `burst` lines, refilled with one line every `every`.
    pub const fn new(burst: u32, every: Duration) -> LineBudget {
        LineBudget {
            burst,
            every,
            tokens: burst,
            earned: None,
            held: 0,
        }
    }

    /// Whether to log the line now: `Some(n)` with the `n` lines held back since the last one
    /// let through, or `None` to hold this one back too.
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        let since = self.earned.get_or_insert(now);
        let every = self.every.as_nanos().max(1);
        let earned = now.saturating_duration_since(*since).as_nanos() / every;
        match u32::try_from(earned) {
            Ok(0) => {}
            Ok(earned) if earned < self.burst => {
                self.tokens = (self.tokens + earned).min(self.burst);
                *since += self.every * earned;
            }
            _ => {
                self.tokens = self.burst;
                *since = now;
            }
        }
        if self.tokens == 0 {
            self.held += 1;
            return None;
        }
        self.tokens -= 1;
        Some(std::mem::take(&mut self.held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_lets_a_burst_through_then_a_line_a_period_with_the_count_held_back() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut budget = LineBudget::new(3, second);
        for _ in 0..3 {
            assert_eq!(budget.check(start), Some(0));
        }
        for _ in 0..100 {
            assert_eq!(budget.check(start + second / 2), None);
        }
        assert_eq!(budget.check(start + second), Some(100));
        assert_eq!(budget.check(start + second), None);
        // A quiet spell refills the burst, no more.
        let later = start + 60 * second;
        for _ in 0..3 {
            assert!(budget.check(later).is_some());
        }
        assert_eq!(budget.check(later), None);
    }

    #[test]
    fn a_repeated_message_goes_through_once_a_period_with_the_count_held_back() {
        let start = Instant::now();
        let mut repeats = Repeats::new(Duration::from_secs(60));
        assert_eq!(repeats.check(start), Some(0));
        for s in 1..60 {
            assert_eq!(repeats.check(start + Duration::from_secs(s)), None);
        }
        assert_eq!(repeats.check(start + Duration::from_secs(60)), Some(59));
        assert_eq!(repeats.check(start + Duration::from_secs(61)), None);
        repeats.hold(5);
        assert_eq!(repeats.check(start + Duration::from_secs(120)), Some(6));
        repeats.reset();
        assert_eq!(repeats.check(start + Duration::from_secs(62)), Some(0));
        assert_eq!(Repeats::suffix(0), "");
        assert_eq!(Repeats::suffix(59), " (59 more like it since the last one)");
    }
}
