//! Collecting a finished job's results from its worker into the spool: every file listed in
//! `output_files` (from `/download/{remote}/{path}`, streamed to disk), then the logs, back to
//! back in a results segment.

use crate::base::job::StoredResults;
use crate::base::paths::safe_relative_path;
use crate::state::context::Context;
use crate::store::spool::{CopyError, PinnedSegment};
use crate::worker::client::CallError;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt;
use std::io::{self, Read};

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

impl From<CopyError> for CollectError {
    fn from(e: CopyError) -> Self {
        match e {
            CopyError::Read(e) => CollectError::Worker(CallError::Transport(e.to_string())),
            CopyError::Write(e) => CollectError::Disk(e),
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

/// What a collection gave: where the results lie, each collected file's sha256 (lowercase hex)
/// and the logs.
pub struct Collected {
    /// Where the results lie in the spool.
    pub stored: StoredResults,
    /// Each collected output's path and sha256, in collection order.
    pub hashes: Vec<(String, String)>,
    /// The worker's `/logs` answer.
    pub logs: Value,
    /// The results segment, pinned until the job's record committed.
    pub pinned: Option<PinnedSegment>,
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    sha: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Fetches everything into a results segment; returns where each piece lies. The job counts
/// as collected only after this returns, so nothing here needs to be atomic: a retry rewrites.
pub fn collect(
    ctx: &Context,
    endpoint: &str,
    id: &str,
    remote: &str,
    status: &Value,
) -> Result<Collected, CollectError> {
    let logs = ctx.client.logs(endpoint, remote)?;
    let mut writer = ctx.spool.results_writer()?;
    let mut outputs = Vec::new();
    let mut hashes = Vec::new();
    for path in output_paths(status) {
        if safe_relative_path(&path).is_err() {
            log::warn!(
                "Job {id}: the worker lists an unsafe output path {path:?}; it is not collected"
            );
            continue;
        }
        let response = ctx.client.download(endpoint, remote, &path)?;
        let mut reader = Hashing {
            inner: response.into_reader(),
            sha: Sha256::new(),
        };
        let span = writer.append(&mut reader)?;
        hashes.push((path.clone(), hex(&reader.sha.finalize())));
        outputs.push((path, span));
    }
    let log_bytes = serde_json::to_vec(&logs).unwrap_or_default();
    let log_span = writer.append(&mut log_bytes.as_slice())?;
    let (segment, pinned) = writer.finish()?;
    Ok(Collected {
        pinned: Some(pinned),
        stored: StoredResults {
            segment,
            outputs,
            logs: log_span,
        },
        hashes,
        logs,
    })
}
