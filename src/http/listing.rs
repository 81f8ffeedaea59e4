//! `GET /jobs?status=...&owner=...&worker=...&limit=...&before=...`: jobs newest first,
//! paginated, with the fields of `/status` without the worker's raw answer. A submit key sees
//! only its own jobs.

use crate::base::job::{is_job_id, Job, PoolStatus};
use crate::http::auth::{owner_filter, Caller};
use crate::http::redact::hide_remote_id;
use crate::http::replies::{error_reply, Reply};
use crate::http::views::listed_json;
use crate::pool::control::standard_worker_id;
use crate::state::context::Context;
use crate::store::jobs_db::{ListFilter, StoreError};
use crate::worker::identity::parse_worker_id;

/// The query parameters `GET /jobs` takes.
pub const QUERY_NAMES: [&str; 5] = ["status", "owner", "worker", "limit", "before"];
/// Jobs per page unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 50;
/// Most jobs per page.
pub const MAX_LIMIT: usize = 1000;

/// What a listing asks for.
struct Query {
    statuses: Option<Vec<PoolStatus>>,
    limit: usize,
    before: Option<String>,
}

fn parse(param: &dyn Fn(&str) -> Option<String>) -> Result<Query, Reply> {
    let statuses = match param("status") {
        None => None,
        Some(list) => Some(
            list.split(',')
                .map(|name| {
                    PoolStatus::parse(name.trim()).ok_or_else(|| {
                        let known: Vec<&str> = PoolStatus::ALL.iter().map(|s| s.as_str()).collect();
                        error_reply(
                            400,
                            format!(
                                "unknown status {name:?} (use one or more of {}, comma-separated)",
                                known.join(", ")
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(Query {
        statuses,
        limit: limit(param("limit"), DEFAULT_LIMIT, MAX_LIMIT)?,
        before: param("before"),
    })
}

/// A `limit=` query parameter: `default` when not given, else 1 to `max`, or the 400 to answer.
pub fn limit(given: Option<String>, default: usize, max: usize) -> Result<usize, Reply> {
    match given {
        None => Ok(default),
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| error_reply(400, format!("limit must be 1 to {max}, got {text:?}"))),
    }
}

/// A `worker=` query parameter: the jobs of one worker, by its `worker_id` (standard base64,
/// its `+` percent-encoded as `%2B`, or URL-safe base64), or the 400 to answer. A worker no
/// longer in workers.json is fine: its jobs are still listed.
pub fn worker_filter(given: Option<String>) -> Result<Option<String>, Reply> {
    let Some(given) = given else {
        return Ok(None);
    };
    // Not trimmed: a leading space is the `+` a query's form encoding read as one.
    let id = standard_worker_id(&given);
    match parse_worker_id(&id) {
        Ok(_) => Ok(Some(id)),
        Err(_) => Err(error_reply(
            400,
            format!(
                "worker={given:?} is not a worker id: give a worker_id as /pool lists it (the \
                 worker's base64 public key, with + as %2B, or in URL-safe base64 with - and _)"
            ),
        )),
    }
}

/// Each stored job as it is now: the table's version while the job is in the table, else the
/// stored one. A row read while its job was under way, whose job has left the table since, is
/// read again: the job settled meanwhile (it leaves the table only once its settled row
/// committed). A job forgotten by retention meanwhile is left out.
fn as_table_holds(ctx: &Context, stored: Vec<Job>) -> Result<Vec<Job>, StoreError> {
    // Each job with whether its row is to be read again (once the table is unlocked).
    let looked: Vec<(Job, bool)> = {
        let st = ctx.lock();
        stored
            .into_iter()
            .map(|job| match st.jobs.get(&job.id) {
                Some(live) => ((**live).clone(), false),
                None => {
                    let behind = !job.is_settled();
                    (job, behind)
                }
            })
            .collect()
    };
    looked
        .into_iter()
        .filter_map(|(job, behind)| {
            if behind {
                ctx.store.load(&job.id).transpose()
            } else {
                Some(Ok(job))
            }
        })
        .collect()
}

/// Past this many bytes of jobs, a page of `/jobs` ends (`next_before` names its last job): an
/// answer held for a client that reads it slowly stays small, whatever its jobs hold.
const MAX_LISTING_BYTES: usize = 1 << 20;

/// Answers `GET /jobs`; `param` reads a query parameter. Jobs come from the job store (every
/// accepted job is there), each shown as the table holds it when it is still in memory.
pub fn jobs(ctx: &Context, caller: &Caller, param: &dyn Fn(&str) -> Option<String>) -> Reply {
    let query = match parse(param) {
        Ok(q) => q,
        Err(reply) => return reply,
    };
    let cursor = match &query.before {
        None => None,
        Some(id) if !is_job_id(id) => {
            return error_reply(
                400,
                format!("before={id:?} is not a job id (job ids look like pool-<32 hex>); pass the next_before of the page before, or list the first page without before="),
            )
        }
        Some(id) => {
            let live = ctx.lock().jobs.get(id.as_str()).map(|j| (**j).clone());
            let job = live.or_else(|| ctx.store.load(id).ok().flatten());
            match job.filter(|j| caller.can_see(j)) {
                Some(job) => Some((job.submitted_at, job.id)),
                None => {
                    return error_reply(
                        400,
                        format!("before={id:?} is no job this key can see on this coordinator (it may have been deleted, or forgotten by retention), so where the next page starts is not known; list again from the first page, without before="),
                    )
                }
            }
        }
    };
    let owner = match owner_filter(caller, param("owner")) {
        Ok(owner) => owner,
        Err(reply) => return reply,
    };
    let owner = owner.as_deref();
    let worker = match worker_filter(param("worker")) {
        Ok(worker) => worker,
        Err(reply) => return reply,
    };
    let filter = ListFilter {
        statuses: query.statuses.as_deref(),
        owner,
        worker: worker.as_deref(),
    };
    let wanted = |job: &Job| caller.can_see(job) && filter.takes(job);
    // Rows not yet settled match any status in the store (their record may lag the table), so
    // pages are read until enough jobs match as the table holds them now. Each job is written
    // out as it comes, and the answer ends at `limit` jobs or past MAX_LISTING_BYTES.
    let mut body = b"{\"jobs\":[".to_vec();
    let mut listed = 0;
    let mut last_listed: Option<String> = None;
    let mut more = false;
    let mut after = cursor;
    'pages: loop {
        let read = ctx
            .store
            .list(
                &filter,
                after.as_ref().map(|(t, id)| (*t, id.as_str())),
                query.limit + 1,
            )
            .and_then(|chunk| {
                let exhausted = chunk.len() <= query.limit;
                let last = chunk.last().map(|j| (j.submitted_at, j.id.clone()));
                Ok((exhausted, last, as_table_holds(ctx, chunk)?))
            });
        let (exhausted, last, current) = match read {
            Ok(read) => read,
            Err(e) => {
                log::error!("Listing jobs failed: {e}");
                return error_reply(500, format!("the job store could not be read: {e}"));
            }
        };
        after = last;
        let st = ctx.lock();
        for job in current.into_iter().filter(|job| wanted(job)) {
            if listed == query.limit || body.len() >= MAX_LISTING_BYTES {
                more = true;
                break 'pages;
            }
            let Some(bytes) = listed_json(&st, &job) else {
                continue;
            };
            let bytes = match job.remote_job_id.as_deref() {
                Some(remote) if !caller.sees_all() => {
                    match hide_remote_id(Reply::JsonBytes(200, bytes), remote) {
                        Reply::JsonBytes(_, bytes) => bytes,
                        _ => continue,
                    }
                }
                _ => bytes,
            };
            if listed > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&bytes);
            listed += 1;
            last_listed = Some(job.id);
        }
        if exhausted {
            break;
        }
    }
    let next = more.then_some(last_listed).flatten();
    body.extend_from_slice(b"],\"next_before\":");
    body.extend_from_slice(serde_json::to_string(&next).unwrap_or_default().as_bytes());
    body.push(b'}');
    Reply::JsonBytes(200, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_id_starting_with_plus_is_read_from_a_bare_plus() {
        let id = "+/d7ttuRSF1Msc7oYgJECEFCAEEyXnWXx1LCaehLKWU=";
        for given in [
            id,
            " /d7ttuRSF1Msc7oYgJECEFCAEEyXnWXx1LCaehLKWU=",
            "-_d7ttuRSF1Msc7oYgJECEFCAEEyXnWXx1LCaehLKWU",
        ] {
            let read = worker_filter(Some(given.to_string())).ok().flatten();
            assert_eq!(read.as_deref(), Some(id), "{given:?}");
        }
        assert!(worker_filter(Some(format!("{id} "))).is_err());
        assert_eq!(worker_filter(None).ok(), Some(None));
    }
}
