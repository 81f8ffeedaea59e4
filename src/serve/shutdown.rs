//! Graceful shutdown on SIGTERM or SIGINT: stop accepting connections and submits, answer the
//! requests in progress (a parked `?wait=` with its job's status as it stands), end followed
//! streams with a line saying so, let dispatches in flight
//! settle and the wipes of deleted or forgotten jobs' results that waited for those requests be
//! made (up to `--shutdown-grace`), commit and close the job store, exit 0. Jobs running on
//! workers keep running there and are followed again after the restart.

use crate::base::job::PoolStatus;
use crate::state::context::Context;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// How long a shutdown waits for the access log's last lines to be written.
const ACCESS_LOG_FLUSH: Duration = Duration::from_secs(2);

/// Submits whose answer has not been recorded yet (assigned or sent to a worker).
fn dispatches_in_flight(ctx: &Context) -> usize {
    ctx.lock()
        .jobs
        .values()
        .filter(|j| j.status == PoolStatus::Dispatched && j.remote_job_id.is_none())
        .count()
}

/// Says once (`told`) that the stop waits on a job store that writes nothing (the disk does
/// not answer): requests and dispatches waiting on it, and its close, end only once it writes.
fn told_stall(ctx: &Context, told: &mut bool) {
    if *told {
        return;
    }
    if let Some(stalled) = ctx.store.stalled_for() {
        *told = true;
        log::error!(
            "The job store has written nothing for {:.0} s (the disk under the state directory \
             does not answer); the stop is waiting for it to write its last changes. A second \
             signal stops at once: every committed change is kept",
            stalled.as_secs_f64()
        );
    }
}

/// Runs the shutdown; never returns (the process exits 0).
pub fn run(ctx: &Arc<Context>, server: &tiny_http::Server) {
    log::info!(
        "Shutting down: no new connections or submits; waiting up to {:.0} s for requests and dispatches in flight",
        ctx.config.shutdown_grace.as_secs_f64()
    );
    ctx.stopping.store(true, Ordering::SeqCst);
    {
        let mut st = ctx.lock();
        st.stopping = true;
        st.ends.stopping();
    }
    server.stop_accepting();
    // Followed streams end with a line saying why (a WebSocket with 1001, going away).
    ctx.events.end_followers();
    let deadline = Instant::now() + ctx.config.shutdown_grace;
    let mut told = false;
    loop {
        told_stall(ctx, &mut told);
        let requests = ctx.requests_in_flight.load(Ordering::SeqCst);
        // Parked `?wait=` requests, which the waiting thread is answering.
        let parked = ctx.parked.load(Ordering::SeqCst);
        let dispatches = dispatches_in_flight(ctx);
        // A deleted or forgotten job's results wait to be wiped until the downloads reading
        // them end.
        let wipes = ctx.spool.removals().pending_wipes();
        let followers = ctx.events.follower_count();
        if requests == 0 && parked == 0 && dispatches == 0 && wipes == 0 && followers == 0 {
            break;
        }
        if Instant::now() >= deadline {
            log::warn!(
                "Shutdown grace over with {requests} requests, {parked} parked status requests, \
                 {followers} followed streams and \
                 {dispatches} dispatches in flight; \
                 those dispatches will be lost after the restart if their worker took them; \
                 {wipes} wipes of deleted or forgotten jobs' results not made (the next start's \
                 scrub punches those bytes out)"
            );
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    told_stall(ctx, &mut told);
    ctx.store.close();
    if let Some(access_log) = &ctx.access_log {
        if !access_log.flush(ACCESS_LOG_FLUSH) {
            log::warn!("The access log's last lines were not written within {ACCESS_LOG_FLUSH:?}");
        }
    }
    log::info!("Job store closed; stopped");
    std::process::exit(0);
}
