//! sandrun's job table and the JSON it answers about jobs.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::files::{self, FileMeta};
use super::keys::WorkerKey;
use super::runner::RunOutcome;
use super::text::{cpp_number, escape, fixed2};
use super::upload::JobSpec;

/// One job, with the fields sandrun keeps.
#[derive(Clone, Debug)]
pub struct Job {
    /// `job_<unix seconds>_<counter>`.
    pub id: String,
    /// Who submitted it.
    pub client_ip: String,
    /// What it runs.
    pub spec: JobSpec,
    /// `queued`, `running`, `completed` or `failed`.
    pub status: &'static str,
    /// Captured standard output.
    pub stdout: Vec<u8>,
    /// Captured standard error.
    pub stderr: Vec<u8>,
    /// Its directory.
    pub dir: PathBuf,
    /// 1-based place in the queue (0 once started).
    pub queue_position: usize,
    /// CPU seconds used.
    pub cpu_seconds: f64,
    /// Peak memory in MiB (rounded down).
    pub memory_mb: u64,
    /// When its submit began to be handled (before it waited for the jobs lock, as sandrun's
    /// clock starts): its deletion counts from here.
    pub created_at: Instant,
    /// sandrun's commitment to the job's inputs.
    pub job_hash: String,
    /// Hashed output files.
    pub output_files: BTreeMap<String, FileMeta>,
    /// Wall time of the run.
    pub wall_time_ms: u128,
    /// Exit code.
    pub exit_code: i32,
    /// Id of the key that signed the result (set on completion).
    pub worker_id: Option<String>,
    /// Base64 signature of the result (set on completion).
    pub signature: Option<String>,
}

impl Job {
    /// A queued job.
    pub fn new(
        id: String,
        client_ip: String,
        spec: JobSpec,
        (dir, hash): (PathBuf, String),
        created_at: Instant,
    ) -> Job {
        Job {
            id,
            client_ip,
            spec,
            status: "queued",
            stdout: Vec::new(),
            stderr: Vec::new(),
            dir,
            queue_position: 0,
            cpu_seconds: 0.0,
            memory_mb: 0,
            created_at,
            job_hash: hash,
            output_files: BTreeMap::new(),
            wall_time_ms: 0,
            exit_code: 0,
            worker_id: None,
            signature: None,
        }
    }

    /// Records a finished run: status, logs, hashed outputs, and the signature by `key` (none
    /// for an anonymous worker).
    pub fn finish(&mut self, outcome: RunOutcome, wall: Duration, key: Option<&WorkerKey>) {
        self.stdout = outcome.stdout;
        self.stderr = outcome.stderr;
        self.cpu_seconds = outcome.cpu_seconds;
        self.memory_mb = outcome.memory_bytes / (1024 * 1024);
        self.wall_time_ms = wall.as_millis();
        self.exit_code = outcome.exit_code;
        self.status = if outcome.exit_code == 0 {
            "completed"
        } else {
            "failed"
        };
        if !self.spec.outputs.is_empty() {
            self.spec.outputs.extend(outcome.extra_outputs);
        }
        self.output_files = files::hash_directory(&self.dir, &self.spec.outputs);
        if let Some(name) = &outcome.vanished {
            let _ = std::fs::remove_file(self.dir.join(name));
        }
        for name in outcome.listed_only {
            let meta = FileMeta {
                size_bytes: LISTED_ONLY.len() as u64,
                sha256: files::sha256_bytes(LISTED_ONLY),
                file_type: files::file_type(&name),
            };
            self.output_files.insert(name, meta);
        }
        let Some(key) = key else {
            return;
        };
        let hashes = self
            .output_files
            .iter()
            .map(|(path, meta)| (path.clone(), meta.sha256.clone()))
            .collect();
        let payload = signing_payload(
            &self.job_hash,
            self.exit_code,
            self.cpu_seconds,
            self.memory_mb,
            &hashes,
        );
        self.worker_id = Some(key.worker_id());
        self.signature = Some(key.sign_base64(&payload));
    }
}

/// What an output listed though no file holds it (the `listed_outputs` knob) is said to hold.
const LISTED_ONLY: &[u8] = b"listed\n";

/// The string sandrun signs:
/// `<job_hash>|<exit_code>|<cpu_seconds>|<memory_mb>|<path>:<sha256>|...` with paths in sorted
/// order and numbers as a C++ stream prints them.
pub fn signing_payload(
    job_hash: &str,
    exit_code: i32,
    cpu_seconds: f64,
    memory_mb: u64,
    file_hashes: &BTreeMap<String, String>,
) -> String {
    let mut payload = format!(
        "{job_hash}|{exit_code}|{}|{memory_mb}|",
        cpp_number(cpu_seconds)
    );
    for (path, sha256) in file_hashes {
        let _ = write!(payload, "{path}:{sha256}|");
    }
    payload
}

/// The jobs of one running worker and its queue.
#[derive(Debug, Default)]
pub struct JobTable {
    /// Jobs by id.
    pub jobs: HashMap<String, Job>,
    /// Ids waiting to run, with the client IP that submitted them.
    pub queue: VecDeque<(String, String)>,
}

impl JobTable {
    /// Queues a job, giving it its queue position.
    pub fn enqueue(&mut self, mut job: Job) {
        self.queue
            .push_back((job.id.clone(), job.client_ip.clone()));
        job.queue_position = self.queue.len();
        self.jobs.insert(job.id.clone(), job);
    }

    /// Takes the next (id, client IP) from the queue and renumbers the others.
    pub fn pop_next(&mut self) -> Option<(String, String)> {
        let next = self.queue.pop_front()?;
        for (position, (id, _)) in self.queue.iter().enumerate() {
            if let Some(job) = self.jobs.get_mut(id) {
                job.queue_position = position + 1;
            }
        }
        Some(next)
    }

    /// Deletes a job and its directory.
    pub fn delete(&mut self, id: &str) -> Option<Job> {
        let job = self.jobs.remove(id)?;
        let _ = fs::remove_dir_all(&job.dir);
        Some(job)
    }

    /// Deletes every job not running that was submitted `max_age` ago or more (sandrun: more
    /// than 5 whole minutes, so 6), the one that just ended and those still queued included.
    pub fn expire(&mut self, max_age: Duration) {
        let old: Vec<String> = self
            .jobs
            .values()
            .filter(|j| j.status != "running" && j.created_at.elapsed() >= max_age)
            .map(|j| j.id.clone())
            .collect();
        for id in old {
            self.delete(&id);
        }
    }

    /// Jobs (queued, running).
    pub fn counts(&self) -> (usize, usize) {
        let count = |status: &str| self.jobs.values().filter(|j| j.status == status).count();
        (count("queued"), count("running"))
    }
}

fn json_string_or_null(value: Option<&str>) -> String {
    value.map_or_else(|| "null".to_string(), |v| format!("\"{v}\""))
}

/// `GET /status/{id}`, pretty-printed exactly as sandrun prints it.
pub fn status_json(job: &Job) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "{{\n  \"job_id\": \"{}\",\n  \"status\": \"{}\",\n  \"queue_position\": {},\n",
        job.id, job.status, job.queue_position
    );
    let _ = write!(
        out,
        "  \"execution_metadata\": {{\n    \"cpu_seconds\": {},\n    \"memory_peak_bytes\": {},\n    \
         \"memory_peak_mb\": {},\n    \"wall_time_ms\": {},\n    \"exit_code\": {},\n    \
         \"environment\": \"{}\",\n    \"interpreter\": \"{}\"\n  }},\n",
        fixed2(job.cpu_seconds),
        job.memory_mb * 1024 * 1024,
        job.memory_mb,
        job.wall_time_ms,
        job.exit_code,
        escape(job.spec.environment.as_bytes()),
        escape(job.spec.interpreter.as_bytes()),
    );
    let _ = write!(
        out,
        "  \"job_hash\": \"{}\",\n  \"output_files\": {{\n",
        job.job_hash
    );
    let files: Vec<String> = job
        .output_files
        .iter()
        .map(|(path, meta)| {
            format!(
                "    \"{}\": {{\n      \"size_bytes\": {},\n      \"sha256\": \"{}\",\n      \"type\": \"{}\"\n    }}",
                escape(path.as_bytes()),
                meta.size_bytes,
                meta.sha256,
                meta.file_type
            )
        })
        .collect();
    out.push_str(&files.join(",\n"));
    let _ = write!(
        out,
        "\n  }},\n  \"worker_metadata\": {{\n    \"worker_id\": {},\n    \"signature\": {}\n  }}\n}}",
        json_string_or_null(job.worker_id.as_deref()),
        json_string_or_null(job.signature.as_deref())
    );
    out
}

/// `GET /logs/{id}`: `{"stdout":"...","stderr":"..."}` with sandrun's escaping.
pub fn logs_json(job: &Job) -> String {
    format!(
        "{{\"stdout\":\"{}\",\"stderr\":\"{}\"}}",
        escape(&job.stdout),
        escape(&job.stderr)
    )
}

/// `GET /outputs/{id}`: the files of the job directory kept by its output patterns.
pub fn outputs_json(job: &Job) -> String {
    let entries: Vec<String> = files::walk(&job.dir)
        .into_iter()
        .filter(|(rel, _)| files::is_output(rel, &job.spec.outputs))
        .map(|(rel, path)| {
            let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            let name = escape(rel.as_bytes());
            format!(
                "    {{\n      \"name\": \"{name}\",\n      \"size\": {size},\n      \"size_formatted\": \"{}\",\n      \
                 \"type\": \"{}\",\n      \"mime_type\": \"{}\",\n      \"download_url\": \"/download/{}/{name}\"\n    }}",
                files::format_size(size),
                files::file_type(&rel),
                files::mime_type(&rel),
                job.id
            )
        })
        .collect();
    format!(
        "{{\n  \"job_id\": \"{}\",\n  \"status\": \"{}\",\n  \"total_files\": {},\n  \"files\": [\n{}\n  ]\n}}",
        job.id,
        job.status,
        entries.len(),
        entries.join(",\n")
    )
}
