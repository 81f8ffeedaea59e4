//! Knobs that change the emulator's behaviour at run time, and what it recorded for assertions.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

pub use super::runner::Printed;
pub use super::stream::StreamKnobs;

/// Locks a mutex, carrying on with its data if a thread panicked while holding it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Every setting of the emulator. `Knobs::default()` is the real sandrun's behaviour.
#[derive(Clone, Debug, PartialEq)]
pub struct Knobs {
    /// Simulated runner: how long a job runs.
    pub job_duration: Duration,
    /// A running job does not end while this is on: once its run is over it waits, still
    /// running, until this is turned off (sandrun has no such thing: a test's way to keep a
    /// job running for as long as its checks take, however slow the machine).
    pub hold_jobs: bool,
    /// The executor takes up no queued job while this is on (a test's way to let a client's
    /// stream join a job while it is still queued).
    pub hold_queue: bool,
    /// Simulated runner: the exit code of a job whose entrypoint exists.
    pub exit_code: i32,
    /// Simulated runner: CPU seconds a job reports (they count against the per-minute CPU quota).
    pub cpu_seconds: f64,
    /// Simulated runner: what a job whose entrypoint exists prints on stdout (`None`: its live
    /// lines, then `ran <entrypoint>`).
    pub stdout: Option<Printed>,
    /// Simulated runner: what a job whose entrypoint exists prints on stderr (`None`: nothing).
    pub stderr: Option<Printed>,
    /// Real runner: a job is killed after this long (sandrun: 300 s).
    pub timeout: Duration,
    /// Jobs queued or running at once per client IP (sandrun: 2).
    pub max_active_per_ip: usize,
    /// Jobs accepted per client IP per hour (sandrun: 20).
    pub max_jobs_per_hour: usize,
    /// CPU seconds per client IP per minute (sandrun: 10).
    pub cpu_seconds_per_minute: f64,
    /// A job not running is deleted this long after its submit began (sandrun: more than 5
    /// whole minutes, so 6, its wait for the jobs lock and in the queue included), checked
    /// after each run.
    pub delete_after: Duration,
    /// The executor looks for the next job this often (sandrun: every second).
    pub poll_interval: Duration,
    /// Largest request accepted, headers included (sandrun: 100 MiB).
    pub max_request_bytes: usize,
    /// `/health` and results name another valid key's id (and results are signed with that key).
    pub wrong_worker_id: bool,
    /// The worker has no key, like sandrun started without `--worker-key`: `/health` and results
    /// report `"worker_id": null` and results are unsigned.
    pub anonymous: bool,
    /// `/health` answers 503 `{"status":"unhealthy",...}`.
    pub fail_health: bool,
    /// Every request is read and never answered while this is on; the held connections are then
    /// closed without an answer.
    pub hang: bool,
    /// Like `hang`, for `POST /submit` only.
    pub hang_submit: bool,
    /// `GET /download/...` answers this much later (a slow link to the worker).
    pub download_delay: Duration,
    /// `GET /download/{id}/{path}` (a file, never the deleting tarball) is not answered while
    /// this is on: once read (and recorded) it waits until this is turned off, then is answered
    /// as usual (sandrun has no such thing: a test's way to keep a collection under way for as
    /// long as its checks take, however slow the machine).
    pub hold_downloads: bool,
    /// `GET /download/...` answers without `Content-Length`, its body ended by the close (an
    /// HTTP server that does not know its length; sandrun always sends it).
    pub unframed_downloads: bool,
    /// The next this many answers to `GET /download/{id}/{path}` (a file, never the deleting
    /// tarball) send their headers and half their body, then nothing more until the client
    /// closes the connection (a link that breaks mid-body); each one so answered counts it
    /// down. The job stays on the worker as it was.
    pub stalled_downloads: usize,
    /// `GET /stats` answers this much later (a busy worker).
    pub stats_delay: Duration,
    /// `POST /submit` answers this much later (sandrun takes its lock for a submit, and holds
    /// it while a job runs, so a submit to a busy worker waits).
    pub submit_delay: Duration,
    /// `POST /submit` (past the rate limits) answers this status with `{"error":"<message>"}`.
    pub reject_submit: Option<(u16, String)>,
    /// Job ids read these unix seconds, whatever the clock (a test's way to have a worker
    /// restart within the second of an id it gave out: sandrun's id counter starts again at
    /// each start, so it then gives that id to another job).
    pub id_seconds: Option<u64>,
    /// `POST /submit` accepts the job under its own id but answers this one (a worker that
    /// is not sandrun, or a broken one).
    pub answered_job_id: Option<String>,
    /// The simulated job also writes a file of this name, `{job}` in it reading its job id (a
    /// job that names a file after its directory, as python's `os.getcwd()` gives it), holding
    /// `extra output\n`.
    pub extra_output: Option<String>,
    /// The simulated job also writes a file of this name, which is listed and hashed with its
    /// outputs and then deleted (a worker that lost a file: sandrun's download of it answers
    /// 500 with a filesystem error).
    pub vanished_output: Option<String>,
    /// The simulated job also makes an output of this name that is a symbolic link to a file
    /// outside its directory: sandrun lists and hashes it (it follows links) and answers its
    /// download 403 (`Access denied: path traversal detected`).
    pub linked_output: Option<String>,
    /// The worker lives on where sandrun dies of SIGPIPE: a frame written to a WebSocket stream
    /// whose client closed it (see `stream::died_of_sigpipe`).
    pub survives_sigpipe: bool,
    /// The simulated job's results also list outputs of these names, signed with the rest,
    /// each with the size and sha256 of `listed\n`, though no file of the job holds them (a
    /// worker that is not sandrun, or a tampered one: sandrun lists only the files under the
    /// job's directory, so never a name such as `../../evil.txt`). Downloads of them answer
    /// sandrun's 500 for a missing file.
    pub listed_outputs: Vec<String>,
    /// `GET /status/{id}` answers carry a member `padding` of this many bytes first (a worker
    /// that adds what the coordinator does not read); 0: none.
    pub status_padding: usize,
    /// `GET /status/{id}` reports this status, whatever the job's is (a broken worker).
    pub reported_status: Option<&'static str>,
    /// Answers to requests of this kind (`submit`, `status`, ...) are sent one byte at a time,
    /// this long apart (a broken link, or a worker that never quite stops answering).
    pub drip: Option<(&'static str, Duration)>,
    /// The live stream and result signature tampering.
    pub stream: StreamKnobs,
}

impl Default for Knobs {
    fn default() -> Knobs {
        Knobs {
            job_duration: Duration::ZERO,
            hold_jobs: false,
            hold_queue: false,
            exit_code: 0,
            cpu_seconds: 0.0,
            stdout: None,
            stderr: None,
            timeout: Duration::from_secs(300),
            max_active_per_ip: 2,
            max_jobs_per_hour: 20,
            cpu_seconds_per_minute: 10.0,
            delete_after: Duration::from_secs(360),
            poll_interval: Duration::from_secs(1),
            max_request_bytes: 100 * 1024 * 1024,
            wrong_worker_id: false,
            anonymous: false,
            fail_health: false,
            hang: false,
            hang_submit: false,
            download_delay: Duration::ZERO,
            hold_downloads: false,
            unframed_downloads: false,
            stalled_downloads: 0,
            stats_delay: Duration::ZERO,
            submit_delay: Duration::ZERO,
            reject_submit: None,
            id_seconds: None,
            answered_job_id: None,
            extra_output: None,
            vanished_output: None,
            linked_output: None,
            survives_sigpipe: false,
            listed_outputs: Vec::new(),
            status_padding: 0,
            reported_status: None,
            drip: None,
            stream: StreamKnobs::default(),
        }
    }
}

/// The live knobs, shared between the emulator and whoever steers it.
#[derive(Debug, Default)]
pub struct Control {
    knobs: Mutex<Knobs>,
}

impl Control {
    /// Control starting from the given knobs.
    pub fn new(knobs: Knobs) -> Control {
        Control {
            knobs: Mutex::new(knobs),
        }
    }

    /// A copy of the knobs now in force.
    pub fn get(&self) -> Knobs {
        lock(&self.knobs).clone()
    }

    /// Changes knobs, e.g. `control.set(|k| k.hang = true)`.
    pub fn set(&self, change: impl FnOnce(&mut Knobs)) {
        change(&mut lock(&self.knobs));
    }
}

/// One `files` part (or other file part) of a received submit.
#[derive(Clone, Debug)]
pub struct ReceivedFile {
    /// The part's name (`files` for real uploads).
    pub part_name: String,
    /// The filename the client gave.
    pub filename: String,
    /// The part's Content-Type, if any.
    pub content_type: Option<String>,
    /// Lowercase hex SHA-256 of the bytes.
    pub sha256: String,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// A submit that got past the rate limits and was parsed.
#[derive(Clone, Debug)]
pub struct ReceivedJob {
    /// When the request had been read.
    pub received_at: SystemTime,
    /// The client IP it came from (what the rate limits count).
    pub client_ip: String,
    /// The status answered.
    pub status: u16,
    /// The job id, when accepted.
    pub job_id: Option<String>,
    /// The parts that carried a filename.
    pub files: Vec<ReceivedFile>,
    /// The raw `manifest` part, if any.
    pub manifest: Option<Vec<u8>>,
}

/// Everything recorded so far.
#[derive(Clone, Debug, Default)]
pub struct Recording {
    /// Requests received per (method, kind); kinds: `health`, `submit`, `status`, `logs`,
    /// `outputs`, `download`, `stats`, `root`, `other`. Counted on receipt, so 429-answered
    /// and never-answered requests count too.
    pub requests: BTreeMap<(String, String), usize>,
    /// Most jobs queued or running at once.
    pub peak_active: usize,
    /// Requests being served now, per kind (as in `requests`).
    pub serving: BTreeMap<String, usize>,
    /// Most requests served at once, per kind (from receipt to the end of the answer).
    pub peak_serving: BTreeMap<String, usize>,
    /// Submits parsed, in order of answer.
    pub jobs: Vec<ReceivedJob>,
    /// Jobs whose `WS /stream/{id}` a subscriber joined, once it is registered, in order.
    pub subscribed: Vec<String>,
    /// Jobs as they started running: (job id, when).
    pub started: Vec<(String, SystemTime)>,
    /// Jobs whose `[DONE]` frame went to their stream's subscribers: (job id, when it was sent).
    pub done: Vec<(String, SystemTime)>,
    /// What crashed the worker (sandrun dies when its executor takes a queued job that
    /// `GET /download/{id}` deleted).
    pub faults: Vec<String>,
    /// Submits answered 429 by the rate limits: (client IP, message).
    pub throttled: Vec<(String, String)>,
}

impl Recording {
    /// Most requests of this kind served at once.
    pub fn peak_serving(&self, kind: &str) -> usize {
        self.peak_serving.get(kind).copied().unwrap_or(0)
    }

    /// Requests received with this method and kind.
    pub fn count(&self, method: &str, kind: &str) -> usize {
        self.requests
            .get(&(method.to_string(), kind.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// The received job with this id.
    pub fn job(&self, job_id: &str) -> Option<&ReceivedJob> {
        self.jobs
            .iter()
            .find(|j| j.job_id.as_deref() == Some(job_id))
    }

    /// Whether the job with this id has started running.
    pub fn has_started(&self, job_id: &str) -> bool {
        self.started.iter().any(|(id, _)| id == job_id)
    }

    /// Jobs accepted from this client IP.
    pub fn accepted_from(&self, ip: &str) -> usize {
        self.jobs
            .iter()
            .filter(|j| j.job_id.is_some() && j.client_ip == ip)
            .count()
    }

    /// Submits from this client IP answered 429.
    pub fn throttled_from(&self, ip: &str) -> usize {
        self.throttled.iter().filter(|(from, _)| from == ip).count()
    }

    /// Ids of the accepted jobs, in order.
    pub fn accepted_ids(&self) -> Vec<String> {
        self.jobs.iter().filter_map(|j| j.job_id.clone()).collect()
    }
}

/// A request being served (see [`Recorder::serving`]); counted off when dropped.
pub struct Serving<'a> {
    recorder: &'a Recorder,
    kind: String,
}

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        let mut recording = lock(&self.recorder.recording);
        if let Some(now) = recording.serving.get_mut(&self.kind) {
            *now = now.saturating_sub(1);
        }
    }
}

/// Collects the recording; shared by every incarnation of one emulator.
#[derive(Debug, Default)]
pub struct Recorder {
    recording: Mutex<Recording>,
}

impl Recorder {
    /// Counts one request.
    pub fn request(&self, method: &str, kind: &str) {
        *lock(&self.recording)
            .requests
            .entry((method.to_string(), kind.to_string()))
            .or_insert(0) += 1;
    }

    /// Notes a request of `kind` being served until the guard returned is dropped.
    pub fn serving<'a>(&'a self, kind: &str) -> Serving<'a> {
        let mut recording = lock(&self.recording);
        let now = recording.serving.entry(kind.to_string()).or_insert(0);
        *now += 1;
        let now = *now;
        let peak = recording.peak_serving.entry(kind.to_string()).or_insert(0);
        *peak = (*peak).max(now);
        Serving {
            recorder: self,
            kind: kind.to_string(),
        }
    }

    /// Notes how many jobs are queued or running now.
    pub fn active(&self, now_active: usize) {
        let mut recording = lock(&self.recording);
        recording.peak_active = recording.peak_active.max(now_active);
    }

    /// Adds a parsed submit.
    pub fn job(&self, job: ReceivedJob) {
        lock(&self.recording).jobs.push(job);
    }

    /// Notes a submit the rate limits refused.
    pub fn throttled(&self, ip: &str, message: &str) {
        lock(&self.recording)
            .throttled
            .push((ip.to_string(), message.to_string()));
    }

    /// Notes that a subscriber of a job's stream is registered.
    pub fn subscribed(&self, job_id: &str) {
        lock(&self.recording).subscribed.push(job_id.to_string());
    }

    /// Notes that a job starts running.
    pub fn started(&self, job_id: &str) {
        lock(&self.recording)
            .started
            .push((job_id.to_string(), SystemTime::now()));
    }

    /// Notes that a job's `[DONE]` frame is sent now.
    pub fn done(&self, job_id: &str) {
        lock(&self.recording)
            .done
            .push((job_id.to_string(), SystemTime::now()));
    }

    /// Notes what crashed the worker.
    pub fn fault(&self, what: String) {
        lock(&self.recording).faults.push(what);
    }

    /// A copy of everything recorded.
    pub fn snapshot(&self) -> Recording {
        lock(&self.recording).clone()
    }

    /// Forgets everything recorded.
    pub fn clear(&self) {
        *lock(&self.recording) = Recording::default();
    }
}
