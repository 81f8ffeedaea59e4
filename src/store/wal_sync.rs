//! Syncs of the job store's WAL file (`--fsync batch`), on the writer's own thread.
//!
//! The writer commits each transaction without a sync (`PRAGMA synchronous = OFF`) and hands
//! its release here: the WAL is synced right after the commit, then the transaction's callbacks
//! run. Records that arrive during a commit and its sync wait in the hand-off queue
//! (`store::handoff`) and make the writer's next transaction (a group commit: under load one
//! sync covers everything that arrived during the last one).

use std::fs::File;
use std::io;
use std::path::Path;

/// What to do once a committed transaction is synced (or its sync failed).
pub type Release = Box<dyn FnOnce(Result<(), &io::Error>) + Send>;

/// The WAL file.
pub struct WalSync {
    wal: File,
}

impl WalSync {
    /// Opens the WAL file at `path` (SQLite created it when the database opened in WAL mode).
    pub fn open(path: &Path) -> io::Result<WalSync> {
        let wal = File::open(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open {} to sync it: {e}", path.display()),
            )
        })?;
        Ok(WalSync { wal })
    }

    /// Syncs the transaction just committed (unsynced), then runs its release. Returns whether
    /// the sync succeeded.
    pub fn committed(&self, release: Release) -> bool {
        let synced = self.sync();
        let ok = synced.is_ok();
        release(synced.as_ref().map(|_| ()));
        ok
    }

    /// Syncs the WAL file. Also for an act that must follow durable rows (deleting the results
    /// files of forgotten jobs).
    pub fn sync(&self) -> io::Result<()> {
        let synced = self.wal.sync_data();
        if let Err(e) = &synced {
            log::error!("The job store's WAL could not be synced: {e}");
        }
        synced
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::sync::lock;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_commit_is_released_once_synced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("jobs.db-wal");
        std::fs::write(&path, b"wal").expect("wal file");
        let wal = WalSync::open(&path).expect("wal file opens");
        let released = Arc::new(Mutex::new(Vec::new()));
        for n in 0..2u32 {
            let released = Arc::clone(&released);
            let synced = wal.committed(Box::new(move |synced| {
                assert!(synced.is_ok());
                lock(&released).push(n);
            }));
            assert!(synced);
        }
        assert_eq!(*lock(&released), vec![0, 1]);
    }
}
