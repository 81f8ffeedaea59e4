//! The worker table stays bounded across reloads: a worker a reload removed is forgotten once
//! its jobs ended, and its place in the table goes to the next worker a reload adds. Two fake
//! workers take turns: every reload replaces the one in use (running a job) by the other (a new
//! entry, since the old one of that worker is removed).

mod support;

use std::time::Duration;

use serde_json::Value;

use support::lifecycle::{
    assert_pool_consistent, drain_url, pool_worker, submit, wait_healthy, wait_started, wait_status,
};
use support::{
    get_json, poll_until, post, write_workers_json, Coordinator, FakeWorker, Form, Knobs,
};

const DEADLINE: Duration = Duration::from_secs(60);
const FAST: [&str; 4] = ["--health-interval", "1", "--track-interval", "0.05"];
const RELOADS: usize = 50;

fn job(n: usize) -> Form {
    Form::new().file(
        "main.py",
        "text/x-python",
        format!("print({n})\n").as_bytes(),
    )
}

#[test]
fn fifty_reloads_that_replace_a_busy_worker_keep_the_table_bounded_and_lose_no_job() {
    let quick = |k: &mut Knobs| {
        k.job_duration = Duration::from_millis(100);
        k.max_jobs_per_hour = 1000;
    };
    let pair = [FakeWorker::start_with(quick), FakeWorker::start_with(quick)];
    let dir = support::workers_dir(&[pair[0].entry(2)]);
    let coordinator = Coordinator::start_in(dir.path(), &FAST);
    wait_healthy(&coordinator, &[&pair[0]], DEADLINE);

    let mut ids = Vec::new();
    let mut most_slots = 0;
    for n in 0..RELOADS {
        let (current, next) = (&pair[n % 2], &pair[(n + 1) % 2]);
        let id = submit(&coordinator, &job(n));
        let on_worker = poll_until(DEADLINE, || {
            let (_, status) = get_json(&coordinator.url(&format!("/status/{id}")));
            let placed = status["worker_id"] == current.worker_id().as_str()
                && matches!(
                    status["pool_status"].as_str(),
                    Some("dispatched" | "running")
                );
            placed.then_some(())
        });
        assert!(on_worker.is_some(), "job {n} never reached its worker");
        ids.push(id);
        write_workers_json(dir.path(), &[next.entry(2)]);
        let (code, body) = post(&coordinator.url("/reload"), "text/plain", b"");
        assert_eq!(code, 200, "reload {n}: {body}");
        let pool = assert_pool_consistent(&coordinator);
        let slots = pool["worker_table_slots"].as_u64().unwrap_or(u64::MAX);
        most_slots = most_slots.max(slots);
        // The worker listed now, the one just removed (its job runs), the one removed before
        // (forgotten, its tracker or stream thread maybe not yet gone) and one free place.
        assert!(slots <= 4, "reload {n}: the table grows: {pool}");
        wait_healthy(&coordinator, &[next], DEADLINE);
        // Older removed workers are forgotten once their jobs ended, freeing their place.
        let settled = poll_until(DEADLINE, || {
            let pool = assert_pool_consistent(&coordinator);
            (pool["workers"].as_array().map_or(0, Vec::len) <= 2).then_some(())
        });
        assert!(settled.is_some(), "reload {n}: removed workers stay listed");
    }
    for id in &ids {
        wait_status(&coordinator, id, "completed", DEADLINE);
    }
    let accepted: usize = pair
        .iter()
        .map(|w| w.recording().accepted_ids().len())
        .sum();
    assert_eq!(accepted, RELOADS, "every job ran exactly once");
    let forgotten = poll_until(DEADLINE, || {
        let pool = assert_pool_consistent(&coordinator);
        let listed = pool["workers"].as_array().map_or(0, Vec::len);
        (listed == 1 && pool["worker_table_slots"].as_u64() <= Some(4)).then_some(pool)
    });
    assert!(
        forgotten.is_some(),
        "the removed workers were not forgotten: {}",
        assert_pool_consistent(&coordinator)
    );
    println!("most worker table slots across {RELOADS} reloads: {most_slots}");
}

/// A worker drained through the API, removed by a reload while its job runs, and listed again
/// by the next: it takes its entry back, so the running job still counts against its
/// `max_concurrent_jobs`, and the drain went with the removal, now and after a restart alike.
#[test]
fn a_worker_listed_again_while_its_job_runs_takes_its_entry_back_without_its_old_drain() {
    let slow = |k: &mut Knobs| {
        k.job_duration = Duration::from_secs(6);
        k.max_active_per_ip = 1000;
    };
    let (worker, other) = (FakeWorker::start_with(slow), FakeWorker::start());
    let dir = support::workers_dir(&[worker.entry(1)]);
    let mut coordinator = Coordinator::start_in(dir.path(), &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let id = submit(&coordinator, &job(0));
    wait_started(&coordinator, &worker, &id, DEADLINE);
    // Held running until its worker's entry was read: the checks are of a worker whose job
    // runs.
    worker.set(|k| k.hold_jobs = true);
    let (code, body) = post(&drain_url(&coordinator, &worker, "drain"), "", b"");
    assert_eq!(code, 200, "{body}");
    let reload = |entries: &[(String, String, u32)]| {
        write_workers_json(dir.path(), entries);
        let (code, body) = post(&coordinator.url("/reload"), "text/plain", b"");
        assert_eq!(code, 200, "{body}");
    };
    reload(&[other.entry(1)]);
    reload(&[worker.entry(1), other.entry(1)]);
    let pool = assert_pool_consistent(&coordinator);
    let listed = pool["workers"].as_array().map_or(0, Vec::len);
    assert_eq!(listed, 2, "one entry for each worker: {pool}");
    let entry = pool_worker(&pool, &worker);
    assert_eq!(
        (&entry["removed"], &entry["draining"], &entry["active_jobs"]),
        (&Value::from(false), &Value::from(false), &Value::from(1)),
        "{entry}"
    );
    worker.set(|k| k.hold_jobs = false);
    wait_status(&coordinator, &id, "completed", DEADLINE);
    let stopped = coordinator.terminate(DEADLINE);
    assert!(stopped.is_some_and(|s| s.success()), "{stopped:?}");
    let restarted = Coordinator::start_in(dir.path(), &FAST);
    let (_, pool) = get_json(&restarted.url("/pool"));
    assert_eq!(
        pool_worker(&pool, &worker)["draining"],
        false,
        "the drain came back: {pool}"
    );
}

/// A job that runs longer than its streamed poll interval ends while the tracker's `/status`
/// waits for that end (sandrun answers it only once the run is over): its stream, unable to
/// follow the end up itself, asked for a poll the tracker never took once it had nothing left
/// to follow, and that stale ask kept the worker's place from ever going to another worker
/// after a reload removed it (the table grew by one place per worker replaced).
#[test]
fn an_idle_worker_a_reload_replaces_frees_its_place_after_a_long_streamed_job() {
    let slow = |k: &mut Knobs| {
        k.job_duration = Duration::from_millis(1500);
        k.max_jobs_per_hour = 1000;
    };
    let workers: Vec<FakeWorker> = (0..4).map(|_| FakeWorker::start_with(slow)).collect();
    let dir = support::workers_dir(&[workers[0].entry(2)]);
    let coordinator = Coordinator::start_in(dir.path(), &FAST);
    wait_healthy(&coordinator, &[&workers[0]], DEADLINE);
    for n in 0..3 {
        let id = submit(&coordinator, &job(n));
        wait_status(&coordinator, &id, "completed", DEADLINE);
        // Its follow-up is over once its worker's tracker thread is gone.
        let quiet = poll_until(DEADLINE, || {
            let collected = get_json(&coordinator.url(&format!("/status/{id}"))).1["results"]
                ["collected"]
                == true;
            let names = coordinator.thread_names()?;
            (collected && !names.iter().any(|name| name.starts_with("tracker-"))).then_some(())
        });
        assert!(quiet.is_some(), "job {n}: its tracker never ended");
        write_workers_json(dir.path(), &[workers[n + 1].entry(2)]);
        let (code, body) = post(&coordinator.url("/reload"), "text/plain", b"");
        assert_eq!(code, 200, "reload {n}: {body}");
        let pool = assert_pool_consistent(&coordinator);
        assert_eq!(
            pool["worker_table_slots"], 1,
            "reload {n}: the replaced idle worker's place was not reused: {pool}"
        );
        wait_healthy(&coordinator, &[&workers[n + 1]], DEADLINE);
    }
}
