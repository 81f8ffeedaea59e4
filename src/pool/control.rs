//! Operator and client controls on a running pool: cancelling a job, changing a queued job's
//! priority, deleting a finished one, draining a worker, pausing submits.

use crate::base::clock::unix_now;
use crate::base::job::{unknown_job_message, PoolStatus, Priority};
use crate::pool::announce;
use crate::state::context::Context;
use crate::state::pool_state::PoolState;
use crate::state::submits_pause::SubmitsPause;
use crate::store::controls::RecordedPause;
use crate::store::jobs_db::{ListFilter, StoreError, StoreFault, Ticket};
use crate::worker::identity::short_id;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a deletion waits for the job store's writer (behind another program's lock, say).
const DELETE_WAIT: Duration = Duration::from_secs(30);

/// Why a control was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    /// No job with this id.
    UnknownJob(String),
    /// The job already ended in this status.
    Finished(String, PoolStatus),
    /// No worker with this id (as the request gave it) in the allowlist.
    UnknownWorker(String),
    /// The drain applies now but is not in the job store yet: written once the store can write
    /// again.
    NotRecorded(String, StoreFault),
    /// The cancel applies now but is not in the job store yet: written once the store can
    /// write again.
    CancelNotRecordedYet(String, StoreFault),
    /// This many cancels apply now but are not all in the job store yet: written once the
    /// store can write again.
    CancelsNotRecordedYet(usize, String, StoreFault),
    /// The job is no longer queued (it is in this status): its priority no longer matters.
    NotQueued(String, PoolStatus),
    /// The job ended, but its results are still being collected, its worker is still ending
    /// it, or its end is not recorded yet: it can be deleted shortly.
    Settling(String),
    /// The job store could not delete the job.
    NotDeleted(String, StoreFault),
    /// The job store has written nothing for a while: the deletion waits in its queue, and is
    /// made once it writes again.
    DeleteWaiting(String),
}

impl ControlError {
    /// The HTTP status for this refusal.
    pub fn status(&self) -> u16 {
        match self {
            Self::UnknownJob(_) | Self::UnknownWorker(_) => 404,
            Self::Finished(..) | Self::NotQueued(..) | Self::Settling(_) => 409,
            Self::NotRecorded(_, fault)
            | Self::CancelNotRecordedYet(_, fault)
            | Self::CancelsNotRecordedYet(_, _, fault)
            | Self::NotDeleted(_, fault) => fault.http_status(),
            Self::DeleteWaiting(_) => 503,
        }
    }
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownJob(id) => f.write_str(&unknown_job_message(id)),
            Self::Finished(id, status) => write!(
                f,
                "job {id} has already ended ({}); only a queued, dispatched or running job can be cancelled",
                status.as_str()
            ),
            Self::UnknownWorker(id) => write!(
                f,
                "no worker {id:?} in the allowlist (give its worker_id percent-encoded, or in URL-safe base64 with - and _)"
            ),
            Self::NotRecorded(why, _) => write!(
                f,
                "the change applies now, but the job store cannot record it yet ({why}); it is \
                 written as soon as the store can write again, and a restart before then would \
                 not keep it"
            ),
            Self::CancelNotRecordedYet(why, _) => write!(
                f,
                "the job is cancelled now, but the job store cannot record it yet ({why}); it is \
                 written as soon as the store can write again, and a restart before then would \
                 not keep it"
            ),
            Self::CancelsNotRecordedYet(count, why, _) => write!(
                f,
                "{count} {} cancelled now, but the job store cannot record every cancellation \
                 yet ({why}); they are written as soon as the store can write again, and a \
                 restart before then would not keep them",
                if *count == 1 { "job is" } else { "jobs are" }
            ),
            Self::NotQueued(id, status) => write!(
                f,
                "job {id} is {}: a priority only orders the jobs waiting in the queue, and this \
                 one left it",
                status.as_str()
            ),
            Self::Settling(id) => write!(
                f,
                "job {id} has ended, but its results are still being collected, its worker is \
                 still ending it, or its end is not recorded yet; delete it again shortly"
            ),
            Self::NotDeleted(why, _) => write!(
                f,
                "the job was not deleted ({why}); it is kept whole, its status, logs and outputs \
                 as before: delete it again once the state directory has room or the job store \
                 can write again"
            ),
            Self::DeleteWaiting(why) => write!(
                f,
                "the job is not deleted yet: {why}; the deletion waits and is made once the store \
                 writes again (its status answers 404 then)"
            ),
        }
    }
}

impl std::error::Error for ControlError {}

/// Cancels a job. A queued one ends at once and its upload is dropped; a dispatched or running
/// one is marked cancelled at once, its results are not collected, and its tracker follows it
/// only until its worker ends it (the slot is freed then), then deletes it there. Returns once
/// the cancellation is committed to the job store, so a restart keeps it; when the store cannot
/// write (a full disk) the cancel still applies, and its record is written once it can. `by`
/// says who asked, for the log (` (key NAME)`, or empty).
pub fn cancel(ctx: &Arc<Context>, id: &str, by: &str) -> Result<(), ControlError> {
    let mut st = ctx.lock();
    let cancelled = cancel_in_table(ctx, &mut st, id)?;
    drop(st);
    let ticket = cancelled.finish(ctx, id, by);
    ticket.map_or(Ok(()), |ticket| {
        ticket
            .wait_unless_stalled(&ctx.store)
            .map_err(|e| ControlError::CancelNotRecordedYet(e.to_string(), e.fault()))
    })
}

/// Which jobs `POST /cancel?status=...` cancels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelFilter {
    /// The statuses taken: queued, dispatched, running (one or more).
    pub statuses: Vec<PoolStatus>,
    /// Only the jobs of this client key, when given.
    pub owner: Option<String>,
    /// Only the jobs on this worker (its `worker_id`), when given.
    pub worker: Option<String>,
    /// The most jobs cancelled by one request, newest first.
    pub limit: usize,
}

impl CancelFilter {
    /// The jobs it takes, as `GET /jobs` with the same statuses, owner and worker lists them.
    fn jobs(&self) -> ListFilter<'_> {
        ListFilter {
            statuses: Some(&self.statuses),
            owner: self.owner.as_deref(),
            worker: self.worker.as_deref(),
        }
    }
}

/// What `POST /cancel?status=...` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelledJobs {
    /// The jobs cancelled, newest first.
    pub ids: Vec<String>,
    /// The jobs that matched beyond the limit, left as they were.
    pub remaining: usize,
}

/// Cancels every job the filter takes, newest first up to its limit, each as [`cancel`] does,
/// under one hold of the table. Returns once every cancellation is committed to the job
/// store; when the store cannot write, they all apply, and are written once it can (the error
/// says how many).
pub fn cancel_matching(
    ctx: &Arc<Context>,
    filter: &CancelFilter,
    by: &str,
) -> Result<CancelledJobs, ControlError> {
    let takes = filter.jobs();
    let mut st = ctx.lock();
    let mut matching: Vec<(f64, String)> = st
        .jobs
        .values()
        .filter(|job| takes.takes(job))
        .map(|job| (job.submitted_at, job.id.clone()))
        .collect();
    matching.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
    let remaining = matching.len().saturating_sub(filter.limit);
    matching.truncate(filter.limit);
    let cancelled: Vec<(String, Cancelled)> = matching
        .into_iter()
        .filter_map(|(_, id)| {
            let cancelled = cancel_in_table(ctx, &mut st, &id).ok()?;
            Some((id, cancelled))
        })
        .collect();
    drop(st);
    let tickets: Vec<_> = cancelled
        .into_iter()
        .map(|(id, cancelled)| {
            let ticket = cancelled.finish(ctx, &id, by);
            (id, ticket)
        })
        .collect();
    let count = tickets.len();
    let mut ids = Vec::with_capacity(count);
    let mut unrecorded = None;
    for (id, ticket) in tickets {
        if let Some(Err(e)) = ticket.map(|t| t.wait_unless_stalled(&ctx.store)) {
            unrecorded.get_or_insert(e);
        }
        ids.push(id);
    }
    if let Some(e) = unrecorded {
        return Err(ControlError::CancelsNotRecordedYet(
            count,
            e.to_string(),
            e.fault(),
        ));
    }
    Ok(CancelledJobs { ids, remaining })
}

/// A cancellation made in the table, with what is left to do once the table is unlocked.
struct Cancelled {
    /// The job was on a worker (dispatched or running), which ends it there.
    on_worker: bool,
    /// The job was to be deleted once settled: its upload is wiped, not kept.
    deleting: bool,
    /// The job's last lines, for its followers.
    last: Vec<String>,
    /// Resolved once the cancellation is committed (None: the job store records nothing).
    ticket: Option<Ticket>,
}

/// Marks job `id` cancelled in the table and sends its record to the job store.
fn cancel_in_table(ctx: &Context, st: &mut PoolState, id: &str) -> Result<Cancelled, ControlError> {
    let status = st
        .jobs
        .get(id)
        .map(|j| j.status)
        .ok_or_else(|| ControlError::UnknownJob(id.to_string()))?;
    let on_worker = match status {
        PoolStatus::Queued => {
            st.queue.remove(id);
            false
        }
        PoolStatus::Dispatched | PoolStatus::Running => true,
        ended => return Err(ControlError::Finished(id.to_string(), ended)),
    };
    let mut deleting = false;
    if let Some(job) = st.set_status(id, PoolStatus::Cancelled) {
        job.completed_at = Some(unix_now());
        job.error = Some("cancelled".to_string());
        job.ending_on_worker = on_worker;
        deleting = job.delete_when_settled;
    }
    Ok(Cancelled {
        on_worker,
        deleting,
        ticket: ctx.record_with_ticket(st, id),
        last: announce::last_lines(st, id),
    })
}

impl Cancelled {
    /// Tells the job's followers, drops a queued job's upload and logs the cancel; returns the
    /// ticket to wait on.
    fn finish(self, ctx: &Context, id: &str, by: &str) -> Option<Ticket> {
        announce::ended(ctx, id, self.last, None);
        if self.on_worker {
            log::info!("Cancelled job {id}{by}; its worker slot is freed when the job ends there");
        } else {
            if self.deleting {
                ctx.spool.wipe_upload(id);
            } else {
                ctx.spool.remove_upload(id);
            }
            log::info!("Cancelled queued job {id}{by}");
        }
        self.ticket
    }
}

/// What a priority change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorityChange {
    /// The priority the job had.
    pub was: Priority,
    /// Its place in the queue now (0 = next).
    pub position: Option<usize>,
}

/// Gives a queued job another priority: it moves to the back of its owner's line in that
/// level (a job put back at the head after a failed dispatch stays there), and its aging
/// starts again. Returns once the change is committed to the job store, so a restart keeps
/// it; when the store cannot write, the change applies and is written once it can. `by` says
/// who asked, for the log.
pub fn set_priority(
    ctx: &Context,
    id: &str,
    priority: Priority,
    by: &str,
) -> Result<PriorityChange, ControlError> {
    let mut st = ctx.lock();
    let job = st
        .jobs
        .get_mut(id)
        .ok_or_else(|| ControlError::UnknownJob(id.to_string()))?;
    if job.status != PoolStatus::Queued {
        return Err(ControlError::NotQueued(id.to_string(), job.status));
    }
    let was = std::mem::replace(&mut job.priority, priority);
    if was != priority {
        job.level_since = Some(ctx.store.wait_clock().now());
    }
    st.queue.set_priority(id, priority, Instant::now());
    let position = st.queue.position(id);
    let committed = ctx.record_with_ticket(&st, id);
    drop(st);
    log::info!(
        "Job {id} has priority {} now, was {}{by}; it is number {} in the queue",
        priority.as_str(),
        was.as_str(),
        position.map_or(0, |p| p + 1)
    );
    if let Some(ticket) = committed {
        ticket
            .wait_unless_stalled(&ctx.store)
            .map_err(|e| ControlError::NotRecorded(e.to_string(), e.fault()))?;
    }
    Ok(PriorityChange { was, position })
}

/// What a deletion did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deletion {
    /// The job is deleted; it was in this status.
    Now(String),
    /// The job is not settled yet (in this status now: cancelled if it had not ended): it is
    /// deleted in the same transaction that records it settled, also after a restart.
    WhenSettled(PoolStatus),
}

/// Deletes a job, as retention would later: its record in the job store with its collected
/// results (a results segment goes once no retained job refers to it, the job's bytes in one
/// that stays are wiped). A settled job is deleted now, committed and synced as `--fsync` asks
/// before this returns. A job not settled yet is cancelled if it has not ended, and marked to
/// be deleted as it settles (its worker ends it, its results are collected); the mark is
/// committed before this returns. `by` says who asked, for the log (as for [`cancel`]).
pub fn delete(ctx: &Arc<Context>, id: &str, by: &str) -> Result<Deletion, ControlError> {
    let unsettled = {
        let mut st = ctx.lock();
        match st.jobs.get_mut(id) {
            Some(job) if !job.is_settled() => {
                job.delete_when_settled = true;
                Some(job.status)
            }
            _ => None,
        }
    };
    if let Some(status) = unsettled {
        return delete_when_settled(ctx, id, status, by);
    }
    // A settled job still in the table has its last record on its way to the store, ahead of
    // the deletion.
    let live = ctx.lock().jobs.contains_key(id);
    match ctx.store.delete_settled(id, DELETE_WAIT) {
        Ok(Some(status)) => {
            log::info!("Deleted job {id}{by}; it was {status}");
            Ok(Deletion::Now(status))
        }
        Ok(None) if live => Err(ControlError::Settling(id.to_string())),
        Ok(None) => Err(ControlError::UnknownJob(id.to_string())),
        Err(e @ StoreError::Stalled(_)) => Err(ControlError::DeleteWaiting(e.to_string())),
        Err(e) => Err(ControlError::NotDeleted(e.to_string(), e.fault())),
    }
}

/// Cancels job `id` (in `status`, marked to be deleted as it settles) unless it ended, and
/// waits until the mark is committed.
fn delete_when_settled(
    ctx: &Arc<Context>,
    id: &str,
    status: PoolStatus,
    by: &str,
) -> Result<Deletion, ControlError> {
    if !status.is_final() {
        match cancel(ctx, id, by) {
            // The cancel's record carries the mark; a queued job settled with it.
            Ok(()) => return Ok(deleted_or_marked(ctx, id, PoolStatus::Cancelled, by)),
            Err(ControlError::Finished(..)) => {}
            Err(e) => return Err(e),
        }
    }
    let (status, committed) = {
        let st = ctx.lock();
        match st.jobs.get(id) {
            Some(job) => (job.status, ctx.record_with_ticket(&st, id)),
            // Settled and deleted meanwhile: its settling record carried the mark.
            None => return Ok(Deletion::WhenSettled(status)),
        }
    };
    if let Some(ticket) = committed {
        ticket
            .wait_unless_stalled(&ctx.store)
            .map_err(|e| ControlError::NotRecorded(e.to_string(), e.fault()))?;
    }
    Ok(deleted_or_marked(ctx, id, status, by))
}

/// Whether job `id` (in `status`), marked and committed, is gone already (it settled, and
/// the settling transaction deleted it) or waits to settle.
fn deleted_or_marked(ctx: &Context, id: &str, status: PoolStatus, by: &str) -> Deletion {
    if ctx.lock().jobs.contains_key(id) {
        log::info!(
            "Job {id} is deleted as soon as it settles{by}; it is {} now",
            status.as_str()
        );
        Deletion::WhenSettled(status)
    } else {
        log::info!("Deleted job {id}{by}; it was {}", status.as_str());
        Deletion::Now(status.as_str().to_string())
    }
}

/// Drains (`on`) or undrains a worker: a draining worker gets no new job, its jobs are followed
/// to their end. The change is recorded in the job store (a restart keeps it) before this
/// returns. `by` says who asked, for the log (as for [`cancel`]). Returns the index of the worker.
/// `asked` is the id as the request gave it (before [`worker_id_from_url`] made `worker_id` of
/// it): an unknown worker's refusal quotes that, which the caller can find in what they sent.
pub fn set_drain(
    ctx: &Context,
    worker_id: &str,
    asked: &str,
    on: bool,
    by: &str,
) -> Result<usize, ControlError> {
    let mut controls = ctx.store.controls.writer();
    let mut st = ctx.lock();
    let index = st
        .worker_index(worker_id)
        .filter(|&i| !st.workers[i].removed)
        .ok_or_else(|| ControlError::UnknownWorker(asked.to_string()))?;
    let w = &mut st.workers[index];
    let changed = w.draining != on;
    w.draining = on;
    let trusted_again = if on { None } else { w.distrusted.take() };
    if trusted_again.is_some() {
        w.health.next_probe = std::time::Instant::now();
    }
    let active = w.active_jobs;
    let endpoint = w.spec.endpoint.clone();
    drop(st);
    let recorded = controls.record_drain(worker_id, &endpoint, on);
    drop(controls);
    if changed && on {
        log::info!(
            "Worker {}... is draining{by}: no new job; {active} still active",
            short_id(worker_id)
        );
    } else if changed {
        log::info!("Worker {}... is back in service{by}", short_id(worker_id));
        ctx.wake_scheduler();
    }
    if let Some(why) = trusted_again {
        log::info!(
            "Worker {}... is trusted again (was: {why}); probing it",
            short_id(worker_id)
        );
        ctx.wake_health();
    }
    recorded.map_err(|e| {
        not_recorded(
            &format!("the drain of worker {}...", short_id(worker_id)),
            e,
        )
    })?;
    Ok(index)
}

/// Drains again, at start, the workers drained through the API before the restart; a record
/// of a worker no longer in the workers file (or at another endpoint) is dropped.
pub fn restore_drains(ctx: &Context) {
    let recorded = match ctx.store.controls.drains() {
        Ok(recorded) => recorded,
        Err(e) => {
            log::error!("Could not read the recorded drains from the job store: {e}");
            return;
        }
    };
    let mut writer = ctx.store.controls.writer();
    for drain in recorded {
        let mut st = ctx.lock();
        let found = st.workers.iter_mut().find(|w| {
            !w.removed && w.spec.worker_id == drain.worker_id && w.spec.endpoint == drain.endpoint
        });
        if let Some(w) = found {
            w.draining = true;
            drop(st);
            log::info!(
                "Worker {}... is draining (drained through the API before the restart; undrain it with POST /workers/{{id}}/undrain)",
                short_id(&drain.worker_id)
            );
            continue;
        }
        drop(st);
        log::info!(
            "Dropped the recorded drain of worker {}... at {}: it is no longer in the workers file",
            short_id(&drain.worker_id),
            drain.endpoint
        );
        if let Err(e) = writer.record_drain(&drain.worker_id, &drain.endpoint, false) {
            log::warn!("Could not drop a recorded drain: {e}");
        }
    }
}

/// What a pause or resume of submits changed.
#[derive(Debug)]
pub struct PauseChange {
    /// Whether a pause began (`false` when submits were paused already, or for a resume).
    pub began: bool,
    /// The pause a resume ended, if submits were paused.
    pub ended: Option<SubmitsPause>,
}

/// Pauses (`on`) or resumes submits: while paused, `/submit` is refused with 503 and queued and
/// running jobs go on. Pausing again keeps the first pause. The change is recorded in the job
/// store (a restart keeps a pause) before this returns; one that cannot be recorded applies all
/// the same and is written once the store can. `key` is the caller's key name, `by` says who
/// asked, for the log (as for [`cancel`]).
pub fn set_submits_pause(
    ctx: &Context,
    on: bool,
    key: Option<&str>,
    by: &str,
) -> Result<PauseChange, ControlError> {
    let mut controls = ctx.store.controls.writer();
    let mut st = ctx.lock();
    let change = if on {
        let began = st.submits_paused.is_none();
        if began {
            st.submits_paused = Some(SubmitsPause::new(key.map(str::to_string)));
        }
        PauseChange { began, ended: None }
    } else {
        PauseChange {
            began: false,
            ended: st.submits_paused.take(),
        }
    };
    let record = st.submits_paused.as_ref().map(|pause| RecordedPause {
        since: pause.since,
        by: pause.by.clone(),
    });
    drop(st);
    let recorded = controls.record_pause(record);
    drop(controls);
    if change.began {
        log::warn!(
            "Submits paused by an operator{by}: new submits are refused with 503 until POST /submits/resume"
        );
    }
    if let Some(ended) = &change.ended {
        log::info!(
            "Submits taken again{by} after a pause of {:.0} s ({} refused meanwhile)",
            ended.began.elapsed().as_secs_f64(),
            ended.refused
        );
    }
    let what = if on { "pause" } else { "resume" };
    recorded.map_err(|e| not_recorded(&format!("the {what} of submits"), e))?;
    if on {
        await_submits_recorded(ctx);
    }
    Ok(change)
}

/// Longest a pause of submits waits for the submits past their last check to be recorded.
const RECORDING_WAIT: Duration = Duration::from_secs(10);

/// Waits until every submit that passed its last check before the pause has its record
/// committed (or refused), so that a snapshot taken once the pause answered holds every job
/// acknowledged; at most [`RECORDING_WAIT`] (a store that writes nothing).
fn await_submits_recorded(ctx: &Context) {
    let until = Instant::now() + RECORDING_WAIT;
    while ctx.submits_recording.load(Ordering::Acquire) > 0 {
        if Instant::now() >= until {
            log::warn!(
                "Submits paused, but {} submits accepted before the pause were not recorded within {} s; a snapshot taken now may miss them",
                ctx.submits_recording.load(Ordering::Acquire),
                RECORDING_WAIT.as_secs()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Logs that a control change (`what`) could not be recorded yet, and the refusal that says so.
fn not_recorded(what: &str, e: rusqlite::Error) -> ControlError {
    log::error!(
        "Could not record {what} in the job store yet (it is written as soon as the store can): {e}"
    );
    let e = StoreError::from(e);
    ControlError::NotRecorded(e.to_string(), e.fault())
}

/// Pauses submits again, at start, when they were paused through the API before the restart.
pub fn restore_submits_pause(ctx: &Context) {
    let recorded = match ctx.store.controls.pause() {
        Ok(Some(recorded)) => recorded,
        Ok(None) => return,
        Err(e) => {
            log::error!("Could not read the recorded pause of submits from the job store: {e}");
            return;
        }
    };
    let pause = SubmitsPause::restored(recorded.since, recorded.by);
    log::warn!(
        "Submits are paused (paused by an operator{} {:.0} s ago, before the restart): new \
         submits are refused with 503 until POST /submits/resume",
        pause
            .by
            .as_deref()
            .map_or_else(String::new, |n| format!(" (key {n})")),
        pause.began.elapsed().as_secs_f64()
    );
    ctx.lock().submits_paused = Some(pause);
}

/// A worker id as given in a URL path: percent-encoded standard base64, or URL-safe base64
/// (`-`, `_`, padding optional).
pub fn worker_id_from_url(raw: &str) -> Option<String> {
    let decoded = crate::base::paths::percent_decode(raw).ok()?;
    Some(standard_worker_id(&decoded))
}

/// A worker id in standard base64 with its padding, from URL-safe base64 (`-`, `_`, padding
/// optional) or standard base64 whose `+` a query's form encoding read as a space.
pub fn standard_worker_id(given: &str) -> String {
    let mut id: String = given
        .chars()
        .map(|c| match c {
            '-' | ' ' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    while !id.len().is_multiple_of(4) {
        id.push('=');
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_ids_in_urls() {
        let id = "He7P3kzyklbzEfhMTtht10tA8QYEU3JK+dKgggIJ1IY=";
        let forms = [
            "He7P3kzyklbzEfhMTtht10tA8QYEU3JK%2BdKgggIJ1IY%3D",
            "He7P3kzyklbzEfhMTtht10tA8QYEU3JK-dKgggIJ1IY=",
            "He7P3kzyklbzEfhMTtht10tA8QYEU3JK-dKgggIJ1IY",
        ];
        for form in forms {
            assert_eq!(worker_id_from_url(form).as_deref(), Some(id), "{form}");
        }
        assert_eq!(worker_id_from_url("%zz"), None);
        let query = "He7P3kzyklbzEfhMTtht10tA8QYEU3JK dKgggIJ1IY=";
        assert_eq!(standard_worker_id(query), id);
    }
}
