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
///
/// A component that still decodes to something unsafe (`%2e%2e` sent double-encoded) is refused too.
pub fn safe_relative_path(path: &str) -> Result<&str, PathError> {
    let unsafe_path = || PathError::Unsafe(path.to_string());
    if path.is_empty() || path.starts_with('/') {
        return Err(unsafe_path());
    }
    for part in path.split('/') {
        let again = percent_decode(part).unwrap_or_else(|_| part.to_string());
        if !is_safe_component(part) || !is_safe_component(&again) {
            return Err(unsafe_path());
        }
    }
    Ok(path)
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
        assert!(percent_decode("%zz").is_err());
        assert_eq!(encode_path("a b/c%"), "a%20b/c%25");
    }
}
