use ascii::AsciiString;

use std::io::Error as IoError;
use std::io::{BufReader, BufWriter, ErrorKind, Read};

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::connection::{Connection, RequestControl};

use crate::common::{HTTPVersion, Method};
use crate::util::head_rules::{self, LineByte};
use crate::ConnectionCounts;
use crate::util::RefinedTcpStream;
use crate::util::{SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder};
use crate::request::connection_has;
use crate::Request;

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client (patched: `None` when the socket could not tell it, instead of
    // a panic at the first request)
    remote_addr: Option<SocketAddr>,

    // sequence of Readers to the stream, so that the data is not read in
    //  the wrong order
    source: SequentialReaderBuilder<BufReader<RefinedTcpStream>>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<BufWriter<RefinedTcpStream>>,

    // Reader to read the next header from
    next_header_source: SequentialReader<BufReader<RefinedTcpStream>>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // true if the connection goes through SSL
    secure: bool,

    // Patched: the raw socket, to set the read timeout of the header phase and to let a request
    // close its connection without draining an unread body
    control: Arc<Connection>,

    // Patched: the longest silence, and the longest time a request line and headers may take
    client_timeout: Option<Duration>,

    // Patched: the socket's read timeout is below `client_timeout` (a slow request's headers)
    timeout_lowered: bool,

    // Patched: set by a request answered before its body was read: the connection lingers and
    // closes instead of reading a next request
    closing: Arc<AtomicBool>,

    // Patched: the server's counts, where a request refused before a handler saw it is counted
    counts: Arc<ConnectionCounts>,
}

/// Patched: the longest a connection lingers after an answer given before its request's body
/// was read (`Request::close_after_response`).
pub const LINGER_TIME: Duration = Duration::from_secs(10);
/// Patched: a lingering connection closes after this long without a byte from its client.
pub const LINGER_SILENCE: Duration = Duration::from_secs(2);
/// Patched: the most a lingering connection reads (and drops) before it closes.
pub const LINGER_BYTES: usize = 64 << 20;

/// Patched: longest request line (414 beyond).
pub const MAX_REQUEST_LINE: usize = 8 * 1024;
/// Patched: largest header block (431 beyond).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Patched: most header fields (431 beyond).
pub const MAX_HEADER_FIELDS: usize = 100;

/// Error that can happen when reading a request.
#[derive(Debug)]
enum ReadError {
    /// Patched: the line and headers did not arrive within the client timeout; true when part
    /// of a request had arrived (then it is answered 408, else the idle connection just closes).
    TimedOut(bool),
    /// Patched: the request line is longer than `MAX_REQUEST_LINE`.
    RequestLineTooLong,
    /// Patched: the headers exceed `MAX_HEADER_BYTES` or `MAX_HEADER_FIELDS`.
    HeadersTooLarge(HTTPVersion),
    WrongRequestLine,
    WrongHeader(HTTPVersion),
    /// the client sent an unrecognized `Expect` header
    ExpectationFailed(HTTPVersion),
    /// Patched: framing headers that cannot be trusted, or a body read with its request that
    /// stalled or ended early: the status to answer and why.
    BadFraming(u16, &'static str, HTTPVersion),
    /// Patched: an HTTP version above 1.1.
    UnsupportedVersion,
    /// Patched: a request head that [`head_rules`] refuses, with why.
    BadHead(&'static str, HTTPVersion),
    /// The connection failed (its error is not answered: the connection just ends).
    ReadIoError,
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    pub fn new(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
        control: Arc<Connection>,
        client_timeout: Option<Duration>,
        counts: Arc<ConnectionCounts>,
    ) -> ClientConnection {
        let remote_addr = read_socket.peer_addr().ok().flatten();
        let secure = read_socket.secure();

        let mut source = SequentialReaderBuilder::new(BufReader::with_capacity(4096, read_socket));
        let first_header = source.next().unwrap();

        ClientConnection {
            source,
            sink: SequentialWriterBuilder::new(BufWriter::with_capacity(4096, write_socket)),
            remote_addr,
            next_header_source: first_header,
            no_more_requests: false,
            secure,
            control,
            client_timeout,
            timeout_lowered: false,
            closing: Arc::new(AtomicBool::new(false)),
            counts,
        }
    }

    /// Patched: the client is `addr`, not the socket's peer (a proxy that named it in a PROXY
    /// protocol header).
    pub(crate) fn with_remote_addr(mut self, addr: SocketAddr) -> Self {
        self.remote_addr = Some(addr);
        self
    }

    /// Patched: after an answer given before its request's body was read, shuts the write side
    /// (the answer ends there for the client), then reads and drops what the client still sends
    /// until it closes, for at most [`LINGER_TIME`] and [`LINGER_BYTES`], ending after
    /// [`LINGER_SILENCE`] without a byte. Closing with unread bytes would reset the connection,
    /// and a client still sending its body (most send it whole before they read) would get the
    /// reset instead of its answer.
    fn linger(&mut self) {
        let socket = &self.control;
        let _ = socket.set_nonblocking(false);
        let _ = socket.shutdown(std::net::Shutdown::Write);
        let end = Instant::now() + LINGER_TIME;
        let mut left = LINGER_BYTES;
        let mut buf = [0u8; 8192];
        while left > 0 {
            let wait = end.saturating_duration_since(Instant::now()).min(LINGER_SILENCE);
            if wait.is_zero() || socket.set_read_timeout(Some(wait)).is_err() {
                break;
            }
            match socket.read_once(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Reads the next line from self.next_header_source.
    ///
    /// Reads until `CRLF` is reached. The next read will start
    ///  at the first byte of the new line.
    /// Patched: reads one line of at most `limit` bytes (`Ok(None)` when longer). The request's
    /// `deadline` starts with its first byte (waiting for a request is bounded by the socket's
    /// read timeout alone); `started` becomes true then. A byte that
    /// [`head_rules::line_byte`] refuses ends the read at once with `ReadError::BadHead`
    /// (`version` being the one it would be answered in).
    fn read_next_line(
        &mut self,
        limit: usize,
        deadline: &mut Option<Instant>,
        started: &mut bool,
        version: &HTTPVersion,
    ) -> Result<Option<AsciiString>, ReadError> {
        let mut buf = Vec::new();
        let mut prev_byte_was_cr = false;
        let refused = |why| ReadError::BadHead(why, version.clone());

        if let (Some(deadline), Some(timeout)) = (*deadline, self.client_timeout) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ReadError::TimedOut(*started));
            }
            // A request that is not slow never pays the system call: its first second goes by
            // with the socket's usual timeout (so a read may end at most a second late).
            if left + Duration::from_secs(1) < timeout {
                self.control
                    .set_read_timeout(Some(left))
                    .map_err(|e| Self::header_error(e, *started))?;
                self.timeout_lowered = true;
            }
        }

        loop {
            let byte = match self.next_header_source.by_ref().bytes().next() {
                Some(b) => b.map_err(|e| Self::header_error(e, *started))?,
                None => return Err(ReadError::ReadIoError),
            };
            if !*started {
                *started = true;
                *deadline = self.client_timeout.map(|t| Instant::now() + t);
            }

            match head_rules::line_byte(byte, prev_byte_was_cr) {
                LineByte::End => {
                    buf.pop(); // removing the '\r'
                    return AsciiString::from_ascii(buf)
                        .map(Some)
                        .map_err(|_| refused("request line and headers must be ASCII"));
                }
                LineByte::Refused(why) => return Err(refused(why)),
                LineByte::Keep => {}
            }

            prev_byte_was_cr = byte == b'\r';

            buf.push(byte);
            if buf.len() > limit + 1 {
                return Ok(None);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(ReadError::TimedOut(true));
            }
        }
    }

    /// Patched: a read error of the header phase, with timeouts told apart.
    fn header_error(err: IoError, started: bool) -> ReadError {
        match err.kind() {
            ErrorKind::TimedOut | ErrorKind::WouldBlock => ReadError::TimedOut(started),
            _ => ReadError::ReadIoError,
        }
    }

    /// Patched: answers a request that cannot be read with a JSON error and `Connection: close`,
    /// counted (and logged at most once a minute) in the server's `ConnectionCounts`.
    fn refuse(&mut self, status: u16, message: &str, version: HTTPVersion) {
        use crate::{Header, Response, StatusCode};
        self.counts.refused_unread(status, message, self.remote_addr);
        let writer = self.sink.next().unwrap();
        let body = format!("{{\"error\":\"{}\"}}\n", message);
        let mut response = Response::from_string(body).with_status_code(StatusCode(status));
        if let Ok(h) = Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]) {
            response.add_header(h);
        }
        // `add_header` drops a `Connection` header: the refusal said nothing of the close.
        response.close_connection();
        response.raw_print(writer, version, &[], false, None).ok();
    }

    fn read(&mut self) -> Result<Request, ReadError> {
        let mut deadline = None;
        let mut started = false;
        let (method, path, version, headers) = {
            // reading the request line
            let (method, path, version) = {
                let line = self
                    .read_next_line(
                        MAX_REQUEST_LINE,
                        &mut deadline,
                        &mut started,
                        &HTTPVersion(1, 1),
                    )?
                    .ok_or(ReadError::RequestLineTooLong)?;

                // Patched: the line as sent (0.12.0 trimmed spaces around it).
                parse_request_line(line.as_str())?
            };
            // Patched: a version not served is told (`parse_http_version`) before the request
            // takes the connection's next writer. 0.12.0 checked it after, and its 505 waited for
            // that writer forever: each such request held its connection and thread for good.

            // getting all headers
            let headers = {
                let mut headers = Vec::new();
                let mut header_bytes = 0;
                loop {
                    let left = MAX_HEADER_BYTES.saturating_sub(header_bytes);
                    let line = self
                        .read_next_line(left, &mut deadline, &mut started, &version)?
                        .ok_or_else(|| ReadError::HeadersTooLarge(version.clone()))?;

                    if line.is_empty() {
                        break;
                    };
                    if let Some(why) = head_rules::header_line_fault(line.as_str()) {
                        return Err(ReadError::BadHead(why, version));
                    }
                    header_bytes += line.len() + 2;
                    if header_bytes > MAX_HEADER_BYTES || headers.len() >= MAX_HEADER_FIELDS {
                        return Err(ReadError::HeadersTooLarge(version));
                    }
                    headers.push(match FromStr::from_str(line.as_str().trim()) {
                        // TODO: remove this conversion
                        Ok(h) => h,
                        _ => return Err(ReadError::WrongHeader(version)),
                    });
                }

                if let Some(why) = head_rules::host_fault(&headers, &version) {
                    return Err(ReadError::BadHead(why, version));
                }
                headers
            };

            (method, path, version, headers)
        };
        // Patched: the body may be as slow as any other silence, not bound by the header deadline
        if std::mem::take(&mut self.timeout_lowered) {
            self.control
                .set_read_timeout(self.client_timeout)
                .map_err(|_| ReadError::ReadIoError)?;
        }

        // building the writer for the request
        let writer = self.sink.next().unwrap();

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        // building the next reader
        let request = crate::request::new_request(
            self.secure,
            method,
            path,
            version.clone(),
            headers,
            self.remote_addr,
            data_source,
            writer,
            Some(RequestControl {
                socket: Arc::clone(&self.control),
                closing: Arc::clone(&self.closing),
            }),
        )
        .map_err(|e| {
            use crate::request;
            match e {
                request::RequestCreationError::CreationIoError => ReadError::ReadIoError,
                request::RequestCreationError::ExpectationFailed => {
                    ReadError::ExpectationFailed(version)
                }
                request::RequestCreationError::BadFraming(status, why)
                | request::RequestCreationError::BadBody(status, why) => {
                    ReadError::BadFraming(status, why, version)
                }
            }
        })?;

        // return the request
        Ok(request)
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            return None;
        }

        loop {
            // Patched: once the request before is done with the socket, an answer it got before
            // its body was read ends the connection.
            self.next_header_source.wait_turn();
            if self.closing.load(Ordering::Acquire) {
                self.linger();
                return None;
            }
            let mut rq = match self.read() {
                Err(ReadError::TimedOut(started)) => {
                    if started {
                        self.refuse(408, "the request did not arrive in time", HTTPVersion(1, 1));
                    }
                    return None;
                }

                Err(ReadError::RequestLineTooLong) => {
                    let message = "request line longer than 8 KiB";
                    self.refuse(414, message, HTTPVersion(1, 1));
                    return None;
                }

                Err(ReadError::HeadersTooLarge(ver)) => {
                    let message = "request headers larger than 32 KiB or more than 100 fields";
                    self.refuse(431, message, ver);
                    return None;
                }

                // Patched: these three answer a JSON error and close (0.12.0: an empty 400).
                // Where the next request would start is unknown.
                Err(ReadError::WrongRequestLine) => {
                    let message = "malformed request line (expected METHOD PATH HTTP/1.1)";
                    self.refuse(400, message, HTTPVersion(1, 1));
                    return None;
                }

                Err(ReadError::WrongHeader(ver)) => {
                    self.refuse(400, "malformed header line (expected Name: value)", ver);
                    return None;
                }

                Err(ReadError::BadFraming(status, why, ver)) => {
                    self.refuse(status, why, ver);
                    return None;
                }

                Err(ReadError::UnsupportedVersion) => {
                    let message = "only HTTP/1.0 and HTTP/1.1 are served";
                    self.refuse(505, message, HTTPVersion(1, 1));
                    return None;
                }

                // Patched: a JSON error (0.12.0: an empty 417); the body, if any, is unread,
                // so the connection closes.
                Err(ReadError::ExpectationFailed(ver)) => {
                    let message = "the only expectation understood is Expect: 100-continue";
                    self.refuse(417, message, ver);
                    return None;
                }

                // Patched: a head that two parsers could read two ways (see `head_rules`), or one
                // that is not ASCII, gets a 400 that says why (0.12.0: silence or a request).
                Err(ReadError::BadHead(why, ver)) => {
                    self.refuse(400, why, ver);
                    return None;
                }

                Err(ReadError::ReadIoError) => return None,

                Ok(rq) => rq,
            };

            // updating the status of the connection
            let http_1_0 = *rq.http_version() == HTTPVersion(1, 0);

            // Patched: what the answer says of the connection, where that is not its version's
            // default (an upgraded connection's 101 is written by whoever takes it; any other
            // answer to an upgrade request is its last). The `Connection` headers are read as
            // token lists, all of them (0.12.0: a substring of the first one).
            let headers = rq.headers();
            let (last, option) = if connection_has(headers, "close")
                || connection_has(headers, "upgrade")
            {
                (true, Some("close"))
            } else if connection_has(headers, "keep-alive") && http_1_0 {
                (false, Some("keep-alive"))
            } else {
                (http_1_0, None)
            };
            self.no_more_requests = last;
            if let Some(option) = option {
                rq.answer_connection(option);
            }

            // returning the request
            return Some(rq);
        }
    }
}

/// Parses a "HTTP/1.1" string.
/// Patched: HTTP/1.0 and HTTP/1.1 are served; any other version written `HTTP/d.d` is one not
/// served (505), anything else a malformed request line. 0.12.0 served `HTTP/0.9` as such
/// (answering with an `HTTP/0.9` status line) and took `HTTP/1.2` for a malformed line.
fn parse_http_version(version: &str) -> Result<HTTPVersion, ReadError> {
    match version.as_bytes() {
        b"HTTP/1.0" => Ok(HTTPVersion(1, 0)),
        b"HTTP/1.1" => Ok(HTTPVersion(1, 1)),
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            Err(ReadError::UnsupportedVersion)
        }
        _ => Err(ReadError::WrongRequestLine),
    }
}

/// Parses the request line of the request.
/// eg. GET / HTTP/1.1
/// Patched: exactly three parts, one space apart (0.12.0 ignored a fourth), and the target in
/// origin form (see [`origin_form`]).
fn parse_request_line(line: &str) -> Result<(Method, String, HTTPVersion), ReadError> {
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::WrongRequestLine);
    };
    let method = method.parse().map_err(|_| ReadError::WrongRequestLine)?;
    if target.is_empty() {
        return Err(ReadError::WrongRequestLine);
    }
    Ok((method, origin_form(target), parse_http_version(version)?))
}

/// Patched: a request target in origin form (`/path?query`). An absolute-form target
/// (`http://host:port/path?query`), which RFC 9112 (section 3.2.2) says a server must accept,
/// loses its scheme and authority; 0.12.0 passed it on whole, and no route matched it.
fn origin_form(target: &str) -> String {
    for scheme in ["http://", "https://"] {
        let named = target
            .get(..scheme.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme));
        if named {
            let rest = &target[scheme.len()..];
            let path = &rest[rest.find(['/', '?']).unwrap_or(rest.len())..];
            return if path.starts_with('/') {
                path.to_string()
            } else {
                format!("/{path}")
            };
        }
    }
    target.to_string()
}

#[cfg(test)]
mod test {
    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = super::parse_request_line("GET /hello HTTP/1.1").unwrap();

        assert!(method == crate::Method::Get);
        assert!(path == "/hello");
        assert!(ver == crate::common::HTTPVersion(1, 1));

        assert!(super::parse_request_line("GET /hello").is_err());
        assert!(super::parse_request_line("qsd qsd qsd").is_err());
        assert!(super::parse_request_line("GET /hello HTTP/1.1 x").is_err());
        assert!(super::parse_request_line("GET  /hello HTTP/1.1").is_err());
        assert!(super::parse_request_line(" GET /hello HTTP/1.1").is_err());
        assert!(super::parse_request_line("GET /hello HTTP/1.1 ").is_err());
    }

    #[test]
    fn versions_other_than_1_0_and_1_1_are_not_served() {
        use super::ReadError;
        for version in ["HTTP/0.9", "HTTP/1.2", "HTTP/2.0", "HTTP/3.0"] {
            let line = format!("GET / {version}");
            let read = super::parse_request_line(&line);
            assert!(matches!(read, Err(ReadError::UnsupportedVersion)), "{}", version);
        }
        for version in ["HTTP/1", "HTTP/1.10", "http/1.1", "HTTP/x.1"] {
            let line = format!("GET / {version}");
            let read = super::parse_request_line(&line);
            assert!(matches!(read, Err(ReadError::WrongRequestLine)), "{}", version);
        }
    }

    #[test]
    fn an_absolute_form_target_is_read_in_origin_form() {
        for (target, path) in [
            ("http://pool.example:8080/status/x?wait=1", "/status/x?wait=1"),
            ("HTTPS://pool.example/health", "/health"),
            ("http://pool.example", "/"),
            ("http://pool.example?x=1", "/?x=1"),
            ("/health", "/health"),
            ("*", "*"),
        ] {
            let line = format!("GET {target} HTTP/1.1");
            let (_, got, _) = super::parse_request_line(&line).unwrap();
            assert_eq!(got, path, "{target}");
        }
    }
}
