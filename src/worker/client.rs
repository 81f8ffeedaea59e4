//! Calls to a sandrun worker, in its dialect: exact-case `Content-Type`/`Content-Length`, bodies of
//! known length (never chunked), one request per connection, explicit timeouts on every call.

use crate::base::cert_expiry::ChainExpiry;
use crate::base::paths::{encode_path, is_safe_component, reads_otherwise_decoded};
use crate::base::shortage::shortage_in;
use crate::base::tls::with_certificate_advice;
use crate::worker::bound_request::{self, Body, RequestError, RequestTimeouts};
use crate::worker::multipart_body::MultipartBody;
use crate::worker::pace::{self, Paced};
use crate::worker::raw_get::{self, Download, GetError};
use crate::worker::sandrun_json;
use crate::worker::server_certificate;
use crate::worker::tls::Connector;
use crate::worker::websocket::{StreamTimeouts, WsClient, WsError};
use rustls::ClientConfig;
use serde_json::Value;
use std::fmt;
use std::io::{self, Read};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// The longest a sandrun job runs (its `DEFAULT_TIMEOUT_SECONDS`): sandrun holds its jobs lock
/// meanwhile, so a call to a busy worker may wait this long for its answer.
pub const SANDRUN_LONGEST_RUN: Duration = Duration::from_secs(300);

/// What the coordinator reads of each JSON answer a worker gives: its size at most, and the
/// members of its object kept (the others are skipped unread: see
/// [`sandrun_json::parse_object`]).
struct JsonAnswer {
    max_bytes: u64,
    keys: &'static [&'static str],
}

/// `GET /health`: a few short members.
const HEALTH_ANSWER: JsonAnswer = JsonAnswer {
    max_bytes: 64 * 1024,
    keys: &["status", "worker_id"],
};

/// `POST /submit`.
const SUBMIT_ANSWER: JsonAnswer = JsonAnswer {
    max_bytes: 64 * 1024,
    keys: &["job_id", "status", "error"],
};

/// `GET /status/{id}`: the output list makes it grow, about 200 bytes a file.
const STATUS_ANSWER: JsonAnswer = JsonAnswer {
    max_bytes: 16 * 1024 * 1024,
    keys: &[
        "job_id",
        "status",
        "queue_position",
        "execution_metadata",
        "job_hash",
        "output_files",
        "worker_metadata",
        "error",
    ],
};

/// The most stdout, and the most stderr, sandrun keeps of a job (`MAX_OUTPUT_SIZE`).
const WORKER_MAX_OUTPUT: u64 = 10 * 1024 * 1024;

/// `GET /logs/{id}`: a job's whole output. sandrun writes each byte of it past ASCII, and each
/// control byte, as a 6-byte `\u00xx`: its largest answer is 6 times both of its 10 MiB logs.
const LOGS_ANSWER: JsonAnswer = JsonAnswer {
    max_bytes: 2 * 6 * WORKER_MAX_OUTPUT + 64 * 1024,
    keys: &["stdout", "stderr"],
};

/// The HTTP agents used towards workers, one per kind of call so each has its own timeouts.
#[derive(Clone)]
pub struct WorkerClient {
    health: ureq::Agent,
    submit: ureq::Agent,
    follow: ureq::Agent,
    timeouts: Timeouts,
    /// The TLS settings of `https://` workers, shared by the agents.
    tls: Arc<Connector>,
}

/// Timeouts of a [`WorkerClient`].
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Connecting to a worker, and a whole health probe.
    pub health: Duration,
    /// Waiting for a worker to answer a submit, status, logs or download (it may hold its lock
    /// for a whole job run).
    pub dispatch: Duration,
}

impl Timeouts {
    /// The most a submit or a JSON answer may take as a whole, however its bytes trickle in:
    /// connecting, then waiting for the answer.
    pub fn whole_answer(&self) -> Duration {
        self.health + self.dispatch
    }
}

fn agent(
    connect: Duration,
    read: Duration,
    write: Duration,
    overall: Option<Duration>,
    tls: &Arc<Connector>,
) -> ureq::Agent {
    let mut builder = ureq::AgentBuilder::new()
        .timeout_connect(connect)
        .timeout_read(read)
        .timeout_write(write)
        .max_idle_connections(0)
        .redirects(0)
        .user_agent(concat!("trusted-pool/", env!("CARGO_PKG_VERSION")));
    if let Some(overall) = overall {
        builder = builder.timeout(overall);
    }
    builder.tls_connector(Arc::clone(tls)).build()
}

/// A failed call to a worker.
#[derive(Debug, Clone)]
pub enum CallError {
    /// No connection could be made: the request was not sent.
    Unreachable(String),
    /// The connection failed or timed out after it was made.
    Transport(String),
    /// The worker answered with an error status.
    Status {
        /// HTTP status.
        code: u16,
        /// The worker's `error` message, or the start of its body.
        message: String,
    },
    /// The answer was not what sandrun sends.
    BadAnswer(String),
    /// The coordinator was short of descriptors, memory or socket buffers: no connection was
    /// made, and it says nothing about the worker.
    Shortage(String),
    /// No worker can serve this file: its name cannot be asked for (why). Not worth retrying.
    Unfetchable(String),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable(why) => write!(f, "unreachable: {why}"),
            Self::Transport(why) => write!(f, "connection failed: {why}"),
            Self::Status { code, message } => write!(f, "HTTP {code}: {message}"),
            Self::BadAnswer(why) => write!(f, "unexpected answer: {why}"),
            Self::Shortage(why) => write!(f, "the coordinator is short of resources: {why}"),
            Self::Unfetchable(why) => f.write_str(why),
        }
    }
}

/// A byte that goes through a URL's path unchanged (ureq parses every URL it sends).
fn url_safe(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~' | b'/')
}

/// Whether a file of this name is asked of a worker: sandrun splits its request line at spaces
/// and reads it up to a line feed, so a name with a space or a control character can never be
/// asked for (the worker's `/download/{id}` tarball has it, but deletes the job); and a name
/// that reads as another path once percent-decoded is not asked for, as a proxy in front of a
/// worker may decode it (sandrun itself decodes nothing).
pub fn fetchable_name(path: &str) -> Result<(), &'static str> {
    if path.bytes().any(|b| b == b' ' || b.is_ascii_control()) {
        return Err("sandrun cannot serve a file whose name holds a space or a control character; name the job's outputs without them");
    }
    if reads_otherwise_decoded(path) {
        return Err("its name reads as another path once %-decoded (a `..` or `.`, or a `/` of its own), so it is not asked of a worker (a proxy in front of one may decode it); name the job's outputs without such escapes");
    }
    Ok(())
}

/// What became of a submit.
#[derive(Debug, Clone)]
pub enum SubmitOutcome {
    /// The worker took the job under this id.
    Accepted(String),
    /// 429: the worker is busy for a while; its message says why.
    Throttled(String),
    /// Another 4xx: the worker judged the job bad.
    Rejected(u16, String),
    /// 5xx: the worker failed; the job may go elsewhere.
    ServerError(u16, String),
    /// The connection failed before the whole request was sent: the worker cannot have it.
    NotSent(String),
    /// The request was sent but no answer came: the worker may have accepted it.
    Unknown(String),
    /// The source address could not be bound (gone from the host?): nothing was sent, and it
    /// says nothing about the worker.
    SourceUnusable(String),
    /// The coordinator was short of descriptors, memory or socket buffers before the whole
    /// request was sent: the worker cannot have it, and it says nothing about the worker.
    Shortage(String),
}

/// Why a health probe failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeFailure {
    /// No answer.
    Unreachable(String),
    /// An answer, but not a healthy one.
    Unhealthy(String),
    /// Healthy, but with another identity than the allowlisted one.
    WrongIdentity {
        /// What the allowlist says.
        expected: String,
        /// What the worker said (None for `null` or missing).
        reported: Option<String>,
    },
    /// The coordinator could not probe (short of descriptors, memory or threads): it says
    /// nothing about the worker.
    Shortage(String),
}

impl fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable(why) => write!(f, "unreachable: {why}"),
            Self::Unhealthy(why) => write!(f, "unhealthy answer: {why}"),
            Self::WrongIdentity { expected, reported } => write!(
                f,
                "identity mismatch: allowlisted worker_id {expected}, worker reports {}",
                reported.as_deref().unwrap_or("null")
            ),
            Self::Shortage(why) => write!(f, "the coordinator is short of resources: {why}"),
        }
    }
}

/// The `error` message of a worker's error answer, or the start of its body.
fn error_message(body: &[u8]) -> String {
    match sandrun_json::parse(body) {
        Ok(v) => match v.get("error").and_then(Value::as_str) {
            Some(m) => m.to_string(),
            None => v.to_string(),
        },
        Err(_) => String::from_utf8_lossy(body).chars().take(300).collect(),
    }
}

fn read_json(response: ureq::Response, answer: &JsonAnswer) -> Result<Value, CallError> {
    let mut bytes = Vec::new();
    response
        .into_reader()
        .take(answer.max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| CallError::Transport(e.to_string()))?;
    if bytes.len() as u64 > answer.max_bytes {
        return Err(CallError::BadAnswer(format!(
            "an answer over {} bytes",
            answer.max_bytes
        )));
    }
    sandrun_json::parse_object(&bytes, answer.keys)
        .map_err(|e| CallError::BadAnswer(format!("not a JSON object ({e})")))
}

fn classify(error: ureq::Error) -> CallError {
    match error {
        ureq::Error::Status(code, response) => {
            let mut body = Vec::new();
            let _ = response
                .into_reader()
                .take(64 * 1024)
                .read_to_end(&mut body);
            CallError::Status {
                code,
                message: error_message(&body),
            }
        }
        ureq::Error::Transport(t) if shortage_in(&t) => CallError::Shortage(t.to_string()),
        ureq::Error::Transport(t) => match t.kind() {
            ureq::ErrorKind::Dns | ureq::ErrorKind::ConnectionFailed => {
                CallError::Unreachable(t.to_string())
            }
            _ => CallError::Transport(with_certificate_advice(t.to_string())),
        },
    }
}

/// Longest worker job id taken (sandrun's `job_<seconds>_<counter>` is about 25 bytes).
const MAX_REMOTE_ID: usize = 128;

/// True for a worker job id that goes into a URL path segment as it is: a safe path component
/// (not empty, `.` or `..`) of letters, digits, `.`, `_` and `-`, at most [`MAX_REMOTE_ID`]
/// bytes.
fn plain_remote_id(id: &str) -> bool {
    is_safe_component(id)
        && id.len() <= MAX_REMOTE_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A 200 answer to a submit: accepted under its `job_id`, when that is a plain id (the URLs to
/// the job are built from it; one with `/`, `?` or `%` would name another path).
fn accepted(answer: &Value) -> SubmitOutcome {
    match answer.get("job_id").and_then(Value::as_str) {
        Some(id) if plain_remote_id(id) => SubmitOutcome::Accepted(id.to_string()),
        Some(id) => SubmitOutcome::Unknown(format!(
            "the worker answered 200 with a job_id that is no plain id (letters, digits, '.', \
             '_' and '-', at most {MAX_REMOTE_ID} bytes), so the job cannot be followed there: \
             {:?}",
            id.chars().take(MAX_REMOTE_ID).collect::<String>()
        )),
        None => SubmitOutcome::Unknown(format!(
            "the worker answered 200 without a job_id: {answer}"
        )),
    }
}

/// An error status answered to a submit.
fn refused(code: u16, message: String) -> SubmitOutcome {
    match code {
        429 => SubmitOutcome::Throttled(message),
        c if c < 500 => SubmitOutcome::Rejected(code, message),
        _ => SubmitOutcome::ServerError(code, message),
    }
}

impl WorkerClient {
    /// Agents with these timeouts, for `http://` workers only.
    pub fn new(t: Timeouts) -> Self {
        Self::with_tls(t, None)
    }

    /// Agents with these timeouts; `https://` workers with these TLS settings.
    pub fn with_tls(t: Timeouts, tls: Option<Arc<ClientConfig>>) -> Self {
        let tls = Arc::new(Connector::new(tls));
        WorkerClient {
            health: agent(t.health, t.health, t.health, Some(t.health), &tls),
            submit: agent(t.health, t.dispatch, t.dispatch, None, &tls),
            follow: agent(t.health, t.dispatch, t.health, None, &tls),
            timeouts: t,
            tls,
        }
    }

    /// Calls to `https://` workers from now on use `config` (calls under way keep theirs).
    pub fn replace_tls(&self, config: Arc<ClientConfig>) {
        self.tls.replace(config);
    }

    /// `GET /health`: Ok when the worker is healthy and reports `expected_id`.
    pub fn probe(&self, endpoint: &str, expected_id: &str) -> Result<(), ProbeFailure> {
        let response = self
            .health
            .get(&format!("{endpoint}/health"))
            .call()
            .map_err(|e| match classify(e) {
                CallError::Status { code, message } => {
                    ProbeFailure::Unhealthy(format!("HTTP {code}: {message}"))
                }
                CallError::Unreachable(why) => ProbeFailure::Unreachable(why),
                CallError::Shortage(why) => ProbeFailure::Shortage(why),
                other => ProbeFailure::Unreachable(other.to_string()),
            })?;
        let body = read_json(response, &HEALTH_ANSWER)
            .map_err(|e| ProbeFailure::Unhealthy(e.to_string()))?;
        let status = body.get("status").and_then(Value::as_str);
        if status != Some("healthy") {
            return Err(ProbeFailure::Unhealthy(format!(
                "status is {}",
                body.get("status").unwrap_or(&Value::Null)
            )));
        }
        let reported = body.get("worker_id").and_then(Value::as_str);
        if reported != Some(expected_id) {
            return Err(ProbeFailure::WrongIdentity {
                expected: expected_id.to_string(),
                reported: reported.map(str::to_string),
            });
        }
        Ok(())
    }

    /// When the certificate chain an `https://` endpoint presents expires (read in a handshake
    /// of its own, within the health timeout).
    pub fn server_certificate(&self, endpoint: &str) -> Result<ChainExpiry, String> {
        server_certificate::read(endpoint, self.timeouts.health, &self.tls)
    }

    /// Opens the WebSocket `path` of `endpoint` (a job's `/stream/{id}`), over TLS with the
    /// settings of every other call for an `https://` worker.
    pub fn open_stream(
        &self,
        endpoint: &str,
        path: &str,
        timeouts: StreamTimeouts,
    ) -> Result<WsClient, WsError> {
        WsClient::connect(endpoint, path, timeouts, &self.tls)
    }

    /// `POST /submit` with a streamed multipart body, from `source` when given (the worker's
    /// per-client limits then count it against that address), else from the system's choice.
    pub fn submit(
        &self,
        endpoint: &str,
        source: Option<IpAddr>,
        body: MultipartBody,
    ) -> SubmitOutcome {
        let content_type = format!("multipart/form-data; boundary={}", body.boundary);
        // The bound connection speaks plain HTTP only; an https:// worker with source
        // addresses is refused at start and on reload (`check_source_addresses`).
        if let Some(local) = source.filter(|_| endpoint.starts_with("http://")) {
            return self.submit_from(local, endpoint, content_type, body);
        }
        let finished = body.finished_flag();
        // The submit as a whole, however its answer trickles in: the upload at the slowest
        // pace, then the wait for the answer.
        let whole = self.timeouts.whole_answer()
            + Duration::from_secs(body.length / pace::MIN_BYTES_PER_SECOND);
        let length = body.length.to_string();
        let result = self
            .submit
            .post(&format!("{endpoint}/submit"))
            .timeout(whole)
            .set("Content-Type", &content_type)
            .set("Content-Length", &length)
            .send(body.into_reader());
        match result {
            Ok(response) => match read_json(response, &SUBMIT_ANSWER) {
                Ok(v) => accepted(&v),
                Err(e) => SubmitOutcome::Unknown(format!("the worker's answer was lost: {e}")),
            },
            Err(e) => match classify(e) {
                CallError::Status { code, message } => refused(code, message),
                CallError::Unreachable(why) => SubmitOutcome::NotSent(why),
                CallError::Shortage(why) if !finished.load(Ordering::SeqCst) => {
                    SubmitOutcome::Shortage(why)
                }
                other if !finished.load(Ordering::SeqCst) => {
                    SubmitOutcome::NotSent(other.to_string())
                }
                other => SubmitOutcome::Unknown(format!(
                    "the request was sent but no answer came ({other})"
                )),
            },
        }
    }

    fn submit_from(
        &self,
        local: IpAddr,
        endpoint: &str,
        content_type: String,
        body: MultipartBody,
    ) -> SubmitOutcome {
        let body = Body {
            content_type,
            length: body.length,
            reader: body.into_reader(),
        };
        match bound_request::send(local, endpoint, "POST", "/submit", Some(body), self.bound()) {
            Ok(answer) if answer.status == 200 => {
                match serde_json::from_str::<Value>(&answer.body) {
                    Ok(v) => accepted(&v),
                    Err(e) => SubmitOutcome::Unknown(format!(
                        "the worker's answer was lost: not JSON ({e})"
                    )),
                }
            }
            Ok(answer) => refused(answer.status, error_message(answer.body.as_bytes())),
            Err(RequestError::Bind(why)) => SubmitOutcome::SourceUnusable(why),
            Err(RequestError::Shortage(why)) => SubmitOutcome::Shortage(why),
            Err(RequestError::Unreachable(why) | RequestError::NotSent(why)) => {
                SubmitOutcome::NotSent(why)
            }
            Err(RequestError::NoAnswer(why)) => SubmitOutcome::Unknown(why),
        }
    }

    /// `GET /stats` from `source`: the worker's view of that address's quota (`your_quota`).
    /// sandrun counts its jobs for it under the jobs lock, so it answers once the job it runs
    /// ends: the answer is awaited as a status is (`--dispatch-timeout`); an ask given up
    /// sooner left a thread of sandrun's waiting for the lock, one more each time.
    pub fn stats_from(&self, source: IpAddr, endpoint: &str) -> Result<Value, CallError> {
        let answer = bound_request::send::<io::Empty>(
            source,
            endpoint,
            "GET",
            "/stats",
            None,
            RequestTimeouts {
                connect: self.timeouts.health,
                io: self.timeouts.dispatch,
            },
        )
        .map_err(|e| match e {
            RequestError::Bind(why) | RequestError::Unreachable(why) => CallError::Unreachable(why),
            RequestError::Shortage(why) => CallError::Shortage(why),
            RequestError::NotSent(why) | RequestError::NoAnswer(why) => {
                CallError::Transport(with_certificate_advice(why))
            }
        })?;
        if answer.status != 200 {
            return Err(CallError::Status {
                code: answer.status,
                message: error_message(answer.body.as_bytes()),
            });
        }
        serde_json::from_str(&answer.body)
            .map_err(|e| CallError::BadAnswer(format!("not JSON ({e})")))
    }

    fn bound(&self) -> RequestTimeouts {
        RequestTimeouts {
            connect: self.timeouts.health,
            io: self.timeouts.dispatch,
        }
    }

    /// `GET /status/{id}`: the worker's status JSON.
    pub fn status(&self, endpoint: &str, remote_id: &str) -> Result<Value, CallError> {
        self.get_json(
            &format!("{endpoint}/status/{}", encode_path(remote_id)),
            &STATUS_ANSWER,
        )
    }

    /// `GET /logs/{id}`: `{"stdout","stderr"}`.
    pub fn logs(&self, endpoint: &str, remote_id: &str) -> Result<Value, CallError> {
        self.get_json(
            &format!("{endpoint}/logs/{}", encode_path(remote_id)),
            &LOGS_ANSWER,
        )
    }

    /// `GET /download/{id}/{path}`: one file, streamed. (Never `/download/{id}` alone: that
    /// deletes the job on the worker.) sandrun takes the path as it comes, decoding nothing,
    /// so a name that a URL would have to percent-encode is sent as its own bytes (see
    /// [`raw_get`]); a name sandrun's request line cannot carry (see [`fetchable_name`]) is
    /// refused without a call.
    pub fn download(
        &self,
        endpoint: &str,
        remote_id: &str,
        path: &str,
    ) -> Result<Download, CallError> {
        if let Err(why) = fetchable_name(path) {
            return Err(CallError::Unfetchable(why.to_string()));
        }
        if path.bytes().all(url_safe) {
            let response = self
                .follow
                .get(&format!(
                    "{endpoint}/download/{}/{path}",
                    encode_path(remote_id)
                ))
                .call()
                .map_err(classify)?;
            let length = response
                .header("Content-Length")
                .and_then(|l| l.parse::<u64>().ok());
            return Ok(Download {
                length,
                reader: Box::new(Paced::new(response.into_reader(), self.timeouts.dispatch)),
            });
        }
        let target = [
            format!("/download/{}/", encode_path(remote_id)).as_bytes(),
            path.as_bytes(),
        ]
        .concat();
        let got = raw_get::get(endpoint, &target, self.bound(), &self.tls);
        got.map(|Download { length, reader }| Download {
            length,
            reader: Box::new(Paced::new(reader, self.timeouts.dispatch)),
        })
        .map_err(|e| match e {
            GetError::Unreachable(why) => CallError::Unreachable(why),
            GetError::Shortage(why) => CallError::Shortage(why),
            GetError::Transport(why) => CallError::Transport(why),
            GetError::Status { code, body } => CallError::Status {
                code,
                message: error_message(&body),
            },
        })
    }

    /// `GET /download/{id}`: deletes a job on the worker (its tarball is read and dropped). Only
    /// for a job the worker reported `completed` or `failed`: deleting a job still queued there
    /// crashes sandrun.
    pub fn delete_ended(&self, endpoint: &str, remote_id: &str) -> Result<(), CallError> {
        let response = self
            .follow
            .get(&format!("{endpoint}/download/{}", encode_path(remote_id)))
            .call()
            .map_err(classify)?;
        let mut tarball = Paced::new(response.into_reader(), self.timeouts.dispatch);
        std::io::copy(&mut tarball, &mut std::io::sink())
            .map_err(|e| CallError::Transport(e.to_string()))?;
        Ok(())
    }

    /// A JSON answer read whole within [`Timeouts::whole_answer`].
    fn get_json(&self, url: &str, answer: &JsonAnswer) -> Result<Value, CallError> {
        let call = self.follow.get(url).timeout(self.timeouts.whole_answer());
        read_json(call.call().map_err(classify)?, answer)
    }
}
