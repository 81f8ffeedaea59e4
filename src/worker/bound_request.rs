//! One HTTP/1.1 request to a worker over a connection bound to a chosen source address, in
//! sandrun's dialect: one request per connection, exact-case `Content-Type` and
//! `Content-Length`, a body of known length (never chunked), explicit timeouts. ureq 2 cannot bind
//! a local address, so the submits that must leave from one come through here.

use crate::base::shortage::is_shortage;
use crate::worker::answer_head::{read_head, Head};
use crate::worker::bound_socket::{connect_from, ConnectError};
use crate::worker::workers_file::{endpoint_parts, EndpointParts};
use std::io::{self, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Largest answer read (sandrun's answers to a submit or `/stats` are a few hundred bytes).
const MAX_ANSWER: u64 = 1024 * 1024;
/// How long an answer is awaited after the worker cut the upload short (it answers a 429
/// before reading the body, then closes).
const EARLY_ANSWER_WAIT: Duration = Duration::from_secs(2);

/// The body of a request: its content type, exact length, and bytes.
pub struct Body<R> {
    /// `Content-Type` value.
    pub content_type: String,
    /// Exact byte count of `reader`.
    pub length: u64,
    /// The bytes.
    pub reader: R,
}

/// Timeouts of one request.
#[derive(Debug, Clone, Copy)]
pub struct RequestTimeouts {
    /// Connecting.
    pub connect: Duration,
    /// Each write and each read (the worker may hold its lock for a whole job run).
    pub io: Duration,
}

/// A worker's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body, as text.
    pub body: String,
}

/// Why a request got no answer.
#[derive(Debug)]
pub enum RequestError {
    /// The source address could not be bound: nothing was sent.
    Bind(String),
    /// No connection to the worker: nothing was sent.
    Unreachable(String),
    /// The connection broke before the whole request was sent: the worker cannot have it.
    NotSent(String),
    /// The whole request was sent but no answer came: the worker may have acted on it.
    NoAnswer(String),
    /// The coordinator was short of descriptors, memory or socket buffers to connect: nothing
    /// was sent, and it says nothing about the worker or the source address.
    Shortage(String),
}

/// The worker's address of the family of `local`, from an endpoint `http://host[:port][/prefix]`;
/// also the `Host` header and the path prefix.
fn resolve(endpoint: &str, local: IpAddr) -> Result<(SocketAddr, String, String), String> {
    let EndpointParts {
        authority,
        host,
        port,
        prefix,
        ..
    } = endpoint_parts(endpoint);
    let found = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .find(|a| a.is_ipv4() == local.is_ipv4())
        .ok_or_else(|| {
            let family = if local.is_ipv4() { "IPv4" } else { "IPv6" };
            format!("{host} has no {family} address to reach from source address {local}")
        })?;
    Ok((found, authority.to_string(), prefix.to_string()))
}

/// Reads the status line, headers and body of the answer.
fn read_answer(stream: impl Read) -> io::Result<Answer> {
    let mut reader = BufReader::new(stream);
    let Head { status, length } = read_head(&mut reader)?;
    let mut bytes = Vec::new();
    let limit = length.unwrap_or(MAX_ANSWER).min(MAX_ANSWER);
    reader.take(limit).read_to_end(&mut bytes)?;
    if length.is_some_and(|l| (bytes.len() as u64) < l.min(MAX_ANSWER)) {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the answer ended before its Content-Length",
        ));
    }
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// Sends `method path` (with `body`, if any) to `endpoint` from `local`, and reads the answer.
pub fn send<R: Read>(
    local: IpAddr,
    endpoint: &str,
    method: &str,
    path: &str,
    body: Option<Body<R>>,
    timeouts: RequestTimeouts,
) -> Result<Answer, RequestError> {
    let (remote, host, prefix) = resolve(endpoint, local).map_err(RequestError::Unreachable)?;
    let stream = connect_from(local, remote, timeouts.connect).map_err(|e| match e {
        ConnectError::Bind(e) | ConnectError::Connect(e) if is_shortage(&e) => {
            RequestError::Shortage(format!("cannot connect to {remote} from {local}: {e}"))
        }
        ConnectError::Bind(e) => {
            RequestError::Bind(format!("cannot use source address {local}: {e}"))
        }
        ConnectError::Connect(e) => {
            RequestError::Unreachable(format!("cannot connect to {remote} from {local}: {e}"))
        }
    })?;
    let not_sent = |e: io::Error| RequestError::NotSent(format!("sending failed: {e}"));
    stream
        .set_write_timeout(Some(timeouts.io))
        .map_err(not_sent)?;
    stream
        .set_read_timeout(Some(timeouts.io))
        .map_err(not_sent)?;
    let mut head = format!(
        "{method} {prefix}{path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: trusted-pool/{}\r\nConnection: close\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(body) = &body {
        head.push_str(&format!(
            "Content-Type: {}\r\nContent-Length: {}\r\n",
            body.content_type, body.length
        ));
    }
    head.push_str("\r\n");
    let sent = write_request(&stream, head.as_bytes(), body);
    if let Err(e) = sent {
        // A worker over its limits answers before reading the body and closes: that answer
        // is still in the socket.
        let _ = stream.set_read_timeout(Some(EARLY_ANSWER_WAIT));
        return read_answer(&stream).map_err(|_| not_sent(e));
    }
    // The answer as a whole within the wait for it, however its bytes trickle in.
    let within = Deadline {
        stream: &stream,
        until: Instant::now() + timeouts.io,
    };
    read_answer(within).map_err(|e| {
        RequestError::NoAnswer(format!("the request was sent but no answer came ({e})"))
    })
}

/// Reads of a socket that end by a deadline: each waits at most what is left before it.
struct Deadline<'s> {
    stream: &'s TcpStream,
    until: Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_no_later_than(self.stream, self.until, "the whole answer")?;
        let mut stream = self.stream;
        stream.read(buf)
    }
}

/// Sets `socket`'s read timeout to what is left before `until`, so that its next read waits no
/// later than that; a `TimedOut` error saying that `what` did not come in time once it passed.
pub fn read_no_later_than(socket: &TcpStream, until: Instant, what: &str) -> io::Result<()> {
    let left = until.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what} did not come in time"),
        ));
    }
    socket.set_read_timeout(Some(left))
}

fn write_request<R: Read>(
    mut stream: &TcpStream,
    head: &[u8],
    body: Option<Body<R>>,
) -> io::Result<()> {
    let mut out = io::BufWriter::with_capacity(16 * 1024, &mut stream);
    out.write_all(head)?;
    if let Some(body) = body {
        let copied = io::copy(&mut body.reader.take(body.length), &mut out)?;
        if copied != body.length {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the body ended after {copied} of {} bytes", body.length),
            ));
        }
    }
    out.flush()
}
