//! Collecting a finished job's results from its worker: every file listed in `output_files`
//! (from `/download/{remote}/{path}`) up to `--max-results-bytes` (the rest stay on the
//! worker), then the logs, back to back: in memory for the job's store row when small
//! (`--row-results-max`), else streamed to disk in a results segment.

use crate::base::hex::hex;
use crate::base::job::{declared_sha256, declared_size, Span, StoredResults};
use crate::base::paths::safe_relative_path;
use crate::state::context::Context;
use crate::store::spool::{CopyError, PinnedSegment};
use crate::worker::client::{fetchable_name, CallError};
use crate::worker::raw_get::Download;
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
    /// The listed outputs its worker could not serve (sandrun's 500 for a missing file), each
    /// with its answer: the rest is collected without them.
    pub unserved: Vec<(String, String)>,
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
            "its path is unsafe (absolute, or with an empty, `.` or `..` part, a backslash or a control character)",
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

/// Why an output left on its worker by `--max-results-bytes` was not collected.
pub const LEFT_ON_WORKER: &str = "it would take the job's collected outputs past --max-results-bytes; it stays on its worker, served from there until the worker deletes the job";

/// A job's room for outputs: `--max-results-bytes` (`u64::MAX` for no limit).
fn results_room(ctx: &Context) -> u64 {
    match ctx.config.max_results_bytes {
        0 => u64::MAX,
        cap => cap,
    }
}

/// Splits the outputs to collect by the job's room: in the worker's order, an output is
/// collected when its declared size fits in what the ones before it left (an output without a
/// declared size counts as 0 here; its bytes are bounded as they come). Returns the outputs to
/// collect and those left on the worker.
fn within_room(status: &Value, paths: Vec<String>, room: u64) -> (Vec<String>, Vec<String>) {
    let mut left_room = room;
    paths.into_iter().partition(|path| {
        let size = declared_size(status, path).unwrap_or(0);
        let fits = size <= left_room;
        if fits {
            left_room -= size;
        }
        fits
    })
}

/// Fetches the logs and every output, up to `--max-results-bytes` of outputs (the rest stay on
/// the worker). Results up to `--row-results-max` bytes (as the worker status declares them)
/// are kept in memory, to be held in the job's row and committed with its record; larger ones,
/// or outputs that turn out larger than declared, go to a results segment. The job counts as
/// collected only after this returns, so nothing here needs to be atomic: a retry rewrites.
pub fn collect(
    ctx: &Context,
    endpoint: &str,
    id: &str,
    remote: &str,
    status: &Value,
) -> Result<Collected, CollectError> {
    let logs = ctx.client.logs(endpoint, remote)?;
    let log_bytes = serde_json::to_vec(&logs).unwrap_or_default();
    let room = results_room(ctx);
    let (paths, planned_left) = within_room(status, collectable_output_paths(id, status), room);
    let limit = ctx.config.row_results_max;
    let fits = paths
        .iter()
        .try_fold(log_bytes.len() as u64, |total, path| {
            total.checked_add(declared_size(status, path)?)
        })
        .is_some_and(|n| n <= limit);
    let fetching = Fetching {
        ctx,
        endpoint,
        remote,
        room,
    };
    let (gathered, pinned) = match fits
        .then(|| fetching.gather_in_row(&paths, &log_bytes, limit))
        .transpose()?
        .flatten()
    {
        Some(gathered) => (gathered, None),
        None => {
            if fits {
                log::debug!(
                    "Job {id}: its outputs are larger than declared; collecting into a segment"
                );
            }
            let (gathered, pinned) = fetching.gather_in_segment(id, &paths, &log_bytes)?;
            (gathered, Some(pinned))
        }
    };
    let Gathered {
        mut stored,
        hashes,
        unserved,
    } = gathered;
    for (path, why) in &unserved {
        log::warn!(
            "Job {id}: its worker could not serve its output {path:?} ({why}); the rest of its results are collected without it"
        );
    }
    stored.left_on_worker.splice(0..0, planned_left);
    stored.served_sha256 = undeclared_hashes(status, &hashes);
    if !stored.left_on_worker.is_empty() {
        log::warn!(
            "Job {id}: {} of its outputs left on its worker, past --max-results-bytes ({} bytes): {}",
            stored.left_on_worker.len(),
            ctx.config.max_results_bytes,
            stored.left_on_worker.join(", ")
        );
    }
    Ok(Collected {
        stored,
        hashes,
        logs,
        pinned,
        unserved,
    })
}

/// The collected outputs (`hashes`: path and sha256) whose sha256 is not the one their worker
/// declared in `status`, or that it declared without one.
fn undeclared_hashes(status: &Value, hashes: &[(String, String)]) -> Vec<(String, String)> {
    hashes
        .iter()
        .filter(|(path, sha256)| {
            !declared_sha256(status, path)
                .is_some_and(|declared| declared.eq_ignore_ascii_case(sha256))
        })
        .cloned()
        .collect()
}

/// Where collected results lie, each output's sha256, and the outputs the worker could not
/// serve.
struct Gathered {
    stored: StoredResults,
    hashes: Vec<(String, String)>,
    unserved: Vec<(String, String)>,
}

/// A download of one output: its answer, or None when the worker could not serve the file,
/// noted in `unserved`: sandrun answers 500 for a missing file (a filesystem error), 403 for a
/// link to a file outside the job's directory (which it lists all the same), and 404 `File not
/// found` for one that is no longer a file. Any other failure fails the collection (a 404 `Job
/// not found`: the job is gone; others are tried again).
fn served(
    answer: Result<Download, CallError>,
    path: &str,
    unserved: &mut Vec<(String, String)>,
) -> Result<Option<Download>, CollectError> {
    match answer {
        Ok(download) => Ok(Some(download)),
        Err(
            e @ CallError::Status {
                code: 500 | 403, ..
            },
        ) => {
            unserved.push((path.to_string(), e.to_string()));
            Ok(None)
        }
        Err(CallError::Status { code: 404, message }) if message == FILE_NOT_FOUND => {
            let e = CallError::Status { code: 404, message };
            unserved.push((path.to_string(), e.to_string()));
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// sandrun's `error` for a download of a job's path that is not a file (`Job not found` when
/// the job is gone).
const FILE_NOT_FOUND: &str = "File not found";

/// One job's collection from its worker, with the room its outputs have.
struct Fetching<'a> {
    ctx: &'a Context,
    endpoint: &'a str,
    remote: &'a str,
    room: u64,
}

impl Fetching<'_> {
    /// Outputs and logs back to back in memory, for the job's row; None when more than `limit`
    /// bytes, or more outputs than the job's room, came.
    fn gather_in_row(
        &self,
        paths: &[String],
        log_bytes: &[u8],
        limit: u64,
    ) -> Result<Option<Gathered>, CollectError> {
        let mut bytes = Vec::new();
        let mut outputs = Vec::new();
        let mut hashes = Vec::new();
        let mut unserved = Vec::new();
        for path in paths {
            let answer = self.ctx.client.download(self.endpoint, self.remote, path);
            let Some(response) = served(answer, path, &mut unserved)? else {
                continue;
            };
            let offset = bytes.len() as u64;
            let room = limit
                .saturating_sub(offset + log_bytes.len() as u64)
                .min(self.room.saturating_sub(offset));
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
            left_on_worker: Vec::new(),
            served_sha256: Vec::new(),
            row_bytes: Some(bytes.into()),
        };
        Ok(Some(Gathered {
            stored,
            hashes,
            unserved,
        }))
    }

    /// Outputs and logs back to back in a results segment, pinned until the record commits.
    /// An output that turns out larger than what the job's room has left is cut from the
    /// segment and left on the worker.
    fn gather_in_segment(
        &self,
        id: &str,
        paths: &[String],
        log_bytes: &[u8],
    ) -> Result<(Gathered, PinnedSegment), CollectError> {
        let mut writer = self.ctx.spool.results_writer()?;
        let mut outputs = Vec::new();
        let mut hashes = Vec::new();
        let mut left_on_worker = Vec::new();
        let mut unserved = Vec::new();
        let mut room = self.room;
        for path in paths {
            let answer = self.ctx.client.download(self.endpoint, self.remote, path);
            let Some(response) = served(answer, path, &mut unserved)? else {
                continue;
            };
            let mut reader = Hashing {
                inner: response.reader.take(room.saturating_add(1)),
                sha: Sha256::new(),
            };
            let span = writer.append(&mut reader)?;
            if span.size > room {
                writer.cut_back(span.offset)?;
                log::warn!(
                    "Job {id}: its output {path:?} came larger than its worker declared and than the room left under --max-results-bytes"
                );
                left_on_worker.push(path.clone());
                continue;
            }
            room -= span.size;
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
            left_on_worker,
            served_sha256: Vec::new(),
            row_bytes: None,
        };
        Ok((
            Gathered {
                stored,
                hashes,
                unserved,
            },
            pinned,
        ))
    }
}
