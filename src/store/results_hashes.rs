//! `check --state-dir DIR --verify-outputs`: every collected output read back and hashed, its
//! sha256 held against the one the coordinator serves it under. A byte changed in a results
//! segment (a failing disk, a hand that edited it) is otherwise served as it is.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::base::hex::hex;
use crate::base::job::{Span, StoredResults};

/// What the outputs read back came to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// Outputs read back and hashed.
    pub outputs: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Outputs without a known sha256 (their worker declared none, or another size, and they
    /// were collected before the hashes of such outputs were recorded): read, not compared.
    pub unhashed: u64,
}

/// Reads collected outputs back from the results segments of a state directory, one segment
/// file open at a time (a store's jobs follow each other through its segments).
pub struct OutputHasher<'a> {
    dir: &'a Path,
    open: Option<(String, File)>,
    /// What was read back so far.
    pub verified: Verified,
}

impl<'a> OutputHasher<'a> {
    /// Reads from the results segments of the state directory `dir`.
    pub fn new(dir: &'a Path) -> Self {
        OutputHasher {
            dir,
            open: None,
            verified: Verified::default(),
        }
    }

    /// Hashes each output of `stored`, whose worker's final status was `status`: from `row`
    /// (the row's results bytes) when they are held there, else from their segment. Returns
    /// what is wrong with each output whose bytes hash otherwise, or cannot be read.
    pub fn check(
        &mut self,
        stored: &StoredResults,
        status: &Value,
        row: Option<&[u8]>,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        for (name, _) in &stored.outputs {
            let Some((span, expected)) = stored.served(name, status) else {
                continue;
            };
            let (got, place) = if stored.in_row {
                let got = match row {
                    None => Err(io::Error::other("the row holds no results bytes")),
                    Some(row) => row
                        .get(range(span).unwrap_or(usize::MAX..usize::MAX))
                        .map(|b| hex(&Sha256::digest(b)))
                        .ok_or_else(|| {
                            io::Error::new(io::ErrorKind::UnexpectedEof, "past the row's results")
                        }),
                };
                (got, "in its row".to_string())
            } else {
                let place = format!(
                    "results/{} bytes {}..{}",
                    stored.segment,
                    span.offset,
                    span.offset.saturating_add(span.size)
                );
                (self.hash_segment(&stored.segment, span), place)
            };
            match (got, expected) {
                (Err(e), _) => {
                    problems.push(format!("output {name:?} cannot be read ({place}): {e}"));
                    continue;
                }
                (Ok(got), Some(expected)) if !got.eq_ignore_ascii_case(expected) => {
                    let whose = match stored.served_sha256.iter().any(|(p, _)| p == name) {
                        true => "recorded when it was collected",
                        false => "its worker declared",
                    };
                    problems.push(format!(
                        "output {name:?} ({place}) hashes to sha256 {got}, not the {expected} it is served under ({whose})"
                    ));
                }
                (Ok(_), Some(_)) => {}
                (Ok(_), None) => self.verified.unhashed += 1,
            }
            self.verified.outputs += 1;
            self.verified.bytes += span.size;
        }
        problems
    }

    /// The sha256 (lowercase hex) of `span` of results segment `segment`.
    fn hash_segment(&mut self, segment: &str, span: Span) -> io::Result<String> {
        if self.open.as_ref().is_none_or(|(name, _)| name != segment) {
            let file = File::open(self.dir.join("results").join(segment))?;
            self.open = Some((segment.to_string(), file));
        }
        let Some((_, file)) = self.open.as_mut() else {
            return Err(io::Error::other("no segment open"));
        };
        file.seek(SeekFrom::Start(span.offset))?;
        let mut hasher = Sha256::new();
        let copied = io::copy(&mut file.take(span.size), &mut hasher)?;
        if copied < span.size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the file ends {} bytes short", span.size - copied),
            ));
        }
        Ok(hex(&hasher.finalize()))
    }
}

/// `span` as a range of a byte slice, when it fits in `usize`.
fn range(span: Span) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(span.offset).ok()?;
    let end = usize::try_from(span.offset.checked_add(span.size)?).ok()?;
    Some(start..end)
}
