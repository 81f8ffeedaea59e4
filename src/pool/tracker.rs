//! Trackers: one thread per worker that has jobs, following each of them with `/status` every
//! track interval (and at once after a dispatch to the worker or a job's end), freeing the slot
//! the moment a job ends, then collecting its results. A worker
//! that blocks (sandrun holds its lock while a job runs) only delays its own tracker.

use crate::base::clock::unix_now;
use crate::base::job::{Collection, PoolStatus};
use crate::pool::collect::{self, CollectError};
use crate::state::context::Context;
use crate::state::pool_state::PoolState;
use crate::worker::client::CallError;
use crate::worker::identity::short_id;
use serde_json::Value;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread;

const TRACKER_STACK: usize = 256 * 1024;

/// A snapshot of one followed job.
struct Followed {
    id: String,
    remote: String,
    status: PoolStatus,
    /// The worker's last status answer, for a job that ended (its results still to collect).
    worker_status: Option<Value>,
    last_contact: f64,
    /// A cancelled job still holding its slot: followed only until the worker ends it.
    ending_on_worker: bool,
}

/// Starts the tracker thread of worker `index` (its `tracker_running` flag is already set).
pub fn start(ctx: &Arc<Context>, index: usize) {
    let thread_ctx = Arc::clone(ctx);
    let spawned = thread::Builder::new()
        .name(format!("tracker-{index}"))
        .stack_size(TRACKER_STACK)
        .spawn(move || run(&thread_ctx, index));
    if let Err(e) = spawned {
        log::error!(
            "Could not start the tracker of worker {index}: {e}; retrying at the next dispatch"
        );
        ctx.lock().workers[index].tracker_running = false;
    }
}

fn run(ctx: &Context, index: usize) {
    let wake = ctx.lock().workers[index].tracker_wake.clone();
    loop {
        let (endpoint, jobs) = {
            let mut st = ctx.lock();
            let w = &mut st.workers[index];
            if w.tracked.is_empty() {
                w.tracker_running = false;
                return;
            }
            let endpoint = w.spec.endpoint.clone();
            let ids = w.tracked.clone();
            let jobs: Vec<Followed> = ids
                .into_iter()
                .filter_map(|id| {
                    let job = st.jobs.get(&id)?;
                    Some(Followed {
                        remote: job.remote_job_id.clone()?,
                        status: job.status,
                        worker_status: job
                            .status
                            .is_final()
                            .then(|| job.worker_status.clone())
                            .flatten(),
                        last_contact: job.last_contact.unwrap_or_else(unix_now),
                        ending_on_worker: job.ending_on_worker,
                        id,
                    })
                })
                .collect();
            (endpoint, jobs)
        };
        let mut any_ended = false;
        for job in jobs {
            match catch_unwind(AssertUnwindSafe(|| follow(ctx, index, &endpoint, &job))) {
                Ok(ended) => any_ended |= ended,
                Err(_) => log::error!("Following job {} panicked; it will be retried", job.id),
            }
        }
        if !any_ended {
            wake.wait(ctx.config.track_interval);
        }
    }
}

/// Polls one job (or retries its collection); returns true when the job just ended on its worker,
/// so the tracker goes round again at once: a fast worker's other jobs may have ended too.
fn follow(ctx: &Context, index: usize, endpoint: &str, job: &Followed) -> bool {
    if job.status == PoolStatus::Cancelled {
        return follow_cancelled(ctx, index, endpoint, job);
    }
    if job.status.is_final() {
        if let Some(status) = &job.worker_status {
            collect_results(ctx, index, endpoint, job, status);
        }
        return false;
    }
    match ctx.client.status(endpoint, &job.remote) {
        Ok(status) => {
            let now_status = match status.get("status").and_then(Value::as_str) {
                Some("running") => PoolStatus::Running,
                Some("completed") => PoolStatus::Completed,
                Some("failed") => PoolStatus::Failed,
                _ => PoolStatus::Dispatched,
            };
            let finished = record_status(ctx, index, &job.id, now_status, status.clone());
            if finished {
                collect_results(ctx, index, endpoint, job, &status);
            }
            finished
        }
        Err(CallError::Status { code: 404, .. }) => {
            lose(
                ctx,
                index,
                &job.id,
                "the worker no longer has the job (HTTP 404) and its results were not collected"
                    .to_string(),
            );
            true
        }
        Err(e) => {
            give_up_if_stale(ctx, index, job, &e.to_string());
            false
        }
    }
}

/// Stores a status answer; returns true when it says the job ended (its slot is then freed).
fn record_status(ctx: &Context, index: usize, id: &str, status: PoolStatus, answer: Value) -> bool {
    let now = unix_now();
    let mut st = ctx.lock();
    let Some(job) = st.jobs.get_mut(id) else {
        return false;
    };
    job.worker_status = Some(answer);
    job.last_contact = Some(now);
    let before = job.status;
    if before == PoolStatus::Cancelled {
        if status.is_final() {
            worker_ended_cancelled(ctx, &mut st, index, id);
        }
        return false;
    }
    if before == status {
        return false;
    }
    let Some(job) = st.set_status(id, status) else {
        return false;
    };
    if !status.is_final() {
        return false;
    }
    job.completed_at = Some(now);
    job.collection = Collection::Pending(None);
    let w = &mut st.workers[index];
    w.release_slot();
    if status == PoolStatus::Completed {
        w.counters.completed += 1;
    } else {
        w.counters.failed += 1;
    }
    let short = short_id(&w.spec.worker_id).to_string();
    drop(st);
    log::info!("Job {id} {} on {short}...", status.as_str());
    ctx.wake_scheduler();
    true
}

fn collect_results(ctx: &Context, index: usize, endpoint: &str, job: &Followed, status: &Value) {
    match collect::collect(ctx, endpoint, &job.id, &job.remote, status) {
        Ok(stored) => {
            let files = stored.outputs.len();
            let mut st = ctx.lock();
            if let Some(j) = st.jobs.get_mut(&job.id) {
                j.collection = Collection::Collected(stored);
            }
            untrack(&mut st, index, &job.id);
            drop(st);
            log::info!("Collected results of job {} ({files} output files)", job.id);
        }
        Err(CollectError::Gone) => lose(ctx, index, &job.id, CollectError::Gone.to_string()),
        Err(e) => {
            let why = e.to_string();
            if let Some(j) = ctx.lock().jobs.get_mut(&job.id) {
                j.collection = Collection::Pending(Some(why.clone()));
            }
            log::warn!("Job {}: {why}; retrying", job.id);
            give_up_if_stale(ctx, index, job, &why);
        }
    }
}

fn give_up_if_stale(ctx: &Context, index: usize, job: &Followed, why: &str) {
    let silent_for = unix_now() - job.last_contact;
    if silent_for > ctx.config.lost_after.as_secs_f64() {
        lose(
            ctx,
            index,
            &job.id,
            format!("no answer from its worker for {silent_for:.0} s: {why}"),
        );
    } else {
        log::debug!("Job {}: worker did not answer ({why}); will retry", job.id);
    }
}

fn untrack(st: &mut PoolState, index: usize, id: &str) {
    st.workers[index].tracked.retain(|t| t != id);
}

/// A cancelled job: waits for its worker to end it (its slot is held until then), then deletes
/// it there with `GET /download/{id}` (never earlier: deleting a job queued on sandrun crashes
/// the worker). Returns true when it ended on its worker just now.
fn follow_cancelled(ctx: &Context, index: usize, endpoint: &str, job: &Followed) -> bool {
    let mut ended = false;
    if job.ending_on_worker {
        match ctx.client.status(endpoint, &job.remote) {
            Ok(status) => {
                let finished = matches!(
                    status.get("status").and_then(Value::as_str),
                    Some("completed" | "failed")
                );
                let mut st = ctx.lock();
                if let Some(j) = st.jobs.get_mut(&job.id) {
                    j.last_contact = Some(unix_now());
                }
                if !finished {
                    return false;
                }
                worker_ended_cancelled(ctx, &mut st, index, &job.id);
                ended = true;
            }
            Err(CallError::Status { code: 404, .. }) => {
                let mut st = ctx.lock();
                worker_ended_cancelled(ctx, &mut st, index, &job.id);
                untrack(&mut st, index, &job.id);
                return true;
            }
            Err(e) => {
                if unix_now() - job.last_contact > ctx.config.lost_after.as_secs_f64() {
                    let mut st = ctx.lock();
                    worker_ended_cancelled(ctx, &mut st, index, &job.id);
                    untrack(&mut st, index, &job.id);
                    log::warn!(
                        "Cancelled job {}: its worker has not answered for a while ({e}); its slot is freed",
                        job.id
                    );
                }
                return false;
            }
        }
    }
    match ctx.client.delete_ended(endpoint, &job.remote) {
        Ok(()) | Err(CallError::Status { code: 404, .. }) => {
            untrack(&mut ctx.lock(), index, &job.id);
            log::info!("Cancelled job {} deleted on its worker", job.id);
        }
        Err(e) => {
            if unix_now() - job.last_contact > ctx.config.lost_after.as_secs_f64() {
                untrack(&mut ctx.lock(), index, &job.id);
                log::warn!(
                    "Cancelled job {} could not be deleted on its worker: {e}",
                    job.id
                );
            }
        }
    }
    ended
}

/// A cancelled job ended on its worker (or the worker lost it): its slot is freed.
fn worker_ended_cancelled(ctx: &Context, st: &mut PoolState, index: usize, id: &str) {
    let Some(job) = st.jobs.get_mut(id) else {
        return;
    };
    if !std::mem::take(&mut job.ending_on_worker) {
        return;
    }
    job.last_contact = Some(unix_now());
    st.workers[index].release_slot();
    log::info!("Cancelled job {id} ended on its worker; its slot is free");
    ctx.wake_scheduler();
}

/// Marks a job lost, frees its slot if it still held one, and stops following it.
fn lose(ctx: &Context, index: usize, id: &str, why: String) {
    let mut st = ctx.lock();
    let Some(job) = st.jobs.get(id) else {
        return;
    };
    if job.status == PoolStatus::Cancelled {
        worker_ended_cancelled(ctx, &mut st, index, id);
        untrack(&mut st, index, id);
        return;
    }
    let held_slot = !job.status.is_final();
    if let Some(job) = st.set_status(id, PoolStatus::Lost) {
        job.error = Some(why.clone());
        job.completed_at.get_or_insert_with(unix_now);
    }
    let w = &mut st.workers[index];
    if held_slot {
        w.release_slot();
    }
    w.counters.lost += 1;
    untrack(&mut st, index, id);
    drop(st);
    log::warn!("Job {id} is lost: {why}");
    if held_slot {
        ctx.wake_scheduler();
    }
}
