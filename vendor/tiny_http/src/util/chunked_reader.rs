//! Patched: a request body in the chunked transfer coding, read strictly (RFC 9112, section 7.1)
//! and within bounds. The `chunked_transfer` crate's decoder that 0.12.0 used kept every byte of
//! a chunk-size line until its end (one line of digits took 145 MB in 8 s), read any amount of
//! chunk extension, took `+5` or ` 5 ` as a size, and refused every trailer field.

use std::convert::TryFrom;
use std::io::{Error, ErrorKind, Read, Result as IoResult};

use super::BodyEnd;

/// The longest chunk-size line, its extensions included.
pub const MAX_CHUNK_LINE: usize = 4096;
/// The largest trailer section (as the header block's limit).
pub const MAX_TRAILER_BYTES: usize = 32 * 1024;
/// The most trailer fields.
pub const MAX_TRAILER_FIELDS: usize = 100;
/// The most hex digits of a chunk size (leading zeros included).
const MAX_SIZE_DIGITS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk's data, with this many bytes left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// In the trailer section: this many bytes and fields read so far.
    Trailers(usize, usize),
    /// The body ended.
    Done,
    /// The body broke a rule; every later read fails.
    Failed,
}

/// Reads the data of a chunked body from `source`, and nothing past its end. Marks `end` once
/// the last chunk and the trailer section (whose fields are dropped) were read.
pub struct ChunkedReader<R: Read> {
    source: R,
    state: State,
    /// The part of the current line read so far (kept across a failed read, so a retry after a
    /// timeout goes on where it stopped).
    line: Vec<u8>,
    end: BodyEnd,
}

impl<R: Read> ChunkedReader<R> {
    /// A reader of the chunked body that `source` starts with.
    pub fn new(source: R, end: BodyEnd) -> Self {
        ChunkedReader {
            source,
            state: State::Size,
            line: Vec::new(),
            end,
        }
    }

    /// Reads one line ending in CRLF into `self.line` (without its CRLF), at most `max` bytes.
    fn read_line(&mut self, max: usize, too_long: &'static str) -> IoResult<()> {
        loop {
            if self.line.ends_with(b"\r\n") {
                self.line.truncate(self.line.len() - 2);
                return Ok(());
            }
            if self.line.len() >= max + 2 {
                return Err(invalid(too_long));
            }
            let mut byte = [0u8];
            match self.source.read(&mut byte) {
                Ok(0) => return Err(truncated()),
                Ok(_) => {
                    if self.line.last() == Some(&b'\r') && byte[0] != b'\n' {
                        return Err(invalid("a CR not followed by LF in a chunk's framing"));
                    }
                    if byte[0] == b'\n' && self.line.last() != Some(&b'\r') {
                        return Err(invalid("a line of a chunk's framing ends in LF, not CRLF"));
                    }
                    self.line.push(byte[0]);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// One step of the framing outside chunk data.
    fn step(&mut self) -> IoResult<()> {
        match self.state {
            State::Size => {
                self.read_line(MAX_CHUNK_LINE, "a chunk-size line longer than 4 KiB")?;
                let size = chunk_size(&self.line)?;
                self.line.clear();
                self.state = if size == 0 {
                    State::Trailers(0, 0)
                } else {
                    State::Data(size)
                };
            }
            State::DataEnd => {
                self.read_line(0, "chunk data longer than its size")?;
                self.state = State::Size;
            }
            State::Trailers(bytes, fields) => {
                let room = MAX_TRAILER_BYTES.saturating_sub(bytes);
                self.read_line(room, "a trailer section larger than 32 KiB")?;
                if self.line.is_empty() {
                    self.state = State::Done;
                    self.end.mark();
                } else if fields + 1 > MAX_TRAILER_FIELDS {
                    return Err(invalid("more than 100 trailer fields"));
                } else if !self.line.contains(&b':') || self.line[0] == b' ' || self.line[0] == b'\t' {
                    return Err(invalid("a malformed trailer field (expected Name: value)"));
                } else {
                    self.state = State::Trailers(bytes + self.line.len() + 2, fields + 1);
                }
                self.line.clear();
            }
            State::Data(_) | State::Done | State::Failed => {}
        }
        Ok(())
    }

    fn read_inner(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        loop {
            match self.state {
                State::Done => return Ok(0),
                State::Failed => return Err(invalid("the chunked body is malformed")),
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(0);
                    }
                    let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let got = self.source.read(&mut buf[..want])?;
                    if got == 0 {
                        return Err(truncated());
                    }
                    let left = left - got as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    return Ok(got);
                }
                State::Size | State::DataEnd | State::Trailers(..) => self.step()?,
            }
        }
    }
}

impl<R: Read> Read for ChunkedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        self.read_inner(buf).map_err(|e| {
            // A timeout or an interrupted read may be tried again; a broken rule may not.
            let retry = matches!(
                e.kind(),
                ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
            );
            if !retry {
                self.state = State::Failed;
            }
            e
        })
    }
}

/// The size a chunk-size line gives: hex digits, then nothing or extensions after `;`.
fn chunk_size(line: &[u8]) -> IoResult<u64> {
    let digits_end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let (digits, rest) = line.split_at(digits_end);
    if digits.is_empty() {
        return Err(invalid("a chunk size that is not hex digits"));
    }
    if digits.len() > MAX_SIZE_DIGITS {
        return Err(invalid("a chunk size of more than 16 hex digits"));
    }
    let rest_ok = match rest.iter().position(|b| *b != b' ' && *b != b'\t') {
        None => rest.is_empty(),
        Some(i) => rest[i] == b';' && rest.iter().all(|b| *b == b'\t' || (b' '..=b'~').contains(b)),
    };
    if !rest_ok {
        return Err(invalid("a chunk size followed by something other than ;extensions"));
    }
    let text = std::str::from_utf8(digits).map_err(|_| invalid("a chunk size that is not hex digits"))?;
    u64::from_str_radix(text, 16).map_err(|_| invalid("a chunk size that is not hex digits"))
}

fn invalid(why: &'static str) -> Error {
    Error::new(ErrorKind::InvalidData, format!("chunked body: {why}"))
}

fn truncated() -> Error {
    Error::new(
        ErrorKind::UnexpectedEof,
        "chunked body: the connection ended before its last chunk",
    )
}

#[cfg(test)]
mod tests {
    use super::{ChunkedReader, BodyEnd};
    use std::io::{Cursor, Read};

    fn decode(body: &[u8]) -> (Result<Vec<u8>, String>, bool, Vec<u8>) {
        let end = BodyEnd::new(false);
        let mut source = Cursor::new(body.to_vec());
        let mut out = Vec::new();
        let got = ChunkedReader::new(&mut source, end.clone())
            .read_to_end(&mut out)
            .map(|_| out)
            .map_err(|e| e.to_string());
        let pos = source.position() as usize;
        (got, end.reached(), body[pos..].to_vec())
    }

    #[test]
    fn reads_chunks_extensions_and_trailers_and_nothing_after() {
        let (got, end, rest) =
            decode(b"5;name=\"v\"\r\nhello\r\n06 ; x\r\n world\r\n000\r\nX-Sum: 1\r\n\r\nNEXT");
        assert_eq!(got.unwrap(), b"hello world");
        assert!(end);
        assert_eq!(rest, b"NEXT");
    }

    #[test]
    fn refuses_what_two_parsers_could_read_differently() {
        for bad in [
            &b"+5\r\nhello\r\n0\r\n\r\n"[..],
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5 x\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5\rhello\r\n0\r\n\r\n",
            b"\r\n",
            b"10000000000000000\r\n",
            b"0\r\nno colon\r\n\r\n",
            b"0\r\n folded: x\r\n\r\n",
        ] {
            let (got, end, _) = decode(bad);
            assert!(got.is_err(), "{:?} was read", String::from_utf8_lossy(bad));
            assert!(!end);
        }
    }

    #[test]
    fn lines_and_trailers_are_bounded() {
        let mut long = b"5;".to_vec();
        long.extend(std::iter::repeat(b'a').take(10 << 20));
        let (got, _, rest) = decode(&long);
        assert!(got.unwrap_err().contains("longer than 4 KiB"));
        assert!(rest.len() > (10 << 20) - 8192, "read far past the limit");

        let digits = vec![b'0'; 10 << 20];
        let (got, _, _) = decode(&digits);
        assert!(got.is_err());

        let mut many = b"0\r\n".to_vec();
        for i in 0..101 {
            many.extend(format!("X-{i}: 1\r\n").bytes());
        }
        many.extend(b"\r\n");
        assert!(decode(&many).0.unwrap_err().contains("more than 100"));

        let mut large = b"0\r\nX-Big: ".to_vec();
        large.extend(std::iter::repeat(b'a').take(40 << 10));
        large.extend(b"\r\n\r\n");
        assert!(decode(&large).0.unwrap_err().contains("32 KiB"));
    }

    #[test]
    fn a_cut_body_is_an_error_not_an_end() {
        for cut in [&b"5\r\nhel"[..], b"5\r\nhello\r\n", b"0\r\n", b"0\r\nX: 1\r\n", b""] {
            let (got, end, _) = decode(cut);
            assert!(got.is_err());
            assert!(!end);
        }
    }
}
