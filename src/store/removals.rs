//! Deletions of segment files, put off while a snapshot of the state directory is taken: the
//! snapshot's copy of the job store may point into a segment that retention or a dispatch would
//! delete a moment later, before the snapshot opened it.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::base::sync::lock;

/// The segment deletions of one state directory, and whether a snapshot is under way.
#[derive(Debug, Default)]
pub struct Removals {
    /// Deletions put off while held (`None`: not held, deletions happen at once).
    deferred: Mutex<Option<Vec<PathBuf>>>,
    /// Set while a snapshot is taken or sent (one at a time).
    snapshot: AtomicBool,
}

impl Removals {
    /// Deletes the file at `path`, or puts it off until the hold ends. A file already gone is
    /// no error.
    pub fn remove(&self, path: &Path) -> io::Result<()> {
        if let Some(deferred) = lock(&self.deferred).as_mut() {
            deferred.push(path.to_path_buf());
            return Ok(());
        }
        remove_if_present(path)
    }

    /// Claims the one snapshot slot; `None` while another snapshot is taken or sent.
    pub fn start_snapshot(self: &Arc<Self>) -> Option<SnapshotSlot> {
        self.snapshot
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            .then(|| SnapshotSlot(Arc::clone(self)))
    }
}

/// Deletes the file at `path`; one already gone is no error.
pub fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The snapshot slot; let go when dropped.
#[derive(Debug)]
pub struct SnapshotSlot(Arc<Removals>);

impl SnapshotSlot {
    /// Puts off every segment deletion until the returned hold is dropped.
    pub fn hold_removals(&self) -> RemovalHold<'_> {
        lock(&self.0.deferred).get_or_insert_with(Vec::new);
        RemovalHold(&self.0)
    }
}

impl Drop for SnapshotSlot {
    fn drop(&mut self) {
        self.0.snapshot.store(false, Ordering::Release);
    }
}

/// While it lives, segment deletions wait; dropped, it makes them.
pub struct RemovalHold<'a>(&'a Removals);

impl Drop for RemovalHold<'_> {
    fn drop(&mut self) {
        let deferred = lock(&self.0.deferred).take().unwrap_or_default();
        for path in deferred {
            if let Err(e) = remove_if_present(&path) {
                log::warn!("Could not remove {}: {e}", path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deletion_waits_for_the_hold_and_one_snapshot_runs_at_a_time() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (now, later) = (dir.path().join("now"), dir.path().join("later"));
        std::fs::write(&now, b"x").expect("write");
        std::fs::write(&later, b"x").expect("write");
        let removals = Arc::new(Removals::default());
        removals.remove(&now).expect("remove");
        assert!(!now.exists(), "deleted at once without a hold");
        let slot = removals.start_snapshot().expect("first snapshot");
        assert!(
            removals.start_snapshot().is_none(),
            "a second snapshot at once"
        );
        {
            let _hold = slot.hold_removals();
            removals.remove(&later).expect("remove");
            removals.remove(&now).expect("a file already gone");
            assert!(later.exists(), "deleted while held");
        }
        assert!(!later.exists(), "not deleted once the hold ended");
        drop(slot);
        assert!(removals.start_snapshot().is_some(), "the slot was let go");
    }
}
