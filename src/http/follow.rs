//! Following a job: `GET /logs/{id}?follow=1` (a chunked `text/plain` stream) and
//! `GET /stream/{id}` (a WebSocket in sandrun's own message format). Both send the same pieces:
//! `[STATUS] Job status: <status>`, then a line when the job is dispatched and started, its output
//! as the worker delivers it, and the last lines (`[VERIFY] ...`, `[DONE] ...`) when it is over;
//! then the stream ends. After `--follow-heartbeat` of silence (a queued job, or one running
//! without output) a text stream repeats the status line (a queued job's with its place in the
//! queue) and a WebSocket is pinged, so proxies keep the stream open and a vanished client is
//! noticed at the next write. The handler thread only decides (404, 503 over
//! `--max-followers`) and hands the connection to a follower thread of its own, so followers
//! never hold handler threads. A job that is over is replayed (`http/replay.rs`); the wire
//! itself is `http/follow_wire.rs`. A client that takes no byte for `--client-timeout` is let go.

use crate::base::clock::unix_now;
use crate::base::job::{Collection, Job, PoolStatus, StoredResults};
use crate::base::sync::{Parcel, Place, PlaceRefused};
use crate::http::auth::Caller;
use crate::http::cors;
use crate::http::follow_wire::{status_line, Ending, Out, Wire};
use crate::http::grant::Grant;
use crate::http::headers::{self, GivenTwice};
use crate::http::query;
use crate::http::redact::TextHider;
use crate::http::replay;
use crate::http::replies::{error_reply, retry_after, unknown_job, Reply};
use crate::pool::announce::final_lines;
use crate::state::context::Context;
use crate::state::events::{Event, Follower, MAX_BACKLOG};
use base64::Engine;
use std::net::IpAddr;
use std::sync::Arc;
use std::thread;
use tiny_http::Request;

/// `Retry-After` seconds of a follow refused for want of a place: a stream holds its place
/// until its job ends, so sooner is seldom better.
const FOLLOW_RETRY_AFTER: u32 = 5;

/// Stack size of a follower thread.
const FOLLOWER_STACK: usize = 128 * 1024;

/// What the follower sends.
enum Plan {
    /// The job is over: its status line, its collected logs (read and sent a piece at a time
    /// by the follower thread) and its last lines.
    Replay {
        first: String,
        logs: Option<StoredResults>,
        last: Vec<String>,
        _slot: Place,
    },
    /// The job is in flight: the first line, the feed's history, then live events, for as
    /// long as the grant holds (`None`: an open coordinator).
    Live {
        first: String,
        follower: Follower,
        grant: Option<Grant>,
    },
}

/// Whether the query string asks to follow: `follow`, `follow=1` or `follow=true` does;
/// none, `follow=0` or `follow=false` does not; any other value is the 400 to answer.
pub fn follow_param(url: &str) -> Result<bool, Reply> {
    match query::param(url, "follow").as_deref() {
        None | Some("0" | "false") => Ok(false),
        Some("" | "1" | "true") => Ok(true),
        Some(other) => Err(error_reply(
            400,
            format!("follow={other:?} is not understood: give follow=1 to follow the logs as they grow, or leave it out"),
        )),
    }
}

/// True when the query string asks to follow (see [`follow_param`]).
pub fn wants_follow(url: &str) -> bool {
    matches!(follow_param(url), Ok(true))
}

/// The `Sec-WebSocket-Key` of a WebSocket upgrade request, or the 400 to answer.
pub fn websocket_key(request: &Request) -> Result<String, Reply> {
    let has_token = |name: &'static str, token: &str| {
        headers::values(request, name)
            .flat_map(|value| value.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    // RFC 6455, section 11.3: the key and the version are each sent once.
    let once = |name: &'static str| {
        headers::only(headers::values(request, name))
            .map(|value| value.map(str::trim))
            .map_err(|GivenTwice| {
                error_reply(
                    400,
                    format!("the request carries more than one {name} header; send it once"),
                )
            })
    };
    let upgrade = has_token("Upgrade", "websocket") && has_token("Connection", "upgrade");
    let key = match once("Sec-WebSocket-Key")? {
        Some(key) if upgrade && !key.is_empty() => key.to_string(),
        _ => {
            return Err(error_reply(
                400,
                "GET /stream/ID is a WebSocket: send Connection: Upgrade, Upgrade: websocket \
                 and Sec-WebSocket-Key (for plain text, use GET /logs/ID?follow=1)",
            ))
        }
    };
    // RFC 6455, section 4.1: the opening handshake is a GET, without a body (the connection is
    // handed over whole only to one without: a body's bytes would be read as frames).
    let chunked = headers::values(request, "Transfer-Encoding")
        .next()
        .is_some();
    if chunked || request.body_length().is_some_and(|n| n > 0) {
        return Err(error_reply(
            400,
            "a WebSocket upgrade is a GET without a body (RFC 6455 4.1): send it without one",
        ));
    }
    // RFC 6455, section 4.1: the key is 16 random bytes in base64.
    let decoded = base64::engine::general_purpose::STANDARD.decode(key.as_bytes());
    if !decoded.is_ok_and(|bytes| bytes.len() == 16) {
        return Err(error_reply(
            400,
            "the Sec-WebSocket-Key is not 16 bytes in base64 (RFC 6455 4.1): send 24 base64 characters, such as dGhlIHNhbXBsZSBub25jZQ==",
        ));
    }
    // RFC 6455, section 4.2.2: another version is answered 426 with the one spoken.
    if once("Sec-WebSocket-Version")? != Some(WEBSOCKET_VERSION) {
        let why = format!(
            "this coordinator speaks WebSocket version {WEBSOCKET_VERSION} only: send Sec-WebSocket-Version: {WEBSOCKET_VERSION}"
        );
        return Err(Reply::WithHeaders(
            vec![("Sec-WebSocket-Version", WEBSOCKET_VERSION.to_string())],
            Box::new(error_reply(426, why)),
        ));
    }
    Ok(key)
}

/// The WebSocket protocol version served (RFC 6455).
const WEBSOCKET_VERSION: &str = "13";

/// Decides how to follow job `id` for `caller` at `client` and returns the hand-off (or the
/// error to answer). A follower that does not see everything (an admin or read key) never
/// receives the worker's own job id; a live one ends when its key no longer lets it follow
/// the job ([`Grant`]).
pub fn start(
    ctx: &Arc<Context>,
    id: &str,
    wire: Wire,
    caller: &Caller,
    client: Option<IpAddr>,
) -> Reply {
    let slot = match ctx.events.reserve(client) {
        Ok(slot) => slot,
        Err(PlaceRefused::Full(max)) => {
            let why =
                format!("{max} clients already follow jobs (--max-followers); try again later");
            return retry_after(FOLLOW_RETRY_AFTER, error_reply(503, why));
        }
        Err(PlaceRefused::AddressFull(held)) => {
            let why = format!(
                "your address already follows {held} streams, its share (--max-followers-per-ip); close one, or try again later"
            );
            return retry_after(FOLLOW_RETRY_AFTER, error_reply(503, why));
        }
    };
    let in_table = {
        let mut st = ctx.lock();
        match st.jobs.get(id) {
            Some(job) if !is_over(job) => {
                let first = status_line(job, "");
                let grant = Grant::of(caller, client, job.owner.clone());
                st.mark_watched(id);
                Ok(Plan::Live {
                    first,
                    follower: ctx.events.follow(id, slot),
                    grant,
                })
            }
            Some(job) => Ok(replay(job, slot)),
            None => Err(slot),
        }
    };
    let plan = match in_table {
        Ok(plan) => plan,
        // A settled job lives in the job store only.
        Err(slot) => match ctx.store.load(id) {
            Ok(Some(job)) => replay(&job, slot),
            _ => return unknown_job(id),
        },
    };
    let hider = (!caller.sees_all()).then(|| TextHider::new(Arc::clone(ctx), id));
    let ctx = Arc::clone(ctx);
    let id = id.to_string();
    Reply::Handoff(Box::new(move |request: Request| {
        let parcel = Parcel::new(request);
        let thread_parcel = parcel.share();
        let spawned = thread::Builder::new()
            .name("follower".to_string())
            .stack_size(FOLLOWER_STACK)
            .spawn(move || {
                if let Some(request) = thread_parcel.take() {
                    serve(&ctx, &id, request, wire, plan, hider);
                }
            });
        let Err(e) = spawned else {
            return Ok(());
        };
        log::error!("Cannot start a follower thread: {e}");
        match parcel.take() {
            Some(request) => Err(Box::new((
                request,
                format!("no thread to follow the job ({e}); retry shortly"),
            ))),
            None => Ok(()),
        }
    }))
}

/// True when nothing more will come for the job's followers.
fn is_over(job: &Job) -> bool {
    job.status == PoolStatus::Lost
        || (job.status.is_final() && !matches!(job.collection, Collection::Pending(_)))
}

/// The pieces of a job that is over.
fn replay(job: &Job, slot: Place) -> Plan {
    let logs = match &job.collection {
        Collection::Collected(stored) => Some(StoredResults::clone(stored)),
        _ => None,
    };
    Plan::Replay {
        first: status_line(job, ""),
        logs,
        last: final_lines(job),
        _slot: slot,
    }
}

fn serve(
    ctx: &Context,
    id: &str,
    request: Request,
    wire: Wire,
    plan: Plan,
    hider: Option<TextHider>,
) {
    // A page on an allowed origin reads the text stream as any other answer (a WebSocket's
    // origin is no CORS matter).
    let origin = cors::origin(&request).ok().flatten();
    let allowed = cors::headers(&ctx.config.cors_origins, origin);
    let timeout = ctx.config.client_timeout;
    let Ok(mut out) = Out::open(request, &wire, &allowed, hider, timeout) else {
        return;
    };
    let sent = match plan {
        Plan::Replay {
            first, logs, last, ..
        } => replay::send(ctx, id, &mut out, &first, logs, &last),
        Plan::Live {
            first,
            follower,
            grant,
        } => live(ctx, id, &mut out, &first, &follower, grant),
    };
    match sent {
        Ok(ending) => out.finish(ending),
        Err(e) => {
            if out.abandon(&e) {
                log::info!(
                    "Let go a follower of job {id}: it read nothing for {} s (--client-timeout)",
                    timeout.as_secs_f64()
                );
            }
        }
    }
}

fn live(
    ctx: &Context,
    id: &str,
    out: &mut Out,
    first: &str,
    follower: &Follower,
    mut grant: Option<Grant>,
) -> std::io::Result<Ending> {
    out.marker(first)?;
    for piece in &follower.history {
        out.piece(piece)?;
    }
    let heartbeat = ctx.config.follow_heartbeat;
    loop {
        let expiry = grant.as_ref().and_then(Grant::until_expiry);
        let wait = expiry.map_or(heartbeat, |left| left.min(heartbeat));
        let recheck = match follower.events.recv_timeout(wait) {
            Ok(Event::Text(piece)) => {
                follower.took(piece.text.len());
                out.piece(&piece)?;
                false
            }
            Ok(Event::Behind) => {
                log::info!(
                    "Let go a follower of job {id}: it read slower than the job's output came"
                );
                out.marker(&format!(
                    "[ERROR] This stream fell more than {MAX_BACKLOG} bytes behind the job's output; follow the job again, or read its logs once it ended (GET /logs/{id})\n"
                ))?;
                return Ok(Ending::Behind);
            }
            Ok(Event::End) => return Ok(Ending::Over),
            Ok(Event::Shutdown) => {
                out.marker(replay::SHUTDOWN_LINE)?;
                return Ok(Ending::GoingAway);
            }
            Ok(Event::Recheck) => true,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) if expiry == Some(wait) => true,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                out.heartbeat(ctx, id)?;
                false
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return Ok(Ending::Over),
        };
        let Some(grant) = grant.as_mut().filter(|_| recheck) else {
            continue;
        };
        if let Err(why) = grant.recheck(ctx.keys.get().as_deref(), unix_now() as u64) {
            log::info!("Ended a follower of job {id}: {why}");
            out.marker(&format!(
                "[ERROR] This stream ended: {why}; a request with a valid key may follow the job again\n"
            ))?;
            return Ok(Ending::Refused);
        }
    }
}
