//! `--access-log` through the real coordinator binary: one line per answered request (a 401,
//! a 404, a submit with its key's name, a parked `?wait=` request with the time it waited),
//! reopened on SIGHUP after a rotation, written out at a graceful stop, JSON lines with
//! `--log-format json`, its figures in `/pool` and `/metrics`, and a path it cannot open
//! refused at start.

mod support;

use std::fs;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tempfile::TempDir;

use support::lifecycle::wait_healthy;
use support::{poll_until, send_with, Coordinator, FakeWorker, Form, Reply};

const DEADLINE: Duration = Duration::from_secs(60);
const FAST: [&str; 4] = ["--health-interval", "1", "--track-interval", "0.05"];
const SECRET: &str = "tpk_access_log_test_ops";

/// A coordinator on one fake worker with one admin key, `ops`, logging requests to
/// `<dir>/access.log`, with `extra` flags; and its directory.
fn start(worker: &FakeWorker, extra: &[&str]) -> (Coordinator, TempDir) {
    let dir = support::workers_dir(&[worker.entry(2)]);
    let keys = dir.path().join("keys.json");
    let hash: String = Sha256::digest(SECRET.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let entry = format!(r#"[{{"name": "ops", "key_sha256": "{hash}", "role": "admin"}}]"#);
    fs::write(&keys, entry).unwrap_or_else(|e| panic!("{e}"));
    let log = dir.path().join("access.log");
    let mut args = vec![
        "--api-keys",
        keys.to_str().unwrap_or_default(),
        "--access-log",
        log.to_str().unwrap_or_default(),
    ];
    args.extend_from_slice(&FAST);
    args.extend_from_slice(extra);
    (Coordinator::start_in(dir.path(), &args), dir)
}

/// A request as `ops` (or without a key).
fn call(
    coordinator: &Coordinator,
    method: &str,
    path: &str,
    key: bool,
    body: Option<&Form>,
) -> Reply {
    let auth = format!("Bearer {SECRET}");
    let headers: Vec<(&str, &str)> = key
        .then_some(("Authorization", auth.as_str()))
        .into_iter()
        .collect();
    let data = body.map(|f| (f.content_type(), f.body()));
    let body = data.as_ref().map(|(t, b)| (t.as_str(), b.as_slice()));
    send_with(method, &coordinator.url(path), &headers, body).unwrap_or_else(|e| panic!("{e}"))
}

/// The lines of `path` once it holds one that contains `needle`.
fn lines_once(path: &Path, needle: &str) -> Vec<String> {
    poll_until(DEADLINE, || {
        let text = fs::read_to_string(path).unwrap_or_default();
        text.contains(needle)
            .then(|| text.lines().map(str::to_string).collect())
    })
    .unwrap_or_else(|| {
        let text = fs::read_to_string(path).unwrap_or_default();
        panic!("no line with {needle:?} in {}:\n{text}", path.display())
    })
}

/// The fields of a text line: time, client, key, method, target, status, bytes, milliseconds.
fn fields(line: &str) -> (Vec<&str>, &str, Vec<&str>) {
    let (head, rest) = line.split_once(" \"").unwrap_or_else(|| panic!("{line}"));
    let (target, tail) = rest.rsplit_once("\" ").unwrap_or_else(|| panic!("{line}"));
    (head.split(' ').collect(), target, tail.split(' ').collect())
}

fn form() -> Form {
    Form::new()
        .file("main.py", "text/x-python", b"print('hi')\n")
        .manifest(r#"{"entrypoint":"main.py"}"#)
}

#[test]
fn every_answered_request_has_a_line_and_a_rotation_is_followed_on_sighup() {
    let worker = FakeWorker::start_with(|k| k.job_duration = Duration::from_secs(2));
    let (mut coordinator, _dir) = start(&worker, &[]);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let log = coordinator.dir().join("access.log");

    assert_eq!(call(&coordinator, "GET", "/pool", false, None).status, 401);
    assert_eq!(
        call(&coordinator, "GET", "/status/pool-nope", true, None).status,
        404
    );
    let submitted = call(
        &coordinator,
        "POST",
        "/submit?priority=high",
        true,
        Some(&form()),
    );
    assert_eq!(submitted.status, 200, "{}", submitted.text());
    let id = submitted.json()["job_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // A parked request is logged when it is answered, with the time it waited for the job's
    // end (its run takes 2 s).
    let wait_target = format!("/status/{id}?wait=30");
    let ended = call(&coordinator, "GET", &wait_target, true, None);
    assert_eq!(ended.json()["pool_status"], "completed", "{}", ended.text());

    let lines = lines_once(&log, &wait_target);
    let line_of = |target: &str| {
        lines
            .iter()
            .find(|l| fields(l).1 == target)
            .unwrap_or_else(|| panic!("no line for {target}: {lines:#?}"))
    };
    let (head, _, tail) = fields(line_of("/pool"));
    assert_eq!(head[1..], ["127.0.0.1", "-", "GET"], "{head:?}");
    assert_eq!(tail[0], "401");
    let (head, _, tail) = fields(line_of("/submit?priority=high"));
    assert_eq!(head[1..], ["127.0.0.1", "ops", "POST"], "{head:?}");
    assert_eq!(tail[0], "200");
    assert_eq!(tail[1], submitted.body.len().to_string());
    let time = head[0];
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "{time}"
    );
    assert_eq!(fields(line_of("/status/pool-nope")).2[0], "404");
    let (_, _, tail) = fields(line_of(&wait_target));
    let millis: f64 = tail[2].parse().unwrap_or_else(|e| panic!("{e}: {tail:?}"));
    assert!(millis >= 200.0, "{tail:?}");
    assert!(!lines.iter().any(|l| l.contains(SECRET)), "{lines:#?}");

    let pool = call(&coordinator, "GET", "/pool", true, None).json();
    assert!(
        pool["access_log"]["lines_written"].as_u64() >= Some(4),
        "{pool}"
    );
    assert_eq!(pool["access_log"]["lines_dropped"], 0, "{pool}");
    let metrics = call(&coordinator, "GET", "/metrics", true, None).text();
    assert!(
        metrics.contains("trusted_pool_access_log_lines_total{outcome=\"dropped\"} 0"),
        "{metrics}"
    );

    // A rotation: the file is moved away, SIGHUP reopens its path.
    let rotated = coordinator.dir().join("access.log.1");
    fs::rename(&log, &rotated).unwrap_or_else(|e| panic!("{e}"));
    coordinator.hangup();
    assert!(coordinator.wait_for_log("Reopened", DEADLINE));
    call(
        &coordinator,
        "GET",
        "/status/pool-after-rotation",
        true,
        None,
    );
    lines_once(&log, "/status/pool-after-rotation");
    let old = fs::read_to_string(&rotated).unwrap_or_default();
    assert!(!old.contains("pool-after-rotation"), "{old}");

    // A graceful stop writes out the last lines.
    call(&coordinator, "GET", "/status/pool-last", true, None);
    let stopped = coordinator.terminate(DEADLINE);
    assert!(stopped.is_some_and(|s| s.success()), "{stopped:?}");
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("/status/pool-last"), "{text}");
}

#[test]
fn with_log_format_json_each_line_is_one_object_and_a_bad_path_is_refused() {
    let worker = FakeWorker::start();
    let (coordinator, _dir) = start(&worker, &["--log-format", "json"]);
    let log = coordinator.dir().join("access.log");
    call(&coordinator, "GET", "/status/pool-json\"quoted", true, None);
    let lines = lines_once(&log, "pool-json");
    let line: Value = serde_json::from_str(lines.last().map_or("", String::as_str))
        .unwrap_or_else(|e| panic!("{e}: {lines:?}"));
    assert_eq!(line["client"], "127.0.0.1");
    assert_eq!(line["key"], "ops");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["target"], "/status/pool-json%22quoted");
    assert_eq!(line["status"], 404);
    assert!(line["bytes"].as_u64() > Some(0), "{line}");
    assert!(line["duration_ms"].as_f64().is_some(), "{line}");

    let dir = support::workers_dir(&[worker.entry(1)]);
    let refused =
        Coordinator::try_start_in(dir.path(), &["--access-log", "/nonexistent/dir/access.log"])
            .err()
            .unwrap_or_default();
    assert!(
        refused.contains("cannot open the access log /nonexistent/dir/access.log"),
        "{refused}"
    );
}

/// Unmounts a test's tmpfs when dropped.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// An access log on a disk that fills up loses the lines it could not write, whole: a write
/// that failed part-way is cut back off the file, so no torn line is left for the next line to
/// join, and once the disk has room every line in the file is one JSON object again.
#[test]
fn an_access_log_on_a_full_disk_loses_whole_lines_and_leaves_no_torn_one() {
    let worker = FakeWorker::start();
    let dir = support::temp_dir();
    let logs = dir.path().join("logs");
    fs::create_dir_all(&logs).unwrap_or_else(|e| panic!("{e}"));
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&logs)
        .status();
    if !mounted.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: cannot mount a small tmpfs here (needs root)");
        return;
    }
    let _mount = Mounted(logs.clone());
    let log = logs.join("access.log");
    let log_arg = log.to_string_lossy().into_owned();
    let coordinator = Coordinator::start(
        &[worker.entry(2)],
        &["--access-log", &log_arg, "--log-format", "json"],
    );
    // The disk full but for two or three pages.
    let filler = logs.join("filler");
    let mut file = fs::File::create(&filler).unwrap_or_else(|e| panic!("{e}"));
    while matches!(std::io::Write::write(&mut file, &[0u8; 4096]), Ok(n) if n > 0) {}
    let full = fs::metadata(&filler).map_or(0, |m| m.len());
    file.set_len(full.saturating_sub(10_000))
        .unwrap_or_else(|e| panic!("{e}"));
    drop(file);
    let failed = |coordinator: &Coordinator| {
        let (_, pool) = support::get_json(&coordinator.url("/pool"));
        pool["access_log"]["lines_failed"].as_u64().unwrap_or(0)
    };
    for n in 0..400 {
        call(
            &coordinator,
            "GET",
            &format!("/status/pool-filling-{n}"),
            true,
            None,
        );
        if n % 20 == 19 && failed(&coordinator) > 0 {
            break;
        }
    }
    poll_until(DEADLINE, || (failed(&coordinator) > 0).then_some(()))
        .unwrap_or_else(|| panic!("no line failed on the full disk"));
    fs::remove_file(&filler).unwrap_or_else(|e| panic!("{e}"));
    call(
        &coordinator,
        "GET",
        "/status/pool-after-the-room",
        true,
        None,
    );
    lines_once(&log, "pool-after-the-room");
    let text = fs::read_to_string(&log).unwrap_or_else(|e| panic!("{e}"));
    for line in text.lines() {
        assert!(
            serde_json::from_str::<Value>(line).is_ok(),
            "a torn line: {line:?}"
        );
    }
}
