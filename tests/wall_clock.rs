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

/// A wall clock set before 1970 for a few seconds and then set right leaves no step in the
/// store: such a clock reads as 0, so it seemed to stand still there, and the seconds spent
/// there were kept as a step (queued jobs waited that much longer after a restart).
#[test]
fn a_clock_before_1970_and_back_leaves_no_step_for_queued_jobs() {
    let Some((_worker, dir, clock, mut coordinator)) = start_on_a_fake_clock(&[]) else {
        return;
    };
    clock.set("@1969-12-31 23:00:00");
    poll_until(DEADLINE, || {
        let (_, pool) = get_json(&coordinator.url("/pool"));
        (pool["time"].as_f64()? <= 0.0).then_some(())
    })
    .unwrap_or_else(|| panic!("the clock never read 1969: {}", coordinator.logs()));
    // Time passes there: the store's sweep looks at the clock once a second.
    std::thread::sleep(Duration::from_secs(4));
    clock.set("+0");
    wait_clock(&coordinator, 0.0, DEADLINE);
    let status = coordinator.terminate(DEADLINE);
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let db = dir.path().join("state").join("jobs.db");
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("{e}"));
    let steps: f64 = conn
        .query_row("SELECT secs FROM wall_steps", [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        steps.abs() < 1.0,
        "{steps} s of steps: {}",
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
    // (a step while the coordinator was down, or one that makes up for the time it was down
    // at a boot, reads as time that passed), the one settled in this run moves with the clock.
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

/// Waits until `/pool` counts `n` settled jobs committed, retained or forgotten.
fn wait_settled(coordinator: &Coordinator, n: u64) {
    poll_until(DEADLINE, || {
        let (_, pool) = get_json(&coordinator.url("/pool"));
        let kept = pool["store"]["finished_jobs"].as_u64().unwrap_or_default();
        (kept + forgotten(coordinator) >= n).then_some(())
    })
    .unwrap_or_else(|| panic!("{n} settled rows never committed: {}", coordinator.logs()));
}

/// A wall clock set a month back by mistake and then set right, on a store with no job
/// settled before: a job that settled meanwhile keeps its age (it was forgotten, results and
/// all, within a second of the clock set right).
#[test]
fn a_clock_set_back_and_then_right_again_forgets_no_job_early() {
    let args = ["--retain-for", "3600"];
    let Some((_worker, _dir, clock, coordinator)) = start_on_a_fake_clock(&args) else {
        return;
    };
    clock.set("-30d");
    wait_clock(&coordinator, -2_592_000.0, DEADLINE);
    assert!(coordinator.wait_for_log("s back (an NTP step", DEADLINE));
    let id = run_job(&coordinator);
    wait_settled(&coordinator, 1);
    clock.set("+0");
    wait_clock(&coordinator, 0.0, DEADLINE);
    assert!(coordinator.wait_for_log("s more than the time that passed", DEADLINE));
    // A second job settles after the sweep that saw the step (the store's writer takes them
    // in turn).
    run_job(&coordinator);
    wait_settled(&coordinator, 2);
    assert!(known(&coordinator, &id), "{}", coordinator.logs());
    assert_eq!(forgotten(&coordinator), 0, "{}", coordinator.logs());
}

/// A board that restarts with its clock two years behind (no real-time clock) and gets NTP
/// later: the jobs settled before and after keep being aged by the time that passed, and
/// `--retain-for` forgets them (their settle times were moved two years ahead, kept that long).
#[test]
fn a_restart_on_a_clock_years_behind_then_set_right_leaves_retention_by_age_working() {
    let args = ["--retain-for", "5"];
    let Some((worker, dir, clock, mut coordinator)) = start_on_a_fake_clock(&args) else {
        return;
    };
    let before = run_job(&coordinator);
    wait_settled(&coordinator, 1);
    coordinator.kill();
    clock.set("-2y");
    let coordinator = Coordinator::try_start_in_env(dir.path(), &args, &clock.env())
        .unwrap_or_else(|e| panic!("{e}"));
    wait_clock(&coordinator, -63_072_000.0, DEADLINE);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let behind = run_job(&coordinator);
    clock.set("+0");
    wait_clock(&coordinator, 0.0, DEADLINE);
    assert!(coordinator.wait_for_log("s more than the time that passed", DEADLINE));
    let after = run_job(&coordinator);
    poll_until(DEADLINE, || {
        [&before, &behind, &after]
            .iter()
            .all(|id| !known(&coordinator, id))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("kept past --retain-for: {}", coordinator.logs()));
}

/// [`start_on_a_fake_clock`] with the worker drained through the API (a restart keeps the
/// drain), so that submitted jobs stay queued.
fn start_drained_on_a_fake_clock() -> Option<(FakeWorker, tempfile::TempDir, FakeClock, Coordinator)>
{
    let (worker, dir, clock, coordinator) = start_on_a_fake_clock(&[])?;
    let (code, body) = post(
        &drain_url(&coordinator, &worker, "drain"),
        "text/plain",
        b"",
    );
    assert_eq!(code, 200, "{body}");
    Some((worker, dir, clock, coordinator))
}

/// The queue positions `/status` gives the jobs `ids` (0: not queued).
fn places(coordinator: &Coordinator, ids: &[&String]) -> Vec<u64> {
    ids.iter()
        .map(|id| {
            job_status(coordinator, id)["queue_position"]
                .as_u64()
                .unwrap_or(0)
        })
        .collect()
}

/// A wall clock stepped back an hour between two submits: the queue keeps their order across a
/// `kill -9` and a restart (the later jobs went ahead of the earlier one, by their submission
/// times), and a priority change's place with them.
#[test]
fn after_a_step_back_the_queue_keeps_its_order_across_a_restart() {
    let Some((_worker, dir, clock, mut coordinator)) = start_drained_on_a_fake_clock() else {
        return;
    };
    let first = submit(&coordinator, &quick_job());
    clock.set("-1h");
    wait_clock(&coordinator, -3_600.0, DEADLINE);
    let later: Vec<String> = (0..2).map(|_| submit(&coordinator, &quick_job())).collect();
    // A job moved to the back of the level by a priority change after the step stays there
    // (it came back first: its change read earlier than every submission before the step).
    let form = quick_job();
    let (code, body) = post(
        &coordinator.url("/submit?priority=low"),
        &form.content_type(),
        &form.body(),
    );
    assert_eq!(code, 200, "{body}");
    let changed = serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default()["job_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (code, body) = post(
        &coordinator.url(&format!("/jobs/{changed}/priority?priority=normal")),
        "text/plain",
        b"",
    );
    assert_eq!(code, 200, "{body}");
    let ids = [&first, &later[0], &later[1], &changed];
    assert_eq!(places(&coordinator, &ids), [1, 2, 3, 4]);
    coordinator.kill();
    let coordinator = Coordinator::try_start_in_env(dir.path(), &[], &clock.env())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        places(&coordinator, &ids),
        [1, 2, 3, 4],
        "{}",
        coordinator.logs()
    );
}

/// A wall clock stepped a day forward while the coordinator ran, then a `kill -9` and a
/// restart: the queued jobs' waits leave the step out. A job with a 600 s queue timeout still
/// waits (it failed at once: the step read as a day waited), and priority aging lifts no job
/// (each came back in the highest level).
#[test]
fn a_step_forward_while_running_is_no_time_waited_after_a_restart() {
    after_a_step_forward_and_a_restart(|coordinator| {
        assert!(
            coordinator.wait_for_log("are written to the job store", DEADLINE),
            "{}",
            coordinator.logs()
        );
        coordinator.kill();
    });
}

/// The same with a SIGTERM at once after the step, before the sweep that would find it: the
/// store's close looks at the wall clock once more and keeps the step (it was lost, and the
/// jobs failed or were lifted as above).
#[test]
fn a_step_forward_just_before_a_stop_is_no_time_waited_after_the_restart() {
    after_a_step_forward_and_a_restart(|coordinator| {
        let status = coordinator.terminate(DEADLINE);
        assert!(status.is_some_and(|s| s.success()), "{status:?}");
        assert!(
            coordinator.logs().contains("are written to the job store"),
            "{}",
            coordinator.logs()
        );
    });
}

/// Three queued jobs (low, normal, normal with a 600 s queue timeout), a day's step forward,
/// `stop`, a restart: each is still queued where it was, in its own level.
fn after_a_step_forward_and_a_restart(stop: impl FnOnce(&mut Coordinator)) {
    let Some((_worker, dir, clock, mut coordinator)) = start_drained_on_a_fake_clock() else {
        return;
    };
    let low = submit(&coordinator, &quick_job().field("priority", b"low"));
    let plain = submit(&coordinator, &quick_job());
    let timed = submit(&coordinator, &quick_job().field("queue_timeout", b"600"));
    let ids = [&plain, &timed, &low];
    assert_eq!(places(&coordinator, &ids), [1, 2, 3]);
    clock.set("+1d");
    wait_clock(&coordinator, 86_400.0, DEADLINE);
    stop(&mut coordinator);
    let coordinator = Coordinator::try_start_in_env(dir.path(), &[], &clock.env())
        .unwrap_or_else(|e| panic!("{e}"));
    // A job whose timeout ends a second after the restart: once it failed, the timeouts due
    // at the restart have been ended too.
    let soon = submit(&coordinator, &quick_job().field("queue_timeout", b"1"));
    poll_until(DEADLINE, || {
        (job_status(&coordinator, &soon)["pool_status"] == "failed").then_some(())
    })
    .unwrap_or_else(|| panic!("{soon} never timed out: {}", coordinator.logs()));
    let status = job_status(&coordinator, &timed);
    assert_eq!(status["pool_status"], "queued", "{status}");
    assert_eq!(
        places(&coordinator, &ids),
        [1, 2, 3],
        "{}",
        coordinator.logs()
    );
    for (id, level) in [(&plain, "normal"), (&low, "low")] {
        let status = job_status(&coordinator, id);
        assert_eq!(status["queue_level"], level, "{status}");
    }
}
