//! `Idempotency-Key` on `POST /submit` through the real coordinator binary: a client that
//! retries a submit whose answer it never got is answered the job the first attempt made (also
//! after a `kill -9` and a restart), never a second job; the same key with other files or
//! options is refused (422); a retry that overtakes its first attempt is told to wait (409);
//! a deleted job frees its key; a malformed key is refused (400).

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use support::lifecycle::{job_status, wait_collected, wait_committed, wait_healthy};
use support::{
    get, get_json, poll_until, send, send_with, write_workers_json, Coordinator, FakeWorker, Form,
    Knobs, Reply,
};

const DEADLINE: Duration = Duration::from_secs(60);
const FAST: [&str; 4] = ["--health-interval", "1", "--track-interval", "0.05"];
const KEY: &str = "Idempotency-Key";

/// A fake worker without sandrun's per-IP limits.
fn roomy(k: &mut Knobs) {
    k.max_active_per_ip = 1000;
    k.max_jobs_per_hour = 1_000_000;
    k.cpu_seconds_per_minute = 1e9;
    k.cpu_seconds = 0.0;
    k.poll_interval = Duration::from_millis(5);
}

/// A job whose single file carries `token`, in a form with `boundary` (a client draws a new
/// boundary for every attempt).
fn job(boundary: &str, token: &str) -> Form {
    Form::with_boundary(boundary)
        .file(
            "main.py",
            "text/x-python",
            format!("print('{token}')\n").as_bytes(),
        )
        .manifest(r#"{"entrypoint":"main.py"}"#)
}

/// `POST /submit` of `form` with these extra headers (and query).
fn submit_with(
    coordinator: &Coordinator,
    query: &str,
    headers: &[(&str, &str)],
    form: &Form,
) -> Reply {
    let body = form.body();
    send_with(
        "POST",
        &coordinator.url(&format!("/submit{query}")),
        headers,
        Some((&form.content_type(), &body)),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The job id of a 200 answer.
fn job_id(reply: &Reply) -> String {
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no job_id in {}", reply.text()))
        .to_string()
}

/// How often each file text reached the worker.
fn received(worker: &FakeWorker) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for job in worker.recording().jobs {
        for file in job.files.iter().filter(|f| f.filename == "main.py") {
            *seen
                .entry(String::from_utf8_lossy(&file.bytes).into_owned())
                .or_insert(0) += 1;
        }
    }
    seen
}

/// The value of a metric without labels.
fn metric(coordinator: &Coordinator, name: &str) -> Option<f64> {
    let (code, text) = get(&coordinator.url("/metrics"));
    assert_eq!(code, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_repeated_key_is_answered_the_first_job_and_never_makes_a_second() {
    let worker = FakeWorker::start_with(roomy);
    let dir = support::temp_dir();
    write_workers_json(dir.path(), &[worker.entry(2)]);
    let mut coordinator = Coordinator::start_in(dir.path(), &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);

    let first = submit_with(&coordinator, "", &[(KEY, "order-1")], &job("b1", "one"));
    let id = job_id(&first);
    assert_eq!(first.header("Idempotent-Replayed"), None);
    // The same submit again, with another multipart boundary: the same job.
    let again = submit_with(&coordinator, "", &[(KEY, "order-1")], &job("b2", "one"));
    assert_eq!(job_id(&again), id);
    assert_eq!(again.header("Idempotent-Replayed"), Some("true"));
    // The IETF draft's quoted form names the same key.
    let quoted = submit_with(&coordinator, "", &[(KEY, "\"order-1\"")], &job("b3", "one"));
    assert_eq!(job_id(&quoted), id);

    // The same key with another file, or with other options: refused, naming the job.
    for (query, form) in [("", job("b4", "two")), ("?priority=high", job("b5", "one"))] {
        let reused = submit_with(&coordinator, query, &[(KEY, "order-1")], &form);
        assert_eq!(reused.status, 422, "{}", reused.text());
        let error = reused.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(error.contains(&id) && error.contains("new key"), "{error}");
    }
    // Another key makes another job; a malformed key is refused.
    let other = job_id(&submit_with(
        &coordinator,
        "",
        &[(KEY, "order-2")],
        &job("b6", "two"),
    ));
    assert_ne!(other, id);
    for bad in ["has space", &"k".repeat(256)] {
        let refused = submit_with(&coordinator, "", &[(KEY, bad)], &job("b7", "three"));
        assert_eq!(refused.status, 400, "{}", refused.text());
        assert!(
            refused.text().contains("Idempotency-Key"),
            "{}",
            refused.text()
        );
    }

    let status = wait_collected(&coordinator, &id, DEADLINE);
    assert_eq!(status["idempotency_key"], "order-1", "{status}");
    let done = submit_with(&coordinator, "", &[(KEY, "order-1")], &job("b8", "one"));
    assert_eq!(job_id(&done), id);
    assert_eq!(done.json()["status"], "completed", "{}", done.text());
    assert_eq!(
        metric(&coordinator, "trusted_pool_submits_repeated_total"),
        Some(3.0)
    );
    assert!(coordinator.wait_for_log("A submit repeated the Idempotency-Key of job", DEADLINE));

    // The key is in the job store: it holds across a kill -9 and a restart (once both jobs'
    // ends are committed: a job whose worker answer was never recorded is lost at a restart).
    wait_collected(&coordinator, &other, DEADLINE);
    let settled = "SELECT count(*) FROM jobs WHERE finished_at IS NOT NULL";
    wait_committed(&coordinator, settled, 2, DEADLINE);
    coordinator.kill();
    let mut restarted = Coordinator::start_in(dir.path(), &FAST);
    let after = submit_with(&restarted, "", &[(KEY, "order-1")], &job("b9", "one"));
    assert_eq!(job_id(&after), id);
    assert_eq!(after.header("Idempotent-Replayed"), Some("true"));
    assert_eq!(
        received(&worker),
        BTreeMap::from([
            ("print('one')\n".to_string(), 1),
            ("print('two')\n".to_string(), 1)
        ])
    );

    // A deleted job frees its key: the next submit with it makes a new job.
    let deleted = send("DELETE", &restarted.url(&format!("/jobs/{id}")), None)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    let fresh = job_id(&submit_with(
        &restarted,
        "",
        &[(KEY, "order-1")],
        &job("b10", "one"),
    ));
    assert_ne!(fresh, id);
    assert_eq!(job_status(&restarted, &fresh)["idempotency_key"], "order-1");
    restarted.terminate(DEADLINE);
}

#[test]
fn a_retry_that_overtakes_its_first_attempt_waits_for_it() {
    let worker = FakeWorker::start_with(roomy);
    let dir = support::temp_dir();
    write_workers_json(dir.path(), &[worker.entry(2)]);
    let coordinator = Coordinator::start_in(dir.path(), &FAST);
    wait_healthy(&coordinator, &[&worker], DEADLINE);

    // The first attempt sends its headers and half its body, then stalls.
    let data: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
    let form = job("slow", "slow").file("data.bin", "application/octet-stream", &data);
    let body = form.body();
    let (half, rest) = body.split_at(body.len() / 2);
    let mut first = TcpStream::connect((Ipv4Addr::LOCALHOST, coordinator.port()))
        .unwrap_or_else(|e| panic!("{e}"));
    first
        .set_read_timeout(Some(DEADLINE))
        .unwrap_or_else(|e| panic!("{e}"));
    let head = format!(
        "POST /submit HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{KEY}: slow-1\r\n\
         Content-Type: {}\r\nContent-Length: {}\r\n\r\n",
        form.content_type(),
        body.len()
    );
    first
        .write_all(head.as_bytes())
        .and_then(|()| first.write_all(half))
        .unwrap_or_else(|e| panic!("{e}"));
    // The first attempt holds its key before it reads its body; once that body spilled to an
    // upload segment (past 64 KiB), it is being received. (Retrying before that would race
    // the first for the key.)
    let uploads = coordinator.state_dir().join("uploads");
    let receiving = poll_until(DEADLINE, || {
        let segments = std::fs::read_dir(&uploads).ok()?.count();
        (segments > 0).then_some(())
    });
    assert!(
        receiving.is_some(),
        "the first attempt's body never reached the spool"
    );
    // A retry with the same key, while the first is received, is told to ask again.
    let busy = send_with(
        "POST",
        &coordinator.url("/submit"),
        &[(KEY, "slow-1")],
        Some(("text/plain", b"not yet")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(busy.status, 409, "{}", busy.text());
    assert_eq!(busy.header("Retry-After"), Some("1"));
    assert!(busy.text().contains("being received"), "{}", busy.text());

    first.write_all(rest).unwrap_or_else(|e| panic!("{e}"));
    let answer = support::lifecycle::read_reply(&mut first).unwrap_or_else(|e| panic!("{e}"));
    let id = job_id(&answer);
    let retry = submit_with(&coordinator, "", &[(KEY, "slow-1")], &form);
    assert_eq!(job_id(&retry), id);
    let (code, jobs) = get_json(&coordinator.url("/jobs"));
    assert_eq!(code, 200, "{jobs}");
    let listed = jobs["jobs"].as_array().map_or(0, Vec::len);
    assert_eq!(listed, 1, "{jobs}");
    let status: Value = wait_collected(&coordinator, &id, DEADLINE);
    assert_eq!(status["pool_status"], "completed", "{status}");
}
