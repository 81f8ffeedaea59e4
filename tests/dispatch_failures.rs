//! What the coordinator does when a dispatch does not simply succeed: a busy worker (429) is
//! paused instead of hammered, a 5xx sends the job elsewhere, another 4xx fails it at once, a
//! worker that never answers holds up nothing else and its job is lost (never run twice), a
//! job whose worker dies is lost with its slot freed, and a job that asked for reruns runs
//! again on another worker instead. A finished job whose results cannot be collected is tried
//! again while its worker still has it, and is lost (counted once) only when the worker
//! deleted it or stayed silent past `--lost-after`.

mod support;

use std::time::{Duration, SystemTime};

use serde_json::Value;

use support::follow::follow_logs;
use support::lifecycle::{
    assert_no_uploads, assert_pool_consistent, drain_url, job_status, pool_worker, submit,
    submit_seen_running, wait_collected, wait_committed, wait_healthy, wait_started, wait_status,
};
use support::sandrun::control::Printed;
use support::wall_clock::{wait_clock, FakeClock};
use support::{get, get_bytes, get_json, poll_until, post, Coordinator, FakeWorker, Form, Knobs};

/// Generous deadline for anything the coordinator does on its own.
const DEADLINE: Duration = Duration::from_secs(60);

/// One worker, its knobs set by `knobs`, taking `slots` jobs at once, and a coordinator
/// started over it with `extra`, the worker seen healthy.
fn one_worker(
    knobs: impl FnOnce(&mut Knobs),
    slots: u32,
    extra: &[&str],
) -> (FakeWorker, Coordinator) {
    let worker = FakeWorker::start_with(knobs);
    let coordinator = Coordinator::start(&[worker.entry(slots)], extra);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    (worker, coordinator)
}

/// Short intervals keep these tests quick.
const FAST: [&str; 4] = ["--health-interval", "1", "--track-interval", "0.1"];

fn job(source: &str) -> Form {
    Form::new().file("main.py", "text/x-python", source.as_bytes())
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    FAST.iter().chain(extra).copied().collect()
}

/// Waits until the worker has answered `n` more health probes than `seen`: a way to let the
/// coordinator run for a while before checking that something did NOT happen.
fn wait_probes(worker: &FakeWorker, seen: usize, n: usize) {
    let probed = poll_until(DEADLINE, || {
        (worker.recording().count("GET", "health") >= seen + n).then_some(())
    });
    assert!(probed.is_some(), "the coordinator stopped probing");
}

/// `GET` a results path of a job, expecting `code` and a JSON error.
fn assert_results_refused(coordinator: &Coordinator, id: &str, code: u16) {
    for path in [
        format!("/outputs/{id}"),
        format!("/outputs/{id}/result.txt"),
        format!("/logs/{id}"),
    ] {
        let (status, body) = get_json(&coordinator.url(&path));
        assert_eq!(status, code, "{path}: {body}");
        assert!(body["error"].as_str().is_some(), "{path}: {body}");
    }
}

#[test]
fn a_throttling_worker_is_paused_not_hammered() {
    const BLOCKING_JOB: Duration = Duration::from_secs(10);
    const WINDOW: Duration = Duration::from_secs(7);
    let (worker, coordinator) = one_worker(
        |k| {
            k.max_active_per_ip = 1;
            k.job_duration = BLOCKING_JOB;
        },
        4,
        &FAST,
    );

    let ids: Vec<String> = (0..4)
        .map(|n| submit(&coordinator, &job(&format!("print({n})\n"))))
        .collect();
    let (blocking, started) = poll_until(DEADLINE, || worker.recording().started.first().cloned())
        .unwrap_or_else(|| panic!("no job started on the worker"));
    worker.set(|k| k.job_duration = Duration::from_millis(100));
    assert!(
        coordinator.wait_for_log("is throttling: ", DEADLINE),
        "{}",
        coordinator.logs()
    );

    let mut throttled_seen = None;
    let window_over = poll_until(DEADLINE, || {
        let pool = assert_pool_consistent(&coordinator);
        let entry = pool_worker(&pool, &worker);
        assert_eq!(
            entry["is_healthy"], true,
            "a busy worker is not down: {pool}"
        );
        if entry["throttled"] == true {
            throttled_seen = Some(pool.clone());
        }
        let elapsed = SystemTime::now()
            .duration_since(started)
            .unwrap_or_default();
        (elapsed >= WINDOW && throttled_seen.is_some()).then_some(())
    });
    assert!(
        window_over.is_some(),
        "/pool never showed the worker throttled"
    );
    let submits = worker.recording().count("POST", "submit");
    assert_eq!(
        worker.recording().started.len(),
        1,
        "the blocking job {blocking} ended within {WINDOW:?}"
    );
    assert!(
        (2..=8).contains(&submits),
        "{submits} submits in {WINDOW:?} to a worker busy with one job"
    );
    let pool = throttled_seen.unwrap_or_default();
    let entry = pool_worker(&pool, &worker);
    // sandrun's "Rate limit exceeded" is the same limit, hit by two submits checked at once.
    let reason = text(&entry["throttle_reason"]);
    assert!(
        reason == "Max concurrent jobs reached (1)" || reason == "Rate limit exceeded",
        "not sandrun's concurrency 429: {pool}"
    );
    assert!(
        entry["throttled_until"].as_f64() > pool["time"].as_f64(),
        "{pool}"
    );
    assert!(entry["submits_throttled"].as_u64() >= Some(1), "{pool}");
    assert!(pool["queued_jobs"].as_u64() >= Some(1), "{pool}");
    // A job put back after a 429 is on no worker: not named, and not listed under it.
    let (_, queued) = get_json(&coordinator.url("/jobs?status=queued"));
    let queued = queued["jobs"].as_array().cloned().unwrap_or_default();
    assert!(!queued.is_empty(), "no job waits behind the blocking one");
    for job in &queued {
        assert!(job["worker_id"].is_null(), "{job}");
    }

    for id in &ids {
        wait_status(&coordinator, id, "completed", DEADLINE);
    }
    let recording = worker.recording();
    assert_eq!(recording.accepted_ids().len(), 4, "a job ran twice");
    let submits = recording.count("POST", "submit");
    let pool = assert_pool_consistent(&coordinator);
    let entry = pool_worker(&pool, &worker);
    assert_eq!(entry["active_jobs"], 0, "{pool}");
    assert_eq!(entry["jobs_completed"], 4, "{pool}");
    assert_eq!(entry["jobs_accepted"], 4, "{pool}");
    assert_eq!(
        entry["submits_throttled"].as_u64(),
        Some(submits as u64 - 4),
        "{pool}"
    );
}

#[test]
fn a_server_error_sends_the_job_to_another_worker() {
    let failing = FakeWorker::start_with(|k| k.reject_submit = Some((500, "disk full".into())));
    let good = FakeWorker::start();
    let coordinator = Coordinator::start(&[failing.entry(2), good.entry(2)], &FAST);
    wait_healthy(&coordinator, &[&failing, &good], DEADLINE);

    let id = submit(&coordinator, &job("print(1)\n"));
    let status = wait_collected(&coordinator, &id, DEADLINE);
    assert_eq!(status["worker_id"], good.worker_id(), "{status}");
    let attempts = status["attempts"]
        .as_array()
        .unwrap_or_else(|| panic!("no attempts in {status}"));
    assert_eq!(attempts.len(), 1, "{status}");
    assert_eq!(attempts[0]["worker_id"], failing.worker_id(), "{status}");
    let error = text(&attempts[0]["error"]);
    assert!(
        error.contains("500") && error.contains("disk full"),
        "{status}"
    );
    assert_eq!(status["error"], Value::Null, "{status}");
    assert!(coordinator
        .logs()
        .contains(&format!("Job {id} goes back to the head of the queue")));

    assert_eq!(failing.recording().count("POST", "submit"), 1);
    assert_eq!(good.recording().accepted_ids().len(), 1);
    let pool = assert_pool_consistent(&coordinator);
    let entry = pool_worker(&pool, &failing);
    assert_eq!(entry["active_jobs"], 0, "{pool}");
    assert_eq!(entry["jobs_accepted"], 0, "{pool}");
    assert_eq!(pool_worker(&pool, &good)["jobs_completed"], 1, "{pool}");
}

#[test]
fn a_job_out_of_dispatch_attempts_fails_with_every_reason() {
    let failing = FakeWorker::start_with(|k| k.reject_submit = Some((503, "overloaded".into())));
    let coordinator = Coordinator::start(&[failing.entry(2)], &args(&["--max-attempts", "2"]));
    wait_healthy(&coordinator, &[&failing], DEADLINE);

    let id = submit(&coordinator, &job("print(1)\n"));
    let status = wait_status(&coordinator, &id, "failed", DEADLINE);
    let error = text(&status["error"]);
    assert!(error.contains("dispatch failed 2 times"), "{status}");
    assert_eq!(error.matches("overloaded").count(), 2, "{status}");
    assert_eq!(status["attempts"].as_array().map(Vec::len), Some(2));
    assert_eq!(failing.recording().count("POST", "submit"), 2);
    assert_results_refused(&coordinator, &id, 404);
    let pool = assert_pool_consistent(&coordinator);
    assert_eq!(pool["jobs_by_status"]["failed"], 1, "{pool}");
    assert_eq!(pool_worker(&pool, &failing)["active_jobs"], 0, "{pool}");
}

#[test]
fn a_rejected_job_fails_at_once_without_retry() {
    let rejecting = FakeWorker::start_with(|k| {
        k.reject_submit = Some((400, "No entrypoint specified".into()));
    });
    let other = FakeWorker::start();
    let coordinator = Coordinator::start(&[rejecting.entry(2), other.entry(2)], &FAST);
    wait_healthy(&coordinator, &[&rejecting, &other], DEADLINE);

    let id = submit(&coordinator, &job("print(1)\n"));
    let status = wait_status(&coordinator, &id, "failed", DEADLINE);
    let error = text(&status["error"]);
    assert!(
        error.contains("No entrypoint specified") && error.contains("400"),
        "{status}"
    );
    assert_eq!(status["remote_job_id"], Value::Null, "{status}");

    let seen = other.recording().count("GET", "health");
    wait_probes(&other, seen, 2);
    assert_eq!(rejecting.recording().count("POST", "submit"), 1);
    assert_eq!(
        other.recording().count("POST", "submit"),
        0,
        "it was retried"
    );
    assert_eq!(job_status(&coordinator, &id)["pool_status"], "failed");
    assert_results_refused(&coordinator, &id, 404);
    assert_no_uploads(&coordinator, "the failed job's upload stayed in the spool");
    let pool = assert_pool_consistent(&coordinator);
    assert_eq!(pool_worker(&pool, &rejecting)["jobs_failed"], 1, "{pool}");
    assert_eq!(pool_worker(&pool, &rejecting)["active_jobs"], 0, "{pool}");
}

#[test]
fn a_hung_submit_does_not_hold_up_the_other_worker() {
    let hung = FakeWorker::start_with(|k| k.hang_submit = true);
    let good = FakeWorker::start();
    let coordinator = Coordinator::start(
        &[hung.entry(1), good.entry(2)],
        &args(&["--dispatch-timeout", "60"]),
    );
    wait_healthy(&coordinator, &[&hung, &good], DEADLINE);

    let ids: Vec<String> = (0..5)
        .map(|n| submit(&coordinator, &job(&format!("print({n})\n"))))
        .collect();
    let stuck = poll_until(DEADLINE, || {
        ids.iter()
            .find(|id| job_status(&coordinator, id)["worker_id"] == hung.worker_id())
            .cloned()
    })
    .unwrap_or_else(|| panic!("no job went to the hanging worker"));
    for id in ids.iter().filter(|id| **id != stuck) {
        let status = wait_collected(&coordinator, id, DEADLINE);
        assert_eq!(status["worker_id"], good.worker_id(), "{status}");
    }
    let status = job_status(&coordinator, &stuck);
    assert_eq!(status["pool_status"], "dispatched", "{status}");
    assert_eq!(status["remote_job_id"], Value::Null, "{status}");
    assert_eq!(hung.recording().count("POST", "submit"), 1);
    assert_eq!(good.recording().accepted_ids().len(), 4);
    let pool = assert_pool_consistent(&coordinator);
    assert_eq!(pool_worker(&pool, &hung)["active_jobs"], 1, "{pool}");
    assert_eq!(pool_worker(&pool, &hung)["is_healthy"], true, "{pool}");
    assert_eq!(pool_worker(&pool, &good)["active_jobs"], 0, "{pool}");
    assert_eq!(pool["jobs_by_status"]["completed"], 4, "{pool}");
    assert_eq!(pool["jobs_by_status"]["dispatched"], 1, "{pool}");
}

/// A worker whose slots beyond sandrun's usual limit of 2 are not known yet is sent a third job
/// only once the dispatches in flight to it are answered: that job goes out as soon as they are
/// accepted, not when one of the jobs on it ends (it waited for that before: nothing woke the
/// scheduler when a dispatch was accepted).
#[test]
fn a_job_queued_behind_slow_dispatches_goes_out_once_they_are_accepted() {
    // Its jobs never start, so they never end (and never hold its lock against a submit).
    let (worker, coordinator) = one_worker(
        |k| {
            k.poll_interval = Duration::from_secs(3600);
            k.submit_delay = Duration::from_secs(3);
            k.max_active_per_ip = 4;
        },
        4,
        &FAST,
    );
    let ids: Vec<String> = (0..3)
        .map(|n| submit(&coordinator, &job(&format!("print({n})\n"))))
        .collect();
    // The third waits while the first two are in flight (each answered after 3 s).
    assert_eq!(job_status(&coordinator, &ids[2])["pool_status"], "queued");
    let sent = poll_until(DEADLINE, || {
        ids.iter()
            .all(|id| job_status(&coordinator, id)["pool_status"] != "queued")
            .then_some(())
    });
    assert!(
        sent.is_some(),
        "{}",
        get_json(&coordinator.url("/pool")).1["workers"]
    );
    assert_eq!(worker.recording().accepted_ids().len(), 2);
}

#[test]
fn a_job_id_that_would_name_another_path_is_lost_and_never_followed() {
    // The URLs to a job on its worker are built from the id it answered: this one would name
    // the worker's `/stats`.
    let odd = FakeWorker::start_with(|k| k.answered_job_id = Some("../stats?job=1".into()));
    let coordinator = Coordinator::start(&[odd.entry(2)], &FAST);
    wait_healthy(&coordinator, &[&odd], DEADLINE);

    let id = submit(&coordinator, &job("print(1)\n"));
    let status = wait_status(&coordinator, &id, "lost", DEADLINE);
    let error = text(&status["error"]);
    assert!(
        error.contains("a job_id that is no plain id") && error.contains("../stats?job=1"),
        "{status}"
    );
    assert_eq!(status["remote_job_id"], Value::Null, "{status}");
    let seen = odd.recording().count("GET", "health");
    wait_probes(&odd, seen, 2);
    assert_eq!(
        odd.recording().count("GET", "stats"),
        0,
        "the odd id was followed"
    );
    assert_eq!(
        odd.recording().count("POST", "submit"),
        1,
        "it was sent again"
    );
}

#[test]
fn a_dispatch_without_answer_is_lost_and_never_run_again() {
    let hung = FakeWorker::start_with(|k| k.hang_submit = true);
    let good = FakeWorker::start();
    let coordinator = Coordinator::start(
        &[hung.entry(1), good.entry(2)],
        &args(&["--dispatch-timeout", "2"]),
    );
    wait_healthy(&coordinator, &[&hung, &good], DEADLINE);

    let lost = submit(&coordinator, &job("print('first')\n"));
    let status = wait_status(&coordinator, &lost, "lost", DEADLINE);
    let error = text(&status["error"]);
    assert!(
        error.contains("unknown outcome") && error.contains("not run again"),
        "{status}"
    );
    assert_results_refused(&coordinator, &lost, 410);

    let next = submit(&coordinator, &job("print('second')\n"));
    let status = wait_collected(&coordinator, &next, DEADLINE);
    assert_eq!(status["worker_id"], good.worker_id(), "{status}");
    let seen = good.recording().count("GET", "health");
    wait_probes(&good, seen, 2);
    assert_eq!(hung.recording().count("POST", "submit"), 1);
    let received = good.recording();
    assert_eq!(received.jobs.len(), 1, "the lost job was sent again");
    assert_eq!(received.jobs[0].files[0].bytes, b"print('second')\n");
    assert_eq!(job_status(&coordinator, &lost)["pool_status"], "lost");
    let pool = assert_pool_consistent(&coordinator);
    let entry = pool_worker(&pool, &hung);
    assert_eq!(entry["active_jobs"], 0, "{pool}");
    assert_eq!(entry["jobs_lost"], 1, "{pool}");
    assert_eq!(pool["jobs_by_status"]["lost"], 1, "{pool}");

    // A job that asked for a rerun is sent again after such a dispatch, to the other worker.
    set_drain(&coordinator, &good, "drain");
    let form = job("print('third')\n").field("reruns", b"1");
    let rerun = submit(&coordinator, &form);
    let sent = poll_until(DEADLINE, || {
        (hung.recording().count("POST", "submit") == 2).then_some(())
    });
    assert!(sent.is_some(), "the job did not go to the hanging worker");
    set_drain(&coordinator, &good, "undrain");
    let status = wait_collected(&coordinator, &rerun, DEADLINE);
    assert_eq!(status["worker_id"], good.worker_id(), "{status}");
    let runs = status["reruns"]["lost_runs"].clone();
    assert_eq!(runs[0]["worker_id"], hung.worker_id(), "{status}");
    assert!(
        text(&runs[0]["error"]).contains("unknown outcome"),
        "{status}"
    );
    assert_eq!(hung.recording().count("POST", "submit"), 2);
    assert_eq!(good.recording().jobs.len(), 2);
}

#[test]
fn a_job_whose_worker_dies_is_lost_and_frees_its_slot() {
    let (worker, coordinator) = one_worker(
        |k| k.job_duration = Duration::from_secs(30),
        1,
        &args(&["--lost-after", "2"]),
    );

    let id = submit(&coordinator, &job("print(1)\n"));
    let started = poll_until(DEADLINE, || {
        (!worker.recording().started.is_empty()).then_some(())
    });
    assert!(started.is_some(), "the job never started");
    worker.stop();

    let status = wait_status(&coordinator, &id, "lost", DEADLINE);
    assert!(
        text(&status["error"]).contains("no answer from its worker"),
        "{status}"
    );
    assert!(status["completed_at"].as_f64().is_some(), "{status}");
    assert_results_refused(&coordinator, &id, 410);
    let pool = assert_pool_consistent(&coordinator);
    let entry = pool_worker(&pool, &worker);
    assert_eq!(entry["active_jobs"], 0, "the slot stayed taken: {pool}");
    assert_eq!(entry["jobs_lost"], 1, "{pool}");
    assert_eq!(entry["tracked_jobs"], 0, "{pool}");
    assert_eq!(pool["jobs_by_status"]["lost"], 1, "{pool}");

    let short = &worker.worker_id()[..12];
    assert!(
        coordinator.wait_for_log(&format!("Worker {short}... is now unhealthy"), DEADLINE),
        "{}",
        coordinator.logs()
    );
    worker.set(|k| k.job_duration = Duration::ZERO);
    worker.restart();
    assert!(
        coordinator.wait_for_log(&format!("Worker {short}... is healthy again"), DEADLINE),
        "{}",
        coordinator.logs()
    );
    let next = submit(&coordinator, &job("print(2)\n"));
    wait_collected(&coordinator, &next, DEADLINE);
    assert_eq!(job_status(&coordinator, &id)["pool_status"], "lost");
    let pool = assert_pool_consistent(&coordinator);
    assert_eq!(pool["jobs_by_status"]["completed"], 1, "{pool}");
    assert_eq!(pool["jobs_by_status"]["lost"], 1, "{pool}");
}

/// `--lost-after` counts on the monotonic clock. A wall clock set a day ahead (an NTP sync on
/// a board without a real-time clock) while a job runs must not make a worker's first missed
/// answer lose it, and one set back must not keep a dead worker's job for good. The
/// coordinator runs under libfaketime with its wall clock moved, its monotonic clock left be.
#[test]
fn a_wall_clock_set_forward_or_back_neither_loses_a_job_nor_keeps_a_dead_workers_job() {
    let worker = FakeWorker::start_with(|k| k.job_duration = Duration::from_secs(8));
    let dir = support::workers_dir(&[worker.entry(1)]);
    let Some(clock) = FakeClock::in_dir(dir.path()) else {
        return;
    };
    let env = clock.env();
    let coordinator =
        Coordinator::try_start_in_env(dir.path(), &args(&["--lost-after", "10"]), &env)
            .unwrap_or_else(|e| panic!("{e}"));
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let started = |n: usize| {
        let seen = poll_until(DEADLINE, || {
            (worker.recording().started.len() >= n).then_some(())
        });
        assert!(seen.is_some(), "job {n} never started");
    };

    let ahead = submit(&coordinator, &job("print('ahead')\n"));
    started(1);
    // A moment without answers, much shorter than --lost-after, while the clock jumps.
    worker.set(|k| k.hang = true);
    clock.set("+1d");
    wait_clock(&coordinator, 86_400.0, DEADLINE);
    std::thread::sleep(Duration::from_millis(1500));
    worker.set(|k| k.hang = false);
    let ended = poll_until(DEADLINE, || {
        let status = job_status(&coordinator, &ahead);
        matches!(
            status["pool_status"].as_str(),
            Some("completed" | "failed" | "lost")
        )
        .then_some(status)
    })
    .unwrap_or_else(|| panic!("job {ahead} never ended"));
    assert_eq!(ended["pool_status"], "completed", "{ended}");

    let behind = submit(&coordinator, &job("print('behind')\n"));
    started(2);
    clock.set("-1d");
    wait_clock(&coordinator, -86_400.0, DEADLINE);
    worker.stop();
    let status = wait_status(&coordinator, &behind, "lost", DEADLINE);
    assert!(
        text(&status["error"]).contains("no answer from its worker"),
        "{status}"
    );
}

/// `POST /workers/{id}/{action}` (`drain` or `undrain`), which must answer 200.
fn set_drain(coordinator: &Coordinator, worker: &FakeWorker, action: &str) {
    let (code, body) = support::post(&drain_url(coordinator, worker, action), "text/plain", b"");
    assert_eq!(code, 200, "{action}: {body}");
}

/// A job submitted with `reruns` runs again after its run is lost, on another worker, with its
/// upload byte for byte (kept on disk meanwhile, also across a `kill -9` of the coordinator);
/// a job without reruns on the same worker is lost, as ever. Asking for more reruns than
/// `--max-reruns`, or for a non-number, is refused before anything is kept.
#[test]
fn a_job_with_reruns_lost_on_its_worker_runs_again_on_another() {
    // Its jobs never start (sandrun runs one at a time and holds its lock meanwhile, which
    // would hold up the third submit): they wait in its queue until it dies.
    let doomed = FakeWorker::start_with(|k| {
        k.poll_interval = Duration::from_secs(3600);
        k.max_active_per_ip = 3;
    });
    let spare = FakeWorker::start();
    let dir = support::workers_dir(&[doomed.entry(3), spare.entry(2)]);
    let extra = args(&["--lost-after", "2", "--max-reruns", "2"]);
    let mut coordinator = Coordinator::start_in(dir.path(), &extra);
    wait_healthy(&coordinator, &[&doomed, &spare], DEADLINE);
    set_drain(&coordinator, &spare, "drain");

    for (query, part, wanted) in [
        (
            "?reruns=3",
            None,
            "more than this coordinator allows (--max-reruns 2)",
        ),
        ("?reruns=two", None, "is not a whole number"),
        ("", Some("-1"), "is not a whole number of 0 or more"),
        ("?reruns=1", Some("1"), "both as a part and in the query"),
    ] {
        let mut form = job("print(1)\n");
        if let Some(value) = part {
            form = form.field("reruns", value.as_bytes());
        }
        let (code, body) =
            support::post_multipart(&coordinator.url(&format!("/submit{query}")), &form);
        assert_eq!(code, 400, "{query} {part:?}: {body}");
        assert!(body.contains(wanted), "{query} {part:?}: {body}");
    }

    // Over 64 KiB, so the upload waits on disk, not in the job's row.
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let rerun_form = job("print(open('data.bin','rb').read()[:4])\n").file(
        "data.bin",
        "application/octet-stream",
        &data,
    );
    let (code, body) = support::post_multipart(&coordinator.url("/submit?reruns=1"), &rerun_form);
    assert_eq!(code, 200, "{body}");
    let rerun: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let rerun = text(&rerun["job_id"]);
    let once = submit(&coordinator, &job("print(2)\n"));
    // A small upload, held in memory and in the job's row; the reruns given as a part.
    let small = submit(&coordinator, &job("print(3)\n").field("reruns", b"2"));
    let taken = poll_until(DEADLINE, || {
        (doomed.recording().accepted_ids().len() == 3).then_some(())
    });
    assert!(taken.is_some(), "the jobs never reached the first worker");
    let status = job_status(&coordinator, &rerun);
    assert_eq!(status["reruns"]["allowed"], 1, "{status}");
    assert_eq!(status["reruns"]["left"], 1, "{status}");
    assert!(job_status(&coordinator, &once)["reruns"].is_null());

    // Killed and restarted while all three are on the worker: the uploads of the jobs that
    // may run again are still kept. The kill waits until the store holds the worker's job id
    // of each: the worker may accept a job a moment before its answer is committed, and a
    // job whose answer was never recorded is lost at the restart instead (and queued again
    // at once, before anyone could follow it).
    let dispatched =
        "SELECT count(*) FROM jobs WHERE json_extract(record, '$.remote_job_id') IS NOT NULL";
    wait_committed(&coordinator, dispatched, 3, DEADLINE);
    coordinator.kill();
    let coordinator = Coordinator::start_in(dir.path(), &extra);
    let (_, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(pool["spool"]["uploads_on_disk"], 1, "{pool}");
    assert_eq!(pool["spool"]["uploads_in_memory"], 1, "{pool}");
    set_drain(&coordinator, &spare, "undrain");
    let mut follower = support::follow::follow_logs(coordinator.port(), &small);
    assert_eq!(follower.status, 200);
    doomed.stop();

    let lost = wait_status(&coordinator, &once, "lost", DEADLINE);
    assert!(
        text(&lost["error"]).contains("no answer from its worker"),
        "{lost}"
    );
    let done = wait_collected(&coordinator, &rerun, DEADLINE);
    assert_eq!(done["pool_status"], "completed", "{done}");
    assert_eq!(done["worker_id"], spare.worker_id().as_str(), "{done}");
    assert_eq!(done["reruns"]["left"], 0, "{done}");
    let runs = done["reruns"]["lost_runs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(runs.len(), 1, "{done}");
    assert_eq!(runs[0]["worker_id"], doomed.worker_id().as_str(), "{done}");
    assert!(
        text(&runs[0]["error"]).contains("no answer from its worker"),
        "{done}"
    );
    // Its follower stays on it through the rerun, to its end.
    let heard = follower.wait_for("[DONE] Job completed", DEADLINE);
    let told = follower.text();
    assert!(heard.is_some(), "{told}");
    let again = told.find("queued again (rerun 1 of 2)");
    let dispatched = told.find(&format!(
        "dispatched to worker {}",
        &spare.worker_id()[..12]
    ));
    assert!(again.is_some() && dispatched > again, "{told}");
    let small_done = wait_collected(&coordinator, &small, DEADLINE);
    assert_eq!(small_done["pool_status"], "completed", "{small_done}");
    assert_eq!(small_done["reruns"]["allowed"], 2, "{small_done}");
    assert_eq!(small_done["reruns"]["left"], 1, "{small_done}");
    let received = spare.recording();
    let sent = received
        .jobs
        .iter()
        .find_map(|j| j.files.iter().find(|f| f.filename == "data.bin"))
        .unwrap_or_else(|| panic!("the rerun never reached the spare worker"));
    assert!(sent.bytes == data, "the rerun's upload differs");
    assert_eq!(received.jobs.len(), 2, "the spare got more than the reruns");
    assert!(
        received
            .jobs
            .iter()
            .any(|j| j.files.iter().any(|f| f.bytes == b"print(3)\n")),
        "the small rerun's upload differs"
    );

    let pool = assert_pool_consistent(&coordinator);
    assert_eq!(pool["queue"]["reruns"], 2, "{pool}");
    assert_eq!(pool["jobs_by_status"]["lost"], 1, "{pool}");
    let (_, metrics) = support::get(&coordinator.url("/metrics"));
    assert!(
        metrics
            .lines()
            .any(|l| l == "trusted_pool_job_reruns_total 2"),
        "{metrics}"
    );
    // The log reaches the test through a pipe, maybe after the metrics.
    for line in [
        "queued again for rerun 1 of 1",
        "queued again for rerun 1 of 2",
    ] {
        assert!(
            coordinator.wait_for_log(line, DEADLINE),
            "{}",
            coordinator.logs()
        );
    }
    let settled = poll_until(DEADLINE, || {
        let (_, pool) = get_json(&coordinator.url("/pool"));
        (pool["spool"]["uploads_on_disk"] == 0 && pool["spool"]["uploads_in_memory"] == 0)
            .then_some(())
    });
    assert!(settled.is_some(), "the rerun jobs' uploads stayed");
    assert_no_uploads(&coordinator, "after the rerun settled");
}

/// A worker that answers a byte now and then (a broken link, or a worker that never quite
/// stops): each read meets its timeout, but the answer as a whole is held to `--health-timeout`
/// plus `--dispatch-timeout`. A submit so answered leaves its job `lost` (it may or may not run
/// there); a job whose status is so answered is `lost` once its worker was silent past
/// `--lost-after`. Before, both stayed as they were for as long as the bytes kept coming.
#[test]
fn answers_that_trickle_in_are_cut_at_the_bound_of_a_whole_answer() {
    for kind in ["submit", "status"] {
        let worker = FakeWorker::start_with(|k| k.drip = Some((kind, Duration::from_millis(300))));
        let coordinator = Coordinator::start(
            &[worker.entry(2)],
            &args(&[
                "--health-timeout",
                "1",
                "--dispatch-timeout",
                "2",
                "--lost-after",
                "3",
            ]),
        );
        wait_healthy(&coordinator, &[&worker], DEADLINE);
        let id = submit(&coordinator, &job("print(1)\n"));
        let status = wait_status(&coordinator, &id, "lost", DEADLINE);
        assert!(status["error"].is_string(), "{kind}: {status}");
        let pool = assert_pool_consistent(&coordinator);
        assert_eq!(
            pool_worker(&pool, &worker)["active_jobs"],
            0,
            "{kind}: {pool}"
        );
    }
}

/// A job its worker said runs never goes back to waiting: a later `queued`, or a status the
/// coordinator does not know, leaves it `running`, and it ends as its worker says at last.
#[test]
fn a_running_job_never_goes_back_to_dispatched() {
    let (worker, coordinator) = one_worker(|k| k.job_duration = Duration::from_secs(3), 2, &FAST);
    let id = submit_seen_running(&coordinator, &worker, &job("print(1)\n"), DEADLINE);
    for said in ["queued", "zombie"] {
        worker.set(|k| k.reported_status = Some(said));
        let asked = worker.recording().count("GET", "status");
        poll_until(DEADLINE, || {
            (worker.recording().count("GET", "status") >= asked + 2).then_some(())
        })
        .unwrap_or_else(|| panic!("the job's status was not asked for again"));
        assert_eq!(
            job_status(&coordinator, &id)["pool_status"],
            "running",
            "{said}"
        );
    }
    worker.set(|k| k.reported_status = None);
    wait_collected(&coordinator, &id, DEADLINE);
}

/// Polls job `id` until its results are collected or it ended other than `completed` (lost,
/// failed); returns that status.
fn wait_results(coordinator: &Coordinator, id: &str) -> Value {
    let mut last = Value::Null;
    poll_until(DEADLINE, || {
        last = job_status(coordinator, id);
        let collected = last["results"]["collected"] == true;
        let ended_otherwise = matches!(
            last["pool_status"].as_str(),
            Some("failed" | "lost" | "cancelled")
        );
        (collected || ended_otherwise).then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("job {id} was neither collected nor ended in {DEADLINE:?}: {last}"))
}

/// Waits until the worker received `n` downloads (the first `stalled_downloads` of them stall).
fn wait_downloads(worker: &FakeWorker, n: usize) {
    let seen = poll_until(DEADLINE, || {
        (worker.recording().count("GET", "download") >= n).then_some(())
    });
    assert!(seen.is_some(), "the worker got no download");
}

/// Asserts the worker's job counters in `/pool` and `/metrics`: `(completed, failed, lost)` of
/// its one accepted job.
fn assert_counted(coordinator: &Coordinator, worker: &FakeWorker, ends: (u64, u64, u64)) {
    let pool = assert_pool_consistent(coordinator);
    let entry = pool_worker(&pool, worker);
    let (completed, failed, lost) = ends;
    for (counter, wanted) in [
        ("jobs_accepted", 1),
        ("jobs_completed", completed),
        ("jobs_failed", failed),
        ("jobs_lost", lost),
    ] {
        assert_eq!(entry[counter], wanted, "{counter}: {pool}");
    }
    let (code, metrics) = get(&coordinator.url("/metrics"));
    assert_eq!(code, 200, "{metrics}");
    for (status, wanted) in [("completed", completed), ("failed", failed), ("lost", lost)] {
        let label = format!("status=\"{status}\"}} ");
        let sample = metrics
            .lines()
            .find(|l| {
                l.starts_with("trusted_pool_worker_jobs_finished_total{") && l.contains(&label)
            })
            .unwrap_or_else(|| panic!("no {status} sample of the worker in {metrics}"));
        assert!(sample.ends_with(&format!("}} {wanted}")), "{sample}");
    }
}

/// A finished job whose results download stalls mid-body (headers and half the body, then
/// nothing), twice: each try fails only after `--dispatch-timeout`, longer than
/// `--lost-after`, but the worker answers that it still has the job, so the collection is
/// tried again after a pause (1 s, then 2 s), never counted towards `--lost-after`, and the job
/// ends collected, counted once. Before, the first stalled download lost the job ("no answer
/// from its worker for 3 s"), and its worker counted it completed and lost.
#[test]
fn a_collection_whose_downloads_stall_is_retried_while_the_worker_has_the_job() {
    const STALLS: usize = 2;
    let (worker, coordinator) = one_worker(
        |k| {
            k.job_duration = Duration::from_secs(1);
            k.stalled_downloads = STALLS;
        },
        1,
        &args(&["--dispatch-timeout", "3", "--lost-after", "2"]),
    );
    let id = submit(&coordinator, &job("print(1)\n"));
    let status = wait_results(&coordinator, &id);
    assert_eq!(status["pool_status"], "completed", "{status}");
    let remote = text(&status["remote_job_id"]);
    let (code, bytes) = get_bytes(&coordinator.url(&format!("/outputs/{id}/result.txt")));
    assert_eq!(
        (code, bytes),
        (200, format!("result of {remote}\n").into_bytes())
    );
    // One try per stall, then the one that got both outputs: the tries waited, none spun.
    let recording = worker.recording();
    assert_eq!(recording.count("GET", "logs"), STALLS + 1);
    assert_eq!(recording.count("GET", "download"), STALLS + 2);
    for pause in ["1.0", "2.0"] {
        let line = format!("its worker still has it; trying again in {pause} s");
        assert!(
            coordinator.wait_for_log(&line, DEADLINE),
            "{}",
            coordinator.logs()
        );
    }
    assert_counted(&coordinator, &worker, (1, 0, 0));
}

/// An output its worker lists but cannot serve (sandrun's 500 for a file gone from the job's
/// directory) is left out, and the rest of the job's results are collected at once: the job
/// completes with its other output and its logs, and its verification names the missing
/// output and the worker's answer. (Each try of the whole collection failed on it, until the
/// worker deleted the job and the job was lost, with no result kept.) So is an output that is
/// a link to a file outside the job's directory, which sandrun lists and answers 403.
#[test]
fn an_output_its_worker_cannot_serve_is_left_out_and_the_rest_collected() {
    let (worker, coordinator) = one_worker(
        |k| {
            k.vanished_output = Some("ghost.txt".into());
            k.linked_output = Some("link.txt".into());
        },
        1,
        &FAST,
    );
    let form = job("print(1)\n").manifest(r#"{"entrypoint":"main.py","outputs":["result.txt"]}"#);
    let id = submit(&coordinator, &form);
    let status = wait_collected(&coordinator, &id, DEADLINE);
    let remote = text(&status["remote_job_id"]);
    assert_eq!(status["verification"]["outputs"], "mismatch", "{status}");
    let reason = text(&status["verification"]["reason"]);
    assert!(
        reason.contains("ghost.txt was not collected (its worker could not serve it: HTTP 500: filesystem error"),
        "{status}"
    );
    assert!(
        reason.contains(
            "link.txt was not collected (its worker could not serve it: HTTP 403: Access denied"
        ),
        "{status}"
    );
    let (code, bytes) = get_bytes(&coordinator.url(&format!("/outputs/{id}/result.txt")));
    assert_eq!(
        (code, bytes),
        (200, format!("result of {remote}\n").into_bytes())
    );
    let (code, logs) = get_json(&coordinator.url(&format!("/logs/{id}")));
    assert_eq!(
        (code, text(&logs["stdout"])),
        (200, "ran main.py\n".to_string())
    );
    let (code, missing) = get_json(&coordinator.url(&format!("/outputs/{id}/ghost.txt")));
    assert_eq!(code, 404, "{missing}");
    assert!(
        text(&missing["error"]).contains("its worker did not list or serve it"),
        "{missing}"
    );
    let (_, listing) = get_json(&coordinator.url(&format!("/outputs/{id}")));
    let ghost = listing["files"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["name"] == "ghost.txt")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (&ghost["collected"], &ghost["download_url"]),
        (&Value::Bool(false), &Value::Null),
        "{listing}"
    );
    assert_eq!(
        worker.recording().count("GET", "logs"),
        1,
        "collected in one try"
    );
    assert!(coordinator.wait_for_log(
        &format!("Job {id}: its worker could not serve its output \"ghost.txt\""),
        DEADLINE
    ));
}

/// A finished job whose worker deletes it while its results download is stalled: asked, the
/// worker answers 404, so the job is lost with the last try's reason, and counted once, as
/// lost (before, its worker counted it completed too).
#[test]
fn a_finished_job_its_worker_deletes_before_collection_is_lost_and_counted_once() {
    let (worker, coordinator) = one_worker(
        |k| k.stalled_downloads = 1,
        1,
        &args(&["--dispatch-timeout", "3", "--lost-after", "30"]),
    );
    let id = submit(&coordinator, &job("print(1)\n"));
    wait_downloads(&worker, 1);
    let remote = text(&job_status(&coordinator, &id)["remote_job_id"]);
    // sandrun deletes a job once its whole directory was downloaded.
    let (code, _) = get_bytes(&worker.url(&format!("/download/{remote}")));
    assert_eq!(code, 200);
    let status = wait_status(&coordinator, &id, "lost", DEADLINE);
    assert!(
        text(&status["error"]).contains(
            "the worker deleted the job before its results were collected (the last try: \
             collecting results from the worker failed"
        ),
        "{status}"
    );
    assert_counted(&coordinator, &worker, (0, 0, 1));
}

/// A finished job whose worker dies while its results download is stalled: the worker cannot
/// say whether it still has the job, so the job is lost once its worker was silent past
/// `--lost-after`, and counted once, as lost.
#[test]
fn a_finished_job_whose_worker_dies_before_collection_is_lost_after_its_silence() {
    let (worker, coordinator) = one_worker(
        |k| k.stalled_downloads = 1,
        1,
        &args(&["--dispatch-timeout", "3", "--lost-after", "3"]),
    );
    let id = submit(&coordinator, &job("print(1)\n"));
    wait_downloads(&worker, 1);
    worker.stop();
    let status = wait_status(&coordinator, &id, "lost", DEADLINE);
    let error = text(&status["error"]);
    assert!(
        error.contains("no answer from its worker for")
            && error.contains("asked whether it still has the job"),
        "{status}"
    );
    assert_counted(&coordinator, &worker, (0, 0, 1));
}

/// A `--dispatch-timeout` shorter than a sandrun job may run (300 s) is warned about at start,
/// naming the flag and what it costs; the default (360 s) and longer ones are not.
#[test]
fn a_dispatch_timeout_shorter_than_a_sandrun_run_is_warned_about() {
    let worker = FakeWorker::start();
    let warning = "is shorter than the 300 s a sandrun job may run";
    let short = Coordinator::start(&[worker.entry(1)], &["--dispatch-timeout", "60"]);
    let logs = short.logs();
    assert!(
        logs.contains(&format!("--dispatch-timeout 60 s {warning}")),
        "{logs}"
    );
    assert!(logs.contains("--lost-after 120 s"), "{logs}");
    drop(short);
    for extra in [&[][..], &["--dispatch-timeout", "300"][..]] {
        let quiet = Coordinator::start(&[worker.entry(1)], extra);
        assert!(
            quiet.logs().contains("Listening on") && !quiet.logs().contains(warning),
            "{extra:?}: {}",
            quiet.logs()
        );
    }
}

/// The error of a job whose worker gave its job id to a later job.
const ID_GIVEN_AGAIN: &str = "its worker gave its job id to another job it took later";

/// Job ids the fake worker gives out, whatever the clock: a restart falls within their second.
const FROZEN_ID_SECONDS: u64 = 1_800_000_000;

/// A job that prints `ran NAME.py` (the simulated runner) under its own entrypoint.
fn named_job(name: &str) -> Form {
    Form::new()
        .file(&format!("{name}.py"), "text/x-python", b"print(1)\n")
        .manifest(&format!("{{\"entrypoint\":\"{name}.py\"}}"))
}

/// Waits until job `id` was dispatched, and returns its worker's job id.
fn wait_remote_id(coordinator: &Coordinator, id: &str) -> String {
    poll_until(DEADLINE, || {
        job_status(coordinator, id)["remote_job_id"]
            .as_str()
            .map(str::to_string)
    })
    .unwrap_or_else(|| panic!("job {id} was never dispatched: {}", coordinator.logs()))
}

/// The job `id` ran on its worker and its results, collected, are its own.
fn assert_collected_as(coordinator: &Coordinator, id: &str, name: &str) {
    wait_collected(coordinator, id, DEADLINE);
    let (code, logs) = get_json(&coordinator.url(&format!("/logs/{id}")));
    assert_eq!(code, 200, "{logs}");
    assert!(
        text(&logs["stdout"]).contains(&format!("ran {name}.py")),
        "{logs}"
    );
}

/// Cancels job `first` when `cancel`, then restarts `worker` answering asks about jobs a byte
/// a second, so that no answer about the first job from the restarted worker (a 404) reaches
/// the coordinator before another job takes its id (the coordinator gives up on such an ask
/// after `--dispatch-timeout`, and asks again).
fn restart_answering_slowly(
    coordinator: &Coordinator,
    worker: &FakeWorker,
    first: &str,
    cancel: bool,
) {
    if cancel {
        let (code, body) = post(
            &coordinator.url(&format!("/cancel/{first}")),
            "text/plain",
            b"",
        );
        assert_eq!(code, 200, "{body}");
    }
    worker.set(|k| k.drip = Some(("status", Duration::from_secs(1))));
    worker.stop();
    worker.restart();
}

/// sandrun numbers its jobs `job_<unix seconds>_<counter>`, its counter starting again at each
/// start: a worker that restarts within the second of an id it gave out gives that id to its
/// next job. The coordinator, still following the first job under that id, must not read the
/// second job's status as the first's, nor collect its results as the first's: the first job
/// is lost (its worker restarted, so it no longer has it) the moment the id comes back.
#[test]
fn a_job_id_a_restarted_worker_gives_again_loses_the_job_that_held_it() {
    let (coordinator, worker, first) = a_job_id_given_again(false);
    let status = job_status(&coordinator, &first);
    assert!(text(&status["error"]).contains(ID_GIVEN_AGAIN), "{status}");
    assert_results_refused(&coordinator, &first, 410);
    let pool = assert_pool_consistent(&coordinator);
    let entry = pool_worker(&pool, &worker);
    assert_eq!(entry["jobs_lost"], 1, "{pool}");
    assert_eq!(entry["jobs_completed"], 1, "{pool}");
}

/// The same with the first job cancelled while it ran: it waits for its worker to end it, and
/// the job that took its id is not taken for it (nor deleted on the worker as it).
#[test]
fn a_cancelled_job_whose_id_a_restarted_worker_gives_again_leaves_the_new_job_alone() {
    let (coordinator, _worker, first) = a_job_id_given_again(true);
    let status = job_status(&coordinator, &first);
    assert_eq!(status["pool_status"], "cancelled", "{status}");
}

/// A job held running on a worker whose job ids read one frozen second (cancelled when
/// `cancel`), then the worker restarted and a second job sent to it, which takes the first
/// job's worker job id; checks that the first job is no longer followed and the second runs
/// and is collected as its own; returns the coordinator, the worker and the first job's id.
fn a_job_id_given_again(cancel: bool) -> (Coordinator, FakeWorker, String) {
    let (worker, coordinator) = one_worker(
        |k| {
            k.id_seconds = Some(FROZEN_ID_SECONDS);
            k.hold_jobs = true;
        },
        2,
        &args(&["--lost-after", "600"]),
    );
    let first = submit(&coordinator, &named_job("first"));
    wait_started(&coordinator, &worker, &first, DEADLINE);
    let remote = wait_remote_id(&coordinator, &first);
    restart_answering_slowly(&coordinator, &worker, &first, cancel);
    let second = submit(&coordinator, &named_job("second"));
    assert_eq!(wait_remote_id(&coordinator, &second), remote);
    assert!(
        coordinator.wait_for_log(
            &format!("Job {second} holds worker job id {remote} too"),
            DEADLINE
        ),
        "{}",
        coordinator.logs()
    );
    let wanted = if cancel { "cancelled" } else { "lost" };
    let untracked = poll_until(DEADLINE, || {
        let pool = get_json(&coordinator.url("/pool")).1;
        let status = job_status(&coordinator, &first);
        (pool_worker(&pool, &worker)["tracked_jobs"] == 1 && status["pool_status"] == wanted)
            .then_some(())
    });
    assert!(untracked.is_some(), "{}", coordinator.logs());
    worker.set(|k| {
        k.drip = None;
        k.hold_jobs = false;
    });
    assert_collected_as(&coordinator, &second, "second");
    let pool = assert_pool_consistent(&coordinator);
    let entry = pool_worker(&pool, &worker);
    assert_eq!(entry["active_jobs"], 0, "{pool}");
    assert_eq!(entry["tracked_jobs"], 0, "{pool}");
    (coordinator, worker, first)
}

/// A coordinator that stopped after it recorded a dispatch whose job id another job on the
/// same worker held, before it recorded that job's loss, finds both at its restart: the job
/// dispatched earlier is lost, the later one followed to its end.
#[test]
fn a_restart_that_finds_two_jobs_holding_one_worker_job_id_loses_the_earlier() {
    // Both wait in the worker's queue: sandrun holds its jobs lock, submits' too, during a run.
    let worker = FakeWorker::start_with(|k| k.hold_queue = true);
    let dir = support::workers_dir(&[worker.entry(2)]);
    let mut coordinator = Coordinator::start_in(dir.path(), &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let first = submit(&coordinator, &named_job("first"));
    wait_remote_id(&coordinator, &first);
    let second = submit(&coordinator, &named_job("second"));
    let later = wait_remote_id(&coordinator, &second);
    let stopped = coordinator.terminate(DEADLINE);
    assert_eq!(stopped.and_then(|s| s.code()), Some(0));

    // The first job's record as if its worker had given it the second job's id.
    let db = coordinator.state_dir().join("jobs.db");
    let conn = rusqlite::Connection::open(&db).unwrap_or_else(|e| panic!("{e}"));
    let record: String = conn
        .query_row("SELECT record FROM jobs WHERE id = ?1", [&first], |row| {
            row.get(0)
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let mut record: Value = serde_json::from_str(&record).unwrap_or_else(|e| panic!("{e}"));
    assert!(record["remote_job_id"].is_string(), "{record}");
    record["remote_job_id"] = Value::from(later.as_str());
    conn.execute(
        "UPDATE jobs SET record = ?1 WHERE id = ?2",
        [record.to_string(), first.clone()],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    drop(conn);

    let coordinator = Coordinator::start_in(dir.path(), &FAST);
    let status = wait_status(&coordinator, &first, "lost", DEADLINE);
    assert!(text(&status["error"]).contains(ID_GIVEN_AGAIN), "{status}");
    worker.set(|k| k.hold_queue = false);
    assert_collected_as(&coordinator, &second, "second");
    let pool = assert_pool_consistent(&coordinator);
    let entry = pool_worker(&pool, &worker);
    assert_eq!(entry["active_jobs"], 0, "{pool}");
    assert_eq!(entry["tracked_jobs"], 0, "{pool}");
}

/// The error of a job whose worker's answer about its id named another job.
const ANOTHER_JOB: &str = "its worker's answer about its job id named another job";

/// A job sent to a restarted worker around the coordinator can take the id of a job the
/// coordinator follows there, unseen by any dispatch. sandrun fixes a job's `job_hash` at its
/// submit: an answer about the id with another `job_hash` than before names another job, and
/// the job that held the id is lost, never completed with the other job's results.
#[test]
fn a_job_id_a_restarted_worker_gives_to_a_job_sent_around_the_coordinator_loses_the_job() {
    let (coordinator, worker, first, _) = a_job_id_taken_around_the_coordinator(false);
    let status = job_status(&coordinator, &first);
    assert!(text(&status["error"]).contains(ANOTHER_JOB), "{status}");
    assert_results_refused(&coordinator, &first, 410);
    let pool = assert_pool_consistent(&coordinator);
    assert_eq!(pool_worker(&pool, &worker)["jobs_lost"], 1, "{pool}");
}

/// The same with the first job cancelled: the coordinator waits for its worker to end it, then
/// deletes it there; the job that took its id is left alone, however it ends.
#[test]
fn a_cancelled_job_whose_id_a_job_sent_around_the_coordinator_takes_is_not_deleted_as_it() {
    let (coordinator, worker, first, remote) = a_job_id_taken_around_the_coordinator(true);
    assert_eq!(job_status(&coordinator, &first)["pool_status"], "cancelled");
    worker.set(|k| k.hold_queue = false);
    let ended = poll_until(DEADLINE, || {
        let (_, status) = get_json(&worker.url(&format!("/status/{remote}")));
        (status["status"] == "completed").then_some(())
    });
    assert!(
        ended.is_some(),
        "the job sent around the coordinator never ended"
    );
    let seen = worker.recording().count("GET", "health");
    wait_probes(&worker, seen, 2);
    let (code, status) = get_json(&worker.url(&format!("/status/{remote}")));
    assert_eq!(code, 200, "the coordinator deleted the other job: {status}");
    assert_eq!(worker.recording().count("GET", "download"), 0);
}

/// A job waiting in the queue of a worker whose job ids read one frozen second (cancelled
/// when `cancel`), whose `job_hash` the coordinator heard; then the worker restarted and a job
/// sent to it directly, which takes the first job's worker job id, and the coordinator no
/// longer follows the first job. Returns the coordinator, the worker, the first job's id and
/// the worker job id.
fn a_job_id_taken_around_the_coordinator(
    cancel: bool,
) -> (Coordinator, FakeWorker, String, String) {
    let (worker, coordinator) = one_worker(
        |k| {
            k.id_seconds = Some(FROZEN_ID_SECONDS);
            k.hold_queue = true;
        },
        2,
        &args(&["--lost-after", "600", "--dispatch-timeout", "5"]),
    );
    let first = submit(&coordinator, &named_job("first"));
    let remote = wait_remote_id(&coordinator, &first);
    let heard = poll_until(DEADLINE, || {
        let hash = job_status(&coordinator, &first)["job_hash"].clone();
        hash.as_str().is_some_and(|h| !h.is_empty()).then_some(())
    });
    assert!(
        heard.is_some(),
        "the coordinator never heard the job's job_hash"
    );
    restart_answering_slowly(&coordinator, &worker, &first, cancel);
    let (code, body) = support::post_multipart(&worker.url("/submit"), &named_job("other"));
    assert_eq!(code, 200, "{body}");
    let taken: Value = serde_json::from_str(&body).unwrap_or_default();
    assert_eq!(taken["job_id"], remote.as_str(), "{body}");
    worker.set(|k| k.drip = None);

    let wanted = if cancel { "cancelled" } else { "lost" };
    let untracked = poll_until(DEADLINE, || {
        let pool = get_json(&coordinator.url("/pool")).1;
        let status = job_status(&coordinator, &first);
        (pool_worker(&pool, &worker)["tracked_jobs"] == 0 && status["pool_status"] == wanted)
            .then_some(())
    });
    assert!(untracked.is_some(), "{}", coordinator.logs());
    let pool = assert_pool_consistent(&coordinator);
    assert_eq!(pool_worker(&pool, &worker)["active_jobs"], 0, "{pool}");
    (coordinator, worker, first, remote)
}

/// What the stream of a lost run says after its job was queued to run again is not the new
/// run's: a run lost while its worker's stream stays open (the worker silent to every ask, its
/// stream kept alive by pings) and run again on another worker; when the lost run ends after
/// all, its output does not reach the job's followers, who hear the new run only.
#[test]
fn a_lost_runs_stream_says_nothing_about_the_run_after_it() {
    let silent = FakeWorker::start_with(|k| {
        k.hold_jobs = true;
        k.stdout = Some(Printed::Text("from the lost run\n"));
        k.stream.ping_every = Some(Duration::from_millis(200));
    });
    let spare = FakeWorker::start_with(|k| k.hold_jobs = true);
    let coordinator = Coordinator::start(
        &[silent.entry(1), spare.entry(1)],
        &args(&["--lost-after", "2", "--dispatch-timeout", "3"]),
    );
    wait_healthy(&coordinator, &[&silent, &spare], DEADLINE);
    set_drain(&coordinator, &spare, "drain");
    let id = submit(&coordinator, &job("print(1)\n").field("reruns", b"1"));
    wait_started(&coordinator, &silent, &id, DEADLINE);
    let lost_remote = wait_remote_id(&coordinator, &id);
    // The run to come goes to the spare worker alone.
    set_drain(&coordinator, &silent, "drain");
    let mut follower = follow_logs(coordinator.port(), &id);
    assert_eq!(follower.status, 200);

    silent.set(|k| k.hang = true);
    let requeued = poll_until(DEADLINE, || {
        let status = job_status(&coordinator, &id);
        (status["reruns"]["lost_runs"].as_array().map_or(0, Vec::len) == 1).then_some(())
    });
    assert!(
        requeued.is_some(),
        "the run was never lost: {}",
        coordinator.logs()
    );
    set_drain(&coordinator, &spare, "undrain");
    wait_started(&coordinator, &spare, &id, DEADLINE);

    // The lost run ends after all, on its stream, while the new one runs.
    silent.set(|k| {
        k.hang = false;
        k.hold_jobs = false;
    });
    let ended = poll_until(DEADLINE, || {
        silent
            .recording()
            .done
            .iter()
            .any(|(done, _)| *done == lost_remote)
            .then_some(())
    });
    assert!(ended.is_some(), "the lost run never ended");
    spare.set(|k| k.hold_jobs = false);
    wait_collected(&coordinator, &id, DEADLINE);
    follower.all(DEADLINE);
    let heard = follower.text();
    assert!(heard.contains("[DONE]"), "{heard}");
    assert!(!heard.contains("from the lost run"), "{heard}");
    let status = job_status(&coordinator, &id);
    assert_eq!(status["worker_id"], spare.worker_id(), "{status}");
}
