//! Whether a job store may be made new. A store that is missing, zero bytes or holds no tables
//! would be made new at start; where `results/` or `uploads/` still hold segment files, those
//! are the collected results and waiting uploads of jobs a lost store knew, and the start-up
//! scrub and upload cleanup would delete every one of them as "no job refers to it". Such a
//! start is refused before anything is written. A zero-byte file is refused anyway, as
//! `check --state-dir` refuses it: nothing but a damaged or truncated store leaves one, since a
//! new store is made whole under another name ([`making_path`]) and only then renamed into
//! place ([`put_in_place`]).

use crate::store::file_identity::beside;
use crate::store::segment_names;
use std::io;
use std::path::{Path, PathBuf};

/// Why a job store may not be made new.
#[derive(Debug)]
pub enum Refusal {
    /// The store file (missing, empty or tableless, as said) while the state directory holds
    /// these segments.
    Orphaned(PathBuf, &'static str, Segments),
    /// A zero-byte store file, with no segments beside it.
    Empty(PathBuf),
    /// The store file is missing while its WAL (this path, of this many bytes) holds commits:
    /// a new store would take them as its own.
    WalWithoutStore(PathBuf, u64),
    /// The store file is a symbolic link (to this target): SQLite keeps the WAL beside the
    /// target, where the coordinator does not look for it.
    Link(PathBuf, PathBuf),
}

/// The segment files a state directory holds: in `results/`, in `uploads/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    /// Results segments.
    pub results: usize,
    /// Upload segments.
    pub uploads: usize,
}

impl Segments {
    /// Those of the state directory `dir` (a folder that cannot be read counts none).
    pub fn of(dir: &Path) -> Segments {
        let count = |folder: &str| segment_names::list(&dir.join(folder)).segments.len();
        Segments {
            results: count("results"),
            uploads: count("uploads"),
        }
    }

    fn any(self) -> bool {
        self.results + self.uploads > 0
    }
}

/// Before the store file `db` of the state directory `state_dir` is opened: refuses a
/// symbolic link, a zero-byte file, and a missing one while the directory holds segments or
/// its WAL holds commits. True when the store is missing and may be made new.
pub fn check_before_open(state_dir: &Path, db: &Path) -> Result<bool, Refusal> {
    if let Ok(target) = std::fs::read_link(db) {
        return Err(Refusal::Link(db.to_path_buf(), target));
    }
    let why = match std::fs::metadata(db) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => "is missing",
        Err(_) => return Ok(false),
        Ok(m) if m.len() == 0 => "is an empty file (zero bytes)",
        Ok(_) => return Ok(false),
    };
    let segments = Segments::of(state_dir);
    if segments.any() {
        return Err(Refusal::Orphaned(db.to_path_buf(), why, segments));
    }
    if why.starts_with("is an empty") {
        return Err(Refusal::Empty(db.to_path_buf()));
    }
    let wal = beside(db, "-wal");
    match std::fs::metadata(&wal) {
        Ok(m) if m.len() > 0 => Err(Refusal::WalWithoutStore(wal, m.len())),
        _ => Ok(true),
    }
}

/// Where a new store file is made, before it takes its place as `db`.
pub fn making_path(db: &Path) -> PathBuf {
    beside(db, ".new")
}

/// SQLite's files beside a store file: its WAL, its shared memory, its rollback journal.
const SQLITE_SUFFIXES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// Removes what a start stopped while making the store `db` new left behind (the file at
/// [`making_path`] and SQLite's files beside it), and SQLite's files beside `db` itself, which
/// is missing: an empty WAL and a shared memory file would otherwise be taken as the new
/// store's.
pub fn clear_unfinished(db: &Path) -> io::Result<()> {
    let making = making_path(db);
    let leftovers = SQLITE_SUFFIXES
        .iter()
        .map(|suffix| beside(&making, suffix))
        .chain(std::iter::once(making.clone()))
        .chain(SQLITE_SUFFIXES.iter().map(|suffix| beside(db, suffix)));
    for leftover in leftovers {
        match std::fs::remove_file(&leftover) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Puts the new store made (and closed) at [`making_path`] in place as `db`: synced first,
/// where `sync`, then renamed, and the directory synced. At every instant `db` is either
/// missing or the whole new store.
pub fn put_in_place(db: &Path, sync: bool) -> io::Result<()> {
    let making = making_path(db);
    if sync {
        std::fs::File::open(&making)?.sync_all()?;
    }
    std::fs::rename(&making, db)?;
    if sync {
        sync_directory_of(db)?;
    }
    Ok(())
}

/// Syncs the directory that holds the store file `db`, so that a file made or renamed there
/// stays after a power loss.
pub fn sync_directory_of(db: &Path) -> io::Result<()> {
    std::fs::File::open(db.parent().unwrap_or(Path::new(".")))?.sync_all()
}

/// Once the store file `db` opened as a database without tables (a store not made yet):
/// refuses it while its state directory holds segments.
pub fn check_tableless(db: &Path) -> Result<(), Refusal> {
    let segments = Segments::of(db.parent().unwrap_or(Path::new(".")));
    if segments.any() {
        return Err(Refusal::Orphaned(
            db.to_path_buf(),
            "holds no tables (an empty database)",
            segments,
        ));
    }
    Ok(())
}
