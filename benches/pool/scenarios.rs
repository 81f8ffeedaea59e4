//! The scenarios of issue 4, each run `RUNS` times, through the coordinator and direct.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::coord::{Coordinator, Entry};
use crate::fake::{lock, BlackHole, Counts, FastWorker};
use crate::load::{self, closed_loop, quantile_ms, submit, token, BigBody, JobBody, RunStats};
use crate::report::{Budget, Row};

/// Repetitions of every scenario.
pub const RUNS: usize = 3;
/// Load-generator clients.
pub const CLIENTS: usize = 16;
/// Unmeasured warm-up before each window.
pub const WARMUP: Duration = Duration::from_secs(1);
/// Measured window of the submit scenarios.
pub const WINDOW: Duration = Duration::from_secs(5);
/// Measured window of the full-job, dispatch-delay and status scenarios.
pub const SHORT_WINDOW: Duration = Duration::from_secs(3);
/// Pause between two status polls of one client waiting for its job.
pub const POLL_PAUSE: Duration = Duration::from_millis(5);
/// Pause of each client after a submit in the dispatch-delay scenario (keeps capacity free).
pub const PACE: Duration = Duration::from_millis(20);
/// `--track-interval` of every coordinator.
pub const TRACK_INTERVAL: &str = "0.01";
/// `--health-timeout` of the scale scenario.
pub const HEALTH_TIMEOUT_SECS: f64 = 1.0;
/// Slots per worker where capacity must stay free.
const ROOMY: u32 = 1000;
/// Connection-serving threads of each fake worker of a small pool.
const WORKER_THREADS: usize = 4;
/// Longest wait for a pool to settle (drain, health).
const SETTLE: Duration = Duration::from_secs(60);
/// Longest wait of a client for its job to complete.
const JOB_DEADLINE: Duration = Duration::from_secs(20);
/// Size of the big upload.
const BIG_UPLOAD: u64 = 100 * 1024 * 1024;
/// Jobs queued for the memory figure.
const QUEUED_JOBS: u64 = 10_000;
/// Workers of the scale scenario, and how many of them never answer.
const SCALE_WORKERS: usize = 200;
const SCALE_BLACK_HOLES: usize = 20;
/// Slots per worker in the scale scenario.
const SCALE_SLOTS: u32 = 4;
/// `/metrics` scrapes timed in the scale scenario (enough for a p99 that is not the one worst
/// scrape, and for a CPU figure of many 10 ms ticks).
const SCRAPES: usize = 1000;

const MIB: f64 = 1024.0 * 1024.0;

/// The fake workers and the coordinator in front of them (the coordinator stops first).
struct Pool {
    coord: Coordinator,
    workers: Vec<FastWorker>,
}

/// `--max-queued-jobs` of the pools `start_pool` starts: a submit flood outruns dispatch, and its
/// backlog must be queued, not refused (scenario 5 measures what a backlog costs).
pub const FLOOD_QUEUE: &str = "1000000";

fn start_pool(n: usize, max: u32, extra: &[&str]) -> Result<Pool, String> {
    let workers = (0..n)
        .map(|_| FastWorker::start(WORKER_THREADS).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let entries: Vec<Entry> = workers
        .iter()
        .map(|w| (w.worker_id().to_string(), w.endpoint(), max))
        .collect();
    let args: Vec<&str> = ["--max-queued-jobs", FLOOD_QUEUE]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let coord = Coordinator::start(&entries, &args)?;
    coord
        .wait_pool(SETTLE, |p| num(p, "healthy_workers") == n as u64)
        .filter(|p| num(p, "healthy_workers") == n as u64)
        .ok_or("the fake workers did not all turn healthy")?;
    Ok(Pool { coord, workers })
}

fn num(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// Jobs a coordinator has taken so far: those it knows, and those retention forgot (a flood
/// of more than `--retain-jobs` jobs has them forgotten before the run ends).
fn jobs_seen(pool: &Value) -> u64 {
    num(pool, "total_jobs") + num(&pool["store"]["retention"], "forgotten_jobs")
}

/// Nothing queued, in flight or left to collect.
fn drained(p: &Value) -> bool {
    num(p, "queued_jobs") == 0
        && p["workers"].as_array().is_some_and(|ws| {
            ws.iter()
                .all(|w| num(w, "active_jobs") == 0 && num(w, "tracked_jobs") == 0)
        })
}

/// Waits until the pool has drained: the drained `/pool`, or `None` when it did not in time.
fn settle(coord: &Coordinator) -> Option<Value> {
    coord.wait_pool(SETTLE, drained).filter(drained)
}

/// The error noted when a pool did not drain before a window.
const UNSETTLED: &str = "the pool did not drain between warm-up and window";

fn bad_jobs(p: &Value) -> u64 {
    num(&p["jobs_by_status"], "failed") + num(&p["jobs_by_status"], "lost")
}

fn counts(workers: &[FastWorker]) -> Counts {
    let mut all = Counts::default();
    for w in workers {
        all.add(&w.counts());
    }
    all
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Values of one figure over the runs.
#[derive(Default)]
struct Series(Vec<f64>);

impl Series {
    fn push(&mut self, v: f64) {
        self.0.push(v);
    }
}

/// Latency figures of one closed-loop run.
#[derive(Default)]
struct LoadSeries {
    throughput: Series,
    p50: Series,
    p99: Series,
    max: Series,
    errors: u64,
    first_error: Option<String>,
}

impl LoadSeries {
    fn push(&mut self, s: &RunStats) {
        self.throughput.push(s.throughput());
        self.p50.push(s.quantile_ms(0.50));
        self.p99.push(s.quantile_ms(0.99));
        self.max.push(s.quantile_ms(1.0));
        self.add_errors(s.errors, s.first_error.clone());
    }

    fn add_errors(&mut self, n: u64, what: Option<String>) {
        self.errors += n;
        if n > 0 && self.first_error.is_none() {
            self.first_error = what;
        }
    }
}

/// Everything the benchmark found, for the table.
pub struct Findings {
    /// The table rows.
    pub rows: Vec<Row>,
    /// Notes printed under the table (first errors, settings).
    pub notes: Vec<String>,
}

impl Findings {
    fn error_note(&mut self, scenario: &str, s: &LoadSeries) {
        if let Some(e) = &s.first_error {
            self.notes.push(format!(
                "scenario {scenario}: {} errors, first: {e}",
                s.errors
            ));
        }
    }
}

/// A client operation: one submit of the small job to `url`.
fn submit_op<'a>(
    body: &'a JobBody,
    url: &'a str,
    client: usize,
    prefix: &'a str,
) -> impl FnMut(&ureq::Agent) -> Result<(), String> + Send + 'a {
    let content_type = body.content_type();
    let mut seq = 0;
    move |agent| {
        seq += 1;
        let id = submit(
            agent,
            url,
            &content_type,
            &body.with_token(token(client, seq)),
        )?;
        if id.starts_with(prefix) {
            Ok(())
        } else {
            Err(format!("unexpected job id {id}"))
        }
    }
}

/// Scenarios 1 and 7 (submit part): submit-only throughput and latency, queue drain, CPU per job.
/// Returns the direct throughputs, which scenario 6 compares with.
pub fn submit_only(body: &JobBody, f: &mut Findings) -> Result<Vec<f64>, String> {
    let (mut direct, mut pool) = (LoadSeries::default(), LoadSeries::default());
    let (mut alone, mut cpu_alone) = (LoadSeries::default(), Series::default());
    let (mut reached, mut drain, mut cpu_window, mut cpu_full, mut calls) = (
        Series::default(),
        Series::default(),
        Series::default(),
        Series::default(),
        Series::default(),
    );
    for _ in 0..RUNS {
        let worker = FastWorker::start(WORKER_THREADS).map_err(|e| e.to_string())?;
        let url = format!("{}/submit", worker.endpoint());
        let stats = closed_loop(
            CLIENTS,
            WARMUP,
            WINDOW,
            || {},
            |i| submit_op(body, &url, i, "job_"),
        );
        direct.push(&stats);
        let c = worker.counts();
        direct.add_errors(c.dialect_errors, Some("dialect errors".to_string()));
        drop(worker);

        let p = start_pool(3, ROOMY, &["--track-interval", TRACK_INTERVAL])?;
        let url = p.coord.url("/submit");
        let (mut cpu0, mut c0, mut jobs0) = (Duration::ZERO, Counts::default(), 0);
        let mut unsettled = false;
        let stats = closed_loop(
            CLIENTS,
            WARMUP,
            WINDOW,
            || {
                let settled = settle(&p.coord);
                unsettled = settled.is_none();
                jobs0 = settled.as_ref().map_or(0, jobs_seen);
                c0 = counts(&p.workers);
                cpu0 = p.coord.cpu();
            },
            |i| submit_op(body, &url, i, "pool-"),
        );
        let cpu_end = p.coord.cpu();
        let end = Instant::now();
        let at_end = counts(&p.workers).accepted - c0.accepted;
        let settled = settle(&p.coord);
        let drained_after = end.elapsed();
        let cpu_drained = p.coord.cpu();
        pool.push(&stats);
        pool.add_errors(u64::from(unsettled), Some(UNSETTLED.to_string()));
        let jobs = settled.as_ref().map_or(0, jobs_seen).saturating_sub(jobs0);
        let c = counts(&p.workers);
        pool.add_errors(c.dialect_errors, Some("dialect errors".to_string()));
        pool.add_errors(
            c.other - c0.other,
            Some("requests a coordinator must not send".to_string()),
        );
        let job_calls = (c.submit + c.status + c.logs + c.download)
            - (c0.submit + c0.status + c0.logs + c0.download);
        calls.push(job_calls as f64 / jobs.max(1) as f64);
        match &settled {
            Some(s) => pool.add_errors(bad_jobs(s), Some("failed or lost jobs".to_string())),
            None => pool.add_errors(1, Some("the queue did not drain".to_string())),
        }
        reached.push(100.0 * (at_end as f64 / stats.ops.max(1) as f64).min(1.0));
        drain.push(drained_after.as_secs_f64());
        cpu_window.push((cpu_end - cpu0).as_secs_f64() * 1e6 / stats.ops.max(1) as f64);
        cpu_full.push((cpu_drained - cpu0).as_secs_f64() * 1e6 / jobs.max(1) as f64);
        drop(p);
        let (stats, cpu) = submit_path_alone(body)?;
        alone.push(&stats);
        cpu_alone.push(cpu);
    }
    let s = "1 submit";
    f.error_note("1 (workers drained)", &alone);
    f.error_note("1 (direct)", &direct);
    f.error_note("1", &pool);
    let e = pool.errors + direct.errors;
    let direct_throughput = direct.throughput.0.clone();
    let direct_p50 = direct.p50.0.clone();
    f.rows.extend([
        Row::pool(s, "throughput", "jobs/s", pool.throughput.0)
            .direct(direct.throughput.0)
            .budget(Budget::RatioAtLeast(0.25))
            .errors(e),
        Row::pool(s, "latency p50", "ms", pool.p50.0)
            .direct(direct.p50.0)
            .budget(Budget::RatioAtMost(3.0))
            .errors(e),
        Row::pool(s, "latency p99", "ms", pool.p99.0)
            .direct(direct.p99.0)
            .errors(e),
        Row::pool(s, "latency max", "ms", pool.max.0)
            .direct(direct.max.0)
            .errors(e),
        Row::pool(
            s,
            "throughput, submit path alone (workers drained)",
            "jobs/s",
            alone.throughput.0,
        )
        .direct(direct_throughput.clone())
        .errors(alone.errors),
        Row::pool(
            s,
            "latency p50, submit path alone (workers drained)",
            "ms",
            alone.p50.0,
        )
        .direct(direct_p50)
        .errors(alone.errors),
        Row::pool(s, "reached a worker by the window's end", "%", reached.0).errors(e),
        Row::pool(s, "queue drained after the window in", "s", drain.0).errors(e),
        Row::pool(
            s,
            "worker requests per job (all but /health)",
            "req",
            calls.0,
        )
        .errors(e),
    ]);
    f.rows.extend([
        Row::pool(
            "7 cpu",
            "CPU per submitted job (submit..collected)",
            "us",
            cpu_full.0,
        )
        .budget(Budget::Under(50.0))
        .errors(e),
        Row::pool(
            "7 cpu",
            "CPU per submitted job (window only)",
            "us",
            cpu_window.0,
        )
        .errors(e),
        Row::pool(
            "7 cpu",
            "CPU per submit, submit path alone (workers drained)",
            "us",
            cpu_alone.0,
        )
        .errors(alone.errors),
    ]);
    Ok(direct_throughput)
}

/// Scenario 1's submits with every worker drained (`POST /workers/{id}/drain`) once healthy:
/// nothing is dispatched, so the window measures the submit path alone (the answer, the upload,
/// the job store's commit) without the dispatches and collections that share the cores in the
/// full run. Returns the window's figures and the coordinator's CPU per submit.
fn submit_path_alone(body: &JobBody) -> Result<(RunStats, f64), String> {
    let p = start_pool(3, ROOMY, &["--track-interval", TRACK_INTERVAL])?;
    let agent = load::agent();
    for w in &p.workers {
        let id = w.worker_id().replace('+', "-").replace('/', "_");
        agent
            .post(&p.coord.url(&format!("/workers/{id}/drain")))
            .call()
            .map_err(|e| format!("drain {id}: {e}"))?;
    }
    let url = p.coord.url("/submit");
    let mut cpu0 = Duration::ZERO;
    let stats = closed_loop(
        CLIENTS,
        WARMUP,
        WINDOW,
        || cpu0 = p.coord.cpu(),
        |i| submit_op(body, &url, i, "pool-"),
    );
    let cpu = (p.coord.cpu() - cpu0).as_secs_f64() * 1e6 / stats.ops.max(1) as f64;
    Ok((stats, cpu))
}

/// Jobs the CPU floor is measured over, per run.
const FLOOR_JOBS: u64 = 2000;

/// CPU seconds this thread has used (user and system, including the network work the kernel
/// does in its system calls).
fn thread_cpu() -> Duration {
    // SAFETY: getrusage fills the zeroed struct it is given; RUSAGE_THREAD is this thread.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        usage
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// Scenario 7's floor: the CPU a bare client thread spends on the worker calls one job needs
/// (submit, status, logs, one download), each on a fresh connection as sandrun requires. No
/// coordinator can spend less per job than this.
pub fn cpu_floor(body: &JobBody, f: &mut Findings) -> Result<(), String> {
    let mut floor = Series::default();
    let content_type = body.content_type();
    let agent = load::agent();
    for _ in 0..RUNS {
        let worker = FastWorker::start(WORKER_THREADS).map_err(|e| e.to_string())?;
        let base = worker.endpoint();
        let one_job = |seq: u64| -> Result<(), String> {
            let rid = submit(
                &agent,
                &format!("{base}/submit"),
                &content_type,
                &body.with_token(token(CLIENTS, seq)),
            )?;
            load::get_json(&agent, &format!("{base}/status/{rid}"))?;
            load::get_json(&agent, &format!("{base}/logs/{rid}"))?;
            check_result(&load::get_bytes(
                &agent,
                &format!("{base}/download/{rid}/result.txt"),
            )?)
        };
        for seq in 0..FLOOR_JOBS / 10 {
            one_job(seq)?;
        }
        let before = thread_cpu();
        for seq in 0..FLOOR_JOBS {
            one_job(FLOOR_JOBS + seq)?;
        }
        floor.push((thread_cpu() - before).as_secs_f64() * 1e6 / FLOOR_JOBS as f64);
    }
    f.rows.push(Row::pool(
        "7 cpu",
        "floor: a bare client's CPU for one job's 4 worker calls",
        "us",
        floor.0,
    ));
    Ok(())
}

/// Waits for a job to reach `done` by polling `url`; `field` names the status in the answer.
fn wait_done(
    agent: &ureq::Agent,
    url: &str,
    field: &str,
    done: &str,
    bad: &[&str],
) -> Result<(), String> {
    let deadline = Instant::now() + JOB_DEADLINE;
    loop {
        let v = load::get_json(agent, url)?;
        let status = v.get(field).and_then(Value::as_str).unwrap_or_default();
        if status == done {
            return Ok(());
        }
        if bad.contains(&status) || Instant::now() > deadline {
            return Err(format!("job {url} is {status}: {v}"));
        }
        thread::sleep(POLL_PAUSE);
    }
}

fn check_result(bytes: &[u8]) -> Result<(), String> {
    if bytes.starts_with(b"result of job_") {
        Ok(())
    } else {
        Err(format!(
            "unexpected output: {:?}",
            String::from_utf8_lossy(bytes)
        ))
    }
}

/// Scenarios 2 and 7 (full-job part): submit, poll until completed, download one output.
pub fn full_job(body: &JobBody, f: &mut Findings) -> Result<(), String> {
    let (mut direct, mut pool, mut cpu) = (
        LoadSeries::default(),
        LoadSeries::default(),
        Series::default(),
    );
    let content_type = body.content_type();
    for _ in 0..RUNS {
        let worker = FastWorker::start(WORKER_THREADS).map_err(|e| e.to_string())?;
        let base = worker.endpoint();
        let stats = closed_loop(
            CLIENTS,
            WARMUP,
            SHORT_WINDOW,
            || {},
            |i| {
                let (base, content_type) = (&base, &content_type);
                let mut seq = 0;
                move |agent: &ureq::Agent| {
                    seq += 1;
                    let body = body.with_token(token(i, seq));
                    let rid = submit(agent, &format!("{base}/submit"), content_type, &body)?;
                    wait_done(
                        agent,
                        &format!("{base}/status/{rid}"),
                        "status",
                        "completed",
                        &["failed"],
                    )?;
                    check_result(&load::get_bytes(
                        agent,
                        &format!("{base}/download/{rid}/result.txt"),
                    )?)
                }
            },
        );
        direct.push(&stats);
        drop(worker);

        let p = start_pool(3, ROOMY, &["--track-interval", TRACK_INTERVAL])?;
        let mut cpu0 = Duration::ZERO;
        let mut unsettled = false;
        let stats = closed_loop(
            CLIENTS,
            WARMUP,
            SHORT_WINDOW,
            || {
                unsettled = settle(&p.coord).is_none();
                cpu0 = p.coord.cpu();
            },
            |i| {
                let (coord, content_type) = (&p.coord, &content_type);
                let mut seq = 0;
                move |agent: &ureq::Agent| {
                    seq += 1;
                    let body = body.with_token(token(i, seq));
                    let id = submit(agent, &coord.url("/submit"), content_type, &body)?;
                    wait_done(
                        agent,
                        &coord.url(&format!("/status/{id}")),
                        "pool_status",
                        "completed",
                        &["failed", "lost"],
                    )?;
                    check_result(&load::get_bytes(
                        agent,
                        &coord.url(&format!("/outputs/{id}/result.txt")),
                    )?)
                }
            },
        );
        cpu.push((p.coord.cpu() - cpu0).as_secs_f64() * 1e6 / stats.ops.max(1) as f64);
        pool.push(&stats);
        pool.add_errors(u64::from(unsettled), Some(UNSETTLED.to_string()));
        pool.add_errors(
            counts(&p.workers).dialect_errors,
            Some("dialect errors".to_string()),
        );
    }
    let s = "2 full job";
    f.error_note("2 (direct)", &direct);
    f.error_note("2", &pool);
    let e = pool.errors + direct.errors;
    f.rows.extend([
        Row::pool(s, "throughput", "jobs/s", pool.throughput.0)
            .direct(direct.throughput.0)
            .budget(Budget::RatioAtLeast(0.15))
            .errors(e),
        Row::pool(s, "end-to-end p50", "ms", pool.p50.0)
            .direct(direct.p50.0)
            .errors(e),
        Row::pool(s, "end-to-end p99", "ms", pool.p99.0)
            .direct(direct.p99.0)
            .errors(e),
        Row::pool("7 cpu", "CPU per completed full job", "us", cpu.0).errors(e),
    ]);
    Ok(())
}

/// Scenario 3: from a submit's answer to the worker having the job, with free capacity.
pub fn dispatch_delay(body: &JobBody, f: &mut Findings) -> Result<(), String> {
    let (mut p50, mut p99, mut max, mut rate, mut early) = (
        Series::default(),
        Series::default(),
        Series::default(),
        Series::default(),
        Series::default(),
    );
    let mut errors = 0;
    let mut first_error = None;
    for _ in 0..RUNS {
        let p = start_pool(3, ROOMY, &["--track-interval", TRACK_INTERVAL])?;
        let url = p.coord.url("/submit");
        let answered: Mutex<HashMap<u64, Instant>> = Mutex::new(HashMap::new());
        let mut start = Instant::now();
        let mut unsettled = false;
        let stats = closed_loop(
            CLIENTS,
            WARMUP,
            SHORT_WINDOW,
            || {
                unsettled = settle(&p.coord).is_none();
                start = Instant::now();
            },
            |i| {
                let (url, answered) = (&url, &answered);
                let content_type = body.content_type();
                let mut seq = 0;
                move |agent: &ureq::Agent| {
                    seq += 1;
                    let t = token(i, seq);
                    submit(agent, url, &content_type, &body.with_token(t))?;
                    lock(answered).insert(t, Instant::now());
                    thread::sleep(PACE);
                    Ok(())
                }
            },
        );
        let end = start + SHORT_WINDOW;
        let answered = answered.into_inner().unwrap_or_default();
        let wanted: HashMap<u64, Instant> = answered
            .into_iter()
            .filter(|(_, at)| *at >= start && *at <= end)
            .collect();
        let settle_end = Instant::now() + SETTLE;
        let received = loop {
            let received: HashMap<u64, Instant> =
                p.workers.iter().flat_map(FastWorker::tokens).collect();
            if wanted.keys().all(|t| received.contains_key(t)) || Instant::now() > settle_end {
                break received;
            }
            thread::sleep(Duration::from_millis(20));
        };
        let mut delays = Vec::with_capacity(wanted.len());
        let (mut before_answer, mut missing) = (0u64, 0u64);
        for (t, answered_at) in &wanted {
            match received.get(t) {
                Some(at) => {
                    if at < answered_at {
                        before_answer += 1;
                    }
                    delays.push(at.saturating_duration_since(*answered_at).as_nanos() as u64);
                }
                None => missing += 1,
            }
        }
        if missing > 0 {
            errors += missing;
            first_error
                .get_or_insert_with(|| format!("{missing} answered jobs never reached a worker"));
        }
        if unsettled {
            errors += 1;
            first_error.get_or_insert_with(|| UNSETTLED.to_string());
        }
        errors += stats.errors;
        if stats.errors > 0 {
            first_error = first_error.or(stats.first_error.clone());
        }
        delays.sort_unstable();
        p50.push(quantile_ms(&delays, 0.5));
        p99.push(quantile_ms(&delays, 0.99));
        max.push(quantile_ms(&delays, 1.0));
        rate.push(stats.throughput());
        early.push(100.0 * before_answer as f64 / wanted.len().max(1) as f64);
    }
    if let Some(e) = first_error {
        f.notes
            .push(format!("scenario 3: {errors} errors, first: {e}"));
    }
    let s = "3 dispatch";
    f.rows.extend([
        Row::pool(s, "delay p50", "ms", p50.0)
            .budget(Budget::Under(1.0))
            .errors(errors),
        Row::pool(s, "delay p99", "ms", p99.0)
            .budget(Budget::Under(10.0))
            .errors(errors),
        Row::pool(s, "delay max", "ms", max.0).errors(errors),
        Row::pool(
            s,
            "on the worker before the client had the answer",
            "%",
            early.0,
        )
        .errors(errors),
        Row::pool(s, "offered submits (paced)", "jobs/s", rate.0).errors(errors),
    ]);
    Ok(())
}

fn status_op<'a>(
    ids: &'a [String],
    url_of: impl Fn(&str) -> String + Send + 'a,
    field: &'a str,
    client: usize,
) -> impl FnMut(&ureq::Agent) -> Result<(), String> + Send + 'a {
    let mut n = client * 7;
    move |agent| {
        n += 1;
        let v = load::get_json(agent, &url_of(&ids[n % ids.len()]))?;
        if v.get(field).and_then(Value::as_str).is_some() {
            Ok(())
        } else {
            Err(format!("no {field} in {v}"))
        }
    }
}

/// One short closed-loop window of `GET /status/{id}` on the coordinator over `ids`.
fn pool_status_window(coord: &Coordinator, ids: &[String]) -> RunStats {
    closed_loop(
        CLIENTS,
        Duration::from_millis(500),
        SHORT_WINDOW,
        || {},
        |i| {
            status_op(
                ids,
                |id| coord.url(&format!("/status/{id}")),
                "pool_status",
                i,
            )
        },
    )
}

/// Scenario 4: `/status` latency with idle workers, then with one worker blocking every request.
pub fn status_blocked(body: &JobBody, f: &mut Findings) -> Result<(), String> {
    let (mut direct, mut idle, mut blocked) = (
        LoadSeries::default(),
        LoadSeries::default(),
        LoadSeries::default(),
    );
    let mut held = Series::default();
    let content_type = body.content_type();
    let setup = load::agent();
    for _ in 0..RUNS {
        let worker = FastWorker::start(WORKER_THREADS).map_err(|e| e.to_string())?;
        let base = worker.endpoint();
        let rids = (0..63)
            .map(|n| {
                submit(
                    &setup,
                    &format!("{base}/submit"),
                    &content_type,
                    &body.with_token(token(99, n)),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let stats = closed_loop(
            CLIENTS,
            Duration::from_millis(500),
            SHORT_WINDOW,
            || {},
            |i| status_op(&rids, |id| format!("{base}/status/{id}"), "status", i),
        );
        direct.push(&stats);
        drop(worker);

        let p = start_pool(3, ROOMY, &["--track-interval", TRACK_INTERVAL])?;
        let submit_url = p.coord.url("/submit");
        let mut ids = Vec::new();
        for n in 0..48 {
            ids.push(submit(
                &setup,
                &submit_url,
                &content_type,
                &body.with_token(token(98, n)),
            )?);
        }
        settle(&p.coord).ok_or("the first 48 jobs did not complete")?;
        for w in &p.workers {
            w.set_job_time(Duration::from_secs(120));
        }
        for n in 0..15 {
            ids.push(submit(
                &setup,
                &submit_url,
                &content_type,
                &body.with_token(token(97, n)),
            )?);
        }
        p.coord
            .wait_pool(SETTLE, |v| num(&v["jobs_by_status"], "running") == 15)
            .filter(|v| num(&v["jobs_by_status"], "running") == 15)
            .ok_or("the long jobs did not all run")?;
        let coord = &p.coord;
        let stats = pool_status_window(coord, &ids);
        idle.push(&stats);

        let busy = &p.workers[1];
        let before = busy.counts();
        busy.block_until(Instant::now() + Duration::from_secs(10));
        for n in 0..6 {
            submit(
                &setup,
                &submit_url,
                &content_type,
                &body.with_token(token(96, n)),
            )?;
        }
        thread::sleep(Duration::from_millis(100));
        let stats = pool_status_window(coord, &ids);
        blocked.push(&stats);
        let after = busy.counts();
        let n_held = (after.status + after.submit) - (before.status + before.submit);
        held.push(n_held as f64);
        if n_held == 0 {
            blocked.add_errors(
                1,
                Some("the blocked worker received nothing to hold".to_string()),
            );
        }
    }
    let s = "4 status";
    f.error_note("4 (direct)", &direct);
    f.error_note("4 (idle workers)", &idle);
    f.error_note("4 (blocked worker)", &blocked);
    let e = direct.errors + idle.errors + blocked.errors;
    f.rows.extend([
        Row::pool(s, "p99, one worker blocked", "ms", blocked.p99.0)
            .direct(direct.p99.0.clone())
            .budget(Budget::Under(2.0))
            .errors(e),
        Row::pool(s, "p50, one worker blocked", "ms", blocked.p50.0)
            .direct(direct.p50.0)
            .errors(e),
        Row::pool(s, "p99, idle workers", "ms", idle.p99.0)
            .direct(direct.p99.0)
            .errors(e),
        Row::pool(
            s,
            "throughput, one worker blocked",
            "req/s",
            blocked.throughput.0,
        )
        .direct(direct.throughput.0)
        .errors(e),
        Row::pool(s, "throughput, idle workers", "req/s", idle.throughput.0).errors(e),
        Row::pool(s, "requests held by the blocked worker", "req", held.0).errors(e),
    ]);
    Ok(())
}

/// Uploads one streamed body of `BIG_UPLOAD` bytes with an explicit `Content-Length`.
fn big_upload(coord: &Coordinator) -> Result<(), String> {
    let big = BigBody::new(BIG_UPLOAD);
    let total = big.total().to_string();
    let text = load::agent()
        .post(&coord.url("/submit"))
        .set("Content-Type", &load::content_type())
        .set("Content-Length", &total)
        .send(big)
        .map_err(|e| e.to_string())?
        .into_string()
        .map_err(|e| e.to_string())?;
    if text.contains("\"job_id\"") {
        Ok(())
    } else {
        Err(format!("unexpected answer: {text}"))
    }
}

/// Scenario 5: resident memory idle, during a 100 MiB upload, after 10,000 queued jobs.
pub fn memory(body: &JobBody, f: &mut Findings) -> Result<(), String> {
    let (mut idle, mut upload_peak, mut upload_rate, mut queued, mut queue_rate) = (
        Series::default(),
        Series::default(),
        Series::default(),
        Series::default(),
        Series::default(),
    );
    let mut errors = 0;
    let mut notes = Vec::new();
    for _ in 0..RUNS {
        let p = start_pool(3, ROOMY, &["--track-interval", TRACK_INTERVAL])?;
        thread::sleep(Duration::from_secs(1));
        idle.push(p.coord.rss() as f64 / MIB);

        let baseline = p.coord.rss();
        let hwm_before = p.coord.hwm();
        let bytes0 = counts(&p.workers).body_bytes;
        let stop = AtomicBool::new(false);
        let peak = AtomicU64::new(baseline);
        let started = Instant::now();
        let outcome = thread::scope(|scope| {
            scope.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    peak.fetch_max(p.coord.rss(), Ordering::SeqCst);
                    thread::sleep(Duration::from_millis(2));
                }
            });
            let answer = big_upload(&p.coord);
            let uploaded = started.elapsed();
            let delivered = p.coord.wait_pool(SETTLE, |v| {
                drained(v) && counts(&p.workers).body_bytes >= bytes0 + BIG_UPLOAD
            });
            stop.store(true, Ordering::SeqCst);
            (answer, uploaded, delivered)
        });
        let (answer, uploaded, delivered) = outcome;
        if let Err(e) = &answer {
            errors += 1;
            notes.push(format!("scenario 5: the 100 MiB upload failed: {e}"));
        }
        if !delivered.as_ref().is_some_and(drained) {
            errors += 1;
            notes.push("scenario 5: the 100 MiB job did not reach its worker".to_string());
        }
        let hwm_after = p.coord.hwm();
        let mut highest = peak.load(Ordering::SeqCst);
        if hwm_after > hwm_before {
            highest = highest.max(hwm_after);
        }
        upload_peak.push(highest.saturating_sub(baseline) as f64 / MIB);
        upload_rate.push(BIG_UPLOAD as f64 / MIB / uploaded.as_secs_f64());

        for w in &p.workers {
            w.set_hourly_limit(true);
        }
        let url = p.coord.url("/submit");
        let content_type = body.content_type();
        let failures = AtomicU64::new(0);
        let per_client = QUEUED_JOBS / CLIENTS as u64;
        let started = Instant::now();
        thread::scope(|scope| {
            for i in 0..CLIENTS {
                let (url, content_type, failures) = (&url, &content_type, &failures);
                scope.spawn(move || {
                    let agent = load::agent();
                    for n in 0..per_client {
                        let body = body.with_token(token(i, n));
                        if submit(&agent, url, content_type, &body).is_err() {
                            failures.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        queue_rate.push((per_client * CLIENTS as u64) as f64 / started.elapsed().as_secs_f64());
        errors += failures.load(Ordering::SeqCst);
        let full = p
            .coord
            .wait_pool(SETTLE, |v| num(v, "queued_jobs") >= QUEUED_JOBS);
        if full.is_none_or(|v| num(&v, "queued_jobs") < QUEUED_JOBS) {
            errors += 1;
            notes.push("scenario 5: the 10,000 jobs did not all queue".to_string());
        }
        queued.push(p.coord.rss() as f64 / MIB);
    }
    f.notes.extend(notes);
    let s = "5 memory";
    f.rows.extend([
        Row::pool(s, "RSS idle, 3 workers", "MiB", idle.0)
            .budget(Budget::Under(8.0))
            .errors(errors),
        Row::pool(s, "RSS after 10,000 queued jobs", "MiB", queued.0)
            .budget(Budget::Under(24.0))
            .errors(errors),
        Row::pool(
            s,
            "RSS increase during a 100 MiB upload",
            "MiB",
            upload_peak.0,
        )
        .budget(Budget::Under(8.0))
        .errors(errors),
        Row::pool(s, "100 MiB upload rate", "MiB/s", upload_rate.0).errors(errors),
        Row::pool(s, "submits into a throttled pool", "jobs/s", queue_rate.0).errors(errors),
    ]);
    Ok(())
}

/// Times `SCRAPES` sequential `GET /metrics`: (p50 ms, p99 ms, coordinator CPU us per scrape).
fn scrape_cost(coord: &Coordinator) -> Result<(f64, f64, f64), String> {
    let agent = load::agent();
    let url = coord.url("/metrics");
    load::get_bytes(&agent, &url)?;
    let cpu0 = coord.cpu();
    let mut times = Vec::with_capacity(SCRAPES);
    for _ in 0..SCRAPES {
        let started = Instant::now();
        let text = load::get_bytes(&agent, &url)?;
        times.push(started.elapsed().as_nanos() as u64);
        if !text.starts_with(b"# HELP") {
            return Err("/metrics did not answer the text format".to_string());
        }
    }
    let cpu = (coord.cpu() - cpu0).as_secs_f64() * 1e6 / SCRAPES as f64;
    times.sort_unstable();
    Ok((quantile_ms(&times, 0.5), quantile_ms(&times, 0.99), cpu))
}

/// Scenario 6: 200 workers, 20 of them black holes: one health round, submit throughput, and
/// the cost of a `/metrics` scrape.
pub fn scale(body: &JobBody, direct_submit: &[f64], f: &mut Findings) -> Result<(), String> {
    let (mut round, mut tput, mut p50, mut cpu) = (
        Series::default(),
        Series::default(),
        Series::default(),
        Series::default(),
    );
    let (mut scrape_p50, mut scrape_p99, mut scrape_cpu) =
        (Series::default(), Series::default(), Series::default());
    let mut load_errors = LoadSeries::default();
    let timeout = HEALTH_TIMEOUT_SECS.to_string();
    for _ in 0..RUNS {
        let workers = (0..SCALE_WORKERS - SCALE_BLACK_HOLES)
            .map(|_| FastWorker::start(1).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let holes = (0..SCALE_BLACK_HOLES)
            .map(|_| BlackHole::start().map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let every = SCALE_WORKERS / SCALE_BLACK_HOLES;
        let mut good = workers.iter();
        let mut bad = holes.iter();
        let entries: Vec<Entry> = (0..SCALE_WORKERS)
            .filter_map(|i| {
                if i % every == every - 1 {
                    let h = bad.next()?;
                    Some((crate::fake::new_worker_id(), h.endpoint(), SCALE_SLOTS))
                } else {
                    let w = good.next()?;
                    Some((w.worker_id().to_string(), w.endpoint(), SCALE_SLOTS))
                }
            })
            .collect();
        let coord = Coordinator::start(
            &entries,
            &[
                "--health-timeout",
                &timeout,
                "--track-interval",
                TRACK_INTERVAL,
            ],
        )?;
        let checked = |v: &Value| {
            v["workers"].as_array().is_some_and(|ws| {
                ws.len() == SCALE_WORKERS && ws.iter().all(|w| w["last_health_check"].is_f64())
            })
        };
        let pool = coord
            .wait_pool(SETTLE, checked)
            .filter(checked)
            .ok_or("the first health round did not finish")?;
        let first_probe = workers
            .iter()
            .filter_map(FastWorker::first_health)
            .chain(holes.iter().filter_map(BlackHole::first_connection))
            .map(unix)
            .fold(f64::INFINITY, f64::min);
        let round_end = pool["workers"]
            .as_array()
            .map(|ws| {
                ws.iter()
                    .filter_map(|w| w["last_health_check"].as_f64())
                    .fold(f64::NEG_INFINITY, f64::max)
            })
            .unwrap_or(f64::NAN);
        round.push(round_end - first_probe);
        let healthy = num(&pool, "healthy_workers");
        if healthy != (SCALE_WORKERS - SCALE_BLACK_HOLES) as u64 {
            load_errors.add_errors(
                1,
                Some(format!("{healthy} healthy workers after the first round")),
            );
        }
        let url = coord.url("/submit");
        let mut cpu0 = Duration::ZERO;
        let mut jobs0 = 0;
        let mut unsettled = false;
        let stats = closed_loop(
            CLIENTS,
            WARMUP,
            WINDOW,
            || {
                let settled = settle(&coord);
                unsettled = settled.is_none();
                jobs0 = settled.as_ref().map_or(0, jobs_seen);
                cpu0 = coord.cpu();
            },
            |i| submit_op(body, &url, i, "pool-"),
        );
        let settled = settle(&coord);
        let jobs = settled.as_ref().map_or(0, jobs_seen).saturating_sub(jobs0);
        cpu.push((coord.cpu() - cpu0).as_secs_f64() * 1e6 / jobs.max(1) as f64);
        load_errors.add_errors(u64::from(unsettled), Some(UNSETTLED.to_string()));
        match &settled {
            Some(s) => load_errors.add_errors(bad_jobs(s), Some("failed or lost jobs".to_string())),
            None => load_errors.add_errors(1, Some("the queue did not drain".to_string())),
        }
        tput.push(stats.throughput());
        p50.push(stats.quantile_ms(0.5));
        load_errors.add_errors(stats.errors, stats.first_error.clone());
        match scrape_cost(&coord) {
            Ok((p50, p99, cpu)) => {
                scrape_p50.push(p50);
                scrape_p99.push(p99);
                scrape_cpu.push(cpu);
            }
            Err(e) => load_errors.add_errors(1, Some(format!("/metrics: {e}"))),
        }
        drop(coord);
    }
    f.error_note("6", &load_errors);
    let s = "6 scale";
    let e = load_errors.errors;
    f.rows.extend([
        Row::pool(s, "health round, 200 workers, 20 black holes", "s", round.0)
            .budget(Budget::AtMost(1.5 * HEALTH_TIMEOUT_SECS)),
        Row::pool(s, "submit throughput, 200 workers", "jobs/s", tput.0)
            .direct(direct_submit.to_vec())
            .errors(e),
        Row::pool(s, "submit latency p50, 200 workers", "ms", p50.0).errors(e),
        Row::pool(s, "CPU per submitted job, 200 workers", "us", cpu.0).errors(e),
        Row::pool(s, "/metrics scrape p50, 200 workers", "ms", scrape_p50.0)
            .budget(Budget::Under(0.5))
            .errors(e),
        Row::pool(s, "/metrics scrape p99, 200 workers", "ms", scrape_p99.0)
            .budget(Budget::Under(1.0))
            .errors(e),
        Row::pool(
            s,
            "CPU per /metrics scrape, 200 workers",
            "us",
            scrape_cpu.0,
        )
        .errors(e),
    ]);
    Ok(())
}

/// Finished jobs in the store the restart is measured with.
const STORED_JOBS: u64 = 100_000;

/// Writes `STORED_JOBS` finished jobs into a job store in `dir`, as the coordinator records them.
fn fill_store(dir: &std::path::Path) -> Result<(), String> {
    use trusted_pool::base::config::FsyncMode;
    use trusted_pool::base::job::{Collection, Job, PoolStatus, Span, StoredResults};
    use trusted_pool::store::handoff::DEFERRAL;
    use trusted_pool::store::jobs_db::{JobStore, Record, Retention};
    use trusted_pool::store::segments::Segments;
    let retention = Retention {
        jobs: u64::MAX,
        for_secs: 1e12,
        bytes: 0,
        results_dir: dir.join("results"),
        segments: std::sync::Arc::new(
            Segments::open(
                dir.join("results"),
                "bench".to_string(),
                false,
                std::sync::Arc::default(),
            )
            .map_err(|e| e.to_string())?,
        ),
    };
    let (store, _) = JobStore::open(dir, FsyncMode::Off, retention).map_err(|e| e.to_string())?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let status = serde_json::json!({"job_id": "job_1_1", "status": "completed",
        "output_files": {"result.txt": {"size_bytes": 30, "sha256": "0".repeat(64), "type": "file"}}});
    for n in 0..STORED_JOBS {
        let mut job = Job::new(format!("pool-{n:032x}"), Vec::new(), None, now);
        job.status = PoolStatus::Completed;
        job.worker_id = Some("He7P3kzyklbzEfhMTtht10tA8QYEU3JK+dKgggIJ1IY=".to_string());
        job.remote_job_id = Some(format!("job_1_{n}"));
        job.worker_status = Some(status.clone());
        job.completed_at = Some(now);
        job.collection = Collection::Collected(Box::new(StoredResults {
            segment: "none".to_string(),
            outputs: vec![(
                "result.txt".to_string(),
                Span {
                    offset: 0,
                    size: 30,
                },
            )],
            logs: Span {
                offset: 30,
                size: 40,
            },
            in_row: false,
            left_on_worker: Vec::new(),
            served_sha256: Vec::new(),
            row_bytes: None,
        }));
        let record = Record {
            job: Box::new(job),
            insert: true,
            upload: None,
            done: None,
            sync_first: None,
            retry: false,
            within: DEFERRAL,
        };
        if n + 1 == STORED_JOBS {
            store.send_and_wait(record).map_err(|e| e.to_string())?;
        } else {
            store.send(record);
        }
    }
    store.close();
    Ok(())
}

/// Scenario 9: durability. Submit throughput with `--fsync batch` against `--fsync off` (and
/// `always`), side by side in one run; restart on a store holding 100,000 finished jobs: time
/// until it serves again and its memory.
pub fn durability(body: &JobBody, f: &mut Findings) -> Result<(), String> {
    let modes = ["off", "batch", "always"];
    let mut by_mode: Vec<LoadSeries> = (0..modes.len()).map(|_| LoadSeries::default()).collect();
    for _ in 0..RUNS {
        for (k, mode) in modes.iter().enumerate() {
            let p = start_pool(
                3,
                ROOMY,
                &["--track-interval", TRACK_INTERVAL, "--fsync", mode],
            )?;
            let url = p.coord.url("/submit");
            let stats = closed_loop(
                CLIENTS,
                WARMUP,
                WINDOW,
                || {},
                |i| submit_op(body, &url, i, "pool-"),
            );
            by_mode[k].push(&stats);
        }
    }
    let (mut restart, mut rss) = (Series::default(), Series::default());
    for _ in 0..RUNS {
        let dir = tempfile::Builder::new()
            .prefix("trusted-pool-bench-store-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let state = dir.path().join("state");
        fill_store(&state)?;
        let worker = FastWorker::start(WORKER_THREADS).map_err(|e| e.to_string())?;
        let entry = (worker.worker_id().to_string(), worker.endpoint(), ROOMY);
        let started = Instant::now();
        let coord = Coordinator::start_on(&[entry], Some(&state), &["--retain-jobs", "100000"])?;
        restart.push(started.elapsed().as_secs_f64());
        let pool = coord.pool()?;
        if num(&pool["jobs_by_status"], "completed") != STORED_JOBS {
            return Err(format!("the restarted coordinator lost jobs: {pool}"));
        }
        rss.push(coord.rss() as f64 / MIB);
    }
    let s = "9 durability";
    let off = by_mode[0].throughput.0.clone();
    let e = by_mode.iter().map(|m| m.errors).sum();
    f.rows.extend([
        Row::pool(
            s,
            "submit throughput, --fsync batch (direct: off)",
            "jobs/s",
            by_mode[1].throughput.0.clone(),
        )
        .direct(off.clone())
        .budget(Budget::RatioAtLeast(0.7))
        .errors(e),
        Row::pool(
            s,
            "submit throughput, --fsync always (direct: off)",
            "jobs/s",
            by_mode[2].throughput.0.clone(),
        )
        .direct(off)
        .errors(e),
        Row::pool(
            s,
            "submit latency p50, --fsync batch (direct: off)",
            "ms",
            by_mode[1].p50.0.clone(),
        )
        .direct(by_mode[0].p50.0.clone())
        .errors(e),
        Row::pool(
            s,
            "restart with 100,000 finished jobs: serving after",
            "s",
            restart.0,
        )
        .budget(Budget::Under(1.0)),
        Row::pool(s, "RSS after that restart", "MiB", rss.0).budget(Budget::Under(24.0)),
    ]);
    Ok(())
}

/// Connections of each kind the slow-client scenario holds open.
const STALLED: usize = 64;

/// Opens `STALLED` uploads that stop after their headers and 10 body bytes and `STALLED`
/// connections that stop inside their headers; they stay open while the result lives.
fn stall(coord: &Coordinator) -> Result<Vec<std::net::TcpStream>, String> {
    use std::io::Write;
    let upload = format!(
        "POST /submit HTTP/1.1\r\nHost: pool\r\nContent-Type: {}\r\nContent-Length: 1000000\r\n\r\n--{}",
        load::content_type(),
        "x".repeat(8)
    );
    let mut held = Vec::with_capacity(2 * STALLED);
    for _ in 0..STALLED {
        for start in [
            upload.as_bytes(),
            b"GET /pool HTTP/1.1\r\nHost: pool\r\nX-Slow: ",
        ] {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", coord.port()))
                .map_err(|e| format!("stalled connection: {e}"))?;
            s.write_all(start).map_err(|e| e.to_string())?;
            held.push(s);
        }
    }
    thread::sleep(Duration::from_millis(300));
    Ok(held)
}

/// Scenario 11: `/status` latency and submit throughput with 64 stalled uploads and 64
/// connections stalled in their headers, side by side with none (the "direct" column).
pub fn stalled_clients(body: &JobBody, f: &mut Findings) -> Result<(), String> {
    let (mut status_none, mut status_stalled) = (LoadSeries::default(), LoadSeries::default());
    let (mut submit_none, mut submit_stalled) = (LoadSeries::default(), LoadSeries::default());
    let content_type = body.content_type();
    let setup = load::agent();
    for _ in 0..RUNS {
        // The 48 jobs polled must outlive the submit windows: a window can finish more than
        // the default 10,000 jobs, and retention would then forget the oldest (404s).
        let p = start_pool(
            3,
            ROOMY,
            &[
                "--track-interval",
                TRACK_INTERVAL,
                "--retain-jobs",
                "1000000",
            ],
        )?;
        let submit_url = p.coord.url("/submit");
        let ids = (0..48)
            .map(|n| {
                submit(
                    &setup,
                    &submit_url,
                    &content_type,
                    &body.with_token(token(95, n)),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        settle(&p.coord).ok_or("the first 48 jobs did not complete")?;
        let coord = &p.coord;
        let measure = |status: &mut LoadSeries, submits: &mut LoadSeries, tag: usize| {
            let stats = pool_status_window(coord, &ids);
            status.push(&stats);
            let stats = closed_loop(
                CLIENTS,
                Duration::from_millis(500),
                SHORT_WINDOW,
                || {},
                |i| submit_op(body, &submit_url, i + tag, "pool-"),
            );
            submits.push(&stats);
            if settle(coord).is_none() {
                submits.add_errors(1, Some("the queue did not drain".to_string()));
            }
        };
        measure(&mut status_none, &mut submit_none, 0);
        let held = stall(coord)?;
        measure(&mut status_stalled, &mut submit_stalled, CLIENTS);
        drop(held);
    }
    let s = "11 stalled";
    f.error_note("11 (none stalled)", &status_none);
    f.error_note("11 (none stalled, submit)", &submit_none);
    f.error_note("11 (stalled)", &status_stalled);
    f.error_note("11 (stalled, submit)", &submit_stalled);
    let e = status_none.errors + status_stalled.errors + submit_none.errors + submit_stalled.errors;
    f.rows.extend([
        Row::pool(
            s,
            "status p99, 64+64 stalled (direct: none)",
            "ms",
            status_stalled.p99.0,
        )
        .direct(status_none.p99.0)
        .budget(Budget::RatioAtMost(1.5))
        .errors(e),
        Row::pool(
            s,
            "status p50, 64+64 stalled (direct: none)",
            "ms",
            status_stalled.p50.0,
        )
        .direct(status_none.p50.0)
        .errors(e),
        Row::pool(
            s,
            "submit throughput, 64+64 stalled (direct: none)",
            "jobs/s",
            submit_stalled.throughput.0,
        )
        .direct(submit_none.throughput.0)
        .budget(Budget::RatioAtLeast(1.0 / 1.5))
        .errors(e),
    ]);
    Ok(())
}

/// One whole job through the coordinator: submit, poll until completed, fetch one output.
fn pool_job_op<'a>(
    coord: &'a Coordinator,
    body: &'a JobBody,
    content_type: &'a str,
    client: usize,
) -> impl FnMut(&ureq::Agent) -> Result<(), String> + Send + 'a {
    let mut seq = 0;
    move |agent| {
        seq += 1;
        let job = body.with_token(token(client, seq));
        let id = submit(agent, &coord.url("/submit"), content_type, &job)?;
        wait_done(
            agent,
            &coord.url(&format!("/status/{id}")),
            "pool_status",
            "completed",
            &["failed", "lost"],
        )?;
        check_result(&load::get_bytes(
            agent,
            &coord.url(&format!("/outputs/{id}/result.txt")),
        )?)
    }
}

/// A CA and a listener certificate for 127.0.0.1 in `dir`: (CA, certificate, key) paths.
fn test_certificates(dir: &std::path::Path) -> Result<[std::path::PathBuf; 3], String> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let fail = |e: rcgen::Error| e.to_string();
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().map_err(fail)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(fail)?;
    let key = KeyPair::generate().map_err(fail)?;
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .map_err(fail)?
        .signed_by(&key, &ca_cert, &ca_key)
        .map_err(fail)?;
    let paths = [
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    ];
    for (path, text) in paths
        .iter()
        .zip([ca_cert.pem(), cert.pem(), key.serialize_pem()])
    {
        std::fs::write(path, text).map_err(|e| e.to_string())?;
    }
    Ok(paths)
}

/// Scenario 12: submit and full-job throughput over TLS (`--tls-cert`), side by side with plain
/// HTTP (the "direct" column); every client keeps its connection (one handshake per client).
pub fn tls(body: &JobBody, f: &mut Findings) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let [ca, cert, key] = test_certificates(dir.path())?;
    load::trust(&ca)?;
    let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
    let content_type = body.content_type();
    let mut series: [(LoadSeries, LoadSeries); 2] = Default::default();
    for _ in 0..RUNS {
        for (tls, (submits, jobs)) in [false, true].into_iter().zip(series.iter_mut()) {
            let mut extra = vec!["--track-interval", TRACK_INTERVAL];
            if tls {
                extra.extend(["--tls-cert", &cert, "--tls-key", &key]);
            }
            let p = start_pool(3, ROOMY, &extra)?;
            let url = p.coord.url("/submit");
            let stats = closed_loop(
                CLIENTS,
                WARMUP,
                WINDOW,
                || {},
                |i| submit_op(body, &url, i, "pool-"),
            );
            submits.push(&stats);
            // The flood's backlog drains before the full jobs' warm-up starts: a job queued
            // behind it would outlast its deadline.
            let mut unsettled = settle(&p.coord).is_none();
            let stats = closed_loop(
                CLIENTS,
                WARMUP,
                SHORT_WINDOW,
                || unsettled |= settle(&p.coord).is_none(),
                |i| pool_job_op(&p.coord, body, &content_type, i + CLIENTS),
            );
            jobs.push(&stats);
            jobs.add_errors(u64::from(unsettled), Some(UNSETTLED.to_string()));
        }
    }
    let [(plain_submit, plain_job), (tls_submit, tls_job)] = series;
    let s = "12 tls";
    for (name, series) in [
        ("12 (plain submit)", &plain_submit),
        ("12 (plain full job)", &plain_job),
        ("12 (TLS submit)", &tls_submit),
        ("12 (TLS full job)", &tls_job),
    ] {
        f.error_note(name, series);
    }
    let e = plain_submit.errors + plain_job.errors + tls_submit.errors + tls_job.errors;
    f.rows.extend([
        Row::pool(
            s,
            "submit throughput, TLS (direct: plain)",
            "jobs/s",
            tls_submit.throughput.0,
        )
        .direct(plain_submit.throughput.0)
        .errors(e),
        Row::pool(s, "submit p99, TLS (direct: plain)", "ms", tls_submit.p99.0)
            .direct(plain_submit.p99.0)
            .errors(e),
        Row::pool(
            s,
            "full-job throughput, TLS (direct: plain)",
            "jobs/s",
            tls_job.throughput.0,
        )
        .direct(plain_job.throughput.0)
        .errors(e),
    ]);
    Ok(())
}

/// Workers, clients and the job's own time of the end-to-end scenario (issue 14's figures).
const E2E_WORKERS: usize = 200;
const E2E_CLIENTS: usize = 64;
const E2E_JOB: Duration = Duration::from_millis(200);
/// Slots per worker in the end-to-end scenario (sandrun's own per-IP limit).
const E2E_SLOTS: u32 = 2;
/// Measured window of the end-to-end scenario.
const E2E_WINDOW: Duration = Duration::from_secs(6);
/// How long one `/status/{id}?wait=` may park.
const E2E_WAIT: &str = "30";

/// Waits for a job's end with `GET /status/{id}?wait=`; Ok when it completed.
fn wait_end(agent: &ureq::Agent, coord: &Coordinator, id: &str) -> Result<(), String> {
    let deadline = Instant::now() + JOB_DEADLINE;
    let url = coord.url(&format!("/status/{id}?wait={E2E_WAIT}"));
    loop {
        let v = load::get_json(agent, &url)?;
        match v["pool_status"].as_str().unwrap_or_default() {
            "completed" => return Ok(()),
            "failed" | "lost" | "cancelled" => return Err(format!("job {id} ended: {v}")),
            _ if Instant::now() > deadline => return Err(format!("job {id} is stuck: {v}")),
            _ => {}
        }
    }
}

/// The figures of scenario 10 for one kind of worker (serving `/stream` or not).
#[derive(Default)]
struct E2eSeries {
    pool: LoadSeries,
    cpu: Series,
    polls: Series,
}

/// One run of scenario 10 against workers that serve `/stream` (`streams`) or answer it 404.
fn e2e_run(body: &JobBody, streams: bool, into: &mut E2eSeries) -> Result<(), String> {
    let content_type = body.content_type();
    let workers = (0..E2E_WORKERS)
        .map(|_| FastWorker::start(1).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    for w in &workers {
        w.set_job_time(E2E_JOB);
        w.set_streams(streams);
    }
    let entries: Vec<Entry> = workers
        .iter()
        .map(|w| (w.worker_id().to_string(), w.endpoint(), E2E_SLOTS))
        .collect();
    let coord = Coordinator::start(&entries, &[])?;
    coord
        .wait_pool(SETTLE, |p| num(p, "healthy_workers") == E2E_WORKERS as u64)
        .ok_or("the fake workers did not all turn healthy")?;
    let p = Pool { coord, workers };
    let (mut cpu0, mut counts0) = (Duration::ZERO, Counts::default());
    let stats = closed_loop(
        E2E_CLIENTS,
        WARMUP,
        E2E_WINDOW,
        || {
            cpu0 = p.coord.cpu();
            counts0 = counts(&p.workers);
        },
        |i| {
            let (coord, content_type) = (&p.coord, &content_type);
            let mut seq = 0;
            move |agent: &ureq::Agent| {
                seq += 1;
                let body = body.with_token(token(i, seq));
                let id = submit(agent, &coord.url("/submit"), content_type, &body)?;
                wait_end(agent, coord, &id)?;
                check_result(&load::get_bytes(
                    agent,
                    &coord.url(&format!("/outputs/{id}/result.txt")),
                )?)
            }
        },
    );
    let (cpu1, counts1) = (p.coord.cpu(), counts(&p.workers));
    let jobs = stats.ops.max(1) as f64;
    into.cpu.push((cpu1 - cpu0).as_secs_f64() * 1e6 / jobs);
    into.polls
        .push((counts1.status - counts0.status) as f64 / jobs);
    into.pool.push(&stats);
    into.pool
        .add_errors(counts1.dialect_errors, Some("dialect errors".to_string()));
    Ok(())
}

/// Scenario 10: 200 workers whose jobs take 200 ms, 64 clients, the coordinator at its default
/// flags. Each client submits, waits for the end with `/status/{id}?wait=` (so client polling
/// costs nothing) and downloads the output. Also: the worker `/status` polls per job and the
/// coordinator's CPU per job. Each run is made twice, side by side: workers that serve
/// sandrun's `/stream` (the figures) and workers that answer it 404, so the coordinator follows
/// jobs by polling alone (the "direct" column).
pub fn e2e_jobs(body: &JobBody, f: &mut Findings) -> Result<(), String> {
    let (mut streamed, mut polled) = (E2eSeries::default(), E2eSeries::default());
    for _ in 0..RUNS {
        e2e_run(body, true, &mut streamed)?;
        e2e_run(body, false, &mut polled)?;
    }
    let s = "10 e2e 200 ms";
    f.error_note("10 (streams)", &streamed.pool);
    f.error_note("10 (polling only)", &polled.pool);
    let e = streamed.pool.errors + polled.pool.errors;
    let budget = E2E_JOB.as_secs_f64() * 1e3 * 1.2;
    let (sp, pp) = (&streamed.pool, &polled.pool);
    f.rows.extend([
        Row::pool(
            s,
            "end-to-end p50 (direct: polling only)",
            "ms",
            sp.p50.0.clone(),
        )
        .direct(pp.p50.0.clone())
        .budget(Budget::AtMost(budget))
        .errors(e),
        Row::pool(
            s,
            "end-to-end p99 (direct: polling only)",
            "ms",
            sp.p99.0.clone(),
        )
        .direct(pp.p99.0.clone())
        .errors(e),
        Row::pool(
            s,
            "throughput (direct: polling only)",
            "jobs/s",
            sp.throughput.0.clone(),
        )
        .direct(pp.throughput.0.clone())
        .errors(e),
        Row::pool(
            s,
            "worker /status polls per job (direct: polling only)",
            "polls",
            streamed.polls.0,
        )
        .direct(polled.polls.0)
        .errors(e),
        Row::pool(
            s,
            "coordinator CPU per job (direct: polling only)",
            "us",
            streamed.cpu.0,
        )
        .direct(polled.cpu.0)
        .errors(e),
    ]);
    Ok(())
}

/// Scenario 13's time scale: sandrun's windows (and the jobs' CPU seconds) run this much faster.
pub const QUOTA_SCALE: f64 = 10.0;
/// CPU seconds every job of scenario 13 burns, at sandrun's scale.
pub const QUOTA_JOB_CPU: f64 = 1.0;
/// Jobs per source address in one run of scenario 13: sandrun's hourly limit.
const QUOTA_JOBS_PER_ADDRESS: usize = 20;
/// Longest wait for one side of scenario 13 (about 10 s on a quiet machine).
const QUOTA_DEADLINE: Duration = Duration::from_secs(300);
/// The source addresses of scenario 13's two sides.
const QUOTA_SIDES: [&str; 2] = ["127.0.0.2", "127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5"];

/// One side of scenario 13: `jobs per address` CPU-heavy jobs through one rate-limited worker
/// from the addresses `list`. Returns the jobs per minute at sandrun's scale, measured once
/// the first CPU minute of every address is used up (from the end of the first half of the
/// jobs to the end of the last, on the worker), and the 429s the worker answered.
fn quota_side(body: &JobBody, list: &str) -> Result<(f64, f64), String> {
    let addresses = list.split(',').count();
    let worker = FastWorker::start(WORKER_THREADS).map_err(|e| e.to_string())?;
    worker.limit_clients(crate::fake_quota::QuotaMode::sandrun_scaled(
        QUOTA_SCALE,
        QUOTA_JOB_CPU,
    ));
    let slots = 2 * addresses as u32;
    let entry = (worker.worker_id().to_string(), worker.endpoint(), slots);
    let extra = [
        "--track-interval",
        TRACK_INTERVAL,
        "--source-addresses",
        list,
    ];
    let coord = Coordinator::start(&[entry], &extra)?;
    coord
        .wait_pool(SETTLE, |p| num(p, "healthy_workers") == 1)
        .ok_or("the fake worker did not turn healthy")?;
    let jobs = QUOTA_JOBS_PER_ADDRESS * addresses;
    let agent = load::agent();
    let content_type = body.content_type();
    for seq in 0..jobs as u64 {
        submit(
            &agent,
            &coord.url("/submit"),
            &content_type,
            &body.with_token(token(0, seq)),
        )?;
    }
    let done =
        |p: &Value| num(&p["jobs_by_status"], "completed") as usize + bad_jobs(p) as usize >= jobs;
    let p = coord
        .wait_pool(QUOTA_DEADLINE, done)
        .filter(done)
        .ok_or_else(|| format!("the jobs did not all end within {QUOTA_DEADLINE:?}"))?;
    if bad_jobs(&p) > 0 {
        return Err(format!("{} jobs failed or were lost", bad_jobs(&p)));
    }
    let (mut ends, refused) = worker.quota_figures();
    ends.sort();
    let first = jobs / 2 - 1;
    let span = ends[jobs - 1].duration_since(ends[first]).as_secs_f64();
    let per_second = (jobs - 1 - first) as f64 / span.max(1e-3);
    Ok((per_second * 60.0 / QUOTA_SCALE, refused as f64))
}

/// Scenario 13: CPU-heavy short jobs through one fake worker that limits every client IP as
/// sandrun does (2 at once, 20 per hour, 10 CPU seconds per minute, one job at a time; scaled
/// in time by `QUOTA_SCALE`), with 1 source address against 4, side by side.
pub fn source_addresses(body: &JobBody, f: &mut Findings) -> Result<(), String> {
    let mut rates = [Series::default(), Series::default()];
    let mut refusals = [Series::default(), Series::default()];
    for _ in 0..RUNS {
        for (k, list) in QUOTA_SIDES.iter().enumerate() {
            let (rate, refused) = quota_side(body, list)?;
            rates[k].push(rate);
            refusals[k].push(refused);
        }
    }
    let [one, four] = rates;
    let [one_refused, four_refused] = refusals;
    let s = "13 source addresses";
    f.rows.extend([
        Row::pool(
            s,
            "CPU-heavy jobs per minute, 4 addresses (direct: 1)",
            "jobs/min",
            four.0,
        )
        .direct(one.0)
        .budget(Budget::RatioAtLeast(3.0)),
        Row::pool(
            s,
            "429 answers per run, 4 addresses (direct: 1)",
            "429s",
            four_refused.0,
        )
        .direct(one_refused.0),
    ]);
    Ok(())
}

/// Jobs of the flatness run of scenario 9, the point of its first figures, and its retention.
const FLAT_JOBS: u64 = 50_000;
const FLAT_EARLY: u64 = 5_000;
const FLAT_RETAIN: u64 = 1_000;

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    })
}

/// Threads of process `pid` that come and go with the load: dispatch, stream, upload and
/// tracker threads (idle ones end after 10 s, unmapping their stacks).
fn busy_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |tasks| {
        tasks
            .filter_map(Result::ok)
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .filter(|name| {
                let name = name.trim_end();
                ["dispatch", "stream", "upload"].contains(&name) || name.starts_with("tracker")
            })
            .count()
    })
}

/// Submits jobs from `CLIENTS` clients, each waiting for its job's end before the next, until
/// `until` were submitted in all (a full queue's 503 is waited out), then waits until every one completed, retention swept down to its limit,
/// the idle store truncated its WAL and no busy thread is left: the state is comparable from
/// one call to the next. Returns (RSS MiB, anonymous RSS MiB, state directory MiB, submit
/// errors).
fn flat_phase(
    body: &JobBody,
    coord: &Coordinator,
    state: &std::path::Path,
    submitted: &AtomicU64,
    until: u64,
) -> Result<(f64, f64, f64, u64), String> {
    let url = coord.url("/submit");
    let content_type = body.content_type();
    let errors = AtomicU64::new(0);
    thread::scope(|scope| {
        for i in 0..CLIENTS {
            let (url, content_type, errors) = (&url, &content_type, &errors);
            scope.spawn(move || {
                let agent = load::agent();
                loop {
                    let n = submitted.fetch_add(1, Ordering::SeqCst);
                    if n >= until {
                        submitted.fetch_sub(1, Ordering::SeqCst);
                        return;
                    }
                    let body = body.with_token(token(i, n));
                    // Each client waits for its job's end: at most one job per client is in
                    // the pool, so the figures measure the history, not a backlog.
                    loop {
                        match submit(&agent, url, content_type, &body) {
                            Ok(id) => {
                                if wait_end(&agent, coord, &id).is_err() {
                                    errors.fetch_add(1, Ordering::SeqCst);
                                }
                                break;
                            }
                            Err(e) if e.contains("503") => {
                                thread::sleep(Duration::from_millis(20));
                            }
                            Err(_) => {
                                errors.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    let wal = state.join("jobs.db-wal");
    let settled = coord.wait_pool(Duration::from_secs(300), |p| {
        let done = num(&p["jobs_by_status"], "completed")
            + num(&p["store"]["retention"], "forgotten_jobs");
        drained(p)
            && done == until
            && num(&p["store"], "rows") <= FLAT_RETAIN
            && std::fs::metadata(&wal).map_or(0, |m| m.len()) == 0
            && busy_threads(coord.pid()) == 0
    });
    let settled = settled.is_some_and(|p| {
        num(&p["jobs_by_status"], "completed") + num(&p["store"]["retention"], "forgotten_jobs")
            == until
            && num(&p["store"], "rows") <= FLAT_RETAIN
    });
    if !settled {
        return Err(format!(
            "the flatness run did not settle after {until} jobs"
        ));
    }
    Ok((
        coord.rss() as f64 / MIB,
        coord.rss_anon() as f64 / MIB,
        dir_bytes(state) as f64 / MIB,
        errors.load(Ordering::SeqCst),
    ))
}

/// Scenario 9, flatness: 50,000 fast jobs with `--retain-jobs 1000`; RSS and the state
/// directory's size after the first 5,000 ("direct" column) and at the end, both measured once
/// the pool drained, retention swept and the idle store truncated its WAL.
pub fn flat_run(body: &JobBody, f: &mut Findings) -> Result<(), String> {
    let dir = tempfile::Builder::new()
        .prefix("trusted-pool-bench-flat-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let state = dir.path().join("state");
    let workers = (0..3)
        .map(|_| FastWorker::start(WORKER_THREADS).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let entries: Vec<Entry> = workers
        .iter()
        .map(|w| (w.worker_id().to_string(), w.endpoint(), ROOMY))
        .collect();
    let retain = FLAT_RETAIN.to_string();
    let coord = Coordinator::start_on(
        &entries,
        Some(&state),
        &["--track-interval", TRACK_INTERVAL, "--retain-jobs", &retain],
    )?;
    coord
        .wait_pool(SETTLE, |p| num(p, "healthy_workers") == 3)
        .ok_or("the fake workers did not all turn healthy")?;
    let submitted = AtomicU64::new(0);
    let started = Instant::now();
    let (rss_early, anon_early, disk_early, e1) =
        flat_phase(body, &coord, &state, &submitted, FLAT_EARLY)?;
    let (rss_end, anon_end, disk_end, e2) =
        flat_phase(body, &coord, &state, &submitted, FLAT_JOBS)?;
    f.notes.push(format!(
        "scenario 9 flatness: {FLAT_JOBS} jobs with --retain-jobs {FLAT_RETAIN} in {:.0} s; after \
         {FLAT_EARLY}: RSS {rss_early:.2} MiB (anonymous {anon_early:.2}), state dir \
         {disk_early:.2} MiB; at the end: RSS {rss_end:.2} MiB (anonymous {anon_end:.2}), state \
         dir {disk_end:.2} MiB; measured with the pool drained, retention swept, the WAL \
         truncated and no dispatch, stream, upload or tracker thread left",
        started.elapsed().as_secs_f64()
    ));
    let row = |what: &str, end: f64, early: f64| {
        Row::pool("9 durability", what, "MiB", vec![end])
            .direct(vec![early])
            .budget(Budget::RatioAtMost(1.1))
            .errors(e1 + e2)
    };
    f.rows.extend([
        row(
            "flatness: RSS after 50,000 jobs, --retain-jobs 1000 (direct: after 5,000)",
            rss_end,
            rss_early,
        ),
        row(
            "flatness: state dir after 50,000 jobs (direct: after 5,000)",
            disk_end,
            disk_early,
        ),
    ]);
    Ok(())
}
