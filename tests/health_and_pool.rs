//! The worker table and health checking through the real binary: `/pool`, the coordinator's own
//! `/health`, routing errors, identity and reachability failures, recovery after a restart, and
//! one concurrent probe round for 200 workers of which 20 never answer.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use support::health_only::HealthOnly;
use support::lifecycle::{exchange, get_raw};
use support::{get_json, poll_until, send, BlackHole, Coordinator, FakeWorker, WorkerKey};

/// Deadline for anything that should happen within a few health rounds.
const DEADLINE: Duration = Duration::from_secs(30);

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn short(worker_id: &str) -> &str {
    &worker_id[..12]
}

fn pool(coordinator: &Coordinator) -> Value {
    let (status, body) = get_json(&coordinator.url("/pool"));
    assert_eq!(status, 200, "/pool answered {body}");
    body
}

/// The `/pool` row of this worker.
fn row<'a>(pool: &'a Value, worker_id: &str) -> &'a Value {
    pool["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["worker_id"] == worker_id)
        .unwrap_or_else(|| panic!("{worker_id} is not in /pool: {pool}"))
}

fn failures(row: &Value) -> u64 {
    row["consecutive_failures"].as_u64().unwrap_or(0)
}

/// How many lines of the log contain `needle`.
fn count_lines(logs: &str, needle: &str) -> usize {
    logs.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn a_healthy_pool_reports_every_worker_and_no_jobs() {
    let a = FakeWorker::start();
    let b = FakeWorker::start();
    let started = unix_now();
    let coordinator = Coordinator::start(&[a.entry(2), b.entry(3)], &["--health-interval", "1"]);
    let logs = coordinator.logs();
    for worker in [&a, &b] {
        let added = format!(
            "Added trusted worker: {}... at {}",
            short(&worker.worker_id()),
            worker.endpoint()
        );
        assert_eq!(count_lines(&logs, &added), 1, "no `{added}` in:\n{logs}");
    }

    let pool = poll_until(DEADLINE, || {
        let pool = pool(&coordinator);
        (pool["healthy_workers"] == 2).then_some(pool)
    })
    .unwrap_or_else(|| panic!("the workers never became healthy:\n{}", coordinator.logs()));
    assert_eq!(pool["total_workers"], 2);
    assert_eq!(pool["total_jobs"], 0);
    assert_eq!(pool["queued_jobs"], 0);
    let rows = pool["workers"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for (row, (worker, max)) in rows.iter().zip([(&a, 2), (&b, 3)]) {
        assert_eq!(row["worker_id"], worker.worker_id(), "{row}");
        assert_eq!(row["endpoint"], worker.endpoint(), "{row}");
        assert_eq!(row["is_healthy"], true, "{row}");
        assert_eq!(row["active_jobs"], 0, "{row}");
        assert_eq!(row["max_concurrent_jobs"], max, "{row}");
        assert_eq!(row["last_error"], Value::Null, "{row}");
        assert!(row["last_health_check"].is_f64(), "{row}");
        let checked = row["last_health_check"].as_f64().unwrap();
        assert!(
            checked >= started - 1.0 && checked <= unix_now() + 1.0,
            "last_health_check {checked} is not a unix time of this run (started {started}): {row}"
        );
        let healthy = format!(
            "Worker {}... is healthy at {}",
            short(&worker.worker_id()),
            worker.endpoint()
        );
        assert!(
            coordinator.wait_for_log(&healthy, DEADLINE),
            "no `{healthy}` in:\n{}",
            coordinator.logs()
        );
    }
    assert!(a.recording().count("GET", "health") >= 1);
    assert!(b.recording().count("GET", "health") >= 1);
}

#[test]
fn the_coordinator_answers_health_and_json_errors_for_bad_routes() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(&[worker.entry(2)], &[]);
    let health = send("GET", &coordinator.url("/health"), None).unwrap();
    assert_eq!(health.status, 200, "{}", health.text());
    assert!(health
        .header("Content-Type")
        .is_some_and(|t| t.starts_with("application/json")));
    assert_eq!(health.json()["status"], "healthy", "{}", health.text());

    for path in [
        "/nope",
        "/status/",
        "/pool/extra",
        "/status/a/b",
        "/stats/x",
        "/download/",
    ] {
        let reply = send("GET", &coordinator.url(path), None).unwrap();
        assert_eq!(reply.status, 404, "GET {path}: {}", reply.text());
        assert!(
            reply.json()["error"].is_string(),
            "GET {path}: {}",
            reply.text()
        );
    }
    // The 404's hint names every endpoint.
    let reply = send("GET", &coordinator.url("/nope"), None).unwrap();
    let hint = reply.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for endpoint in [
        "/,",
        "/submit",
        "/status/ID",
        "/outputs/ID",
        "/logs/ID",
        "/logs/ID?follow=1",
        "/stream/ID",
        "/download/ID",
        "/jobs,",
        "/cancel/ID",
        "/cancel?status=",
        "DELETE /jobs/ID",
        "/jobs/ID/priority",
        "/workers/ID/drain",
        "/workers/ID/undrain",
        "/submits/pause",
        "/submits/resume",
        "/log-level",
        "/reload",
        "/stats",
        "/pool",
        "/activity",
        "/dashboard",
        "/metrics",
        "/snapshot",
        "/health",
        "/ready",
    ] {
        assert!(hint.contains(endpoint), "{endpoint} is not in {hint}");
    }
    // A trailing slash after an endpoint is named as what is wrong.
    for path in [
        "/status/pool-0123/",
        "/logs/pool-0123//",
        "/workers/abc/drain/",
    ] {
        let reply = send("GET", &coordinator.url(path), None).unwrap();
        let trimmed = path.trim_end_matches('/');
        let said = format!("no such endpoint: {path}; without its trailing '/', {trimmed} is one");
        assert_eq!(
            (reply.status, reply.json()["error"].as_str()),
            (404, Some(said.as_str())),
            "GET {path}"
        );
    }
    let wrong_methods = [
        ("GET", "/submit", "POST"),
        ("HEAD", "/submit", "POST"),
        ("POST", "/pool", "GET, HEAD"),
        ("POST", "/health", "GET, HEAD"),
        ("PUT", "/pool", "GET, HEAD"),
        ("DELETE", "/status/pool-0123", "GET, HEAD"),
        ("POST", "/outputs/pool-0123", "GET, HEAD"),
        ("DELETE", "/logs/pool-0123", "GET, HEAD"),
        ("POST", "/logs/pool-0123?follow=1", "GET"),
        ("POST", "/", "GET, HEAD"),
        ("POST", "/download/pool-0123", "GET, HEAD"),
        ("GET", "/jobs/pool-0123", "DELETE"),
    ];
    for (method, path, allowed) in wrong_methods {
        let reply = send(method, &coordinator.url(path), None).unwrap();
        assert_eq!(reply.status, 405, "{method} {path}: {}", reply.text());
        assert_eq!(reply.header("Allow"), Some(allowed), "{method} {path}");
        if method != "HEAD" {
            assert!(
                reply.json()["error"].is_string(),
                "{method} {path}: {}",
                reply.text()
            );
        }
    }
    // `GET /jobs` lists jobs, so a reader tries `GET /jobs/ID`: the 405 points at the job's
    // status, not only at the DELETE that would remove it.
    let reply = send("GET", &coordinator.url("/jobs/pool-0123"), None).unwrap();
    assert_eq!(reply.status, 405, "{}", reply.text());
    assert_eq!(reply.header("Allow"), Some("DELETE"));
    let why = reply.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        why.contains("to read the job, use GET /status/pool-0123") && why.contains("DELETE"),
        "{why}"
    );
    // A target in absolute form, which a server must accept (RFC 9112, section 3.2.2).
    let absolute = format!("http://127.0.0.1:{}/health", coordinator.port());
    let reply = get_raw(coordinator.port(), &absolute);
    assert_eq!(reply.status, 200, "GET {absolute}: {}", reply.text());
    // An OPTIONS without Origin is no CORS preflight: it asks which methods an endpoint takes
    // (HAProxy's default health check is `OPTIONS /`).
    for (path, allowed) in [
        ("/", "GET, HEAD, OPTIONS"),
        ("/submit", "POST, OPTIONS"),
        ("/logs/pool-0123?follow=1", "GET, OPTIONS"),
    ] {
        let reply = send("OPTIONS", &coordinator.url(path), None).unwrap();
        assert_eq!(reply.status, 204, "OPTIONS {path}: {}", reply.text());
        assert_eq!(reply.header("Allow"), Some(allowed), "OPTIONS {path}");
    }
    // `*` asks about the server as a whole, which only OPTIONS does; CONNECT asks a proxy.
    for (line, code, answer) in [
        (
            "OPTIONS * HTTP/1.1",
            204,
            "Allow: GET, HEAD, POST, DELETE, OPTIONS",
        ),
        ("GET * HTTP/1.1", 400, "only OPTIONS does"),
        (
            "CONNECT 127.0.0.1:443 HTTP/1.1",
            405,
            "CONNECT is not served",
        ),
    ] {
        let reply = exchange(coordinator.port(), &format!("{line}\r\n"), b"")
            .unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(reply.status, code, "{line}: {}", reply.text());
        let head: Vec<String> = reply
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {v}"))
            .collect();
        assert!(
            head.iter().any(|h| h == answer) || reply.text().contains(answer),
            "{line}: {head:?} {}",
            reply.text()
        );
    }
    // Every 405 names the methods allowed, CONNECT's too: those of the endpoint it names, or
    // for a host and port every method some endpoint takes.
    for (line, allowed) in [
        (
            "CONNECT 127.0.0.1:443 HTTP/1.1",
            "GET, HEAD, POST, DELETE, OPTIONS",
        ),
        ("CONNECT /pool HTTP/1.1", "GET, HEAD"),
    ] {
        let reply = exchange(coordinator.port(), &format!("{line}\r\n"), b"")
            .unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(reply.status, 405, "{line}: {}", reply.text());
        assert_eq!(reply.header("Allow"), Some(allowed), "{line}");
    }
    let (status, body) = get_json(&coordinator.url("/pool"));
    assert_eq!(status, 200, "the coordinator stopped serving: {body}");
}

/// Reads one answer to `/health` (its head and its 64-byte body) from `stream`.
fn health_answer(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => answer.push(byte[0]),
            other => panic!("the answer ended early ({other:?}): {answer:?}"),
        }
    }
    let head = String::from_utf8_lossy(&answer).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no length: {head}"));
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("body");
    head
}

#[test]
fn an_answer_says_what_becomes_of_its_connection() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(&[worker.entry(2)], &[]);
    let connect = || {
        let stream = TcpStream::connect(("127.0.0.1", coordinator.port())).expect("connect");
        stream
            .set_read_timeout(Some(DEADLINE))
            .expect("read timeout");
        stream
    };
    // An HTTP/1.0 client that asks to keep its connection is told it is kept (it took the
    // connection for closed), and is served again on it.
    let mut stream = connect();
    for _ in 0..2 {
        stream
            .write_all(b"GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .expect("send");
        let head = health_answer(&mut stream);
        assert!(head.contains("\r\nConnection: keep-alive\r\n"), "{head}");
    }
    // A client that asks to close is told so, and the connection ends.
    let mut stream = connect();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: pool\r\nConnection: close\r\n\r\n")
        .expect("send");
    let head = health_answer(&mut stream);
    assert!(head.contains("\r\nConnection: close\r\n"), "{head}");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("closed");
    assert!(rest.is_empty(), "{rest:?}");
    // A kept HTTP/1.1 connection needs no word.
    let mut stream = connect();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: pool\r\n\r\n")
        .expect("send");
    let head = health_answer(&mut stream);
    assert!(!head.contains("Connection:"), "{head}");
}

#[test]
fn failing_workers_are_never_healthy_and_each_failure_is_told_apart() {
    let good = FakeWorker::start();
    let impostor = FakeWorker::start_with(|k| k.wrong_worker_id = true);
    let anonymous = FakeWorker::start_with(|k| k.anonymous = true);
    let sick = FakeWorker::start_with(|k| k.fail_health = true);
    let stopped = FakeWorker::start();
    stopped.stop();
    let hung = FakeWorker::start_with(|k| k.hang = true);
    let failing = [&impostor, &anonymous, &sick, &stopped, &hung];
    // The stopped worker is listed on port 1: a port the system never hands out for port 0,
    // so no fake worker started meanwhile (here or by another test) answers there, as one did
    // once on the stopped worker's freed port.
    let entries: Vec<_> = [&good]
        .iter()
        .chain(&failing)
        .map(|w| {
            if std::ptr::eq(*w, &stopped) {
                (w.worker_id(), "http://127.0.0.1:1".to_string(), 2)
            } else {
                w.entry(2)
            }
        })
        .collect();
    let coordinator = Coordinator::start(
        &entries,
        &["--health-interval", "1", "--health-timeout", "1"],
    );

    let pool = poll_until(DEADLINE, || {
        let pool = pool(&coordinator);
        for worker in failing {
            let row = row(&pool, &worker.worker_id());
            assert_eq!(row["is_healthy"], false, "{row}");
        }
        let probed_thrice = failing
            .iter()
            .all(|w| failures(row(&pool, &w.worker_id())) >= 3);
        (probed_thrice && pool["healthy_workers"] == 1).then_some(pool)
    })
    .unwrap_or_else(|| {
        panic!(
            "no three failed probes of each failing worker:\n{}",
            coordinator.logs()
        )
    });
    assert_eq!(row(&pool, &good.worker_id())["is_healthy"], true);
    let error = |worker: &FakeWorker| -> String {
        let row = row(&pool, &worker.worker_id());
        row["last_error"]
            .as_str()
            .unwrap_or_else(|| panic!("no last_error: {row}"))
            .to_string()
    };

    let impostor_error = error(&impostor);
    let expected = format!(
        "identity mismatch: allowlisted worker_id {}, worker reports {}",
        impostor.worker_id(),
        impostor.impostor_id()
    );
    assert!(impostor_error.contains(&expected), "{impostor_error}");
    let anonymous_error = error(&anonymous);
    let expected_anonymous = format!(
        "identity mismatch: allowlisted worker_id {}, worker reports null",
        anonymous.worker_id()
    );
    assert!(
        anonymous_error.contains(&expected_anonymous),
        "{anonymous_error}"
    );
    let sick_error = error(&sick);
    assert!(sick_error.contains("503"), "{sick_error}");
    let stopped_error = error(&stopped);
    assert!(stopped_error.starts_with("unreachable"), "{stopped_error}");
    assert!(stopped_error.contains("refused"), "{stopped_error}");
    let hung_error = error(&hung);
    assert!(hung_error.starts_with("unreachable"), "{hung_error}");
    for other in [&sick_error, &stopped_error, &hung_error] {
        assert!(!other.contains("identity"), "{other}");
    }
    assert!(!sick_error.contains("unreachable"), "{sick_error}");
    assert!(!impostor_error.contains("unreachable"), "{impostor_error}");

    let logs = coordinator.logs();
    for (worker, why) in [
        (&impostor, expected.as_str()),
        (&anonymous, expected_anonymous.as_str()),
        (&sick, "503"),
        (&stopped, "unreachable"),
        (&hung, "unreachable"),
    ] {
        let id = short(&worker.worker_id()).to_string();
        let unhealthy = format!("Worker {id}... is now unhealthy: ");
        assert_eq!(
            count_lines(&logs, &unhealthy),
            1,
            "`{unhealthy}` should be logged once over several failed probes:\n{logs}"
        );
        let line = logs.lines().find(|l| l.contains(&unhealthy)).unwrap();
        assert!(line.contains(why), "`{line}` does not say {why}");
        assert_eq!(
            count_lines(&logs, &format!("Worker {id}... is healthy")),
            0,
            "{logs}"
        );
    }
}

#[test]
fn a_dead_worker_goes_unhealthy_and_is_back_soon_after_a_restart() {
    let worker = FakeWorker::start();
    let other = FakeWorker::start();
    let coordinator = Coordinator::start(
        &[worker.entry(2), other.entry(2)],
        &["--health-interval", "1"],
    );
    let id = short(&worker.worker_id()).to_string();
    let healthy = format!("Worker {id}... is healthy at {}", worker.endpoint());
    assert!(
        coordinator.wait_for_log(&healthy, DEADLINE),
        "{}",
        coordinator.logs()
    );

    worker.stop();
    let down = poll_until(DEADLINE, || {
        let pool = pool(&coordinator);
        let row = row(&pool, &worker.worker_id()).clone();
        (row["is_healthy"] == false && failures(&row) >= 3).then_some(row)
    })
    .unwrap_or_else(|| {
        panic!(
            "the stopped worker was not probed unhealthy three times:\n{}",
            coordinator.logs()
        )
    });
    assert!(
        down["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("unreachable")),
        "{down}"
    );
    let unhealthy = format!("Worker {id}... is now unhealthy: unreachable");
    assert_eq!(
        count_lines(&coordinator.logs(), &unhealthy),
        1,
        "the change should be logged once:\n{}",
        coordinator.logs()
    );
    assert_eq!(
        row(&pool(&coordinator), &other.worker_id())["is_healthy"],
        true
    );

    worker.restart();
    let restarted = Instant::now();
    let again = format!("Worker {id}... is healthy again at {}", worker.endpoint());
    assert!(
        coordinator.wait_for_log(&again, DEADLINE),
        "{}",
        coordinator.logs()
    );
    let back_after = restarted.elapsed();
    assert!(
        back_after < Duration::from_secs(10),
        "the restarted worker took {back_after:?} to be healthy again"
    );
    let pool = pool(&coordinator);
    let up = row(&pool, &worker.worker_id());
    assert_eq!(up["is_healthy"], true, "{up}");
    assert_eq!(up["last_error"], Value::Null, "{up}");
    assert_eq!(up["consecutive_failures"], 0, "{up}");
    assert_eq!(pool["healthy_workers"], 2);
    let logs = coordinator.logs();
    assert_eq!(count_lines(&logs, &unhealthy), 1, "{logs}");
    assert_eq!(count_lines(&logs, &again), 1, "{logs}");
}

#[test]
fn two_hundred_workers_with_twenty_black_holes_are_probed_in_about_one_timeout() {
    const TIMEOUT: f64 = 2.0;
    let healthy: Vec<HealthOnly> = (0..180).map(|_| HealthOnly::start()).collect();
    let holes: Vec<BlackHole> = (0..20).map(|_| BlackHole::start()).collect();
    let mut entries: Vec<(String, String, u32)> = healthy.iter().map(|w| w.entry(2)).collect();
    let hole_ids: Vec<String> = (0..holes.len())
        .map(|_| WorkerKey::generate().unwrap().worker_id())
        .collect();
    for (i, (hole, id)) in holes.iter().zip(&hole_ids).enumerate() {
        entries.insert(i * 10, (id.clone(), hole.endpoint(), 2));
    }
    let started = unix_now();
    let coordinator = Coordinator::start(
        &entries,
        &["--health-timeout", "2", "--health-interval", "600"],
    );

    let pool = poll_until(Duration::from_secs(60), || {
        let pool = pool(&coordinator);
        let holes_checked = hole_ids
            .iter()
            .all(|id| !row(&pool, id)["last_health_check"].is_null());
        (pool["healthy_workers"] == 180 && holes_checked).then_some(pool)
    })
    .unwrap_or_else(|| {
        panic!(
            "the first probe round did not complete: {}",
            pool(&coordinator)
        )
    });
    assert_eq!(pool["total_workers"], 200);
    for id in &hole_ids {
        let row = row(&pool, id);
        assert_eq!(row["is_healthy"], false, "{row}");
        assert!(
            row["last_error"]
                .as_str()
                .is_some_and(|e| e.starts_with("unreachable")),
            "{row}"
        );
    }
    for hole in &holes {
        assert!(hole.connections() >= 1, "a black hole was never probed");
    }
    for worker in &healthy {
        assert_eq!(row(&pool, worker.worker_id())["is_healthy"], true);
    }

    // `state_since` is when the first probe of a worker completed (it turned healthy, or was
    // found failing), and it stays put while the state does.
    let first_results: Vec<f64> = pool["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row["state_since"]
                .as_f64()
                .unwrap_or_else(|| panic!("no state_since: {row}"))
        })
        .collect();
    let earliest = first_results.iter().copied().fold(f64::INFINITY, f64::min);
    let latest = first_results.iter().copied().fold(0.0, f64::max);
    assert!(
        latest - earliest < 1.5 * TIMEOUT + 2.0,
        "first probe results spread over {:.2} s: probes did not run concurrently",
        latest - earliest
    );
    assert!(
        latest - started < 2.0 * TIMEOUT + 8.0,
        "the first round ended {:.2} s after start (20 sequential timeouts would be {} s)",
        latest - started,
        20.0 * TIMEOUT
    );
    assert!(
        latest - started >= TIMEOUT * 0.9,
        "the black holes were given up on after {:.2} s, before the {TIMEOUT} s timeout",
        latest - started
    );
}

/// `/ready` as a load balancer polls it: the reasons a submit now would not be taken and run.
fn ready(coordinator: &Coordinator) -> (u16, Value) {
    get_json(&coordinator.url("/ready"))
}

/// Polls `/ready` until its answer has this status and, for a 503, names `reason`.
fn wait_ready(coordinator: &Coordinator, status: u16, reason: &str) -> Value {
    let mut last = Value::Null;
    poll_until(DEADLINE, || {
        let (code, body) = ready(coordinator);
        last = body.clone();
        let named = body["reasons"].as_array().is_some_and(|r| {
            r.iter()
                .any(|r| r.as_str().is_some_and(|r| r.contains(reason)))
        });
        (code == status && (status == 200 || named)).then_some(body)
    })
    .unwrap_or_else(|| panic!("/ready never answered {status} naming {reason:?}: {last}"))
}

/// `GET /ready` answers 200 while a submit would be taken and run, and 503 with every reason
/// while not: no worker healthy and in service (here: drained), the queue full. Without a key,
/// like `/health`.
#[test]
fn ready_answers_503_with_its_reasons_while_a_submit_would_not_be_taken_and_run() {
    let worker = FakeWorker::start();
    let coordinator = Coordinator::start(
        &[worker.entry(1)],
        &["--health-interval", "1", "--max-queued-jobs", "2"],
    );
    let fine = wait_ready(&coordinator, 200, "");
    assert_eq!(fine, serde_json::json!({"ready": true}));

    let drain = |action: &str| {
        let url = coordinator.url(&format!(
            "/workers/{}/{action}",
            worker.worker_id().replace('+', "-").replace('/', "_")
        ));
        let reply = send("POST", &url, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reply.status, 200, "{}", reply.text());
    };
    drain("drain");
    let drained = wait_ready(&coordinator, 503, "no worker is healthy and in service");
    assert!(
        drained["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("not ready: ")),
        "{drained}"
    );
    let form = support::Form::new().file("main.py", "text/x-python", b"print(1)\n");
    for _ in 0..2 {
        support::lifecycle::submit(&coordinator, &form);
    }
    let full = wait_ready(&coordinator, 503, "the queue is full");
    assert_eq!(full["reasons"].as_array().map(Vec::len), Some(2), "{full}");
    // `/stats`, where a sandrun client looks before it submits, says so too (it said
    // `can_submit: true` while the next submit was a 503).
    let (_, stats) = get_json(&coordinator.url("/stats"));
    assert_eq!(stats["your_quota"]["can_submit"], false, "{stats}");
    assert_eq!(
        stats["your_quota"]["reason"],
        "a submit is refused now: the queue is full (--max-queued-jobs)",
        "{stats}"
    );

    drain("undrain");
    wait_ready(&coordinator, 200, "");
    worker.stop();
    wait_ready(&coordinator, 503, "no worker is healthy and in service");
}

/// A request that reaches the coordinator while it starts (its port open, its job store still
/// being recovered) is answered once it serves: a health check sent the moment the port
/// accepts gets its 200. (Its request waited in a queue nothing read any more: 14 of 20 such
/// starts left it unanswered.)
#[test]
fn a_request_sent_while_the_coordinator_starts_is_answered() {
    let worker = FakeWorker::start();
    for round in 0..8 {
        let dir = support::temp_dir();
        support::write_workers_json(dir.path(), &[worker.entry(1)]);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("a free port: {e}"));
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_trusted-pool"))
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--workers",
            ])
            .arg(dir.path().join("workers.json"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start the coordinator: {e}"));
        // At once: the port accepts from its bind, before the coordinator serves.
        let started = Instant::now();
        let stream = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Ok(stream) => break Some(stream),
                Err(_) if started.elapsed() < DEADLINE => {
                    std::thread::sleep(Duration::from_micros(200))
                }
                Err(_) => break None,
            }
        };
        let answer = stream.map(|mut stream| {
            let _ = stream.set_read_timeout(Some(DEADLINE));
            let _ = stream
                .write_all(b"GET /health HTTP/1.1\r\nHost: pool\r\nConnection: close\r\n\r\n");
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            answer
        });
        let _ = child.kill();
        let _ = child.wait();
        let answer = answer.unwrap_or_default();
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "start {round}: the health check sent at once got {answer:?}"
        );
    }
}
