//! Polling, temporary directories, tarballs and PROXY protocol headers.

use std::collections::BTreeMap;
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

/// Unpacks a `.tar.gz` into `tree` (created if missing) with the system `tar -xzf`.
pub fn untar_gz_into(archive: &[u8], tree: &Path) {
    let dir = temp_dir();
    let file = dir.path().join("archive.tar.gz");
    fs::write(&file, archive).unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
    fs::create_dir_all(tree).unwrap_or_else(|e| panic!("cannot create {}: {e}", tree.display()));
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&file)
        .arg("-C")
        .arg(tree)
        .status()
        .unwrap_or_else(|e| panic!("cannot run tar: {e}"));
    assert!(status.success(), "tar -xzf failed: {status}");
}

/// The files of a `.tar.gz`, unpacked by the system `tar -xzf`: relative path to content.
pub fn untar_gz(archive: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let dir = temp_dir();
    let tree = dir.path().join("tree");
    untar_gz_into(archive, &tree);
    let mut files = BTreeMap::new();
    let mut dirs = vec![tree.clone()];
    while let Some(dir) = dirs.pop() {
        let entries =
            fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let name = path.strip_prefix(&tree).unwrap_or(&path);
            let bytes =
                fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            files.insert(name.to_string_lossy().into_owned(), bytes);
        }
    }
    files
}

/// A PROXY protocol version 2 header: `command` (0x21 PROXY, 0x20 LOCAL), `family` (0x11
/// TCP over IPv4, 0x21 over IPv6, 0x00 unspecified), then `addresses` (and any TLVs).
pub fn proxy_v2_header(command: u8, family: u8, addresses: &[u8]) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[command, family]);
    let len = u16::try_from(addresses.len()).expect("addresses under 64 KiB");
    header.extend_from_slice(&len.to_be_bytes());
    header.extend_from_slice(addresses);
    header
}
