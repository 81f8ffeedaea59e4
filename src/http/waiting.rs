//! `GET /status/{id}?wait=SECS`: requests parked until their job ends or their time is up,
//! without holding a handler thread. One thread holds every parked request; the table tells it
//! the moment a watched job ends (see `state::watch`), and it answers each with the job's
//! status. At most `--max-waiting` requests are parked, `--max-waiting-per-ip` of them from one
//! client address; beyond either the answer is 503. A request whose client went away frees its
//! place within a second. When the coordinator stops (SIGTERM, SIGINT), every parked request is
//! answered at once with its job's status as it stands.

use crate::base::hangup::peer_gone;
use crate::base::sync::{Place, PlaceRefused};
use crate::http::access_log::Access;
use crate::http::auth::authorize;
use crate::http::redact::hide_remote_id;
use crate::http::replies::{error_reply, retry_after, unknown_job, Reply, WaitFor};
use crate::http::stored_view::stored_view;
use crate::http::views::status_json;
use crate::state::context::Context;
use crate::state::watch::WaitNews;
use crossbeam_channel::{select, Receiver, Sender};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use tiny_http::Request;

/// Longest `?wait=` accepted, in seconds.
pub const MAX_WAIT_SECS: f64 = 60.0;

/// Writes a reply to a request (the server's own writer), and logs it in the access log.
pub type Respond = fn(&Context, Request, Reply, Option<Access>);

/// A request waiting for its job's end.
struct Parked {
    request: Request,
    job_id: String,
    until: Instant,
    /// The client's address, which its key is checked against again when it is answered.
    client: Option<IpAddr>,
    access: Option<Access>,
    /// Its place among the parked requests (`Context::parked`) and its client address's share
    /// of them (`Context::parked_shares`), given back when it is answered.
    _place: Place,
}

/// The handle the handlers park requests with. The parked count and each client address's
/// share of it live in the context (`Context::parked`, `Context::parked_shares`), for `/pool`.
pub struct Waiting {
    parks: Sender<Parked>,
    respond: Respond,
}

impl Waiting {
    /// Starts the waiting thread and connects the table's end notices to it.
    pub fn start(ctx: Arc<Context>, respond: Respond) -> std::io::Result<Waiting> {
        let (parks, parked_rx) = crossbeam_channel::unbounded();
        let (ends, ends_rx) = crossbeam_channel::unbounded();
        ctx.lock().ends.connect(ends);
        thread::Builder::new()
            .name("waiting".to_string())
            .stack_size(256 * 1024)
            .spawn(move || run(&ctx, &parked_rx, &ends_rx, respond))?;
        Ok(Waiting { parks, respond })
    }

    /// Parks `request` until its job ends or its time is up; answers 503 at once when
    /// `--max-waiting` requests are already parked, or `--max-waiting-per-ip` from its client's
    /// address.
    pub fn park(&self, ctx: &Context, request: Request, wait: WaitFor, access: Option<Access>) {
        let limit = ctx.config.max_waiting;
        let place = match Place::take(&ctx.parked, limit, &ctx.parked_shares, wait.client) {
            Ok(place) => place,
            Err(PlaceRefused::AddressFull(held)) => {
                let why = format!(
                    "your address has {held} status requests waiting already, its share (--max-waiting-per-ip); poll without ?wait= or retry later"
                );
                return self.refuse(ctx, request, &wait.job_id, why, access);
            }
            Err(PlaceRefused::Full(limit)) => {
                let why = format!(
                    "{limit} status requests are already waiting (--max-waiting); poll without ?wait= or retry later"
                );
                return self.refuse(ctx, request, &wait.job_id, why, access);
            }
        };
        let parked = Parked {
            request,
            job_id: wait.job_id,
            until: wait.until,
            client: wait.client,
            access,
            _place: place,
        };
        if let Err(e) = self.parks.send(parked) {
            answer(ctx, e.into_inner(), self.respond);
        }
    }

    /// Answers `request`, waiting on job `job_id`, 503 with `why` and `Retry-After: 1`.
    fn refuse(
        &self,
        ctx: &Context,
        request: Request,
        job_id: &str,
        why: String,
        access: Option<Access>,
    ) {
        ctx.lock().ends.unwatch(job_id);
        let reply = retry_after(1, error_reply(503, why));
        (self.respond)(ctx, request, reply, access);
    }
}

/// Builds the answer to a parked request: the job's status now, to its key as the keys in
/// force now hold it. A key removed, expired, bound elsewhere or narrowed while it waited is
/// answered as a new request with it would be (401, 403, or 404 for a job it no longer sees).
fn answer(ctx: &Context, parked: Parked, respond: Respond) {
    ctx.lock().ends.unwatch(&parked.job_id);
    let caller = match authorize(ctx, &parked.request, parked.client) {
        Ok(caller) => caller,
        Err(refused) => return respond(ctx, parked.request, refused, parked.access),
    };
    let (reply, remote, owner) = {
        let st = ctx.lock();
        let job = st.jobs.get(&parked.job_id);
        let remote = job.and_then(|j| j.remote_job_id.clone());
        let owner = job.and_then(|j| j.owner.clone());
        let reply = status_json(&st, &parked.job_id).map(|bytes| Reply::JsonBytes(200, bytes));
        (reply, remote, owner)
    };
    // A job that settled meanwhile lives in the job store only.
    let (reply, remote, owner) = match reply {
        Some(reply) => (reply, remote, owner),
        None => match stored_view(ctx, &parked.job_id) {
            Ok(Some(view)) => (
                Reply::JsonBytes(200, view.status_json.clone()),
                view.remote_job_id.clone(),
                view.owner.clone(),
            ),
            _ => (unknown_job(&parked.job_id), None, None),
        },
    };
    let reply = match remote {
        _ if !caller.can_see_owned_by(owner.as_deref()) => unknown_job(&parked.job_id),
        Some(remote) if !caller.sees_all() => hide_remote_id(reply, &remote),
        _ => reply,
    };
    respond(ctx, parked.request, reply, parked.access);
}

fn is_final(ctx: &Context, id: &str) -> bool {
    ctx.lock().jobs.get(id).is_none_or(|j| j.status.is_final())
}

/// How often the parked requests' connections are looked at for a client that went away.
const GONE_CHECK: Duration = Duration::from_secs(1);

/// Whether the client of a parked request closed its connection (it gave up waiting).
fn client_gone(parked: &Parked) -> bool {
    parked.request.connection_fd().is_some_and(peer_gone)
}

/// Whether the coordinator is stopping: a request is answered as soon as it is parked.
fn stopping(ctx: &Context) -> bool {
    ctx.stopping.load(Ordering::SeqCst)
}

fn run(ctx: &Context, parks: &Receiver<Parked>, news: &Receiver<WaitNews>, respond: Respond) {
    let mut waiting: Vec<Parked> = Vec::new();
    let mut checked = Instant::now();
    loop {
        let next = waiting.iter().map(|p| p.until).min();
        let timeout = next.map_or(Duration::from_secs(3600), |at| {
            at.saturating_duration_since(Instant::now()).min(GONE_CHECK)
        });
        select! {
            recv(parks) -> parked => match parked {
                // A job that ended before its request got here is answered at once, and every
                // request once the coordinator stops.
                Ok(parked) if stopping(ctx) || is_final(ctx, &parked.job_id) => {
                    answer(ctx, parked, respond);
                }
                Ok(parked) => waiting.push(parked),
                Err(_) => return,
            },
            recv(news) -> heard => {
                let (now, rest): (Vec<Parked>, Vec<Parked>) = match heard {
                    Ok(WaitNews::Ended(id)) => waiting.drain(..).partition(|p| p.job_id == id),
                    Ok(WaitNews::Stopping) | Err(_) => (std::mem::take(&mut waiting), Vec::new()),
                };
                waiting = rest;
                for parked in now {
                    answer(ctx, parked, respond);
                }
            },
            default(timeout) => {},
        }
        let now = Instant::now();
        // A client that gave up (its HTTP timeout shorter than its wait) frees its place now,
        // not when its wait is up.
        if now.duration_since(checked) >= GONE_CHECK {
            checked = now;
            let (gone, rest): (Vec<Parked>, Vec<Parked>) = waiting.drain(..).partition(client_gone);
            waiting = rest;
            for parked in gone {
                log::debug!(
                    "A client waiting on job {} went away; its place is free",
                    parked.job_id
                );
                answer(ctx, parked, respond);
            }
        }
        if waiting.iter().any(|p| p.until <= now) {
            let (due, rest): (Vec<Parked>, Vec<Parked>) =
                waiting.drain(..).partition(|p| p.until <= now);
            waiting = rest;
            for parked in due {
                answer(ctx, parked, respond);
            }
        }
    }
}
