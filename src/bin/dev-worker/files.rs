//! sandrun's file utilities: output patterns, file types, MIME types and hashes of a job directory.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use trusted_pool::base::hex::hex;

pub use trusted_pool::base::file_kinds::{file_type, format_size, mime_type};

/// What sandrun reports about one output file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileMeta {
    /// Size in bytes.
    pub size_bytes: u64,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
    /// sandrun's file type name (`text`, `data`, `code`, ..., `other`).
    pub file_type: &'static str,
}

/// sandrun's `matches_pattern`: NOT a real glob.
///
/// `*` matches all; no star means an exact match; `*suffix` (one star) is an "ends with" test, so
/// `*.txt` also matches `sub/a.txt`; `prefix*` is a "starts with" test; a leading star followed by
/// another star is a literal "contains" test of the rest; otherwise the text before the first
/// star must start the path and the text after it must end it. `?` and `**/` have no meaning.
pub fn matches_pattern(path: &str, pattern: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let Some(star) = pattern.find('*') else {
        return path == pattern;
    };
    let after = &pattern[star + 1..];
    if star == 0 && !after.contains('*') {
        return path.ends_with(after);
    }
    if star == pattern.len() - 1 {
        return path.starts_with(&pattern[..star]);
    }
    if star == 0 {
        return path.contains(after);
    }
    // sandrun compares `rfind(after)` with `size - after.size()` in unsigned arithmetic: when
    // `after` is one byte longer than the path both sides are `npos`, and that counts as a match.
    let tail_matches = if after.len() > path.len() {
        after.len() == path.len() + 1
    } else {
        path.ends_with(after)
    };
    path.starts_with(&pattern[..star]) && tail_matches
}

/// Every regular file under `dir`, as (path relative to `dir` with `/` separators, full path),
/// sorted by relative path. Symbolic links to directories are not followed.
pub fn walk(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    walk_into(dir, "", &mut found);
    found.sort();
    found
}

fn walk_into(dir: &Path, prefix: &str, found: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = format!("{prefix}{name}");
        let path = entry.path();
        match entry.file_type() {
            Ok(kind) if kind.is_dir() => walk_into(&path, &format!("{rel}/"), found),
            _ if path.is_file() => found.push((rel, path)),
            _ => {}
        }
    }
}

/// Lowercase hex SHA-256 of a file's content.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut hasher = Sha256::new();
    io::copy(&mut fs::File::open(path)?, &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

/// Lowercase hex SHA-256 of bytes.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// True when `rel` is kept by the output patterns (no patterns keep every file).
pub fn is_output(rel: &str, patterns: &[String]) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| matches_pattern(rel, p))
}

/// sandrun's `hash_directory`: metadata of every file of `dir` kept by the patterns.
pub fn hash_directory(dir: &Path, patterns: &[String]) -> BTreeMap<String, FileMeta> {
    let mut files = BTreeMap::new();
    for (rel, path) in walk(dir) {
        if !is_output(&rel, patterns) {
            continue;
        }
        let size_bytes = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let sha256 = sha256_file(&path).unwrap_or_default();
        let file_type = file_type(&rel);
        files.insert(
            rel,
            FileMeta {
                size_bytes,
                sha256,
                file_type,
            },
        );
    }
    files
}
