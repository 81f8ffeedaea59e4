//! `POST /cancel?status=...&owner=...&worker=...&limit=...`: cancels every job in the given
//! statuses at once (a queue flooded by a runaway client, or every job on a worker no longer
//! trusted, say), newest first; a submit key cancels only its own jobs.

use crate::base::job::PoolStatus;
use crate::http::auth::{owner_filter, Caller};
use crate::http::listing;
use crate::http::replies::{error_reply, Reply};
use crate::pool::control::{self, CancelFilter};
use crate::state::context::Context;
use serde_json::json;
use std::sync::Arc;

/// Jobs cancelled by one request unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 1000;
/// Most jobs cancelled by one request.
pub const MAX_LIMIT: usize = 10_000;
/// The query parameters `POST /cancel` takes.
pub const QUERY_NAMES: [&str; 4] = ["status", "owner", "worker", "limit"];
/// The statuses a job can be cancelled in.
const CANCELLABLE: [PoolStatus; 3] = [
    PoolStatus::Queued,
    PoolStatus::Dispatched,
    PoolStatus::Running,
];

/// Answers `POST /cancel?...` for `caller` (an admin or a submit key), with the query read by
/// `param`.
pub fn cancel_matching(
    ctx: &Arc<Context>,
    caller: &Caller,
    param: &dyn Fn(&str) -> Option<String>,
) -> Reply {
    let filter = match parse(caller, param) {
        Ok(filter) => filter,
        Err(reply) => return reply,
    };
    match control::cancel_matching(ctx, &filter, &caller.log_label()) {
        Ok(done) => Reply::Json(
            200,
            json!({
                "cancelled": done.ids.len(),
                "job_ids": done.ids,
                "remaining": done.remaining,
            }),
        ),
        Err(e) => error_reply(e.status(), e.to_string()),
    }
}

fn parse(caller: &Caller, param: &dyn Fn(&str) -> Option<String>) -> Result<CancelFilter, Reply> {
    let names = CANCELLABLE.map(PoolStatus::as_str).join(", ");
    let Some(list) = param("status") else {
        return Err(error_reply(
            400,
            format!(
                "say which jobs to cancel with status= (one or more of {names}, \
                 comma-separated), e.g. POST /cancel?status=queued; to cancel one job, POST \
                 /cancel/ID"
            ),
        ));
    };
    let mut statuses = Vec::new();
    for name in list.split(',').map(str::trim) {
        match PoolStatus::parse(name).filter(|s| CANCELLABLE.contains(s)) {
            Some(status) if !statuses.contains(&status) => statuses.push(status),
            Some(_) => {}
            None => {
                return Err(error_reply(
                    400,
                    format!(
                        "status {name:?} cannot be cancelled (use one or more of {names}, \
                         comma-separated)"
                    ),
                ))
            }
        }
    }
    let limit = listing::limit(param("limit"), DEFAULT_LIMIT, MAX_LIMIT)?;
    let owner = owner_filter(caller, param("owner"))?;
    let worker = listing::worker_filter(param("worker"))?;
    Ok(CancelFilter {
        statuses,
        owner,
        worker,
        limit,
    })
}
