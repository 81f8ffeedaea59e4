//! The state directory's `lock` file: one coordinator at a time on a `--state-dir`. Two would
//! both recover and send the same queued jobs, remove each other's waiting uploads at start and
//! append to the same segment files. The lock is an exclusive `flock` held for the process's
//! life, on the directory itself and on its `lock` file; the kernel lets go of it when the
//! process ends, however it ends, so a `kill -9` never leaves a stale lock behind. Since the
//! directory is locked too, deleting the lock file by hand lets no second coordinator in. The
//! file holds the holder's process id, for the refusal.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file's name in the state directory.
pub const LOCK_FILE: &str = "lock";

/// Why the state directory could not be locked.
#[derive(Debug)]
pub enum DirLockError {
    /// Another process holds the lock (its process id, when the file says).
    InUse(PathBuf, Option<u32>),
    /// The directory or its lock file could not be created or locked.
    Io(PathBuf, io::Error),
}

impl fmt::Display for DirLockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InUse(dir, pid) => write!(
                f,
                "state directory {} is in use by another trusted-pool{}; stop that one first, or \
                 give this one a --state-dir of its own (two coordinators on one state directory \
                 would send the same jobs twice). The lock is never stale: the system lets go of \
                 it when its holder ends, however it ends; it is held on the directory itself, so \
                 deleting the lock file changes nothing",
                dir.display(),
                pid.map(|p| format!(" (process {p})")).unwrap_or_default()
            ),
            Self::Io(dir, e) => write!(
                f,
                "state directory {}: its lock file could not be taken: {e}",
                dir.display()
            ),
        }
    }
}

impl std::error::Error for DirLockError {}

/// The held lock of a state directory; it is let go when this is dropped or the process ends.
#[derive(Debug)]
pub struct DirLock {
    _dir: File,
    _file: File,
}

impl DirLock {
    /// Creates `dir` if missing and takes its lock without waiting, writing this process's id
    /// into the lock file.
    pub fn take(dir: &Path) -> Result<DirLock, DirLockError> {
        let io_error = |e| DirLockError::Io(dir.to_path_buf(), e);
        std::fs::create_dir_all(dir).map_err(io_error)?;
        let directory = File::open(dir).map_err(io_error)?;
        if !try_flock(&directory, libc::LOCK_EX).map_err(io_error)? {
            let pid = File::open(dir.join(LOCK_FILE))
                .ok()
                .and_then(|mut file| holder(&mut file));
            return Err(DirLockError::InUse(dir.to_path_buf(), pid));
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))
            .map_err(io_error)?;
        if !try_flock(&file, libc::LOCK_EX).map_err(io_error)? {
            return Err(DirLockError::InUse(dir.to_path_buf(), holder(&mut file)));
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(io_error)?;
        Ok(DirLock {
            _dir: directory,
            _file: file,
        })
    }
}

/// Whether a running coordinator holds `dir`'s lock, without taking it or writing anything:
/// `Some` with the holder's process id (when the file names one) while it is held.
pub fn holder_of(dir: &Path) -> io::Result<Option<Option<u32>>> {
    // A shared lock is refused while the coordinator holds its exclusive one; let go on close.
    let directory = match File::open(dir) {
        Ok(directory) => directory,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut file = match File::open(dir.join(LOCK_FILE)) {
        Ok(file) => Some(file),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let held = !try_flock(&directory, libc::LOCK_SH)?
        || match &file {
            Some(file) => !try_flock(file, libc::LOCK_SH)?,
            None => false,
        };
    Ok(held.then(|| file.as_mut().and_then(holder)))
}

/// Takes `file`'s `flock` of kind `operation` without waiting: false while another process
/// holds a lock that conflicts.
fn try_flock(file: &File, operation: libc::c_int) -> io::Result<bool> {
    // SAFETY: flock on a file descriptor `file` owns; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), operation | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Ok(false);
    }
    Err(e)
}

/// The process id a lock file names, if it names one.
fn holder(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.take(32).read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_directory_is_refused_and_names_the_holder() {
        let dir = std::env::temp_dir().join(format!("tp-dir-lock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = DirLock::take(&dir).expect("the first lock");
        match DirLock::take(&dir) {
            Err(DirLockError::InUse(_, pid)) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("a second lock was not refused: {other:?}"),
        }
        assert_eq!(
            holder_of(&dir).expect("probe"),
            Some(Some(std::process::id()))
        );
        std::fs::remove_file(dir.join(LOCK_FILE)).expect("the lock file removed");
        match DirLock::take(&dir) {
            Err(DirLockError::InUse(_, None)) => {}
            other => panic!("a lock without its file was not refused: {other:?}"),
        }
        assert_eq!(holder_of(&dir).expect("probe"), Some(None));
        drop(first);
        assert_eq!(holder_of(&dir).expect("probe"), None, "held after drop");
        assert!(DirLock::take(&dir).is_ok(), "the lock was not let go");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
