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
            let mut head = String::new();
            if i > 0 {
                head.push_str("\r\n");
            }
            head.push_str(&format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{}\"",
                part.name
            ));
            if let Some(filename) = &part.filename {
                head.push_str(&format!("; filename=\"{filename}\""));
            }
            head.push_str("\r\n");
            if let Some(ct) = &part.content_type {
                head.push_str(&format!("Content-Type: {ct}\r\n"));
            }
            head.push_str("\r\n");
            length += head.len() as u64 + part.span.size;
            pieces.push(Piece::Bytes(Cursor::new(head.into_bytes())));
            pieces.push(Piece::Upload(part.source.clone(), part.span));
        }
        let tail = format!("\r\n--{boundary}--\r\n");
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
