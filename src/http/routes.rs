//! Routing of the client API: which handler answers which method and path.

use crate::base::job::{Job, PoolStatus};
use crate::base::log_repeats::{Repeats, REPEAT_PERIOD};
use crate::base::sync::lock;
use crate::http::access_log::Access;
use crate::http::auth::{admin_only, authorize, may_change, sees_all_only, visible_job, Caller};
use crate::http::client_address::client_address;
use crate::http::follow;
use crate::http::follow_wire::Wire;
use crate::http::headers;
use crate::http::query;
use crate::http::redact::{hide_remote_id, remote_id_of};
use crate::http::replies::{error_reply, retry_after, unknown_job, Reply, WaitFor};
use crate::http::stored_view::stored_view;
use crate::http::submit_key::{self, HEADER};
use crate::http::upload::UploadBody;
use crate::http::views::{
    access_log_view, certificates_view, connections_view, disk_view, keys_view, pool_view,
    request_rate_view, spool_view, status_json, store_view, worker_view,
};
use crate::http::{
    bulk_cancel, cors, dashboard, listing, metrics, outputs, sandrun, snapshot, upload, waiting,
};
use crate::pool::control::{self, worker_id_from_url, ControlError, Deletion};
use crate::pool::reload;
use crate::state::context::Context;
use crate::state::pool_state::DispatchHold;
use crate::state::submits_pause::SubmitsPause;
use crate::store::jobs_db::StoreError;
use serde_json::json;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tiny_http::{Method, Request};

/// `Retry-After` seconds of a submit refused for now: a queue is full, or another program holds
/// the job store locked.
const SUBMIT_RETRY_AFTER: u32 = 5;
/// `Retry-After` seconds of a deletion of a job whose end is still being settled.
const SETTLING_RETRY_AFTER: u32 = 2;
/// `Retry-After` seconds of a submit whose `Idempotency-Key` another submit holds.
const SUBMIT_KEY_RETRY_AFTER: u32 = 1;
/// `Retry-After` seconds of a submit refused while an operator pauses submits.
const PAUSED_RETRY_AFTER: u32 = 30;
/// Submits refused for the coordinator's own trouble (5xx), logged at most once a minute.
static SUBMIT_FAILURES: Mutex<Repeats> = Mutex::new(Repeats::new(REPEAT_PERIOD));
/// How long `POST /log-level` changes the level when it does not say (`for=SECS`).
const LOG_LEVEL_FOR: u64 = 600;
/// The longest a change of the log level may last, short of "until changed again".
const LOG_LEVEL_FOR_MAX: u64 = 7 * 24 * 3600;
/// Where `GET /` sends a browser, once that page is served.
const DASHBOARD: &str = "/dashboard";

/// The routes the coordinator serves.
enum Route<'a> {
    Root,
    Stats,
    Health,
    Ready,
    Pool,
    Metrics,
    Dashboard,
    Activity,
    Submit,
    Status(&'a str),
    Logs(&'a str),
    Stream(&'a str),
    OutputList(&'a str),
    OutputFile(&'a str, &'a str),
    Cancel(&'a str),
    CancelMatching,
    DeleteJob(&'a str),
    Drain(&'a str, bool),
    SubmitsPause(bool),
    LogLevel,
    Reload,
    Snapshot,
    Download(&'a str),
    DownloadFile(&'a str, &'a str),
    Jobs,
    JobPriority(&'a str),
}

impl Route<'_> {
    /// The query parameters the route takes, checked before it answers (`None`: it takes
    /// none, and a query is ignored, as a browser's cache-busting `?_=...` is).
    fn query_names(&self) -> Option<&'static [&'static str]> {
        match self {
            Route::Status(_) => Some(&["wait"]),
            Route::Logs(_) => Some(&["follow"]),
            Route::Submit => Some(&upload::QUERY_NAMES),
            Route::CancelMatching => Some(&bulk_cancel::QUERY_NAMES),
            Route::Jobs => Some(&listing::QUERY_NAMES),
            Route::JobPriority(_) => Some(&["priority"]),
            Route::LogLevel => Some(&["level", "for"]),
            _ => None,
        }
    }

    /// The method the route answers (a `GET` route answers `HEAD` too).
    fn method(&self) -> Method {
        match self {
            Route::Submit
            | Route::Cancel(_)
            | Route::CancelMatching
            | Route::Drain(..)
            | Route::SubmitsPause(_)
            | Route::LogLevel
            | Route::JobPriority(_)
            | Route::Reload => Method::Post,
            Route::DeleteJob(_) => Method::Delete,
            _ => Method::Get,
        }
    }

    /// Whether a `HEAD` asks for headers this route can give without its body: every `GET`
    /// route but the followed streams, whose answer is the stream itself.
    fn answers_head(&self, url: &str) -> bool {
        match self {
            Route::Stream(_) => false,
            Route::Logs(_) => !follow::wants_follow(url),
            _ => self.method() == Method::Get,
        }
    }

    /// The `Allow` header's value: the methods this route answers.
    fn allowed_methods(&self, url: &str) -> &'static str {
        match self.method() {
            Method::Get if self.answers_head(url) => "GET, HEAD",
            Method::Get => "GET",
            Method::Delete => "DELETE",
            _ => "POST",
        }
    }
}

/// Every method some endpoint takes: `OPTIONS *`'s `Allow`, and a `CONNECT`'s when its target
/// is no endpoint.
const SERVER_METHODS: &str = "GET, HEAD, POST, DELETE, OPTIONS";

/// A request for the server as a whole (the target `*`, RFC 9112 section 3.2.4): `OPTIONS *`
/// is answered 204 with every method some endpoint takes; any other method is a 400.
fn whole_server(method: &Method) -> Reply {
    if *method == Method::Options {
        let allow = SERVER_METHODS.to_string();
        return Reply::WithHeaders(vec![("Allow", allow)], Box::new(Reply::Empty(204)));
    }
    error_reply(
        400,
        format!("the target * asks about the server as a whole, which only OPTIONS does; {method} asks for a path"),
    )
}

/// Whether `method` is one `route` answers at `url`.
fn method_allowed(route: &Route<'_>, method: &Method, url: &str) -> bool {
    match method {
        Method::Head => route.answers_head(url),
        method => *method == route.method(),
    }
}

fn match_route(path: &str) -> Option<Route<'_>> {
    let path = path.strip_prefix('/')?;
    let (head, rest) = path.split_once('/').unwrap_or((path, ""));
    match (head, rest) {
        ("", "") => Some(Route::Root),
        ("stats", "") => Some(Route::Stats),
        ("health", "") => Some(Route::Health),
        ("ready", "") => Some(Route::Ready),
        ("pool", "") => Some(Route::Pool),
        ("metrics", "") => Some(Route::Metrics),
        ("dashboard", "") => Some(Route::Dashboard),
        ("activity", "") => Some(Route::Activity),
        ("submit", "") => Some(Route::Submit),
        ("reload", "") => Some(Route::Reload),
        ("log-level", "") => Some(Route::LogLevel),
        ("submits", "pause") => Some(Route::SubmitsPause(true)),
        ("submits", "resume") => Some(Route::SubmitsPause(false)),
        ("snapshot", "") => Some(Route::Snapshot),
        ("jobs", "") => Some(Route::Jobs),
        ("jobs", id) if !id.contains('/') => Some(Route::DeleteJob(id)),
        ("jobs", rest) => match rest.split_once('/') {
            Some((id, "priority")) if !id.is_empty() => Some(Route::JobPriority(id)),
            _ => None,
        },
        ("status", id) if !id.is_empty() && !id.contains('/') => Some(Route::Status(id)),
        ("logs", id) if !id.is_empty() && !id.contains('/') => Some(Route::Logs(id)),
        ("cancel", "") => Some(Route::CancelMatching),
        ("cancel", id) if !id.contains('/') => Some(Route::Cancel(id)),
        ("workers", rest) => match rest.rsplit_once('/') {
            Some((id, "drain")) if !id.is_empty() => Some(Route::Drain(id, true)),
            Some((id, "undrain")) if !id.is_empty() => Some(Route::Drain(id, false)),
            _ => None,
        },
        ("stream", id) if !id.is_empty() && !id.contains('/') => Some(Route::Stream(id)),
        ("outputs", rest) if !rest.is_empty() => match rest.split_once('/') {
            None => Some(Route::OutputList(rest)),
            Some((id, "")) => Some(Route::OutputList(id)),
            Some((id, file)) => Some(Route::OutputFile(id, file)),
        },
        ("download", rest) if !rest.is_empty() => match rest.split_once('/') {
            None | Some((_, "")) => Some(Route::Download(rest.trim_end_matches('/'))),
            Some((id, file)) => Some(Route::DownloadFile(id, file)),
        },
        _ => None,
    }
}

/// Whether `request` is served on its connection's own thread (`http/server.rs`), without a
/// hand-over to a handler thread: `GET /health`, `GET /ready`, `GET /status/{id}` without
/// `?wait=`, and downloads: a job's logs (`/logs/{id}` without `?follow=`), an output file
/// (`/outputs/{id}/{path}`, `/download/{id}/{path}`), a job's archive (`/download/{id}`) and the
/// state directory's snapshot (`/snapshot`). Logs and files are read from the collected
/// results, or fetched from the worker within `--threads` at once. A client that reads a large
/// answer slowly holds its own thread only.
pub fn is_quick(request: &Request) -> bool {
    if !matches!(request.method(), Method::Get | Method::Head) {
        return false;
    }
    let url = request.url();
    let path = url.split(['?', '#']).next().unwrap_or_default();
    match match_route(path) {
        Some(Route::Health | Route::Ready) => true,
        Some(Route::Status(_)) => query::param(url, "wait").is_none(),
        Some(Route::Logs(_)) => matches!(follow::follow_param(url), Ok(false)),
        Some(
            Route::OutputFile(..) | Route::DownloadFile(..) | Route::Download(_) | Route::Snapshot,
        ) => true,
        _ => false,
    }
}

/// The 429 for a request over its address's rate, to retry after `wait`.
fn over_rate(ctx: &Context, wait: Duration) -> Reply {
    let secs = wait.as_secs().saturating_add(1);
    let secs = u32::try_from(secs).unwrap_or(u32::MAX);
    retry_after(
        secs,
        error_reply(
            429,
            format!(
                "too many requests from your address: more than {} a second \
                 (--max-requests-per-ip); retry in {secs} s",
                ctx.request_rate.per_second()
            ),
        ),
    )
}

/// Answers one request; its access log entry (`access`), when kept, takes the name of the key
/// it carried.
pub fn route(ctx: &Arc<Context>, request: &mut Request, access: &mut Option<Access>) -> Reply {
    let url = request.url().to_string();
    let path = url.split(['?', '#']).next().unwrap_or_default();
    // The access log's entry worked it out already, when there is one.
    let from = match access {
        Some(noted) => noted.client,
        None => client_address(&ctx.config.trusted_proxies, request),
    };
    if let Err(wait) = ctx.request_rate.admit(from, path, Instant::now()) {
        return over_rate(ctx, wait);
    }
    if path == "*" {
        return whole_server(request.method());
    }
    if *request.method() == Method::Connect {
        // Like every 405, it names what is allowed: the endpoint's methods, or, for a target
        // that is no endpoint (mostly a host and port), every method some endpoint takes.
        let allowed = match match_route(path) {
            Some(route) => route.allowed_methods(&url).to_string(),
            None => SERVER_METHODS.to_string(),
        };
        return Reply::WithHeaders(
            vec![("Allow", allowed)],
            Box::new(error_reply(
                405,
                "CONNECT is not served: the coordinator is no proxy; ask for its paths (/submit, /status/ID, ...)",
            )),
        );
    }
    let Some(route) = match_route(path) else {
        let trimmed = path.trim_end_matches('/');
        if trimmed.len() < path.len() && !trimmed.is_empty() && match_route(trimmed).is_some() {
            return error_reply(
                404,
                format!("no such endpoint: {path}; without its trailing '/', {trimmed} is one"),
            );
        }
        return error_reply(
            404,
            format!("no such endpoint: {path} (try /, /submit, /status/ID, /outputs/ID, /logs/ID, /logs/ID?follow=1, /stream/ID, /download/ID, /jobs, /cancel/ID, /cancel?status=..., DELETE /jobs/ID, /jobs/ID/priority, /workers/ID/drain, /workers/ID/undrain, /submits/pause, /submits/resume, /log-level, /reload, /stats, /pool, /activity, /dashboard, /metrics, /snapshot, /health, /ready)"),
        );
    };
    let Ok(origin) = cors::origin(request) else {
        return error_reply(
            400,
            "the request carries more than one Origin header; a browser sends one",
        );
    };
    if *request.method() == Method::Options {
        let Some(origin) = origin else {
            // Not a CORS preflight: which methods the endpoint takes (HAProxy's default
            // `option httpchk` asks `OPTIONS /`).
            let allowed = format!("{}, OPTIONS", route.allowed_methods(&url));
            return Reply::WithHeaders(vec![("Allow", allowed)], Box::new(Reply::Empty(204)));
        };
        return match cors::preflight(&ctx.config.cors_origins, origin) {
            Ok(granted) => Reply::WithHeaders(granted, Box::new(Reply::Empty(204))),
            Err(why) => error_reply(403, why),
        };
    }
    if !method_allowed(&route, request.method(), &url) {
        let allowed = route.allowed_methods(&url);
        let why = match &route {
            // `GET /jobs` lists jobs, so a reader may well try `GET /jobs/ID`: pointing them
            // at DELETE alone would send them to the method that deletes the job.
            Route::DeleteJob(id) if matches!(request.method(), Method::Get | Method::Head) => {
                format!(
                    "{} is not allowed on {path}, which takes only {allowed} (deleting the job \
                     and its results); to read the job, use GET /status/{id}",
                    request.method()
                )
            }
            _ => format!(
                "{} is not allowed on {path}; use {allowed}",
                request.method()
            ),
        };
        return Reply::WithHeaders(
            vec![("Allow", allowed.to_string())],
            Box::new(error_reply(405, why)),
        );
    }
    match route {
        Route::Health => return health(),
        Route::Ready => return ready(ctx),
        Route::Root => return root(ctx, request),
        Route::Metrics if ctx.config.metrics_open => return metrics_reply(ctx),
        Route::Dashboard => return dashboard_page(),
        _ => {}
    }
    let caller = match authorize(ctx, request, from) {
        Ok(caller) => caller,
        Err(reply) => return reply,
    };
    if let Some(access) = access {
        access.key = caller.name().map(str::to_string);
    }
    if let Some(known) = route.query_names() {
        if let Err(e) = query::check(&url, known) {
            return error_reply(400, e.to_string());
        }
    }
    match route {
        Route::Health => health(),
        Route::Ready => ready(ctx),
        Route::Root => root(ctx, request),
        Route::Stats => {
            let refused = submit_refusals(ctx).into_iter().next();
            Reply::Json(200, sandrun::stats(&ctx.lock(), &caller, refused))
        }
        Route::Pool => pool(ctx, &caller),
        Route::Dashboard => dashboard_page(),
        Route::Activity => Reply::Json(200, dashboard::activity_view(ctx, &caller)),
        Route::Submit => allowed(may_change(&caller), || {
            let started = Instant::now();
            let reply = submit(ctx, &caller, request, &url);
            ctx.metrics
                .submit_request
                .observe(started.elapsed().as_secs_f64());
            reply
        }),
        Route::Status(id) => match query::param(&url, "wait").map(|w| wait_secs(&w)) {
            None => job_route(ctx, &caller, id, |ctx| status(ctx, id)),
            Some(Ok(secs)) => job_route(ctx, &caller, id, |ctx| wait_status(ctx, id, secs, from)),
            Some(Err(reply)) => reply,
        },
        Route::Cancel(id) => allowed(may_change(&caller), || {
            job_route(ctx, &caller, id, |ctx| {
                match control::cancel(ctx, id, &caller.log_label()) {
                    Ok(()) => status(ctx, id),
                    Err(ControlError::UnknownJob(_)) => {
                        ended_or(ctx, id, ControlError::Finished, || unknown_job(id))
                    }
                    Err(e) => error_reply(e.status(), e.to_string()),
                }
            })
        }),
        Route::CancelMatching => allowed(may_change(&caller), || {
            bulk_cancel::cancel_matching(ctx, &caller, &|name| query::param(&url, name))
        }),
        Route::DeleteJob(id) => allowed(may_change(&caller), || {
            job_route(ctx, &caller, id, |ctx| {
                match control::delete(ctx, id, &caller.log_label()) {
                    Ok(Deletion::Now(status)) => Reply::Json(
                        200,
                        json!({"job_id": id, "deleted": true, "status": status}),
                    ),
                    Ok(Deletion::WhenSettled(status)) => Reply::Json(
                        202,
                        json!({
                            "job_id": id,
                            "deleted": false,
                            "deleting": true,
                            "status": status.as_str(),
                        }),
                    ),
                    Err(ControlError::UnknownJob(_)) => unknown_job(id),
                    Err(e @ ControlError::Settling(_)) => {
                        retry_after(SETTLING_RETRY_AFTER, error_reply(e.status(), e.to_string()))
                    }
                    Err(e) => error_reply(e.status(), e.to_string()),
                }
            })
        }),
        Route::JobPriority(id) => allowed(may_change(&caller), || {
            job_route(ctx, &caller, id, |ctx| {
                set_priority(ctx, id, &url, &caller.log_label())
            })
        }),
        Route::Drain(raw, on) => allowed(admin_only(&caller), || {
            drain(ctx, raw, on, &caller.log_label())
        }),
        Route::SubmitsPause(pause) => {
            allowed(admin_only(&caller), || submits_pause(ctx, &caller, pause))
        }
        Route::Jobs => listing::jobs(ctx, &caller, &|name| query::param(&url, name)),
        Route::Reload => allowed(admin_only(&caller), || {
            let source = format!("POST /reload{}", caller.log_label());
            let outcome = reload::reload_files(ctx, &source);
            let status = if outcome.refused() { 400 } else { 200 };
            let mut answer = json!(outcome);
            // A 400 says why at the top, also when the keys file alone was refused.
            let keys_refused = outcome.keys.as_ref().and_then(|k| k.error.as_deref());
            if let (None, Some(why)) = (&outcome.error, keys_refused) {
                answer["error"] = json!(format!(
                    "the client keys file was refused, and the keys in force stay (the workers file was applied): {why}"
                ));
            }
            Reply::Json(status, answer)
        }),
        Route::Logs(id) => match follow::follow_param(&url) {
            Ok(true) => job_route(ctx, &caller, id, |ctx| {
                follow::start(ctx, id, Wire::Text, &caller, from)
            }),
            Ok(false) => job_route(ctx, &caller, id, |ctx| outputs::logs(ctx, id)),
            Err(reply) => reply,
        },
        Route::Stream(id) => match follow::websocket_key(request) {
            Ok(key) => job_route(ctx, &caller, id, |ctx| {
                follow::start(ctx, id, Wire::WebSocket(key), &caller, from)
            }),
            Err(reply) => reply,
        },
        Route::OutputList(id) => job_route(ctx, &caller, id, |ctx| outputs::listing(ctx, id)),
        Route::OutputFile(id, file) => {
            job_route(ctx, &caller, id, |ctx| outputs::file(ctx, id, file, false))
        }
        Route::Download(id) => job_route(ctx, &caller, id, |ctx| outputs::tarball(ctx, id)),
        Route::DownloadFile(id, file) => {
            job_route(ctx, &caller, id, |ctx| outputs::file(ctx, id, file, true))
        }
        Route::LogLevel => allowed(admin_only(&caller), || set_log_level(ctx, &caller, &url)),
        Route::Metrics => allowed(sees_all_only(&caller), || metrics_reply(ctx)),
        Route::Snapshot if *request.method() == Method::Head => {
            allowed(admin_only(&caller), snapshot::head)
        }
        Route::Snapshot => allowed(admin_only(&caller), || {
            snapshot::snapshot(ctx, &caller.log_label())
        }),
    }
}

/// The answer of a route that `check` allows (one of `http/auth.rs`'s: `admin_only`,
/// `sees_all_only`, `may_change`), else `check`'s refusal.
fn allowed(check: Result<(), Reply>, answer: impl FnOnce() -> Reply) -> Reply {
    match check {
        Ok(()) => answer(),
        Err(refused) => refused,
    }
}

/// `POST /jobs/{id}/priority?priority=LEVEL` (the job's owner or an admin): a queued job's
/// new priority.
fn set_priority(ctx: &Context, id: &str, url: &str, by: &str) -> Reply {
    let Some(asked) = query::param(url, "priority") else {
        return error_reply(
            400,
            "give the new priority in the query: POST /jobs/ID/priority?priority=high (or normal, or low)",
        );
    };
    let priority = match upload::parse_priority(&asked) {
        Ok(p) => p,
        Err(e) => return error_reply(e.status(), e.to_string()),
    };
    match control::set_priority(ctx, id, priority, by) {
        Ok(change) => Reply::Json(
            200,
            json!({
                "job_id": id,
                "priority": priority.as_str(),
                "was": change.was.as_str(),
                "queue_position": change.position.map_or(0, |p| p + 1),
            }),
        ),
        Err(ControlError::UnknownJob(_)) => {
            ended_or(ctx, id, ControlError::NotQueued, || unknown_job(id))
        }
        Err(e) => error_reply(e.status(), e.to_string()),
    }
}

/// The answer to a control on job `id`, which is no longer in the table: the refusal `ended`
/// makes of its status when the job store holds it (it ended), else `unknown`.
fn ended_or(
    ctx: &Context,
    id: &str,
    ended: fn(String, PoolStatus) -> ControlError,
    unknown: impl FnOnce() -> Reply,
) -> Reply {
    match ctx.store.load(id) {
        Ok(Some(job)) => {
            let e = ended(id.to_string(), job.status);
            error_reply(e.status(), e.to_string())
        }
        _ => unknown(),
    }
}

/// `POST /submits/pause` and `POST /submits/resume` (admin): stops taking submits, or takes them
/// again; queued and running jobs go on either way. Pausing again keeps the first pause.
fn submits_pause(ctx: &Context, caller: &Caller, pause: bool) -> Reply {
    match control::set_submits_pause(ctx, pause, caller.name(), &caller.log_label()) {
        Ok(change) => {
            let st = ctx.lock();
            Reply::Json(
                200,
                json!({
                    "submits": if st.submits_paused.is_some() { "paused" } else { "taken" },
                    "pause": st.submits_paused.as_ref().map(SubmitsPause::view),
                    "pause_ended": change.ended.as_ref().map(SubmitsPause::view),
                }),
            )
        }
        Err(e) => error_reply(e.status(), e.to_string()),
    }
}

/// `GET /`: sandrun's service description, open to anyone like `/health` (sandrun's clients
/// test their connection with it); a browser goes to the dashboard when there is one.
fn root(ctx: &Arc<Context>, request: &Request) -> Reply {
    let accept = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Accept"))
        .map(|h| h.value.as_str());
    if sandrun::prefers_html(accept) && match_route(DASHBOARD).is_some() {
        return Reply::WithHeaders(
            vec![("Location", DASHBOARD.to_string())],
            Box::new(Reply::Empty(303)),
        );
    }
    Reply::Json(200, sandrun::service_description(&ctx.lock()))
}

/// `GET /health`: open to anyone (load balancers), with or without `--api-keys`.
fn health() -> Reply {
    Reply::Json(
        200,
        json!({"status": "healthy", "service": "trusted-pool", "version": env!("CARGO_PKG_VERSION")}),
    )
}

/// Every reason a submit now would be refused whoever sends it (the caller's own key limits
/// aside): what `/ready` and `/stats` report.
fn submit_refusals(ctx: &Context) -> Vec<String> {
    let mut reasons: Vec<String> = Vec::new();
    let mut reason = |why: &str| reasons.push(why.to_string());
    if ctx.stopping.load(Ordering::SeqCst) {
        reason("the coordinator is shutting down");
    }
    if ctx.store.is_failing() {
        reason("the job store cannot commit (see store.failing in /pool)");
    }
    if let Some(stalled) = ctx.store.stalled_for() {
        reason(&StoreError::Stalled(stalled).to_string());
    }
    if let Some(lost) = ctx.store.file_lost() {
        reason(&lost);
    }
    if let Some(denied) = ctx.spool.denied() {
        reason(&denied);
    }
    if ctx.disk_reserve.out_of_inodes() {
        reason("the state directory's filesystem has no free inodes: no file can be created there (see disk in /pool)");
    }
    if ctx.disk_reserve.shortfall(0).is_some() {
        reason("the state directory's disk is down to its reserve (see disk in /pool)");
    }
    let st = ctx.lock();
    if st.queue.len() >= ctx.config.max_queued_jobs {
        reason("the queue is full (--max-queued-jobs)");
    }
    if st.names_bytes() >= ctx.config.max_names_bytes {
        reason("the jobs queued and running hold --max-names-bytes of file names in memory");
    }
    if st.submits_paused.is_some() {
        reason("submits are paused by an operator (POST /submits/resume)");
    }
    reasons
}

/// `GET /ready`: whether a submit now would be taken and run (for a load balancer's check):
/// 200 `{"ready": true}`, else 503 with every reason it is not. Open like `/health`: the
/// reasons name no job, worker or error detail.
fn ready(ctx: &Context) -> Reply {
    let mut reasons = submit_refusals(ctx);
    {
        let st = ctx.lock();
        if DispatchHold::active(&st.dispatch_hold, Instant::now()).is_some() {
            reasons.push("dispatching is held (see dispatch_held in /pool)".to_string());
        }
        if !st
            .workers
            .iter()
            .any(|w| w.health.is_healthy && !w.draining && !w.removed)
        {
            reasons.push(
                "no worker is healthy and in service: jobs would wait in the queue".to_string(),
            );
        }
    }
    if reasons.is_empty() {
        return Reply::Json(200, json!({"ready": true}));
    }
    Reply::Json(
        503,
        json!({"ready": false, "reasons": reasons, "error": format!("not ready: {}", reasons.join("; "))}),
    )
}

/// `GET /dashboard`: the page holds no data (its script reads `/pool` and `/activity` with the
/// key the user gives it), so it needs no key itself.
fn dashboard_page() -> Reply {
    Reply::Text {
        status: 200,
        content_type: "text/html; charset=utf-8",
        headers: dashboard::page_headers(),
        body: dashboard::PAGE.as_bytes().into(),
    }
}

/// `GET /metrics`: for an admin or read key, or for anyone with `--metrics-open` (or without
/// `--api-keys`).
fn metrics_reply(ctx: &Context) -> Reply {
    Reply::Text {
        status: 200,
        content_type: metrics::CONTENT_TYPE,
        headers: &[("Cache-Control", "no-store")],
        body: metrics::render(ctx).into_bytes().into(),
    }
}

/// `GET /pool`: everything for an admin; for a submit key the counts and its own figures, not
/// the workers (their endpoints take requests without any authentication) nor other keys (nor
/// the keys file's last reload).
fn pool(ctx: &Context, caller: &Caller) -> Reply {
    let keys = ctx.keys.get();
    let mut view = {
        let now = Instant::now();
        let mut st = ctx.lock();
        st.queue.promote(now);
        let settled = PoolStatus::ALL.map(|s| ctx.store.settled_count(s));
        let mut view = pool_view(&st, settled, now);
        if keys.is_some() {
            view["keys"] = keys_view(&st, keys.as_deref(), caller);
        }
        view
    };
    view["queue"]["max_names_bytes"] = ctx.config.max_names_bytes.into();
    view["spool"] = spool_view(&ctx.spool);
    view["disk"] = disk_view(&ctx.disk_reserve);
    view["files_from_workers"] = ctx.worker_fetches.load(Ordering::SeqCst).into();
    view["uploads_receiving"] = ctx.uploads_receiving.load(Ordering::SeqCst).into();
    view["connections"] = connections_view(&ctx.connections, &ctx.config);
    view["requests"] = request_rate_view(&ctx.request_rate);
    view["requests"]["trusted_proxies"] = ctx
        .config
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .into();
    view["requests"]["proxy_protocol"] = ctx.config.proxy_protocol.into();
    view["followers"] = json!({
        "following": ctx.events.follower_count(),
        "max": ctx.events.max_followers(),
        "max_per_ip": ctx.events.max_followers_per_address(),
        "addresses": ctx.events.following_addresses(),
        "feeds": ctx.events.feed_count(),
    });
    view["waiting"] = json!({
        "parked": ctx.parked.load(Ordering::SeqCst),
        "max": ctx.config.max_waiting,
        "max_per_ip": ctx.parked_shares.share(),
        "addresses": ctx.parked_shares.addresses(),
    });
    view["store"] = store_view(
        &ctx.store,
        ctx.config.retain_jobs,
        ctx.config.retain_for.as_secs_f64(),
    );
    view["store"]["settled_views_kept"] = ctx.settled_views.count().into();
    view["store"]["wipes_waiting"] = ctx.spool.removals().pending_wipes().into();
    view["log_level"] = ctx.log_level.view();
    view["access_log"] = access_log_view(ctx.access_log.as_ref());
    view["certificates"] = certificates_view(&ctx.certificates);
    view["caller"] = json!({"key": caller.name(), "role": caller.role().as_str()});
    if !caller.sees_all() {
        if let Some(fields) = view.as_object_mut() {
            fields.remove("workers");
            fields.remove("log_level");
            fields.remove("access_log");
            fields.remove("certificates");
        }
        if let Some(fields) = view["requests"].as_object_mut() {
            fields.remove("trusted_proxies");
        }
        if let Some(fields) = view["connections"].as_object_mut() {
            fields.remove("busiest_addresses");
        }
        // The keys file's error names other keys' entries.
        if let Some(fields) = view["last_reload"].as_object_mut() {
            fields.remove("keys");
        }
        if let Some(owners) = view["queue"]["by_owner"].as_array_mut() {
            owners.retain(|o| o["owner"].as_str() == caller.name());
        }
    }
    Reply::Json(200, view)
}

/// A route about one job: another key's job is answered exactly like an unknown id, and a
/// non-admin answer never shows the worker's own job id.
fn job_route(
    ctx: &Arc<Context>,
    caller: &Caller,
    id: &str,
    handler: impl FnOnce(&Arc<Context>) -> Reply,
) -> Reply {
    if caller.sees_all() {
        return handler(ctx);
    }
    let live = visible_job(&ctx.lock(), caller, id).map(|job| job.remote_job_id.clone());
    let stored = match live {
        Some(_) => None,
        // A settled job lives in the job store only.
        None => match stored_view(ctx, id) {
            Ok(Some(view)) if caller.can_see_owned_by(view.owner.as_deref()) => {
                Some(view.remote_job_id.clone())
            }
            _ => return unknown_job(id),
        },
    };
    let reply = handler(ctx);
    // Looked up again after the answer: the job may have been dispatched meanwhile, or have
    // settled and left the table (its answer then came from the job store).
    let remote = remote_id_of(ctx, id).or(stored.flatten());
    match remote {
        Some(remote) => hide_remote_id(reply, &remote),
        None => reply,
    }
}

/// The locked table, with the queue's aging brought up to date.
fn promoted(ctx: &Context) -> std::sync::MutexGuard<'_, crate::state::pool_state::PoolState> {
    let mut st = ctx.lock();
    st.queue.promote(Instant::now());
    st
}

/// The seconds of `?wait=`: 0 to 60.
fn wait_secs(text: &str) -> Result<f64, Reply> {
    match text.parse::<f64>() {
        Ok(secs) if (0.0..=waiting::MAX_WAIT_SECS).contains(&secs) => Ok(secs),
        _ => Err(error_reply(
            400,
            format!(
                "?wait= must be a number of seconds from 0 to {}, got {text:?}",
                waiting::MAX_WAIT_SECS
            ),
        )),
    }
}

/// `GET /status/{id}?wait=SECS`: the status at once when the job has ended (or SECS is 0),
/// else the request is parked and answered when the job ends or SECS passed.
fn wait_status(ctx: &Context, id: &str, secs: f64, client: Option<IpAddr>) -> Reply {
    let mut st = promoted(ctx);
    let Some(job) = st.jobs.get(id) else {
        drop(st);
        // Not in the table: settled (in the job store) or unknown.
        return status(ctx, id);
    };
    if job.status.is_final() || secs == 0.0 {
        return match status_json(&st, id) {
            Some(bytes) => Reply::JsonBytes(200, bytes),
            None => unknown_job(id),
        };
    }
    st.ends.watch(id);
    st.mark_watched(id);
    Reply::Wait(WaitFor {
        job_id: id.to_string(),
        until: Instant::now() + Duration::from_secs_f64(secs),
        client,
    })
}

/// `POST /log-level?level=LEVEL&for=SECS` (admin): the log level for `SECS` seconds (default
/// [`LOG_LEVEL_FOR`]; 0: until changed again or a restart), then `--log-level` again.
fn set_log_level(ctx: &Context, caller: &Caller, url: &str) -> Reply {
    let levels = "off, error, warn, info, debug or trace";
    let Some(given) = query::param(url, "level") else {
        return error_reply(
            400,
            format!("say which level: POST /log-level?level=debug ({levels}), and for how long: &for=SECS (default {LOG_LEVEL_FOR}; 0: until changed again)"),
        );
    };
    let Ok(level) = given.parse::<log::LevelFilter>() else {
        return error_reply(400, format!("unknown log level {given:?}: use {levels}"));
    };
    let lasting = match query::param(url, "for").map(|secs| secs.parse::<u64>()) {
        None => Some(Duration::from_secs(LOG_LEVEL_FOR)),
        Some(Ok(0)) => None,
        Some(Ok(secs)) if secs <= LOG_LEVEL_FOR_MAX => Some(Duration::from_secs(secs)),
        Some(_) => {
            return error_reply(
                400,
                format!(
                    "for must be whole seconds from 0 (until changed again) to {LOG_LEVEL_FOR_MAX}"
                ),
            )
        }
    };
    if let Err(e) = ctx
        .log_level
        .set(level, lasting, caller.name().map(str::to_string))
    {
        return retry_after(
            SUBMIT_RETRY_AFTER,
            error_reply(
                503,
                format!("no thread to put the log level back later ({e}); nothing changed, retry shortly"),
            ),
        );
    }
    let back = lasting.map_or_else(
        || "until changed again".to_string(),
        |l| format!("for {} s", l.as_secs()),
    );
    log::warn!(
        "Log level set to {}{} {back}; --log-level is {}",
        given.to_lowercase(),
        caller.log_label(),
        ctx.log_level.configured().as_str().to_lowercase()
    );
    Reply::Json(200, ctx.log_level.view())
}

fn drain(ctx: &Context, raw: &str, on: bool, by: &str) -> Reply {
    let Some(worker_id) = worker_id_from_url(raw) else {
        return error_reply(
            400,
            format!("the worker id {raw:?} is not validly percent-encoded"),
        );
    };
    match control::set_drain(ctx, &worker_id, raw, on, by) {
        Ok(index) => Reply::Json(200, worker_view(&ctx.lock(), index, Instant::now())),
        Err(e) => error_reply(e.status(), e.to_string()),
    }
}

fn submit(ctx: &Arc<Context>, caller: &Caller, request: &mut Request, url: &str) -> Reply {
    if ctx.stopping.load(Ordering::SeqCst) {
        return error_reply(
            503,
            "the coordinator is shutting down; submit again once it is back",
        );
    }
    if let Some(stalled) = ctx.store.stalled_for() {
        let why = format!(
            "{}; the job was not accepted (nothing was kept): submit again later, or to another coordinator",
            StoreError::Stalled(stalled)
        );
        return retry_after(SUBMIT_RETRY_AFTER, error_reply(503, why));
    }
    if let Some(lost) = ctx.store.file_lost() {
        let why = format!(
            "{lost}; the job was not accepted (nothing was kept): submit to another coordinator, or once the operator put the state directory back or restarted"
        );
        return retry_after(SUBMIT_RETRY_AFTER, error_reply(503, why));
    }
    let submit_key = match submit_key::key_of(headers::values(request, HEADER)) {
        Ok(key) => key,
        Err(why) => return error_reply(400, why),
    };
    // Held until this submit is answered: a retry that overtakes it waits, and then finds the
    // job it made (a paused or full coordinator still answers a repeat with its job).
    let _held = match &submit_key {
        Some(key) => match ctx.submit_keys.hold(caller.name(), key) {
            Some(held) => Some(held),
            None => {
                let busy = upload::UploadError::SubmitKeyBusy(key.clone());
                let reply = error_reply(busy.status(), busy.to_string());
                return retry_after(SUBMIT_KEY_RETRY_AFTER, reply);
            }
        },
        None => None,
    };
    if let Some(key) = &submit_key {
        match ctx.store.find_submitted(caller.name(), key) {
            Ok(Some(job)) => return repeated_submit(ctx, caller, request, url, &job),
            Ok(None) => {}
            Err(e) => return error_reply(500, e.to_string()),
        }
    }
    let queued = {
        let mut st = ctx.lock();
        if let Some(secs) = st.submits_paused.as_mut().map(SubmitsPause::refuse) {
            let reply = error_reply(
                503,
                format!(
                    "submits are paused by an operator (for {secs:.0} s now); queued and running jobs go on. Submit again later, or to another coordinator"
                ),
            );
            return retry_after(PAUSED_RETRY_AFTER, reply);
        }
        if let Err(e) = upload::names_room(&st, ctx.config.max_names_bytes, 0) {
            return retry_after(SUBMIT_RETRY_AFTER, error_reply(e.status(), e.to_string()));
        }
        st.queue.len()
    };
    let max = ctx.config.max_queued_jobs;
    if queued >= max {
        let full = upload::UploadError::QueueFull { queued, max };
        return retry_after(
            SUBMIT_RETRY_AFTER,
            error_reply(full.status(), full.to_string()),
        );
    }
    let options = upload::SubmitOptions::from_query(|name| query::param(url, name))
        .and_then(|o| upload::queue_timeout_of(ctx, o.queue_timeout).map(|_| o))
        .and_then(|o| upload::reruns_of(ctx, o.reruns).map(|_| o))
        .and_then(|o| {
            upload::check_labels(ctx, o.labels.as_deref().unwrap_or_default()).map(|()| o)
        });
    let options = match options {
        Ok(options) => options,
        Err(e) => return error_reply(e.status(), e.to_string()),
    };
    let boundary = match content_type(request)
        .and_then(|ct| upload::check_headers(ctx, ct, request.body_length()))
    {
        Ok(b) => b,
        Err(e) => return error_reply(e.status(), e.to_string()),
    };
    let length = request.body_length();
    let accepted = upload::check_queue_room(ctx, caller).and_then(|()| {
        let body = UploadBody {
            boundary,
            reader: request.as_reader(),
            length,
        };
        upload::accept(ctx, caller, options, body, submit_key)
    });
    match accepted.map_err(|e| e.naming_inodes(&ctx.disk_reserve)) {
        Ok(id) => Reply::Json(200, json!({"job_id": id, "status": "queued"})),
        // Refused as a submit that came while paused is: no failure of the coordinator's.
        Err(e @ upload::UploadError::Paused(_)) => {
            retry_after(PAUSED_RETRY_AFTER, error_reply(e.status(), e.to_string()))
        }
        // The coordinator is full, not failing: no error in its log.
        Err(
            e @ (upload::UploadError::NamesFull { .. } | upload::UploadError::QueueFull { .. }),
        ) if e.status() == 503 => {
            retry_after(SUBMIT_RETRY_AFTER, error_reply(e.status(), e.to_string()))
        }
        Err(e) => {
            if e.status() >= 500 {
                // A client that retries against a full disk would otherwise fill the log.
                if let Some(held) = lock(&SUBMIT_FAILURES).check(Instant::now()) {
                    log::error!("Submit failed: {e}{}", Repeats::suffix(held));
                }
            }
            let reply = error_reply(e.status(), e.to_string());
            if matches!(e.status(), 429 | 503) {
                return retry_after(SUBMIT_RETRY_AFTER, reply);
            }
            reply
        }
    }
}

/// A request's `Content-Type`, if it has one; two are refused.
fn content_type(request: &Request) -> Result<Option<&str>, upload::UploadError> {
    headers::only(headers::values(request, "Content-Type"))
        .map_err(|_| upload::UploadError::GivenTwice("Content-Type header"))
}

/// A submit that repeats the `Idempotency-Key` of `job`: once its body holds the same as the
/// first submit's, answered that job as the first submit was (`Idempotent-Replayed: true`, and
/// the job's status now), with no new job; a body that holds something else is refused (422).
fn repeated_submit(
    ctx: &Context,
    caller: &Caller,
    request: &mut Request,
    url: &str,
    job: &Job,
) -> Reply {
    let checked = upload::SubmitOptions::from_query(|name| query::param(url, name)).and_then(|o| {
        let boundary = upload::boundary_of(content_type(request)?)?;
        let length = request.body_length();
        let body = UploadBody {
            boundary,
            reader: request.as_reader(),
            length,
        };
        upload::check_repeat(ctx, o, body, job)
    });
    if let Err(e) = checked {
        return error_reply(e.status(), e.to_string());
    }
    ctx.metrics.submit_repeated();
    log::info!(
        "A submit repeated the {HEADER} of job {}: answered that job{}",
        job.id,
        caller.log_label()
    );
    let status = match ctx.lock().jobs.get(&job.id) {
        Some(live) => sandrun::sandrun_status(live.status, &live.collection),
        None => sandrun::sandrun_status(job.status, &job.collection),
    };
    Reply::WithHeaders(
        vec![("Idempotent-Replayed", "true".to_string())],
        Box::new(Reply::Json(
            200,
            json!({"job_id": job.id, "status": status}),
        )),
    )
}

/// `GET /status/{id}`: from the table while the job is live (the job is then watched, see
/// `Job::watched`), else from the job store.
fn status(ctx: &Context, id: &str) -> Reply {
    let mut st = promoted(ctx);
    if let Some(bytes) = status_json(&st, id) {
        st.mark_watched(id);
        return Reply::JsonBytes(200, bytes);
    }
    drop(st);
    match stored_view(ctx, id) {
        Ok(Some(view)) => Reply::JsonBytes(200, view.status_json.clone()),
        Ok(None) => unknown_job(id),
        Err(e) => error_reply(500, e.to_string()),
    }
}
