//! The settle times the job store keeps for retention (`finished_at`), held to the time that
//! passed rather than to the wall clock's steps (an NTP step at boot on a board without a
//! real-time clock, an operator's `date -s`):
//! - a settle time is never earlier than the last one recorded, so after a step back the jobs
//!   settled from then on are neither the first forgotten by `--retain-jobs` nor forgotten
//!   early by `--retain-for` (they are kept up to the step's length longer);
//! - a step forward while the coordinator runs moves the settle times of the jobs settled in
//!   this run before it along with the clock, so they are not taken for as old as the step.

use std::time::Instant;

/// A wall clock that moved this many seconds more or less than the monotonic clock between two
/// looks is taken as stepped.
pub const STEP_SECS: f64 = 60.0;

/// The settle times of the jobs settled in this run before a step forward, and how far to move
/// them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shift {
    /// Seconds to add.
    pub by: f64,
    /// The earliest settle time of this run.
    pub from: f64,
    /// The latest settle time before the step.
    pub until: f64,
}

/// What a look at the wall clock found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// No step.
    None,
    /// A step forward of this many seconds.
    Forward(f64),
    /// A step back of this many seconds.
    Back(f64),
}

/// The store writer's settle times and its watch on the wall clock.
#[derive(Debug)]
pub struct SettleClock {
    /// The latest settle time recorded (at start, the store's newest).
    floor: f64,
    /// The settle times of this run are at least this.
    run_from: f64,
    /// The wall clock and the monotonic clock at the last look.
    wall: f64,
    mono: Instant,
    /// A shift not yet written to the store.
    pending: Option<Shift>,
}

impl SettleClock {
    /// A clock over a store whose newest settle time is `newest` (0 when none), the wall clock
    /// reading `now` at the monotonic `mono`.
    pub fn new(newest: f64, now: f64, mono: Instant) -> SettleClock {
        SettleClock {
            floor: newest,
            run_from: newest.max(now),
            wall: now,
            mono,
            pending: None,
        }
    }

    /// The settle time to record for a job that settled at wall time `at`: `at`, or the last
    /// one recorded when that is later.
    pub fn settle_time(&mut self, at: f64) -> f64 {
        self.floor = self.floor.max(at);
        self.floor
    }

    /// Looks at the wall clock (`now`, at the monotonic `mono`): a step forward leaves a shift
    /// pending for the settle times of this run before it (see [`SettleClock::pending`]).
    pub fn look(&mut self, now: f64, mono: Instant) -> Step {
        let expected = self.wall + mono.saturating_duration_since(self.mono).as_secs_f64();
        let drift = now - expected;
        self.wall = now;
        self.mono = mono;
        if drift >= STEP_SECS {
            let shift = match self.pending {
                Some(earlier) => Shift {
                    by: earlier.by + drift,
                    ..earlier
                },
                None => Shift {
                    by: drift,
                    from: self.run_from,
                    until: self.floor,
                },
            };
            self.pending = Some(shift);
            Step::Forward(drift)
        } else if drift <= -STEP_SECS {
            Step::Back(-drift)
        } else {
            Step::None
        }
    }

    /// The shift to write, if any.
    pub fn pending(&self) -> Option<Shift> {
        self.pending
    }

    /// The pending shift was written: the settle times of this run moved by it.
    pub fn shifted(&mut self) {
        if let Some(shift) = self.pending.take() {
            self.run_from += shift.by;
            self.floor = self.floor.max(shift.until + shift.by);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn settle_times_never_go_back() {
        let start = Instant::now();
        let mut clock = SettleClock::new(1_000.0, 2_000.0, start);
        assert_eq!(clock.settle_time(2_010.0), 2_010.0);
        // The clock was stepped back an hour: later settles keep their order.
        assert_eq!(
            clock.look(2_020.0 - 3_600.0, start + Duration::from_secs(20)),
            Step::Back(3_600.0)
        );
        assert_eq!(clock.settle_time(2_025.0 - 3_600.0), 2_010.0);
        assert_eq!(clock.pending(), None);
        // A store whose newest is ahead of the clock at start: the same.
        let mut behind = SettleClock::new(5_000.0, 2_000.0, start);
        assert_eq!(behind.settle_time(2_001.0), 5_000.0);
    }

    #[test]
    fn a_step_forward_moves_this_runs_settle_times_with_it() {
        let start = Instant::now();
        let mut clock = SettleClock::new(1_000.0, 2_000.0, start);
        clock.settle_time(2_005.0);
        clock.settle_time(2_009.0);
        let a_second = start + Duration::from_secs(10);
        assert_eq!(clock.look(2_010.5, a_second), Step::None);
        // A day forward.
        let after = a_second + Duration::from_secs(1);
        assert_eq!(
            clock.look(2_011.5 + 86_400.0, after),
            Step::Forward(86_400.0)
        );
        let shift = Shift {
            by: 86_400.0,
            from: 2_000.0,
            until: 2_009.0,
        };
        assert_eq!(clock.pending(), Some(shift));
        // Another before the first was written: one shift, both steps long.
        let later = after + Duration::from_secs(1);
        assert_eq!(
            clock.look(2_012.5 + 2.0 * 86_400.0, later),
            Step::Forward(86_400.0)
        );
        assert_eq!(
            clock.pending(),
            Some(Shift {
                by: 2.0 * 86_400.0,
                ..shift
            })
        );
        clock.shifted();
        assert_eq!(clock.pending(), None);
        assert_eq!(clock.settle_time(2_013.0), 2_009.0 + 2.0 * 86_400.0);
        assert_eq!(
            clock.settle_time(2_014.0 + 2.0 * 86_400.0),
            2_014.0 + 2.0 * 86_400.0
        );
    }
}
