//! `Idempotency-Key` on `POST /submit`: the header's key, and the digest of what a submit holds
//! (its files, manifest and options, not its multipart framing, whose boundary a client draws
//! afresh for every attempt), against which a repeated submit is checked.

use crate::base::hex::hex;
use crate::http::headers;
use sha2::{Digest, Sha256};
use std::io::{self, Read};

/// The request header that names a submit.
pub const HEADER: &str = "Idempotency-Key";
/// The longest key accepted.
pub const MAX_KEY_LEN: usize = 255;

/// The key of a submit's `Idempotency-Key` header, if it has one. The value is a token, or the
/// quoted string of the IETF draft (`"8e03978e-..."`, taken without its quotes): 1 to
/// [`MAX_KEY_LEN`] visible ASCII characters, given once.
pub fn key_of<'a>(values: impl Iterator<Item = &'a str>) -> Result<Option<String>, String> {
    let given = headers::only(values)
        .map_err(|_| format!("the {HEADER} header is given twice; give it once"))?;
    let Some(value) = given else {
        return Ok(None);
    };
    let value = value.trim();
    let key = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    let visible = key.bytes().all(|b| b.is_ascii_graphic() && b != b'"');
    if key.is_empty() || key.len() > MAX_KEY_LEN || !visible {
        return Err(format!(
            "the {HEADER} header must be 1 to {MAX_KEY_LEN} visible ASCII characters without quotes inside (a UUID, say); got {} bytes",
            key.len()
        ));
    }
    Ok(Some(key.to_string()))
}

/// The digest of a submit's parts, fed part by part as they stream in.
pub struct PartsDigest(Sha256);

impl Default for PartsDigest {
    fn default() -> Self {
        PartsDigest(Sha256::new())
    }
}

impl PartsDigest {
    /// Adds one field, prefixed by its length (so that no two lists of fields feed the same
    /// bytes).
    pub fn field(&mut self, bytes: &[u8]) {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    /// The digest, in hex.
    pub fn finish(self) -> String {
        hex(&self.0.finalize())
    }
}

/// A reader that hashes what passes through it (a file's bytes, of a length not known before).
pub struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Hashing<R> {
    /// Hashes what `inner` yields.
    pub fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// The SHA-256 of everything read.
    pub fn finish(self) -> [u8; 32] {
        self.hasher.finalize().into()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_one_visible_token_or_a_quoted_one() {
        assert_eq!(key_of([].into_iter()), Ok(None));
        assert_eq!(key_of(["abc-123"].into_iter()), Ok(Some("abc-123".into())));
        assert_eq!(key_of([" \"abc\" "].into_iter()), Ok(Some("abc".into())));
        for bad in ["", "\"\"", "a b", "a\u{1}b", "é", "a\"b"] {
            assert!(key_of([bad].into_iter()).is_err(), "{bad:?}");
        }
        assert!(key_of(["a"; 2].into_iter()).is_err());
        assert!(key_of([&*"k".repeat(MAX_KEY_LEN)].into_iter()).is_ok());
        assert!(key_of([&*"k".repeat(MAX_KEY_LEN + 1)].into_iter()).is_err());
    }

    #[test]
    fn fields_are_framed_by_their_length() {
        let digest = |fields: &[&[u8]]| {
            let mut d = PartsDigest::default();
            fields.iter().for_each(|f| d.field(f));
            d.finish()
        };
        assert_eq!(digest(&[b"ab", b"c"]), digest(&[b"ab", b"c"]));
        assert_ne!(digest(&[b"ab", b"c"]), digest(&[b"a", b"bc"]));
    }

    #[test]
    fn hashing_passes_the_bytes_through() {
        let mut reading = Hashing::new(&b"hello"[..]);
        let mut out = Vec::new();
        reading
            .read_to_end(&mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out, b"hello");
        assert_eq!(reading.finish(), <[u8; 32]>::from(Sha256::digest(b"hello")));
    }
}
