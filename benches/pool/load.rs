//! The load generator: request bodies, keep-alive clients in a closed loop, latency statistics.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fake::{lock, TOKEN_DIGITS};

/// The multipart boundary of every benchmark submit.
const BOUNDARY: &str = "----trusted-pool-bench-7f3a9c";

/// A small job: a real `.tar.gz` of about 1 KiB and a manifest carrying a per-request token.
pub struct JobBody {
    head: Vec<u8>,
    tail: Vec<u8>,
}

impl JobBody {
    /// Builds the tarball with the system `tar` (a script and incompressible data).
    pub fn new() -> Result<JobBody, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut noise = vec![0u8; 760];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut noise))
            .map_err(|e| format!("/dev/urandom: {e}"))?;
        fs::write(
            dir.path().join("main.py"),
            "print(open('data.bin','rb').read()[:4])\n",
        )
        .map_err(|e| e.to_string())?;
        fs::write(dir.path().join("data.bin"), &noise).map_err(|e| e.to_string())?;
        let archive = dir.path().join("job.tar.gz");
        let status = Command::new("tar")
            .arg("-czf")
            .arg(&archive)
            .arg("-C")
            .arg(dir.path())
            .args(["main.py", "data.bin"])
            .status()
            .map_err(|e| format!("tar: {e}"))?;
        if !status.success() {
            return Err(format!("tar failed: {status}"));
        }
        let tarball = fs::read(&archive).map_err(|e| e.to_string())?;
        let mut head = format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"job.tar.gz\"\r\n\
             Content-Type: application/gzip\r\n\r\n"
        )
        .into_bytes();
        head.extend_from_slice(&tarball);
        head.extend_from_slice(
            format!(
                "\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"manifest\"\r\n\r\n\
                 {{\"entrypoint\":\"main.py\",\"outputs\":[\"result.txt\"],\"args\":[\"t"
            )
            .as_bytes(),
        );
        let tail = format!("\"]}}\r\n--{BOUNDARY}--\r\n").into_bytes();
        Ok(JobBody { head, tail })
    }

    /// The request's `Content-Type`.
    pub fn content_type(&self) -> String {
        content_type()
    }

    /// The body with this token in its manifest (all bodies have the same length).
    pub fn with_token(&self, token: u64) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.len());
        body.extend_from_slice(&self.head);
        body.extend_from_slice(format!("{token:0width$}", width = TOKEN_DIGITS).as_bytes());
        body.extend_from_slice(&self.tail);
        body
    }

    /// Body length in bytes.
    pub fn len(&self) -> usize {
        self.head.len() + TOKEN_DIGITS + self.tail.len()
    }
}

/// The `Content-Type` of every benchmark submit.
pub fn content_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

/// A token unique to one request of one client.
pub fn token(client: usize, seq: u64) -> u64 {
    ((client as u64) << 40) | seq
}

/// A streamed multipart body of exactly `total` bytes: one generated `files` part.
pub struct BigBody {
    head: Vec<u8>,
    tail: Vec<u8>,
    filler: u64,
    at: u64,
}

impl BigBody {
    /// A body of `total` bytes in all.
    pub fn new(total: u64) -> BigBody {
        let head = format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.bin\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .into_bytes();
        let tail = format!(
            "\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"manifest\"\r\n\r\n\
             {{\"entrypoint\":\"main.py\",\"outputs\":[\"result.txt\"]}}\r\n--{BOUNDARY}--\r\n"
        )
        .into_bytes();
        let filler = total.saturating_sub((head.len() + tail.len()) as u64);
        BigBody {
            head,
            tail,
            filler,
            at: 0,
        }
    }

    /// Bytes in all.
    pub fn total(&self) -> u64 {
        (self.head.len() + self.tail.len()) as u64 + self.filler
    }
}

impl Read for BigBody {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let head = self.head.len() as u64;
        let body_end = head + self.filler;
        let n = if self.at < head {
            let src = &self.head[self.at as usize..];
            let n = src.len().min(buf.len());
            buf[..n].copy_from_slice(&src[..n]);
            n
        } else if self.at < body_end {
            let n = ((body_end - self.at) as usize).min(buf.len());
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = b'a' + ((self.at as usize + i) % 26) as u8;
            }
            n
        } else {
            let src = &self.tail[((self.at - body_end) as usize).min(self.tail.len())..];
            let n = src.len().min(buf.len());
            buf[..n].copy_from_slice(&src[..n]);
            n
        };
        self.at += n as u64;
        Ok(n)
    }
}

/// Environment variable that makes every client request carry `Connection: close` (a diagnostic
/// that sidesteps keep-alive trouble in the server under test; figures are then not the issue's).
pub const CLOSE: &str = "BENCH_CONNECTION_CLOSE";

/// How long a client waits for an answer before counting an error.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `BENCH_CONNECTION_CLOSE` is set.
pub fn closing() -> bool {
    static CLOSING: OnceLock<bool> = OnceLock::new();
    *CLOSING.get_or_init(|| std::env::var_os(CLOSE).is_some())
}

struct CloseEach;

impl ureq::Middleware for CloseEach {
    fn handle(
        &self,
        request: ureq::Request,
        next: ureq::MiddlewareNext,
    ) -> Result<ureq::Response, ureq::Error> {
        next.handle(request.set("Connection", "close"))
    }
}

/// The TLS settings of every agent once [`trust`] was called (for `https://` coordinators).
static TLS: OnceLock<Arc<trusted_pool::worker::tls::Connector>> = OnceLock::new();

/// From now on, agents trust the CA certificates of this PEM file for `https://` URLs.
pub fn trust(ca: &Path) -> Result<(), String> {
    let settings = trusted_pool::base::tls::WorkerTls {
        ca: Some(ca.to_path_buf()),
        client_cert: None,
    };
    let loaded = trusted_pool::base::tls::client_config(&settings).map_err(|e| e.to_string())?;
    let _ = TLS.set(Arc::new(trusted_pool::worker::tls::Connector::new(Some(
        loaded.config,
    ))));
    Ok(())
}

/// A client's HTTP agent: keep-alive (unless `BENCH_CONNECTION_CLOSE`), explicit timeouts.
pub fn agent() -> ureq::Agent {
    let mut builder = ureq::AgentBuilder::new()
        .timeout_connect(CLIENT_TIMEOUT)
        .timeout_read(CLIENT_TIMEOUT)
        .timeout_write(CLIENT_TIMEOUT);
    if let Some(tls) = TLS.get() {
        builder = builder.tls_connector(Arc::clone(tls));
    }
    if closing() {
        builder
            .middleware(CloseEach)
            .max_idle_connections(0)
            .build()
    } else {
        builder.build()
    }
}

fn describe(e: ureq::Error) -> String {
    match e {
        ureq::Error::Status(code, r) => {
            let body = r.into_string().unwrap_or_default();
            format!("HTTP {code}: {}", body.trim())
        }
        ureq::Error::Transport(t) => t.to_string(),
    }
}

/// `GET` a JSON document.
pub fn get_json(agent: &ureq::Agent, url: &str) -> Result<Value, String> {
    let text = agent
        .get(url)
        .call()
        .map_err(describe)?
        .into_string()
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))
}

/// `GET` bytes.
pub fn get_bytes(agent: &ureq::Agent, url: &str) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    agent
        .get(url)
        .call()
        .map_err(describe)?
        .into_reader()
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// `POST` a multipart body to `url`; the `job_id` answered.
pub fn submit(
    agent: &ureq::Agent,
    url: &str,
    content_type: &str,
    body: &[u8],
) -> Result<String, String> {
    let text = agent
        .post(url)
        .set("Content-Type", content_type)
        .send_bytes(body)
        .map_err(describe)?
        .into_string()
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
    v.get("job_id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| format!("no job_id in {text}"))
}

/// What one closed-loop run measured.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    /// Operations that succeeded inside the window.
    pub ops: u64,
    /// Operations that failed (warm-up included).
    pub errors: u64,
    /// The first error seen.
    pub first_error: Option<String>,
    /// The window's length.
    pub window: Duration,
    /// Latencies of the successful operations, in nanoseconds, sorted.
    pub latencies: Vec<u64>,
}

impl RunStats {
    /// Operations per second.
    pub fn throughput(&self) -> f64 {
        self.ops as f64 / self.window.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile (nearest rank) in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        quantile_ms(&self.latencies, q)
    }
}

/// The `q` quantile (nearest rank) of sorted nanoseconds, in milliseconds.
pub fn quantile_ms(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1e6
}

/// Runs `clients` threads in a closed loop: each calls its operation back to back, for `warmup`
/// (not measured), then waits while `between` runs, then for `window` (measured). An operation
/// counts when it started and ended inside the window; errors count wherever they happen.
pub fn closed_loop<F>(
    clients: usize,
    warmup: Duration,
    window: Duration,
    between: impl FnOnce(),
    make: impl Fn(usize) -> F,
) -> RunStats
where
    F: FnMut(&ureq::Agent) -> Result<(), String> + Send,
{
    let barrier = Barrier::new(clients + 1);
    let start: Mutex<Option<Instant>> = Mutex::new(None);
    let merged = Mutex::new(RunStats {
        window,
        ..RunStats::default()
    });
    thread::scope(|scope| {
        for i in 0..clients {
            let mut op = make(i);
            let (barrier, start, merged) = (&barrier, &start, &merged);
            scope.spawn(move || {
                let agent = agent();
                let mut mine = RunStats::default();
                let warm_end = Instant::now() + warmup;
                while Instant::now() < warm_end {
                    if let Err(e) = op(&agent) {
                        mine.errors += 1;
                        mine.first_error
                            .get_or_insert(format!("during warm-up: {e}"));
                    }
                }
                barrier.wait();
                barrier.wait();
                let begin = lock(start).unwrap_or_else(Instant::now);
                let end = begin + window;
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    let result = op(&agent);
                    let t1 = Instant::now();
                    match result {
                        Ok(()) if t1 > end => break,
                        Ok(()) => {
                            mine.ops += 1;
                            mine.latencies.push((t1 - t0).as_nanos() as u64);
                        }
                        Err(e) => {
                            mine.errors += 1;
                            mine.first_error.get_or_insert(e);
                        }
                    }
                }
                let mut all = lock(merged);
                all.ops += mine.ops;
                all.errors += mine.errors;
                if all.first_error.is_none() {
                    all.first_error = mine.first_error;
                }
                all.latencies.extend(mine.latencies);
            });
        }
        barrier.wait();
        between();
        *lock(&start) = Some(Instant::now());
        barrier.wait();
    });
    let mut stats = merged.into_inner().unwrap_or_default();
    stats.latencies.sort_unstable();
    stats
}
