//! The real coordinator binary as a child process: started on a free port, its stderr drained,
//! its memory and CPU read from /proc.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fake::lock;

/// What the coordinator logs once it listens.
const LISTENING: &str = "Listening on ";
/// How long it may take to start listening.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// Process ids of the coordinators running now.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Directories of stopped coordinators, removed only when the benchmark ends: removing tens of
/// thousands of files makes creating files slower for a while on some file systems (ext4 without
/// a journal skips every recently deleted inode), which would charge one run's cleanup to the next.
static SPENT: Mutex<Vec<tempfile::TempDir>> = Mutex::new(Vec::new());

/// Removes the directories of the coordinators stopped so far.
pub fn remove_spent() {
    lock(&SPENT).clear();
}

/// Kills every coordinator this benchmark started and that still runs.
pub fn kill_all() {
    for pid in lock(&CHILDREN).drain(..) {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

/// Environment variable naming another coordinator binary (e.g. a build with symbols, to profile).
pub const BINARY_OVERRIDE: &str = "BENCH_COORDINATOR";

/// The coordinator binary: this build's (`target/release/trusted-pool` under `cargo bench`),
/// unless `BENCH_COORDINATOR` names another.
pub fn binary() -> PathBuf {
    std::env::var_os(BINARY_OVERRIDE).map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_trusted-pool")),
        PathBuf::from,
    )
}

/// This build's coordinator binary, whatever `BENCH_COORDINATOR` says.
pub fn built_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_trusted-pool"))
}

/// A running coordinator; killed when dropped.
pub struct Coordinator {
    child: Child,
    port: u16,
    /// `https` when started with `--tls-cert`.
    scheme: &'static str,
    log: Arc<Mutex<Vec<String>>>,
    dir: Option<tempfile::TempDir>,
}

/// A workers.json entry: (worker_id, endpoint, max_concurrent_jobs).
pub type Entry = (String, String, u32);

/// The inodes of this process's listening TCP sockets on 127.0.0.1, with their ports.
fn listening_port_from_proc(pid: u32) -> Option<u16> {
    let inodes: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let table = fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (local, state, inode) = (f.get(1)?, f.get(3)?, f.get(9)?);
        if *state != "0A" || !inodes.iter().any(|i| i == inode) {
            return None;
        }
        u16::from_str_radix(local.split(':').nth(1)?, 16).ok()
    })
}

fn port_from_log(lines: &[String]) -> Option<u16> {
    lines.iter().find_map(|line| {
        let rest = &line[line.find(LISTENING)? + LISTENING.len()..];
        let rest = rest.split_once("://").map_or(rest, |(_, addr)| addr);
        let addr = rest.split_whitespace().next()?;
        addr.parse::<SocketAddr>().ok().map(|a| a.port())
    })
}

impl Coordinator {
    /// Starts the coordinator on these workers with `--log-level warn` and `extra` flags, and
    /// waits until it answers `/health`. It is killed if the benchmark dies (from the main
    /// thread, which starts every coordinator).
    pub fn start(workers: &[Entry], extra: &[&str]) -> Result<Coordinator, String> {
        Coordinator::start_on(workers, None, extra)
    }

    /// Like `start`, on the state directory `state` when given (else a fresh one).
    pub fn start_on(
        workers: &[Entry],
        state: Option<&Path>,
        extra: &[&str],
    ) -> Result<Coordinator, String> {
        let dir = tempfile::Builder::new()
            .prefix("trusted-pool-bench-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let entries: Vec<Value> = workers
            .iter()
            .map(|(id, endpoint, max)| {
                json!({"worker_id": id, "endpoint": endpoint, "max_concurrent_jobs": max})
            })
            .collect();
        let file = dir.path().join("workers.json");
        fs::write(&file, Value::Array(entries).to_string()).map_err(|e| e.to_string())?;
        let mut command = Command::new(binary());
        // SAFETY: the hook only calls prctl(2), which is async-signal-safe, between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let mut child = command
            .args(["--port", "0", "--bind", "127.0.0.1", "--log-level", "warn"])
            // A fixed 8 MiB disk reserve: the default 1% of a large, nearly full shared disk
            // would refuse every submit (507).
            .args(["--disk-reserve", "8388608"])
            .arg("--workers")
            .arg(&file)
            .arg("--state-dir")
            .arg(state.map_or_else(|| dir.path().join("state"), Path::to_path_buf))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary().display()))?;
        lock(&CHILDREN).push(child.id());
        let log = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let log = Arc::clone(&log);
            thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { return };
                    lock(&log).push(line);
                }
            });
        }
        let mut coordinator = Coordinator {
            child,
            port: 0,
            scheme: if extra.contains(&"--tls-cert") {
                "https"
            } else {
                "http"
            },
            log,
            dir: Some(dir),
        };
        let deadline = Instant::now() + START_DEADLINE;
        coordinator.port = loop {
            if let Some(port) = port_from_log(&coordinator.log_lines()) {
                break port;
            }
            if let Some(port) = listening_port_from_proc(coordinator.pid()) {
                break port;
            }
            if let Ok(Some(status)) = coordinator.child.try_wait() {
                return Err(format!(
                    "the coordinator exited ({status}): {}",
                    coordinator.log_lines().join("\n")
                ));
            }
            if Instant::now() > deadline {
                return Err("the coordinator did not listen in time".to_string());
            }
            thread::sleep(Duration::from_millis(5));
        };
        let agent = crate::load::agent();
        while agent.get(&coordinator.url("/health")).call().is_err() {
            if Instant::now() > deadline {
                return Err("the coordinator does not answer /health".to_string());
            }
            thread::sleep(Duration::from_millis(5));
        }
        Ok(coordinator)
    }

    /// `http[s]://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{path}", self.scheme, self.port)
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lines it logged (at `warn` and above).
    pub fn log_lines(&self) -> Vec<String> {
        lock(&self.log).clone()
    }

    /// `GET /pool`.
    pub fn pool(&self) -> Result<Value, String> {
        let text = crate::load::agent()
            .get(&self.url("/pool"))
            .call()
            .map_err(|e| e.to_string())?
            .into_string()
            .map_err(|e| e.to_string())?;
        serde_json::from_str(&text).map_err(|e| e.to_string())
    }

    /// Polls `/pool` until `done` holds or `deadline` passed; the last answer.
    pub fn wait_pool(&self, deadline: Duration, done: impl Fn(&Value) -> bool) -> Option<Value> {
        let end = Instant::now() + deadline;
        loop {
            let pool = self.pool().ok();
            if pool.as_ref().is_some_and(&done) || Instant::now() > end {
                return pool;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory in bytes (`VmRSS`).
    pub fn rss(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:") * 1024
    }

    /// Anonymous resident memory in bytes (`RssAnon`: the heap and stacks, not the binary's
    /// pages).
    pub fn rss_anon(&self) -> u64 {
        proc_status_kib(self.pid(), "RssAnon:") * 1024
    }

    /// Peak resident memory in bytes (`VmHWM`).
    pub fn hwm(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:") * 1024
    }

    /// CPU time used so far (user + system).
    pub fn cpu(&self) -> Duration {
        cpu_of(self.pid())
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let pid = self.child.id();
        lock(&CHILDREN).retain(|p| *p != pid);
        lock(&SPENT).extend(self.dir.take());
    }
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Clock ticks per second, and whether `getconf CLK_TCK` said so (else 100 is assumed).
pub fn clock_ticks() -> (u64, bool) {
    static TICKS: OnceLock<(u64, bool)> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .map_or((100, false), |t| (t, true))
    })
}

fn cpu_of(pid: u32) -> Duration {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (utime, stime) = (ticks(11), ticks(12));
    let (hz, _) = clock_ticks();
    Duration::from_secs_f64((utime + stime) as f64 / hz as f64)
}

/// Size of a file in bytes, 0 when missing.
pub fn file_size(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}
