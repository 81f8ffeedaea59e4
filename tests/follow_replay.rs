//! Following jobs on `/logs/ID?follow=1` and `/stream/ID`: a finished job's stored logs replayed
//! to many followers, and served by `GET /logs/ID` to many clients, in little memory each (a follower that never reads is let go), and the
//! coordinator's marker lines starting a line of the text stream after output that lacks a
//! final newline, live and replayed.

mod support;

use std::fs;
use std::io::BufReader;
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

use support::follow::{
    follow_logs, follow_websocket, open_follow_unread, open_logs_unread, open_websocket_unread,
    unread_bytes, Followed,
};
use support::lifecycle::{submit, wait_collected, wait_healthy};
use support::sandrun::control::Printed;
use support::{get_bytes, get_json, poll_until, Coordinator, FakeWorker, Form};

/// Generous deadline for anything the coordinator does on its own.
const DEADLINE: Duration = Duration::from_secs(60);

/// The big job's stdout: more than the kernel's socket buffers of a client that never reads.
const LOG_BYTES: usize = 8 << 20;
/// The big job's stderr: a few of the replay's pieces.
const ERR_BYTES: usize = 100 << 10;
/// Followers that never read: on the text stream, and on the WebSocket.
const TEXT_FOLLOWERS: usize = 20;
const WEBSOCKET_FOLLOWERS: usize = 12;
/// Clients of `GET /logs/ID` that never read.
const LOGS_CLIENTS: usize = 24;

/// The coordinator's marker lines, each of which starts a line of the text stream.
const MARKERS: [&str; 4] = ["[STATUS]", "[STDERR]", "[VERIFY]", "[DONE]"];

fn job() -> Form {
    Form::new()
        .file("main.py", "text/x-python", b"print('hi')\n")
        .manifest(r#"{"entrypoint":"main.py","outputs":["result.txt"]}"#)
}

/// Where `got` first differs from `wanted`, for a message that does not print megabytes.
fn first_difference(got: &[u8], wanted: &[u8]) -> String {
    let at = got
        .iter()
        .zip(wanted)
        .position(|(g, w)| g != w)
        .unwrap_or(got.len().min(wanted.len()));
    let around = |bytes: &[u8]| {
        String::from_utf8_lossy(&bytes[at.saturating_sub(40)..(at + 40).min(bytes.len())])
            .into_owned()
    };
    format!(
        "{} bytes came, {} wanted; first difference at byte {at}: {:?} instead of {:?}",
        got.len(),
        wanted.len(),
        around(got),
        around(wanted)
    )
}

/// The messages of a WebSocket follower, once its stream ended.
fn messages(follower: &mut Followed) -> Vec<String> {
    follower
        .all(DEADLINE)
        .into_iter()
        .map(|(_, text)| text)
        .collect()
}

/// The coordinator's `VmHWM` (peak RSS, KiB) since `clear_refs` reset it, or its `VmRSS` now
/// when the reset was refused.
fn peak_rss(coordinator: &Coordinator, reset: bool) -> u64 {
    let field = if reset { "VmHWM" } else { "VmRSS" };
    coordinator.status_number(field).unwrap_or(0)
}

/// A finished job's stored log is streamed to each follower in pieces: 32 followers that never
/// read its 8 MiB stdout hold a few MiB in all, not a copy of the log each (they held 430 MB
/// for 40 followers of a 10 MiB log); each is let go once it read nothing for
/// `--client-timeout`; a follower that reads gets the whole log byte for byte, the WebSocket
/// one in sandrun's messages (the stdout in one message, the stderr in one starting
/// `[STDERR]\n`).
#[test]
fn a_finished_jobs_big_log_is_replayed_in_little_memory_per_follower() {
    let worker = FakeWorker::start_with(|k| {
        k.stdout = Some(Printed::Lines(LOG_BYTES));
        k.stderr = Some(Printed::Lines(ERR_BYTES));
    });
    let coordinator = Coordinator::start(
        &[worker.entry(2)],
        &[
            "--health-interval",
            "1",
            "--max-followers",
            "64",
            "--max-followers-per-ip",
            "64",
            "--client-timeout",
            "3",
        ],
    );
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let id = submit(&coordinator, &job());
    wait_collected(&coordinator, &id, DEADLINE);
    let stdout = Printed::Lines(LOG_BYTES).bytes();
    let stderr = Printed::Lines(ERR_BYTES).bytes();
    let (code, logs) = get_json(&coordinator.url(&format!("/logs/{id}")));
    assert_eq!(code, 200);
    assert!(
        logs["stdout"].as_str().map(str::as_bytes) == Some(&stdout[..]),
        "the collected stdout differs: {}",
        first_difference(
            logs["stdout"].as_str().unwrap_or_default().as_bytes(),
            &stdout
        )
    );

    // A follower that reads gets it all, byte for byte.
    let mut wanted = b"[STATUS] Job status: completed\n".to_vec();
    wanted.extend_from_slice(&stdout);
    wanted.extend_from_slice(b"[STDERR]\n");
    wanted.extend_from_slice(&stderr);
    wanted.extend_from_slice(b"[VERIFY] signature verified, outputs match\n[DONE] Job completed");
    let mut reader = follow_logs(coordinator.port(), &id);
    reader.all(DEADLINE);
    let text = reader.text();
    assert!(
        text.as_bytes().starts_with(&wanted),
        "{}",
        first_difference(text.as_bytes(), &wanted)
    );
    assert!(text.ends_with('\n') && text.matches("[DONE]").count() == 1);
    assert_eq!(reader.ending().as_deref(), Some("last chunk"));
    let mut websocket = follow_websocket(&coordinator.url(""), &id);
    let said = messages(&mut websocket);
    assert_eq!(said.len(), 5, "{} messages", said.len());
    assert_eq!(said[0], "[STATUS] Job status: completed\n");
    assert!(
        said[1].as_bytes() == stdout,
        "{}",
        first_difference(said[1].as_bytes(), &stdout)
    );
    let mut stderr_message = b"[STDERR]\n".to_vec();
    stderr_message.extend_from_slice(&stderr);
    assert!(
        said[2].as_bytes() == stderr_message,
        "{}",
        first_difference(said[2].as_bytes(), &stderr_message)
    );
    assert_eq!(said[3], "[VERIFY] signature verified, outputs match\n");
    assert!(said[4].starts_with("[DONE] Job completed"), "{}", said[4]);
    assert_eq!(websocket.ending().as_deref(), Some("close 1000"));

    // Followers that never read: each one's replay starts, and blocks on its full socket.
    let baseline = coordinator.status_number("VmRSS").unwrap_or(0);
    let reset = fs::write(format!("/proc/{}/clear_refs", coordinator.pid()), "5").is_ok();
    let unread: Vec<(u16, BufReader<TcpStream>)> = (0..TEXT_FOLLOWERS + WEBSOCKET_FOLLOWERS)
        .map(|i| {
            if i < TEXT_FOLLOWERS {
                open_follow_unread(coordinator.port(), &id)
            } else {
                open_websocket_unread(coordinator.port(), &id)
            }
        })
        .collect();
    for (status, _) in &unread {
        assert!(*status == 200 || *status == 101, "answered {status}");
    }
    let mut peak = baseline;
    let started = poll_until(DEADLINE, || {
        peak = peak.max(peak_rss(&coordinator, reset));
        let begun = unread
            .iter()
            .all(|(_, reader)| unread_bytes(reader) >= 16 * 1024);
        begun.then_some(())
    });
    assert!(started.is_some(), "not every replay began");
    peak = peak.max(peak_rss(&coordinator, reset));
    let followers = TEXT_FOLLOWERS + WEBSOCKET_FOLLOWERS;
    let grew = peak.saturating_sub(baseline);
    eprintln!(
        "RSS: {baseline} KiB before {followers} followers of a {LOG_BYTES}-byte log that never \
         read, {peak} KiB at the peak (+{grew} KiB, {} KiB per follower; {})",
        grew / followers as u64,
        if reset { "VmHWM" } else { "VmRSS polled" }
    );
    let log_kib = (LOG_BYTES / 1024) as u64;
    assert!(
        grew < log_kib,
        "{followers} followers took {grew} KiB (RSS {baseline} -> {peak} KiB); the log is {log_kib} KiB"
    );

    // Each is let go once it read nothing for --client-timeout (3 s): after one timeout, not
    // one per write that the kernel took a few more bytes of (three and more).
    let following = || get_json(&coordinator.url("/pool")).1["followers"]["following"].clone();
    let blocked = std::time::Instant::now();
    let let_go = poll_until(DEADLINE, || (following() == 0).then_some(()));
    assert!(let_go.is_some(), "followers left: {}", following());
    let took = blocked.elapsed();
    eprintln!("the followers that never read were let go {took:?} after their replays began");
    assert!(
        took < Duration::from_millis(7500),
        "let go {took:?} after their replays began, against --client-timeout 3"
    );
    assert!(coordinator.wait_for_log(
        &format!("Let go a follower of job {id}: it read nothing for 3 s"),
        DEADLINE
    ));
    drop(unread);
}

/// `GET /logs/{id}` streams a finished job's stored logs from its file with their length, on the
/// connection's own thread: 24 clients that never read an 8 MiB log all get their answers
/// begun with two handler threads, hold a few KiB in all, and `/pool` still answers. (Each
/// answer read the whole log into memory, parsed it and serialized it again, on a handler:
/// two such clients held every handler for `--client-timeout`.)
#[test]
fn a_finished_jobs_big_log_is_served_by_get_logs_in_little_memory_per_client() {
    let worker = FakeWorker::start_with(|k| k.stdout = Some(Printed::Lines(LOG_BYTES)));
    let coordinator = Coordinator::start(
        &[worker.entry(1)],
        &["--health-interval", "1", "--threads", "2"],
    );
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let id = submit(&coordinator, &job());
    wait_collected(&coordinator, &id, DEADLINE);
    let (code, raw) = get_bytes(&coordinator.url(&format!("/logs/{id}")));
    assert_eq!(code, 200);
    // A newline last, as every JSON answer has.
    assert!(
        raw.ends_with(b"}\n"),
        "{:?}",
        &raw[raw.len().saturating_sub(20)..]
    );
    let logs: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let stdout = Printed::Lines(LOG_BYTES).bytes();
    assert!(
        logs["stdout"].as_str().map(str::as_bytes) == Some(&stdout[..]),
        "the served stdout differs: {}",
        first_difference(
            logs["stdout"].as_str().unwrap_or_default().as_bytes(),
            &stdout
        )
    );

    let baseline = coordinator.status_number("VmRSS").unwrap_or(0);
    let reset = fs::write(format!("/proc/{}/clear_refs", coordinator.pid()), "5").is_ok();
    let unread: Vec<(u16, Vec<String>, BufReader<TcpStream>)> = (0..LOGS_CLIENTS)
        .map(|_| open_logs_unread(coordinator.port(), &id, &[]))
        .collect();
    for (status, head, _) in &unread {
        assert_eq!(*status, 200, "{head:?}");
        let length = head.iter().find_map(|h| {
            h.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        });
        let length: usize = length.and_then(|l| l.parse().ok()).unwrap_or(0);
        assert!(length > LOG_BYTES, "Content-Length {length}: {head:?}");
    }
    let mut peak = baseline;
    let started = poll_until(DEADLINE, || {
        peak = peak.max(peak_rss(&coordinator, reset));
        let begun = unread
            .iter()
            .all(|(_, _, reader)| unread_bytes(reader) >= 16 * 1024);
        begun.then_some(())
    });
    assert!(started.is_some(), "not every answer began");
    let (code, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(code, 200, "/pool while the logs' clients dawdle: {pool}");
    peak = peak.max(peak_rss(&coordinator, reset));
    let grew = peak.saturating_sub(baseline);
    eprintln!(
        "RSS: {baseline} KiB before {LOGS_CLIENTS} clients of a {LOG_BYTES}-byte log that never \
         read, {peak} KiB at the peak (+{grew} KiB; {})",
        if reset { "VmHWM" } else { "VmRSS polled" }
    );
    let log_kib = (LOG_BYTES / 1024) as u64;
    assert!(
        grew < log_kib,
        "{LOGS_CLIENTS} clients took {grew} KiB (RSS {baseline} -> {peak} KiB); the log is {log_kib} KiB"
    );
    drop(unread);
}

/// Asserts that each of the coordinator's markers in `text` starts a line.
fn assert_markers_start_lines(text: &str) {
    for marker in MARKERS {
        for (at, _) in text.match_indices(marker) {
            assert!(
                at == 0 || text.as_bytes()[at - 1] == b'\n',
                "{marker} at byte {at} does not start a line: {text:?}"
            );
        }
    }
}

/// A job whose stdout (and stderr) lacks a final newline: on the text stream the coordinator's
/// next marker still starts a line, live and replayed (a newline is added only there); the
/// WebSocket's messages stay as the worker's (the output without a newline).
#[test]
fn markers_start_a_line_after_output_without_a_final_newline() {
    let worker = FakeWorker::start_with(|k| k.job_duration = Duration::from_millis(800));
    let coordinator = Coordinator::start(&[worker.entry(1)], &["--health-interval", "1"]);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let cases: [(Printed, Option<Printed>, &str, &[&str]); 2] = [
        (
            Printed::Text("no newline at end"),
            None,
            "no newline at end\n[VERIFY] ",
            &["no newline at end"],
        ),
        (
            Printed::Text("out-no-nl"),
            Some(Printed::Text("err-no-nl")),
            "out-no-nl\n[STDERR]\nerr-no-nl\n[VERIFY] ",
            &["out-no-nl", "[STDERR]\nerr-no-nl"],
        ),
    ];
    for (stdout, stderr, wanted, output_messages) in cases {
        worker.set(|k| {
            k.stdout = Some(stdout);
            k.stderr = stderr;
        });
        let id = submit(&coordinator, &job());
        let mut live_text = follow_logs(coordinator.port(), &id);
        let mut live_websocket = follow_websocket(&coordinator.url(""), &id);
        live_text.all(DEADLINE);
        wait_collected(&coordinator, &id, DEADLINE);
        let mut replayed_text = follow_logs(coordinator.port(), &id);
        let mut replayed_websocket = follow_websocket(&coordinator.url(""), &id);
        replayed_text.all(DEADLINE);
        for (how, follower) in [("live", &live_text), ("replayed", &replayed_text)] {
            let text = follower.text();
            // The status lines may come between (the worker's stream can tell the output
            // before the status poll tells that the job started).
            let without_status: String = text
                .split_inclusive('\n')
                .filter(|line| !line.starts_with("[STATUS]"))
                .collect();
            assert!(without_status.contains(wanted), "{how}: {text:?}");
            assert!(text.contains("[DONE] Job completed"), "{how}: {text:?}");
            assert_markers_start_lines(&text);
            assert!(!text.contains("\n\n"), "{how}: a blank line in {text:?}");
        }
        for (how, follower) in [
            ("live", &mut live_websocket),
            ("replayed", &mut replayed_websocket),
        ] {
            let said = messages(follower);
            let outputs: Vec<&str> = said
                .iter()
                .map(String::as_str)
                .filter(|m| !m.starts_with("[STATUS]") && !m.starts_with("[VERIFY]"))
                .filter(|m| !m.starts_with("[DONE]"))
                .collect();
            assert_eq!(outputs, output_messages, "{how}: {said:?}");
        }
        let (_, logs) = get_json(&coordinator.url(&format!("/logs/{id}")));
        assert_eq!(logs["stdout"], Value::from(stdout_text(stdout)), "{logs}");
    }
}

/// The text a [`Printed::Text`] prints.
fn stdout_text(printed: Printed) -> String {
    String::from_utf8_lossy(&printed.bytes()).into_owned()
}

/// A replay under way when the coordinator stops ends as a live stream does: the line saying
/// so and a clean end, at once; it was cut off without either once the shutdown grace ran out.
#[test]
fn a_replay_under_way_at_a_stop_ends_with_the_shutdown_line_at_once() {
    use std::io::Read;
    let worker = FakeWorker::start_with(|k| k.stdout = Some(Printed::Lines(LOG_BYTES)));
    let mut coordinator = Coordinator::start(&[worker.entry(1)], &["--health-interval", "1"]);
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let id = submit(&coordinator, &job());
    wait_collected(&coordinator, &id, DEADLINE);
    // A client that reads, slowly: 16 KiB every 50 ms (the log takes it some 25 s).
    let (status, mut reader) = open_follow_unread(coordinator.port(), &id);
    assert_eq!(status, 200);
    let slow = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buffer = vec![0u8; 16 * 1024];
        while let Ok(n) = reader.read(&mut buffer) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buffer[..n]);
            std::thread::sleep(Duration::from_millis(50));
        }
        got
    });
    poll_until(DEADLINE, || {
        let (_, pool) = get_json(&coordinator.url("/pool"));
        (pool["followers"]["following"] == 1).then_some(())
    })
    .unwrap_or_else(|| panic!("the replay never began"));
    let stopping = std::time::Instant::now();
    let exit = coordinator.terminate(DEADLINE);
    assert!(exit.is_some_and(|e| e.success()), "{exit:?}");
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(15), "the stop took {took:?}");
    let got = slow.join().unwrap_or_default();
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("[STATUS] The coordinator is shutting down"),
        "{} bytes, ending {:?}",
        got.len(),
        &text[text.len().saturating_sub(200)..]
    );
    assert!(
        text.ends_with("\r\n0\r\n\r\n"),
        "no last chunk: {:?}",
        &text[text.len().saturating_sub(200)..]
    );
    assert!(
        got.len() < LOG_BYTES,
        "the whole log came: {} bytes",
        got.len()
    );
}

/// A follower that joins a job whose output passed the 1 MiB kept for late joiners (here: it
/// ended, and its results are still being collected) is told where output was left out; it got
/// none of it, and no word of it.
#[test]
fn a_late_follower_is_told_of_output_left_out_of_the_history() {
    let worker = FakeWorker::start_with(|k| {
        k.stdout = Some(Printed::Lines(2 << 20));
        k.stderr = Some(Printed::Text("stderr after the cut"));
        k.stalled_downloads = 1;
    });
    let coordinator = Coordinator::start(
        &[worker.entry(1)],
        &["--health-interval", "1", "--dispatch-timeout", "5"],
    );
    wait_healthy(&coordinator, &[&worker], DEADLINE);
    let id = submit(&coordinator, &job());
    // Over, with its collection held by the stalled download.
    poll_until(DEADLINE, || {
        let (_, status) = get_json(&coordinator.url(&format!("/status/{id}")));
        (status["pool_status"] == "completed" && status["results"]["collected"] == false)
            .then_some(())
    })
    .unwrap_or_else(|| panic!("the job never ended uncollected"));
    let mut follower = follow_logs(coordinator.port(), &id);
    follower.all(DEADLINE);
    let text = follower.text();
    assert!(
        text.contains("[STATUS] Output from here on is past the 1 MiB kept for followers"),
        "{}",
        &text[..text.len().min(2000)]
    );
    assert!(
        text.contains("[DONE] Job completed"),
        "{}",
        &text[..text.len().min(2000)]
    );
    // Nothing of the output after the cut either: the line says so.
    assert!(
        !text.contains("stderr after the cut"),
        "{}",
        &text[..text.len().min(2000)]
    );
    assert_markers_start_lines(&text);
}
