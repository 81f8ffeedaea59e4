//! sandrun's own HTTP/1.1 handling: one request per connection, read the way sandrun reads it.

use std::io::{self, Read, Write};

/// sandrun's read size.
const CHUNK: usize = 4096;

/// One request as sandrun sees it.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// The method, as sent.
    pub method: String,
    /// The target, as sent (query string included, nothing decoded).
    pub path: String,
    /// Header names and values as sent (sandrun looks them up by exact, case-sensitive name).
    pub headers: Vec<(String, String)>,
    /// The body sandrun got.
    pub body: Vec<u8>,
}

impl Request {
    /// The value of the header with exactly this name (case-sensitive, as sandrun does).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The path without its query string.
    pub fn route(&self) -> &str {
        self.path.split('?').next().unwrap_or_default()
    }
}

/// What reading a connection gave.
pub enum Incoming {
    /// A request.
    Request(Request),
    /// The request is over the size limit.
    TooLarge,
    /// Nothing arrived.
    Nothing,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads one request like sandrun's `handle_client`.
///
/// The body length comes only from the exact text `Content-Length: ` found in what arrived; without
/// it, whatever came with the headers is the whole request. Chunked bodies are not understood.
pub fn read_request(stream: &mut impl Read, max_bytes: usize) -> io::Result<Incoming> {
    let mut data = Vec::with_capacity(8192);
    let mut buf = [0u8; CHUNK];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if data.len() + n > max_bytes {
            return Ok(Incoming::TooLarge);
        }
        data.extend_from_slice(&buf[..n]);
        let Some(blank) = find(&data, b"\r\n\r\n") else {
            continue;
        };
        if let Some(at) = find(&data, b"Content-Length: ") {
            let start = at + 16;
            let end = find(&data[start..], b"\r\n").map_or(data.len(), |e| start + e);
            let digits: String = String::from_utf8_lossy(&data[start..end])
                .trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            let length: usize = digits.parse().map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length value")
            })?;
            let expected = (blank + 4).saturating_add(length);
            if expected > max_bytes {
                return Ok(Incoming::TooLarge);
            }
            while data.len() < expected {
                let want = CHUNK.min(expected - data.len());
                let n = stream.read(&mut buf[..want])?;
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
            }
        }
        break;
    }
    if data.is_empty() {
        return Ok(Incoming::Nothing);
    }
    Ok(Incoming::Request(parse(&data)))
}

/// sandrun's `parse_request`: request line, `Name: value` headers (one space assumed), body.
fn parse(data: &[u8]) -> Request {
    let (head, body) = match find(data, b"\r\n\r\n") {
        Some(blank) => (&data[..blank], data[blank + 4..].to_vec()),
        None => (data, Vec::new()),
    };
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let mut request = Request {
        body,
        ..Request::default()
    };
    if let Some(line) = lines.next() {
        let mut words = line.splitn(3, ' ');
        if let (Some(method), Some(path), Some(_)) = (words.next(), words.next(), words.next()) {
            request.method = method.to_string();
            request.path = path.to_string();
        }
    }
    for line in lines {
        if let Some(colon) = line.find(':') {
            let value = line.get(colon + 2..).unwrap_or_default();
            request
                .headers
                .push((line[..colon].to_string(), value.to_string()));
        }
    }
    request
}

/// One response; written with `Content-Length` and the connection then closed.
#[derive(Clone, Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers other than `Content-Length` and `Connection`.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with sandrun's default headers (`application/json`, CORS `*`).
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: vec![
                ("Access-Control-Allow-Origin".into(), "*".into()),
                ("Content-Type".into(), "application/json".into()),
            ],
            body: body.into(),
        }
    }

    /// sandrun's `{"error":"..."}` body (its text is not escaped, as in sandrun).
    pub fn error(status: u16, message: &str) -> Response {
        Response::new(status, format!("{{\"error\":\"{message}\"}}"))
    }

    /// Sets a header, replacing one of the same name.
    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.retain(|(n, _)| n != name);
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// The response as bytes: headers in name order (sandrun keeps them in a `std::map`), then
    /// `Content-Length` and `Connection: close`.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.framed(true)
    }

    /// The response as bytes, with its `Content-Length` when `with_length`; without it, the
    /// body ends at the close.
    pub fn framed(&self, with_length: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            500 => "Internal Server Error",
            _ => "Unknown",
        };
        let mut headers = self.headers.clone();
        headers.sort();
        let mut out = format!("HTTP/1.1 {} {reason}\r\n", self.status);
        for (name, value) in &headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        if with_length {
            out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        out.push_str("Connection: close\r\n\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }

    /// Writes the response, with its `Content-Length` when `with_length`.
    pub fn write_to(&self, stream: &mut impl Write, with_length: bool) -> io::Result<()> {
        stream.write_all(&self.framed(with_length))?;
        stream.flush()
    }
}
