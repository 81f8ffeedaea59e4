//! Collecting a finished job's results from its worker into the spool: every file listed in
//! `output_files` (from `/download/{remote}/{path}`, streamed to disk), then the logs and the final
//! status JSON in one file.

use crate::context::Context;
use crate::paths::safe_relative_path;
use crate::sandrun_client::CallError;
use serde_json::Value;
use std::fmt;
use std::fs::File;
use std::io;

/// Why collection did not finish.
#[derive(Debug)]
pub enum CollectError {
    /// The worker no longer has the job (404): the results are gone.
    Gone,
    /// The worker failed to answer; worth retrying.
    Worker(CallError),
    /// The spool could not be written.
    Disk(io::Error),
}

impl fmt::Display for CollectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Gone => write!(
                f,
                "the worker deleted the job before its results were collected"
            ),
            Self::Worker(e) => write!(f, "collecting results from the worker failed: {e}"),
            Self::Disk(e) => write!(f, "storing results in the state directory failed: {e}"),
        }
    }
}

impl From<CallError> for CollectError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Status { code: 404, .. } => CollectError::Gone,
            other => CollectError::Worker(other),
        }
    }
}

impl From<io::Error> for CollectError {
    fn from(e: io::Error) -> Self {
        CollectError::Disk(e)
    }
}

/// The output paths a worker status lists, in its order.
pub fn output_paths(status: &Value) -> Vec<String> {
    status
        .get("output_files")
        .and_then(Value::as_object)
        .map(|files| files.keys().cloned().collect())
        .unwrap_or_default()
}

/// Fetches everything into the spool; returns how many output files were stored. The job counts
/// as collected only after this returns, so nothing here needs to be atomic: a retry rewrites.
pub fn collect(
    ctx: &Context,
    endpoint: &str,
    id: &str,
    remote: &str,
    status: &Value,
) -> Result<usize, CollectError> {
    let logs = ctx.client.logs(endpoint, remote)?;
    let mut stored = 0;
    for path in output_paths(status) {
        if safe_relative_path(&path).is_err() {
            log::warn!(
                "Job {id}: the worker lists an unsafe output path {path:?}; it is not collected"
            );
            continue;
        }
        let target = ctx.spool.output_path(id, &path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let response = ctx.client.download(endpoint, remote, &path)?;
        let mut file = File::create(&target)?;
        io::copy(&mut response.into_reader(), &mut file)
            .map_err(|e| CollectError::Worker(CallError::Transport(e.to_string())))?;
        stored += 1;
    }
    let results = serde_json::json!({"status": status, "logs": logs});
    std::fs::write(
        ctx.spool.results_file(id),
        serde_json::to_vec(&results).unwrap_or_default(),
    )?;
    Ok(stored)
}
