//! Recovery at start: the jobs the store holds that had not settled when the coordinator last
//! stopped. Queued jobs wait again in submission order with their uploads; jobs a worker
//! accepted are followed again by polling, not on a stream (and hold their worker's slot from
//! the start): a stream opened while its job runs leaves sandrun to write the job's last frames
//! to it, and should the coordinator stop before the job ends, they would go to a closed
//! connection, which kills sandrun (SIGPIPE); sandrun answers a `/status` sent during a run at
//! its end (it waits for the jobs lock), so polling sees the end as soon; a job whose
//! submit was sent but whose answer was never recorded is lost (never sent twice), or queued
//! again when it asked for reruns; finished jobs whose results were not collected yet are
//! collected; cancelled jobs still ending on their workers hold their slots until they end there.
//! The dashboard's recent jobs start as the newest ones by submission: recovered or settled.

use crate::base::clock::unix_now;
use crate::base::job::{Job, PoolStatus, UploadAt};
use crate::pool::{rerun, reused_ids, tracker};
use crate::state::context::Context;
use crate::state::metrics::Metrics;
use crate::state::pool_state::{PoolState, RECENT_JOBS};
use crate::store::jobs_db::{ListFilter, StoredJob};
use std::sync::Arc;
use std::time::Duration;

/// What recovery found, for the log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Jobs queued again.
    pub queued: usize,
    /// Jobs followed again on their workers.
    pub followed: usize,
    /// Finished jobs whose results are collected again.
    pub to_collect: usize,
    /// Jobs that ended as lost or failed at recovery.
    pub ended: usize,
}

/// Ends `job` at `status` for `why`; a job that had not ended yet is counted in the figures
/// (`/metrics`, `/activity`) as a job ending now.
fn end(metrics: &Metrics, job: &mut Job, status: PoolStatus, why: String) {
    if !job.status.is_final() {
        metrics.job_finished(status, job.submitted_at, job.dispatched_at);
    }
    job.status = status;
    job.error = Some(why);
    job.completed_at.get_or_insert_with(unix_now);
}

/// A job whose run was lost while the coordinator was down (`why`): queued again when it may
/// run again (see [`rerun::may_run_again`]), else lost, `lost_tail` completing the error.
/// Returns whether it was lost.
fn lose_or_rerun(
    ctx: &Context,
    st: &mut PoolState,
    mut job: Job,
    why: String,
    lost_tail: &str,
    settle: &mut Vec<String>,
    counts: &mut Recovered,
) -> bool {
    let id = job.id.clone();
    if rerun::may_run_again(ctx, &job) {
        // Back in the table as it was (counted in its status), then moved to the queue.
        st.restore(job);
        if rerun::requeue_if_allowed(ctx, st, &id, &why) {
            counts.queued += 1;
            ctx.record(st, &id);
        }
        return false;
    }
    end(
        &st.metrics,
        &mut job,
        PoolStatus::Lost,
        format!("{why}{lost_tail}"),
    );
    settle.push(id);
    st.restore(job);
    true
}

/// The index of the worker that job `job` was sent to: listed with its id, at the endpoint
/// it was sent to (any, in a record of an earlier version that did not keep it). A worker
/// listed at another endpoint since is another worker: its own job ids may name other jobs.
fn job_worker(st: &PoolState, job: &Job) -> Option<usize> {
    let index = st.worker_index(job.worker_id.as_deref()?)?;
    let listed_at = &st.workers[index].spec.endpoint;
    job.worker_endpoint
        .as_ref()
        .is_none_or(|at| at == listed_at)
        .then_some(index)
}

/// Why the worker of `job` is not there to follow it after a restart.
fn worker_gone(st: &PoolState, job: &Job) -> String {
    let on = job.worker_id.as_deref().unwrap_or_default();
    let listed = st.worker_index(on).map(|i| &st.workers[i].spec.endpoint);
    match (listed, &job.worker_endpoint) {
        (Some(now), Some(then)) => {
            format!("its worker {on} is listed at {now} now, not at {then} where the job was sent")
        }
        _ => format!("its worker {on} is no longer in the workers file"),
    }
}

/// When a queued job took its place in its level, on the job store's wait clock: its priority
/// change, else its submission (`submitted`: its submission, held to no earlier than those
/// submitted before it; a change is held to no earlier than that too, so a change made after
/// the wall clock was stepped back does not put the job ahead of those submitted before it).
fn queue_place(job: &Job, submitted: f64) -> f64 {
    job.level_since
        .map_or(submitted, |since| since.max(submitted))
}

/// Counts `job`, which its worker `index` runs, against the worker's `max_concurrent_jobs` (and
/// its source address's share) from the first moment, as its dispatch did.
fn hold_slot(st: &mut PoolState, index: usize, job: &Job) {
    let w = &mut st.workers[index];
    w.active_jobs += 1;
    if let Some(source) = w.source_mut(job.source_address) {
        source.in_flight += 1;
    }
}

/// The ids of the newest [`RECENT_JOBS`] of `known` (submission time, id; a job may be there
/// twice), newest first.
fn newest_jobs(mut known: Vec<(f64, String)>) -> Vec<String> {
    known.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
    known.dedup_by(|a, b| a.1 == b.1);
    known.truncate(RECENT_JOBS);
    known.into_iter().map(|(_, id)| id).collect()
}

/// The newest jobs by submission, newest first: the unsettled `recovered` ones (submission
/// time, id) and the store's newest rows (a store that cannot list them leaves the recovered
/// ones alone, logged).
fn recent_jobs(ctx: &Context, mut recovered: Vec<(f64, String)>) -> Vec<String> {
    match ctx.store.list(&ListFilter::default(), None, RECENT_JOBS) {
        Ok(listed) => recovered.extend(listed.into_iter().map(|job| (job.submitted_at, job.id))),
        Err(e) => log::warn!("The dashboard's recent jobs start without the settled ones: the job store could not list them: {e}"),
    }
    newest_jobs(recovered)
}

/// Puts the unsettled jobs `stored` back into the table and starts following them.
pub fn recover(ctx: &Arc<Context>, stored: Vec<StoredJob>) -> Recovered {
    let mut counts = Recovered::default();
    let mut uploads: Vec<(String, UploadAt)> = Vec::new();
    let mut jobs = Vec::new();
    let mut submitted = Vec::new();
    for StoredJob { job } in stored {
        submitted.push((job.submitted_at, job.id.clone()));
        // A job on a worker that may run again after a lost run keeps its upload too.
        if let (true, Some(at)) = (job.upload_needed_after_restart(), &job.upload_at) {
            uploads.push((job.id.clone(), at.clone()));
        }
        jobs.push(job);
    }
    let lost_uploads = ctx.spool.adopt_uploads(uploads);
    // Small uploads kept in the rows, read one at a time in submission order: held within
    // --upload-memory-bytes, the rest left in their rows, so memory stays bounded however many
    // jobs wait. A row that cannot be read is passed over (logged); its job fails below.
    let in_rows = jobs
        .iter()
        .filter(|job| job.upload_needed_after_restart() && job.upload_at.is_none());
    for job in in_rows {
        match ctx.store.row_upload(&job.id) {
            Ok(Some(bytes)) => ctx.spool.adopt_from_row(&job.id, bytes.to_vec()),
            Ok(None) => {}
            Err(e) => log::error!(
                "Could not read the upload of job {} that the job store holds: {e}",
                job.id
            ),
        }
    }
    let recent = recent_jobs(ctx, submitted);
    let now = unix_now();
    let mut st = ctx.lock();
    let mut settle = Vec::new();
    let mut queued = Vec::new();
    let mut trackers = Vec::new();
    for mut job in jobs {
        let id = job.id.clone();
        let worker = job_worker(&st, &job);
        match job.status {
            PoolStatus::Queued => {
                let missing = lost_uploads
                    .iter()
                    .find(|(lost, _)| *lost == id)
                    .map(|(_, why)| why.clone())
                    .or_else(|| {
                        (job.upload_at.is_none() && ctx.spool.upload_source(&id).is_err())
                            .then(|| "its upload is not in the job store".to_string())
                    });
                if let Some(why) = missing {
                    end(
                        &st.metrics,
                        &mut job,
                        PoolStatus::Failed,
                        format!(
                            "the upload of this job could not be read back after a restart: {why}"
                        ),
                    );
                    settle.push(id);
                    st.restore(job);
                } else {
                    counts.queued += 1;
                    queued.push(job);
                }
            }
            PoolStatus::Dispatched | PoolStatus::Running => match (&job.remote_job_id, worker) {
                (None, _) => {
                    let on = job.worker_id.clone().unwrap_or_default();
                    let why = format!("the coordinator stopped while this job's submit to worker {on} was in flight and its answer was never recorded; it may or may not run there");
                    let lost = lose_or_rerun(
                        ctx,
                        &mut st,
                        job,
                        why,
                        ", so it is not sent again",
                        &mut settle,
                        &mut counts,
                    );
                    // Counted on its worker, which is still listed, as a loss found running.
                    if let Some(index) = worker.filter(|_| lost) {
                        st.workers[index].counters.lost += 1;
                    }
                }
                (Some(_), None) => {
                    let why = format!(
                        "{}, so it cannot be followed after the restart",
                        worker_gone(&st, &job)
                    );
                    lose_or_rerun(ctx, &mut st, job, why, "", &mut settle, &mut counts);
                }
                (Some(_), Some(index)) => {
                    counts.followed += 1;
                    job.heard_from_worker(now);
                    hold_slot(&mut st, index, &job);
                    let w = &mut st.workers[index];
                    w.tracked.push(id.clone());
                    trackers.push(index);
                    st.restore(job);
                }
            },
            PoolStatus::Cancelled if job.ending_on_worker => {
                match (&job.remote_job_id, worker) {
                    (Some(_), Some(index)) => {
                        // Its slot is held until it ends there, then it is deleted there.
                        counts.to_collect += 1;
                        job.heard_from_worker(now);
                        hold_slot(&mut st, index, &job);
                        st.workers[index].tracked.push(id);
                        trackers.push(index);
                        st.restore(job);
                    }
                    (remote, _) => {
                        job.ending_on_worker = false;
                        let on = job.worker_id.clone().unwrap_or_default();
                        job.error = Some(match remote {
                            None => format!("cancelled; the coordinator stopped while its submit to worker {on} was in flight and its answer was never recorded: it may or may not run there, and is not deleted there"),
                            Some(_) => format!("cancelled; {}, so it is not deleted there", worker_gone(&st, &job)),
                        });
                        settle.push(id);
                        st.restore(job);
                    }
                }
            }
            _ if !job.is_settled() => match worker {
                Some(index) => {
                    counts.to_collect += 1;
                    job.heard_from_worker(now);
                    st.workers[index].tracked.push(id);
                    trackers.push(index);
                    st.restore(job);
                }
                None => {
                    let why = format!(
                        "{}, so its results cannot be collected",
                        worker_gone(&st, &job)
                    );
                    end(&st.metrics, &mut job, PoolStatus::Lost, why);
                    settle.push(id);
                    st.restore(job);
                }
            },
            _ => {
                settle.push(id);
                st.restore(job);
            }
        }
    }
    // In submission order, but for a job whose priority was changed: at the back of its new
    // level as of that change, as it was before the stop; and a job that aging lifted stands
    // in its level as of when it got there. The store gives them in submission order; a
    // submission time earlier than one before it (a wall clock stepped back between two
    // submits) counts as that one, so the sort keeps their order. Waits are read on the store's
    // wait clock: a step of the wall clock while the coordinator ran is no time waited.
    let now = std::time::Instant::now();
    let wait_now = ctx.store.wait_clock().at(now);
    let mut latest = f64::MIN;
    let mut placed: Vec<(f64, Duration, Job)> = queued
        .into_iter()
        .map(|job| {
            latest = latest.max(job.submitted_on_wait_clock());
            let place = queue_place(&job, latest);
            // The time it waited in its level before the stop counts towards its aging.
            let waited = Duration::try_from_secs_f64(wait_now - place).unwrap_or_default();
            let (_, aged) = st.queue.aged(job.priority, waited);
            (place + aged.as_secs_f64(), waited, job)
        })
        .collect();
    placed.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (_, waited, job) in placed {
        let queued_for =
            Duration::try_from_secs_f64(wait_now - job.wait_began()).unwrap_or_default();
        st.enqueue_waited(job, now, waited, queued_for);
    }
    st.recent.refill(&recent);
    counts.ended = settle.len();
    for id in &settle {
        ctx.record(&st, id);
    }
    trackers.sort_unstable();
    trackers.dedup();
    let reused: Vec<_> = trackers
        .iter()
        .map(|index| (*index, reused_ids::recovered_holders(&mut st, *index)))
        .collect();
    for index in &trackers {
        st.workers[*index].tracker_running = true;
    }
    drop(st);
    for (index, earlier) in reused {
        reused_ids::lose(ctx, index, earlier);
    }
    for index in trackers {
        tracker::start(ctx, index);
    }
    for id in &settle {
        ctx.spool.remove_upload(id);
    }
    ctx.wake_scheduler();
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_jobs_are_kept_once_each_newest_first() {
        let mut known: Vec<(f64, String)> = (0..RECENT_JOBS + 5)
            .map(|i| (100.0 + i as f64, format!("pool-{i:02}")))
            .collect();
        // Listed by the store too, and two submitted in the same instant.
        known.push((110.0, "pool-10".to_string()));
        known.push((100.0 + (RECENT_JOBS + 4) as f64, "pool-99".to_string()));
        let newest = newest_jobs(known);
        assert_eq!(newest.len(), RECENT_JOBS);
        assert_eq!(newest[0], "pool-99");
        assert_eq!(newest[1], format!("pool-{}", RECENT_JOBS + 4));
        assert_eq!(newest[RECENT_JOBS - 1], "pool-06");
        let mut unique = newest.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), RECENT_JOBS);
    }
}
