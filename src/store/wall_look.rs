//! Looks at the wall clock against the monotonic clock, shared by the job store's two clocks
//! (retention's settle times, queued jobs' waits): a wall clock that moved [`STEP_SECS`] or
//! more off the time that passed between two looks was stepped (an NTP step, a `date -s`, a
//! VM paused with the process), and between two looks each clock runs on with the monotonic
//! clock.

use std::time::Instant;

/// A wall clock that moved this many seconds more or less than the monotonic clock between two
/// looks is taken as stepped.
pub const STEP_SECS: f64 = 60.0;

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

impl Step {
    /// The step a wall clock made that moved `drift` seconds more than the monotonic clock
    /// (less, when negative) between two looks.
    pub fn of(drift: f64) -> Step {
        if drift >= STEP_SECS {
            Step::Forward(drift)
        } else if drift <= -STEP_SECS {
            Step::Back(-drift)
        } else {
            Step::None
        }
    }
}

/// The wall clock and the monotonic clock at the last look.
#[derive(Debug, Clone, Copy)]
pub struct LastLook {
    wall: f64,
    mono: Instant,
}

impl LastLook {
    /// A first look: the wall clock read `wall` at the monotonic `mono`.
    pub fn new(wall: f64, mono: Instant) -> LastLook {
        LastLook { wall, mono }
    }

    /// The wall clock at the monotonic `mono` as the last look has it: its reading then, plus
    /// the time that passed since.
    pub fn wall_at(&self, mono: Instant) -> f64 {
        self.wall + mono.saturating_duration_since(self.mono).as_secs_f64()
    }

    /// Looks again, the wall clock reading `now` at the monotonic `mono`: the seconds it moved
    /// more than the time that passed since the last look (less, when negative).
    pub fn look(&mut self, now: f64, mono: Instant) -> f64 {
        let drift = now - self.wall_at(mono);
        *self = LastLook::new(now, mono);
        drift
    }
}
