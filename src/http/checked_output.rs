//! An output file streamed from its worker (left there by `--max-results-bytes`, or asked for
//! while its collection is under way), held to what the worker reported when the job ended: its
//! `size_bytes` before a byte is sent, its `sha256` before the last one is. A file that changed
//! on the worker since (or a transfer gone wrong) never reaches a client whole: a size that
//! differs is refused with a 502, and bytes that hash otherwise are cut before their end, so
//! the client reads a body shorter than its `Content-Length`.

use crate::base::hex::hex;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{self, Read};

/// What the worker reported of one output when its job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported {
    /// Its size in bytes, when given.
    pub size: Option<u64>,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
}

impl Reported {
    /// The size and hash of output `path` in a worker's final `/status` (`output_files`);
    /// `None` when it gives no hash for it.
    pub fn of(worker_status: &Value, path: &str) -> Option<Reported> {
        let meta = worker_status.get("output_files")?.get(path)?;
        Some(Reported {
            size: meta.get("size_bytes").and_then(Value::as_u64),
            sha256: meta.get("sha256")?.as_str()?.to_ascii_lowercase(),
        })
    }

    /// Why a body of `length` bytes cannot be this output (`None`: it may be).
    pub fn refuses_length(&self, length: Option<u64>) -> Option<String> {
        match (self.size, length) {
            (Some(size), Some(length)) if size != length => Some(format!(
                "its worker now serves {length} bytes, and reported {size} bytes (sha256 {}) when the job ended",
                self.sha256
            )),
            _ => None,
        }
    }
}

/// Told once, with why (the hash the bytes had and the reported one), when they differ.
pub type MismatchReport = Box<dyn FnOnce(&str) + Send>;

/// A body read through a SHA-256 check: the read that would deliver its last byte (at
/// `length`) fails instead when the hash differs, and nothing past `length` is read. When the
/// length is unknown, every byte is delivered and the read at its end fails, so the answer's
/// own end is withheld.
pub struct CheckedOutput<R> {
    body: R,
    expected: String,
    hasher: Sha256,
    /// Bytes still to come, when the length is known.
    left: Option<u64>,
    /// The check's outcome, once the end was read (an error message when the hash differs).
    verdict: Option<Result<(), String>>,
    /// Called once with why, when the hash differs.
    on_mismatch: Option<MismatchReport>,
}

impl<R: Read> CheckedOutput<R> {
    /// Checks `body`, of `length` bytes when known, against `expected` (lowercase hex).
    pub fn new(
        body: R,
        expected: String,
        length: Option<u64>,
        on_mismatch: MismatchReport,
    ) -> Self {
        CheckedOutput {
            body,
            expected,
            hasher: Sha256::new(),
            left: length,
            verdict: None,
            on_mismatch: Some(on_mismatch),
        }
    }

    /// Compares the hash of everything read with the expected one, once.
    fn check(&mut self) -> Result<(), String> {
        if let Some(verdict) = &self.verdict {
            return verdict.clone();
        }
        let got = hex(&std::mem::take(&mut self.hasher).finalize());
        let verdict = if got == self.expected {
            Ok(())
        } else {
            let why = format!(
                "its bytes hash to {got}, not the sha256 {} the worker reported",
                self.expected
            );
            if let Some(report) = self.on_mismatch.take() {
                report(&why);
            }
            Err(why)
        };
        self.verdict = Some(verdict.clone());
        verdict
    }
}

impl<R: Read> Read for CheckedOutput<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(Err(why)) = &self.verdict {
            return Err(io::Error::new(io::ErrorKind::InvalidData, why.clone()));
        }
        // Nothing past the length is read: a worker that sends no length of its own is held
        // to the one it reported, and what it sends beyond is not the output.
        let room = match self.left {
            Some(left) => buf.len().min(usize::try_from(left).unwrap_or(usize::MAX)),
            None => buf.len(),
        };
        if room == 0 && !buf.is_empty() {
            self.check()
                .map_err(|why| io::Error::new(io::ErrorKind::InvalidData, why))?;
            return Ok(0);
        }
        let n = self.body.read(&mut buf[..room])?;
        self.hasher.update(&buf[..n]);
        let at_end = match &mut self.left {
            Some(left) => {
                *left = left.saturating_sub(n as u64);
                if n == 0 && *left > 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the worker closed the output before its end",
                    ));
                }
                *left == 0
            }
            None => n == 0,
        };
        if at_end {
            self.check()
                .map_err(|why| io::Error::new(io::ErrorKind::InvalidData, why))?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn sha(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    /// Reads `body` 4 bytes at a time; the bytes delivered, and whether it ended in an error.
    fn drain(mut reader: impl Read) -> (Vec<u8>, bool) {
        let mut got = Vec::new();
        let mut buf = [0u8; 4];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return (got, false),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => return (got, true),
            }
        }
    }

    fn checked(
        body: &'static [u8],
        expected: String,
        length: Option<u64>,
    ) -> (Vec<u8>, bool, bool) {
        let told = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&told);
        let reader = CheckedOutput::new(
            body,
            expected,
            length,
            Box::new(move |_| flag.store(true, Ordering::SeqCst)),
        );
        let (got, failed) = drain(reader);
        (got, failed, told.load(Ordering::SeqCst))
    }

    #[test]
    fn a_matching_body_passes_whole_and_another_loses_its_end() {
        let body: &'static [u8] = b"0123456789";
        assert_eq!(
            checked(body, sha(body), Some(10)),
            (body.to_vec(), false, false)
        );
        assert_eq!(
            checked(body, sha(body), None),
            (body.to_vec(), false, false)
        );
        let (got, failed, told) = checked(body, sha(b"other"), Some(10));
        assert_eq!((got, failed, told), (b"01234567".to_vec(), true, true));
        let (got, failed, told) = checked(body, sha(b"other"), None);
        assert!(failed && told && got == body, "{got:?}");
        let (got, failed, told) = checked(body, sha(body), Some(12));
        assert!(failed && !told && got == body, "a short body is an error");
        assert_eq!(checked(b"", sha(b""), Some(0)), (Vec::new(), false, false));
        assert_eq!(checked(b"", sha(b"x"), Some(0)), (Vec::new(), true, true));
        // Bytes past the length are not read: the answer holds the length it said.
        assert_eq!(
            checked(body, sha(b"01234"), Some(5)),
            (b"01234".to_vec(), false, false)
        );
    }

    #[test]
    fn the_reported_size_and_hash_are_read_from_the_final_status() {
        let status = serde_json::json!({"output_files": {
            "a.txt": {"size_bytes": 3, "sha256": "ABC", "type": "file"},
            "b.txt": {"size_bytes": 3},
        }});
        let a = Reported::of(&status, "a.txt").expect("a.txt");
        assert_eq!(a.sha256, "abc");
        assert!(a.refuses_length(Some(3)).is_none() && a.refuses_length(None).is_none());
        let why = a.refuses_length(Some(4)).expect("a refusal");
        assert!(
            why.contains("serves 4 bytes, and reported 3 bytes"),
            "{why}"
        );
        assert!(Reported::of(&status, "b.txt").is_none());
        assert!(Reported::of(&status, "c.txt").is_none());
    }
}
