//! Jobs followed on their worker's WebSocket stream: the end seen at once, polling as the
//! fallback when a stream drops or never opens, and job events for clients on
//! `/logs/ID?follow=1` and `/stream/ID` (timing, pass-through, bounds).

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;

use support::follow::{follow_logs, follow_websocket};
use support::lifecycle::{pool_worker, submit, wait_collected, wait_healthy, wait_status};
use support::{get, get_json, poll_until, Coordinator, FakeWorker, Form};

/// Generous deadline for anything the coordinator does on its own.
const DEADLINE: Duration = Duration::from_secs(60);
/// Allowed lag behind the worker's frame (the issue's figure) plus the test's own polling.
const LAG: Duration = Duration::from_millis(100);

fn job() -> Form {
    Form::new()
        .file("main.py", "text/x-python", b"print('hi')\n")
        .manifest(r#"{"entrypoint":"main.py","outputs":["result.txt"]}"#)
}

/// A coordinator in front of `worker` polling every `track_interval` seconds, once the worker
/// is healthy.
fn coordinator_for(worker: &FakeWorker, track_interval: &str) -> Coordinator {
    let coordinator = Coordinator::start(
        &[worker.entry(2)],
        &["--health-interval", "1", "--track-interval", track_interval],
    );
    wait_healthy(&coordinator, &[worker], DEADLINE);
    coordinator
}

fn remote_id(coordinator: &Coordinator, id: &str) -> String {
    poll_until(DEADLINE, || {
        let (_, status) = get_json(&coordinator.url(&format!("/status/{id}")));
        status["remote_job_id"].as_str().map(str::to_string)
    })
    .unwrap_or_else(|| panic!("job {id} was never dispatched"))
}

/// Polls `/status` as fast as it answers until `pool_status` is `wanted`; returns when it was.
fn seen_at(coordinator: &Coordinator, id: &str, wanted: &str) -> Instant {
    poll_until(DEADLINE, || {
        let (_, status) = get_json(&coordinator.url(&format!("/status/{id}")));
        (status["pool_status"] == wanted).then(Instant::now)
    })
    .unwrap_or_else(|| panic!("job {id} never became {wanted}"))
}

#[test]
fn a_jobs_end_is_seen_within_100_ms_of_the_done_frame_at_track_interval_5() {
    let worker = FakeWorker::start_with(|k| k.job_duration = Duration::from_millis(600));
    let coordinator = coordinator_for(&worker, "5");
    let id = submit(&coordinator, &job());
    let remote = remote_id(&coordinator, &id);
    let mut stream = follow_websocket(&worker.endpoint(), &remote);
    let done = stream
        .wait_for("[DONE]", DEADLINE)
        .expect("the worker's [DONE] frame");
    let seen = seen_at(&coordinator, &id, "completed");
    let lag = seen.saturating_duration_since(done);
    assert!(lag <= LAG, "the end was seen {lag:?} after [DONE]");
    let status = wait_collected(&coordinator, &id, DEADLINE);
    assert_eq!(status["verification"]["signature"], "verified", "{status}");
    assert_eq!(status["verification"]["outputs"], "match", "{status}");
    assert!(
        worker.recording().count("GET", "status") <= 2,
        "a streamed job needs no polling: {:?}",
        worker.recording().requests
    );
}

#[test]
fn a_stream_dropped_mid_job_hands_over_to_polling() {
    let worker = FakeWorker::start_with(|k| {
        k.job_duration = Duration::from_millis(800);
        k.stream.close_early = true;
    });
    let coordinator = coordinator_for(&worker, "0.2");
    let id = submit(&coordinator, &job());
    let status = wait_collected(&coordinator, &id, DEADLINE);
    assert_eq!(status["pool_status"], "completed", "{status}");
    assert!(worker.recording().count("GET", "stream") >= 1);
    let (_, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(pool["jobs_streamed"], 0, "{pool}");
}

#[test]
fn a_stream_that_never_opens_leaves_polling_alone_to_complete_the_job() {
    let worker = FakeWorker::start_with(|k| {
        k.job_duration = Duration::from_millis(300);
        k.stream.disabled = true;
    });
    let coordinator = coordinator_for(&worker, "0.2");
    let id = submit(&coordinator, &job());
    let status = wait_collected(&coordinator, &id, DEADLINE);
    assert_eq!(status["pool_status"], "completed", "{status}");
    assert!(worker.recording().count("GET", "stream") >= 1);
    assert!(worker.recording().count("GET", "status") >= 2);
}

#[test]
fn pool_shows_jobs_followed_by_stream_and_by_polling() {
    let streaming = FakeWorker::start_with(|k| k.job_duration = Duration::from_secs(3));
    let polled = FakeWorker::start_with(|k| {
        k.job_duration = Duration::from_secs(3);
        k.stream.disabled = true;
    });
    let coordinator = Coordinator::start(
        &[streaming.entry(1), polled.entry(1)],
        &["--health-interval", "1", "--track-interval", "0.2"],
    );
    wait_healthy(&coordinator, &[&streaming, &polled], DEADLINE);
    let a = submit(&coordinator, &job());
    let b = submit(&coordinator, &job());
    let pool = poll_until(DEADLINE, || {
        let (_, pool) = get_json(&coordinator.url("/pool"));
        (pool["jobs_streamed"] == 1 && pool["jobs_polled"] == 1).then_some(pool)
    })
    .expect("one job streamed, one polled");
    assert_eq!(pool_worker(&pool, &streaming)["jobs_streamed"], 1, "{pool}");
    assert_eq!(pool_worker(&pool, &polled)["jobs_polled"], 1, "{pool}");
    wait_collected(&coordinator, &a, DEADLINE);
    wait_collected(&coordinator, &b, DEADLINE);
}

#[test]
fn followers_hear_start_and_end_within_100_ms_of_the_workers_frames() {
    let worker = FakeWorker::start_with(|k| k.job_duration = Duration::from_millis(700));
    let coordinator = coordinator_for(&worker, "5");
    let id = submit(&coordinator, &job());
    let mut follower = follow_logs(coordinator.port(), &id);
    assert_eq!(follower.status, 200);
    let remote = remote_id(&coordinator, &id);
    let mut direct = follow_websocket(&worker.endpoint(), &remote);
    let worker_started = direct.wait_for("[STATUS] Job started", DEADLINE);
    let worker_done = direct.wait_for("[DONE]", DEADLINE).expect("[DONE]");
    let started = follower
        .wait_for("[STATUS] Job started", DEADLINE)
        .expect("the started line");
    let ended = follower
        .wait_for("[DONE] Job completed", DEADLINE)
        .expect("the end line");
    if let Some(worker_started) = worker_started {
        let lag = started.saturating_duration_since(worker_started);
        assert!(lag <= LAG, "started reached the follower {lag:?} late");
    }
    let lag = ended.saturating_duration_since(worker_done);
    assert!(lag <= LAG, "the end reached the follower {lag:?} late");
    // sandrun sends the output only at the end, and so does the follower: after the start.
    let pieces = follower.all(DEADLINE);
    let output = pieces
        .iter()
        .find(|(_, p)| p.contains("ran main.py"))
        .expect("the output");
    assert!(output.0 >= started, "{pieces:?}");
    assert!(
        output.0 + LAG >= worker_done,
        "output before the worker's end: {pieces:?}"
    );
    let text = follower.text();
    let order: Vec<usize> = [
        "[STATUS] Job status:",
        "[STATUS] Job dispatched",
        "[STATUS] Job started",
        "ran main.py",
        "[VERIFY] signature verified, outputs match",
        "[DONE] Job completed (exit=0, CPU=",
    ]
    .iter()
    .map(|n| {
        text.find(n)
            .unwrap_or_else(|| panic!("{n:?} missing from {text:?}"))
    })
    .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
}

#[test]
fn output_streamed_line_by_line_is_passed_through_line_by_line() {
    let worker = FakeWorker::start_with(|k| {
        k.job_duration = Duration::from_millis(1500);
        k.stream.live_lines = 3;
    });
    let coordinator = coordinator_for(&worker, "5");
    let id = submit(&coordinator, &job());
    let mut follower = follow_logs(coordinator.port(), &id);
    let first = follower.wait_for("line 0", DEADLINE).expect("line 0");
    let last = follower.wait_for("line 2", DEADLINE).expect("line 2");
    let end = follower.wait_for("[DONE]", DEADLINE).expect("the end");
    assert!(
        last.duration_since(first) >= Duration::from_millis(500),
        "lines arrived together"
    );
    assert!(end >= last);
    let pieces = follower.all(DEADLINE);
    assert!(pieces.iter().any(|(_, p)| p == "line 1\n"), "{pieces:?}");
}

#[test]
fn the_coordinators_stream_speaks_sandruns_websocket_format() {
    let worker = FakeWorker::start_with(|k| k.job_duration = Duration::from_millis(300));
    let coordinator = coordinator_for(&worker, "5");
    let id = submit(&coordinator, &job());
    let mut stream = follow_websocket(&coordinator.url(""), &id);
    stream
        .wait_for("[DONE] Job completed", DEADLINE)
        .expect("[DONE]");
    let text = stream.text();
    assert!(text.starts_with("[STATUS] Job status: "), "{text}");
    assert!(text.contains("ran main.py"), "{text}");
    // A finished job replays its output and end, then closes.
    let mut replay = follow_websocket(&coordinator.url(""), &id);
    let all = replay.all(Duration::from_secs(10));
    let text: String = all.iter().map(|(_, p)| p.as_str()).collect();
    assert!(text.contains("[STATUS] Job status: completed"), "{text}");
    assert!(
        text.contains("ran main.py") && text.contains("[DONE] Job completed"),
        "{text}"
    );
    // Without an upgrade, /stream is refused with a JSON error.
    let (code, body) = get(&coordinator.url(&format!("/stream/{id}")));
    assert_eq!(code, 400, "{body}");
    let (code, _) = get(&coordinator.url("/logs/pool-unknown?follow=1"));
    assert_eq!(code, 404);
}

#[test]
fn fifty_followers_hold_no_handler_thread_and_the_bound_answers_503() {
    let worker = FakeWorker::start_with(|k| k.job_duration = Duration::from_secs(4));
    let coordinator = Coordinator::start(
        &[worker.entry(1)],
        &[
            "--health-interval",
            "1",
            "--threads",
            "2",
            "--max-followers",
            "50",
        ],
    );
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let id = submit(&coordinator, &job());
    let followers: Vec<_> = (0..50)
        .map(|_| {
            let mut f = follow_logs(coordinator.port(), &id);
            assert_eq!(f.status, 200);
            f.wait_for("[STATUS] Job status", DEADLINE)
                .expect("first line");
            f
        })
        .collect();
    let asked = Instant::now();
    let (code, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(code, 200);
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "/pool took {:?}",
        asked.elapsed()
    );
    assert_eq!(pool["total_jobs"], 1);
    let (code, body) = get(&coordinator.url(&format!("/logs/{id}?follow=1")));
    assert_eq!(code, 503, "{body}");
    assert!(serde_json::from_str::<Value>(&body).is_ok_and(|v| v["error"].is_string()));
    for mut f in followers {
        f.wait_for("[DONE]", DEADLINE)
            .expect("every follower hears the end");
    }
    wait_status(&coordinator, &id, "completed", DEADLINE);
}
