//! Following a job on its worker's WebSocket stream (`/stream/{remote id}`), one reused thread
//! per job in flight. The stream tells the job's start and end at once: `[STATUS] Job started`
//! (or `[STATUS] Job status: running` for a stream opened while the job ran, as after a
//! restart) moves the job to `running`, output frames go to the job's followers, and at `[DONE]`
//! (its CPU, exit and memory figures kept for the signature check) the same thread follows the
//! job's end up at once: status, signature check, collection ([`tracker::follow_now`]). A
//! stream is closed only once sandrun writes nothing more to it (a frame sandrun writes to a
//! closed stream raises SIGPIPE, which kills it): see [`Seen`]. A stream that cannot be
//! opened, drops or stays silent just ends: the tracker's polling, slowed while the stream is
//! open, takes over at its normal pace. A stream speaks for its run only: once that run was
//! lost and its job queued to run again, what the stream still gets goes nowhere.

use crate::base::job::{DoneFigures, PoolStatus};
use crate::base::paths::encode_path;
use crate::base::sync::lock;
use crate::pool::tracker;
use crate::state::context::Context;
use crate::worker::signature::parse_done;
use crate::worker::websocket::{Message, StreamTimeouts, WsClient, WsError};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Starts following job `id` (remote `remote`) of worker `index` on the worker's stream. The
/// caller has already put the job in the worker's `streaming` list.
pub fn subscribe(ctx: &Arc<Context>, index: usize, id: String, endpoint: String, remote: String) {
    let thread_ctx = Arc::clone(ctx);
    let (failed_id, failed_remote) = (id.clone(), remote.clone());
    let task = Box::new(move || follow(&thread_ctx, index, &id, &endpoint, &remote));
    if let Err(e) = ctx.streams.run(task) {
        log::warn!("Cannot start a stream thread for job {failed_id}: {e}; polling it");
        stream_ended(ctx, index, &failed_id, &failed_remote);
    }
}

fn follow(ctx: &Arc<Context>, index: usize, id: &str, endpoint: &str, remote: &str) {
    let timeouts = StreamTimeouts {
        connect: ctx.config.health_timeout,
        idle: ctx.config.dispatch_timeout,
    };
    let path = format!("/stream/{}", encode_path(remote));
    let mut client = match ctx.client.open_stream(endpoint, &path, timeouts) {
        Ok(c) => c,
        Err(e) => {
            log::debug!("Job {id}: the worker stream did not open ({e}); polling it");
            stream_ended(ctx, index, id, remote);
            return;
        }
    };
    let mut seen = Seen::default();
    let ended = loop {
        match client.read_message() {
            Ok(Message::Text(text)) => {
                let first = seen.note(&text);
                if let Some(figures) = parse_done(&text) {
                    seen.keep(ctx, id, remote, figures);
                    break Ended::Done;
                }
                if text.starts_with("[STATUS] Job started")
                    || text.starts_with("[STATUS] Job status: running")
                {
                    mark_started(ctx, id, remote);
                } else if first && text.starts_with("[ERROR]") {
                    log::debug!("Job {id}: the worker stream says {}", text.trim_end());
                    break Ended::Left;
                } else if !text.starts_with("[STATUS]") {
                    output(ctx, id, remote, text);
                }
            }
            Ok(Message::Close(_)) => break Ended::Closed,
            Ok(Message::Ping) => {}
            Err(e) => {
                log::debug!("Job {id}: the worker stream ended ({e}); polling it");
                break Ended::Closed;
            }
        }
        // A job whose end its polling saw first (on its worker too, for a cancelled one), or
        // that left the table, needs no stream: a worker that keeps it open without [DONE]
        // (pinging, say) holds no thread for it.
        if !still_going(ctx, id) {
            log::debug!("Job {id}: ended before its worker stream said so; stream closed");
            break Ended::Left;
        }
    };
    match ended {
        Ended::Closed => {
            client.close();
            stream_ended(ctx, index, id, remote);
        }
        Ended::Left => {
            if !seen.joined_queued() {
                read_last_frames(ctx, &mut client, id, remote, &mut seen);
            }
            client.close();
            stream_ended(ctx, index, id, remote);
        }
        Ended::Done if seen.joined_queued() => {
            match read_beside(ctx, client.socket_handle(), client, id) {
                Ok(socket) => {
                    if !tracker::follow_now(ctx, index, id, remote) {
                        stream_ended(ctx, index, id, remote);
                    } else if !still_going(ctx, id) {
                        // Its end known here, sandrun writes no more to the stream: the reader
                        // beside is let go at once, not at its next look.
                        if let Some(socket) = socket {
                            let _ = socket.shutdown(std::net::Shutdown::Read);
                        }
                    }
                }
                Err(mut client) => {
                    stream_ended(ctx, index, id, remote);
                    wait_for_the_end(ctx, &mut client, id);
                    client.close();
                }
            }
        }
        Ended::Done => {
            read_last_frames(ctx, &mut client, id, remote, &mut seen);
            client.close();
            if !tracker::follow_now(ctx, index, id, remote) {
                stream_ended(ctx, index, id, remote);
            }
        }
    }
}

/// Why the reading of a stream stopped.
enum Ended {
    /// A `[DONE]` line came: the job ended (or its stdout printed such a line).
    Done,
    /// The worker closed the stream, it broke or it stayed silent too long.
    Closed,
    /// The job's end was seen here first, or the job left the table, or the worker has no
    /// such job (`[ERROR]`).
    Left,
}

/// How often a stream held open until its job's end is known looks again.
const END_CHECK: Duration = Duration::from_secs(1);

/// What a stream's frames said of how it began. sandrun's route answers a subscriber once it
/// holds the jobs lock: at once while the job is queued (`[STATUS] Job status: queued`, and
/// then it only reads, the executor's broadcasts being all that come, the first of them
/// `[STATUS] Job started`), or, for a stream opened while the job ran, once the run ended
/// (after the executor's broadcast `[DONE]`): its status line, the final logs, a `[DONE]`
/// without figures and a close. A job's stdout comes in one frame, so it can print any one of
/// these lines, but not the first two frames.
#[derive(Default)]
struct Seen {
    /// Text frames so far.
    frames: usize,
    /// The first was exactly `[STATUS] Job status: queued`.
    queued_first: bool,
    /// ... and the second exactly `[STATUS] Job started`: the stream joined while queued.
    started_second: bool,
    /// The route wrote the status of an ended job: a `[DONE]` after it is not the executor's.
    route_answered: bool,
}

impl Seen {
    /// Notes a text frame; true when it is the first.
    fn note(&mut self, text: &str) -> bool {
        self.frames += 1;
        let line = text.trim_end_matches('\n');
        match self.frames {
            1 => self.queued_first = line == "[STATUS] Job status: queued",
            2 => self.started_second = self.queued_first && line == "[STATUS] Job started",
            _ => {}
        }
        if let Some(status) = text.strip_prefix("[STATUS] Job status: ") {
            if !status.starts_with("queued") && !status.starts_with("running") {
                self.route_answered = true;
            }
        }
        self.frames == 1
    }

    /// Whether the stream joined while its job was queued: sandrun's route only reads it, and
    /// the executor's frames are all that come.
    fn joined_queued(&self) -> bool {
        self.queued_first && self.started_second
    }

    /// Keeps a `[DONE]` line's figures for the signature check: the last seen before the
    /// route's own answer. A job's stdout, one frame before the executor's `[DONE]`, can print
    /// such a line; the signature check holds figures against `/status` all the same.
    fn keep(&self, ctx: &Context, id: &str, remote: &str, figures: Option<DoneFigures>) {
        if self.route_answered || figures.is_none() {
            return;
        }
        let mut st = ctx.lock();
        if let Some(job) = st.jobs.get_mut(id).filter(|j| j.is_on(remote)) {
            job.done_figures = figures.map(Box::new);
        }
    }
}

/// Reads a stream opened while its job ran up to the worker's close (at most
/// `--dispatch-timeout`, past sandrun's 300 s run: its route writes its last frames once it
/// has the jobs lock, after the run, or after the next job's run should that one take the lock
/// first), as a frame written to a stream its client closed raises SIGPIPE, which kills
/// sandrun. Until the route's answer, a later `[DONE]` with figures is the executor's, and
/// output goes to the job's followers.
fn read_last_frames(ctx: &Context, client: &mut WsClient, id: &str, remote: &str, seen: &mut Seen) {
    let until = Instant::now() + ctx.config.dispatch_timeout;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || client.set_idle(left).is_err() {
            log::debug!("Job {id}: the worker did not close its stream in time; closed here");
            return;
        }
        match client.read_message() {
            Ok(Message::Text(text)) => {
                seen.note(&text);
                match parse_done(&text) {
                    Some(figures) => seen.keep(ctx, id, remote, figures),
                    None if seen.route_answered || text.starts_with("[STATUS]") => {}
                    None => output(ctx, id, remote, text),
                }
            }
            Ok(Message::Ping) => {}
            Ok(Message::Close(_)) | Err(_) => return,
        }
    }
}

/// Reads a stream that joined while its job was queued on a thread of its own up to the job's
/// end here, while the calling thread follows the job up: sandrun's executor writes a job's
/// frames with blocking writes, holding the jobs lock, so a stream nobody reads (its `[DONE]`
/// line the job's own stdout, the real frames still to come) would hold up the very lock the
/// follow-up's `/status` waits for. Gives back `socket` (to end that reading once the job's end
/// is known), or the stream when no thread could start.
fn read_beside(
    ctx: &Arc<Context>,
    socket: Option<TcpStream>,
    client: WsClient,
    id: &str,
) -> Result<Option<TcpStream>, WsClient> {
    let held = Arc::new(Mutex::new(Some(client)));
    let (task_held, task_ctx, task_id) = (Arc::clone(&held), Arc::clone(ctx), id.to_string());
    let task = Box::new(move || {
        if let Some(mut client) = lock(&task_held).take() {
            wait_for_the_end(&task_ctx, &mut client, &task_id);
            client.close();
        }
    });
    match ctx.streams.run(task) {
        Ok(()) => Ok(socket),
        Err(e) => {
            log::debug!("Job {id}: no thread to read its stream beside the follow-up ({e})");
            lock(&held).take().map_or(Ok(None), Err)
        }
    }
}

/// Holds a stream that joined while its job was queued open until the job's end is known here
/// (its worker's `/status` said so), at most `--dispatch-timeout`: sandrun's executor writes a
/// job's last frames holding the jobs lock that `/status` waits for, so none comes after. The
/// `[DONE]` line read may be the job's own stdout, its real frames still to come: a stream
/// closed before them would make their write raise SIGPIPE, which kills sandrun.
fn wait_for_the_end(ctx: &Context, client: &mut WsClient, id: &str) {
    let until = Instant::now() + ctx.config.dispatch_timeout;
    while still_going(ctx, id) {
        if Instant::now() >= until || client.set_idle(END_CHECK).is_err() {
            return;
        }
        match client.read_message() {
            Ok(Message::Text(_) | Message::Ping) | Err(WsError::Idle) => {}
            Ok(Message::Close(_)) | Err(_) => return,
        }
    }
}

/// Whether job `id` is still in the table and may still get frames from its worker: it has
/// not ended, or it was cancelled while on its worker and has not ended there yet (sandrun
/// writes its last frames as it ends there: a stream closed before them, whose route sandrun
/// has not let go, would make one of those writes raise SIGPIPE).
fn still_going(ctx: &Context, id: &str) -> bool {
    ctx.lock()
        .jobs
        .get(id)
        .is_some_and(|job| !job.status.is_final() || job.ending_on_worker)
}

/// A frame of the job's output, for its followers: only from the stream of the run it is on
/// (a stream of a lost run, its job queued to run again, may still be open and get frames).
fn output(ctx: &Context, id: &str, remote: &str, text: String) {
    let on_run = ctx.lock().jobs.get(id).is_some_and(|job| job.is_on(remote));
    if on_run {
        ctx.events.output(id, text);
    }
}

/// The worker says the job started: `running` at once, and its followers hear of it.
fn mark_started(ctx: &Context, id: &str, remote: &str) {
    let mut st = ctx.lock();
    let dispatched = st
        .jobs
        .get(id)
        .is_some_and(|j| j.status == PoolStatus::Dispatched && j.is_on(remote));
    if dispatched {
        st.set_status(id, PoolStatus::Running);
        ctx.record(&st, id);
        drop(st);
        ctx.events.line(id, "[STATUS] Job started\n".to_string());
    }
}

/// The stream is over: the tracker polls the job at once if it still follows it (a job it no
/// longer follows is never asked for again, so it is not left waiting in `poll_now`, where it
/// would keep a removed worker's place from being reused).
fn stream_ended(ctx: &Context, index: usize, id: &str, remote: &str) {
    let mut st = ctx.lock();
    // A job on another run now: its entries are that run's.
    if st.jobs.get(id).is_some_and(|job| !job.is_on(remote)) {
        return;
    }
    // The job's own entry only: a forgotten worker's place may hold another worker by now.
    let Some(w) = st
        .workers
        .get_mut(index)
        .filter(|w| w.streaming.iter().chain(&w.tracked).any(|s| s == id))
    else {
        return;
    };
    w.streaming.retain(|s| s != id);
    if w.tracked.iter().any(|t| t == id) {
        w.poll_now.push(id.to_string());
    }
    let wake = w.tracker_wake.clone();
    drop(st);
    wake.notify();
}
