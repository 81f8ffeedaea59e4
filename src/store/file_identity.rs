//! Whether the job store's files are still the ones this coordinator opened. An `rm -rf` of the
//! state directory, or another copy of the store put in its place, while the coordinator runs
//! leaves it writing into a file no restart will read: every job acknowledged from then on
//! would be lost at the next start. So does a deleted WAL (`jobs.db-wal`: commits go on into
//! the unlinked file) or shared-memory file (`jobs.db-shm`: another program that opens the
//! store no longer sees the coordinator's locks, and a checkpoint of its own damages the store).
//! SQLite never deletes either while the writer's connection is open: a checkpoint or
//! `journal_size_limit` truncates the WAL, it does not unlink it.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::base::sync::lock;

/// Which of the store's files an identity is of: what its loss means and what to do about it.
#[derive(Clone, Copy)]
enum Role {
    /// The database (`jobs.db`).
    Database,
    /// A file SQLite keeps beside it while the store is open (`-wal`, `-shm`), and what it is.
    Companion(&'static str),
}

/// The device and inode of the file opened at a path.
pub struct FileIdentity {
    path: PathBuf,
    role: Role,
    dev: u64,
    ino: u64,
    /// Whether the loss now in force was logged.
    logged: AtomicBool,
}

impl FileIdentity {
    /// The identity of the file at `path` now.
    pub fn of(path: &Path) -> io::Result<FileIdentity> {
        Self::with_role(path.to_path_buf(), Role::Database)
    }

    fn with_role(path: PathBuf, role: Role) -> io::Result<FileIdentity> {
        let meta = std::fs::metadata(&path)?;
        Ok(FileIdentity {
            path,
            role,
            dev: meta.dev(),
            ino: meta.ino(),
            logged: AtomicBool::new(false),
        })
    }

    /// What the file is, in an answer (its name, not its whole path).
    fn what(&self) -> String {
        match self.role {
            Role::Database => "the job store's file".to_string(),
            Role::Companion(what) => {
                let name = self.path.file_name().unwrap_or_default().to_string_lossy();
                format!("the job store's {what} ({name})")
            }
        }
    }

    /// `None` while the path still names the file that was opened; else what became of it (for
    /// answers: the path is only logged).
    /// The first call that sees the loss logs it, and the first that sees the file back says
    /// so. A path that cannot be looked at for another reason (a failing disk) is not called
    /// lost: the store's own errors tell of that.
    pub fn lost(&self) -> Option<String> {
        let lost = match std::fs::metadata(&self.path) {
            Ok(meta) if meta.dev() == self.dev && meta.ino() == self.ino => None,
            Ok(_) => Some(format!(
                "{} was replaced by another file while the coordinator runs",
                self.what()
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Some(match self.role {
                Role::Database => format!(
                    "{} was removed while the coordinator runs (was the state directory \
                     deleted?)",
                    self.what()
                ),
                Role::Companion(_) => format!(
                    "{} was removed while the coordinator runs: the coordinator must be \
                     restarted",
                    self.what()
                ),
            }),
            Err(_) => None,
        };
        match &lost {
            Some(why) if !self.logged.swap(true, Ordering::AcqRel) => log::error!(
                "{} ({why}): nothing written from now on would be read by the next start, so \
                 submits are refused. {}",
                self.path.display(),
                self.remedy()
            ),
            None if self.logged.swap(false, Ordering::AcqRel) => log::warn!(
                "The job store {} is the file this coordinator opened again; submits are taken",
                self.path.display()
            ),
            _ => {}
        }
        lost
    }

    /// What an operator does about the loss, for the log.
    fn remedy(&self) -> &'static str {
        match self.role {
            Role::Database => {
                "Put the state directory back as it was (the same files), or stop the \
                 coordinator: jobs it still follows are lost at the next start"
            }
            Role::Companion(_) => {
                "Restart the coordinator now: stop it with SIGTERM (not kill -9: its last \
                 checkpoint writes the WAL it still holds into the store) and start it again. \
                 Until then, open the store with no other program (sqlite3 would not see the \
                 coordinator's locks and could damage it)"
            }
        }
    }
}

/// How often the WAL and shared-memory files are looked at (the database itself at every
/// call): a look at one costs a path lookup, and every submit asks.
const COMPANIONS_EVERY: Duration = Duration::from_millis(100);

/// The identities of the job store's database, WAL and shared-memory files as opened.
pub struct StoreFiles {
    database: FileIdentity,
    companions: [FileIdentity; 2],
    /// When the companions were last looked at, and what was found.
    companions_seen: Mutex<(Option<Instant>, Option<String>)>,
}

/// The file SQLite keeps beside the store file `db` under `suffix` (`-wal`, `-shm`, `-journal`),
/// or another name beside it.
pub fn beside(db: &Path, suffix: &str) -> PathBuf {
    let mut path = db.as_os_str().to_owned();
    path.push(suffix);
    PathBuf::from(path)
}

impl StoreFiles {
    /// The identities of the database at `db` and of its `-wal` and `-shm` files, as the open
    /// writer's connection holds them now.
    pub fn of(db: &Path) -> io::Result<StoreFiles> {
        Ok(StoreFiles {
            database: FileIdentity::of(db)?,
            companions: [
                FileIdentity::with_role(beside(db, "-wal"), Role::Companion("WAL file"))?,
                FileIdentity::with_role(beside(db, "-shm"), Role::Companion("shared-memory file"))?,
            ],
            companions_seen: Mutex::new((None, None)),
        })
    }

    /// `None` while every file is the one opened; else what became of the first that is not
    /// (see [`FileIdentity::lost`]). The database is looked at every time, the WAL and
    /// shared-memory files at most every [`COMPANIONS_EVERY`].
    pub fn lost(&self) -> Option<String> {
        if let Some(lost) = self.database.lost() {
            return Some(lost);
        }
        let mut seen = lock(&self.companions_seen);
        if seen.0.is_none_or(|at| at.elapsed() >= COMPANIONS_EVERY) {
            *seen = (
                Some(Instant::now()),
                self.companions.iter().find_map(FileIdentity::lost),
            );
        }
        seen.1.clone()
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

    #[test]
    fn a_removed_wal_or_shared_memory_file_is_named_and_asks_for_a_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("jobs.db");
        for name in ["jobs.db", "jobs.db-wal", "jobs.db-shm"] {
            std::fs::write(dir.path().join(name), b"store").expect("file");
        }
        let files = StoreFiles::of(&db).expect("identities");
        assert_eq!(files.lost(), None);
        std::fs::remove_file(dir.path().join("jobs.db-shm")).expect("removed");
        // Looked at again once COMPANIONS_EVERY passed.
        let deadline = Instant::now() + Duration::from_secs(10);
        let seen = loop {
            match files.lost() {
                Some(why) => break Some(why),
                None if Instant::now() > deadline => break None,
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        assert!(seen
            .is_some_and(|w| w.contains("(jobs.db-shm) was removed") && w.contains("restarted")));
        std::fs::remove_file(dir.path().join("jobs.db")).expect("removed");
        assert!(files
            .lost()
            .is_some_and(|w| w.contains("state directory deleted")));
    }
}
