//! A long mixed run through the real coordinator: clients that finish jobs (half of them with
//! a rerun after a lost run), cancel or delete them (deleting one while its archive is read), walk away from uploads, downloads and
//! followed logs, or connect and say nothing; an operator who drains, undrains, reloads and
//! scrapes; and a worker that hangs, fails its health checks,
//! refuses submits and restarts. Afterwards every job has settled, every output read was whole,
//! nothing the run opened is still open (connections, uploads, files of forgotten jobs), the
//! threads are back to their number before the run, and a graceful stop and a restart keep the
//! last finished job.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use support::follow::follow_logs;
use support::lifecycle::{assert_no_uploads, assert_pool_consistent, drain_url, wait_healthy};
use support::{
    get_bytes, get_json, poll_until, post, post_multipart, untar_gz, Coordinator, FakeWorker, Form,
    Knobs,
};

/// Generous deadline for anything the coordinator does on its own.
const DEADLINE: Duration = Duration::from_secs(90);
/// How long the clients and the faults run.
const RUN: Duration = Duration::from_secs(30);
/// A little longer than the coordinator keeps an idle cached thread (10 s).
const IDLE_THREADS_END: Duration = Duration::from_secs(12);
/// The output every job writes (the worker keeps the uploaded `data.bin`).
static DATA: [u8; 100_000] = [7; 100_000];

fn form(n: u64) -> Form {
    Form::new()
        .file(
            "main.py",
            "text/x-python",
            format!("print({n})\n").as_bytes(),
        )
        .file("data.bin", "application/octet-stream", &DATA)
        .manifest(r#"{"entrypoint":"main.py","outputs":["*.bin"]}"#)
}

/// A worker with room for every job of the run.
fn roomy(change: impl FnOnce(&mut Knobs)) -> FakeWorker {
    FakeWorker::start_with(|k| {
        k.job_duration = Duration::from_millis(30);
        k.max_active_per_ip = 100;
        k.max_jobs_per_hour = 1_000_000;
        k.cpu_seconds_per_minute = 1e9;
        k.poll_interval = Duration::from_millis(10);
        change(k);
    })
}

/// What each of the process's file descriptors points to.
fn open_files(pid: u32) -> Vec<String> {
    let mut files: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|entry| {
                let target = fs::read_link(entry.ok()?.path()).ok()?;
                Some(target.display().to_string())
            })
            .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Why the open files `now` are not back to `before`: a connection, pipe or device opened
/// since, a file of the state directory that is gone or is an upload, or more results
/// segments open than the state directory holds.
fn leaked(before: &[String], now: &[String], state_dir: &Path) -> Option<String> {
    let results = state_dir.join("results").display().to_string();
    let segments_held = fs::read_dir(state_dir.join("results")).map_or(0, Iterator::count);
    let segments_open = now.iter().filter(|f| f.starts_with(&results)).count();
    if segments_open > segments_held {
        return Some(format!(
            "{segments_open} results segments open, {segments_held} in the state directory"
        ));
    }
    let state = state_dir.display().to_string();
    now.iter()
        .find(|file| {
            let in_state = file.starts_with(&state);
            let stale = file.ends_with("(deleted)") || file.contains("/uploads/");
            (in_state && stale) || (!in_state && !before.contains(file))
        })
        .map(|file| format!("{file} is open"))
}

/// Submits job `n`; every other job may run again if its run is lost (`reruns=1`), so its
/// upload stays until it settles.
fn submit(c: &Coordinator, n: u64) -> Option<String> {
    let path = if n % 2 == 1 {
        "/submit?reruns=1"
    } else {
        "/submit"
    };
    let (status, body) = post_multipart(&c.url(path), &form(n));
    let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    match status {
        200 => answer["job_id"].as_str().map(str::to_string),
        // A full queue while a worker is down.
        503 => None,
        _ => panic!("submit answered {status}: {body}"),
    }
}

/// Writes `request` on a new connection, reads a little of the answer when asked, and goes.
fn walk_away(port: u16, request: &[u8], read_some: bool) {
    let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.write_all(request);
    if read_some {
        let _ = stream.read(&mut [0u8; 512]);
    }
}

/// Submits, waits for the end, and checks the output and the archive of a completed job
/// (a 404 only if retention forgot the job first); `last` is the last job checked whole.
fn finishing_client(c: &Coordinator, stop: &AtomicBool, seq: &AtomicU64, last: &Mutex<Checked>) {
    while !stop.load(Ordering::SeqCst) {
        let Some(id) = submit(c, seq.fetch_add(1, Ordering::SeqCst)) else {
            thread::sleep(Duration::from_millis(50));
            continue;
        };
        let end = poll_until(DEADLINE, || {
            let (_, status) = get_json(&c.url(&format!("/status/{id}")));
            let pool_status = status["pool_status"].as_str()?;
            ["completed", "failed", "lost"]
                .contains(&pool_status)
                .then(|| pool_status.to_string())
        })
        .unwrap_or_else(|| panic!("job {id} never ended"));
        if end != "completed" {
            continue;
        }
        // Before its collection ends, the file comes from the worker: a 502 when the flaky
        // worker hangs or stops meanwhile (its collection is tried again, and checked below).
        let (status, bytes) = get_bytes(&c.url(&format!("/outputs/{id}/data.bin")));
        assert!(
            [200, 404, 502].contains(&status),
            "output of {id}: {status}"
        );
        if status == 200 {
            assert!(bytes == DATA, "output of {id}: {} bytes", bytes.len());
        }
        // The archive is made of the collected results only.
        poll_until(DEADLINE, || {
            let (code, status) = get_json(&c.url(&format!("/status/{id}")));
            (code == 404 || status["results"]["collected"] == true).then_some(())
        })
        .unwrap_or_else(|| panic!("the results of job {id} were never collected"));
        let (status, archive) = get_bytes(&c.url(&format!("/download/{id}")));
        assert!(status == 200 || status == 404, "archive of {id}: {status}");
        if status == 200 {
            let files = untar_gz(&archive);
            assert!(files.get("data.bin").is_some_and(|b| *b == DATA), "{id}");
            let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
            last.count += 1;
            last.id = id;
        }
    }
}

/// The jobs checked whole: how many, and the last one.
#[derive(Default)]
struct Checked {
    count: u64,
    id: String,
}

fn cancelling_client(c: &Coordinator, stop: &AtomicBool, seq: &AtomicU64) {
    while !stop.load(Ordering::SeqCst) {
        let n = seq.fetch_add(1, Ordering::SeqCst);
        if let Some(id) = submit(c, n) {
            thread::sleep(Duration::from_millis(n % 40));
            let (status, body) = post(&c.url(&format!("/cancel/{id}")), "text/plain", b"");
            // 409: the job had already ended.
            assert!(
                status == 200 || status == 409,
                "cancel {id}: {status} {body}"
            );
        }
    }
}

/// Submits, waits for the end, starts reading the job's archive, deletes the job meanwhile
/// (now, or as it settles), and reads the archive to its end: whole, although the
/// job is gone. A job retention forgot first is left alone.
fn deleting_client(c: &Coordinator, stop: &AtomicBool, seq: &AtomicU64) {
    while !stop.load(Ordering::SeqCst) {
        let Some(id) = submit(c, seq.fetch_add(1, Ordering::SeqCst)) else {
            thread::sleep(Duration::from_millis(50));
            continue;
        };
        let collected = poll_until(DEADLINE, || {
            let (code, status) = get_json(&c.url(&format!("/status/{id}")));
            let ended = ["failed", "lost"].contains(&status["pool_status"].as_str()?);
            (code == 404 || ended || status["results"]["collected"] == true).then_some(code)
        });
        let Some(200) = collected else {
            continue;
        };
        let Ok(mut download) = TcpStream::connect((Ipv4Addr::LOCALHOST, c.port())) else {
            continue;
        };
        let _ = download.set_read_timeout(Some(DEADLINE));
        let request =
            format!("GET /download/{id} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        download
            .write_all(request.as_bytes())
            .expect("ask for the archive");
        let mut answer = vec![0u8; 1024];
        let first = download.read(&mut answer).unwrap_or(0);
        answer.truncate(first);
        let deleted = poll_until(DEADLINE, || {
            let reply = support::send("DELETE", &c.url(&format!("/jobs/{id}")), None).ok()?;
            (reply.status != 409).then_some(reply)
        })
        .unwrap_or_else(|| panic!("job {id} stayed undeletable"));
        // 202: collected, but not settled yet; deleted as it settles.
        assert!(
            [200, 202, 404].contains(&deleted.status),
            "DELETE {id}: {} {}",
            deleted.status,
            deleted.text()
        );
        let gone = poll_until(DEADLINE, || {
            (get_json(&c.url(&format!("/status/{id}"))).0 == 404).then_some(())
        });
        assert!(gone.is_some(), "job {id} after its deletion");
        let _ = download.read_to_end(&mut answer);
        let Some(at) = answer.windows(4).position(|w| w == b"\r\n\r\n") else {
            panic!("no answer to the download of {id}");
        };
        let head = String::from_utf8_lossy(&answer[..at]).to_string();
        if head.starts_with("HTTP/1.1 200") {
            let files = untar_gz(&answer[at + 4..]);
            assert!(
                files.get("data.bin").is_some_and(|b| *b == DATA),
                "the archive of {id}, deleted while it was read: {head}"
            );
        }
    }
}

/// Leaves in the middle: of an upload; of following its own job in flight (as text, as a
/// WebSocket) and of waiting for its end (`?wait=`); of an archive download and a followed log
/// of a finished job; and of a request's headers.
fn leaving_client(c: &Coordinator, stop: &AtomicBool, seq: &AtomicU64) {
    let port = c.port();
    let upload = format!(
        "POST /submit HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n\
         Content-Length: 500000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"files\"; \
         filename=\"a.bin\"\r\n\r\n{}",
        "x".repeat(70_000)
    );
    while !stop.load(Ordering::SeqCst) {
        walk_away(port, upload.as_bytes(), false);
        if let Some(id) = submit(c, seq.fetch_add(1, Ordering::SeqCst)) {
            let requests = [
                format!("GET /logs/{id}?follow=1 HTTP/1.1\r\nHost: x\r\n\r\n"),
                format!(
                    "GET /stream/{id} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                     Sec-WebSocket-Version: 13\r\n\r\n"
                ),
                format!("GET /status/{id}?wait=10 HTTP/1.1\r\nHost: x\r\n\r\n"),
            ];
            for (n, request) in requests.iter().enumerate() {
                walk_away(port, request.as_bytes(), n < 2);
            }
        }
        let (_, listed) = get_json(&c.url("/jobs?status=completed&limit=1"));
        if let Some(id) = listed["jobs"][0]["job_id"].as_str() {
            let download = format!("GET /download/{id} HTTP/1.1\r\nHost: x\r\n\r\n");
            walk_away(port, download.as_bytes(), true);
            let mut followed = follow_logs(port, id);
            let _ = followed.wait_for("[DONE]", Duration::from_millis(200));
        }
        walk_away(port, b"GET /pool HTTP/1.1\r\n", false);
        thread::sleep(Duration::from_millis(20));
    }
}

/// Scrapes, lists, drains and undrains the flaky worker, and reloads the workers file.
fn operator(c: &Coordinator, flaky: &FakeWorker, stop: &AtomicBool) {
    let mut round = 0u64;
    while !stop.load(Ordering::SeqCst) {
        round += 1;
        assert_eq!(get_bytes(&c.url("/metrics")).0, 200);
        assert_pool_consistent(c);
        assert_eq!(get_json(&c.url("/jobs?limit=50")).0, 200);
        let action = if round.is_multiple_of(2) {
            "drain"
        } else {
            "undrain"
        };
        assert_eq!(post(&drain_url(c, flaky, action), "text/plain", b"").0, 200);
        if round.is_multiple_of(7) {
            let (status, body) = post(&c.url("/reload"), "text/plain", b"");
            assert_eq!(status, 200, "{body}");
        }
        thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        post(&drain_url(c, flaky, "undrain"), "text/plain", b"").0,
        200
    );
}

/// For `RUN`, one fault after another on the worker (each 1.5 s, then 1 s of health); then
/// tells everyone to stop.
fn faults(flaky: &FakeWorker, stop: &AtomicBool) {
    let start = Instant::now();
    let mut round = 0u32;
    while start.elapsed() < RUN {
        round += 1;
        match round % 5 {
            0 => flaky.set(|k| k.hang = true),
            1 => flaky.set(|k| k.fail_health = true),
            2 => flaky.set(|k| {
                k.reject_submit = Some((429, "Max concurrent jobs reached (2)".to_string()))
            }),
            3 => flaky.stop(),
            _ => {}
        }
        thread::sleep(Duration::from_millis(1500));
        if !flaky.is_running() {
            flaky.restart();
        }
        flaky.set(|k| {
            k.hang = false;
            k.fail_health = false;
            k.reject_submit = None;
        });
        thread::sleep(Duration::from_millis(1000));
    }
    stop.store(true, Ordering::SeqCst);
}

/// Waits until no job is queued or in flight and no worker follows or collects one.
fn settled(c: &Coordinator) -> Option<Value> {
    let (_, pool) = get_json(&c.url("/pool"));
    let jobs = &pool["jobs_by_status"];
    let in_flight: u64 = ["queued", "dispatched", "running"]
        .iter()
        .map(|s| jobs[*s].as_u64().unwrap_or(u64::MAX))
        .sum();
    let followed: u64 = pool["workers"]
        .as_array()?
        .iter()
        .map(|w| w["tracked_jobs"].as_u64().unwrap_or(u64::MAX))
        .sum();
    (in_flight == 0 && followed == 0).then_some(pool)
}

#[test]
fn a_long_mixed_run_leaves_nothing_behind() {
    let steady = roomy(|_| {});
    let flaky = roomy(|_| {});
    let slow = roomy(|k| k.download_delay = Duration::from_millis(300));
    let workers = [steady.entry(8), flaky.entry(8), slow.entry(8)];
    let dir = support::workers_dir(&workers);
    let args = [
        "--health-interval",
        "0.5",
        "--health-timeout",
        "1",
        "--track-interval",
        "0.1",
        "--threads",
        "4",
        "--client-timeout",
        "2",
        "--dispatch-timeout",
        "3",
        "--lost-after",
        "3",
        "--retain-jobs",
        "100",
        "--row-results-max",
        "1000",
        "--upload-memory-bytes",
        "150000",
    ];
    let mut coordinator = Coordinator::start_in(dir.path(), &args);
    wait_healthy(&coordinator, &[&steady, &flaky, &slow], DEADLINE);
    let pid = coordinator.pid();
    // One whole job first, so that what a first job opens for good counts as before.
    let last = Mutex::new(Checked::default());
    let checked = || last.lock().map_or(0, |l| l.count);
    let (stop, seq) = (AtomicBool::new(false), AtomicU64::new(0));
    let one = AtomicBool::new(false);
    thread::scope(|s| {
        s.spawn(|| finishing_client(&coordinator, &one, &seq, &last));
        poll_until(DEADLINE, || (checked() > 0).then_some(()));
        one.store(true, Ordering::SeqCst);
    });
    assert!(checked() > 0, "the first job was not checked");
    thread::sleep(IDLE_THREADS_END);
    let files_before = open_files(pid);
    let threads_before = coordinator.threads().unwrap_or(0);

    let c = &coordinator;
    thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| finishing_client(c, &stop, &seq, &last));
        }
        s.spawn(|| cancelling_client(c, &stop, &seq));
        s.spawn(|| deleting_client(c, &stop, &seq));
        s.spawn(|| leaving_client(c, &stop, &seq));
        s.spawn(|| operator(c, &flaky, &stop));
        s.spawn(|| faults(&flaky, &stop));
    });

    assert!(checked() >= 20, "only {} jobs checked", checked());
    let pool = poll_until(DEADLINE, || settled(&coordinator))
        .unwrap_or_else(|| panic!("not settled: {}", get_json(&coordinator.url("/pool")).1));
    assert_pool_consistent(&coordinator);
    assert_no_uploads(&coordinator, "after the run");
    let followers = poll_until(DEADLINE, || {
        let (_, pool) = get_json(&coordinator.url("/pool"));
        let gone = pool["followers"]["following"] == 0 && pool["followers"]["feeds"] == 0;
        gone.then_some(())
    });
    assert!(
        followers.is_some(),
        "followers or feeds left: {}",
        get_json(&coordinator.url("/pool")).1["followers"]
    );
    let store = &pool["store"];
    assert!(
        store["retention"]["forgotten_jobs"].as_u64() > Some(0),
        "{pool}"
    );
    assert!(store["deleted_jobs"].as_u64() > Some(0), "{pool}");
    eprintln!(
        "jobs run again after a lost run: {}; lost: {}",
        pool["queue"]["reruns"], pool["jobs_by_status"]["lost"]
    );
    let state_dir = coordinator.state_dir();
    let mut why = None;
    let back = poll_until(DEADLINE, || {
        why = leaked(&files_before, &open_files(pid), &state_dir);
        why.is_none().then_some(())
    });
    assert!(
        back.is_some(),
        "{why:?}; open before: {files_before:#?}, now: {:#?}",
        open_files(pid)
    );
    let threads = poll_until(DEADLINE, || {
        let now = coordinator.threads()?;
        (now <= threads_before).then_some(now)
    });
    assert!(
        threads.is_some(),
        "{:?} threads, {threads_before} before: {:?}",
        coordinator.threads(),
        coordinator.thread_names()
    );

    // A graceful stop and a restart keep the last job checked, byte for byte.
    let exit = coordinator.terminate(DEADLINE);
    assert!(exit.is_some_and(|e| e.success()), "{exit:?}");
    let last = last.lock().map(|l| l.id.clone()).unwrap_or_default();
    let restarted = Coordinator::start_in(dir.path(), &args);
    let (status, bytes) = get_bytes(&restarted.url(&format!("/outputs/{last}/data.bin")));
    assert_eq!(status, 200, "output of {last} after the restart");
    assert!(bytes == DATA, "output of {last}: {} bytes", bytes.len());
}
