//! Trackers: one thread per worker that has jobs, following each of them with `/status`,
//! freeing the slot the moment a job ends, verifying its result signature, then collecting and
//! checking its results. A job whose worker stream is open (see [`crate::pool::stream`]) is
//! polled only every [`STREAMED_POLL_FACTOR`] track intervals: when the stream says `[DONE]`,
//! its own thread follows the job's end up at once ([`follow_now`], up to
//! [`STREAM_FOLLOW_UPS`] at once per worker, beyond that only for a job a client waits on), so
//! one job's collection does not hold up the end of another on the same worker. Other jobs are
//! polled every track interval, and at once after a dispatch to the worker or a job's end. A
//! worker that blocks (sandrun holds its lock while a job runs) only delays its own tracker.

use crate::base::clock::unix_now;
use crate::base::job::{
    Collection, DoneFigures, OutputsVerdict, PoolStatus, SignatureVerdict, Verification,
};
use crate::base::log_repeats::{Repeats, REPEAT_PERIOD};
use crate::base::niceness;
use crate::base::sync::lock;
use crate::pool::collect::{self, uncollectable, CollectError, Collected, LEFT_ON_WORKER};
use crate::pool::collect_retry::{self, Next};
use crate::pool::{announce, rerun};
use crate::state::context::Context;
use crate::state::pool_state::{PoolState, WorkerCounters};
use crate::store::spool::PinnedSegment;
use crate::worker::client::CallError;
use crate::worker::identity::short_id;
use crate::worker::job_hash;
use crate::worker::signature::{self, SignatureCheck};
use serde_json::Value;
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const TRACKER_STACK: usize = 256 * 1024;
/// Collections paused because results found no room (every job's, every 30 s at most while the
/// disk stays full), logged at most once a minute.
static PAUSE_LOGS: Mutex<Repeats> = Mutex::new(Repeats::new(REPEAT_PERIOD));
/// Calls about jobs the coordinator could not make, short of resources, logged at most once a
/// minute.
static SHORTAGE_LOGS: Mutex<Repeats> = Mutex::new(Repeats::new(REPEAT_PERIOD));

/// A job followed on its worker stream is polled this many track intervals apart.
pub const STREAMED_POLL_FACTOR: u32 = 10;

/// A stream thread follows its job's end up itself only while fewer follow-ups of its worker's
/// jobs than this are under way (its tracker's included), or when a client waits on the job
/// (`Job::watched`); else it hands the job to the tracker. One slow collection then holds up no
/// other job, and a flood of short jobs that nobody asks about cannot put a follow-up thread
/// per job on the cores that submits need, while a client waiting for its job's end does not
/// wait behind the tracker's turn too.
pub const STREAM_FOLLOW_UPS: usize = 2;

/// The error of a job refused under `--require-verified`, and the worker's health reason.
pub const SIGNATURE_INVALID: &str = "result signature invalid";

/// A tracked job as a tracker round sees it: enough to tell whether it is due.
struct Tracked {
    id: String,
    /// It ended (its results may still be to collect): followed every round.
    ended: bool,
    /// Its worker stream is open: polled far less often.
    streaming: bool,
    /// To poll at once (its stream closed or handed its end back).
    urgent: bool,
    /// Its results could not be stored (a full disk): tried again after this pause.
    paused_for: Option<Duration>,
}

/// One job as a follow-up needs it, read from the table when the follow-up claims it.
struct Followed {
    id: String,
    remote: String,
    status: PoolStatus,
    /// The worker's last status answer, for a job that ended (its results still to collect).
    worker_status: Option<Value>,
    /// When its worker last answered about it (monotonic).
    heard_at: Instant,
    /// A cancelled job still holding its slot: followed only until the worker ends it.
    ending_on_worker: bool,
    figures: Option<DoneFigures>,
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

fn snapshot(ctx: &Context, index: usize) -> Option<(String, String, Vec<Tracked>)> {
    let mut st = ctx.lock();
    let PoolState { workers, jobs, .. } = &mut *st;
    workers[index].tracked.retain(|id| jobs.contains_key(id));
    let w = &mut st.workers[index];
    if w.tracked.is_empty() {
        // Nothing is left to poll; an id left here would keep a removed worker's place from
        // being reused.
        w.poll_now.clear();
        w.remote_ids.clear();
        w.tracker_running = false;
        return None;
    }
    st.prune_remote_ids(index);
    let w = &mut st.workers[index];
    w.collect_pauses.retain(|p| w.tracked.contains(&p.id));
    let endpoint = w.spec.endpoint.clone();
    let worker_id = w.spec.worker_id.clone();
    let ids = w.tracked.clone();
    let urgent = std::mem::take(&mut w.poll_now);
    let streaming = w.streaming.clone();
    let now = Instant::now();
    let jobs = ids
        .into_iter()
        .filter_map(|id| {
            let job = st.jobs.get(&id).filter(|j| j.remote_job_id.is_some())?;
            Some(Tracked {
                ended: job.status.is_final(),
                streaming: streaming.contains(&id),
                urgent: urgent.contains(&id),
                paused_for: st.workers[index].collect_paused_for(&id, now),
                id,
            })
        })
        .collect();
    Some((endpoint, worker_id, jobs))
}

/// What a follow-up of job `id` needs, as the table holds it now.
fn followed(st: &PoolState, id: String) -> Option<Followed> {
    let job = st.jobs.get(&id)?;
    Some(Followed {
        remote: job.remote_job_id.clone()?,
        status: job.status,
        worker_status: job
            .status
            .is_final()
            .then(|| job.worker_status.clone())
            .flatten(),
        heard_at: job.heard_at.unwrap_or_else(Instant::now),
        ending_on_worker: job.ending_on_worker,
        figures: job.done_figures.as_deref().cloned(),
        id,
    })
}

/// Claims job `id` of worker `index` for a follow-up on the calling thread (`following_up`),
/// and returns it as the table holds it now: `None` when the job is not this worker's to follow
/// (any more) or another thread follows it up right now. A claimed job must be released with
/// [`release`].
fn claim(st: &mut PoolState, index: usize, id: &str) -> Option<Followed> {
    // The job's own entry only: a forgotten worker's place may hold another worker by now.
    let w = st.workers.get(index)?;
    if !w.tracked.iter().any(|t| t == id) || w.following_up.iter().any(|t| t == id) {
        return None;
    }
    let job = followed(st, id.to_string())?;
    st.workers[index].following_up.push(id.to_string());
    Some(job)
}

/// Ends a follow-up of job `id` claimed with [`claim`] (the place is not reused meanwhile).
fn release(st: &mut PoolState, index: usize, id: &str) {
    if let Some(w) = st.workers.get_mut(index) {
        w.following_up.retain(|t| t != id);
    }
}

/// Follows up one job claimed by the calling thread, then releases it. A panic is caught and
/// logged: the job stays tracked and is followed again.
fn follow_claimed(
    ctx: &Context,
    index: usize,
    endpoint: &str,
    worker_id: &str,
    job: &Followed,
) -> bool {
    let followed = catch_unwind(AssertUnwindSafe(|| {
        follow(ctx, index, endpoint, worker_id, job)
    }));
    release(&mut ctx.lock(), index, &job.id);
    followed.unwrap_or_else(|_| {
        log::error!("Following job {} panicked; it will be retried", job.id);
        false
    })
}

/// Follows up the end of job `id` of worker `index` on the calling thread (its stream's, which
/// just read `[DONE]`): polls its status, checks the signature and collects its results, so
/// jobs that end together on one worker are followed up side by side. Whatever is left to do
/// (a collection to retry, a status not final yet) goes back to the tracker, which polls the
/// job at once. Returns false, doing nothing, when the job is not this worker's to follow as
/// its job `remote` (any more: see [`holds`]), another thread follows it up right now, or
/// [`STREAM_FOLLOW_UPS`] follow-ups of the worker's jobs are under way and no client waits on
/// this one.
pub fn follow_now(ctx: &Context, index: usize, id: &str, remote: &str) -> bool {
    let (endpoint, worker_id, job) = {
        let mut st = ctx.lock();
        if !holds(&st, index, id, remote) {
            return false;
        }
        let busy = st.workers.get(index).map_or(0, |w| w.following_up.len());
        let watched = st.jobs.get(id).is_some_and(|j| j.watched);
        if busy >= STREAM_FOLLOW_UPS && !watched {
            return false;
        }
        let Some(job) = claim(&mut st, index, id) else {
            return false;
        };
        let w = &mut st.workers[index];
        w.streaming.retain(|s| s != id);
        (w.spec.endpoint.clone(), w.spec.worker_id.clone(), job)
    };
    follow_claimed(ctx, index, &endpoint, &worker_id, &job);
    // The tracker polls the job at once if it is still tracked, and ends at once if it has
    // nothing left to follow (so a forgotten worker's place is soon free).
    let mut st = ctx.lock();
    if let Some(w) = st.workers.get_mut(index) {
        let still_tracked = w.tracked.iter().any(|t| t == id);
        if still_tracked {
            w.poll_now.push(id.to_string());
        }
        if still_tracked || w.tracked.is_empty() {
            let wake = w.tracker_wake.clone();
            drop(st);
            wake.notify();
        }
    }
    true
}

fn run(ctx: &Context, index: usize) {
    if let Err(e) = niceness::lower_this_thread(ctx.config.follow_nice) {
        log::debug!("The tracker of worker {index} keeps its priority: {e}");
    }
    let wake = ctx.lock().workers[index].tracker_wake.clone();
    let interval = ctx.config.track_interval;
    let streamed_interval = interval * STREAMED_POLL_FACTOR;
    let mut last_poll: HashMap<String, Instant> = HashMap::new();
    while let Some((endpoint, worker_id, jobs)) = snapshot(ctx, index) {
        let mut any_ended = false;
        let mut next_due = interval;
        let now = Instant::now();
        last_poll.retain(|id, _| jobs.iter().any(|j| &j.id == id));
        for job in jobs {
            if let Some(wait) = job.paused_for {
                next_due = next_due.min(wait);
                continue;
            }
            let every = if job.streaming {
                streamed_interval
            } else {
                interval
            };
            // A new job is polled at once, or, when streamed, one slowed interval later.
            let due_in = match last_poll.get(&job.id) {
                Some(last) => (*last + every).saturating_duration_since(now),
                None if job.streaming => {
                    last_poll.insert(job.id.clone(), now);
                    every
                }
                None => Duration::ZERO,
            };
            if !(job.urgent || job.ended || due_in.is_zero()) {
                next_due = next_due.min(due_in);
                continue;
            }
            last_poll.insert(job.id.clone(), Instant::now());
            next_due = next_due.min(every);
            // Followed as the table holds it now; not while its stream's thread follows its end
            // up (that thread hands back what is left).
            let claimed = claim(&mut ctx.lock(), index, &job.id);
            if let Some(job) = claimed {
                any_ended |= follow_claimed(ctx, index, &endpoint, &worker_id, &job);
            }
        }
        if !any_ended {
            wake.wait(next_due.max(Duration::from_millis(1)));
        }
    }
}

/// Polls one job (or retries its collection); returns true when the job just ended on its worker,
/// so the tracker goes round again at once: a fast worker's other jobs may have ended too.
fn follow(ctx: &Context, index: usize, endpoint: &str, worker_id: &str, job: &Followed) -> bool {
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
        Ok(status) if names_another_job(ctx, &job.id, &status) => {
            lose_to_another_job(ctx, index, job);
            true
        }
        Ok(status) => {
            let now_status = match status.get("status").and_then(Value::as_str) {
                Some("running") => PoolStatus::Running,
                Some("completed") => PoolStatus::Completed,
                Some("failed") => PoolStatus::Failed,
                _ => PoolStatus::Dispatched,
            };
            let check = now_status.is_final().then(|| {
                // The stream's [DONE] may have arrived while this poll was on its way.
                let figures = latest_figures(ctx, job);
                signature::verify(worker_id, &status, figures.as_ref())
            });
            let finished = record_status(ctx, index, job, now_status, status.clone(), check);
            if finished {
                collect_results(ctx, index, endpoint, job, &status);
            }
            finished
        }
        Err(CallError::Status { code: 404, .. }) => {
            let why =
                "the worker no longer has the job (HTTP 404) and its results were not collected";
            lose(
                ctx,
                index,
                &job.id,
                &job.remote,
                format!("{why}; {SANDRUN_DELETES}"),
            );
            true
        }
        Err(CallError::Shortage(why)) => {
            excuse_silence(ctx, &job.id, &why);
            false
        }
        Err(e) => {
            give_up_if_stale(ctx, index, job, &e.to_string());
            false
        }
    }
}

/// Whether the worker's `answer` about job `id`'s worker job id names another job than its
/// answer before (see [`job_hash::names_another_job`]).
fn names_another_job(ctx: &Context, id: &str, answer: &Value) -> bool {
    ctx.lock()
        .jobs
        .get(id)
        .and_then(|job| job.worker_status.as_ref())
        .is_some_and(|before| job_hash::names_another_job(before, answer))
}

/// The error of a job whose worker answered about its job id with another job's `job_hash`.
const ANOTHER_JOB: &str = "its worker's answer about its job id named another job (another \
     job_hash than before): the worker restarted since it took this job and gave the id to a job \
     sent to it around the coordinator (sandrun numbers its jobs from 1 again at each start), so \
     it no longer has this job, and its results were not collected";

/// Loses `job`, whose worker job id names another job now.
fn lose_to_another_job(ctx: &Context, index: usize, job: &Followed) {
    let why = ANOTHER_JOB.to_string();
    lose(ctx, index, &job.id, &job.remote, why);
}

/// A call about job `id` that the coordinator could not make, short of resources (`why`): the
/// worker is not counted silent meanwhile, and the job is asked about again at its next poll.
fn excuse_silence(ctx: &Context, id: &str, why: &str) {
    if let Some(job) = ctx.lock().jobs.get_mut(id) {
        job.excuse_silence();
    }
    if let Some(held) = lock(&SHORTAGE_LOGS).check(Instant::now()) {
        log::warn!(
            "Could not ask the worker of job {id} about it: {why}; the coordinator is short of \
             resources, not the worker, so the job is not counted lost meanwhile{}",
            Repeats::suffix(held)
        );
    }
}

/// The job's `[DONE]` figures as the table holds them now (the snapshot's may be older).
fn latest_figures(ctx: &Context, job: &Followed) -> Option<DoneFigures> {
    let now = ctx
        .lock()
        .jobs
        .get(&job.id)
        .and_then(|j| j.done_figures.as_deref().cloned());
    now.or_else(|| job.figures.clone())
}

/// The error of a job refused under `--require-verified`.
fn refusal(why: &str) -> String {
    if why.starts_with(SIGNATURE_INVALID) {
        why.to_string()
    } else {
        format!("{SIGNATURE_INVALID}: {why}")
    }
}

/// Keeps worker `index` unhealthy for `why` until an operator sends SIGHUP.
fn distrust(st: &mut PoolState, index: usize, why: &str) {
    let w = &mut st.workers[index];
    let reason = refusal(why);
    if w.distrusted.is_none() {
        log::error!(
            "Worker {}... is now unhealthy: {reason} (send SIGHUP to trust it again)",
            short_id(&w.spec.worker_id)
        );
    }
    w.health.is_healthy = false;
    w.health.since = Some(unix_now());
    w.health.last_error = Some(reason.clone());
    w.distrusted = Some(reason);
}

/// Under `--require-verified`, keeps worker `worker_id` unhealthy until SIGHUP or its undrain,
/// as for a result that did not verify: it served the output `path` of finished job `job_id`
/// other than it reported and signed when the job ended (`why`).
pub fn distrust_for_output(ctx: &Context, worker_id: &str, job_id: &str, path: &str, why: &str) {
    if !ctx.config.require_verified {
        return;
    }
    let mut st = ctx.lock();
    if let Some(index) = st.worker_index(worker_id) {
        let why = format!(
            "the output {path:?} of job {job_id} changed on the worker after the job ended: {why}"
        );
        distrust(&mut st, index, &why);
    }
}

/// Stores a status answer; returns true when it says the job ended (its slot is then freed).
/// A finished job's signature check is stored with it; under `--require-verified` a check that
/// did not verify fails the job and distrusts the worker.
fn record_status(
    ctx: &Context,
    index: usize,
    followed: &Followed,
    mut status: PoolStatus,
    answer: Value,
    check: Option<SignatureCheck>,
) -> bool {
    let now = unix_now();
    let id = followed.id.as_str();
    let mut st = ctx.lock();
    if !holds(&st, index, id, &followed.remote) {
        return false;
    }
    let Some(job) = st.jobs.get_mut(id) else {
        return false;
    };
    let cpu_seconds = answer
        .get("execution_metadata")
        .and_then(|m| m.get("cpu_seconds"))
        .and_then(Value::as_f64);
    job.worker_status = Some(answer);
    job.heard_from_worker(now);
    let source = job.source_address;
    let before = job.status;
    if before == PoolStatus::Cancelled {
        if status.is_final() {
            worker_ended_cancelled(ctx, &mut st, index, id);
        }
        return false;
    }
    // A job its worker said runs never goes back to waiting there: a later `queued` (or a
    // status the coordinator does not know) changes nothing.
    if before == status || (before == PoolStatus::Running && status == PoolStatus::Dispatched) {
        return false;
    }
    let mut refused = None;
    if let Some(check) = check {
        if check.verdict != SignatureVerdict::Verified {
            let why = check.reason.clone().unwrap_or_default();
            log::warn!("Job {id}: {why}");
            if ctx.config.require_verified {
                status = PoolStatus::Failed;
                refused = Some(why);
            }
        }
        job.verification = Some(Box::new(Verification {
            signature: check.verdict,
            outputs: None,
            reason: check.reason,
        }));
    }
    // A job seen only once it ended (its start fell between two looks) still started: its
    // followers hear that before they hear the end.
    let was_dispatched = st.jobs.get(id).map(|j| j.status) == Some(PoolStatus::Dispatched);
    let Some(job) = st.set_status(id, status) else {
        return false;
    };
    log::debug!("Job {id} is {} on its worker", status.as_str());
    if was_dispatched
        && matches!(
            status,
            PoolStatus::Running | PoolStatus::Completed | PoolStatus::Failed
        )
    {
        ctx.events.line(id, "[STATUS] Job started\n".to_string());
    }
    if !status.is_final() {
        ctx.record(&st, id);
        return false;
    }
    job.completed_at = Some(now);
    job.collection = Collection::Pending(None);
    job.end_counted = true;
    if let Some(why) = &refused {
        job.error = Some(refusal(why));
        distrust(&mut st, index, why);
    }
    ctx.record(&st, id);
    let w = &mut st.workers[index];
    w.release_slot(source, cpu_seconds);
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

/// The outputs check of a collection: the verdict, why it is not a match, and whether the
/// worker is to blame (an output that differs from its signed hash, or one it listed but did
/// not serve). An output the coordinator does not collect by its own rule ([`uncollectable`],
/// or past `--max-results-bytes`) is a mismatch too, but no fault of the worker.
struct OutputsCheck {
    verdict: OutputsVerdict,
    why: Option<String>,
    worker_at_fault: bool,
}

/// Compares the collected outputs with the hashes the worker reported (and signed, when its
/// signature verifies), signature or not; `left_on_worker`: the outputs `--max-results-bytes`
/// left uncollected; `unserved`: those the worker could not serve, with its answer.
fn outputs_verdict(
    status: &Value,
    collected: &[(String, String)],
    left_on_worker: &[String],
    unserved: &[(String, String)],
) -> OutputsCheck {
    let signed = signature::reported_hashes(status);
    let mut wrong = Vec::new();
    let mut worker_at_fault = false;
    for (path, sha) in &signed {
        match collected.iter().find(|(p, _)| p == path) {
            Some((_, got)) if got == sha => {}
            Some(_) => {
                worker_at_fault = true;
                wrong.push(format!(
                    "{path} differs from the sha256 its worker reported"
                ));
            }
            None => match uncollectable(path).or_else(|| {
                left_on_worker
                    .iter()
                    .any(|p| p == path)
                    .then_some(LEFT_ON_WORKER)
            }) {
                Some(why) => wrong.push(format!("{path} was not collected ({why})")),
                None => {
                    worker_at_fault = true;
                    match unserved.iter().find(|(p, _)| p == path) {
                        Some((_, answer)) => wrong.push(format!(
                            "{path} was not collected (its worker could not serve it: {answer})"
                        )),
                        None => wrong.push(format!("{path} was not collected")),
                    }
                }
            },
        }
    }
    if wrong.is_empty() {
        return OutputsCheck {
            verdict: OutputsVerdict::Match,
            why: None,
            worker_at_fault,
        };
    }
    OutputsCheck {
        verdict: OutputsVerdict::Mismatch,
        why: Some(format!("outputs mismatch: {}", wrong.join(", "))),
        worker_at_fault,
    }
}

/// Stores a collection and its outputs check; under `--require-verified` a mismatch fails the
/// job, and distrusts the worker when the worker is to blame (not for an output the
/// coordinator does not collect by its own rule). Returns the job's last lines for its
/// followers.
fn record_collection(
    ctx: &Context,
    index: usize,
    followed: &Followed,
    status: &Value,
    collected: &Collected,
    pinned: Option<PinnedSegment>,
) -> Option<Vec<String>> {
    let id = followed.id.as_str();
    let OutputsCheck {
        verdict,
        why,
        worker_at_fault,
    } = outputs_verdict(
        status,
        &collected.hashes,
        &collected.stored.left_on_worker,
        &collected.unserved,
    );
    if let Some(why) = &why {
        log::warn!("Job {id}: {why}");
    }
    let mut st = ctx.lock();
    let held = holds(&st, index, id, &followed.remote);
    let Some(job) = st.jobs.get_mut(id).filter(|_| held) else {
        if let Some(pinned) = pinned {
            ctx.spool.give_back_results(pinned);
        }
        return None;
    };
    job.collection = Collection::Collected(Box::new(collected.stored.clone()));
    let left = collected.stored.left_on_worker.len();
    let was_completed = job.status == PoolStatus::Completed;
    let counted_completed = was_completed && job.end_counted;
    if let Some(v) = job.verification.as_mut() {
        v.outputs = Some(verdict);
        if v.reason.is_none() {
            v.reason = why.clone();
        }
    }
    if let Some(why) = why.filter(|_| ctx.config.require_verified) {
        if job.status != PoolStatus::Failed {
            if let Some(job) = st.set_status(id, PoolStatus::Failed) {
                job.error = Some(if worker_at_fault {
                    refusal(&why)
                } else {
                    format!("results not verified (--require-verified): {why}")
                });
                job.end_counted = true;
            }
            let c = &mut st.workers[index].counters;
            if counted_completed {
                c.completed = c.completed.saturating_sub(1);
            }
            c.failed += 1;
        }
        if worker_at_fault {
            distrust(&mut st, index, &why);
        }
    }
    st.metrics.outputs_left_on_worker(left);
    untrack(&mut st, index, id);
    match pinned {
        Some(pinned) => ctx.record_collected(&st, id, pinned),
        None => ctx.record(&st, id),
    }
    let last = announce::last_lines(&st, id);
    drop(st);
    ctx.collection_ended(id);
    Some(last)
}

fn collect_results(ctx: &Context, index: usize, endpoint: &str, job: &Followed, status: &Value) {
    let started = Instant::now();
    match collect::collect(ctx, endpoint, &job.id, &job.remote, status) {
        Ok(mut collected) => {
            let files = collected.stored.outputs.len();
            let bytes: u64 = collected.stored.outputs.iter().map(|(_, s)| s.size).sum();
            log::debug!(
                "Job {}: {files} output files ({bytes} bytes) and {} bytes of logs fetched from its worker in {} ms",
                job.id,
                collected.stored.logs.size,
                started.elapsed().as_millis()
            );
            let pinned = collected.pinned.take();
            // The results go to disk before the record that points to them.
            if let Some(Err(e)) = pinned.as_ref().map(|p| ctx.store.sync_segment(p.file())) {
                if let Some(pinned) = pinned {
                    ctx.spool.give_back_results(pinned);
                }
                let why = format!("could not sync its collected results to disk: {e}");
                return pause_collection(ctx, index, job, &why, true);
            }
            let Some(last) = record_collection(ctx, index, job, status, &collected, pinned) else {
                return;
            };
            log::info!("Collected results of job {} ({files} output files)", job.id);
            announce::ended(ctx, &job.id, last, Some(&collected.logs));
        }
        Err(CollectError::Gone) => lose(ctx, index, &job.id, &job.remote, gone_why(ctx, &job.id)),
        Err(e @ CollectError::Disk(_)) => pause_collection(ctx, index, job, &e.to_string(), true),
        Err(e @ CollectError::Worker(CallError::Shortage(_))) => {
            pause_collection(ctx, index, job, &e.to_string(), false)
        }
        Err(e) => retry_collection(ctx, index, endpoint, job, &e.to_string()),
    }
}

/// Why a job whose results the worker deleted is lost, with the last failure to store them
/// when there was one (the disk was full until the worker gave up on the job).
fn gone_why(ctx: &Context, id: &str) -> String {
    let gone = CollectError::Gone.to_string();
    match ctx.lock().jobs.get(id).map(|j| &j.collection) {
        Some(Collection::Pending(Some(last))) => {
            format!("{gone} (the last try: {last}); {SANDRUN_DELETES}")
        }
        _ => format!("{gone}; {SANDRUN_DELETES}"),
    }
}

/// Why a worker forgets a job it ran, said with a loss for which that is the likely cause.
const SANDRUN_DELETES: &str = "sandrun deletes a job 6 minutes after its submit, its wait \
     in the worker's queue included, even as it ends (so a job queued there behind long ones \
     can be deleted the moment it ends, and one deleted while it waits crashes sandrun when its \
     turn comes: give such a worker max_concurrent_jobs 1), at once after GET /download/{id}, \
     and all of them when it restarts";

/// Leaves a job's collection pending after its results could not be stored (a full disk, a
/// failed sync; `worker_answered`) or fetched for the coordinator's own shortage. Neither counts
/// towards `--lost-after`: the job is tried again after a pause (see
/// [`WorkerEntry::pause_collection`]) until the disk takes its results or the worker deletes
/// the job.
fn pause_collection(ctx: &Context, index: usize, job: &Followed, why: &str, worker_answered: bool) {
    let pause = {
        let mut st = ctx.lock();
        if let Some(j) = st.jobs.get_mut(&job.id) {
            j.collection = Collection::Pending(Some(why.to_string()));
            if worker_answered {
                j.heard_from_worker(unix_now());
            } else {
                j.excuse_silence();
            }
        }
        st.workers
            .get_mut(index)
            .map(|w| w.pause_collection(&job.id, Instant::now(), None))
    };
    ctx.collection_ended(&job.id);
    let logged = pause.and_then(|pause| Some((pause, lock(&PAUSE_LOGS).check(Instant::now())?)));
    if let Some((pause, held)) = logged {
        log::warn!(
            "Job {}: {why}; trying again in {} s{}",
            job.id,
            pause.as_secs(),
            Repeats::suffix(held)
        );
    }
}

/// Leaves a job's collection pending with the reason after a try failed on the worker's side;
/// it is tried again after a pause while the worker still has the job, else lost (see
/// [`collect_retry`]).
fn retry_collection(ctx: &Context, index: usize, endpoint: &str, job: &Followed, why: &str) {
    if let Some(j) = ctx.lock().jobs.get_mut(&job.id) {
        j.collection = Collection::Pending(Some(why.to_string()));
    }
    ctx.collection_ended(&job.id);
    match collect_retry::after_failure(ctx, index, endpoint, &job.id, &job.remote, why) {
        Next::Retry => {}
        Next::Gone => lose(ctx, index, &job.id, &job.remote, gone_why(ctx, &job.id)),
        Next::Silent(why) => lose(ctx, index, &job.id, &job.remote, why),
    }
}

fn give_up_if_stale(ctx: &Context, index: usize, job: &Followed, why: &str) {
    let silent_for = job.heard_at.elapsed().as_secs_f64();
    if silent_for > ctx.config.lost_after.as_secs_f64() {
        lose(
            ctx,
            index,
            &job.id,
            &job.remote,
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
            // Not that job any more: it is not deleted there.
            Ok(status) if names_another_job(ctx, &job.id, &status) => {
                lose_to_another_job(ctx, index, job);
                return true;
            }
            Ok(status) => {
                let finished = matches!(
                    status.get("status").and_then(Value::as_str),
                    Some("completed" | "failed")
                );
                let mut st = ctx.lock();
                if !holds(&st, index, &job.id, &job.remote) {
                    return false;
                }
                if let Some(j) = st.jobs.get_mut(&job.id) {
                    j.heard_from_worker(unix_now());
                }
                if !finished {
                    return false;
                }
                worker_ended_cancelled(ctx, &mut st, index, &job.id);
                ended = true;
            }
            Err(CallError::Status { code: 404, .. }) => {
                let mut st = ctx.lock();
                if !holds(&st, index, &job.id, &job.remote) {
                    return false;
                }
                worker_ended_cancelled(ctx, &mut st, index, &job.id);
                untrack(&mut st, index, &job.id);
                ctx.record(&st, &job.id);
                return true;
            }
            Err(CallError::Shortage(why)) => {
                excuse_silence(ctx, &job.id, &why);
                return false;
            }
            Err(e) => {
                if job.heard_at.elapsed() > ctx.config.lost_after {
                    let mut st = ctx.lock();
                    worker_ended_cancelled(ctx, &mut st, index, &job.id);
                    untrack(&mut st, index, &job.id);
                    ctx.record(&st, &job.id);
                    log::warn!(
                        "Cancelled job {}: its worker has not answered for a while ({e}); its slot is freed",
                        job.id
                    );
                }
                return false;
            }
        }
    }
    // Deleted only as the job its worker still has under that id: a worker that restarted
    // meanwhile may have given the id to another job (see `pool/reused_ids.rs`).
    if !holds(&ctx.lock(), index, &job.id, &job.remote) {
        return ended;
    }
    match ctx.client.delete_ended(endpoint, &job.remote) {
        Ok(()) | Err(CallError::Status { code: 404, .. }) => {
            untrack_and_record(ctx, index, &job.id);
            log::info!("Cancelled job {} deleted on its worker", job.id);
        }
        Err(CallError::Shortage(why)) => excuse_silence(ctx, &job.id, &why),
        Err(e) => {
            if job.heard_at.elapsed() > ctx.config.lost_after {
                untrack_and_record(ctx, index, &job.id);
                log::warn!(
                    "Cancelled job {} could not be deleted on its worker: {e}",
                    job.id
                );
            }
        }
    }
    ended
}

/// Stops following a job and records it (settled: it then leaves the table).
fn untrack_and_record(ctx: &Context, index: usize, id: &str) {
    let mut st = ctx.lock();
    untrack(&mut st, index, id);
    ctx.record(&st, id);
}

/// A cancelled job ended on its worker (or the worker lost it): its slot is freed.
fn worker_ended_cancelled(ctx: &Context, st: &mut PoolState, index: usize, id: &str) {
    let Some(job) = st.jobs.get_mut(id) else {
        return;
    };
    if !std::mem::take(&mut job.ending_on_worker) {
        return;
    }
    job.heard_from_worker(unix_now());
    let source = job.source_address;
    st.workers[index].release_slot(source, None);
    log::info!("Cancelled job {id} ended on its worker; its slot is free");
    ctx.wake_scheduler();
}

/// Whether worker `index` follows job `id` as its job `remote`: not when another thread
/// settled, cancelled and ended, or requeued the job since it was read for a follow-up, nor when
/// the worker gave its id to a job it took later (see `pool/reused_ids.rs`).
pub(crate) fn holds(st: &PoolState, index: usize, id: &str, remote: &str) -> bool {
    st.workers
        .get(index)
        .is_some_and(|w| w.tracked.iter().any(|t| t == id))
        && st.jobs.get(id).is_some_and(|j| j.is_on(remote))
}

/// Marks job `id`, its worker's job `remote`, lost, frees its slot if it still held one, and
/// stops following it; does nothing when the worker no longer follows it as that job.
pub(crate) fn lose(ctx: &Context, index: usize, id: &str, remote: &str, why: String) {
    let mut st = ctx.lock();
    if !holds(&st, index, id, remote) {
        return;
    }
    let Some(job) = st.jobs.get(id) else {
        return;
    };
    if job.status == PoolStatus::Cancelled {
        worker_ended_cancelled(ctx, &mut st, index, id);
        untrack(&mut st, index, id);
        ctx.record(&st, id);
        return;
    }
    let held_slot = !job.status.is_final();
    let counted_end = job.end_counted.then_some(job.status);
    let source = job.source_address;
    if rerun::requeue_if_allowed(ctx, &mut st, id, &why) {
        let w = &mut st.workers[index];
        if held_slot {
            w.release_slot(source, None);
        }
        count_lost(&mut w.counters, counted_end);
        w.streaming.retain(|s| s != id);
        untrack(&mut st, index, id);
        ctx.record(&st, id);
        drop(st);
        ctx.collection_ended(id);
        return;
    }
    if let Some(job) = st.set_status(id, PoolStatus::Lost) {
        job.error = Some(why.clone());
        job.completed_at.get_or_insert_with(unix_now);
    }
    let w = &mut st.workers[index];
    if held_slot {
        w.release_slot(source, None);
    }
    count_lost(&mut w.counters, counted_end);
    untrack(&mut st, index, id);
    ctx.record(&st, id);
    let last = announce::last_lines(&st, id);
    drop(st);
    ctx.collection_ended(id);
    log::warn!("Job {id} is lost: {why}");
    announce::ended(ctx, id, last, None);
    if held_slot {
        ctx.wake_scheduler();
    }
}

/// Counts a job lost on its worker, once: a job whose end there was counted (`counted_end`:
/// completed or failed) before its results were lost moves to the lost count.
fn count_lost(counters: &mut WorkerCounters, counted_end: Option<PoolStatus>) {
    match counted_end {
        Some(PoolStatus::Completed) => counters.completed = counters.completed.saturating_sub(1),
        Some(PoolStatus::Failed) => counters.failed = counters.failed.saturating_sub(1),
        _ => {}
    }
    counters.lost += 1;
}
