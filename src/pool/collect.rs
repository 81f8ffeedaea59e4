//! Collecting a finished job's results from its worker: every file listed in `output_files`
//! (from `/download/{remote}/{path}`), then the logs, back to back: in memory for the job's
//! store row when small (`--row-results-max`), else streamed to disk in a results segment.

use crate::base::hex::hex;
use crate::base::job::{declared_output_bytes, Span, StoredResults};
use crate::base::paths::safe_relative_path;
use crate::state::context::Context;
use crate::store::spool::{CopyError, PinnedSegment};
use crate::worker::client::{fetchable_name, CallError};
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
    /// Where the results lie (with the bytes, when they are for the job's row).
    pub stored: StoredResults,
    /// Each collected output's path and sha256, in collection order.
    pub hashes: Vec<(String, String)>,
    /// The worker's `/logs` answer.
    pub logs: Value,
    /// The results segment, pinned until the job's record committed (None for a row).
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

/// Why an output a worker lists is not collected, if it is not: a path that leaves the job's
/// directory, or a name sandrun cannot serve.
pub fn uncollectable(path: &str) -> Option<&'static str> {
    if safe_relative_path(path).is_err() {
        return Some(
            "its path is unsafe (absolute, or with an empty, `.` or `..` part, a backslash or a control character, also once percent-decoded)",
        );
    }
    fetchable_name(path).err()
}

/// The outputs to collect: the paths a worker status lists, without those [`uncollectable`].
fn collectable_output_paths(id: &str, status: &Value) -> Vec<String> {
    output_paths(status)
        .into_iter()
        .filter(|path| match uncollectable(path) {
            Some(why) => {
                log::warn!("Job {id}: its output {path:?} is not collected: {why}");
                false
            }
            None => true,
        })
        .collect()
}

/// Fetches the logs and every output. Results up to `--row-results-max` bytes (as the worker
/// status declares them) are kept in memory, to be held in the job's row and committed with
/// its record; larger ones, or outputs that turn out larger than declared, go to a results
/// segment. The job counts as collected only after this returns, so nothing here needs to be
/// atomic: a retry rewrites.
pub fn collect(
    ctx: &Context,
    endpoint: &str,
    id: &str,
    remote: &str,
    status: &Value,
) -> Result<Collected, CollectError> {
    let logs = ctx.client.logs(endpoint, remote)?;
    let log_bytes = serde_json::to_vec(&logs).unwrap_or_default();
    let paths = collectable_output_paths(id, status);
    let limit = ctx.config.row_results_max;
    // The paths collected are the collectable ones the status lists.
    let fits = declared_output_bytes(status, |path| uncollectable(path).is_none())
        .and_then(|n| n.checked_add(log_bytes.len() as u64))
        .is_some_and(|n| n <= limit);
    if fits {
        if let Some(Gathered { stored, hashes }) =
            into_row(ctx, endpoint, remote, &paths, &log_bytes, limit)?
        {
            return Ok(Collected {
                stored,
                hashes,
                logs,
                pinned: None,
            });
        }
        log::debug!("Job {id}: its outputs are larger than declared; collecting into a segment");
    }
    let (Gathered { stored, hashes }, pinned) =
        into_segment(ctx, endpoint, remote, &paths, &log_bytes)?;
    Ok(Collected {
        stored,
        hashes,
        logs,
        pinned: Some(pinned),
    })
}

/// Where collected results lie, and each output's sha256.
struct Gathered {
    stored: StoredResults,
    hashes: Vec<(String, String)>,
}

/// Outputs and logs back to back in memory, for the job's row; None when more than `limit`
/// bytes came.
fn into_row(
    ctx: &Context,
    endpoint: &str,
    remote: &str,
    paths: &[String],
    log_bytes: &[u8],
    limit: u64,
) -> Result<Option<Gathered>, CollectError> {
    let mut bytes = Vec::new();
    let mut outputs = Vec::new();
    let mut hashes = Vec::new();
    for path in paths {
        let response = ctx.client.download(endpoint, remote, path)?;
        let offset = bytes.len() as u64;
        let room = limit.saturating_sub(offset + log_bytes.len() as u64);
        let mut reader = Hashing {
            inner: response.reader.take(room + 1),
            sha: Sha256::new(),
        };
        reader.read_to_end(&mut bytes).map_err(CopyError::Read)?;
        let size = bytes.len() as u64 - offset;
        if size > room {
            return Ok(None);
        }
        hashes.push((path.clone(), hex(&reader.sha.finalize())));
        outputs.push((path.clone(), Span { offset, size }));
    }
    let logs = Span {
        offset: bytes.len() as u64,
        size: log_bytes.len() as u64,
    };
    bytes.extend_from_slice(log_bytes);
    let stored = StoredResults {
        segment: String::new(),
        outputs,
        logs,
        in_row: true,
        row_bytes: Some(bytes.into()),
    };
    Ok(Some(Gathered { stored, hashes }))
}

/// Outputs and logs back to back in a results segment, pinned until the record commits.
fn into_segment(
    ctx: &Context,
    endpoint: &str,
    remote: &str,
    paths: &[String],
    log_bytes: &[u8],
) -> Result<(Gathered, PinnedSegment), CollectError> {
    let mut writer = ctx.spool.results_writer()?;
    let mut outputs = Vec::new();
    let mut hashes = Vec::new();
    for path in paths {
        let response = ctx.client.download(endpoint, remote, path)?;
        let mut reader = Hashing {
            inner: response.reader,
            sha: Sha256::new(),
        };
        let span = writer.append(&mut reader)?;
        hashes.push((path.clone(), hex(&reader.sha.finalize())));
        outputs.push((path.clone(), span));
    }
    let log_span = writer.append(&mut &log_bytes[..])?;
    let (segment, pinned) = writer.finish()?;
    let stored = StoredResults {
        segment,
        outputs,
        logs: log_span,
        in_row: false,
        row_bytes: None,
    };
    Ok((Gathered { stored, hashes }, pinned))
}
