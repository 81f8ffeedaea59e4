//! The clock that queued jobs' waits are read on after a restart (their queue timeout, their
//! priority aging, their place in the queue): the wall clock less the steps it made while a
//! coordinator ran on this store (an NTP step, a `date -s`), so that a step made while it ran
//! reads as no waiting, while the time it was down still counts by the wall clock. A job's
//! marks (`submit_mark`, `level_since`, a lost run's `mark`) are taken on it; the times shown
//! to clients stay the wall clock's.
//!
//! Between two looks at the wall clock it runs on with the monotonic clock, so a mark taken
//! after a step and before the look that finds it reads as one taken before (no step counted
//! twice or not at all). The steps seen are written to the store (table `wall_steps`, one row)
//! by the writer's sweep that found them, or at the store's close after one more look; a
//! `kill -9` in the second between a step and that sweep leaves the step counted as waiting,
//! as before there was this clock.

use crate::base::sync::lock;
use crate::store::wall_look::{LastLook, Step};
use std::sync::Mutex;
use std::time::Instant;

/// A mark this close to the wall clock's reading beside it is left out (see
/// [`WaitClock::mark_beside`]).
pub const MARK_SECS: f64 = 1.0;

/// The steps' table, created by the job store's migration to schema version 10: the seconds
/// the wall clock stepped in all while a coordinator ran on the store (forward positive).
pub const WALL_STEPS_SCHEMA: &str = "
CREATE TABLE wall_steps (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    secs REAL NOT NULL
);
INSERT INTO wall_steps (id, secs) VALUES (1, 0);
";

/// The wait clock of a store, shared by every thread that marks a job and by the store's
/// writer, which looks at the wall clock.
#[derive(Debug)]
pub struct WaitClock {
    reading: Mutex<Reading>,
}

#[derive(Debug)]
struct Reading {
    /// The wall clock's steps in all, as this clock knows them.
    steps: f64,
    /// The steps as last written to the store.
    written: f64,
    /// The last look at the wall clock.
    last: LastLook,
}

impl WaitClock {
    /// The clock of a store whose recorded steps are `steps`, the wall clock reading `now` at
    /// the monotonic `mono`.
    pub fn new(steps: f64, now: f64, mono: Instant) -> WaitClock {
        WaitClock {
            reading: Mutex::new(Reading {
                steps,
                written: steps,
                last: LastLook::new(now, mono),
            }),
        }
    }

    /// This clock's time at the monotonic `mono`.
    pub fn at(&self, mono: Instant) -> f64 {
        let r = lock(&self.reading);
        r.last.wall_at(mono) - r.steps
    }

    /// This clock's time now.
    pub fn now(&self) -> f64 {
        self.at(Instant::now())
    }

    /// This clock's time now, to keep beside `wall`, the wall clock read a moment ago; `None`
    /// when they are less than [`MARK_SECS`] apart (`wall` stands for it: a store whose wall
    /// clock never stepped keeps no mark in a job's record).
    pub fn mark_beside(&self, wall: f64) -> Option<f64> {
        let now = self.now();
        ((now - wall).abs() >= MARK_SECS).then_some(now)
    }

    /// Looks at the wall clock (`now`, at the monotonic `mono`): a step (at least
    /// [`STEP_SECS`](crate::store::wall_look::STEP_SECS) more or less than the time that
    /// passed) is added to the steps; a smaller difference is the wall clock's to keep.
    pub fn look(&self, now: f64, mono: Instant) -> Step {
        let mut r = lock(&self.reading);
        let drift = r.last.look(now, mono);
        let step = Step::of(drift);
        if step != Step::None {
            r.steps += drift;
        }
        step
    }

    /// The steps in all, when they changed since last written.
    pub fn unwritten(&self) -> Option<f64> {
        let r = lock(&self.reading);
        (r.steps != r.written).then_some(r.steps)
    }

    /// The steps `steps` were written to the store.
    pub fn written(&self, steps: f64) {
        lock(&self.reading).written = steps;
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
    fn a_step_while_running_is_no_time_waited() {
        let start = Instant::now();
        let clock = WaitClock::new(0.0, 2_000.0, start);
        let submitted = clock.at(start + secs(5));
        assert_eq!(submitted, 2_005.0);
        // A day forward: a mark taken before the look that finds it reads as before the step.
        let day = 86_400.0;
        let in_the_gap = clock.at(start + secs(8));
        assert_eq!(
            clock.look(2_010.0 + day, start + secs(10)),
            Step::Forward(day)
        );
        assert_eq!(in_the_gap, 2_008.0);
        assert_eq!(clock.at(start + secs(20)) - submitted, 15.0);
        assert_eq!(clock.unwritten(), Some(day));
        clock.written(day);
        assert_eq!(clock.unwritten(), None);
        // A restart an hour later by the wall clock goes on from the steps written: the hour
        // it was down counts, the day's step does not.
        let restarted = WaitClock::new(day, 2_020.0 + day + 3_600.0, start + secs(30));
        assert_eq!(restarted.at(start + secs(30)) - submitted, 3_615.0);
    }

    #[test]
    fn a_mark_is_kept_only_where_the_wall_clock_reads_otherwise() {
        let now = crate::base::clock::unix_now();
        let clock = WaitClock::new(0.0, now, Instant::now());
        assert_eq!(clock.mark_beside(now), None);
        let stepped = WaitClock::new(3_600.0, now, Instant::now());
        let mark = stepped.mark_beside(now).unwrap_or_default();
        assert!((mark - (now - 3_600.0)).abs() < MARK_SECS, "{mark}");
    }

    #[test]
    fn a_step_back_and_small_differences() {
        let start = Instant::now();
        let clock = WaitClock::new(0.0, 2_000.0, start);
        assert_eq!(
            clock.look(2_010.0 - 3_600.0, start + secs(10)),
            Step::Back(3_600.0)
        );
        assert_eq!(clock.at(start + secs(10)), 2_010.0);
        assert_eq!(clock.unwritten(), Some(-3_600.0));
        // Under a minute off is the wall clock's: this clock follows it.
        assert_eq!(clock.look(2_050.0 - 3_600.0, start + secs(20)), Step::None);
        assert_eq!(clock.at(start + secs(20)), 2_050.0);
    }
}
