//! The settle times the job store keeps for retention (`finished_at`), held to the time that
//! passed rather than to the wall clock's steps (an NTP step at boot on a board without a
//! real-time clock, an operator's `date -s`, one set wrong and then right). They are read from
//! a clock of their own: the wall clock plus how far it is [`SettleClock::ahead`] of it, which
//! runs on with the monotonic clock between two looks at the wall clock, so a step moves it
//! only at a look:
//! - a step back leaves it where it was: it is ahead of the wall clock by the step, so the jobs
//!   that settle from then on are the newest, and none is taken for older than it is;
//! - a step forward takes up what it is ahead first (a step back set right again, or a store
//!   whose newest settle time was ahead of the wall clock at start moves nothing); past that,
//!   the settle times of this run move with it, so no job settled in this run is taken for as
//!   old as the step, in this run or after a restart, while those settled before this run age
//!   by it (the time it was down, which an NTP step at boot makes up).

use crate::store::wall_look::{LastLook, Step};
use std::time::Instant;

/// The store writer's clock of settle times and its watch on the wall clock.
#[derive(Debug)]
pub struct SettleClock {
    /// Seconds this clock is ahead of the wall clock (never behind it).
    ahead: f64,
    /// The settle times of this run are at least this.
    run_from: f64,
    /// The latest settle time recorded (at start, the store's newest).
    floor: f64,
    /// The last look at the wall clock.
    last: LastLook,
    /// Seconds to add to this run's settle times, not yet written.
    pending: Option<f64>,
}

impl SettleClock {
    /// A clock over a store whose newest settle time is `newest` (0 when none), the wall clock
    /// reading `now` at the monotonic `mono`: it goes on from `newest` when that is ahead of
    /// `now` (the wall clock was set back while the coordinator was down), else from `now` (the
    /// time it was down counts as time that passed).
    pub fn new(newest: f64, now: f64, mono: Instant) -> SettleClock {
        SettleClock {
            ahead: (newest - now).max(0.0),
            run_from: newest.max(now),
            floor: newest,
            last: LastLook::new(now, mono),
            pending: None,
        }
    }

    /// This clock's time at the monotonic `mono`: as of the last look, plus the time since.
    pub fn at(&self, mono: Instant) -> f64 {
        self.last.wall_at(mono) + self.ahead
    }

    /// The settle time to record for a job that settles at the monotonic `mono`: never
    /// earlier than the last one recorded, and while a shift is pending, on the clock before
    /// it (the shift moves it along once written).
    pub fn settle_time(&mut self, mono: Instant) -> f64 {
        let before_shift = self.at(mono) - self.pending.unwrap_or(0.0);
        self.floor = self.floor.max(before_shift);
        self.floor
    }

    /// The earliest settle time of this run: the shift moves those from it on.
    pub fn run_from(&self) -> f64 {
        self.run_from
    }

    /// Looks at the wall clock (`now`, at the monotonic `mono`): a step forward past what this
    /// clock is ahead leaves a shift of this run's settle times pending (see
    /// [`SettleClock::pending`]).
    pub fn look(&mut self, now: f64, mono: Instant) -> Step {
        let drift = self.last.look(now, mono);
        let step = Step::of(drift);
        if step != Step::None {
            self.ahead -= drift;
        }
        if self.ahead < 0.0 {
            self.pending = Some(self.pending.unwrap_or(0.0) - self.ahead);
            self.ahead = 0.0;
        }
        step
    }

    /// The seconds to add to the settle times of this run, if any.
    pub fn pending(&self) -> Option<f64> {
        self.pending
    }

    /// The pending shift was written: this run's settle times moved by it.
    pub fn shifted(&mut self) {
        if let Some(by) = self.pending.take() {
            self.floor += by;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_step_back_moves_no_settle_time() {
        let start = Instant::now();
        let mut clock = SettleClock::new(1_000.0, 2_000.0, start);
        assert_eq!(clock.settle_time(start + secs(10)), 2_010.0);
        // The clock was stepped back an hour: the time that passed goes on.
        assert_eq!(
            clock.look(2_020.0 - 3_600.0, start + secs(20)),
            Step::Back(3_600.0)
        );
        assert_eq!(clock.settle_time(start + secs(25)), 2_025.0);
        assert_eq!(clock.pending(), None);
        // Set right again: nothing moves (a job settled meanwhile was taken for years ahead).
        assert_eq!(
            clock.look(2_030.0, start + secs(30)),
            Step::Forward(3_600.0)
        );
        assert_eq!(clock.pending(), None);
        assert_eq!(clock.settle_time(start + secs(31)), 2_031.0);
        // A store whose newest is ahead of the clock at start goes on from it.
        let mut behind = SettleClock::new(5_000.0, 2_000.0, start);
        assert_eq!(behind.settle_time(start + secs(1)), 5_001.0);
    }

    #[test]
    fn a_step_forward_moves_this_runs_settle_times_with_it() {
        let start = Instant::now();
        let mut clock = SettleClock::new(1_000.0, 2_000.0, start);
        clock.settle_time(start + secs(5));
        assert_eq!(clock.look(2_010.5, start + secs(10)), Step::None);
        // A day forward: a job that settles before the look is on the old clock still.
        assert_eq!(clock.settle_time(start + secs(11)), 2_011.5);
        let day = 86_400.0;
        assert_eq!(
            clock.look(2_012.5 + day, start + secs(12)),
            Step::Forward(day)
        );
        assert_eq!(clock.pending(), Some(day));
        // A job that settles before the shift is written is on the clock before it still.
        assert_eq!(clock.settle_time(start + secs(12)), 2_012.5);
        assert_eq!(clock.run_from(), 2_000.0);
        // Another before the first was written: one shift, both steps long.
        assert_eq!(
            clock.look(2_013.5 + 2.0 * day, start + secs(13)),
            Step::Forward(day)
        );
        assert_eq!(clock.pending(), Some(2.0 * day));
        clock.shifted();
        assert_eq!(clock.pending(), None);
        assert_eq!(clock.settle_time(start + secs(14)), 2_014.5 + 2.0 * day);
    }

    #[test]
    fn a_store_ahead_at_start_takes_a_step_forward_up_first() {
        // A board that starts with its clock six years behind its store's newest settle time,
        // then gets NTP: its settle times go on from the store's, and the step moves none.
        let start = Instant::now();
        let years = 6.0 * 31_536_000.0;
        let mut clock = SettleClock::new(2_000.0 + years, 2_100.0, start);
        assert_eq!(clock.settle_time(start + secs(10)), 2_010.0 + years);
        assert_eq!(
            clock.look(2_120.0 + years, start + secs(20)),
            Step::Forward(years)
        );
        // What it was ahead beyond the step (the time it was down) moves this run's times.
        assert_eq!(clock.pending(), Some(100.0));
        clock.shifted();
        assert_eq!(clock.settle_time(start + secs(21)), 2_121.0 + years);
    }
}
