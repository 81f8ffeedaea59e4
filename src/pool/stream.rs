//! Following a job on its worker's WebSocket stream (`/stream/{remote id}`), one reused thread
//! per job in flight. The stream tells the job's start and end at once: `[STATUS] Job started`
//! (or `[STATUS] Job status: running` for a stream opened while the job ran, as after a
//! restart) moves the job to `running`, output frames go to the job's followers, and at `[DONE]`
//! (its CPU, exit and memory figures kept for the signature check) the coordinator closes the
//! stream (sandrun leaves it open) and the same thread follows the job's end up at once: status,
//! signature check, collection ([`tracker::follow_now`]). A stream that cannot be
//! opened, drops or stays silent just ends: the tracker's polling, slowed while the stream is
//! open, takes over at its normal pace.

use crate::base::job::PoolStatus;
use crate::base::paths::encode_path;
use crate::pool::tracker;
use crate::state::context::Context;
use crate::worker::signature::parse_done;
use crate::worker::websocket::{Message, StreamTimeouts};
use std::sync::Arc;

/// Starts following job `id` (remote `remote`) of worker `index` on the worker's stream. The
/// caller has already put the job in the worker's `streaming` list.
pub fn subscribe(ctx: &Arc<Context>, index: usize, id: String, endpoint: String, remote: String) {
    let thread_ctx = Arc::clone(ctx);
    let failed_id = id.clone();
    let task = Box::new(move || follow(&thread_ctx, index, &id, &endpoint, &remote));
    if let Err(e) = ctx.streams.run(task) {
        log::warn!("Cannot start a stream thread for job {failed_id}: {e}; polling it");
        stream_ended(ctx, index, &failed_id, false);
    }
}

fn follow(ctx: &Context, index: usize, id: &str, endpoint: &str, remote: &str) {
    let timeouts = StreamTimeouts {
        connect: ctx.config.health_timeout,
        idle: ctx.config.dispatch_timeout,
    };
    let path = format!("/stream/{}", encode_path(remote));
    let mut client = match ctx.client.open_stream(endpoint, &path, timeouts) {
        Ok(c) => c,
        Err(e) => {
            log::debug!("Job {id}: the worker stream did not open ({e}); polling it");
            stream_ended(ctx, index, id, false);
            return;
        }
    };
    loop {
        match client.read_message() {
            Ok(Message::Text(text)) => {
                if let Some(figures) = parse_done(&text) {
                    if let Some(job) = ctx.lock().jobs.get_mut(id) {
                        if figures.is_some() {
                            job.done_figures = figures.map(Box::new);
                        }
                    }
                    client.close();
                    if !tracker::follow_now(ctx, index, id) {
                        stream_ended(ctx, index, id, true);
                    }
                    return;
                }
                if text.starts_with("[STATUS] Job started")
                    || text.starts_with("[STATUS] Job status: running")
                {
                    mark_started(ctx, id);
                } else if text.starts_with("[ERROR]") {
                    log::debug!("Job {id}: the worker stream says {}", text.trim_end());
                    break;
                } else if !text.starts_with("[STATUS]") {
                    ctx.events.output(id, text);
                }
            }
            Ok(Message::Close(_)) => break,
            Ok(Message::Ping) => {}
            Err(e) => {
                log::debug!("Job {id}: the worker stream ended ({e}); polling it");
                break;
            }
        }
        // A job whose end its polling saw first, or that left the table, needs no stream: a
        // worker that keeps it open without [DONE] (pinging, say) holds no thread for it.
        if !still_going(ctx, id) {
            log::debug!("Job {id}: ended before its worker stream said so; stream closed");
            break;
        }
    }
    client.close();
    stream_ended(ctx, index, id, false);
}

/// Whether job `id` is still in the table and has not ended.
fn still_going(ctx: &Context, id: &str) -> bool {
    ctx.lock()
        .jobs
        .get(id)
        .is_some_and(|job| !job.status.is_final())
}

/// The worker says the job started: `running` at once, and its followers hear of it.
fn mark_started(ctx: &Context, id: &str) {
    let mut st = ctx.lock();
    if st.jobs.get(id).map(|j| j.status) == Some(PoolStatus::Dispatched) {
        st.set_status(id, PoolStatus::Running);
        ctx.record(&st, id);
        drop(st);
        ctx.events.line(id, "[STATUS] Job started\n".to_string());
    }
}

/// The stream is over: the tracker polls the job at once (`done`: its end was announced) or at
/// its normal pace from now on.
fn stream_ended(ctx: &Context, index: usize, id: &str, done: bool) {
    let mut st = ctx.lock();
    // The job's own entry only: a forgotten worker's place may hold another worker by now.
    let Some(w) = st
        .workers
        .get_mut(index)
        .filter(|w| w.streaming.iter().chain(&w.tracked).any(|s| s == id))
    else {
        return;
    };
    w.streaming.retain(|s| s != id);
    if done || w.tracked.iter().any(|t| t == id) {
        w.poll_now.push(id.to_string());
    }
    let wake = w.tracker_wake.clone();
    drop(st);
    wake.notify();
}
