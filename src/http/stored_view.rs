//! A job that left the table (settled) is answered from the job store: its `/status` JSON, owner
//! and worker job id, kept for the next request in the context's `SettledViews` (a client that
//! polls a finished job reads the database once).

use crate::http::views::stored_status_json;
use crate::state::context::Context;
use crate::state::settled_views::SettledView;
use crate::store::jobs_db::StoreError;
use std::fmt;
use std::sync::Arc;

/// Why a stored job cannot be shown.
#[derive(Debug)]
pub enum StoredViewError {
    /// The job store could not be read.
    Store(StoreError),
    /// The job's record was read but its answer could not be built.
    Unshowable(String),
}

impl fmt::Display for StoredViewError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoredViewError::Store(e) => write!(f, "{}", e.read_failure()),
            StoredViewError::Unshowable(id) => {
                write!(f, "the record of job {id} cannot be shown")
            }
        }
    }
}

/// The view of job `id` as the job store has it (`None`: the store has no such job). Only a
/// settled job's view is kept: its record does not change any more.
pub fn stored_view(ctx: &Context, id: &str) -> Result<Option<Arc<SettledView>>, StoredViewError> {
    let forgotten = ctx.store.forgotten_total();
    if let Some(view) = ctx.settled_views.get(id, forgotten) {
        return Ok(Some(view));
    }
    let Some(job) = ctx.store.load(id).map_err(StoredViewError::Store)? else {
        return Ok(None);
    };
    let status_json =
        stored_status_json(&job).ok_or_else(|| StoredViewError::Unshowable(id.to_string()))?;
    let view = Arc::new(SettledView {
        status_json,
        owner: job.owner.clone(),
        remote_job_id: job.remote_job_id.clone(),
    });
    if job.is_settled() {
        ctx.settled_views.insert(id, Arc::clone(&view), forgotten);
    }
    Ok(Some(view))
}
