//! Polling, temporary directories and tarballs.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Pause between two polls.
const POLL_PAUSE: Duration = Duration::from_millis(50);

/// Calls `check` until it gives `Some` or `deadline` has passed; then one last call decides.
pub fn poll_until<T>(deadline: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if let Some(found) = check() {
            return Some(found);
        }
        thread::sleep(POLL_PAUSE);
    }
    check()
}

/// A fresh directory under the system temp dir, removed when dropped.
pub fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("trusted-pool-test-")
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"))
}

/// A `.tar.gz` made by the system `tar -czf` holding these (relative path, content) files.
pub fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
    let dir = temp_dir();
    let tree = dir.path().join("tree");
    for (name, content) in files {
        let path = tree.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        }
        fs::write(&path, content)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }
    let archive = dir.path().join("upload.tar.gz");
    let status = Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(&tree)
        .args(files.iter().map(|(name, _)| Path::new(name)))
        .status()
        .unwrap_or_else(|e| panic!("cannot run tar: {e}"));
    assert!(status.success(), "tar -czf failed: {status}");
    fs::read(&archive).unwrap_or_else(|e| panic!("cannot read {}: {e}", archive.display()))
}
