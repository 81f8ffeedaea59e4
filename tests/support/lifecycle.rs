//! Helpers of the job-lifecycle tests: submitting and following jobs on a coordinator, checking
//! that `/pool` adds up, and raw HTTP/1.1 exchanges over a plain TCP stream (request targets go
//! out exactly as written, where an HTTP library would normalize `..` and `%2e%2e` away; headers
//! are hand-made; bodies may be chunked, short or longer than announced).

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpStream};
use std::thread;
use std::time::Duration;

use serde_json::Value;

use super::client::{get_json, post_multipart, Reply};
use super::coordinator::Coordinator;
use super::fake_worker::FakeWorker;
use super::form::Form;
use super::util::poll_until;

/// Asserts the spool holds no upload: none in memory or waiting (`/pool`'s `spool`), no file in
/// `uploads/`. Polled for a while: a job that may run again after a lost run keeps its upload
/// until its settled record commits, a moment after `/pool` counts it completed.
pub fn assert_no_uploads(coordinator: &Coordinator, why: &str) {
    let dir = coordinator.state_dir().join("uploads");
    let look = || {
        let (status, pool) = get_json(&coordinator.url("/pool"));
        assert_eq!(status, 200, "{pool}");
        let files: Vec<String> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
            .filter_map(|entry| Some(entry.ok()?.file_name().to_string_lossy().into_owned()))
            .collect();
        (pool, files)
    };
    let gone = |(pool, files): &(Value, Vec<String>)| {
        let spool = &pool["spool"];
        files.is_empty()
            && spool["uploads_in_memory"] == 0
            && spool["upload_memory_bytes"] == 0
            && spool["uploads_on_disk"] == 0
    };
    let went = poll_until(std::time::Duration::from_secs(30), || {
        gone(&look()).then_some(())
    });
    let (pool, files) = look();
    assert!(
        went.is_some(),
        "{why}: {files:?} in {} (spool: {})",
        dir.display(),
        pool["spool"]
    );
}

/// Submits a form to the coordinator, asserts it was queued, and returns the job id.
pub fn submit(coordinator: &Coordinator, form: &Form) -> String {
    let (status, body) = post_multipart(&coordinator.url("/submit"), form);
    let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    assert_eq!(status, 200, "submit answered {status}: {body}");
    assert_eq!(answer["status"], "queued", "{body}");
    let id = answer["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no job_id in {body}"));
    assert!(id.starts_with("pool-"), "job id {id}");
    id.to_string()
}

/// Waits until `count` (an SQL query of one count over the job store) is `wanted` in the
/// coordinator's job store, read-only: what is committed, which a `kill -9` keeps, where the
/// table (and so `/status`) may be a moment ahead. Panics after `deadline`.
pub fn wait_committed(coordinator: &Coordinator, count: &str, wanted: i64, deadline: Duration) {
    let db = coordinator.state_dir().join("jobs.db");
    let mut last = None;
    let reached = poll_until(deadline, || {
        let conn =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .ok()?;
        last = conn.query_row(count, [], |r| r.get::<_, i64>(0)).ok();
        (last == Some(wanted)).then_some(())
    });
    assert!(
        reached.is_some(),
        "{count} was {last:?}, not {wanted}, after {deadline:?}"
    );
}

/// `GET /status/{id}`, asserting 200.
pub fn job_status(coordinator: &Coordinator, id: &str) -> Value {
    let (status, body) = get_json(&coordinator.url(&format!("/status/{id}")));
    assert_eq!(status, 200, "status of {id}: {body}");
    body
}

/// Polls `/status/{id}` until its `pool_status` is `wanted`, and returns that answer; panics
/// with the last answer when `deadline` passes first.
pub fn wait_status(coordinator: &Coordinator, id: &str, wanted: &str, deadline: Duration) -> Value {
    let mut last = Value::Null;
    poll_until(deadline, || {
        last = job_status(coordinator, id);
        (last["pool_status"] == wanted).then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("job {id} did not become {wanted} in {deadline:?}: {last}"))
}

/// Polls `/status/{id}` until the job is completed with its results collected.
pub fn wait_collected(coordinator: &Coordinator, id: &str, deadline: Duration) -> Value {
    let mut last = Value::Null;
    poll_until(deadline, || {
        last = job_status(coordinator, id);
        (last["pool_status"] == "completed" && last["results"]["collected"] == true)
            .then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("job {id} was not completed and collected in {deadline:?}: {last}"))
}

/// Waits until job `id` runs on `worker`, as the worker recorded it. The coordinator's own
/// `running` is no sure sign: the worker's `/status` blocks while a job runs, as sandrun's
/// does, and a stream opened once the job was taken up tells nothing before its end, so the
/// coordinator may say `dispatched` until then.
pub fn wait_started(coordinator: &Coordinator, worker: &FakeWorker, id: &str, deadline: Duration) {
    poll_until(deadline, || {
        let remote = job_status(coordinator, id)["remote_job_id"]
            .as_str()?
            .to_string();
        worker.recording().has_started(&remote).then_some(())
    })
    .unwrap_or_else(|| panic!("job {id} never started: {}", coordinator.logs()));
}

/// Submits `form` to the coordinator, whose next dispatch goes to `worker`, and returns the job
/// id once the coordinator says the job runs. See [`submit_subscribed`].
pub fn submit_seen_running(
    coordinator: &Coordinator,
    worker: &FakeWorker,
    form: &Form,
    deadline: Duration,
) -> String {
    let id = submit_subscribed(coordinator, worker, form, deadline);
    wait_status(coordinator, &id, "running", deadline);
    id
}

/// Submits `form` to the coordinator, whose next dispatch goes to `worker`, and returns the job
/// id once the coordinator's stream of the job joined it on the worker, letting it run then.
/// The worker holds its queue until then: only a stream that joined a job still queued hears
/// it start, and its `[DONE]` figures (one that joins later tells nothing before the end,
/// however long the job runs, and nothing at all after it).
pub fn submit_subscribed(
    coordinator: &Coordinator,
    worker: &FakeWorker,
    form: &Form,
    deadline: Duration,
) -> String {
    worker.set(|k| k.hold_queue = true);
    let id = submit(coordinator, form);
    poll_until(deadline, || {
        let remote = job_status(coordinator, &id)["remote_job_id"]
            .as_str()?
            .to_string();
        worker
            .recording()
            .subscribed
            .contains(&remote)
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no stream of job {id} joined it: {}", coordinator.logs()));
    worker.set(|k| k.hold_queue = false);
    id
}

/// Waits until the coordinator logged that each of these workers is healthy.
pub fn wait_healthy(coordinator: &Coordinator, workers: &[&FakeWorker], deadline: Duration) {
    for worker in workers {
        let id = worker.worker_id();
        let needle = format!("Worker {}... is healthy", &id[..12]);
        assert!(
            coordinator.wait_for_log(&needle, deadline),
            "worker {id} never became healthy; logs:\n{}",
            coordinator.logs()
        );
    }
}

/// The URL of a worker's `/workers/{id}/{action}` (`drain`, `undrain`) on the coordinator,
/// its id in URL-safe base64.
pub fn drain_url(coordinator: &Coordinator, worker: &FakeWorker, action: &str) -> String {
    let url_safe: String = worker
        .worker_id()
        .chars()
        .filter(|c| *c != '=')
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    coordinator.url(&format!("/workers/{url_safe}/{action}"))
}

/// `GET /pool`: asserts it answers 200 with counts that add up (`total_jobs` is the sum of
/// `jobs_by_status`, `queued_jobs` its `queued`, every worker within its limit), and returns it.
pub fn assert_pool_consistent(coordinator: &Coordinator) -> Value {
    let (status, pool) = get_json(&coordinator.url("/pool"));
    assert_eq!(status, 200, "/pool answered {status}: {pool}");
    let by_status = pool["jobs_by_status"]
        .as_object()
        .unwrap_or_else(|| panic!("no jobs_by_status in {pool}"));
    let sum: u64 = by_status.values().filter_map(Value::as_u64).sum();
    assert_eq!(pool["total_jobs"].as_u64(), Some(sum), "{pool}");
    assert_eq!(pool["queued_jobs"], by_status["queued"], "{pool}");
    for worker in pool["workers"].as_array().into_iter().flatten() {
        let active = worker["active_jobs"].as_u64().unwrap_or(u64::MAX);
        let max = worker["max_concurrent_jobs"].as_u64().unwrap_or(0);
        assert!(active <= max, "a worker over its limit: {pool}");
    }
    pool
}

/// The `/pool` entry of this worker.
pub fn pool_worker(pool: &Value, worker: &FakeWorker) -> Value {
    let id = worker.worker_id();
    pool["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|w| w["worker_id"] == id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("worker {id} not in {pool}"))
}

/// How long a raw exchange may wait for its answer.
const RAW_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends `head` (request line and header lines, each ending in CRLF, without the blank line;
/// `Host` and `Connection: close` are added) and then `body` to 127.0.0.1:`port`, and reads the
/// answer. The body is written from another thread while the answer is read, so an answer
/// given before the whole body was read (an early 413) is still seen; write errors are
/// ignored for the same reason. `Err` when no complete answer came.
pub fn exchange(port: u16, head: &str, body: &[u8]) -> Result<Reply, String> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .map_err(|e| format!("connect to port {port}: {e}"))?;
    stream
        .set_read_timeout(Some(RAW_READ_TIMEOUT))
        .map_err(|e| format!("read timeout: {e}"))?;
    let mut request =
        format!("{head}Host: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").into_bytes();
    request.extend_from_slice(body);
    let mut writer = stream
        .try_clone()
        .map_err(|e| format!("clone the stream: {e}"))?;
    let sender = thread::spawn(move || {
        for piece in request.chunks(4096) {
            if writer.write_all(piece).is_err() {
                return;
            }
        }
        let _ = writer.flush();
    });
    let reply = read_reply(&mut stream);
    let _ = stream.shutdown(Shutdown::Both);
    let _ = sender.join();
    reply
}

/// `GET target` with the target sent verbatim.
pub fn get_raw(port: u16, target: &str) -> Reply {
    exchange(port, &format!("GET {target} HTTP/1.1\r\n"), b"")
        .unwrap_or_else(|e| panic!("GET {target}: {e}"))
}

/// Sends `GET target` over a fresh connection to 127.0.0.1:`port` and returns the connection
/// once the server has read the whole request (its socket's receive queue in `/proc/net/tcp`
/// is empty), without waiting for the answer: read it with [`read_reply`].
pub fn send_read_by_server(port: u16, target: &str, deadline: Duration) -> TcpStream {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .unwrap_or_else(|e| panic!("connect to port {port}: {e}"));
    stream
        .set_read_timeout(Some(RAW_READ_TIMEOUT))
        .unwrap_or_else(|e| panic!("read timeout: {e}"));
    let client = stream
        .local_addr()
        .unwrap_or_else(|e| panic!("local address: {e}"))
        .port();
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .unwrap_or_else(|e| panic!("GET {target}: {e}"));
    let mut unread = None;
    poll_until(deadline, || {
        unread = unread_on_server(port, client);
        (unread == Some(0)).then_some(())
    })
    .unwrap_or_else(|| panic!("GET {target} was not read in {deadline:?}: {unread:?} unread"));
    stream
}

/// The bytes waiting unread on the server's end (local port `server`) of the IPv4 loopback
/// connection from port `client`, as `/proc/net/tcp` shows them; `None` if it is not listed.
fn unread_on_server(server: u16, client: u16) -> Option<u64> {
    let table = fs::read_to_string("/proc/net/tcp").ok()?;
    let port_of = |address: &str| {
        let (_, port) = address.split_once(':')?;
        u16::from_str_radix(port, 16).ok()
    };
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, queues) = (fields.get(1)?, fields.get(2)?, fields.get(4)?);
        if port_of(local)? != server || port_of(remote)? != client {
            return None;
        }
        let (_, rx) = queues.split_once(':')?;
        u64::from_str_radix(rx, 16).ok()
    })
}

/// A body in HTTP/1.1 chunked transfer encoding, `size` bytes per chunk.
pub fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / size.max(1) * 8 + 8);
    for chunk in body.chunks(size.max(1)) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads one answer: status line, headers, and a body of `Content-Length` bytes (or up to EOF).
pub fn read_reply(stream: &mut TcpStream) -> Result<Reply, String> {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(end) = find(&data, b"\r\n\r\n") {
            break end;
        }
        match stream.read(&mut buf) {
            Ok(0) => return Err(format!("closed before a full answer: {data:?}")),
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("reading the answer: {e}")),
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect();
    let length = headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("Content-Length"))
        .and_then(|(_, value)| value.parse::<usize>().ok());
    let mut body = data[head_end + 4..].to_vec();
    loop {
        if length.is_some_and(|n| body.len() >= n) {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("reading the body: {e}")),
        }
    }
    if let Some(n) = length {
        if body.len() < n {
            return Err(format!("body cut at {} of {n} bytes", body.len()));
        }
        body.truncate(n);
    }
    Ok(Reply {
        status,
        headers,
        body,
    })
}
