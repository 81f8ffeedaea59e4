//! The HTTP front: a fixed pool of handler threads behind one tiny_http server. A panic in a
//! handler is caught and answered 500; the thread goes on serving. A handler only works out
//! the answer: it is written on the request's connection thread, which waits for it anyway
//! (the next request of a connection is read once this one is answered), so a client that does
//! not read its answers holds its own connection's thread, never a handler.
//!
//! A body of at most [`MAX_INLINE_BODY`] bytes arrives with its headers (read on the
//! connection's own thread), so such a request never waits on its client here. A larger or
//! chunked body (an upload) can keep its reader for as long as its client dawdles (up to
//! `--client-timeout` per silence), so uploads are read on upload threads, never on a handler,
//! at most `--max-uploads` at once (503 beyond): stalled uploads cannot take the handlers that
//! short requests need. A request whose body already arrived (a small submit) is served on its
//! connection's own thread, which has nothing else to do until it is answered: no hand-over to
//! another thread, and a submit waiting for its job's commit holds no handler (more submits
//! waiting together make bigger group commits).

use crate::base::sync::{Parcel, Place, PlaceRefused};
use crate::base::thread_cache::ThreadCache;
use crate::http::access_log::Access;
use crate::http::client_address::client_address;
use crate::http::cors;
use crate::http::replies::{attachment_disposition, error_reply, retry_after, Reply, WaitFor};
use crate::http::waiting::Waiting;
use crate::state::context::Context;
use crossbeam_channel::Sender;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use tiny_http::{
    Header, MessagesQueue, Method, Request, Response, Server, StatusCode, MAX_INLINE_BODY,
};

/// Largest write of a body held in memory ([`Reply::Text`]: a page, the metrics).
const TEXT_WRITE_BLOCK: usize = 64 * 1024;

/// Stack of an upload thread (the handler's work: multipart parsing into the spool).
const UPLOAD_STACK: usize = 256 * 1024;

fn header(name: &str, value: &str) -> Option<Header> {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).ok()
}

fn headers_of(pairs: &[(&str, String)]) -> Vec<Header> {
    pairs.iter().filter_map(|(n, v)| header(n, v)).collect()
}

/// Answers JSON `bytes` (a newline added); returns the body's length.
fn respond_json(
    request: Request,
    status: u16,
    mut bytes: Vec<u8>,
    extra: Vec<Header>,
) -> (std::io::Result<()>, Option<u64>) {
    bytes.push(b'\n');
    let length = bytes.len() as u64;
    let mut response = Response::from_data(bytes).with_status_code(status);
    for h in header("Content-Type", "application/json")
        .into_iter()
        .chain(extra)
    {
        response.add_header(h);
    }
    (request.respond(response), Some(length))
}

/// Writes `reply` with `extra` headers; returns the body's length when it is known.
fn send(request: Request, reply: Reply, mut extra: Vec<Header>) -> Option<u64> {
    let (result, length) = match reply {
        Reply::Json(status, body) => respond_json(
            request,
            status,
            serde_json::to_vec(&body).unwrap_or_default(),
            extra,
        ),
        Reply::JsonBytes(status, bytes) => respond_json(request, status, bytes, extra),
        Reply::Handoff(take) => match take(request) {
            Ok(()) => (Ok(()), None),
            Err(refused) => {
                let (request, why) = *refused;
                extra.extend(header("Retry-After", "1"));
                let body = serde_json::json!({ "error": why });
                respond_json(
                    request,
                    503,
                    serde_json::to_vec(&body).unwrap_or_default(),
                    extra,
                )
            }
        },
        Reply::Text {
            status,
            content_type,
            headers,
            body,
        } => {
            // One Content-Length body in 64 KiB writes (a 340 KB scrape of 200 workers: 6
            // writes instead of 44 chunks of 8 KiB).
            let length = body.len() as u64;
            let mut response = Response::from_data(body)
                .with_status_code(status)
                .with_chunked_threshold(usize::MAX)
                .with_write_block(TEXT_WRITE_BLOCK);
            let own = [("Content-Type", content_type)]
                .into_iter()
                .chain(headers.iter().copied())
                .filter_map(|(name, value)| header(name, value));
            for h in own.chain(extra) {
                response.add_header(h);
            }
            (request.respond(response), Some(length))
        }
        Reply::Stream {
            status,
            content_type,
            length,
            attachment,
            body,
        } => {
            if let Some(name) = attachment {
                extra.extend(header(
                    "Content-Disposition",
                    &attachment_disposition(&name),
                ));
            }
            let headers = header("Content-Type", &content_type)
                .or_else(|| header("Content-Type", "application/octet-stream"))
                .into_iter()
                .chain(extra)
                .collect();
            // Said here, with what was asked: the answer's status line is already out, so the
            // log is the only place that tells why its client got a cut body.
            let asked = format!("{} {}", request.method(), request.url());
            // A known length goes out as `Content-Length` (a client sees a cut body as one),
            // an unknown one in the chunked encoding.
            let response = Response::new(StatusCode(status), headers, body, length, None)
                .with_chunked_threshold(usize::MAX);
            let sent = request.respond(response);
            if let Err(e) = sent {
                log::warn!("The answer to {asked} broke off part-way (connection closed): {e}");
            }
            (Ok(()), length.map(|n| n as u64))
        }
        Reply::JsonStream {
            status,
            length,
            body,
        } => {
            let reply = Reply::Stream {
                status,
                content_type: "application/json".to_string(),
                length,
                attachment: None,
                body,
            };
            return send(request, reply, extra);
        }
        Reply::Empty(status) => {
            let mut response = Response::empty(StatusCode(status));
            for h in extra {
                response.add_header(h);
            }
            (request.respond(response), Some(0))
        }
        Reply::WithHeaders(headers, inner) => {
            extra.extend(headers_of(&headers));
            return send(request, *inner, extra);
        }
        Reply::Wait(WaitFor { job_id, .. }) => respond_json(
            request,
            503,
            format!("{{\"error\": \"cannot wait on job {job_id} now; poll without ?wait=\"}}")
                .into_bytes(),
            extra,
        ),
    };
    if let Err(e) = result {
        log::debug!("Could not send a response: {e}");
    }
    length
}

/// A request handler: [`crate::http::routes::route`] in the coordinator. The request's access
/// log entry, when the coordinator keeps one, takes the name of the key it carried.
pub type Handler = fn(&Arc<Context>, &mut Request, &mut Option<Access>) -> Reply;

/// Whether a request without a body is served on its connection's own thread, like one whose
/// body arrived ([`crate::http::routes::is_quick`] in the coordinator): it is answered from
/// the coordinator's own state, or it is a download that only its own client can slow down.
pub type QuickTest = fn(&Request) -> bool;

/// Writes `reply` to `request`, with the CORS headers its origin gets; returns the body's
/// length when it is known. A request with two `Origin` headers gets none (it is refused).
fn respond(ctx: &Context, request: Request, reply: Reply) -> Option<u64> {
    let origin = cors::origin(&request).ok().flatten();
    let allowed = cors::headers(&ctx.config.cors_origins, origin);
    let allowed = headers_of(&allowed);
    send(request, reply, allowed)
}

/// Answers `request` with `reply`, and logs it in the access log (`access`).
fn answer(ctx: &Context, request: Request, reply: Reply, access: Option<Access>) {
    let status = reply.status();
    ctx.metrics.answered(status);
    // A HEAD answer's headers give the body's length; no byte of it is sent.
    let head = *request.method() == Method::Head;
    let bytes = respond(ctx, request, reply).map(|n| if head { 0 } else { n });
    if let Some(access) = access {
        access.end(ctx, status, bytes);
    }
}

/// Refuses `request` 503 with `Retry-After: 1` and `why`: the coordinator is busy, not broken.
/// `close` ends the connection after the answer (its unread body is left behind).
fn refuse_busy(ctx: &Context, mut request: Request, why: impl Into<String>, close: bool) {
    let access = Access::begin(ctx, &request);
    if close {
        request.close_after_response();
    }
    answer(ctx, request, retry_after(1, error_reply(503, why)), access);
}

/// Serves one request on the calling thread. A panic anywhere in it (the handler's is answered
/// 500; one while answering closes the connection) is logged and leaves the thread serving.
fn serve_one(ctx: &Arc<Context>, handler: Handler, waiting: Option<&Waiting>, request: Request) {
    ctx.requests_in_flight.fetch_add(1, Ordering::SeqCst);
    let served = catch_unwind(AssertUnwindSafe(|| {
        handled(ctx, handler, request).answer(ctx, waiting)
    }));
    if served.is_err() {
        log::error!("Answering a request panicked; its connection was closed");
    }
    ctx.requests_in_flight.fetch_sub(1, Ordering::SeqCst);
}

/// A request its handler answered, to be written to its client.
struct Handled {
    request: Request,
    reply: Reply,
    access: Option<Access>,
}

impl Handled {
    /// Writes the answer (or parks a `?wait=` request) on the calling thread.
    fn answer(self, ctx: &Arc<Context>, waiting: Option<&Waiting>) {
        let Handled {
            request,
            reply,
            access,
        } = self;
        match (reply, waiting) {
            (Reply::Wait(wait), Some(waiting)) => waiting.park(ctx, request, wait, access),
            (reply, _) => answer(ctx, request, reply, access),
        }
    }
}

/// `request` with its handler's answer; a panic anywhere in the handling is answered 500 (the
/// request stays here, to be answered where its connection is).
fn handled(ctx: &Arc<Context>, handler: Handler, mut request: Request) -> Handled {
    let mut access = None;
    let reply = catch_unwind(AssertUnwindSafe(|| {
        handle(ctx, handler, &mut request, &mut access)
    }));
    let reply = reply.unwrap_or_else(|_| {
        log::error!(
            "The handler of {} {} panicked; answered 500",
            request.method(),
            request.url()
        );
        error_reply(
            500,
            "internal error while handling the request; see the coordinator log",
        )
    });
    Handled {
        request,
        reply,
        access,
    }
}

/// Runs the handler of `request`, its access log entry begun in `access`.
fn handle(
    ctx: &Arc<Context>,
    handler: Handler,
    request: &mut Request,
    access: &mut Option<Access>,
) -> Reply {
    let streams = streams_body(request);
    *access = Access::begin(ctx, request);
    let reply = handler(ctx, request, access);
    if streams && reply.status() >= 400 {
        // The body may be unread: do not wait for a slow client to send the rest.
        request.close_after_response();
    }
    reply
}

/// The handler threads: each runs the handlers of requests its connection threads send, and
/// sends the answer back to be written there, so a client that does not read its answers holds
/// its own connection's thread only, never a handler. A handler sleeps until a request comes
/// (a condition variable: no spinning).
struct Handlers {
    work: Arc<MessagesQueue<(Request, Sender<Handled>)>>,
    /// Whether any handler thread started.
    running: bool,
}

impl Handlers {
    /// Starts `threads` handler threads; returns them with their threads' handles.
    fn start(
        ctx: &Arc<Context>,
        threads: usize,
        handler: Handler,
    ) -> (Handlers, Vec<thread::JoinHandle<()>>) {
        let work: Arc<MessagesQueue<(Request, Sender<Handled>)>> =
            MessagesQueue::with_capacity(threads);
        let joins: Vec<_> = (0..threads)
            .filter_map(|i| {
                let ctx = Arc::clone(ctx);
                let queue = Arc::clone(&work);
                thread::Builder::new()
                    .name(format!("http-{i}"))
                    .spawn(move || {
                        while let Some((request, back)) = queue.pop() {
                            drop(back.send(handled(&ctx, handler, request)));
                        }
                    })
                    .map_err(|e| log::error!("Could not start HTTP handler thread {i}: {e}"))
                    .ok()
            })
            .collect();
        let running = !joins.is_empty();
        (Handlers { work, running }, joins)
    }

    /// Has a handler thread answer `request`, then writes its answer on the calling thread
    /// (the request's connection thread, which waits for it anyway).
    fn serve(&self, ctx: &Arc<Context>, waiting: Option<&Waiting>, request: Request) {
        if !self.running {
            let why = "no handler thread could be started; see the coordinator log";
            refuse_busy(ctx, request, why, false);
            return;
        }
        ctx.requests_in_flight.fetch_add(1, Ordering::SeqCst);
        let (back, handled) = crossbeam_channel::bounded(1);
        self.work.push((request, back));
        if let Ok(handled) = handled.recv() {
            let written = catch_unwind(AssertUnwindSafe(|| handled.answer(ctx, waiting)));
            if written.is_err() {
                log::error!("Answering a request panicked; its connection was closed");
            }
        }
        ctx.requests_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Stack of the thread that hands on the requests read while the coordinator started.
const EARLY_STACK: usize = 64 * 1024;

/// Where every request goes once read: its connection's own thread, an upload thread, or a
/// handler (the answer written back on the calling thread).
struct Front {
    ctx: Arc<Context>,
    handler: Handler,
    quick: QuickTest,
    uploads: Uploads,
    waiting: Option<Arc<Waiting>>,
    handlers: Handlers,
}

impl Front {
    /// Serves `request` on the calling thread, or hands it on.
    fn serve(&self, request: Request) {
        let (ctx, waiting) = (&self.ctx, self.waiting.as_deref());
        if streams_body(&request) {
            self.uploads.serve(ctx, self.handler, request);
        } else if has_body(&request) || (self.quick)(&request) {
            serve_one(ctx, self.handler, waiting, request);
        } else {
            self.handlers.serve(ctx, waiting, request);
        }
    }
}

/// True when the request has a body (arrived or still to read).
fn has_body(request: &Request) -> bool {
    request
        .body_length()
        .map_or_else(|| streams_body(request), |n| n > 0)
}

/// True when the handler will read the request's body from the client's socket.
fn streams_body(request: &Request) -> bool {
    match request.body_length() {
        Some(length) => length > MAX_INLINE_BODY,
        None => request
            .headers()
            .iter()
            .any(|h| h.field.equiv("Transfer-Encoding")),
    }
}

/// The uploads being read, on upload threads; each holds a slot of
/// `Context::uploads_receiving`, at most `--max-uploads`.
struct Uploads {
    threads: ThreadCache,
    /// Where a `?wait=` request is parked.
    waiting: Option<Arc<Waiting>>,
}

impl Uploads {
    fn new(waiting: Option<Arc<Waiting>>) -> Self {
        Uploads {
            threads: ThreadCache::new("upload", UPLOAD_STACK, 0),
            waiting,
        }
    }

    /// Serves a request whose body is still to be read: on an upload thread, or 503 when too
    /// many are read, or its client's address has its share of them.
    fn serve(&self, ctx: &Arc<Context>, handler: Handler, request: Request) {
        let max = ctx.config.max_uploads;
        let client = client_address(&ctx.config.trusted_proxies, &request);
        let why = match Place::take(&ctx.uploads_receiving, max, &ctx.upload_shares, client) {
            Ok(place) => return self.run(ctx, handler, request, place),
            Err(PlaceRefused::AddressFull(held)) => format!(
                "your address has {held} uploads being received already, its share (--max-uploads-per-ip); submit again once one of them ended"
            ),
            Err(PlaceRefused::Full(max)) => format!(
                "{max} uploads are being received (--max-uploads); submit again in a few seconds"
            ),
        };
        refuse_busy(ctx, request, why, true);
    }

    /// Serves `request` on an upload thread, holding `place` until it is answered.
    fn run(&self, ctx: &Arc<Context>, handler: Handler, request: Request, place: Place) {
        let task_ctx = Arc::clone(ctx);
        let parcel = Parcel::new(request);
        let task_parcel = parcel.share();
        let waiting = self.waiting.clone();
        let task = Box::new(move || {
            let _place = place;
            if let Some(request) = task_parcel.take() {
                serve_one(&task_ctx, handler, waiting.as_deref(), request);
            }
        });
        if let Err(e) = self.threads.run(task) {
            log::error!("Could not start an upload thread: {e}");
            if let Some(request) = parcel.take() {
                let why = format!("no thread to read the upload ({e}); retry shortly");
                refuse_busy(ctx, request, why, true);
            }
        }
    }
}

/// Serves requests with `handler` on `threads` handler threads; blocks. A request whose body
/// arrived with its headers, or a quick one (`quick`), is served on its connection's own
/// thread; an upload on an upload thread; any other request is handled on a handler thread and
/// answered on its connection's thread.
pub fn run(
    ctx: Arc<Context>,
    server: Arc<Server>,
    threads: usize,
    handler: Handler,
    quick: QuickTest,
) {
    let waiting = match Waiting::start(Arc::clone(&ctx), answer) {
        Ok(waiting) => Some(Arc::new(waiting)),
        Err(e) => {
            log::error!("Could not start the waiting thread ({e}): ?wait= answers 503");
            None
        }
    };
    let (handlers, joins) = Handlers::start(&ctx, threads, handler);
    let front = Arc::new(Front {
        ctx: Arc::clone(&ctx),
        handler,
        quick,
        uploads: Uploads::new(waiting.clone()),
        waiting,
        handlers,
    });
    let inline = Arc::clone(&front);
    server.serve_inline(Box::new(move |request| {
        inline.serve(request);
        None
    }));
    // Requests read before that (while the coordinator started) wait in the server's queue.
    let early = Arc::clone(&server);
    let spawned = thread::Builder::new()
        .name("http-early".to_string())
        .stack_size(EARLY_STACK)
        .spawn(move || {
            while let Ok(request) = early.recv() {
                let front = Arc::clone(&front);
                let served = thread::Builder::new()
                    .name("http-early".to_string())
                    .spawn(move || front.serve(request));
                if let Err(e) = served {
                    log::error!("Cannot serve a request read while starting: {e}");
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("Cannot serve the requests read while starting: {e}");
    }
    for join in joins {
        let _ = join.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::config::{FsyncMode, ServeConfig};
    use crate::state::pool_state::PoolState;
    use crate::store::jobs_db::{JobStore, Retention};
    use crate::store::spool::Spool;
    use std::time::Instant;

    fn panicky(ctx: &Arc<Context>, request: &mut Request, _: &mut Option<Access>) -> Reply {
        if request.url() == "/panic" {
            let _held = ctx.lock();
            panic!("handler failure on purpose");
        }
        Reply::Json(200, serde_json::json!({"jobs": ctx.lock().jobs.len()}))
    }

    #[test]
    fn a_panicking_handler_is_answered_500_and_the_pool_keeps_serving() {
        let dir = std::env::temp_dir().join(format!("tp-http-{}", std::process::id()));
        let spool = Spool::open(&dir, 0).expect("spool");
        let (results_dir, segments) = spool.results_segments();
        let retention = Retention {
            jobs: 10,
            for_secs: 60.0,
            bytes: 0,
            results_dir,
            segments,
        };
        let (store, _) = JobStore::open(&dir, FsyncMode::Off, retention).expect("store");
        let (ctx, _signals) = Context::new(
            ServeConfig::default(),
            PoolState::new(Vec::new(), Instant::now()),
            spool,
            store,
        );
        let server = Arc::new(Server::http("127.0.0.1:0").expect("bind"));
        let addr = server.server_addr().to_ip().expect("ip address");
        let ctx = Arc::new(ctx);
        ctx.attach();
        thread::spawn(move || run(ctx, server, 2, panicky, |_| false));
        let agent = ureq::AgentBuilder::new()
            .timeout(std::time::Duration::from_secs(10))
            .build();
        for _ in 0..4 {
            match agent.get(&format!("http://{addr}/panic")).call() {
                Err(ureq::Error::Status(500, response)) => {
                    let body = response.into_string().expect("body");
                    assert!(body.contains("\"error\""), "{body}");
                }
                other => panic!("expected a 500, got {other:?}"),
            }
        }
        let ok = agent
            .get(&format!("http://{addr}/fine"))
            .call()
            .expect("served after panics (the lock was poisoned and recovered)");
        assert_eq!(ok.status(), 200);
        let _ = std::fs::remove_dir_all(dir);
    }
}
