//! The head of a worker's HTTP answer, read by the requests the coordinator writes itself
//! ([`crate::worker::bound_request`], [`crate::worker::raw_get`]): the status code and
//! `Content-Length`, within bounds.

use std::io::{self, BufRead, Read};

/// Longest status or header line read.
const MAX_LINE: u64 = 16 * 1024;
/// Most header lines read.
const MAX_HEADERS: usize = 100;

/// What an answer's head says.
pub struct Head {
    /// The HTTP status code.
    pub status: u16,
    /// `Content-Length`, when sent and a number.
    pub length: Option<u64>,
}

fn read_line(reader: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    reader.take(MAX_LINE).read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\n") {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the answer ended inside its head",
        ));
    }
    Ok(String::from_utf8_lossy(&line).trim_end().to_string())
}

/// Reads the status line and headers, up to the blank line.
pub fn read_head(reader: &mut impl BufRead) -> io::Result<Head> {
    let status_line = read_line(reader)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .filter(|_| status_line.starts_with("HTTP/"))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not an HTTP status line: {status_line:?}"),
            )
        })?;
    let mut length = None;
    for _ in 0..MAX_HEADERS {
        let line = read_line(reader)?;
        if line.is_empty() {
            return Ok(Head { status, length });
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<u64>().ok();
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("more than {MAX_HEADERS} header lines"),
    ))
}
