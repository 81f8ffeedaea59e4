//! Reruns of lost jobs. At most once is the rule: a job whose run was lost (its worker died,
//! forgot it, or never answered its submit) may or may not have run, so it is not sent again.
//! A job submitted with `reruns=N` says that running it twice does no harm: after a lost run
//! it goes back to the head of the queue, up to N times, on another worker when there is one
//! (Nomad's `reschedule` is the model). Its upload is kept until it ends for that.

use crate::base::clock::unix_now;
use crate::base::job::{Job, LostRun};
use crate::state::context::Context;
use crate::state::pool_state::PoolState;
use crate::worker::identity::short_id;
use std::time::Instant;

/// Whether `job`, whose run was just lost, may run again: it has reruns left, it did not end on
/// its worker, and its upload is still at hand.
pub fn may_run_again(ctx: &Context, job: &Job) -> bool {
    if job.reruns_left() == 0 || job.status.is_final() {
        return false;
    }
    match ctx.spool.upload_source(&job.id) {
        Ok(_) => true,
        Err(e) => {
            log::warn!("Job {} cannot run again: {e}", job.id);
            false
        }
    }
}

/// Puts job `id`, whose run was just lost (`why`), back at the head of the queue when it has
/// not ended on its worker, has reruns left and its upload is still at hand; returns whether it
/// did. (A job that completed or failed there and whose results were then lost did run: it
/// stays lost.) The caller frees the run's slot and stops following the run either way, ends
/// the job when this returns false, and records it.
pub fn requeue_if_allowed(ctx: &Context, st: &mut PoolState, id: &str, why: &str) -> bool {
    let Some(job) = st.jobs.get(id).filter(|job| may_run_again(ctx, job)) else {
        return false;
    };
    let left = job.reruns_left();
    // The worker's job id is a key to the job's files there: kept in the record, never in
    // the text that clients see (only the current run's id is hidden from them).
    let shown = match job.remote_job_id.as_deref() {
        Some(remote) if !remote.is_empty() => why.replace(remote, "hidden"),
        _ => why.to_string(),
    };
    let at = unix_now();
    let run = LostRun {
        worker_id: job.worker_id.clone(),
        remote_job_id: job.remote_job_id.clone(),
        error: shown.clone(),
        at,
        mark: ctx.store.wait_clock().mark_beside(at),
    };
    let on = run
        .worker_id
        .as_deref()
        .map(|w| format!(" on worker {}...", short_id(w)))
        .unwrap_or_default();
    let allowed = job.reruns.as_ref().map_or(0, |r| r.allowed);
    let rerun = allowed - left + 1;
    st.requeue_lost_run(id, run, Instant::now());
    st.metrics.job_rerun();
    ctx.events.run_again(
        id,
        format!("[STATUS] Job lost{on}: {shown}; queued again (rerun {rerun} of {allowed})\n"),
    );
    log::warn!("Job {id} was lost{on} ({why}); queued again for rerun {rerun} of {allowed}");
    ctx.wake_scheduler();
    true
}
