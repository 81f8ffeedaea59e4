//! Whether this process may write (or, for `check`, read) the state directory's files, asked
//! before anything in the directory is opened. A state directory restored or copied by
//! another user (a snapshot unpacked as root, without the `chown` after it) holds files this
//! process may open only for reading: SQLite then opens the job store read-only without a word,
//! and the first write fails as if the disk went read-only. The refusal names the file, its
//! owner and mode, the user the coordinator runs as, and the `chown` that fixes it.

use std::ffi::CStr;
use std::fmt;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::store::dir_access::access_refused;
use crate::store::dir_lock::LOCK_FILE;
use crate::store::jobs_db::DB_FILE;

/// The entries of a state directory that the coordinator writes, besides the directory itself:
/// its lock, the job store (the database, its WAL and shared-memory files) and the segment
/// folders. `check` reads them.
const ENTRIES: [&str; 6] = [
    LOCK_FILE,
    DB_FILE,
    "jobs.db-wal",
    "jobs.db-shm",
    "uploads",
    "results",
];

/// What this process needs to do with the state directory's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Write them (the coordinator).
    Write,
    /// Read them (`check`, which changes nothing).
    Read,
}

/// A file of the state directory this process may not use as it needs to.
#[derive(Debug)]
pub struct Denied {
    /// The file (or folder).
    pub path: PathBuf,
    /// The state directory it is in.
    pub state_dir: PathBuf,
    /// Its owner's user id.
    pub owner: u32,
    /// Its permission bits.
    pub mode: u32,
    /// The user id this process runs as.
    pub uid: u32,
    /// That user's name, when the system knows it.
    pub user: Option<String>,
    /// What was needed.
    pub need: Need,
    /// The system's answer.
    pub error: io::Error,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let user = self.user.clone().unwrap_or_else(|| self.uid.to_string());
        let runs_as = match &self.user {
            Some(name) => format!("uid {} ({name})", self.uid),
            None => format!("uid {}", self.uid),
        };
        write!(
            f,
            "{} cannot be {} by this {} {runs_as}: it is owned by uid {}, mode {:04o} ({}); \
             nothing was changed and the job history is intact. ",
            self.path.display(),
            match self.need {
                Need::Write => "written",
                Need::Read => "read",
            },
            match self.need {
                Need::Write => "trusted-pool, which runs as",
                Need::Read => "check, which runs as",
            },
            self.owner,
            self.mode & 0o7777,
            self.error,
        )?;
        let dir = self.state_dir.display();
        if self.error.raw_os_error() == Some(libc::EPERM) {
            // Not its owner or mode: an attribute (`chattr +i`) that no user may write past.
            return write!(
                f,
                "It is marked immutable or append-only (`lsattr -d {}`): `chattr -i -a` it",
                self.path.display()
            );
        }
        match self.need {
            Need::Write => write!(
                f,
                "The state directory was probably restored or copied as another user: give it \
                 to the user the coordinator runs as: `chown -R {user} {dir}`"
            ),
            Need::Read => write!(
                f,
                "Run the check as the coordinator's user (or root), or give the state directory \
                 to that user: `chown -R USER {dir}`"
            ),
        }
    }
}

impl std::error::Error for Denied {}

/// Refuses the state directory `dir` when this process may not use the directory itself, or
/// one of its entries that exist, as `need` says (a folder is also searched): the first such
/// one. A missing entry, or one that cannot be asked for another reason (a failing disk), is
/// left to the errors of its use.
pub fn check(dir: &Path, need: Need) -> Result<(), Denied> {
    first_denied(dir, &ENTRIES, need).map_or(Ok(()), Err)
}

fn first_denied(dir: &Path, names: &[&str], need: Need) -> Option<Denied> {
    std::iter::once(dir.to_path_buf())
        .chain(names.iter().map(|name| dir.join(name)))
        .find_map(|path| denied(dir, &path, need))
}

fn denied(dir: &Path, path: &Path, need: Need) -> Option<Denied> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let access = match need {
        Need::Write => libc::W_OK,
        Need::Read => libc::R_OK,
    };
    let search = if meta.is_dir() { libc::X_OK } else { 0 };
    let error = access_refused(path, access | search)?;
    // SAFETY: `geteuid` cannot fail and touches no memory of ours.
    let uid = unsafe { libc::geteuid() };
    Some(Denied {
        path: path.to_path_buf(),
        state_dir: dir.to_path_buf(),
        owner: meta.uid(),
        mode: meta.mode(),
        uid,
        user: user_name(uid),
        need,
        error,
    })
}

/// The name of user `uid` in the system's user database, if it has one.
fn user_name(uid: u32) -> Option<String> {
    let mut buffer = vec![0 as libc::c_char; 4096];
    // SAFETY: an all-zero `passwd` is a valid value to be filled in.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to memory of ours, `buffer` as long as the length given; the
    // strings of `entry` point into `buffer`, read before it is dropped.
    let code = unsafe {
        libc::getpwuid_r(
            uid,
            &mut entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            &mut found,
        )
    };
    if code != 0 || found.is_null() || entry.pw_name.is_null() {
        return None;
    }
    // SAFETY: `pw_name` is a NUL-terminated string in `buffer`, which is still alive.
    let name = unsafe { CStr::from_ptr(entry.pw_name) };
    name.to_str().ok().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usable_directory_is_not_denied_and_the_message_names_owner_mode_and_fix() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("jobs.db"), b"").expect("file");
        for need in [Need::Write, Need::Read] {
            assert!(first_denied(dir.path(), &["jobs.db", "missing"], need).is_none());
        }
        let denied = Denied {
            path: dir.path().join("jobs.db"),
            state_dir: dir.path().to_path_buf(),
            owner: 0,
            mode: 0o100644,
            uid: 998,
            user: Some("trusted-pool".to_string()),
            need: Need::Write,
            error: io::Error::from_raw_os_error(libc::EACCES),
        };
        let text = denied.to_string();
        for part in [
            "jobs.db cannot be written",
            "uid 998 (trusted-pool)",
            "owned by uid 0, mode 0644",
            "chown -R trusted-pool ",
        ] {
            assert!(text.contains(part), "{part:?} missing: {text}");
        }
        assert!(!text.contains("away"), "{text}");
    }
}
