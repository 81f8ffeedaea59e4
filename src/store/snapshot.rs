//! A snapshot of the state directory taken while the coordinator runs: a copy of the job store
//! as of its last commit, and every segment file open at the length it had then. Segments are
//! append-only and a record commits only after the bytes it points to were written, so every
//! byte the copy points to lies within those lengths. Segment deletions wait while the copy is
//! made and the segments are opened; once open, a file deleted later stays readable.

use std::fmt;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use rusqlite::ErrorCode;

use crate::base::shortage::is_shortage;
use crate::store::disk_reserve::{DiskReserve, Room};
use crate::store::jobs_db::{JobStore, StoreError, StoreFault, DB_FILE};
use crate::store::removals::{remove_if_present, Removals, SnapshotSlot};

/// The name the store's copy is made under in the state directory; it is deleted as soon as
/// it is open (and at start, when a crash left one).
const COPY_PREFIX: &str = "snapshot-";
const COPY_SUFFIX: &str = ".db.tmp";

/// The state directory's folders of segment files, as the snapshot holds them.
const SEGMENT_DIRS: [&str; 2] = ["uploads", "results"];

/// One file of a snapshot, open.
pub struct SnapshotFile {
    /// Its path inside the state directory (`jobs.db`, `results/NAME`, `uploads/NAME`).
    pub path: String,
    /// The open file.
    pub file: File,
    /// How many of its bytes belong to the snapshot.
    pub size: u64,
    /// Unix seconds of its modification time.
    pub mtime: u64,
}

/// A snapshot: its files, and the snapshot slot, held until it is sent.
pub struct Snapshot {
    /// The job store's copy first, then the segment files.
    pub files: Vec<SnapshotFile>,
    /// Let go when the snapshot is dropped.
    pub slot: SnapshotSlot,
}

/// Why no snapshot was taken.
#[derive(Debug)]
pub enum SnapshotError {
    /// Another snapshot is taken or sent right now.
    Busy,
    /// Copying the job store failed.
    Store(StoreError),
    /// A file of the state directory could not be opened or listed.
    Io(io::Error),
    /// The state directory's filesystem has no inode left for the job store's copy.
    NoInodes(Room),
}

impl SnapshotError {
    /// The HTTP status of a snapshot refused for this.
    pub fn http_status(&self) -> u16 {
        match self {
            SnapshotError::Busy => 503,
            SnapshotError::Store(e) => e.fault().http_status(),
            SnapshotError::Io(e) if is_shortage(e) => 503,
            SnapshotError::Io(_) => 500,
            SnapshotError::NoInodes(_) => 507,
        }
    }

    /// A copy of the job store that could not be created, told as one for want of inodes when
    /// that is why (the disk's bytes may be free while no file can be created there: SQLite
    /// says only that it is "unable to open database"); any other error as it is.
    pub fn naming_inodes(self, reserve: &DiskReserve) -> SnapshotError {
        let not_created = match &self {
            SnapshotError::Store(StoreError::Sqlite(e)) => {
                e.sqlite_error_code() == Some(ErrorCode::CannotOpen)
            }
            SnapshotError::Store(e) => e.is_full(),
            SnapshotError::Io(e) => e.raw_os_error() == Some(libc::ENOSPC),
            SnapshotError::Busy | SnapshotError::NoInodes(_) => false,
        };
        match reserve.room() {
            Ok(room) if not_created && room.out_of_inodes() => SnapshotError::NoInodes(room),
            _ => self,
        }
    }
}

impl fmt::Display for SnapshotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotError::Busy => write!(
                f,
                "another snapshot is being taken or sent (one at a time); try again when it is done"
            ),
            SnapshotError::Store(e) if e.fault() == StoreFault::Full => write!(
                f,
                "the state directory has no room for a copy of the job store (about the size of jobs.db); free some space and try again"
            ),
            SnapshotError::Store(e) => write!(f, "the job store could not be copied: {e}"),
            SnapshotError::Io(e) if is_shortage(e) => write!(
                f,
                "the coordinator is short of descriptors or memory to open the state directory's files ({e}); a snapshot holds one per segment file: raise the open-file limit, or try again when fewer connections are open"
            ),
            SnapshotError::Io(e) => write!(f, "the state directory could not be read: {e}"),
            SnapshotError::NoInodes(room) => write!(
                f,
                "the state directory has no room for a copy of the job store: its filesystem has no free inodes left ({} bytes are free, but no file can be created there); free some files and try again",
                room.available
            ),
        }
    }
}

/// Takes a snapshot of `state_dir`, whose job store is `store` and whose segment deletions go
/// through `removals`.
pub fn take(
    state_dir: &Path,
    store: &JobStore,
    removals: &Arc<Removals>,
) -> Result<Snapshot, SnapshotError> {
    let slot = removals.start_snapshot().ok_or(SnapshotError::Busy)?;
    let hold = slot.hold_removals();
    let copy_path = state_dir.join(format!("{COPY_PREFIX}{}{COPY_SUFFIX}", std::process::id()));
    remove_if_present(&copy_path).map_err(SnapshotError::Io)?;
    let copied = store
        .copy_into(&copy_path)
        .map_err(SnapshotError::Store)
        .and_then(|()| File::open(&copy_path).map_err(SnapshotError::Io));
    // Whatever happened: an open copy stays readable.
    if let Err(e) = remove_if_present(&copy_path) {
        log::warn!("Could not remove {}: {e}", copy_path.display());
    }
    let mut files = vec![snapshot_file(DB_FILE.to_string(), copied?)?];
    for dir in SEGMENT_DIRS {
        let mut names: Vec<String> = match std::fs::read_dir(state_dir.join(dir)) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(SnapshotError::Io(e)),
        };
        names.sort();
        for name in names {
            match File::open(state_dir.join(dir).join(&name)) {
                Ok(file) => files.push(snapshot_file(format!("{dir}/{name}"), file)?),
                // Deleted by hand meanwhile (the coordinator's own deletions wait).
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(SnapshotError::Io(e)),
            }
        }
    }
    drop(hold);
    Ok(Snapshot { files, slot })
}

fn snapshot_file(path: String, file: File) -> Result<SnapshotFile, SnapshotError> {
    let meta = file.metadata().map_err(SnapshotError::Io)?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    Ok(SnapshotFile {
        path,
        file,
        size: meta.len(),
        mtime,
    })
}

/// Removes the store copies that snapshots cut short by a crash left in `state_dir`.
pub fn clear_leftovers(state_dir: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(state_dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(COPY_PREFIX) && name.ends_with(COPY_SUFFIX) {
            remove_if_present(&entry.path())?;
            log::warn!("Removed {name}, left by a snapshot that a crash cut short");
        }
    }
    Ok(())
}
