//! Job ids a worker gave out twice. sandrun numbers its jobs `job_<unix seconds>_<counter>`
//! with a counter that starts again at each start, so a worker that restarts within the second
//! of an id it gave out gives that id to another job. The coordinator, still following the
//! earlier job under that id, would read the later job's status and collect its results as the
//! earlier job's: the earlier job is lost instead (its worker restarted, so it no longer has
//! it), the moment a dispatch brings back an id that a job on the same worker holds, and at a
//! restart of the coordinator, should it have stopped before that loss was recorded. (A job
//! that takes the id with no dispatch answer to show it is caught by its `job_hash`: see
//! `worker/job_hash.rs`, and the tracker.)

use crate::pool::tracker;
use crate::state::context::Context;
use crate::state::pool_state::PoolState;

/// A job that holds the same worker job id as a job its worker took later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Earlier {
    /// The earlier job.
    pub id: String,
    /// The worker's job id both hold.
    pub remote: String,
    /// The job the worker took later under that id.
    pub later: String,
}

/// The job's error, for its owner: neither the worker's job id nor the other job is named.
const WHY: &str = "its worker gave its job id to another job it took later: the worker \
     restarted since it took this job (sandrun numbers its jobs from 1 again at each start), \
     so it no longer has this job, and its results were not collected";

/// Notes that worker `index` gave job `later` its worker job id, and returns the followed job
/// that held that id before, if any.
pub fn holders_before(st: &mut PoolState, index: usize, later: &str) -> Vec<Earlier> {
    let Some(remote) = st.jobs.get(later).and_then(|j| j.remote_job_id.clone()) else {
        return Vec::new();
    };
    let Some(worker) = st.workers.get_mut(index) else {
        return Vec::new();
    };
    let Some(before) = worker.remote_ids.insert(remote.clone(), later.to_string()) else {
        return Vec::new();
    };
    if before == later || !tracker::holds(st, index, &before, &remote) {
        return Vec::new();
    }
    vec![Earlier {
        id: before,
        remote,
        later: later.to_string(),
    }]
}

/// Fills worker `index`'s `remote_ids` at a restart with the jobs it follows, and returns
/// those whose worker job id a job dispatched later holds too (by the times of their
/// dispatches, as recorded).
pub fn recovered_holders(st: &mut PoolState, index: usize) -> Vec<Earlier> {
    let PoolState { workers, jobs, .. } = st;
    let Some(worker) = workers.get_mut(index) else {
        return Vec::new();
    };
    let dispatched = |id: &str| {
        jobs.get(id)
            .and_then(|j| j.dispatched_at)
            .unwrap_or(f64::MIN)
    };
    let mut earlier = Vec::new();
    for id in &worker.tracked {
        let Some(remote) = jobs.get(id).and_then(|j| j.remote_job_id.as_ref()) else {
            continue;
        };
        let mut later = id.clone();
        if let Some(other) = worker.remote_ids.get(remote) {
            if dispatched(other) > dispatched(id) {
                later.clone_from(other);
            }
            let id = if later == *id { other } else { id };
            earlier.push(Earlier {
                id: id.clone(),
                remote: remote.clone(),
                later: later.clone(),
            });
        }
        worker.remote_ids.insert(remote.clone(), later);
    }
    earlier
}

/// Loses each of the `earlier` jobs of worker `index` (the log names the later job and the id,
/// for the operator; the loss, the earlier job).
pub fn lose(ctx: &Context, index: usize, earlier: Vec<Earlier>) {
    for job in earlier {
        log::warn!("Job {} holds worker job id {} too", job.later, job.remote);
        tracker::lose(ctx, index, &job.id, &job.remote, WHY.to_string());
    }
}
