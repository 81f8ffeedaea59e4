//! Which entries of a segment folder (`uploads/`, `results/`) are segments: regular files
//! named `<start time>-<n>`, as the coordinator names them. Anything else there (an
//! operator's `notes.txt`, a folder) is not the coordinator's: it is never read, scrubbed or
//! deleted as a segment, only named once in a warning at start.

use std::fs;
use std::path::Path;

/// The entries listed by name in the warning; the rest are counted.
const NAMED: usize = 10;

/// What a segment folder holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Listing {
    /// Its segment files.
    pub segments: Vec<String>,
    /// Its other entries (a folder's name ends with `/`).
    pub others: Vec<String>,
}

/// Whether `name` is a segment's name: `<start time>-<n>`, both in decimal digits.
pub fn is_segment_name(name: &str) -> bool {
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    name.split_once('-')
        .is_some_and(|(start, n)| digits(start) && digits(n))
}

/// The entries of the segment folder `dir` (none when it cannot be read), sorted by name: a
/// regular file (not a link) with a segment's name is a segment.
pub fn list(dir: &Path) -> Listing {
    let mut listing = Listing::default();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let file_type = entry.file_type().ok();
        if file_type.is_some_and(|t| t.is_file()) && is_segment_name(&name) {
            listing.segments.push(name);
        } else if file_type.is_some_and(|t| t.is_dir()) {
            listing.others.push(format!("{name}/"));
        } else {
            listing.others.push(name);
        }
    }
    listing.segments.sort();
    listing.others.sort();
    listing
}

/// Logs once that `dir` holds `others`, entries that are not segments, and that they are left
/// alone.
pub fn warn_of_others(dir: &Path, others: &[String]) {
    if others.is_empty() {
        return;
    }
    let mut named = others
        .iter()
        .take(NAMED)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if others.len() > NAMED {
        named.push_str(&format!(" and {} more", others.len() - NAMED));
    }
    log::warn!(
        "{} holds {} entries that are not segments (the coordinator names its files \
         <start time>-<n>): {named}. They are left alone, never read or deleted; move them out \
         of the state directory",
        dir.display(),
        others.len()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_named_as_segments_are_segments() {
        assert!(is_segment_name("1795900000-000001"));
        assert!(is_segment_name("1795900000-1234567"));
        for name in [
            "notes.txt",
            "old",
            "-000001",
            "1795900000-",
            "1795900000-00a1",
            "x-1",
        ] {
            assert!(!is_segment_name(name), "{name}");
        }
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join("1795900000-000001"), b"seg").expect("segment");
        fs::write(dir.path().join("notes.txt"), b"mine").expect("file");
        fs::create_dir(dir.path().join("1795900000-000002")).expect("folder");
        assert_eq!(
            list(dir.path()),
            Listing {
                segments: vec!["1795900000-000001".to_string()],
                others: vec!["1795900000-000002/".to_string(), "notes.txt".to_string()],
            }
        );
    }
}
