//! `trusted-pool check --state-dir DIR`: a state directory checked without changing anything
//! in it (a backup unpacked from `GET /snapshot`, or a stopped coordinator's directory). The job
//! store opens read-only, is of a version this build reads and passes SQLite's quick check;
//! every record parses; and every byte a record needs is there: the upload of each job that
//! still needs it (queued, or on a worker with reruns left; in its row or in an upload segment)
//! and the collected results (in the row or in a results segment). Asked to, it reads every
//! collected output back and holds its sha256 against the one it is served under
//! ([`results_hashes`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::base::job::{Collection, Span};
use crate::base::paths::is_safe_component;
use crate::store::dir_lock::holder_of;
use crate::store::file_access::{self, Denied, Need};
use crate::store::jobs_db::{
    corrupt, open_read_only, parse_record, quick_check, stored_version, StoreError, DB_FILE,
};
use crate::store::results_hashes::{OutputHasher, Verified};

/// The problems a report names one by one; the rest are counted.
const LISTED_PROBLEMS: usize = 20;

/// What a check found.
#[derive(Debug, Default)]
pub struct StateReport {
    /// The store's schema version.
    pub version: i64,
    /// Jobs per status, as the rows say.
    pub jobs: BTreeMap<String, u64>,
    /// Segment files that records point into: (results, uploads).
    pub segments: (usize, usize),
    /// The first problems found, each naming its job.
    pub problems: Vec<String>,
    /// How many problems were found in all.
    pub problem_count: usize,
    /// The outputs read back, when asked to.
    pub verified: Option<Verified>,
}

impl StateReport {
    fn problem(&mut self, text: String) {
        self.problem_count += 1;
        if self.problems.len() < LISTED_PROBLEMS {
            self.problems.push(text);
        }
    }
}

/// Why a state directory could not be checked at all.
#[derive(Debug)]
pub enum StateCheckError {
    /// A running coordinator holds it (its process id, when known).
    InUse(PathBuf, Option<u32>),
    /// It holds no job store.
    NoStore(PathBuf),
    /// Its lock file could not be read.
    Io(PathBuf, io::Error),
    /// The path names a file, not a state directory.
    NotADirectory(PathBuf),
    /// The job store cannot be read: newer, damaged or not a job store.
    Store(StoreError),
    /// A file of it may not be read by the user the check runs as.
    Access(Denied),
}

impl fmt::Display for StateCheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InUse(dir, pid) => write!(
                f,
                "{} is in use by a running trusted-pool{}: check a snapshot of it (GET /snapshot), \
                 or stop it first (its segments change while it runs)",
                dir.display(),
                pid.map(|p| format!(" (process {p})")).unwrap_or_default()
            ),
            Self::NoStore(dir) => write!(f, "{} holds no job store ({DB_FILE})", dir.display()),
            Self::Io(dir, e) => write!(f, "{}: its lock file cannot be read: {e}", dir.display()),
            Self::NotADirectory(dir) => write!(
                f,
                "{} is a file, not a state directory: give --state-dir the folder that holds \
                 {DB_FILE}",
                dir.display()
            ),
            Self::Store(e) => write!(f, "{e}"),
            Self::Access(e) => write!(f, "{e}"),
        }
    }
}

impl From<StoreError> for StateCheckError {
    fn from(e: StoreError) -> Self {
        StateCheckError::Store(e)
    }
}

/// The lengths of the segment files records point into, each looked up once.
struct SegmentLengths<'a> {
    dir: &'a Path,
    known: HashMap<(&'static str, String), Option<u64>>,
}

impl SegmentLengths<'_> {
    /// Why `folder/name` cannot hold the bytes up to `end`, if it cannot.
    fn short_of(&mut self, folder: &'static str, name: &str, end: u64) -> Option<String> {
        if !is_safe_component(name) {
            return Some(format!(
                "its record names {name:?}, which is no segment name"
            ));
        }
        let dir = self.dir;
        let len = *self
            .known
            .entry((folder, name.to_string()))
            .or_insert_with(|| {
                std::fs::metadata(dir.join(folder).join(name))
                    .ok()
                    .map(|m| m.len())
            });
        match len {
            None => Some(format!("{folder}/{name} is missing")),
            Some(len) if len < end => Some(format!(
                "{folder}/{name} holds {len} bytes, its record needs {end}"
            )),
            Some(_) => None,
        }
    }

    fn count(&self, folder: &str) -> usize {
        self.known.keys().filter(|(f, _)| *f == folder).count()
    }
}

/// The end of the furthest of `spans`.
fn furthest<'a>(spans: impl Iterator<Item = &'a Span>) -> u64 {
    spans
        .map(|s| s.offset.saturating_add(s.size))
        .max()
        .unwrap_or(0)
}

/// Checks the state directory `dir` without writing to it; with `verify_outputs`, every
/// collected output is read back and hashed too.
pub fn check_state_dir(dir: &Path, verify_outputs: bool) -> Result<StateReport, StateCheckError> {
    file_access::check(dir, Need::Read).map_err(StateCheckError::Access)?;
    if dir.metadata().is_ok_and(|m| !m.is_dir()) {
        return Err(StateCheckError::NotADirectory(dir.to_path_buf()));
    }
    match holder_of(dir) {
        Ok(None) => {}
        Ok(Some(pid)) => return Err(StateCheckError::InUse(dir.to_path_buf(), pid)),
        Err(e) => return Err(StateCheckError::Io(dir.to_path_buf(), e)),
    }
    let path = dir.join(DB_FILE);
    if !path.is_file() {
        return Err(StateCheckError::NoStore(dir.to_path_buf()));
    }
    let conn = open_read_only(&path).map_err(|e| corrupt(&path, &e))?;
    let version = stored_version(&conn, &path)?;
    if version == 0 {
        let why = "schema version 0".to_string();
        return Err(StoreError::Foreign(path, why).into());
    }
    quick_check(&conn, &path)?;
    let mut report = StateReport {
        version,
        ..StateReport::default()
    };
    let mut lengths = SegmentLengths {
        dir,
        known: HashMap::new(),
    };
    let mut hasher = verify_outputs.then(|| OutputHasher::new(dir));
    let mut rows = conn
        .prepare(
            "SELECT id, status, record, upload IS NOT NULL, length(results), \
             CASE WHEN ?1 THEN results END FROM jobs ORDER BY seq",
        )
        .map_err(|e| corrupt(&path, &e))?;
    let mut rows = rows
        .query([verify_outputs])
        .map_err(|e| corrupt(&path, &e))?;
    while let Some(row) = rows.next().map_err(|e| corrupt(&path, &e))? {
        let id: String = row.get(0).unwrap_or_default();
        let status: String = row.get(1).unwrap_or_default();
        *report.jobs.entry(status).or_insert(0) += 1;
        let job = match row
            .get_ref(2)
            .map_err(|e| e.to_string())
            .and_then(|r| parse_record(&id, r))
        {
            Ok(job) => job,
            Err(why) => {
                report.problem(format!("job {id}: its record cannot be read ({why})"));
                continue;
            }
        };
        let upload_in_row: bool = row.get(3).unwrap_or(false);
        let results_in_row: Option<u64> = row.get(4).unwrap_or(None);
        if job.upload_needed_after_restart() {
            let short = match &job.upload_at {
                Some(at) => {
                    lengths.short_of("uploads", &at.segment, at.base.saturating_add(at.size))
                }
                None => (!upload_in_row).then(|| "its upload is not in its row".to_string()),
            };
            if let Some(why) = short {
                report.problem(format!("job {id} ({}): {why}", job.status.as_str()));
            }
        }
        if let Collection::Collected(stored) = &job.collection {
            let spans = stored
                .outputs
                .iter()
                .map(|(_, span)| span)
                .chain([&stored.logs]);
            let end = furthest(spans);
            let short = if stored.in_row {
                let held = results_in_row.unwrap_or(0);
                (held < end).then(|| {
                    format!("its row holds {held} bytes of results, its record needs {end}")
                })
            } else {
                lengths.short_of("results", &stored.segment, end)
            };
            if let Some(why) = short {
                report.problem(format!("job {id} ({}): {why}", job.status.as_str()));
            } else if let Some(hasher) = hasher.as_mut() {
                let row_bytes = row.get_ref(5).ok().and_then(|r| r.as_blob().ok());
                let status = job
                    .worker_status
                    .as_ref()
                    .unwrap_or(&serde_json::Value::Null);
                let wrong = hasher.check(stored, status, row_bytes);
                if !wrong.is_empty() {
                    let why = wrong.join("; ");
                    report.problem(format!("job {id} ({}): {why}", job.status.as_str()));
                }
            }
        }
    }
    report.segments = (lengths.count("results"), lengths.count("uploads"));
    report.verified = hasher.map(|h| h.verified);
    Ok(report)
}
