//! The job record: everything the coordinator knows about one job, serializable as a whole.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// Where a job is in its life, as `/status` reports it in `pool_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum PoolStatus {
    /// Waiting in the coordinator's queue.
    Queued,
    /// Sent (or being sent) to a worker; the worker has not started it yet.
    Dispatched,
    /// The worker reports it running.
    Running,
    /// The worker reports it finished with exit code 0.
    Completed,
    /// Refused by a worker, out of attempts, or finished with a non-zero exit code.
    Failed,
    /// Its fate on the worker is unknown or its results are gone.
    Lost,
    /// Cancelled by a client; if it was on a worker, its results are not collected.
    Cancelled,
}

impl PoolStatus {
    /// Every status, in life order.
    pub const ALL: [PoolStatus; 7] = [
        Self::Queued,
        Self::Dispatched,
        Self::Running,
        Self::Completed,
        Self::Failed,
        Self::Lost,
        Self::Cancelled,
    ];

    /// Its place in [`PoolStatus::ALL`] (for tables of per-status counts).
    pub fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|s| *s == self)
            .unwrap_or_default()
    }

    /// The name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Dispatched => "dispatched",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Lost => "lost",
            Self::Cancelled => "cancelled",
        }
    }

    /// True once the job's outcome is settled (a cancelled job may still end on its worker:
    /// see [`Job::ending_on_worker`]).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Lost | Self::Cancelled
        )
    }

    /// The status named `name` in JSON.
    pub fn parse(name: &str) -> Option<PoolStatus> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// A job's priority: higher levels leave the queue first.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Goes before every normal and low job.
    High,
    /// The default.
    #[default]
    Normal,
    /// Goes after every high and normal job (until it ages).
    Low,
}

impl Priority {
    /// Every level, highest first.
    pub const ALL: [Priority; 3] = [Self::High, Self::Normal, Self::Low];

    /// The name used in JSON and in requests.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::High => "high",
            Self::Normal => "normal",
            Self::Low => "low",
        }
    }

    /// The level named `name` (`high`, `normal`, `low`).
    pub fn parse(name: &str) -> Option<Priority> {
        Self::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// Index in [`Priority::ALL`] (0 = high).
    pub fn index(self) -> usize {
        self as usize
    }

    /// One level up (high stays high).
    pub fn raised(self) -> Priority {
        match self {
            Self::Low => Self::Normal,
            _ => Self::High,
        }
    }
}

/// Where bytes lie in a job's upload or results in the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// Byte offset.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
}

/// One uploaded `files` part, kept in the spool until a worker accepted the job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputFile {
    /// The filename the client gave, forwarded unchanged.
    pub filename: String,
    /// The part's content type, forwarded unchanged.
    pub content_type: String,
    /// Its bytes in the upload file.
    pub span: Span,
}

/// Where a waiting upload lies in an upload segment (`uploads/<segment>`, from `base` on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadAt {
    /// The upload segment's file name.
    pub segment: String,
    /// Where the upload starts in it.
    pub base: u64,
    /// The upload's size.
    pub size: u64,
}

/// One failed dispatch attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    /// The worker it was sent to.
    pub worker_id: String,
    /// What went wrong.
    pub error: String,
}

/// The reruns a job asked for (`reruns` at submit): how many times it may run again after it
/// was lost, and the runs lost so far.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reruns {
    /// Reruns it may have after a lost run.
    pub allowed: u32,
    /// Its lost runs, oldest first (each one used a rerun).
    #[serde(default)]
    pub lost: Vec<LostRun>,
}

/// The `Idempotency-Key` a job was submitted with, and the digest of what that submit held
/// (files, manifest, options): a submit that repeats the key is answered this job when it holds
/// the same, and refused when it holds something else.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitKey {
    /// The key, as the client gave it.
    pub key: String,
    /// SHA-256 of the submit's parts, in hex.
    pub digest: String,
}

/// One run of a job that was lost (its worker died, forgot it or never answered the submit),
/// after which the job was queued again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LostRun {
    /// The worker it ran on, or was sent to.
    pub worker_id: Option<String>,
    /// The worker's job id, when the worker had taken it.
    pub remote_job_id: Option<String>,
    /// Why it was lost.
    pub error: String,
    /// Unix time it was lost (and queued again).
    pub at: f64,
    /// The same on the job store's wait clock (its queue wait began again then), unless `at`
    /// stands for it (see `WaitClock::mark_beside`; a record from before that clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark: Option<f64>,
}

/// Where a collected job's results lie: in a results segment of the spool, or (small
/// results) in the job's own row of the job store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResults {
    /// The results segment they were appended to (empty when they are held in the row).
    pub segment: String,
    /// Each collected output file: its path and its bytes.
    pub outputs: Vec<(String, Span)>,
    /// The worker's `/logs` answer, as JSON.
    pub logs: Span,
    /// The results are held in the job's row of the job store, the spans counting from the
    /// start of the row's results bytes.
    #[serde(default, skip_serializing_if = "is_false")]
    pub in_row: bool,
    /// The outputs left on the worker because they would take the job's collected bytes past
    /// `--max-results-bytes`: those whose declared size did not fit, then any cut as it came.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_on_worker: Vec<String>,
    /// The sha256 (lowercase hex) of each collected output whose bytes hash otherwise than its
    /// worker declared, or that it declared without one: (path, sha256). The others hash as
    /// declared, so the record keeps no second copy of their hash.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub served_sha256: Vec<(String, String)>,
    /// The row's results bytes, while they are in memory: from the collection until the job's
    /// record committed, or loaded from the store for a read.
    #[serde(skip)]
    pub row_bytes: Option<Arc<[u8]>>,
}

impl StoredResults {
    /// The span and sha256 of the bytes served for output `name`, its worker's final status
    /// being `status`: the hash recorded at collection where they hash otherwise than declared,
    /// else the declared one. Collected before such hashes were recorded, an output whose size
    /// differs from the declared one has no known hash.
    pub fn served<'a>(&'a self, name: &str, status: &'a Value) -> Option<(Span, Option<&'a str>)> {
        let (_, span) = self.outputs.iter().find(|(p, _)| p == name)?;
        let recorded = self.served_sha256.iter().find(|(p, _)| p == name);
        let sha256 = match recorded {
            Some((_, sha256)) => Some(sha256.as_str()),
            None => declared_sha256(status, name)
                .filter(|_| declared_size(status, name) == Some(span.size)),
        };
        Some((*span, sha256))
    }

    /// The bytes its outputs and logs take, from the first to the end of the last (they are
    /// written back to back).
    pub fn extent(&self) -> Span {
        let spans = self.outputs.iter().map(|(_, s)| s).chain([&self.logs]);
        let start = spans.clone().map(|s| s.offset).min().unwrap_or(0);
        let end = spans
            .map(|s| s.offset.saturating_add(s.size))
            .max()
            .unwrap_or(0);
        Span {
            offset: start,
            size: end.saturating_sub(start),
        }
    }
}

fn is_false(b: &bool) -> bool {
    !b
}

/// Whether the job's results (logs, outputs) are safe in the spool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Collection {
    /// Nothing to collect yet (the job has not finished on a worker).
    NotStarted,
    /// The job finished; collection is under way or will be retried after this error.
    Pending(Option<String>),
    /// Everything is in the spool; the coordinator serves the results itself (boxed: a queued
    /// job's record stays small).
    Collected(Box<StoredResults>),
}

impl Collection {
    /// The results segment the collected results lie in, and the bytes they take there (none
    /// when they are in the job's row, or not collected).
    pub fn in_segment(&self) -> Option<(&str, Span)> {
        match self {
            Collection::Collected(stored) if !stored.in_row => {
                Some((stored.segment.as_str(), stored.extent()))
            }
            _ => None,
        }
    }
}

/// The figures of a job's `[DONE] Job <status> (exit=N, CPU=X.XXXXXXs, Mem=NMB)` stream line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoneFigures {
    /// `completed` or `failed`.
    pub status: String,
    /// The exit code.
    pub exit_code: i32,
    /// CPU seconds as printed (6 decimals), kept as text: its digits matter.
    pub cpu_seconds: String,
    /// Peak memory in MiB.
    pub memory_mb: u64,
}

/// What checking the result signature against the allowlisted key gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureVerdict {
    /// The allowlisted key signed exactly this result.
    Verified,
    /// It did not (another key, an altered result, or no signature).
    Failed,
    /// The signed text could not be rebuilt (no `[DONE]` figures and no CPU candidate fitted).
    Unverifiable,
}

/// Whether the collected outputs are the ones the worker signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputsVerdict {
    /// Every collected file's sha256 equals the signed one.
    Match,
    /// At least one does not.
    Mismatch,
}

/// A finished job's result verification, as `/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// The signature check.
    pub signature: SignatureVerdict,
    /// The outputs check (None until the outputs are collected).
    pub outputs: Option<OutputsVerdict>,
    /// Why, when something did not verify.
    pub reason: Option<String>,
}

/// Everything known about one job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// `pool-<32 hex>`.
    pub id: String,
    /// Life stage.
    pub status: PoolStatus,
    /// The `files` parts, in upload order.
    pub inputs: Vec<InputFile>,
    /// The `manifest` part's bytes in the upload file, when there is one.
    pub manifest: Option<Span>,
    /// Unix seconds when the coordinator accepted it.
    pub submitted_at: f64,
    /// Unix seconds when a worker accepted it.
    pub dispatched_at: Option<f64>,
    /// Unix seconds when the coordinator saw it end.
    pub completed_at: Option<f64>,
    /// The worker it is (or was last) on.
    pub worker_id: Option<String>,
    /// That worker's endpoint when the job was sent there: a restart follows the job only at
    /// that endpoint (a worker listed at another one since is another worker). None in the
    /// records of earlier versions.
    #[serde(default)]
    pub worker_endpoint: Option<String>,
    /// The worker's own job id.
    pub remote_job_id: Option<String>,
    /// The local address its submit left from, when the worker has source addresses (sandrun
    /// counts the job against that client address until it ends).
    #[serde(default)]
    pub source_address: Option<IpAddr>,
    /// The worker's last `/status` answer, verbatim.
    pub worker_status: Option<Value>,
    /// What went wrong, when something did.
    pub error: Option<String>,
    /// Failed dispatch attempts so far.
    pub attempts: Vec<Attempt>,
    /// Result collection progress.
    pub collection: Collection,
    /// Unix seconds of the last answer from its worker about it (shown; see `heard_at`).
    pub last_contact: Option<f64>,
    /// When its worker last answered about it, on the monotonic clock: `--lost-after` counts
    /// from here, so a wall clock set forward or back (an NTP sync on a board without a
    /// real-time clock) neither loses a job at once nor keeps a dead worker's job for good.
    /// Not stored: recovery sets it.
    #[serde(skip)]
    pub heard_at: Option<Instant>,
    /// The name of the client key that submitted it (None: the coordinator runs without keys).
    #[serde(default)]
    pub owner: Option<String>,
    /// The priority it was submitted with.
    #[serde(default)]
    pub priority: Priority,
    /// The labels a worker must carry to run it (sorted; `None`: any worker), boxed like the
    /// other fields most jobs leave empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Box<[String]>>,
    /// True for a job cancelled while on a worker, until the worker ends it: it still holds its
    /// slot there, and is deleted on the worker once ended.
    #[serde(default)]
    pub ending_on_worker: bool,
    /// A client deleted it before it was settled (`DELETE /jobs/{id}`): the store deletes its
    /// row in the transaction that settles it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub delete_when_settled: bool,
    /// A client asked for its status, waits for its end or follows it (not stored): its end
    /// is followed up at once, even beside the worker's other follow-ups.
    #[serde(skip)]
    pub watched: bool,
    /// Its end on its worker (completed or failed) is in that worker's counters, counted by
    /// this process (not stored: the end of a job recovered at a restart came before this
    /// process counted anything). A later change of its final state moves the count only then.
    #[serde(skip)]
    pub end_counted: bool,
    /// The figures of the worker's `[DONE]` stream line, when it was seen (boxed, like the
    /// other fields a queued job leaves empty, so that 10,000 queued records stay small).
    #[serde(default)]
    pub done_figures: Option<Box<DoneFigures>>,
    /// Result verification, once the job finished.
    #[serde(default)]
    pub verification: Option<Box<Verification>>,
    /// Where its upload waits on disk; `None` when it is held in memory (and in the job store).
    #[serde(default)]
    pub upload_at: Option<UploadAt>,
    /// Seconds it may wait in the queue, counted from its submission (its `queue_timeout`, or
    /// `--queue-timeout`); past that it fails unstarted. None: it waits as long as it takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout: Option<f64>,
    /// When a priority change (`POST /jobs/{id}/priority`) put it at the back of its new
    /// level, when one did, on the job store's wait clock (unix time in a record from before
    /// it): its place in the queue after a restart (others keep their submission order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level_since: Option<f64>,
    /// Its submission on the job store's wait clock, which the wall clock's steps while the
    /// coordinator ran do not move: its waits after a restart are read from it. `None` when
    /// `submitted_at` stands for it (see `WaitClock::mark_beside`; a record from before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submit_mark: Option<f64>,
    /// When its queue timeout ends, on the monotonic clock (not stored: set when it is queued,
    /// from its submission, its last lost run or, at a restart, the time it waited before).
    #[serde(skip)]
    pub queue_deadline: Option<Instant>,
    /// Its reruns after a lost run, when it asked for any (boxed: most jobs have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reruns: Option<Box<Reruns>>,
    /// The `Idempotency-Key` it was submitted with, if any (boxed: most jobs have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submit_key: Option<Box<SubmitKey>>,
}

impl Job {
    /// Notes an answer from its worker about it, at unix time `now`.
    pub fn heard_from_worker(&mut self, now: f64) {
        self.last_contact = Some(now);
        self.heard_at = Some(Instant::now());
    }

    /// The coordinator could not ask its worker about it, short of descriptors or memory: the
    /// worker's silence (`--lost-after`) is counted from now, not from its last answer.
    pub fn excuse_silence(&mut self) {
        self.heard_at = Some(Instant::now());
    }

    /// A freshly accepted job. `inputs` is trimmed to its length: a one-file job would keep room
    /// for four (192 bytes more per queued job).
    pub fn new(
        id: String,
        mut inputs: Vec<InputFile>,
        manifest: Option<Span>,
        submitted_at: f64,
    ) -> Self {
        inputs.shrink_to_fit();
        Job {
            id,
            status: PoolStatus::Queued,
            inputs,
            manifest,
            submitted_at,
            dispatched_at: None,
            completed_at: None,
            worker_id: None,
            worker_endpoint: None,
            remote_job_id: None,
            source_address: None,
            worker_status: None,
            error: None,
            attempts: Vec::new(),
            collection: Collection::NotStarted,
            last_contact: None,
            heard_at: None,
            owner: None,
            priority: Priority::Normal,
            labels: None,
            ending_on_worker: false,
            delete_when_settled: false,
            watched: false,
            end_counted: false,
            done_figures: None,
            verification: None,
            upload_at: None,
            queue_timeout: None,
            level_since: None,
            submit_mark: None,
            queue_deadline: None,
            reruns: None,
            submit_key: None,
        }
    }

    /// What its file names, their content types and its labels take in memory while it is in
    /// the table (their bytes, and each entry's own size): counted against `--max-names-bytes`.
    pub fn names_bytes(&self) -> u64 {
        let files = self
            .inputs
            .iter()
            .map(|f| size_of::<InputFile>() + f.filename.len() + f.content_type.len());
        let labels = self.labels().iter().map(|l| size_of::<String>() + l.len());
        files.chain(labels).sum::<usize>() as u64
    }

    /// The labels a worker must carry to run it (none: any worker).
    pub fn labels(&self) -> &[String] {
        self.labels.as_deref().unwrap_or_default()
    }

    /// True once nothing more will happen to the job: it ended and, unless it is lost, its
    /// results are collected (or there were none to collect). A settled job lives in the job
    /// store only.
    pub fn is_settled(&self) -> bool {
        self.status.is_final()
            && !self.ending_on_worker
            && (matches!(self.status, PoolStatus::Lost | PoolStatus::Cancelled)
                || !matches!(self.collection, Collection::Pending(_)))
    }

    /// Whether its run is its worker's job `remote`: not once that run was lost and the job
    /// queued to run again, nor before it was dispatched.
    pub fn is_on(&self, remote: &str) -> bool {
        self.remote_job_id.as_deref() == Some(remote)
    }

    /// True while its upload is still needed: it has not ended, and it has not reached a
    /// worker or may run again if that run is lost.
    pub fn needs_upload(&self) -> bool {
        !self.status.is_final() && (self.remote_job_id.is_none() || self.reruns_left() > 0)
    }

    /// True when a restart would need its upload: it waits in the queue, or it may run again
    /// after a lost run. A job whose submit was in flight (dispatched, no worker job id yet)
    /// is lost at a restart unless it may run again, and its upload may be gone already: it
    /// is dropped as soon as the worker took the job, a moment before the record that says so
    /// commits.
    pub fn upload_needed_after_restart(&self) -> bool {
        !self.status.is_final() && (self.status == PoolStatus::Queued || self.reruns_left() > 0)
    }

    /// How many more times it may run again after a lost run.
    pub fn reruns_left(&self) -> u32 {
        self.reruns.as_ref().map_or(0, |r| {
            r.allowed
                .saturating_sub(u32::try_from(r.lost.len()).unwrap_or(u32::MAX))
        })
    }

    /// The workers it was sent to without success: failed dispatch attempts and lost runs. A
    /// worker it has not tried is preferred.
    pub fn tried_workers(&self) -> impl Iterator<Item = &str> {
        let lost = self.reruns.iter().flat_map(|r| r.lost.iter());
        self.attempts
            .iter()
            .map(|a| a.worker_id.as_str())
            .chain(lost.filter_map(|run| run.worker_id.as_deref()))
    }

    /// Takes back a run that was lost (`run` says where and why), so that the job can wait in
    /// the queue again: what that run left is cleared, the run is kept in its `reruns`. The
    /// caller moves it to `queued` and puts it back in the queue.
    pub fn forget_lost_run(&mut self, run: LostRun) {
        self.reruns.get_or_insert_with(Box::default).lost.push(run);
        self.worker_id = None;
        self.remote_job_id = None;
        self.source_address = None;
        self.dispatched_at = None;
        self.completed_at = None;
        self.worker_status = None;
        self.error = None;
        self.collection = Collection::NotStarted;
        self.last_contact = None;
        self.heard_at = None;
        self.ending_on_worker = false;
        self.end_counted = false;
        self.done_figures = None;
        self.verification = None;
    }

    /// When its submission was, on the job store's wait clock.
    pub fn submitted_on_wait_clock(&self) -> f64 {
        self.submit_mark.unwrap_or(self.submitted_at)
    }

    /// When its current wait in the queue began (its queue timeout counts from here), on the
    /// job store's wait clock: its submission, or its last lost run.
    pub fn wait_began(&self) -> f64 {
        self.reruns
            .as_ref()
            .and_then(|r| r.lost.last())
            .map_or(self.submitted_on_wait_clock(), |run| {
                run.mark.unwrap_or(run.at)
            })
    }

    /// True while the first collection of its results is under way (it completed or failed
    /// on its worker, and no attempt ended yet) and its worker declares at most `limit` bytes
    /// of outputs: such a collection is soon done.
    pub fn collecting_at_most(&self, limit: u64) -> bool {
        matches!(self.status, PoolStatus::Completed | PoolStatus::Failed)
            && matches!(self.collection, Collection::Pending(None))
            && self
                .worker_status
                .as_ref()
                .and_then(declared_output_bytes)
                .is_some_and(|bytes| bytes <= limit)
    }
}

/// The total size a worker's `/status` answer declares for its output files (None without
/// `output_files`, or when one of the sizes is missing).
pub fn declared_output_bytes(status: &Value) -> Option<u64> {
    let files = status.get("output_files")?;
    files
        .as_object()
        .into_iter()
        .flatten()
        .try_fold(0u64, |total, (_, file)| {
            total.checked_add(size_bytes(file)?)
        })
}

/// The size a worker's `/status` answer declares for its output `path`.
pub fn declared_size(status: &Value, path: &str) -> Option<u64> {
    size_bytes(status.get("output_files")?.get(path)?)
}

/// The sha256 a worker's `/status` answer declares for its output `path`, as it wrote it.
pub fn declared_sha256<'a>(status: &'a Value, path: &str) -> Option<&'a str> {
    status
        .get("output_files")?
        .get(path)?
        .get("sha256")?
        .as_str()
}

/// The `size_bytes` of one entry of a worker's `output_files`.
fn size_bytes(file: &Value) -> Option<u64> {
    file.get("size_bytes")?.as_u64()
}

/// Whether `id` has the form of a job id: `pool-` and 32 lowercase hex digits.
pub fn is_job_id(id: &str) -> bool {
    id.strip_prefix("pool-").is_some_and(|hex| {
        hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The text of the 404 for a job id the coordinator does not know (or another key's job):
/// every route and control answers it, so the reason given never depends on the route.
pub fn unknown_job_message(id: &str) -> String {
    format!(
        "no job {id:?} on this coordinator: it never existed here, it finished long enough ago \
         to have expired (see --retain-jobs and --retain-for), or it was deleted (job ids look \
         like pool-<32 hex>)"
    )
}
