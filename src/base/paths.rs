//! URL path handling: percent-decoding, safe relative paths, and encoding for worker URLs.

use std::fmt;

/// Why a path from a URL was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// Bad percent-encoding or not UTF-8.
    BadEncoding,
    /// Empty, absolute, or with `.`/`..`/empty components, a backslash or control characters.
    Unsafe(String),
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadEncoding => write!(f, "the path is not valid percent-encoded UTF-8"),
            Self::Unsafe(p) => write!(
                f,
                "the path {p:?} is not a plain relative path (no '..', '.', empty or absolute parts, backslashes or control characters)"
            ),
        }
    }
}

/// Decodes `%XX` escapes (a `+` stays a `+`).
pub fn percent_decode(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEncoding)?;
            // Two hex digits exactly: `from_str_radix` alone also takes a sign (`%+1`).
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(PathError::BadEncoding);
            }
            let hex = std::str::from_utf8(hex).map_err(|_| PathError::BadEncoding)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| PathError::BadEncoding)?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PathError::BadEncoding)
}

/// True for a name safe to use as one path component.
pub fn is_safe_component(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\'])
        && !name.chars().any(char::is_control)
}

/// Checks a decoded relative path such as `out/result.txt`; returns it unchanged when safe.
pub fn safe_relative_path(path: &str) -> Result<&str, PathError> {
    if path.is_empty() || path.starts_with('/') || !path.split('/').all(is_safe_component) {
        return Err(PathError::Unsafe(path.to_string()));
    }
    Ok(path)
}

/// Whether a part of `path` reads as no safe component once percent-decoded (`%2e%2e` reads
/// `..`, `a%2Fb` holds a `/`): a server or proxy that decodes it would look elsewhere.
pub fn reads_otherwise_decoded(path: &str) -> bool {
    path.split('/')
        .any(|part| percent_decode(part).is_ok_and(|again| !is_safe_component(&again)))
}

/// Percent-encodes a path for a URL, keeping `/` between components.
pub fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_refuses_traversal() {
        assert_eq!(percent_decode("a%20b").as_deref(), Ok("a b"));
        assert!(safe_relative_path("out/result.txt").is_ok());
        for bad in [
            "../etc", "/abs", "a/../b", "a//b", "a\\b", "%2e%2e", "a/./b", "",
        ] {
            let decoded = percent_decode(bad).unwrap_or_default();
            assert!(safe_relative_path(&decoded).is_err(), "{bad}");
        }
        // Names that read otherwise once decoded again are safe as they are.
        for odd in ["%2e%2e", "a%2Fb.txt", "x/%2E"] {
            assert!(safe_relative_path(odd).is_ok(), "{odd}");
            assert!(reads_otherwise_decoded(odd), "{odd}");
        }
        for plain in ["p%41.txt", "%zz", "out/result.txt"] {
            assert!(!reads_otherwise_decoded(plain), "{plain}");
        }
        assert!(percent_decode("%zz").is_err());
        assert_eq!(encode_path("a b/c%"), "a%20b/c%25");
    }
}
