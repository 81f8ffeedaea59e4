//! Whether the job store's file is still the one this coordinator opened. An `rm -rf` of the
//! state directory, or another copy of the store put in its place, while the coordinator runs
//! leaves it writing into a file no restart will read: every job acknowledged from then on
//! would be lost at the next start.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The device and inode of the file opened at a path.
pub struct FileIdentity {
    path: PathBuf,
    dev: u64,
    ino: u64,
    /// Whether the loss now in force was logged.
    logged: AtomicBool,
}

impl FileIdentity {
    /// The identity of the file at `path` now.
    pub fn of(path: &Path) -> io::Result<FileIdentity> {
        let meta = std::fs::metadata(path)?;
        Ok(FileIdentity {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
            logged: AtomicBool::new(false),
        })
    }

    /// `None` while the path still names the file that was opened; else what became of it (for
    /// answers: the path is only logged).
    /// The first call that sees the loss logs it, and the first that sees the file back says
    /// so. A path that cannot be looked at for another reason (a failing disk) is not called
    /// lost: the store's own errors tell of that.
    pub fn lost(&self) -> Option<String> {
        let lost = match std::fs::metadata(&self.path) {
            Ok(meta) if meta.dev() == self.dev && meta.ino() == self.ino => None,
            Ok(_) => Some(
                "the job store's file was replaced by another file while the coordinator runs"
                    .to_string(),
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Some(
                "the job store's file was removed while the coordinator runs (was the state \
                 directory deleted?)"
                    .to_string(),
            ),
            Err(_) => None,
        };
        match &lost {
            Some(why) if !self.logged.swap(true, Ordering::AcqRel) => log::error!(
                "{} ({why}): nothing written from now on would be read by the next start, so \
                 submits are refused. Put the state directory back as it was (the same files), \
                 or stop the coordinator: jobs it still follows are lost at the next start",
                self.path.display()
            ),
            None if self.logged.swap(false, Ordering::AcqRel) => log::warn!(
                "The job store {} is the file this coordinator opened again; submits are taken",
                self.path.display()
            ),
            _ => {}
        }
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_or_replaced_file_is_lost_and_one_put_back_is_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("jobs.db");
        std::fs::write(&path, b"store").expect("file");
        let identity = FileIdentity::of(&path).expect("identity");
        assert_eq!(identity.lost(), None);
        let aside = dir.path().join("aside");
        std::fs::rename(&path, &aside).expect("moved away");
        assert!(identity.lost().is_some_and(|w| w.contains("was removed")));
        std::fs::write(&path, b"another").expect("another file");
        assert!(identity.lost().is_some_and(|w| w.contains("replaced")));
        std::fs::rename(&aside, &path).expect("put back");
        assert_eq!(identity.lost(), None);
    }
}
