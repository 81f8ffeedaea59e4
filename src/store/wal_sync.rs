//! Syncs of the job store's WAL file (`--fsync batch`), on the writer's own thread.
//!
//! The writer commits each transaction without a sync (`PRAGMA synchronous = OFF`) and hands
//! its release here. A transaction is synced right after its commit when someone waits on one
//! of its records (an acknowledged submit, a dispatch about to be sent) or its records waited
//! their deferral in the hand-off queue (`store::handoff`): that is every transaction but the
//! last ones before the store closes, which [`WalSync::settle`] syncs. Records that arrive
//! during a commit and its sync make the writer's next transaction (a group commit: under load
//! one sync covers everything that arrived during the last one). Transactions are released
//! (their callbacks run) in commit order, once a sync that began after their commit returned.

use std::fs::File;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

/// What to do once a committed transaction is synced (or its sync failed).
pub type Release = Box<dyn FnOnce(Result<(), &io::Error>) + Send>;

/// The WAL file and the committed transactions no sync has covered yet.
pub struct WalSync {
    wal: File,
    /// Releases of the transactions committed since the last sync, oldest first.
    unsynced: Vec<Release>,
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
        Ok(WalSync {
            wal,
            unsynced: Vec::new(),
        })
    }

    /// Takes what to do once the transaction just committed (unsynced) is synced: with
    /// `sync_now`, syncs at once and releases it with every earlier one; else it waits for the
    /// next sync.
    pub fn committed(&mut self, release: Release, sync_now: bool) {
        self.unsynced.push(release);
        if sync_now {
            let _ = self.sync();
        }
    }

    /// Syncs the WAL file, then releases every transaction committed before, in commit order.
    /// Also for an act that must follow durable rows (deleting the results files of forgotten
    /// jobs).
    pub fn sync(&mut self) -> io::Result<()> {
        let synced = self.wal.sync_data();
        if let Err(e) = &synced {
            log::error!("The job store's WAL could not be synced: {e}");
        }
        for release in self.unsynced.drain(..) {
            let result = synced.as_ref().map(|_| ());
            if catch_unwind(AssertUnwindSafe(|| release(result))).is_err() {
                log::error!("A job store callback panicked");
            }
        }
        synced
    }

    /// Syncs and releases whatever is committed and not synced yet.
    pub fn settle(&mut self) {
        if !self.unsynced.is_empty() {
            let _ = self.sync();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::sync::lock;
    use std::sync::{Arc, Mutex};

    /// A syncer on a WAL file in a temporary directory, and the list its releases go to.
    fn syncer() -> (tempfile::TempDir, WalSync, Arc<Mutex<Vec<u32>>>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("jobs.db-wal");
        std::fs::write(&path, b"wal").expect("wal file");
        let wal = WalSync::open(&path).expect("wal file opens");
        (dir, wal, Arc::new(Mutex::new(Vec::new())))
    }

    /// A release that appends `n` to `released`.
    fn release_to(released: &Arc<Mutex<Vec<u32>>>, n: u32) -> Release {
        let released = Arc::clone(released);
        Box::new(move |synced| {
            assert!(synced.is_ok());
            lock(&released).push(n);
        })
    }

    #[test]
    fn an_awaited_commit_is_released_at_once_with_every_earlier_one_in_order() {
        let (_dir, mut wal, released) = syncer();
        for n in 0..5u32 {
            wal.committed(release_to(&released, n), false);
        }
        assert!(lock(&released).is_empty());
        wal.committed(release_to(&released, 5), true);
        assert_eq!(*lock(&released), vec![0, 1, 2, 3, 4, 5]);
        assert!(wal.unsynced.is_empty());
    }

    #[test]
    fn a_commit_that_need_not_sync_now_waits_for_the_next_sync_or_the_settle() {
        let (_dir, mut wal, released) = syncer();
        wal.committed(release_to(&released, 1), false);
        assert!(lock(&released).is_empty());
        wal.committed(release_to(&released, 2), false);
        wal.settle();
        assert_eq!(*lock(&released), vec![1, 2]);
        wal.settle();
        assert_eq!(*lock(&released), vec![1, 2], "nothing left to release");
    }
}
