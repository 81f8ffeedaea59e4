//! The multipart/form-data body a dispatch sends to a worker: streamed from the spool, with an
//! exact length known up front (sandrun needs `Content-Length`, it cannot read chunked bodies).

use crate::base::job::Span;
use crate::store::spool::UploadSource;
use std::io::{self, Cursor, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// One part of the body.
#[derive(Debug, Clone)]
pub struct Part {
    /// Form field name (`files` or `manifest`).
    pub name: &'static str,
    /// Filename for `files` parts.
    pub filename: Option<String>,
    /// Content type header of the part, if any.
    pub content_type: Option<String>,
    /// The upload holding the bytes.
    pub source: UploadSource,
    /// Where in that upload.
    pub span: Span,
}

/// sandrun's largest request, its head and body together (`MAX_REQUEST_SIZE`): a longer one
/// is answered 413 before its body is read, and the connection closed under the sender.
pub const WORKER_MAX_REQUEST: u64 = 100 * 1024 * 1024;

/// The most a submit's head (request line and headers, a long endpoint's `Host` included)
/// takes beside its body, for [`WORKER_MAX_REQUEST`].
pub const SUBMIT_HEAD_ROOM: u64 = 1024;

/// What a dispatch's boundary begins with; [`BOUNDARY_TOKEN_LEN`] random hex digits follow.
pub const BOUNDARY_PREFIX: &str = "----trusted-pool-";

/// The random hex digits of a dispatch's boundary.
pub const BOUNDARY_TOKEN_LEN: usize = 32;

/// The head of one part: its boundary line and headers (after the CRLF that ends the part
/// before it, for all but the first).
fn part_head(
    boundary: &str,
    first: bool,
    name: &str,
    filename: Option<&str>,
    content_type: Option<&str>,
) -> String {
    let mut head = String::new();
    if !first {
        head.push_str("\r\n");
    }
    head.push_str(&format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\""
    ));
    if let Some(filename) = filename {
        head.push_str(&format!("; filename=\"{filename}\""));
    }
    head.push_str("\r\n");
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// The closing boundary.
fn tail(boundary: &str) -> String {
    format!("\r\n--{boundary}--\r\n")
}

/// The length of the body a dispatch sends for `files` (filename, content type, size each)
/// and a manifest of `manifest` bytes, with a boundary of the dispatch's length.
pub fn submit_body_length<'a>(
    files: impl Iterator<Item = (&'a str, &'a str, u64)>,
    manifest: Option<u64>,
) -> u64 {
    let boundary = format!("{BOUNDARY_PREFIX}{}", "0".repeat(BOUNDARY_TOKEN_LEN));
    let mut length = 0u64;
    let mut first = true;
    for (filename, content_type, size) in files {
        let head = part_head(
            &boundary,
            first,
            "files",
            Some(filename),
            Some(content_type),
        );
        length += head.len() as u64 + size;
        first = false;
    }
    if let Some(size) = manifest {
        length += part_head(&boundary, first, "manifest", None, None).len() as u64 + size;
    }
    length + tail(&boundary).len() as u64
}

/// A body ready to stream.
pub struct MultipartBody {
    /// The boundary, for the `Content-Type` header.
    pub boundary: String,
    /// Exact byte length, for the `Content-Length` header.
    pub length: u64,
    pieces: Vec<Piece>,
    finished: Arc<AtomicBool>,
}

enum Piece {
    Bytes(Cursor<Vec<u8>>),
    Upload(UploadSource, Span),
}

impl MultipartBody {
    /// Lays out the parts around `boundary`.
    pub fn new(boundary: String, parts: &[Part]) -> Self {
        let mut pieces = Vec::with_capacity(parts.len() * 2 + 1);
        let mut length = 0u64;
        for (i, part) in parts.iter().enumerate() {
            let head = part_head(
                &boundary,
                i == 0,
                part.name,
                part.filename.as_deref(),
                part.content_type.as_deref(),
            );
            length += head.len() as u64 + part.span.size;
            pieces.push(Piece::Bytes(Cursor::new(head.into_bytes())));
            pieces.push(Piece::Upload(part.source.clone(), part.span));
        }
        let tail = tail(&boundary);
        length += tail.len() as u64;
        pieces.push(Piece::Bytes(Cursor::new(tail.into_bytes())));
        MultipartBody {
            boundary,
            length,
            pieces,
            finished: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A flag that turns true once the whole body has been read (handed to the connection).
    pub fn finished_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.finished)
    }

    /// The streaming reader.
    pub fn into_reader(self) -> BodyReader {
        BodyReader {
            pieces: self.pieces.into_iter(),
            current: None,
            finished: self.finished,
        }
    }
}

/// Reads the body piece by piece, opening a spooled part only when its turn comes.
pub struct BodyReader {
    pieces: std::vec::IntoIter<Piece>,
    current: Option<Box<dyn Read + Send>>,
    finished: Arc<AtomicBool>,
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(reader) = self.current.as_mut() {
                let n = reader.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                self.current = None;
            }
            match self.pieces.next() {
                Some(Piece::Bytes(c)) => self.current = Some(Box::new(c)),
                Some(Piece::Upload(source, span)) => self.current = Some(source.open(span)?),
                None => {
                    self.finished.store(true, Ordering::SeqCst);
                    return Ok(0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_length_a_submit_is_checked_with_is_the_length_a_dispatch_sends() {
        let bytes: Arc<[u8]> = Arc::from(&b"print(1)\n{\"entrypoint\":\"main.py\"}"[..]);
        let source = UploadSource::Held(bytes);
        let file = Part {
            name: "files",
            filename: Some("main.py".into()),
            content_type: Some("text/x-python".into()),
            source: source.clone(),
            span: Span { offset: 0, size: 9 },
        };
        let manifest = Part {
            name: "manifest",
            filename: None,
            content_type: None,
            source,
            span: Span {
                offset: 9,
                size: 24,
            },
        };
        let boundary = format!("{BOUNDARY_PREFIX}{}", "f".repeat(BOUNDARY_TOKEN_LEN));
        let body = MultipartBody::new(boundary, &[file, manifest]);
        let mut sent = Vec::new();
        body.into_reader()
            .read_to_end(&mut sent)
            .unwrap_or_else(|e| panic!("{e}"));
        let files = [("main.py", "text/x-python", 9)].into_iter();
        assert_eq!(submit_body_length(files, Some(24)), sent.len() as u64);
        assert_eq!(submit_body_length([].into_iter(), None), 2 + 2 + 49 + 2 + 2);
    }
}
