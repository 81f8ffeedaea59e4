//! How a job is run: for real (no sandbox at all) or simulated.

use std::fs;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::control::Knobs;

/// sandrun keeps at most this much of each output stream.
const MAX_OUTPUT: usize = 10 * 1024 * 1024;
/// How often a running job is checked.
const TICK: Duration = Duration::from_millis(10);
/// Linux clock ticks per second for `/proc` CPU times.
const CLOCK_TICKS: f64 = 100.0;

/// Which runner an emulator uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runner {
    /// Runs `<interpreter> <entrypoint> <args...>` in the job directory, with NO sandbox.
    Real,
    /// Sleeps `job_duration`, prints `ran <entrypoint>`, writes `result.txt` and exits with
    /// `exit_code` (2 when the entrypoint file is missing).
    Simulated,
}

/// What a simulated job prints on one of its output streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Printed {
    /// Exactly this text.
    Text(&'static str),
    /// This many bytes of numbered lines, each with quotes, a backslash, a tab, a control
    /// character and non-ASCII text (which JSON escapes or sandrun's x86 JSON writes byte by
    /// byte), cut at about that size (on a character boundary), a newline last.
    Lines(usize),
}

impl Printed {
    /// The bytes printed.
    pub fn bytes(&self) -> Vec<u8> {
        match *self {
            Printed::Text(text) => text.as_bytes().to_vec(),
            Printed::Lines(size) => {
                let mut out = String::with_capacity(size + 64);
                let mut i = 0u64;
                while out.len() < size {
                    out.push_str(&format!(
                        "line {i:07} \"quoted\" back\\slash\ttab \u{1} h\u{e9}llo \u{2713} \u{1f980} {}\n",
                        "x".repeat((i % 97) as usize)
                    ));
                    i += 1;
                }
                let mut end = size.saturating_sub(1);
                while !out.is_char_boundary(end) {
                    end -= 1;
                }
                out.truncate(end);
                out.push('\n');
                out.into_bytes()
            }
        }
    }
}

/// What a job runs.
pub struct RunRequest<'a> {
    /// The job id.
    pub job_id: &'a str,
    /// The job directory.
    pub dir: &'a Path,
    /// The program.
    pub interpreter: &'a str,
    /// The file it runs.
    pub entrypoint: &'a str,
    /// Further arguments.
    pub args: &'a [String],
    /// Receives output while the job runs (the simulated runner's `live_lines` knob).
    pub live: &'a dyn Fn(&str),
}

/// What a run gave.
#[derive(Clone, Debug, Default)]
pub struct RunOutcome {
    /// Exit code.
    pub exit_code: i32,
    /// Captured standard output.
    pub stdout: Vec<u8>,
    /// Captured standard error.
    pub stderr: Vec<u8>,
    /// CPU seconds used.
    pub cpu_seconds: f64,
    /// Peak memory in bytes.
    pub memory_bytes: u64,
    /// Output patterns the runner adds to the job's own (its generated files).
    pub extra_outputs: Vec<String>,
    /// A listed output to delete once the outputs are hashed (see `Knobs::vanished_output`).
    pub vanished: Option<String>,
    /// Outputs listed though no file of the job holds them (the `listed_outputs` knob).
    pub listed_only: Vec<String>,
}

impl Runner {
    /// Runs a job; gives up early, with any outcome, once `alive` turns false.
    pub fn run(&self, request: &RunRequest<'_>, knobs: &Knobs, alive: &AtomicBool) -> RunOutcome {
        match self {
            Runner::Real => run_real(request, knobs.timeout, alive),
            Runner::Simulated => run_simulated(request, knobs, alive),
        }
    }
}

/// Sleeps up to `duration`, waking early once `alive` turns false.
pub fn sleep_while_alive(duration: Duration, alive: &AtomicBool) {
    let end = Instant::now() + duration;
    while alive.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= end {
            break;
        }
        thread::sleep(TICK.min(end - now));
    }
}

fn missing_entrypoint(request: &RunRequest<'_>) -> Vec<u8> {
    format!(
        "{}: can't open file '{}': [Errno 2] No such file or directory\n",
        request.interpreter,
        request.dir.join(request.entrypoint).display()
    )
    .into_bytes()
}

fn run_simulated(request: &RunRequest<'_>, knobs: &Knobs, alive: &AtomicBool) -> RunOutcome {
    let lines = knobs.stream.live_lines;
    let mut printed = String::new();
    if lines == 0 {
        sleep_while_alive(knobs.job_duration, alive);
    }
    for i in 0..lines {
        sleep_while_alive(knobs.job_duration / lines as u32, alive);
        let mut line = format!("line {i}");
        let bytes = knobs.stream.live_line_bytes;
        if bytes > line.len() + 2 {
            line.push(' ');
            line.extend(std::iter::repeat_n('x', bytes - line.len() - 1));
        }
        line.push('\n');
        (request.live)(&line);
        printed.push_str(&line);
    }
    let _ = fs::write(
        request.dir.join("result.txt"),
        format!("result of {}\n", request.job_id),
    );
    let mut outcome = RunOutcome {
        cpu_seconds: knobs.cpu_seconds,
        extra_outputs: vec!["result.txt".to_string()],
        listed_only: knobs.listed_outputs.clone(),
        ..RunOutcome::default()
    };
    if let Some(name) = &knobs.extra_output {
        let name = name.replace("{job}", request.job_id);
        let _ = fs::write(request.dir.join(&name), b"extra output\n");
        outcome.extra_outputs.push(name);
    }
    if let Some(name) = &knobs.vanished_output {
        let _ = fs::write(request.dir.join(name), b"soon gone\n");
        outcome.extra_outputs.push(name.clone());
        outcome.vanished = Some(name.clone());
    }
    if let Some(name) = &knobs.linked_output {
        let outside = request
            .dir
            .with_file_name(format!("outside-{}", request.job_id));
        let _ = fs::write(&outside, b"outside the job's directory\n");
        let _ = std::os::unix::fs::symlink(&outside, request.dir.join(name));
        outcome.extra_outputs.push(name.clone());
    }
    if request.dir.join(request.entrypoint).is_file() {
        outcome.exit_code = knobs.exit_code;
        outcome.stdout = match knobs.stdout {
            Some(stdout) => stdout.bytes(),
            None => format!("{printed}ran {}\n", request.entrypoint).into_bytes(),
        };
        outcome.stderr = knobs
            .stderr
            .map(|stderr| stderr.bytes())
            .unwrap_or_default();
    } else {
        outcome.exit_code = 2;
        outcome.stderr = missing_entrypoint(request);
    }
    outcome
}

/// Reads a stream to its end on a thread, keeping at most `MAX_OUTPUT` bytes.
fn collect(stream: Option<impl Read + Send + 'static>) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut kept = Vec::new();
        if let Some(mut stream) = stream {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stream.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let room = MAX_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
        kept
    })
}

/// CPU seconds used by this process's waited-for children (`cutime + cstime`).
fn children_cpu_seconds() -> f64 {
    let Ok(stat) = fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some((_, fields)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = fields.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(13) + ticks(14)) / CLOCK_TICKS
}

/// Peak resident memory of a live process (`VmHWM`), in bytes.
fn peak_memory(child: &Child) -> u64 {
    let Ok(status) = fs::read_to_string(format!("/proc/{}/status", child.id())) else {
        return 0;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Kills a child and everything it started (it leads its own process group), then reaps it.
fn kill_group(child: &mut Child) {
    // kill(2) on the group, not the `kill` program (a minimal Debian without procps lacks it).
    if let Ok(group) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) takes plain integers; the group is the child's own, led by it and not
        // yet reaped.
        unsafe {
            libc::kill(-group, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn run_real(request: &RunRequest<'_>, timeout: Duration, alive: &AtomicBool) -> RunOutcome {
    let cpu_before = children_cpu_seconds();
    let spawned = Command::new(request.interpreter)
        .arg(request.entrypoint)
        .args(request.args)
        .current_dir(request.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            return RunOutcome {
                exit_code: 127,
                stderr: format!("cannot run {}: {e}\n", request.interpreter).into_bytes(),
                ..RunOutcome::default()
            }
        }
    };
    let stdout = collect(child.stdout.take());
    let stderr = collect(child.stderr.take());
    let started = Instant::now();
    let mut memory_bytes = 0;
    let mut timed_out = false;
    let exit_code = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.code().unwrap_or(-1),
            Ok(None) => {}
            Err(_) => break -1,
        }
        memory_bytes = memory_bytes.max(peak_memory(&child));
        if started.elapsed() >= timeout || !alive.load(Ordering::SeqCst) {
            timed_out = started.elapsed() >= timeout;
            kill_group(&mut child);
            break 124;
        }
        thread::sleep(TICK);
    };
    let mut stderr = stderr.join().unwrap_or_default();
    if timed_out {
        stderr.extend_from_slice(
            format!("Job timed out after {} seconds\n", timeout.as_secs()).as_bytes(),
        );
    }
    RunOutcome {
        exit_code,
        stdout: stdout.join().unwrap_or_default(),
        stderr,
        cpu_seconds: (children_cpu_seconds() - cpu_before).max(0.0),
        memory_bytes,
        extra_outputs: Vec::new(),
        vanished: None,
        listed_only: Vec::new(),
    }
}
