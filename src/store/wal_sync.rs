//! Syncs of the job store's WAL file (`--fsync batch`), on the writer's own thread.
//!
//! The writer commits each transaction without a sync (`PRAGMA synchronous = OFF`) and hands
//! its release here. A transaction that someone waits on (an acknowledged submit, a dispatch
//! about to be sent) is synced right after its commit, together with every transaction
//! committed before it; the records that arrive meanwhile wait in the writer's channel and make
//! its next transaction (a group commit: under load one sync covers everything that arrived
//! during the last one). A transaction nobody waits on (a job's later status changes) starts no
//! sync: the next sync covers it, and the writer syncs for it at the latest
//! [`UNAWAITED_SYNC_LAG`] after its commit. Transactions are released (their callbacks run) in
//! commit order, once a sync that began after their commit has returned.

use std::fs::File;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

/// The longest a committed transaction that nobody waits on goes without a sync.
pub const UNAWAITED_SYNC_LAG: Duration = Duration::from_millis(20);

/// What to do once a committed transaction is synced (or its sync failed).
pub type Release = Box<dyn FnOnce(Result<(), &io::Error>) + Send>;

/// The WAL file and the committed transactions no sync has covered yet.
pub struct WalSync {
    wal: File,
    /// Releases of the transactions committed since the last sync, oldest first.
    unsynced: Vec<Release>,
    /// When the oldest of them committed.
    since: Option<Instant>,
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
            since: None,
        })
    }

    /// Takes what to do once the transaction just committed (unsynced) is synced. An
    /// `awaited` transaction (someone waits on it) is synced at once, with every earlier one;
    /// any other waits for the next sync, at the latest once [`WalSync::sync_if_due`] finds it
    /// older than [`UNAWAITED_SYNC_LAG`].
    pub fn committed(&mut self, release: Release, awaited: bool) {
        self.unsynced.push(release);
        self.since.get_or_insert_with(Instant::now);
        if awaited {
            let _ = self.sync();
        }
    }

    /// Syncs when a commit that nobody waits on has gone [`UNAWAITED_SYNC_LAG`] without a
    /// sync. Returns how long until that is due, when a commit is still unsynced.
    pub fn sync_if_due(&mut self) -> Option<Duration> {
        let left = UNAWAITED_SYNC_LAG.saturating_sub(self.since?.elapsed());
        if !left.is_zero() {
            return Some(left);
        }
        let _ = self.sync();
        None
    }

    /// Syncs the WAL file, then releases every transaction committed before, in commit order.
    /// Also for an act that must follow durable rows (deleting the results files of forgotten
    /// jobs).
    pub fn sync(&mut self) -> io::Result<()> {
        let synced = self.wal.sync_data();
        if let Err(e) = &synced {
            log::error!("The job store's WAL could not be synced: {e}");
        }
        self.since = None;
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
    use std::thread;

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
        assert!(wal.unsynced.is_empty() && wal.since.is_none());
    }

    #[test]
    fn an_unawaited_commit_is_synced_once_its_lag_passed() {
        let (_dir, mut wal, released) = syncer();
        wal.committed(release_to(&released, 1), false);
        assert!(wal.sync_if_due().is_some(), "not due at once");
        assert!(lock(&released).is_empty());
        let deadline = Instant::now() + Duration::from_secs(30);
        while wal.sync_if_due().is_some() {
            assert!(Instant::now() < deadline, "the lag never passed");
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(*lock(&released), vec![1]);
        assert_eq!(wal.sync_if_due(), None, "nothing left to sync");
        wal.committed(release_to(&released, 2), false);
        wal.settle();
        assert_eq!(*lock(&released), vec![1, 2]);
    }
}
