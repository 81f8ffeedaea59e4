//! Dispatch of one job to one worker, on a thread of its own (from a cache of reused threads) so
//! a worker that takes minutes to accept (sandrun holds its lock while a job runs) never stalls
//! the scheduler or other workers.

use crate::base::clock::{doubling_pause, unix_now};
use crate::base::job::{Attempt, InputFile, PoolStatus, Span};
use crate::base::log_repeats::{Repeats, REPEAT_PERIOD};
use crate::base::shortage::is_shortage;
use crate::base::sync::lock;
use crate::pool::health::mark_unreachable;
use crate::pool::{announce, rerun, reused_ids, stream, tracker};
use crate::state::context::Context;
use crate::state::metrics::DispatchOutcome;
use crate::state::pool_state::{PoolState, Throttle, WorkerEntry};
use crate::state::sources::limit_named;
use crate::worker::client::SubmitOutcome;
use crate::worker::identity::short_id;
use crate::worker::multipart_body::{MultipartBody, Part, BOUNDARY_PREFIX};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a source address that could not be bound is left unused.
const UNUSABLE_SOURCE_REST: Duration = Duration::from_secs(60);
/// The pauses of one spell of held dispatching (at most 8 s apart), logged at most once a minute.
static HOLD_LOGS: Mutex<Repeats> = Mutex::new(Repeats::new(REPEAT_PERIOD));

/// A job the scheduler gave to a worker; its slot on the worker is already reserved.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// The pool job id.
    pub job_id: String,
    /// Index of the worker in the table.
    pub worker_index: usize,
    /// The worker's id.
    pub worker_id: String,
    /// The worker's base URL.
    pub endpoint: String,
    /// The local address the submit leaves from (None: the system's choice).
    pub source: Option<IpAddr>,
    /// The job's `files` parts.
    pub inputs: Vec<InputFile>,
    /// Where the manifest part lies in the upload file, if there is one.
    pub manifest: Option<Span>,
    /// When the scheduler made it.
    pub assigned_at: Instant,
}

/// Starts the dispatch of an assignment on a dispatch thread of its own.
pub fn start(ctx: &Arc<Context>, assignment: Assignment) {
    start_as(ctx, assignment, false);
}

/// Like [`start`] for a job whose record already says it is dispatched (a submit that went
/// to a worker at once, recorded so in its first commit).
pub fn start_recorded(ctx: &Arc<Context>, assignment: Assignment) {
    start_as(ctx, assignment, true);
}

fn start_as(ctx: &Arc<Context>, assignment: Assignment, recorded: bool) {
    let thread_ctx = Arc::clone(ctx);
    let job_id = assignment.job_id.clone();
    let index = assignment.worker_index;
    let started = ctx.dispatchers.run(Box::new(move || {
        // At most once: the store must say the submit may have been sent before it is, so
        // that a crash in between makes the job lost after the restart, never sent twice.
        if !recorded {
            if let Err(e) = thread_ctx.record_and_wait(&assignment.job_id) {
                let mut st = thread_ctx.lock();
                st.workers[assignment.worker_index].undo_assignment(assignment.source);
                let why = e.to_string();
                held_back(&thread_ctx, st, &assignment, NotSent::Unrecorded, &why);
                return;
            }
        }
        let started = Instant::now();
        let outcome = send(&thread_ctx, &assignment);
        thread_ctx
            .metrics
            .dispatch
            .observe(started.elapsed().as_secs_f64());
        settle(&thread_ctx, &assignment, outcome);
    }));
    if let Err(e) = started {
        log::error!("Could not start a dispatch thread for job {job_id}: {e}");
        let mut st = ctx.lock();
        let source = st.jobs.get(&job_id).and_then(|j| j.source_address);
        st.workers[index].undo_assignment(source);
        if st.is_cancelled(&job_id) {
            if let Some(job) = st.jobs.get_mut(&job_id) {
                job.ending_on_worker = false;
            }
            ctx.record(&st, &job_id);
            drop(st);
            ctx.spool.remove_upload(&job_id);
        } else {
            st.requeue_front(&job_id);
            ctx.record(&st, &job_id);
        }
    }
}

/// Why a dispatch was not sent, through no fault of the worker's or the job's.
#[derive(Debug, Clone, Copy)]
enum NotSent {
    /// The job store could not record it (a full disk).
    Unrecorded,
    /// The coordinator was short of descriptors, memory or socket buffers to make the call.
    Shortage,
}

/// A dispatch that was not sent for the coordinator's own trouble (`cause`, `why`), its slot
/// on the worker already given back: the job goes back to the head of the queue without an
/// attempt counted, the worker keeps its health, and dispatching is held until the next try.
fn held_back(
    ctx: &Arc<Context>,
    mut st: MutexGuard<'_, PoolState>,
    a: &Assignment,
    cause: NotSent,
    why: &str,
) {
    if st.is_cancelled(&a.job_id) {
        settle_cancelled(ctx, st, a, SubmitOutcome::NotSent(why.to_string()));
        return;
    }
    st.requeue_front(&a.job_id);
    ctx.record(&st, &a.job_id);
    let paused = st.hold_dispatching(why.to_string(), Instant::now());
    drop(st);
    let held = paused.and_then(|pause| Some((pause, lock(&HOLD_LOGS).check(Instant::now())?)));
    let what = match cause {
        NotSent::Unrecorded => "could not be recorded as dispatched, so it was not sent",
        NotSent::Shortage => {
            "could not be sent: the coordinator is short of resources, not the worker"
        }
    };
    match held {
        Some((pause, held)) => log::warn!(
            "Dispatching is held for {} s: job {} {what} ({why}); queued jobs keep their places{}",
            pause.as_secs(),
            a.job_id,
            Repeats::suffix(held)
        ),
        None => log::debug!("Job {} goes back to the head of the queue: {why}", a.job_id),
    }
    ctx.wake_scheduler();
}

fn send(ctx: &Context, a: &Assignment) -> SubmitOutcome {
    let boundary = match ctx.spool.random_hex() {
        Ok(token) => format!("{BOUNDARY_PREFIX}{token}"),
        Err(e) => return SubmitOutcome::NotSent(format!("no random boundary: {e}")),
    };
    let source = match ctx.upload_source(&a.job_id) {
        Ok(source) => source,
        Err(e) if is_shortage(&e) => {
            return SubmitOutcome::Shortage(format!("cannot open the job's upload: {e}"))
        }
        Err(e) => return SubmitOutcome::NotSent(e.to_string()),
    };
    let mut parts: Vec<Part> = a
        .inputs
        .iter()
        .map(|input| Part {
            name: "files",
            filename: Some(input.filename.clone()),
            content_type: Some(input.content_type.clone()),
            source: source.clone(),
            span: input.span,
        })
        .collect();
    if let Some(span) = a.manifest {
        parts.push(Part {
            name: "manifest",
            filename: None,
            content_type: None,
            source,
            span,
        });
    }
    let bytes: u64 = parts.iter().map(|p| p.span.size).sum();
    let started = Instant::now();
    let outcome = ctx
        .client
        .submit(&a.endpoint, a.source, MultipartBody::new(boundary, &parts));
    log::debug!(
        "Job {}: its submit of {bytes} bytes in {} parts to {} was answered in {} ms",
        a.job_id,
        parts.len(),
        a.endpoint,
        started.elapsed().as_millis()
    );
    outcome
}

/// The pause after a 429: by the worker's own words, doubling with each 429 in a row.
fn throttle_pause(message: &str, strikes: u32) -> (Duration, bool) {
    let doubling = |first: u64, most: u64| {
        doubling_pause(
            Duration::from_secs(first),
            strikes,
            Duration::from_secs(most),
        )
    };
    if message.contains("per hour") {
        return (doubling(60, 900), false);
    }
    if let Some(secs) = message
        .split("wait ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
    {
        return (Duration::from_secs(secs.clamp(1, 3600) + 1), false);
    }
    if message.contains("CPU") {
        return (doubling(15, 300), false);
    }
    (doubling(2, 60), true)
}

/// The limit a concurrency 429 names: `Max concurrent jobs reached (2)`.
fn named_limit(message: &str) -> Option<u32> {
    let rest = message.split("Max concurrent jobs reached (").nth(1)?;
    rest.split(')')
        .next()?
        .trim()
        .parse()
        .ok()
        .filter(|n| *n >= 1)
}

/// Takes the limit a 429 (or a `/stats` reason) names as the worker's cap (see
/// `WorkerEntry::cap`).
pub(crate) fn learn_cap(st: &mut PoolState, index: usize, message: &str) {
    let Some(limit) = named_limit(message) else {
        return;
    };
    let w = &mut st.workers[index];
    w.client_limits.max_active = limit;
    if w.learned_cap != Some(limit) {
        w.learned_cap = Some(limit);
        log::info!(
            "Worker {}... allows {limit} concurrent jobs per client (learned from its 429); its cap is now {}",
            short_id(&w.spec.worker_id),
            w.cap()
        );
    }
}

/// The throttle a 429 or 5xx sets over `current`, and whether it repeats the same message.
/// `exact` replaces the guessed pause when the end is known.
fn next_throttle(
    current: Option<&Throttle>,
    message: String,
    lifted_by_free_slot: bool,
    has_jobs: bool,
    exact: Option<Duration>,
) -> (Throttle, bool) {
    let strikes = current.map_or(0, |t| t.strikes) + 1;
    let (guessed, by_slot) = throttle_pause(&message, strikes);
    let pause = exact.unwrap_or(guessed);
    let repeated = current.is_some_and(|t| t.reason == message);
    let throttle = Throttle {
        until: Instant::now() + pause,
        until_unix: unix_now() + pause.as_secs_f64(),
        reason: message,
        strikes,
        lifted_by_free_slot: lifted_by_free_slot && by_slot && has_jobs,
    };
    (throttle, repeated)
}

fn throttle(st: &mut PoolState, index: usize, message: String, lifted_by_free_slot: bool) {
    let w = &mut st.workers[index];
    let (throttle, repeated) = next_throttle(
        w.throttle.as_ref(),
        message,
        lifted_by_free_slot,
        w.active_jobs > 0,
        None,
    );
    if !repeated {
        log::warn!(
            "Worker {}... is throttling: {} (no dispatch to it for {:.0} s)",
            short_id(&w.spec.worker_id),
            throttle.reason,
            throttle
                .until
                .saturating_duration_since(Instant::now())
                .as_secs_f64()
        );
    }
    w.throttle = Some(throttle);
}

/// A 429 to a submit from one of the worker's source addresses (`refused`), or a `/stats` from
/// it saying it may not submit: only that address waits. An hourly limit the message names
/// becomes the worker's per-address one (the concurrency limit is learned by `learn_cap`, and
/// applies per address). After a 429 the address asks `/stats` again.
pub(crate) fn throttle_source(
    w: &mut WorkerEntry,
    address: IpAddr,
    message: String,
    refused: bool,
) {
    if message.contains("per hour") {
        w.client_limits.per_hour = limit_named(&message).unwrap_or(w.client_limits.per_hour);
    }
    let per_hour = w.client_limits.per_hour;
    let short = short_id(&w.spec.worker_id).to_string();
    let Some(source) = w.source_mut(Some(address)) else {
        return;
    };
    let now = Instant::now();
    let exact = message
        .contains("per hour")
        .then(|| source.hour_frees_at(now, per_hour))
        .flatten()
        .map(|at| {
            at.saturating_duration_since(now)
                .max(Duration::from_secs(1))
        });
    let (throttle, repeated) = next_throttle(
        source.throttle.as_ref(),
        message,
        true,
        source.in_flight > 0,
        exact,
    );
    if refused {
        source.throttled_total += 1;
        source.want_stats();
    }
    if !repeated {
        log::warn!(
            "Worker {short}... is throttling source address {address}: {} ({}no dispatch from it for {:.0} s)",
            throttle.reason,
            if refused { "" } else { "as its /stats says; " },
            throttle.until.saturating_duration_since(now).as_secs_f64()
        );
    }
    source.throttle = Some(throttle);
}

/// A source address that cannot be bound any more: it rests, the worker is not to blame.
fn rest_source(w: &mut WorkerEntry, address: IpAddr, why: String) {
    let Some(source) = w.source_mut(Some(address)) else {
        return;
    };
    if source.throttle.as_ref().is_none_or(|t| t.reason != why) {
        log::warn!(
            "{why} (source address unused for {} s)",
            UNUSABLE_SOURCE_REST.as_secs()
        );
    }
    source.throttle = Some(Throttle {
        until: Instant::now() + UNUSABLE_SOURCE_REST,
        until_unix: unix_now() + UNUSABLE_SOURCE_REST.as_secs_f64(),
        reason: why,
        strikes: 1,
        lifted_by_free_slot: false,
    });
}

/// A 429: pauses the source address the submit left from, or the whole worker without one.
fn throttled(st: &mut PoolState, a: &Assignment, message: String) {
    st.workers[a.worker_index].counters.throttled += 1;
    learn_cap(st, a.worker_index, &message);
    match a.source {
        Some(address) => throttle_source(&mut st.workers[a.worker_index], address, message, true),
        None => throttle(st, a.worker_index, message, true),
    }
}

fn finish(st: &mut PoolState, id: &str, status: PoolStatus, error: String) {
    if let Some(job) = st.set_status(id, status) {
        job.error = Some(error);
        job.completed_at = Some(unix_now());
    }
}

fn settle(ctx: &Arc<Context>, a: &Assignment, outcome: SubmitOutcome) {
    let id = a.job_id.as_str();
    let index = a.worker_index;
    let short = short_id(&a.worker_id);
    let mut st = ctx.lock();
    st.workers[index].in_flight = st.workers[index].in_flight.saturating_sub(1);
    // A dispatch assigned since dispatching was held was recorded and sent: the hold is over.
    let sent = !matches!(outcome, SubmitOutcome::Shortage(_));
    if let Some(hold) = st
        .dispatch_hold
        .take_if(|h| sent && a.assigned_at >= h.since)
    {
        lock(&HOLD_LOGS).reset();
        log::info!("Dispatching resumes (it was held: {})", hold.why);
    }
    if let SubmitOutcome::Accepted(remote) = outcome {
        let w = &mut st.workers[index];
        let now = Instant::now();
        w.counters.accepted += 1;
        w.known_ok = w.known_ok.max(w.active_jobs.saturating_sub(w.in_flight));
        w.counters.dispatched(DispatchOutcome::Accepted);
        if !w.is_throttled(now) {
            w.throttle = None;
        }
        if let Some(source) = w.source_mut(a.source) {
            source.note_accepted(now);
            if !source.is_throttled(now) {
                source.throttle = None;
            }
        }
        w.tracked.push(id.to_string());
        w.streaming.push(id.to_string());
        let endpoint = w.spec.endpoint.clone();
        let start_tracker = !w.tracker_running;
        w.tracker_running = true;
        let wake = w.tracker_wake.clone();
        if let Some(job) = st.jobs.get_mut(id) {
            let now = unix_now();
            job.remote_job_id = Some(remote.clone());
            job.dispatched_at = Some(now);
            job.heard_from_worker(now);
            ctx.metrics.queue_wait.observe(now - job.submitted_at);
        }
        ctx.record_soon(&st, id);
        let reused = reused_ids::holders_before(&mut st, index, id);
        // Opened under the table lock: once the lock is released the tracker may see the job
        // end and close its feed, and a feed opened after that would never be closed. A job
        // cancelled while its submit was on its way is over for followers already.
        if !st.is_cancelled(id) {
            announce::dispatched(ctx, id, &a.worker_id);
        }
        // A job that may run again after a lost run keeps its upload until it ends (one
        // cancelled meanwhile does not).
        let keep_upload = st.jobs.get(id).is_some_and(|job| job.needs_upload());
        // A worker whose slots beyond sandrun's usual limit are being probed takes no more
        // while a dispatch is in flight: jobs that wait for that end look again now.
        let waiting = !st.queue.is_empty();
        drop(st);
        if waiting {
            ctx.wake_scheduler();
        }
        log::info!("Dispatched job {id} to {short}... (remote: {remote})");
        reused_ids::lose(ctx, index, reused);
        stream::subscribe(ctx, index, id.to_string(), endpoint, remote);
        if !keep_upload {
            ctx.spool.remove_upload(id);
        }
        if start_tracker {
            tracker::start(ctx, index);
        } else {
            wake.notify();
        }
        return;
    }
    st.workers[index].return_reservation(a.source);
    if st.is_cancelled(id) {
        settle_cancelled(ctx, st, a, outcome);
        return;
    }
    let over = match outcome {
        SubmitOutcome::Accepted(_) => false,
        SubmitOutcome::Throttled(message) => {
            st.workers[index]
                .counters
                .dispatched(DispatchOutcome::Throttled);
            throttled(&mut st, a, message);
            st.requeue_front(id);
            false
        }
        SubmitOutcome::SourceUnusable(why) => {
            st.workers[index]
                .counters
                .dispatched(DispatchOutcome::Unreachable);
            if let Some(address) = a.source {
                rest_source(&mut st.workers[index], address, why);
            }
            st.requeue_front(id);
            false
        }
        SubmitOutcome::Rejected(code, message) => {
            st.workers[index].counters.failed += 1;
            st.workers[index]
                .counters
                .dispatched(DispatchOutcome::Rejected);
            let error = format!("worker {short}... rejected the job (HTTP {code}): {message}");
            log::warn!("Job {id} failed: {error}");
            finish(&mut st, id, PoolStatus::Failed, error);
            true
        }
        SubmitOutcome::ServerError(code, message) => {
            st.workers[index]
                .counters
                .dispatched(DispatchOutcome::ServerError);
            let error = format!("worker {short}... answered HTTP {code}: {message}");
            throttle(&mut st, index, format!("HTTP {code}: {message}"), false);
            retry_or_fail(ctx, &mut st, a, error)
        }
        SubmitOutcome::Shortage(why) => {
            return held_back(ctx, st, a, NotSent::Shortage, &why);
        }
        SubmitOutcome::NotSent(why) => {
            st.workers[index]
                .counters
                .dispatched(DispatchOutcome::Unreachable);
            let error = format!("worker {short}... {why}");
            mark_unreachable(ctx, &mut st, index, why);
            retry_or_fail(ctx, &mut st, a, error)
        }
        SubmitOutcome::Unknown(why) => {
            st.workers[index].counters.lost += 1;
            st.workers[index].counters.dispatched(DispatchOutcome::Lost);
            let unknown = format!("its dispatch had an unknown outcome: {why}");
            if rerun::requeue_if_allowed(ctx, &mut st, id, &unknown) {
                false
            } else {
                let error = format!(
                    "dispatch to worker {short}... had an unknown outcome, the job may or may not run there, so it is not run again: {why}"
                );
                log::warn!("Job {id} is lost: {error}");
                finish(&mut st, id, PoolStatus::Lost, error);
                true
            }
        }
    };
    ctx.record(&st, id);
    let last = over.then(|| announce::last_lines(&st, id));
    drop(st);
    if let Some(last) = last {
        ctx.spool.remove_upload(id);
        announce::ended(ctx, id, last, None);
    }
    ctx.wake_scheduler();
}

/// A dispatch the worker did not take, of a job cancelled meanwhile: it ends here (a 429 still
/// pauses the worker).
fn settle_cancelled(
    ctx: &Context,
    mut st: MutexGuard<'_, PoolState>,
    a: &Assignment,
    outcome: SubmitOutcome,
) {
    if let SubmitOutcome::Throttled(message) = outcome {
        throttled(&mut st, a, message);
    }
    if let Some(job) = st.jobs.get_mut(&a.job_id) {
        job.ending_on_worker = false;
    }
    ctx.record(&st, &a.job_id);
    drop(st);
    ctx.spool.remove_upload(&a.job_id);
    ctx.wake_scheduler();
}

/// Records a failed attempt; puts the job back at the head of the queue, or fails it when it is out
/// of attempts (then returns true).
fn retry_or_fail(ctx: &Context, st: &mut PoolState, a: &Assignment, error: String) -> bool {
    let id = a.job_id.as_str();
    let max_attempts = ctx.config.max_attempts as usize;
    let Some(job) = st.jobs.get_mut(id) else {
        return false;
    };
    job.attempts.push(Attempt {
        worker_id: a.worker_id.clone(),
        error: error.clone(),
    });
    job.worker_id = None;
    if job.attempts.len() >= max_attempts {
        let reasons: Vec<String> = job.attempts.iter().map(|t| t.error.clone()).collect();
        let error = format!(
            "dispatch failed {} times: {}",
            reasons.len(),
            reasons.join("; ")
        );
        log::warn!("Job {id} failed: {error}");
        finish(st, id, PoolStatus::Failed, error);
        true
    } else {
        log::warn!("Job {id} goes back to the head of the queue: {error}");
        st.requeue_front(id);
        false
    }
}
