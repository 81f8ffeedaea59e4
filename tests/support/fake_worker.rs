//! A sandrun emulator in the test process, with the simulated runner.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::sandrun::{Config, Emulator, Knobs, Recording, Runner, WorkerKey};

/// How often the fake worker's executor looks for work (sandrun: 1 s; faster keeps tests short).
const FAKE_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A fake sandrun worker on 127.0.0.1, running jobs with the simulated runner.
pub struct FakeWorker {
    emulator: Emulator,
}

impl FakeWorker {
    /// Starts one with sandrun's behaviour (limits, lock, deletion), instant jobs and a fast
    /// executor poll.
    pub fn start() -> FakeWorker {
        FakeWorker::start_with(|_| {})
    }

    /// Starts one with changed knobs.
    pub fn start_with(change: impl FnOnce(&mut Knobs)) -> FakeWorker {
        let key = WorkerKey::generate().unwrap_or_else(|e| panic!("cannot generate a key: {e}"));
        FakeWorker::start_with_key(key, change)
    }

    /// Starts one with this key and changed knobs.
    pub fn start_with_key(key: WorkerKey, change: impl FnOnce(&mut Knobs)) -> FakeWorker {
        FakeWorker::start_at(key, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), change)
    }

    /// Starts one listening on `bind` (e.g. `[::1]:0`) with changed knobs.
    pub fn start_on(bind: SocketAddr, change: impl FnOnce(&mut Knobs)) -> FakeWorker {
        let key = WorkerKey::generate().unwrap_or_else(|e| panic!("cannot generate a key: {e}"));
        FakeWorker::start_at(key, bind, change)
    }

    fn start_at(key: WorkerKey, bind: SocketAddr, change: impl FnOnce(&mut Knobs)) -> FakeWorker {
        let mut knobs = Knobs {
            poll_interval: FAKE_POLL_INTERVAL,
            ..Knobs::default()
        };
        change(&mut knobs);
        let config = Config {
            bind,
            runner: Runner::Simulated,
            knobs,
            key,
        };
        let emulator =
            Emulator::start(config).unwrap_or_else(|e| panic!("cannot start a fake worker: {e}"));
        FakeWorker { emulator }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.emulator.endpoint()
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.emulator.addr()
    }

    /// `endpoint()` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.endpoint())
    }

    /// Its worker id.
    pub fn worker_id(&self) -> String {
        self.emulator.worker_id()
    }

    /// Its key as PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        self.emulator.key().to_pem()
    }

    /// Its key.
    pub fn key(&self) -> &WorkerKey {
        self.emulator.key()
    }

    /// The id it shows when `wrong_worker_id` is on.
    pub fn impostor_id(&self) -> String {
        self.emulator.impostor_key().worker_id()
    }

    /// A workers.json entry for it: (worker_id, endpoint, max_concurrent_jobs).
    pub fn entry(&self, max_concurrent_jobs: u32) -> (String, String, u32) {
        (self.worker_id(), self.endpoint(), max_concurrent_jobs)
    }

    /// Changes knobs now, e.g. `worker.set(|k| k.hang = true)`.
    pub fn set(&self, change: impl FnOnce(&mut Knobs)) {
        self.emulator.control().set(change);
    }

    /// The knobs in force.
    pub fn knobs(&self) -> Knobs {
        self.emulator.control().get()
    }

    /// What it recorded so far (kept across restarts).
    pub fn recording(&self) -> Recording {
        self.emulator.recording()
    }

    /// Forgets what it recorded.
    pub fn clear_recording(&self) {
        self.emulator.clear_recording();
    }

    /// Kills it: the port closes, connections are cut, jobs are lost.
    pub fn stop(&self) {
        self.emulator.stop();
    }

    /// Starts it again on the same port with the same key (no jobs, fresh rate limits).
    pub fn restart(&self) {
        self.emulator
            .restart()
            .unwrap_or_else(|e| panic!("cannot restart the fake worker on {}: {e}", self.addr()));
    }

    /// Whether it is serving.
    pub fn is_running(&self) -> bool {
        self.emulator.is_running()
    }
}
