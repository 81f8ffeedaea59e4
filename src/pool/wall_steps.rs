//! The wall clock's steps while the coordinator runs (an NTP step at boot on a board without a
//! real-time clock, an operator's `date -s`): the wall-clock times of the jobs in flight move
//! with each step, and their records with them, so that what they waited and took counts the
//! time that passed, also after a restart, which reads a queued job's wait (its queue timeout,
//! its aging) from its record. The health checker looks on its beat.

use crate::base::clock::{unix_now, WallWatch, STEP_SECS};
use crate::state::context::Context;
use std::time::Instant;

/// Looks at the wall clock; after a step, moves the times of every job in flight by it.
pub fn look(ctx: &Context, watch: &mut WallWatch) {
    let drift = watch.drift(unix_now(), Instant::now());
    if drift.abs() < STEP_SECS {
        return;
    }
    let st = &mut *ctx.lock();
    let in_flight: Vec<String> = st
        .jobs
        .iter()
        .filter(|(_, job)| !job.is_settled())
        .map(|(id, _)| id.clone())
        .collect();
    for id in &in_flight {
        if let Some(job) = st.jobs.get_mut(id) {
            job.shift_times(drift);
        }
        ctx.record_moved_times(st, id);
    }
    log::warn!(
        "The wall clock moved {drift:+.0} s beyond the time that passed: the times of the {} jobs in flight move with it, so their waits count the time that passed",
        in_flight.len()
    );
}
