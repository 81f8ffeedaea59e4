//! Following a job: `GET /logs/{id}?follow=1` (a chunked `text/plain` stream) and
//! `GET /stream/{id}` (a WebSocket in sandrun's own message format). Both send the same pieces:
//! `[STATUS] Job status: <status>`, then a line when the job is dispatched and started, its output
//! as the worker delivers it, and the last lines (`[VERIFY] ...`, `[DONE] ...`) when it is over;
//! then the stream ends. After `--follow-heartbeat` of silence (a queued job, or one running
//! without output) a text stream repeats the status line (a queued job's with its place in the
//! queue) and a WebSocket is pinged, so proxies keep the stream open and a vanished client is
//! noticed at the next write. The handler thread only decides (404, 503 over
//! `--max-followers`) and hands the connection to a follower thread of its own, so followers
//! never hold handler threads.

use crate::base::clock::unix_now;
use crate::base::job::{Collection, Job, PoolStatus, StoredResults};
use crate::base::sync::{Parcel, Place, PlaceRefused};
use crate::http::auth::Caller;
use crate::http::cors;
use crate::http::grant::Grant;
use crate::http::headers::{self, GivenTwice};
use crate::http::query;
use crate::http::redact::TextHider;
use crate::http::replies::{error_reply, retry_after, unknown_job, Reply};
use crate::http::views;
use crate::pool::announce::{final_lines, output_lines};
use crate::state::context::Context;
use crate::state::events::{Event, Follower, MAX_BACKLOG};
use crate::worker::websocket::{accept_key, frame, CLOSE, TEXT};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::sync::Arc;
use std::thread;
use tiny_http::Request;

/// `Retry-After` seconds of a follow refused for want of a place: a stream holds its place
/// until its job ends, so sooner is seldom better.
const FOLLOW_RETRY_AFTER: u32 = 5;

/// Stack size of a follower thread.
const FOLLOWER_STACK: usize = 128 * 1024;

/// How the pieces travel.
pub enum Wire {
    /// Chunked `text/plain`.
    Text,
    /// WebSocket text frames, after a handshake answering this `Sec-WebSocket-Key`.
    WebSocket(String),
}

/// What the follower sends.
enum Plan {
    /// The job is over: these pieces (the collected logs are read by the follower thread).
    Replay {
        first: String,
        logs: Option<(String, StoredResults)>,
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

/// The job's status line, sandrun's own (`note` empty) or with a note after the status.
fn status_line(job: &Job, note: &str) -> String {
    format!("[STATUS] Job status: {}{note}\n", job.status.as_str())
}

/// The pieces of a job that is over.
fn replay(job: &Job, slot: Place) -> Plan {
    let logs = match &job.collection {
        Collection::Collected(stored) => Some((job.id.clone(), StoredResults::clone(stored))),
        _ => None,
    };
    Plan::Replay {
        first: status_line(job, ""),
        logs,
        last: final_lines(job),
        _slot: slot,
    }
}

/// The last line of a live stream when the coordinator stops.
const SHUTDOWN_LINE: &str =
    "[STATUS] The coordinator is shutting down; follow the job again once it is back\n";

/// Why a stream ends: its WebSocket close code (RFC 6455 7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Everything was sent (1000).
    Over,
    /// The coordinator stops (1001).
    GoingAway,
    /// Its client key no longer lets it follow the job (1008).
    Refused,
    /// Its client read slower than the job's output came (1013, try again later).
    Behind,
}

/// How pieces are framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// WebSocket text frames.
    WebSocket,
    /// The chunked encoding (HTTP/1.1).
    Chunked,
    /// Bare text up to the connection's close: an HTTP/1.0 client takes no chunked encoding
    /// (RFC 9112, 6.1).
    UntilClose,
}

/// Writes pieces on one wire.
struct Out {
    writer: Box<dyn Write + Send>,
    framing: Framing,
    hider: Option<TextHider>,
}

impl Out {
    fn open(
        mut request: Request,
        wire: &Wire,
        cors: &[(&'static str, String)],
        hider: Option<TextHider>,
    ) -> std::io::Result<Self> {
        let (head, framing) = match wire {
            Wire::Text => {
                let cors: String = cors
                    .iter()
                    .map(|(name, value)| format!("{name}: {value}\r\n"))
                    .collect();
                let (framing, encoding) = if *request.http_version() <= (1, 0) {
                    (Framing::UntilClose, "")
                } else {
                    (Framing::Chunked, "Transfer-Encoding: chunked\r\n")
                };
                (
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\
                         {encoding}Cache-Control: no-cache\r\n{cors}Connection: close\r\n\r\n"
                    ),
                    framing,
                )
            }
            Wire::WebSocket(key) => (
                format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    accept_key(key)
                ),
                Framing::WebSocket,
            ),
        };
        // Nothing follows on the connection once the stream ended: it closes then.
        request.close_after_response();
        let mut writer = request.into_writer();
        writer.write_all(head.as_bytes())?;
        writer.flush()?;
        Ok(Out {
            writer,
            framing,
            hider,
        })
    }

    fn piece(&mut self, text: &str) -> std::io::Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        let text = match &mut self.hider {
            Some(hider) => hider.hide(text),
            None => std::borrow::Cow::Borrowed(text),
        };
        match self.framing {
            Framing::WebSocket => self.writer.write_all(&frame(TEXT, text.as_bytes(), None))?,
            Framing::Chunked => {
                write!(self.writer, "{:x}\r\n", text.len())?;
                self.writer.write_all(text.as_bytes())?;
                self.writer.write_all(b"\r\n")?;
            }
            Framing::UntilClose => self.writer.write_all(text.as_bytes())?,
        }
        self.writer.flush()
    }

    /// Breaks a silence: a ping frame on a WebSocket, the job's status line (when it is still
    /// in the table) on text, which has no invisible piece; a queued job's line also gives its
    /// place in the queue.
    fn heartbeat(&mut self, ctx: &Context, id: &str) -> std::io::Result<()> {
        if self.framing == Framing::WebSocket {
            self.writer.write_all(&frame(0x9, &[], None))?;
            return self.writer.flush();
        }
        let line = {
            let st = ctx.lock();
            st.jobs
                .get(id)
                .map(|job| status_line(job, &views::queue_place_note(&st, job)))
        };
        line.map_or(Ok(()), |line| self.piece(&line))
    }

    fn finish(mut self, ending: Ending) {
        let end: Vec<u8> = match self.framing {
            Framing::WebSocket => {
                let code: u16 = match ending {
                    Ending::Over => 1000,
                    Ending::GoingAway => 1001,
                    Ending::Refused => 1008,
                    Ending::Behind => 1013,
                };
                frame(CLOSE, &code.to_be_bytes(), None)
            }
            Framing::Chunked => b"0\r\n\r\n".to_vec(),
            // The connection's close ends the body.
            Framing::UntilClose => Vec::new(),
        };
        let _ = self.writer.write_all(&end);
        let _ = self.writer.flush();
    }
}

fn read_logs(ctx: &Context, id: &str, mut stored: StoredResults) -> Option<Value> {
    ctx.load_row_results(id, &mut stored).ok()?;
    let mut reader = ctx.open_results(id, &stored, stored.logs).ok()?;
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).ok()?;
    serde_json::from_slice(&bytes).ok()
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
    let Ok(mut out) = Out::open(request, &wire, &allowed, hider) else {
        return;
    };
    let sent = match plan {
        Plan::Replay {
            first, logs, last, ..
        } => {
            let mut pieces = vec![first];
            if let Some(logs) = logs.and_then(|(id, stored)| read_logs(ctx, &id, stored)) {
                pieces.extend(output_lines(&logs));
            }
            pieces.extend(last);
            pieces
                .iter()
                .try_for_each(|p| out.piece(p))
                .map(|()| Ending::Over)
        }
        Plan::Live {
            first,
            follower,
            grant,
        } => live(ctx, id, &mut out, &first, &follower, grant),
    };
    if let Ok(ending) = sent {
        out.finish(ending);
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
    out.piece(first)?;
    for piece in &follower.history {
        out.piece(piece)?;
    }
    let heartbeat = ctx.config.follow_heartbeat;
    loop {
        let expiry = grant.as_ref().and_then(Grant::until_expiry);
        let wait = expiry.map_or(heartbeat, |left| left.min(heartbeat));
        let recheck = match follower.events.recv_timeout(wait) {
            Ok(Event::Text(text)) => {
                follower.took(text.len());
                out.piece(&text)?;
                false
            }
            Ok(Event::Behind) => {
                log::info!(
                    "Let go a follower of job {id}: it read slower than the job's output came"
                );
                out.piece(&format!(
                    "[ERROR] This stream fell more than {MAX_BACKLOG} bytes behind the job's output; follow the job again, or read its logs once it ended (GET /logs/{id})\n"
                ))?;
                return Ok(Ending::Behind);
            }
            Ok(Event::End) => return Ok(Ending::Over),
            Ok(Event::Shutdown) => {
                out.piece(SHUTDOWN_LINE)?;
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
            out.piece(&format!(
                "[ERROR] This stream ended: {why}; a request with a valid key may follow the job again\n"
            ))?;
            return Ok(Ending::Refused);
        }
    }
}
