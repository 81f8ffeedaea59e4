//! Deletions of segment files, and wipes of a deleted job's bytes in them, put off while a
//! snapshot of the state directory is taken: the snapshot's copy of the job store may point into
//! a segment that retention or a dispatch would delete a moment later, before the snapshot
//! opened it, and it copies the segments it opened to their end. A wipe also waits for every
//! reader of its segment (a download under way). No segment is cut shorter while a snapshot is
//! under way (it reads each file to the length it noted): the bytes stay, wiped once it ends.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use crate::base::job::Span;
use crate::base::sync::lock;

/// The most wipes that wait for readers or a snapshot; past it the oldest is given up (logged).
const PENDING_WIPES_MAX: usize = 65_536;

/// The segment deletions of one state directory, and whether a snapshot is under way.
#[derive(Debug, Default)]
pub struct Removals {
    /// Deletions put off while held (`None`: not held, deletions happen at once).
    deferred: Mutex<Option<Vec<PathBuf>>>,
    /// Set while a snapshot is taken or sent (one at a time); held while a segment is cut back,
    /// so that no snapshot notes a file's length in the middle of a cut.
    snapshot: Mutex<bool>,
    /// What `snapshot` holds, read without its lock (by the wipes waiting for a snapshot's end,
    /// under the wipes' lock: `snapshot` is never taken under it).
    snapshot_under_way: AtomicBool,
    /// Wipes waiting, and the readers of each segment file.
    wipes: Mutex<Wipes>,
    /// The uploads of jobs that left the queue whose bytes stay in an upload segment other
    /// waiting uploads keep: each job's segment path and span.
    left: Mutex<HashMap<String, (PathBuf, Span)>>,
}

/// The most uploads left behind in upload segments that are remembered for a deletion to wipe;
/// past it one more is not (its bytes go with its segment, or at the next start).
const LEFT_UPLOADS_MAX: usize = 65_536;

/// Wipes put off, how many readers each segment file has, and the wipes handed to the wiper
/// thread.
#[derive(Debug, Default)]
struct Wipes {
    readers: HashMap<PathBuf, usize>,
    /// Waiting for readers or a snapshot.
    pending: Vec<Wipe>,
    /// Due, for the wiper thread.
    ready: Vec<Wipe>,
    /// How many of them the wiper thread is making now.
    in_hand: usize,
    /// A wiper thread runs.
    wiper: bool,
}

/// Whose bytes a wipe zeroes: it says how the wipe is made and logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WipeOf {
    /// A job a client deleted: a hole punched, else zeros written; logged.
    DeletedJob,
    /// A job retention forgot: the same, logged at debug level.
    ForgottenJob,
    /// Bytes no job refers to, found by the scrub at start: a hole punched, or nothing done
    /// (they are not worth writing zeros over at every start).
    Unreferenced,
    /// Bytes a segment's writer cut back while a snapshot was under way (an unfinished upload,
    /// a failed collection, an output too large): a hole punched, else zeros written; logged at
    /// debug level.
    CutBack,
}

impl WipeOf {
    /// The bytes a wipe of this kind zeroes, for the log.
    fn what(self) -> &'static str {
        match self {
            WipeOf::DeletedJob => "the deleted job's bytes",
            WipeOf::ForgottenJob => "the forgotten job's bytes",
            WipeOf::Unreferenced => "the bytes no job refers to",
            WipeOf::CutBack => "the bytes cut back during a snapshot",
        }
    }
}

/// One span of a segment file to zero.
#[derive(Debug)]
struct Wipe {
    path: PathBuf,
    span: Span,
    of: WipeOf,
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

    /// Remembers that the upload of job `id` (it left the queue: dispatched, cancelled, timed
    /// out) stays at `span` of the upload segment at `path`, which other waiting uploads keep:
    /// a deletion of the job wipes it there ([`Removals::wipe_left`]).
    pub fn leave(&self, id: &str, path: &Path, span: Span) {
        let mut left = lock(&self.left);
        if left.len() < LEFT_UPLOADS_MAX {
            left.insert(id.to_string(), (path.to_path_buf(), span));
        }
    }

    /// Wipes the upload job `id` left behind in a segment that is still kept, if it did; its
    /// deletion is committed.
    pub fn wipe_left(self: &Arc<Self>, id: &str) {
        let found = lock(&self.left).remove(id);
        if let Some((path, span)) = found {
            self.wipe(&path, span, WipeOf::DeletedJob);
        }
    }

    /// Forgets the uploads left behind in the segment at `path`: it goes.
    pub fn forget_left_in(&self, path: &Path) {
        lock(&self.left).retain(|_, (at, _)| at != path);
    }

    /// Claims the one snapshot slot; `None` while another snapshot is taken or sent.
    pub fn start_snapshot(self: &Arc<Self>) -> Option<SnapshotSlot> {
        let mut under_way = lock(&self.snapshot);
        if *under_way {
            return None;
        }
        *under_way = true;
        self.snapshot_under_way.store(true, Ordering::Release);
        Some(SnapshotSlot(Arc::clone(self)))
    }

    /// Cuts the segment file `file` (at `path`) back to `len` bytes, dropping what its writer
    /// appended after that; returns the file's length after. While a snapshot is under way the
    /// file is not shortened: the snapshot may have noted its longer length, and reads it to
    /// there. The bytes past `len` then stay, referred to by no record, and are wiped once the
    /// snapshot ends ([`WipeOf::CutBack`]); the writer's next appends go after them.
    pub fn cut_back(self: &Arc<Self>, file: &File, path: &Path, len: u64) -> io::Result<u64> {
        let end = {
            let under_way = lock(&self.snapshot);
            if !*under_way {
                file.set_len(len)?;
                return Ok(len);
            }
            file.metadata()?.len()
        };
        if end > len {
            let span = Span {
                offset: len,
                size: end - len,
            };
            self.wipe(path, span, WipeOf::CutBack);
        }
        Ok(end)
    }

    /// Overwrites `span` of the segment file at `path` (the results of a job deleted from the
    /// job store, see [`WipeOf`]) with zeros, on a thread of its own (a large wipe writes and
    /// syncs for a while): at once, or once no reader has the file open and no snapshot is
    /// under way. The caller's deletion is committed, so no new reader looks for those bytes.
    pub fn wipe(self: &Arc<Self>, path: &Path, span: Span, of: WipeOf) {
        let wipe = Wipe {
            path: path.to_path_buf(),
            span,
            of,
        };
        {
            let mut wipes = lock(&self.wipes);
            if wipes.pending.len() >= PENDING_WIPES_MAX {
                let given_up = wipes.pending.remove(0);
                log::warn!(
                    "{PENDING_WIPES_MAX} wipes of deleted results wait for readers; the oldest, \
                     in {}, is given up (its bytes stay until the segment is deleted)",
                    given_up.path.display()
                );
            }
            wipes.pending.push(wipe);
        }
        self.start_due();
    }

    /// Counts a reader of the segment file at `path` until the returned guard is dropped: wipes
    /// of that file wait for it.
    pub fn reading(self: &Arc<Self>, path: &Path) -> Reading {
        *lock(&self.wipes)
            .readers
            .entry(path.to_path_buf())
            .or_default() += 1;
        Reading {
            removals: Arc::clone(self),
            path: path.to_path_buf(),
        }
    }

    /// How many wipes are not made yet: waiting for readers or a snapshot, or under way.
    pub fn pending_wipes(&self) -> usize {
        let wipes = lock(&self.wipes);
        wipes.pending.len() + wipes.ready.len() + wipes.in_hand
    }

    /// Hands the waiting wipes that may run now to the wiper thread, started if none runs.
    fn start_due(self: &Arc<Self>) {
        let start = {
            let mut wipes = lock(&self.wipes);
            if wipes.pending.is_empty() || self.snapshot_under_way.load(Ordering::Acquire) {
                return;
            }
            let Wipes {
                readers,
                pending,
                ready,
                ..
            } = &mut *wipes;
            let (due, waiting): (Vec<_>, Vec<_>) = pending
                .drain(..)
                .partition(|wipe| !readers.contains_key(&wipe.path));
            *pending = waiting;
            ready.extend(due);
            let start = !wipes.ready.is_empty() && !wipes.wiper;
            wipes.wiper |= start;
            start
        };
        if start {
            let removals = Arc::clone(self);
            let spawned = thread::Builder::new()
                .name("wiper".to_string())
                .spawn(move || removals.wipe_ready());
            if let Err(e) = spawned {
                log::warn!("No thread to wipe deleted results on ({e}); wiping them here");
                self.wipe_ready();
            }
        }
    }

    /// Makes the wipes handed over until none is left (the wiper thread's loop).
    fn wipe_ready(&self) {
        loop {
            let batch = {
                let mut wipes = lock(&self.wipes);
                wipes.in_hand = 0;
                if wipes.ready.is_empty() {
                    wipes.wiper = false;
                    return;
                }
                let batch = std::mem::take(&mut wipes.ready);
                wipes.in_hand = batch.len();
                batch
            };
            // A panic in a wipe must not leave the wiper marked as running for good.
            if catch_unwind(AssertUnwindSafe(|| run_wipes(batch))).is_err() {
                log::error!(
                    "Wiping deleted results panicked; the rest of those wipes are given up"
                );
            }
        }
    }
}

/// A reader of a segment file, counted until dropped ([`Removals::reading`]).
#[derive(Debug)]
pub struct Reading {
    removals: Arc<Removals>,
    path: PathBuf,
}

impl Drop for Reading {
    fn drop(&mut self) {
        {
            let mut wipes = lock(&self.removals.wipes);
            if let Some(n) = wipes.readers.get_mut(&self.path) {
                *n -= 1;
                if *n == 0 {
                    wipes.readers.remove(&self.path);
                }
            }
        }
        self.removals.start_due();
    }
}

fn run_wipes(due: Vec<Wipe>) {
    static CANNOT_PUNCH_TOLD: AtomicBool = AtomicBool::new(false);
    for Wipe { path, span, of } in due {
        // Bytes no job refers to are not worth writing zeros over at every start.
        let zeroed = zero_span(&path, span, of != WipeOf::Unreferenced);
        match (zeroed, of) {
            (Ok(true), WipeOf::DeletedJob) => log::info!(
                "Wiped {} bytes of a deleted job in {}",
                span.size,
                path.display()
            ),
            (Ok(true), WipeOf::ForgottenJob) => log::debug!(
                "Wiped {} bytes of a forgotten job in {}",
                span.size,
                path.display()
            ),
            (Ok(true), WipeOf::Unreferenced) => log::debug!(
                "Punched {} bytes no job refers to out of {}",
                span.size,
                path.display()
            ),
            (Ok(true), WipeOf::CutBack) => log::debug!(
                "Wiped {} bytes cut back during a snapshot in {}",
                span.size,
                path.display()
            ),
            (Ok(false), _) if !CANNOT_PUNCH_TOLD.swap(true, Ordering::Relaxed) => log::warn!(
                "The filesystem of {} cannot punch holes: bytes no job refers to any more stay \
                 in its results segments until each segment is deleted",
                path.display()
            ),
            (Ok(false), _) => {}
            // Deleted meanwhile: nothing is left to wipe.
            (Err(e), _) if e.kind() == io::ErrorKind::NotFound => {}
            (Err(e), of) => log::warn!(
                "Could not wipe {} at {}+{} in {}: {e}; they stay until the segment is deleted",
                of.what(),
                span.offset,
                span.size,
                path.display()
            ),
        }
    }
}

/// Zeroes `span` of the file at `path` (within its length) and syncs it: a hole punched where
/// the filesystem can (the blocks go back to it), else zeros written if `or_write` (returns
/// false when it did neither).
fn zero_span(path: &Path, span: Span, or_write: bool) -> io::Result<bool> {
    let file = OpenOptions::new().write(true).open(path)?;
    let end = span
        .offset
        .saturating_add(span.size)
        .min(file.metadata()?.len());
    if end <= span.offset {
        return Ok(true);
    }
    if !punch_hole(&file, span.offset, end - span.offset) {
        if !or_write {
            return Ok(false);
        }
        let zeros = vec![0u8; 64 * 1024];
        let mut at = span.offset;
        while at < end {
            let n = (end - at).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
    }
    file.sync_data().map(|()| true)
}

/// Punches a hole of `len` bytes at `offset`, keeping the file's length; false where the
/// filesystem cannot.
pub fn punch_hole(file: &File, offset: u64, len: u64) -> bool {
    let (Ok(offset), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return false;
    };
    // SAFETY: fallocate reads no memory of ours; the descriptor is open for writing.
    let punched = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    };
    punched == 0
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
        {
            let mut under_way = lock(&self.0.snapshot);
            *under_way = false;
            self.0.snapshot_under_way.store(false, Ordering::Release);
        }
        self.0.start_due();
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

    #[test]
    fn a_wipe_waits_for_the_readers_of_its_file_and_for_a_snapshot() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (path, other) = (dir.path().join("segment"), dir.path().join("other"));
        std::fs::write(&path, b"keep-gone-keep").expect("write");
        std::fs::write(&other, b"x").expect("write");
        let removals = Arc::new(Removals::default());
        let gone = Span { offset: 5, size: 4 };
        let read = || std::fs::read(&path).expect("read");

        // The wiper thread makes them: wait for it.
        let settled = |removals: &Removals| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while removals.pending_wipes() > 0 && std::time::Instant::now() < deadline {
                thread::sleep(std::time::Duration::from_millis(5));
            }
        };

        let reader = removals.reading(&path);
        let elsewhere = removals.reading(&other);
        removals.wipe(&path, gone, WipeOf::DeletedJob);
        assert_eq!(read(), b"keep-gone-keep", "wiped under a reader");
        assert_eq!(removals.pending_wipes(), 1);
        drop(reader);
        settled(&removals);
        assert_eq!(
            read(),
            b"keep-\0\0\0\0-keep",
            "not wiped once its reader went"
        );
        assert_eq!(removals.pending_wipes(), 0);
        drop(elsewhere);

        std::fs::write(&path, b"keep-gone-keep").expect("write");
        let slot = removals.start_snapshot().expect("snapshot");
        removals.wipe(&path, gone, WipeOf::DeletedJob);
        // A span past the file's end is cut at it; a file gone is nothing to wipe.
        removals.wipe(
            &path,
            Span {
                offset: 12,
                size: 100,
            },
            WipeOf::DeletedJob,
        );
        removals.wipe(&dir.path().join("gone"), gone, WipeOf::DeletedJob);
        assert_eq!(read(), b"keep-gone-keep", "wiped during a snapshot");
        drop(slot);
        settled(&removals);
        assert_eq!(
            read(),
            b"keep-\0\0\0\0-ke\0\0",
            "not wiped once the snapshot ended"
        );
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), 14);
        assert_eq!(removals.pending_wipes(), 0);
    }

    #[test]
    fn a_cut_back_never_shortens_a_file_while_a_snapshot_is_under_way() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("segment");
        std::fs::write(&path, b"kept-unfinished").expect("write");
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        let removals = Arc::new(Removals::default());
        assert_eq!(removals.cut_back(&file, &path, 12).expect("cut"), 12);
        assert_eq!(std::fs::read(&path).expect("read"), b"kept-unfinis");

        let slot = removals.start_snapshot().expect("snapshot");
        assert_eq!(removals.cut_back(&file, &path, 5).expect("cut"), 12);
        assert_eq!(std::fs::read(&path).expect("read"), b"kept-unfinis");
        drop(slot);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while removals.pending_wipes() > 0 && std::time::Instant::now() < deadline {
            thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(
            std::fs::read(&path).expect("read"),
            b"kept-\0\0\0\0\0\0\0",
            "the cut bytes were not wiped once the snapshot ended"
        );
    }
}
