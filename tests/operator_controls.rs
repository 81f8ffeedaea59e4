//! Operator controls through the real coordinator and fake workers: cancelling a job in each
//! state (the worker's slot freed only when the worker ends the job, the job deleted there only
//! after it ended), deleting a finished job, draining a worker under load, priorities with
//! aging.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::Digest;

use support::lifecycle::{
    assert_pool_consistent, drain_url, job_status, pool_worker, submit, wait_collected,
    wait_healthy, wait_started, wait_status,
};
use support::{
    get_bytes, get_json, poll_until, post, post_multipart, send, Coordinator, FakeWorker, Form,
};

/// Generous deadline for anything the coordinator does on its own.
const DEADLINE: Duration = Duration::from_secs(60);
/// Short intervals keep these tests quick.
const FAST: [&str; 4] = ["--health-interval", "1", "--track-interval", "0.1"];

fn form() -> Form {
    Form::new()
        .file("main.py", "text/x-python", b"print('hi')\n")
        .manifest(r#"{"entrypoint":"main.py"}"#)
}

fn cancel(coordinator: &Coordinator, id: &str) -> (u16, Value) {
    let (status, body) = post(
        &coordinator.url(&format!("/cancel/{id}")),
        "text/plain",
        b"",
    );
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn active_jobs(coordinator: &Coordinator, worker: &FakeWorker) -> u64 {
    let pool = assert_pool_consistent(coordinator);
    pool_worker(&pool, worker)["active_jobs"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

/// A worker running jobs for `secs` each, with room for many jobs per hour.
fn slow_worker(secs: f64) -> FakeWorker {
    FakeWorker::start_with(|k| {
        k.job_duration = Duration::from_secs_f64(secs);
        k.max_jobs_per_hour = 10_000;
        k.cpu_seconds_per_minute = 1e9;
    })
}

#[test]
fn cancel_in_every_state() {
    let worker = slow_worker(1.5);
    let coordinator = Coordinator::start(&[worker.entry(2)], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);

    // Running on the worker, and dispatched (queued on the worker behind it), then one queued
    // in the coordinator. The first job is held running until the three are cancelled: they
    // are in these states only while it runs.
    worker.set(|k| k.hold_jobs = true);
    let running = submit(&coordinator, &form());
    wait_started(&coordinator, &worker, &running, DEADLINE);
    let on_worker_queue = submit(&coordinator, &form());
    let queued = submit(&coordinator, &form());
    assert_eq!(job_status(&coordinator, &queued)["pool_status"], "queued");
    let status = job_status(&coordinator, &on_worker_queue);
    assert_eq!(status["pool_status"], "dispatched", "{status}");

    let (code, answer) = cancel(&coordinator, &queued);
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["pool_status"], "cancelled", "{answer}");
    let (code, answer) = cancel(&coordinator, &on_worker_queue);
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["pool_status"], "cancelled", "{answer}");
    let (code, answer) = cancel(&coordinator, &running);
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["pool_status"], "cancelled", "{answer}");
    // The slots stay taken while the worker still has the jobs.
    assert_eq!(active_jobs(&coordinator, &worker), 2);
    let (code, answer) = get_json(&coordinator.url(&format!("/outputs/{running}")));
    assert_eq!(code, 410, "{answer}");
    worker.set(|k| k.hold_jobs = false);

    // Both end on the worker, their slots are freed, and they are deleted there afterwards.
    poll_until(DEADLINE, || {
        (active_jobs(&coordinator, &worker) == 0).then_some(())
    })
    .unwrap_or_else(|| panic!("slots never freed: {}", coordinator.logs()));
    poll_until(DEADLINE, || {
        (worker.recording().count("GET", "download") == 2).then_some(())
    })
    .unwrap_or_else(|| panic!("cancelled jobs not deleted: {}", coordinator.logs()));
    let recording = worker.recording();
    assert!(recording.faults.is_empty(), "{:?}", recording.faults);
    assert_eq!(
        recording.jobs.len(),
        2,
        "the queued job never reached the worker"
    );
    assert!(worker.is_running());
    for id in [&running, &on_worker_queue, &queued] {
        assert_eq!(job_status(&coordinator, id)["pool_status"], "cancelled");
    }

    // A finished job cannot be cancelled; an unknown one is 404.
    let done = submit(&coordinator, &form());
    wait_status(&coordinator, &done, "completed", DEADLINE);
    let (code, answer) = cancel(&coordinator, &done);
    assert_eq!(code, 409, "{answer}");
    let (code, _) = cancel(&coordinator, &queued);
    assert_eq!(code, 409);
    let (code, _) = cancel(&coordinator, "pool-00000000000000000000000000000000");
    assert_eq!(code, 404);
    let (code, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(code, 200);
    assert_eq!(pool["jobs_by_status"]["cancelled"], 3, "{pool}");
    // No job keeps a feed of events for followers once it is over, not even the one cancelled
    // while its submit waited on the worker (its feed would have opened after its end).
    assert_eq!(pool["followers"]["feeds"], 0, "{pool}");
}

/// `POST /cancel?...` as an operator's curl sends it; the answer as JSON.
fn cancel_matching(coordinator: &Coordinator, method: &str, query: &str) -> (u16, Value) {
    let reply = send(method, &coordinator.url(&format!("/cancel{query}")), None)
        .unwrap_or_else(|e| panic!("{e}"));
    (reply.status, reply.json())
}

#[test]
fn cancel_by_status_newest_first_and_kept_across_a_restart() {
    let worker = slow_worker(600.0);
    let dir = support::workers_dir(&[worker.entry(1)]);
    let mut coordinator = Coordinator::start_in(dir.path(), &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let running = submit(&coordinator, &form());
    wait_started(&coordinator, &worker, &running, DEADLINE);
    let queued: Vec<String> = (0..5).map(|_| submit(&coordinator, &form())).collect();

    for (method, query, code, says) in [
        ("POST", "", 400, "say which jobs to cancel with status="),
        (
            "POST",
            "?status=completed",
            400,
            "status \"completed\" cannot be cancelled",
        ),
        (
            "POST",
            "?status=queued&limit=0",
            400,
            "limit must be 1 to 10000",
        ),
        ("GET", "?status=queued", 405, "use POST"),
        // A mistyped filter cancelled every queued job of every owner.
        (
            "POST",
            "?status=queued&ownr=alice",
            400,
            "unknown query parameter \"ownr\": this endpoint takes status, owner, worker, limit",
        ),
        (
            "POST",
            "?status=running&status=queued",
            400,
            "query parameter \"status\" is given more than once",
        ),
        (
            "POST",
            "?status=queued&owner=%ff",
            400,
            "query parameter \"owner\" is not well %-encoded",
        ),
    ] {
        let (status, body) = cancel_matching(&coordinator, method, query);
        assert_eq!(status, code, "{method} {query}: {body}");
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains(says)),
            "{method} {query}: {body}"
        );
    }
    // Two at a time, newest first; the rest are left as they were.
    let (code, body) = cancel_matching(&coordinator, "POST", "?status=queued&limit=2");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"cancelled": 2, "job_ids": [queued[4], queued[3]], "remaining": 3})
    );
    assert_eq!(
        job_status(&coordinator, &queued[2])["pool_status"],
        "queued"
    );
    let (code, body) = cancel_matching(&coordinator, "POST", "?status=queued");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["job_ids"],
        serde_json::json!([queued[2], queued[1], queued[0]])
    );
    // Running on its worker; the coordinator says so once its stream told it (one opened after
    // the worker took the job up tells nothing before the end).
    let status = job_status(&coordinator, &running);
    assert!(
        ["dispatched", "running"].contains(&status["pool_status"].as_str().unwrap_or_default()),
        "{status}"
    );

    // The cancellations were committed before the answer: a kill -9 keeps them.
    coordinator.kill();
    let coordinator = Coordinator::start_in(dir.path(), &FAST);
    for id in &queued {
        assert_eq!(job_status(&coordinator, id)["pool_status"], "cancelled");
    }
    let (code, body) = cancel_matching(&coordinator, "POST", "?status=running,dispatched");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["job_ids"], serde_json::json!([running]), "{body}");
    assert_eq!(
        job_status(&coordinator, &running)["pool_status"],
        "cancelled"
    );
    let (_, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(pool["jobs_by_status"]["cancelled"], 6, "{pool}");
    assert_eq!(
        worker.recording().jobs.len(),
        1,
        "no queued job reached the worker"
    );
}

/// The ids of a `GET /jobs` page, as listed.
fn listed(coordinator: &Coordinator, query: &str) -> Vec<String> {
    let (code, body) = get_json(&coordinator.url(&format!("/jobs{query}")));
    assert_eq!(code, 200, "{query}: {body}");
    body["jobs"]
        .as_array()
        .map(|jobs| {
            jobs.iter()
                .filter_map(|j| j["job_id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn one_workers_jobs_are_listed_and_cancelled_by_its_id() {
    let quick = FakeWorker::start();
    let slow = slow_worker(600.0);
    let dir = support::workers_dir(&[quick.entry(1), slow.entry(1)]);
    let mut coordinator = Coordinator::start_in(dir.path(), &FAST);
    wait_healthy(&coordinator, &[&quick, &slow], DEADLINE);
    let (code, body) = post(&drain_url(&coordinator, &slow, "drain"), "", b"");
    assert_eq!(code, 200, "{body}");
    let done: Vec<String> = (0..2)
        .map(|_| {
            let id = submit(&coordinator, &form());
            wait_collected(&coordinator, &id, DEADLINE);
            id
        })
        .collect();
    let (code, body) = post(&drain_url(&coordinator, &slow, "undrain"), "", b"");
    assert_eq!(code, 200, "{body}");
    let (code, body) = post(&drain_url(&coordinator, &quick, "drain"), "", b"");
    assert_eq!(code, 200, "{body}");
    let running = submit(&coordinator, &form());
    wait_started(&coordinator, &slow, &running, DEADLINE);
    let queued = submit(&coordinator, &form());

    // Standard base64 with + as %2B (or a bare + a query reads as a space), or URL-safe.
    let quick_id = quick.worker_id().replace('+', "%2B");
    let slow_safe = slow
        .worker_id()
        .replace('+', "-")
        .replace('/', "_")
        .trim_end_matches('=')
        .to_string();
    assert_eq!(
        listed(&coordinator, &format!("?worker={quick_id}")),
        [done[1].clone(), done[0].clone()]
    );
    let bare_plus = quick.worker_id().replace('/', "%2F").replace('=', "%3D");
    assert_eq!(
        listed(&coordinator, &format!("?worker={bare_plus}&limit=1")),
        [done[1].clone()]
    );
    assert_eq!(
        listed(&coordinator, &format!("?worker={slow_safe}")),
        std::slice::from_ref(&running)
    );
    assert!(listed(
        &coordinator,
        &format!("?worker={slow_safe}&status=completed")
    )
    .is_empty());
    for query in ["?worker=", "?worker=abc", "?worker=pool-1"] {
        let (code, body) = get_json(&coordinator.url(&format!("/jobs{query}")));
        assert_eq!(code, 400, "{query}: {body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("is not a worker id")),
            "{query}: {body}"
        );
    }
    let (code, body) = cancel_matching(&coordinator, "POST", "?status=queued&worker=abc");
    assert_eq!(code, 400, "{body}");

    // Cancelling by worker takes only what is on that worker: the queued job is on none.
    let (code, body) = cancel_matching(
        &coordinator,
        "POST",
        &format!("?status=queued,dispatched,running&worker={slow_safe}"),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"cancelled": 1, "job_ids": [running], "remaining": 0})
    );
    assert_eq!(job_status(&coordinator, &queued)["pool_status"], "queued");
    let (code, body) = cancel(&coordinator, &queued);
    assert_eq!(code, 200, "{body}");

    // The listing comes from the job store: a kill -9 and a restart keep it.
    coordinator.kill();
    let coordinator = Coordinator::start_in(dir.path(), &FAST);
    assert_eq!(
        listed(&coordinator, &format!("?worker={quick_id}")),
        [done[1].clone(), done[0].clone()]
    );
    assert_eq!(
        listed(&coordinator, &format!("?worker={slow_safe}")),
        std::slice::from_ref(&running)
    );
    assert_eq!(
        job_status(&coordinator, &running)["pool_status"],
        "cancelled"
    );
}

#[test]
fn the_fake_worker_crashes_when_a_job_queued_on_it_is_deleted() {
    // The executor looks for its next job every 5 s: the second job is deleted while it waits
    // in the queue, whether the first job ran before its submit (which then waited for it) or
    // after. With a quicker look, a slow deletion came once the second job ran.
    let worker = FakeWorker::start_with(|k| {
        k.job_duration = Duration::from_secs(1);
        k.poll_interval = Duration::from_secs(5);
    });
    let client = support::send;
    let first = client(
        "POST",
        &worker.url("/submit"),
        Some((&form().content_type(), &form().body())),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let second = client(
        "POST",
        &worker.url("/submit"),
        Some((&form().content_type(), &form().body())),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((first.status, second.status), (200, 200));
    let id = second.json()["job_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let deleted = client("GET", &worker.url(&format!("/download/{id}")), None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(deleted.status, 200);
    poll_until(DEADLINE, || {
        (!worker.recording().faults.is_empty()).then_some(())
    })
    .unwrap_or_else(|| panic!("no fault recorded"));
}

#[test]
fn drain_under_load_then_undrain() {
    let a = slow_worker(0.3);
    let b = slow_worker(0.3);
    let coordinator = Coordinator::start(&[a.entry(2), b.entry(2)], &FAST);
    wait_healthy(&coordinator, &[&a, &b], DEADLINE);
    let before: Vec<String> = (0..4).map(|_| submit(&coordinator, &form())).collect();
    let (code, body) = post(&drain_url(&coordinator, &a, "drain"), "text/plain", b"");
    assert_eq!(code, 200, "{body}");
    let on = |id: &String| job_status(&coordinator, id)["worker_id"].clone();
    let a_id = Value::from(a.worker_id());
    let assigned_to_a = before.iter().filter(|id| on(id) == a_id).count();
    let after: Vec<String> = (0..6).map(|_| submit(&coordinator, &form())).collect();
    let pool = assert_pool_consistent(&coordinator);
    assert_eq!(pool_worker(&pool, &a)["draining"], true, "{pool}");
    for id in before.iter().chain(&after) {
        wait_status(&coordinator, id, "completed", DEADLINE);
    }
    assert!(
        after.iter().all(|id| on(id) != a_id),
        "a draining worker got a job"
    );
    assert_eq!(a.recording().jobs.len(), assigned_to_a);
    let pool = assert_pool_consistent(&coordinator);
    assert_eq!(pool_worker(&pool, &a)["drained"], true, "{pool}");

    let (code, body) = post(&drain_url(&coordinator, &a, "undrain"), "text/plain", b"");
    assert_eq!(code, 200, "{body}");
    let again: Vec<String> = (0..4).map(|_| submit(&coordinator, &form())).collect();
    for id in &again {
        wait_status(&coordinator, id, "completed", DEADLINE);
    }
    assert!(
        again.iter().any(|id| on(id) == a_id),
        "undrained worker unused"
    );
    let (code, _) = post(&coordinator.url("/workers/AAAA/drain"), "text/plain", b"");
    assert_eq!(code, 404);
    // The 404 quotes the id as the request gave it, not as padded to standard base64 (a
    // `nosuch==` is found in no script or workers file).
    for (asked, action) in [("nosuch", "drain"), ("no-such_id%2B", "undrain")] {
        let path = format!("/workers/{asked}/{action}");
        let (code, body) = post(&coordinator.url(&path), "text/plain", b"");
        assert_eq!(code, 404, "{path}: {body}");
        assert!(
            body.contains(&format!("no worker \\\"{asked}\\\" in the allowlist")),
            "{path}: {body}"
        );
    }
}

#[test]
fn an_api_drain_survives_a_restart_and_is_dropped_with_its_worker() {
    let a = slow_worker(0.1);
    let b = slow_worker(0.1);
    let dir = support::temp_dir();
    support::write_workers_json(dir.path(), &[a.entry(2), b.entry(2)]);
    let coordinator = Coordinator::start_in(dir.path(), &FAST);
    wait_healthy(&coordinator, &[&a, &b], DEADLINE);
    let (code, body) = post(&drain_url(&coordinator, &a, "drain"), "text/plain", b"");
    assert_eq!(code, 200, "{body}");
    drop(coordinator);
    // Killed and restarted: still draining, and it gets no job.
    let coordinator = Coordinator::start_in(dir.path(), &FAST);
    wait_healthy(&coordinator, &[&a, &b], DEADLINE);
    let pool = assert_pool_consistent(&coordinator);
    assert_eq!(pool_worker(&pool, &a)["draining"], true, "{pool}");
    assert_eq!(pool_worker(&pool, &b)["draining"], false, "{pool}");
    assert!(
        coordinator
            .logs()
            .contains("drained through the API before the restart"),
        "{}",
        coordinator.logs()
    );
    let ids: Vec<String> = (0..4).map(|_| submit(&coordinator, &form())).collect();
    for id in &ids {
        wait_status(&coordinator, id, "completed", DEADLINE);
    }
    assert!(a.recording().jobs.is_empty(), "a drained worker got a job");
    // An undrain is recorded too.
    let (code, body) = post(&drain_url(&coordinator, &a, "undrain"), "text/plain", b"");
    assert_eq!(code, 200, "{body}");
    drop(coordinator);
    let coordinator = Coordinator::start_in(dir.path(), &FAST);
    let pool = assert_pool_consistent(&coordinator);
    assert_eq!(pool_worker(&pool, &a)["draining"], false, "{pool}");
    // Drained again, then gone from workers.json: the record is dropped at start, so the
    // worker comes back undrained once it is in the file again.
    let (code, body) = post(&drain_url(&coordinator, &a, "drain"), "text/plain", b"");
    assert_eq!(code, 200, "{body}");
    drop(coordinator);
    support::write_workers_json(dir.path(), &[b.entry(2)]);
    let coordinator = Coordinator::start_in(dir.path(), &FAST);
    assert!(
        coordinator.logs().contains("Dropped the recorded drain"),
        "{}",
        coordinator.logs()
    );
    drop(coordinator);
    support::write_workers_json(dir.path(), &[a.entry(2), b.entry(2)]);
    let coordinator = Coordinator::start_in(dir.path(), &FAST);
    let pool = assert_pool_consistent(&coordinator);
    assert_eq!(pool_worker(&pool, &a)["draining"], false, "{pool}");
}

#[test]
fn a_high_job_passes_a_hundred_normal_ones_and_low_jobs_age() {
    let worker = slow_worker(1.0);
    let coordinator = Coordinator::start(&[worker.entry(1)], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let first = submit(&coordinator, &form());
    wait_started(&coordinator, &worker, &first, DEADLINE);
    // Drained while the jobs are submitted and their places read: the first job may end at
    // any time (a hundred submits can outlast it on a loaded machine), and the next one must
    // not leave the queue before the high job is in it.
    let (code, body) = post(
        &drain_url(&coordinator, &worker, "drain"),
        "text/plain",
        b"",
    );
    assert_eq!(code, 200, "{body}");
    let normal: Vec<String> = (0..100).map(|_| submit(&coordinator, &form())).collect();
    let high_form = form().field("priority", b"high");
    let high = submit(&coordinator, &high_form);
    let status = job_status(&coordinator, &high);
    assert_eq!(status["priority"], "high", "{status}");
    assert_eq!(status["queue_position"], 1, "{status}");
    assert_eq!(job_status(&coordinator, &normal[0])["queue_position"], 2);
    let (code, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(code, 200);
    assert_eq!(pool["queue"]["by_priority"]["high"], 1, "{pool}");
    assert_eq!(pool["queue"]["by_priority"]["normal"], 100, "{pool}");
    let (code, body) = post(
        &drain_url(&coordinator, &worker, "undrain"),
        "text/plain",
        b"",
    );
    assert_eq!(code, 200, "{body}");
    wait_started(&coordinator, &worker, &high, DEADLINE);
    let status = job_status(&coordinator, &high);
    let remote = status["remote_job_id"].as_str().unwrap_or_default();
    assert_eq!(
        worker.recording().accepted_ids()[1],
        remote,
        "high went second"
    );
    for id in &normal {
        cancel(&coordinator, id);
    }
    let (code, body) = post(
        &coordinator.url("/submit?priority=urgent"),
        &form().content_type(),
        &form().body(),
    );
    assert_eq!(code, 400, "{body}");
}

#[test]
fn aging_moves_a_low_job_up() {
    let worker = slow_worker(30.0);
    let mut args = FAST.to_vec();
    args.extend(["--priority-aging", "1"]);
    let coordinator = Coordinator::start(&[worker.entry(1)], &args);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let blocker = submit(&coordinator, &form());
    wait_started(&coordinator, &worker, &blocker, DEADLINE);
    let low = submit_to(&coordinator, "/submit?priority=low", &form());
    let status = job_status(&coordinator, &low);
    assert_eq!(status["priority"], "low", "{status}");
    for level in ["normal", "high"] {
        poll_until(DEADLINE, || {
            (job_status(&coordinator, &low)["queue_level"] == level).then_some(())
        })
        .unwrap_or_else(|| panic!("never aged to {level}"));
    }
    cancel(&coordinator, &low);
    cancel(&coordinator, &blocker);
}

fn keyed(
    coordinator: &Coordinator,
    method: &str,
    path: &str,
    secret: &str,
    form: Option<&Form>,
) -> (u16, Value) {
    let auth = format!("Bearer {secret}");
    let body = form.map(|f| (f.content_type(), f.body()));
    let reply = support::send_with(
        method,
        &coordinator.url(path),
        &[("Authorization", &auth)],
        body.as_ref().map(|(t, b)| (t.as_str(), b.as_slice())),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    (reply.status, reply.json())
}

#[test]
fn keys_take_turns_and_controls_respect_ownership() {
    let worker = slow_worker(0.5);
    let dir = support::workers_dir(&[worker.entry(1)]);
    let keys: Vec<Value> = [("alice", "submit"), ("bob", "submit"), ("root", "admin")]
        .iter()
        .map(|(name, role)| {
            let hash: String = sha2::Sha256::digest(format!("secret-{name}").as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            serde_json::json!({"name": name, "key_sha256": hash, "role": role})
        })
        .collect();
    let keys_file = dir.path().join("keys.json");
    std::fs::write(&keys_file, Value::from(keys).to_string()).expect("keys file");
    let keys_arg = keys_file.to_string_lossy().to_string();
    let mut args = FAST.to_vec();
    // The order of acceptance is under test, not durability: 200 submits in a row, each
    // waiting for a disk sync, would let the worker run several jobs before bob's arrives.
    args.extend(["--api-keys", keys_arg.as_str(), "--fsync", "off"]);
    let coordinator = Coordinator::start_in(dir.path(), &args);
    wait_healthy(&coordinator, &[&worker], DEADLINE);

    let submit_as = |name: &str| {
        let (code, body) = keyed(
            &coordinator,
            "POST",
            "/submit",
            &format!("secret-{name}"),
            Some(&form()),
        );
        assert_eq!(code, 200, "{body}");
        body["job_id"].as_str().unwrap_or_default().to_string()
    };
    let blocker = submit_as("root");
    // Drained once the blocker is on the worker, until bob's job is queued: the worker runs a
    // job every half second, and 200 submits may outlast several on a loaded machine.
    let drain = drain_url(&coordinator, &worker, "drain");
    let drain = drain.trim_start_matches(&coordinator.url(""));
    let undrain = drain_url(&coordinator, &worker, "undrain");
    let undrain = undrain.trim_start_matches(&coordinator.url(""));
    poll_until(DEADLINE, || {
        (!worker.recording().accepted_ids().is_empty()).then_some(())
    })
    .unwrap_or_else(|| panic!("job {blocker} never dispatched: {}", coordinator.logs()));
    let (code, body) = keyed(&coordinator, "POST", drain, "secret-root", None);
    assert_eq!(code, 200, "{body}");
    let alice: Vec<String> = (0..200).map(|_| submit_as("alice")).collect();
    let bob = submit_as("bob");
    let (_, status) = keyed(
        &coordinator,
        "GET",
        &format!("/status/{bob}"),
        "secret-bob",
        None,
    );
    assert!(
        status["queue_position"]
            .as_u64()
            .is_some_and(|p| (1..=2).contains(&p)),
        "{status}"
    );
    let (_, pool) = keyed(&coordinator, "GET", "/pool", "secret-root", None);
    let owners = pool["queue"]["by_owner"].to_string();
    assert!(owners.contains(r#"{"owner":"alice","queued":"#), "{pool}");

    // Another key's job is unknown to bob; drains need an admin key.
    let (code, _) = keyed(
        &coordinator,
        "POST",
        &format!("/cancel/{}", alice[0]),
        "secret-bob",
        None,
    );
    assert_eq!(code, 404);
    let (code, _) = keyed(&coordinator, "POST", drain, "secret-bob", None);
    assert_eq!(code, 403);
    let (code, body) = keyed(&coordinator, "POST", undrain, "secret-root", None);
    assert_eq!(code, 200, "{body}");

    poll_until(DEADLINE, || {
        let (_, status) = keyed(
            &coordinator,
            "GET",
            &format!("/status/{bob}"),
            "secret-root",
            None,
        );
        let remote = status["remote_job_id"].as_str()?.to_string();
        let order = worker.recording().accepted_ids();
        let at = order.iter().position(|r| *r == remote)?;
        assert!(at <= 3, "bob's job was accepted {at}th: {order:?}");
        Some(())
    })
    .unwrap_or_else(|| panic!("bob's job never dispatched: {}", coordinator.logs()));
    let (code, listed) = keyed(&coordinator, "GET", "/jobs?limit=1000", "secret-bob", None);
    assert_eq!(code, 200, "{listed}");
    assert_eq!(
        listed["jobs"].as_array().map(Vec::len),
        Some(1),
        "bob sees only his job"
    );
    assert_eq!(listed["jobs"][0]["remote_job_id"], "hidden", "{listed}");
    // An admin lists one key's jobs; a submit key cannot ask for another's.
    let (code, listed) = keyed(&coordinator, "GET", "/jobs?owner=bob", "secret-root", None);
    assert_eq!(code, 200, "{listed}");
    assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed["jobs"][0]["job_id"], bob.as_str(), "{listed}");
    let (code, listed) = keyed(&coordinator, "GET", "/jobs?owner=bob", "secret-alice", None);
    assert_eq!(code, 403, "{listed}");
    let (code, listed) = keyed(&coordinator, "GET", "/jobs?owner=", "secret-root", None);
    assert_eq!(code, 400, "{listed}");
    assert!(
        listed["error"]
            .as_str()
            .is_some_and(|e| e.contains("owner= names no client key")),
        "{listed}"
    );
    // A submit key cancels its own jobs at once, and only those.
    let (code, body) = keyed(
        &coordinator,
        "POST",
        "/cancel?status=queued&owner=bob",
        "secret-alice",
        None,
    );
    assert_eq!(code, 403, "{body}");
    let every = "/cancel?status=queued,dispatched,running&limit=10000";
    let (code, body) = keyed(&coordinator, "POST", every, "secret-alice", None);
    assert_eq!(code, 200, "{body}");
    let cancelled: Vec<&str> = body["job_ids"]
        .as_array()
        .map(|ids| ids.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(cancelled.len() >= 190, "{body}");
    assert_eq!(body["cancelled"], cancelled.len(), "{body}");
    assert_eq!(body["remaining"], 0, "{body}");
    assert!(
        cancelled.iter().all(|id| alice.iter().any(|a| a == id)),
        "{body}"
    );
    assert_ne!(
        job_status_as(&coordinator, &bob)["pool_status"],
        "cancelled"
    );
    let for_alice = format!("{every}&owner=alice");
    let (code, body) = keyed(&coordinator, "POST", &for_alice, "secret-root", None);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["cancelled"], 0, "{body}");
    for id in &cancelled {
        assert_eq!(job_status_as(&coordinator, id)["pool_status"], "cancelled");
    }
    let (code, _) = keyed(&coordinator, "POST", drain, "secret-root", None);
    assert_eq!(code, 200);
    let _ = blocker;
}

/// A job's `/status`, as the admin key of `keys_take_turns_and_controls_respect_ownership`.
fn job_status_as(coordinator: &Coordinator, id: &str) -> Value {
    let (code, status) = keyed(
        coordinator,
        "GET",
        &format!("/status/{id}"),
        "secret-root",
        None,
    );
    assert_eq!(code, 200, "{status}");
    status
}

fn hangup(coordinator: &Coordinator) {
    assert!(coordinator.signal(libc::SIGHUP), "kill -HUP");
}

#[test]
fn reload_adds_removes_and_changes_workers_and_refuses_a_bad_file() {
    let a = slow_worker(1.5);
    let b = slow_worker(0.2);
    let c = slow_worker(0.2);
    let coordinator = Coordinator::start(&[a.entry(2)], &FAST);
    wait_healthy(&coordinator, &[&a], DEADLINE);
    // Held running until /pool showed a removed: a removed worker is forgotten once its jobs
    // end.
    a.set(|k| k.hold_jobs = true);
    let first = submit(&coordinator, &form());
    wait_started(&coordinator, &a, &first, DEADLINE);

    // SIGHUP: a removed (with a running job), b and c added.
    support::write_workers_json(coordinator.dir(), &[b.entry(1), c.entry(1)]);
    hangup(&coordinator);
    assert!(
        coordinator.wait_for_log("Reloaded", DEADLINE),
        "{}",
        coordinator.logs()
    );
    let pool = assert_pool_consistent(&coordinator);
    assert_eq!(pool["total_workers"], 2, "{pool}");
    assert_eq!(pool_worker(&pool, &a)["removed"], true, "{pool}");
    assert_eq!(pool["last_reload"]["added"], 2, "{pool}");
    a.set(|k| k.hold_jobs = false);
    wait_healthy(&coordinator, &[&b, &c], DEADLINE);
    // sandrun's service description counts the workers listed, as /pool does.
    let (code, description) = support::get_json(&coordinator.url("/"));
    assert_eq!(code, 200, "{description}");
    assert_eq!(description["workers"], 2, "{description}");
    assert_eq!(description["healthy_workers"], 2, "{description}");
    let later: Vec<String> = (0..4).map(|_| submit(&coordinator, &form())).collect();
    wait_status(&coordinator, &first, "completed", DEADLINE);
    for id in &later {
        let status = wait_status(&coordinator, id, "completed", DEADLINE);
        assert_ne!(status["worker_id"], Value::from(a.worker_id()), "{status}");
    }
    poll_until(DEADLINE, || {
        let pool = assert_pool_consistent(&coordinator);
        let ids = pool["workers"].to_string();
        (!ids.contains(&a.worker_id())).then_some(())
    })
    .unwrap_or_else(|| panic!("removed worker never forgotten"));
    let runs = a.recording().jobs.len() + b.recording().jobs.len() + c.recording().jobs.len();
    assert_eq!(runs, 5, "a job was lost or ran twice");

    // POST /reload: a changed cap applies at once.
    support::write_workers_json(coordinator.dir(), &[b.entry(3), c.entry(1)]);
    let (code, body) = post(&coordinator.url("/reload"), "text/plain", b"");
    assert_eq!(code, 200, "{body}");
    let pool = assert_pool_consistent(&coordinator);
    assert_eq!(pool_worker(&pool, &b)["max_concurrent_jobs"], 3, "{pool}");

    // A bad file is refused whole, by either path.
    std::fs::write(coordinator.dir().join("workers.json"), "[{").expect("write");
    let (code, body) = post(&coordinator.url("/reload"), "text/plain", b"");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("\"error\""), "{body}");
    hangup(&coordinator);
    assert!(coordinator.wait_for_log("Reload (SIGHUP) refused", DEADLINE));
    let pool = assert_pool_consistent(&coordinator);
    assert_eq!(pool["total_workers"], 2, "{pool}");
    assert!(pool["last_reload"]["error"].is_string(), "{pool}");
    let after = submit(&coordinator, &form());
    wait_status(&coordinator, &after, "completed", DEADLINE);
}

#[test]
fn waiting_status_parks_requests_without_holding_handlers() {
    let worker = slow_worker(4.0);
    let mut args = FAST.to_vec();
    args.extend([
        "--threads",
        "4",
        "--max-waiting",
        "50",
        "--max-waiting-per-ip",
        "50",
    ]);
    let coordinator = Coordinator::start(&[worker.entry(1)], &args);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    // Held running until the 50 requests are parked and the 51st refused: they park only
    // while it runs.
    worker.set(|k| k.hold_jobs = true);
    let id = submit(&coordinator, &form());
    let url = coordinator.url(&format!("/status/{id}?wait=30"));
    let waiters: Vec<_> = (0..50)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let answer = support::get_json(&url);
                (answer, std::time::SystemTime::now())
            })
        })
        .collect();
    // Every handler is still free while 50 requests wait.
    let parked = poll_until(DEADLINE, || {
        let (_, pool) = get_json(&coordinator.url("/pool"));
        (pool["waiting"]["parked"] == 50).then_some(pool)
    })
    .unwrap_or_else(|| panic!("50 requests never parked"));
    assert_eq!(parked["jobs_by_status"]["completed"], 0, "{parked}");
    assert_eq!(parked["waiting"]["addresses"], 1, "{parked}");
    let started = std::time::Instant::now();
    let (code, _) = get_json(&coordinator.url("/pool"));
    assert_eq!(code, 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "/pool took {:?}",
        started.elapsed()
    );
    let (code, body) = get_json(&url);
    assert_eq!(code, 503, "the 51st waiter: {body}");
    assert!(body["error"].is_string());
    let (code, _) = get_json(&coordinator.url(&format!("/status/{id}?wait=61")));
    assert_eq!(code, 400);
    worker.set(|k| k.hold_jobs = false);

    for waiter in waiters {
        let ((code, status), answered) = waiter.join().expect("waiter");
        assert_eq!(code, 200, "{status}");
        assert_eq!(status["pool_status"], "completed", "{status}");
        let completed = status["completed_at"].as_f64().unwrap_or_default();
        let answered = answered
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        assert!(
            answered - completed < 1.0,
            "answered {:.3} s after the end",
            answered - completed
        );
    }
    // A short wait on a job that does not end answers with its current status.
    worker.set(|k| k.hold_jobs = true);
    let blocker = submit(&coordinator, &form());
    let queued = submit(&coordinator, &form());
    let started = std::time::Instant::now();
    let (code, status) = get_json(&coordinator.url(&format!("/status/{queued}?wait=1")));
    assert_eq!(code, 200);
    assert_eq!(status["pool_status"], "queued", "{status}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    let _ = blocker;
}

/// Runs 6 jobs on one worker that allows 2 per client, with this `max_concurrent_jobs` in
/// workers.json; returns its `/pool` entry afterwards.
fn capacity_run(cap: Value) -> Value {
    let worker = slow_worker(2.5);
    let dir = support::temp_dir();
    let entry = serde_json::json!([{"worker_id": worker.worker_id(), "endpoint": worker.endpoint(), "max_concurrent_jobs": cap}]);
    std::fs::write(dir.path().join("workers.json"), entry.to_string()).expect("workers.json");
    let coordinator = Coordinator::start_in(dir.path(), &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let ids: Vec<String> = (0..6).map(|_| submit(&coordinator, &form())).collect();
    for id in &ids {
        wait_status(&coordinator, id, "completed", DEADLINE);
    }
    let pool = assert_pool_consistent(&coordinator);
    pool_worker(&pool, &worker)
}

#[test]
fn capacity_is_learned_with_at_most_one_429() {
    for cap in [Value::from("auto"), Value::from(4)] {
        let worker = capacity_run(cap.clone());
        assert!(
            worker["submits_throttled"].as_u64() <= Some(1),
            "{cap}: {worker}"
        );
        assert_eq!(worker["configured_max_concurrent_jobs"], cap, "{worker}");
        // On a loaded machine the submits may not overlap enough to reach the limit at all.
        if worker["submits_throttled"] == 1 {
            assert_eq!(worker["max_concurrent_jobs"], 2, "{worker}");
            assert_eq!(worker["learned_max_concurrent_jobs"], 2, "{worker}");
        }
    }
}

/// The job ids a `/jobs` answer lists, in order.
fn listed_ids(body: &Value) -> Vec<String> {
    body["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|j| j["job_id"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Pages through `/jobs`, `limit` jobs a page, from the first page on along `next_before`, for
/// at most `max_pages` pages; `each_page` is given each answer's bytes. The ids listed and
/// the pages read.
fn page_through(
    coordinator: &Coordinator,
    limit: usize,
    max_pages: usize,
    mut each_page: impl FnMut(&[u8]),
) -> (Vec<String>, usize) {
    let mut listed = Vec::new();
    let mut query = format!("?limit={limit}");
    let mut pages = 0;
    while pages < max_pages {
        let (code, bytes) = get_bytes(&coordinator.url(&format!("/jobs{query}")));
        assert_eq!(code, 200, "{query}: {}", String::from_utf8_lossy(&bytes));
        each_page(&bytes);
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        pages += 1;
        listed.extend(listed_ids(&body));
        match body["next_before"].as_str() {
            Some(next) => query = format!("?limit={limit}&before={next}"),
            None => break,
        }
    }
    (listed, pages)
}

/// A page of `/jobs` ends past 1 MiB of jobs, naming its last job in `next_before`: 40 queued
/// jobs of 128 files with 250-byte names (about 1.5 MB as listed) come in two pages that hold
/// each job once. (One answer held them all, and a tester's 32 clients that never read a
/// 71 MB page took the coordinator from 101 MB to 1.38 GB.)
#[test]
fn a_page_of_jobs_ends_past_a_mebibyte() {
    let worker = slow_worker(30.0);
    let coordinator = Coordinator::start(&[worker.entry(1)], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let mut many = Form::new().manifest(r#"{"entrypoint":"f000.py"}"#);
    for i in 0..128 {
        let name = format!("f{i:03}{}.py", "n".repeat(243));
        many = many.file(&name, "text/x-python", b"");
    }
    let mut ids: Vec<String> = (0..40).map(|_| submit(&coordinator, &many)).collect();
    ids.reverse();
    let (listed, pages) = page_through(&coordinator, 1000, usize::MAX, |bytes| {
        assert!(
            bytes.len() < (1 << 20) + 64 * 1024,
            "a page of {} bytes",
            bytes.len()
        );
    });
    assert_eq!(listed, ids);
    assert_eq!(pages, 2);
}

#[test]
fn job_listing_newest_first_paginated_and_filtered() {
    let worker = slow_worker(30.0);
    let coordinator = Coordinator::start(&[worker.entry(1)], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let ids: Vec<String> = (0..7).map(|_| submit(&coordinator, &form())).collect();
    cancel(&coordinator, &ids[2]);
    cancel(&coordinator, &ids[5]);
    let list_on = |coordinator: &Coordinator, query: &str| {
        let (code, body) = get_json(&coordinator.url(&format!("/jobs{query}")));
        assert_eq!(code, 200, "{query}: {body}");
        (listed_ids(&body), body)
    };
    let list = |query: &str| list_on(&coordinator, query);
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    let (all, body) = list("");
    assert_eq!(all, newest_first);
    assert!(body["jobs"][0].get("worker_status").is_none(), "{body}");
    assert_eq!(body["jobs"][0]["pool_status"], "queued", "{body}");
    assert_eq!(body["next_before"], Value::Null);

    let (pages, _) = page_through(&coordinator, 3, usize::MAX, |_| {});
    assert_eq!(pages, newest_first);

    let (cancelled, _) = list("?status=cancelled");
    assert_eq!(cancelled, [ids[5].clone(), ids[2].clone()]);
    let (some, _) = list("?status=queued,cancelled&limit=2");
    assert_eq!(some, [ids[6].clone(), ids[5].clone()]);
    for bad in [
        "?status=done",
        "?limit=0",
        "?limit=1001",
        "?before=pool-nope",
        "?statuss=queued",
        "?limit=2&limit=3",
        "?owner=%zz",
    ] {
        let (code, body) = get_json(&coordinator.url(&format!("/jobs{bad}")));
        assert_eq!(code, 400, "{bad}: {body}");
    }
    // A cursor that is no job id at all is told so, not taken for a job deleted since.
    for garbage in ["garbage", "pool-nope", "pool-0123"] {
        let (code, body) = get_json(&coordinator.url(&format!("/jobs?before={garbage}")));
        assert_eq!(code, 400, "{garbage}: {body}");
        let why = body["error"].as_str().unwrap_or_default();
        assert!(
            why.contains("is not a job id (job ids look like pool-<32 hex>)")
                && !why.contains("deleted"),
            "{garbage}: {body}"
        );
    }
    // A route that takes no parameter ignores them (a browser's cache-busting `?_=...`), and
    // one that takes some takes that one too (it was a 400 on `/jobs` and `/status`).
    let (code, body) = get_json(&coordinator.url("/pool?_=1"));
    assert_eq!(code, 200, "{body}");
    let (cached, _) = list("?status=cancelled&_=1700000000000");
    assert_eq!(cached, [ids[5].clone(), ids[2].clone()]);

    // The listing and the cancellations survive a restart.
    let mut coordinator = coordinator;
    coordinator.kill();
    let restarted = Coordinator::start_in(coordinator.dir(), &FAST);
    let listed = |query: &str| list_on(&restarted, query).0;
    assert_eq!(
        listed("?status=cancelled"),
        [ids[5].clone(), ids[2].clone()]
    );
    assert_eq!(listed("").len(), 7);
    // A cursor whose job was deleted since: where the next page starts is not known, and the
    // answer says to list again from the first page.
    let deleted = send("DELETE", &restarted.url(&format!("/jobs/{}", ids[5])), None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    let (code, body) = get_json(&restarted.url(&format!("/jobs?before={}", ids[5])));
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("may have been deleted") && e.contains("first page")),
        "{body}"
    );
    for id in &ids {
        post(&restarted.url(&format!("/cancel/{id}")), "text/plain", b"");
    }
}

/// `listed` (one job a page) is `ids` newest first, each once; else says where it went wrong.
fn assert_newest_first(listed: &[String], ids: &[String]) {
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    let first_wrong = listed.iter().zip(&newest_first).position(|(a, b)| a != b);
    assert!(
        listed == newest_first,
        "{} pages for {} jobs; the first out of place, page {first_wrong:?}: {:?}",
        listed.len(),
        ids.len(),
        first_wrong.map(|at| &listed[at])
    );
}

/// Paging through settled jobs one at a time lists each once and ends. A page's cursor was the
/// last job's submission time as read back from its stored record, whose JSON number serde_json
/// may read one step off (1796660153.1764479 as 1796660153.176448), while the walk compares the
/// row's column: such a job fell on both sides of its own cursor, its page came again, and
/// with `limit=1` for ever.
#[test]
fn paging_one_settled_job_at_a_time_lists_each_once_and_ends() {
    let worker = slow_worker(30.0);
    let coordinator = Coordinator::start(&[worker.entry(1)], &FAST);
    let ids: Vec<String> = (0..120).map(|_| submit(&coordinator, &form())).collect();
    let (code, body) = post(
        &coordinator.url("/cancel?status=queued,dispatched,running"),
        "text/plain",
        b"",
    );
    assert_eq!(code, 200, "{body}");
    // One job a page: a page more than there are jobs shows a repeat without paging for ever.
    let (listed, _) = page_through(&coordinator, 1, ids.len() + 1, |_| {});
    assert_newest_first(&listed, &ids);
}

/// The same holds for jobs recovered at a restart, which the coordinator holds in memory as
/// read back from their records while the walk compares their rows' columns.
#[test]
fn paging_one_recovered_job_at_a_time_lists_each_once_and_ends() {
    let worker = slow_worker(30.0);
    let mut coordinator = Coordinator::start(&[worker.entry(1)], &FAST);
    let ids: Vec<String> = (0..120).map(|_| submit(&coordinator, &form())).collect();
    coordinator.kill();
    let restarted = Coordinator::start_in(coordinator.dir(), &FAST);
    let (listed, _) = page_through(&restarted, 1, ids.len() + 1, |_| {});
    assert_newest_first(&listed, &ids);
}

/// The nice values of the coordinator's threads whose names start with `prefix`.
fn nice_of(threads: &[(String, i64)], prefix: &str) -> Vec<i64> {
    threads
        .iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(_, nice)| *nice)
        .collect()
}

#[test]
fn the_threads_that_dispatch_and_follow_jobs_run_below_the_rest() {
    for (extra, steps) in [(None, 5), (Some("9"), 9), (Some("0"), 0)] {
        let worker = slow_worker(30.0);
        let mut args = FAST.to_vec();
        if let Some(steps) = extra {
            args.extend(["--follow-nice", steps]);
        }
        let coordinator = Coordinator::start(&[worker.entry(1)], &args);
        wait_healthy(&coordinator, &[&worker], DEADLINE);
        let id = submit(&coordinator, &form());
        wait_started(&coordinator, &worker, &id, DEADLINE);
        let threads = poll_until(DEADLINE, || {
            let threads = coordinator.thread_nice_values()?;
            ["dispatch", "stream", "tracker-0", "http-", "store-writer"]
                .iter()
                .all(|prefix| !nice_of(&threads, prefix).is_empty())
                .then_some(threads)
        });
        let threads = threads.unwrap_or_else(|| panic!("the threads were not all found"));
        let base = nice_of(&threads, "store-writer")[0];
        let lowered = (base + steps).min(19);
        for prefix in ["dispatch", "stream", "tracker-"] {
            assert!(
                nice_of(&threads, prefix).iter().all(|&n| n == lowered),
                "--follow-nice {steps}: {prefix} threads at {:?}, not {lowered}: {threads:?}",
                nice_of(&threads, prefix)
            );
        }
        for prefix in ["http-", "health", "waiting", "scheduler"] {
            assert!(
                nice_of(&threads, prefix).iter().all(|&n| n == base),
                "--follow-nice {steps}: {prefix} threads at {:?}, not {base}",
                nice_of(&threads, prefix)
            );
        }
        assert_eq!(
            cancel(&coordinator, &id).0,
            200,
            "the running job could not be cancelled"
        );
    }
}

/// `POST /submits/{action}` (`pause` or `resume`); its answer, which must be a 200.
fn pause_action(coordinator: &Coordinator, action: &str) -> Value {
    let (status, body) = post(
        &coordinator.url(&format!("/submits/{action}")),
        "text/plain",
        b"",
    );
    assert_eq!(status, 200, "{action}: {body}");
    serde_json::from_str::<Value>(&body).unwrap_or(Value::Null)
}

/// A submit that must be refused because submits are paused.
fn assert_submit_paused(coordinator: &Coordinator) {
    let refused = support::send(
        "POST",
        &coordinator.url("/submit"),
        Some((&form().content_type(), &form().body())),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(
        refused.text().contains("paused by an operator"),
        "{}",
        refused.text()
    );
    assert_eq!(refused.header("Retry-After"), Some("30"));
}

/// Pausing submits refuses new ones with 503 and `Retry-After` while queued and running jobs
/// go on; `/ready`, `/pool` and `/metrics` say so; a restart (after `kill -9`) keeps the pause;
/// resuming takes submits again, and a restart then takes them too.
#[test]
fn paused_submits_are_refused_while_queued_and_running_jobs_go_on() {
    let worker = slow_worker(1.0);
    let mut coordinator = Coordinator::start(&[worker.entry(1)], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let running = submit(&coordinator, &form());
    let queued = submit(&coordinator, &form());
    let paused = pause_action(&coordinator, "pause");
    assert_eq!(paused["submits"], "paused", "{paused}");
    // Pausing again keeps the first pause.
    let again = pause_action(&coordinator, "pause");
    assert_eq!(again["pause"]["since"], paused["pause"]["since"], "{again}");

    assert_submit_paused(&coordinator);
    let (code, ready) = get_json(&coordinator.url("/ready"));
    assert_eq!(code, 503, "{ready}");
    assert!(ready.to_string().contains("submits are paused"), "{ready}");
    let (_, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(pool["submits_paused"]["refused_submits"], 1, "{pool}");
    let (_, metrics) = support::get(&coordinator.url("/metrics"));
    assert!(
        metrics
            .lines()
            .any(|l| l == "trusted_pool_submits_paused 1"),
        "{metrics}"
    );

    // Killed and restarted: still paused since the same moment, and the jobs taken before the
    // pause run to the end.
    coordinator.kill();
    let restarted = Coordinator::start_in(coordinator.dir(), &FAST);
    let (_, pool) = get_json(&restarted.url("/pool"));
    assert_eq!(
        pool["submits_paused"]["since"], paused["pause"]["since"],
        "{pool}"
    );
    assert!(
        pool["submits_paused"]["seconds"].as_f64() >= paused["pause"]["seconds"].as_f64(),
        "{pool}"
    );
    assert_submit_paused(&restarted);
    assert_eq!(get_json(&restarted.url("/ready")).0, 503);
    assert!(
        restarted
            .logs()
            .contains("Submits are paused (paused by an operator"),
        "{}",
        restarted.logs()
    );
    wait_status(&restarted, &running, "completed", DEADLINE);
    wait_status(&restarted, &queued, "completed", DEADLINE);

    let resumed = pause_action(&restarted, "resume");
    assert_eq!(resumed["submits"], "taken", "{resumed}");
    // The refusals count from the restart.
    assert_eq!(resumed["pause_ended"]["refused_submits"], 1, "{resumed}");
    let (_, pool) = get_json(&restarted.url("/pool"));
    assert!(pool["submits_paused"].is_null(), "{pool}");
    let after = submit(&restarted, &form());
    wait_status(&restarted, &after, "completed", DEADLINE);
    let ready = poll_until(DEADLINE, || {
        (get_json(&restarted.url("/ready")).0 == 200).then_some(())
    });
    assert!(ready.is_some(), "{}", restarted.logs());
    let logs = format!("{}{}", coordinator.logs(), restarted.logs());
    assert_eq!(
        logs.matches("Submits paused by an operator").count(),
        1,
        "{logs}"
    );
    assert!(
        logs.contains("Submits taken again after a pause of"),
        "{logs}"
    );

    // A resume survives a restart too.
    let mut restarted = restarted;
    restarted.kill();
    let again = Coordinator::start_in(coordinator.dir(), &FAST);
    let (_, pool) = get_json(&again.url("/pool"));
    assert!(pool["submits_paused"].is_null(), "{pool}");
    let last = submit(&again, &form());
    wait_status(&again, &last, "completed", DEADLINE);
}

fn delete_job(coordinator: &Coordinator, id: &str) -> (u16, Value) {
    let reply = send("DELETE", &coordinator.url(&format!("/jobs/{id}")), None)
        .unwrap_or_else(|e| panic!("DELETE /jobs/{id}: {e}"));
    (reply.status, reply.json())
}

#[test]
fn deleting_a_finished_job_forgets_it_and_its_results_now() {
    let worker = slow_worker(1.0);
    let dir = support::workers_dir(&[worker.entry(2)]);
    // Every job's results in a results segment, not in its row.
    let mut args = FAST.to_vec();
    args.extend(["--row-results-max", "0"]);
    let mut coordinator = Coordinator::start_in(dir.path(), &args);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let kept = submit(&coordinator, &form());
    let deleted = submit(&coordinator, &form());
    for id in [&kept, &deleted] {
        wait_collected(&coordinator, id, DEADLINE);
    }
    let before = assert_pool_consistent(&coordinator);
    let (code, body) = delete_job(&coordinator, &deleted);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"job_id": deleted, "deleted": true, "status": "completed"})
    );

    // Gone from every route, the counts and the listing; the other job is untouched.
    for path in [
        format!("/status/{deleted}"),
        format!("/outputs/{deleted}"),
        format!("/outputs/{deleted}/result.txt"),
        format!("/logs/{deleted}"),
        format!("/download/{deleted}"),
    ] {
        let (code, body) = get_json(&coordinator.url(&path));
        assert_eq!(code, 404, "{path}: {body}");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("deleted")),
            "{path}: {body}"
        );
    }
    let (code, body) = delete_job(&coordinator, &deleted);
    assert_eq!(code, 404, "{body}");
    // Every route answers the one unknown-job 404, the controls included (a cancel without
    // client keys gave a shorter text that said nothing of a deletion).
    let (_, unknown) = get_json(&coordinator.url(&format!("/status/{deleted}")));
    assert_eq!(body, unknown);
    let (code, cancelled) = cancel(&coordinator, &deleted);
    assert_eq!(code, 404, "{cancelled}");
    assert_eq!(cancelled, unknown);
    let raise = format!("/jobs/{deleted}/priority?priority=high");
    let (code, raised) = post(&coordinator.url(&raise), "text/plain", b"");
    assert_eq!(code, 404, "{raised}");
    assert_eq!(serde_json::from_str::<Value>(&raised).ok(), Some(unknown));
    let after = assert_pool_consistent(&coordinator);
    assert_eq!(after["store"]["deleted_jobs"], 1, "{after}");
    assert_eq!(
        after["total_jobs"].as_u64(),
        before["total_jobs"].as_u64().map(|n| n - 1),
        "{after}"
    );
    let (_, listed) = get_json(&coordinator.url("/jobs?limit=100"));
    let ids: Vec<&str> = listed["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| j["job_id"].as_str())
        .collect();
    assert_eq!(ids, [kept.as_str()], "{listed}");
    let (code, bytes) = get_bytes(&coordinator.url(&format!("/outputs/{kept}/result.txt")));
    assert_eq!(code, 200);
    assert!(!bytes.is_empty());

    // A restart keeps it deleted.
    assert!(coordinator.terminate(DEADLINE).is_some());
    let coordinator = Coordinator::start_in(dir.path(), &args);
    assert_eq!(job_status(&coordinator, &kept)["pool_status"], "completed");
    let (code, body) = get_json(&coordinator.url(&format!("/status/{deleted}")));
    assert_eq!(code, 404, "{body}");
    let (code, body) = delete_job(&coordinator, &kept);
    assert_eq!(code, 200, "{body}");
}

#[test]
fn deleting_a_job_before_it_settled_cancels_it_and_deletes_it_as_it_settles() {
    let worker = slow_worker(3.0);
    let dir = support::workers_dir(&[worker.entry(1)]);
    let mut coordinator = Coordinator::start_in(dir.path(), &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    // Running on the worker, and queued in the coordinator behind it. The running job is held
    // until the restart below found it still marked: it must not end before.
    worker.set(|k| k.hold_jobs = true);
    let running = submit(&coordinator, &form());
    wait_started(&coordinator, &worker, &running, DEADLINE);
    let queued = submit(&coordinator, &form());
    assert_eq!(job_status(&coordinator, &queued)["pool_status"], "queued");

    // A queued job is cancelled and deleted at once.
    let (code, body) = delete_job(&coordinator, &queued);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"job_id": queued, "deleted": true, "status": "cancelled"})
    );
    let (code, body) = get_json(&coordinator.url(&format!("/status/{queued}")));
    assert_eq!(code, 404, "{body}");

    // A running one is cancelled now and deleted once its worker ended it.
    let (code, body) = delete_job(&coordinator, &running);
    assert_eq!(code, 202, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"job_id": running, "deleted": false, "deleting": true, "status": "cancelled"})
    );
    let status = job_status(&coordinator, &running);
    assert_eq!(status["pool_status"], "cancelled", "{status}");
    assert_eq!(status["deleting"], true, "{status}");
    assert!(coordinator.wait_for_log(
        &format!("Job {running} is deleted as soon as it settles; it is cancelled now"),
        DEADLINE
    ));

    // The mark survives a crash: the restart follows the job to its end, then deletes it.
    coordinator.kill();
    let coordinator = Coordinator::start_in(dir.path(), &FAST);
    assert_eq!(job_status(&coordinator, &running)["deleting"], true);
    worker.set(|k| k.hold_jobs = false);
    let gone = poll_until(DEADLINE, || {
        let (code, _) = get_json(&coordinator.url(&format!("/status/{running}")));
        (code == 404).then_some(())
    });
    assert!(gone.is_some(), "{}", coordinator.logs());
    assert!(coordinator
        .logs()
        .contains(&format!("Deleted job {running} as it settled")));
    // Deleted on the worker too (after it ended there), and never collected.
    assert!(worker.recording().faults.is_empty());
    let (_, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(pool["store"]["deleted_jobs"], 1, "{pool}");

    // A job that settled is deleted at once, as before.
    let done = submit(&coordinator, &form());
    wait_collected(&coordinator, &done, DEADLINE);
    let (code, body) = delete_job(&coordinator, &done);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "completed", "{body}");
    let pool = assert_pool_consistent(&coordinator);
    assert_eq!(pool["store"]["deleted_jobs"], 2, "{pool}");
    assert_eq!(pool["total_jobs"], 0, "{pool}");
}

/// Whether `needle` lies anywhere in one of the files at `paths`.
/// `len` bytes of `marker` over and over: a file whose bytes a search of the state
/// directory finds.
fn filled(marker: &[u8], len: usize) -> Vec<u8> {
    marker.iter().copied().cycle().take(len).collect()
}

/// The upload segment files of the coordinator whose directory is `dir`.
fn upload_segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let entries = std::fs::read_dir(dir.join("state").join("uploads"));
    entries
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect()
}

fn files_hold(paths: impl IntoIterator<Item = std::path::PathBuf>, needle: &[u8]) -> bool {
    paths.into_iter().any(|path| {
        std::fs::read(path)
            .unwrap_or_default()
            .windows(needle.len())
            .any(|w| w == needle)
    })
}

/// A coordinator (state in the returned directory) with one healthy worker, drained: the jobs
/// submitted wait in the queue.
fn drained_pool() -> (FakeWorker, tempfile::TempDir, Coordinator) {
    let worker = FakeWorker::start();
    let dir = support::workers_dir(&[worker.entry(2)]);
    let coordinator = Coordinator::start_in(dir.path(), &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let (code, body) = post(
        &drain_url(&coordinator, &worker, "drain"),
        "text/plain",
        b"",
    );
    assert_eq!(code, 200, "{body}");
    (worker, dir, coordinator)
}

/// Whether `needle` lies anywhere in the job store's database or WAL file.
fn store_files_hold(state: &std::path::Path, needle: &[u8]) -> bool {
    files_hold([state.join("jobs.db"), state.join("jobs.db-wal")], needle)
}

#[test]
fn a_dispatched_upload_and_a_deleted_jobs_results_leave_no_trace_in_the_store_files() {
    // A queued job's upload is held in its row until a worker takes the job.
    let (worker, dir, coordinator) = drained_pool();
    let secret = b"# upload 5f0c2a91d7e4b3\nprint('hi')\n";
    let kept = submit(
        &coordinator,
        &Form::new()
            .file("main.py", "text/x-python", secret)
            .manifest(r#"{"entrypoint":"main.py","outputs":["result.txt"]}"#),
    );
    let deleted = submit(&coordinator, &form());
    let state = dir.path().join("state");
    assert!(store_files_hold(&state, secret));
    let (code, body) = post(
        &drain_url(&coordinator, &worker, "undrain"),
        "text/plain",
        b"",
    );
    assert_eq!(code, 200, "{body}");
    let mut results = Vec::new();
    for id in [&kept, &deleted] {
        wait_collected(&coordinator, id, DEADLINE);
        let (code, bytes) = get_bytes(&coordinator.url(&format!("/outputs/{id}/result.txt")));
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&bytes));
        assert!(bytes.starts_with(b"result of job_"), "{bytes:?}");
        results.push(bytes);
    }
    // Committed with the jobs' records (a record nobody waits on may take a moment).
    for bytes in &results {
        assert!(
            poll_until(DEADLINE, || store_files_hold(&state, bytes).then_some(())).is_some(),
            "{:?} is not in the store's files",
            String::from_utf8_lossy(bytes)
        );
    }

    let (code, body) = delete_job(&coordinator, &deleted);
    assert_eq!(code, 200, "{body}");
    // Zeroed where it lay, and gone from the WAL once the idle store truncated it.
    let gone = poll_until(DEADLINE, || {
        (!store_files_hold(&state, &results[1])).then_some(())
    });
    assert!(
        gone.is_some(),
        "the deleted job's results are still in the store's files"
    );
    assert!(store_files_hold(&state, &results[0]));
    // The kept job's upload went with its dispatch.
    assert!(!store_files_hold(&state, secret));
    let (code, bytes) = get_bytes(&coordinator.url(&format!("/outputs/{kept}/result.txt")));
    assert_eq!((code, &bytes), (200, &results[0]));
}

/// Whether any results segment in `state` holds `needle`.
fn results_segments_hold(state: &std::path::Path, needle: &[u8]) -> bool {
    let segments = std::fs::read_dir(state.join("results"))
        .into_iter()
        .flatten();
    files_hold(segments.flatten().map(|entry| entry.path()), needle)
}

#[test]
fn deleting_a_queued_job_wipes_its_upload_in_a_segment_another_waiting_upload_keeps() {
    let (worker, dir, coordinator) = drained_pool();
    // Over 64 KiB each: both go to an upload segment, one after the other.
    let upload = |marker: &[u8]| filled(marker, 200_000);
    let (gone, waits) = (
        b"deleted-upload-3f9a".as_slice(),
        b"waiting-upload-c21e".as_slice(),
    );
    let deleted = submit(
        &coordinator,
        &form().file("data.bin", "application/octet-stream", &upload(gone)),
    );
    let waiting = submit(
        &coordinator,
        &form().file("data.bin", "application/octet-stream", &upload(waits)),
    );
    let uploads = || upload_segments(dir.path());
    assert_eq!(uploads().len(), 1, "both uploads in one segment");
    assert!(files_hold(uploads(), gone));

    let (code, body) = delete_job(&coordinator, &deleted);
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "cancelled", "{body}");
    let wiped = poll_until(DEADLINE, || (!files_hold(uploads(), gone)).then_some(()));
    assert!(
        wiped.is_some(),
        "the deleted job's upload is still in the upload segment"
    );
    assert!(files_hold(uploads(), waits), "the waiting upload went too");

    // The job that waits runs with its upload intact.
    let (code, body) = post(
        &drain_url(&coordinator, &worker, "undrain"),
        "text/plain",
        b"",
    );
    assert_eq!(code, 200, "{body}");
    wait_status(&coordinator, &waiting, "completed", DEADLINE);
    let received = worker.recording();
    let job = received
        .jobs
        .first()
        .unwrap_or_else(|| panic!("no job reached the worker"));
    let data = job.files.iter().find(|f| f.filename == "data.bin");
    assert!(data.is_some_and(|f| f.bytes == upload(waits)));
    assert_eq!(received.jobs.len(), 1);
}

/// A submit whose body still arrives when submits are paused is refused 503 at its end: it
/// was acknowledged after the pause, so a snapshot taken once the pause answered (README's way
/// to move a coordinator) missed a job whose submit got a 200. Nothing of it stays.
#[test]
fn a_submit_whose_body_arrives_across_a_pause_is_refused_at_its_end() {
    use std::io::{Read, Write};
    let (_worker, _dir, coordinator) = drained_pool();
    let form = form().file(
        "data.bin",
        "application/octet-stream",
        &filled(b"across-a-pause", 300_000),
    );
    let body = form.body();
    let head = format!(
        "POST /submit HTTP/1.1\r\nHost: pool\r\nConnection: close\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
        form.content_type(),
        body.len()
    );
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", coordinator.port()))
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let _ = stream.set_read_timeout(Some(DEADLINE));
    let half = body.len() / 2;
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(&body[..half]))
        .unwrap_or_else(|e| panic!("send: {e}"));
    poll_until(DEADLINE, || {
        (get_json(&coordinator.url("/pool")).1["uploads_receiving"] == 1).then_some(())
    })
    .unwrap_or_else(|| panic!("the upload never began"));
    let (code, answer) = post(&coordinator.url("/submits/pause"), "text/plain", b"");
    assert_eq!(code, 200, "{answer}");
    stream
        .write_all(&body[half..])
        .unwrap_or_else(|e| panic!("send: {e}"));
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(
        reply.contains("while this submit's body arrived"),
        "{reply}"
    );
    // As a submit refused for the pause before its body: no failure of the coordinator's.
    assert!(reply.contains("Retry-After: 30\r\n"), "{reply}");
    let (_, jobs) = get_json(&coordinator.url("/jobs"));
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(0), "{jobs}");
    let (_, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(pool["spool"]["uploads_on_disk"], 0, "{pool}");
    assert_eq!(pool["submits_paused"]["refused_submits"], 1, "{pool}");
}

/// The upload of a job that left the queue (it ran, or was cancelled) stays in its upload
/// segment while another waiting upload keeps the segment: deleting the job wipes it there (it
/// stayed), and a restart punches out every upload there that no waiting job needs.
#[test]
fn deleting_a_job_that_left_the_queue_wipes_its_upload_in_a_segment_a_waiting_upload_keeps() {
    let worker = FakeWorker::start_with(|k| k.job_duration = Duration::from_secs(3));
    let dir = support::workers_dir(&[worker.entry(1)]);
    let mut coordinator = Coordinator::start_in(dir.path(), &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let set_drain = |coordinator: &Coordinator, action: &str| {
        let (code, body) = post(&drain_url(coordinator, &worker, action), "text/plain", b"");
        assert_eq!(code, 200, "{action}: {body}");
    };
    set_drain(&coordinator, "drain");
    let upload = |marker: &[u8]| filled(marker, 200_000);
    let markers: [&[u8]; 4] = [
        b"ran-then-deleted-7c1d",
        b"cancelled-then-deleted-0b9e",
        b"cancelled-then-kept-5a42",
        b"still-waiting-e83f",
    ];
    let ids: Vec<String> = markers
        .iter()
        .map(|m| {
            let file = upload(m);
            submit(
                &coordinator,
                &form().file("data.bin", "application/octet-stream", &file),
            )
        })
        .collect();
    let uploads = || upload_segments(dir.path());
    assert_eq!(uploads().len(), 1, "the four uploads in one segment");
    // The first job runs (the worker has one slot), and no other follows it: it is held
    // running until the worker is drained again.
    worker.set(|k| k.hold_jobs = true);
    set_drain(&coordinator, "undrain");
    wait_started(&coordinator, &worker, &ids[0], DEADLINE);
    set_drain(&coordinator, "drain");
    worker.set(|k| k.hold_jobs = false);
    wait_status(&coordinator, &ids[0], "completed", DEADLINE);
    for id in &ids[1..3] {
        let (code, body) = post(
            &coordinator.url(&format!("/cancel/{id}")),
            "text/plain",
            b"",
        );
        assert_eq!(code, 200, "{body}");
    }
    assert!(
        files_hold(uploads(), markers[0]),
        "the run job's upload went at its dispatch"
    );
    for id in &ids[..2] {
        let (code, body) = delete_job(&coordinator, id);
        assert_eq!(code, 200, "{body}");
    }
    let wiped = poll_until(DEADLINE, || {
        (!files_hold(uploads(), markers[0]) && !files_hold(uploads(), markers[1])).then_some(())
    });
    assert!(
        wiped.is_some(),
        "a deleted job's upload is still in the upload segment"
    );
    assert!(
        files_hold(uploads(), markers[3]),
        "the waiting upload went too"
    );

    coordinator.kill();
    let coordinator = Coordinator::start_in(dir.path(), &FAST);
    let punched = poll_until(DEADLINE, || {
        (!files_hold(uploads(), markers[2])).then_some(())
    });
    assert!(
        punched.is_some(),
        "after the restart the cancelled job's upload is still in the upload segment"
    );
    // The job that waits runs with its upload intact.
    set_drain(&coordinator, "undrain");
    wait_status(&coordinator, &ids[3], "completed", DEADLINE);
    let received = worker.recording();
    let job = received.jobs.last();
    let data = job.and_then(|j| j.files.iter().find(|f| f.filename == "data.bin"));
    assert!(data.is_some_and(|f| f.bytes == upload(markers[3])));
    assert_eq!(received.jobs.len(), 2);
}

/// Two jobs' results in one results segment (the second job's with 24 MiB of data) and a
/// download of that data under way, which read its first bytes and then stopped.
struct DownloadUnderWay {
    _worker: FakeWorker,
    dir: tempfile::TempDir,
    coordinator: Coordinator,
    kept: String,
    kept_result: Vec<u8>,
    deleted: String,
    marker: &'static [u8],
    data: Vec<u8>,
    download: std::net::TcpStream,
    received: Vec<u8>,
}

impl DownloadUnderWay {
    fn start() -> DownloadUnderWay {
        use std::io::{Read, Write};
        let worker = FakeWorker::start();
        let dir = support::workers_dir(&[worker.entry(2)]);
        let coordinator = Coordinator::start_in(dir.path(), &Self::args());
        wait_healthy(&coordinator, &[&worker], DEADLINE);
        // Without an outputs list the worker returns every file of the job, the upload too:
        // 24 MiB, more than the sockets between the coordinator and a client that stops
        // reading hold.
        let marker: &'static [u8] = b"wiped-5c81e07d3a";
        let data = filled(marker, 24 << 20);
        // One after the other, so that both go into the same results segment.
        let kept = submit(&coordinator, &form());
        wait_collected(&coordinator, &kept, DEADLINE);
        let deleted = submit(
            &coordinator,
            &form().file("data.bin", "application/octet-stream", &data),
        );
        wait_collected(&coordinator, &deleted, DEADLINE);
        let (code, kept_result) =
            get_bytes(&coordinator.url(&format!("/outputs/{kept}/result.txt")));
        assert_eq!(code, 200);
        let state = dir.path().join("state");
        assert!(results_segments_hold(&state, marker));
        let segments = std::fs::read_dir(state.join("results")).map_or(0, |d| d.count());
        assert_eq!(segments, 1, "both jobs' results in one segment");

        let mut download = std::net::TcpStream::connect(("127.0.0.1", coordinator.port()))
            .unwrap_or_else(|e| panic!("connect: {e}"));
        download
            .set_read_timeout(Some(DEADLINE))
            .unwrap_or_else(|e| panic!("{e}"));
        write!(
            download,
            "GET /outputs/{deleted}/data.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap_or_else(|e| panic!("request: {e}"));
        let mut received = vec![0u8; 64 * 1024];
        download
            .read_exact(&mut received)
            .unwrap_or_else(|e| panic!("first bytes: {e}"));
        DownloadUnderWay {
            _worker: worker,
            dir,
            coordinator,
            kept,
            kept_result,
            deleted,
            marker,
            data,
            download,
            received,
        }
    }

    /// Results in segments only.
    fn args() -> Vec<&'static str> {
        let mut args = FAST.to_vec();
        args.extend(["--row-results-max", "0"]);
        args
    }

    fn state(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }

    /// Reads the download to its end: it got the job's bytes, not the wipe's zeros.
    fn finish_download(&mut self) {
        use std::io::Read;
        self.download
            .read_to_end(&mut self.received)
            .unwrap_or_else(|e| panic!("the rest: {e}"));
        let head_end = self
            .received
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of headers"));
        assert!(self.received.starts_with(b"HTTP/1.1 200"));
        assert!(
            self.received[head_end + 4..] == self.data[..],
            "the download under way did not get the job's bytes"
        );
    }

    /// The deleted job's bytes are wiped; the other job in the segment keeps its results.
    fn assert_wiped(&self) {
        let state = self.state();
        assert!(
            poll_until(DEADLINE, || (!results_segments_hold(&state, self.marker))
                .then_some(()))
            .is_some(),
            "the deleted job's results are still in its results segment"
        );
        assert!(results_segments_hold(&state, &self.kept_result));
        assert!(
            self.coordinator
                .wait_for_log("bytes of a deleted job in", DEADLINE),
            "{}",
            self.coordinator.logs()
        );
    }
}

#[test]
fn a_deleted_jobs_results_in_a_segment_are_wiped_once_a_download_under_way_ended() {
    let mut under_way = DownloadUnderWay::start();
    let (coordinator, deleted) = (&under_way.coordinator, under_way.deleted.clone());
    let (code, body) = delete_job(coordinator, &deleted);
    assert_eq!(code, 200, "{body}");
    let (code, body) = get_json(&coordinator.url(&format!("/outputs/{deleted}/data.bin")));
    assert_eq!(code, 404, "{body}");
    let (_, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(pool["store"]["wipes_waiting"], 1, "{pool}");
    let (_, metrics) = get_bytes(&coordinator.url("/metrics"));
    let metrics = String::from_utf8_lossy(&metrics);
    for line in [
        "trusted_pool_jobs_deleted_total 1",
        "trusted_pool_store_wipes_waiting 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}: {metrics}");
    }
    under_way.finish_download();
    under_way.assert_wiped();
    let coordinator = &under_way.coordinator;
    let waiting = poll_until(DEADLINE, || {
        let (_, pool) = get_json(&coordinator.url("/pool"));
        (pool["store"]["wipes_waiting"] == 0).then_some(())
    });
    assert!(waiting.is_some(), "a wipe still waits");
    let kept = &under_way.kept;
    let (code, bytes) = get_bytes(&coordinator.url(&format!("/outputs/{kept}/result.txt")));
    assert_eq!((code, bytes), (200, under_way.kept_result.clone()));
}

#[test]
fn a_job_retention_forgets_has_its_results_wiped_in_the_segment_another_job_keeps() {
    let worker = FakeWorker::start();
    let dir = support::workers_dir(&[worker.entry(2)]);
    let mut args = DownloadUnderWay::args();
    args.extend(["--retain-jobs", "1"]);
    let coordinator = Coordinator::start_in(dir.path(), &args);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let state = dir.path().join("state");
    let data = |marker: &[u8]| filled(marker, 100_000);
    let (old, new) = (
        b"forgotten-results-77c1".as_slice(),
        b"retained-results-e20b".as_slice(),
    );
    // One after the other, so that both go into the same results segment.
    let first = submit(
        &coordinator,
        &form().file("data.bin", "application/octet-stream", &data(old)),
    );
    wait_collected(&coordinator, &first, DEADLINE);
    assert!(results_segments_hold(&state, old));
    let second = submit(
        &coordinator,
        &form().file("data.bin", "application/octet-stream", &data(new)),
    );
    wait_collected(&coordinator, &second, DEADLINE);
    let segments = std::fs::read_dir(state.join("results")).map_or(0, |d| d.count());
    assert_eq!(segments, 1, "both jobs' results in one segment");

    let forgotten = poll_until(DEADLINE, || {
        let (code, _) = get_json(&coordinator.url(&format!("/status/{first}")));
        (code == 404).then_some(())
    });
    assert!(forgotten.is_some(), "retention kept job {first}");
    let wiped = poll_until(DEADLINE, || {
        (!results_segments_hold(&state, old)).then_some(())
    });
    assert!(
        wiped.is_some(),
        "the forgotten job's results are still in the segment"
    );
    let (code, bytes) = get_bytes(&coordinator.url(&format!("/outputs/{second}/data.bin")));
    assert_eq!((code, bytes), (200, data(new)));
}

#[test]
fn a_wipe_that_a_kill_cut_short_is_made_by_the_scrub_at_the_next_start() {
    let mut under_way = DownloadUnderWay::start();
    let (code, body) = delete_job(&under_way.coordinator, &under_way.deleted);
    assert_eq!(code, 200, "{body}");
    let (_, pool) = get_json(&under_way.coordinator.url("/pool"));
    assert_eq!(pool["store"]["wipes_waiting"], 1, "{pool}");
    under_way.coordinator.kill();
    let state = under_way.state();
    assert!(
        results_segments_hold(&state, under_way.marker),
        "the wipe was made before the kill"
    );

    let restarted = Coordinator::start_in(under_way.dir.path(), &DownloadUnderWay::args());
    let scrubbed = poll_until(DEADLINE, || {
        (!results_segments_hold(&state, under_way.marker)).then_some(())
    });
    assert!(
        scrubbed.is_some(),
        "the deleted job's results are still in its results segment: {}",
        restarted.logs()
    );
    assert!(
        restarted.wait_for_log(
            "bytes no job refers to in 1 segments are punched out",
            DEADLINE
        ),
        "{}",
        restarted.logs()
    );
    let kept = &under_way.kept;
    let (code, bytes) = get_bytes(&restarted.url(&format!("/outputs/{kept}/result.txt")));
    assert_eq!((code, bytes), (200, under_way.kept_result.clone()));
    let (code, body) = get_json(&restarted.url(&format!("/status/{}", under_way.deleted)));
    assert_eq!(code, 404, "{body}");
}

#[test]
fn a_graceful_shutdown_lets_a_download_end_and_makes_the_wipe_that_waited_for_it() {
    let mut under_way = DownloadUnderWay::start();
    let deleted = under_way.deleted.clone();
    let (code, body) = delete_job(&under_way.coordinator, &deleted);
    assert_eq!(code, 200, "{body}");
    assert!(under_way.coordinator.signal(libc::SIGTERM), "kill -TERM");
    assert!(under_way
        .coordinator
        .wait_for_log("Shutting down", DEADLINE));
    under_way.finish_download();
    let exit = under_way.coordinator.wait_exit(DEADLINE);
    assert!(exit.is_some_and(|s| s.success()), "{exit:?}");
    under_way.assert_wiped();
}

#[test]
fn the_log_level_is_raised_for_a_while_and_goes_back_on_its_own() {
    // Without a stream each dispatch logs at debug that the job is polled instead.
    let worker = FakeWorker::start_with(|k| k.stream.disabled = true);
    let coordinator = Coordinator::start(&[worker.entry(2)], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let debug_line = |id: &str| format!("Job {id}: the worker stream did not open");
    let quiet = submit(&coordinator, &form());
    wait_status(&coordinator, &quiet, "completed", DEADLINE);

    for (query, why) in [
        ("", "say which level"),
        ("?level=loud", "unknown log level"),
        ("?level=debug&for=soon", "whole seconds"),
    ] {
        let (code, body) = post(
            &coordinator.url(&format!("/log-level{query}")),
            "text/plain",
            b"",
        );
        assert_eq!(code, 400, "{query}: {body}");
        assert!(body.contains(why), "{query}: {body}");
    }
    let (code, body) = post(
        &coordinator.url("/log-level?level=debug&for=5"),
        "text/plain",
        b"",
    );
    assert_eq!(code, 200, "{body}");
    let set: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    assert_eq!(set["level"], "debug", "{set}");
    assert_eq!(set["configured"], "info", "{set}");
    assert!(
        set["changed"]["back_in_seconds"].as_f64() > Some(0.0),
        "{set}"
    );
    let (_, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(pool["log_level"]["level"], "debug", "{pool}");

    let loud = submit(&coordinator, &form());
    support::lifecycle::wait_collected(&coordinator, &loud, DEADLINE);
    assert!(
        coordinator.wait_for_log("Log level back to info", DEADLINE),
        "{}",
        coordinator.logs()
    );
    let after = submit(&coordinator, &form());
    wait_status(&coordinator, &after, "completed", DEADLINE);
    let logs = coordinator.logs();
    assert!(logs.contains("Log level set to debug for 5 s"), "{logs}");
    assert!(logs.contains(&debug_line(&loud)), "{logs}");
    // A job's steps at debug: its submit, what its worker reports, its collection.
    for step in [
        ": its submit of ",
        " is completed on its worker",
        " bytes of logs fetched from its worker in ",
    ] {
        let says = |id: &str| {
            logs.lines()
                .any(|line| line.contains(&format!("[DEBUG] Job {id}")) && line.contains(step))
        };
        assert!(says(&loud), "no {step:?} for {loud} in {logs}");
        assert!(!says(&after), "{step:?} for {after} in {logs}");
    }
    assert!(!logs.contains(&debug_line(&quiet)), "{logs}");
    assert!(!logs.contains(&debug_line(&after)), "{logs}");
    let (_, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(pool["log_level"]["level"], "info", "{pool}");
    assert_eq!(pool["log_level"]["changed"], Value::Null, "{pool}");
}

/// Submits `form` to `path` (`/submit?...`), asserting 200; returns the job id.
fn submit_to(coordinator: &Coordinator, path: &str, form: &Form) -> String {
    let (code, body) = post(&coordinator.url(path), &form.content_type(), &form.body());
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str::<Value>(&body).unwrap_or(Value::Null)["job_id"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A coordinator (started with `args`, its directory to restart it in) whose one worker, with
/// one slot, runs a 30 s job (its id comes last): the jobs submitted next wait in the queue.
fn busy_worker(args: &[&str]) -> (FakeWorker, tempfile::TempDir, Coordinator, String) {
    let worker = slow_worker(30.0);
    let dir = support::temp_dir();
    support::write_workers_json(dir.path(), &[worker.entry(1)]);
    let coordinator = Coordinator::start_in(dir.path(), args);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let blocker = submit(&coordinator, &form());
    wait_started(&coordinator, &worker, &blocker, DEADLINE);
    (worker, dir, coordinator, blocker)
}

/// A queued job's time in its level before a `kill -9` counts towards its priority aging after
/// the restart: a low job that aged to normal is still normal at once, and goes on to high
/// (its aging started again from low).
#[test]
fn priority_aging_goes_on_across_a_restart() {
    let mut args = FAST.to_vec();
    args.extend(["--priority-aging", "3"]);
    let (_worker, dir, mut coordinator, _blocker) = busy_worker(&args);
    let (code, body) = post_multipart(&coordinator.url("/submit?priority=low"), &form());
    assert_eq!(code, 200, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap_or(Value::Null)["job_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let level = |coordinator: &Coordinator| {
        job_status(coordinator, &id)["queue_level"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    poll_until(DEADLINE, || (level(&coordinator) == "normal").then_some(()))
        .unwrap_or_else(|| panic!("never aged to normal: {}", level(&coordinator)));
    coordinator.kill();
    let coordinator = Coordinator::start_in(dir.path(), &args);
    let after = level(&coordinator);
    assert!(
        after == "normal" || after == "high",
        "after the restart: {after}"
    );
    poll_until(DEADLINE, || (level(&coordinator) == "high").then_some(()))
        .unwrap_or_else(|| panic!("never aged to high: {}", level(&coordinator)));
}

/// After `kill -9`, a job that aging lifted into a level stands behind the jobs that were in that
/// level before it got there (submitted there, or moved there by a priority change), as before
/// the stop; they were put back in the order of their submission or change.
#[test]
fn a_restart_keeps_the_order_aging_and_priority_changes_made() {
    let mut args = FAST.to_vec();
    args.extend(["--priority-aging", "10"]);
    let (_worker, dir, mut coordinator, _blocker) = busy_worker(&args);
    let started = Instant::now();
    let aged = submit_to(&coordinator, "/submit?priority=low", &form());
    poll_until(DEADLINE, || {
        (started.elapsed() >= Duration::from_secs(5)).then_some(())
    });
    let normal = submit_to(&coordinator, "/submit?priority=normal", &form());
    let changed = submit_to(&coordinator, "/submit?priority=low", &form());
    let (code, body) = post(
        &coordinator.url(&format!("/jobs/{changed}/priority?priority=normal")),
        "text/plain",
        b"",
    );
    assert_eq!(code, 200, "{body}");
    let order = |coordinator: &Coordinator| -> Vec<(u64, String)> {
        [&normal, &changed, &aged]
            .iter()
            .map(|id| {
                let status = job_status(coordinator, id);
                (
                    status["queue_position"].as_u64().unwrap_or(u64::MAX),
                    status["queue_level"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect()
    };
    let ordered = |order: &[(u64, String)]| order.windows(2).all(|w| w[0].0 < w[1].0);
    poll_until(DEADLINE, || {
        (job_status(&coordinator, &aged)["queue_level"] == "normal").then_some(())
    })
    .unwrap_or_else(|| panic!("never aged to normal: {:?}", order(&coordinator)));
    let before = order(&coordinator);
    assert!(ordered(&before), "before the stop: {before:?}");
    coordinator.kill();
    let coordinator = Coordinator::start_in(dir.path(), &args);
    let after = order(&coordinator);
    assert!(
        ordered(&after),
        "after the restart {after:?}, before it {before:?} (the job submitted normal, the one \
         changed to normal, the one aged to normal)"
    );
}

/// A job still queued when its queue timeout ends fails unstarted, with what the workers were
/// doing, and its upload goes; its time before a restart counts; the others keep their place.
#[test]
fn a_job_no_worker_takes_within_its_queue_timeout_fails_unstarted() {
    let mut args = FAST.to_vec();
    args.extend(["--queue-timeout", "600"]);
    let (worker, dir, mut coordinator, blocker) = busy_worker(&args);
    // Longer than the coordinator allows: refused before the body is read.
    let head = format!(
        "POST /submit?queue_timeout=601 HTTP/1.1\r\nContent-Type: {}\r\nContent-Length: 1048576\r\n",
        form().content_type()
    );
    let reply = support::lifecycle::exchange(coordinator.port(), &head, b"")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(reply.status, 400, "{}", reply.text());
    // Its advice fits the limit (it suggested queue_timeout=600 under a limit of 60 too).
    assert!(
        reply.text().contains("--queue-timeout 600")
            && reply.text().contains("give fewer seconds")
            && !reply.text().contains("e.g. queue_timeout="),
        "{}",
        reply.text()
    );
    let (code, body) = post(
        &coordinator.url("/submit?queue_timeout=5"),
        &form().field("queue_timeout", b"5").content_type(),
        &form().field("queue_timeout", b"5").body(),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("both as a part and in the query"), "{body}");
    let soon = submit_to(&coordinator, "/submit?queue_timeout=1", &form());
    let part = submit(&coordinator, &form().field("queue_timeout", b"2"));
    let patient = submit(&coordinator, &form());
    assert_eq!(job_status(&coordinator, &part)["queue_timeout"], 2.0);
    assert_eq!(job_status(&coordinator, &patient)["queue_timeout"], 600.0);
    // The queue as each saw it, itself in it: the three, then two (it said 2 and 1).
    for (id, queued) in [(&soon, 3), (&part, 2)] {
        let status = wait_status(&coordinator, id, "failed", DEADLINE);
        let error = status["error"].as_str().unwrap_or_default();
        assert!(error.contains("within its queue timeout of"), "{status}");
        assert!(
            error.contains(&format!(
                "1 of 1 worker healthy and in service, 0 with room; {queued} jobs queued"
            )),
            "{status}"
        );
        assert_eq!(status["dispatched_at"], Value::Null, "{status}");
        assert_eq!(status["remote_job_id"], Value::Null, "{status}");
    }
    let waited = job_status(&coordinator, &soon)["completed_at"]
        .as_f64()
        .unwrap_or(0.0)
        - job_status(&coordinator, &soon)["submitted_at"]
            .as_f64()
            .unwrap_or(0.0);
    assert!((1.0..30.0).contains(&waited), "failed after {waited} s");
    let status = job_status(&coordinator, &patient);
    assert_eq!(status["pool_status"], "queued", "{status}");
    assert_eq!(status["queue_position"], 1, "{status}");
    let pool = assert_pool_consistent(&coordinator);
    assert_eq!(pool["queue"]["timed_out"], 2, "{pool}");
    assert_eq!(
        pool["spool"]["uploads_in_memory"], 1,
        "only the patient job's: {pool}"
    );
    let (_, metrics) = support::get(&coordinator.url("/metrics"));
    assert!(
        metrics.contains("trusted_pool_queue_timeouts_total 2"),
        "{metrics}"
    );
    assert!(
        coordinator.wait_for_log(
            "failed unstarted: its queue timeout ended before a worker took it",
            DEADLINE
        ),
        "{}",
        coordinator.logs()
    );
    // The second expiry came within the minute: held back from the log, counted later.
    let logs = coordinator.logs();
    assert_eq!(logs.matches("failed unstarted").count(), 1, "{logs}");
    // A job whose timeout ends while the coordinator is down fails at the restart, unstarted.
    let downtime = submit_to(&coordinator, "/submit?queue_timeout=2", &form());
    let submitted_at = job_status(&coordinator, &downtime)["submitted_at"]
        .as_f64()
        .unwrap_or(0.0);
    coordinator.kill();
    poll_until(DEADLINE, || {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs_f64();
        (now > submitted_at + 2.5).then_some(())
    });
    let coordinator = Coordinator::start_in(dir.path(), &args);
    let status = wait_status(&coordinator, &downtime, "failed", DEADLINE);
    assert!(
        status["error"]
            .as_str()
            .unwrap_or_default()
            .contains("queue timeout of 2 s"),
        "{status}"
    );
    assert_eq!(job_status(&coordinator, &patient)["pool_status"], "queued");
    assert_eq!(job_status(&coordinator, &soon)["queue_timeout"], 1.0);
    // Alone in the queue, a job that times out says so in the singular.
    cancel(&coordinator, &patient);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let alone = submit_to(&coordinator, "/submit?queue_timeout=1", &form());
    let status = wait_status(&coordinator, &alone, "failed", DEADLINE);
    assert!(
        status["error"]
            .as_str()
            .unwrap_or_default()
            .contains("(1 of 1 worker healthy and in service, 0 with room; 1 job queued)"),
        "{status}"
    );
    let accepted = worker.recording().accepted_ids().len();
    assert_eq!(accepted, 1, "only the blocker reached the worker");
    cancel(&coordinator, &blocker);
}

/// A queued job's priority is changed by `POST /jobs/{id}/priority`: it moves to the back of its
/// new level, the change and that place survive `kill -9`, and a job that left the queue or a
/// bad request is refused.
#[test]
fn a_queued_jobs_priority_is_changed_and_a_restart_keeps_it() {
    let (_worker, dir, mut coordinator, blocker) = busy_worker(&FAST);
    let queued: Vec<String> = (0..4).map(|_| submit(&coordinator, &form())).collect();
    let change = |coordinator: &Coordinator, id: &str, query: &str| {
        let (code, body) = post(
            &coordinator.url(&format!("/jobs/{id}/priority{query}")),
            "text/plain",
            b"",
        );
        (
            code,
            serde_json::from_str::<Value>(&body).unwrap_or(Value::Null),
        )
    };
    let (code, answer) = change(&coordinator, &queued[3], "?priority=high");
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["priority"], "high", "{answer}");
    assert_eq!(answer["was"], "normal", "{answer}");
    assert_eq!(answer["queue_position"], 1, "{answer}");
    // Raised later, though submitted earlier: behind the first one raised.
    let (code, answer) = change(&coordinator, &queued[1], "?priority=high");
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["queue_position"], 2, "{answer}");
    let (code, answer) = change(&coordinator, &queued[0], "?priority=low");
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["queue_position"], 4, "{answer}");
    let refusals = [
        (&queued[2], "", 400, "give the new priority"),
        (&queued[2], "?priority=urgent", 400, "\"urgent\" is unknown"),
        (&blocker, "?priority=high", 409, "this one left it"),
        (
            &"pool-0123456789abcdef0123456789abcdef".to_string(),
            "?priority=high",
            404,
            "no job",
        ),
    ];
    for (id, query, status, needle) in refusals {
        let (code, answer) = change(&coordinator, id, query);
        assert_eq!(code, status, "{query}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(needle), "{query}: {answer}");
    }
    let (code, _) = support::get(&coordinator.url(&format!("/jobs/{}/priority", queued[2])));
    assert_eq!(code, 405);
    assert!(
        coordinator.wait_for_log(
            &format!("Job {} has priority high now, was normal", queued[1]),
            DEADLINE
        ),
        "{}",
        coordinator.logs()
    );
    coordinator.kill();
    let coordinator = Coordinator::start_in(dir.path(), &FAST);
    let order: Vec<(Value, Value)> = queued
        .iter()
        .map(|id| {
            let status = job_status(&coordinator, id);
            (status["priority"].clone(), status["queue_position"].clone())
        })
        .collect();
    assert_eq!(
        order,
        [
            (Value::from("low"), Value::from(4)),
            (Value::from("high"), Value::from(2)),
            (Value::from("normal"), Value::from(3)),
            (Value::from("high"), Value::from(1)),
        ],
        "{}",
        coordinator.logs()
    );
    for id in queued.iter().chain([&blocker]) {
        cancel(&coordinator, id);
    }
}

/// `--log-format json`: every line the coordinator logs is one JSON object with its UTC time,
/// level, target and message (in that order), a job's lines included.
#[test]
fn logs_can_be_json_lines_for_log_shippers() {
    let worker = FakeWorker::start();
    let mut args = FAST.to_vec();
    args.extend(["--log-format", "json"]);
    let coordinator = Coordinator::start(&[worker.entry(2)], &args);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let id = submit(&coordinator, &form());
    wait_collected(&coordinator, &id, DEADLINE);
    let wanted = format!("Collected results of job {id}");
    assert!(coordinator.wait_for_log(&wanted, DEADLINE));
    let logs = coordinator.logs();
    assert!(logs.starts_with("{\"time\":"), "{logs}");
    let lines: Vec<Value> = logs
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
        })
        .collect();
    for line in &lines {
        let time = line["time"].as_str().unwrap_or_default();
        assert!(
            time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
            "{line}"
        );
        let level = line["level"].as_str().unwrap_or_default();
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level),
            "{line}"
        );
        let target = line["target"].as_str().unwrap_or_default();
        assert!(target.starts_with("trusted_pool"), "{line}");
    }
    let collected = lines.iter().find(|l| {
        l["message"]
            .as_str()
            .is_some_and(|m| m.starts_with(&wanted))
    });
    assert_eq!(
        collected.map(|l| &l["level"]),
        Some(&Value::from("INFO")),
        "{logs}"
    );
}
