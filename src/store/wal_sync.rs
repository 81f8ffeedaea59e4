//! Overlapped syncs of the job store's WAL file (`--fsync batch`).
//!
//! The writer commits each transaction without a sync (`PRAGMA synchronous = OFF`) and hands
//! its records here. A sync started after a commit covers that commit and every earlier one, so
//! each transaction gets a sync of its own as soon as a sync thread is free, while the writer
//! already commits the next one: a record waits for one sync instead of the rest of the
//! previous one plus its own. Records are released (their callbacks run) in commit order, once
//! a sync that began after their commit has returned.

use crate::base::mailbox::Mailbox;
use crate::base::sync::lock;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;

/// Syncs in flight at once (this disk's syncs overlap: several finish in the time of one).
const SYNC_THREADS: usize = 4;

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
    /// once a sync that began after now has returned.
    pub fn committed(&self, release: Release) {
        let mut p = lock(&self.shared.progress);
        p.committed += 1;
        let seq = p.committed;
        p.waiting.push_back(Committed { seq, release });
        if p.in_flight < SYNC_THREADS {
            p.in_flight += 1;
            p.started = seq;
            drop(p);
            self.starts.send(seq);
        }
    }

    /// Syncs the WAL on the caller's thread (before an act that must follow durable rows,
    /// such as deleting the results files of forgotten jobs).
    pub fn sync_now(&self) -> io::Result<()> {
        self.shared.wal.sync_data()
    }

    /// Waits until every committed transaction has been released.
    pub fn settle(&self) {
        let mut p = lock(&self.shared.progress);
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
                if p.started < p.committed {
                    p.started = p.committed;
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

    #[test]
    fn every_transaction_is_released_once_in_commit_order_after_a_sync() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("jobs.db-wal");
        std::fs::write(&path, b"wal").expect("wal file");
        let wal = WalSync::start(&path).expect("sync threads");
        let released = Arc::new(Mutex::new(Vec::new()));
        for n in 0..500u32 {
            let released = Arc::clone(&released);
            wal.committed(Box::new(move |synced| {
                assert!(synced.is_ok());
                lock(&released).push(n);
            }));
        }
        wal.settle();
        let released = lock(&released).clone();
        assert_eq!(released, (0..500).collect::<Vec<_>>());
        let p = lock(&wal.shared.progress);
        assert!(p.waiting.is_empty() && p.started == 500);
    }
}
