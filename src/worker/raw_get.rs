//! A `GET` whose target goes to the worker byte for byte. sandrun decodes no `%xx` in a request
//! target, so a file named `é.txt` or `a#b.txt` must be asked for by its own bytes, and ureq 2
//! percent-encodes them (or cuts at `#`). Over `http://` or `https://` (the same TLS settings as
//! every other call), one request per connection, explicit timeouts, and a body that must give
//! its whole `Content-Length`.

use crate::base::shortage::is_shortage;
use crate::worker::answer_head::{read_head, Head};
use crate::worker::bound_request::RequestTimeouts;
use crate::worker::tls::Connector;
use crate::worker::workers_file::{endpoint_parts, EndpointParts};
use std::fmt;
use std::io::{self, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use ureq::{ReadWrite, TlsConnector};

/// Most bytes read of an error answer's body.
const MAX_ERROR_BODY: u64 = 64 * 1024;

/// Why a raw `GET` gave no body.
#[derive(Debug)]
pub enum GetError {
    /// No connection could be made: nothing was sent.
    Unreachable(String),
    /// The coordinator was short of descriptors, memory or socket buffers to connect.
    Shortage(String),
    /// The connection or the TLS session failed, or the answer was not HTTP.
    Transport(String),
    /// The worker answered another status than 200, with this body (its start).
    Status {
        /// HTTP status.
        code: u16,
        /// The body's first bytes.
        body: Vec<u8>,
    },
}

impl fmt::Display for GetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable(why) | Self::Shortage(why) | Self::Transport(why) => f.write_str(why),
            Self::Status { code, body } => {
                write!(f, "HTTP {code}: {}", String::from_utf8_lossy(body))
            }
        }
    }
}

/// A 200 answer's body: a file downloaded from a worker.
pub struct Download {
    /// Its `Content-Length`, when the worker sent one.
    pub length: Option<u64>,
    /// The body; fails if the connection ends before `length` bytes came.
    pub reader: Box<dyn Read + Send>,
}

/// `GET {endpoint's path}{target}` with `target` sent as its bytes are.
pub fn get(
    endpoint: &str,
    target: &[u8],
    timeouts: RequestTimeouts,
    tls: &Connector,
) -> Result<Download, GetError> {
    let parts = endpoint_parts(endpoint);
    let EndpointParts {
        authority, prefix, ..
    } = parts;
    let mut stream = open(&parts, timeouts, tls)?;
    let transport = |e: io::Error| GetError::Transport(e.to_string());
    let mut head = format!("GET {prefix}").into_bytes();
    head.extend_from_slice(target);
    head.extend_from_slice(
        format!(
            " HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: trusted-pool/{}\r\nConnection: close\r\n\r\n",
            env!("CARGO_PKG_VERSION")
        )
        .as_bytes(),
    );
    stream
        .write_all(&head)
        .and_then(|()| stream.flush())
        .map_err(transport)?;
    let mut reader = BufReader::new(stream);
    let Head {
        status: code,
        length,
    } = read_head(&mut reader).map_err(transport)?;
    if code != 200 {
        let mut body = Vec::new();
        let _ = reader
            .take(length.unwrap_or(MAX_ERROR_BODY).min(MAX_ERROR_BODY))
            .read_to_end(&mut body);
        return Err(GetError::Status { code, body });
    }
    let reader: Box<dyn Read + Send> = match length {
        Some(left) => Box::new(Exact {
            inner: reader,
            left,
        }),
        None => Box::new(reader),
    };
    Ok(Download { length, reader })
}

/// A TCP connection to the first address of `host` that takes one.
pub fn connect(host: &str, port: u16, timeouts: RequestTimeouts) -> Result<TcpStream, GetError> {
    let addresses = (host, port)
        .to_socket_addrs()
        .map_err(|e| GetError::Unreachable(format!("cannot resolve {host}: {e}")))?;
    let mut last = format!("{host} has no address");
    for address in addresses {
        match TcpStream::connect_timeout(&address, timeouts.connect) {
            Ok(stream) => return Ok(stream),
            Err(e) if is_shortage(&e) => {
                return Err(GetError::Shortage(format!(
                    "cannot connect to {address}: {e}"
                )))
            }
            Err(e) => last = format!("cannot connect to {address}: {e}"),
        }
    }
    Err(GetError::Unreachable(last))
}

/// A connection to the host and port of `parts`, its socket's reads and writes bounded by
/// `timeouts.io`, speaking TLS with `tls`'s settings for an `https://` endpoint: what a
/// download and a job's stream are read on.
pub fn open(
    parts: &EndpointParts<'_>,
    timeouts: RequestTimeouts,
    tls: &Connector,
) -> Result<Box<dyn ReadWrite>, GetError> {
    let tcp = connect(parts.host, parts.port, timeouts)?;
    let transport = |e: io::Error| GetError::Transport(e.to_string());
    tcp.set_read_timeout(Some(timeouts.io)).map_err(transport)?;
    tcp.set_write_timeout(Some(timeouts.io))
        .map_err(transport)?;
    if !parts.tls {
        return Ok(Box::new(tcp));
    }
    tls.connect(parts.host, Box::new(tcp))
        .map_err(|e| GetError::Transport(format!("TLS with {} failed: {e}", parts.authority)))
}

/// A body of a known length: an end before it is an error, not a short file.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the body ended {} bytes before its Content-Length",
                    self.left
                ),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
