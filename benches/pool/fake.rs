//! A fast fake sandrun worker for the benchmark: sandrun's dialect (exact-case `Content-Length`
//! and `Content-Type`, multipart submit, one request per connection, `Connection: close`), jobs
//! that finish at once or after a set time, and counters of everything it receives. It keeps no
//! files: bodies are read, checked at both ends and counted, never stored.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::fake_quota::{Quota, QuotaMode};
use crate::fake_stream;

/// Largest request head read.
const MAX_HEAD: usize = 64 * 1024;
/// Bytes kept of each end of a body, for the checks and the token.
const KEEP: usize = 8 * 1024;
/// Where the benchmark's manifest carries its token.
pub const TOKEN_MARK: &[u8] = b"\"args\":[\"t";
/// Digits of a token.
pub const TOKEN_DIGITS: usize = 20;
/// How long a connection may stay silent.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Locks a mutex, carrying on with its data if a holder panicked.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What a fake worker has received.
#[derive(Default)]
pub struct Counters {
    /// `GET /health`.
    pub health: AtomicU64,
    /// `POST /submit` (every one, whatever the answer).
    pub submit: AtomicU64,
    /// Submits accepted (200 with a job id).
    pub accepted: AtomicU64,
    /// `GET /status/{id}`.
    pub status: AtomicU64,
    /// `GET /logs/{id}`.
    pub logs: AtomicU64,
    /// `GET /download/{id}/{path}`.
    pub download: AtomicU64,
    /// `GET /stream/{id}` (WebSocket subscriptions).
    pub stream: AtomicU64,
    /// Anything else, such as the deleting `GET /download/{id}` (a coordinator sends none).
    pub other: AtomicU64,
    /// Requests that broke sandrun's dialect (no exact-case `Content-Length`, chunked body,
    /// no exact-case multipart `Content-Type`, a body that is not the multipart it announced).
    pub dialect_errors: AtomicU64,
    /// Body bytes received.
    pub body_bytes: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// `GET /health`.
    pub health: u64,
    /// `POST /submit`.
    pub submit: u64,
    /// Submits accepted.
    pub accepted: u64,
    /// `GET /status/{id}`.
    pub status: u64,
    /// `GET /logs/{id}`.
    pub logs: u64,
    /// `GET /download/{id}/{path}`.
    pub download: u64,
    /// `GET /stream/{id}`.
    pub stream: u64,
    /// Anything else.
    pub other: u64,
    /// Dialect violations.
    pub dialect_errors: u64,
    /// Body bytes.
    pub body_bytes: u64,
}

impl Counts {
    /// Adds another worker's counts.
    pub fn add(&mut self, o: &Counts) {
        self.health += o.health;
        self.submit += o.submit;
        self.accepted += o.accepted;
        self.status += o.status;
        self.logs += o.logs;
        self.download += o.download;
        self.stream += o.stream;
        self.other += o.other;
        self.dialect_errors += o.dialect_errors;
        self.body_bytes += o.body_bytes;
    }
}

struct FakeJob {
    done_at: Instant,
    cpu: f64,
    result: String,
    sha256: String,
    signature: String,
}

struct State {
    worker_id: String,
    key: ed25519_dalek::SigningKey,
    alive: AtomicBool,
    job_time: Mutex<Duration>,
    blocked_until: Mutex<Option<Instant>>,
    hourly_limit: AtomicBool,
    streams: AtomicBool,
    next_id: AtomicU64,
    jobs: Mutex<HashMap<String, FakeJob>>,
    counters: Counters,
    tokens: Mutex<Vec<(u64, Instant)>>,
    first_health: Mutex<Option<SystemTime>>,
    quota: Mutex<Option<Quota>>,
}

/// A running fast fake worker on 127.0.0.1; stopped when dropped.
pub struct FastWorker {
    addr: SocketAddr,
    state: Arc<State>,
    acceptors: Vec<JoinHandle<()>>,
}

/// A fresh valid worker_id (base64 of an Ed25519 public key), different on every call.
pub fn new_worker_id() -> String {
    new_worker_key().1
}

/// A fresh worker key and its worker_id, different on every call.
pub fn new_worker_key() -> (ed25519_dalek::SigningKey, String) {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed: [u8; 32] = Sha256::new()
        .chain_update(stamp.to_le_bytes())
        .chain_update(std::process::id().to_le_bytes())
        .chain_update(SEQ.fetch_add(1, Ordering::SeqCst).to_le_bytes())
        .finalize()
        .into();
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let id = base64::engine::general_purpose::STANDARD.encode(key.verifying_key().to_bytes());
    (key, id)
}

impl FastWorker {
    /// Starts one with `threads` connection-serving threads and jobs that finish at once.
    pub fn start(threads: usize) -> io::Result<FastWorker> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        let (key, worker_id) = new_worker_key();
        let state = Arc::new(State {
            worker_id,
            key,
            alive: AtomicBool::new(true),
            job_time: Mutex::new(Duration::ZERO),
            blocked_until: Mutex::new(None),
            hourly_limit: AtomicBool::new(false),
            streams: AtomicBool::new(true),
            next_id: AtomicU64::new(0),
            jobs: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            tokens: Mutex::new(Vec::new()),
            first_health: Mutex::new(None),
            quota: Mutex::new(None),
        });
        let mut acceptors = Vec::new();
        for _ in 0..threads.max(1) {
            let listener = listener.try_clone()?;
            let state = Arc::clone(&state);
            acceptors.push(thread::spawn(move || accept_loop(&listener, &state)));
        }
        Ok(FastWorker {
            addr,
            state,
            acceptors,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its worker id.
    pub fn worker_id(&self) -> &str {
        &self.state.worker_id
    }

    /// How long the jobs it accepts from now on run.
    pub fn set_job_time(&self, d: Duration) {
        *lock(&self.state.job_time) = d;
    }

    /// Holds every request but `/health` unanswered until `until`, as sandrun does while a job
    /// runs under its jobs lock.
    pub fn block_until(&self, until: Instant) {
        *lock(&self.state.blocked_until) = Some(until);
    }

    /// Answers every submit 429 "Max jobs per hour reached", as sandrun does past its hourly limit.
    pub fn set_hourly_limit(&self, on: bool) {
        self.state.hourly_limit.store(on, Ordering::SeqCst);
    }

    /// Limits every client IP as sandrun does, with this mode's (scaled) figures; its jobs then
    /// run one at a time for their CPU seconds.
    pub fn limit_clients(&self, mode: QuotaMode) {
        *lock(&self.state.quota) = Some(Quota::new(mode));
    }

    /// Under `limit_clients`: when each accepted job ends, and how many submits got 429.
    pub fn quota_figures(&self) -> (Vec<Instant>, u64) {
        lock(&self.state.quota)
            .as_ref()
            .map_or((Vec::new(), 0), |q| (q.ends.clone(), q.refused))
    }

    /// Serves `/stream/{id}` (on: the default) or answers it 404, as a worker without it does.
    pub fn set_streams(&self, on: bool) {
        self.state.streams.store(on, Ordering::SeqCst);
    }

    /// What it received so far.
    pub fn counts(&self) -> Counts {
        let c = &self.state.counters;
        let get = |a: &AtomicU64| a.load(Ordering::SeqCst);
        Counts {
            health: get(&c.health),
            submit: get(&c.submit),
            accepted: get(&c.accepted),
            status: get(&c.status),
            logs: get(&c.logs),
            download: get(&c.download),
            stream: get(&c.stream),
            other: get(&c.other),
            dialect_errors: get(&c.dialect_errors),
            body_bytes: get(&c.body_bytes),
        }
    }

    /// The benchmark tokens of the accepted submits, with when their bodies had arrived.
    pub fn tokens(&self) -> Vec<(u64, Instant)> {
        lock(&self.state.tokens).clone()
    }

    /// When its first `/health` request arrived.
    pub fn first_health(&self) -> Option<SystemTime> {
        *lock(&self.state.first_health)
    }
}

impl Drop for FastWorker {
    fn drop(&mut self) {
        self.state.alive.store(false, Ordering::SeqCst);
        for _ in &self.acceptors {
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        }
        for acceptor in self.acceptors.drain(..) {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, state: &Arc<State>) {
    loop {
        let accepted = listener.accept();
        if !state.alive.load(Ordering::SeqCst) {
            return;
        }
        let Ok((mut stream, peer)) = accepted else {
            thread::sleep(Duration::from_millis(5));
            continue;
        };
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_nodelay(true);
        let Ok(Some(request)) = read_request(&mut stream, &state.counters) else {
            continue;
        };
        let kind = kind(&request);
        count_receipt(state, kind);
        let blocked = *lock(&state.blocked_until);
        match blocked {
            Some(until) if kind != Kind::Health && Instant::now() < until => {
                let state = Arc::clone(state);
                thread::spawn(move || {
                    while state.alive.load(Ordering::SeqCst) && Instant::now() < until {
                        thread::sleep(Duration::from_millis(10));
                    }
                    answer(&mut stream, &state, &request, peer.ip());
                });
            }
            _ if kind == Kind::Stream && state.streams.load(Ordering::SeqCst) => {
                let id = request.path["/stream/".len()..].to_string();
                let done_at = lock(&state.jobs).get(&id).map(|j| j.done_at);
                fake_stream::serve(stream, request.ws_key, done_at, id);
            }
            _ => answer(&mut stream, state, &request, peer.ip()),
        }
    }
}

/// A request as sandrun would see it, with only the ends of its body kept.
struct Request {
    method: String,
    path: String,
    dialect_ok: bool,
    boundary: Option<String>,
    body_head: Vec<u8>,
    body_tail: Vec<u8>,
    ws_key: Option<String>,
}

/// The value of a header found by its exact, case-sensitive name, as sandrun finds it.
fn exact_header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n")
        .skip(1)
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
}

fn read_request(stream: &mut TcpStream, counters: &Counters) -> io::Result<Option<Request>> {
    let mut data = Vec::with_capacity(4096);
    let mut buf = [0u8; 16 * 1024];
    let blank = loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        data.extend_from_slice(&buf[..n]);
        if let Some(at) = find(&data, b"\r\n\r\n") {
            break at;
        }
        if data.len() > MAX_HEAD {
            return Ok(None);
        }
    };
    let head = String::from_utf8_lossy(&data[..blank]).into_owned();
    let mut words = head.split(' ');
    let method = words.next().unwrap_or_default().to_string();
    let path = words.next().unwrap_or_default().to_string();
    let length = exact_header(&head, "Content-Length").and_then(|v| v.trim().parse::<u64>().ok());
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding");
    let boundary = exact_header(&head, "Content-Type")
        .filter(|ct| ct.starts_with("multipart/form-data"))
        .and_then(|ct| ct.split("boundary=").nth(1))
        .map(|b| b.trim().trim_matches('"').to_string());
    let mut body_head = data[blank + 4..].to_vec();
    let mut received = body_head.len() as u64;
    let expected = length.unwrap_or(received);
    let mut body_tail = body_head.clone();
    while received < expected {
        let want = buf.len().min((expected - received) as usize);
        let n = stream.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        received += n as u64;
        if body_head.len() < KEEP {
            body_head.extend_from_slice(&buf[..n.min(KEEP - body_head.len())]);
        }
        body_tail.extend_from_slice(&buf[..n]);
        if body_tail.len() > 2 * KEEP {
            body_tail.drain(..body_tail.len() - KEEP);
        }
    }
    counters.body_bytes.fetch_add(received, Ordering::Relaxed);
    let has_body = method == "POST";
    let dialect_ok = !has_body || (length == Some(received) && !chunked && boundary.is_some());
    Ok(Some(Request {
        method,
        path,
        dialect_ok,
        boundary,
        body_head,
        body_tail,
        ws_key: exact_header(&head, "Sec-WebSocket-Key").map(str::to_string),
    }))
}

fn respond(stream: &mut TcpStream, status: u16, body: &str) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        429 => "Too Many Requests",
        _ => "Internal Server Error",
    };
    let text = format!(
        "HTTP/1.1 {status} {reason}\r\nAccess-Control-Allow-Origin: *\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(text.as_bytes());
    let _ = stream.shutdown(Shutdown::Write);
}

fn count(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// What a request asks for, by sandrun's routes.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Health,
    Submit,
    Status,
    Logs,
    Download,
    Stream,
    Other,
}

fn kind(request: &Request) -> Kind {
    let path = request.path.as_str();
    match request.method.as_str() {
        "GET" if path == "/health" => Kind::Health,
        "POST" if path == "/submit" => Kind::Submit,
        "GET" if path.starts_with("/status/") => Kind::Status,
        "GET" if path.starts_with("/logs/") => Kind::Logs,
        "GET" if path.starts_with("/stream/") => Kind::Stream,
        "GET"
            if path
                .strip_prefix("/download/")
                .is_some_and(|r| r.contains('/')) =>
        {
            Kind::Download
        }
        _ => Kind::Other,
    }
}

/// Counts a request on receipt (a held request counts at once).
fn count_receipt(state: &State, kind: Kind) {
    let c = &state.counters;
    count(match kind {
        Kind::Health => &c.health,
        Kind::Submit => &c.submit,
        Kind::Status => &c.status,
        Kind::Logs => &c.logs,
        Kind::Download => &c.download,
        Kind::Stream => &c.stream,
        Kind::Other => &c.other,
    });
    if kind == Kind::Health {
        lock(&state.first_health).get_or_insert_with(SystemTime::now);
    }
}

fn answer(stream: &mut TcpStream, state: &State, request: &Request, ip: IpAddr) {
    let path = request.path.as_str();
    match kind(request) {
        Kind::Health => {
            let body = format!(
                "{{\"status\":\"healthy\",\"worker_id\":\"{}\"}}",
                state.worker_id
            );
            respond(stream, 200, &body);
        }
        Kind::Submit => submit(stream, state, request, ip),
        Kind::Status => with_job(stream, state, &path[8..], status_json),
        Kind::Logs => with_job(stream, state, &path[6..], |_, _, _| {
            "{\"stdout\":\"ran main.py\\n\",\"stderr\":\"\"}".to_string()
        }),
        Kind::Download => download(stream, state, &path[10..]),
        Kind::Other if path == "/stats" && lock(&state.quota).is_some() => {
            let body = lock(&state.quota)
                .as_mut()
                .map(|q| q.stats(ip, Instant::now()))
                .unwrap_or_default();
            respond(stream, 200, &body);
        }
        Kind::Stream | Kind::Other => respond(stream, 404, "{\"error\":\"Not found\"}"),
    }
}

fn well_formed(request: &Request) -> bool {
    let Some(boundary) = &request.boundary else {
        return false;
    };
    let opening = format!("--{boundary}\r\n");
    let closing = format!("\r\n--{boundary}--\r\n");
    request.dialect_ok
        && request.body_head.starts_with(opening.as_bytes())
        && request.body_tail.ends_with(closing.as_bytes())
        && find(&request.body_head, b"name=\"files\"; filename=\"").is_some()
}

fn token(tail: &[u8]) -> Option<u64> {
    let at = find(tail, TOKEN_MARK)? + TOKEN_MARK.len();
    let digits = tail.get(at..at + TOKEN_DIGITS)?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn submit(stream: &mut TcpStream, state: &State, request: &Request, ip: IpAddr) {
    let received_at = Instant::now();
    if !well_formed(request) {
        count(&state.counters.dialect_errors);
        respond(stream, 400, "{\"error\":\"No files uploaded\"}");
        return;
    }
    if state.hourly_limit.load(Ordering::SeqCst) {
        respond(
            stream,
            429,
            "{\"error\":\"Max jobs per hour reached (20)\",\"cpu_available\":10,\"active_jobs\":0}",
        );
        return;
    }
    let admitted = lock(&state.quota)
        .as_mut()
        .map(|q| (q.admit(ip, received_at), q.job_cpu()));
    let (done_at, cpu) = match admitted {
        Some((Ok(end), cpu)) => (end, cpu),
        Some((Err(why), _)) => {
            let body = format!("{{\"error\":\"{why}\",\"cpu_available\":0,\"active_jobs\":0}}");
            respond(stream, 429, &body);
            return;
        }
        None => (received_at + *lock(&state.job_time), 0.0),
    };
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let id = format!(
        "job_{seconds}_{}",
        state.next_id.fetch_add(1, Ordering::SeqCst) + 1
    );
    let result = format!("result of {id}\n");
    let sha256: String = Sha256::digest(result.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let signature = fake_stream::sign(&state.key, &sha256, &sha256);
    lock(&state.jobs).insert(
        id.clone(),
        FakeJob {
            done_at,
            cpu,
            result,
            sha256,
            signature,
        },
    );
    if let Some(t) = token(&request.body_tail) {
        lock(&state.tokens).push((t, received_at));
    }
    count(&state.counters.accepted);
    respond(
        stream,
        200,
        &format!("{{\"job_id\":\"{id}\",\"status\":\"queued\"}}"),
    );
}

fn with_job(
    stream: &mut TcpStream,
    state: &State,
    id: &str,
    render: impl Fn(&str, &FakeJob, &str) -> String,
) {
    let body = lock(&state.jobs)
        .get(id)
        .map(|job| render(id, job, &state.worker_id));
    match body {
        Some(body) => respond(stream, 200, &body),
        None => respond(stream, 404, "{\"error\":\"Job not found\"}"),
    }
}

fn status_json(id: &str, job: &FakeJob, worker_id: &str) -> String {
    let done = Instant::now() >= job.done_at;
    let (status, outputs) = if done {
        (
            "completed",
            format!(
                "{{\"result.txt\":{{\"size_bytes\":{},\"sha256\":\"{}\",\"type\":\"text\"}}}}",
                job.result.len(),
                job.sha256
            ),
        )
    } else {
        ("running", "{}".to_string())
    };
    format!(
        "{{\"job_id\":\"{id}\",\"status\":\"{status}\",\"queue_position\":0,\"execution_metadata\":\
         {{\"cpu_seconds\":{cpu:.2},\"memory_peak_bytes\":0,\"memory_peak_mb\":0,\"wall_time_ms\":0,\
         \"exit_code\":0,\"environment\":\"\",\"interpreter\":\"python3\"}},\"job_hash\":\"{}\",\
         \"output_files\":{outputs},\"worker_metadata\":{{\"worker_id\":\"{worker_id}\",\
         \"signature\":{signature}}}}}",
        job.sha256,
        cpu = if done { job.cpu } else { 0.0 },
        signature = if done {
            format!("\"{}\"", job.signature)
        } else {
            "null".to_string()
        }
    )
}

fn download(stream: &mut TcpStream, state: &State, rest: &str) {
    let (id, file) = rest.split_once('/').unwrap_or((rest, ""));
    let body = lock(&state.jobs).get(id).map(|job| {
        (
            file == "result.txt" && Instant::now() >= job.done_at,
            job.result.clone(),
        )
    });
    match body {
        Some((true, bytes)) => {
            let text = format!(
                "HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\nContent-Disposition: attachment; \
                 filename=\"result.txt\"\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{bytes}",
                bytes.len()
            );
            let _ = stream.write_all(text.as_bytes());
            let _ = stream.shutdown(Shutdown::Write);
        }
        Some((false, _)) => respond(
            stream,
            500,
            "{\"error\":\"filesystem error: cannot make canonical path: No such file or directory\"}",
        ),
        None => respond(stream, 404, "{\"error\":\"Job not found\"}"),
    }
}

/// A listener on 127.0.0.1 that accepts connections and never answers; stopped when dropped.
pub struct BlackHole {
    addr: SocketAddr,
    alive: Arc<AtomicBool>,
    accepted: Arc<Mutex<Vec<(TcpStream, SystemTime)>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl BlackHole {
    /// Starts one on a free port.
    pub fn start() -> io::Result<BlackHole> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        let alive = Arc::new(AtomicBool::new(true));
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let acceptor = {
            let (alive, accepted) = (Arc::clone(&alive), Arc::clone(&accepted));
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if !alive.load(Ordering::SeqCst) {
                        return;
                    }
                    if let Ok(stream) = stream {
                        lock(&accepted).push((stream, SystemTime::now()));
                    }
                }
            })
        };
        Ok(BlackHole {
            addr,
            alive,
            accepted,
            acceptor: Some(acceptor),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// When its first connection came.
    pub fn first_connection(&self) -> Option<SystemTime> {
        lock(&self.accepted).first().map(|(_, at)| *at)
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.alive.store(false, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}
