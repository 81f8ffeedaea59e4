//! `make bench`: the performance budget of issue 4, measured on loopback.
//!
//! Fast fake sandrun workers run in this process; the real coordinator binary (release build)
//! runs as a child process; 16 keep-alive clients load it in a closed loop. Every throughput and
//! latency figure is also measured with the same clients and bodies straight against one fake
//! worker ("direct"). Prints one table and writes `target/bench/results.json`.

mod coord;
mod fake;
mod fake_quota;
mod fake_stream;
mod load;
mod report;
mod scenarios;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use report::{Budget, Row};
use scenarios::Findings;

/// Environment variable naming the scenarios to run, e.g. `1,4` (all when unset).
const ONLY: &str = "BENCH_SCENARIOS";

/// The whole benchmark is stopped after this long, whatever it is doing.
const TIME_LIMIT: Duration = Duration::from_secs(25 * 60);

fn target_dir() -> PathBuf {
    let binary = coord::built_binary();
    binary
        .parent()
        .and_then(Path::parent)
        .map_or_else(|| PathBuf::from("target"), Path::to_path_buf)
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string())
}

/// Size of the stripped release binary (a stripped copy is made when it is not stripped).
fn binary_size(notes: &mut Vec<String>) -> Row {
    let binary = coord::built_binary();
    let kind = command_output("file", &[&binary.to_string_lossy()]).unwrap_or_default();
    let measured = if kind.contains("not stripped") {
        let copy = target_dir().join("bench").join("trusted-pool.stripped");
        let stripped = fs::copy(&binary, &copy).is_ok()
            && Command::new("strip")
                .arg(&copy)
                .status()
                .is_ok_and(|s| s.success());
        if !stripped {
            notes.push("binary: strip failed; the size is of the unstripped binary".to_string());
        }
        if stripped {
            copy
        } else {
            binary.clone()
        }
    } else {
        binary.clone()
    };
    let size = coord::file_size(&measured) as f64 / (1024.0 * 1024.0);
    notes.push(format!(
        "binary: {} ({} bytes; {})",
        measured.display(),
        coord::file_size(&measured),
        if kind.is_empty() {
            "file(1) unavailable".to_string()
        } else {
            kind.rsplit(", ").next().unwrap_or_default().to_string()
        }
    ));
    Row::pool(
        "8 binary",
        "release binary size, stripped",
        "MiB",
        vec![size],
    )
    .budget(Budget::Under(6.0))
}

/// Whether the `make static` binary exists and runs.
fn static_binary() -> String {
    let path = target_dir()
        .join("x86_64-unknown-linux-musl")
        .join("release")
        .join("trusted-pool");
    if !path.exists() {
        return "not built, run make static".to_string();
    }
    let version = command_output(&path.to_string_lossy(), &["--version"]);
    let kind = command_output("file", &[&path.to_string_lossy()]).unwrap_or_default();
    let linkage = if kind.contains("static") {
        "statically linked"
    } else {
        "linkage unknown"
    };
    match version {
        Some(v) => format!(
            "runs: `{} --version` printed {v:?} ({linkage}, {} bytes)",
            path.display(),
            coord::file_size(&path)
        ),
        None => format!("{} exists but `--version` failed", path.display()),
    }
}

fn main() -> ExitCode {
    thread::spawn(|| {
        thread::sleep(TIME_LIMIT);
        eprintln!("bench: over its time limit of {TIME_LIMIT:?}; stopping");
        coord::kill_all();
        std::process::exit(3);
    });
    let started = Instant::now();
    let binary = coord::binary();
    if !binary.exists() {
        eprintln!(
            "bench: {} is missing; run `cargo build --release --bin trusted-pool`",
            binary.display()
        );
        return ExitCode::FAILURE;
    }
    let release = binary.components().any(|c| c.as_os_str() == "release");
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let nproc = command_output("nproc", &[]).unwrap_or_else(|| "?".to_string());
    let (ticks, asked) = coord::clock_ticks();
    let body = match load::JobBody::new() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("bench: cannot build the job body: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut f = Findings {
        rows: Vec::new(),
        notes: Vec::new(),
    };
    let say = |what: &str| eprintln!("bench: [{:>5.1} s] {what}", started.elapsed().as_secs_f64());
    let selected = std::env::var(ONLY).ok();
    let wanted = |n: &str| {
        selected
            .as_deref()
            .is_none_or(|list| list.split(',').any(|s| s.trim() == n))
    };
    if let Some(list) = &selected {
        f.notes
            .push(format!("only scenarios {list} ran ({ONLY} is set)"));
    }
    let mut direct_submit = Vec::new();
    if wanted("1") {
        say("scenario 1 (submit only) and 7 (CPU per job)");
        match scenarios::submit_only(&body, &mut f) {
            Ok(d) => direct_submit = d,
            Err(e) => f.notes.push(format!("scenario 1 could not run: {e}")),
        }
    }
    if wanted("1") || wanted("7") {
        say("scenario 7 (CPU floor of a job's worker calls)");
        if let Err(e) = scenarios::cpu_floor(&body, &mut f) {
            f.notes
                .push(format!("the CPU floor could not be measured: {e}"));
        }
    }
    type Scenario = fn(&load::JobBody, &mut Findings) -> Result<(), String>;
    let steps: [(&str, &str, Scenario); 7] = [
        ("2", "scenario 2 (full job)", scenarios::full_job),
        (
            "3",
            "scenario 3 (dispatch delay)",
            scenarios::dispatch_delay,
        ),
        (
            "4",
            "scenario 4 (status under a busy worker)",
            scenarios::status_blocked,
        ),
        ("5", "scenario 5 (memory)", scenarios::memory),
        (
            "11",
            "scenario 11 (stalled clients)",
            scenarios::stalled_clients,
        ),
        ("12", "scenario 12 (TLS)", scenarios::tls),
        (
            "13",
            "scenario 13 (source addresses under sandrun's per-client limits)",
            scenarios::source_addresses,
        ),
    ];
    for (n, name, run) in steps {
        if wanted(n) {
            say(name);
            if let Err(e) = run(&body, &mut f) {
                f.notes.push(format!("{name} could not run: {e}"));
            }
        }
    }
    // `9d` runs only the durability half of scenario 9, `9f` only its long flatness run.
    if wanted("9") || wanted("9d") {
        say("scenario 9 (durability: --fsync modes, restart with 100,000 stored jobs)");
        if let Err(e) = scenarios::durability(&body, &mut f) {
            f.notes.push(format!("scenario 9 could not run: {e}"));
        }
    }
    if wanted("9") || wanted("9f") {
        say("scenario 9 (flatness: 50,000 jobs with --retain-jobs 1000)");
        if let Err(e) = scenarios::flat_run(&body, &mut f) {
            f.notes
                .push(format!("scenario 9 flatness could not run: {e}"));
        }
    }
    if wanted("10") {
        say("scenario 10 (end to end, 200 workers, 200 ms jobs, default flags)");
        if let Err(e) = scenarios::e2e_jobs(&body, &mut f) {
            f.notes.push(format!("scenario 10 could not run: {e}"));
        }
    }
    if wanted("6") {
        say("scenario 6 (scale)");
        if let Err(e) = scenarios::scale(&body, &direct_submit, &mut f) {
            f.notes.push(format!("scenario 6 could not run: {e}"));
        }
    }
    let mut notes = std::mem::take(&mut f.notes);
    f.rows.push(binary_size(&mut notes));
    let static_state = static_binary();
    let elapsed = started.elapsed();

    let temp = std::env::temp_dir();
    let state_fs = command_output("stat", &["-f", "-c", "%T", &temp.to_string_lossy()])
        .unwrap_or_else(|| "unknown".to_string());
    let machine = format!(
        "{cores} cores (available_parallelism; nproc says {nproc}), {}, Linux {}; state \
         directories under {} (stat -f: {state_fs})",
        cpu_model(),
        command_output("uname", &["-r"]).unwrap_or_default(),
        temp.display()
    );
    println!("trusted-pool benchmark");
    println!("machine: {machine}");
    println!(
        "figures are noisy: the clients, the coordinator and the fake workers share these cores; \
         compare the ratios to direct, not the absolute numbers, across machines"
    );
    println!(
        "settings: {} clients (closed loop, keep-alive, one ureq agent each), {} runs per scenario \
         (median [min-max]), {:?} warm-up excluded, {:?} windows ({:?} for scenarios 2, 3 and 4); \
         coordinator: {}, --log-level warn, --track-interval {} (small so jobs finish fast), \
         --max-queued-jobs {} (submit floods outrun dispatch: their backlog is queued, not \
         refused), default limits otherwise; fake workers answer at once (jobs take 0 s), speak \
         sandrun's dialect and close every connection, as sandrun does; a request unanswered for {:?} is \
         an error, and errors count in warm-ups too",
        scenarios::CLIENTS,
        scenarios::RUNS,
        scenarios::WARMUP,
        scenarios::WINDOW,
        scenarios::SHORT_WINDOW,
        binary.display(),
        scenarios::TRACK_INTERVAL,
        scenarios::FLOOD_QUEUE,
        load::CLIENT_TIMEOUT,
    );
    if load::closing() {
        println!(
            "WARNING: {} is set: every client request says `Connection: close` (a diagnostic, \
             not the issue's keep-alive clients)",
            load::CLOSE
        );
    }
    if !release {
        println!("WARNING: the coordinator is not a release build; these figures mean nothing");
    }
    println!(
        "CPU: /proc/<pid>/stat utime+stime at {ticks} ticks/s ({}); memory: VmRSS of /proc/<pid>/status",
        if asked {
            "getconf CLK_TCK"
        } else {
            "assumed, getconf failed"
        }
    );
    println!();
    print!("{}", report::table(&f.rows));
    println!();
    println!("static binary (make static): {static_state}");
    for note in &notes {
        println!("note: {note}");
    }
    println!(
        "scenario notes: 1 compares with one fake worker's /submit, and runs again with every worker drained (nothing dispatched: the submit path alone); 2 polls /status every {:?} \
         then downloads result.txt; 3 paces each client {:?} after each submit (free capacity) and \
         times the worker's receipt from the client's answer; 4 blocks one of 3 workers (every \
         request but /health held for 10 s) while 63 existing jobs are polled; 6 compares with \
         scenario 1's direct figure, --health-timeout {}; 10 runs 64 clients against 200 fake \
         workers (2 slots each) whose jobs take 200 ms, with the coordinator at its default flags \
         (--track-interval 1): submit, wait with /status/ID?wait=, download the output; 13 \
         submits 20 jobs per source address to one fake worker that limits each client IP as \
         sandrun does (2 at once, 20 per hour, 10 CPU seconds per minute, one job at a time), \
         every duration divided by {} (a 6 s CPU minute, jobs that burn and report {} CPU s, \
         its /stats `used` in that window and sandrun's `limit` of 10), and counts the jobs per \
         minute at sandrun's scale once each address's first CPU minute is used up",
        scenarios::POLL_PAUSE,
        scenarios::PACE,
        scenarios::HEALTH_TIMEOUT_SECS,
        scenarios::QUOTA_SCALE,
        scenarios::QUOTA_JOB_CPU / scenarios::QUOTA_SCALE,
    );
    let errors: u64 = f.rows.iter().map(|r| r.errors).max().unwrap_or(0);
    if errors > 0 {
        println!("RUNS WITH ERRORS: figures marked with errors are not results");
    }
    println!("total time: {:.0} s", elapsed.as_secs_f64());

    let results = json!({
        "machine": {
            "cores": cores,
            "nproc": nproc,
            "cpu": cpu_model(),
            "clock_ticks_per_second": ticks,
            "clock_ticks_from_getconf": asked,
        },
        "settings": {
            "clients": scenarios::CLIENTS,
            "runs": scenarios::RUNS,
            "warmup_seconds": scenarios::WARMUP.as_secs_f64(),
            "window_seconds": scenarios::WINDOW.as_secs_f64(),
            "short_window_seconds": scenarios::SHORT_WINDOW.as_secs_f64(),
            "track_interval": scenarios::TRACK_INTERVAL,
            "max_queued_jobs": scenarios::FLOOD_QUEUE,
            "log_level": "warn",
            "coordinator": binary.display().to_string(),
            "release_build": release,
            "client_timeout_seconds": load::CLIENT_TIMEOUT.as_secs_f64(),
            "connection_close_diagnostic": load::closing(),
            "state_dir_filesystem": state_fs,
        },
        "rows": report::rows_json(&f.rows),
        "static_binary": static_state,
        "notes": notes,
        "total_seconds": elapsed.as_secs_f64(),
    });
    let out = target_dir().join("bench");
    let file = out.join("results.json");
    let written = fs::create_dir_all(&out).and_then(|_| {
        fs::write(
            &file,
            serde_json::to_string_pretty(&results).unwrap_or_default(),
        )
    });
    match written {
        Ok(()) => println!("results: {}", file.display()),
        Err(e) => eprintln!("bench: cannot write {}: {e}", file.display()),
    }
    coord::remove_spent();
    ExitCode::SUCCESS
}
