//! sandrun's executor thread: every poll interval it takes the next job and runs it while
//! holding the jobs lock, then deletes old jobs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::control::lock;
use super::runner::{sleep_while_alive, RunRequest};
use super::state::{Incarnation, Shared};
use super::stream;

/// How often a held job (the `hold_jobs` knob) looks whether it may end.
const HOLD_TICK: Duration = Duration::from_millis(10);

/// Runs queued jobs one at a time until the incarnation stops.
pub fn run(shared: Arc<Shared>, run: Arc<Incarnation>) {
    while run.is_alive() {
        sleep_while_alive(shared.control.get().poll_interval, &run.alive);
        if !run.is_alive() {
            break;
        }
        if shared.control.get().hold_queue {
            continue;
        }
        let next = lock(&run.jobs).pop_next();
        if let Some((id, ip)) = next {
            if !lock(&run.jobs).jobs.contains_key(&id) {
                crash(&shared, &run, &id);
                return;
            }
            run_one(&shared, &run, &id, &ip);
            if stream::died_of_sigpipe(&shared, &run) {
                return;
            }
        }
        lock(&run.jobs).expire(shared.control.get().delete_after);
    }
}

/// What sandrun does when its queue names a job that was deleted while queued: the executor
/// finds nothing and the process dies (`/health` stops answering).
fn crash(shared: &Shared, run: &Incarnation, id: &str) {
    let what = format!("queued job {id} was deleted before it ran: the worker crashed");
    eprintln!("dev-worker: {what}");
    shared.recorder.fault(what);
    run.kill();
}

/// Runs one job holding the jobs lock, then frees its rate-limit slot.
fn run_one(shared: &Shared, run: &Incarnation, id: &str, ip: &str) {
    let mut table = lock(&run.jobs);
    let mut cpu_seconds = 0.0;
    if let Some(job) = table.jobs.get_mut(id) {
        job.status = "running";
        job.queue_position = 0;
        shared.recorder.started(id);
        stream::started(shared, run, id);
        let knobs = shared.control.get();
        let started = Instant::now();
        let live = |line: &str| run.broadcaster.broadcast(id, line);
        let request = RunRequest {
            job_id: &job.id,
            dir: &job.dir,
            interpreter: &job.spec.interpreter,
            entrypoint: &job.spec.entrypoint,
            args: &job.spec.args,
            live: &live,
        };
        let outcome = shared.runner.run(&request, &knobs, &run.alive);
        while shared.control.get().hold_jobs && run.is_alive() {
            sleep_while_alive(HOLD_TICK, &run.alive);
        }
        if !run.is_alive() {
            return;
        }
        let knobs = shared.control.get();
        // As sandrun: the output goes out first, then the outputs are hashed and the result
        // signed, then `[DONE]`.
        stream::output(shared, run, id, (&outcome.stdout, &outcome.stderr));
        job.finish(outcome, started.elapsed(), shared.shown_key(&knobs));
        stream::tamper(shared, job);
        cpu_seconds = job.cpu_seconds;
        stream::done(
            shared,
            run,
            id,
            job.status,
            (job.exit_code, job.cpu_seconds, job.memory_mb),
        );
    }
    drop(table);
    lock(&run.limiter).register_end(ip, id, cpu_seconds);
}
