//! Quick checks that the sandrun emulator (fake worker and `dev-worker`) behaves like sandrun.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::Value;

use support::sandrun::jobs::signing_payload;
use support::{get, get_bytes, get_json, poll_until, post_multipart, temp_dir, FakeWorker, Form};

const MAIN_PY: &[u8] = b"print('hello')\n";

fn submit(worker: &FakeWorker, form: &Form) -> (u16, Value) {
    let (status, body) = post_multipart(&worker.url("/submit"), form);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn accepted_id(worker: &FakeWorker, form: &Form) -> String {
    let (status, body) = submit(worker, form);
    assert_eq!(status, 200, "submit answered {body}");
    assert_eq!(body["status"], "queued");
    body["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no job_id in {body}"))
        .to_string()
}

fn main_py_job() -> Form {
    Form::new().file("main.py", "text/x-python", MAIN_PY)
}

fn wait_finished(endpoint: &str, id: &str, deadline: Duration) -> Value {
    poll_until(deadline, || {
        let (status, body) = get_json(&format!("{endpoint}/status/{id}"));
        assert_eq!(status, 200, "status of {id}: {body}");
        matches!(body["status"].as_str(), Some("completed" | "failed")).then_some(body)
    })
    .unwrap_or_else(|| panic!("job {id} did not finish in {deadline:?}"))
}

#[test]
fn health_answers_the_worker_id() {
    let worker = FakeWorker::start();
    let (status, body) = get_json(&worker.url("/health"));
    assert_eq!(status, 200);
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["worker_id"], worker.worker_id());
    let key = STANDARD
        .decode(worker.worker_id())
        .unwrap_or_else(|e| panic!("worker id is not base64: {e}"));
    assert_eq!(key.len(), 32);
    assert!(worker
        .key_pem()
        .starts_with("-----BEGIN PRIVATE KEY-----\n"));

    worker.set(|k| k.wrong_worker_id = true);
    let (_, body) = get_json(&worker.url("/health"));
    assert_eq!(body["worker_id"], worker.impostor_id());
    worker.set(|k| {
        k.wrong_worker_id = false;
        k.fail_health = true;
    });
    let (status, body) = get_json(&worker.url("/health"));
    assert_eq!(status, 503);
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(worker.recording().count("GET", "health"), 3);
}

#[test]
fn a_job_completes_signed_and_its_files_download() {
    let worker = FakeWorker::start();
    let blob: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    let form = main_py_job()
        .file("data.bin", "application/octet-stream", &blob)
        .manifest(r#"{"entrypoint":"main.py","outputs":["*.bin"]}"#);
    let id = accepted_id(&worker, &form);
    let status = wait_finished(&worker.endpoint(), &id, Duration::from_secs(30));
    assert_eq!(status["status"], "completed");
    assert_eq!(status["execution_metadata"]["exit_code"], 0);
    let files = status["output_files"]
        .as_object()
        .unwrap_or_else(|| panic!("no output_files in {status}"));
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(names, ["data.bin", "result.txt"]);

    let hashes: BTreeMap<String, String> = files
        .iter()
        .map(|(path, meta)| {
            (
                path.clone(),
                meta["sha256"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let job_hash = status["job_hash"].as_str().unwrap_or("");
    let payload = signing_payload(job_hash, 0, 0.0, 0, &hashes);
    let public: [u8; 32] = STANDARD
        .decode(worker.worker_id())
        .ok()
        .and_then(|k| k.try_into().ok())
        .unwrap_or_else(|| panic!("bad worker id"));
    let signature: [u8; 64] = status["worker_metadata"]["signature"]
        .as_str()
        .and_then(|s| STANDARD.decode(s).ok())
        .and_then(|s| s.try_into().ok())
        .unwrap_or_else(|| panic!("bad signature in {status}"));
    let key = VerifyingKey::from_bytes(&public).unwrap_or_else(|e| panic!("bad key: {e}"));
    assert!(key
        .verify_strict(payload.as_bytes(), &Signature::from_bytes(&signature))
        .is_ok());

    let (code, result) = get(&worker.url(&format!("/download/{id}/result.txt")));
    assert_eq!((code, result), (200, format!("result of {id}\n")));
    let (code, bytes) = get_bytes(&worker.url(&format!("/download/{id}/data.bin")));
    assert_eq!(code, 200);
    assert_eq!(bytes, blob);
    let (_, logs) = get_json(&worker.url(&format!("/logs/{id}")));
    assert_eq!(logs["stdout"], "ran main.py\n");
    let (code, _) = get(&worker.url(&format!("/outputs/{id}/result.txt")));
    assert_eq!(
        code, 404,
        "sandrun reads /outputs/{{id}}/{{path}} as a job id"
    );

    let recording = worker.recording();
    let received = recording
        .job(&id)
        .unwrap_or_else(|| panic!("job {id} not recorded"));
    assert_eq!(received.files.len(), 2);
    assert_eq!(received.files[1].bytes, blob);
    assert!(received.manifest.is_some());
}

#[test]
fn lowercase_content_length_gets_no_files_uploaded() {
    let worker = FakeWorker::start();
    let form = main_py_job();
    let body = form.body();
    let mut request = format!(
        "POST /submit HTTP/1.1\r\nhost: {}\r\ncontent-type: {}\r\ncontent-length: {}\r\n\r\n",
        worker.addr(),
        form.content_type(),
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let mut stream = TcpStream::connect(worker.addr()).unwrap_or_else(|e| panic!("connect: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap_or_else(|e| panic!("timeout: {e}"));
    stream
        .write_all(&request)
        .unwrap_or_else(|e| panic!("write: {e}"));
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .unwrap_or_else(|e| panic!("read: {e}"));
    assert!(answer.starts_with("HTTP/1.1 400 "), "answer: {answer}");
    assert!(
        answer.ends_with(r#"{"error":"No files uploaded"}"#),
        "answer: {answer}"
    );
    assert!(answer.contains("Access-Control-Allow-Origin: *\r\n"));
}

#[test]
fn the_per_ip_limit_answers_429() {
    let worker = FakeWorker::start_with(|k| k.job_duration = Duration::from_secs(1));
    accepted_id(&worker, &main_py_job());
    let url = worker.url("/submit");
    let second = thread::spawn(move || post_multipart(&url, &main_py_job()));
    poll_until(Duration::from_secs(30), || {
        (worker.recording().peak_active >= 2).then_some(())
    })
    .unwrap_or_else(|| panic!("the second job was never registered"));
    let (status, body) = submit(&worker, &main_py_job());
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "Max concurrent jobs reached (2)");
    assert_eq!(body["active_jobs"], 2);
    assert_eq!(body["cpu_available"], 0);
    let (status, body) = second
        .join()
        .unwrap_or_else(|_| panic!("submit thread panicked"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(worker.recording().count("POST", "submit"), 3);

    worker.set(|k| k.max_jobs_per_hour = 2);
    poll_until(Duration::from_secs(30), || {
        let (status, body) = submit(&worker, &main_py_job());
        (status == 429 && body["error"] == "Max jobs per hour reached (2)").then_some(())
    })
    .unwrap_or_else(|| panic!("no hourly 429"));
}

#[test]
fn a_missing_download_is_a_500_and_the_whole_download_deletes() {
    let worker = FakeWorker::start();
    let id = accepted_id(&worker, &main_py_job());
    wait_finished(&worker.endpoint(), &id, Duration::from_secs(30));
    let (status, body) = get_json(&worker.url(&format!("/download/{id}/missing")));
    assert_eq!(status, 500);
    assert!(body["error"]
        .as_str()
        .is_some_and(|e| e.contains("No such file or directory")));

    let (status, tarball) = get_bytes(&worker.url(&format!("/download/{id}")));
    assert_eq!(status, 200);
    assert_eq!(tarball.get(..2), Some(&[0x1f, 0x8b][..]));
    let (status, body) = get_json(&worker.url(&format!("/status/{id}")));
    assert_eq!(status, 404);
    assert_eq!(body["error"], "Job not found");
}

#[test]
fn status_blocks_while_a_job_runs() {
    let duration = Duration::from_secs(2);
    let worker = FakeWorker::start_with(|k| k.job_duration = duration);
    let id = accepted_id(&worker, &main_py_job());
    let started = poll_until(Duration::from_secs(30), || {
        let recording = worker.recording();
        let started = recording.started.iter().find(|(job, _)| *job == id);
        started.map(|(_, at)| *at)
    })
    .unwrap_or_else(|| panic!("job {id} never started"));

    let asked = Instant::now();
    let (status, _) = get_json(&worker.url("/health"));
    assert_eq!(status, 200);
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "health waited for the job"
    );

    let asked = SystemTime::now();
    let ran_before = asked.duration_since(started).unwrap_or_default();
    let (status, body) = get_json(&worker.url(&format!("/status/{id}")));
    let waited = asked.elapsed().unwrap_or_default();
    assert_eq!(status, 200);
    assert_eq!(body["status"], "completed");
    let remaining = duration.saturating_sub(ran_before);
    assert!(
        waited + Duration::from_millis(200) >= remaining,
        "status took {waited:?}, the job had {remaining:?} to go"
    );
}

#[test]
fn stop_and_restart_keep_port_and_key() {
    let worker = FakeWorker::start();
    let id = accepted_id(&worker, &main_py_job());
    worker.stop();
    assert!(
        TcpStream::connect(worker.addr()).is_err(),
        "port still open"
    );
    worker.restart();
    let (status, body) = get_json(&worker.url("/health"));
    assert_eq!(
        (status, body["worker_id"].clone()),
        (200, Value::from(worker.worker_id()))
    );
    let (status, _) = get_json(&worker.url(&format!("/status/{id}")));
    assert_eq!(status, 404, "a restarted worker has forgotten its jobs");
}

#[test]
fn hang_holds_requests_unanswered() {
    let worker = FakeWorker::start_with(|k| k.hang = true);
    let mut stream = TcpStream::connect(worker.addr()).unwrap_or_else(|e| panic!("connect: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap_or_else(|e| panic!("timeout: {e}"));
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap_or_else(|e| panic!("write: {e}"));
    let mut buf = [0u8; 64];
    assert!(stream.read(&mut buf).is_err(), "a hanging worker answered");
    worker.set(|k| k.hang = false);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap_or_else(|e| panic!("timeout: {e}"));
    assert_eq!(
        stream.read(&mut buf).unwrap_or(0),
        0,
        "closed without an answer"
    );
    assert_eq!(get_json(&worker.url("/health")).0, 200);
}

#[test]
fn bad_input_is_answered_like_sandrun() {
    // Room for every submit below: the emulator frees a job's rate-limit slot a moment after
    // /status reports it finished (as sandrun does), which must not turn a 400 into a 429.
    let worker = FakeWorker::start_with(|k| k.max_active_per_ip = 10);
    let (status, body) = submit(
        &worker,
        &Form::new().manifest(r#"{"entrypoint":"main.py"}"#),
    );
    assert_eq!(status, 200, "a manifest without files is accepted: {body}");
    let id = body["job_id"].as_str().unwrap_or_default().to_string();
    let finished = wait_finished(&worker.endpoint(), &id, Duration::from_secs(30));
    assert_eq!(finished["status"], "failed");
    assert_eq!(finished["execution_metadata"]["exit_code"], 2);

    let (status, body) = submit(&worker, &main_py_job().manifest("{not json"));
    assert_eq!(
        status, 200,
        "an invalid manifest is ignored when main.py exists: {body}"
    );
    let no_entrypoint = Form::new().file("data.csv", "text/csv", b"a,b\n");
    let (status, body) = submit(&worker, &no_entrypoint);
    assert_eq!(
        (status, body["error"].clone()),
        (400, Value::from("No entrypoint specified"))
    );
    let (status, body) = get_json(&worker.url("/submit"));
    assert_eq!(
        (status, body["error"].clone()),
        (404, Value::from("Not found"))
    );

    worker.set(|k| k.reject_submit = Some((500, "disk full".to_string())));
    let (status, body) = submit(&worker, &main_py_job());
    assert_eq!(
        (status, body["error"].clone()),
        (500, Value::from("disk full"))
    );

    worker.set(|k| k.delete_after = Duration::from_millis(300));
    let gone = poll_until(Duration::from_secs(30), || {
        (get_json(&worker.url(&format!("/status/{id}"))).0 == 404).then_some(())
    });
    assert!(gone.is_some(), "job {id} was never deleted");
}

/// sandrun's clock for deleting a job starts as its submit is handled, before the submit waits
/// for the jobs lock a running job holds: a job submitted while another runs (3 s) and running
/// 0.5 s itself is over 3.2 s old as it ends, and deleted right then (`delete_after` 3.2 s),
/// not 2.7 s later as a clock started after the wait would have it.
#[test]
fn a_jobs_deletion_counts_from_its_submit_its_wait_for_the_lock_included() {
    let worker = FakeWorker::start_with(|k| {
        k.job_duration = Duration::from_secs(3);
        k.delete_after = Duration::from_millis(3200);
    });
    let first = accepted_id(&worker, &main_py_job());
    let started = poll_until(Duration::from_secs(30), || {
        worker.recording().has_started(&first).then_some(())
    });
    assert!(started.is_some(), "job {first} never started");
    worker.set(|k| k.job_duration = Duration::from_millis(500));
    let behind = accepted_id(&worker, &main_py_job());
    let done = poll_until(Duration::from_secs(30), || {
        let recording = worker.recording();
        recording
            .done
            .iter()
            .any(|(id, _)| *id == behind)
            .then_some(())
    });
    assert!(done.is_some(), "job {behind} never ended");
    let gone = poll_until(Duration::from_secs(2), || {
        (get_json(&worker.url(&format!("/status/{behind}"))).0 == 404).then_some(())
    });
    assert!(gone.is_some(), "job {behind} outlived its deletion time");
}

/// Kills the child when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn dev_worker_runs_real_python() {
    let dir = temp_dir();
    let key_path = dir.path().join("key.pem");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dev-worker"))
        .args(["--port", "0", "--key"])
        .arg(&key_path)
        .env("TMPDIR", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start dev-worker: {e}"));
    let stdout = child.stdout.take();
    let mut child = Reaped(child);
    let (lines, received) = mpsc::channel();
    thread::spawn(move || {
        if let Some(stdout) = stdout {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        }
    });
    let mut worker_id = String::new();
    let mut endpoint = String::new();
    while endpoint.is_empty() {
        let line = received
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("dev-worker said nothing useful: {e}"));
        if let Some(id) = line.strip_prefix("Worker ID: ") {
            worker_id = id.to_string();
        } else if let Some(addr) = line.strip_prefix("Listening on ") {
            endpoint = addr.to_string();
        }
    }
    let key = support::WorkerKey::load(&key_path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(key.worker_id(), worker_id);
    let (_, health) = get_json(&format!("{endpoint}/health"));
    assert_eq!(health["worker_id"], worker_id);

    let form = Form::new().file("main.py", "text/x-python", b"print('hello')\n");
    let (status, body) = support::post_multipart(&format!("{endpoint}/submit"), &form);
    assert_eq!(status, 200, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap_or(Value::Null)["job_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let status = wait_finished(&endpoint, &id, Duration::from_secs(60));
    assert_eq!(status["status"], "completed", "{status}");
    let (_, logs) = get_json(&format!("{endpoint}/logs/{id}"));
    assert_eq!(logs["stdout"], "hello\n");
    assert!(matches!(child.0.try_wait(), Ok(None)));
}

#[test]
fn dev_worker_refuses_non_loopback_binds() {
    let dir = temp_dir();
    let output = Command::new(env!("CARGO_BIN_EXE_dev-worker"))
        .args(["--port", "0", "--bind", "0.0.0.0", "--key"])
        .arg(dir.path().join("key.pem"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run dev-worker: {e}"));
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("loopback"));
}

#[test]
fn the_harness_starts_the_coordinator_on_a_free_port() {
    let worker = FakeWorker::start();
    let coordinator = support::Coordinator::start(&[worker.entry(2)], &[]);
    assert_ne!(coordinator.port(), 0);
    assert!(coordinator.wait_for_log("Listening on http://127.0.0.1:", Duration::from_secs(1)));
    assert!(coordinator.dir().join("workers.json").is_file());
    let health = poll_until(Duration::from_secs(30), || {
        (worker.recording().count("GET", "health") > 0).then_some(())
    });
    assert!(
        health.is_some(),
        "the coordinator never asked the worker's health"
    );
}

/// Waits for job `id` on `worker` to complete; the names of its output files.
fn completed_outputs(worker: &FakeWorker, id: &str) -> Vec<String> {
    let status = wait_finished(&worker.endpoint(), id, Duration::from_secs(30));
    assert_eq!(status["status"], "completed", "{status}");
    status["output_files"]
        .as_object()
        .map(|files| files.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn a_tarball_upload_is_extracted() {
    let worker = FakeWorker::start();
    let tarball = support::tar_gz(&[("main.py", MAIN_PY), ("data/in.txt", b"input\n")]);
    let form = Form::new()
        .file("job.tar.gz", "application/gzip", &tarball)
        .manifest(r#"{"outputs":["data/*"]}"#);
    let id = accepted_id(&worker, &form);
    assert_eq!(
        completed_outputs(&worker, &id),
        ["data/in.txt", "result.txt"]
    );
    let (code, body) = get(&worker.url(&format!("/download/{id}/data/in.txt")));
    assert_eq!((code, body.as_str()), (200, "input\n"));
}

#[test]
fn a_black_hole_never_answers() {
    let hole = support::BlackHole::start();
    let mut stream = TcpStream::connect(hole.addr()).unwrap_or_else(|e| panic!("connect: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap_or_else(|e| panic!("timeout: {e}"));
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap_or_else(|e| panic!("write: {e}"));
    let mut buf = [0u8; 16];
    assert!(stream.read(&mut buf).is_err(), "the black hole answered");
    assert!(hole.endpoint().starts_with("http://127.0.0.1:"));
    assert_eq!(hole.connections(), 1);
}

/// sandrun's "fake tar": a file that begins `----Tar\nPath:` is written under the name after
/// `Path: ` whatever its filename, and without that space sandrun's arithmetic on a missing
/// match takes the name from byte 5 of the mark (`ar`).
#[test]
fn a_fake_tar_is_written_under_the_name_sandrun_reads_in_it() {
    let worker = FakeWorker::start();
    let form = Form::new()
        .file(
            "job.tar.gz",
            "application/x-tar",
            b"----Tar\nPath: main.py\nSize: 9\n\nprint(1)\n",
        )
        .file("notes.txt", "text/plain", b"----Tar\nPath:x.txt\n\nbody")
        .manifest(r#"{"entrypoint":"main.py","outputs":["main.py","ar","x.txt"]}"#);
    let id = accepted_id(&worker, &form);
    assert_eq!(
        completed_outputs(&worker, &id),
        ["ar", "main.py", "result.txt"]
    );
    for (name, bytes) in [("main.py", "print(1)\n"), ("ar", "body")] {
        let (code, body) = get(&worker.url(&format!("/download/{id}/{name}")));
        assert_eq!((code, body.as_str()), (200, bytes), "{name}");
    }
}
