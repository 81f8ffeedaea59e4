//! Jobs through the real coordinator and fake workers, from submit to collected results: uploads
//! forwarded unchanged, least-loaded placement within each worker's limit, a queue that moves
//! without client polling, results served by the coordinator (also after the worker deleted
//! them), and the client API's answers for unknown, queued, unfinished and traversing requests.

mod support;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use sha2::{Digest, Sha256};

use support::lifecycle::{
    assert_no_uploads, assert_pool_consistent, exchange, get_raw, job_status, pool_worker,
    read_reply, send_read_by_server, submit, wait_collected, wait_healthy, wait_status,
};
use support::{
    get, get_bytes, get_json, poll_until, send, tar_gz, untar_gz, workers_dir, Coordinator,
    FakeWorker, Form, ReceivedFile, Recording,
};

/// Generous deadline for anything the coordinator does on its own.
const DEADLINE: Duration = Duration::from_secs(60);
/// Short intervals keep these tests quick.
const FAST: [&str; 4] = ["--health-interval", "1", "--track-interval", "0.1"];

const MAIN_PY: &[u8] = b"print('hello')\n";

fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; n];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .unwrap_or_else(|e| panic!("cannot read /dev/urandom: {e}"));
    bytes
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn main_py_job() -> Form {
    Form::new().file("main.py", "text/x-python", MAIN_PY)
}

/// The most jobs a worker certainly had queued or running at once, from its recording: when
/// each accepted submit was read, the jobs accepted before it that had not started yet, or had
/// started less than `job_duration` earlier (a job runs at least that long), plus itself. The
/// coordinator counted each of them then, so this never exceeds its limit.
///
/// The worker's own `peak_active` can be one higher: like sandrun (`register_job_end` after
/// the jobs lock is released), it frees a job's rate-limit slot a moment after `/status` can
/// already report the job ended, and the coordinator may dispatch the next job in that moment.
fn certain_peak(recording: &Recording, job_duration: Duration) -> usize {
    let accepted: Vec<(SystemTime, Option<SystemTime>)> = recording
        .jobs
        .iter()
        .filter_map(|job| {
            let id = job.job_id.as_deref()?;
            let started = recording
                .started
                .iter()
                .find(|(started, _)| started == id)
                .map(|(_, at)| *at);
            Some((job.received_at, started))
        })
        .collect();
    accepted
        .iter()
        .map(|(now, _)| {
            let before = accepted.iter().filter(|(received, started)| {
                received < now && started.is_none_or(|at| at + job_duration > *now)
            });
            before.count() + 1
        })
        .max()
        .unwrap_or(0)
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

/// A file name as a URL path carries it: every byte but `A-Za-z0-9-_.~/` as `%XX`.
fn url_path(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `GET /outputs/{id}` as a map from file name to its listing entry, checking each
/// `download_url` points at the coordinator's `/download` (sandrun's path), or is null for an
/// output that says why it is `not_collected`.
fn listing(coordinator: &Coordinator, id: &str) -> BTreeMap<String, Value> {
    let (status, body) = get_json(&coordinator.url(&format!("/outputs/{id}")));
    assert_eq!(status, 200, "outputs of {id}: {body}");
    assert_eq!(body["job_id"], id);
    let files: BTreeMap<String, Value> = body["files"]
        .as_array()
        .unwrap_or_else(|| panic!("no files in {body}"))
        .iter()
        .map(|f| (text(&f["name"]), f.clone()))
        .collect();
    assert_eq!(body["total_files"], files.len(), "{body}");
    for (name, file) in &files {
        if file["not_collected"].is_string() {
            assert_eq!(file["download_url"], Value::Null, "{body}");
            continue;
        }
        assert_eq!(
            file["download_url"],
            format!("/download/{id}/{}", url_path(name)),
            "{body}"
        );
    }
    files
}

/// Downloads an output through the coordinator, checking it against its listing entry.
fn download(coordinator: &Coordinator, entry: &Value) -> Vec<u8> {
    let url = coordinator.url(entry["download_url"].as_str().unwrap_or_default());
    let (status, bytes) = get_bytes(&url);
    assert_eq!(status, 200, "{url}: {}", String::from_utf8_lossy(&bytes));
    assert_eq!(entry["size"], bytes.len(), "{entry}");
    assert_eq!(entry["sha256"], sha256_hex(&bytes), "{entry}");
    bytes
}

#[test]
fn tarball_and_single_file_jobs_complete_and_their_results_download() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(&[worker.entry(2)], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);

    let blob = random_bytes(256 * 1024);
    let tarball = tar_gz(&[("main.py", MAIN_PY), ("data.bin", &blob)]);
    let tar_job = Form::new()
        .file("job.tar.gz", "application/gzip", &tarball)
        .manifest(r#"{"entrypoint":"main.py","outputs":["*.bin"]}"#);
    let tar_id = submit(&coordinator, &tar_job);
    let single_id = submit(&coordinator, &main_py_job());

    let status = wait_collected(&coordinator, &tar_id, DEADLINE);
    let remote = text(&status["remote_job_id"]);
    assert_eq!(status["worker_id"], worker.worker_id());
    assert_eq!(status["worker_status"]["status"], "completed", "{status}");
    assert_eq!(status["worker_status"]["job_id"], remote.as_str());
    assert_eq!(status["error"], Value::Null);
    assert_eq!(status["attempts"], serde_json::json!([]));
    assert!(status["dispatched_at"].as_f64() >= status["submitted_at"].as_f64());
    assert!(status["completed_at"].as_f64() >= status["dispatched_at"].as_f64());
    assert_eq!(
        status["files"],
        serde_json::json!([{"filename": "job.tar.gz", "size": tarball.len()}])
    );
    let received = worker.recording();
    let sent = received
        .job(&remote)
        .unwrap_or_else(|| panic!("the worker has no job {remote}"));
    assert_eq!(sent.files.len(), 1);
    assert_eq!(
        sent.files[0].bytes, tarball,
        "the tarball was not forwarded as is"
    );

    let files = listing(&coordinator, &tar_id);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(names, ["data.bin", "result.txt"]);
    assert_eq!(download(&coordinator, &files["data.bin"]), blob);
    assert_eq!(
        download(&coordinator, &files["result.txt"]),
        format!("result of {remote}\n").into_bytes()
    );
    let (code, logs) = get_json(&coordinator.url(&format!("/logs/{tar_id}")));
    assert_eq!(code, 200, "{logs}");
    assert_eq!(logs["stdout"], "ran main.py\n");

    let status = wait_collected(&coordinator, &single_id, DEADLINE);
    let remote = text(&status["remote_job_id"]);
    let files = listing(&coordinator, &single_id);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(names, ["main.py", "result.txt"]);
    assert_eq!(download(&coordinator, &files["main.py"]), MAIN_PY);
    let (code, result) = get(&coordinator.url(&format!("/outputs/{single_id}/result.txt")));
    assert_eq!((code, result), (200, format!("result of {remote}\n")));
    let (code, logs) = get_json(&coordinator.url(&format!("/logs/{single_id}")));
    assert_eq!(
        (code, logs["stdout"].clone()),
        (200, Value::from("ran main.py\n"))
    );
    assert_no_uploads(
        &coordinator,
        "an upload stayed in the spool after the worker took it",
    );

    let pool = assert_pool_consistent(&coordinator);
    assert_eq!(pool["jobs_by_status"]["completed"], 2, "{pool}");
    let entry = pool_worker(&pool, &worker);
    assert_eq!(entry["jobs_accepted"], 2, "{pool}");
    assert_eq!(entry["jobs_completed"], 2, "{pool}");
    assert_eq!(entry["active_jobs"], 0, "{pool}");
}

#[test]
fn several_files_parts_reach_the_worker_unchanged() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(&[worker.entry(2)], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);

    let blob = random_bytes(40_000);
    let manifest = "{ \"entrypoint\" : \"main.py\",\n  \"args\": [\"--n\", \"3\"],\n  \
                    \"environment\": \"default\", \"outputs\": [\"*.csv\"] }\n";
    let uploads: Vec<(&str, &str, Vec<u8>)> = vec![
        ("main.py", "text/x-python", MAIN_PY.to_vec()),
        ("data.csv", "text/csv", b"a,b\n1,2\n".to_vec()),
        ("blob.bin", "application/octet-stream", blob),
        (
            "notes (draft) v2.txt",
            "text/plain; charset=utf-8",
            "caf\u{e9}\r\n--not a boundary\r\n".as_bytes().to_vec(),
        ),
        ("empty.dat", "application/x-empty", Vec::new()),
    ];
    let form = uploads
        .iter()
        .fold(Form::new(), |form, (name, content_type, bytes)| {
            form.file(name, content_type, bytes)
        })
        .manifest(manifest);
    let id = submit(&coordinator, &form);
    let status = wait_collected(&coordinator, &id, DEADLINE);
    let listed: Vec<(String, u64)> = status["files"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| (text(&f["filename"]), f["size"].as_u64().unwrap_or(0)))
        .collect();
    let expected: Vec<(String, u64)> = uploads
        .iter()
        .map(|(name, _, bytes)| (name.to_string(), bytes.len() as u64))
        .collect();
    assert_eq!(listed, expected);

    let remote = text(&status["remote_job_id"]);
    let recording = worker.recording();
    let received = recording
        .job(&remote)
        .unwrap_or_else(|| panic!("the worker has no job {remote}"));
    let got: Vec<(&str, &str, Option<&str>, &[u8])> = received
        .files
        .iter()
        .map(|f: &ReceivedFile| {
            (
                f.part_name.as_str(),
                f.filename.as_str(),
                f.content_type.as_deref(),
                f.bytes.as_slice(),
            )
        })
        .collect();
    let want: Vec<(&str, &str, Option<&str>, &[u8])> = uploads
        .iter()
        .map(|(name, content_type, bytes)| ("files", *name, Some(*content_type), bytes.as_slice()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(received.manifest.as_deref(), Some(manifest.as_bytes()));

    let files = listing(&coordinator, &id);
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(names, ["data.csv", "result.txt"]);
    assert_eq!(download(&coordinator, &files["data.csv"]), b"a,b\n1,2\n");
    assert_pool_consistent(&coordinator);
}

#[test]
fn jobs_go_to_the_least_loaded_worker() {
    // No job ends before all four are placed, however long their submits take.
    let held = |k: &mut support::Knobs| k.hold_jobs = true;
    let first = FakeWorker::start_with(held);
    let second = FakeWorker::start_with(held);
    let coordinator = Coordinator::start(&[first.entry(2), second.entry(2)], &FAST);
    wait_healthy(&coordinator, &[&first, &second], DEADLINE);

    let ids: Vec<String> = (0..4)
        .map(|_| submit(&coordinator, &main_py_job()))
        .collect();
    let pool = poll_until(DEADLINE, || {
        let pool = assert_pool_consistent(&coordinator);
        (pool["queued_jobs"] == 0).then_some(pool)
    })
    .unwrap_or_else(|| panic!("jobs stayed queued"));
    for worker in [&first, &second] {
        assert_eq!(pool_worker(&pool, worker)["active_jobs"], 2, "{pool}");
        worker.set(|k| k.hold_jobs = false);
    }
    let mut placed = BTreeMap::new();
    for id in &ids {
        let status = wait_status(&coordinator, id, "completed", DEADLINE);
        *placed.entry(text(&status["worker_id"])).or_insert(0) += 1;
    }
    for worker in [&first, &second] {
        assert_eq!(placed.get(&worker.worker_id()), Some(&2), "{placed:?}");
        assert_eq!(worker.recording().accepted_ids().len(), 2);
    }
    assert_pool_consistent(&coordinator);
}

#[test]
fn max_concurrent_jobs_is_never_exceeded() {
    const JOB_DURATION: Duration = Duration::from_millis(100);
    let quick = |k: &mut support::Knobs| {
        k.job_duration = JOB_DURATION;
        k.max_jobs_per_hour = 1000;
        k.max_active_per_ip = 50;
    };
    let first = FakeWorker::start_with(quick);
    let second = FakeWorker::start_with(quick);
    let coordinator = Coordinator::start(&[first.entry(2), second.entry(2)], &FAST);
    wait_healthy(&coordinator, &[&first, &second], DEADLINE);

    let ids: Vec<String> = (0..20)
        .map(|_| submit(&coordinator, &main_py_job()))
        .collect();
    let mut busiest = 0;
    let done = poll_until(DEADLINE, || {
        let pool = assert_pool_consistent(&coordinator);
        for worker in pool["workers"].as_array().into_iter().flatten() {
            busiest = busiest.max(worker["active_jobs"].as_u64().unwrap_or(0));
        }
        (pool["jobs_by_status"]["completed"] == 20).then_some(())
    });
    assert!(
        done.is_some(),
        "not all 20 jobs completed: {}",
        assert_pool_consistent(&coordinator)
    );
    assert!(
        (1..=2).contains(&busiest),
        "busiest worker had {busiest} jobs"
    );
    for id in &ids {
        assert_eq!(job_status(&coordinator, id)["pool_status"], "completed");
    }
    let mut accepted = 0;
    for worker in [&first, &second] {
        let recording = worker.recording();
        let peak = certain_peak(&recording, JOB_DURATION);
        assert!(peak <= 2, "a worker had {peak} jobs at once");
        assert!(
            recording.peak_active <= 3,
            "a worker counted {} jobs at once",
            recording.peak_active
        );
        assert!(
            !recording.accepted_ids().is_empty(),
            "one worker got nothing"
        );
        accepted += recording.accepted_ids().len();
    }
    assert_eq!(accepted, 20, "a job ran twice or never");
}

#[test]
fn queued_jobs_start_without_client_polling() {
    const JOB_DURATION: Duration = Duration::from_millis(500);
    let worker = FakeWorker::start_with(|k| k.job_duration = JOB_DURATION);
    let coordinator = Coordinator::start(&[worker.entry(1)], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);

    let ids: Vec<String> = (0..4)
        .map(|_| submit(&coordinator, &main_py_job()))
        .collect();
    for id in &ids {
        assert!(
            coordinator.wait_for_log(&format!("Job {id} completed"), DEADLINE),
            "job {id} never completed; logs:\n{}",
            coordinator.logs()
        );
    }
    let remotes: Vec<String> = ids
        .iter()
        .map(|id| {
            let status = job_status(&coordinator, id);
            assert_eq!(status["pool_status"], "completed", "{status}");
            text(&status["remote_job_id"])
        })
        .collect();
    let started: Vec<String> = worker
        .recording()
        .started
        .into_iter()
        .map(|(remote, _)| remote)
        .collect();
    assert_eq!(started, remotes, "the jobs did not run in submission order");
    let recording = worker.recording();
    assert_eq!(certain_peak(&recording, JOB_DURATION), 1);
    assert!(recording.peak_active <= 2);
    assert_pool_consistent(&coordinator);
}

/// sandrun deletes a job a fixed time after its submit began (6 minutes), its wait behind the
/// job it runs included, right as the job ends: a job queued on its worker behind a long one is
/// lost with its results, and the error says why and what to do (the emulator's clock now
/// starts where sandrun's does, before the submit waits for the jobs lock).
#[test]
fn a_job_sandrun_deletes_as_it_ends_after_waiting_behind_another_is_lost_saying_why() {
    let worker = FakeWorker::start_with(|k| {
        k.job_duration = Duration::from_millis(800);
        k.delete_after = Duration::from_millis(1200);
    });
    let coordinator = Coordinator::start(&[worker.entry(2)], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let ids = [
        submit(&coordinator, &main_py_job()),
        submit(&coordinator, &main_py_job()),
    ];
    // Both are sent at once, so the worker takes up whichever reaches its queue first.
    let mut last = Vec::new();
    let settled = poll_until(DEADLINE, || {
        last = ids.iter().map(|id| job_status(&coordinator, id)).collect();
        let ran = last
            .iter()
            .position(|s| s["pool_status"] == "completed" && s["results"]["collected"] == true)?;
        let behind = &last[1 - ran];
        (behind["pool_status"] == "lost").then(|| behind.clone())
    });
    let status = settled.unwrap_or_else(|| {
        panic!("one job should have completed and the other been lost: {last:?}")
    });
    let error = text(&status["error"]);
    assert!(
        error.contains("sandrun deletes a job 6 minutes after its submit, its wait in the worker's queue included")
            && error.contains("give such a worker max_concurrent_jobs 1"),
        "{status}"
    );
}

#[test]
fn outputs_still_download_after_the_worker_deleted_the_job() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(&[worker.entry(2)], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);

    let blob = random_bytes(100_000);
    let form = main_py_job()
        .file("data.bin", "application/octet-stream", &blob)
        .manifest(r#"{"entrypoint":"main.py","outputs":["*.bin"]}"#);
    let id = submit(&coordinator, &form);
    let status = wait_collected(&coordinator, &id, DEADLINE);
    let remote = text(&status["remote_job_id"]);
    let pool = poll_until(DEADLINE, || {
        let pool = assert_pool_consistent(&coordinator);
        (pool_worker(&pool, &worker)["tracked_jobs"] == 0).then_some(pool)
    });
    assert!(pool.is_some(), "the collected job is still followed");

    worker.set(|k| k.delete_after = Duration::from_millis(300));
    let gone = poll_until(DEADLINE, || {
        let (code, _) = get_json(&worker.url(&format!("/status/{remote}")));
        (code == 404).then_some(())
    });
    assert!(gone.is_some(), "the worker never deleted {remote}");

    let files = listing(&coordinator, &id);
    assert_eq!(download(&coordinator, &files["data.bin"]), blob);
    assert_eq!(
        download(&coordinator, &files["result.txt"]),
        format!("result of {remote}\n").into_bytes()
    );
    let (code, logs) = get_json(&coordinator.url(&format!("/logs/{id}")));
    assert_eq!(
        (code, logs["stdout"].clone()),
        (200, Value::from("ran main.py\n"))
    );
    let status = job_status(&coordinator, &id);
    assert_eq!(status["pool_status"], "completed", "{status}");
    assert_eq!(status["results"]["collected"], true, "{status}");
    let downloads = worker.recording().count("GET", "download");
    assert!(downloads >= 2, "outputs were not fetched from the worker");
    let pool = assert_pool_consistent(&coordinator);
    assert_eq!(pool["jobs_by_status"]["lost"], 0, "{pool}");
}

/// `--max-results-bytes`: an output past a job's room stays on its worker, where it is served
/// from while the worker keeps the job (also after a restart); once the worker deleted it, a
/// 404 says why. The outputs that fit are collected and outlive the worker's copy.
#[test]
fn outputs_past_max_results_bytes_stay_on_the_worker_and_are_served_from_there() {
    let worker = FakeWorker::start();
    let mut args = FAST.to_vec();
    args.extend(["--max-results-bytes", "150000"]);
    let dir = workers_dir(&[worker.entry(2)]);
    let mut coordinator = Coordinator::start_in(dir.path(), &args);
    wait_healthy(&coordinator, &[&worker], DEADLINE);

    let small = random_bytes(100_000);
    let big = random_bytes(200_000);
    // Collected in the worker's (sorted) order: a-small.bin fits, b-big.bin would not, and
    // result.txt (a few bytes) still fits after it.
    let form = main_py_job()
        .file("a-small.bin", "application/octet-stream", &small)
        .file("b-big.bin", "application/octet-stream", &big)
        .manifest(r#"{"entrypoint":"main.py","outputs":["*.bin"]}"#);
    let id = submit(&coordinator, &form);
    let status = wait_collected(&coordinator, &id, DEADLINE);
    assert_eq!(
        status["results"]["left_on_worker"],
        serde_json::json!(["b-big.bin"]),
        "{status}"
    );
    assert_eq!(status["verification"]["outputs"], "mismatch", "{status}");
    assert!(
        text(&status["verification"]["reason"]).contains("b-big.bin was not collected (it would take the job's collected outputs past --max-results-bytes"),
        "{status}"
    );
    let remote = text(&status["remote_job_id"]);
    let files = listing(&coordinator, &id);
    assert_eq!(files["a-small.bin"]["collected"], true, "{files:?}");
    assert_eq!(files["b-big.bin"]["collected"], false, "{files:?}");
    assert_eq!(files["result.txt"]["collected"], true, "{files:?}");
    let (_, metrics) = get(&coordinator.url("/metrics"));
    assert!(
        metrics
            .lines()
            .any(|l| l == "trusted_pool_outputs_left_on_worker_total 1"),
        "{metrics}"
    );
    let fetched_before = worker.recording().count("GET", "download");
    assert_eq!(download(&coordinator, &files["b-big.bin"]), big);
    assert_eq!(
        worker.recording().count("GET", "download"),
        fetched_before + 1,
        "b-big.bin was not served from the worker"
    );
    assert_eq!(download(&coordinator, &files["a-small.bin"]), small);
    assert_eq!(
        worker.recording().count("GET", "download"),
        fetched_before + 1,
        "a-small.bin was not served from the coordinator's copy"
    );

    // A restart keeps the list of what was left on the worker.
    let stopped = coordinator.terminate(DEADLINE);
    assert!(stopped.is_some_and(|s| s.success()), "{stopped:?}");
    let coordinator = Coordinator::start_in(dir.path(), &args);
    let status = job_status(&coordinator, &id);
    assert_eq!(
        status["results"]["left_on_worker"],
        serde_json::json!(["b-big.bin"]),
        "{status}"
    );
    assert_eq!(download(&coordinator, &files["b-big.bin"]), big);

    worker.set(|k| k.delete_after = Duration::from_millis(300));
    let gone = poll_until(DEADLINE, || {
        let (code, _) = get_json(&worker.url(&format!("/status/{remote}")));
        (code == 404).then_some(())
    });
    assert!(gone.is_some(), "the worker never deleted {remote}");
    let (code, body) = get_json(&coordinator.url(&format!("/download/{id}/b-big.bin")));
    assert_eq!(code, 404, "{body}");
    assert!(
        text(&body["error"]).contains("--max-results-bytes")
            && text(&body["error"]).contains("its worker no longer has it"),
        "{body}"
    );
    assert_eq!(download(&coordinator, &files["a-small.bin"]), small);
    let (code, archive) = get_bytes(&coordinator.url(&format!("/download/{id}")));
    assert_eq!(code, 200);
    let names: Vec<String> = untar_gz(&archive).into_keys().collect();
    assert_eq!(
        names,
        ["a-small.bin", "result.txt"],
        "the archive holds the collected outputs"
    );
    let pool = assert_pool_consistent(&coordinator);
    assert_eq!(pool["jobs_by_status"]["completed"], 1, "{pool}");
}

/// What a worker adds to its status answers beyond what the coordinator reads is skipped
/// unread and never kept: a job whose worker pads every `/status` answer with 8 MiB completes,
/// and its own `/status` stays small.
#[test]
fn members_a_worker_adds_to_its_status_are_neither_read_nor_kept() {
    let worker = FakeWorker::start_with(|k| k.status_padding = 8 * 1024 * 1024);
    let coordinator = Coordinator::start(&[worker.entry(2)], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let id = submit(&coordinator, &main_py_job());
    let status = wait_collected(&coordinator, &id, DEADLINE);
    assert_eq!(status["pool_status"], "completed");
    assert_eq!(status["verification"]["signature"], "verified", "{status}");
    let (code, body) = get(&coordinator.url(&format!("/status/{id}")));
    assert_eq!(code, 200);
    assert!(
        body.len() < 64 * 1024 && !body.contains("padding"),
        "a {} byte status",
        body.len()
    );
}

/// An output served from its worker is held to the size and sha256 the worker reported when
/// the job ended: one changed in place there since is cut before its last byte (the client reads
/// less than its `Content-Length`), one whose size changed is refused with a 502, and both are
/// logged and counted. So is one its worker sends without a `Content-Length`.
#[test]
fn an_output_changed_on_its_worker_is_never_served_whole() {
    let worker = FakeWorker::start();
    let mut args = FAST.to_vec();
    args.extend(["--max-results-bytes", "150000"]);
    let coordinator = Coordinator::start(&[worker.entry(2)], &args);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let big = random_bytes(200_000);
    let form = main_py_job()
        .file("a-big.bin", "application/octet-stream", &big)
        .manifest(r#"{"entrypoint":"main.py","outputs":["*.bin"]}"#);

    let run = |change: fn(&mut support::Knobs)| {
        worker.set(change);
        let id = submit(&coordinator, &form);
        let status = wait_collected(&coordinator, &id, DEADLINE);
        assert_eq!(
            status["results"]["left_on_worker"],
            serde_json::json!(["a-big.bin"]),
            "{status}"
        );
        id
    };
    let kept = run(|_| {});
    let whole = get_raw(coordinator.port(), &format!("/outputs/{kept}/a-big.bin"));
    assert!(
        whole.status == 200 && whole.body == big,
        "an unchanged output is served whole"
    );

    let flipped = run(|k| k.stream.flip_output_after_signing = true);
    let cut = exchange(
        coordinator.port(),
        &format!("GET /outputs/{flipped}/a-big.bin HTTP/1.1\r\n"),
        b"",
    )
    .map(|reply| reply.status)
    .expect_err("a changed output was served whole");
    assert!(
        cut.starts_with("body cut at") || cut.starts_with("reading the body"),
        "{cut}"
    );
    assert!(coordinator.wait_for_log(
        &format!("Cut the output \"a-big.bin\" of job {flipped} from its worker"),
        DEADLINE
    ));

    let grown = run(|k| {
        k.stream.flip_output_after_signing = false;
        k.stream.alter_output_after_signing = true;
    });
    let (code, body) = get_json(&coordinator.url(&format!("/outputs/{grown}/a-big.bin")));
    assert_eq!(code, 502, "{body}");
    assert!(
        text(&body["error"]).contains("changed on its worker since the job ended")
            && text(&body["error"]).contains("reported 200000 bytes"),
        "{body}"
    );
    // The log reaches the test through a pipe, maybe after the answer.
    assert!(coordinator.wait_for_log(
        &format!("Refused the output \"a-big.bin\" of job {grown} from its worker"),
        DEADLINE
    ));
    let (_, metrics) = get(&coordinator.url("/metrics"));
    assert!(
        metrics
            .lines()
            .any(|l| l == "trusted_pool_worker_outputs_refused_total 2"),
        "{metrics}"
    );
    // Without --require-verified the worker stays in service.
    let (_, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(pool_worker(&pool, &worker)["is_healthy"], true, "{pool}");

    // A worker that sends its files without `Content-Length` (each body ended by its close):
    // collected all the same, and an output served from it goes out with the size it reported,
    // to HTTP/1.1 and HTTP/1.0 clients alike; one changed since is still cut before its end.
    let unframed = run(|k| {
        k.stream.alter_output_after_signing = false;
        k.unframed_downloads = true;
    });
    let files = listing(&coordinator, &unframed);
    assert_eq!(files["result.txt"]["collected"], true, "{files:?}");
    for version in ["1.1", "1.0"] {
        let head = format!("GET /outputs/{unframed}/a-big.bin HTTP/{version}\r\n");
        let reply = exchange(coordinator.port(), &head, b"").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reply.status, 200, "HTTP/{version}: {}", reply.text());
        assert_eq!(
            reply.header("Content-Length"),
            Some("200000"),
            "HTTP/{version}: {:?}",
            reply.headers
        );
        assert!(reply.body == big, "HTTP/{version}: other bytes came");
    }
    let flipped = run(|k| k.stream.flip_output_after_signing = true);
    let head = format!("GET /outputs/{flipped}/a-big.bin HTTP/1.0\r\n");
    let cut = exchange(coordinator.port(), &head, b"")
        .map(|reply| reply.status)
        .expect_err("a changed output sent without a length was served whole");
    assert!(cut.starts_with("body cut at"), "{cut}");
}

/// The downloads that collect a job of [`main_py_job`]: its two output files (the fake lists
/// its input too).
const COLLECTION_DOWNLOADS: usize = 2;

/// Starts a coordinator (with `extra` arguments) and a worker that holds its downloads,
/// submits a job, and once its status says completed while its results are still being
/// collected (the collection's first download held on the worker), asks the coordinator for
/// its `result.txt`. The worker's downloads are let go once the coordinator has read that
/// request and the worker has had `downloads` download requests (the collection makes one at
/// a time); then the bytes are checked.
/// Returns the worker, the coordinator and the job id.
fn result_fetched_while_collecting(
    downloads: usize,
    extra: &[&str],
) -> (FakeWorker, Coordinator, String) {
    let worker = FakeWorker::start_with(|k| k.hold_downloads = true);
    let coordinator = Coordinator::start(&[worker.entry(2)], &[&FAST[..], extra].concat());
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let id = submit(&coordinator, &main_py_job());
    let status = wait_status(&coordinator, &id, "completed", DEADLINE);
    assert_eq!(status["results"]["collected"], false, "{status}");
    let remote = text(&status["remote_job_id"]);
    poll_until(DEADLINE, || {
        (worker.recording().count("GET", "download") >= 1).then_some(())
    })
    .unwrap_or_else(|| panic!("the collection never began: {}", coordinator.logs()));
    let target = format!("/outputs/{id}/result.txt");
    let mut asked = send_read_by_server(coordinator.port(), &target, DEADLINE);
    poll_until(DEADLINE, || {
        (worker.recording().count("GET", "download") >= downloads).then_some(())
    })
    .unwrap_or_else(|| panic!("the worker never had {downloads} download requests"));
    worker.set(|k| k.hold_downloads = false);
    let reply = read_reply(&mut asked).unwrap_or_else(|e| panic!("GET {target}: {e}"));
    assert_eq!(
        (reply.status, reply.body),
        (200, format!("result of {remote}\n").into_bytes())
    );
    (worker, coordinator, id)
}

#[test]
fn small_results_being_collected_are_served_once_collected_not_fetched_twice() {
    // Let go as soon as the request waits: the collection then ends well within the
    // coordinator's wait for a small one (2 s).
    let (worker, coordinator, id) = result_fetched_while_collecting(1, &[]);
    let status = job_status(&coordinator, &id);
    assert_eq!(status["results"]["collected"], true, "{status}");
    assert_eq!(
        worker.recording().count("GET", "download"),
        COLLECTION_DOWNLOADS,
        "the output was fetched from the worker again instead of served once collected"
    );
    let (code, logs) = get_json(&coordinator.url(&format!("/logs/{id}")));
    assert_eq!(
        (code, logs["stdout"].clone()),
        (200, Value::from("ran main.py\n"))
    );
    assert_eq!(worker.recording().count("GET", "logs"), 1);
    assert_pool_consistent(&coordinator);
}

#[test]
fn larger_results_being_collected_are_fetched_from_the_worker_at_once() {
    // Let go once the request's own download reached the worker, beside the collection's
    // first (it downloads one file at a time).
    let (worker, coordinator, id) = result_fetched_while_collecting(2, &["--row-results-max", "0"]);
    wait_collected(&coordinator, &id, DEADLINE);
    assert_eq!(
        worker.recording().count("GET", "download"),
        COLLECTION_DOWNLOADS + 1,
        "the output was not fetched from the worker while its collection was under way"
    );
    assert_pool_consistent(&coordinator);
}

/// An output streamed from its worker while its collection is under way, whose worker's answer
/// stalls after its headers and half its body: a small one (within the first piece read before
/// answering) is answered 502 with why, where its client got no status line at all before
/// (curl: `Empty reply from server`); a larger one is answered 200 and cut part-way, as
/// before. The job is collected once the worker answers again, and then served whole.
#[test]
fn an_output_whose_worker_stalls_early_is_answered_502_not_left_without_a_status() {
    // The collection's first download stalls, and so do the two asked meanwhile.
    let worker = FakeWorker::start_with(|k| k.stalled_downloads = 3);
    let args = [
        &FAST[..],
        &["--row-results-max", "0", "--dispatch-timeout", "4"],
    ]
    .concat();
    let coordinator = Coordinator::start(&[worker.entry(2)], &args);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let big = random_bytes(200_000);
    let form = main_py_job().file("big.bin", "application/octet-stream", &big);
    let id = submit(&coordinator, &form);
    let status = wait_status(&coordinator, &id, "completed", DEADLINE);
    assert_eq!(status["results"]["collected"], false, "{status}");
    let collecting = poll_until(DEADLINE, || {
        (worker.recording().count("GET", "download") >= 1).then_some(())
    });
    assert!(collecting.is_some(), "the collection never began");
    let port = coordinator.port();
    let ask = |name: &str| {
        let head = format!("GET /outputs/{id}/{name} HTTP/1.1\r\n");
        std::thread::spawn(move || exchange(port, &head, b""))
    };
    let (small, large) = (ask("result.txt"), ask("big.bin"));
    let small = small
        .join()
        .unwrap_or_else(|_| panic!("the request panicked"));
    let reply = small.unwrap_or_else(|e| panic!("no answer to the small output: {e}"));
    let body = reply.json();
    assert_eq!(reply.status, 502, "{body}");
    let error = text(&body["error"]);
    assert!(
        error.contains("are still being collected")
            && error.contains("broke off after")
            && error.contains("try again in a few seconds"),
        "{body}"
    );
    let large = large
        .join()
        .unwrap_or_else(|_| panic!("the request panicked"));
    let cut = large
        .map(|reply| reply.status)
        .expect_err("a stalled output came whole");
    assert!(cut.starts_with("body cut at"), "{cut}");

    let status = wait_collected(&coordinator, &id, DEADLINE);
    let remote = text(&status["remote_job_id"]);
    let (code, bytes) = get_bytes(&coordinator.url(&format!("/outputs/{id}/result.txt")));
    assert_eq!(
        (code, bytes),
        (200, format!("result of {remote}\n").into_bytes())
    );
    assert_pool_consistent(&coordinator);
}

/// A small output left on its worker that changed there since the job ended, its size kept:
/// read whole before answering, it is refused with a 502 saying so (before, its client got no
/// status line at all).
#[test]
fn a_small_output_changed_on_its_worker_is_refused_with_a_502() {
    let worker = FakeWorker::start_with(|k| k.stream.flip_output_after_signing = true);
    let args = [&FAST[..], &["--max-results-bytes", "10"]].concat();
    let coordinator = Coordinator::start(&[worker.entry(2)], &args);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let id = submit(&coordinator, &main_py_job());
    let status = wait_collected(&coordinator, &id, DEADLINE);
    assert_eq!(
        status["results"]["left_on_worker"],
        serde_json::json!(["main.py", "result.txt"]),
        "{status}"
    );
    let reply = exchange(
        coordinator.port(),
        &format!("GET /outputs/{id}/main.py HTTP/1.1\r\n"),
        b"",
    )
    .unwrap_or_else(|e| panic!("no answer: {e}"));
    let body = reply.json();
    assert_eq!(reply.status, 502, "{body}");
    assert!(
        text(&body["error"])
            .contains("changed on its worker since the job ended (its bytes hash to"),
        "{body}"
    );
}

#[test]
fn outputs_named_with_non_ascii_and_url_characters_are_collected_and_logs_read_back_whole() {
    // sandrun decodes no `%XX` and escapes each non-ASCII byte of its JSON on its own; the slow
    // downloads leave time to fetch a file from the worker while the collection is under way.
    // The job also writes a name with a backslash, which no request path names safely.
    let worker = FakeWorker::start_with(|k| {
        k.download_delay = Duration::from_millis(700);
        k.extra_output = Some("back\\x.txt".into());
    });
    let coordinator = Coordinator::start(
        &[worker.entry(2)],
        &[&FAST[..], &["--row-results-max", "0"]].concat(),
    );
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let blob = random_bytes(3000);
    let files: [(&str, &[u8]); 8] = [
        ("q#x.txt", b"hash\n"),
        ("r?y.txt", b"question\n"),
        ("p%41.txt", b"percent\n"),
        ("\u{fc}ber\u{2713}.bin", &blob),
        ("a b.txt", b"space\n"),
        ("\u{e9}t\u{e9}.txt", "\u{e9}t\u{e9}\n".as_bytes()),
        ("pct%2Fslash.txt", b"slash\n"),
        ("%2e%2e", b"dots\n"),
    ];
    // Names a proxy in front of a worker could read as other paths are not asked of it, and
    // a name with a backslash (no safe path on the coordinator).
    let unfetchable = ["a b.txt", "pct%2Fslash.txt", "%2e%2e", "back\\x.txt"];
    let mut form = Form::new()
        .file("caf\u{e9}.py", "text/x-python", MAIN_PY)
        .manifest(r#"{"entrypoint":"caf\u00e9.py"}"#);
    for (name, bytes) in files {
        form = form.file(name, "application/octet-stream", bytes);
    }
    let id = submit(&coordinator, &form);
    let status = wait_status(&coordinator, &id, "completed", DEADLINE);
    assert_eq!(status["results"]["collected"], false, "{status}");

    // From the worker, while the collection is under way: sent as its bytes.
    let (code, bytes) = get_bytes(&coordinator.url(&format!("/outputs/{id}/q%23x.txt")));
    assert_eq!((code, bytes), (200, b"hash\n".to_vec()));
    let (code, body) = get_json(&coordinator.url(&format!("/outputs/{id}/a%20b.txt")));
    assert_eq!(code, 404, "{body}");
    assert!(
        text(&body["error"]).contains("cannot serve a file whose name holds a space"),
        "{body}"
    );
    let (code, body) = get_json(&coordinator.url(&format!("/outputs/{id}/pct%252Fslash.txt")));
    assert_eq!(code, 404, "{body}");
    assert!(
        text(&body["error"]).contains("reads as another path once %-decoded"),
        "{body}"
    );

    let status = wait_collected(&coordinator, &id, DEADLINE);
    let remote = text(&status["remote_job_id"]);
    assert_eq!(status["verification"]["signature"], "verified", "{status}");
    assert_eq!(status["verification"]["outputs"], "mismatch", "{status}");
    assert!(
        text(&status["verification"]["reason"])
            .contains("a b.txt was not collected (sandrun cannot serve"),
        "{status}"
    );
    let (code, logs) = get_json(&coordinator.url(&format!("/logs/{id}")));
    assert_eq!(
        (code, logs["stdout"].clone()),
        (200, Value::from("ran caf\u{e9}.py\n"))
    );
    let listed = listing(&coordinator, &id);
    let result = format!("result of {remote}\n").into_bytes();
    let expected: Vec<(&str, &[u8])> = files
        .iter()
        .copied()
        .chain([
            ("caf\u{e9}.py", MAIN_PY),
            ("result.txt", &result[..]),
            ("back\\x.txt", b"extra output\n"),
        ])
        .collect();
    assert_eq!(listed.len(), expected.len(), "{listed:?}");
    // Saved under its own name: a header value is ASCII, so RFC 6266's `filename*` carries it.
    let reply = send(
        "GET",
        &coordinator.url(&format!("/download/{id}/%C3%A9t%C3%A9.txt")),
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        reply.header("Content-Disposition"),
        Some("attachment; filename=\"_t_.txt\"; filename*=UTF-8''%C3%A9t%C3%A9.txt")
    );
    for (name, bytes) in expected {
        let url = format!("/download/{id}/{}", url_path(name));
        let (code, got) = get_bytes(&coordinator.url(&url));
        if unfetchable.contains(&name) {
            let answer = String::from_utf8_lossy(&got);
            assert_eq!(code, 404, "{name}: {answer}");
            assert!(answer.contains("was not collected"), "{name}: {answer}");
        } else {
            assert_eq!((code, got), (200, bytes.to_vec()), "{name}");
        }
    }
    assert_pool_consistent(&coordinator);
}

/// Outputs a worker lists under names that leave the job's directory are listed with a null
/// `download_url` and why they were not collected. Before, their links read
/// `/download/pool-.../../../evil.txt`, which clients (curl, browsers) read with the dot
/// segments removed, landing on another route of the coordinator (404 `no such endpoint:
/// /evil.txt`, or a job named `b.txt`). The job's other outputs keep their links.
#[test]
fn outputs_named_to_leave_the_job_directory_are_listed_without_a_link() {
    let names = ["../../evil.txt", "a/../../b.txt", "/abs.txt", "x/./y.txt"];
    let worker = FakeWorker::start_with(|k| k.listed_outputs = names.map(String::from).to_vec());
    let coordinator = Coordinator::start(&[worker.entry(2)], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let id = submit(&coordinator, &main_py_job());
    let status = wait_collected(&coordinator, &id, DEADLINE);
    assert_eq!(status["verification"]["outputs"], "mismatch", "{status}");
    let files = listing(&coordinator, &id);
    assert_eq!(files.len(), names.len() + 2, "{files:?}");
    for name in names {
        let entry = &files[name];
        assert_eq!(entry["download_url"], Value::Null, "{entry}");
        assert_eq!(entry["collected"], false, "{entry}");
        assert!(
            text(&entry["not_collected"]).starts_with("its path is unsafe"),
            "{entry}"
        );
    }
    assert_eq!(download(&coordinator, &files["main.py"]), MAIN_PY);
    let remote = text(&status["remote_job_id"]);
    assert_eq!(
        download(&coordinator, &files["result.txt"]),
        format!("result of {remote}\n").into_bytes()
    );
}

/// An output its worker served otherwise than it declared (a line appended after the job
/// ended: 15 bytes declared, 37 served) is listed with the size and sha256 of the bytes the
/// coordinator collected and serves, and the worker's declared figures under
/// `worker_declared`, also after a restart. Before, the listing gave the declared 15 bytes
/// and their sha256 while the download served 37 other bytes.
#[test]
fn a_collected_output_is_listed_as_it_is_served_beside_what_its_worker_declared() {
    let worker = FakeWorker::start_with(|k| k.stream.alter_output_after_signing = true);
    let dir = workers_dir(&[worker.entry(2)]);
    let mut coordinator = Coordinator::start_in(dir.path(), &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let id = submit(&coordinator, &main_py_job());
    let status = wait_collected(&coordinator, &id, DEADLINE);
    assert_eq!(status["verification"]["outputs"], "mismatch", "{status}");
    let served = [MAIN_PY, b"altered after signing\n"].concat();
    let declared = serde_json::json!({"size": MAIN_PY.len(), "sha256": sha256_hex(MAIN_PY)});
    for restarted in [false, true] {
        if restarted {
            let stopped = coordinator.terminate(DEADLINE);
            assert!(stopped.is_some_and(|s| s.success()), "{stopped:?}");
            coordinator = Coordinator::start_in(dir.path(), &FAST);
        }
        let files = listing(&coordinator, &id);
        let entry = &files["main.py"];
        // Checks the listed size and sha256 against the bytes served.
        assert_eq!(download(&coordinator, entry), served, "{entry}");
        assert_eq!(entry["worker_declared"], declared, "{entry}");
        assert_eq!(entry["size_formatted"], "37.0 B", "{entry}");
        let result = &files["result.txt"];
        download(&coordinator, result);
        assert_eq!(result.get("worker_declared"), None, "{result}");
    }
}

/// How long the fake worker takes to answer a download in the test of two jobs' ends: one
/// collection (two downloads) then lasts at least 6 s.
const SLOW_DOWNLOAD_DELAY: Duration = Duration::from_secs(3);

#[test]
fn a_slow_collection_does_not_hold_up_the_end_of_another_job_on_the_same_worker() {
    let worker = FakeWorker::start_with(|k| k.download_delay = SLOW_DOWNLOAD_DELAY);
    let coordinator = Coordinator::start(&[worker.entry(2)], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let first = submit(&coordinator, &main_py_job());
    wait_status(&coordinator, &first, "completed", DEADLINE);
    // The first job's results are being collected now, for 6 s or more. The second job ends at
    // once on the same worker: its end is followed up on its own stream's thread.
    let second = submit(&coordinator, &main_py_job());
    wait_status(&coordinator, &second, "completed", DEADLINE);
    let status = job_status(&coordinator, &first);
    assert_eq!(
        status["results"]["collected"], false,
        "the second job's end waited for the first job's collection: {status}"
    );
    for id in [&first, &second] {
        let status = wait_collected(&coordinator, id, DEADLINE);
        let remote = text(&status["remote_job_id"]);
        let (code, bytes) = get_bytes(&coordinator.url(&format!("/outputs/{id}/result.txt")));
        assert_eq!(
            (code, bytes),
            (200, format!("result of {remote}\n").into_bytes())
        );
    }
    assert_eq!(
        worker.recording().count("GET", "download"),
        2 * COLLECTION_DOWNLOADS,
        "a job's results were collected twice"
    );
    assert_pool_consistent(&coordinator);
}

/// Job `id` as `GET /jobs` lists it, once its `pool_status` is `wanted`. The listing, unlike
/// `/status/{id}`, does not mark the job as one a client waits on.
fn wait_listed(coordinator: &Coordinator, id: &str, wanted: &str) -> Value {
    let mut last = Value::Null;
    poll_until(DEADLINE, || {
        let (code, body) = get_json(&coordinator.url("/jobs?limit=100"));
        assert_eq!(code, 200, "{body}");
        last = body["jobs"]
            .as_array()
            .and_then(|jobs| jobs.iter().find(|j| j["job_id"] == id))
            .cloned()
            .unwrap_or(Value::Null);
        (last["pool_status"] == wanted).then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("job {id} was not listed {wanted} in {DEADLINE:?}: {last}"))
}

/// Three jobs that nobody asks about end one after another on a worker whose downloads are
/// slow, each then collected for 6 s or more: the first two on their stream threads, the third
/// by the tracker. They end at once, so their streams tell their ends before any tracker poll
/// could. Returns the coordinator, the worker and the three ids.
fn three_long_follow_ups() -> (Coordinator, FakeWorker, Vec<String>) {
    let worker = FakeWorker::start_with(|k| k.download_delay = SLOW_DOWNLOAD_DELAY);
    let coordinator = Coordinator::start(&[worker.entry(4)], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = submit(&coordinator, &main_py_job());
        wait_listed(&coordinator, &id, "completed");
        ids.push(id);
    }
    (coordinator, worker, ids)
}

/// Waits for every job's collection and checks that each was collected once.
fn all_collected_once(coordinator: &Coordinator, worker: &FakeWorker, ids: &[String]) {
    for id in ids {
        wait_collected(coordinator, id, DEADLINE);
    }
    assert_eq!(
        worker.recording().count("GET", "download"),
        ids.len() * COLLECTION_DOWNLOADS,
        "a job's results were collected twice"
    );
    assert_pool_consistent(coordinator);
}

#[test]
fn at_most_two_follow_ups_of_one_workers_jobs_run_at_once() {
    let (coordinator, worker, mut ids) = three_long_follow_ups();
    // The fourth job's end waits for the tracker, busy with the third job's collection.
    let fourth = submit(&coordinator, &main_py_job());
    wait_listed(&coordinator, &fourth, "completed");
    let third = wait_listed(&coordinator, &ids[2], "completed");
    assert_eq!(
        third["results"]["collected"], true,
        "a third follow-up ran beside two others: {third}"
    );
    ids.push(fourth);
    all_collected_once(&coordinator, &worker, &ids);
}

#[test]
fn the_end_of_a_job_a_client_waits_on_is_followed_up_beside_two_others() {
    let (coordinator, worker, mut ids) = three_long_follow_ups();
    // The client asks for the fourth job's status: its end is followed up at once on its own
    // stream's thread, while the tracker is still collecting the third job's results. The job
    // runs for a second, so the client certainly asks before it ends (and the tracker, busy,
    // cannot see its end first).
    worker.set(|k| k.job_duration = Duration::from_secs(1));
    let fourth = submit(&coordinator, &main_py_job());
    wait_status(&coordinator, &fourth, "completed", DEADLINE);
    let third = wait_listed(&coordinator, &ids[2], "completed");
    assert_eq!(
        third["results"]["collected"], false,
        "the end of a job a client waits on waited for the tracker: {third}"
    );
    ids.push(fourth);
    all_collected_once(&coordinator, &worker, &ids);
}

#[test]
fn the_api_answers_unknown_queued_unfinished_and_traversing_requests() {
    // The first job runs until the queued ones were asked about.
    let worker = FakeWorker::start_with(|k| k.hold_jobs = true);
    let coordinator = Coordinator::start(&[worker.entry(1)], &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);

    let unknown = "pool-00000000000000000000000000000000";
    for path in [
        format!("/status/{unknown}"),
        format!("/outputs/{unknown}"),
        format!("/outputs/{unknown}/result.txt"),
        format!("/logs/{unknown}"),
    ] {
        let (code, body) = get_json(&coordinator.url(&path));
        assert_eq!(code, 404, "{path}: {body}");
        assert!(text(&body["error"]).contains(unknown), "{path}: {body}");
    }

    let running = submit(&coordinator, &main_py_job());
    let status = poll_until(DEADLINE, || {
        let status = job_status(&coordinator, &running);
        (status["pool_status"] != "queued").then_some(status)
    })
    .unwrap_or_else(|| panic!("job {running} was never dispatched"));
    assert!(status["queue_position"].is_u64(), "{status}");
    let next = submit(&coordinator, &main_py_job());
    let last = submit(&coordinator, &main_py_job());
    for (id, position) in [(&next, 1), (&last, 2)] {
        let status = job_status(&coordinator, id);
        assert_eq!(status["pool_status"], "queued", "{status}");
        assert_eq!(status["queue_position"], position, "{status}");
        assert_eq!(status["worker_id"], Value::Null, "{status}");
    }
    for path in [
        format!("/outputs/{next}"),
        format!("/outputs/{next}/result.txt"),
        format!("/logs/{next}"),
    ] {
        let (code, body) = get_json(&coordinator.url(&path));
        assert_eq!(code, 409, "{path}: {body}");
        assert_eq!(body["pool_status"], "queued", "{path}: {body}");
        assert_eq!(body["queue_position"], 1, "{path}: {body}");
        assert!(text(&body["error"]).contains("queued"), "{body}");
    }
    let (code, body) = get_json(&coordinator.url(&format!("/outputs/{running}")));
    if code == 409 {
        let state = text(&body["pool_status"]);
        assert!(state == "dispatched" || state == "running", "{body}");
    } else {
        assert_eq!(code, 200, "outputs of a job just dispatched: {body}");
        assert_eq!(body["pool_status"], "completed", "{body}");
    }
    worker.set(|k| k.hold_jobs = false);

    wait_collected(&coordinator, &running, DEADLINE);
    let port = coordinator.port();
    for bad in [
        "../x",
        "../../../../etc/passwd",
        "/etc/passwd",
        "%2e%2e/x",
        "%2E%2E/x",
        ".%2e/x",
        "..%2Fx",
        "%2e%2e%2fx",
        "%2Fetc%2Fpasswd",
        "%2fetc/passwd",
        "a/%2e%2e/%2e%2e/x",
        ".",
        "..",
        "result.txt/..",
        "..%5Cx",
        "result.txt%00",
        "result.txt%0a",
        "%zz",
    ] {
        let target = format!("/outputs/{running}/{bad}");
        let reply = get_raw(port, &target);
        assert_eq!(reply.status, 400, "{target}: {}", reply.text());
        assert!(
            reply.json()["error"].as_str().is_some(),
            "{target}: {}",
            reply.text()
        );
    }
    let reply = get_raw(port, &format!("/outputs/{running}/result.txt"));
    assert_eq!(reply.status, 200, "{}", reply.text());
    // A name that reads otherwise once decoded again is a name like any other here.
    for missing in [
        "nope.txt",
        "result.txt.bak",
        "sub/result.txt",
        "%252e%252e/x",
        "%252e%252e%252fx",
    ] {
        let (code, body) = get_json(&coordinator.url(&format!("/outputs/{running}/{missing}")));
        assert_eq!(code, 404, "{missing}: {body}");
        assert!(text(&body["error"]).contains("no output file"), "{body}");
    }

    wait_collected(&coordinator, &next, DEADLINE);
    wait_collected(&coordinator, &last, DEADLINE);
    let pool = assert_pool_consistent(&coordinator);
    assert_eq!(pool["jobs_by_status"]["completed"], 3, "{pool}");
}

/// Everything answered to `HEAD target` on a connection the coordinator closes after it:
/// the status, the headers, and whatever followed them (nothing, for a HEAD).
fn head_request(port: u16, target: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("{e}"));
    stream
        .set_read_timeout(Some(DEADLINE))
        .unwrap_or_else(|e| panic!("{e}"));
    let request = format!("HEAD {target} HTTP/1.1\r\nHost: pool\r\nConnection: close\r\n\r\n");
    std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .unwrap_or_else(|e| panic!("HEAD {target}: {e}"));
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("HEAD {target}: no end of headers in {answer:?}"));
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("HEAD {target}: {head}"));
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    (status, headers, answer[split + 4..].to_vec())
}

fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn head_answers_what_get_would_without_its_body() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(&[worker.entry(2)], &FAST);
    let id = submit(&coordinator, &main_py_job());
    wait_collected(&coordinator, &id, DEADLINE);
    let port = coordinator.port();
    for path in [
        "/health".to_string(),
        "/ready".to_string(),
        "/dashboard".to_string(),
        format!("/status/{id}"),
        format!("/logs/{id}"),
        format!("/outputs/{id}"),
        format!("/outputs/{id}/result.txt"),
        format!("/download/{id}/result.txt"),
        format!("/download/{id}"),
        "/pool".to_string(),
        "/jobs".to_string(),
        "/metrics".to_string(),
    ] {
        let (status, headers, after) = head_request(port, &path);
        let got = send("GET", &coordinator.url(&path), None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((status, got.status), (200, 200), "HEAD {path}: {headers:?}");
        assert!(after.is_empty(), "HEAD {path} sent a body: {after:?}");
        assert_eq!(
            header_of(&headers, "content-type"),
            got.header("Content-Type"),
            "HEAD {path}"
        );
        // The answers whose body does not change from one call to the next say its length.
        if !["/pool", "/jobs", "/metrics"].contains(&path.as_str()) {
            let length = got.body.len().to_string();
            assert_eq!(
                header_of(&headers, "content-length"),
                Some(length.as_str()),
                "HEAD {path}: {headers:?}"
            );
        }
    }
    // A followed stream's answer is the stream: GET only, as Allow says.
    for path in [format!("/logs/{id}?follow=1"), format!("/stream/{id}")] {
        let (status, headers, after) = head_request(port, &path);
        assert_eq!(status, 405, "HEAD {path}: {headers:?}");
        assert_eq!(header_of(&headers, "allow"), Some("GET"), "HEAD {path}");
        assert!(after.is_empty(), "HEAD {path} sent a body: {after:?}");
    }
    // The snapshot's length is known only once it is taken: its HEAD takes none.
    let (status, headers, after) = head_request(port, "/snapshot");
    assert_eq!(status, 200, "HEAD /snapshot: {headers:?}");
    assert_eq!(
        header_of(&headers, "content-type"),
        Some("application/gzip")
    );
    assert!(after.is_empty(), "HEAD /snapshot sent a body: {after:?}");
    let got = send("GET", &coordinator.url("/snapshot"), None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.status, 200);
    assert_eq!(got.header("Content-Type"), Some("application/gzip"));
    let logs = coordinator.logs();
    assert_eq!(logs.matches("Snapshot taken").count(), 1, "{logs}");
}
