//! Slow and hostile clients against the real binary: stalled uploads and stalled headers do not
//! hold the coordinator, each connection limit answers its status code, and running out of
//! descriptors or threads refuses connections with 503 until they free up, without blaming the
//! workers or losing their jobs.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::lifecycle::{drain_url, job_status, pool_worker, submit, wait_collected, wait_status};
use support::sandrun::control::Printed;
use support::{
    get, get_bytes, get_json, poll_until, post, post_multipart, send, status_of, Coordinator,
    FakeWorker, Form,
};

/// What "answers at once" allows on a loaded 2-core machine.
const AT_ONCE: Duration = Duration::from_secs(5);
/// Deadline for anything the coordinator should do within a few client timeouts.
const DEADLINE: Duration = Duration::from_secs(30);

/// Sends `request` over `stream` up to `times` times without reading anything, until the
/// coordinator has taken nothing for 1 s; returns how many were sent whole.
fn pipeline_unread(stream: &mut TcpStream, request: &[u8], times: usize) -> usize {
    stream.set_nonblocking(true).expect("nonblocking");
    let batch = request.repeat(100);
    let (mut sent, mut offset, mut stuck_since) = (0, 0, Instant::now());
    while sent < times && stuck_since.elapsed() < Duration::from_secs(1) {
        match stream.write(&batch[offset..]) {
            Ok(n) if n > 0 => {
                offset += n;
                if offset == batch.len() {
                    (sent, offset) = (sent + 100, 0);
                }
                stuck_since = Instant::now();
            }
            _ => thread::sleep(Duration::from_millis(10)),
        }
    }
    sent
}

/// A client that pipelines requests and never reads the answers holds one request and its
/// connection's thread, never a handler: the next request of a connection is read once the
/// one before is answered, and a handler works the answer out and leaves its writing to the
/// connection's thread. With two handler threads and six such clients, everyone else is
/// served at once, and the coordinator does not queue the clients' requests (0.12.0 read them
/// all: 275,000 queued requests in 5 s took 180 MB and held every handler; then each such
/// client held a handler until --client-timeout: two of them held both).
#[test]
fn clients_pipelining_requests_they_never_read_hold_no_handler() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(&[worker.entry(2)], &["--threads", "2"]);
    answers_at_once("/jobs", || get_json(&coordinator.url("/jobs")).0);
    let rss_before = coordinator.status_number("VmRSS").unwrap_or(0);
    // 8 KiB each: 400 MB in all for one client, more than the socket buffers hold.
    let padding = "p".repeat(8 << 10);
    let request = format!("GET /pool HTTP/1.1\r\nHost: pool\r\nX-Padding: {padding}\r\n\r\n");
    let pipeliners: Vec<(TcpStream, usize)> = (0..PIPELINERS)
        .map(|_| {
            let mut pipeliner = stalled(&coordinator, b"");
            let sent = pipeline_unread(&mut pipeliner, request.as_bytes(), 50_000);
            (pipeliner, sent)
        })
        .collect();
    for (_, sent) in &pipeliners {
        assert!(
            *sent < 50_000,
            "all {sent} pipelined requests were taken in"
        );
    }
    let sent: usize = pipeliners.iter().map(|(_, sent)| sent).sum();
    for _ in 0..3 {
        answers_at_once("/jobs", || get_json(&coordinator.url("/jobs")).0);
        answers_at_once("/pool", || get_json(&coordinator.url("/pool")).0);
    }
    if let Some(rss) = coordinator.status_number("VmRSS") {
        assert!(
            rss < rss_before + 32 * 1024,
            "RSS {rss_before} KiB -> {rss} KiB after {sent} pipelined requests"
        );
    }
    drop(pipeliners);
    answers_at_once("/health", || get_json(&coordinator.url("/health")).0);
}

/// Clients that pipeline requests they never read, more than the handler threads.
const PIPELINERS: usize = 6;

/// The coordinator's 2xx answers so far (`trusted_pool_http_responses_total`).
fn answered_2xx(coordinator: &Coordinator) -> u64 {
    let (_, metrics) = get(&coordinator.url("/metrics"));
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("trusted_pool_http_responses_total{code=\"2xx\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// A client that pipelines requests and goes away is served no more of them: 100 requests for
/// a job's 2 MiB log, sent at once, the connection closed after 0.3 s unread. The coordinator
/// went on answering every one into the closed socket (a tester's 500 such requests cost 5.5
/// CPU-seconds after their client had gone).
#[test]
fn requests_a_client_pipelined_before_it_went_away_are_not_served() {
    let worker = FakeWorker::start_with(|k| k.stdout = Some(Printed::Lines(2 << 20)));
    let coordinator = Coordinator::start(&[worker.entry(2)], &[]);
    let id = submit(&coordinator, &small_job());
    wait_collected(&coordinator, &id, DEADLINE);
    let before = answered_2xx(&coordinator);
    let request = format!("GET /logs/{id} HTTP/1.1\r\nHost: pool\r\n\r\n");
    let mut client = stalled(&coordinator, request.repeat(100).as_bytes());
    thread::sleep(Duration::from_millis(300));
    // Unread answers in its socket: the close resets the connection.
    drop(client.flush());
    drop(client);
    // Once no answer but the polls' own has been added for 2 s, count them.
    let (mut prev, mut quiet_since, mut polls) = (before, Instant::now(), 0u64);
    let settled = poll_until(Duration::from_secs(120), || {
        let now = answered_2xx(&coordinator);
        polls += 1;
        if now > prev + 1 {
            quiet_since = Instant::now();
        }
        prev = now;
        (quiet_since.elapsed() > Duration::from_secs(2)).then_some(now)
    });
    let served = settled.unwrap_or(u64::MAX).saturating_sub(before + polls);
    assert!(
        served < 50,
        "{served} of the 100 pipelined requests were answered after their client went away"
    );
}

/// Sends `request` from address `from` and reads the answer's head (through the blank line),
/// within [`DEADLINE`]; returns the connection, still open, and the head.
fn head_from(
    coordinator: &Coordinator,
    from: std::net::IpAddr,
    request: &str,
) -> (TcpStream, String) {
    let mut stream = stalled_from(coordinator, from, request.as_bytes());
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let (started, mut head) = (Instant::now(), Vec::new());
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && started.elapsed() < DEADLINE {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Ok(_) => break,
            Err(_) => continue,
        }
    }
    (stream, String::from_utf8_lossy(&head).into_owned())
}

/// One client address cannot take every follower place nor every parked `?wait=` place: with
/// `--max-followers 4` and `--max-waiting 4` (two each per address), a third from 127.0.0.1 is
/// answered 503 naming the option, while 127.0.0.2 still follows and waits; a closed one gives
/// its place back.
#[test]
fn one_address_cannot_take_every_follower_nor_every_parked_request() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(
        &[worker.entry(2)],
        &["--max-followers", "4", "--max-waiting", "4"],
    );
    let (code, body) = post(
        &drain_url(&coordinator, &worker, "drain"),
        "text/plain",
        b"",
    );
    assert_eq!(code, 200, "{body}");
    let id = submit(&coordinator, &small_job());
    let (here, other) = (
        std::net::IpAddr::from([127, 0, 0, 1]),
        std::net::IpAddr::from([127, 0, 0, 2]),
    );
    let follow = format!("GET /logs/{id}?follow=1 HTTP/1.1\r\nHost: pool\r\n\r\n");
    let wait = format!("GET /status/{id}?wait=60 HTTP/1.1\r\nHost: pool\r\n\r\n");

    let mut followers = Vec::new();
    for _ in 0..2 {
        let (stream, head) = head_from(&coordinator, here, &follow);
        assert_eq!(status_of(&head), 200, "{head}");
        followers.push(stream);
    }
    let closing = follow.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
    let mut third = stalled_from(&coordinator, here, closing.as_bytes());
    let refused = read_to_close(&mut third, DEADLINE).expect("refused at once");
    assert_eq!(status_of(&refused), 503, "{refused}");
    assert!(
        refused.contains("--max-followers-per-ip") && refused.contains("Retry-After: 5"),
        "{refused}"
    );
    let (_, head) = head_from(&coordinator, other, &follow);
    assert_eq!(status_of(&head), 200, "{head}");
    let pool = get_json(&coordinator.url("/pool")).1;
    assert_eq!(pool["followers"]["max_per_ip"], 2, "{pool}");
    assert_eq!(pool["followers"]["addresses"], 2, "{pool}");

    let mut parked = Vec::new();
    for n in 1..=2 {
        parked.push(stalled_from(&coordinator, here, wait.as_bytes()));
        poll_until(DEADLINE, || {
            let pool = get_json(&coordinator.url("/pool")).1;
            (pool["waiting"]["parked"] == n).then_some(())
        })
        .unwrap_or_else(|| panic!("{n} requests never parked"));
    }
    let mut third = stalled_from(&coordinator, here, wait.as_bytes());
    let _ = third.set_read_timeout(Some(DEADLINE));
    let mut answer = vec![0u8; 4096];
    let n = third.read(&mut answer).unwrap_or(0);
    let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(
        answer.contains("--max-waiting-per-ip") && answer.contains("Retry-After: 1"),
        "{answer}"
    );
    let _other_parked = stalled_from(&coordinator, other, wait.as_bytes());
    let pool = poll_until(DEADLINE, || {
        let pool = get_json(&coordinator.url("/pool")).1;
        (pool["waiting"]["parked"] == 3).then_some(pool)
    })
    .unwrap_or_else(|| panic!("127.0.0.2's request never parked"));
    assert_eq!(pool["waiting"]["addresses"], 2, "{pool}");
    assert_eq!(pool["waiting"]["max_per_ip"], 2, "{pool}");

    // A client that gives up waiting (its own timeout shorter than its wait) frees its place
    // within a second or two, not when its wait is up.
    drop(parked.pop());
    let freed = poll_until(Duration::from_secs(10), || {
        let pool = get_json(&coordinator.url("/pool")).1;
        (pool["waiting"]["parked"] == 2).then_some(())
    });
    assert!(freed.is_some(), "a closed request kept its place");
    parked.push(stalled_from(&coordinator, here, wait.as_bytes()));
    poll_until(DEADLINE, || {
        let pool = get_json(&coordinator.url("/pool")).1;
        (pool["waiting"]["parked"] == 3).then_some(())
    })
    .unwrap_or_else(|| panic!("the freed place was not taken again"));

    // A closed follower gives its place back (noticed at its next write: the job's end).
    drop(followers.pop());
    let (code, body) = post(
        &drain_url(&coordinator, &worker, "undrain"),
        "text/plain",
        b"",
    );
    assert_eq!(code, 200, "{body}");
    wait_collected(&coordinator, &id, DEADLINE);
    let freed = poll_until(DEADLINE, || {
        let pool = get_json(&coordinator.url("/pool")).1;
        (pool["followers"]["following"] == 0 && pool["waiting"]["parked"] == 0).then_some(())
    });
    assert!(freed.is_some(), "places still held after the job ended");
    let (_, head) = head_from(&coordinator, here, &follow);
    assert_eq!(status_of(&head), 200, "{head}");
    drop(parked);
}

/// A connection to the coordinator that sent `bytes` and then nothing.
fn stalled(coordinator: &Coordinator, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", coordinator.port())).expect("connect");
    stream.write_all(bytes).expect("send");
    stream
}

/// Headers of a 1 MB upload followed by its first 10 bytes.
fn stalled_upload_start() -> Vec<u8> {
    let mut head = b"POST /submit HTTP/1.1\r\nHost: pool\r\nContent-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 1000000\r\n\r\n".to_vec();
    head.extend_from_slice(b"--XyZ\r\nCon");
    head
}

/// Everything the server sends until it closes, within `deadline`; `None` if it stays open.
fn read_to_close(stream: &mut TcpStream, deadline: Duration) -> Option<String> {
    stream
        .set_read_timeout(Some(deadline))
        .expect("read timeout");
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => Some(String::from_utf8_lossy(&answer).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            Some(String::from_utf8_lossy(&answer).into_owned())
        }
        Err(_) => None,
    }
}

fn small_job() -> Form {
    Form::new()
        .file("main.py", "text/x-python", b"print('hello')\n")
        .manifest(r#"{"entrypoint": "main.py"}"#)
}

/// A job with an output larger than what the sockets of one connection can buffer
/// (`data.bin`, 16 MiB): a client that does not read it stalls its download.
fn large_output_job() -> Form {
    let data: Vec<u8> = (0..16 << 20).map(|i| (i % 251) as u8).collect();
    Form::new()
        .file("main.py", "text/x-python", b"print('hello')\n")
        .file("data.bin", "application/octet-stream", &data)
        .manifest(r#"{"entrypoint": "main.py", "outputs": ["*.bin"]}"#)
}

/// A coordinator with `threads` handlers whose one job (`job`) has completed while its results
/// are still being collected: its worker answers each download after `delay`, and with
/// `--row-results-max 0` a request meanwhile is fetched from the worker. Returns the job's id
/// and `/status`.
fn still_collecting(
    delay: Duration,
    threads: &str,
    job: &Form,
) -> (FakeWorker, Coordinator, String, Value) {
    let worker = FakeWorker::start_with(|k| k.download_delay = delay);
    let coordinator = Coordinator::start(
        &[worker.entry(2)],
        &["--threads", threads, "--row-results-max", "0"],
    );
    let id = submit(&coordinator, job);
    let status = wait_status(&coordinator, &id, "completed", DEADLINE);
    assert_eq!(status["results"]["collected"], false, "{status}");
    (worker, coordinator, id, status)
}

/// Times a call and checks it answered 200 within [`AT_ONCE`].
fn answers_at_once(what: &str, call: impl FnOnce() -> u16) {
    let started = Instant::now();
    let status = call();
    let took = started.elapsed();
    assert_eq!(status, 200, "{what} answered {status}");
    assert!(took < AT_ONCE, "{what} took {took:?}");
}

#[test]
fn stalled_uploads_and_stalled_headers_do_not_hold_the_coordinator() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(&[worker.entry(2)], &[]);
    let id = submit(&coordinator, &small_job());
    let mut held = Vec::new();
    for _ in 0..64 {
        held.push(stalled(&coordinator, &stalled_upload_start()));
        held.push(stalled(
            &coordinator,
            b"GET /pool HTTP/1.1\r\nHost: pool\r\nX-Slow: ",
        ));
    }
    // Every stalled connection reached the coordinator and is being read.
    wait_taken_up(&coordinator, 128, 64);
    answers_at_once("/health", || get_json(&coordinator.url("/health")).0);
    answers_at_once("/pool", || {
        let (status, pool) = get_json(&coordinator.url("/pool"));
        assert!(pool["workers"].is_array(), "{pool}");
        status
    });
    answers_at_once("/status", || {
        get_json(&coordinator.url(&format!("/status/{id}"))).0
    });
    answers_at_once("a new submit", || {
        post_multipart(&coordinator.url("/submit"), &small_job()).0
    });
    drop(held);
}

#[test]
fn small_bodies_arrive_with_their_headers_and_take_no_handler_nor_upload_slot() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(
        &[worker.entry(2)],
        &["--threads", "2", "--max-uploads", "1"],
    );
    let id = submit(&coordinator, &small_job());
    // One stalled 1 MB upload takes the only upload slot; 16 submits stall inside a 4 KB body.
    let mut held = vec![stalled(&coordinator, &stalled_upload_start())];
    for _ in 0..16 {
        held.push(stalled(
            &coordinator,
            b"POST /submit HTTP/1.1\r\nHost: pool\r\nContent-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 4000\r\n\r\n--XyZ\r\nCon",
        ));
    }
    // The 16 small bodies are read on connection threads: no upload slot.
    wait_taken_up(&coordinator, 17, 1);
    answers_at_once("/health", || get_json(&coordinator.url("/health")).0);
    answers_at_once("/status", || {
        get_json(&coordinator.url(&format!("/status/{id}"))).0
    });
    // A 6 KB submit is read with its headers: neither a handler nor an upload slot waits on it.
    let padded = small_job().file("data.bin", "application/octet-stream", &[b'p'; 6000]);
    answers_at_once("a 6 KB submit", || {
        post_multipart(&coordinator.url("/submit"), &padded).0
    });
    drop(held);
}

#[test]
fn a_submit_whose_body_arrived_is_served_on_its_connection_thread() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(&[worker.entry(2)], &["--threads", "2"]);
    // 16 clients at once, each waiting for its job's commit: none goes to an upload thread
    // (and none holds one of the 2 handlers).
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let url = coordinator.url("/submit");
            thread::spawn(move || {
                (0..5)
                    .map(|_| post_multipart(&url, &small_job()).0)
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    for client in clients {
        let statuses = client.join().expect("client thread");
        assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    }
    let names = coordinator.thread_names().expect("thread names");
    assert!(!names.iter().any(|n| n == "upload"), "{names:?}");
    // A body over 16 KiB is still read on an upload thread (idle ones stay for 10 s).
    let large = small_job().file("data.bin", "application/octet-stream", &[b'u'; 100_000]);
    assert_eq!(post_multipart(&coordinator.url("/submit"), &large).0, 200);
    let names = coordinator.thread_names().expect("thread names");
    assert!(names.iter().any(|n| n == "upload"), "{names:?}");
}

#[test]
fn a_status_poll_is_served_on_its_connection_thread() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(&[worker.entry(2)], &["--threads", "2"]);
    let id = submit(&coordinator, &small_job());
    let handler_wakeups = || coordinator.thread_wakeups("http-").expect("thread wakeups");
    // A handler sleeps until a request is handed to it: every request it serves wakes it.
    let before = handler_wakeups();
    for _ in 0..200 {
        assert_eq!(get(&coordinator.url(&format!("/status/{id}"))).0, 200);
        assert_eq!(get(&coordinator.url("/health")).0, 200);
    }
    let polls = handler_wakeups() - before;
    let before = handler_wakeups();
    for _ in 0..200 {
        assert_eq!(get(&coordinator.url("/pool")).0, 200);
    }
    let handed = handler_wakeups() - before;
    assert!(
        polls < 20,
        "400 polls woke the handlers {polls} times (200 /pool requests: {handed})"
    );
    // The count sees requests served by handlers.
    assert!(
        handed >= 100,
        "200 /pool requests woke the handlers {handed} times"
    );
}

/// A `?wait=` request that carries a body is parked like any other, whichever thread it came
/// to: one whose small body arrived with its head (served on its connection's thread) and one
/// whose large body is still to read (an upload thread). Both were answered 503 at once.
#[test]
fn a_status_wait_that_carries_a_body_is_parked_too() {
    let worker = FakeWorker::start_with(|k| k.job_duration = Duration::from_secs(60));
    let coordinator = Coordinator::start(&[worker.entry(2)], &[]);
    let id = submit(&coordinator, &small_job());
    for length in [2, 100_000] {
        let mut request = format!(
            "GET /status/{id}?wait=1 HTTP/1.1\r\nHost: pool\r\nConnection: close\r\nContent-Length: {length}\r\n\r\n"
        )
        .into_bytes();
        request.extend(std::iter::repeat_n(b'x', length));
        let started = Instant::now();
        let mut stream = stalled(&coordinator, &request);
        let answer = read_to_close(&mut stream, DEADLINE).expect("answered");
        assert_eq!(status_of(&answer), 200, "{length}: {answer}");
        assert!(answer.contains(&id), "{length}: {answer}");
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "{length}: not parked"
        );
    }
}

/// Output files are served on their connection's own thread: one the coordinator holds, and
/// one it fetches from the worker while the job's results are still being collected.
#[test]
fn output_files_are_served_on_their_connection_thread() {
    // The job's collection (two files, 3 s each) lasts 6 s or more.
    let (worker, coordinator, id, status) =
        still_collecting(Duration::from_secs(3), "2", &small_job());
    let expected = format!(
        "result of {}\n",
        status["remote_job_id"].as_str().unwrap_or("?")
    )
    .into_bytes();
    let handler_wakeups = || coordinator.thread_wakeups("http-").expect("thread wakeups");
    let output = |route: &str| get_bytes(&coordinator.url(&format!("/{route}/{id}/result.txt")));
    let before = handler_wakeups();
    assert_eq!(output("outputs"), (200, expected.clone()));
    let fetched = handler_wakeups() - before;
    wait_collected(&coordinator, &id, DEADLINE);
    let before = handler_wakeups();
    for _ in 0..100 {
        assert_eq!(output("outputs"), (200, expected.clone()));
        assert_eq!(output("download"), (200, expected.clone()));
    }
    let served = handler_wakeups() - before;
    assert!(
        served < 20,
        "200 requests for a collected output woke the handlers {served} times"
    );
    assert!(
        fetched < 2,
        "the fetch from the worker woke the handlers {fetched} times"
    );
    // The count sees requests served by handlers.
    let before = handler_wakeups();
    for _ in 0..20 {
        assert_eq!(get_json(&coordinator.url("/pool")).0, 200);
    }
    let handed = handler_wakeups() - before;
    assert!(
        handed >= 10,
        "20 /pool requests woke the handlers {handed} times"
    );
    assert_eq!(worker.recording().count("GET", "download"), 3);
}

/// A file fetched from its worker (its job's results are still being collected) holds a slot
/// of `--threads` until its download ends, not a handler: with one handler and a client that
/// stops reading such a file, `/pool` still answers at once, another file from a worker is 503
/// with `Retry-After`, and the slot comes back once that client goes.
#[test]
fn files_fetched_from_workers_hold_no_handler_and_are_bounded() {
    // The collection (two files, 5 s each) lasts 10 s or more.
    let (_worker, coordinator, id, _) =
        still_collecting(Duration::from_secs(5), "1", &large_output_job());
    let from_workers = || get_json(&coordinator.url("/pool")).1["files_from_workers"].as_u64();
    let request = format!("GET /outputs/{id}/data.bin HTTP/1.1\r\nHost: pool\r\n\r\n");
    let stalled_download = stalled(&coordinator, request.as_bytes());
    poll_until(DEADLINE, || (from_workers() == Some(1)).then_some(()))
        .expect("the file is not being fetched from the worker");
    answers_at_once("/pool", || get_json(&coordinator.url("/pool")).0);
    let refused = send(
        "GET",
        &coordinator.url(&format!("/outputs/{id}/result.txt")),
        None,
    )
    .expect("an answer");
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.header("Retry-After"), Some("2"));
    assert!(refused.text().contains("--threads"), "{}", refused.text());
    drop(stalled_download);
    poll_until(DEADLINE, || (from_workers() == Some(0)).then_some(()))
        .expect("the slot of the stalled download did not come back");
}

/// Clients that stop reading a large archive (`GET /download/{id}`) hold their own
/// connection threads only: with more of them than handler threads, each download starts at
/// once, and `/pool` (served by a handler) still answers at once.
#[test]
fn stalled_archive_downloads_hold_no_handler() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(&[worker.entry(2)], &["--threads", "2"]);
    let id = submit(&coordinator, &large_output_job());
    wait_collected(&coordinator, &id, DEADLINE);
    let request = format!("GET /download/{id} HTTP/1.1\r\nHost: pool\r\n\r\n");
    let downloads: Vec<TcpStream> = (0..4)
        .map(|i| {
            let stream = stalled(&coordinator, request.as_bytes());
            stream
                .set_read_timeout(Some(AT_ONCE))
                .expect("read timeout");
            let started = stream.peek(&mut [0]);
            assert!(started.is_ok(), "download {i} did not start at once");
            stream
        })
        .collect();
    answers_at_once("/pool", || get_json(&coordinator.url("/pool")).0);
    drop(downloads);
}

/// A request whose length a proxy in front could read differently (RFC 9112, section 6) is
/// refused with a JSON error and its connection closed: nothing after it is read as another
/// request. 0.12.0 took the first `Content-Length` (so a second, differing one smuggled a
/// request past a proxy that read the last), read `+5` as 5 and `-1` as no body, and
/// answered an HTTP/2.0 request never, holding its connection and thread for good.
#[test]
fn requests_with_ambiguous_framing_are_refused_and_their_connection_closed() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(&[worker.entry(2)], &["--client-timeout", "5"]);
    let hidden = "GET /pool HTTP/1.1\r\nHost: pool\r\nConnection: close\r\n\r\n";
    let head = "GET /health HTTP/1.1\r\nHost: pool\r\n";
    let cases = [
        (
            format!("{head}Content-Length: 3\r\nContent-Length: 30\r\n\r\nabc{hidden}"),
            400,
            "differing Content-Length values",
        ),
        (
            format!("{head}Content-Length: 3, 30\r\n\r\nabc{hidden}"),
            400,
            "differing Content-Length values",
        ),
        (
            format!(
                "{head}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}"
            ),
            400,
            "both Content-Length and Transfer-Encoding",
        ),
        (
            format!("{head}Content-Length: +5\r\n\r\nabcde{hidden}"),
            400,
            "decimal number of bytes",
        ),
        (
            format!("{head}Content-Length: -1\r\n\r\n{hidden}"),
            400,
            "decimal number of bytes",
        ),
        (
            format!("{head}Content-Length: 99999999999999999999999\r\n\r\n{hidden}"),
            413,
            "larger than any request body this server takes",
        ),
        (
            format!("{head}Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n{hidden}"),
            400,
            "must end in chunked",
        ),
        (
            format!("{head}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n{hidden}"),
            501,
            "chunked alone",
        ),
        (
            format!("GET /health HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{hidden}"),
            400,
            "needs HTTP/1.1",
        ),
        (
            format!("GET /health HTTP/2.0\r\nHost: pool\r\n\r\n{hidden}"),
            505,
            "only HTTP/1.0 and HTTP/1.1",
        ),
        (
            format!("GET /health HTTP/0.9\r\nHost: pool\r\n\r\n{hidden}"),
            505,
            "only HTTP/1.0 and HTTP/1.1",
        ),
        (
            format!("GET /health HTTP/1.2\r\nHost: pool\r\n\r\n{hidden}"),
            505,
            "only HTTP/1.0 and HTTP/1.1",
        ),
        (
            format!("GET /health HTTP/1.1 \r\nHost: pool\r\n\r\n{hidden}"),
            400,
            "malformed request line",
        ),
        (
            format!("{head}Expect: something-else\r\n\r\n{hidden}"),
            417,
            "Expect: 100-continue",
        ),
        (
            format!("{head}Expect: 100-continue\r\nExpect: something-else\r\n\r\n{hidden}"),
            417,
            "Expect: 100-continue",
        ),
        (
            format!("GARBAGE\r\n\r\n{hidden}"),
            400,
            "malformed request line",
        ),
        (
            format!("{head}No colon here\r\n\r\n{hidden}"),
            400,
            "malformed header line",
        ),
    ];
    for (request, status, why) in &cases {
        let mut stream = stalled(&coordinator, request.as_bytes());
        let answer = read_to_close(&mut stream, DEADLINE).expect("closed after the refusal");
        assert_eq!(status_of(&answer), *status, "{request:?}: {answer}");
        assert!(
            answer.contains("\"error\"") && answer.contains(why),
            "{request:?}: {answer}"
        );
        // One answer: nothing after the refused request was read as another.
        let answers = answer.matches("\r\nServer: ").count();
        assert_eq!(answers, 1, "{request:?}: {answer}");
    }
    // The same lengths, written as the standard asks, are served.
    for request in [
        format!("{head}Content-Length: 3\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"),
        format!("{head}Content-Length: 3, 3\r\nConnection: close\r\n\r\nabc"),
        format!(
            "{head}Transfer-Encoding: Chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        ),
    ] {
        let mut stream = stalled(&coordinator, request.as_bytes());
        let answer = read_to_close(&mut stream, DEADLINE).expect("answered");
        assert_eq!(status_of(&answer), 200, "{request:?}: {answer}");
    }
    // No refused connection is left open (the HTTP/2.0 one was, for good).
    wait_open_at_most(&coordinator, 1);
}

#[test]
fn a_request_body_left_unread_never_becomes_a_next_request() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(&[worker.entry(2)], &["--client-timeout", "5"]);
    let hidden = "GET /pool HTTP/1.1\r\nHost: pool\r\nConnection: close\r\n\r\n";
    // `POST /reload` answers without reading a body. A declared body longer than the 1 MiB the
    // server used to drain, with a request at that offset; and a chunked body whose chunk holds
    // a request and that never ends.
    let mut long = format!(
        "POST /reload HTTP/1.1\r\nHost: pool\r\nContent-Length: {}\r\n\r\n",
        (1 << 20) + hidden.len() + 100
    )
    .into_bytes();
    long.extend(std::iter::repeat_n(b'x', 1 << 20));
    long.extend(hidden.as_bytes());
    let chunked = format!(
        "POST /reload HTTP/1.1\r\nHost: pool\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{hidden}\r\n{hidden}",
        hidden.len()
    );
    for request in [long, chunked.into_bytes()] {
        let mut stream = stalled(&coordinator, &request);
        let answer = read_to_close(&mut stream, DEADLINE).expect("closed after its answer");
        assert_eq!(status_of(&answer), 200, "{answer}");
        assert!(answer.contains("Connection: close"), "{answer}");
        assert_eq!(answer.matches("\r\nServer: ").count(), 1, "{answer}");
    }
    // A chunked body read to its end keeps the connection for the next request.
    let whole = format!(
        "POST /reload HTTP/1.1\r\nHost: pool\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n{hidden}"
    );
    let mut stream = stalled(&coordinator, whole.as_bytes());
    let answer = read_to_close(&mut stream, DEADLINE).expect("closed after the second answer");
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 2, "{answer}");
    assert!(answer.contains("\"connections\""), "{answer}");
    // A chunk-size line is read up to 4 KiB (0.12.0 kept every byte of it until its end).
    let mut endless = b"POST /submit HTTP/1.1\r\nHost: pool\r\nContent-Type: multipart/form-data; boundary=XyZ\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    endless.extend(std::iter::repeat_n(b'0', 1 << 20));
    let mut stream = stalled(&coordinator, &endless);
    let answer = read_to_close(&mut stream, DEADLINE).expect("closed after the refusal");
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert!(
        answer.contains("chunk-size line longer than 4 KiB"),
        "{answer}"
    );
    wait_open_at_most(&coordinator, 1);
}

/// A body ends where its framing says whatever `Connection` names: `Connection: Upgrade` on a
/// submit once made the whole connection its body, so the bytes past its `Content-Length` (or
/// its last chunk) became the job's files, and a submit without a length held a handler thread
/// for as long as its client dribbled bytes.
#[test]
fn a_body_ends_at_its_framing_whatever_connection_names() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(
        &[worker.entry(2)],
        &["--client-timeout", "5", "--threads", "2"],
    );
    let part = "--zz\r\nContent-Disposition: form-data; name=\"files\"; filename=\"beyond.py\"\r\n\r\nprint(1)\r\n--zz\r\nContent-Disposition: form-data; name=\"manifest\"\r\n\r\n{\"entrypoint\":\"beyond.py\"}\r\n--zz--\r\n";
    let head =
        "POST /submit HTTP/1.1\r\nHost: pool\r\nContent-Type: multipart/form-data; boundary=zz\r\n";
    for connection in ["Upgrade", "x-no-upgrade-please"] {
        for framing in [
            "Content-Length: 5\r\n\r\nhello",
            "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ] {
            let request =
                format!("{head}Connection: {connection}\r\nUpgrade: x\r\n{framing}{part}");
            let mut stream = stalled(&coordinator, request.as_bytes());
            let answer = read_to_close(&mut stream, DEADLINE).expect("answered and closed");
            assert_eq!(status_of(&answer), 400, "{request:?}: {answer}");
        }
    }
    // Submits without a length that dribble a byte a second: each is read as bodiless and
    // answered at once, so the handlers stay free.
    let dribbling: Vec<TcpStream> = (0..4)
        .map(|_| {
            let request = format!("{head}Connection: Upgrade\r\nUpgrade: x\r\n\r\n{part}");
            stalled(&coordinator, &request.as_bytes()[..request.len() - 8])
        })
        .collect();
    answers_at_once("/pool", || get(&coordinator.url("/pool")).0);
    let (_, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(pool["total_jobs"], 0, "{pool}");
    drop(dribbling);
}

#[test]
fn a_request_head_two_parsers_could_read_two_ways_is_refused() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(&[worker.entry(2)], &["--client-timeout", "30"]);
    let head = "GET /health HTTP/1.1\r\nHost: pool\r\n";
    let cases: [(String, &str); 9] = [
        // A proxy that unfolds the line sees no body, and the chunk as a next request.
        (
            "POST /reload HTTP/1.1\r\nHost: pool\r\nX: a\r\n Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into(),
            "obsolete line folding",
        ),
        // Waited for a CRLF until the client timeout (a 408), where a proxy reads two lines.
        ("GET /health HTTP/1.1\nHost: pool\n\n".into(), "bare LF"),
        (format!("{head}X: a\nTransfer-Encoding: chunked\r\n\r\n"), "bare LF"),
        (format!("{head}X: a\rTransfer-Encoding: chunked\r\n\r\n"), "a CR that no LF follows"),
        (format!("{head}X-Forwarded-For: 10.0.0.1\0\r\n\r\n"), "control character"),
        (format!("{head}: a\r\n\r\n"), "malformed header line"),
        ("GET /health HTTP/1.1\r\n\r\n".into(), "needs a Host header"),
        (format!("{head}Host: other\r\n\r\n"), "more than one Host header"),
        ("GET /health HTTP/1.1\r\nHost: pool other\r\n\r\n".into(), "not a host name"),
    ];
    for (request, why) in cases {
        let mut stream = stalled(&coordinator, request.as_bytes());
        let answer = read_to_close(&mut stream, DEADLINE).expect("closed after its answer");
        assert_eq!(status_of(&answer), 400, "{request:?}: {answer}");
        assert!(answer.contains(why), "{request:?}: {answer}");
        assert!(answer.contains("Connection: close"), "{answer}");
        assert_eq!(answer.matches("\r\nServer: ").count(), 1, "{answer}");
    }
    // HTTP/1.0 asks for no Host.
    let mut stream = stalled(&coordinator, b"GET /health HTTP/1.0\r\n\r\n");
    let answer = read_to_close(&mut stream, DEADLINE).expect("closed after its answer");
    assert_eq!(status_of(&answer), 200, "{answer}");
    wait_open_at_most(&coordinator, 1);
    // Counted, and told in the log once a minute at most (a proxy sending such heads shows).
    let (_, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(pool["connections"]["refused_unread_requests"], 9, "{pool}");
    let (_, metrics) = get(&coordinator.url("/metrics"));
    assert!(
        metrics.contains("\ntrusted_pool_requests_refused_unread_total 9\n"),
        "{metrics}"
    );
    let logs = coordinator.logs();
    let line = "Refused a request the HTTP server could not take: 400 a header line begins with a space or tab";
    assert_eq!(logs.matches(line).count(), 1, "{logs}");
    assert_eq!(
        logs.matches("Refused a request the HTTP server").count(),
        1,
        "{logs}"
    );
}

/// Polls `/pool` until at most `open` client connections are open (its own among them).
fn wait_open_at_most(coordinator: &Coordinator, open: u64) {
    let mut last = Value::Null;
    let reached = poll_until(DEADLINE, || {
        let (_, pool) = get_json(&coordinator.url("/pool"));
        let now = pool["connections"]["open"].as_u64();
        last = pool;
        now.is_some_and(|n| n <= open).then_some(())
    });
    assert!(
        reached.is_some(),
        "still more than {open} open: {}",
        last["connections"]
    );
}

/// Past `vm.max_map_count`, a new connection's thread cannot map its signal stack and the
/// runtime aborts the process: about 16,500 idle connections ended a coordinator started with
/// `--max-connections 19000` at Linux's default of 65,530 maps. Such a setting is lowered.
#[test]
fn max_connections_beyond_the_memory_map_limit_is_lowered() {
    let Some(maps) = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|t| t.trim().parse::<u64>().ok())
    else {
        println!("SKIPPED: /proc/sys/vm/max_map_count cannot be read here");
        return;
    };
    // The coordinator's rule: 4 maps a thread beside 8,192 kept, 8 handlers, 2 threads a
    // connection.
    let room = ((maps.saturating_sub(8192) / 4).saturating_sub(8) / 2).max(1);
    let asked = 100_000_000u64;
    if room >= asked {
        println!("SKIPPED: vm.max_map_count ({maps}) leaves room for {asked} connections");
        return;
    }
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(
        &[worker.entry(2)],
        &["--threads", "8", "--max-connections", &asked.to_string()],
    );
    let (_, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(pool["connections"]["max"], room, "{pool}");
    let logs = coordinator.logs();
    assert!(
        logs.contains(&format!("--max-connections is lowered to {room}")),
        "{logs}"
    );
}

#[test]
fn each_limit_answers_its_status_code() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(
        &[worker.entry(2)],
        &[
            "--client-timeout",
            "2",
            "--max-uploads",
            "2",
            "--max-uploads-per-ip",
            "2",
        ],
    );

    let long_line = format!(
        "GET /{} HTTP/1.1\r\nHost: pool\r\n\r\n",
        "a".repeat(9 * 1024)
    );
    let mut s = stalled(&coordinator, long_line.as_bytes());
    let answer = read_to_close(&mut s, DEADLINE).expect("closed after 414");
    assert_eq!(status_of(&answer), 414, "{answer}");
    assert!(answer.contains("\"error\""), "{answer}");

    let big_header = format!(
        "GET /health HTTP/1.1\r\nHost: pool\r\nX-Big: {}\r\n\r\n",
        "b".repeat(33 * 1024)
    );
    let mut s = stalled(&coordinator, big_header.as_bytes());
    let answer = read_to_close(&mut s, DEADLINE).expect("closed after 431");
    assert_eq!(status_of(&answer), 431, "{answer}");

    let many: String = (0..101).map(|i| format!("X-H{i}: {i}\r\n")).collect();
    let many = format!("GET /health HTTP/1.1\r\nHost: pool\r\n{many}\r\n");
    let mut s = stalled(&coordinator, many.as_bytes());
    let answer = read_to_close(&mut s, DEADLINE).expect("closed after 431");
    assert_eq!(status_of(&answer), 431, "{answer}");

    // 100 fields are fine.
    let fine: String = (0..98).map(|i| format!("X-H{i}: {i}\r\n")).collect();
    let fine = format!("GET /health HTTP/1.1\r\nHost: pool\r\nConnection: close\r\n{fine}\r\n");
    let mut s = stalled(&coordinator, fine.as_bytes());
    let answer = read_to_close(&mut s, DEADLINE).expect("answered");
    assert_eq!(status_of(&answer), 200, "{answer}");

    // Two stalled uploads take both upload slots: a third is answered 503 at once.
    let first = stalled(&coordinator, &stalled_upload_start());
    let second = stalled(&coordinator, &stalled_upload_start());
    wait_taken_up(&coordinator, 2, 2);
    let mut third = stalled(&coordinator, &stalled_upload_start());
    let started = Instant::now();
    let answer = read_to_close(&mut third, DEADLINE).expect("answered");
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(answer.contains("--max-uploads"), "{answer}");
    assert!(
        started.elapsed() < AT_ONCE,
        "503 took {:?}",
        started.elapsed()
    );

    // The stalled uploads are dropped after the client timeout; then a submit goes through.
    let status = support::poll_until(DEADLINE, || {
        let (status, _) = post_multipart(&coordinator.url("/submit"), &small_job());
        (status == 200).then_some(status)
    });
    assert_eq!(
        status,
        Some(200),
        "no submit went through after the timeout"
    );
    wait_taken_up(&coordinator, 0, 0);
    drop((first, second));

    // A silent connection is closed without an answer; a dribbling one gets 408.
    let mut silent = stalled(&coordinator, b"");
    let started = Instant::now();
    let answer = read_to_close(&mut silent, DEADLINE).expect("silent connection closed");
    assert!(answer.is_empty(), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let mut dribbling = stalled(&coordinator, b"G");
    let started = Instant::now();
    let mut closed = false;
    for byte in b"ET /health HTTP/1.1\r\nX-Slow: ".iter().cycle().take(60) {
        thread::sleep(Duration::from_millis(250));
        if dribbling.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
    }
    let answer = read_to_close(&mut dribbling, DEADLINE).unwrap_or_default();
    assert!(
        closed || status_of(&answer) == 408,
        "a client dribbling its headers was not cut off: {answer:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "headers were allowed {:?}",
        started.elapsed()
    );
}

#[test]
fn connections_beyond_the_limit_are_refused() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(&[worker.entry(2)], &["--max-connections", "8"]);
    // The accept loop counts each connection as it takes it, in the order they connected: the
    // ninth is refused as soon as it is taken.
    let held: Vec<_> = (0..8)
        .map(|_| stalled(&coordinator, b"GET /health HTTP/1.1\r\n"))
        .collect();
    let mut ninth = stalled(&coordinator, b"");
    let answer = read_to_close(&mut ninth, DEADLINE).expect("refused at once");
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(answer.contains("too many connections"), "{answer}");
    let threads = coordinator.threads();
    drop(held);
    // The freed slots serve new connections again.
    let back = support::poll_until(DEADLINE, || {
        let (status, _) = get_json(&coordinator.url("/health"));
        (status == 200).then_some(())
    });
    assert!(
        back.is_some(),
        "never served again after the held connections closed"
    );
    assert!(refused_for(&coordinator, "limit") >= 1);
    assert!(coordinator.wait_for_log(
        "Refusing new connections: 8 are open, the most served at once; 1 refused since the last such line",
        DEADLINE
    ));
    if let Some(threads) = threads {
        assert!(threads < 60, "{threads} threads for 8 connections");
    }
}

/// One client address cannot take every connection: beyond `--max-connections-per-ip` a new
/// connection from it gets 503 at once, while another address is served, and a freed
/// connection lets the first address in again.
#[test]
fn connections_beyond_one_addresses_share_are_refused_and_others_are_served() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(&[worker.entry(2)], &["--max-connections-per-ip", "4"]);
    let mut held: Vec<_> = (0..4)
        .map(|_| stalled(&coordinator, b"GET /health HTTP/1.1\r\n"))
        .collect();
    let other = std::net::IpAddr::from([127, 0, 0, 2]);
    let pool = wait_held_by(&coordinator, other, "127.0.0.1", 4);
    assert_eq!(
        pool["connections"]["busiest_addresses"][0]["open"], 4,
        "{pool}"
    );
    let mut fifth = stalled(&coordinator, b"");
    let answer = read_to_close(&mut fifth, DEADLINE).expect("refused at once");
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(
        answer.contains("too many connections from your address"),
        "{answer}"
    );
    // Another address on this host is served meanwhile.
    assert_eq!(status_from_other_address(&coordinator, "/health"), 200);
    // A closed connection frees its address's slot.
    held.pop();
    let back = support::poll_until(DEADLINE, || {
        let (status, _) = get_json(&coordinator.url("/health"));
        (status == 200).then_some(())
    });
    assert!(back.is_some(), "the address was never served again");
    drop(held);
    assert!(refused_for(&coordinator, "address") >= 1);
    assert_eq!(refused_for(&coordinator, "limit"), 0);
    assert!(coordinator.wait_for_log(
        "Refusing new connections from 127.0.0.1: it has 4 open, the most one client address may hold; 1 refused",
        DEADLINE
    ));
}

#[test]
fn a_keep_alive_request_after_a_long_slow_upload_gets_its_full_timeout() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(&[worker.entry(2)], &["--client-timeout", "2"]);
    let form = small_job();
    let body = form.body();
    let head = format!(
        "POST /submit HTTP/1.1\r\nHost: pool\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
        form.content_type(),
        body.len()
    );
    let mut s = stalled(&coordinator, head.as_bytes());
    // The body arrives in pieces, each silence under the timeout, longer than it in all.
    let pieces = body.chunks(body.len().div_ceil(5)).collect::<Vec<_>>();
    for piece in pieces {
        thread::sleep(Duration::from_millis(900));
        s.write_all(piece).expect("send a piece");
    }
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    while !String::from_utf8_lossy(&answer).contains("\"queued\"") {
        match s.read(&mut byte) {
            Ok(1) => answer.push(byte[0]),
            other => panic!(
                "no submit answer: {other:?} after {:?}",
                String::from_utf8_lossy(&answer)
            ),
        }
    }
    assert_eq!(status_of(&String::from_utf8_lossy(&answer)), 200);
    thread::sleep(Duration::from_millis(1000));
    s.write_all(b"GET /health HTTP/1.1\r\nHost: pool\r\nConnection: close\r\n\r\n")
        .expect("second request");
    let rest = read_to_close(&mut s, DEADLINE).expect("second answer");
    let second = rest.trim_start_matches(|c: char| c != 'H');
    assert_eq!(status_of(second), 200, "{rest:?}");
}

/// A coordinator started with an open-file limit of `soft` (hard limit `hard`), as under a
/// shell's `ulimit -n`; with the temp dir it runs in.
fn start_with_open_files(
    worker: &FakeWorker,
    soft: u64,
    hard: u64,
    args: &[&str],
) -> (tempfile::TempDir, Coordinator) {
    use std::os::unix::process::CommandExt;
    let dir = support::workers_dir(&[worker.entry(2)]);
    let coordinator = Coordinator::try_start_in_with(dir.path(), args, |command| {
        let limit = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: the child only calls setrlimit, which is async-signal-safe, before exec.
        unsafe {
            command.pre_exec(move || {
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    (dir, coordinator)
}

/// `GET /health` succeeds within `deadline` (connections may be refused meanwhile).
fn healthy_again(coordinator: &Coordinator, deadline: Duration) -> bool {
    poll_until(deadline, || {
        let reply = send("GET", &coordinator.url("/health"), None).ok()?;
        (reply.status == 200).then_some(())
    })
    .is_some()
}

/// How often the coordinator logged `needle`.
fn logged(coordinator: &Coordinator, needle: &str) -> usize {
    coordinator.logs().matches(needle).count()
}

/// Waits (with a deadline) until the coordinator reads at least `open` connections, and
/// `/pool` and `/metrics` both count `uploads` request bodies being received; panics with what
/// they said last.
fn wait_taken_up(coordinator: &Coordinator, open: u64, uploads: u64) {
    let mut last = (Value::Null, String::new());
    let line = format!("trusted_pool_uploads_receiving {uploads}");
    let reached = poll_until(DEADLINE, || {
        let (_, pool) = get_json(&coordinator.url("/pool"));
        let (_, metrics) = get(&coordinator.url("/metrics"));
        let taken = pool["connections"]["open"].as_u64() >= Some(open)
            && pool["uploads_receiving"] == uploads
            && metrics.lines().any(|l| l == line);
        last = (pool, metrics);
        taken.then_some(())
    });
    assert!(
        reached.is_some(),
        "never {open} connections open and {uploads} uploads receiving: /pool said {}, /metrics:\n{}",
        last.0,
        last.1
    );
}

/// New connections are answered `503 too many connections` at once. One may still be served
/// first, by a connection thread or a descriptor that an earlier connection freed a moment ago:
/// each such connection is held and the next one tried. Returns those held, for the caller to
/// close with the others when the spell should end.
fn refused_at_once(coordinator: &Coordinator) -> Vec<TcpStream> {
    let mut served = Vec::new();
    while served.len() < 20 {
        let mut late = stalled(coordinator, b"GET /health HTTP/1.1\r\n");
        let started = Instant::now();
        let Some(answer) = read_to_close(&mut late, AT_ONCE) else {
            served.push(late);
            continue;
        };
        assert_eq!(status_of(&answer), 503, "{answer}");
        assert!(answer.contains("too many connections"), "{answer}");
        assert!(started.elapsed() < AT_ONCE, "{:?}", started.elapsed());
        return served;
    }
    panic!(
        "20 new connections were served, none refused:\n{}",
        coordinator.logs()
    );
}

/// Once the spell is over, the coordinator serves again and runs a job with an upload; it
/// logged the spell of `error` once or a few times, not once per refused connection.
/// Returns the job's id.
fn serves_again_after_one_spell(coordinator: &Coordinator, error: &str) -> String {
    assert!(
        healthy_again(coordinator, DEADLINE),
        "never served again after the spell:\n{}",
        coordinator.logs()
    );
    let id = submit(coordinator, &upload_job());
    wait_collected(coordinator, &id, DEADLINE);
    let spells = logged(coordinator, &format!("Cannot serve a connection: {error}"));
    assert!((1..=3).contains(&spells), "{}", coordinator.logs());
    assert!(
        logged(coordinator, "Serving connections again") >= 1,
        "{}",
        coordinator.logs()
    );
    id
}

/// A job whose 100 KiB upload is read on an upload thread (not with its headers).
fn upload_job() -> Form {
    Form::new()
        .file("main.py", "text/x-python", b"print('hello')\n")
        .file("pad.bin", "application/octet-stream", &[7u8; 100 << 10])
        .manifest(r#"{"entrypoint": "main.py"}"#)
}

#[test]
fn running_out_of_file_descriptors_refuses_connections_and_serving_resumes() {
    let worker = FakeWorker::start();
    let (_dir, coordinator) = start_with_open_files(&worker, 96, 96, &[]);
    assert!(
        coordinator
            .logs()
            .contains("The open-file limit (96) leaves room for about"),
        "{}",
        coordinator.logs()
    );
    // Idle connections use the descriptors up; the later ones are refused with 503.
    let held: Vec<_> = (0..150).map(|_| stalled(&coordinator, b"")).collect();
    let served = refused_at_once(&coordinator);
    drop((held, served));
    // 0.12.0's accept loop ended at the first EMFILE: the server never answered again.
    serves_again_after_one_spell(&coordinator, "Too many open files");
    assert!(refused_for(&coordinator, "shortage") > 0);
}

/// Connections refused for `reason` so far, as `/metrics` counts them (and `/pool` the same).
/// Each is asked until it is answered: connections a test just closed may still count against
/// its address for a moment, and the ask would be refused too.
fn refused_for(coordinator: &Coordinator, reason: &str) -> u64 {
    let answered = |path: &str| {
        support::poll_until(DEADLINE, || {
            let (status, body) = get(&coordinator.url(path));
            (status == 200).then_some(body)
        })
        .unwrap_or_else(|| panic!("{path} was never answered 200"))
    };
    let metrics = answered("/metrics");
    let line = format!("trusted_pool_connections_refused_total{{reason=\"{reason}\"}} ");
    let counted = metrics
        .lines()
        .find_map(|l| l.strip_prefix(line.as_str())?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no {line} in /metrics:\n{metrics}"));
    let pool: Value = serde_json::from_str(&answered("/pool"))
        .unwrap_or_else(|e| panic!("/pool is not JSON: {e}"));
    let field = match reason {
        "limit" => "refused_over_limit",
        "address" => "refused_for_address",
        "proxy_header" => "refused_without_proxy_header",
        _ => "refused_for_shortage",
    };
    assert_eq!(pool["connections"][field], counted, "{pool}");
    counted
}

/// Sends `method path` on a kept-alive connection and reads its answer: status and body.
fn ask_on(stream: &mut TcpStream, method: &str, path: &str) -> (u16, String) {
    let request = format!("{method} {path} HTTP/1.1\r\nHost: pool\r\nContent-Length: 0\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("an answer");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or_else(|| panic!("no Content-Length in {head}"));
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("the body");
    (status_of(&head), String::from_utf8_lossy(&body).to_string())
}

#[test]
fn running_out_of_descriptors_neither_blames_the_worker_nor_loses_its_jobs() {
    // Polled, not streamed: each poll needs a new connection to the worker. The job runs long
    // enough that its polls still come once the descriptors are gone, on a loaded machine too.
    let worker = FakeWorker::start_with(|k| {
        k.job_duration = Duration::from_secs(15);
        k.stream.disabled = true;
    });
    let args = ["--lost-after", "1", "--health-interval", "1"];
    let (_dir, coordinator) = start_with_open_files(&worker, 96, 96, &args);
    let running = submit(&coordinator, &small_job());
    let on_worker = poll_until(DEADLINE, || {
        job_status(&coordinator, &running)["remote_job_id"]
            .is_string()
            .then_some(())
    });
    assert!(on_worker.is_some(), "{}", coordinator.logs());
    let (code, body) = post(
        &drain_url(&coordinator, &worker, "drain"),
        "text/plain",
        b"",
    );
    assert_eq!(code, 200, "{body}");
    let queued = submit(&coordinator, &small_job());
    let mut kept = stalled(&coordinator, b"");
    assert_eq!(ask_on(&mut kept, "GET", "/health").0, 200);

    let held: Vec<_> = (0..150).map(|_| stalled(&coordinator, b"")).collect();
    let served = refused_at_once(&coordinator);
    let undrain = drain_url(&coordinator, &worker, "undrain");
    let undrain = undrain.trim_start_matches(&coordinator.url(""));
    let (code, body) = ask_on(&mut kept, "POST", undrain);
    assert_eq!(code, 200, "{body}");
    // The probes, the running job's polls and the queued job's dispatch all fail for want of
    // a descriptor; each is told apart from a worker's fault.
    let excused = [
        "Could not probe worker",
        "Could not ask the worker of job",
        "could not be sent: the coordinator is short of resources",
    ];
    let seen = poll_until(DEADLINE, || {
        let logs = coordinator.logs();
        excused.iter().all(|line| logs.contains(line)).then_some(())
    });
    assert!(seen.is_some(), "{}", coordinator.logs());
    // The queued job waits at the head of the queue, held back, while the worker stays healthy.
    let pool = poll_until(DEADLINE, || {
        let (code, pool) = ask_on(&mut kept, "GET", "/pool");
        assert_eq!(code, 200, "{pool}");
        let pool: Value = serde_json::from_str(&pool).expect("JSON");
        pool["dispatch_held"]["why"].is_string().then_some(pool)
    })
    .unwrap_or_else(|| panic!("dispatching was never held:\n{}", coordinator.logs()));
    assert_eq!(pool_worker(&pool, &worker)["is_healthy"], true, "{pool}");
    assert_eq!(pool["jobs_by_status"]["lost"], 0, "{pool}");
    // An upload too large to be held in memory finds no descriptor for its file: 503, try
    // again shortly (it was 500).
    let upload = upload_job();
    let head = format!(
        "POST /submit HTTP/1.1\r\nHost: pool\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
        upload.content_type(),
        upload.body().len()
    );
    kept.write_all(head.as_bytes()).expect("send the head");
    let _ = kept.write_all(&upload.body());
    let answer = read_to_close(&mut kept, DEADLINE).expect("an answer");
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(answer.contains("short of descriptors"), "{answer}");
    assert!(answer.contains("Retry-After"), "{answer}");
    worker.set(|k| k.job_duration = Duration::ZERO);
    drop((held, served));

    assert!(
        healthy_again(&coordinator, DEADLINE),
        "{}",
        coordinator.logs()
    );
    for id in [&running, &queued] {
        let status = wait_collected(&coordinator, id, DEADLINE);
        assert_eq!(status["status"], "completed", "{status}");
        assert_eq!(status["attempts"], serde_json::json!([]), "{status}");
    }
    let logs = coordinator.logs();
    assert!(!logs.contains("is now unhealthy"), "{logs}");
    let (_, metrics) = get(&coordinator.url("/metrics"));
    let shortages = metrics
        .lines()
        .find_map(|l| l.strip_prefix("trusted_pool_health_probes_total{result=\"shortage\"} "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(shortages.is_some_and(|n| n >= 1), "{metrics}");
}

/// A connection that streams a file (a download from a results segment, an upload to the
/// spool) holds two descriptors, so the start-up check counts two per connection: under a
/// limit of 600 it called 300 connections enough (600 less the 256 kept aside), and 290
/// stalled downloads then ran the descriptors out.
#[test]
fn the_open_file_limit_is_checked_at_two_descriptors_a_connection() {
    let worker = FakeWorker::start();
    let connections = |max: &str| {
        let args = ["--max-connections", max, "--max-connections-per-ip", max];
        let (_dir, coordinator) = start_with_open_files(&worker, 600, 600, &args);
        coordinator.logs()
    };
    let logs = connections("300");
    assert!(
        logs.contains(
            "The open-file limit (600) leaves room for about 172 client connections, fewer than --max-connections 300"
        ),
        "{logs}"
    );
    let logs = connections("172");
    assert!(!logs.contains("leaves room for about"), "{logs}");
}

#[test]
fn a_low_open_file_limit_is_raised_to_its_hard_limit() {
    // A hard limit above the test's own would need privileges; 4096 or the test's own.
    // SAFETY: getrlimit writes into the zeroed struct we own.
    let mut own: libc::rlimit = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut own) }, 0);
    let hard = own.rlim_max.min(4096);
    if hard < 1024 {
        eprintln!("SKIPPED: this process may not open 1024 files (hard limit {hard})");
        return;
    }
    let worker = FakeWorker::start();
    let (_dir, coordinator) = start_with_open_files(&worker, 64, hard, &[]);
    let logs = coordinator.logs();
    assert!(
        logs.contains(&format!("Open-file limit raised from 64 to {hard}")),
        "{logs}"
    );
    let (status, metrics) = get(&coordinator.url("/metrics"));
    assert_eq!(status, 200, "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l == format!("process_max_fds {hard}")),
        "{metrics}"
    );
    // 100 idle connections fit now; under 64 descriptors they would not. The accept loop takes
    // them in order, before the one that asks for /health.
    let held: Vec<_> = (0..100).map(|_| stalled(&coordinator, b"")).collect();
    answers_at_once("/health", || get_json(&coordinator.url("/health")).0);
    drop(held);
    assert_eq!(logged(&coordinator, "Cannot serve a connection"), 0);
}

/// A pids cgroup (v1 or v2) holding one process, so that the threads it may start can be
/// capped; the process is moved back and the cgroup removed when dropped.
struct ThreadLimit {
    dir: std::path::PathBuf,
    parent_procs: std::path::PathBuf,
}

impl ThreadLimit {
    /// Moves `pid` into a new pids cgroup; `None` (with why) where that cannot be done here.
    fn around(pid: u32) -> Result<ThreadLimit, String> {
        let v1 = std::path::Path::new("/sys/fs/cgroup/pids");
        let v2 = std::path::Path::new("/sys/fs/cgroup");
        let base = if v1.join("cgroup.procs").exists() {
            v1
        } else {
            let controllers = std::fs::read_to_string(v2.join("cgroup.controllers"))
                .map_err(|e| format!("no pids cgroup controller: {e}"))?;
            if !controllers.split_whitespace().any(|c| c == "pids") {
                return Err("no pids cgroup controller".to_string());
            }
            std::fs::write(v2.join("cgroup.subtree_control"), "+pids")
                .map_err(|e| format!("cannot enable the pids controller: {e}"))?;
            v2
        };
        let dir = base.join(format!("trusted-pool-test-{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("cannot make a cgroup: {e}"))?;
        let limit = ThreadLimit {
            dir,
            parent_procs: base.join("cgroup.procs"),
        };
        std::fs::write(limit.dir.join("cgroup.procs"), pid.to_string())
            .map_err(|e| format!("cannot move the coordinator into a cgroup: {e}"))?;
        Ok(limit)
    }

    /// Caps the threads at `max` (`None`: no cap).
    fn cap(&self, max: Option<u64>) {
        let max = max.map_or("max".to_string(), |m| m.to_string());
        std::fs::write(self.dir.join("pids.max"), max).expect("pids.max");
    }
}

impl Drop for ThreadLimit {
    fn drop(&mut self) {
        let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.split_whitespace() {
            let _ = std::fs::write(&self.parent_procs, pid);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn without_threads_to_start_requests_are_refused_with_503_and_serving_resumes() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(&[worker.entry(2)], &[]);
    let done = submit(&coordinator, &small_job());
    wait_collected(&coordinator, &done, DEADLINE);
    let limit = match ThreadLimit::around(coordinator.pid()) {
        Ok(limit) => limit,
        Err(why) => {
            eprintln!("SKIPPED: {why}; the thread-exhaustion test did not run");
            return;
        }
    };
    // Not one more thread, and a cap below the threads it has: a thread that ends meanwhile (a
    // connection thread idle for 5 s, a probe, a dispatch) makes no room for a new one. The
    // idle connection threads still serve quick requests.
    limit.cap(Some(1));
    assert!(
        healthy_again(&coordinator, DEADLINE),
        "{}",
        coordinator.logs()
    );
    // An upload needs an upload thread, a follower its own thread: each is refused with 503.
    let (status, body) = post_multipart(&coordinator.url("/submit"), &upload_job());
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no thread to read the upload"), "{body}");
    let (status, body) = get(&coordinator.url(&format!("/logs/{done}?follow=1")));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no thread to follow the job"), "{body}");
    // Connections beyond the idle connection threads are refused with 503.
    let held: Vec<_> = (0..40)
        .map(|_| stalled(&coordinator, b"GET /health HTTP/1.1\r\n"))
        .collect();
    let served = refused_at_once(&coordinator);

    limit.cap(None);
    drop((held, served));
    // 0.12.0's accept loop panicked when it could not start a thread: never served again.
    let id = serves_again_after_one_spell(&coordinator, "Resource temporarily unavailable");
    let (status, body) = get(&coordinator.url(&format!("/logs/{id}?follow=1")));
    assert_eq!(status, 200, "{body}");
}

/// `GET path` from 127.0.0.2 (another client address on this host): its status.
fn status_from_other_address(coordinator: &Coordinator, path: &str) -> u16 {
    status_from_with(
        coordinator,
        std::net::IpAddr::from([127, 0, 0, 2]),
        path,
        "",
    )
}

/// Under `--max-requests-per-ip`, an address that asks faster than its rate gets 429 with
/// `Retry-After` (its burst first), while another address, and `/health` from it, are served;
/// once its bucket refilled it is served again, and `/pool` and `/metrics` count the refusals.
#[test]
fn requests_beyond_one_addresses_rate_are_answered_429_and_others_are_served() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(&[worker.entry(2)], &["--max-requests-per-ip", "5"]);
    // Its burst of 5 is served, then it is refused (well before 200 requests, however slow
    // this machine).
    let mut served = 0;
    let refused = (0..200)
        .map(|_| {
            support::send("GET", &coordinator.url("/jobs"), None).unwrap_or_else(|e| panic!("{e}"))
        })
        .find(|reply| {
            served += usize::from(reply.status == 200);
            reply.status != 200
        })
        .unwrap_or_else(|| panic!("never refused"));
    assert!(served >= 5, "{served} served before the first refusal");
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert!(
        refused.text().contains("--max-requests-per-ip"),
        "{}",
        refused.text()
    );
    let retry: u64 = refused
        .header("Retry-After")
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    // Load balancers' probes are never counted; another address has its own rate.
    assert_eq!(get_json(&coordinator.url("/health")).0, 200);
    assert_eq!(status_from_other_address(&coordinator, "/pool"), 200);
    // Its bucket refills: served again (a request now and then).
    let served_again = |path: &str| {
        support::poll_until(DEADLINE, || {
            thread::sleep(Duration::from_millis(300));
            let (status, body) = support::get(&coordinator.url(path));
            (status == 200).then_some(body)
        })
    };
    let pool = served_again("/pool").unwrap_or_else(|| panic!("never served again"));
    let pool: serde_json::Value = serde_json::from_str(&pool).unwrap_or_default();
    let counted = pool["requests"]["refused_for_rate"].as_u64().unwrap_or(0);
    assert!(counted >= 1, "{pool}");
    assert_eq!(pool["requests"]["max_per_ip_per_second"], 5, "{pool}");
    let metrics = served_again("/metrics").unwrap_or_default();
    let in_metrics = metrics
        .lines()
        .find_map(|l| l.strip_prefix("trusted_pool_requests_refused_for_rate_total "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(in_metrics >= Some(counted), "{metrics}");
    assert!(
        coordinator
            .logs()
            .contains("Refusing requests from 127.0.0.1: more than --max-requests-per-ip 5"),
        "{}",
        coordinator.logs()
    );
}

/// `GET path` from `from` with the extra header lines `headers` (each ending in CRLF): its
/// status.
fn status_from_with(
    coordinator: &Coordinator,
    from: std::net::IpAddr,
    path: &str,
    headers: &str,
) -> u16 {
    status_of(&answer_from(coordinator, from, path, headers))
}

/// `/pool` asked from address `from`.
fn pool_from(coordinator: &Coordinator, from: std::net::IpAddr) -> Value {
    let answer = answer_from(coordinator, from, "/pool", "");
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

/// `/pool` asked from address `from`, once its `connections.busiest_addresses` shows
/// `address` holding `open` connections.
fn wait_held_by(
    coordinator: &Coordinator,
    from: std::net::IpAddr,
    address: &str,
    open: u64,
) -> Value {
    let mut last = Value::Null;
    let held = poll_until(DEADLINE, || {
        let pool = pool_from(coordinator, from);
        let busiest = pool["connections"]["busiest_addresses"].as_array().cloned();
        last = pool;
        busiest?
            .iter()
            .any(|b| b["address"] == address && b["open"] == open)
            .then(|| last.clone())
    });
    held.unwrap_or_else(|| panic!("{address} never held {open} connections: /pool said {last}"))
}

/// The whole answer to `GET path` from address `from`, with `headers` added.
fn answer_from(
    coordinator: &Coordinator,
    from: std::net::IpAddr,
    path: &str,
    headers: &str,
) -> String {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: pool\r\n{headers}Connection: close\r\n\r\n");
    let mut stream = stalled_from(coordinator, from, request.as_bytes());
    read_to_close(&mut stream, DEADLINE).expect("answered")
}

/// The access log at `path` once a line holds `needle`.
fn access_log_once(path: &std::path::Path, needle: &str) -> String {
    support::poll_until(DEADLINE, || {
        let text = std::fs::read_to_string(path).ok()?;
        text.lines().any(|l| l.contains(needle)).then_some(text)
    })
    .unwrap_or_else(|| panic!("no {needle:?} in the access log"))
}

/// Behind a reverse proxy listed in `--trusted-proxies`, each client its `X-Forwarded-For`
/// names has a request rate of its own, and is the address the access log and the log name
/// (a client's own `X-Forwarded-For` entries, left of the proxy's, change nothing); the header
/// from an address that is not a trusted proxy is ignored.
#[test]
fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_rate() {
    let worker = FakeWorker::start();
    let dir = support::temp_dir();
    let access = dir.path().join("access.log");
    let access_arg = access.to_string_lossy().into_owned();
    let coordinator = Coordinator::start(
        &[worker.entry(2)],
        &[
            "--max-requests-per-ip",
            "5",
            "--trusted-proxies",
            "127.0.0.1,10.0.0.0/8",
            "--access-log",
            &access_arg,
        ],
    );
    assert!(coordinator.wait_for_log(
        "Client addresses of requests from 127.0.0.1/32, 10.0.0.0/8 are read from their X-Forwarded-For",
        DEADLINE
    ));
    let forwarded = |chain: &str| {
        support::send_with(
            "GET",
            &coordinator.url("/jobs"),
            &[("X-Forwarded-For", chain)],
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    };
    // The client 198.51.100.7, which sent an X-Forwarded-For of its own, through two proxies.
    let refused = (0..200)
        .map(|_| forwarded("6.6.6.6, 198.51.100.7, 10.1.1.1"))
        .find(|reply| reply.status != 200)
        .unwrap_or_else(|| panic!("never refused"));
    assert_eq!(refused.status, 429, "{}", refused.text());
    // Another client behind the same proxy, and the proxy's own requests, are served.
    assert_eq!(forwarded("198.51.100.8").status, 200);
    assert_eq!(support::get(&coordinator.url("/jobs")).0, 200);
    assert!(coordinator.wait_for_log(
        "Refusing requests from 198.51.100.7: more than --max-requests-per-ip 5",
        DEADLINE
    ));
    // 127.0.0.2 is no trusted proxy: what it says it forwards for is not believed.
    let stranger = std::net::IpAddr::from([127, 0, 0, 2]);
    let status = status_from_with(
        &coordinator,
        stranger,
        "/pool",
        "X-Forwarded-For: 198.51.100.9\r\n",
    );
    assert_eq!(status, 200);
    let lines = access_log_once(&access, " 127.0.0.2 - GET \"/pool\" 200 ");
    for line in [
        " 198.51.100.7 - GET \"/jobs\" 200 ",
        " 198.51.100.7 - GET \"/jobs\" 429 ",
        " 198.51.100.8 - GET \"/jobs\" 200 ",
        " 127.0.0.1 - GET \"/jobs\" 200 ",
    ] {
        assert!(lines.contains(line), "no {line:?} in\n{lines}");
    }
    for never in ["6.6.6.6", "10.1.1.1", "198.51.100.9"] {
        assert!(!lines.contains(never), "{never} in\n{lines}");
    }
    let pool = get_json(&coordinator.url("/pool")).1;
    assert_eq!(
        pool["requests"]["trusted_proxies"],
        serde_json::json!(["127.0.0.1/32", "10.0.0.0/8"]),
        "{pool}"
    );
}

/// A connection from `from` that sent `bytes` and waits.
fn stalled_from(coordinator: &Coordinator, from: std::net::IpAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = coordinator.connect_from(from);
    stream.write_all(bytes).expect("send");
    stream
}

/// One client address cannot take every upload place: with `--max-uploads 4` (two per
/// address), a third stalled upload from 127.0.0.1 is answered 503 at once naming
/// `--max-uploads-per-ip`, while 127.0.0.2's submit of more than 16 KiB is received and
/// queued. (Four such uploads from one address shut every other client's submits out for as
/// long as they dawdled.)
#[test]
fn one_address_cannot_take_every_upload_place() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(&[worker.entry(2)], &["--max-uploads", "4"]);
    let local = std::net::IpAddr::from([127, 0, 0, 1]);
    let other = std::net::IpAddr::from([127, 0, 0, 2]);
    let held: Vec<TcpStream> = (0..2)
        .map(|_| stalled_from(&coordinator, local, &stalled_upload_start()))
        .collect();
    wait_taken_up(&coordinator, 2, 2);
    let mut third = stalled_from(&coordinator, local, &stalled_upload_start());
    let answer = read_to_close(&mut third, DEADLINE).expect("answered");
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(answer.contains("--max-uploads-per-ip"), "{answer}");
    assert!(answer.contains("Retry-After: 1"), "{answer}");

    let form = Form::new()
        .file("main.py", "text/x-python", b"print(1)\n")
        .file("data.bin", "application/octet-stream", &[7u8; 40 * 1024]);
    let body = form.body();
    let head = format!(
        "POST /submit HTTP/1.1\r\nHost: pool\r\nConnection: close\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
        form.content_type(),
        body.len()
    );
    let mut submit = stalled_from(&coordinator, other, head.as_bytes());
    submit.write_all(&body).expect("send the body");
    let answer = read_to_close(&mut submit, DEADLINE).expect("answered");
    assert_eq!(status_of(&answer), 200, "{answer}");
    drop(held);
}

/// A trusted proxy's connections carry many clients: they count against `--max-connections`
/// only, not against one address's share, which still holds every other address.
#[test]
fn a_trusted_proxy_may_hold_more_connections_than_one_addresses_share() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(
        &[worker.entry(2)],
        &[
            "--max-connections-per-ip",
            "3",
            "--trusted-proxies",
            "127.0.0.2",
        ],
    );
    let proxy = std::net::IpAddr::from([127, 0, 0, 2]);
    let held: Vec<_> = (0..6)
        .map(|_| stalled_from(&coordinator, proxy, b"GET /health HTTP/1.1\r\n"))
        .collect();
    wait_taken_up(&coordinator, 7, 0);
    assert_eq!(status_from_with(&coordinator, proxy, "/health", ""), 200);
    // Any other address is still held to its share; the proxy holds none.
    let others: Vec<_> = (0..3)
        .map(|_| stalled(&coordinator, b"GET /health HTTP/1.1\r\n"))
        .collect();
    let pool = wait_held_by(&coordinator, proxy, "127.0.0.1", 3);
    let busiest = pool["connections"]["busiest_addresses"].as_array();
    assert_eq!(busiest.map(Vec::len), Some(1), "{pool}");
    let mut fourth = stalled(&coordinator, b"");
    let answer = read_to_close(&mut fourth, DEADLINE).expect("refused at once");
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(
        answer.contains("too many connections from your address"),
        "{answer}"
    );
    drop(others);
    // Asked from the proxy: an ask from 127.0.0.1 while its closed connections still count
    // against its share would be refused, and counted, too.
    let pool = pool_from(&coordinator, proxy);
    assert_eq!(pool["connections"]["refused_for_address"], 1, "{pool}");
    assert!(coordinator.wait_for_log(
        "Client addresses of requests from 127.0.0.2/32 are read from their X-Forwarded-For (--trusted-proxies); their connections count against --max-connections only",
        DEADLINE
    ));
    drop(held);
}

/// A version 2 PROXY header: `command` 0x21 (PROXY) or 0x20 (LOCAL), for `client` (IPv4 or
/// IPv6) to the coordinator's port.
fn proxy_v2(command: u8, client: std::net::SocketAddr, port: u16) -> Vec<u8> {
    let mut addresses = Vec::new();
    let family = match client.ip() {
        std::net::IpAddr::V4(ip) => {
            addresses.extend_from_slice(&ip.octets());
            addresses.extend_from_slice(&[127, 0, 0, 1]);
            0x11
        }
        std::net::IpAddr::V6(ip) => {
            addresses.extend_from_slice(&ip.octets());
            addresses.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
            0x21
        }
    };
    addresses.extend_from_slice(&client.port().to_be_bytes());
    addresses.extend_from_slice(&port.to_be_bytes());
    support::proxy_v2_header(command, family, &addresses)
}

/// Under `--proxy-protocol`, each connection from a trusted proxy begins with a PROXY header
/// (version 1 or 2) naming its client: that client is the address of its requests (in the
/// access log) and holds its own share of connections. A connection from the proxy without
/// the header is closed with a 400 and counted, one that sends nothing by the client timeout
/// (one closed at once, a port check, is not counted); a PROXY line from any other address is
/// not believed.
#[test]
fn behind_a_proxy_protocol_proxy_each_client_is_its_own_address() {
    let worker = FakeWorker::start();
    let dir = support::temp_dir();
    let access = dir.path().join("access.log");
    let access_arg = access.to_string_lossy().into_owned();
    let coordinator = Coordinator::start(
        &[worker.entry(2)],
        &[
            "--max-connections-per-ip",
            "2",
            "--trusted-proxies",
            "127.0.0.2",
            "--proxy-protocol",
            "--client-timeout",
            "8",
            "--access-log",
            &access_arg,
        ],
    );
    assert!(coordinator.wait_for_log(
        "Connections from 127.0.0.2/32 must begin with a PROXY protocol header (--proxy-protocol)",
        DEADLINE
    ));
    let port = coordinator.port();
    let proxy = std::net::IpAddr::from([127, 0, 0, 2]);
    let ask = |header: &[u8], path: &str| {
        let mut bytes = header.to_vec();
        bytes.extend_from_slice(
            format!("GET {path} HTTP/1.1\r\nHost: pool\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        let mut stream = stalled_from(&coordinator, proxy, &bytes);
        read_to_close(&mut stream, DEADLINE).expect("answered")
    };
    let v1 = format!("PROXY TCP4 203.0.113.7 127.0.0.1 51000 {port}\r\n");
    assert_eq!(status_of(&ask(v1.as_bytes(), "/jobs")), 200);
    let v2 = proxy_v2(0x21, "[2001:db8::9]:443".parse().expect("addr"), port);
    assert_eq!(status_of(&ask(&v2, "/pool")), 200);
    // An IPv6 client's connections count against its /64.
    let mut opening = v2.clone();
    opening.extend_from_slice(b"GET /health HTTP/1.1\r\n");
    let v6_held = stalled_from(&coordinator, proxy, &opening);
    let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
    wait_held_by(&coordinator, loopback, "2001:db8::/64", 1);
    drop(v6_held);
    // The proxy's own health check (LOCAL) keeps the proxy's address.
    let local = proxy_v2(0x20, "127.0.0.2:1".parse().expect("addr"), port);
    assert_eq!(status_of(&ask(&local, "/health")), 200);
    let plain = ask(b"", "/health");
    assert_eq!(status_of(&plain), 400, "{plain}");
    assert!(
        plain.contains("must begin with a PROXY protocol header"),
        "{plain}"
    );
    assert!(coordinator.wait_for_log(
        "Closing a connection from 127.0.0.2, whose connections must each begin with a PROXY protocol header: it did not begin with one (version 1 or 2)",
        DEADLINE
    ));
    // A PROXY line from an address that is no trusted proxy names nobody.
    let mut spoof = stalled(
        &coordinator,
        b"PROXY TCP4 6.6.6.6 127.0.0.1 1 2\r\nGET /jobs HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    let spoofed = read_to_close(&mut spoof, DEADLINE).expect("answered");
    assert_ne!(status_of(&spoofed), 200, "{spoofed}");

    // Each client behind the proxy holds its own share of connections.
    let start = |client: &str| {
        let mut bytes = format!("PROXY TCP4 {client} 127.0.0.1 40000 {port}\r\n").into_bytes();
        bytes.extend_from_slice(b"GET /health HTTP/1.1\r\n");
        stalled_from(&coordinator, proxy, &bytes)
    };
    let held = [start("198.51.100.1"), start("198.51.100.1")];
    wait_held_by(&coordinator, loopback, "198.51.100.1", 2);
    let mut third = start("198.51.100.1");
    let answer = read_to_close(&mut third, DEADLINE).expect("refused at once");
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(
        answer.contains("too many connections from your address"),
        "{answer}"
    );
    let other = format!("PROXY TCP4 198.51.100.2 127.0.0.1 40000 {port}\r\n");
    assert_eq!(status_of(&ask(other.as_bytes(), "/health")), 200);
    drop(held);
    assert!(coordinator.wait_for_log(
        "Refusing new connections from 198.51.100.1: it has 2 open",
        DEADLINE
    ));
    assert_eq!(refused_for(&coordinator, "address"), 1);

    // A balancer's port check (a connection closed without a byte) is no refusal; a proxy
    // connection that sends nothing is closed by the client timeout.
    drop(stalled_from(&coordinator, proxy, b""));
    let mut silent = stalled_from(&coordinator, proxy, b"");
    let began = Instant::now();
    let closed = read_to_close(&mut silent, DEADLINE).expect("closed by the client timeout");
    assert!(closed.is_empty(), "{closed}");
    assert!(
        began.elapsed() >= Duration::from_secs(4),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(refused_for(&coordinator, "proxy_header"), 2);

    let lines = access_log_once(&access, " 198.51.100.2 - GET \"/health\" 200 ");
    for line in [
        " 203.0.113.7 - GET \"/jobs\" 200 ",
        " 2001:db8::9 - GET \"/pool\" 200 ",
        " 127.0.0.2 - GET \"/health\" 200 ",
    ] {
        assert!(lines.contains(line), "no {line:?} in\n{lines}");
    }
    assert!(!lines.contains("6.6.6.6"), "{lines}");
    // From 127.0.0.1, which holds 2 connections at most: on a loaded machine the test's last
    // ones may not have ended on the coordinator's side yet.
    let pool = poll_until(DEADLINE, || {
        let (code, pool) = get_json(&coordinator.url("/pool"));
        (code == 200).then_some(pool)
    })
    .unwrap_or_default();
    assert_eq!(pool["requests"]["proxy_protocol"], true, "{pool}");

    let refused = Coordinator::try_start_in(dir.path(), &["--proxy-protocol"])
        .err()
        .unwrap_or_default();
    assert!(
        refused.contains("--proxy-protocol: needs --trusted-proxies"),
        "{refused}"
    );
}

/// A submit's body that stalls past `--client-timeout` is answered 408, and one whose
/// connection ends before its `Content-Length` or last chunk 400, each saying so, whether the
/// body is read with its headers (at most 16 KiB) or streamed. Before: the streamed ones got 400
/// "malformed or truncated: Resource temporarily unavailable" or "a part's headers are too
/// large", the small ones no answer at all.
#[test]
fn a_body_that_stalls_or_ends_early_is_answered_why() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(&[worker.entry(2)], &["--client-timeout", "1"]);
    let head = |framing: &str| {
        format!(
            "POST /submit HTTP/1.1\r\nHost: pool\r\n\
             Content-Type: multipart/form-data; boundary=XyZ\r\n{framing}\r\n\r\n"
        )
        .into_bytes()
    };
    let part =
        b"--XyZ\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.py\"\r\n\r\n";
    let streamed = [&head("Content-Length: 30000")[..], part, &[b'x'; 2000]].concat();
    let inline = [&head("Content-Length: 1000")[..], part].concat();
    let chunk_size = format!("{:x}\r\n", part.len() + 100).into_bytes();
    let chunked = [&head("Transfer-Encoding: chunked")[..], &chunk_size, part].concat();
    let stalled_body = "the body stalled";
    let cut_body = "the body ended before its Content-Length";
    let cases = [
        (
            "a streamed body that stalls",
            &streamed,
            false,
            408,
            stalled_body,
        ),
        ("a streamed body cut short", &streamed, true, 400, cut_body),
        (
            "a small body that stalls",
            &inline,
            false,
            408,
            stalled_body,
        ),
        ("a small body cut short", &inline, true, 400, cut_body),
        (
            "a chunked body cut short",
            &chunked,
            true,
            400,
            "the body ended before its last chunk",
        ),
    ];
    for (case, bytes, ends, status, needle) in cases {
        let mut stream = stalled(&coordinator, bytes);
        if ends {
            stream
                .shutdown(std::net::Shutdown::Write)
                .expect("shutdown");
        }
        let answer = read_to_close(&mut stream, DEADLINE)
            .unwrap_or_else(|| panic!("{case}: the connection stayed open"));
        assert_eq!(status_of(&answer), status, "{case}: {answer}");
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let error: Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("{case}: not a JSON answer ({e}): {answer}"));
        let error = error["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(needle),
            "{case}: {error:?} does not say {needle:?}"
        );
    }
}
