//! State shared by the threads of an emulator: what outlives a restart, and what does not.

use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use super::control::{lock, Control, Knobs, Recorder};
use super::jobs::JobTable;
use super::keys::WorkerKey;
use super::limits::{Limits, RateLimiter};
use super::runner::Runner;
use super::stream::Broadcaster;

/// What one emulator keeps across stop and restart.
pub struct Shared {
    /// The worker's key.
    pub key: WorkerKey,
    /// Another valid key, for the `wrong_worker_id` knob.
    pub impostor: WorkerKey,
    /// The knobs.
    pub control: Control,
    /// The recording.
    pub recorder: Recorder,
    /// How jobs run.
    pub runner: Runner,
    /// Directory holding every incarnation's job directories.
    pub root: PathBuf,
}

impl Shared {
    /// The key the worker shows under these knobs (none when anonymous).
    pub fn shown_key(&self, knobs: &Knobs) -> Option<&WorkerKey> {
        if knobs.anonymous {
            None
        } else if knobs.wrong_worker_id {
            Some(&self.impostor)
        } else {
            Some(&self.key)
        }
    }
}

/// The rate limits under these knobs.
pub fn limits(knobs: &Knobs) -> Limits {
    Limits {
        max_active: knobs.max_active_per_ip,
        max_per_hour: knobs.max_jobs_per_hour,
        cpu_per_minute: knobs.cpu_seconds_per_minute,
    }
}

/// One run of the worker, from start to stop: like a sandrun process, it loses everything
/// when it stops.
pub struct Incarnation {
    /// False once stopped.
    pub alive: AtomicBool,
    /// Directory of this run's job directories.
    pub root: PathBuf,
    /// The jobs lock, held while a job runs.
    pub jobs: Mutex<JobTable>,
    /// Per-IP usage.
    pub limiter: Mutex<RateLimiter>,
    /// Subscribers of `/stream/{id}`.
    pub broadcaster: Broadcaster,
    connections: Mutex<HashMap<u64, TcpStream>>,
    next_connection: AtomicU64,
    /// The job id counter: like sandrun's, it starts again at each start, so a worker that
    /// restarts within the second of an id it gave out gives that id again.
    job_counter: AtomicU64,
}

impl Incarnation {
    /// A new, running incarnation keeping its jobs under `root`.
    pub fn new(root: PathBuf) -> Incarnation {
        Incarnation {
            alive: AtomicBool::new(true),
            root,
            jobs: Mutex::new(JobTable::default()),
            limiter: Mutex::new(RateLimiter::default()),
            broadcaster: Broadcaster::default(),
            connections: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(0),
            job_counter: AtomicU64::new(0),
        }
    }

    /// The next `job_<unix seconds>_<counter>`, its seconds `id_seconds` when given.
    pub fn next_job_id(&self, id_seconds: Option<u64>) -> String {
        let seconds = id_seconds.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
        let n = self.job_counter.fetch_add(1, Ordering::SeqCst) + 1;
        format!("job_{seconds}_{n}")
    }

    /// Whether it still runs.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Tracks an open connection so that stopping can cut it; `None` once stopped.
    pub fn track(&self, stream: &TcpStream) -> Option<u64> {
        let clone = stream.try_clone().ok()?;
        let mut connections = lock(&self.connections);
        if !self.is_alive() {
            return None;
        }
        let id = self.next_connection.fetch_add(1, Ordering::SeqCst);
        connections.insert(id, clone);
        Some(id)
    }

    /// Forgets a closed connection.
    pub fn untrack(&self, id: u64) {
        lock(&self.connections).remove(&id);
    }

    /// Marks it stopped and cuts every open connection, as a killed process would.
    pub fn kill(&self) {
        let mut connections = lock(&self.connections);
        self.alive.store(false, Ordering::SeqCst);
        for (_, stream) in connections.drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}
