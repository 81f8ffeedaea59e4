//! `GET /outputs/{id}`, `GET /outputs/{id}/{path}` (also as `/download/{id}/{path}`),
//! `GET /download/{id}` and `GET /logs/{id}`: served from the spool once collected, else streamed
//! from the worker (`/download/{remote}/{path}`, never `/outputs` nor the deleting
//! `/download/{remote}`).

use crate::base::file_kinds::mime_type;
use crate::base::job::{Collection, Job, PoolStatus, StoredResults};
use crate::base::paths::{percent_decode, safe_relative_path};
use crate::base::sync::Slot;
use crate::base::targz::{Entry, TarGz};
use crate::http::checked_output::{CheckedOutput, Reported};
use crate::http::first_piece::{read_first_piece, BrokeOff};
use crate::http::output_entry::{self, NOT_SERVED_THEN};
use crate::http::redact::hide_in_text;
use crate::http::replies::unknown_job;
use crate::http::replies::{error_reply, retry_after, Reply};
use crate::http::sandrun::sandrun_status;
use crate::pool::collect::{output_paths, uncollectable, LEFT_ON_WORKER};
use crate::pool::tracker;
use crate::state::context::Context;
use crate::state::pool_state::PoolState;
use crate::worker::client::CallError;
use serde::de::IgnoredAny;
use serde_json::{json, Value};
use std::fmt::Display;
use std::io::{self, BufReader, Read};
use std::sync::Arc;
use std::time::Duration;

/// What serving a finished job's results needs, copied out of the table.
struct Finished {
    stored: Option<StoredResults>,
    remote: String,
    endpoint: String,
    /// The worker the job ran on.
    worker_id: String,
    status: PoolStatus,
    /// The job's `status` as a sandrun client reads it.
    sandrun_status: &'static str,
    completed_at: f64,
    worker_status: Value,
}

/// Longest a request for a finished job's results waits for their collection (only a small
/// collection under way: see [`Context::lock_collected`]).
const COLLECTION_WAIT: Duration = Duration::from_secs(2);

/// The finished job `id`, once a small collection of its results under way ended (up to
/// `wait`).
fn finished(ctx: &Context, id: &str, wait: Duration) -> Result<Finished, Reply> {
    let st = ctx.lock_collected(id, wait);
    let stored_job;
    let job = match st.jobs.get(id) {
        Some(job) => job.as_ref(),
        None => {
            drop(st);
            stored_job = match ctx.store.load(id) {
                Ok(Some(job)) => job,
                Ok(None) => return Err(unknown_job(id)),
                Err(e) => return Err(error_reply(500, e.read_failure())),
            };
            return finished_of(&ctx.lock(), &stored_job);
        }
    };
    finished_of(&st, job)
}

/// Like [`finished`] (waiting up to [`COLLECTION_WAIT`]), with the results a store row holds
/// read into memory.
fn finished_with_results(ctx: &Context, id: &str) -> Result<Finished, Reply> {
    let mut job = finished(ctx, id, COLLECTION_WAIT)?;
    if let Some(stored) = job.stored.as_mut() {
        if let Err(e) = ctx.load_row_results(id, stored) {
            return Err(unreadable(
                ctx,
                id,
                &format!("the collected results of job {id}"),
                &e,
            ));
        }
    }
    Ok(job)
}

/// Answers a failed read of job `id`'s collected results (`what`): 404 when retention forgot
/// the job since its row was read (its results went with it), else 500.
fn unreadable(ctx: &Context, id: &str, what: &str, e: &dyn Display) -> Reply {
    if ctx.is_gone(id) {
        return unknown_job(id);
    }
    log::error!("The collected results of job {id} are unreadable: {e}");
    error_reply(500, format!("{what} cannot be read: {e}"))
}

fn finished_of(st: &PoolState, job: &Job) -> Result<Finished, Reply> {
    let id = job.id.as_str();
    let status = job.status;
    if !status.is_final() {
        let mut body = json!({
            "error": format!("job {id} is {}; its results are available once it has finished", status.as_str()),
            "pool_status": status.as_str(),
        });
        if status == PoolStatus::Queued {
            body["queue_position"] = json!(st.queue.position(id).map(|p| p + 1));
        }
        return Err(Reply::Json(409, body));
    }
    let error = job.error.clone().unwrap_or_default();
    if status == PoolStatus::Lost {
        return Err(Reply::Json(
            410,
            json!({"error": format!("job {id} is lost, it has no results: {error}"), "pool_status": "lost"}),
        ));
    }
    if status == PoolStatus::Cancelled {
        return Err(Reply::Json(
            410,
            json!({"error": format!("job {id} was cancelled, it has no results"), "pool_status": "cancelled"}),
        ));
    }
    let (Some(remote), Some(worker_status), Some(worker_id)) =
        (&job.remote_job_id, &job.worker_status, &job.worker_id)
    else {
        return Err(Reply::Json(
            404,
            json!({"error": format!("job {id} never ran on a worker: {error}"), "pool_status": status.as_str()}),
        ));
    };
    let endpoint = st
        .worker_index(worker_id)
        .map(|i| st.workers[i].spec.endpoint.clone())
        .unwrap_or_default();
    Ok(Finished {
        stored: match &job.collection {
            Collection::Collected(stored) => Some(StoredResults::clone(stored)),
            _ => None,
        },
        remote: remote.clone(),
        endpoint,
        worker_id: worker_id.clone(),
        status,
        sandrun_status: sandrun_status(status, &job.collection),
        completed_at: job.completed_at.unwrap_or_default(),
        worker_status: worker_status.clone(),
    })
}

/// `GET /outputs/{id}`: the output files in sandrun's listing shape, plus the coordinator's
/// fields (see [`output_entry`]).
pub fn listing(ctx: &Context, id: &str) -> Reply {
    let job = match finished(ctx, id, Duration::ZERO) {
        Ok(j) => j,
        Err(reply) => return reply,
    };
    let files: Vec<Value> = output_paths(&job.worker_status)
        .iter()
        .map(|name| output_entry::entry(id, name, &job.worker_status, job.stored.as_ref()))
        .collect();
    Reply::Json(
        200,
        json!({
            "job_id": id,
            "status": job.sandrun_status,
            "pool_status": job.status.as_str(),
            "collected": job.stored.is_some(),
            "total_files": files.len(),
            "files": files,
        }),
    )
}

/// `Retry-After` seconds of a file refused because `--threads` files stream from workers.
const FETCHES_FULL_RETRY_AFTER: u32 = 2;
/// `Retry-After` seconds of a fetch from a worker that the coordinator was short of resources
/// to make (out of descriptors or memory).
const SHORTAGE_RETRY_AFTER: u32 = 5;

/// An output file streamed from a worker, holding one of the `--threads` slots for such
/// streams (`Context::worker_fetches`) until the stream ends. The slots bound the connections
/// that clients can make the coordinator hold open to workers, since such a file is served on
/// its client's connection thread, not on a handler.
struct FromWorker {
    body: Box<dyn Read + Send>,
    _slot: Slot,
}

impl Read for FromWorker {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.body.read(buf)
    }
}

/// The output of `job` that `asked` names: the one of that name, else the one whose name holds
/// the worker's job id and reads `asked` with it hidden, as a submit key's answers show it.
fn output_named(job: &Finished, asked: &str) -> Option<String> {
    let outputs = output_paths(&job.worker_status);
    let hidden = |p: &&String| hide_in_text(p, Some(&job.remote)) == asked;
    outputs
        .iter()
        .find(|p| *p == asked)
        .or_else(|| outputs.iter().find(hidden))
        .cloned()
}

/// The answer to a request for an unsafe output path: 400, but for a name the finished job
/// listed (its listing links to it), a 404 saying why it was not collected.
fn unsafe_path(ctx: &Context, id: &str, path: &str, e: &dyn Display) -> Reply {
    let listed = finished_with_results(ctx, id)
        .is_ok_and(|job| output_paths(&job.worker_status).iter().any(|p| p == path));
    if !listed {
        return error_reply(400, e.to_string());
    }
    let why = uncollectable(path).unwrap_or("its path is unsafe");
    error_reply(
        404,
        format!("the output {path:?} of job {id} was not collected: {why}"),
    )
}

/// `GET /outputs/{id}/{path}` and `GET /download/{id}/{path}`: one output file's bytes; as an
/// `attachment` (sandrun's `Content-Disposition`) for `/download`.
pub fn file(ctx: &Arc<Context>, id: &str, raw_path: &str, as_attachment: bool) -> Reply {
    let decoded = match percent_decode(raw_path) {
        Ok(p) => p,
        Err(e) => return error_reply(400, e.to_string()),
    };
    let asked = match safe_relative_path(&decoded) {
        Ok(p) => p,
        Err(e) => return unsafe_path(ctx, id, &decoded, &e),
    };
    let job = match finished_with_results(ctx, id) {
        Ok(j) => j,
        Err(reply) => return reply,
    };
    let Some(path) = output_named(&job, asked) else {
        return error_reply(
            404,
            format!("job {id} has no output file {asked:?}; GET /outputs/{id} lists them"),
        );
    };
    let path = path.as_str();
    let content_type = mime_type(path).to_string();
    // Named as asked: a submit key asks with the worker's job id hidden, and is not told it.
    let attachment = as_attachment.then(|| asked.rsplit('/').next().unwrap_or(asked).to_string());
    let left_on_worker = job
        .stored
        .as_ref()
        .is_some_and(|stored| stored.left_on_worker.iter().any(|p| p == path));
    if let Some(stored) = job.stored.as_ref().filter(|_| !left_on_worker) {
        let Some((_, span)) = stored.outputs.iter().find(|(p, _)| p == path) else {
            let why = uncollectable(path).unwrap_or(NOT_SERVED_THEN);
            return error_reply(
                404,
                format!("the output {path:?} of job {id} was not collected: {why}"),
            );
        };
        return match ctx.open_results(id, stored, *span) {
            Ok(body) => Reply::Stream {
                status: 200,
                content_type,
                length: usize::try_from(span.size).ok(),
                attachment,
                body,
            },
            Err(e) => unreadable(
                ctx,
                id,
                &format!("the collected output {path:?} of job {id}"),
                &e,
            ),
        };
    }
    let why = if left_on_worker {
        format!("the output {path:?} of job {id} is served from its worker (--max-results-bytes)")
    } else {
        format!("the results of job {id} are still being collected")
    };
    let slot = match fetch_slot(ctx, &why) {
        Ok(slot) => slot,
        Err(reply) => return reply,
    };
    match ctx.client.download(&job.endpoint, &job.remote, path) {
        Ok(response) => {
            let reported = Reported::of(&job.worker_status, path);
            if let Some(why) = reported
                .as_ref()
                .and_then(|r| r.refuses_length(response.length))
            {
                ctx.metrics.worker_output_refused();
                log::error!(
                    "Refused the output {path:?} of job {id} from its worker {}: {why}",
                    job.endpoint
                );
                tracker::distrust_for_output(ctx, &job.worker_id, id, path, &why);
                return error_reply(
                    502,
                    format!("the output {path:?} of job {id} changed on its worker since the job ended ({why}); it is not served"),
                );
            }
            // A worker that sends no length (chunked, or up to its close) is held to the size
            // it reported, so the answer carries a length and a cut body shows as one.
            let length = response
                .length
                .or_else(|| reported.as_ref().and_then(|r| r.size));
            let body = match reported {
                Some(reported) => {
                    let (ctx, endpoint) = (Arc::clone(ctx), job.endpoint.clone());
                    let (id, path, worker_id) = (id.to_string(), path.to_string(), job.worker_id);
                    Box::new(CheckedOutput::new(
                        response.reader,
                        reported.sha256,
                        length,
                        Box::new(move |why: &str| {
                            ctx.metrics.worker_output_refused();
                            log::error!(
                                "Cut the output {path:?} of job {id} from its worker {endpoint} before its end: {why} when the job ended"
                            );
                            tracker::distrust_for_output(
                                &ctx,
                                &worker_id,
                                &id,
                                &path,
                                &format!("{why} when the job ended"),
                            );
                        }),
                    ))
                }
                None => response.reader,
            };
            // Read before the status line goes out: a break within the first piece is
            // answered 502, never as an answer without a status line.
            let body = match read_first_piece(body, length) {
                Ok(body) => body,
                Err(broke) => {
                    return broke_off((id, &job.endpoint), path, &why, length, &broke)
                }
            };
            Reply::Stream {
                status: 200,
                content_type,
                length: length.and_then(|l| usize::try_from(l).ok()),
                attachment,
                body: Box::new(FromWorker { body, _slot: slot }),
            }
        }
        Err(CallError::Status { code: 404 | 500, .. }) if left_on_worker => error_reply(
            404,
            format!("the output {path:?} of job {id} was not collected ({LEFT_ON_WORKER}), and its worker no longer has it"),
        ),
        Err(e) => worker_failure(id, &why, &e),
    }
}

/// The 502 for output `path` of job `id` whose worker's (at `endpoint`) answer broke off
/// within its first piece (`why`: why it was fetched from the worker), `length` bytes long when known. A body that hashed
/// otherwise than reported was logged and counted as it was read.
fn broke_off(
    (id, endpoint): (&str, &str),
    path: &str,
    why: &str,
    length: Option<u64>,
    broke: &BrokeOff,
) -> Reply {
    let BrokeOff { got, error } = broke;
    if error.kind() == io::ErrorKind::InvalidData {
        return error_reply(
            502,
            format!("the output {path:?} of job {id} changed on its worker since the job ended ({error} when the job ended); it is not served"),
        );
    }
    let of = length.map(|n| format!(" of {n}")).unwrap_or_default();
    log::warn!(
        "The output {path:?} of job {id} broke off at its worker {endpoint} after {got}{of} bytes ({error}); answered 502"
    );
    error_reply(
        502,
        format!("{why}, and its worker's answer with the output {path:?} broke off after {got}{of} bytes ({error}); nothing of it was sent; try again in a few seconds"),
    )
}

/// `GET /download/{id}`: a `.tar.gz` of the job's collected output files, streamed with its
/// exact length. Unlike sandrun, the job is not deleted: its results stay on the coordinator.
pub fn tarball(ctx: &Arc<Context>, id: &str) -> Reply {
    let job = match finished_with_results(ctx, id) {
        Ok(j) => j,
        Err(reply) => return reply,
    };
    let Some(stored) = job.stored else {
        return Reply::Json(
            409,
            json!({
                "error": format!("the results of job {id} are being copied from its worker; try again in a few seconds"),
                "pool_status": job.status.as_str(),
            }),
        );
    };
    // The results are opened once for every entry: an archive under way is read whole even
    // when retention forgets the job (and deletes its results segment) meanwhile. A damaged
    // segment is answered 500 here, not found out in the middle of the archive.
    let source = ctx.results_source(id, &stored).and_then(|source| {
        for (_, span) in &stored.outputs {
            source.open(*span)?;
        }
        Ok(Arc::new(source))
    });
    let source = match source {
        Ok(source) => source,
        Err(e) => return unreadable(ctx, id, &format!("the collected outputs of job {id}"), &e),
    };
    let mtime = job.completed_at.max(0.0) as u64;
    let entries = stored
        .outputs
        .iter()
        .map(|(path, span)| {
            let source = Arc::clone(&source);
            let span = *span;
            Entry {
                path: path.clone(),
                size: span.size,
                mtime,
                open: Box::new(move || source.open(span)),
            }
        })
        .collect();
    let archive = TarGz::new(entries);
    let Ok(length) = usize::try_from(archive.len()) else {
        return error_reply(
            500,
            format!("the archive of job {id} is too large to serve"),
        );
    };
    Reply::Stream {
        status: 200,
        content_type: "application/gzip".to_string(),
        length: Some(length),
        attachment: Some(format!("{id}.tar.gz")),
        body: Box::new(archive),
    }
}

/// One of the `--threads` places for fetches from workers, or the 503 that says `why` the
/// answer comes from a worker and that the places are taken.
fn fetch_slot(ctx: &Context, why: &str) -> Result<Slot, Reply> {
    Slot::take(&ctx.worker_fetches, ctx.config.threads.max(1)).ok_or_else(|| {
        retry_after(
            FETCHES_FULL_RETRY_AFTER,
            error_reply(
                503,
                format!(
                    "{why}, and {} files are being fetched from workers already (--threads); retry in {FETCHES_FULL_RETRY_AFTER} s",
                    ctx.config.threads
                ),
            ),
        )
    })
}

/// `GET /logs/{id}`: the job's stdout and stderr.
pub fn logs(ctx: &Context, id: &str) -> Reply {
    let job = match finished_with_results(ctx, id) {
        Ok(j) => j,
        Err(reply) => return reply,
    };
    if let Some(stored) = &job.stored {
        // Read twice, in fixed memory: checked to be whole JSON before the 200 goes out, then
        // streamed.
        let opened = ctx.results_source(id, stored).and_then(|source| {
            let checked = BufReader::with_capacity(64 * 1024, source.open(stored.logs)?);
            serde_json::from_reader::<_, IgnoredAny>(checked).map_err(io::Error::other)?;
            source.open(stored.logs)
        });
        return match opened {
            // A newline last, as every JSON answer has.
            Ok(body) => Reply::JsonStream {
                status: 200,
                length: usize::try_from(stored.logs.size + 1).ok(),
                body: Box::new(body.chain(&b"\n"[..])),
            },
            Err(e) => unreadable(ctx, id, &format!("the collected logs of job {id}"), &e),
        };
    }
    let why = format!("the results of job {id} are still being collected");
    let slot = match fetch_slot(ctx, &why) {
        Ok(slot) => slot,
        Err(reply) => return reply,
    };
    let fetched = ctx.client.logs(&job.endpoint, &job.remote);
    drop(slot);
    match fetched {
        Ok(logs) => Reply::Json(200, logs),
        Err(e) => worker_failure(id, &why, &e),
    }
}

/// Maps a failed call to the job's worker, whose answer was asked for `why` (the start of the
/// message): its 404 and its 500-for-a-missing-file become 404.
fn worker_failure(id: &str, why: &str, e: &CallError) -> Reply {
    match e {
        CallError::Status { code: 404 | 500, message } => error_reply(
            404,
            format!("the worker does not have this result of job {id}: {message}"),
        ),
        CallError::Unfetchable(why) => {
            error_reply(404, format!("this output of job {id} cannot be fetched: {why}"))
        }
        CallError::Shortage(short) => retry_after(
            SHORTAGE_RETRY_AFTER,
            error_reply(
                503,
                format!("{why}, and the coordinator is short of resources to ask its worker ({short}); try again shortly"),
            ),
        ),
        other => error_reply(
            502,
            format!("{why}, and its worker failed to answer ({other}); try again shortly"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_fetch_from_a_worker_says_why_it_was_asked() {
        let left =
            "the output \"big.bin\" of job pool-1 is served from its worker (--max-results-bytes)";
        let timed_out = CallError::Transport("timed out reading the body".to_string());
        let Reply::Json(502, body) = worker_failure("pool-1", left, &timed_out) else {
            panic!("not a 502");
        };
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.starts_with(left), "{error}");
        assert!(!error.contains("not collected yet"), "{error}");
        assert!(error.contains("timed out reading the body"), "{error}");
    }
}
