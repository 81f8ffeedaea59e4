//! The coordinator under a wall clock that jumps (an NTP step on a board without a real-time
//! clock, an operator's `date -s`), its monotonic clock left as it is (libfaketime).

mod support;

use std::time::Duration;

use support::lifecycle::{drain_url, job_status, submit, wait_collected, wait_healthy};
use support::wall_clock::{wait_clock, FakeClock};
use support::{get_json, poll_until, post, send, workers_dir, Coordinator, FakeWorker, Form};

/// Generous deadline for anything the coordinator does on its own.
const DEADLINE: Duration = Duration::from_secs(60);

/// A worker and a coordinator started with `args` on a wall clock the test moves, the worker
/// healthy; `None` (the reason printed) without libfaketime.
fn start_on_a_fake_clock(
    args: &[&str],
) -> Option<(FakeWorker, tempfile::TempDir, FakeClock, Coordinator)> {
    let worker = FakeWorker::start();
    let dir = workers_dir(&[worker.entry(1)]);
    let clock = FakeClock::in_dir(dir.path())?;
    let coordinator = Coordinator::try_start_in_env(dir.path(), args, &clock.env())
        .unwrap_or_else(|e| panic!("{e}"));
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    Some((worker, dir, clock, coordinator))
}

/// A wall clock set before 1970 or past 9999 leaves every thread answering: the `Date` of an
/// answer is held to the years one can write. Each answer once panicked on its way out, so
/// each request took down the thread that served it, and once the `--threads` handlers were
/// gone the coordinator exited, with status 0.
#[test]
fn a_clock_set_before_1970_or_past_9999_leaves_every_thread_answering() {
    let Some((_worker, _dir, clock, mut coordinator)) = start_on_a_fake_clock(&["--threads", "2"])
    else {
        return;
    };
    for (at, date) in [
        ("@1969-12-31 23:00:00", "Thu, 01 Jan 1970 00:00:00 GMT"),
        ("+3000000d", "Fri, 31 Dec 9999 23:59:59 GMT"),
    ] {
        clock.set(at);
        let dated = support::poll_until(DEADLINE, || {
            let reply = send("GET", &coordinator.url("/pool"), None).ok()?;
            (reply.header("Date") == Some(date)).then_some(reply)
        });
        assert!(dated.is_some(), "{at}: no answer dated {date}");
        // More requests than handler threads, on handlers and on connection threads.
        for path in [
            "/pool",
            "/jobs",
            "/status/pool-0",
            "/health",
            "/pool",
            "/jobs",
        ] {
            let reply = send("GET", &coordinator.url(path), None)
                .unwrap_or_else(|e| panic!("{at}: GET {path}: {e}"));
            assert!(
                reply.json()["error"].is_string() || reply.status == 200,
                "{at}: {path}"
            );
        }
    }
    clock.set("+0");
    assert!(coordinator.is_running(), "{}", coordinator.logs());
    let reply = send("GET", &coordinator.url("/pool"), None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        !coordinator.logs().contains("panicked"),
        "{}",
        coordinator.logs()
    );
}

/// A job with an output, that ends at once.
fn quick_job() -> Form {
    Form::new()
        .file("main.py", "text/x-python", b"print('hi')\n")
        .manifest(r#"{"entrypoint":"main.py","outputs":["result.txt"]}"#)
}

/// Submits a quick job and waits until its results are collected; its id.
fn run_job(coordinator: &Coordinator) -> String {
    let id = submit(coordinator, &quick_job());
    wait_collected(coordinator, &id, DEADLINE);
    id
}

/// The jobs `/pool` says retention forgot.
fn forgotten(coordinator: &Coordinator) -> u64 {
    let (_, pool) = get_json(&coordinator.url("/pool"));
    pool["store"]["retention"]["forgotten_jobs"]
        .as_u64()
        .unwrap_or_default()
}

/// Whether `/status/{id}` still knows the job.
fn known(coordinator: &Coordinator, id: &str) -> bool {
    get_json(&coordinator.url(&format!("/status/{id}"))).0 == 200
}

/// A wall clock stepped back an hour: the job settled after the step is the newest for
/// `--retain-jobs`, so the oldest one before it is forgotten, not the new one (it was, the
/// moment it settled, as its settle time read an hour earlier than theirs).
#[test]
fn after_a_step_back_retention_by_count_forgets_the_oldest_not_the_newest() {
    let Some((_worker, _dir, clock, coordinator)) = start_on_a_fake_clock(&["--retain-jobs", "3"])
    else {
        return;
    };
    let before: Vec<String> = (0..3).map(|_| run_job(&coordinator)).collect();
    clock.set("-1h");
    wait_clock(&coordinator, -3_600.0, DEADLINE);
    assert!(coordinator.wait_for_log("The wall clock moved 3", DEADLINE));
    let after = run_job(&coordinator);
    poll_until(DEADLINE, || (forgotten(&coordinator) >= 1).then_some(()))
        .unwrap_or_else(|| panic!("nothing forgotten: {}", coordinator.logs()));
    assert!(known(&coordinator, &after), "{}", coordinator.logs());
    assert!(!known(&coordinator, &before[0]), "the oldest job is kept");
    assert!(known(&coordinator, &before[1]) && known(&coordinator, &before[2]));
    assert_eq!(forgotten(&coordinator), 1);
}

/// A wall clock stepped a day forward while the coordinator runs (a board without a real-time
/// clock that gets NTP after its jobs started): the jobs settled before the step are not taken
/// for a day old by `--retain-for` (every one of them was forgotten within a second), in this
/// run and after a `kill -9` and a restart on the stepped clock.
#[test]
fn after_a_step_forward_retention_by_age_forgets_nothing_early_across_a_restart() {
    let args = ["--retain-for", "3600"];
    let Some((worker, dir, clock, mut coordinator)) = start_on_a_fake_clock(&args) else {
        return;
    };
    let ids: Vec<String> = (0..2).map(|_| run_job(&coordinator)).collect();
    clock.set("+1d");
    wait_clock(&coordinator, 86_400.0, DEADLINE);
    assert!(
        coordinator.wait_for_log("their settle times moved 864", DEADLINE),
        "{}",
        coordinator.logs()
    );
    let later = run_job(&coordinator);
    // Its settled row is committed (counted) before the kill: else it settles again after the
    // restart, in the next run.
    poll_until(DEADLINE, || {
        let (_, pool) = get_json(&coordinator.url("/pool"));
        (pool["store"]["finished_jobs"].as_u64() >= Some(3)).then_some(())
    })
    .unwrap_or_else(|| panic!("3 settled rows never committed: {}", coordinator.logs()));
    coordinator.kill();
    let coordinator = Coordinator::try_start_in_env(dir.path(), &args, &clock.env())
        .unwrap_or_else(|e| panic!("{e}"));
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let since_restart = run_job(&coordinator);
    for id in ids.iter().chain([&later]) {
        assert!(
            known(&coordinator, id),
            "{id} was forgotten: {}",
            coordinator.logs()
        );
    }
    assert_eq!(forgotten(&coordinator), 0, "{}", coordinator.logs());
    // Two hours more while it runs: the jobs settled before this run are past --retain-for
    // (a step while the coordinator was down reads as time that passed), the one settled in
    // this run moves with the clock.
    clock.set("+26h");
    wait_clock(&coordinator, 93_600.0, DEADLINE);
    poll_until(DEADLINE, || (forgotten(&coordinator) >= 3).then_some(()))
        .unwrap_or_else(|| panic!("retention by age did not run: {}", coordinator.logs()));
    assert!(ids
        .iter()
        .chain([&later])
        .all(|id| !known(&coordinator, id)));
    assert!(
        known(&coordinator, &since_restart),
        "{}",
        coordinator.logs()
    );
}

/// A wall clock stepped back an hour between two submits: the queue keeps their order across a
/// `kill -9` and a restart (the later jobs went ahead of the earlier one, by their submission
/// times).
#[test]
fn after_a_step_back_the_queue_keeps_its_order_across_a_restart() {
    let Some((worker, dir, clock, mut coordinator)) = start_on_a_fake_clock(&[]) else {
        return;
    };
    let (code, body) = post(
        &drain_url(&coordinator, &worker, "drain"),
        "text/plain",
        b"",
    );
    assert_eq!(code, 200, "{body}");
    let first = submit(&coordinator, &quick_job());
    clock.set("-1h");
    wait_clock(&coordinator, -3_600.0, DEADLINE);
    let later: Vec<String> = (0..2).map(|_| submit(&coordinator, &quick_job())).collect();
    let places = |coordinator: &Coordinator| -> Vec<u64> {
        [&first, &later[0], &later[1]]
            .iter()
            .map(|id| {
                job_status(coordinator, id)["queue_position"]
                    .as_u64()
                    .unwrap_or(0)
            })
            .collect()
    };
    assert_eq!(places(&coordinator), [1, 2, 3]);
    coordinator.kill();
    let coordinator = Coordinator::try_start_in_env(dir.path(), &[], &clock.env())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(places(&coordinator), [1, 2, 3], "{}", coordinator.logs());
}
