//! Overlapped syncs of the job store's WAL file (`--fsync batch`).
//!
//! The writer commits each transaction without a sync (`PRAGMA synchronous = OFF`) and hands
//! it here. A sync started after a commit covers that commit and every earlier one. A
//! transaction that someone waits on (an acknowledged submit, a dispatch about to be sent)
//! gets a sync of its own as soon as a sync thread is free, while the writer already commits
//! the next one: a record waits for one sync instead of the rest of the previous one plus its
//! own. A transaction nobody waits on (a job's later status changes) starts no sync: the next
//! one started covers it, and the writer starts one for it at the latest
//! [`UNAWAITED_SYNC_LAG`] after its commit. Transactions are released (their callbacks run) in
//! commit order, once a sync that began after their commit has returned.

use crate::base::mailbox::Mailbox;
use crate::base::sync::lock;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Syncs in flight at once (this disk's syncs overlap: several finish in the time of one).
const SYNC_THREADS: usize = 4;

/// The longest a committed transaction that nobody waits on goes without a sync started for it.
pub const UNAWAITED_SYNC_LAG: Duration = Duration::from_millis(20);

/// What to do once a committed transaction is synced (or its sync failed).
pub type Release = Box<dyn FnOnce(Result<(), &io::Error>) + Send>;

/// One committed transaction, waiting for a sync.
struct Committed {
    seq: u64,
    release: Release,
}

/// Where the commits and syncs stand.
#[derive(Default)]
struct Progress {
    /// Transactions committed so far.
    committed: u64,
    /// The last transaction a sync is wanted for: someone waits on it, its lag passed, or
    /// the store is settling.
    wanted: u64,
    /// When the oldest commit that no started sync covers happened (None: every commit is
    /// covered by a sync started).
    uncovered_since: Option<Instant>,
    /// The last transaction covered by a sync already started.
    started: u64,
    /// Syncs running.
    in_flight: usize,
    /// The last transaction released (its callbacks have run).
    released: u64,
    /// Committed transactions whose sync has not returned, oldest first.
    waiting: VecDeque<Committed>,
}

struct Shared {
    wal: File,
    progress: Mutex<Progress>,
    /// Signalled whenever transactions are released.
    released: Condvar,
    /// Held while releasing, so callbacks run in commit order.
    releasing: Mutex<()>,
}

/// The WAL syncer: its threads end when it is dropped.
pub struct WalSync {
    shared: Arc<Shared>,
    starts: Arc<Mailbox<u64>>,
}

impl WalSync {
    /// Opens the WAL file at `path` (SQLite created it when the database opened in WAL mode)
    /// and starts the sync threads.
    pub fn start(path: &Path) -> io::Result<WalSync> {
        let wal = File::open(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open {} to sync it: {e}", path.display()),
            )
        })?;
        let shared = Arc::new(Shared {
            wal,
            progress: Mutex::new(Progress::default()),
            released: Condvar::new(),
            releasing: Mutex::new(()),
        });
        let starts = Arc::new(Mailbox::default());
        let syncer = WalSync { shared, starts };
        for n in 0..SYNC_THREADS {
            let shared = Arc::clone(&syncer.shared);
            let starts = Arc::clone(&syncer.starts);
            thread::Builder::new()
                .name(format!("store-sync-{n}"))
                .stack_size(64 * 1024)
                .spawn(move || shared.run(&starts))?;
        }
        Ok(syncer)
    }

    /// Takes what to do once the transaction just committed (unsynced) is synced: it runs
    /// once a sync that began after now has returned. An `awaited` transaction (someone waits
    /// on it) gets that sync at once; any other is covered by the next sync started, at the
    /// latest once [`WalSync::sync_if_due`] finds it older than [`UNAWAITED_SYNC_LAG`].
    pub fn committed(&self, release: Release, awaited: bool) {
        let mut p = lock(&self.shared.progress);
        p.committed += 1;
        let seq = p.committed;
        p.waiting.push_back(Committed { seq, release });
        if awaited {
            p.wanted = seq;
            self.start_if_free(p);
        } else {
            p.uncovered_since.get_or_insert_with(Instant::now);
        }
    }

    /// Starts a sync when a commit that nobody waits on has gone [`UNAWAITED_SYNC_LAG`] without
    /// one. Returns how long until that is due, when a commit is still uncovered.
    pub fn sync_if_due(&self) -> Option<Duration> {
        let p = lock(&self.shared.progress);
        let since = p.uncovered_since?;
        let left = UNAWAITED_SYNC_LAG.saturating_sub(since.elapsed());
        if !left.is_zero() {
            return Some(left);
        }
        self.start_if_free(p);
        // With every sync thread busy, the first to finish covers it.
        None
    }

    /// Starts a sync of everything committed when a sync thread is free; else the sync
    /// threads go on syncing once theirs returned (see `Shared::run`).
    fn start_if_free(&self, mut p: std::sync::MutexGuard<'_, Progress>) {
        if p.in_flight < SYNC_THREADS {
            p.in_flight += 1;
            p.started = p.committed;
            p.uncovered_since = None;
            let seq = p.started;
            drop(p);
            self.starts.send(seq);
        } else {
            // The first sync thread to finish starts the next sync (it covers this commit).
            p.wanted = p.committed;
        }
    }

    /// Syncs the WAL on the caller's thread (before an act that must follow durable rows,
    /// such as deleting the results files of forgotten jobs).
    pub fn sync_now(&self) -> io::Result<()> {
        self.shared.wal.sync_data()
    }

    /// Syncs everything committed and waits until every committed transaction has been
    /// released.
    pub fn settle(&self) {
        let mut p = lock(&self.shared.progress);
        if p.started < p.committed {
            self.start_if_free(p);
            p = lock(&self.shared.progress);
        }
        while p.released < p.committed {
            p = match self.shared.released.wait(p) {
                Ok(p) => p,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
    }
}

impl Drop for WalSync {
    /// The sync threads end once they synced what was started.
    fn drop(&mut self) {
        self.starts.close();
    }
}

impl Shared {
    /// A sync thread: syncs for each start it is given, then for whatever was committed
    /// meanwhile with no sync started for it.
    fn run(&self, starts: &Mailbox<u64>) {
        while let Ok(mut seq) = starts.recv() {
            loop {
                let synced = self.wal.sync_data();
                self.release(seq, synced);
                let mut p = lock(&self.progress);
                if p.started < p.wanted {
                    p.started = p.committed;
                    p.uncovered_since = None;
                    seq = p.committed;
                } else {
                    p.in_flight -= 1;
                    break;
                }
            }
        }
    }

    /// Releases every transaction up to `seq` (a sync begun after its commit returned), in
    /// commit order.
    fn release(&self, seq: u64, synced: io::Result<()>) {
        let _order = lock(&self.releasing);
        let mut due = Vec::new();
        {
            let mut p = lock(&self.progress);
            while p.waiting.front().is_some_and(|c| c.seq <= seq) {
                if let Some(c) = p.waiting.pop_front() {
                    due.push(c);
                }
            }
        }
        if let Err(e) = &synced {
            log::error!("The job store's WAL could not be synced: {e}");
        }
        for committed in due {
            let release = committed.release;
            let result = synced.as_ref().map(|_| ());
            if catch_unwind(AssertUnwindSafe(|| release(result))).is_err() {
                log::error!("A job store callback panicked");
            }
        }
        let mut p = lock(&self.progress);
        p.released = p.released.max(seq);
        drop(p);
        self.released.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A syncer on a WAL file in a temporary directory, and the list its releases go to.
    fn syncer() -> (tempfile::TempDir, WalSync, Arc<Mutex<Vec<u32>>>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("jobs.db-wal");
        std::fs::write(&path, b"wal").expect("wal file");
        let wal = WalSync::start(&path).expect("sync threads");
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
    fn every_transaction_is_released_once_in_commit_order_after_a_sync() {
        let (_dir, wal, released) = syncer();
        for n in 0..500u32 {
            wal.committed(release_to(&released, n), true);
        }
        wal.settle();
        let released = lock(&released).clone();
        assert_eq!(released, (0..500).collect::<Vec<_>>());
        let p = lock(&wal.shared.progress);
        assert!(p.waiting.is_empty() && p.started == 500);
    }

    #[test]
    fn an_unawaited_commit_starts_no_sync_until_its_lag_passed_or_one_is_awaited() {
        let (_dir, wal, released) = syncer();
        let release = |n: u32| release_to(&released, n);
        wal.committed(release(1), false);
        assert!(wal.sync_if_due().is_some(), "due at once");
        assert_eq!(lock(&wal.shared.progress).started, 0);
        let deadline = Instant::now() + Duration::from_secs(30);
        while wal.sync_if_due().is_some() {
            assert!(Instant::now() < deadline, "the lag never passed");
            thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(lock(&wal.shared.progress).started, 1);
        // An awaited commit's sync covers the unawaited ones before it, released in order.
        wal.committed(release(2), false);
        wal.committed(release(3), true);
        wal.settle();
        assert_eq!(*lock(&released), vec![1, 2, 3]);
        let p = lock(&wal.shared.progress);
        assert!(p.started == 3 && p.released == 3 && p.uncovered_since.is_none());
    }
}
