//! The real coordinator binary, started on a free port and watched through its logs.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use tempfile::TempDir;

use super::util::{poll_until, temp_dir};

/// How long the coordinator may take to say it listens.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// What the coordinator logs once it listens, followed by `http://IP:PORT` or `https://IP:PORT`.
const LISTENING: &str = "Listening on ";
/// The disk reserve a test coordinator keeps unless its test sets `--disk-reserve`: 8 MiB. The
/// default (1% of the filesystem) is more than a shared machine's large, nearly full disk may
/// have free, and every submit would be refused (507) for want of room the test never uses.
const TEST_DISK_RESERVE: [&str; 2] = ["--disk-reserve", "8388608"];

/// Writes `<dir>/workers.json` from (worker_id, endpoint, max_concurrent_jobs) entries.
pub fn write_workers_json(dir: &Path, workers: &[(String, String, u32)]) -> PathBuf {
    let entries: Vec<_> = workers
        .iter()
        .map(|(worker_id, endpoint, max)| {
            json!({"worker_id": worker_id, "endpoint": endpoint, "max_concurrent_jobs": max})
        })
        .collect();
    let path = dir.join("workers.json");
    let text = serde_json::to_string_pretty(&entries)
        .unwrap_or_else(|e| panic!("cannot encode workers.json: {e}"));
    fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

/// A new temp dir holding a workers.json of these entries (for `Coordinator::start_in`).
pub fn workers_dir(workers: &[(String, String, u32)]) -> TempDir {
    let dir = temp_dir();
    write_workers_json(dir.path(), workers);
    dir
}

type Log = Arc<Mutex<String>>;

fn snapshot(log: &Log) -> String {
    log.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Copies a child's output, line by line, into the shared log (and the test's stderr).
fn pump(stream: impl Read + Send + 'static, log: Log) {
    thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let text = String::from_utf8_lossy(&line);
            eprint!("[coordinator] {text}");
            log.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push_str(&text);
            line.clear();
        }
    });
}

/// The port in the first `Listening on http://IP:PORT` line of a log.
fn listening_port(log: &str) -> Option<u16> {
    let start = log.find(LISTENING)? + LISTENING.len();
    let rest = &log[start..];
    let rest = rest
        .strip_prefix("http://")
        .or_else(|| rest.strip_prefix("https://"))?;
    // Up to the end of the word, or of the JSON string (`--log-format json`).
    let addr: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"')
        .collect();
    addr.trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse::<SocketAddr>()
        .ok()
        .map(|a| a.port())
}

/// A running coordinator; killed when dropped.
pub struct Coordinator {
    child: Child,
    port: u16,
    log: Log,
    dir: PathBuf,
    _owned_dir: Option<TempDir>,
}

impl Coordinator {
    /// Starts one in a new temp dir holding a workers.json of these entries.
    pub fn start(workers: &[(String, String, u32)], extra_args: &[&str]) -> Coordinator {
        let dir = workers_dir(workers);
        let mut coordinator = Coordinator::start_in(dir.path(), extra_args);
        coordinator._owned_dir = Some(dir);
        coordinator
    }

    /// Starts one with `<dir>/workers.json` and `<dir>/state` (reuse `dir` to restart one).
    pub fn start_in(dir: &Path, extra_args: &[&str]) -> Coordinator {
        Coordinator::try_start_in(dir, extra_args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like `start_in`, but tells why it did not come up (exit status and logs).
    pub fn try_start_in(dir: &Path, extra_args: &[&str]) -> Result<Coordinator, String> {
        Coordinator::try_start_in_env(dir, extra_args, &[])
    }

    /// Like `try_start_in`, with these environment variables set for the process.
    pub fn try_start_in_env(
        dir: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Coordinator, String> {
        Coordinator::try_start_in_with(dir, extra_args, |command| {
            command.envs(env.iter().copied());
        })
    }

    /// Like `try_start_in`, with the command set up by `setup` first (its environment, or what
    /// the process does before it starts).
    pub fn try_start_in_with(
        dir: &Path,
        extra_args: &[&str],
        setup: impl FnOnce(&mut Command),
    ) -> Result<Coordinator, String> {
        Coordinator::try_start_program_in_with(
            Path::new(env!("CARGO_BIN_EXE_trusted-pool")),
            dir,
            extra_args,
            setup,
        )
    }

    /// Like `try_start_in_with`, running `program` (a copy of the binary) instead of the one
    /// cargo built.
    pub fn try_start_program_in_with(
        program: &Path,
        dir: &Path,
        extra_args: &[&str],
        setup: impl FnOnce(&mut Command),
    ) -> Result<Coordinator, String> {
        let mut command = Command::new(program);
        setup(&mut command);
        let mut child = command
            .args(["--port", "0", "--bind", "127.0.0.1", "--workers"])
            .arg(dir.join("workers.json"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(extra_args)
            .args(if extra_args.contains(&TEST_DISK_RESERVE[0]) {
                &[][..]
            } else {
                &TEST_DISK_RESERVE[..]
            })
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the coordinator: {e}"))?;
        let log: Log = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            pump(stderr, Arc::clone(&log));
        }
        if let Some(stdout) = child.stdout.take() {
            pump(stdout, Arc::clone(&log));
        }
        let mut exited = None;
        let port = poll_until(START_DEADLINE, || {
            if let Some(port) = listening_port(&snapshot(&log)) {
                return Some(Some(port));
            }
            match child.try_wait() {
                Ok(Some(status)) => {
                    exited = Some(status);
                    Some(None)
                }
                _ => None,
            }
        })
        .flatten();
        match port {
            Some(port) => Ok(Coordinator {
                child,
                port,
                log,
                dir: dir.to_path_buf(),
                _owned_dir: None,
            }),
            None => {
                let _ = child.kill();
                let status = exited.or_else(|| child.wait().ok());
                thread::sleep(Duration::from_millis(200));
                Err(format!(
                    "the coordinator did not log `{LISTENING}...` (exit: {status:?}); logs:\n{}",
                    snapshot(&log)
                ))
            }
        }
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Waits up to `deadline` for it to exit on its own.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends SIGHUP (re-read files).
    pub fn hangup(&self) {
        self.signal(libc::SIGHUP);
    }

    /// Sends `signal` to it with kill(2) (not the `kill` program, which a minimal Debian
    /// without procps lacks); whether it was sent.
    pub fn signal(&self, signal: libc::c_int) -> bool {
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            return false;
        };
        // SAFETY: kill(2) takes plain integers; the pid is our own child's, not yet reaped.
        unsafe { libc::kill(pid, signal) == 0 }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection to it from the local address `from` (127.0.0.2, ...: another client, or a
    /// proxy), connected within `START_DEADLINE`.
    pub fn connect_from(&self, from: std::net::IpAddr) -> std::net::TcpStream {
        let remote = SocketAddr::from(([127, 0, 0, 1], self.port));
        trusted_pool::worker::bound_socket::connect_from(from, remote, START_DEADLINE)
            .unwrap_or_else(|e| panic!("connect from {from}: {e:?}"))
    }

    /// Its process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The number after `field:` in its `/proc/PID/status` (`Threads`; `VmRSS` in KiB), when
    /// readable.
    pub fn status_number(&self, field: &str) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status_number(&status, field)
    }

    /// Its thread count (`Threads:` of `/proc/PID/status`), when readable.
    pub fn threads(&self) -> Option<usize> {
        usize::try_from(self.status_number("Threads")?).ok()
    }

    /// Its threads: the name (`comm`) and `/proc/PID/task/TID` directory of each one whose
    /// name could be read (a thread may end meanwhile), when the task list is readable.
    fn tasks(&self) -> Option<Vec<(String, PathBuf)>> {
        let tasks = fs::read_dir(format!("/proc/{}/task", self.pid())).ok()?;
        Some(
            tasks
                .filter_map(|task| {
                    let path = task.ok()?.path();
                    let name = fs::read_to_string(path.join("comm")).ok()?;
                    Some((name.trim_end().to_string(), path))
                })
                .collect(),
        )
    }

    /// Its threads' names and nice values (field 19 of `/proc/PID/task/*/stat`), when readable.
    pub fn thread_nice_values(&self) -> Option<Vec<(String, i64)>> {
        Some(
            self.tasks()?
                .into_iter()
                .filter_map(|(name, path)| {
                    let stat = fs::read_to_string(path.join("stat")).ok()?;
                    // The fields after the name (which may hold spaces) start with the state,
                    // field 3; the nice value is field 19.
                    let after_name = &stat[stat.rfind(')')? + 1..];
                    let nice = after_name.split_whitespace().nth(16)?.parse().ok()?;
                    Some((name, nice))
                })
                .collect(),
        )
    }

    /// Its threads' names (`/proc/PID/task/*/comm`), when readable.
    pub fn thread_names(&self) -> Option<Vec<String>> {
        Some(self.tasks()?.into_iter().map(|(name, _)| name).collect())
    }

    /// How often its threads whose names start with `prefix` went to sleep and were woken
    /// (the sum of their `voluntary_ctxt_switches` in `/proc/PID/task/*/status`), when
    /// readable.
    pub fn thread_wakeups(&self, prefix: &str) -> Option<u64> {
        let mut total = 0;
        for (name, path) in self.tasks()? {
            if !name.starts_with(prefix) {
                continue;
            }
            let Ok(status) = fs::read_to_string(path.join("status")) else {
                continue;
            };
            total += status_number(&status, "voluntary_ctxt_switches")?;
        }
        Some(total)
    }

    /// The directory holding workers.json and state/.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Everything it logged so far (stderr and stdout).
    pub fn logs(&self) -> String {
        snapshot(&self.log)
    }

    /// Waits until its logs contain `needle`; false when `deadline` passed first.
    pub fn wait_for_log(&self, needle: &str, deadline: Duration) -> bool {
        poll_until(deadline, || self.logs().contains(needle).then_some(())).is_some()
    }

    /// Its logs once `needle` occurs in them at least `count` times (the log reaches the test
    /// through a pipe, maybe after the answer that followed it); whatever they hold when
    /// `deadline` passed first.
    pub fn logs_once_counted(&self, needle: &str, count: usize, deadline: Duration) -> String {
        poll_until(deadline, || {
            let logs = self.logs();
            (logs.matches(needle).count() >= count).then_some(logs)
        })
        .unwrap_or_else(|| self.logs())
    }

    /// Sends SIGTERM and waits up to `deadline` for it to exit.
    pub fn terminate(&mut self, deadline: Duration) -> Option<ExitStatus> {
        self.signal(libc::SIGTERM);
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Kills it (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The number after `name:` in the text of a `/proc` status file (before any unit).
fn status_number(status: &str, name: &str) -> Option<u64> {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))?;
    line.split_whitespace().next()?.parse().ok()
}

/// Runs `trusted-pool check --state-dir DIR`: its exit code, stdout and stderr.
pub fn check_state_dir(dir: &Path) -> (Option<i32>, String, String) {
    check_state_dir_with(dir, &[])
}

/// `trusted-pool check --state-dir DIR` with `more` arguments after it: its exit code, stdout
/// and stderr.
pub fn check_state_dir_with(dir: &Path, more: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_trusted-pool"))
        .arg("check")
        .arg("--state-dir")
        .arg(dir)
        .args(more)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the check: {e}"));
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr),
    )
}
