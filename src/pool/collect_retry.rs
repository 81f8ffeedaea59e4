//! A collection that failed on the worker's side (a download cut or timed out, an error answer,
//! a dropped connection). Before its next try the worker is asked whether it still has the job
//! (`GET /status/{id}`, bounded by `--dispatch-timeout` like every status call): an answer
//! counts as hearing from the worker, so the job is never counted silent while its worker keeps
//! it, however often its downloads fail; a 404 says the worker deleted it, and the job is lost;
//! no answer leaves the silence counted from the worker's last answer about the job, and past
//! `--lost-after` the job is lost. The next try waits a pause (1 s, doubling up to 30 s:
//! [`WorkerEntry::pause_collection`]), so a failing worker is not asked at every tracker round;
//! while the worker is silent the pause ends by the time its silence would pass
//! `--lost-after`.
//!
//! [`WorkerEntry::pause_collection`]: crate::state::pool_state::WorkerEntry::pause_collection

use crate::base::clock::unix_now;
use crate::state::context::Context;
use crate::worker::client::CallError;
use std::time::Instant;

/// What a failed collection leads to.
#[derive(Debug)]
pub enum Next {
    /// The job waits for its next try (or left the table meanwhile).
    Retry,
    /// The worker no longer has the job (404): its results are gone.
    Gone,
    /// The worker did not answer about the job for longer than `--lost-after`: why.
    Silent(String),
}

/// After a try to collect the results of job `id` (`remote` on worker `index` at `endpoint`)
/// failed for `why`: asks the worker whether it still has the job, then pauses the job's
/// collection, or says why the job is lost.
pub fn after_failure(
    ctx: &Context,
    index: usize,
    endpoint: &str,
    id: &str,
    remote: &str,
    why: &str,
) -> Next {
    let asked = ctx.client.status(endpoint, remote);
    let now = Instant::now();
    let mut st = ctx.lock();
    let Some(job) = st.jobs.get_mut(id) else {
        return Next::Retry;
    };
    let unanswered = match asked {
        Ok(_) => {
            job.heard_from_worker(unix_now());
            None
        }
        Err(CallError::Status { code: 404, .. }) => return Next::Gone,
        Err(CallError::Shortage(_)) => {
            job.excuse_silence();
            None
        }
        Err(e) => Some(e),
    };
    let heard_at = job.heard_at.unwrap_or(now);
    let silent_for = now.saturating_duration_since(heard_at);
    let lost_after = ctx.config.lost_after;
    if let Some(e) = &unanswered {
        if silent_for > lost_after {
            return Next::Silent(format!(
                "no answer from its worker for {:.0} s: {why}; asked whether it still has the \
                 job: {e}",
                silent_for.as_secs_f64()
            ));
        }
    }
    let due_by = unanswered.as_ref().map(|_| heard_at + lost_after);
    let pause = st
        .workers
        .get_mut(index)
        .map(|w| w.pause_collection(id, now, due_by));
    drop(st);
    let Some(pause) = pause else {
        return Next::Retry;
    };
    let worker_says = match &unanswered {
        None => "its worker still has it".to_string(),
        Some(e) => format!("its worker did not say whether it still has it ({e})"),
    };
    log::warn!(
        "Job {id}: {why}; {worker_says}; trying again in {:.1} s",
        pause.as_secs_f64()
    );
    Next::Retry
}
